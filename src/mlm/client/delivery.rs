//! What the broker hands the client's user: deliveries, the token that
//! confirms a service request, and what a wait can end with.

use super::refusal::Refusal;
use crate::mlm::codec::Content;

/// What kind of delivery a [`Delivery`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryKind {
    /// STREAM DELIVER.
    Stream,
    /// MAILBOX DELIVER.
    Mailbox,
    /// SERVICE DELIVER.
    Service,
}

/// Identifies a service delivery for [`Client::confirm`](super::Client::confirm).
///
/// The broker numbers acknowledged deliveries per connection (1, 2, … after
/// each CONNECTION OPEN), so a token is the number together with the epoch
/// (which OPEN it belongs to): a token from before a reopen is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    pub(super) epoch: u64,
    pub(super) seq: u64,
}

/// The epoch of tokens made by another backend: no MLM connection
/// reaches it.
const FOREIGN_EPOCH: u64 = u64::MAX;

impl AckToken {
    /// A token for a delivery of another backend (NATS JetStream), which
    /// numbers its deliveries itself; the core only carries it back.
    pub fn foreign(id: u64) -> AckToken {
        AckToken {
            epoch: FOREIGN_EPOCH,
            seq: id,
        }
    }

    /// The number of a token made by [`AckToken::foreign`].
    pub fn foreign_id(&self) -> Option<u64> {
        (self.epoch == FOREIGN_EPOCH).then_some(self.seq)
    }

    /// A token for unit tests of code that only carries tokens around
    /// (the worker's core).
    #[cfg(test)]
    pub(crate) fn for_test(seq: u64) -> AckToken {
        AckToken { epoch: 1, seq }
    }

    /// The delivery's number (unit tests).
    #[cfg(test)]
    pub(crate) fn seq_for_test(&self) -> u64 {
        self.seq
    }
}

/// A message the broker delivered to us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Stream, mailbox or service.
    pub kind: DeliveryKind,
    /// Who sent it.
    pub sender: String,
    /// The stream, mailbox or service it was sent to.
    pub address: String,
    /// Its subject.
    pub subject: String,
    /// Its tracker (empty for streams).
    pub tracker: String,
    /// All content frames.
    pub content: Content,
    /// Set for service requests the broker expects us to confirm.
    pub ack: Option<AckToken>,
}

/// What [`Client::wait`](super::Client::wait) saw.
#[derive(Debug)]
pub enum Wait {
    /// A delivery.
    Delivery(Delivery),
    /// The broker refused a message of ours that expects no answer (e.g.
    /// `service default queue full`).
    Refused(Refusal),
    /// The extra file descriptor became readable.
    Woken,
    /// Nothing before the timeout.
    Timeout,
}
