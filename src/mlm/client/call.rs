//! The synchronous calls of the client, as types: what a call waits for
//! ([`Call`]), the broker's answer ([`Reply`]), and the registrations that
//! are replayed after every reopen ([`Registration`]).

use crate::mlm::codec::{Message, Status};

/// What a synchronous call waits for: the answer to one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// The first CONNECTION OPEN.
    Open,
    /// SERVICE OFFER.
    Offer,
    /// STREAM READ.
    Consume,
    /// STREAM WRITE.
    Produce,
    /// CONNECTION CLOSE.
    Close,
}

impl Call {
    /// The command's name as the protocol spells it, for errors.
    pub fn command(self) -> &'static str {
        match self {
            Call::Open => "CONNECTION_OPEN",
            Call::Offer => "SERVICE_OFFER",
            Call::Consume => "STREAM_READ",
            Call::Produce => "STREAM_WRITE",
            Call::Close => "CONNECTION_CLOSE",
        }
    }
}

/// The broker's answer to a [`Call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// OK.
    Ok(Status),
    /// ERROR.
    Refused(Status),
}

/// A registration: replayed after every reopen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// SERVICE OFFER: serve `address` for subjects matching `pattern`.
    Offer {
        /// The service.
        address: String,
        /// Subject pattern.
        pattern: String,
    },
    /// STREAM READ: read `stream` for subjects matching `pattern`.
    Consume {
        /// The stream.
        stream: String,
        /// Subject pattern.
        pattern: String,
    },
    /// STREAM WRITE: publish on `stream`.
    Produce {
        /// The stream.
        stream: String,
    },
}

impl Registration {
    /// The command that makes it.
    pub fn message(&self) -> Message {
        match self {
            Registration::Offer { address, pattern } => Message::ServiceOffer {
                address: address.clone(),
                pattern: pattern.clone(),
            },
            Registration::Consume { stream, pattern } => Message::StreamRead {
                stream: stream.clone(),
                pattern: pattern.clone(),
            },
            Registration::Produce { stream } => Message::StreamWrite {
                stream: stream.clone(),
            },
        }
    }

    /// The call that waits for its answer.
    pub fn call(&self) -> Call {
        match self {
            Registration::Offer { .. } => Call::Offer,
            Registration::Consume { .. } => Call::Consume,
            Registration::Produce { .. } => Call::Produce,
        }
    }
}
