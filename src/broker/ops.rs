//! The broker seen from outside: `GET /health`, `GET /metrics` (Prometheus
//! text) and a JSON admin API (`GET /v1/clients`, `/v1/services`,
//! `/v1/mailboxes`, `/v1/streams`, `POST /v1/clients/<address>/maintenance`)
//! served on `mlm_server/http/listen`, and the [`Liveness`] counter a
//! systemd watchdog reads.
//!
//! The router thread owns the ROUTER socket and the core, so the HTTP
//! thread (`alaska-broker-http`, see [`crate::ops::http`]) touches neither:
//! - **Counters** are copied by the router into Prometheus counters once per
//!   loop turn, and only when one moved (a comparison of a few numbers), so
//!   a scrape sees every command handled up to the last turn.
//! - **Gauges** (clients, per-service queue depth and workers, mailboxes,
//!   streams) need a pass over the core's tables, so the router refreshes
//!   them at most every [`GAUGE_EVERY`], not per turn.
//! - **Admin requests** are queued by the HTTP handler with a
//!   [`Responder`] on a bounded channel, and the router is woken through
//!   [`crate::ops::wake`] (its descriptor is in the router's poll beside
//!   the ROUTER socket). The router answers between turns with JSON built
//!   from the core's snapshots. Neither side ever waits for the other: a
//!   full channel is `503` at once, and a router that stopped drops the
//!   responders, which the server turns into `503`.
//! - **`/health`** is answered by the HTTP thread from two atomics: the
//!   router's state and the time of its last turn, so a wedged router
//!   shows as `503` even though the HTTP thread still answers.
//! - **Liveness** is beaten at the top of every router turn (the router
//!   turns at least every 100 ms when idle); the binary's systemd watchdog
//!   pings only while it moves.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::{json, Value};

use super::core::{ClientInfo, Core, Counters, Journal, Stats};
use super::series::{Sample as SeriesSample, Series};
use crate::ops::http::{
    reply_channel, Health, HttpError, HttpOptions, HttpRequest, HttpResponse, HttpServer, Method,
    Reply, Responder, Router,
};
use crate::ops::metrics::{
    Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Metrics, MetricsError, OTHER,
};
use crate::ops::notify::Liveness;
use crate::ops::wake::{self, WakeReceiver, Waker};
use crate::time::after;

/// How often the router refreshes the gauges: they cost a pass over the
/// core's tables, and a scrape every few seconds needs no fresher figure.
pub const GAUGE_EVERY: Duration = Duration::from_millis(100);

/// Most services with series of their own; the rest are summed under
/// `_other` (service names come from clients and must not grow the series
/// without bound).
pub const SERVICE_LABELS: usize = 256;

/// Admin requests that may wait for the router at once (`503` beyond).
const ADMIN_QUEUE: usize = 64;

/// The console's charts: one point a second for 15 minutes, for at most
/// 200 services (bounded memory: 4 lines of 900 points each).
const SERIES_EVERY: Duration = Duration::from_secs(1);
const SERIES_KEEP: usize = 900;
const SERIES_SERVICES: usize = 200;

/// A router that has not turned for this long is reported stalled by
/// `/health` (it turns at least every 100 ms when idle; a turn under load
/// is a few milliseconds).
const STALLED: Duration = Duration::from_secs(5);

/// Errors of the broker's operations side.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The HTTP server could not start (`mlm_server/http/listen`).
    #[error("mlm_server/http/listen: {0}")]
    Http(#[from] HttpError),
    /// A metric could not be registered (a bug).
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The wake-up pipe could not be made.
    #[error("wake-up pipe: {0}")]
    Wake(#[from] std::io::Error),
}

/// Where the router is in its life, for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum State {
    Starting = 0,
    Serving = 1,
    Stopping = 2,
    Stopped = 3,
}

/// What the HTTP thread reads without asking the router.
#[derive(Debug)]
struct Shared {
    started: Instant,
    state: AtomicU8,
    /// Milliseconds from `started` to the router's last turn.
    last_turn: AtomicU64,
}

