//! What the admin API does to what the broker holds, beside the protocol:
//! browse a mailbox without consuming it (the error mailbox's dead
//! letters), delete or purge stored mail, peek at and purge a service
//! queue, and queue a request in the broker's own name (a replay).
//!
//! Every change is told to the journal like any other, so a durable
//! broker forgets what was deleted and keeps what was replayed across a
//! restart.

use super::{limits_hit, Core, Held, HeldId, Journal, Kind, Removal};
use crate::mlm::Content;

/// Why the broker would not queue a request in its own name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The service's queue is at its limits.
    #[error("service {0} queue full")]
    Full(String),
    /// An empty service address or subject.
    #[error("a request needs a service address and a subject")]
    Empty,
}

impl<J: Journal> Core<J> {
    /// The mail stored for `address`, oldest first (nothing is consumed).
    pub fn mail_of(&self, address: &str) -> Vec<&Held> {
        self.mailboxes
            .get(address)
            .map(|mb| mb.mail.values().collect())
            .unwrap_or_default()
    }

    /// Deletes stored mail `id` of `address`; false if there is none.
    pub fn delete_mail(&mut self, address: &str, id: HeldId) -> bool {
        let Some(mb) = self.mailboxes.get_mut(address) else {
            return false;
        };
        let Some(mail) = mb.mail.remove(&id) else {
            return false;
        };
        mb.bytes -= mail.bytes();
        let empty = mb.mail.is_empty();
        if let Some(t) = mail.expires {
            self.mail_expiry.remove(&(t, id));
        }
        self.counters.mail_removed += 1;
        self.journal.removed(Kind::Mail, id, Removal::Removed);
        if empty {
            self.drop_empty_mailbox(address);
        }
        true
    }

    /// Deletes every stored mail of `address`; how many there were.
    pub fn purge_mail(&mut self, address: &str) -> usize {
        let ids: Vec<HeldId> = self
            .mailboxes
            .get(address)
            .map(|mb| mb.mail.keys().copied().collect())
            .unwrap_or_default();
        ids.into_iter()
            .filter(|&id| self.delete_mail(address, id))
            .count()
    }

    /// The requests queued on `service` (none taken by a worker yet),
    /// oldest first.
    pub fn queue_of(&self, service: &str) -> Vec<&Held> {
        self.services
            .get(service)
            .map(|s| s.queued())
            .unwrap_or_default()
    }

    /// Drops every request queued on `service` (those given to workers
    /// are left alone); how many there were.
    pub fn purge_queue(&mut self, service: &str) -> usize {
        let Some(svc) = self.services.get_mut(service) else {
            return 0;
        };
        let all = svc.take_all();
        let idle = svc.is_idle();
        for req in &all {
            if let Some(t) = req.expires {
                self.request_expiry.remove(&(t, req.id));
            }
            self.journal
                .removed(Kind::Request, req.id, Removal::Removed);
        }
        if idle {
            self.services.remove(service);
        }
        self.counters.requests_purged += all.len() as u64;
        all.len()
    }

    /// Queues a service request in the broker's name: sender `sender`
    /// (the empty address when nobody is to be answered), `tracker` as
    /// given, no timeout, a fresh delivery count. Refused like a client's
    /// SERVICE SEND when the queue is full.
    pub fn inject_request(
        &mut self,
        service: &str,
        subject: &str,
        sender: &str,
        tracker: &str,
        content: Content,
    ) -> Result<HeldId, InjectError> {
        let id = self.inject(service, subject, sender, tracker, content)?;
        self.counters.requests_replayed += 1;
        Ok(id)
    }

    /// Queues a request in the broker's name (a replay, a schedule's fire).
    pub(super) fn inject(
        &mut self,
        service: &str,
        subject: &str,
        sender: &str,
        tracker: &str,
        content: Content,
    ) -> Result<HeldId, InjectError> {
        if service.is_empty() || subject.is_empty() {
            return Err(InjectError::Empty);
        }
        let mut req = Held {
            id: 0,
            sender: sender.to_string(),
            subject: subject.to_string(),
            tracker: tracker.to_string(),
            content,
            expires: None,
            deliveries: 0,
        };
        let (count, bytes) = self
            .services
            .get(service)
            .map_or((0, 0), |s| (s.count, s.bytes));
        if limits_hit(&self.cfg.service_queue_limit, count, bytes, req.bytes()) {
            return Err(InjectError::Full(service.to_string()));
        }
        req.id = self.take_id();
        let id = req.id;
        self.journal.stored(Kind::Request, service, &req, true);
        self.counters.requests_queued += 1;
        self.enqueue(service, req);
        self.touch_service(service);
        Ok(id)
    }

