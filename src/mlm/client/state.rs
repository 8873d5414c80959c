//! What the client reports about itself: its view of the broker and its
//! counters.

/// The client's view of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Connection open and the broker answering.
    Connected,
    /// CONNECTION OPEN sent again, waiting for OK.
    Opening,
    /// Broker disconnected or silent past the timeout; still trying.
    Lost,
}

/// Counters for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Times the connection was opened again after the first.
    pub reopens: u64,
    /// Frames from the broker that did not decode (ignored).
    pub malformed: u64,
    /// Messages dropped because the outbox was full.
    pub dropped: u64,
    /// Messages of ours the broker refused (ERROR nobody waited for).
    pub refused: u64,
}

/// Where maintenance stands (see [`Client::set_maintenance`](super::Client::set_maintenance)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Asked for: no new service requests wanted.
    pub wanted: bool,
    /// The broker has been told: with a `maint/1` broker, its flag is as
    /// wanted; with another, our offers are withdrawn (or registered again)
    /// as wanted. `false` while the broker is away or the change is on its
    /// way.
    pub applied: bool,
    /// The broker of the current connection said `maint/1`, so the
    /// connection stays as it is and the broker keeps us listed.
    pub by_broker: bool,
}
