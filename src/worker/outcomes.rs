//! What happens to a request once its handler has ended: the one place
//! where retries, dead letters, forwards, replies and error replies are
//! decided, for every kind of handler (Lua script, HTTP runner, exec
//! runner). Pure: no sockets, no clock; the dispatcher carries out the
//! [`Decision`] and keeps waiting retries in a [`RetryQueue`].
//!
//! Two things travel with a request across workers: its attempt count and
//! its hop count. They ride in the tracker as an [`Envelope`] when a worker
//! sends a request on to a service itself (a forward, or a waiting retry
//! handed back at stop), together with the original requester's address
//! and tracker, so that the stage that finally answers replies to the
//! original requester as if it had answered directly. No broker change is
//! needed: the tracker is an opaque string to every broker.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::types::{ErrorKind, Outcome, Request, ScriptError};
use crate::mlm::codec::MAX_STRING;

/// The retry, dead-letter and forward settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Runs at most, counting the first (`worker/retry/attempts`).
    pub attempts: u32,
    /// First backoff delay (`worker/retry/backoff`); doubles per attempt.
    pub backoff: Duration,
    /// Longest backoff delay (`worker/retry/backoff_max`).
    pub backoff_max: Duration,
    /// Retry script errors (runtime, budgets, missing script) too
    /// (`worker/retry/errors`).
    pub retry_errors: bool,
    /// Most stages a request may be forwarded through (`worker/forward/hops`).
    pub max_hops: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            attempts: 3,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            retry_errors: false,
            max_hops: 8,
        }
    }
}

/// What the dispatcher must do with a finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Reply (when there is a reply and the requester waits), confirm.
    Done {
        /// The reply.
        reply: Option<Vec<u8>>,
    },
    /// Run it again after `delay` with the attempt count one higher.
    Retry {
        /// How long to wait.
        delay: Duration,
    },
    /// Give up: the error mailbox gets a report with `text`, a waiting
    /// requester an error reply.
    DeadLetter {
        /// The report: outcome, reason, attempts.
        text: String,
        /// The kind of failure, for counting (`None`: an explicit fail).
        kind: Option<ErrorKind>,
    },
    /// Discard silently.
    Drop,
    /// Send on to `address` with the envelope tracker.
    Forward {
        /// Service address.
        address: String,
        /// Subject there.
        subject: String,
        /// The tracker carrying the envelope.
        tracker: String,
        /// Frames.
        content: Vec<Vec<u8>>,
        /// Held by the broker this long before it is queued (delay/1).
        delay: Option<Duration>,
    },
}

impl Decision {
    /// The decision's name, as logs and metrics say it.
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Done { .. } => "done",
            Decision::Retry { .. } => "retry",
            Decision::DeadLetter { kind: None, .. } => "fail",
            Decision::DeadLetter { kind: Some(_), .. } => "error",
            Decision::Drop => "drop",
            Decision::Forward { .. } => "forward",
        }
    }
}

