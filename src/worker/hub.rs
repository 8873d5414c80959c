//! The hub: the worker's I/O shell around its [`Core`]. It owns the broker
//! connections, the pool and the runners; it polls the sockets, feeds what
//! happened to the core with the time it happened, and carries out the
//! core's [`Action`]s on the connections. Every rule about requests (the
//! queue, held requests, retries, confirmations, credit, dead letters, the
//! stop) lives in the core; what is left here is sockets, channels and
//! logging.
//!
//! The dispatcher turns the hub when its VM is idle; while its VM runs a
//! request, the VM's duty turns it about every millisecond (and during
//! `alaska.sleep` and parked waits), so pings flow, replies from the
//! pool's VMs go out, and new requests go to idle pool VMs instead of
//! waiting behind a long script. Both happen on the dispatcher's thread,
//! and the hub has exactly one owner at a time (see
//! [`super::dispatcher`]: it is handed to the duty by value for the length
//! of a VM run).
//!
//! Connections: one per broker endpoint, or one NATS connection (to a
//! list of servers of one cluster; see [`super::nats`]). A request is
//! answered (reply, sends, confirmation) over the connection it came from;
//! all connections share one queue and one pool, in arrival order, so no
//! broker starves another.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::core::{Action, Core, Now, Origin, Outlets};
use super::nats::{NatsEvent, NatsLink, Publish, Settle, ENVELOPE_HEADER};
use super::options::{DispatcherOptions, WorkerError};
use super::pool::Pool;
use super::reach::{CallOut, Reach};
use super::runners::Runners;
use super::status::{ConnView, HubOps};
use super::types::{Completion, Job};
use super::vm::Budget;
use super::wake::WakeReceiver;
use crate::mlm::{AckToken, Client, ClientError, ConnState, Delivery};
use crate::time::after;

pub use super::options::{HOLD_BYTES, HOLD_MAX};

/// One MLM broker connection and what the shell logged of it.
pub struct MlmConn {
    /// The client.
    pub client: Client,
    /// The state last seen, to log each change once.
    seen: ConnState,
    /// A failed connection attempt was logged (until it connects).
    told_unreachable: bool,
}

/// One connection of the hub: to an MLM broker, or to NATS.
// A handful per worker, in a Vec: boxing the large one would only add a
// pointer hop on the hot path.
#[allow(clippy::large_enum_variant)]
pub enum Conn {
    /// A Malamute (or alaska-broker) connection.
    Mlm(MlmConn),
    /// A NATS connection (core request/reply).
    Nats(NatsLink),
}

impl Conn {
    /// A connection around a client (connected, or connecting lazily).
    pub fn new(client: Client) -> Conn {
        Conn::Mlm(MlmConn {
            client,
            seen: ConnState::Lost,
            told_unreachable: false,
        })
    }

    /// A NATS connection.
    pub fn nats(link: NatsLink) -> Conn {
        Conn::Nats(link)
    }

    /// The MLM client, if this is one.
    pub fn client(&self) -> Option<&Client> {
        match self {
            Conn::Mlm(m) => Some(&m.client),
            Conn::Nats(_) => None,
        }
    }

    /// What the status page shows of it.
    fn view(&self) -> ConnView<'_> {
        match self {
            Conn::Mlm(m) => ConnView::of(&m.client),
            Conn::Nats(n) => ConnView {
                endpoint: n.endpoint(),
                state: if n.is_up() {
                    ConnState::Connected
                } else {
                    ConnState::Lost
                },
                acknowledged: false,
                maintenance: crate::mlm::client::Maintenance {
                    wanted: n.maintenance(),
                    applied: n.maintenance_applied(),
                    by_broker: false,
                },
                stats: Default::default(),
                offer_refused: None,
            },
        }
    }
}

/// The pool's VMs and the runners, as the core sees them.
struct Places<'a> {
    pool: Option<&'a Pool>,
    jobs: &'a Receiver<Job>,
    runners: &'a mut Runners,
}

