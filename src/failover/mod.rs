//! Several independent brokers: the endpoint list, which broker a producer
//! uses, and client-side retries with de-duplication.
//!
//! Malamute has no clustering, so availability comes from running several
//! independent brokers: every worker serves on all of them and producers
//! fail over from one to the next (as NATS clients do with a server list).
//! This module holds what producers (`alas`, `alaska-bench`,
//! `alaska-gateway`) share for that:
//!
//! - [`endpoints`]: the comma-separated endpoint list of `-e` and of the
//!   `…/broker/endpoint` keys, parsed and checked.
//! - [`select`]: which broker to send to ([`Selector`]): the first usable
//!   one in priority order, or round robin; what "usable" means over time
//!   ([`Links`]). Socket-free, time passed in.
//! - [`retries`]: requests waiting for a reply, keyed by tracker
//!   ([`Retries`]): when to send one again (no reply in time, or its
//!   broker gone), and which replies are duplicates. Socket-free, time
//!   passed in.
//! - [`brokers`]: [`Brokers`], one [`crate::mlm::Client`] per endpoint
//!   driven from one thread with one poll, using the two above. This is
//!   the only part with sockets.

pub mod brokers;
pub mod endpoints;
pub mod retries;
pub mod select;

pub use brokers::{BrokerEvent, Brokers};
pub use endpoints::{parse_endpoints, EndpointListError};
pub use retries::{Due, ReplyKind, Retries, RetryStats};
pub use select::{Balance, Links, Pick, Reach, Selector};
