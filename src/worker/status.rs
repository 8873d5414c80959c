//! The worker seen from outside: health, status, maintenance, and what it
//! tells systemd.
//!
//! Two sides meet on a [`Board`]:
//! - the HTTP thread (`worker/http/listen`, see [`WorkerOps::serve`])
//!   answers `GET /health` and `GET /v1/status` from the board's atomics and
//!   two small snapshots, and `GET /metrics` from the metrics registry,
//!   without waking the dispatcher;
//! - `POST /v1/maintenance` records the wish on the board, queues a
//!   [`Responder`] and wakes the dispatcher, which is the only thread that
//!   may touch the broker connections. Its hub applies the wish at its next
//!   turn ([`HubOps::after_turn`]) and answers once every connection has
//!   taken it (at most [`ANSWER_WITHIN`] later).
//!
//! The hub side ([`HubOps`]) also keeps the health state, the systemd
//! `STATUS=` line, and the per-turn figures of the metrics.
//!
//! Health: `200` only while connected to a broker and offering; `503`
//! while starting, reconnecting, in maintenance or draining (a worker in
//! maintenance takes no requests, so whatever balances or waits on
//! `/health` should see it as not serving; liveness is the systemd
//! watchdog's business, not `/health`'s).

use std::collections::BTreeMap;

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Map, Value};

use super::metrics::{Recorder, SendKind, WorkerMetrics};
use super::types::RunResult;
use super::wake::Waker;
use crate::mlm::ConnState;
use crate::ops::http::{
    reply_channel, Health as HttpHealth, HttpError, HttpOptions, HttpRequest, HttpResponse,
    HttpServer, Method, Reply, Responder, Router,
};
use crate::ops::metrics::MetricsError;
use crate::ops::notify::{Liveness, Systemd};

/// How long a maintenance request waits for every connection to take it
/// before it is answered anyway (saying which did not).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Maintenance requests waiting for an answer at most; past it, `503`.
const ANSWERS_WAITING: usize = 64;

/// What the worker is doing, as `/health` and systemd hear it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Not connected yet (the first connection, the first offer).
    Starting = 0,
    /// Connected and offering: the only state `/health` answers `200` in.
    Serving = 1,
    /// No broker connection up; the client keeps trying.
    Reconnecting = 2,
    /// Connected, taking no new requests.
    Maintenance = 3,
    /// Stopping: finishing what runs.
    Draining = 4,
    /// Connected, but every broker that answers refused our service offer
    /// (an invalid pattern, an ACL): nothing will come.
    Refused = 5,
}

impl Health {
    /// The state's name, as `/health` and `/v1/status` say it.
    pub fn name(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Serving => "serving",
            Health::Reconnecting => "reconnecting",
            Health::Maintenance => "maintenance",
            Health::Draining => "draining",
            Health::Refused => "offer refused",
        }
    }

    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Serving,
            2 => Health::Reconnecting,
            3 => Health::Maintenance,
            4 => Health::Draining,
            5 => Health::Refused,
            _ => Health::Starting,
        }
    }
}

pub use super::book::{ScriptBook, ScriptInfo};

/// One broker connection as `/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The endpoint.
    pub endpoint: String,
    /// `connected`, `opening` or `lost`.
    pub state: &'static str,
    /// The broker acknowledges deliveries (ack/1) and we confirm them.
    pub acknowledged: bool,
    /// Maintenance on this connection.
    pub maintenance: crate::mlm::client::Maintenance,
    /// Times it was opened again.
    pub reconnects: u64,
    /// Why the broker refused our service offer, while it does.
    pub offer_refused: Option<String>,
}

#[derive(Debug, Default)]
struct About {
    service: String,
    filter: String,
    connections: Vec<ConnInfo>,
    runners: Vec<RunnerInfo>,
}