impl Shared {
    fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            0 => State::Starting,
            1 => State::Serving,
            2 => State::Stopping,
            _ => State::Stopped,
        }
    }

    fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    fn health(&self, now: Instant) -> Health {
        match self.state() {
            State::Starting => Health::Down("starting".into()),
            State::Stopping => Health::Down("stopping".into()),
            State::Stopped => Health::Down("stopped".into()),
            State::Serving => {
                let last = after(
                    self.started,
                    Duration::from_millis(self.last_turn.load(Ordering::Relaxed)),
                );
                let idle = now.saturating_duration_since(last);
                if idle > STALLED {
                    Health::Down(format!(
                        "stalled: the router has not turned for {:.1} s",
                        idle.as_secs_f64()
                    ))
                } else {
                    Health::Up("serving".into())
                }
            }
        }
    }
}

/// What an admin request asks the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `GET /v1/clients`.
    Clients,
    /// `GET /v1/services`.
    Services,
    /// `GET /v1/mailboxes`.
    Mailboxes,
    /// `GET /v1/streams`.
    Streams,
    /// `GET /v1/series`: the console's charts (answered from the router's
    /// series, not the core).
    Series,
    /// Dead letters, mailbox peeks, queues: see [`super::admin`].
    Admin(super::admin::AdminQuery),
    /// `POST /v1/clients/<address>/maintenance`.
    Maintenance {
        /// The client's address (percent-decoded).
        address: String,
        /// On or off.
        on: bool,
    },
}

/// A query and where its answer goes.
#[derive(Debug)]
struct AdminRequest {
    query: Query,
    responder: Responder,
}

/// The router's side of operations: the liveness it beats and, with HTTP,
/// the admin channel, the wake-up descriptor and the metrics it publishes.
pub(crate) struct RouterOps {
    liveness: Liveness,
    http: Option<HttpSide>,
}

struct HttpSide {
    shared: Arc<Shared>,
    admin: Receiver<AdminRequest>,
    wake: WakeReceiver,
    metrics: BrokerMetrics,
    next_gauges: Instant,
    /// The console's charts, sampled in `publish`.
    series: Series,
}

impl RouterOps {
    /// Called at the top of every loop turn: a beat for the watchdog, and
    /// the time of the turn for `/health`.
    pub fn turn(&self, now: Instant) {
        self.liveness.beat();
        if let Some(h) = &self.http {
            let ms = now.saturating_duration_since(h.shared.started).as_millis();
            h.shared.last_turn.store(ms as u64, Ordering::Relaxed);
            if h.shared.state() == State::Starting {
                h.shared.set_state(State::Serving);
            }
        }
    }

    /// The descriptor to poll beside the ROUTER socket, if any.
    pub fn wake_fd(&self) -> Option<RawFd> {
        self.http.as_ref().map(|h| h.wake.as_raw_fd())
    }

    /// Before sleeping in poll: asks for a wake-up byte, then says whether
    /// admin requests already wait (then the poll must not sleep). Arming
    /// before the look means a request queued between the look and the
    /// sleep still wakes the router.
    pub fn arm(&self) -> bool {
        match &self.http {
            Some(h) => {
                h.wake.arm();
                !h.admin.is_empty()
            }
            None => false,
        }
    }

    /// After poll: awake anyway, no byte needed; empties the pipe if one
    /// came.
    pub fn awake(&self, woken: bool) {
        if let Some(h) = &self.http {
            h.wake.disarm();
            if woken {
                h.wake.drain();
            }
        }
    }

    /// Answers the admin requests waiting. Changes they make (maintenance
    /// off dispatches what waits) go out with the turn's flush.
    pub fn answer_admin<J: Journal>(&mut self, core: &mut Core<J>, now: Instant) {
        let Some(h) = &self.http else {
            return;
        };
        while let Ok(req) = h.admin.try_recv() {
            if !req.responder.is_wanted() {
                continue;
            }
            let response = match req.query {
                Query::Series => HttpResponse::json(200, &h.series.to_json()),
                _ => answer(core, &req.query, now),
            };
            req.responder.send(response);
        }
    }

    /// Publishes the counters that moved, and the gauges when due.
    pub fn publish<J: Journal>(&mut self, core: &Core<J>, now: Instant) {
        let Some(h) = &mut self.http else {
            return;
        };
        h.metrics.counters(core.counters());
        if now >= h.next_gauges {
            h.next_gauges = after(now, GAUGE_EVERY);
            h.metrics.gauges(&core.stats());
        }
        if h.series.due(now) {
            // Per service its depth, dispatch rate, redeliveries and poison
            // dead letters; under "*" the whole broker's, with the error
            // mailbox's size as its dead letters.
            let stats = core.stats();
            let c = &stats.counters;
            let mut samples: Vec<(String, SeriesSample)> = vec![(
                "*".into(),
                SeriesSample {
                    depth: stats.services.iter().map(|s| s.queued as u64).sum(),
                    dispatched: c.requests_dispatched,
                    redeliveries: c.requests_redelivered,
                    dead_letters: stats.dead_letters as u64,
                },
            )];
            samples.extend(stats.services.iter().map(|s| {
                (
                    s.name.clone(),
                    SeriesSample {
                        depth: s.queued as u64,
                        dispatched: s.dispatched,
                        redeliveries: s.redelivered,
                        dead_letters: s.poisoned,
                    },
                )
            }));
            h.series.record(now, &samples);
        }
    }

