//! Which broker a producer sends to. Socket-free: the caller reports what
//! each client says ([`Links::observe`]) and passes the time in.
//!
//! - **Priority** (the default): every request goes to the first broker of
//!   the list that is usable; the next ones are standbys. When it goes
//!   away, the next usable one takes over at once; when it comes back, it
//!   is preferred again.
//! - **Round robin** (`--balance rr`): requests rotate over the usable
//!   brokers, so the load is spread and every broker is exercised.
//!
//! "Usable" is [`Reach::Up`]: connected. At start a broker that has not
//! connected yet is [`Reach::Pending`] for a grace period (connecting
//! takes a round trip or two); priority order waits for it rather than
//! skipping ahead, so that with every broker up the first one is always
//! the one used; round robin waits for every broker to connect or fail
//! before it starts rotating. A broker that refused the connection, or that was up and
//! is not now, is [`Reach::Down`] at once: failover does not wait.

use crate::time::after;
use std::time::{Duration, Instant};

/// How requests are spread over the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// The first usable broker in list order.
    #[default]
    Priority,
    /// Rotate over the usable brokers.
    RoundRobin,
}

impl std::str::FromStr for Balance {
    type Err = String;

    fn from_str(s: &str) -> Result<Balance, String> {
        match s.trim().to_lowercase().as_str() {
            "priority" | "failover" => Ok(Balance::Priority),
            "rr" | "round-robin" | "roundrobin" => Ok(Balance::RoundRobin),
            _ => Err(format!("{s:?} is not a balance mode (priority or rr)")),
        }
    }
}

/// A broker as seen from the producer right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Connected: requests may go there.
    Up,
    /// Not connected yet, still within the start-up grace.
    Pending,
    /// Not usable: refused, gone, or silent past the grace.
    Down,
}

/// The answer of [`Selector::pick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Send to this broker (index in the list).
    Use(usize),
    /// No broker is usable yet but one may be soon: wait a little.
    Wait,
    /// Every broker is down.
    NoBroker,
}

#[derive(Debug, Clone, Copy, Default)]
struct Link {
    up: bool,
    ever_up: bool,
    unreachable: bool,
}

/// What is known of each broker's connection, over time.
#[derive(Debug, Clone)]
pub struct Links {
    links: Vec<Link>,
    started: Instant,
    grace: Duration,
}

impl Links {
    /// `n` brokers, none connected yet; a broker that has not connected
    /// within `grace` of `now` counts as down.
    pub fn new(n: usize, grace: Duration, now: Instant) -> Links {
        Links {
            links: vec![Link::default(); n],
            started: now,
            grace,
        }
    }

    /// How many brokers.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Records what broker `i`'s client says: connected (the broker
    /// answers), unreachable (a connection attempt failed). Returns
    /// `Some(true)` when it just came up, `Some(false)` when it just went
    /// away, `None` when nothing changed.
    pub fn observe(&mut self, i: usize, connected: bool, unreachable: bool) -> Option<bool> {
        let l = self.links.get_mut(i)?;
        l.unreachable = unreachable;
        if l.up == connected {
            return None;
        }
        l.up = connected;
        l.ever_up |= connected;
        Some(connected)
    }

    /// Broker `i` as of `now`.
    pub fn reach(&self, i: usize, now: Instant) -> Reach {
        let Some(l) = self.links.get(i) else {
            return Reach::Down;
        };
        if l.up {
            Reach::Up
        } else if l.unreachable || l.ever_up || now >= after(self.started, self.grace) {
            Reach::Down
        } else {
            Reach::Pending
        }
    }

    /// Every broker as of `now`, in list order.
    pub fn reaches(&self, now: Instant) -> Vec<Reach> {
        (0..self.links.len()).map(|i| self.reach(i, now)).collect()
    }
}

/// Picks the broker for each send. See the module documentation.
#[derive(Debug, Clone)]
pub struct Selector {
    balance: Balance,
    next: usize,
}

impl Selector {
    /// A selector with `balance`.
    pub fn new(balance: Balance) -> Selector {
        Selector { balance, next: 0 }
    }

    /// The balance mode.
    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// The broker for the next send, given each broker's reach (list
    /// order). Round robin moves on with each pick.
    pub fn pick(&mut self, reach: &[Reach]) -> Pick {
        match self.balance {
            Balance::Priority => {
                for (i, r) in reach.iter().enumerate() {
                    match r {
                        Reach::Up => return Pick::Use(i),
                        // A broker ahead in the list may still come up: do
                        // not skip it in its first moments.
                        Reach::Pending => return Pick::Wait,
                        Reach::Down => {}
                    }
                }
                Pick::NoBroker
            }
            Balance::RoundRobin => {
                // At start, let every broker connect (or fail) before the
                // rotation begins, or the first to connect would get all.
                if reach.contains(&Reach::Pending) {
                    return Pick::Wait;
                }
                let n = reach.len();
                for k in 0..n {
                    let i = (k + self.next) % n;
                    if reach[i] == Reach::Up {
                        self.next = (i + 1) % n;
                        return Pick::Use(i);
                    }
                }
                none_up(reach)
            }
        }
    }