impl Outlets for Places<'_> {
    fn route(&self, subject: &str) -> Option<usize> {
        self.runners.route(subject)
    }

    fn to_runner(&mut self, i: usize, job: Job, extra: usize) -> Result<(), (Job, String)> {
        self.runners.place(i, job, extra)
    }

    fn to_pool(&mut self, job: Job) -> Result<(), Job> {
        match self.pool {
            Some(p) if p.size() > 0 => p.try_submit(job),
            _ => Err(job),
        }
    }

    fn take_back(&mut self) -> Option<Job> {
        self.jobs.try_recv().ok()
    }

    fn pool_waiting(&self) -> usize {
        self.pool.map_or(0, Pool::waiting)
    }
}

/// See the module documentation.
pub struct Hub {
    service: String,
    /// Where dead letters go (on NATS: `<mailbox>.<service>`).
    errors_mailbox: String,
    conns: Vec<Conn>,
    core: Core,
    pool: Option<Pool>,
    jobs: Receiver<Job>,
    done: Receiver<Completion>,
    wake: WakeReceiver,
    /// A failure that ends the worker, found while turned by the duty
    /// (which cannot return it).
    pub fatal: Option<WorkerError>,
    /// The budget of the dispatcher's VM, to shorten at a stop.
    inline_budget: Option<Arc<Budget>>,
    /// Handlers that are not Lua: subjects they match never reach a VM.
    runners: Runners,
    /// `alaska.call`s handed over by the VMs.
    calls_rx: Receiver<CallOut>,
    reach: Arc<Reach>,
}

/// Splits the hub into its core and the places jobs go, both mutable.
macro_rules! split {
    ($h:expr) => {
        (
            &mut $h.core,
            Places {
                pool: $h.pool.as_ref(),
                jobs: &$h.jobs,
                runners: &mut $h.runners,
            },
        )
    };
}

impl Hub {
    /// A hub over clients (connected, or connecting lazily with their offer
    /// recorded for when they do) and a pool. `queue_limit` bounds the
    /// requests waiting for a VM, over all connections.
    pub fn new(
        opts: DispatcherOptions,
        conns: Vec<Conn>,
        pool: Pool,
        done: Receiver<Completion>,
        wake: WakeReceiver,
        queue_limit: usize,
    ) -> Hub {
        // No address of ours on NATS: replies go to inboxes, and calls
        // are not sent there (see `execute`).
        let addresses = conns
            .iter()
            .map(|c| {
                c.client()
                    .map(|c| c.address().to_string())
                    .unwrap_or_default()
            })
            .collect();
        Hub {
            errors_mailbox: opts.errors_mailbox.clone(),
            service: opts.service.clone(),
            core: {
                let mut core = Core::new(opts, addresses, queue_limit);
                for (i, c) in conns.iter().enumerate() {
                    if let Conn::Nats(n) = c {
                        core.set_redelivers(i, n.jetstream());
                    }
                }
                core
            },
            conns,
            jobs: pool.receiver(),
            pool: Some(pool),
            done,
            wake,
            fatal: None,
            inline_budget: None,
            runners: Runners::none(),
            calls_rx: crossbeam_channel::never(),
            reach: Arc::default(),
        }
    }

    /// Where the VMs' `alaska.call`s come from, and the VMs' shared
    /// [`Reach`] (told whether the brokers hold delayed requests).
    pub fn set_calls(&mut self, rx: Receiver<CallOut>, reach: Arc<Reach>) {
        self.calls_rx = rx;
        self.core.set_reach(reach.clone());
        self.reach = reach;
    }

    /// The runners (HTTP applications, child processes) that take the
    /// subjects they match.
    pub fn set_runners(&mut self, runners: Runners) {
        self.runners = runners;
    }

    /// Counts, health and maintenance from now on (see [`HubOps`]).
    pub fn set_ops(&mut self, ops: HubOps) {
        self.core.ops = ops;
    }

    /// The budget of the dispatcher's VM (see [`Hub::shorten_inline`]).
    pub fn set_inline_budget(&mut self, budget: Arc<Budget>) {
        self.inline_budget = Some(budget);
    }

