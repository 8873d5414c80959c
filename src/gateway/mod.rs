//! `alaska-gateway`: HTTP in front of MLM services.
//!
//! - `POST /v1/request/<address>/<subject>`: the body becomes the one
//!   content frame of a SERVICE SEND to `<address>`; the gateway waits for
//!   the reply mailed back to its own address (matched by tracker) and
//!   answers `200` with the reply's first frame. An error reply (subject
//!   starting with [`crate::worker::ERROR_REPLY_PREFIX`]) is `502`, no reply
//!   within `?timeout=<ms>` is `504`, no broker is `503`, a full queue
//!   (the broker's refusal, or more than [`GatewayOptions::max_waiting`]
//!   requests waiting here) is `429`.
//! - `POST /v1/mail/<address>/<subject>` (MAILBOX SEND) and
//!   `POST /v1/stream/<stream>/<subject>` (STREAM SEND): `202`.
//! - `GET /health`: `200` while connected to a broker, else `503`.
//! - `GET /metrics`: Prometheus text ([`metrics`]).
//!
//! Threads: the HTTP server thread (`alaska-http`, see [`crate::ops::http`])
//! parses requests and hands them over a bounded channel to the relay
//! thread (`alaska-gateway-relay`), which owns the broker connections (one
//! per endpoint of the list, [`crate::failover::Brokers`]), keeps the requests waiting in a socket-free
//! [`pending::Pending`], and completes each HTTP answer through a one-shot
//! responder. No thread but the relay touches the ZeroMQ socket.

mod api;
pub mod config;
pub mod metrics;
mod nats;
pub mod pending;
mod relay;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::mlm::{Credentials, CurveClientKeys};
use crate::ops::http::{HttpError, HttpOptions, HttpServer};
use crate::ops::metrics::{Metrics, MetricsError};
use crate::ops::notify::Liveness;
use crate::ops::wake::{self, Waker};

pub use config::GatewaySettings;
pub use metrics::GatewayMetrics;

/// What the gateway needs to run.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The broker, or several comma-separated in priority order
    /// (`gateway/broker/endpoint`, see [`crate::failover::parse_endpoints`]).
    pub endpoint: String,
    /// With several brokers: the first connected one, or round robin.
    pub balance: crate::failover::Balance,
    /// Our address on the broker (replies are mailed there); unique per
    /// gateway.
    pub address: String,
    /// How long to wait for the broker to accept the connection, and to
    /// answer, before it is reported gone.
    pub broker_timeout: Duration,
    /// PLAIN credentials, or NULL security.
    pub plain: Option<Credentials>,
    /// CURVE keys, or NULL security.
    pub curve: Option<CurveClientKeys>,
    /// `host:port` to serve HTTP on.
    pub listen: String,
    /// Largest request body (`413` beyond).
    pub max_body: usize,
    /// The bearer token callers need (all but `/health`); `None`: anyone
    /// who reaches the listener may call every service.
    pub token: Option<String>,
    /// Wait for a reply when the request gives no `?timeout=`.
    pub default_timeout: Duration,
    /// Longest wait a request may ask for (larger ones are cut to this).
    pub max_timeout: Duration,
    /// Requests that may wait for replies at once; past it, `429` at once.
    pub max_waiting: usize,
    /// Log every request (endpoint, address, subject, size, status, time).
    pub verbose: bool,
    /// NATS only: a request is stored in the JetStream stream that holds
    /// its subject (a durable work queue), then its reply awaited.
    pub jetstream: bool,
}

impl GatewayOptions {
    /// The defaults (those of `alaska-gateway.cfg`) for `endpoint` and
    /// `listen`, with an address made unique by host and process id.
    pub fn new(endpoint: impl Into<String>, listen: impl Into<String>) -> GatewayOptions {
        GatewayOptions {
            endpoint: endpoint.into(),
            balance: crate::failover::Balance::Priority,
            address: default_address(),
            broker_timeout: Duration::from_millis(1000),
            plain: None,
            curve: None,
            listen: listen.into(),
            max_body: 1 << 20,
            token: None,
            default_timeout: Duration::from_secs(5),
            max_timeout: Duration::from_secs(60),
            max_waiting: 1024,
            verbose: false,
            jetstream: false,
        }
    }
}

