//! Helpers shared by the ops and gateway tests.
#![allow(dead_code)]

pub mod http;
pub mod prom;
pub mod systemd;
pub mod worker;