    /// A stop was asked while the dispatcher's VM runs a request: that
    /// request gets the shutdown timeout, not the rest of its budget.
    pub fn shorten_inline(&mut self) {
        if let Some(b) = &self.inline_budget {
            b.shorten(self.core.shutdown_timeout());
        }
    }

    /// Answers every call still waiting for its reply with `why` (the
    /// worker stops).
    pub fn fail_calls(&mut self, why: &str) {
        while let Ok(call) = self.calls_rx.try_recv() {
            call.answer.send(Err(why.to_string()));
        }
        self.core.fail_calls(why);
    }

    /// `worker/shutdown/timeout`.
    pub fn shutdown_timeout(&self) -> Duration {
        self.core.shutdown_timeout()
    }

    /// The connections.
    pub fn conns(&self) -> &[Conn] {
        &self.conns
    }

    /// The refusal, when every broker refused our credentials before any
    /// connection opened: retrying cannot fix that.
    pub fn refused_everywhere(&self) -> Option<ClientError> {
        let mut first = None;
        for c in &self.conns {
            let client = c.client()?;
            match client.refused_handshake() {
                Some(e) => first = first.or(Some(e)),
                None => return None,
            }
        }
        first
    }

    /// The dispatcher's VM starts (true) or ends running a request: while
    /// it runs, new work goes to the pool.
    pub fn set_inline_busy(&mut self, busy: bool) {
        let (core, mut out) = split!(self);
        core.set_inline_busy(busy, &mut out);
    }

    /// The next job for the dispatcher's VM: its queue first, then what
    /// waits for the pool.
    pub fn take_inline(&mut self) -> Option<Job> {
        let (core, mut out) = split!(self);
        core.take_inline(&mut out)
    }

    /// Carries out what a request the dispatcher's VM ran decided.
    pub fn complete(&mut self, c: Completion) -> Result<(), WorkerError> {
        let now = Now::real();
        self.core.completion(c, now);
        if !self.core.has_queued() {
            // Nothing else to run now: the confirmation goes right behind
            // the reply, so libzmq's I/O thread writes both at once (one
            // wake-up and one TCP segment, here and at the broker) instead
            // of a second round at the next turn.
            self.core.flush_confirms();
        }
        self.carry_out(now)
    }

    /// Whether jobs wait for the dispatcher's VM.
    pub fn has_queued(&self) -> bool {
        self.core.has_queued()
    }

    /// One round of I/O: waits at most `wait` (less when a timer is due),
    /// then feeds the core every delivery, completion, call and due timer,
    /// and carries out what it decided. Errors that end the worker are
    /// returned.
    pub fn turn(&mut self, wait: Duration) -> Result<(), WorkerError> {
        let now = Instant::now();
        let mut until = after(now, wait);
        for c in self.conns.iter().filter_map(Conn::client) {
            until = until.min(c.next_deadline());
        }
        if let Some(due) = self.core.next_deadline() {
            until = until.min(due);
        }
        let mut timeout = until.saturating_duration_since(now);
        if !timeout.is_zero() {
            // Arm, then a last look at the completions: one that lands in
            // between writes the wake-up byte.
            self.wake.arm();
            let nats = self
                .conns
                .iter()
                .any(|c| matches!(c, Conn::Nats(n) if n.has_events()));
            if nats
                || !self.done.is_empty()
                || !self.calls_rx.is_empty()
                || self.core.ops.has_work()
            {
                timeout = Duration::ZERO;
            }
        }
        let ready = self.poll(timeout)?;
        self.wake.disarm();
        let now = Now::real();
        for (i, (sock, mon)) in ready.into_iter().enumerate() {
            if let Conn::Mlm(m) = &mut self.conns[i] {
                let r = m.client.process(sock, mon, now.at);
                outcome(r)?;
                self.log_state(i);
            }
        }
        // One delivery per connection in turn, so a burst read from one
        // broker does not queue ahead of what another sent meanwhile.
        let mut more = true;
        while more {
            more = false;
            for i in 0..self.conns.len() {
                if let Some(d) = self.next_delivery(i) {
                    let (core, mut out) = split!(self);
                    core.delivery(i, d, now, &mut out);
                    more = true;
                }
            }
            self.carry_out(now)?;
        }
        for i in 0..self.conns.len() {
            // What the broker refused of ours (a full mailbox for a reply,
            // a full queue for a forward): said once here, never fatal.
            let Conn::Mlm(m) = &mut self.conns[i] else {
                continue;
            };
            while let Some(r) = m.client.next_refusal() {
                self.core.refused(i, &r);
                tracing::warn!(endpoint = %m.client.endpoint(), "broker refused a send: {r}");
            }
        }
        self.after_turn(now)
    }