/// `alaska-gateway-<host>-<pid>`: unique per running gateway, so that two
/// gateways never take each other's place (and replies) on the broker.
pub fn default_address() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let mut a = format!("alaska-gateway-{host}-{}", std::process::id());
    a.truncate(255);
    a
}

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The HTTP server could not start (e.g. the port is taken).
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The metrics could not be registered (a bug).
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A thread or the wake-up pipe could not be made.
    #[error("starting the gateway: {0}")]
    Io(#[from] std::io::Error),
    /// A setting is unusable.
    #[error("{0}")]
    Options(String),
}

/// State the HTTP thread and the relay share: flags and counters only.
#[derive(Debug)]
pub(crate) struct Shared {
    pub connected: AtomicBool,
    pub stopping: AtomicBool,
    pub stop: AtomicBool,
    pub metrics: Arc<GatewayMetrics>,
    pub liveness: Liveness,
}

/// A running gateway. Dropping it stops it.
pub struct Gateway {
    http: Option<HttpServer>,
    relay: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    waker: Waker,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Starts the relay thread (which connects to the broker, and keeps
    /// trying while it cannot) and the HTTP server.
    pub fn start(opts: GatewayOptions) -> Result<Gateway, GatewayError> {
        if let Err(e) = crate::failover::parse_endpoints(&opts.endpoint) {
            return Err(GatewayError::Options(format!("broker endpoint: {e}")));
        }
        if opts.max_waiting == 0 || opts.max_timeout.is_zero() || opts.default_timeout.is_zero() {
            return Err(GatewayError::Options(
                "max_waiting, timeouts: must be above zero".into(),
            ));
        }
        let metrics = Arc::new(GatewayMetrics::new()?);
        let shared = Arc::new(Shared {
            connected: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            metrics: metrics.clone(),
            liveness: Liveness::new(),
        });
        let (waker, wake_rx) = wake::waker()?;
        // Room for every admitted request plus a burst of mail and stream
        // posts, so the HTTP thread never blocks on it.
        let (tx, rx) = crossbeam_channel::bounded(opts.max_waiting + 1024);
        let relay = if crate::worker::dispatcher::is_nats(&opts.endpoint) {
            // NATS: the relay is a runtime thread (see `nats`); the
            // wake-up pipe is not needed there.
            drop(wake_rx);
            let (o, s) = (opts.clone(), shared.clone());
            std::thread::Builder::new()
                .name("alaska-gateway-relay".into())
                .spawn(move || nats::run(o, rx, s))?
        } else {
            let relay = relay::Relay::new(opts.clone(), rx, wake_rx, shared.clone());
            std::thread::Builder::new()
                .name("alaska-gateway-relay".into())
                .spawn(move || relay.run())?
        };
        let api = api::Api::new(&opts, tx, waker.clone(), shared.clone());
        let mut http_opts = HttpOptions::new(opts.listen.clone());
        http_opts.max_body = opts.max_body;
        http_opts.token = opts.token.clone();
        // Request bodies are any bytes (the service's content): the
        // Origin check alone keeps web pages out.
        http_opts.json_writes = false;
        let http = match HttpServer::start(http_opts, Arc::new(api.router())) {
            Ok(h) => h,
            Err(e) => {
                shared.stop.store(true, Ordering::SeqCst);
                waker.wake();
                let _ = relay.join();
                return Err(e.into());
            }
        };
        Ok(Gateway {
            http: Some(http),
            relay: Some(relay),
            shared,
            waker,
        })
    }

    /// The HTTP address actually bound.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(HttpServer::local_addr)
    }

    /// Whether the broker connection is open.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// The metrics registry (what `/metrics` serves).
    pub fn metrics(&self) -> &Metrics {
        self.shared.metrics.registry()
    }

    /// The relay loop's liveness counter, for the systemd watchdog.
    pub fn liveness(&self) -> Liveness {
        self.shared.liveness.clone()
    }

    /// Requests waiting for replies right now.
    pub fn in_flight(&self) -> i64 {
        self.shared.metrics.in_flight.load(Ordering::Relaxed)
    }

    /// Stops: new requests get `503`, requests waiting get `503`, the
    /// broker connection is closed politely, then the HTTP server stops
    /// (after at most a second for answers still being written).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.stop.store(true, Ordering::SeqCst);
        self.waker.wake();
        if let Some(r) = self.relay.take() {
            let _ = r.join();
        }
        if let Some(h) = self.http.take() {
            h.stop();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown();
    }
}
