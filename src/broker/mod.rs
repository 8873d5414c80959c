//! A Malamute-compatible broker: clients, streams, mailboxes and services
//! over one ZeroMQ ROUTER socket, speaking the MLM protocol of
//! [`crate::mlm`].
//!
//! It is what `alaska-broker` runs and what `alaska --embedded-broker`
//! embeds. It behaves like the reference broker where libmlm clients can
//! tell (see `docs/PROTOCOL-NOTES.md`) and is stricter where the reference
//! is weak: malformed input is answered with ERROR and only its sender is
//! dropped, nothing is routed into the void (ROUTER_MANDATORY), queues and
//! mailboxes are bounded in messages and bytes, request timeouts are
//! honoured, and service requests given to a worker that acknowledges
//! (CREDIT, then CONFIRM) are redelivered if that worker dies.
//!
//! With `storage` configured, what it holds (stored mail, queued and
//! unconfirmed requests) survives a crash: see [`storage`].
//!
//! Threads: the router thread (`alaska-broker`) owns the ROUTER socket and
//! all state, kept in the socket-free [`core`]; with PLAIN security a ZAP
//! thread (`alaska-broker-zap`) checks credentials; with
//! `mlm_server/http/listen` an HTTP thread (`alaska-broker-http`) serves
//! health, metrics and the admin API without touching either ([`ops`]).
//! Stopping is a message on a channel, polled by the router.

mod config;
pub mod core;
pub mod ops;
mod router;
pub mod storage;
mod zap;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

pub use config::{load_config, parse_config};
pub use ops::OpsError;

use crate::ops::notify::Liveness;
pub use storage::{StorageConfig, StorageError, SyncMode};

/// Limits of a queue or mailbox: whichever is reached first refuses more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most messages held.
    pub messages: usize,
    /// Most content bytes held.
    pub bytes: usize,
}

/// Broker settings. `Default` gives the reference broker's behaviour on
/// `tcp://127.0.0.1:9999` with NULL security.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where to bind; `tcp://127.0.0.1:*` picks a free port.
    pub endpoint: String,
    /// A client silent for this long is expired (reference: 10 s).
    pub client_timeout: Duration,
    /// PLAIN users and passwords; `None` for NULL security.
    pub plain: Option<HashMap<String, String>>,
    /// Limits of each service's request queue.
    pub service_queue_limit: Limits,
    /// Limits of each mailbox.
    pub mailbox_limit: Limits,
    /// Mail kept for an address that is away is reclaimed after this long
    /// without the address connecting.
    pub mailbox_expiry: Duration,
    /// Log every command.
    pub verbose: bool,
    /// Durable storage; `None` keeps everything in memory.
    pub storage: Option<StorageConfig>,
    /// `host:port` for `/health`, `/metrics` and the admin API; `None`:
    /// not served.
    pub http_listen: Option<String>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            endpoint: crate::mlm::DEFAULT_ENDPOINT.into(),
            client_timeout: Duration::from_secs(10),
            plain: None,
            service_queue_limit: Limits {
                messages: 100_000,
                bytes: 256 << 20,
            },
            mailbox_limit: Limits {
                messages: 10_000,
                bytes: 64 << 20,
            },
            mailbox_expiry: Duration::from_secs(3600),
            verbose: false,
            storage: None,
            http_listen: None,
        }
    }
}

