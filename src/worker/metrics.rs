//! The worker's metrics, all under `alaska_worker_`: what its requests
//! ended in, how long they took, what it wrote, and how its broker
//! connections and VMs are doing. The README lists every name.
//!
//! Counting happens where the events happen, on the dispatcher's thread
//! (the hub), through a [`Recorder`] that thread owns: it keeps each
//! subject's labelled children in a map of its own (as
//! [`crate::ops::metrics::LabelCache`] does, with all of a subject's series
//! behind one lookup), so after a subject's first request a count is a map
//! lookup and a few atomic adds, with no lock. Numbers the hub
//! keeps in its own structures (requests in flight, queued, waiting for a
//! retry, connections up) are stored into gauges once per hub turn; VM
//! memory is read at scrape time from figures each VM stores after each
//! request. The HTTP thread only renders.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::ops::metrics::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Metrics, MetricsError,
    LATENCY_BUCKETS, OTHER,
};

use super::types::{ErrorKind, RunResult};

/// Subjects counted apart; past this many, new ones count as `_other`
/// (subjects come from clients and must not grow the series without bound).
pub const SUBJECTS_KEPT: usize = 256;

/// What the worker wrote on a broker connection (the `kind` label of
/// `alaska_worker_sends_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    /// A handler's STREAM SEND (`send`).
    Stream,
    /// A handler's MAILBOX SEND (`sendTo`).
    Mail,
    /// A reply to the requester.
    Reply,
    /// An error reply to the requester (`ERROR:<subject>`).
    ErrorReply,
    /// A request forwarded to another service.
    Forward,
    /// A failure report to the error mailbox.
    ErrorReport,
    /// A request handed back to its service (at a stop).
    HandBack,
    /// A script's `alaska.call` request.
    Call,
    /// A script's `alaska.schedule` request (held by the broker until due).
    Schedule,
}

impl SendKind {
    const ALL: [SendKind; 9] = [
        SendKind::Stream,
        SendKind::Mail,
        SendKind::Reply,
        SendKind::ErrorReply,
        SendKind::Forward,
        SendKind::ErrorReport,
        SendKind::HandBack,
        SendKind::Call,
        SendKind::Schedule,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            SendKind::Stream => "stream",
            SendKind::Mail => "mail",
            SendKind::Reply => "reply",
            SendKind::ErrorReply => "error_reply",
            SendKind::Forward => "forward",
            SendKind::ErrorReport => "error_report",
            SendKind::HandBack => "hand_back",
            SendKind::Call => "call",
            SendKind::Schedule => "schedule",
        }
    }
}

/// The `kind` label of `alaska_worker_request_errors_total`: the error
/// kind's name as a label value (no spaces).
pub fn error_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::MissingScript => "missing_script",
        ErrorKind::BadSubject => "bad_subject",
        ErrorKind::Syntax => "syntax",
        ErrorKind::Runtime => "runtime",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Memory => "memory",
        ErrorKind::Protocol => "protocol",
        ErrorKind::Stopped => "stopped",
        ErrorKind::Panic => "panic",
    }
}

/// The `outcome` label of `alaska_worker_requests_total` for a run: the
/// handler's outcome, or `error`.
pub fn outcome_label(run: &RunResult) -> &'static str {
    match &run.result {
        Ok(o) => o.name(),
        Err(_) => "error",
    }
}