impl Policy {
    /// Decides what becomes of `req` after a run that ended in `result`.
    /// `jitter` in `[0, 1)` spreads backoff delays (the caller draws it).
    pub fn decide(
        &self,
        req: &Request,
        result: Result<Outcome, ScriptError>,
        jitter: f64,
    ) -> Decision {
        let attempts = |n: u32| format!("{n} attempt{}", if n == 1 { "" } else { "s" });
        match result {
            Ok(Outcome::Done { reply }) => Decision::Done { reply },
            Ok(Outcome::Drop) => Decision::Drop,
            Ok(Outcome::Fail { reason }) => Decision::DeadLetter {
                text: format!(
                    "failed by its handler after {}: {reason}",
                    attempts(req.attempt)
                ),
                kind: None,
            },
            Ok(Outcome::Retry { after, reason }) => {
                if req.attempt >= self.attempts {
                    return Decision::DeadLetter {
                        text: format!(
                            "retry asked, but {} of {} used: {reason}",
                            attempts(req.attempt),
                            self.attempts
                        ),
                        kind: None,
                    };
                }
                // An asked delay (a script's, a child's `after_ms`, an HTTP
                // `Retry-After`) is honoured up to a day: a worker never
                // holds a request longer, however large the number it was
                // given (`math.huge`, `1e22`).
                let delay = match after {
                    Some(d) => d.min(MAX_ASKED_DELAY),
                    None => self.backoff(req.attempt, jitter),
                };
                Decision::Retry { delay }
            }
            Ok(Outcome::Forward {
                address,
                subject,
                content,
                delay,
            }) => {
                if req.hops >= self.max_hops {
                    return Decision::DeadLetter {
                        text: format!(
                            "forward to {address}/{subject} refused: hop limit of {} reached \
                             (a forwarding loop?)",
                            self.max_hops
                        ),
                        kind: Some(ErrorKind::Protocol),
                    };
                }
                let env = Envelope {
                    hops: req.hops + 1,
                    attempt: 1,
                    sender: req.sender.clone(),
                    tracker: req.tracker.clone(),
                };
                match env.encode() {
                    Some(tracker) => Decision::Forward {
                        address,
                        subject,
                        tracker,
                        content: content.unwrap_or_else(|| req.content.clone()),
                        delay,
                    },
                    None => Decision::DeadLetter {
                        text: format!(
                            "forward to {address}/{subject} refused: the requester's address \
                             and tracker are too long to carry in a tracker ({MAX_STRING} bytes)"
                        ),
                        kind: Some(ErrorKind::Protocol),
                    },
                }
            }
            Err(e) => {
                if self.retry_errors && req.attempt < self.attempts {
                    return Decision::Retry {
                        delay: self.backoff(req.attempt, jitter),
                    };
                }
                Decision::DeadLetter {
                    text: format!(
                        "{} after {}: {}",
                        e.kind.name(),
                        attempts(req.attempt),
                        e.message
                    ),
                    kind: Some(e.kind),
                }
            }
        }
    }

    /// Exponential backoff for the run after `attempt`: `backoff` doubled
    /// per attempt, capped at `backoff_max`, then jittered into its upper
    /// half (so retries of a burst spread out, and none comes early by
    /// more than half).
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let full = self
            .backoff
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// The longest retry delay a handler may ask for (`alaska.retry(ms)`,
/// `after_ms`, `Retry-After`): longer ones are cut to it.
pub const MAX_ASKED_DELAY: Duration = Duration::from_secs(24 * 3600);

/// What travels in the tracker of a request a worker sends on itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Stages passed so far.
    pub hops: u32,
    /// Attempt number of the next run.
    pub attempt: u32,
    /// The original requester's address.
    pub sender: String,
    /// The original requester's tracker.
    pub tracker: String,
}

/// Marks a tracker that carries an [`Envelope`]. A tracker from a client
/// is opaque to us; one that starts with this is read as an envelope.
pub const ENVELOPE_PREFIX: &str = "~alaska1:";

impl Envelope {
    /// `~alaska1:<hops>:<attempt>:<sender length>:<sender><tracker>`, or
    /// `None` when that is longer than a tracker can be.
    pub fn encode(&self) -> Option<String> {
        let s = format!(
            "{ENVELOPE_PREFIX}{}:{}:{}:{}{}",
            self.hops,
            self.attempt,
            self.sender.len(),
            self.sender,
            self.tracker
        );
        (s.len() <= MAX_STRING).then_some(s)
    }

    /// Reads an envelope tracker; `None` for any other tracker.
    pub fn decode(tracker: &str) -> Option<Envelope> {
        let rest = tracker.strip_prefix(ENVELOPE_PREFIX)?;
        let mut parts = rest.splitn(4, ':');
        let hops = parts.next()?.parse().ok()?;
        let attempt: u32 = parts.next()?.parse().ok()?;
        let len: usize = parts.next()?.parse().ok()?;
        let tail = parts.next()?;
        if !tail.is_char_boundary(len.min(tail.len())) || tail.len() < len {
            return None;
        }
        let (sender, tracker) = tail.split_at(len);
        Some(Envelope {
            hops,
            attempt: attempt.max(1),
            sender: sender.to_string(),
            tracker: tracker.to_string(),
        })
    }

