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
//! Security: NULL (anyone), PLAIN (user names and passwords) or CURVE
//! (encryption, and client keys from an allowed list), decided by a ZAP
//! handler (`zap.rs`); then, with an ACL file, what each authenticated user
//! may do ([`acl`]), checked by the core before it applies a command.
//!
//! Threads: the router thread (`alaska-broker`) owns the ROUTER socket and
//! all state, kept in the socket-free [`core`]; with PLAIN or CURVE a ZAP
//! thread (`alaska-broker-zap`) decides who may connect and a monitor
//! thread (`alaska-broker-monitor`) logs failed handshakes; with
//! `mlm_server/http/listen` an HTTP thread (`alaska-broker-http`) serves
//! health, metrics and the admin API without touching either ([`ops`]).
//! Stopping and new ACL rules are messages on channels, polled by the
//! router.

pub mod acl;
pub mod admin;
mod config;
pub mod console;
pub mod core;
mod monitor;
pub mod ops;
mod router;
pub mod series;
pub mod storage;
mod zap;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

pub use acl::{Acl, AclError};
pub use config::{load_config, parse_config, parse_config_with_env, BROKER_KEYS};
pub use ops::OpsError;

use crate::ops::notify::Liveness;
pub use storage::{StorageConfig, StorageError, SyncMode};

use crate::curve::{AllowedKeys, CurveError, KeyPair};

