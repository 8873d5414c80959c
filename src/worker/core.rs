//! The worker's core: every rule about requests, without a socket, a
//! thread or a clock.
//!
//! It keeps the queue for the dispatcher's VM, the requests held back from
//! a broker that pushes, the requests in flight and how each is held (an
//! acknowledgement token, or a copy to report), the retries and their due
//! times, the confirmations owed to each connection (sent in batches), the
//! credit granted for waiting retries, dead letters, hand-backs at a stop,
//! and the scripts' `alaska.call`s waiting for their replies.
//!
//! Events come in with the time they happen at ([`Core::delivery`],
//! [`Core::completion`], [`Core::tick`], [`Core::connection_up`], ...);
//! what must go over a connection comes out as [`Action`]s, in order, for
//! the shell (the [`super::hub::Hub`]) to carry out. Where a request can
//! run is asked of an [`Outlets`] (the pool's VMs and the runners), whose
//! bounded queues answer at once "taken" or "full": that answer decides
//! what the core does next, so it is a call and not an action.
//! [`Core::next_deadline`] tells the shell how long it may poll.
//!
//! The same rules therefore run in the worker and in the unit tests below,
//! which drive them with a fake clock and fake outlets, and read the
//! actions.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::metrics::SendKind;
use super::options::{DispatcherOptions, ERROR_REPLY_PREFIX};
use super::outcomes::{Decision, Envelope, RetryQueue};
use super::reach::{CallOut, Calls, Reach, CALL_TRACKER};
use super::status::HubOps;
use super::types::{Completion, ErrorKind, Job, Output, Request};
use crate::mlm::{AckToken, Delivery, DeliveryKind, Refusal};
use crate::time::after;

/// Confirmations sent at once at most; beyond, they go out at once.
pub const CONFIRM_BATCH: usize = 64;

/// The time of an event: monotonic for timers, wall clock for what reports
/// say.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// For retries and deadlines.
    pub at: Instant,
    /// For the time a dead letter reports.
    pub wall: SystemTime,
}