/// One runner as the status shows it (filled by the dispatcher from the
/// configuration, so that this module needs nothing of the runners').
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunnerInfo {
    /// `worker/runners/<name>`.
    pub name: String,
    /// `http` or `exec`.
    pub kind: String,
    /// The subjects it takes (`match`).
    pub pattern: String,
    /// The URL it posts to, or the command it runs.
    pub target: String,
    /// Requests it holds at once.
    pub slots: usize,
}

/// The worker's status page, served at `GET /`, embedded at build time
/// in the console's style (see [`crate::ops::console_page`]).
pub const STATUS_HTML: &str = crate::ops::console_page!(
    "Alaska worker",
    include_str!("assets/status.html"),
    include_str!("assets/status.js")
);

/// What the dispatcher and the HTTP thread share. See the module
/// documentation.
pub struct Board {
    health: AtomicU8,
    maintenance: AtomicBool,
    answers_tx: Sender<Responder>,
    answers_rx: Receiver<Responder>,
    waker: OnceLock<Waker>,
    about: Mutex<About>,
    scripts: ScriptBook,
    started: SystemTime,
}

impl std::fmt::Debug for Board {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Board")
            .field("health", &self.health())
            .field("maintenance", &self.maintenance_wanted())
            .finish_non_exhaustive()
    }
}

impl Default for Board {
    fn default() -> Self {
        let (answers_tx, answers_rx) = crossbeam_channel::bounded(ANSWERS_WAITING);
        Board {
            health: AtomicU8::new(Health::Starting as u8),
            maintenance: AtomicBool::new(false),
            answers_tx,
            answers_rx,
            waker: OnceLock::new(),
            about: Mutex::new(About::default()),
            scripts: ScriptBook::default(),
            started: SystemTime::now(),
        }
    }
}

impl Board {
    /// The health state now.
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    fn set_health(&self, h: Health) {
        self.health.store(h as u8, Ordering::Relaxed);
    }

    /// Whether maintenance is asked for.
    pub fn maintenance_wanted(&self) -> bool {
        self.maintenance.load(Ordering::Relaxed)
    }

    /// Asks for maintenance on or off and wakes the dispatcher (the hub
    /// applies it at its next turn).
    pub fn want_maintenance(&self, on: bool) {
        self.maintenance.store(on, Ordering::Relaxed);
        self.wake();
    }

    /// The scripts the VMs compiled.
    pub fn scripts(&self) -> &ScriptBook {
        &self.scripts
    }

    /// The pipe that wakes the dispatcher (set once it exists).
    pub fn set_waker(&self, w: Waker) {
        let _ = self.waker.set(w);
    }

    fn wake(&self) {
        if let Some(w) = self.waker.get() {
            w.wake();
        }
    }

    /// Records the service offered, for `/v1/status`.
    pub fn describe(&self, service: &str, filter: &str) {
        let mut a = self.about.lock().unwrap_or_else(|p| p.into_inner());
        a.service = service.to_string();
        a.filter = filter.to_string();
    }

    /// Records the runners, for `/v1/status` and the status page.
    pub fn describe_runners(&self, runners: Vec<RunnerInfo>) {
        let mut a = self.about.lock().unwrap_or_else(|p| p.into_inner());
        a.runners = runners;
    }

    fn connections(&self) -> Vec<ConnInfo> {
        self.about
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .connections
            .clone()
    }

    fn endpoints(&self) -> String {
        let a = self.about.lock().unwrap_or_else(|p| p.into_inner());
        let v: Vec<&str> = a.connections.iter().map(|c| c.endpoint.as_str()).collect();
        v.join(", ")
    }
}

/// Everything the worker's operations need, made before the worker runs
/// (so `/health` answers `503` while it connects) and given to
/// [`super::dispatcher::run_with`].
#[derive(Clone)]
pub struct WorkerOps {
    /// The metrics.
    pub metrics: WorkerMetrics,
    /// What the dispatcher and the HTTP thread share.
    pub board: Arc<Board>,
    /// Bumped by the dispatcher's loop and its VM's duty; the systemd
    /// watchdog pings while it moves.
    pub liveness: Liveness,
    /// Notifications to systemd (nothing without `NOTIFY_SOCKET`).
    pub systemd: Arc<Systemd>,
}