    /// The next delivery of connection `i`; a NATS connection's changes
    /// met on the way are told to the core (and logged once each).
    fn next_delivery(&mut self, i: usize) -> Option<Delivery> {
        match &mut self.conns[i] {
            Conn::Mlm(m) => m.client.next_delivery(),
            Conn::Nats(n) => loop {
                match n.next_event()? {
                    NatsEvent::Request(d) => return Some(d),
                    NatsEvent::Up => {
                        // Core NATS: no acknowledgements, no delayed
                        // requests (the core dead-letters delayed
                        // forwards and retries locally). JetStream:
                        // acknowledged, and the server redelivers.
                        self.core.connection_up(i, n.jetstream(), false);
                        tracing::info!(endpoint = %n.endpoint(), "NATS connected: serving {}", self.service);
                    }
                    NatsEvent::Down => {
                        self.core.connection_down(i);
                        tracing::warn!(endpoint = %n.endpoint(), "NATS connection lost; reconnecting");
                    }
                    NatsEvent::Maintenance(on) => {
                        tracing::info!(endpoint = %n.endpoint(), "NATS: maintenance {}", if on { "in effect" } else { "over" });
                    }
                }
            },
        }
    }

    /// Says once when a connection comes up (offering again) or goes
    /// away, and tells the core; the others keep serving either way.
    fn log_state(&mut self, i: usize) {
        let Conn::Mlm(c) = &mut self.conns[i] else {
            return;
        };
        if c.client.unreachable() && !c.told_unreachable {
            // Said once: libzmq retries every second, the log need not.
            c.told_unreachable = true;
            tracing::warn!(endpoint = %c.client.endpoint(), "broker unreachable (connection refused or dropped); still trying");
        }
        let state = c.client.state();
        if state == ConnState::Connected {
            // Every turn, not only on a change: a reconnection within one
            // turn may have reached a broker that does other things.
            self.core
                .connection_up(i, c.client.acks_enabled(), c.client.supports_delay());
        }
        if state == c.seen || state == ConnState::Opening {
            return;
        }
        c.seen = state;
        if state == ConnState::Connected {
            c.told_unreachable = false;
            tracing::info!(
                endpoint = %c.client.endpoint(),
                acknowledged = c.client.acks_enabled(),
                "broker connected: offering {}",
                self.service
            );
        } else {
            tracing::warn!(endpoint = %c.client.endpoint(), "broker connection lost; reconnecting");
            // Their replies would come to a connection that is gone.
            self.core.connection_down(i);
        }
    }

    /// Polls every connection and the wake-up descriptor; returns what is
    /// readable per connection (socket, monitor).
    fn poll(&mut self, timeout: Duration) -> Result<Vec<(bool, bool)>, WorkerError> {
        let fd = self.wake.as_raw_fd();
        let (ready, woken) = {
            let mut items: Vec<zmq::PollItem<'_>> = Vec::with_capacity(self.conns.len() * 2 + 1);
            let clients: Vec<&Client> = self.conns.iter().filter_map(Conn::client).collect();
            for c in &clients {
                items.extend(c.poll_items());
            }
            items.push(zmq::PollItem::from_fd(fd, zmq::POLLIN));
            match zmq::poll(&mut items, ms(timeout)) {
                // A signal (the one asking us to stop, say): look again.
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(ClientError::Zmq(e).into()),
            }
            let mut mlm = items
                .chunks(2)
                .take(clients.len())
                .map(|p| (p[0].is_readable(), p[1].is_readable()));
            // One entry per connection, in order; NATS ones have no socket.
            let ready: Vec<(bool, bool)> = self
                .conns
                .iter()
                .map(|c| match c {
                    Conn::Mlm(_) => mlm.next().unwrap_or((false, false)),
                    Conn::Nats(_) => (false, false),
                })
                .collect();
            (ready, items[items.len() - 1].is_readable())
        };
        if woken {
            self.wake.drain();
        }
        Ok(ready)
    }

