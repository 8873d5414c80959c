//! The port through which a [`Session`](super::session::Session) writes:
//! the DEALER socket in the client, a recorder in tests.

use super::error::ClientError;
use crate::mlm::codec::{EncodeError, Message};

/// Where the session writes: the DEALER socket in the client, a recorder in
/// tests.
pub trait Wire {
    /// Writes one message now, without blocking.
    fn write(&mut self, msg: &Message) -> Result<(), WireError>;
}

/// Why a [`Wire`] did not write a message. In every case nothing of the
/// message was written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// No room now (no connection yet, or the high-water mark).
    #[error("the socket cannot take a message now")]
    WouldBlock,
    /// A field does not fit the wire.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The socket failed.
    #[error("zeromq: {0}")]
    Zmq(zmq::Error),
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> ClientError {
        match e {
            WireError::WouldBlock => ClientError::Zmq(zmq::Error::EAGAIN),
            WireError::Encode(e) => ClientError::Encode(e),
            WireError::Zmq(e) => ClientError::Zmq(e),
        }
    }
}
