//! The dispatcher: the one thread that owns the worker's broker connection.
//!
//! It offers the service, receives SERVICE DELIVERs and hands them to the
//! VM pool, and carries out what each finished request decided (see
//! [`super::outcomes`]): the handler's stream sends and mails in the order
//! it made them, then the reply, the retry, the forward or the dead letter.
//! It sleeps in one `poll` on the broker socket and the pool's wake-up
//! descriptor, so a finished request is sent at once and the heartbeat
//! never stops.
//!
//! Overload is explicit. With the project's broker the worker grants credit
//! for exactly what the pool can hold (VMs plus backlog), so the broker
//! keeps the rest. With a broker that pushes (the reference Malamute), a
//! bounded overflow queue absorbs bursts and a request beyond it is
//! reported to the error mailbox instead of being buffered without bound.
//!
//! Retries wait here, bounded by `retry_pending`. With the project's broker
//! a waiting request stays unconfirmed, so if this worker dies the broker
//! gives it to another worker (at least once); each request that starts
//! waiting beyond the most that ever waited before is granted one more
//! credit, so waiting retries do not shrink the window for new work. At a
//! graceful stop, waiting retries are handed back to the service (with
//! their attempt count in an envelope tracker) and then confirmed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::outcomes::{Decision, Envelope, Policy, RetryQueue};
use super::pool::{Pool, PoolError};
use super::types::{Completion, Job, Output, PoolConfig, Request};
use super::wake::{waker, WakeReceiver};
use crate::mlm::{
    AckToken, Client, ClientError, ClientOptions, Delivery, DeliveryKind, Message, Wait,
};

/// Subject prefix of an error reply to the requester. A `:` never occurs in
/// a subject that selects a script, so a program tells an error reply from
/// a success by the subject alone.
pub const ERROR_REPLY_PREFIX: &str = "ERROR:";

/// Everything the dispatcher needs to know.
#[derive(Debug, Clone)]
pub struct DispatcherOptions {
    /// Broker connection: endpoint, our address, timeout, credentials.
    pub client: ClientOptions,
    /// Service address we offer.
    pub service: String,
    /// Subject pattern of the offer.
    pub filter: String,
    /// Mail failures to `errors_mailbox`.
    pub errors_notify: bool,
    /// Mailbox for failure reports (dead letters).
    pub errors_mailbox: String,
    /// Send error replies even to requesters that gave no tracker.
    pub errors_reply: bool,
    /// Log every request and its outcome.
    pub verbose: bool,
    /// How long a stop waits for running requests.
    pub shutdown_timeout: Duration,
    /// Retries, dead letters, forwards.
    pub policy: Policy,
    /// Most requests waiting for a retry at once.
    pub retry_pending: usize,
}

