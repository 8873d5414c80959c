//! Clients and their addresses: CONNECTION OPEN (with takeover of an
//! address in use), PING, CLOSE, expiry of silent clients, and dropping a
//! client (its registrations removed, its unconfirmed requests requeued).
//!
//! | command | fields | answer |
//! |---|---|---|
//! | CONNECTION OPEN | protocol, version, address | OK 200 `alaska-broker ack/1 maint/1 delay/1`, then stored mail |
//! | CONNECTION PING | – | CONNECTION PONG |
//! | CONNECTION CLOSE | – | OK, then the client is forgotten |
//! | CONFIRM | tracker `maintenance:on` or `maintenance:off`, status | none (maint/1; ERROR 300 for another `maintenance:` tracker) |
//!
//! Maintenance (maint/1, `docs/PROTOCOL-NOTES.md`) is a flag of the
//! session: set by the client itself or by the admin API, it stops new
//! dispatch to that client and is forgotten with the client.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{ClientId, Core, Held, Journal};
use crate::mlm::codec::status;
use crate::mlm::{
    Message, Status, ACK_CAPABILITY, DELAY_CAPABILITY, MAINTENANCE_OFF, MAINTENANCE_ON,
    MAINT_CAPABILITY,
};

/// A request given to an acknowledging worker, until it confirms.
#[derive(Debug)]
pub(super) struct Unconfirmed {
    pub(super) service: String,
    pub(super) req: Held,
}

/// One connected client.
#[derive(Debug)]
pub(super) struct Client {
    /// Its routing id (the key it is stored under, shared).
    pub(super) id: ClientId,
    /// Its address (empty: anonymous, no mailbox).
    pub(super) address: String,
    /// The user its connection authenticated as (PLAIN), for authorization.
    pub(super) user: Option<String>,
    pub(super) last_seen: Instant,
    /// The stream it publishes on (the last STREAM WRITE).
    pub(super) writer: Option<String>,
    /// Streams it reads, to clean up after it.
    pub(super) reads: Vec<String>,
    /// Services it offers, to clean up after it.
    pub(super) offers: Vec<String>,
    /// Acknowledged mode: set by the first CREDIT.
    pub(super) acked: bool,
    pub(super) credit: u64,
    /// Deliveries numbered per connection, from 1, in acknowledged mode.
    pub(super) seq: u64,
    pub(super) unconfirmed: BTreeMap<u64, Unconfirmed>,
    /// Under maintenance: nothing new is dispatched to it.
    pub(super) maintenance: bool,
    /// delay/1: its next SERVICE SEND is held for so many ms.
    pub(super) delay: Option<u64>,
}

impl Client {
    fn new(id: ClientId, address: String, user: Option<String>, now: Instant) -> Self {
        Client {
            id,
            address,
            user,
            last_seen: now,
            writer: None,
            reads: Vec::new(),
            offers: Vec::new(),
            acked: false,
            credit: 0,
            seq: 0,
            unconfirmed: BTreeMap::new(),
            maintenance: false,
            delay: None,
        }
    }

    /// Whether it may be given one more request now.
    pub(super) fn can_take(&self) -> bool {
        !self.maintenance && (!self.acked || (self.unconfirmed.len() as u64) < self.credit)
    }
}

impl<J: Journal> Core<J> {
    /// CONNECTION OPEN: registers the client under its address (taking the
    /// address over from another connection), answers OK advertising
    /// acknowledged delivery, then delivers the mail stored for it.
    pub(super) fn on_open(
        &mut self,
        id: ClientId,
        user: Option<&str>,
        address: String,
        now: Instant,
    ) {
        if self.clients.contains_key(&id) {
            // A second OPEN on the same connection starts a new session.
            self.drop_client(&id, "opened again", now);
        }
        if !address.is_empty() {
            if let Some(old) = self.addresses.get(&address).cloned() {
                if old != id {
                    tracing::info!("address {address:?} taken over by a new connection");
                    self.drop_client(&old, "address taken over", now);
                }
            }
            self.addresses.insert(address.clone(), id.clone());
        }
        if let Some(user) = user {
            tracing::debug!("client {address:?} authenticated as {user:?}");
        }
        self.counters.clients_opened += 1;
        self.clients.insert(
            id.clone(),
            Client::new(id.clone(), address.clone(), user.map(str::to_string), now),
        );
        self.send(
            &id,
            Message::Ok {
                status: Status::new(
                    status::SUCCESS,
                    format!("alaska-broker {ACK_CAPABILITY} {MAINT_CAPABILITY} {DELAY_CAPABILITY}"),
                ),
            },
        );
        if !address.is_empty() {
            self.deliver_mailbox(&id, &address, now);
        }
    }

