//! Mailboxes: mail delivered at once to a connected owner, or stored
//! (bounded in messages and bytes) until the owner opens; mail timeouts;
//! and the reclaim of mailboxes whose owner stays away.
//!
//! | command | fields | answer |
//! |---|---|---|
//! | MAILBOX SEND | address, subject, tracker, timeout, content | none (ERROR 300 if the mailbox is full) |
//!
//! The reclaim clock of a mailbox starts when it is created for an absent
//! owner and again each time its owner goes away; once it has run for the
//! mailbox expiry with the owner still away, the mail is dropped.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{deadline, limits_hit, ClientId, Core, Custody, Held, HeldId, Journal, MailboxInfo};
use super::{Kind, Outgoing, Removal};
use crate::mlm::codec::status;
use crate::mlm::{Content, Message};

/// Mail waiting for its owner, oldest first.
#[derive(Debug)]
pub(super) struct Mailbox {
    pub(super) mail: BTreeMap<HeldId, Held>,
    pub(super) bytes: usize,
    /// When the reclaim clock started.
    pub(super) touched: Instant,
}

impl<J: Journal> Core<J> {
    /// MAILBOX SEND: delivered now if the owner is connected, else stored.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_mailbox_send(
        &mut self,
        id: ClientId,
        address: String,
        subject: String,
        tracker: String,
        timeout: u32,
        content: Content,
        now: Instant,
    ) {
        let mail = Held {
            id: self.take_id(),
            sender: self.address_of(&id),
            subject,
            tracker,
            content,
            expires: deadline(now, timeout),
            deliveries: 0,
        };
        match self.addresses.get(&address).cloned() {
            Some(to) => self.deliver_mail(&to, address, mail, Some(id)),
            None => self.store_mail(Some(&id), address, mail, true, now),
        }
    }

    /// Mail the broker itself sends (a dead letter, an error reply):
    /// delivered if the owner is connected, else stored.
    pub(super) fn post_mail(&mut self, address: String, mail: Held, now: Instant) {
        match self.addresses.get(&address).cloned() {
            Some(to) => self.deliver_mail(&to, address, mail, None),
            None => self.store_mail(None, address, mail, true, now),
        }
    }

    /// Queues a MAILBOX DELIVER; if it cannot be sent, the mail is stored
    /// (and `from`, the sender, told if the mailbox is full).
    fn deliver_mail(&mut self, to: &ClientId, address: String, mail: Held, from: Option<ClientId>) {
        self.counters.mail_delivered += 1;
        let custody = Custody {
            id: mail.id,
            expires: mail.expires,
            acked: false,
            from,
        };
        self.out.push(Outgoing {
            to: to.clone(),
            msg: Message::MailboxDeliver {
                sender: mail.sender,
                address,
                subject: mail.subject,
                tracker: mail.tracker,
                content: mail.content,
            },
            custody: Some(custody),
        });
    }

    /// Stores mail for an owner that is away (or could not take it), unless
    /// the mailbox is full: then `from` gets ERROR 300 and it is dropped.
    /// `new` is false for mail that was stored before (see
    /// [`Journal::stored`]).
    pub(super) fn store_mail(
        &mut self,
        from: Option<&ClientId>,
        address: String,
        mail: Held,
        new: bool,
        now: Instant,
    ) {
        let limit = self.cfg.mailbox_limit;
        let (count, bytes) = self
            .mailboxes
            .get(&address)
            .map_or((0, 0), |m| (m.mail.len(), m.bytes));
        if limits_hit(&limit, count, bytes, mail.bytes()) {
            tracing::warn!(
                "mailbox {address:?} full ({count} messages, {bytes} bytes): mail from {:?} refused",
                mail.sender
            );
            self.counters.mail_refused += 1;
            if let Some(from) = from {
                self.reply_error(from, status::FAILED, &format!("mailbox {address} full"));
            }
            return;
        }
        self.journal.stored(Kind::Mail, &address, &mail, new);
        self.counters.mail_stored += 1;
        self.put_mail(&address, mail, now);
    }

    /// Puts mail in its mailbox (created with its clock started at `now`)
    /// and its timeout in the expiry index.
    pub(super) fn put_mail(&mut self, address: &str, mail: Held, now: Instant) {
        if let Some(t) = mail.expires {
            self.mail_expiry.insert((t, mail.id), address.to_string());
        }
        if !self.mailboxes.contains_key(address) {
            self.mailboxes.insert(
                address.to_string(),
                Mailbox {
                    mail: BTreeMap::new(),
                    bytes: 0,
                    touched: now,
                },
            );
            self.reclaim.insert((now, address.to_string()));
            self.journal.mailbox_touched(address, now);
        }
        if let Some(mb) = self.mailboxes.get_mut(address) {
            mb.bytes += mail.bytes();
            mb.mail.insert(mail.id, mail);
        }
    }

    /// Delivers the stored mail of `address` to its owner `to`, who just
    /// opened; what expired meanwhile is dropped.
    pub(super) fn deliver_mailbox(&mut self, to: &ClientId, address: &str, now: Instant) {
        let Some(mb) = self.remove_mailbox(address) else {
            return;
        };
        for (_, mail) in mb.mail {
            if let Some(t) = mail.expires {
                self.mail_expiry.remove(&(t, mail.id));
            }
            if mail.expired(now) {
                tracing::info!("mail for {address:?} expired before delivery; dropped");
                self.counters.mail_expired += 1;
                self.journal.removed(Kind::Mail, mail.id, Removal::Expired);
                continue;
            }
            self.journal
                .removed(Kind::Mail, mail.id, Removal::Delivered);
            self.deliver_mail(to, address.to_string(), mail, None);
        }
    }

    /// (Re)starts the reclaim clock of an existing mailbox at `at`.
    pub(super) fn set_mailbox_clock(&mut self, address: &str, at: Instant) {
        let Some(mb) = self.mailboxes.get_mut(address) else {
            return;
        };
        self.reclaim.remove(&(mb.touched, address.to_string()));
        mb.touched = at;
        self.reclaim.insert((at, address.to_string()));
        self.journal.mailbox_touched(address, at);
    }

    /// Takes a mailbox out, with its reclaim clock.
    fn remove_mailbox(&mut self, address: &str) -> Option<Mailbox> {
        let mb = self.mailboxes.remove(address)?;
        self.reclaim.remove(&(mb.touched, address.to_string()));
        self.journal.mailbox_gone(address);
        Some(mb)
    }

    /// Drops stored mail whose timeout has passed.
    pub(super) fn expire_mail(&mut self, now: Instant) {
        while let Some(entry) = self.mail_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, id), address) = entry.remove_entry();
            let Some(mb) = self.mailboxes.get_mut(&address) else {
                continue;
            };
            let Some(mail) = mb.mail.remove(&id) else {
                continue;
            };
            mb.bytes -= mail.bytes();
            let empty = mb.mail.is_empty();
            tracing::info!("mail for {address:?} expired; dropped");
            self.counters.mail_expired += 1;
            self.journal.removed(Kind::Mail, id, Removal::Expired);
            if empty {
                self.remove_mailbox(&address);
            }
        }
    }

    /// Drops the mail of owners away for longer than the mailbox expiry.
    pub(super) fn reclaim_mailboxes(&mut self, now: Instant) {
        let expiry = self.cfg.mailbox_expiry;
        while let Some((touched, address)) = self.reclaim.first().cloned() {
            if now.saturating_duration_since(touched) < expiry {
                break;
            }
            self.reclaim.pop_first();
            if self.addresses.contains_key(&address) {
                // The owner is here; the clock starts again when it leaves.
                continue;
            }
            let Some(mb) = self.mailboxes.remove(&address) else {
                continue;
            };
            tracing::warn!(
                "mailbox {address:?} reclaimed: address away for over {expiry:?}, {} mail(s) dropped",
                mb.mail.len()
            );
            self.counters.mailboxes_reclaimed += 1;
            for (id, mail) in mb.mail {
                if let Some(t) = mail.expires {
                    self.mail_expiry.remove(&(t, id));
                }
                self.counters.mail_reclaimed += 1;
                self.journal.removed(Kind::Mail, id, Removal::Reclaimed);
            }
            self.journal.mailbox_gone(&address);
        }
    }

    /// The mailboxes holding mail, sorted by address, with how long each
    /// has left before it is reclaimed (as of `now`).
    pub fn mailboxes(&self, now: Instant) -> Vec<MailboxInfo> {
        let mut list: Vec<MailboxInfo> = self
            .mailboxes
            .iter()
            .map(|(address, mb)| {
                let connected = self.addresses.contains_key(address);
                MailboxInfo {
                    address: address.clone(),
                    messages: mb.mail.len(),
                    bytes: mb.bytes,
                    connected,
                    reclaim_in: (!connected).then(|| {
                        (mb.touched + self.cfg.mailbox_expiry).saturating_duration_since(now)
                    }),
                }
            })
            .collect();
        list.sort_by(|a, b| a.address.cmp(&b.address));
        list
    }
}
