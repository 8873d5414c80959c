//! The requests a gateway waits on, as a socket-free state machine: time is
//! passed in, nothing here reads a clock or touches a socket.
//!
//! **Trackers.** Each request gets a tracker `<run>r<seq>`: `<run>` is
//! unique to this gateway process (its pid and start time), `<seq>` counts
//! up. A reply is matched by tracker only, so it can never reach another
//! request; a reply with our run and a number we gave out but no longer wait
//! on is *late* (its request already got `504`), anything else is
//! *unmatched* (e.g. mail left for our address by an earlier run).
//!
//! **Refusals.** A broker that refuses a SERVICE SEND because the queue is
//! full answers `ERROR 300 "service X queue full"`, without the tracker. To
//! tell which request it refused, the gateway follows each turn's sends
//! with a *barrier*: a mail to its own address (tracker `<run>b<n>`). The
//! broker handles one connection's commands in order and answers on it in
//! order, so the refusals of the requests sent before barrier *n* arrive
//! after barrier *n−1* came back and before barrier *n* does: a refusal
//! belongs to the oldest batch whose barrier has not come back. Within that
//! batch it goes to the newest request to that service not yet answered
//! (a queue fills up, so the later sends are the refused ones). This is
//! exact when refusals reach us in order with the deliveries, and when a
//! batch holds one request to the service; see the gateway's design notes
//! for what the current client can and cannot report.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Instant;

/// Unsettled batches kept at most; older ones are settled by force (their
/// barrier got lost, e.g. in a broker restart).
const MAX_BATCHES: usize = 4096;

struct Entry<R> {
    service: String,
    deadline: Instant,
    responder: R,
}

struct Batch {
    barrier: u64,
    /// (seq, service) in the order sent.
    sent: Vec<(u64, String)>,
}

/// What a reply's tracker matched.
#[derive(Debug, PartialEq, Eq)]
pub enum Matched<R> {
    /// A request still waiting: here is its responder.
    Waiting(R),
    /// One of ours, but it was already answered (timed out, or refused).
    Late,
    /// Not one of ours.
    Unmatched,
}

/// Requests waiting for replies, their deadlines, and the batches whose
/// barrier has not come back. `R` is what answers a request (a responder in
/// the gateway, anything in tests).
pub struct Pending<R> {
    run: String,
    next_seq: u64,
    waiting: HashMap<u64, Entry<R>>,
    deadlines: BTreeSet<(Instant, u64)>,
    open: Vec<(u64, String)>,
    batches: VecDeque<Batch>,
    next_barrier: u64,
    replied: HashSet<u64>,
    refused: HashSet<u64>,
}

