//! The NATS backend (issue 25) against real `nats-server` processes: core
//! request/reply, NATS micro discovery, JetStream outcomes, `alas` and the
//! gateway on NATS, operations; a 3-node JetStream cluster with its stream
//! leader killed. Every test skips, saying why, without `nats-server`.
//!
//! One test binary for the area (issue 22: each binary links the whole
//! crate); each file is a module of it, in this folder.

#[path = "../common/mod.rs"]
mod common;
#[path = "../ops_support/mod.rs"]
mod ops_support;
#[path = "../runners/server.rs"]
#[allow(dead_code)]
mod server;

mod nats_cluster;
mod nats_e2e;