/// Errors of the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The endpoint could not be bound.
    #[error("cannot bind {endpoint}: {source}")]
    Bind {
        /// The endpoint.
        endpoint: String,
        /// What ZeroMQ said.
        source: zmq::Error,
    },
    /// Another ZeroMQ failure.
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    /// A thread could not be started.
    #[error("starting a thread: {0}")]
    Thread(#[from] std::io::Error),
    /// The configuration is wrong.
    #[error("{0}")]
    Config(String),
    /// The router thread panicked (a bug).
    #[error("the broker thread panicked")]
    Panicked,
    /// Durable storage failed, or refused what it found.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The HTTP endpoints could not be started.
    #[error(transparent)]
    Ops(#[from] OpsError),
}

/// The broker, as a namespace for [`Broker::start`].
pub struct Broker;

impl Broker {
    /// Binds the endpoint (and the HTTP address, if any) and starts the
    /// router (and ZAP, and HTTP) threads.
    pub fn start(cfg: BrokerConfig) -> Result<BrokerHandle, BrokerError> {
        let ctx = zmq::Context::new();
        // Stopped again if anything below fails (a port taken, a store
        // refused), so a failed start leaves no thread behind.
        let mut zap = ZapGuard(match &cfg.plain {
            Some(users) => Some(zap::start(&ctx, users.clone())?),
            None => None,
        });
        let socket = ctx.socket(zmq::ROUTER)?;
        socket.set_router_mandatory(true)?;
        socket.set_linger(0)?;
        // Large enough that bursts are absorbed by ZeroMQ, not refused.
        socket.set_sndhwm(100_000)?;
        socket.set_rcvhwm(100_000)?;
        // Transport heartbeats make a dead peer's connection (and so its
        // routing id) go away, so sends to it fail and get requeued.
        socket.set_heartbeat_ivl(1000)?;
        socket.set_heartbeat_timeout(3000)?;
        if cfg.plain.is_some() {
            socket.set_plain_server(true)?;
            socket.set_zap_domain("alaska")?;
        }
        socket
            .bind(&cfg.endpoint)
            .map_err(|source| BrokerError::Bind {
                endpoint: cfg.endpoint.clone(),
                source,
            })?;
        let endpoint = socket
            .get_last_endpoint()?
            .unwrap_or_else(|_| cfg.endpoint.clone());
        // Before storage is opened: a taken HTTP port then leaves the store
        // untouched.
        let (ops, router_ops) = match &cfg.http_listen {
            Some(listen) => ops::BrokerOps::serve(listen, cfg.storage.is_some())?,
            None => ops::BrokerOps::without_http(),
        };
        let storage = match &cfg.storage {
            Some(s) => {
                let (store, recovered) = storage::Storage::open(s)?;
                for d in &recovered.damage {
                    tracing::warn!("storage {}: {d}", s.dir.display());
                }
                tracing::info!(
                    "storage {} (sync {}): {}",
                    s.dir.display(),
                    match s.sync {
                        SyncMode::Always => "always",
                        SyncMode::Batch => "batch",
                    },
                    recovered.summary()
                );
                Some((store, recovered))
            }
            None => None,
        };
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let router_ctx = ctx.clone();
        let thread = std::thread::Builder::new()
            .name("alaska-broker".into())
            .spawn(move || {
                let _ctx = router_ctx;
                let result = router::Router::new(socket, &cfg, storage, router_ops).run(&stop_rx);
                if let Err(e) = &result {
                    tracing::error!("broker stopped: {e}");
                }
                result
            })?;
        tracing::info!("broker listening on {endpoint}");
        if let Some(addr) = ops.http_addr() {
            tracing::info!(
                "broker serving http://{addr}: GET /health, /metrics, /v1/clients, /v1/services, \
                 /v1/mailboxes, /v1/streams; POST /v1/clients/<address>/maintenance"
            );
        }
        Ok(BrokerHandle {
            endpoint,
            stop: Some(stop_tx),
            thread: Some(thread),
            zap: zap.0.take(),
            ops,
            _ctx: ctx,
        })
    }
}

/// The ZAP thread while the broker starts: stopped if the start fails.
struct ZapGuard(Option<zap::ZapHandle>);

impl Drop for ZapGuard {
    fn drop(&mut self) {
        if let Some(z) = self.0.take() {
            z.stop();
        }
    }
}

/// A running broker. Dropping it stops it.
pub struct BrokerHandle {
    endpoint: String,
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<JoinHandle<Result<(), BrokerError>>>,
    zap: Option<zap::ZapHandle>,
    ops: ops::BrokerOps,
    _ctx: zmq::Context,
}

impl BrokerHandle {
    /// The endpoint actually bound (with the real port).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether the router thread is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Where `/health`, `/metrics` and the admin API are served (with the
    /// real port), if `http_listen` was set.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.ops.http_addr()
    }

    /// A counter the router beats at every loop turn (at least every
    /// 100 ms while it runs): what a systemd watchdog should watch.
    pub fn liveness(&self) -> Liveness {
        self.ops.liveness()
    }

    /// Stops the broker and waits for its threads.
    pub fn stop(mut self) {
        let _ = self.shutdown();
    }

    /// Stops the broker, waits for its threads, and says how the router
    /// ended: an error if durable storage failed (then the broker had
    /// stopped by itself, see [`BrokerHandle::is_running`]) or could not
    /// be closed cleanly.
    pub fn stop_checked(mut self) -> Result<(), BrokerError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), BrokerError> {
        self.ops.stopping();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(BrokerError::Panicked),
            None => Ok(()),
        };
        if let Some(z) = self.zap.take() {
            z.stop();
        }
        // After the router: admin requests still queued are answered 503.
        self.ops.stop();
        result
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