/// The worker's metric handles (cheap to clone: every handle is shared).
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Metrics,
    /// Requests by subject and outcome.
    pub requests: IntCounterVec,
    /// Failed requests by subject and error kind.
    pub errors: IntCounterVec,
    /// Seconds from a request placed for a run to its handler's end.
    pub duration: HistogramVec,
    /// SERVICE DELIVERs taken.
    pub received: IntCounter,
    /// Messages written, by kind.
    pub sends: IntCounterVec,
    /// Requests given up on (reported to the error mailbox).
    pub dead_letters: IntCounter,
    /// Sends the broker refused.
    pub refusals: IntCounter,
    /// Connections opened again after the first time.
    pub reconnects: IntCounter,
    /// Messages dropped because the outbox was full.
    pub dropped: IntCounter,
    /// `alaska.call` and `alaska.http` by kind and result.
    pub calls: IntCounterVec,
    /// Requests received and not finished.
    pub in_flight: IntGauge,
    /// Requests waiting for a VM.
    pub queued: IntGauge,
    /// Requests waiting for their next attempt.
    pub retry_waiting: IntGauge,
    /// Broker connections up.
    pub connected: IntGauge,
    /// 1 while connected and offering (not in maintenance).
    pub offering: IntGauge,
    /// 1 while in maintenance.
    pub maintenance: IntGauge,
    /// Each VM's memory figure, once the worker has started its VMs.
    vm_memory: Arc<OnceLock<Vec<Arc<AtomicU64>>>>,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl WorkerMetrics {
    /// Registers everything in a fresh registry. `scripts` gives the
    /// number of scripts loaded, at scrape time.
    pub fn new(
        scripts: impl Fn() -> usize + Send + Sync + 'static,
    ) -> Result<WorkerMetrics, MetricsError> {
        let m = Metrics::new("alaska_worker");
        let vm_memory: Arc<OnceLock<Vec<Arc<AtomicU64>>>> = Arc::new(OnceLock::new());
        let figures = |mem: &OnceLock<Vec<Arc<AtomicU64>>>| -> Vec<u64> {
            mem.get()
                .map(|v| v.iter().map(|a| a.load(Ordering::Relaxed)).collect())
                .unwrap_or_default()
        };
        let mem = vm_memory.clone();
        m.gauge_fn("vms", "Lua VMs running requests.", move || {
            mem.get().map_or(0, Vec::len) as f64
        })?;
        let mem = vm_memory.clone();
        m.gauge_fn(
            "vm_memory_bytes",
            "Memory held by all Lua VMs together, as of each VM's last request.",
            move || figures(&mem).iter().sum::<u64>() as f64,
        )?;
        let mem = vm_memory.clone();
        m.gauge_fn(
            "vm_memory_max_bytes",
            "Memory held by the largest Lua VM, as of its last request (compare with \
             worker/lua/memory).",
            move || figures(&mem).into_iter().max().unwrap_or(0) as f64,
        )?;
        m.gauge_fn(
            "scripts_loaded",
            "Scripts compiled by the VMs since the start (see /v1/status).",
            move || scripts() as f64,
        )?;
        let started = m.gauge(
            "start_time_seconds",
            "When the worker started, in seconds since the Unix epoch.",
        )?;
        started.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
        Ok(WorkerMetrics {
            requests: m.counter_vec(
                "requests_total",
                "Requests whose handler ended, by subject and outcome (done, retry, fail, drop, \
                 forward; error when the handler failed: see request_errors_total).",
                &["subject", "outcome"],
            )?,
            errors: m.counter_vec(
                "request_errors_total",
                "Requests whose handler failed, by subject and error kind.",
                &["subject", "kind"],
            )?,
            duration: m.histogram_vec(
                "request_duration_seconds",
                "Seconds from a request being placed for a run (received, or due for a retry) \
                 to its handler's end: the wait for a free VM plus the run, by subject.",
                &["subject"],
                LATENCY_BUCKETS,
            )?,
            received: m.counter(
                "requests_received_total",
                "Service requests received from the broker.",
            )?,
            sends: m.counter_vec(
                "sends_total",
                "Messages written to the broker, by kind (stream, mail, reply, error_reply, \
                 forward, error_report, hand_back, call, schedule).",
                &["kind"],
            )?,
            dead_letters: m.counter(
                "dead_letters_total",
                "Requests given up on (failed, out of retries or hops, not runnable): reported \
                 to the error mailbox and, when the requester waits, answered with an error reply.",
            )?,
            refusals: m.counter(
                "broker_refusals_total",
                "Messages of ours the broker refused (a full mailbox or queue).",
            )?,
            reconnects: m.counter(
                "broker_reconnects_total",
                "Times a broker connection was opened again after the first time.",
            )?,
            dropped: m.counter(
                "sends_dropped_total",
                "Messages dropped because the broker was away and the outbox full.",
            )?,
            calls: m.counter_vec(
                "script_calls_total",
                "Calls scripts made with alaska.call (kind call) and alaska.http (kind http), by \
                 result: ok, error (an error reply or a failed request), timeout, refused (hop \
                 limit, allow list, a pool of one calling itself), late (a reply or response that \
                 came after its caller stopped waiting; dropped).",
                &["kind", "result"],
            )?,
            in_flight: m.gauge(
                "requests_in_flight",
                "Requests received and not finished: queued, running, or waiting for a retry.",
            )?,
            queued: m.gauge(
                "requests_queued",
                "Requests waiting for a free VM, or held beyond the backlog from a broker that pushes.",
            )?,
            retry_waiting: m.gauge(
                "requests_retry_waiting",
                "Requests waiting for their next attempt.",
            )?,
            connected: m.gauge("broker_connected", "Broker connections up.")?,
            offering: m.gauge(
                "offering",
                "1 while the worker is connected and offers its service (not in maintenance).",
            )?,
            maintenance: m.gauge(
                "maintenance",
                "1 while the worker is in maintenance (takes no new requests).",
            )?,
            vm_memory,
            registry: m,
        })
    }

    /// The registry, for `/metrics`.
    pub fn registry(&self) -> &Metrics {
        &self.registry
    }

    /// Tells the metrics where each VM's memory figure is (once; later
    /// calls are ignored).
    pub fn set_vm_memory(&self, figures: Vec<Arc<AtomicU64>>) {
        let _ = self.vm_memory.set(figures);
    }

    /// Each VM's memory in bytes, as of its last request.
    pub fn vm_memory(&self) -> Vec<u64> {
        self.vm_memory
            .get()
            .map(|v| v.iter().map(|a| a.load(Ordering::Relaxed)).collect())
            .unwrap_or_default()
    }

    /// The hub's recorder over these metrics.
    pub fn recorder(&self) -> Recorder {
        Recorder {
            subjects: HashMap::new(),
            other: None,
            sends: SendKind::ALL.map(|k| self.sends.with_label_values(&[k.label()])),
            placed: HashMap::new(),
            last: ClientTotals::default(),
            m: self.clone(),
        }
    }
}