    /// A storage commit of `writes` keys took `took`.
    pub fn committed(&self, writes: usize, took: Duration) {
        if let Some(s) = self.http.as_ref().and_then(|h| h.metrics.storage.as_ref()) {
            s.commits.inc();
            s.writes.inc_by(writes as u64);
            s.seconds.observe(took.as_secs_f64());
        }
    }

    /// The router ended.
    pub fn stopped(&self) {
        if let Some(h) = &self.http {
            h.shared.set_state(State::Stopped);
        }
    }
}

/// The handle's side: the HTTP server and what stops it.
pub(crate) struct BrokerOps {
    liveness: Liveness,
    http: Option<(HttpServer, Arc<Shared>)>,
}

impl BrokerOps {
    /// Without HTTP: only the liveness counter.
    pub fn without_http() -> (BrokerOps, RouterOps) {
        let liveness = Liveness::new();
        (
            BrokerOps {
                liveness: liveness.clone(),
                http: None,
            },
            RouterOps {
                liveness,
                http: None,
            },
        )
    }

    /// Binds `listen` and starts the HTTP server; `durable` registers the
    /// storage metrics too.
    pub fn serve(
        listen: &str,
        durable: bool,
        token: Option<String>,
        open_reads: bool,
    ) -> Result<(BrokerOps, RouterOps), OpsError> {
        let now = Instant::now();
        let shared = Arc::new(Shared {
            started: now,
            state: AtomicU8::new(State::Starting as u8),
            last_turn: AtomicU64::new(0),
        });
        let metrics = Metrics::new("alaska_broker");
        let broker_metrics = BrokerMetrics::new(&metrics, durable)?;
        let (waker, wake) = wake::waker()?;
        let (tx, rx) = crossbeam_channel::bounded(ADMIN_QUEUE);
        let mut opts = HttpOptions::new(listen);
        opts.thread_name = "alaska-broker-http".into();
        opts.token = token;
        opts.open_reads = open_reads;
        // The console page holds no data (it asks the API for everything),
        // so it loads without the token and then asks for it.
        opts.public = vec!["/"];
        let server = HttpServer::start(opts, Arc::new(http_router(&shared, metrics, tx, waker)))?;
        let liveness = Liveness::new();
        Ok((
            BrokerOps {
                liveness: liveness.clone(),
                http: Some((server, shared.clone())),
            },
            RouterOps {
                liveness,
                http: Some(HttpSide {
                    shared,
                    admin: rx,
                    wake,
                    metrics: broker_metrics,
                    next_gauges: now,
                    series: Series::new(SERIES_EVERY, SERIES_KEEP, SERIES_SERVICES),
                }),
            },
        ))
    }

    /// The router's liveness counter.
    pub fn liveness(&self) -> Liveness {
        self.liveness.clone()
    }

    /// Where HTTP is served, if it is.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(s, _)| s.local_addr())
    }

    /// A stop began: `/health` says so from now on.
    pub fn stopping(&self) {
        if let Some((_, shared)) = &self.http {
            shared.set_state(State::Stopping);
        }
    }

    /// Stops the HTTP server (after the router, so that admin requests
    /// still waiting are answered `503`).
    pub fn stop(&mut self) {
        if let Some((server, shared)) = self.http.take() {
            shared.set_state(State::Stopped);
            server.stop();
        }
    }
}

// ----- HTTP side ---------------------------------------------------------

