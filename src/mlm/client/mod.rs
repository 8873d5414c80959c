//! A blocking MLM client with the capabilities of libmlm's `mlm_client`.
//!
//! One [`Client`] owns one ZeroMQ DEALER socket (and the PAIR socket that
//! monitors it); all its methods run on the caller's thread. It opens the
//! connection under an address, registers offers, consumers and a producer
//! stream, sends the three kinds of message and receives deliveries.
//!
//! Staying connected is the client's job, as in libmlm:
//! - it pings every [`ClientOptions::heartbeat`] while it waits;
//! - a broker silent for [`ClientOptions::timeout`] is reported as gone
//!   ([`ConnState::Lost`]) and the client keeps trying;
//! - a broker that answers ERROR 500 (it restarted, or expired us), or a
//!   transport that reconnects after a disconnect, makes the client send
//!   CONNECTION OPEN again under the same address and replay its offers,
//!   consumers and producer.
//!
//! Messages sent while the broker is away are kept in a bounded outbox and
//! written after the connection is open again; the socket uses
//! `ZMQ_IMMEDIATE` so nothing is queued towards a broker that is not there
//! (it would reach a restarted broker before our CONNECTION OPEN and be
//! refused).
//!
//! With the project's own broker (it says `ack/1` in the OK to CONNECTION
//! OPEN) a client built with [`ClientOptions::credit`] acknowledges each
//! service request with CONFIRM, which lets the broker redeliver the
//! requests of a worker that dies. Against the reference broker nothing of
//! this is sent (it drops clients that send CONFIRM). See
//! `docs/PROTOCOL-NOTES.md`.
//!
//! Maintenance ([`Client::set_maintenance`]) stops new service requests
//! coming to this client without failing what it holds: with a broker
//! that says `maint/1`, one command sets a flag there; with any other
//! broker (the reference Malamute) the client withdraws its offers by
//! closing the connection and opening it again without them, and offers
//! again to resume.
//!
//! # Files
//! - `options.rs`, `error.rs`: how to connect, and what can go wrong.
//! - `delivery.rs`, `state.rs`: what the user receives and observes.
//! - `refusal.rs`: broker refusals of our sends, typed ("queue full").
//! - `session.rs`: the protocol state without sockets or clock, unit-tested
//!   in `session_tests.rs`; `call.rs` (what a synchronous call waits for,
//!   the registrations) and `wire.rs` (where a session writes) are its
//!   vocabulary, re-exported by [`session`].
//! - `transport.rs`: the DEALER and monitor sockets; no protocol rules.
//! - `facade.rs`: [`Client`], blocking and non-blocking calls over the two.

mod call;
mod delivery;
mod error;
mod facade;
mod options;
mod refusal;
pub mod session;
mod state;
mod transport;
mod wire;

pub use delivery::{AckToken, Delivery, DeliveryKind, Wait};
pub use error::ClientError;
pub use facade::Client;
pub use options::{ClientOptions, Credentials, CurveClientKeys};
pub use refusal::{Refusal, RefusalKind};
pub use session::NO_DELAY;
pub use state::{ClientStats, ConnState, Maintenance};
pub use transport::MonitorEvent;

/// The reason text by which a broker advertises acknowledged delivery,
/// and the maintenance capability and commands (defined once, in
/// [`crate::mlm`]).
pub use super::{ACK_CAPABILITY, MAINTENANCE_OFF, MAINTENANCE_ON, MAINT_CAPABILITY};
