//! The hub: everything the dispatcher thread does on its broker
//! connections, apart from running its own VM. It receives requests and
//! places them (in the dispatcher's queue, or with the pool's VMs), carries
//! out what finished requests decided (see [`super::outcomes`]), keeps
//! waiting retries, batches confirmations, and stops gracefully.
//!
//! The dispatcher calls [`Hub::turn`] when its VM is idle; while its VM
//! runs a request, the VM's duty calls it about every millisecond (and
//! during `alaska.sleep`), so pings flow, replies from the pool's VMs go
//! out, and new requests go to idle pool VMs instead of waiting behind a
//! long script. Both happen on the dispatcher's thread: the hub is the
//! only owner of the sockets.
//!
//! Connections: one per broker endpoint. A request is answered (reply,
//! sends, confirmation) over the connection it came from; all connections
//! share one queue and one pool, in arrival order, so no broker starves
//! another.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::metrics::SendKind;
use super::options::{DispatcherOptions, WorkerError, ERROR_REPLY_PREFIX};
use super::outcomes::{Decision, Envelope, RetryQueue};
use super::pool::Pool;
use super::reach::{CallOut, Calls, Reach, CALL_TRACKER};
use super::runners::Runners;
use super::status::{ConnView, HubOps};
use super::types::{Completion, ErrorKind, Job, Output, Request};
use super::vm::Budget;
use super::wake::WakeReceiver;
use crate::mlm::{AckToken, Client, ClientError, ConnState, Delivery, DeliveryKind, Message};
use crate::time::after;

/// Confirmations sent at once at most; beyond, they go out at once.
const CONFIRM_BATCH: usize = 64;

pub use super::options::{HOLD_BYTES, HOLD_MAX};

/// One broker connection and what is owed to it.
pub struct Conn {
    /// The client.
    pub client: Client,
    /// Confirmations not yet sent.
    confirms: Vec<AckToken>,
    /// Credit granted beyond the pool's capacity for waiting retries.
    extra_credit: usize,
    /// The state last seen, to log each change once.
    seen: ConnState,
    /// A failed connection attempt was logged (until it connects).
    told_unreachable: bool,
}

impl Conn {
    /// A connection around a client (connected, or connecting lazily).
    pub fn new(client: Client) -> Conn {
        Conn {
            client,
            confirms: Vec::new(),
            extra_credit: 0,
            seen: ConnState::Lost,
            told_unreachable: false,
        }
    }
}

/// What the hub keeps of a request while it is out of its hands.
enum Held {
    /// The broker holds it until we confirm it with this token.
    Acked(AckToken),
    /// Nobody else holds it (a broker without acknowledgements): enough to
    /// report it if it never finishes.
    Unacked(Box<Request>),
}

struct InFlight {
    conn: usize,
    held: Held,
}

impl InFlight {
    fn token(self) -> Option<(usize, AckToken)> {
        match self.held {
            Held::Acked(t) => Some((self.conn, t)),
            Held::Unacked(_) => None,
        }
    }
}

