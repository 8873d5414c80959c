//! The Malamute protocol (MLM): a pure codec ([`codec`]) and a client
//! ([`client`]) that moves its frames over one ZeroMQ DEALER socket, with
//! blocking calls and a non-blocking interface for one thread that drives
//! several clients.

pub mod client;
pub mod codec;

pub use client::{
    AckToken, Client, ClientError, ClientOptions, ClientStats, ConnState, Credentials,
    CurveClientKeys, Delivery, DeliveryKind, Refusal, RefusalKind, Wait,
};
pub use codec::{Content, DecodeError, EncodeError, Message, Status};
