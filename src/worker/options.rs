//! What the dispatcher is started with and how it fails: its options, its
//! error, and the constants the hub and the gateway share. A leaf of the
//! worker's module graph (the hub needs these without needing the
//! dispatcher).

use std::time::Duration;

use super::outcomes::Policy;
use super::pool::PoolError;
use crate::mlm::{ClientError, ClientOptions};

/// Requests from a broker that pushes (no CREDIT: the real Malamute) held
/// beyond the queue, at most: that broker sends whatever it has at once,
/// so a producer's window larger than the backlog must not turn into dead
/// letters. About what a libmlm worker absorbs in its pipes before its
/// broker drops silently; beyond it, requests are reported (dead letter).
pub const HOLD_MAX: usize = 10_000;
/// The content bytes those held requests may take, at most.
pub const HOLD_BYTES: usize = 64 << 20;

/// Subject prefix of an error reply to the requester. A `:` never occurs in
/// a subject that selects a script, so a program tells an error reply from
/// a success by the subject alone.
pub const ERROR_REPLY_PREFIX: &str = "ERROR:";

/// Everything the dispatcher needs to know.
#[derive(Debug, Clone)]
pub struct DispatcherOptions {
    /// Broker connection: endpoint, our address, timeout, credentials.
    pub client: ClientOptions,
    /// Every broker to serve on, in order (`worker/broker/endpoint` as a
    /// list); empty means just `client.endpoint`. Each gets a connection
    /// of its own with `client`'s settings and the same address.
    pub endpoints: Vec<String>,
    /// Service address we offer.
    pub service: String,
    /// Subject pattern of the offer.
    pub filter: String,
    /// Mail failures to `errors_mailbox`.
    pub errors_notify: bool,
    /// Mailbox for failure reports (dead letters).
    pub errors_mailbox: String,
    /// Send error replies even to requesters that gave no tracker.
    pub errors_reply: bool,
    /// Log every request and its outcome.
    pub verbose: bool,
    /// How long a stop waits for running requests.
    pub shutdown_timeout: Duration,
    /// Retries, dead letters, forwards.
    pub policy: Policy,
    /// Most requests waiting for a retry at once.
    pub retry_pending: usize,
    /// Runners (HTTP applications, child processes), in match order: a
    /// subject one of them matches never goes to Lua.
    pub runners: Vec<super::runners::RunnerConfig>,
    /// Ask each broker for acknowledged delivery (CREDIT), which the
    /// project's broker grants and the reference ignores. `false` makes
    /// every broker push, as the reference does (how the tests exercise
    /// push mode on the project's broker).
    pub acknowledge: bool,
    /// Pushed requests held beyond the queue, at most (see
    /// [`HOLD_MAX`]).
    pub hold_max: usize,
    /// Content bytes of the held requests, at most.
    pub hold_bytes: usize,
    /// Credentials and TLS for `nats://` endpoints (see
    /// [`super::nats`]).
    pub nats: super::nats::NatsOptions,
}

impl DispatcherOptions {
    /// Options with the defaults of `alaska.cfg` for a worker offering
    /// `service` (all subjects) over `client`.
    pub fn new(client: ClientOptions, service: impl Into<String>) -> DispatcherOptions {
        DispatcherOptions {
            client,
            endpoints: Vec::new(),
            service: service.into(),
            filter: ".*".into(),
            errors_notify: true,
            errors_mailbox: "awerr".into(),
            errors_reply: false,
            verbose: false,
            shutdown_timeout: Duration::from_secs(10),
            policy: Policy::default(),
            retry_pending: 1000,
            runners: Vec::new(),
            acknowledge: true,
            hold_max: HOLD_MAX,
            hold_bytes: HOLD_BYTES,
            nats: Default::default(),
        }
    }
}

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker connection failed in a way retrying cannot fix.
    #[error("broker connection: {0}")]
    Client(#[from] ClientError),
    /// The VM pool could not start.
    #[error("VM pool: {0}")]
    Pool(#[from] PoolError),
    /// The wake-up pipe could not be created.
    #[error("wake-up pipe: {0}")]
    Io(#[from] std::io::Error),
    /// A runner could not start.
    #[error("{0}")]
    Runner(#[from] super::runners::RunnerError),
    /// The NATS connection could not start, or the endpoints mix kinds.
    #[error("NATS: {0}")]
    Nats(String),
}
