//! The state changes the core makes to what it holds, told as they happen
//! to a [`Journal`]: durable storage is one (it turns them into writes,
//! batched per loop turn); a test can record them; in memory nobody
//! listens ([`NoJournal`]).
//!
//! Only what must survive a restart is told: messages entering and leaving
//! custody, and the clock of each mailbox whose owner is away. Clients,
//! offers and subscriptions are not: after a restart clients open again and
//! replay them, as they do with the reference broker.

use std::time::Instant;

use super::delayed::DelayedRequest;
use super::held::{Held, HeldId};

/// Which kind of message a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A service request (its holder is the service).
    Request,
    /// Mail (its holder is the mailbox address).
    Mail,
    /// A request held for a delay (delay/1), not yet queued.
    Delayed,
}

/// Why a message left the broker's custody.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Given to a client that does not acknowledge (mail, or a request to a
    /// worker in push mode): the broker's part is over.
    Delivered,
    /// Confirmed by the acknowledging worker it was given to.
    Confirmed,
    /// Its timeout passed before it could be delivered.
    Expired,
    /// Its mailbox was reclaimed: the owner stayed away too long.
    Reclaimed,
    /// A poison request: past the delivery limit, dead-lettered.
    Poisoned,
    /// Deleted or purged by an operator through the admin API.
    Removed,
}

/// Receives the core's changes to what it holds.
pub trait Journal {
    /// `held` is now in custody: queued on the service or stored in the
    /// mailbox named `holder`. `new` is false when it comes back (a
    /// delivery that failed); storage may then already have it.
    fn stored(&mut self, kind: Kind, holder: &str, held: &Held, new: bool);

    /// `held` was given to a worker that acknowledges; it stays in custody
    /// until confirmed and comes back as queued if the worker goes away
    /// (after a restart too), so storage has nothing to change.
    fn delivered_unconfirmed(&mut self, _id: HeldId) {}

    /// `d` is now held for its delay (delay/1). It leaves through
    /// [`Journal::removed`] with [`Kind::Delayed`]: queued when due (then
    /// stored again as a request, under a new number, in the same turn),
    /// or cancelled.
    fn delayed(&mut self, _d: &DelayedRequest) {}

    /// Schedule `name` fired for its due time `due_ms` (ms since the Unix
    /// epoch). Told in the same turn as the request the fire queued, so
    /// storage keeps both or neither.
    fn schedule_fired(&mut self, _name: &str, _due_ms: u64) {}

    /// The message left custody.
    fn removed(&mut self, kind: Kind, id: HeldId, why: Removal);

    /// The reclaim clock of the mailbox `address` was (re)started at `at`:
    /// mail is dropped once the owner has been away for the mailbox
    /// expiry since then.
    fn mailbox_touched(&mut self, address: &str, at: Instant);

    /// The mailbox `address` holds nothing any more.
    fn mailbox_gone(&mut self, address: &str);
}

/// In memory: nothing is kept.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoJournal;

impl Journal for NoJournal {
    fn stored(&mut self, _: Kind, _: &str, _: &Held, _: bool) {}
    fn removed(&mut self, _: Kind, _: HeldId, _: Removal) {}
    fn mailbox_touched(&mut self, _: &str, _: Instant) {}
    fn mailbox_gone(&mut self, _: &str) {}
}

/// An optional journal: `None` is in memory.
impl<J: Journal> Journal for Option<J> {
    fn stored(&mut self, kind: Kind, holder: &str, held: &Held, new: bool) {
        if let Some(j) = self {
            j.stored(kind, holder, held, new);
        }
    }
    fn delivered_unconfirmed(&mut self, id: HeldId) {
        if let Some(j) = self {
            j.delivered_unconfirmed(id);
        }
    }
    fn delayed(&mut self, d: &DelayedRequest) {
        if let Some(j) = self {
            j.delayed(d);
        }
    }
    fn schedule_fired(&mut self, name: &str, due_ms: u64) {
        if let Some(j) = self {
            j.schedule_fired(name, due_ms);
        }
    }
    fn removed(&mut self, kind: Kind, id: HeldId, why: Removal) {
        if let Some(j) = self {
            j.removed(kind, id, why);
        }
    }
    fn mailbox_touched(&mut self, address: &str, at: Instant) {
        if let Some(j) = self {
            j.mailbox_touched(address, at);
        }
    }
    fn mailbox_gone(&mut self, address: &str) {
        if let Some(j) = self {
            j.mailbox_gone(address);
        }
    }
}
