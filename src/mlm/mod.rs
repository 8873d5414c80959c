//! The Malamute protocol (MLM): a pure codec ([`codec`]) and a blocking client
//! ([`client`]) that moves its frames over one ZeroMQ DEALER socket.

pub mod client;
pub mod codec;

pub use client::{
    AckToken, Client, ClientError, ClientOptions, ClientStats, ConnState, Credentials, Delivery,
    DeliveryKind, Refusal, RefusalKind, Wait,
};
pub use codec::{Content, DecodeError, EncodeError, Message, Status};
