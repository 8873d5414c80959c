//! How a [`Client`](super::Client) connects: endpoint, address, timers,
//! security, acknowledged delivery and the outbox bound.

use std::time::Duration;

/// PLAIN credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Broker endpoint, e.g. `tcp://127.0.0.1:9999`.
    pub endpoint: String,
    /// Our address (mailbox name); empty for an anonymous client.
    pub address: String,
    /// How long to wait for the broker to accept the connection and answer
    /// a command, and how long a silent broker is given before it is
    /// reported as gone.
    pub timeout: Duration,
    /// Ping interval (libmlm pings every second).
    pub heartbeat: Duration,
    /// PLAIN credentials, or NULL security when `None`.
    pub plain: Option<Credentials>,
    /// Ask for acknowledged service delivery with this window, when the
    /// broker supports it. `None`: plain push delivery.
    pub credit: Option<u16>,
    /// How many messages are kept while the broker is away.
    pub outbox_limit: usize,
}

impl ClientOptions {
    /// Options with the defaults: 5 s timeout, 1 s heartbeat, NULL security,
    /// push delivery, 10,000 messages of outbox.
    pub fn new(endpoint: impl Into<String>, address: impl Into<String>) -> Self {
        ClientOptions {
            endpoint: endpoint.into(),
            address: address.into(),
            timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
            plain: None,
            credit: None,
            outbox_limit: 10_000,
        }
    }
}