    /// Completions, calls, due timers, confirmations; then the operations
    /// side (maintenance asked over HTTP, the status snapshot).
    fn after_turn(&mut self, now: Now) -> Result<(), WorkerError> {
        while let Ok(c) = self.done.try_recv() {
            self.core.completion(c, now);
            self.carry_out(now)?;
        }
        while let Ok(call) = self.calls_rx.try_recv() {
            self.core.call(call, now);
            self.carry_out(now)?;
        }
        // alaska.schedule asks this before it promises a delayed send.
        self.reach.set_delay_supported(self.core.delay_everywhere());
        self.runners.feed();
        {
            let (core, mut out) = split!(self);
            core.tick(now, &mut out);
        }
        if let Some(wish) = self.core.ops.maintenance_change() {
            self.core.maintenance(wish);
        }
        self.carry_out(now)?;
        let (in_flight, retries) = (self.core.in_flight(), self.core.retries());
        let (core, out) = split!(self);
        let queued = core.queued(&out);
        let views = self.conns.iter().map(Conn::view);
        self.core.ops.after_turn(views, in_flight, queued, retries);
        Ok(())
    }

    /// Carries out what the core decided, in order, on the connections
    /// (and what it decides meanwhile: a refused delayed forward becomes a
    /// dead letter).
    fn carry_out(&mut self, now: Now) -> Result<(), WorkerError> {
        loop {
            let mut acts = self.core.take_actions();
            if acts.is_empty() {
                self.core.recycle(acts);
                return Ok(());
            }
            for a in acts.drain(..) {
                // An error ends the worker: the rest is not sent.
                let on_nats = match &mut self.conns[conn_of(&a)] {
                    Conn::Nats(n) => Some(n),
                    Conn::Mlm(_) => None,
                };
                match on_nats {
                    Some(n) => {
                        execute_nats(n, &mut self.core, a, &self.errors_mailbox, &self.service)
                    }
                    None => execute(&mut self.conns, &mut self.core, a, now)?,
                }
            }
            self.core.recycle(acts);
        }
    }