fn http_router(
    shared: &Arc<Shared>,
    metrics: Metrics,
    tx: Sender<AdminRequest>,
    waker: Waker,
) -> Router {
    let ask = move |query: Query| -> Reply {
        let (responder, pending) = reply_channel();
        match tx.try_send(AdminRequest { query, responder }) {
            Ok(()) => {
                waker.wake();
                Reply::Later(pending)
            }
            Err(TrySendError::Full(_)) => {
                Reply::Now(HttpResponse::text(503, "too many admin requests waiting"))
            }
            Err(TrySendError::Disconnected(_)) => Reply::Now(HttpResponse::text(503, "stopped")),
        }
    };
    let ask: Arc<dyn Fn(Query) -> Reply + Send + Sync> = Arc::new(ask);
    let get = |q: Query| {
        let ask = ask.clone();
        move |_: HttpRequest| ask(q.clone())
    };
    let health = shared.clone();
    let maintenance = ask.clone();
    let admin = |ask: &Arc<dyn Fn(Query) -> Reply + Send + Sync>| {
        let ask = Arc::clone(ask);
        move |req: HttpRequest| match super::admin::parse(&req) {
            Ok(q) => ask(Query::Admin(q)),
            Err(r) => Reply::Now(r),
        }
    };
    Router::new()
        .health(move || health.health(Instant::now()))
        .metrics(metrics)
        .route(Method::GET, "/", super::console::index)
        .route(Method::GET, "/v1/clients", get(Query::Clients))
        .route(Method::GET, "/v1/services", get(Query::Services))
        .route(Method::GET, "/v1/mailboxes", get(Query::Mailboxes))
        .route(Method::GET, "/v1/streams", get(Query::Streams))
        .route(Method::GET, "/v1/series", get(Query::Series))
        .route(Method::GET, "/v1/dead", admin(&ask))
        .route_prefix(Method::GET, "/v1/dead/", admin(&ask))
        .route_prefix(Method::POST, "/v1/dead/", admin(&ask))
        .route_prefix(Method::DELETE, "/v1/dead/", admin(&ask))
        .route(Method::GET, "/v1/delayed", admin(&ask))
        .route_prefix(Method::DELETE, "/v1/delayed/", admin(&ask))
        .route_prefix(Method::POST, "/v1/delayed/", admin(&ask))
        .route(Method::GET, "/v1/schedules", admin(&ask))
        .route_prefix(Method::GET, "/v1/mailboxes/", admin(&ask))
        .route_prefix(Method::GET, "/v1/services/", admin(&ask))
        .route_prefix(Method::POST, "/v1/services/", admin(&ask))
        .route_prefix(
            Method::POST,
            "/v1/clients/",
            move |req| match maintenance_query(&req) {
                Ok(q) => maintenance(q),
                Err(r) => Reply::Now(r),
            },
        )
}

/// `POST /v1/clients/<address>/maintenance` with `{"on": true|false}`.
pub fn maintenance_query(req: &HttpRequest) -> Result<Query, HttpResponse> {
    let Some(encoded) = req
        .path
        .strip_prefix("/v1/clients/")
        .and_then(|p| p.strip_suffix("/maintenance"))
    else {
        return Err(HttpResponse::text(404, "not found"));
    };
    let Some(address) = percent_decode(encoded) else {
        return Err(HttpResponse::text(
            400,
            "the address is not valid percent-encoded UTF-8",
        ));
    };
    let on = serde_json::from_slice::<Value>(&req.body)
        .ok()
        .and_then(|v| v.get("on").and_then(Value::as_bool));
    match on {
        Some(on) => Ok(Query::Maintenance { address, on }),
        None => Err(HttpResponse::text(
            400,
            "the body must be {\"on\": true} or {\"on\": false}",
        )),
    }
}

use super::admin::percent_decode;

// ----- answers, on the router thread -------------------------------------

