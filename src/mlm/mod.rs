//! The Malamute protocol (MLM): a pure codec ([`codec`]) and a client
//! ([`client`]) that moves its frames over one ZeroMQ DEALER socket, with
//! blocking calls and a non-blocking interface for one thread that drives
//! several clients.
//!
//! Facts of the protocol shared by the client, the broker and the tools are
//! defined once here (the 255-byte string limit is [`codec::MAX_STRING`]).

pub mod client;
pub mod codec;

pub use client::{
    AckToken, Client, ClientError, ClientOptions, ClientStats, ConnState, Credentials,
    CurveClientKeys, Delivery, DeliveryKind, Refusal, RefusalKind, Wait,
};
pub use codec::{Content, DecodeError, EncodeError, Message, Status};

/// The endpoint a broker binds and clients connect to unless told
/// otherwise: the reference configuration's port on the loopback interface.
pub const DEFAULT_ENDPOINT: &str = "tcp://127.0.0.1:9999";

/// The token in the reason of the OK to CONNECTION OPEN by which a broker
/// advertises acknowledged delivery (CREDIT and CONFIRM, see
/// `docs/PROTOCOL-NOTES.md`). A client uses them only when it saw this
/// word; the reference broker drops a client that sends CONFIRM.
pub const ACK_CAPABILITY: &str = "ack/1";

/// The word by which a broker advertises worker maintenance (in the OK to
/// CONNECTION OPEN, like [`ACK_CAPABILITY`]): it then takes
/// `CONFIRM tracker="maintenance:on"` / `"maintenance:off"` from a client
/// and dispatches nothing new to that client while it is on. See
/// `docs/PROTOCOL-NOTES.md`.
pub const MAINT_CAPABILITY: &str = "maint/1";

/// The word by which a broker advertises delayed requests (in the OK to
/// CONNECTION OPEN, like [`ACK_CAPABILITY`]): it then takes
/// `CONFIRM tracker="delay:<ms>"` right before a SERVICE SEND and holds
/// that request for so long before queueing it. See
/// `docs/PROTOCOL-NOTES.md`, "Delayed requests (delay/1)".
pub const DELAY_CAPABILITY: &str = "delay/1";

/// What the CONFIRM tracker of a delay command starts with (the delay in
/// milliseconds follows).
pub const DELAY_PREFIX: &str = "delay:";

/// The longest delay a broker holds a request for (one year, in ms): a
/// longer one is refused with ERROR 300.
pub const MAX_DELAY_MS: u64 = 365 * 24 * 3600 * 1000;

/// The CONFIRM tracker that puts the sending client in maintenance.
pub const MAINTENANCE_ON: &str = "maintenance:on";

/// The CONFIRM tracker that takes the sending client out of maintenance.
pub const MAINTENANCE_OFF: &str = "maintenance:off";
