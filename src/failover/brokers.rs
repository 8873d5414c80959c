//! [`Brokers`]: one [`Client`] per endpoint, driven from one thread with
//! one `zmq::poll`, with the failover choice of [`super::select`] on top.
//!
//! Every client is connected lazily ([`Client::connect_lazy_in`]) under the
//! same address, so a broker that is down at start holds nothing up, and
//! replies mailed to us arrive on whichever broker the request went
//! through. Each client reconnects on its own. The owner sends through
//! [`Brokers::client`] after choosing with [`Brokers::pick`] (new work) or
//! [`Brokers::after`] (a resend), and learns of brokers coming and going
//! from [`Brokers::next_event`].

use std::collections::VecDeque;
use std::os::unix::io::RawFd;
use std::time::{Duration, Instant};

use super::select::{Balance, Links, Pick, Reach, Selector};
use crate::mlm::{Client, ClientError, ClientOptions, ConnState, Delivery, Refusal};
use crate::time::after;

/// A broker came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerEvent {
    /// Broker `i` is connected (again).
    Up(usize),
    /// Broker `i` went away (disconnected, or silent past the timeout).
    Down(usize),
}

/// One client per broker. See the module documentation.
pub struct Brokers {
    clients: Vec<Client>,
    links: Links,
    selector: Selector,
    events: VecDeque<BrokerEvent>,
    /// Where [`Brokers::next_delivery`] looks first, so no broker's
    /// deliveries always wait behind another's.
    turn: usize,
}