/// Client counters as last seen, to count their increase.
#[derive(Debug, Default, Clone, Copy)]
struct ClientTotals {
    reopens: u64,
    refused: u64,
    dropped: u64,
}

/// The outcome label values, in [`Series::outcomes`] order.
const OUTCOMES: [&str; 6] = ["done", "retry", "fail", "drop", "forward", "error"];

/// One subject's series, created on first use.
struct Series {
    subject: String,
    outcomes: [Option<IntCounter>; 6],
    errors: HashMap<ErrorKind, IntCounter>,
    duration: Histogram,
}

/// What the dispatcher's thread counts with: its own map of each
/// subject's series (so the shared, locked map of the metric vecs is only
/// read the first time), and when each request was placed. One per hub.
pub struct Recorder {
    m: WorkerMetrics,
    subjects: HashMap<String, Series>,
    /// Everything past [`SUBJECTS_KEPT`] subjects.
    other: Option<Series>,
    sends: [IntCounter; 9],
    placed: HashMap<u64, Instant>,
    last: ClientTotals,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("subjects", &self.subjects.len())
            .finish_non_exhaustive()
    }
}

/// `subject`'s series (made on first use; `_other` past the cap).
fn series<'a>(
    subjects: &'a mut HashMap<String, Series>,
    other: &'a mut Option<Series>,
    m: &WorkerMetrics,
    subject: &str,
) -> &'a mut Series {
    let new = |subject: &str| Series {
        subject: subject.to_string(),
        outcomes: Default::default(),
        errors: HashMap::new(),
        duration: m.duration.with_label_values(&[subject]),
    };
    if subjects.contains_key(subject) {
        return subjects.get_mut(subject).expect("just looked");
    }
    if subjects.len() >= SUBJECTS_KEPT {
        return other.get_or_insert_with(|| new(OTHER));
    }
    subjects
        .entry(subject.to_string())
        .or_insert_with(|| new(subject))
}

impl Recorder {
    /// A service request was received.
    pub fn received(&mut self) {
        self.m.received.inc();
    }

    /// Job `id` was placed for a run now (received, or due for a retry).
    pub fn placed(&mut self, id: u64, now: Instant) {
        self.placed.insert(id, now);
    }

