//! The client's errors, told apart so that a program can say exactly what
//! went wrong (and `alas` can map each to an exit status).

use std::time::Duration;

use super::refusal::Refusal;
use crate::mlm::codec::{EncodeError, Status};

/// Errors of the client. Connection failures are told apart so that a
/// program can say exactly what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint string is not one ZeroMQ can connect to.
    #[error("bad broker endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint given.
        endpoint: String,
        /// What ZeroMQ said.
        reason: zmq::Error,
    },
    /// Nothing accepted the connection (refused, or no route) in time.
    #[error("broker at {endpoint} unreachable: connection refused or no answer within {waited:?}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// How long we tried.
        waited: Duration,
    },
    /// The broker refused our PLAIN credentials (or asked for them).
    #[error("broker at {endpoint} refused authentication")]
    AuthFailed {
        /// The endpoint.
        endpoint: String,
    },
    /// The transport handshake failed otherwise: the broker hung up
    /// without a reason, as a broker that requires security we do not use
    /// may.
    #[error("handshake with broker at {endpoint} failed: the broker closed the connection (does it require CURVE or PLAIN?)")]
    Handshake {
        /// The endpoint.
        endpoint: String,
    },
    /// The broker and we use different security mechanisms (e.g. a NULL or
    /// PLAIN client and a CURVE broker, or the reverse).
    #[error(
        "broker at {endpoint} uses another security mechanism than ours ({ours}){}",
        match .theirs {
            Some(t) => format!(": it uses {t}"),
            None if *.ours == "CURVE" => ": it does not use CURVE".to_string(),
            None => ": it may require CURVE or PLAIN".to_string(),
        }
    )]
    MechanismMismatch {
        /// The endpoint.
        endpoint: String,
        /// Ours: "NULL", "PLAIN" or "CURVE".
        ours: &'static str,
        /// The broker's, when it could be asked.
        theirs: Option<String>,
    },
    /// Our CURVE handshake did not go through: the broker could not
    /// decrypt it, because the broker public key we were given is not that
    /// broker's.
    #[error(
        "CURVE handshake with broker at {endpoint} failed: the broker hangs up on our \
         hello, which it cannot decrypt: the broker public key we use ({server_key}) is not \
         this broker's"
    )]
    WrongServerKey {
        /// The endpoint.
        endpoint: String,
        /// The broker key we used (Z85).
        server_key: String,
    },
    /// The broker does not allow our CURVE key.
    #[error("broker at {endpoint} refused our CURVE key {client_key}: not among its allowed client keys")]
    UnknownClientKey {
        /// The endpoint.
        endpoint: String,
        /// Our public key (Z85), to add to the broker's allowed keys.
        client_key: String,
    },
    /// The broker accepted the connection but did not answer in time.
    #[error("broker did not answer {what} within {waited:?}")]
    Timeout {
        /// The command we waited on.
        what: &'static str,
        /// How long we waited.
        waited: Duration,
    },
    /// The broker answered a command with ERROR.
    #[error("broker refused {what}: {} {}", status.code, status.reason)]
    Refused {
        /// The command refused.
        what: &'static str,
        /// The broker's status.
        status: Status,
    },
    /// The broker refused messages of ours that expect no answer, and
    /// nobody took the refusals before [`Client::close`](super::Client::close).
    #[error("broker refused {}", describe(.0))]
    Rejected(Vec<Refusal>),
    /// The outbox is full while the broker is away; the message was dropped.
    #[error("broker unavailable and outbox full ({0} messages): message dropped")]
    OutboxFull(usize),
    /// A field could not be encoded (string over 255 bytes).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A ZeroMQ call failed.
    #[error("zeromq: {0}")]
    Zmq(#[from] zmq::Error),
    /// The broker lacks a feature asked for (e.g. delayed requests, which
    /// only a broker that says `delay/1` holds).
    #[error("{0}")]
    Unsupported(String),
    /// The call needs the broker connected now, and it is not.
    #[error("not connected: {0}")]
    NotConnected(&'static str),
    /// CURVE keys were given but this libzmq has no CURVE, or PLAIN and
    /// CURVE were both given.
    #[error("security options: {0}")]
    Security(String),
}

impl ClientError {
    /// Whether the error is the broker, or the security handshake, refusing
    /// who we are (credentials, keys, mechanism): retrying will not help.
    pub fn is_security(&self) -> bool {
        matches!(
            self,
            ClientError::AuthFailed { .. }
                | ClientError::Handshake { .. }
                | ClientError::MechanismMismatch { .. }
                | ClientError::WrongServerKey { .. }
                | ClientError::UnknownClientKey { .. }
                | ClientError::Security(_)
        )
    }
}

fn describe(refusals: &[Refusal]) -> String {
    match refusals {
        [] => "nothing".into(),
        [one] => format!("a message: {one}"),
        [first, ..] => format!("{} messages, the first: {first}", refusals.len()),
    }
}