    /// Graceful stop: no new work, the pool's running requests finish
    /// within the shutdown timeout and their results are sent, waiting
    /// retries are handed back, the rest is reported, the connections are
    /// closed politely.
    pub fn stop(mut self) -> Result<(), WorkerError> {
        {
            let (core, out) = split!(self);
            let backlogged = out.runners.backlogged();
            core.stop_begin(&out, backlogged);
        }
        // NATS: leave the queue group, so new requests go to the other
        // workers (an MLM broker stops giving work when we close).
        for c in &mut self.conns {
            if let Conn::Nats(n) = c {
                n.set_maintenance(true);
            }
        }
        let timeout = self.core.shutdown_timeout();
        // Runners wait for their running requests alongside the pool, up
        // to the same deadline.
        let deadline = after(Instant::now(), timeout);
        let runners_unstarted = self.runners.stop_taking(deadline);
        let mut unstarted = match self.pool.take() {
            Some(pool) => pool.shutdown(timeout),
            None => Vec::new(),
        };
        std::mem::replace(&mut self.runners, Runners::none()).finish();
        unstarted.extend(runners_unstarted);
        // Completions of everything that finished in time; retries they
        // ask for now are handed back with the others.
        let now = Now::real();
        while let Ok(c) = self.done.try_recv() {
            self.core.completion(c, now);
        }
        self.core.stop_finish(unstarted, now);
        self.carry_out(now)?;
        // Deliveries that arrived during the stop are not run either.
        for i in 0..self.conns.len() {
            let deadline = after(Instant::now(), Duration::from_millis(50));
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let d = match &mut self.conns[i] {
                    Conn::Mlm(m) => m.client.recv(left)?,
                    Conn::Nats(n) => match n.event_within(left) {
                        Some(NatsEvent::Request(d)) => Some(d),
                        Some(_) => continue,
                        None => None,
                    },
                };
                let Some(d) = d else { break };
                self.core.delivery_at_stop(i, d, Now::real());
                self.carry_out(now)?;
            }
        }
        tracing::info!("stopped");
        for c in self.conns {
            let c = match c {
                Conn::Mlm(m) => m,
                Conn::Nats(n) => {
                    n.close(Duration::from_secs(2));
                    continue;
                }
            };
            match c.client.close() {
                Ok(()) => {}
                Err(ClientError::Rejected(refused)) => {
                    for r in refused {
                        tracing::warn!("broker refused a send: {r}");
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Carries out one action on its connection. A send the broker connection
/// cannot take now is handled as the core would want: a call is answered
/// with why, a delayed forward becomes a dead letter.
fn execute(conns: &mut [Conn], core: &mut Core, a: Action, now: Now) -> Result<(), WorkerError> {
    let conn = conn_of(&a);
    let Conn::Mlm(m) = &mut conns[conn] else {
        return Ok(());
    };
    let client = &mut m.client;
    match a {
        Action::SendTo {
            address,
            subject,
            tracker,
            content,
            ..
        } => outcome(client.sendto(&address, &subject, &tracker, 0, content)),
        Action::SendFor {
            conn,
            address,
            subject,
            tracker,
            timeout_ms,
            delay,
            content,
            origin,
        } => {
            let sent = match delay {
                Some(d) => {
                    client.sendfor_delayed(&address, &subject, &tracker, timeout_ms, content, d)
                }
                None => client.sendfor(&address, &subject, &tracker, timeout_ms, content),
            };
            match (sent, origin) {
                (Ok(()), _) => Ok(()),
                (
                    Err(e @ (ClientError::Unsupported(_) | ClientError::NotConnected(_))),
                    Origin::DelayedForward(request),
                ) => {
                    core.delayed_refused(conn, &request, &e.to_string(), now);
                    Ok(())
                }
                (Err(e @ (ClientError::Unsupported(_) | ClientError::NotConnected(_))), _)
                    if delay.is_some() =>
                {
                    tracing::warn!(to = %address, subject = %subject, "alaska.schedule not sent: {e}");
                    Ok(())
                }
                (Err(e), Origin::Call(tracker)) => {
                    core.call_not_sent(&tracker, &format!("cannot send: {e}"));
                    outcome(Err(e))
                }
                (Err(e), _) => outcome(Err(e)),
            }
        }
        Action::Stream {
            stream,
            subject,
            content,
            ..
        } => outcome(
            client
                .switch_producer(&stream)
                .and_then(|_| client.send(&subject, content)),
        ),
        Action::Confirm { tokens, .. } => outcome(client.confirm_all(&tokens)),
        Action::Credit { amount, .. } => {
            outcome(client.post(crate::mlm::Message::Credit { amount }))
        }
        Action::Maintenance { on, .. } => outcome(client.set_maintenance(on)),
        // Only for connections whose broker redelivers (JetStream).
        Action::Nak { .. } | Action::Term { .. } => Ok(()),
    }
}

/// The connection an action goes over.
fn conn_of(a: &Action) -> usize {
    match a {
        Action::SendTo { conn, .. }
        | Action::SendFor { conn, .. }
        | Action::Stream { conn, .. }
        | Action::Confirm { conn, .. }
        | Action::Credit { conn, .. }
        | Action::Maintenance { conn, .. }
        | Action::Nak { conn, .. }
        | Action::Term { conn, .. } => *conn,
    }
}

/// Carries out one action on a NATS connection (see docs/NATS.md for the
/// mapping): a reply is a publish to the requester's inbox, an error
/// reply one with NATS micro's error headers, a dead letter a publish of
/// its JSON report to `<errors mailbox>.<service>`, a mail a publish to
/// `<mailbox>.<subject>`, a forward or
/// hand-back a publish to `<service>.<subject>` with the original inbox as
/// its reply subject and the envelope in a header, a stream send a publish
/// to `<stream>.<subject>`. Calls are not carried on NATS: their callers
/// are answered so at once. Confirmations and credit mean nothing on core
/// NATS.
fn execute_nats(n: &mut NatsLink, core: &mut Core, a: Action, errors_mailbox: &str, service: &str) {
    match a {
        Action::SendTo {
            address,
            subject,
            tracker,
            mut content,
            ..
        } => {
            if address == errors_mailbox {
                // The last frame is the JSON report with everything.
                let report = content.pop().unwrap_or_default();
                return n.publish(Publish::to(format!("{address}.{service}"), report));
            }
            if subject.starts_with(super::options::ERROR_REPLY_PREFIX) {
                let text = content
                    .first()
                    .map(|t| String::from_utf8_lossy(t).into_owned())
                    .unwrap_or_default();
                return n.publish(super::nats::error_reply(&address, "500", &text));
            }
            if tracker.is_empty() && !subject.is_empty() {
                // A mail (replies carry the requester's tracker): its
                // subject is part of the NATS subject, as the gateway's.
                return n.publish(Publish::to(
                    format!("{address}.{subject}"),
                    first_frame(content),
                ));
            }
            n.publish(Publish::to(address, first_frame(content)));
        }
        Action::SendFor {
            address,
            subject,
            tracker,
            content,
            delay,
            origin,
            ..
        } => {
            if let Origin::Call(call) = origin {
                core.call_not_sent(&call, "alaska.call is not available on NATS");
                return;
            }
            if delay.is_some() {
                // The core sends none: core NATS holds no delayed requests.
                tracing::warn!(to = %address, subject = %subject, "delayed send not sent: NATS holds no delayed requests");
                return;
            }
            let reply = super::outcomes::Envelope::decode(&tracker)
                .map(|e| e.sender)
                .filter(|s| !s.is_empty());
            let headers = if tracker.is_empty() {
                Vec::new()
            } else {
                vec![(ENVELOPE_HEADER.to_string(), tracker)]
            };
            n.publish(Publish {
                subject: format!("{address}.{subject}"),
                reply,
                headers,
                payload: first_frame(content),
            });
        }
        Action::Stream {
            stream,
            subject,
            content,
            ..
        } => n.publish(Publish::to(
            format!("{stream}.{subject}"),
            first_frame(content),
        )),
        Action::Maintenance { on, .. } => n.set_maintenance(on),
        Action::Confirm { tokens, .. } => n.settle(
            tokens
                .iter()
                .filter_map(AckToken::foreign_id)
                .map(|id| (id, Settle::Ack))
                .collect(),
        ),
        Action::Nak { token, delay, .. } => {
            if let Some(id) = token.foreign_id() {
                n.settle(vec![(id, Settle::Nak(delay))]);
            }
        }
        Action::Term { token, .. } => {
            if let Some(id) = token.foreign_id() {
                n.settle(vec![(id, Settle::Term)]);
            }
        }
        Action::Credit { .. } => {}
    }
}

/// A NATS message has one payload: the first frame (more are dropped;
/// documented).
fn first_frame(content: Vec<Vec<u8>>) -> Vec<u8> {
    content.into_iter().next().unwrap_or_default()
}

/// A send that failed because the outbox is full is logged by the client
/// and dropped; anything else is fatal for the connection.
fn outcome(r: Result<(), ClientError>) -> Result<(), WorkerError> {
    match r {
        Ok(()) | Err(ClientError::OutboxFull(_)) => Ok(()),
        Err(e @ ClientError::Encode(_)) => {
            tracing::warn!("cannot send a script's message: {e}");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Milliseconds for `zmq::poll`, rounded up so a wait of 0.4 ms does not
/// become a busy loop.
fn ms(d: Duration) -> i64 {
    let m = d.as_micros().div_ceil(1000);
    m.min(i64::MAX as u128) as i64
}
