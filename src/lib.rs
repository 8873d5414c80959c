//! Alaska: Lua-scripted service workers for the Malamute message broker.
//!
//! # Layout
//! - [`mlm`]: the MLM protocol: a pure codec and a blocking client.

pub mod mlm;