    /// Job `id` will not run here (handed back, reported): forgets it.
    pub fn forget(&mut self, id: u64) {
        self.placed.remove(&id);
    }

    /// Job `id` for `subject` finished with `run` at `now`.
    pub fn finished(&mut self, id: u64, subject: &str, run: &RunResult, now: Instant) {
        let took = self
            .placed
            .remove(&id)
            .map(|t| now.saturating_duration_since(t));
        // Borrowed, not cloned: a clone of every handle costs more than
        // the counting itself.
        let m = &self.m;
        let s = series(&mut self.subjects, &mut self.other, m, subject);
        let outcome = outcome_label(run);
        let i = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(5);
        s.outcomes[i]
            .get_or_insert_with(|| m.requests.with_label_values(&[&s.subject, OUTCOMES[i]]))
            .inc();
        if let Err(e) = &run.result {
            s.errors
                .entry(e.kind)
                .or_insert_with(|| {
                    m.errors
                        .with_label_values(&[&s.subject, error_label(e.kind)])
                })
                .inc();
        }
        if let Some(took) = took {
            s.duration.observe(took.as_secs_f64());
        }
    }

    /// A message of `kind` was written.
    pub fn sent(&mut self, kind: SendKind) {
        let i = SendKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.sends[i].inc();
    }

    /// A request was given up on.
    pub fn dead_letter(&mut self) {
        self.m.dead_letters.inc();
    }

