//! Delayed requests (delay/1): a SERVICE SEND the broker holds until its
//! due time, then queues as if it had just been sent.
//!
//! | command | fields | answer |
//! |---|---|---|
//! | CONFIRM | tracker `delay:<ms>`, status | none (ERROR 300 for a malformed or too long delay) |
//!
//! A client that saw `delay/1` in the OK to its CONNECTION OPEN sends
//! `CONFIRM tracker="delay:<ms>"` right before a SERVICE SEND; that next
//! SERVICE SEND is held for `<ms>` milliseconds. Any other command in
//! between (but CONNECTION PING) forgets the delay. The held request is
//! checked against the ACL when it is sent, like any SERVICE SEND, and
//! against the service's queue limits both when it is held (held requests
//! of a service count with its queue, so a client cannot pile up unbounded
//! memory) and when it is due (a full queue then refuses it: it is logged
//! and counted, since nobody waits for an answer to a SERVICE SEND). Its
//! timeout runs from when it is queued. With storage, held requests are
//! kept with their due time as wall-clock time, so one that fell due while
//! the broker was down is queued at its first tick.
//!
//! The admin API lists held requests and cancels them
//! ([`Core::delayed`], [`Core::cancel_delayed`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::{deadline, limits_hit, ClientId, Core, Held, HeldId, Journal, Kind, Removal};
use crate::mlm::codec::status;
use crate::mlm::{DELAY_PREFIX, MAX_DELAY_MS};
use crate::time::after;

/// One held request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayedRequest {
    /// The service it is for.
    pub service: String,
    /// The request (its `expires` is unset: the timeout runs from when it
    /// is queued).
    pub req: Held,
    /// When it is queued.
    pub due: Instant,
    /// The SERVICE SEND's timeout, ms (0: none), counted from `due`.
    pub timeout_ms: u32,
}

/// The held requests, by id and by due time, and per service what they
/// hold (counted against the service's queue limits).
#[derive(Debug, Default)]
pub(super) struct DelayedSet {
    by_id: BTreeMap<HeldId, DelayedRequest>,
    by_due: BTreeSet<(Instant, HeldId)>,
    /// Service -> (requests, content bytes) held for it.
    per_service: HashMap<String, (usize, usize)>,
}

impl DelayedSet {
    fn insert(&mut self, d: DelayedRequest) {
        let e = self.per_service.entry(d.service.clone()).or_default();
        e.0 += 1;
        e.1 += d.req.bytes();
        self.by_due.insert((d.due, d.req.id));
        self.by_id.insert(d.req.id, d);
    }

    fn remove(&mut self, id: HeldId) -> Option<DelayedRequest> {
        let d = self.by_id.remove(&id)?;
        self.by_due.remove(&(d.due, id));
        if let Some(e) = self.per_service.get_mut(&d.service) {
            e.0 -= 1;
            e.1 -= d.req.bytes();
            if e.0 == 0 {
                self.per_service.remove(&d.service);
            }
        }
        Some(d)
    }

    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        self.by_due.iter().next().map(|(t, _)| *t)
    }

    fn held_for(&self, service: &str) -> (usize, usize) {
        self.per_service.get(service).copied().unwrap_or((0, 0))
    }
}

/// Reads the delay of a `delay:<ms>` tracker: `None` unless it is all
/// digits and at most [`MAX_DELAY_MS`].
pub fn parse_delay(tracker: &str) -> Option<u64> {
    let ms = tracker.strip_prefix(DELAY_PREFIX)?;
    if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ms.parse::<u64>().ok().filter(|&v| v <= MAX_DELAY_MS)
}

impl<J: Journal> Core<J> {
    /// `CONFIRM tracker="delay:<ms>"`: the client's next SERVICE SEND is
    /// held for so long (ERROR 300 for a malformed delay).
    pub(super) fn on_delay_command(&mut self, id: ClientId, tracker: &str) {
        match parse_delay(tracker) {
            Some(ms) => {
                if let Some(c) = self.clients.get_mut(&id) {
                    c.delay = Some(ms);
                }
            }
            None => {
                tracing::warn!("{} sent a bad delay {tracker:?}", self.name(&id));
                self.reply_error(
                    &id,
                    status::FAILED,
                    &format!(
                        "bad delay command {tracker}: want delay:<milliseconds>, at most {MAX_DELAY_MS}"
                    ),
                );
            }
        }
    }

