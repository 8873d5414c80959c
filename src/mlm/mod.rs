//! The Malamute protocol (MLM): a pure codec ([`codec`]) and a blocking client
//! ([`client`]) that moves its frames over one ZeroMQ DEALER socket.

pub mod codec;

pub use codec::{Content, DecodeError, EncodeError, Message, Status};
