//! The alaska worker: the dispatcher that owns the broker connection
//! ([`dispatcher`]), the pool of Lua VMs ([`pool`], [`vm`]), which script
//! a subject selects ([`subject`]), and the wake-up pipe between them
//! ([`wake`]).

pub mod check;
pub mod dispatcher;
pub mod pool;
pub mod subject;
pub mod vm;
pub mod wake;

pub use dispatcher::{run, DispatcherOptions, WorkerError, ERROR_REPLY_PREFIX};
pub use pool::{Completion, ErrorKind, Job, Output, Pool, PoolConfig, Request, ScriptError};