    /// The hub's own figures, once per turn: requests in flight, queued
    /// and waiting for a retry; connections up; the clients' counters
    /// summed over the connections (their increase is counted).
    #[allow(clippy::too_many_arguments)]
    pub fn turn(
        &mut self,
        in_flight: usize,
        queued: usize,
        retry_waiting: usize,
        connected: usize,
        offering: bool,
        maintenance: bool,
        clients: (u64, u64, u64),
    ) {
        let m = &self.m;
        m.in_flight.set(in_flight as i64);
        m.queued.set(queued as i64);
        m.retry_waiting.set(retry_waiting as i64);
        m.connected.set(connected as i64);
        m.offering.set(i64::from(offering));
        m.maintenance.set(i64::from(maintenance));
        let (reopens, refused, dropped) = clients;
        let last = &mut self.last;
        m.reconnects.inc_by(reopens.saturating_sub(last.reopens));
        m.refusals.inc_by(refused.saturating_sub(last.refused));
        m.dropped.inc_by(dropped.saturating_sub(last.dropped));
        *last = ClientTotals {
            reopens: reopens.max(last.reopens),
            refused: refused.max(last.refused),
            dropped: dropped.max(last.dropped),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::types::{Outcome, ScriptError};
    use std::time::Duration;

    fn done() -> RunResult {
        RunResult {
            outputs: Vec::new(),
            result: Ok(Outcome::Done { reply: None }),
        }
    }

    fn failed(kind: ErrorKind) -> RunResult {
        RunResult {
            outputs: Vec::new(),
            result: Err(ScriptError {
                kind,
                message: "x".into(),
            }),
        }
    }

    #[test]
    fn outcomes_errors_and_durations_by_subject() {
        let m = WorkerMetrics::new(|| 0).unwrap();
        let mut r = m.recorder();
        let t0 = Instant::now();
        r.placed(1, t0);
        r.finished(1, "echo", &done(), t0 + Duration::from_millis(3));
        r.placed(2, t0);
        r.finished(2, "echo", &failed(ErrorKind::Runtime), t0);
        r.finished(3, "other", &failed(ErrorKind::Timeout), t0);
        let get = |s: &str, o: &str| m.requests.with_label_values(&[s, o]).get();
        assert_eq!(get("echo", "done"), 1);
        assert_eq!(get("echo", "error"), 1);
        assert_eq!(get("other", "error"), 1);
        assert_eq!(m.errors.with_label_values(&["echo", "runtime"]).get(), 1);
        assert_eq!(m.errors.with_label_values(&["other", "timeout"]).get(), 1);
        let h = m.duration.with_label_values(&["echo"]);
        assert_eq!(h.get_sample_count(), 2, "job 3 was never placed");
        assert!((h.get_sample_sum() - 0.003).abs() < 1e-9);
        assert!(r.placed.is_empty(), "nothing left behind");
    }

    #[test]
    fn subjects_past_the_cap_count_as_other() {
        let m = WorkerMetrics::new(|| 0).unwrap();
        let mut r = m.recorder();
        let t0 = Instant::now();
        for i in 0..SUBJECTS_KEPT + 3 {
            r.finished(i as u64, &format!("s{i}"), &done(), t0);
        }
        assert_eq!(m.requests.with_label_values(&[OTHER, "done"]).get(), 3);
        assert_eq!(m.requests.with_label_values(&["s0", "done"]).get(), 1);
        r.finished(0, "s0", &done(), t0);
        assert_eq!(m.requests.with_label_values(&["s0", "done"]).get(), 2);
    }

    #[test]
    fn client_counters_count_their_increase_once() {
        let m = WorkerMetrics::new(|| 0).unwrap();
        let mut r = m.recorder();
        r.turn(3, 1, 1, 1, true, false, (0, 0, 0));
        r.turn(3, 1, 1, 1, true, false, (2, 1, 0));
        r.turn(0, 0, 0, 0, false, true, (2, 1, 5));
        assert_eq!(m.reconnects.get(), 2);
        assert_eq!(m.refusals.get(), 1);
        assert_eq!(m.dropped.get(), 5);
        assert_eq!(m.in_flight.get(), 0);
        assert_eq!((m.offering.get(), m.maintenance.get()), (0, 1));
    }

    /// What counting costs a request on the dispatcher's thread (received,
    /// placed, finished, one reply sent), for the design notes:
    /// `cargo test --release --lib recorder_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn recorder_cost() {
        let m = WorkerMetrics::new(|| 0).unwrap();
        let mut r = m.recorder();
        let subjects: Vec<String> = (0..8).map(|i| format!("subject{i}")).collect();
        let run = done();
        let n = 2_000_000u64;
        let t0 = Instant::now();
        for id in 0..n {
            let now = Instant::now();
            r.received();
            r.placed(id, now);
            r.finished(id, &subjects[(id % 8) as usize], &run, now);
            r.sent(SendKind::Reply);
        }
        let per = t0.elapsed().as_nanos() as f64 / n as f64;
        println!("recorder: {per:.0} ns per request (two clock reads included)");
        let t0 = Instant::now();
        for id in 0..n {
            let _ = Instant::now();
            r.received();
            r.sent(SendKind::Reply);
            std::hint::black_box(id);
        }
        println!(
            "  clock + two counters: {:.0} ns",
            t0.elapsed().as_nanos() as f64 / n as f64
        );
        let t0 = Instant::now();
        for id in 0..n {
            r.finished(id, &subjects[(id % 8) as usize], &run, Instant::now());
        }
        println!(
            "  finished, never placed (lookup + counter): {:.0} ns",
            t0.elapsed().as_nanos() as f64 / n as f64
        );
        let h = m.duration.with_label_values(&["x"]);
        let t0 = Instant::now();
        for id in 0..n {
            h.observe(id as f64 * 1e-9);
        }
        println!(
            "  histogram observe: {:.0} ns",
            t0.elapsed().as_nanos() as f64 / n as f64
        );
        let t0 = Instant::now();
        let now = Instant::now();
        for id in 0..n {
            r.placed(id, now);
            r.forget(id);
        }
        println!(
            "  placed + forget: {:.0} ns",
            t0.elapsed().as_nanos() as f64 / n as f64
        );
        assert_eq!(m.received.get(), 2 * n);
    }

    #[test]
    fn vm_memory_is_read_at_scrape_time() {
        let m = WorkerMetrics::new(|| 2).unwrap();
        let a = Arc::new(AtomicU64::new(100));
        let b = Arc::new(AtomicU64::new(300));
        m.set_vm_memory(vec![a.clone(), b]);
        a.store(200, Ordering::Relaxed);
        let text = m.registry().render();
        assert!(text.contains("alaska_worker_vms 2\n"), "{text}");
        assert!(
            text.contains("alaska_worker_vm_memory_bytes 500\n"),
            "{text}"
        );
        assert!(
            text.contains("alaska_worker_vm_memory_max_bytes 300\n"),
            "{text}"
        );
        assert!(text.contains("alaska_worker_scripts_loaded 2\n"), "{text}");
    }
}