    /// The request as the original requester sent it: sender, tracker,
    /// attempt and hops taken from the envelope when the tracker is one.
    pub fn open(req: &mut Request) {
        if let Some(env) = Envelope::decode(&req.tracker) {
            req.sender = env.sender;
            req.tracker = env.tracker;
            req.attempt = env.attempt;
            req.hops = env.hops;
        }
    }
}

// Here rather than beside `Request` in `types`: opening the envelope is
// this module's business, and `types` stays a leaf.
impl Request {
    /// A request as a broker delivered it: its first run, never forwarded,
    /// unless its tracker carries an envelope (see
    /// [`super::outcomes::Envelope::open`], which the receiver applies).
    pub fn delivered(d: crate::mlm::Delivery) -> Request {
        let mut r = Request {
            sender: d.sender,
            address: d.address,
            subject: d.subject,
            tracker: d.tracker,
            content: d.content,
            attempt: 1,
            hops: 0,
        };
        Envelope::open(&mut r);
        r
    }
}

/// Requests waiting for their next attempt, ordered by due time, bounded.
#[derive(Debug)]
pub struct RetryQueue<T> {
    waiting: BTreeMap<(Instant, u64), T>,
    limit: usize,
    seq: u64,
}

impl<T> RetryQueue<T> {
    /// An empty queue that holds at most `limit` items.
    pub fn new(limit: usize) -> Self {
        RetryQueue {
            waiting: BTreeMap::new(),
            limit,
            seq: 0,
        }
    }

    /// Queues `item` for `at`; gives it back when the queue is full.
    #[allow(clippy::result_large_err)]
    pub fn push(&mut self, at: Instant, item: T) -> Result<(), T> {
        if self.waiting.len() >= self.limit {
            return Err(item);
        }
        self.seq += 1;
        self.waiting.insert((at, self.seq), item);
        Ok(())
    }

    /// The next item due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        let (&(at, _), _) = self.waiting.first_key_value()?;
        if at > now {
            return None;
        }
        self.waiting.pop_first().map(|(_, item)| item)
    }

    /// When the earliest item is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.keys().next().map(|&(at, _)| at)
    }

    /// How many wait.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// How many waiting items `f` is true of.
    pub fn count_where(&self, f: impl Fn(&T) -> bool) -> usize {
        self.waiting.values().filter(|v| f(v)).count()
    }

    /// Removes the items `take` is true of, returning them.
    pub fn take_if(&mut self, mut take: impl FnMut(&T) -> bool) -> Vec<T> {
        let keys: Vec<(Instant, u64)> = self
            .waiting
            .iter()
            .filter(|(_, v)| take(v))
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| self.waiting.remove(&k))
            .collect()
    }

    /// Everything still waiting, earliest first.
    pub fn drain(&mut self) -> Vec<T> {
        std::mem::take(&mut self.waiting).into_values().collect()
    }
}

/// Version of the metadata frame of a dead letter (its `"format"` field).
pub const DEAD_LETTER_FORMAT: u32 = 1;