/// See the module documentation.
pub struct Hub {
    opts: DispatcherOptions,
    conns: Vec<Conn>,
    pool: Option<Pool>,
    jobs: Receiver<Job>,
    done: Receiver<Completion>,
    wake: WakeReceiver,
    /// Jobs for the dispatcher's VM (and, when it is busy, for the pool).
    queue: VecDeque<Job>,
    queue_limit: usize,
    /// Pushed requests that found the queue (or their runner) full, in
    /// arrival order, and their content bytes: placed as room frees.
    held: VecDeque<Job>,
    held_bytes: usize,
    in_flight: HashMap<u64, InFlight>,
    retries: RetryQueue<Job>,
    next_id: u64,
    rng: u64,
    /// The dispatcher's VM is running a request (the hub is called from
    /// its duty): new work goes to the pool.
    pub inline_busy: bool,
    /// A failure that ends the worker, found while called from a duty
    /// (which cannot return it).
    pub fatal: Option<WorkerError>,
    /// The budget of the dispatcher's VM, to shorten at a stop.
    inline_budget: Option<Arc<Budget>>,
    /// Handlers that are not Lua: subjects they match never reach a VM.
    runners: Runners,
    /// Metrics, health, maintenance (see [`HubOps`]).
    ops: HubOps,
    /// `alaska.call`s handed over by the VMs, and those waiting for their
    /// reply.
    calls_rx: Receiver<CallOut>,
    calls: Calls,
    /// The connection the next call goes out on (round robin).
    next_call_conn: usize,
    reach: Arc<Reach>,
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
        Hub {
            retries: RetryQueue::new(opts.retry_pending),
            opts,
            conns,
            jobs: pool.receiver(),
            pool: Some(pool),
            done,
            wake,
            queue: VecDeque::new(),
            queue_limit,
            held: VecDeque::new(),
            held_bytes: 0,
            in_flight: HashMap::new(),
            next_id: 0,
            rng: seed(),
            inline_busy: false,
            fatal: None,
            inline_budget: None,
            runners: Runners::none(),
            ops: HubOps::default(),
            calls_rx: crossbeam_channel::never(),
            calls: Calls::default(),
            next_call_conn: 0,
            reach: Arc::default(),
        }
    }

    /// Where the VMs' `alaska.call`s come from, and the VMs' shared
    /// [`Reach`] (told whether the brokers hold delayed requests).
    pub fn set_calls(&mut self, rx: Receiver<CallOut>, reach: Arc<Reach>) {
        self.calls_rx = rx;
        self.reach = reach;
    }

    /// The runners (HTTP applications, child processes) that take the
    /// subjects they match.
    pub fn set_runners(&mut self, runners: Runners) {
        self.runners = runners;
    }

    /// Counts, health and maintenance from now on (see [`HubOps`]).
    pub fn set_ops(&mut self, ops: HubOps) {
        self.ops = ops;
    }

    /// The budget of the dispatcher's VM (see [`Hub::shorten_inline`]).
    pub fn set_inline_budget(&mut self, budget: Arc<Budget>) {
        self.inline_budget = Some(budget);
    }

    /// A stop was asked while the dispatcher's VM runs a request: that
    /// request gets the shutdown timeout, not the rest of its budget.
    pub fn shorten_inline(&mut self) {
        if let Some(b) = &self.inline_budget {
            b.shorten(self.opts.shutdown_timeout);
        }
    }

    /// Answers every call still waiting for its reply with `why` (the
    /// worker stops).
    pub fn fail_calls(&mut self, why: &str) {
        while let Ok(call) = self.calls_rx.try_recv() {
            call.answer.send(Err(why.to_string()));
        }
        self.calls.fail_all(why);
    }

    /// `worker/shutdown/timeout`.
    pub fn shutdown_timeout(&self) -> Duration {
        self.opts.shutdown_timeout
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
            match c.client.refused_handshake() {
                Some(e) => first = first.or(Some(e)),
                None => return None,
            }
        }
        first
    }

    /// The next job for the dispatcher's VM: its queue first, then what
    /// waits for the pool.
    pub fn take_inline(&mut self) -> Option<Job> {
        if self.queue.is_empty() {
            self.release_held();
        }
        self.queue.pop_front().or_else(|| self.jobs.try_recv().ok())
    }

    /// Whether jobs wait for the dispatcher's VM.
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty() || !self.held.is_empty()
    }

    /// One round of I/O: waits at most `wait` (less when a timer is due),
    /// then handles every delivery, completion and due retry, and sends
    /// what is owed. Errors that end the worker are returned.
    pub fn turn(&mut self, wait: Duration) -> Result<(), WorkerError> {
        let now = Instant::now();
        let mut until = after(now, wait);
        for c in &self.conns {
            until = until.min(c.client.next_deadline());
        }
        if let Some(due) = self.retries.next_due() {
            until = until.min(due);
        }
        let mut timeout = until.saturating_duration_since(now);
        if !timeout.is_zero() {
            // Arm, then a last look at the completions: one that lands in
            // between writes the wake-up byte.
            self.wake.arm();
            if !self.done.is_empty() || !self.calls_rx.is_empty() || self.ops.has_work() {
                timeout = Duration::ZERO;
            }
        }
        let ready = self.poll(timeout)?;
        self.wake.disarm();
        let now = Instant::now();
        for (i, (sock, mon)) in ready.into_iter().enumerate() {
            let r = self.conns[i].client.process(sock, mon, now);
            self.outcome(r)?;
            self.log_state(i);
        }
        // One delivery per connection in turn, so a burst read from one
        // broker does not queue ahead of what another sent meanwhile.
        let mut more = true;
        while more {
            more = false;
            for i in 0..self.conns.len() {
                if let Some(d) = self.conns[i].client.next_delivery() {
                    self.accept(i, d)?;
                    more = true;
                }
            }
        }
        for i in 0..self.conns.len() {
            // What the broker refused of ours (a full mailbox for a reply,
            // a full queue for a forward): said once here, never fatal.
            while let Some(r) = self.conns[i].client.next_refusal() {
                self.calls.refused(i, &r);
                tracing::warn!(endpoint = %self.conns[i].client.endpoint(), "broker refused a send: {r}");
            }
        }
        self.after_turn()
    }

    /// Says once when a connection comes up (offering again) or goes
    /// away; the others keep serving either way.
    fn log_state(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.client.unreachable() && !c.told_unreachable {
            // Said once: libzmq retries every second, the log need not.
            c.told_unreachable = true;
            tracing::warn!(endpoint = %c.client.endpoint(), "broker unreachable (connection refused or dropped); still trying");
        }
        let state = c.client.state();
        if state == c.seen || state == ConnState::Opening {
            return;
        }
        if state == ConnState::Connected {
            c.told_unreachable = false;
        }
        c.seen = state;
        if state == ConnState::Connected {
            tracing::info!(
                endpoint = %c.client.endpoint(),
                acknowledged = c.client.acks_enabled(),
                "broker connected: offering {}",
                self.opts.service
            );
        } else {
            tracing::warn!(endpoint = %c.client.endpoint(), "broker connection lost; reconnecting");
            // Their replies would come to a connection that is gone.
            self.calls.fail_conn(i, "the broker connection was lost");
        }
    }

    /// Polls every connection and the wake-up descriptor; returns what is
    /// readable per connection (socket, monitor).
    fn poll(&mut self, timeout: Duration) -> Result<Vec<(bool, bool)>, WorkerError> {
        let fd = self.wake.as_raw_fd();
        let (ready, woken) = {
            let mut items: Vec<zmq::PollItem<'_>> = Vec::with_capacity(self.conns.len() * 2 + 1);
            for c in &self.conns {
                items.extend(c.client.poll_items());
            }
            items.push(zmq::PollItem::from_fd(fd, zmq::POLLIN));
            match zmq::poll(&mut items, ms(timeout)) {
                // A signal (the one asking us to stop, say): look again.
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(ClientError::Zmq(e).into()),
            }
            let ready: Vec<(bool, bool)> = items
                .chunks(2)
                .take(self.conns.len())
                .map(|p| (p[0].is_readable(), p[1].is_readable()))
                .collect();
            (ready, items[items.len() - 1].is_readable())
        };
        if woken {
            self.wake.drain();
        }
        Ok(ready)
    }

    /// Completions, due retries, confirmations; then, when the
    /// dispatcher's VM is busy, work for the pool.
    fn after_turn(&mut self) -> Result<(), WorkerError> {
        while let Ok(c) = self.done.try_recv() {
            self.complete(c)?;
        }
        while let Ok(call) = self.calls_rx.try_recv() {
            self.start_call(call)?;
        }
        self.calls.expire(Instant::now());
        // alaska.schedule asks this before it promises a delayed send.
        let connected = self
            .conns
            .iter()
            .filter(|c| c.client.state() == ConnState::Connected);
        let mut any = false;
        let all = connected
            .inspect(|_| any = true)
            .all(|c| c.client.supports_delay());
        self.reach.set_delay_supported(any && all);
        self.runners.feed();
        self.release_held();
        let now = Instant::now();
        while let Some(job) = self.retries.pop_due(now) {
            self.place(job)?;
        }
        self.flush_confirms()?;
        if self.inline_busy {
            self.feed_pool();
        }
        let queued =
            self.queue.len() + self.held.len() + self.pool.as_ref().map_or(0, Pool::waiting);
        let (in_flight, retries) = (self.in_flight.len(), self.retries.len());
        if let Some(wish) = self.ops.maintenance_change() {
            for i in 0..self.conns.len() {
                let r = self.conns[i].client.set_maintenance(wish);
                self.outcome(r)?;
            }
        }
        let views = self.conns.iter().map(|c| ConnView::of(&c.client));
        self.ops.after_turn(views, in_flight, queued, retries);
        Ok(())
    }

    /// Moves queued jobs to the pool's VMs while they have room.
    fn feed_pool(&mut self) {
        let Some(pool) = &self.pool else {
            return;
        };
        if pool.size() == 0 {
            return;
        }
        while let Some(job) = self.queue.pop_front() {
            if let Err(job) = pool.try_submit(job) {
                self.queue.push_front(job);
                break;
            }
        }
    }

    fn accept(&mut self, conn: usize, d: Delivery) -> Result<(), WorkerError> {
        match d.kind {
            DeliveryKind::Service => {}
            DeliveryKind::Mailbox if d.tracker.starts_with(CALL_TRACKER) => {
                let error = d.subject.starts_with(ERROR_REPLY_PREFIX);
                if !self.calls.answer(&d.tracker, error, d.content) {
                    tracing::debug!(tracker = %d.tracker, "a call's reply came after its caller stopped waiting; dropped");
                    self.reach.late(false);
                }
                return Ok(());
            }
            DeliveryKind::Mailbox if Envelope::decode(&d.tracker).is_some() => {
                return self.relay(conn, d);
            }
            _ => {
                tracing::debug!(
                    "ignoring {:?} message from {} on {}",
                    d.kind,
                    d.sender,
                    d.address
                );
                return Ok(());
            }
        }
        let ack = d.ack;
        let request = Request::delivered(d);
        if self.opts.verbose {
            let size: usize = request.content.iter().map(Vec::len).sum();
            tracing::info!(
                address = %request.address,
                subject = %request.subject,
                sender = %request.sender,
                attempt = request.attempt,
                hops = request.hops,
                size,
                "request"
            );
        }
        self.next_id += 1;
        let id = self.next_id;
        let held = match ack {
            Some(token) => Held::Acked(token),
            // Only the metadata and the first frame, for the report.
            None => Held::Unacked(Box::new(Request {
                content: request.content.first().cloned().into_iter().collect(),
                ..request.clone()
            })),
        };
        self.in_flight.insert(id, InFlight { conn, held });
        self.ops.received();
        self.place(Job { id, request })
    }

    /// Sends a script's `alaska.call` on the next connected broker (round
    /// robin), its reply to come back to this connection's address with
    /// the call's tracker; the envelope carries the caller's hop count.
    fn start_call(&mut self, out: CallOut) -> Result<(), WorkerError> {
        let n = self.conns.len();
        let Some(conn) = (0..n)
            .map(|k| (self.next_call_conn + k) % n)
            .find(|&i| self.conns[i].client.state() == ConnState::Connected)
        else {
            let _ = out.answer.send(Err("no broker connected".into()));
            return Ok(());
        };
        self.next_call_conn = conn + 1;
        let left = out.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let tracker = self.calls.start(conn, &out);
        let env = Envelope {
            hops: out.hops,
            attempt: 1,
            sender: self.conns[conn].client.address().to_string(),
            tracker: tracker.clone(),
        };
        let Some(wrapped) = env.encode() else {
            self.calls.fail(
                &tracker,
                "the worker's address is too long to carry in a tracker",
            );
            return Ok(());
        };
        // The broker drops the request if no worker takes it before the
        // caller stops waiting: it never runs for nobody.
        let timeout_ms = u32::try_from(left.as_millis().max(1)).unwrap_or(u32::MAX);
        self.ops.sent(SendKind::Call);
        let sent = self.conns[conn].client.sendfor(
            &out.address,
            &out.subject,
            &wrapped,
            timeout_ms,
            out.content,
        );
        if let Err(e) = &sent {
            self.calls.fail(&tracker, &format!("cannot send: {e}"));
        }
        self.outcome(sent)
    }

    /// A reply mailed to us by a stage we forwarded to that does not know
    /// about envelopes: pass it on to the original requester.
    fn relay(&mut self, conn: usize, d: Delivery) -> Result<(), WorkerError> {
        let Some(env) = Envelope::decode(&d.tracker) else {
            return Ok(());
        };
        tracing::debug!(to = %env.sender, subject = %d.subject, "relaying a reply");
        let sent =
            self.conns[conn]
                .client
                .sendto(&env.sender, &d.subject, &env.tracker, 0, d.content);
        self.outcome(sent)
    }

    /// Puts a job where it will run soonest: the dispatcher's queue when
    /// its VM is free (or will be, before the pool could start it), the
    /// pool when the dispatcher's VM is busy. Beyond the bound, a job from
    /// a broker that pushes is held (behind those held before it), any
    /// other is not run.
    fn place(&mut self, job: Job) -> Result<(), WorkerError> {
        if !self.held.is_empty() && self.pushed(job.id) {
            // First come, first run.
            return self.hold(job);
        }
        match self.try_place(job) {
            Ok(()) => Ok(()),
            Err((job, _)) if self.pushed(job.id) => self.hold(job),
            Err((job, text)) => {
                tracing::warn!(subject = %job.request.subject, "{text}");
                self.unrun(job, &text, false)
            }
        }
    }

    /// Whether a broker that pushes (no acknowledgements) sent this job.
    fn pushed(&self, id: u64) -> bool {
        matches!(
            self.in_flight.get(&id),
            Some(InFlight {
                held: Held::Unacked(_),
                ..
            })
        )
    }

    /// Queues a job for a VM or hands it to its runner; gives it back, with
    /// why, when that is full.
    #[allow(clippy::result_large_err)]
    fn try_place(&mut self, job: Job) -> Result<(), (Job, String)> {
        let extra: usize = self.conns.iter().map(|c| c.extra_credit).sum();
        if let Some(i) = self.runners.route(&job.request.subject) {
            return self.runners.place(i, job, extra).map_err(|(job, runner)| {
                (job, format!("runner {runner} overloaded; request not run"))
            });
        }
        if self.queue.len() >= self.queue_limit + extra {
            let text = format!(
                "worker overloaded: {} requests waiting; request not run",
                self.queue.len()
            );
            return Err((job, text));
        }
        self.ops.placed(job.id);
        self.queue.push_back(job);
        if self.inline_busy {
            self.feed_pool();
        }
        Ok(())
    }

    /// Holds a pushed job until there is room; beyond `hold_max` jobs or
    /// `hold_bytes` (by default [`HOLD_MAX`], [`HOLD_BYTES`]), it is not
    /// run.
    fn hold(&mut self, job: Job) -> Result<(), WorkerError> {
        let size = content_bytes(&job.request);
        if self.held.len() >= self.opts.hold_max || self.held_bytes + size > self.opts.hold_bytes {
            let text = format!(
                "worker overloaded: {} requests waiting and {} more requests ({} bytes) held; \
                 request not run",
                self.queue.len(),
                self.held.len(),
                self.held_bytes
            );
            tracing::warn!(subject = %job.request.subject, "{text}");
            return self.unrun(job, &text, false);
        }
        if self.held.is_empty() {
            tracing::debug!("queue full: holding what the broker pushes until there is room");
        }
        self.held_bytes += size;
        self.held.push_back(job);
        Ok(())
    }

    /// Places held jobs, oldest first, while there is room.
    fn release_held(&mut self) {
        while let Some(job) = self.held.pop_front() {
            let size = content_bytes(&job.request);
            self.held_bytes -= size;
            if let Err((job, _)) = self.try_place(job) {
                self.held_bytes += size;
                self.held.push_front(job);
                break;
            }
        }
    }

    /// Carries out what a finished request decided.
    pub fn complete(&mut self, c: Completion) -> Result<(), WorkerError> {
        let Completion { id, request, run } = c;
        self.ops.finished(id, &request.subject, &run);
        if run.error().is_some_and(|e| e.kind == ErrorKind::Stopped) {
            // Cut short by our stop, not by its own fault: back to the
            // broker when it holds it, else reported.
            let text = run.error().map(|e| e.message.clone()).unwrap_or_default();
            return self.unrun(Job { id, request }, &text, true);
        }
        let conn = self.in_flight.get(&id).map(|f| f.conn).unwrap_or(0);
        for out in run.outputs {
            let client = &mut self.conns[conn].client;
            self.ops.sent(match out {
                Output::Stream { .. } => SendKind::Stream,
                Output::Mail { .. } => SendKind::Mail,
                Output::Delayed { .. } => SendKind::Schedule,
            });
            let sent = match out {
                Output::Stream {
                    stream,
                    subject,
                    content,
                } => client
                    .switch_producer(&stream)
                    .and_then(|_| client.send(&subject, content)),
                Output::Mail {
                    address,
                    subject,
                    content,
                } => client.sendto(&address, &subject, "", 0, content),
                Output::Delayed {
                    address,
                    subject,
                    content,
                    delay,
                } => match client.sendfor_delayed(&address, &subject, "", 0, content, delay) {
                    // The script was told the brokers hold delayed
                    // requests; this one's broker went away or changed since.
                    Err(e @ (ClientError::Unsupported(_) | ClientError::NotConnected(_))) => {
                        tracing::warn!(to = %address, subject = %subject, "alaska.schedule not sent: {e}");
                        Ok(())
                    }
                    other => other,
                },
            };
            self.outcome(sent)?;
        }
        let jitter = self.jitter();
        let decision = self.opts.policy.decide(&request, run.result, jitter);
        if self.opts.verbose {
            tracing::info!(
                subject = %request.subject,
                sender = %request.sender,
                attempt = request.attempt,
                "outcome: {}",
                decision.name()
            );
        }
        match decision {
            Decision::Done { reply } => {
                if let (Some(reply), true) = (reply, request.wants_reply()) {
                    self.ops.sent(SendKind::Reply);
                    let sent = self.conns[conn].client.sendto(
                        &request.sender,
                        &request.subject,
                        &request.tracker,
                        0,
                        vec![reply],
                    );
                    self.outcome(sent)?;
                }
            }
            Decision::Drop => {}
            Decision::Forward {
                address,
                subject,
                tracker,
                content,
                delay,
            } => {
                self.ops.sent(SendKind::Forward);
                let client = &mut self.conns[conn].client;
                let sent = match delay {
                    Some(d) => client.sendfor_delayed(&address, &subject, &tracker, 0, content, d),
                    None => client.sendfor(&address, &subject, &tracker, 0, content),
                };
                match sent {
                    Err(e @ (ClientError::Unsupported(_) | ClientError::NotConnected(_))) => {
                        let text = format!("delayed forward to {address}/{subject} refused: {e}");
                        tracing::warn!(subject = %request.subject, "dead letter: {text}");
                        self.dead_letter(conn, &request, &text, "forward")?;
                    }
                    other => self.outcome(other)?,
                }
            }
            Decision::DeadLetter { text, kind } => {
                tracing::warn!(
                    subject = %request.subject,
                    sender = %request.sender,
                    kind = kind.map(|k| k.name()).unwrap_or("fail"),
                    "dead letter: {text}"
                );
                self.dead_letter(
                    conn,
                    &request,
                    &text,
                    kind.map(|k| k.name()).unwrap_or("fail"),
                )?;
            }
            Decision::Retry { delay } => {
                return self.schedule_retry(id, conn, request, delay);
            }
        }
        // Acknowledge after the results are sent: if we die before this,
        // the broker redelivers (at-least-once), and nothing is lost.
        self.confirm(id)
    }

    /// Queues the confirmation of job `id` (sent in batches).
    fn confirm(&mut self, id: u64) -> Result<(), WorkerError> {
        if let Some((conn, token)) = self.in_flight.remove(&id).and_then(InFlight::token) {
            let c = &mut self.conns[conn];
            c.confirms.push(token);
            if c.confirms.len() >= CONFIRM_BATCH {
                let tokens = std::mem::take(&mut c.confirms);
                let sent = c.client.confirm_all(&tokens);
                self.outcome(sent)?;
            }
        }
        Ok(())
    }

    /// Sends the confirmations owed, one command per connection.
    pub fn flush_confirms(&mut self) -> Result<(), WorkerError> {
        for i in 0..self.conns.len() {
            if self.conns[i].confirms.is_empty() {
                continue;
            }
            let tokens = std::mem::take(&mut self.conns[i].confirms);
            let sent = self.conns[i].client.confirm_all(&tokens);
            self.outcome(sent)?;
        }
        Ok(())
    }

    /// Keeps `request` for its next attempt after `delay`; still
    /// unconfirmed, so the broker has it if we die.
    fn schedule_retry(
        &mut self,
        id: u64,
        conn: usize,
        mut request: Request,
        delay: Duration,
    ) -> Result<(), WorkerError> {
        request.attempt += 1;
        let at = after(Instant::now(), delay);
        if let Err(job) = self.retries.push(at, Job { id, request }) {
            let text = format!(
                "dead letter: retry asked, but {} retries already wait (worker/retry/pending)",
                self.retries.len()
            );
            tracing::warn!(subject = %job.request.subject, "{text}");
            self.dead_letter(conn, &job.request, &text, "retry_overflow")?;
            return self.confirm(job.id);
        }
        tracing::debug!(delay = ?delay, "retry scheduled");
        // One more credit for each waiting retry beyond the most that ever
        // waited on this connection, so they do not shrink its window.
        let waiting = self
            .retries
            .count_where(|j| self.in_flight.get(&j.id).is_some_and(|f| f.conn == conn));
        let c = &mut self.conns[conn];
        if c.client.acks_enabled() && waiting > c.extra_credit {
            c.extra_credit += 1;
            let granted = c.client.post(Message::Credit { amount: 1 });
            self.outcome(granted)?;
        }
        Ok(())
    }

    /// A dead letter: the report to the error mailbox (subject, text,
    /// original first frame), and an error reply to a requester that waits
    /// (or to any, with `errors_reply`).
    /// `outcome` names why (`fail`, an error kind, `overloaded`, ...) in the
    /// report's metadata frame (see [`super::outcomes::dead_letter_frames`]).
    fn dead_letter(
        &mut self,
        conn: usize,
        req: &Request,
        text: &str,
        outcome: &str,
    ) -> Result<(), WorkerError> {
        self.ops.dead_letter();
        if self.opts.errors_notify {
            self.ops.sent(SendKind::ErrorReport);
            let mailbox = self.opts.errors_mailbox.clone();
            let frames = super::outcomes::dead_letter_frames(
                req,
                text,
                outcome,
                std::time::SystemTime::now(),
            );
            let sent = self.conns[conn]
                .client
                .sendto(&mailbox, &clip(&req.subject), "", 0, frames);
            self.outcome(sent)?;
        }
        if (self.opts.errors_reply || req.wants_reply()) && !req.sender.is_empty() {
            self.ops.sent(SendKind::ErrorReply);
            let subject = clip(&format!("{ERROR_REPLY_PREFIX}{}", req.subject));
            let sent = self.conns[conn].client.sendto(
                &req.sender,
                &subject,
                &req.tracker,
                0,
                vec![text.as_bytes().to_vec()],
            );
            self.outcome(sent)?;
        }
        Ok(())
    }

    /// A request that was received but will not run here. At a stop, an
    /// acknowledged one is left to the broker (it goes to another worker
    /// when we close) and an unacknowledged one is handed back to its
    /// service. Otherwise an acknowledged one is handed back and confirmed
    /// (the credit bounds what the broker sends, so this takes a broker
    /// that gives more than it was allowed), and an unacknowledged one is a
    /// dead letter saying why.
    fn unrun(&mut self, job: Job, text: &str, stopping: bool) -> Result<(), WorkerError> {
        self.ops.forget(job.id);
        let (conn, acked) = match self.in_flight.get(&job.id) {
            Some(f) => (f.conn, matches!(f.held, Held::Acked(_))),
            None => (0, false),
        };
        if acked && stopping {
            // Unconfirmed: the broker gives it again when we are gone.
            self.in_flight.remove(&job.id);
            tracing::warn!(subject = %job.request.subject, "{text}; returned to the broker");
            return Ok(());
        }
        if acked {
            // Left unconfirmed while we run on, it would wait for our end
            // and hold a credit until then: hand it to another worker of
            // the service now, then confirm our copy.
            self.send_back(conn, &job.request, text)?;
            return self.confirm(job.id);
        }
        self.in_flight.remove(&job.id);
        if stopping {
            return self.send_back(conn, &job.request, text);
        }
        self.dead_letter(conn, &job.request, text, "unrun")
    }

    /// Hands a waiting retry back to its service, then confirms our copy.
    fn hand_back(&mut self, job: Job) -> Result<(), WorkerError> {
        let conn = self.in_flight.get(&job.id).map(|f| f.conn).unwrap_or(0);
        self.send_back(
            conn,
            &job.request,
            "worker stopping with this request waiting for a retry",
        )?;
        self.confirm(job.id)
    }

    /// Sends a request back to its service for another worker, with its
    /// attempt count and requester in the envelope tracker; a dead letter
    /// (saying `why`) when the envelope does not fit.
    fn send_back(&mut self, conn: usize, r: &Request, why: &str) -> Result<(), WorkerError> {
        let env = Envelope {
            hops: r.hops,
            attempt: r.attempt,
            sender: r.sender.clone(),
            tracker: r.tracker.clone(),
        };
        match env.encode() {
            Some(tracker) => {
                tracing::info!(subject = %r.subject, "{why}: handed back to {}", r.address);
                self.ops.sent(SendKind::HandBack);
                let sent = self.conns[conn].client.sendfor(
                    &r.address,
                    &r.subject,
                    &tracker,
                    0,
                    r.content.clone(),
                );
                self.outcome(sent)
            }
            None => self.dead_letter(
                conn,
                r,
                &format!(
                    "{why}; it could not be handed back (requester address and tracker too long)"
                ),
                "unrun",
            ),
        }
    }

    /// A send that failed because the outbox is full is logged by the
    /// client and dropped; anything else is fatal for the connection.
    fn outcome(&mut self, r: Result<(), ClientError>) -> Result<(), WorkerError> {
        match r {
            Ok(()) | Err(ClientError::OutboxFull(_)) => Ok(()),
            Err(e @ ClientError::Encode(_)) => {
                tracing::warn!("cannot send a script's message: {e}");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn jitter(&mut self) -> f64 {
        // xorshift64: enough to spread retries of a burst.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Graceful stop: no new work, the pool's running requests finish
    /// within the shutdown timeout and their results are sent, waiting
    /// retries are handed back, the rest is reported, the connections are
    /// closed politely.
    pub fn stop(mut self) -> Result<(), WorkerError> {
        // Nobody runs a script to the end of a call now.
        self.calls.fail_all("the worker is stopping");
        self.ops.draining(self.in_flight.len());
        tracing::info!(
            running = self.in_flight.len()
                - self.retries.len()
                - self.queue.len()
                - self.runners.backlogged(),
            queued = self.queue.len(),
            retries_waiting = self.retries.len(),
            "stopping: finishing requests already received (up to {:?})",
            self.opts.shutdown_timeout
        );
        // Runners wait for their running requests alongside the pool, up
        // to the same deadline.
        let deadline = after(Instant::now(), self.opts.shutdown_timeout);
        let runners_unstarted = self.runners.stop_taking(deadline);
        let mut unstarted = match self.pool.take() {
            Some(pool) => pool.shutdown(self.opts.shutdown_timeout),
            None => Vec::new(),
        };
        std::mem::replace(&mut self.runners, Runners::none()).finish();
        unstarted.extend(runners_unstarted);
        // Completions of everything that finished in time; retries they
        // ask for now are handed back with the others.
        while let Ok(c) = self.done.try_recv() {
            self.complete(c)?;
        }
        let waiting = self.retries.drain();
        if !waiting.is_empty() {
            tracing::info!(
                "handing {} waiting retries back to the broker",
                waiting.len()
            );
        }
        for job in waiting {
            self.hand_back(job)?;
        }
        let leftovers: Vec<Job> = unstarted
            .into_iter()
            .chain(self.queue.drain(..))
            .chain(self.held.drain(..))
            .collect();
        self.held_bytes = 0;
        for job in leftovers {
            self.unrun(job, "worker stopping: request received but not run", true)?;
        }
        self.flush_confirms()?;
        let unfinished: Vec<InFlight> = self.in_flight.drain().map(|(_, v)| v).collect();
        if !unfinished.is_empty() {
            tracing::warn!(
                "{} request(s) did not finish in time (left to the broker when acknowledged, \
                 else reported)",
                unfinished.len()
            );
        }
        for f in unfinished {
            if let Held::Unacked(req) = f.held {
                self.dead_letter(
                    f.conn,
                    &req,
                    "worker stopping: request did not finish in time",
                    "stopped",
                )?;
            }
        }
        // Deliveries that arrived during the stop are not run either.
        for i in 0..self.conns.len() {
            let deadline = after(Instant::now(), Duration::from_millis(50));
            while let Some(d) = self.conns[i]
                .client
                .recv(deadline.saturating_duration_since(Instant::now()))?
            {
                if d.kind == DeliveryKind::Service && d.ack.is_none() {
                    let req = Request::delivered(d);
                    self.send_back(i, &req, "worker stopping: request received but not run")?;
                }
            }
        }
        tracing::info!("stopped");
        for c in self.conns {
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

/// A seed for backoff jitter; quality does not matter, spread does.
fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ ((std::process::id() as u64) << 32)) | 1
}

/// Subjects on the wire are at most 255 bytes; cut on a char boundary.
fn clip(s: &str) -> String {
    if s.len() <= 255 {
        return s.to_string();
    }
    let mut end = 255;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Milliseconds for `zmq::poll`, rounded up so a wait of 0.4 ms does not
/// become a busy loop.
fn ms(d: Duration) -> i64 {
    let m = d.as_micros().div_ceil(1000);
    m.min(i64::MAX as u128) as i64
}

/// The bytes of a request's content frames.
fn content_bytes(r: &Request) -> usize {
    r.content.iter().map(Vec::len).sum()
}