impl Now {
    /// The real time.
    pub fn real() -> Now {
        Now {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// What the shell sends over connection `conn` (an index in the endpoint
/// list), in the order the core asks.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// MAILBOX SEND (a reply, a mail, a dead letter, a relayed reply).
    SendTo {
        /// The connection.
        conn: usize,
        /// The mailbox.
        address: String,
        /// Subject.
        subject: String,
        /// Tracker.
        tracker: String,
        /// Frames.
        content: Vec<Vec<u8>>,
    },
    /// SERVICE SEND (a forward, a hand-back, a call), with a timeout in ms
    /// (0: none) or a delay (the broker holds it that long first).
    SendFor {
        /// The connection.
        conn: usize,
        /// The service.
        address: String,
        /// Subject.
        subject: String,
        /// Tracker.
        tracker: String,
        /// Milliseconds the broker keeps it queued at most (0: no limit).
        timeout_ms: u32,
        /// Held by the broker this long before it is queued.
        delay: Option<Duration>,
        /// Frames.
        content: Vec<Vec<u8>>,
        /// What it is, for when the connection refuses it after all.
        origin: Origin,
    },
    /// STREAM SEND on `stream` (switching the producer first).
    Stream {
        /// The connection.
        conn: usize,
        /// The stream.
        stream: String,
        /// Subject.
        subject: String,
        /// Frames.
        content: Vec<Vec<u8>>,
    },
    /// Confirms these deliveries (one command).
    Confirm {
        /// The connection.
        conn: usize,
        /// Their tokens.
        tokens: Vec<AckToken>,
    },
    /// Grants this much more credit.
    Credit {
        /// The connection.
        conn: usize,
        /// How many requests more.
        amount: u16,
    },
    /// The broker redelivers this request after `delay` (JetStream's
    /// negative acknowledgement): a retry on a connection whose broker
    /// redelivers.
    Nak {
        /// The connection.
        conn: usize,
        /// The delivery.
        token: AckToken,
        /// When to deliver it again.
        delay: Duration,
    },
    /// The broker never delivers this request again, and does not count it
    /// done (JetStream's `+TERM`): a dead letter or a drop on a connection
    /// whose broker redelivers.
    Term {
        /// The connection.
        conn: usize,
        /// The delivery.
        token: AckToken,
    },
    /// Enters (true) or leaves maintenance.
    Maintenance {
        /// The connection.
        conn: usize,
        /// The wish.
        on: bool,
    },
}

/// What a [`Action::SendFor`] is, so that a send the connection refuses
/// after all (it went away or changed since the core looked) is handled.
#[derive(Debug, PartialEq, Eq)]
pub enum Origin {
    /// A forward or a hand-back: the client's error is the worker's.
    Plain,
    /// A script's `alaska.call` with this tracker (before the envelope):
    /// its caller is told with [`Core::call_not_sent`].
    Call(String),
    /// A delayed forward of this request: a refused delay is a dead letter
    /// ([`Core::delayed_refused`]).
    DelayedForward(Box<Request>),
}

/// Where a request can run besides the dispatcher's own VM: the pool's VMs
/// and the runners. Each answers at once (their queues are bounded).
pub trait Outlets {
    /// The runner that takes `subject`, if any.
    fn route(&self, subject: &str) -> Option<usize>;
    /// Gives `job` to runner `i` (its backlog may grow by `extra` beyond
    /// its limit); gives it back, with the runner's name, when full.
    #[allow(clippy::result_large_err)]
    fn to_runner(&mut self, i: usize, job: Job, extra: usize) -> Result<(), (Job, String)>;
    /// Gives `job` to the pool's VMs; gives it back when they are full (or
    /// there are none).
    #[allow(clippy::result_large_err)]
    fn to_pool(&mut self, job: Job) -> Result<(), Job>;
    /// Takes back a job the pool's VMs have not started (for the
    /// dispatcher's VM, when it is idle).
    fn take_back(&mut self) -> Option<Job>;
    /// Jobs waiting for the pool's VMs.
    fn pool_waiting(&self) -> usize;
}

/// What the core knows of one connection.
#[derive(Debug, Default)]
struct Link {
    /// Our address on it (the sender of our calls).
    address: String,
    /// Connected: calls may go out on it.
    up: bool,
    /// It acknowledges deliveries (credit, confirmations).
    acks: bool,
    /// It holds delayed requests (`delay/1`).
    delay: bool,
    /// Confirmations not yet sent.
    confirms: Vec<AckToken>,
    /// Credit granted beyond the pool's capacity for waiting retries.
    extra_credit: usize,
    /// Its broker redelivers what is not acknowledged, after a delay we
    /// may name (JetStream): a retry is handed to it ([`Action::Nak`]), a
    /// dead letter or drop ends there ([`Action::Term`]).
    redelivers: bool,
}

/// How a request ends on a broker that redelivers.
enum Settle {
    /// Deliver it again after this long.
    Nak(Duration),
    /// Never again.
    Term,
}

/// What the core keeps of a request while it is out of its hands.
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
pub struct Core {
    opts: DispatcherOptions,
    links: Vec<Link>,
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
    /// The dispatcher's VM is running a request: new work goes to the pool.
    inline_busy: bool,
    /// `alaska.call`s sent and waiting for their reply.
    calls: Calls,
    /// The connection the next call goes out on (round robin).
    next_call_conn: usize,
    /// Counts, health and maintenance.
    pub ops: HubOps,
    /// Counts late call replies.
    reach: Arc<Reach>,
    actions: Vec<Action>,
}

impl Core {
    /// A core for connections whose addresses (ours on each) are given;
    /// `queue_limit` bounds the requests waiting for a VM, over all
    /// connections. Every connection starts down.
    pub fn new(opts: DispatcherOptions, addresses: Vec<String>, queue_limit: usize) -> Core {
        Core {
            retries: RetryQueue::new(opts.retry_pending),
            opts,
            links: addresses
                .into_iter()
                .map(|address| Link {
                    address,
                    ..Link::default()
                })
                .collect(),
            queue: VecDeque::new(),
            queue_limit,
            held: VecDeque::new(),
            held_bytes: 0,
            in_flight: HashMap::new(),
            next_id: 0,
            rng: seed(),
            inline_busy: false,
            calls: Calls::default(),
            next_call_conn: 0,
            ops: HubOps::default(),
            reach: Arc::default(),
            actions: Vec::new(),
        }
    }

    /// Where late call replies are counted.
    pub fn set_reach(&mut self, reach: Arc<Reach>) {
        self.reach = reach;
    }

    /// Seeds the retry jitter (tests: a repeatable spread).
    pub fn seed_jitter(&mut self, seed: u64) {
        self.rng = seed | 1;
    }

    /// The actions owed, in order; the shell carries them out and may
    /// hand the (emptied) vector back with [`Core::recycle`].
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// Gives back the vector [`Core::take_actions`] returned, emptied, so
    /// its allocation serves the next turn.
    pub fn recycle(&mut self, mut v: Vec<Action>) {
        if self.actions.is_empty() {
            v.clear();
            self.actions = v;
        }
    }

    /// `worker/shutdown/timeout`.
    pub fn shutdown_timeout(&self) -> Duration {
        self.opts.shutdown_timeout
    }

    /// When the core next has something to do by itself (a retry due).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.retries.next_due()
    }

    /// The dispatcher's VM starts (true) or ends (false) running a request.
    pub fn set_inline_busy(&mut self, busy: bool, out: &mut impl Outlets) {
        self.inline_busy = busy;
        if busy {
            self.feed_pool(out);
        }
    }

    /// Whether the dispatcher's VM is running a request.
    pub fn inline_busy(&self) -> bool {
        self.inline_busy
    }

    /// Requests received and not finished (queued, running, waiting for a
    /// retry).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Requests waiting to run, here and for the pool.
    pub fn queued(&self, out: &impl Outlets) -> usize {
        self.queue.len() + self.held.len() + out.pool_waiting()
    }

    /// Retries waiting for their time.
    pub fn retries(&self) -> usize {
        self.retries.len()
    }

    /// Calls waiting for their reply.
    pub fn calls_waiting(&self) -> usize {
        self.calls.len()
    }

    /// Whether connection `conn` holds delayed requests.
    pub fn delay_everywhere(&self) -> bool {
        let mut up = self.links.iter().filter(|l| l.up).peekable();
        up.peek().is_some() && up.all(|l| l.delay)
    }

    /// Connection `conn` is up (again): calls may use it; `acks` and
    /// `delay` are what its broker does.
    pub fn connection_up(&mut self, conn: usize, acks: bool, delay: bool) {
        let l = &mut self.links[conn];
        l.up = true;
        l.acks = acks;
        l.delay = delay;
    }

    /// Whether connection `conn`'s broker redelivers (see
    /// [`Action::Nak`]); set once, before its deliveries.
    pub fn set_redelivers(&mut self, conn: usize, on: bool) {
        self.links[conn].redelivers = on;
    }

    /// Connection `conn` went away: the calls sent on it will get no reply.
    pub fn connection_down(&mut self, conn: usize) {
        self.links[conn].up = false;
        self.calls.fail_conn(conn, "the broker connection was lost");
    }

    /// The broker refused something we sent on `conn` (a full queue for a
    /// call answers the oldest call to that service).
    pub fn refused(&mut self, conn: usize, r: &Refusal) {
        self.calls.refused(conn, r);
    }

    /// The next job for the dispatcher's VM: its queue first, then what
    /// waits for the pool.
    pub fn take_inline(&mut self, out: &mut impl Outlets) -> Option<Job> {
        if self.queue.is_empty() {
            self.release_held(out);
        }
        self.queue.pop_front().or_else(|| out.take_back())
    }

    /// Whether jobs wait for the dispatcher's VM.
    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty() || !self.held.is_empty()
    }

