//! Client-side retries with de-duplication: requests waiting for a reply,
//! keyed by their tracker. Socket-free; time is passed in.
//!
//! A request that has had no reply in time is sent again, with the same
//! tracker, to the next broker (the caller picks it: see
//! [`super::Selector::after`]); so is every request waiting on a broker
//! that went away, at once. The first reply for a tracker is the answer;
//! any later one (the first broker answered after all, or a worker ran the
//! request twice) is a duplicate, counted and dropped. This gives the
//! requester at least once across a broker crash, and exactly one answer
//! per request.
//!
//! "In time": a request is due for a resend when `wait` has passed since
//! it was sent *and* since the broker it went to last answered anything.
//! A broker that keeps answering other requests is working through a
//! queue, and resending behind it would only add load; a broker that went
//! silent gets no such credit. With one request at a time this is simply
//! `wait` after the send.

use crate::time::after;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// What a reply is to the requests waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// The first reply for this tracker: the answer. `attempts` is how
    /// many times the request had been sent.
    First {
        /// Sends of the request, the first included.
        attempts: u32,
    },
    /// A tracker already answered: drop it.
    Duplicate,
    /// A tracker given up on (no reply after every attempt): too late.
    Late,
    /// A tracker never sent (another run's, say).
    Unknown,
}

/// Counters of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryStats {
    /// Requests sent (first sends).
    pub sent: u64,
    /// Sends again (all attempts after the first).
    pub resent: u64,
    /// Requests answered.
    pub answered: u64,
    /// Replies dropped because their tracker was already answered.
    pub duplicates: u64,
    /// Requests given up on after every attempt.
    pub gave_up: u64,
    /// Replies for trackers given up on.
    pub late: u64,
    /// Replies for trackers never sent.
    pub unknown: u64,
}

/// What [`Retries::due`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due<K> {
    /// Send these again now: (tracker, the broker it last went to). Each
    /// is already counted as sent again; tell [`Retries::resend_to`]
    /// where it went.
    pub resend: Vec<(K, usize)>,
    /// No reply after every attempt: given up.
    pub gave_up: Vec<K>,
}

