//! The alaska worker: the dispatcher that owns the broker connections and
//! a VM of its own ([`dispatcher`]), what it does on its connections
//! ([`hub`]), the pool of Lua VMs ([`pool`], [`vm`]), what becomes
//! of a request once its handler ends ([`outcomes`]), handlers that are
//! HTTP applications or child processes ([`runners`]), the dictionary the
//! VMs share ([`shared`]), which script a subject selects ([`subject`]),
//! the types they all pass around ([`types`]), the NATS backend's
//! connection ([`nats`]), and the wake-up pipe between threads ([`wake`],
//! from [`crate::ops`]).

pub mod book;
pub mod check;
pub mod core;
pub mod dispatcher;
pub mod hub;
pub mod metrics;
pub mod nats;
pub mod options;
pub mod outcomes;
pub mod pool;
pub mod pool_config;
pub mod reach;
pub mod runners;
pub mod shared;
pub mod status;
pub mod subject;
pub mod types;
pub mod vm;
/// The wake-up pipe between threads (shared with the other binaries).
pub use crate::ops::wake;

pub use dispatcher::{run, run_with, DispatcherOptions, WorkerError, ERROR_REPLY_PREFIX};
pub use outcomes::Policy;
pub use pool::Pool;
pub use pool_config::PoolConfig;
pub use status::{Health, WorkerOps};
pub use types::{Completion, ErrorKind, Job, Outcome, Output, Request, RunResult, ScriptError};