impl std::fmt::Debug for WorkerOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOps")
            .field("board", &self.board)
            .finish_non_exhaustive()
    }
}

impl WorkerOps {
    /// Fresh metrics and board; systemd as given (`Systemd::default()` for
    /// none).
    pub fn new(systemd: Systemd) -> Result<WorkerOps, MetricsError> {
        let board = Arc::new(Board::default());
        let scripts = board.scripts.clone();
        Ok(WorkerOps {
            metrics: WorkerMetrics::new(move || scripts.len())?,
            board,
            liveness: Liveness::new(),
            systemd: Arc::new(systemd),
        })
    }

    /// The HTTP routes: `GET /health`, `GET /metrics`, `GET /v1/status`,
    /// `POST /v1/maintenance`.
    pub fn router(&self) -> Router {
        let board = self.board.clone();
        let (b2, m2) = (self.board.clone(), self.metrics.clone());
        let b3 = self.board.clone();
        Router::new()
            .health(move || {
                // The state word first (what a checker matches); with
                // several brokers, then each connection, so an operator
                // sees which broker is away while the worker still serves.
                let h = board.health();
                let mut text = h.name().to_string();
                let conns = board.connections();
                if conns.len() > 1 {
                    for c in &conns {
                        text.push_str(&format!("\n{} {}", c.endpoint, c.state));
                    }
                }
                if h == Health::Refused {
                    for c in conns.iter().filter_map(|c| c.offer_refused.as_ref()) {
                        text.push_str(&format!("\n{c}"));
                    }
                }
                match h {
                    Health::Serving => HttpHealth::Up(text),
                    _ => HttpHealth::Down(text),
                }
            })
            .metrics(self.metrics.registry().clone())
            .route(Method::GET, "/", |_| {
                Reply::Now(
                    HttpResponse::new(200, "text/html; charset=utf-8", STATUS_HTML)
                        .with_header("Cache-Control", "no-store")
                        .with_header("X-Content-Type-Options", "nosniff"),
                )
            })
            .route(Method::GET, "/v1/status", move |_| {
                Reply::Now(HttpResponse::json(200, &status_json(&b2, &m2)))
            })
            .route(Method::POST, "/v1/maintenance", move |req| {
                maintenance_request(&b3, &req)
            })
    }

    /// Serves [`WorkerOps::router`] on `listen` (`host:port`), on a thread
    /// of its own (`alaska-http`).
    /// Serves the worker's endpoints on `listen`, requiring `token` (as a
    /// bearer token) for all but `/health` when one is given.
    pub fn serve(&self, listen: &str, token: Option<String>) -> Result<HttpServer, HttpError> {
        let mut opts = HttpOptions::new(listen);
        opts.token = token;
        // The status page holds no data (it asks /v1/status, with the
        // token), so it loads without the token and then asks for it.
        opts.public = vec!["/"];
        HttpServer::start(opts, Arc::new(self.router()))
    }

    /// The hub's side of these operations.
    pub fn hub(&self) -> HubOps {
        HubOps {
            inner: Some(Box::new(Inner {
                rec: self.metrics.recorder(),
                board: self.board.clone(),
                systemd: self.systemd.clone(),
                wish: false,
                waiting: Vec::new(),
                health: Health::Starting,
                draining: false,
                last: Vec::new(),
            })),
        }
    }
}

