//! What every binary shares for operations: an HTTP server for health,
//! metrics and admin endpoints ([`http`]), a metrics registry read without
//! locks on hot paths and rendered as Prometheus text ([`metrics`]), systemd
//! readiness and watchdog notifications ([`notify`]), and the wake-up pipe a
//! socket-owning thread sleeps on ([`wake`]).
//!
//! The one-owner-per-socket rule holds here too: HTTP threads never touch a
//! ZeroMQ socket. They read counters (atomics) and, when they need the
//! owner of a socket to act (an admin command, a gateway request), send it a
//! message on a channel, poke its [`wake::Waker`], and await the answer on a
//! one-shot [`http::Responder`] the owner completes without blocking.

pub mod http;
pub mod metrics;
pub mod notify;
pub mod wake;
