//! How a [`Client`](super::Client) connects: endpoint, address, timers,
//! security, acknowledged delivery and the outbox bound.

use std::path::Path;
use std::time::Duration;

use crate::curve::{self, CurveError, KeyPair, PublicKey};

/// PLAIN credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// CURVE keys of a client: its own key pair, and the public key of the
/// broker it accepts (a client with a wrong one cannot talk to the broker:
/// that is how it knows the broker is the right one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurveClientKeys {
    /// Our key pair; the broker must allow its public key.
    pub client: KeyPair,
    /// The broker's public key.
    pub server: PublicKey,
}

impl CurveClientKeys {
    /// Reads our secret certificate (`NAME_secret`) and the broker's public
    /// certificate.
    pub fn load(certificate: &Path, server: &Path) -> Result<CurveClientKeys, CurveError> {
        Ok(CurveClientKeys {
            client: KeyPair::load(certificate)?,
            server: curve::load_public(server)?,
        })
    }
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
    /// PLAIN credentials, or NULL security when `None` (and no `curve`).
    pub plain: Option<Credentials>,
    /// CURVE keys (encryption, and the broker's identity checked), or NULL
    /// security when `None` (and no `plain`). Not both.
    pub curve: Option<CurveClientKeys>,
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
            curve: None,
            credit: None,
            outbox_limit: 10_000,
        }
    }
}