/// `POST /v1/maintenance` with `{"on": true}` or `{"on": false}`.
fn maintenance_request(board: &Board, req: &HttpRequest) -> Reply {
    let on = match serde_json::from_slice::<Value>(&req.body)
        .ok()
        .and_then(|v| v.get("on").and_then(Value::as_bool))
    {
        Some(on) => on,
        None => {
            return Reply::Now(HttpResponse::text(
                400,
                "the body must be {\"on\": true} or {\"on\": false}",
            ))
        }
    };
    match board.health() {
        Health::Draining => return Reply::Now(HttpResponse::text(503, "stopping")),
        Health::Starting => {
            // No connection yet: recorded, and applied before the first
            // offer.
            board.want_maintenance(on);
            return Reply::Now(HttpResponse::json(
                202,
                &json!({"maintenance": on, "applied": false, "connections": []}),
            ));
        }
        _ => {}
    }
    let (responder, pending) = reply_channel();
    if board.answers_tx.try_send(responder).is_err() {
        return Reply::Now(HttpResponse::text(
            503,
            "too many maintenance requests waiting",
        ));
    }
    board.want_maintenance(on);
    Reply::Later(pending)
}

fn unix_seconds(t: SystemTime) -> Value {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(Value::Null, |d| json!(d.as_secs_f64()))
}

fn conn_json(c: &ConnInfo) -> Value {
    json!({
        "endpoint": c.endpoint,
        "state": c.state,
        "acknowledged": c.acknowledged,
        "maintenance": {
            "wanted": c.maintenance.wanted,
            "applied": c.maintenance.applied,
            "by_broker": c.maintenance.by_broker,
        },
        "reconnects": c.reconnects,
    })
}

/// Every series of a counter vec: its labels by name, and its count.
fn counts(vec: &prometheus::IntCounterVec) -> Vec<(BTreeMap<String, String>, u64)> {
    use prometheus::core::Collector;
    let mut out = Vec::new();
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels = metric
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            out.push((labels, metric.get_counter().get_value() as u64));
        }
    }
    out
}

/// `GET /v1/status`: the figures of `/metrics` as JSON, plus what only
/// JSON says well (connections, scripts and their versions).
pub fn status_json(board: &Board, m: &WorkerMetrics) -> Value {
    use prometheus::core::Collector;
    let mut subjects: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (labels, n) in counts(&m.requests) {
        let (Some(s), Some(o)) = (labels.get("subject"), labels.get("outcome")) else {
            continue;
        };
        subjects
            .entry(s.clone())
            .or_default()
            .insert(o.clone(), json!(n));
    }
    for (labels, n) in counts(&m.errors) {
        let (Some(s), Some(k)) = (labels.get("subject"), labels.get("kind")) else {
            continue;
        };
        let entry = subjects.entry(s.clone()).or_default();
        if let Value::Object(e) = entry
            .entry("errors")
            .or_insert_with(|| Value::Object(Map::new()))
        {
            e.insert(k.clone(), json!(n));
        }
    }
    for family in m.duration.collect() {
        for metric in family.get_metric() {
            let Some(s) = metric.get_label().iter().find(|l| l.name() == "subject") else {
                continue;
            };
            let h = metric.get_histogram();
            subjects.entry(s.value().to_string()).or_default().insert(
                "duration_seconds".into(),
                json!({"count": h.get_sample_count(), "sum": h.get_sample_sum()}),
            );
        }
    }
    let mut sends = Map::new();
    for (labels, n) in counts(&m.sends) {
        if let Some(k) = labels.get("kind") {
            sends.insert(k.clone(), json!(n));
        }
    }
    let scripts: Vec<Value> = board
        .scripts
        .snapshot()
        .into_iter()
        .map(|(subject, s)| {
            json!({
                "subject": subject,
                "path": s.path.display().to_string(),
                "mtime": s.modified.map_or(Value::Null, unix_seconds),
                "compiled_at": unix_seconds(s.compiled),
                "compiles": s.compiles,
            })
        })
        .collect();
    let (service, filter, runners) = {
        let a = board.about.lock().unwrap_or_else(|p| p.into_inner());
        let runners: Vec<Value> = a
            .runners
            .iter()
            .map(|r| {
                json!({"name": r.name, "type": r.kind, "match": r.pattern,
                       "target": r.target, "slots": r.slots})
            })
            .collect();
        (a.service.clone(), a.filter.clone(), runners)
    };
    let memory = m.vm_memory();
    let connections: Vec<Value> = board.connections().iter().map(conn_json).collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "state": board.health().name(),
        "started": unix_seconds(board.started),
        "uptime_seconds": board.started.elapsed().map_or(0.0, |d| d.as_secs_f64()),
        "service": {"address": service, "filter": filter},
        "maintenance": board.maintenance_wanted(),
        "connections": connections,
        "requests": {
            "received": m.received.get(),
            "in_flight": m.in_flight.get(),
            "queued": m.queued.get(),
            "retry_waiting": m.retry_waiting.get(),
            "dead_letters": m.dead_letters.get(),
            "by_subject": subjects,
        },
        "sends": sends,
        "broker": {
            "reconnects": m.reconnects.get(),
            "refusals": m.refusals.get(),
            "sends_dropped": m.dropped.get(),
        },
        "vms": {
            "count": memory.len(),
            "memory_bytes": memory,
            "memory_total_bytes": memory.iter().sum::<u64>(),
        },
        "scripts": scripts,
        "runners": runners,
    })
}