impl Brokers {
    /// A client per endpoint, with `template`'s address, timers and
    /// credentials, connecting in the background. A broker not connected
    /// within `template.timeout` of now counts as down. Fails only on an
    /// endpoint ZeroMQ cannot use.
    pub fn connect(
        endpoints: &[String],
        template: &ClientOptions,
        balance: Balance,
    ) -> Result<Brokers, ClientError> {
        let ctx = zmq::Context::new();
        let mut clients = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let mut o = template.clone();
            o.endpoint = e.clone();
            clients.push(Client::connect_lazy_in(&ctx, o)?);
        }
        Ok(Brokers {
            links: Links::new(clients.len(), template.timeout, Instant::now()),
            clients,
            selector: Selector::new(balance),
            events: VecDeque::new(),
            turn: 0,
        })
    }

    /// How many brokers.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Broker `i`'s client, to send through.
    pub fn client(&mut self, i: usize) -> &mut Client {
        &mut self.clients[i]
    }

    /// All clients, in list order.
    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    /// Broker `i`'s endpoint.
    pub fn endpoint(&self, i: usize) -> &str {
        self.clients[i].endpoint()
    }

    /// Every broker as of `now`.
    pub fn reach(&self, now: Instant) -> Vec<Reach> {
        self.links.reaches(now)
    }

    /// The broker for the next new request (see [`Selector::pick`]).
    pub fn pick(&mut self, now: Instant) -> Pick {
        let reach = self.links.reaches(now);
        self.selector.pick(&reach)
    }

    /// The broker to send a request again to after it went to `from`.
    pub fn after(&self, from: usize, now: Instant) -> Pick {
        self.selector.after(from, &self.links.reaches(now))
    }

    /// The next broker that came or went.
    pub fn next_event(&mut self) -> Option<BrokerEvent> {
        self.events.pop_front()
    }

    /// The next delivery from any broker, with the broker's index.
    pub fn next_delivery(&mut self) -> Option<(usize, Delivery)> {
        let n = self.clients.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            if let Some(d) = self.clients[i].next_delivery() {
                self.turn = (i + 1) % n;
                return Some((i, d));
            }
        }
        None
    }

    /// The next delivery or refusal from any broker, each broker's in the
    /// order they came (see [`Client::next_in_order`]), with the broker's
    /// index.
    pub fn next_in_order(&mut self) -> Option<(usize, crate::mlm::Wait)> {
        let n = self.clients.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            if let Some(w) = self.clients[i].next_in_order() {
                self.turn = (i + 1) % n;
                return Some((i, w));
            }
        }
        None
    }

    /// The next refusal of one of our sends, with the broker's index.
    pub fn next_refusal(&mut self) -> Option<(usize, Refusal)> {
        self.clients
            .iter_mut()
            .enumerate()
            .find_map(|(i, c)| c.next_refusal().map(|r| (i, r)))
    }

    /// Waits at most `timeout` (less when a client's timer is due) for
    /// anything from any broker or for `wake_fd`, then reads what came and
    /// runs the clients' timers. Returns whether `wake_fd` is readable (the
    /// caller drains it). Deliveries, refusals and events are then waiting.
    pub fn poll(&mut self, wake_fd: Option<RawFd>, timeout: Duration) -> Result<bool, ClientError> {
        let now = Instant::now();
        let until = self
            .clients
            .iter()
            .map(Client::next_deadline)
            .fold(after(now, timeout), Instant::min);
        let wait = until.saturating_duration_since(now);
        let (ready, woken) = {
            let mut items: Vec<zmq::PollItem<'_>> = Vec::with_capacity(self.clients.len() * 2 + 1);
            for c in &self.clients {
                items.extend(c.poll_items());
            }
            if let Some(fd) = wake_fd {
                items.push(zmq::PollItem::from_fd(fd, zmq::POLLIN));
            }
            let ms = wait.as_micros().div_ceil(1000).min(i64::MAX as u128) as i64;
            match zmq::poll(&mut items, ms) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let ready: Vec<(bool, bool)> = items
                .chunks(2)
                .take(self.clients.len())
                .map(|p| (p[0].is_readable(), p[1].is_readable()))
                .collect();
            let woken = wake_fd.is_some() && items.last().is_some_and(|i| i.is_readable());
            (ready, woken)
        };
        let now = Instant::now();
        for (i, (sock, mon)) in ready.into_iter().enumerate() {
            self.clients[i].process(sock, mon, now)?;
        }
        self.observe();
        Ok(woken)
    }

    /// Polls until a broker is usable for new work, every broker is known
    /// down, or `timeout` passes. Returns the broker to use, if any.
    pub fn wait_usable(&mut self, timeout: Duration) -> Result<Option<usize>, ClientError> {
        let deadline = after(Instant::now(), timeout);
        loop {
            let now = Instant::now();
            // Looking must not move the round-robin turn on.
            let reach = self.links.reaches(now);
            match self.selector.clone().pick(&reach) {
                Pick::Use(i) => return Ok(Some(i)),
                Pick::NoBroker => return Ok(None),
                Pick::Wait if now >= deadline => return Ok(None),
                Pick::Wait => {}
            }
            // Wake at least every 50 ms: the start-up grace ends by time.
            let left = deadline.saturating_duration_since(now);
            self.poll(None, left.min(Duration::from_millis(50)))?;
        }
    }

    /// Why no broker could be used, for a program's error message: the
    /// first refused handshake (credentials), else "unreachable" for the
    /// first broker.
    ///
    /// A bare hang-up is ambiguous (both sides check the other's security
    /// mechanism; when the broker finds a mismatch first, all we see is the
    /// hang-up), so while one is unsettled this polls up to `waited` more
    /// (at most 2 s) for libzmq's next attempt to name the cause.
    pub fn connect_error(&mut self, waited: Duration) -> ClientError {
        let until = after(Instant::now(), waited.min(Duration::from_secs(2)));
        while self.clients.iter().any(Client::handshake_unsettled) && Instant::now() < until {
            if self.poll(None, Duration::from_millis(50)).is_err() {
                break;
            }
        }
        if let Some(e) = self.clients.iter().find_map(Client::refused_handshake) {
            return e;
        }
        // The handshake went through but the broker refused our OPEN (its
        // ACL): that, not "unreachable".
        if let Some(e) = self.clients.iter().find_map(Client::open_refused) {
            return e;
        }
        if let Some(e) = self.clients.iter().find_map(Client::last_handshake_failure) {
            return e;
        }
        let endpoint = self
            .clients
            .iter()
            .map(Client::endpoint)
            .collect::<Vec<_>>()
            .join(",");
        ClientError::Unreachable { endpoint, waited }
    }

    /// Says goodbye on every connection (CONNECTION CLOSE, each waiting
    /// briefly for its OK). Refusals never taken come back per broker, as
    /// [`Client::close`] returns them.
    pub fn close(self) -> Vec<(usize, Result<(), ClientError>)> {
        self.clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| (i, c.close()))
            .collect()
    }

    fn observe(&mut self) {
        for (i, c) in self.clients.iter().enumerate() {
            let up = c.state() == ConnState::Connected;
            match self.links.observe(i, up, c.unreachable()) {
                Some(true) => self.events.push_back(BrokerEvent::Up(i)),
                Some(false) => self.events.push_back(BrokerEvent::Down(i)),
                None => {}
            }
        }
    }
}