/// The frames of a dead letter's report to the error mailbox.
///
/// The first two are the original report, which libmlm readers of the
/// original already parse: the report text, then the request's first
/// content frame (empty if it had none). A third, trailing frame carries a
/// JSON object with everything needed to replay the request: its service
/// address and subject, the requester and tracker that waited (null when
/// none did), the outcome, reason, attempt and hop counts, when it was
/// given up (RFC 3339, UTC) and all its content frames (`{"text": ..}` for
/// UTF-8, `{"base64": ..}` otherwise). Readers of the original format
/// ignore frames beyond the second. See docs/PROTOCOL-NOTES.md.
pub fn dead_letter_frames(
    req: &Request,
    text: &str,
    outcome: &str,
    when: std::time::SystemTime,
) -> Vec<Vec<u8>> {
    let first = req.content.first().cloned().unwrap_or_default();
    let or_null = |s: &str| {
        if s.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::Value::from(s)
        }
    };
    let frames: Vec<serde_json::Value> = req.content.iter().map(|f| frame_json(f)).collect();
    let meta = serde_json::json!({
        "format": DEAD_LETTER_FORMAT,
        "address": req.address,
        "subject": req.subject,
        "requester": or_null(&req.sender),
        "tracker": or_null(&req.tracker),
        "outcome": outcome,
        "reason": text,
        "attempts": req.attempt,
        "hops": req.hops,
        "when": rfc3339(when),
        "frames": frames,
    });
    vec![
        text.as_bytes().to_vec(),
        first,
        meta.to_string().into_bytes(),
    ]
}

/// One content frame as JSON: its text when it is UTF-8, else base64.
pub fn frame_json(frame: &[u8]) -> serde_json::Value {
    use base64::Engine as _;
    match std::str::from_utf8(frame) {
        Ok(t) => serde_json::json!({ "text": t }),
        Err(_) => serde_json::json!({
            "base64": base64::engine::general_purpose::STANDARD.encode(frame)
        }),
    }
}