    /// Holds a SERVICE SEND for `delay_ms` (refused with ERROR 300 like a
    /// send to a full queue when what the service holds and queues is at
    /// its limits).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn hold_delayed(
        &mut self,
        id: ClientId,
        service: String,
        req: Held,
        timeout_ms: u32,
        delay_ms: u64,
        now: Instant,
    ) {
        let (qc, qb) = self
            .services
            .get(&service)
            .map_or((0, 0), |s| (s.count, s.bytes));
        let (dc, db) = self.delayed.held_for(&service);
        if limits_hit(&self.cfg.service_queue_limit, qc + dc, qb + db, req.bytes()) {
            tracing::warn!(
                "service {service:?} queue full with its delayed requests: delayed request from {:?} refused",
                req.sender
            );
            self.counters.requests_refused += 1;
            self.reply_error(
                &id,
                status::FAILED,
                &format!("service {service} queue full"),
            );
            return;
        }
        let mut req = req;
        req.id = self.take_id();
        let d = DelayedRequest {
            service,
            req,
            due: after(now, Duration::from_millis(delay_ms)),
            timeout_ms,
        };
        self.journal.delayed(&d);
        self.counters.requests_delayed += 1;
        self.delayed.insert(d);
    }

    /// Queues the held requests due at `now`, each under a new number (its
    /// place in the queue is by when it was queued).
    pub(super) fn release_delayed(&mut self, now: Instant) {
        while let Some(&(due, id)) = self.delayed.by_due.iter().next() {
            if due > now {
                break;
            }
            let Some(d) = self.delayed.remove(id) else {
                break;
            };
            self.journal.removed(Kind::Delayed, id, Removal::Delivered);
            let DelayedRequest {
                service,
                mut req,
                timeout_ms,
                ..
            } = d;
            let (count, bytes) = self
                .services
                .get(&service)
                .map_or((0, 0), |s| (s.count, s.bytes));
            if limits_hit(&self.cfg.service_queue_limit, count, bytes, req.bytes()) {
                tracing::warn!(
                    "service {service:?} queue full: delayed request {:?} from {:?} dropped at its due time",
                    req.subject,
                    req.sender
                );
                self.counters.requests_refused += 1;
                continue;
            }
            req.id = self.take_id();
            req.expires = deadline(now, timeout_ms);
            self.journal.stored(Kind::Request, &service, &req, true);
            self.counters.requests_queued += 1;
            self.enqueue(&service, req);
            self.touch_service(&service);
        }
    }

    /// The held requests, soonest due first.
    pub fn delayed(&self) -> Vec<&DelayedRequest> {
        self.delayed
            .by_due
            .iter()
            .filter_map(|(_, id)| self.delayed.by_id.get(id))
            .collect()
    }

    /// Cancels held request `id`; false if there is none.
    pub fn cancel_delayed(&mut self, id: HeldId) -> bool {
        if self.delayed.remove(id).is_none() {
            return false;
        }
        self.journal.removed(Kind::Delayed, id, Removal::Removed);
        self.counters.delayed_cancelled += 1;
        true
    }

    /// Puts back a held request read from storage (due at `due`, which may
    /// have passed: then it is queued at the next tick). Tells the journal
    /// nothing: storage has it.
    pub fn restore_delayed(&mut self, d: DelayedRequest) {
        self.next_id = self.next_id.max(d.req.id + 1);
        self.delayed.insert(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::core::CoreConfig;
    use crate::mlm::{Message, Status};

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

    fn confirm(core: &mut Core, id: &[u8], tracker: &str, now: Instant) {
        core.handle(
            id,
            None,
            Message::Confirm {
                tracker: tracker.into(),
                status: Status::new(200, ""),
            },
            now,
        );
    }

    fn send(core: &mut Core, id: &[u8], subject: &str, timeout: u32, now: Instant) {
        core.handle(
            id,
            None,
            Message::ServiceSend {
                address: "svc".into(),
                subject: subject.into(),
                tracker: "t".into(),
                timeout,
                content: vec![b"body".to_vec()],
            },
            now,
        );
    }

    fn delivered(core: &mut Core, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        core.flush(now, &mut out);
        out.into_iter()
            .filter_map(|o| match o.msg {
                Message::ServiceDeliver { subject, .. } => Some(subject),
                _ => None,
            })
            .collect()
    }

    fn errors(core: &mut Core, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        core.flush(now, &mut out);
        out.into_iter()
            .filter_map(|o| match o.msg {
                Message::Error { status } => Some(status.reason),
                _ => None,
            })
            .collect()
    }

    fn worker(core: &mut Core, now: Instant) {
        open(core, b"w", "worker", now);
        core.handle(
            b"w",
            None,
            Message::ServiceOffer {
                address: "svc".into(),
                pattern: ".*".into(),
            },
            now,
        );
    }

    #[test]
    fn the_delay_word_is_advertised() {
        let t0 = Instant::now();
        let mut core = Core::new(CoreConfig::default(), t0);
        open(&mut core, b"p", "producer", t0);
        let mut out = Vec::new();
        core.flush(t0, &mut out);
        let Message::Ok { status } = &out[0].msg else {
            panic!("{out:?}")
        };
        assert!(status.reason.split_whitespace().any(|w| w == "delay/1"));
    }

    #[test]
    fn a_delayed_request_is_held_then_queued_at_its_due_time() {
        let t0 = Instant::now();
        let mut core = Core::new(CoreConfig::default(), t0);
        worker(&mut core, t0);
        open(&mut core, b"p", "producer", t0);
        delivered(&mut core, t0);
        confirm(&mut core, b"p", "delay:2000", t0);
        // A PING between the two keeps the delay.
        core.handle(b"p", None, Message::ConnectionPing, t0);
        send(&mut core, b"p", "later", 500, t0);
        send(&mut core, b"p", "now", 0, t0);
        assert_eq!(delivered(&mut core, t0), ["now"], "only the plain one");
        assert_eq!(core.stats().delayed_requests, 1);
        assert_eq!(core.counters().requests_delayed, 1);
        let due = after(t0, Duration::from_millis(2000));
        assert_eq!(core.next_deadline().map(|d| d <= due), Some(true));
        let early = after(t0, Duration::from_millis(1999));
        core.tick(early);
        assert!(delivered(&mut core, early).is_empty(), "not before");
        core.tick(due);
        assert_eq!(delivered(&mut core, due), ["later"]);
        assert_eq!(core.stats().delayed_requests, 0);
    }

    #[test]
    fn its_timeout_runs_from_when_it_is_queued() {
        let t0 = Instant::now();
        let mut core = Core::new(CoreConfig::default(), t0);
        open(&mut core, b"p", "producer", t0);
        confirm(&mut core, b"p", "delay:1000", t0);
        send(&mut core, b"p", "later", 500, t0);
        let due = after(t0, Duration::from_millis(1000));
        core.tick(due);
        // No worker yet: it waits in the queue, 400 ms after the due time
        // it is still alive although 1.4 s passed since the send.
        let t = after(due, Duration::from_millis(400));
        core.tick(t);
        worker(&mut core, t);
        assert_eq!(delivered(&mut core, t), ["later"]);
    }

    #[test]
    fn another_command_between_forgets_the_delay_and_bad_ones_are_refused() {
        let t0 = Instant::now();
        let mut core = Core::new(CoreConfig::default(), t0);
        worker(&mut core, t0);
        open(&mut core, b"p", "producer", t0);
        delivered(&mut core, t0);
        confirm(&mut core, b"p", "delay:2000", t0);
        core.handle(b"p", None, Message::StreamWrite { stream: "s".into() }, t0);
        send(&mut core, b"p", "at-once", 0, t0);
        assert_eq!(delivered(&mut core, t0), ["at-once"]);
        for bad in [
            "delay:",
            "delay:x",
            "delay:-5",
            "delay:99999999999999999999",
        ] {
            confirm(&mut core, b"p", bad, t0);
            let e = errors(&mut core, t0);
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert!(e[0].contains("bad delay"), "{e:?}");
        }
        assert_eq!(parse_delay("delay:31536000001"), None);
        assert_eq!(parse_delay("delay:31536000000"), Some(MAX_DELAY_MS));
        assert_eq!(parse_delay("delay:0"), Some(0));
    }

    #[test]
    fn a_cancelled_request_never_arrives() {
        let t0 = Instant::now();
        let mut core = Core::new(CoreConfig::default(), t0);
        worker(&mut core, t0);
        open(&mut core, b"p", "producer", t0);
        delivered(&mut core, t0);
        confirm(&mut core, b"p", "delay:100", t0);
        send(&mut core, b"p", "cancelled", 0, t0);
        let list = core.delayed();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].req.sender, "producer");
        assert_eq!(list[0].service, "svc");
        let id = list[0].req.id;
        assert!(core.cancel_delayed(id));
        assert!(!core.cancel_delayed(id), "once");
        let t = after(t0, Duration::from_secs(1));
        core.tick(t);
        assert!(delivered(&mut core, t).is_empty());
        assert_eq!(core.counters().delayed_cancelled, 1);
    }
}