    /// CONNECTION PING: PONG.
    pub(super) fn on_ping(&mut self, id: ClientId) {
        self.send(&id, Message::ConnectionPong);
    }

    /// CONNECTION CLOSE: OK, then the client is forgotten.
    pub(super) fn on_close(&mut self, id: ClientId, now: Instant) {
        self.reply_ok(&id);
        self.drop_client(&id, "closed", now);
    }

    /// Expires the clients silent for longer than the client timeout.
    pub(super) fn expire_clients(&mut self, now: Instant) {
        let timeout = self.cfg.client_timeout;
        let silent: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last_seen) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in silent {
            tracing::info!(
                "client {} expired after {timeout:?} of silence",
                self.name(&id)
            );
            self.counters.clients_expired += 1;
            self.drop_client(&id, "expired", now);
        }
    }

    /// Sets or clears maintenance on the client holding `address`: while
    /// set, nothing new is dispatched to it (what it holds stays its own).
    /// Returns whether such a client is connected. This is the admin API's
    /// way in; the client is not told.
    pub fn set_maintenance(&mut self, address: &str, on: bool) -> bool {
        let Some(id) = self.addresses.get(address).cloned() else {
            return false;
        };
        self.set_client_maintenance(&id, on)
    }

    /// `CONFIRM tracker="maintenance:…"` (maint/1) from an opened client,
    /// acknowledged mode or not. Accepted commands get no answer, as every
    /// CONFIRM; an unknown one gets ERROR 300 and changes nothing.
    pub(super) fn on_maintenance_command(&mut self, id: ClientId, tracker: &str) {
        self.counters.maintenance_commands += 1;
        let on = match tracker {
            MAINTENANCE_ON => true,
            MAINTENANCE_OFF => false,
            _ => {
                tracing::warn!(
                    "{} sent an unknown maintenance command {tracker:?}",
                    self.name(&id)
                );
                return self.reply_error(
                    &id,
                    status::FAILED,
                    &format!("unknown maintenance command {tracker}"),
                );
            }
        };
        if self.clients.get(&id).is_some_and(|c| c.maintenance != on) {
            tracing::info!(
                "{} {} maintenance",
                self.name(&id),
                if on { "entered" } else { "left" }
            );
        }
        self.set_client_maintenance(&id, on);
    }

    /// Sets or clears the maintenance flag of one client; clearing it
    /// marks the services it offers, so that what waits there is
    /// dispatched at the next flush.
    fn set_client_maintenance(&mut self, id: &ClientId, on: bool) -> bool {
        let Some(c) = self.clients.get_mut(id) else {
            return false;
        };
        c.maintenance = on;
        if !on {
            for s in c.offers.clone() {
                self.touch_service(&s);
            }
        }
        true
    }

    /// Forgets a client: its address, subscriptions and offers removed, its
    /// unconfirmed requests back in their queues (to be dispatched at the
    /// next flush), the reclaim clock of its mailbox started.
    pub(super) fn drop_client(&mut self, id: &ClientId, why: &str, now: Instant) {
        let Some(c) = self.clients.remove(id) else {
            return;
        };
        if self.addresses.get(&c.address) == Some(id) {
            self.addresses.remove(&c.address);
            if self.mailboxes.contains_key(&c.address) {
                self.set_mailbox_clock(&c.address, now);
            }
        }
        for stream in &c.reads {
            self.remove_reader(stream, id);
        }
        for name in &c.offers {
            if let Some(svc) = self.services.get_mut(name) {
                svc.remove_offers_of(id);
            }
        }
        let requeued = c.unconfirmed.len();
        for (_, u) in c.unconfirmed {
            self.requeue(&u.service, u.req, now);
        }
        if requeued > 0 {
            tracing::warn!(
                "client {:?} gone ({why}): {requeued} unconfirmed request(s) requeued",
                c.address
            );
        } else {
            tracing::debug!("client {:?} gone ({why})", c.address);
        }
    }
}
