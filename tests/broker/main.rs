//! The broker and the MLM client: the socket-free core, the real binary's
//! operations and durability, the reference's wire behaviour, the codec
//! against libmlm's vectors, property tests, the client against a scripted
//! peer.
//!
//! One test binary for the area (issue 22: each binary links the whole
//! crate); each old test file is a module of it, in this folder.

#[path = "../common/mod.rs"]
mod common;
#[path = "../ops_support/mod.rs"]
mod ops_support;

mod broker_compat;
mod broker_core;
mod broker_ops;
mod broker_storage;
mod client_driving;
mod client_scripted;
mod codec_vectors;
mod properties;