struct Inner {
    rec: Recorder,
    board: Arc<Board>,
    systemd: Arc<Systemd>,
    /// The maintenance wish last given to the connections.
    wish: bool,
    waiting: Vec<(Responder, Instant)>,
    health: Health,
    draining: bool,
    /// Each connection's state as last published, to publish on change.
    last: Vec<ConnKey>,
}

/// The hub's side of the worker's operations: counting, health, systemd
/// status, maintenance. Every method does nothing when the worker runs
/// without operations ([`HubOps::default`]).
#[derive(Default)]
pub struct HubOps {
    inner: Option<Box<Inner>>,
}

impl std::fmt::Debug for HubOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubOps")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

impl HubOps {
    /// Whether the HTTP side asked for something the hub has not seen yet
    /// (checked after arming the wake-up, before sleeping).
    pub fn has_work(&self) -> bool {
        self.inner.as_ref().is_some_and(|x| {
            x.board.maintenance_wanted() != x.wish || !x.board.answers_rx.is_empty()
        })
    }

    /// A service request was received.
    pub fn received(&mut self) {
        if let Some(x) = &mut self.inner {
            x.rec.received();
        }
    }

    /// Job `id` was placed for a run.
    pub fn placed(&mut self, id: u64) {
        if let Some(x) = &mut self.inner {
            x.rec.placed(id, Instant::now());
        }
    }

    /// Job `id` will not run here.
    pub fn forget(&mut self, id: u64) {
        if let Some(x) = &mut self.inner {
            x.rec.forget(id);
        }
    }

    /// Job `id` for `subject` finished with `run`.
    pub fn finished(&mut self, id: u64, subject: &str, run: &RunResult) {
        if let Some(x) = &mut self.inner {
            x.rec.finished(id, subject, run, Instant::now());
        }
    }

    /// A message of `kind` was written.
    pub fn sent(&mut self, kind: SendKind) {
        if let Some(x) = &mut self.inner {
            x.rec.sent(kind);
        }
    }

    /// A request was given up on.
    pub fn dead_letter(&mut self) {
        if let Some(x) = &mut self.inner {
            x.rec.dead_letter();
        }
    }

    /// A stop began: `/health` says draining from now on.
    pub fn draining(&mut self, running: usize) {
        if let Some(x) = &mut self.inner {
            x.draining = true;
            x.health = Health::Draining;
            x.board.set_health(Health::Draining);
            x.systemd.stopping(&format!(
                "stopping: finishing {running} request(s) already received"
            ));
            // Nobody will apply a maintenance change now.
            while let Ok(r) = x.board.answers_rx.try_recv() {
                r.send(HttpResponse::text(503, "stopping"));
            }
            for (r, _) in x.waiting.drain(..) {
                r.send(HttpResponse::text(503, "stopping"));
            }
        }
    }

