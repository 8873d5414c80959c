//! Alaska: Lua-scripted service workers for the Malamute message broker.
//!
//! # Layout
//! - [`mlm`]: the MLM protocol: a pure codec and a blocking client.
//! - [`broker`]: a Malamute-compatible broker (`alaska-broker`, and the
//!   worker's embedded broker).
//! - [`curve`]: CURVE keys and their certificate files (ZeroMQ's
//!   encryption between machines), and key generation.
//! - [`config`]: the ZPL reader and the worker's typed settings.
//! - [`daemon`]: background mode, lock file, user and group, stop signals.
//! - [`docgen`]: man pages and shell completions from the clap definitions.
//! - [`progress`]: a progress line on a terminal for long runs.
//! - [`time`]: deadlines and durations that cannot panic.
//! - [`logging`]: stderr or syslog.
//! - [`worker`]: the dispatcher, the Lua VM pool, the scripting API, the
//!   runners (HTTP applications and child processes as handlers), and what
//!   the worker shows operators (metrics, health, status, maintenance).
//! - [`failover`]: several independent brokers: the endpoint list, which
//!   broker a producer uses (priority or round robin), client-side retries
//!   with de-duplication, and a set of clients driven from one thread.
//! - [`gateway`]: HTTP in front of services (`alaska-gateway`).
//! - [`ops`]: what every binary shares for operations: HTTP health and
//!   metrics serving, the metrics registry, systemd notifications.

pub mod broker;
pub mod config;
pub mod curve;
pub mod daemon;
pub mod docgen;
pub mod failover;
pub mod gateway;
pub mod logging;
pub mod mlm;
pub mod ops;
pub mod progress;
#[cfg(test)]
mod sim;
pub mod time;
pub mod worker;