    /// The broker to send a request again to, after it went to `from`: the
    /// next usable one after `from` in list order (wrapping), and `from`
    /// itself only when it is the only one usable.
    pub fn after(&self, from: usize, reach: &[Reach]) -> Pick {
        let n = reach.len();
        for k in 1..=n {
            let i = (from + k) % n;
            if reach[i] == Reach::Up {
                return Pick::Use(i);
            }
        }
        none_up(reach)
    }
}

fn none_up(reach: &[Reach]) -> Pick {
    if reach.contains(&Reach::Pending) {
        Pick::Wait
    } else {
        Pick::NoBroker
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Reach::{Down, Pending, Up};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn balance_names() {
        assert_eq!("priority".parse::<Balance>(), Ok(Balance::Priority));
        assert_eq!("rr".parse::<Balance>(), Ok(Balance::RoundRobin));
        assert_eq!("Round-Robin".parse::<Balance>(), Ok(Balance::RoundRobin));
        assert!("random".parse::<Balance>().is_err());
        assert_eq!(Balance::default(), Balance::Priority);
    }

    #[test]
    fn priority_uses_the_first_usable_broker_in_list_order() {
        let mut s = Selector::new(Balance::Priority);
        assert_eq!(s.pick(&[Up, Up, Up]), Pick::Use(0));
        assert_eq!(s.pick(&[Up, Up, Up]), Pick::Use(0), "not rotating");
        assert_eq!(s.pick(&[Down, Up, Up]), Pick::Use(1));
        assert_eq!(s.pick(&[Down, Down, Up]), Pick::Use(2));
        // The first comes back: preferred again.
        assert_eq!(s.pick(&[Up, Down, Up]), Pick::Use(0));
        assert_eq!(s.pick(&[Down, Down, Down]), Pick::NoBroker);
    }

    #[test]
    fn priority_waits_for_a_broker_ahead_that_is_still_connecting() {
        let mut s = Selector::new(Balance::Priority);
        assert_eq!(s.pick(&[Pending, Up]), Pick::Wait);
        assert_eq!(s.pick(&[Down, Pending, Up]), Pick::Wait);
        assert_eq!(s.pick(&[Up, Pending]), Pick::Use(0));
        assert_eq!(s.pick(&[Down, Pending]), Pick::Wait);
    }

    #[test]
    fn round_robin_rotates_over_the_usable_brokers_only() {
        let mut s = Selector::new(Balance::RoundRobin);
        let all = [Up, Up, Up];
        let picks: Vec<Pick> = (0..6).map(|_| s.pick(&all)).collect();
        assert_eq!(
            picks,
            [0, 1, 2, 0, 1, 2].map(Pick::Use),
            "each broker in turn"
        );
        // The middle one goes away: skipped, the others alternate.
        let picks: Vec<Pick> = (0..4).map(|_| s.pick(&[Up, Down, Up])).collect();
        assert_eq!(picks, [0, 2, 0, 2].map(Pick::Use));
        // It comes back and gets its turn again.
        let picks: Vec<Pick> = (0..3).map(|_| s.pick(&all)).collect();
        assert_eq!(picks, [0, 1, 2].map(Pick::Use));
        assert_eq!(s.pick(&[Down, Pending, Down]), Pick::Wait);
        assert_eq!(s.pick(&[Down, Down, Down]), Pick::NoBroker);
        // At start, the rotation waits for brokers still connecting.
        assert_eq!(s.pick(&[Up, Pending, Up]), Pick::Wait);
    }

    #[test]
    fn a_resend_goes_to_the_next_usable_broker_after_the_one_it_went_to() {
        let s = Selector::new(Balance::Priority);
        assert_eq!(s.after(0, &[Up, Up, Up]), Pick::Use(1));
        assert_eq!(s.after(1, &[Up, Up, Up]), Pick::Use(2));
        assert_eq!(s.after(2, &[Up, Up, Up]), Pick::Use(0), "wraps around");
        assert_eq!(s.after(0, &[Down, Down, Up]), Pick::Use(2));
        assert_eq!(
            s.after(0, &[Up, Down, Down]),
            Pick::Use(0),
            "the same broker when it is the only one left"
        );
        assert_eq!(s.after(0, &[Down, Pending, Down]), Pick::Wait);
        assert_eq!(s.after(1, &[Down, Down]), Pick::NoBroker);
    }

    #[test]
    fn links_pending_within_the_grace_then_down_and_edges_reported() {
        let t0 = Instant::now();
        let mut l = Links::new(3, ms(500), t0);
        assert_eq!(l.reaches(t0), [Pending, Pending, Pending]);
        assert_eq!(l.observe(0, true, false), Some(true), "came up");
        assert_eq!(l.observe(0, true, false), None, "no change");
        // Broker 1 refused the connection: down at once, grace or not.
        assert_eq!(l.observe(1, false, true), None);
        assert_eq!(l.reaches(t0 + ms(10)), [Up, Down, Pending]);
        // Broker 2 never answers: down once the grace is over.
        assert_eq!(l.reaches(t0 + ms(500)), [Up, Down, Down]);
        // Broker 0 goes away: down at once, and the edge is reported.
        assert_eq!(l.observe(0, false, false), Some(false));
        assert_eq!(l.reach(0, t0 + ms(20)), Down, "was up: no grace again");
        // Broker 1 comes up after all.
        assert_eq!(l.observe(1, true, false), Some(true));
        assert_eq!(l.reach(1, t0 + ms(600)), Up);
        assert_eq!(l.reach(7, t0), Down, "no such broker");
    }
}
