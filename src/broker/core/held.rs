//! What the broker holds in custody: a service request waiting in a queue
//! or given to a worker that acknowledges, or mail waiting for its owner.
//!
//! Requests and mail carry the same fields, so they are one type; which of
//! the two a message is, and where it waits, is told by [`super::Kind`]
//! and by the queue or mailbox that holds it.

use std::time::Instant;

use crate::mlm::Content;

/// Identifies a held message for its whole life, across redeliveries and
/// restarts: the core numbers messages in arrival order, so sorting by id
/// is sorting by age. Storage uses it as the record key.
pub type HeldId = u64;

/// A message in the broker's custody.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Its number, in arrival order.
    pub id: HeldId,
    /// The address of the client that sent it (empty: anonymous).
    pub sender: String,
    /// Its subject.
    pub subject: String,
    /// The sender's tracker, carried as it is.
    pub tracker: String,
    /// Content frames, carried as they are.
    pub content: Content,
    /// When it stops being worth delivering (the sender's timeout), if ever.
    pub expires: Option<Instant>,
    /// Times it was given to an acknowledging worker (kept across worker
    /// deaths and broker restarts): past the service's delivery limit it is
    /// a poison request and goes to the dead letters instead.
    pub deliveries: u32,
}

impl Held {
    /// Content bytes, what the size limits count.
    pub fn bytes(&self) -> usize {
        self.content.iter().map(Vec::len).sum()
    }

    /// Whether it has expired at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|t| t <= now)
    }
}
