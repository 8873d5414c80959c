//! Against the real Malamute and libmlm (skipped, printing why, when not
//! installed): the client and worker, and the gateway.
//!
//! One test binary for the area (issue 22: each binary links the whole
//! crate); each old test file is a module of it, in this folder.

#[path = "../common/mod.rs"]
mod common;

mod gateway_malamute;
mod interop_malamute;