impl DispatcherOptions {
    /// Options with the defaults of `alaska.cfg` for a worker offering
    /// `service` (all subjects) over `client`.
    pub fn new(client: ClientOptions, service: impl Into<String>) -> DispatcherOptions {
        DispatcherOptions {
            client,
            service: service.into(),
            filter: ".*".into(),
            errors_notify: true,
            errors_mailbox: "awerr".into(),
            errors_reply: false,
            verbose: false,
            shutdown_timeout: Duration::from_secs(10),
            policy: Policy::default(),
            retry_pending: 1000,
        }
    }
}

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The broker connection failed in a way retrying cannot fix.
    #[error("broker connection: {0}")]
    Client(#[from] ClientError),
    /// The VM pool could not start.
    #[error("VM pool: {0}")]
    Pool(#[from] PoolError),
    /// The wake-up pipe could not be created.
    #[error("wake-up pipe: {0}")]
    Io(#[from] std::io::Error),
}

/// How long the dispatcher looks for work before it sleeps while requests
/// are running.
const SPIN: Duration = Duration::from_micros(50);

/// Runs the worker until `shutdown` is set, then stops gracefully.
pub fn run(
    opts: DispatcherOptions,
    pool_cfg: PoolConfig,
    shutdown: Arc<AtomicBool>,
) -> Result<(), WorkerError> {
    let capacity = pool_cfg.size + pool_cfg.backlog;
    let pool_size = pool_cfg.size;
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let (wake, wake_rx) = waker()?;
    let pool = Pool::start(pool_cfg, done_tx, wake)?;
    let mut client_opts = opts.client.clone();
    client_opts.credit = Some(capacity.min(u16::MAX as usize) as u16);
    let Some(client) = connect(client_opts, &shutdown)? else {
        pool.shutdown(Duration::ZERO);
        return Ok(());
    };
    let mut d = Dispatcher {
        retries: RetryQueue::new(opts.retry_pending),
        opts,
        client,
        pool: Some(pool),
        done: done_rx,
        wake: wake_rx,
        in_flight: HashMap::new(),
        overflow: VecDeque::new(),
        overflow_limit: capacity,
        next_id: 0,
        confirms: Vec::new(),
        extra_credit: 0,
        rng: seed(),
    };
    d.client.set_worker(&d.opts.service, &d.opts.filter)?;
    tracing::info!(
        service = %d.opts.service,
        filter = %d.opts.filter,
        endpoint = %d.client.endpoint(),
        acknowledged = d.client.acks_enabled(),
        "ready: {pool_size} Lua VMs"
    );
    d.serve(&shutdown)?;
    d.stop()
}

/// Connects, retrying while the broker is merely absent; gives up on
/// errors that retrying cannot fix (bad endpoint, refused credentials).
fn connect(opts: ClientOptions, shutdown: &AtomicBool) -> Result<Option<Client>, WorkerError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match Client::connect(opts.clone()) {
            Ok(c) => return Ok(Some(c)),
            Err(e @ (ClientError::Unreachable { .. } | ClientError::Timeout { .. })) => {
                tracing::warn!("{e}; retrying in {delay:?}");
            }
            Err(e) => return Err(e.into()),
        }
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if shutdown.load(Ordering::Relaxed) {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        delay = (delay * 2).min(Duration::from_secs(5));
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

/// What the dispatcher keeps of a request while it is out of its hands.
enum InFlight {
    /// The broker holds it until we confirm it with this token.
    Acked(AckToken),
    /// Nobody else holds it (a broker without acknowledgements): enough to
    /// report it if it never finishes.
    Unacked(Box<Request>),
}

impl InFlight {
    fn token(self) -> Option<AckToken> {
        match self {
            InFlight::Acked(t) => Some(t),
            InFlight::Unacked(_) => None,
        }
    }
}

struct Dispatcher {
    opts: DispatcherOptions,
    client: Client,
    pool: Option<Pool>,
    done: Receiver<Completion>,
    wake: WakeReceiver,
    /// Every request received and not yet finished (running, queued, or
    /// waiting for a retry), by job id.
    in_flight: HashMap<u64, InFlight>,
    overflow: VecDeque<Job>,
    overflow_limit: usize,
    next_id: u64,
    confirms: Vec<AckToken>,
    retries: RetryQueue<Job>,
    /// Credit granted beyond the pool's capacity for waiting retries.
    extra_credit: usize,
    rng: u64,
}

impl Dispatcher {
    fn serve(&mut self, shutdown: &AtomicBool) -> Result<(), WorkerError> {
        let fd = self.wake.as_raw_fd();
        while !shutdown.load(Ordering::Relaxed) {
            // While requests run, look around without sleeping for a few
            // tens of microseconds: a trivial script finishes in less time
            // than a sleep and a wake-up of this thread cost.
            if self.in_flight.len() > self.retries.len() {
                let until = Instant::now() + SPIN;
                let mut event = Wait::Timeout;
                while Instant::now() < until {
                    if !self.done.is_empty() {
                        break;
                    }
                    event = self.client.wait(None, Duration::ZERO)?;
                    if !matches!(event, Wait::Timeout) {
                        break;
                    }
                    std::hint::spin_loop();
                }
                if let Wait::Delivery(d) = event {
                    self.deliver(d)?;
                    continue;
                }
                if !self.done.is_empty() {
                    self.finish_completed()?;
                    continue;
                }
            }
            // Arm, then a last look at the completions, then sleep: a
            // completion that lands in between writes the wake-up byte.
            self.wake.arm();
            self.finish_completed()?;
            let now = Instant::now();
            let mut sleep = Duration::from_millis(100);
            if let Some(due) = self.retries.next_due() {
                sleep = sleep.min(due.saturating_duration_since(now));
            }
            let event = self.client.wait(Some(fd), sleep)?;
            self.wake.disarm();
            match event {
                Wait::Delivery(d) => self.deliver(d)?,
                Wait::Woken => self.wake.drain(),
                Wait::Timeout => {}
            }
            self.finish_completed()?;
        }
        Ok(())
    }

    fn deliver(&mut self, d: Delivery) -> Result<(), WorkerError> {
        match d.kind {
            DeliveryKind::Service => {}
            DeliveryKind::Mailbox if Envelope::decode(&d.tracker).is_some() => {
                return self.relay(d);
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
        let mut request = Request {
            sender: d.sender,
            address: d.address,
            subject: d.subject,
            tracker: d.tracker,
            content: d.content,
            attempt: 1,
            hops: 0,
        };
        Envelope::open(&mut request);
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
        let held = match d.ack {
            Some(token) => InFlight::Acked(token),
            // Only the metadata and the first frame, for the report.
            None => InFlight::Unacked(Box::new(Request {
                content: request.content.first().cloned().into_iter().collect(),
                ..request.clone()
            })),
        };
        self.in_flight.insert(id, held);
        self.submit(Job { id, request })
    }

    /// A reply mailed to us by a stage we forwarded to that does not know
    /// about envelopes: pass it on to the original requester.
    fn relay(&mut self, d: Delivery) -> Result<(), WorkerError> {
        let Some(env) = Envelope::decode(&d.tracker) else {
            return Ok(());
        };
        tracing::debug!(to = %env.sender, subject = %d.subject, "relaying a reply");
        let sent = self
            .client
            .sendto(&env.sender, &d.subject, &env.tracker, 0, d.content);
        self.outcome(sent)
    }

    fn submit(&mut self, job: Job) -> Result<(), WorkerError> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        if !self.overflow.is_empty() {
            self.overflow.push_back(job);
        } else if let Err(job) = pool.try_submit(job) {
            self.overflow.push_back(job);
        }
        if self.overflow.len() > self.overflow_limit + self.extra_credit {
            if let Some(job) = self.overflow.pop_back() {
                let text = format!(
                    "worker overloaded: {} requests waiting beyond the pool; request not run",
                    self.overflow.len()
                );
                tracing::warn!(subject = %job.request.subject, "{text}");
                self.unrun(job, &text)?;
            }
        }
        Ok(())
    }

    /// Sends what finished requests produced, starts due retries, then
    /// refills the pool.
    fn finish_completed(&mut self) -> Result<(), WorkerError> {
        while let Ok(c) = self.done.try_recv() {
            self.complete(c)?;
        }
        let now = Instant::now();
        while let Some(job) = self.retries.pop_due(now) {
            self.submit(job)?;
        }
        if !self.confirms.is_empty() {
            let tokens = std::mem::take(&mut self.confirms);
            let confirmed = self.client.confirm_all(&tokens);
            self.outcome(confirmed)?;
        }
        if let Some(pool) = &self.pool {
            while let Some(job) = self.overflow.pop_front() {
                if let Err(job) = pool.try_submit(job) {
                    self.overflow.push_front(job);
                    break;
                }
            }
        }
        Ok(())
    }

    fn complete(&mut self, c: Completion) -> Result<(), WorkerError> {
        let Completion { id, request, run } = c;
        for out in run.outputs {
            let sent = match out {
                Output::Stream {
                    stream,
                    subject,
                    content,
                } => self
                    .client
                    .switch_producer(&stream)
                    .and_then(|_| self.client.send(&subject, content)),
                Output::Mail {
                    address,
                    subject,
                    content,
                } => self.client.sendto(&address, &subject, "", 0, content),
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
                    let sent = self.client.sendto(
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
            } => {
                let sent = self
                    .client
                    .sendfor(&address, &subject, &tracker, 0, content);
                self.outcome(sent)?;
            }
            Decision::DeadLetter { text, kind } => {
                tracing::warn!(
                    subject = %request.subject,
                    sender = %request.sender,
                    kind = kind.map(|k| k.name()).unwrap_or("fail"),
                    "dead letter: {text}"
                );
                self.dead_letter(&request, &text)?;
            }
            Decision::Retry { delay } => {
                return self.schedule_retry(id, request, delay);
            }
        }
        // Acknowledge after the results are sent: if we die before this,
        // the broker redelivers (at-least-once), and nothing is lost. The
        // confirmations of one batch of completions go in one command.
        if let Some(token) = self.in_flight.remove(&id).and_then(InFlight::token) {
            self.confirms.push(token);
        }
        Ok(())
    }

    /// Keeps `request` for its next attempt after `delay`; still
    /// unconfirmed, so the broker has it if we die.
    fn schedule_retry(
        &mut self,
        id: u64,
        mut request: Request,
        delay: Duration,
    ) -> Result<(), WorkerError> {
        request.attempt += 1;
        let at = Instant::now() + delay;
        if let Err(job) = self.retries.push(at, Job { id, request }) {
            let text = format!(
                "dead letter: retry asked, but {} retries already wait (worker/retry/pending)",
                self.retries.len()
            );
            tracing::warn!(subject = %job.request.subject, "{text}");
            self.dead_letter(&job.request, &text)?;
            if let Some(token) = self.in_flight.remove(&job.id).and_then(InFlight::token) {
                self.confirms.push(token);
            }
            return Ok(());
        }
        tracing::debug!(delay = ?delay, "retry scheduled");
        if self.client.acks_enabled() && self.retries.len() > self.extra_credit {
            self.extra_credit += 1;
            let granted = self.client.post(Message::Credit { amount: 1 });
            self.outcome(granted)?;
        }
        Ok(())
    }

    /// A dead letter: the report to the error mailbox (subject, text,
    /// original first frame), and an error reply to a requester that waits.
    fn dead_letter(&mut self, req: &Request, text: &str) -> Result<(), WorkerError> {
        let first = req.content.first().cloned().unwrap_or_default();
        self.report(&req.subject, &req.sender, &req.tracker, text, first)
    }

    /// Mails a failure to the error mailbox, and to the requester when it
    /// waits for an answer (or always, with `errors_reply`).
    fn report(
        &mut self,
        subject: &str,
        sender: &str,
        tracker: &str,
        text: &str,
        first: Vec<u8>,
    ) -> Result<(), WorkerError> {
        if self.opts.errors_notify {
            let mailbox = self.opts.errors_mailbox.clone();
            let sent = self.client.sendto(
                &mailbox,
                &clip(subject),
                "",
                0,
                vec![text.as_bytes().to_vec(), first],
            );
            self.outcome(sent)?;
        }
        if (self.opts.errors_reply || !tracker.is_empty()) && !sender.is_empty() {
            let subject = clip(&format!("{ERROR_REPLY_PREFIX}{subject}"));
            let sent =
                self.client
                    .sendto(sender, &subject, tracker, 0, vec![text.as_bytes().to_vec()]);
            self.outcome(sent)?;
        }
        Ok(())
    }

    /// A request that was received but will not run here.
    fn unrun(&mut self, job: Job, text: &str) -> Result<(), WorkerError> {
        if let Some(held) = self.in_flight.remove(&job.id) {
            if matches!(held, InFlight::Acked(_)) {
                // Left unconfirmed: the broker gives it to another worker
                // when we close, which is better than an error report.
                tracing::warn!(subject = %job.request.subject, "{text}; returned to the broker");
                return Ok(());
            }
        }
        self.dead_letter(&job.request, text)
    }

    /// Hands a waiting retry back to its service, attempt count and
    /// requester in the envelope, then confirms our copy.
    fn hand_back(&mut self, job: Job) -> Result<(), WorkerError> {
        let r = &job.request;
        let env = Envelope {
            hops: r.hops,
            attempt: r.attempt,
            sender: r.sender.clone(),
            tracker: r.tracker.clone(),
        };
        match env.encode() {
            Some(tracker) => {
                let sent =
                    self.client
                        .sendfor(&r.address, &r.subject, &tracker, 0, r.content.clone());
                self.outcome(sent)?;
            }
            None => {
                self.dead_letter(
                    r,
                    "worker stopping with this request waiting for a retry; it could not be \
                     handed back (requester address and tracker too long)",
                )?;
            }
        }
        if let Some(token) = self.in_flight.remove(&job.id).and_then(InFlight::token) {
            self.confirms.push(token);
        }
        Ok(())
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

    /// Graceful stop: no new work, running requests finish within the
    /// shutdown timeout, their results are sent, waiting retries are handed
    /// back, the rest is reported.
    fn stop(mut self) -> Result<(), WorkerError> {
        tracing::info!(
            running = self.in_flight.len() - self.retries.len(),
            retries_waiting = self.retries.len(),
            "stopping: finishing requests already received (up to {:?})",
            self.opts.shutdown_timeout
        );
        let unstarted = match self.pool.take() {
            Some(pool) => pool.shutdown(self.opts.shutdown_timeout),
            None => Vec::new(),
        };
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
            .chain(self.overflow.drain(..))
            .collect();
        for job in leftovers {
            self.unrun(job, "worker stopping: request received but not run")?;
        }
        if !self.confirms.is_empty() {
            let tokens = std::mem::take(&mut self.confirms);
            let confirmed = self.client.confirm_all(&tokens);
            self.outcome(confirmed)?;
        }
        let unfinished: Vec<InFlight> = self.in_flight.drain().map(|(_, v)| v).collect();
        if !unfinished.is_empty() {
            tracing::warn!(
                "{} request(s) did not finish in time (left to the broker when acknowledged, \
                 else reported)",
                unfinished.len()
            );
        }
        for held in unfinished {
            if let InFlight::Unacked(req) = held {
                self.dead_letter(&req, "worker stopping: request did not finish in time")?;
            }
        }
        // Deliveries that arrived during the stop are not run either.
        let deadline = Instant::now() + Duration::from_millis(50);
        while let Some(d) = self
            .client
            .recv(deadline.saturating_duration_since(Instant::now()))?
        {
            if d.kind == DeliveryKind::Service && d.ack.is_none() {
                let mut req = Request {
                    sender: d.sender,
                    address: d.address,
                    subject: d.subject,
                    tracker: d.tracker,
                    content: d.content,
                    attempt: 1,
                    hops: 0,
                };
                Envelope::open(&mut req);
                self.dead_letter(&req, "worker stopping: request received but not run")?;
            }
        }
        tracing::info!("stopped");
        self.client.close()?;
        Ok(())
    }
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