/// A time as RFC 3339 in UTC with milliseconds (`2026-12-05T17:20:01.234Z`);
/// times before 1970 are written as the epoch.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (the proleptic Gregorian
    // calendar, counted in 400-year eras of 146097 days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(attempt: u32) -> Request {
        Request {
            sender: "alas-1".into(),
            address: "svc".into(),
            subject: "job".into(),
            tracker: "t-1".into(),
            content: vec![b"body".to_vec(), b"second".to_vec()],
            attempt,
            hops: 0,
        }
    }

    fn policy() -> Policy {
        Policy {
            attempts: 3,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(350),
            retry_errors: false,
            max_hops: 2,
        }
    }

    fn error(kind: ErrorKind) -> Result<Outcome, ScriptError> {
        Err(ScriptError {
            kind,
            message: "boom".into(),
        })
    }

    #[test]
    fn done_and_drop_pass_through() {
        let p = policy();
        assert_eq!(
            p.decide(
                &req(1),
                Ok(Outcome::Done {
                    reply: Some(b"r".to_vec())
                }),
                0.0
            ),
            Decision::Done {
                reply: Some(b"r".to_vec())
            }
        );
        assert_eq!(p.decide(&req(1), Ok(Outcome::Drop), 0.0), Decision::Drop);
    }

    #[test]
    fn retry_uses_the_asked_delay_then_the_backoff_until_attempts_run_out() {
        let p = policy();
        let asked = Ok(Outcome::Retry {
            after: Some(Duration::from_millis(1234)),
            reason: "later".into(),
        });
        assert_eq!(
            p.decide(&req(1), asked.clone(), 0.9),
            Decision::Retry {
                delay: Duration::from_millis(1234)
            }
        );
        let backoff = Ok(Outcome::Retry {
            after: None,
            reason: "busy".into(),
        });
        // Attempt 1: 100 ms, jittered into [50, 100]; attempt 2: 200 ms.
        assert_eq!(
            p.decide(&req(1), backoff.clone(), 1.0),
            Decision::Retry {
                delay: Duration::from_millis(100)
            }
        );
        assert_eq!(
            p.decide(&req(2), backoff.clone(), 0.0),
            Decision::Retry {
                delay: Duration::from_millis(100)
            }
        );
        match p.decide(&req(3), backoff, 0.0) {
            Decision::DeadLetter { text, kind: None } => {
                assert!(text.contains("3 attempts of 3"), "{text}");
                assert!(text.contains("busy"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_huge_asked_delay_is_cut_to_a_day() {
        let p = policy();
        for asked in [Duration::MAX, Duration::from_secs(10_000_000_000)] {
            let out = Ok(Outcome::Retry {
                after: Some(asked),
                reason: "huge".into(),
            });
            assert_eq!(
                p.decide(&req(1), out, 0.5),
                Decision::Retry {
                    delay: MAX_ASKED_DELAY
                }
            );
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = policy();
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.backoff(3, 1.0), Duration::from_millis(350));
        assert_eq!(p.backoff(40, 1.0), Duration::from_millis(350));
        assert_eq!(p.backoff(2, 0.0), Duration::from_millis(100));
    }

    #[test]
    fn fail_is_a_dead_letter_at_once_naming_the_reason_and_attempts() {
        let p = policy();
        match p.decide(
            &req(1),
            Ok(Outcome::Fail {
                reason: "bad input".into(),
            }),
            0.0,
        ) {
            Decision::DeadLetter { text, kind: None } => {
                assert_eq!(text, "failed by its handler after 1 attempt: bad input")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_are_dead_letters_unless_configured_to_retry() {
        let mut p = policy();
        match p.decide(&req(1), error(ErrorKind::Runtime), 0.0) {
            Decision::DeadLetter { text, kind } => {
                assert_eq!(kind, Some(ErrorKind::Runtime));
                assert_eq!(text, "runtime error after 1 attempt: boom");
            }
            other => panic!("{other:?}"),
        }
        p.retry_errors = true;
        assert!(matches!(
            p.decide(&req(1), error(ErrorKind::Timeout), 0.5),
            Decision::Retry { .. }
        ));
        assert!(matches!(
            p.decide(&req(3), error(ErrorKind::Timeout), 0.5),
            Decision::DeadLetter { .. }
        ));
    }

    #[test]
    fn forward_carries_the_requester_in_an_envelope_and_counts_hops() {
        let p = policy();
        let fwd = |content| {
            Ok(Outcome::Forward {
                address: "next".into(),
                subject: "stage2".into(),
                content,
                delay: None,
            })
        };
        match p.decide(&req(2), fwd(None), 0.0) {
            Decision::Forward {
                address,
                subject,
                tracker,
                content,
                ..
            } => {
                assert_eq!((address.as_str(), subject.as_str()), ("next", "stage2"));
                assert_eq!(content, req(1).content, "own frames by default");
                let env = Envelope::decode(&tracker).unwrap();
                assert_eq!(
                    env,
                    Envelope {
                        hops: 1,
                        attempt: 1,
                        sender: "alas-1".into(),
                        tracker: "t-1".into()
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        let mut far = req(1);
        far.hops = 2;
        match p.decide(&far, fwd(Some(vec![b"x".to_vec()])), 0.0) {
            Decision::DeadLetter { text, .. } => assert!(text.contains("hop limit of 2"), "{text}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn envelopes_round_trip_and_refuse_what_does_not_fit() {
        let env = Envelope {
            hops: 3,
            attempt: 2,
            sender: "a:b:c".into(),
            tracker: "t:1:~".into(),
        };
        let t = env.encode().unwrap();
        assert_eq!(Envelope::decode(&t), Some(env));
        let mut r = req(1);
        r.tracker = t;
        Envelope::open(&mut r);
        assert_eq!(
            (r.sender.as_str(), r.tracker.as_str(), r.attempt, r.hops),
            ("a:b:c", "t:1:~", 2, 3)
        );
        for plain in [
            "",
            "t-1",
            "~alaska1:",
            "~alaska1:1:1:99:short",
            "~alaska1:x:1:0:",
        ] {
            assert_eq!(Envelope::decode(plain), None, "{plain:?}");
        }
        let long = Envelope {
            hops: 1,
            attempt: 1,
            sender: "s".repeat(200),
            tracker: "t".repeat(60),
        };
        assert_eq!(long.encode(), None);
    }

    #[test]
    fn a_forward_that_cannot_carry_its_requester_is_a_dead_letter() {
        let p = policy();
        let mut r = req(1);
        r.sender = "s".repeat(250);
        let d = p.decide(
            &r,
            Ok(Outcome::Forward {
                address: "next".into(),
                subject: "x".into(),
                content: None,
                delay: None,
            }),
            0.0,
        );
        assert!(matches!(d, Decision::DeadLetter { .. }), "{d:?}");
    }

    #[test]
    fn retry_queue_orders_by_due_time_and_is_bounded() {
        let t0 = Instant::now();
        let mut q = RetryQueue::new(3);
        q.push(t0 + Duration::from_millis(30), "c").unwrap();
        q.push(t0 + Duration::from_millis(10), "a").unwrap();
        q.push(t0 + Duration::from_millis(10), "b").unwrap();
        assert_eq!(q.push(t0, "overflow"), Err("overflow"));
        assert_eq!(q.next_due(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(q.pop_due(t0), None);
        assert_eq!(q.pop_due(t0 + Duration::from_millis(10)), Some("a"));
        assert_eq!(q.pop_due(t0 + Duration::from_millis(10)), Some("b"));
        assert_eq!(q.pop_due(t0 + Duration::from_millis(20)), None);
        assert_eq!(q.len(), 1);
        q.push(t0, "d").unwrap();
        assert_eq!(q.take_if(|v| *v == "d"), vec!["d"]);
        assert_eq!(q.drain(), vec!["c"]);
        assert!(q.is_empty());
    }

    #[test]
    fn rfc3339_writes_utc_civil_dates() {
        let at = |s: u64, ms: u64| {
            rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(s) + Duration::from_millis(ms))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day in a century leap year) 12:34:56.789
        assert_eq!(at(951_827_696, 789), "2000-02-29T12:34:56.789Z");
        // 2026-12-05 17:20:01 and the last second of 2023
        assert_eq!(at(1_796_491_201, 0), "2026-12-05T17:20:01.000Z");
        assert_eq!(at(1_704_067_199, 999), "2023-12-31T23:59:59.999Z");
    }

    #[test]
    fn a_dead_letter_keeps_the_original_report_and_adds_replay_metadata() {
        let mut r = req(2);
        r.content = vec![b"first".to_vec(), vec![0xff, 0x00, 0x41]];
        let when = std::time::UNIX_EPOCH + Duration::from_secs(1_704_067_199);
        let frames = dead_letter_frames(&r, "dead letter: fail: boom", "fail", when);
        assert_eq!(frames.len(), 3);
        // The original format: report text, then the first content frame.
        assert_eq!(frames[0], b"dead letter: fail: boom");
        assert_eq!(frames[1], b"first");
        let meta: serde_json::Value = serde_json::from_slice(&frames[2]).unwrap();
        assert_eq!(
            meta,
            serde_json::json!({
                "format": 1,
                "address": r.address,
                "subject": r.subject,
                "requester": r.sender,
                "tracker": r.tracker,
                "outcome": "fail",
                "reason": "dead letter: fail: boom",
                "attempts": 2,
                "hops": 0,
                "when": "2023-12-31T23:59:59.000Z",
                "frames": [{"text": "first"}, {"base64": "/wBB"}],
            })
        );
    }

    #[test]
    fn a_dead_letter_without_requester_or_content_says_null_and_empty() {
        let mut r = req(1);
        r.sender.clear();
        r.tracker.clear();
        r.content.clear();
        let frames = dead_letter_frames(&r, "x", "error", std::time::UNIX_EPOCH);
        assert_eq!(frames[1], b"");
        let meta: serde_json::Value = serde_json::from_slice(&frames[2]).unwrap();
        assert_eq!(meta["requester"], serde_json::Value::Null);
        assert_eq!(meta["tracker"], serde_json::Value::Null);
        assert_eq!(meta["frames"], serde_json::json!([]));
        assert_eq!(meta["outcome"], "error");
    }
}