    /// Once per hub turn, first: the maintenance state every connection
    /// must be put in, when it changed (the hub applies it: only the hub
    /// touches connections).
    pub fn maintenance_change(&mut self) -> Option<bool> {
        let x = self.inner.as_mut()?;
        let wish = x.board.maintenance_wanted();
        if wish == x.wish || x.draining {
            return None;
        }
        x.wish = wish;
        tracing::info!(
            "maintenance {}: {}",
            if wish { "on" } else { "off" },
            if wish {
                "taking no new requests (what runs finishes)"
            } else {
                "taking requests again"
            }
        );
        Some(wish)
    }

    /// Once per hub turn, after [`HubOps::maintenance_change`]: from a
    /// snapshot of the connections, answers those who asked for a
    /// maintenance change, publishes health (and a systemd status line
    /// when it changes), the connections and the hub's figures.
    /// `conns` is walked once, and again when something changed (an
    /// iterator, so a turn costs no allocation).
    pub fn after_turn<'a>(
        &mut self,
        conns: impl Iterator<Item = ConnView<'a>> + Clone,
        in_flight: usize,
        queued: usize,
        retry_waiting: usize,
    ) {
        let Some(x) = &mut self.inner else {
            return;
        };
        let now = Instant::now();
        while let Ok(r) = x.board.answers_rx.try_recv() {
            x.waiting.push((r, now));
        }
        let mut connected = 0;
        // Connected and not refused its offer.
        let mut serving = 0;
        // Every connection either took the change, or is away (it takes
        // it when back); one that is opening (a withdrawal) is waited for.
        let mut all_applied = true;
        let mut settled = true;
        let mut changed = false;
        let mut totals = (0, 0, 0);
        let mut n = 0;
        for (i, c) in conns.clone().enumerate() {
            n += 1;
            match c.state {
                ConnState::Connected => {
                    connected += 1;
                    if c.offer_refused.is_none() {
                        serving += 1;
                    }
                    all_applied &= c.maintenance.applied;
                    settled &= c.maintenance.applied;
                }
                ConnState::Opening => settled = false,
                ConnState::Lost => {}
            }
            totals.0 += c.stats.reopens;
            totals.1 += c.stats.refused;
            totals.2 += c.stats.dropped;
            if x.last.get(i) != Some(&c.key()) {
                changed = true;
            }
        }
        if changed || n != x.last.len() {
            x.last = conns.clone().map(|c| c.key()).collect();
            let infos: Vec<ConnInfo> = conns
                .map(|c| ConnInfo {
                    endpoint: c.endpoint.to_string(),
                    state: match c.state {
                        ConnState::Connected if c.offer_refused.is_some() => "offer refused",
                        ConnState::Connected => "connected",
                        ConnState::Opening => "opening",
                        ConnState::Lost => "lost",
                    },
                    acknowledged: c.acknowledged,
                    maintenance: c.maintenance,
                    reconnects: c.stats.reopens,
                    offer_refused: c.offer_refused.map(str::to_string),
                })
                .collect();
            x.board
                .about
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .connections = infos;
        }
        if !x.waiting.is_empty() {
            let late = x
                .waiting
                .iter()
                .any(|(_, since)| now.duration_since(*since) >= ANSWER_WITHIN);
            if settled || late {
                let body = json!({
                    "maintenance": x.wish,
                    "applied": all_applied && connected > 0,
                    "connections": x.board.connections().iter().map(conn_json).collect::<Vec<_>>(),
                });
                // With no broker connected the change is only recorded: it
                // is applied before the offer when one answers.
                let status = if connected > 0 { 200 } else { 202 };
                for (r, _) in x.waiting.drain(..) {
                    r.send(HttpResponse::json(status, &body));
                }
            }
        }
        let health = if x.draining {
            Health::Draining
        } else if x.wish {
            Health::Maintenance
        } else if serving > 0 {
            Health::Serving
        } else if connected > 0 {
            Health::Refused
        } else {
            Health::Reconnecting
        };
        if health != x.health {
            x.health = health;
            x.board.set_health(health);
            x.systemd.status(&status_line(health, &x.board));
        }
        x.rec.turn(
            in_flight,
            queued,
            retry_waiting,
            connected,
            connected > 0 && !x.wish,
            x.wish,
            totals,
        );
    }
}

