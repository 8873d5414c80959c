//! Authorization: what each authenticated user may do, checked before a
//! command changes anything (see [`crate::broker::acl`]). A refusal is
//! `ERROR 300 access denied: …` to the client, which stays connected, and
//! one log line naming the user. Without an ACL every user may do
//! everything, except take over an address another user holds.

use super::{ClientId, Core, Journal};
use crate::broker::acl::{self, Acl, Action, Refusal};
use crate::mlm::codec::status;
use crate::mlm::Message;

impl<J: Journal> Core<J> {
    /// Replaces the rules (`None`: allow everything); they apply to the
    /// commands handled from now on.
    pub fn set_acl(&mut self, acl: Option<Acl>) {
        self.acl = acl;
    }

    /// Whether the client `id` may carry out `msg`; when it may not, it is
    /// told and the refusal logged. `user` is the connection's user (used
    /// for CONNECTION OPEN, before the client is known).
    pub(super) fn authorized(&mut self, id: &ClientId, user: Option<&str>, msg: &Message) -> bool {
        let known_user = self
            .clients
            .get(id)
            .and_then(|c| c.user.clone())
            .unwrap_or_default();
        let result = match msg {
            Message::ConnectionOpen { address } => self.may_open(user.unwrap_or(""), address),
            Message::StreamWrite { stream } => self.check(&known_user, Action::Write(stream)),
            Message::StreamRead { stream, .. } => self.check(&known_user, Action::Read(stream)),
            Message::ServiceOffer { address, .. } => {
                self.check(&known_user, Action::Offer(address))
            }
            Message::MailboxSend { address, .. } => self.check(&known_user, Action::Mail(address)),
            Message::ServiceSend { address, .. } => self.check(&known_user, Action::Send(address)),
            // Checked again on every send: rules reloaded since the STREAM
            // WRITE apply to later commands. Said as "publish on" so that
            // the client takes it for the refusal of a send.
            Message::StreamSend { .. } if self.acl.is_some() => {
                match self.clients.get(id).and_then(|c| c.writer.clone()) {
                    Some(stream) => self
                        .check(&known_user, Action::Write(&stream))
                        .map_err(|_| Refusal {
                            user: known_user.clone(),
                            reason: format!("may not publish on stream {stream}"),
                        }),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        };
        match result {
            Ok(()) => true,
            Err(r) => {
                tracing::warn!("access denied: {r} (client {})", self.name(id));
                self.reply_error(id, status::FAILED, &r.error_reason());
                // A refused STREAM WRITE still names the stream the
                // client means to publish on: its sends are then refused
                // as "may not publish on stream X" (checked each time),
                // not the misleading "no stream: send STREAM WRITE first".
                if let Message::StreamWrite { stream } = msg {
                    if let Some(c) = self.clients.get_mut(id) {
                        c.writer = Some(stream.clone());
                    }
                }
                false
            }
        }
    }

    fn check(&self, user: &str, action: Action<'_>) -> Result<(), Refusal> {
        acl::check(self.acl.as_ref(), user, &action)
    }

    /// CONNECTION OPEN: the ACL's say on the address, and a takeover only
    /// by the user that holds the address now.
    fn may_open(&self, user: &str, address: &str) -> Result<(), Refusal> {
        self.check(user, Action::Open(address))?;
        if address.is_empty() {
            return Ok(());
        }
        let holder = self
            .addresses
            .get(address)
            .and_then(|holder| self.clients.get(holder));
        match holder {
            Some(h) if h.user.as_deref().unwrap_or("") != user => {
                Err(Refusal::takeover(user, address))
            }
            _ => Ok(()),
        }
    }
}