/// CURVE settings of a broker: its own key pair, and the client keys it
/// lets in (each with the name that becomes the connection's user).
#[derive(Debug, Clone)]
pub struct CurveServer {
    /// The broker's key pair; clients need its public key.
    pub keys: KeyPair,
    /// The clients allowed in.
    pub clients: AllowedKeys,
    /// Where `clients` was read from, to read again on reload.
    pub clients_path: Option<PathBuf>,
}

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
    /// PLAIN users and passwords; `None` for NULL security (or CURVE).
    pub plain: Option<HashMap<String, String>>,
    /// CURVE keys; `None` for NULL security (or PLAIN). Not both.
    pub curve: Option<CurveServer>,
    /// Authorization rules; `None` allows every user everything.
    pub acl: Option<Acl>,
    /// Where `acl` was read from, to read again on reload (SIGHUP).
    pub acl_file: Option<PathBuf>,
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
    /// The bearer token the HTTP listener requires (all but `/health`
    /// and the console page).
    pub http_token: Option<String>,
    /// `mlm_server/http/open_reads`: with a token, reads (GET) are
    /// allowed without it and only changes need it.
    pub http_open_reads: bool,
    /// `mlm_server/service/max_deliveries`: deliveries of a request to
    /// workers that went away unconfirmed before it is dead-lettered as a
    /// poison request (0: no limit).
    pub max_deliveries: u32,
    /// `mlm_server/service/dead_letters`: the mailbox poison requests are
    /// reported to (the workers' error mailbox by default).
    pub dead_letters: String,
    /// `mlm_server/schedule/<name>/...`: requests the broker sends in its
    /// own name on a timetable.
    pub schedules: Vec<core::ScheduleSpec>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            endpoint: crate::mlm::DEFAULT_ENDPOINT.into(),
            client_timeout: Duration::from_secs(10),
            plain: None,
            curve: None,
            acl: None,
            acl_file: None,
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
            http_token: None,
            http_open_reads: false,
            max_deliveries: 5,
            dead_letters: "awerr".into(),
            schedules: Vec::new(),
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
    /// A CURVE key file is wrong.
    #[error(transparent)]
    Curve(#[from] CurveError),
    /// The ACL file is wrong.
    #[error(transparent)]
    Acl(#[from] AclError),
    /// The HTTP endpoints could not be started.
    #[error(transparent)]
    Ops(#[from] OpsError),
}

impl BrokerConfig {
    /// The security mechanism, as logs and clients name it.
    pub fn mechanism(&self) -> &'static str {
        if self.curve.is_some() {
            "CURVE"
        } else if self.plain.is_some() {
            "PLAIN"
        } else {
            "NULL"
        }
    }
}

/// The broker, as a namespace for [`Broker::start`].
pub struct Broker;

impl Broker {
    /// Binds the endpoint (and the HTTP address, if any) and starts the
    /// router (and ZAP, monitor and HTTP) threads.
    pub fn start(cfg: BrokerConfig) -> Result<BrokerHandle, BrokerError> {
        if cfg.plain.is_some() && cfg.curve.is_some() {
            return Err(BrokerError::Config(
                "PLAIN and CURVE cannot both be on: a socket has one security mechanism".into(),
            ));
        }
        if cfg.curve.is_some() && !crate::curve::has_curve() {
            return Err(BrokerError::Curve(CurveError::Unsupported));
        }
        let ctx = zmq::Context::new();
        let auth = match (&cfg.plain, &cfg.curve) {
            (Some(users), _) => Some(zap::Authenticator::Plain(users.clone())),
            (None, Some(c)) => Some(zap::Authenticator::Curve(c.clients.clone())),
            (None, None) => None,
        };
        // Stopped again if anything below fails (a port taken, a store
        // refused), so a failed start leaves no thread behind.
        let mut zap = ZapGuard(match auth {
            Some(a) => Some(zap::start(&ctx, a)?),
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
        if let Some(c) = &cfg.curve {
            socket.set_curve_server(true)?;
            socket.set_curve_secretkey(&c.keys.secret.0)?;
            socket.set_zap_domain("alaska")?;
        }
        let monitor = if zap.0.is_some() {
            Some(monitor::start(&ctx, &socket, cfg.mechanism())?)
        } else {
            None
        };
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
            Some(listen) => ops::BrokerOps::serve(
                listen,
                cfg.storage.is_some(),
                cfg.http_token.clone(),
                cfg.http_open_reads,
            )?,
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
        let (acl_tx, acl_rx) = crossbeam_channel::unbounded::<Option<Acl>>();
        let router_ctx = ctx.clone();
        let acl_file = cfg.acl_file.clone();
        let clients_path = cfg.curve.as_ref().and_then(|c| c.clients_path.clone());
        let thread = std::thread::Builder::new()
            .name("alaska-broker".into())
            .spawn(move || {
                let _ctx = router_ctx;
                let result =
                    router::Router::new(socket, &cfg, storage, router_ops).run(&stop_rx, &acl_rx);
                if let Err(e) = &result {
                    tracing::error!("broker stopped: {e}");
                }
                result
            })?;
        tracing::info!("broker listening on {endpoint}");
        if let Some(addr) = ops.http_addr() {
            tracing::info!(
                "broker serving http://{addr}: the console at /, GET /health, /metrics, /v1/clients, \
                 /v1/services, /v1/mailboxes, /v1/streams, /v1/series, /v1/dead, /v1/delayed, /v1/schedules; \
                 POST /v1/clients/<address>/maintenance, /v1/dead/<id>/replay; DELETE /v1/delayed/<id> \
                 (see docs/admin-api.md)"
            );
        }
        Ok(BrokerHandle {
            endpoint,
            stop: Some(stop_tx),
            acl: acl_tx,
            acl_file,
            clients_path,
            thread: Some(thread),
            zap: zap.0.take(),
            monitor,
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
    acl: crossbeam_channel::Sender<Option<Acl>>,
    acl_file: Option<PathBuf>,
    clients_path: Option<PathBuf>,
    thread: Option<JoinHandle<Result<(), BrokerError>>>,
    zap: Option<zap::ZapHandle>,
    monitor: Option<monitor::MonitorHandle>,
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

    /// Gives the router new authorization rules (`None`: allow
    /// everything); they apply to the commands it reads after them.
    pub fn set_acl(&self, acl: Option<Acl>) {
        let _ = self.acl.send(acl);
    }

    /// Reads the ACL file and the allowed CURVE client keys again (what
    /// SIGHUP does). Each that reads cleanly replaces the one in use; one
    /// that does not is logged and the rules in use are kept. Returns the
    /// first error.
    pub fn reload(&self) -> Result<(), BrokerError> {
        let mut result = Ok(());
        if let Some(path) = &self.acl_file {
            match Acl::load(path) {
                Ok(acl) => {
                    let users = acl.users();
                    self.set_acl(Some(acl));
                    tracing::info!(
                        "ACL reloaded from {} ({users} user(s) named); it applies to \
                         commands read from now on",
                        path.display()
                    );
                }
                Err(e) => {
                    tracing::error!("ACL not reloaded, the previous rules stay: {e}");
                    result = Err(e.into());
                }
            }
        }
        if let (Some(path), Some(zap)) = (&self.clients_path, &self.zap) {
            match AllowedKeys::load(path) {
                Ok(keys) => {
                    let n = keys.len();
                    zap.replace(keys);
                    tracing::info!(
                        "allowed CURVE client keys reloaded from {} ({n} key(s))",
                        path.display()
                    );
                }
                Err(e) => {
                    tracing::error!("client keys not reloaded, the previous ones stay: {e}");
                    if result.is_ok() {
                        result = Err(e.into());
                    }
                }
            }
        }
        result
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
        if let Some(m) = self.monitor.take() {
            m.stop();
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
