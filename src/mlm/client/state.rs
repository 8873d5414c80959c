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