/// The answer to one admin query, from the core as it is at `now`.
pub fn answer<J: Journal>(core: &mut Core<J>, query: &Query, now: Instant) -> HttpResponse {
    match query {
        Query::Clients => {
            let list: Vec<Value> = core.clients().iter().map(|c| client_json(c, now)).collect();
            HttpResponse::json(200, &json!({ "clients": list }))
        }
        Query::Services => {
            let list: Vec<Value> = core
                .services()
                .into_iter()
                .map(|s| {
                    json!({
                        "name": s.stats.name,
                        "queued": s.stats.queued,
                        "queued_bytes": s.stats.bytes,
                        "unconfirmed": s.stats.unconfirmed,
                        "workers": s.stats.workers,
                        "workers_in_maintenance": s.stats.workers_in_maintenance,
                        "offers": s.offers.iter().map(|o| json!({
                            "address": o.address,
                            "pattern": o.pattern,
                            "maintenance": o.maintenance,
                        })).collect::<Vec<_>>(),
                        "unmatched_subjects": s.unmatched_subjects,
                    })
                })
                .collect();
            HttpResponse::json(200, &json!({ "services": list }))
        }
        Query::Mailboxes => {
            let list: Vec<Value> = core
                .mailboxes(now)
                .into_iter()
                .map(|m| {
                    json!({
                        "address": m.address,
                        "messages": m.messages,
                        "bytes": m.bytes,
                        "connected": m.connected,
                        "reclaim_in_seconds": m.reclaim_in.map(|d| d.as_secs_f64()),
                    })
                })
                .collect();
            HttpResponse::json(200, &json!({ "mailboxes": list }))
        }
        Query::Series => HttpResponse::text(404, "series are kept beside the core"),
        Query::Admin(q) => super::admin::answer(core, q),
        Query::Streams => {
            let list: Vec<Value> = core
                .streams()
                .into_iter()
                .map(|s| {
                    json!({
                        "name": s.name,
                        "readers": s.readers.iter().map(|r| json!({
                            "address": r.address,
                            "pattern": r.pattern,
                        })).collect::<Vec<_>>(),
                        "writers": s.writers,
                    })
                })
                .collect();
            HttpResponse::json(200, &json!({ "streams": list }))
        }
        Query::Maintenance { address, on } => {
            if address.is_empty() || !core.set_maintenance(address, *on) {
                return HttpResponse::text(404, &format!("no client connected as {address:?}"));
            }
            tracing::info!(
                "admin API: client {address:?} {} maintenance",
                if *on { "put in" } else { "taken out of" }
            );
            let client = core
                .clients()
                .into_iter()
                .find(|c| c.address == *address)
                .map(|c| client_json(&c, now))
                .unwrap_or(Value::Null);
            HttpResponse::json(
                200,
                &json!({ "address": address, "maintenance": on, "client": client }),
            )
        }
    }
}

fn client_json(c: &ClientInfo, now: Instant) -> Value {
    json!({
        "address": c.address,
        "user": c.user,
        "acknowledged": c.credit.is_some(),
        "credit": c.credit,
        "unconfirmed": c.unconfirmed,
        "maintenance": c.maintenance,
        "offers": c.offers,
        "reads": c.reads,
        "writes": c.writer,
        "silent_seconds": now.saturating_duration_since(c.last_seen).as_secs_f64(),
    })
}

// ----- metrics -----------------------------------------------------------

/// Reads one counter of the core.
type Field = fn(&Counters) -> u64;

/// One counter of the core and the Prometheus counter it is copied to.
type CounterField = (IntCounter, Field);

/// The broker's metric handles, owned by the router.
struct BrokerMetrics {
    counters: Vec<CounterField>,
    last: Counters,
    clients: IntGauge,
    clients_in_maintenance: IntGauge,
    services: IntGauge,
    mailboxes: IntGauge,
    mail_held: IntGauge,
    dead_letters: IntGauge,
    delayed_requests: IntGauge,
    schedule_fires: IntCounterVec,
    schedule_next: IntGaugeVec,
    schedule_last: IntGaugeVec,
    /// Fires per schedule already added to `schedule_fires`.
    schedule_fired: std::collections::HashMap<String, u64>,
    mail_bytes: IntGauge,
    streams: IntGauge,
    stream_readers: IntGauge,
    service_queued: IntGaugeVec,
    service_bytes: IntGaugeVec,
    service_workers: IntGaugeVec,
    service_in_maintenance: IntGaugeVec,
    service_unconfirmed: IntGaugeVec,
    /// The service label values exported now.
    exported: HashSet<String>,
    storage: Option<StorageMetrics>,
}

struct StorageMetrics {
    commits: IntCounter,
    writes: IntCounter,
    seconds: Histogram,
}

/// Commit times: from tens of microseconds (to the OS) to a slow fsync.
const COMMIT_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

