//! The worker: end to end through real brokers, its HTTP side, the VM pool,
//! outcomes, poison requests, the sandbox, runners, scripts that reach out,
//! schedules.
//!
//! One test binary for the area (issue 22: each binary links the whole
//! crate); each old test file is a module of it, in this folder.
//!
//! `runners::after_a_sigkill_of_the_worker_its_grandchildren_are_left_to_the_supervisor`
//! makes this process a child subreaper: orphans of any test here are
//! re-parented to it and stay zombies until reaped, so a test that asks
//! whether a process is gone must count a zombie as gone (as
//! `runners::gone` does), not look for `/proc/<pid>`. `multihost` does the
//! latter: it is in `cluster`, not here.

#[path = "../common/mod.rs"]
mod common;
#[path = "../ops_support/mod.rs"]
mod ops_support;
#[path = "../runners/server.rs"]
mod server;

mod outcomes_e2e;
mod poison;
mod reach;
mod runners;
mod sandbox;
mod schedule;
mod worker_e2e;
mod worker_ops;
mod worker_pool;
