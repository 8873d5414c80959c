//! Helpers shared by the ops and gateway tests.
#![allow(dead_code)]

pub mod prom;