impl<K> Default for Due<K> {
    fn default() -> Self {
        Due {
            resend: Vec::new(),
            gave_up: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    broker: usize,
    attempts: u32,
    slot: (Instant, u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    Answered,
    GaveUp,
}

/// The requests waiting for replies. See the module documentation.
#[derive(Debug)]
pub struct Retries<K> {
    wait: Duration,
    retries: u32,
    live: HashMap<K, Entry>,
    deadlines: BTreeMap<(Instant, u64), K>,
    closed: HashMap<K, Closed>,
    heard: Vec<Option<Instant>>,
    seq: u64,
    stats: RetryStats,
}

impl<K: Clone + Eq + Hash> Retries<K> {
    /// Each attempt waits `wait` for its reply; a request is sent at most
    /// `retries` times more after the first.
    pub fn new(wait: Duration, retries: u32) -> Retries<K> {
        Retries {
            wait,
            retries,
            live: HashMap::new(),
            deadlines: BTreeMap::new(),
            closed: HashMap::new(),
            heard: Vec::new(),
            seq: 0,
            stats: RetryStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> RetryStats {
        self.stats
    }

    /// Requests waiting for a reply.
    pub fn outstanding(&self) -> usize {
        self.live.len()
    }

    /// The broker `key` last went to, while it waits.
    pub fn broker_of(&self, key: &K) -> Option<usize> {
        self.live.get(key).map(|e| e.broker)
    }

    /// The earliest instant [`Retries::due`] may have something to say.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(t, _)| *t)
    }

    /// A request sent for the first time, to `broker`.
    pub fn sent(&mut self, key: K, broker: usize, now: Instant) {
        self.stats.sent += 1;
        if let Some(old) = self.live.remove(&key) {
            self.deadlines.remove(&old.slot);
        }
        self.closed.remove(&key);
        let slot = self.slot(after(now, self.wait), key.clone());
        self.live.insert(
            key,
            Entry {
                broker,
                attempts: 1,
                slot,
            },
        );
    }

    /// Where a request handed out by [`Retries::due`] or
    /// [`Retries::broker_lost`] was sent again.
    pub fn resend_to(&mut self, key: &K, broker: usize) {
        if let Some(e) = self.live.get_mut(key) {
            e.broker = broker;
        }
    }

    /// A reply for `key` came over `broker` at `now`.
    pub fn on_reply(&mut self, key: &K, broker: usize, now: Instant) -> ReplyKind {
        self.heard_from(broker, now);
        if let Some(e) = self.live.remove(key) {
            self.deadlines.remove(&e.slot);
            self.closed.insert(key.clone(), Closed::Answered);
            self.stats.answered += 1;
            return ReplyKind::First {
                attempts: e.attempts,
            };
        }
        match self.closed.get(key) {
            Some(Closed::Answered) => {
                self.stats.duplicates += 1;
                ReplyKind::Duplicate
            }
            Some(Closed::GaveUp) => {
                self.stats.late += 1;
                ReplyKind::Late
            }
            None => {
                self.stats.unknown += 1;
                ReplyKind::Unknown
            }
        }
    }

    /// Broker `broker` went away: every request waiting on it that has an
    /// attempt left is due again now (counted as sent again; tell
    /// [`Retries::resend_to`] where it went). Those without one keep
    /// waiting for their deadline: the broker may come back and answer.
    pub fn broker_lost(&mut self, broker: usize, now: Instant) -> Vec<K> {
        let keys: Vec<K> = self
            .live
            .iter()
            .filter(|(_, e)| e.broker == broker && e.attempts <= self.retries)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            self.again(k, now);
        }
        keys
    }

    /// The requests whose time is up at `now`: those with an attempt left
    /// are sent again (see [`Due::resend`]), the others given up.
    pub fn due(&mut self, now: Instant) -> Due<K> {
        let mut due = Due::default();
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            let Some(e) = self.live.get(&key).copied() else {
                continue;
            };
            // Its broker answered something lately: it is busy, not gone.
            if let Some(heard) = self.heard.get(e.broker).copied().flatten() {
                if after(heard, self.wait) > now {
                    let slot = self.slot(after(heard, self.wait), key.clone());
                    if let Some(live) = self.live.get_mut(&key) {
                        live.slot = slot;
                    }
                    continue;
                }
            }
            if e.attempts <= self.retries {
                self.again(&key, now);
                due.resend.push((key, e.broker));
            } else {
                self.live.remove(&key);
                self.closed.insert(key.clone(), Closed::GaveUp);
                self.stats.gave_up += 1;
                due.gave_up.push(key);
            }
        }
        due
    }

    fn heard_from(&mut self, broker: usize, now: Instant) {
        if self.heard.len() <= broker {
            self.heard.resize(broker + 1, None);
        }
        self.heard[broker] = Some(now);
    }

    fn again(&mut self, key: &K, now: Instant) {
        let slot = self.slot(after(now, self.wait), key.clone());
        if let Some(e) = self.live.get_mut(key) {
            self.deadlines.remove(&e.slot);
            e.slot = slot;
            e.attempts += 1;
            self.stats.resent += 1;
        }
    }

    fn slot(&mut self, at: Instant, key: K) -> (Instant, u64) {
        self.seq += 1;
        let slot = (at, self.seq);
        self.deadlines.insert(slot, key);
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(1000);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_reply_answers_and_later_ones_are_duplicates() {
        let t0 = Instant::now();
        let mut r: Retries<String> = Retries::new(WAIT, 2);
        r.sent("t1".into(), 0, t0);
        assert_eq!(r.outstanding(), 1);
        assert_eq!(
            r.on_reply(&"t1".into(), 0, t0 + ms(5)),
            ReplyKind::First { attempts: 1 }
        );
        assert_eq!(r.outstanding(), 0);
        assert_eq!(
            r.on_reply(&"t1".into(), 1, t0 + ms(6)),
            ReplyKind::Duplicate
        );
        assert_eq!(r.on_reply(&"zz".into(), 0, t0 + ms(7)), ReplyKind::Unknown);
        let s = r.stats();
        assert_eq!((s.sent, s.answered, s.duplicates, s.unknown), (1, 1, 1, 1));
        assert_eq!(r.next_deadline(), None, "nothing left to time");
        assert_eq!(r.due(t0 + ms(5000)), Due::default());
    }

    #[test]
    fn no_reply_in_time_resends_with_the_same_tracker_then_gives_up() {
        let t0 = Instant::now();
        let mut r: Retries<&str> = Retries::new(WAIT, 2);
        r.sent("t", 0, t0);
        assert_eq!(r.next_deadline(), Some(t0 + WAIT));
        assert_eq!(r.due(t0 + ms(999)), Due::default(), "not yet");
        let d = r.due(t0 + WAIT);
        assert_eq!(d.resend, [("t", 0)]);
        r.resend_to(&"t", 1);
        assert_eq!(r.broker_of(&"t"), Some(1));
        // Second attempt times out too: the last resend.
        let d = r.due(t0 + ms(2000));
        assert_eq!(d.resend, [("t", 1)]);
        r.resend_to(&"t", 0);
        // Third: no attempt left.
        let d = r.due(t0 + ms(3000));
        assert!(d.resend.is_empty());
        assert_eq!(d.gave_up, ["t"]);
        assert_eq!(r.outstanding(), 0);
        assert_eq!(r.on_reply(&"t", 0, t0 + ms(3100)), ReplyKind::Late);
        let s = r.stats();
        assert_eq!((s.sent, s.resent, s.gave_up, s.late), (1, 2, 1, 1));
    }

    #[test]
    fn a_reply_to_the_resend_reports_the_attempts_and_the_first_attempt_late_is_a_duplicate() {
        let t0 = Instant::now();
        let mut r: Retries<u64> = Retries::new(WAIT, 3);
        r.sent(7, 0, t0);
        let d = r.due(t0 + WAIT);
        assert_eq!(d.resend, [(7, 0)]);
        r.resend_to(&7, 1);
        assert_eq!(
            r.on_reply(&7, 1, t0 + ms(1010)),
            ReplyKind::First { attempts: 2 }
        );
        // The first broker answers after all: dropped.
        assert_eq!(r.on_reply(&7, 0, t0 + ms(1500)), ReplyKind::Duplicate);
        assert_eq!(r.stats().duplicates, 1);
    }

    #[test]
    fn a_broker_that_goes_away_has_its_requests_resent_at_once() {
        let t0 = Instant::now();
        let mut r: Retries<u64> = Retries::new(WAIT, 1);
        r.sent(1, 0, t0);
        r.sent(2, 1, t0);
        r.sent(3, 0, t0);
        let mut lost = r.broker_lost(0, t0 + ms(100));
        lost.sort_unstable();
        assert_eq!(lost, [1, 3], "only broker 0's");
        r.resend_to(&1, 1);
        r.resend_to(&3, 1);
        // Their new deadline runs from the resend.
        let d = r.due(t0 + ms(1000));
        assert_eq!(d.resend, [(2, 1)], "broker 1's own request is due");
        assert!(d.gave_up.is_empty());
        r.resend_to(&2, 0);
        // Broker 1 goes away too: 1 and 3 have no attempt left and wait
        // for their deadline; 2 has none left either.
        assert!(r.broker_lost(1, t0 + ms(1050)).is_empty());
        let mut d = r.due(t0 + ms(1100));
        d.gave_up.sort_unstable();
        assert_eq!(d.gave_up, [1, 3]);
        let d = r.due(t0 + ms(2000));
        assert_eq!(d.gave_up, [2]);
    }

    #[test]
    fn a_busy_broker_that_keeps_answering_is_not_resent_behind() {
        let t0 = Instant::now();
        let mut r: Retries<u64> = Retries::new(WAIT, 1);
        r.sent(1, 0, t0);
        r.sent(2, 0, t0);
        r.sent(3, 1, t0);
        // Broker 0 answers request 2 late, just before 1's deadline: it is
        // working through its queue, so 1 gets another `wait` from then.
        assert_eq!(
            r.on_reply(&2, 0, t0 + ms(900)),
            ReplyKind::First { attempts: 1 }
        );
        let d = r.due(t0 + ms(1000));
        assert_eq!(d.resend, [(3, 1)], "broker 1 said nothing: resent");
        assert_eq!(r.next_deadline(), Some(t0 + ms(1900)));
        assert_eq!(r.due(t0 + ms(1899)), Due::default());
        let d = r.due(t0 + ms(1900));
        assert_eq!(d.resend, [(1, 0)], "broker 0 silent since: resent");
    }

    #[test]
    fn no_retries_means_wait_then_give_up() {
        let t0 = Instant::now();
        let mut r: Retries<u64> = Retries::new(WAIT, 0);
        r.sent(1, 0, t0);
        assert!(r.broker_lost(0, t0).is_empty(), "no attempt left");
        let d = r.due(t0 + WAIT);
        assert_eq!((d.resend.len(), d.gave_up.as_slice()), (0, &[1][..]));
    }
}