/// One broker connection as the hub shows it to [`HubOps::after_turn`]: a
/// snapshot, so that the status side never touches a connection.
#[derive(Debug, Clone)]
pub struct ConnView<'a> {
    /// The endpoint.
    pub endpoint: &'a str,
    /// Connected, opening, lost.
    pub state: ConnState,
    /// Acknowledged delivery (the broker said `ack/1`).
    pub acknowledged: bool,
    /// Where maintenance stands on it.
    pub maintenance: crate::mlm::client::Maintenance,
    /// Its counters.
    pub stats: crate::mlm::client::ClientStats,
    /// Why the broker refused the offer, if it did.
    pub offer_refused: Option<&'a str>,
}

impl<'a> ConnView<'a> {
    /// The snapshot of `client`.
    pub fn of(client: &'a crate::mlm::Client) -> ConnView<'a> {
        ConnView {
            endpoint: client.endpoint(),
            state: client.state(),
            acknowledged: client.acks_enabled(),
            maintenance: client.maintenance(),
            stats: client.stats(),
            offer_refused: client.offer_refused(),
        }
    }

    /// What, changed, makes the published connections stale.
    fn key(&self) -> ConnKey {
        (
            self.state,
            self.acknowledged,
            self.maintenance,
            self.stats.reopens,
            self.offer_refused.is_some(),
        )
    }
}

/// See [`ConnView::key`].
type ConnKey = (ConnState, bool, crate::mlm::client::Maintenance, u64, bool);

/// The systemd `STATUS=` line for `health`.
fn status_line(health: Health, board: &Board) -> String {
    let (service, filter) = {
        let a = board.about.lock().unwrap_or_else(|p| p.into_inner());
        (a.service.clone(), a.filter.clone())
    };
    let endpoints = board.endpoints();
    match health {
        Health::Starting => format!("connecting to {endpoints}"),
        Health::Serving => format!("serving {service} ({filter}) on {endpoints}"),
        Health::Reconnecting => format!("broker {endpoints} lost: reconnecting"),
        Health::Maintenance => {
            format!("maintenance: {service} on {endpoints}, taking no new requests")
        }
        Health::Draining => "stopping: finishing requests already received".into(),
        Health::Refused => format!("{endpoints} refused our offer of {service} ({filter})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn now(r: Reply) -> HttpResponse {
        match r {
            Reply::Now(r) => r,
            Reply::Later(_) => panic!("deferred"),
        }
    }

    #[test]
    fn health_is_200_only_while_serving() {
        let ops = WorkerOps::new(Systemd::default()).unwrap();
        let router = ops.router();
        let get = |path: &str| {
            use crate::ops::http::Handler;
            now(router.handle(HttpRequest::new(Method::GET, path, vec![])))
        };
        for (h, status, text) in [
            (Health::Starting, 503, "starting\n"),
            (Health::Serving, 200, "serving\n"),
            (Health::Reconnecting, 503, "reconnecting\n"),
            (Health::Maintenance, 503, "maintenance\n"),
            (Health::Draining, 503, "draining\n"),
        ] {
            ops.board.set_health(h);
            let r = get("/health");
            assert_eq!((r.status, r.body.as_slice()), (status, text.as_bytes()));
        }
    }

    #[test]
    fn health_lists_each_connection_when_there_are_several() {
        use crate::ops::http::Handler;
        let ops = WorkerOps::new(Systemd::default()).unwrap();
        let router = ops.router();
        let conn = |endpoint: &str, state| ConnInfo {
            endpoint: endpoint.into(),
            state,
            acknowledged: true,
            maintenance: Default::default(),
            reconnects: 0,
            offer_refused: None,
        };
        ops.board.set_health(Health::Serving);
        ops.board
            .about
            .lock()
            .unwrap()
            .connections
            .push(conn("tcp://10.0.0.1:9999", "connected"));
        let r = now(router.handle(HttpRequest::new(Method::GET, "/health", vec![])));
        assert_eq!(r.body, b"serving\n", "one broker: the state word alone");
        ops.board
            .about
            .lock()
            .unwrap()
            .connections
            .push(conn("tcp://10.0.0.2:9999", "lost"));
        let r = now(router.handle(HttpRequest::new(Method::GET, "/health", vec![])));
        assert_eq!(
            (r.status, String::from_utf8_lossy(&r.body).as_ref()),
            (
                200,
                "serving\ntcp://10.0.0.1:9999 connected\ntcp://10.0.0.2:9999 lost\n"
            )
        );
    }

    #[test]
    fn maintenance_requests_are_checked_and_recorded_before_the_start() {
        use crate::ops::http::Handler;
        let ops = WorkerOps::new(Systemd::default()).unwrap();
        let router = ops.router();
        let post = |body: &str| {
            router.handle(HttpRequest::new(
                Method::POST,
                "/v1/maintenance",
                body.into(),
            ))
        };
        for bad in ["", "{}", "{\"on\": 1}", "on"] {
            assert_eq!(now(post(bad)).status, 400, "{bad:?}");
        }
        assert!(!ops.board.maintenance_wanted());
        let r = now(post("{\"on\": true}"));
        assert_eq!(r.status, 202, "not connected yet: recorded");
        assert!(ops.board.maintenance_wanted());
        ops.board.set_health(Health::Serving);
        assert!(matches!(post("{\"on\": false}"), Reply::Later(_)));
        assert!(!ops.board.maintenance_wanted());
        assert_eq!(ops.board.answers_rx.len(), 1, "waits for the hub");
        ops.board.set_health(Health::Draining);
        assert_eq!(now(post("{\"on\": true}")).status, 503);
    }

    #[test]
    fn status_groups_the_counts_by_subject() {
        use crate::worker::types::{ErrorKind, Outcome, ScriptError};
        let ops = WorkerOps::new(Systemd::default()).unwrap();
        let mut rec = ops.metrics.recorder();
        let t0 = Instant::now();
        let done = RunResult {
            outputs: Vec::new(),
            result: Ok(Outcome::Done { reply: None }),
        };
        let failed = RunResult {
            outputs: Vec::new(),
            result: Err(ScriptError {
                kind: ErrorKind::Syntax,
                message: String::new(),
            }),
        };
        rec.placed(1, t0);
        rec.finished(1, "echo", &done, t0);
        rec.finished(2, "echo", &done, t0);
        rec.finished(3, "bad", &failed, t0);
        rec.sent(SendKind::Reply);
        ops.board
            .scripts()
            .compiled("echo", Path::new("s/echo.lua"), None);
        let v = status_json(&ops.board, &ops.metrics);
        let subjects = &v["requests"]["by_subject"];
        assert_eq!(subjects["echo"]["done"], 2);
        assert_eq!(subjects["echo"]["duration_seconds"]["count"], 1);
        assert_eq!(subjects["bad"]["error"], 1);
        assert_eq!(subjects["bad"]["errors"]["syntax"], 1);
        assert_eq!(v["sends"]["reply"], 1);
        assert_eq!(v["scripts"][0]["subject"], "echo");
        assert_eq!(v["state"], "starting");
    }

    #[test]
    fn the_book_keeps_the_newest_version() {
        let book = ScriptBook::default();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        book.compiled("a", Path::new("s/a.lua"), Some(t));
        book.compiled("a", Path::new("s/a.lua"), Some(t + Duration::from_secs(5)));
        book.compiled("a", Path::new("s/a.lua"), Some(t));
        let s = book.snapshot();
        assert_eq!(s["a"].modified, Some(t + Duration::from_secs(5)));
        assert_eq!(s["a"].compiles, 3);
        assert_eq!(book.len(), 1);
    }
}