impl<R> Pending<R> {
    /// Nothing waiting. `run` starts every tracker this process gives out
    /// ([`run_id`] makes one).
    pub fn new(run: impl Into<String>) -> Self {
        Pending {
            run: run.into(),
            next_seq: 1,
            waiting: HashMap::new(),
            deadlines: BTreeSet::new(),
            open: Vec::new(),
            batches: VecDeque::new(),
            next_barrier: 1,
            replied: HashSet::new(),
            refused: HashSet::new(),
        }
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Registers a request to `service` that waits until `deadline`;
    /// returns the tracker to send it with.
    pub fn add(&mut self, service: &str, deadline: Instant, responder: R) -> String {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.waiting.insert(
            seq,
            Entry {
                service: service.to_string(),
                deadline,
                responder,
            },
        );
        self.deadlines.insert((deadline, seq));
        self.open.push((seq, service.to_string()));
        format!("{}r{seq}", self.run)
    }

    /// Takes back a request whose send failed (nothing was sent, so no
    /// barrier needs to cover it).
    pub fn cancel(&mut self, tracker: &str) -> Option<R> {
        let seq = self.parse(tracker, 'r')?;
        self.open.retain(|(s, _)| *s != seq);
        self.remove(seq)
    }

    fn remove(&mut self, seq: u64) -> Option<R> {
        let e = self.waiting.remove(&seq)?;
        self.deadlines.remove(&(e.deadline, seq));
        Some(e.responder)
    }

    fn parse(&self, tracker: &str, kind: char) -> Option<u64> {
        tracker
            .strip_prefix(self.run.as_str())?
            .strip_prefix(kind)?
            .parse()
            .ok()
    }

    /// Closes the batch of requests sent since the last barrier; returns
    /// the tracker of the barrier to send after them, or `None` if no
    /// request was sent.
    pub fn barrier(&mut self) -> Option<String> {
        if self.open.is_empty() {
            return None;
        }
        let barrier = self.next_barrier;
        self.next_barrier += 1;
        self.batches.push_back(Batch {
            barrier,
            sent: std::mem::take(&mut self.open),
        });
        while self.batches.len() > MAX_BATCHES {
            self.settle_front();
        }
        Some(format!("{}b{barrier}", self.run))
    }

    /// Whether `tracker` is one of our barriers.
    pub fn is_barrier(&self, tracker: &str) -> bool {
        self.parse(tracker, 'b').is_some()
    }

    /// A barrier came back: its batch and all before it are settled (what
    /// was not refused was accepted).
    pub fn on_barrier(&mut self, tracker: &str) {
        let Some(n) = self.parse(tracker, 'b') else {
            return;
        };
        while self.batches.front().is_some_and(|b| b.barrier <= n) {
            self.settle_front();
        }
    }

    fn settle_front(&mut self) {
        if let Some(b) = self.batches.pop_front() {
            for (seq, _) in b.sent {
                self.replied.remove(&seq);
                self.refused.remove(&seq);
            }
        }
    }

    /// The connection was opened again: barriers in flight are lost with
    /// the old connection, and so are refusals; settle everything.
    pub fn settle_all(&mut self) {
        while !self.batches.is_empty() {
            self.settle_front();
        }
        self.replied.clear();
        self.refused.clear();
    }

    /// Batches waiting for their barrier.
    pub fn unsettled(&self) -> usize {
        self.batches.len() + usize::from(!self.open.is_empty())
    }

    /// A reply with `tracker` arrived.
    pub fn on_reply(&mut self, tracker: &str) -> Matched<R> {
        let Some(seq) = self.parse(tracker, 'r') else {
            return Matched::Unmatched;
        };
        if seq == 0 || seq >= self.next_seq {
            return Matched::Unmatched;
        }
        // Replied means accepted: never the one a refusal is for. Only
        // unsettled requests need remembering; sequence numbers grow, so
        // they are those from the oldest unsettled batch on.
        let oldest_unsettled = self
            .batches
            .front()
            .and_then(|b| b.sent.first())
            .or(self.open.first())
            .map(|(s, _)| *s);
        if oldest_unsettled.is_some_and(|first| seq >= first) {
            self.replied.insert(seq);
        }
        match self.remove(seq) {
            Some(r) => Matched::Waiting(r),
            None => Matched::Late,
        }
    }

    /// The broker refused a request to `service` (queue full). Returns the
    /// responder of the request it was, if that one still waits.
    pub fn on_refused(&mut self, service: &str) -> Option<R> {
        let mut hit = None;
        let batches = self.batches.iter().map(|b| &b.sent).chain([&self.open]);
        'outer: for sent in batches {
            for (seq, svc) in sent.iter().rev() {
                if svc == service && !self.replied.contains(seq) && !self.refused.contains(seq) {
                    hit = Some(*seq);
                    break 'outer;
                }
            }
        }
        let seq = hit?;
        self.refused.insert(seq);
        self.remove(seq)
    }

    /// When the next request times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Takes the requests whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<R> {
        let mut out = Vec::new();
        while let Some(&(t, seq)) = self.deadlines.first() {
            if t > now {
                break;
            }
            if let Some(r) = self.remove(seq) {
                out.push(r);
            }
        }
        out
    }

    /// Takes every waiting request (on stop).
    pub fn drain(&mut self) -> Vec<R> {
        self.deadlines.clear();
        self.open.clear();
        self.waiting.drain().map(|(_, e)| e.responder).collect()
    }

    /// The service a waiting request was sent to.
    pub fn service_of(&self, tracker: &str) -> Option<&str> {
        let seq = self.parse(tracker, 'r')?;
        self.waiting.get(&seq).map(|e| e.service.as_str())
    }
}