    /// Forgets a mailbox left empty by a deletion.
    fn drop_empty_mailbox(&mut self, address: &str) {
        if let Some(mb) = self.mailboxes.remove(address) {
            self.reclaim.remove(&(mb.touched, address.to_string()));
            self.journal.mailbox_gone(address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::core::CoreConfig;
    use crate::mlm::Message;
    use std::time::Instant;

    fn open(core: &mut Core, id: &[u8], address: &str, now: Instant) {
        core.handle(
            id,
            None,
            Message::ConnectionOpen {
                address: address.into(),
            },
            now,
        );
    }

    fn mail(core: &mut Core, from: &[u8], to: &str, subject: &str, now: Instant) {
        core.handle(
            from,
            None,
            Message::MailboxSend {
                address: to.into(),
                subject: subject.into(),
                tracker: String::new(),
                timeout: 0,
                content: vec![subject.as_bytes().to_vec()],
            },
            now,
        );
    }

    #[test]
    fn mail_is_browsed_without_being_consumed_then_deleted_and_purged() {
        let now = Instant::now();
        let mut core = Core::new(CoreConfig::default(), now);
        open(&mut core, b"p", "producer", now);
        for s in ["a", "b", "c"] {
            mail(&mut core, b"p", "awerr", s, now);
        }
        let seen: Vec<&str> = core
            .mail_of("awerr")
            .iter()
            .map(|h| h.subject.as_str())
            .collect();
        assert_eq!(seen, ["a", "b", "c"]);
        assert_eq!(core.mail_of("awerr").len(), 3, "looking consumes nothing");
        let b = core.mail_of("awerr")[1].id;
        assert!(core.delete_mail("awerr", b));
        assert!(!core.delete_mail("awerr", b), "deleted once");
        assert_eq!(core.mail_of("awerr").len(), 2);
        assert_eq!(core.purge_mail("awerr"), 2);
        assert!(core.mail_of("awerr").is_empty());
        assert!(core.mailboxes(now).is_empty(), "the empty mailbox is gone");
        assert_eq!(core.counters().mail_removed, 3);
    }

    #[test]
    fn a_queue_is_peeked_and_purged_and_an_injected_request_is_delivered() {
        let now = Instant::now();
        let mut core = Core::new(CoreConfig::default(), now);
        open(&mut core, b"p", "producer", now);
        for s in ["x", "y"] {
            core.handle(
                b"p",
                None,
                Message::ServiceSend {
                    address: "svc".into(),
                    subject: s.into(),
                    tracker: String::new(),
                    timeout: 0,
                    content: vec![b"body".to_vec()],
                },
                now,
            );
        }
        let mut out = Vec::new();
        core.flush(now, &mut out);
        let subjects: Vec<&str> = core
            .queue_of("svc")
            .iter()
            .map(|h| h.subject.as_str())
            .collect();
        assert_eq!(subjects, ["x", "y"]);
        assert_eq!(core.purge_queue("svc"), 2);
        assert!(core.queue_of("svc").is_empty());
        assert_eq!(core.counters().requests_purged, 2);

        // A replay reaches a worker as a request from nobody.
        open(&mut core, b"w", "worker", now);
        core.handle(
            b"w",
            None,
            Message::ServiceOffer {
                address: "svc".into(),
                pattern: ".*".into(),
            },
            now,
        );
        core.inject_request("svc", "again", "", "", vec![b"one".to_vec()])
            .unwrap();
        out.clear();
        core.flush(now, &mut out);
        let delivered = out.iter().find_map(|o| match &o.msg {
            Message::ServiceDeliver {
                sender,
                subject,
                content,
                ..
            } => Some((sender.clone(), subject.clone(), content.clone())),
            _ => None,
        });
        assert_eq!(
            delivered,
            Some((String::new(), "again".to_string(), vec![b"one".to_vec()]))
        );
        assert_eq!(
            core.inject_request("", "s", "", "", vec![]),
            Err(InjectError::Empty)
        );
    }
}
