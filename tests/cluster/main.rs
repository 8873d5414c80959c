//! Several brokers: on one machine (failover, round robin, resend) and on
//! separate hosts in network namespaces.
//!
//! One test binary for the area (issue 22: each binary links the whole
//! crate); each old test file is a module of it, in this folder.

#[path = "../common/mod.rs"]
mod common;
#[path = "../netns/mod.rs"]
mod netns;

mod multibroker;
mod multihost;
