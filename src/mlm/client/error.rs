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
    /// The transport handshake failed otherwise (e.g. security mismatch).
    #[error("handshake with broker at {endpoint} failed (security mechanism mismatch?)")]
    Handshake {
        /// The endpoint.
        endpoint: String,
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
}

fn describe(refusals: &[Refusal]) -> String {
    match refusals {
        [] => "nothing".into(),
        [one] => format!("a message: {one}"),
        [first, ..] => format!("{} messages, the first: {first}", refusals.len()),
    }
}