    /// What is due by `now`: calls out of time are answered, held requests
    /// placed where room freed, due retries placed, confirmations flushed,
    /// and (while the dispatcher's VM is busy) queued jobs fed to the pool.
    pub fn tick(&mut self, now: Now, out: &mut impl Outlets) {
        self.calls.expire(now.at);
        self.release_held(out);
        while let Some(job) = self.retries.pop_due(now.at) {
            self.place(job, now, out);
        }
        self.flush_confirms();
        if self.inline_busy {
            self.feed_pool(out);
        }
    }

    /// Maintenance asked (or ended): said on every connection.
    pub fn maintenance(&mut self, on: bool) {
        for conn in 0..self.links.len() {
            self.actions.push(Action::Maintenance { conn, on });
        }
    }

    /// A delivery on connection `conn`: a service request is numbered and
    /// placed; a mail is a call's reply or a reply to relay; the rest is
    /// ignored.
    pub fn delivery(&mut self, conn: usize, d: Delivery, now: Now, out: &mut impl Outlets) {
        match d.kind {
            DeliveryKind::Service => {}
            DeliveryKind::Mailbox if d.tracker.starts_with(CALL_TRACKER) => {
                let error = d.subject.starts_with(ERROR_REPLY_PREFIX);
                if !self.calls.answer(&d.tracker, error, d.content) {
                    tracing::debug!(tracker = %d.tracker, "a call's reply came after its caller stopped waiting; dropped");
                    self.reach.late(false);
                }
                return;
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
                return;
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
        self.place(Job { id, request }, now, out);
    }

    /// A script's `alaska.call`: sent on the next connected broker (round
    /// robin), its reply to come back to our address there with the call's
    /// tracker; the envelope carries the caller's hop count.
    pub fn call(&mut self, call: CallOut, now: Now) {
        let n = self.links.len();
        let Some(conn) = (0..n)
            .map(|k| (self.next_call_conn + k) % n)
            .find(|&i| self.links[i].up)
        else {
            let _ = call.answer.send(Err("no broker connected".into()));
            return;
        };
        self.next_call_conn = conn + 1;
        let left = call.deadline.saturating_duration_since(now.at);
        if left.is_zero() {
            return;
        }
        let tracker = self.calls.start(conn, &call);
        let env = Envelope {
            hops: call.hops,
            attempt: 1,
            sender: self.links[conn].address.clone(),
            tracker: tracker.clone(),
        };
        let Some(wrapped) = env.encode() else {
            self.calls.fail(
                &tracker,
                "the worker's address is too long to carry in a tracker",
            );
            return;
        };
        // The broker drops the request if no worker takes it before the
        // caller stops waiting: it never runs for nobody.
        let timeout_ms = u32::try_from(left.as_millis().max(1)).unwrap_or(u32::MAX);
        self.ops.sent(SendKind::Call);
        self.actions.push(Action::SendFor {
            conn,
            address: call.address,
            subject: call.subject,
            tracker: wrapped,
            timeout_ms,
            delay: None,
            content: call.content,
            origin: Origin::Call(tracker),
        });
    }

    /// A call the shell could not send (its connection refused it): its
    /// caller is answered with why.
    pub fn call_not_sent(&mut self, tracker: &str, why: &str) {
        self.calls.fail(tracker, why);
    }

    /// Answers every call still waiting for its reply with `why`.
    pub fn fail_calls(&mut self, why: &str) {
        self.calls.fail_all(why);
    }

    /// A reply mailed to us by a stage we forwarded to that does not know
    /// about envelopes: pass it on to the original requester.
    fn relay(&mut self, conn: usize, d: Delivery) {
        let Some(env) = Envelope::decode(&d.tracker) else {
            return;
        };
        tracing::debug!(to = %env.sender, subject = %d.subject, "relaying a reply");
        self.actions.push(Action::SendTo {
            conn,
            address: env.sender,
            subject: d.subject,
            tracker: env.tracker,
            content: d.content,
        });
    }

    /// Moves queued jobs to the pool's VMs while they have room.
    fn feed_pool(&mut self, out: &mut impl Outlets) {
        while let Some(job) = self.queue.pop_front() {
            if let Err(job) = out.to_pool(job) {
                self.queue.push_front(job);
                break;
            }
        }
    }

    /// Puts a job where it will run soonest: the dispatcher's queue when
    /// its VM is free (or will be, before the pool could start it), the
    /// pool when the dispatcher's VM is busy. Beyond the bound, a job from
    /// a broker that pushes is held (behind those held before it), any
    /// other is not run.
    fn place(&mut self, job: Job, now: Now, out: &mut impl Outlets) {
        if !self.held.is_empty() && self.pushed(job.id) {
            // First come, first run.
            return self.hold(job, now);
        }
        match self.try_place(job, out) {
            Ok(()) => {}
            Err((job, _)) if self.pushed(job.id) => self.hold(job, now),
            Err((job, text)) => {
                tracing::warn!(subject = %job.request.subject, "{text}");
                self.unrun(job, &text, false, now)
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
    fn try_place(&mut self, job: Job, out: &mut impl Outlets) -> Result<(), (Job, String)> {
        let extra: usize = self.links.iter().map(|c| c.extra_credit).sum();
        if let Some(i) = out.route(&job.request.subject) {
            return out.to_runner(i, job, extra).map_err(|(job, runner)| {
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
            self.feed_pool(out);
        }
        Ok(())
    }

    /// Holds a pushed job until there is room; beyond `hold_max` jobs or
    /// `hold_bytes`, it is not run.
    fn hold(&mut self, job: Job, now: Now) {
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
            return self.unrun(job, &text, false, now);
        }
        if self.held.is_empty() {
            tracing::debug!("queue full: holding what the broker pushes until there is room");
        }
        self.held_bytes += size;
        self.held.push_back(job);
    }

    /// Places held jobs, oldest first, while there is room.
    fn release_held(&mut self, out: &mut impl Outlets) {
        while let Some(job) = self.held.pop_front() {
            let size = content_bytes(&job.request);
            self.held_bytes -= size;
            if let Err((job, _)) = self.try_place(job, out) {
                self.held_bytes += size;
                self.held.push_front(job);
                break;
            }
        }
    }

    /// Carries out what a finished request decided: its sends in order,
    /// then the reply, forward, dead letter or retry; then its
    /// confirmation (after the results, so if we die before it the broker
    /// redelivers, and nothing is lost).
    pub fn completion(&mut self, c: Completion, now: Now) {
        let Completion { id, request, run } = c;
        self.ops.finished(id, &request.subject, &run);
        if run.error().is_some_and(|e| e.kind == ErrorKind::Stopped) {
            // Cut short by our stop, not by its own fault: back to the
            // broker when it holds it, else reported.
            let text = run.error().map(|e| e.message.clone()).unwrap_or_default();
            return self.unrun(Job { id, request }, &text, true, now);
        }
        let conn = self.in_flight.get(&id).map(|f| f.conn).unwrap_or(0);
        for o in run.outputs {
            match o {
                Output::Stream {
                    stream,
                    subject,
                    content,
                } => {
                    self.ops.sent(SendKind::Stream);
                    self.actions.push(Action::Stream {
                        conn,
                        stream,
                        subject,
                        content,
                    });
                }
                Output::Mail {
                    address,
                    subject,
                    content,
                } => {
                    self.ops.sent(SendKind::Mail);
                    self.actions.push(Action::SendTo {
                        conn,
                        address,
                        subject,
                        tracker: String::new(),
                        content,
                    });
                }
                Output::Delayed {
                    address,
                    subject,
                    content,
                    delay,
                } => {
                    self.ops.sent(SendKind::Schedule);
                    if !self.links[conn].up || !self.links[conn].delay {
                        // The script was told the brokers hold delayed
                        // requests; this one's broker went away or changed
                        // since.
                        tracing::warn!(to = %address, subject = %subject, "alaska.schedule not sent: the broker does not hold delayed requests (now)");
                        continue;
                    }
                    self.actions.push(Action::SendFor {
                        conn,
                        address,
                        subject,
                        tracker: String::new(),
                        timeout_ms: 0,
                        delay: Some(delay),
                        content,
                        origin: Origin::Plain,
                    });
                }
            }
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
                    self.actions.push(Action::SendTo {
                        conn,
                        address: request.sender.clone(),
                        subject: request.subject.clone(),
                        tracker: request.tracker.clone(),
                        content: vec![reply],
                    });
                }
            }
            Decision::Drop => {
                if self.settle(id, conn, Settle::Term) {
                    return;
                }
            }
            Decision::Forward {
                address,
                subject,
                tracker,
                content,
                delay,
            } => {
                self.ops.sent(SendKind::Forward);
                if delay.is_some() && !(self.links[conn].up && self.links[conn].delay) {
                    let why = if self.links[conn].up {
                        "the broker does not hold delayed requests"
                    } else {
                        "not connected"
                    };
                    let text = format!("delayed forward to {address}/{subject} refused: {why}");
                    tracing::warn!(subject = %request.subject, "dead letter: {text}");
                    self.dead_letter(conn, &request, &text, "forward", now);
                } else {
                    let origin = match delay {
                        Some(_) => Origin::DelayedForward(Box::new(request.clone())),
                        None => Origin::Plain,
                    };
                    self.actions.push(Action::SendFor {
                        conn,
                        address,
                        subject,
                        tracker,
                        timeout_ms: 0,
                        delay,
                        content,
                        origin,
                    });
                }
            }
            Decision::DeadLetter { text, kind } => {
                let name = kind.map(|k| k.name()).unwrap_or("fail");
                tracing::warn!(
                    subject = %request.subject,
                    sender = %request.sender,
                    kind = name,
                    "dead letter: {text}"
                );
                self.dead_letter(conn, &request, &text, name, now);
                if self.settle(id, conn, Settle::Term) {
                    return;
                }
            }
            Decision::Retry { delay } => {
                if self.settle(id, conn, Settle::Nak(delay)) {
                    return;
                }
                return self.schedule_retry(id, conn, request, delay, now);
            }
        }
        self.confirm(id);
    }

    /// On a connection whose broker redelivers, ends job `id` there the
    /// way `how` says and returns true; elsewhere (or for a job without a
    /// token) does nothing and returns false.
    fn settle(&mut self, id: u64, conn: usize, how: Settle) -> bool {
        if !self.links[conn].redelivers {
            return false;
        }
        let Some((conn, token)) = self.in_flight.remove(&id).and_then(InFlight::token) else {
            return false;
        };
        // Confirmations queued before it go first, in order.
        self.flush_confirms();
        self.actions.push(match how {
            Settle::Nak(delay) => Action::Nak { conn, token, delay },
            Settle::Term => Action::Term { conn, token },
        });
        true
    }

    /// The shell's connection refused a delayed forward after all (it
    /// went away or changed between the core's look and the send): a dead
    /// letter, as when the core sees it first.
    pub fn delayed_refused(&mut self, conn: usize, request: &Request, why: &str, now: Now) {
        let text = format!("delayed forward refused: {why}");
        tracing::warn!(subject = %request.subject, "dead letter: {text}");
        self.dead_letter(conn, request, &text, "forward", now);
    }

    /// Queues the confirmation of job `id` (sent in batches).
    fn confirm(&mut self, id: u64) {
        if let Some((conn, token)) = self.in_flight.remove(&id).and_then(InFlight::token) {
            let l = &mut self.links[conn];
            l.confirms.push(token);
            if l.confirms.len() >= CONFIRM_BATCH {
                let tokens = std::mem::take(&mut l.confirms);
                self.actions.push(Action::Confirm { conn, tokens });
            }
        }
    }

    /// Sends the confirmations owed, one command per connection.
    pub fn flush_confirms(&mut self) {
        for (conn, l) in self.links.iter_mut().enumerate() {
            if !l.confirms.is_empty() {
                let tokens = std::mem::take(&mut l.confirms);
                self.actions.push(Action::Confirm { conn, tokens });
            }
        }
    }

    /// Keeps `request` for its next attempt after `delay`; still
    /// unconfirmed, so the broker has it if we die.
    fn schedule_retry(
        &mut self,
        id: u64,
        conn: usize,
        mut request: Request,
        delay: Duration,
        now: Now,
    ) {
        request.attempt += 1;
        let at = after(now.at, delay);
        if let Err(job) = self.retries.push(at, Job { id, request }) {
            let text = format!(
                "dead letter: retry asked, but {} retries already wait (worker/retry/pending)",
                self.retries.len()
            );
            tracing::warn!(subject = %job.request.subject, "{text}");
            self.dead_letter(conn, &job.request, &text, "retry_overflow", now);
            return self.confirm(job.id);
        }
        tracing::debug!(delay = ?delay, "retry scheduled");
        // One more credit for each waiting retry beyond the most that ever
        // waited on this connection, so they do not shrink its window.
        let in_flight = &self.in_flight;
        let waiting = self
            .retries
            .count_where(|j| in_flight.get(&j.id).is_some_and(|f| f.conn == conn));
        let l = &mut self.links[conn];
        if l.acks && waiting > l.extra_credit {
            l.extra_credit += 1;
            self.actions.push(Action::Credit { conn, amount: 1 });
        }
    }

    /// A dead letter: the report to the error mailbox (subject, text,
    /// original first frame), and an error reply to a requester that waits
    /// (or to any, with `errors_reply`). `outcome` names why (`fail`, an
    /// error kind, `overloaded`, ...) in the report's metadata frame (see
    /// [`super::outcomes::dead_letter_frames`]).
    fn dead_letter(&mut self, conn: usize, req: &Request, text: &str, outcome: &str, now: Now) {
        self.ops.dead_letter();
        if self.opts.errors_notify {
            self.ops.sent(SendKind::ErrorReport);
            let frames = super::outcomes::dead_letter_frames(req, text, outcome, now.wall);
            self.actions.push(Action::SendTo {
                conn,
                address: self.opts.errors_mailbox.clone(),
                subject: clip(&req.subject),
                tracker: String::new(),
                content: frames,
            });
        }
        if (self.opts.errors_reply || req.wants_reply()) && !req.sender.is_empty() {
            self.ops.sent(SendKind::ErrorReply);
            self.actions.push(Action::SendTo {
                conn,
                address: req.sender.clone(),
                subject: clip(&format!("{ERROR_REPLY_PREFIX}{}", req.subject)),
                tracker: req.tracker.clone(),
                content: vec![text.as_bytes().to_vec()],
            });
        }
    }

    /// A request that was received but will not run here. At a stop, an
    /// acknowledged one is left to the broker (it goes to another worker
    /// when we close) and an unacknowledged one is handed back to its
    /// service. Otherwise an acknowledged one is handed back and confirmed
    /// (the credit bounds what the broker sends, so this takes a broker
    /// that gives more than it was allowed), and an unacknowledged one is a
    /// dead letter saying why.
    fn unrun(&mut self, job: Job, text: &str, stopping: bool, now: Now) {
        self.ops.forget(job.id);
        let (conn, acked) = match self.in_flight.get(&job.id) {
            Some(f) => (f.conn, matches!(f.held, Held::Acked(_))),
            None => (0, false),
        };
        if acked && self.links[conn].redelivers {
            // Its broker gives it to another worker (or to us) again now.
            tracing::warn!(subject = %job.request.subject, "{text}; returned to the broker");
            self.settle(job.id, conn, Settle::Nak(Duration::ZERO));
            return;
        }
        if acked && stopping {
            // Unconfirmed: the broker gives it again when we are gone.
            self.in_flight.remove(&job.id);
            tracing::warn!(subject = %job.request.subject, "{text}; returned to the broker");
            return;
        }
        if acked {
            // Left unconfirmed while we run on, it would wait for our end
            // and hold a credit until then: hand it to another worker of
            // the service now, then confirm our copy.
            self.send_back(conn, &job.request, text, now);
            return self.confirm(job.id);
        }
        self.in_flight.remove(&job.id);
        if stopping {
            return self.send_back(conn, &job.request, text, now);
        }
        self.dead_letter(conn, &job.request, text, "unrun", now)
    }

    /// Sends a request back to its service for another worker, with its
    /// attempt count and requester in the envelope tracker; a dead letter
    /// (saying `why`) when the envelope does not fit.
    fn send_back(&mut self, conn: usize, r: &Request, why: &str, now: Now) {
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
                self.actions.push(Action::SendFor {
                    conn,
                    address: r.address.clone(),
                    subject: r.subject.clone(),
                    tracker,
                    timeout_ms: 0,
                    delay: None,
                    content: r.content.clone(),
                    origin: Origin::Plain,
                });
            }
            None => self.dead_letter(
                conn,
                r,
                &format!(
                    "{why}; it could not be handed back (requester address and tracker too long)"
                ),
                "unrun",
                now,
            ),
        }
    }

    fn jitter(&mut self) -> f64 {
        // xorshift64: enough to spread retries of a burst.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The stop begins: calls are answered "stopping", nothing new is
    /// taken. Returns how many requests were received and not finished.
    pub fn stop_begin(&mut self, out: &impl Outlets, backlogged: usize) -> usize {
        self.calls.fail_all("the worker is stopping");
        self.ops.draining(self.in_flight.len());
        tracing::info!(
            running = self
                .in_flight
                .len()
                .saturating_sub(self.retries.len() + self.queue.len() + backlogged),
            queued = self.queue.len() + out.pool_waiting(),
            retries_waiting = self.retries.len(),
            "stopping: finishing requests already received (up to {:?})",
            self.opts.shutdown_timeout
        );
        self.in_flight.len()
    }

    /// The end of a stop, once the pool and runners have stopped (their
    /// completions fed in) and returned what they never started
    /// (`unstarted`): waiting retries are handed back, what never ran is
    /// left to its broker (acknowledged) or handed back, confirmations are
    /// flushed, and an unacknowledged request that did not finish in time
    /// is reported.
    pub fn stop_finish(&mut self, unstarted: Vec<Job>, now: Now) {
        let waiting = self.retries.drain();
        if !waiting.is_empty() {
            tracing::info!(
                "handing {} waiting retries back to the broker",
                waiting.len()
            );
        }
        for job in waiting {
            let conn = self.in_flight.get(&job.id).map(|f| f.conn).unwrap_or(0);
            self.send_back(
                conn,
                &job.request,
                "worker stopping with this request waiting for a retry",
                now,
            );
            self.confirm(job.id);
        }
        let leftovers: Vec<Job> = unstarted
            .into_iter()
            .chain(self.queue.drain(..))
            .chain(self.held.drain(..))
            .collect();
        self.held_bytes = 0;
        for job in leftovers {
            self.unrun(
                job,
                "worker stopping: request received but not run",
                true,
                now,
            );
        }
        self.flush_confirms();
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
                    now,
                );
            }
        }
    }

    /// A delivery that came during the stop: not run; a pushed request is
    /// handed back to its service (an acknowledged one its broker gives to
    /// another worker when we close).
    pub fn delivery_at_stop(&mut self, conn: usize, d: Delivery, now: Now) {
        if d.kind == DeliveryKind::Service && d.ack.is_none() {
            let req = Request::delivered(d);
            self.send_back(
                conn,
                &req,
                "worker stopping: request received but not run",
                now,
            );
        }
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

/// The bytes of a request's content frames.
fn content_bytes(r: &Request) -> usize {
    r.content.iter().map(Vec::len).sum()
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