/// A run id for trackers: this process's id and start time in hex, so a
/// gateway restarted under the same address never takes mail left for its
/// previous run for its own.
pub fn run_id(pid: u32, started_unix_nanos: u128) -> String {
    format!("{pid:x}-{:x}-", started_unix_nanos & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn replies_match_by_tracker_and_late_ones_are_told_apart() {
        let now = t0();
        let mut p = Pending::new("a-1-");
        let t1 = p.add("svc", now + Duration::from_secs(1), 1);
        let t2 = p.add("svc", now + Duration::from_secs(2), 2);
        assert_eq!((t1.as_str(), t2.as_str()), ("a-1-r1", "a-1-r2"));
        assert_eq!(p.on_reply(&t2), Matched::Waiting(2));
        assert_eq!(p.on_reply(&t2), Matched::Late, "answered already");
        assert_eq!(
            p.expire(now + Duration::from_millis(999)),
            Vec::<i32>::new()
        );
        assert_eq!(p.next_deadline(), Some(now + Duration::from_secs(1)));
        assert_eq!(p.expire(now + Duration::from_secs(1)), vec![1]);
        assert_eq!(p.on_reply(&t1), Matched::Late, "after its 504");
        assert_eq!(p.on_reply("a-1-r3"), Matched::Unmatched, "never given out");
        assert_eq!(p.on_reply("a-1-r0"), Matched::Unmatched);
        assert_eq!(p.on_reply("b-2-r1"), Matched::Unmatched, "another run");
        assert_eq!(p.on_reply("a-1-b1"), Matched::Unmatched, "a barrier");
        assert_eq!(p.on_reply(""), Matched::Unmatched);
        assert!(p.is_empty() && p.next_deadline().is_none());
    }

    #[test]
    fn a_barrier_only_after_sends_and_it_settles_its_batch() {
        let now = t0();
        let mut p = Pending::new("x-");
        assert_eq!(p.barrier(), None);
        p.add("svc", now, 1);
        let b1 = p.barrier().unwrap();
        assert_eq!(b1, "x-b1");
        assert!(p.is_barrier(&b1) && !p.is_barrier("x-r1") && !p.is_barrier("y-b1"));
        assert_eq!(p.barrier(), None, "nothing sent since");
        p.add("svc", now, 2);
        let b2 = p.barrier().unwrap();
        assert_eq!(p.unsettled(), 2);
        p.on_barrier(&b2);
        assert_eq!(
            p.unsettled(),
            0,
            "a later barrier settles earlier batches too"
        );
        assert_eq!(b1, "x-b1");
    }

    #[test]
    fn a_refusal_goes_to_the_oldest_unsettled_batch() {
        let now = t0() + Duration::from_secs(5);
        let mut p = Pending::new("x-");
        // Batch 1: A to svc (accepted, its barrier comes back).
        p.add("svc", now, "A");
        let b1 = p.barrier().unwrap();
        // Batch 2: B to svc (refused).
        p.add("svc", now, "B");
        let _b2 = p.barrier().unwrap();
        // Batch 3: C to svc, sent before B's refusal arrives.
        p.add("svc", now, "C");
        let _b3 = p.barrier().unwrap();
        p.on_barrier(&b1);
        assert_eq!(p.on_refused("svc"), Some("B"), "not C, which is newer");
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn within_a_batch_the_newest_to_that_service_is_refused() {
        let now = t0() + Duration::from_secs(5);
        let mut p = Pending::new("x-");
        p.add("svc", now, "A");
        p.add("other", now, "O");
        p.add("svc", now, "B");
        p.add("svc", now, "C");
        p.barrier().unwrap();
        assert_eq!(p.on_refused("svc"), Some("C"));
        assert_eq!(p.on_refused("svc"), Some("B"));
        assert_eq!(p.on_refused("other"), Some("O"));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_replied_request_is_never_taken_for_refused() {
        let now = t0() + Duration::from_secs(5);
        let mut p = Pending::new("x-");
        p.add("svc", now, "A");
        let tb = p.add("svc", now, "B");
        p.barrier().unwrap();
        assert_eq!(p.on_reply(&tb), Matched::Waiting("B"));
        assert_eq!(p.on_refused("svc"), Some("A"));
    }

    #[test]
    fn a_refusal_for_an_expired_request_is_consumed_without_effect() {
        let now = t0();
        let mut p = Pending::new("x-");
        p.add("svc", now, "A");
        p.add("svc", now + Duration::from_secs(9), "B");
        p.barrier().unwrap();
        assert_eq!(p.expire(now), vec!["A"]);
        // The newest (B) is the one taken: A already got its 504 and B is
        // the better guess for a full queue.
        assert_eq!(p.on_refused("svc"), Some("B"));
        assert_eq!(p.on_refused("svc"), None, "A: already answered");
        assert_eq!(p.on_refused("svc"), None, "nothing left");
    }

    #[test]
    fn settled_requests_are_never_taken_for_refused() {
        let now = t0() + Duration::from_secs(5);
        let mut p = Pending::new("x-");
        p.add("svc", now, "A");
        let b = p.barrier().unwrap();
        p.on_barrier(&b);
        assert_eq!(p.on_refused("svc"), None, "A was accepted");
        assert_eq!(p.len(), 1);
        p.add("svc", now, "B");
        p.barrier().unwrap();
        p.settle_all();
        assert_eq!(p.on_refused("svc"), None, "settled by a reconnect");
    }

    #[test]
    fn cancel_and_drain() {
        let now = t0();
        let mut p = Pending::new("x-");
        let ta = p.add("svc", now, "A");
        p.add("svc", now, "B");
        assert_eq!(p.service_of(&ta), Some("svc"));
        assert_eq!(p.cancel(&ta), Some("A"));
        assert_eq!(p.cancel(&ta), None);
        assert_eq!(p.drain(), vec!["B"]);
        assert!(p.is_empty() && p.barrier().is_none() && p.next_deadline().is_none());
    }

    #[test]
    fn lost_barriers_do_not_pile_up() {
        let now = t0();
        let mut p = Pending::new("x-");
        for i in 0..(MAX_BATCHES + 10) {
            p.add("svc", now, i);
            p.barrier().unwrap();
        }
        assert_eq!(p.unsettled(), MAX_BATCHES);
    }

    #[test]
    fn run_ids_differ_by_pid_and_time() {
        assert_ne!(run_id(1, 5), run_id(2, 5));
        assert_ne!(run_id(1, 5), run_id(1, 6));
        assert!(run_id(0xabc, 0x123).starts_with("abc-123-"));
    }
}