impl BrokerMetrics {
    fn new(m: &Metrics, durable: bool) -> Result<BrokerMetrics, MetricsError> {
        let fields: [(&str, &str, Field); 25] = [
            ("commands_total", "MLM commands received (malformed ones included).", |c| c.commands),
            ("malformed_commands_total", "Commands that could not be decoded, or that only a broker sends; each dropped its sender.", |c| c.malformed),
            ("clients_opened_total", "CONNECTION OPENs accepted.", |c| c.clients_opened),
            ("clients_expired_total", "Clients expired after the client timeout of silence.", |c| c.clients_expired),
            ("requests_queued_total", "Service requests accepted into a queue.", |c| c.requests_queued),
            ("requests_refused_total", "Service requests refused because the queue was full.", |c| c.requests_refused),
            ("requests_dispatched_total", "SERVICE DELIVERs made, redeliveries included.", |c| c.requests_dispatched),
            ("requests_redelivered_total", "Requests back in their queue: the worker went away unconfirmed, or the delivery could not be sent.", |c| c.requests_redelivered),
            ("requests_poisoned_total", "Requests dead-lettered after mlm_server/service/max_deliveries deliveries whose workers went away unconfirmed.", |c| c.requests_poisoned),
            ("requests_confirmed_total", "Requests confirmed by acknowledging workers.", |c| c.requests_confirmed),
            ("requests_expired_total", "Requests whose timeout passed before a worker took them.", |c| c.requests_expired),
            ("mail_stored_total", "Mail stored for an absent (or unreachable) owner.", |c| c.mail_stored),
            ("mail_delivered_total", "MAILBOX DELIVERs made.", |c| c.mail_delivered),
            ("mail_refused_total", "Mail refused because the mailbox was full.", |c| c.mail_refused),
            ("mail_expired_total", "Mail whose timeout passed in the mailbox.", |c| c.mail_expired),
            ("mail_reclaimed_total", "Mail dropped with a reclaimed mailbox.", |c| c.mail_reclaimed),
            ("mailboxes_reclaimed_total", "Mailboxes reclaimed: their owner stayed away past the expiry.", |c| c.mailboxes_reclaimed),
            ("stream_messages_total", "STREAM SENDs received.", |c| c.stream_messages),
            ("stream_deliveries_total", "STREAM DELIVERs made.", |c| c.stream_deliveries),
            ("requests_replayed_total", "Requests queued by the broker itself: dead letters replayed through the admin API.", |c| c.requests_replayed),
            ("requests_purged_total", "Queued requests purged through the admin API.", |c| c.requests_purged),
            ("mail_removed_total", "Stored mail (dead letters included) deleted or purged through the admin API.", |c| c.mail_removed),
            ("maintenance_commands_total", "maint/1 commands received from clients (CONFIRM maintenance:on|off).", |c| c.maintenance_commands),
            ("requests_delayed_total", "SERVICE SENDs held for a delay (delay/1) before being queued.", |c| c.requests_delayed),
            ("delayed_cancelled_total", "Delayed requests cancelled through the admin API.", |c| c.delayed_cancelled),
        ];
        let mut counters = Vec::with_capacity(fields.len());
        for (name, help, get) in fields {
            counters.push((m.counter(name, help)?, get));
        }
        let service = |name: &str, help: &str| m.gauge_vec(name, help, &["service"]);
        let start = m.gauge(
            "start_time_seconds",
            "When the broker started, in seconds since the epoch.",
        )?;
        start.set(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
        let storage = if durable {
            Some(StorageMetrics {
                commits: m.counter(
                    "storage_commits_total",
                    "Write batches committed to durable storage (at most one per loop turn).",
                )?,
                writes: m.counter(
                    "storage_writes_total",
                    "Keys written or deleted in durable storage.",
                )?,
                seconds: m.histogram(
                    "storage_commit_seconds",
                    "Time to commit one batch (to the OS; with sync = always, to the disk).",
                    COMMIT_BUCKETS,
                )?,
            })
        } else {
            None
        };
        Ok(BrokerMetrics {
            counters,
            last: Counters::default(),
            clients: m.gauge("clients", "Clients connected.")?,
            clients_in_maintenance: m.gauge(
                "clients_in_maintenance",
                "Clients in maintenance (nothing new is dispatched to them).",
            )?,
            services: m.gauge("services", "Services with offers or queued requests.")?,
            mailboxes: m.gauge("mailboxes", "Mailboxes holding mail for an absent owner.")?,
            mail_held: m.gauge("mail_held", "Mail held in mailboxes.")?,
            dead_letters: m.gauge("dead_letters", "Dead letters kept in the error mailbox (mlm_server/service/dead_letters), browsable through /v1/dead.")?,
            delayed_requests: m.gauge("delayed_requests", "Requests held for a delay (delay/1), not yet due; listed by /v1/delayed.")?,
            schedule_fires: m.counter_vec("schedule_fires_total", "Fires of each schedule (mlm_server/schedule/<name>) since the broker started.", &["schedule"])?,
            schedule_next: m.gauge_vec("schedule_next_fire_timestamp_seconds", "When each schedule fires next, in seconds since the epoch.", &["schedule"])?,
            schedule_last: m.gauge_vec("schedule_last_fire_timestamp_seconds", "The due time of each schedule's last fire (kept across restarts with storage), in seconds since the epoch.", &["schedule"])?,
            schedule_fired: std::collections::HashMap::new(),
            mail_bytes: m.gauge("mail_held_bytes", "Content bytes of the mail held.")?,
            streams: m.gauge("streams", "Streams with at least one reader.")?,
            stream_readers: m.gauge("stream_readers", "STREAM READ subscriptions.")?,
            service_queued: service(
                "service_queue_depth",
                "Requests waiting in the service's queue.",
            )?,
            service_bytes: service(
                "service_queue_bytes",
                "Content bytes waiting in the service's queue.",
            )?,
            service_workers: service("service_workers", "Clients offering the service.")?,
            service_in_maintenance: service(
                "service_workers_in_maintenance",
                "Clients offering the service that are in maintenance.",
            )?,
            service_unconfirmed: service(
                "service_unconfirmed",
                "Requests given to acknowledging workers and not yet confirmed.",
            )?,
            exported: HashSet::new(),
            storage,
        })
    }

    /// Adds to each Prometheus counter what its core counter gained.
    fn counters(&mut self, now: &Counters) {
        if *now == self.last {
            return;
        }
        for (counter, get) in &self.counters {
            let (new, old) = (get(now), get(&self.last));
            if new > old {
                counter.inc_by(new - old);
            }
        }
        self.last = now.clone();
    }

    /// Sets every gauge from a snapshot.
    fn gauges(&mut self, s: &Stats) {
        let set = |g: &IntGauge, v: usize| g.set(v as i64);
        set(&self.clients, s.clients);
        set(&self.clients_in_maintenance, s.clients_in_maintenance);
        set(&self.services, s.services.len());
        set(&self.mailboxes, s.mailboxes);
        set(&self.mail_held, s.mail_held);
        set(&self.dead_letters, s.dead_letters);
        set(&self.delayed_requests, s.delayed_requests);
        // Schedules come from the configuration: a bounded label set.
        for (name, fires, next, last) in &s.schedules {
            let seen = self.schedule_fired.entry(name.clone()).or_insert(0);
            let counter = self.schedule_fires.with_label_values(&[name]);
            if *fires > *seen {
                counter.inc_by(*fires - *seen);
                *seen = *fires;
            }
            if let Some(ms) = next {
                self.schedule_next
                    .with_label_values(&[name])
                    .set((*ms / 1000) as i64);
            }
            if let Some(ms) = last {
                self.schedule_last
                    .with_label_values(&[name])
                    .set((*ms / 1000) as i64);
            }
        }
        set(&self.mail_bytes, s.mail_bytes);
        set(&self.streams, s.streams);
        set(&self.stream_readers, s.stream_readers);
        // (queued, bytes, workers, in maintenance, unconfirmed) per label.
        let mut rows: Vec<(&str, [usize; 5])> =
            Vec::with_capacity(s.services.len().min(SERVICE_LABELS + 1));
        let mut other = [0usize; 5];
        for (i, svc) in s.services.iter().enumerate() {
            let v = [
                svc.queued,
                svc.bytes,
                svc.workers,
                svc.workers_in_maintenance,
                svc.unconfirmed,
            ];
            if i < SERVICE_LABELS {
                rows.push((svc.name.as_str(), v));
            } else {
                for (o, x) in other.iter_mut().zip(v) {
                    *o += x;
                }
            }
        }
        if s.services.len() > SERVICE_LABELS {
            rows.push((OTHER, other));
        }
        let vecs = [
            &self.service_queued,
            &self.service_bytes,
            &self.service_workers,
            &self.service_in_maintenance,
            &self.service_unconfirmed,
        ];
        let mut now_exported = HashSet::with_capacity(rows.len());
        for (name, v) in &rows {
            for (vec, x) in vecs.iter().zip(v) {
                vec.with_label_values(&[name]).set(*x as i64);
            }
            now_exported.insert(name.to_string());
        }
        // A service that went idle is forgotten by the core: its series go.
        for gone in self.exported.difference(&now_exported) {
            for vec in vecs {
                let _ = vec.remove_label_values(&[gone]);
            }
        }
        self.exported = now_exported;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(path: &str, body: &str) -> HttpRequest {
        HttpRequest::new(Method::POST, path, body.as_bytes().to_vec())
    }

    #[test]
    fn maintenance_paths_and_bodies() {
        assert_eq!(
            maintenance_query(&post(
                "/v1/clients/AW::h::1-AB/maintenance",
                "{\"on\": true}"
            )),
            Ok(Query::Maintenance {
                address: "AW::h::1-AB".into(),
                on: true
            })
        );
        assert_eq!(
            maintenance_query(&post("/v1/clients/a%2Fb%20c/maintenance", "{\"on\":false}")),
            Ok(Query::Maintenance {
                address: "a/b c".into(),
                on: false
            })
        );
        let status = |p: &str, b: &str| maintenance_query(&post(p, b)).unwrap_err().status;
        assert_eq!(status("/v1/clients/x/other", "{\"on\": true}"), 404);
        assert_eq!(status("/v1/clients/x/maintenance", "{\"on\": 1}"), 400);
        assert_eq!(status("/v1/clients/x/maintenance", "on"), 400);
        assert_eq!(status("/v1/clients/%zz/maintenance", "{\"on\": true}"), 400);
        assert_eq!(status("/v1/clients/%ff/maintenance", "{\"on\": true}"), 400);
    }

    #[test]
    fn health_follows_the_router() {
        let t0 = Instant::now();
        let s = Shared {
            started: t0,
            state: AtomicU8::new(State::Starting as u8),
            last_turn: AtomicU64::new(0),
        };
        assert_eq!(s.health(t0), Health::Down("starting".into()));
        s.set_state(State::Serving);
        s.last_turn.store(1000, Ordering::Relaxed);
        assert_eq!(
            s.health(t0 + Duration::from_secs(3)),
            Health::Up("serving".into())
        );
        assert_eq!(
            s.health(t0 + Duration::from_secs(7)),
            Health::Down("stalled: the router has not turned for 6.0 s".into())
        );
        s.set_state(State::Stopping);
        assert_eq!(s.health(t0), Health::Down("stopping".into()));
    }

    #[test]
    fn counters_move_by_what_the_core_gained_and_gauges_forget_idle_services() {
        let m = Metrics::new("t");
        let mut bm = BrokerMetrics::new(&m, false).unwrap();
        let mut c = Counters {
            requests_dispatched: 5,
            ..Counters::default()
        };
        bm.counters(&c);
        c.requests_dispatched = 7;
        c.malformed = 1;
        bm.counters(&c);
        bm.counters(&c);
        let text = m.render();
        assert!(text.contains("t_requests_dispatched_total 7\n"), "{text}");
        assert!(text.contains("t_malformed_commands_total 1\n"), "{text}");
        let svc = |name: &str, queued| crate::broker::core::ServiceStats {
            name: name.into(),
            queued,
            bytes: 0,
            dispatched: 0,
            redelivered: 0,
            poisoned: 0,
            offers: 1,
            unconfirmed: 0,
            workers: 1,
            workers_in_maintenance: 0,
        };
        let mut stats = Stats {
            counters: c,
            clients: 2,
            clients_in_maintenance: 0,
            services: vec![svc("a", 3), svc("b", 4)],
            mailboxes: 0,
            mail_held: 0,
            mail_bytes: 0,
            dead_letters: 0,
            streams: 0,
            stream_readers: 0,
            delayed_requests: 0,
            schedules: vec![(
                "tick".into(),
                3,
                Some(1_800_000_000_000),
                Some(1_799_999_999_000),
            )],
        };
        bm.gauges(&stats);
        let text = m.render();
        assert!(
            text.contains("t_service_queue_depth{service=\"a\"} 3\n"),
            "{text}"
        );
        stats.services.remove(0);
        bm.gauges(&stats);
        let text = m.render();
        assert!(!text.contains("service=\"a\""), "{text}");
        assert!(
            text.contains("t_service_queue_depth{service=\"b\"} 4\n"),
            "{text}"
        );
        // Past the cap, the rest is summed under _other.
        stats.services = (0..SERVICE_LABELS + 2)
            .map(|i| svc(&format!("s{i:04}"), 1))
            .collect();
        bm.gauges(&stats);
        let text = m.render();
        assert!(
            text.contains("t_service_queue_depth{service=\"_other\"} 2\n"),
            "{text}"
        );
        assert!(!text.contains("service=\"b\""), "{text}");
    }
}
