//! The dispatcher: the one thread that owns the worker's broker connection.
//!
//! It offers the service, receives SERVICE DELIVERs and hands them to the
//! VM pool, and writes back on the same connection everything the scripts
//! produced: their stream sends and mails in the order they made them, the
//! reply to the requester, the error report. It sleeps in one `poll` on the
//! broker socket and the pool's wake-up descriptor, so a finished request is
//! sent at once and the heartbeat never stops.
//!
//! Overload is explicit. With the project's broker the worker grants credit
//! for exactly what the pool can hold (VMs plus backlog), so the broker
//! keeps the rest. With a broker that pushes (the reference Malamute), a
//! bounded overflow queue absorbs bursts and a request beyond it is
//! reported to the error mailbox instead of being buffered without bound.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::pool::{Completion, Job, Output, Pool, PoolConfig, PoolError, Request};
use super::wake::{waker, WakeReceiver};
use crate::mlm::{AckToken, Client, ClientError, ClientOptions, Delivery, DeliveryKind, Wait};

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
    /// Mailbox for failure reports.
    pub errors_mailbox: String,
    /// Also mail failures to the requester (subject `ERROR:<subject>`).
    pub errors_reply: bool,
    /// Log every request.
    pub verbose: bool,
    /// How long a stop waits for running requests.
    pub shutdown_timeout: Duration,
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

/// What the dispatcher remembers of a request while a VM runs it.
struct InFlight {
    ack: Option<AckToken>,
    subject: String,
    sender: String,
    tracker: String,
    /// First content frame, for the report if the request never finishes.
    first: Vec<u8>,
}

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

struct Dispatcher {
    opts: DispatcherOptions,
    client: Client,
    pool: Option<Pool>,
    done: Receiver<Completion>,
    wake: WakeReceiver,
    in_flight: HashMap<u64, InFlight>,
    overflow: VecDeque<Job>,
    overflow_limit: usize,
    next_id: u64,
    confirms: Vec<AckToken>,
}

impl Dispatcher {
    fn serve(&mut self, shutdown: &AtomicBool) -> Result<(), WorkerError> {
        let fd = self.wake.as_raw_fd();
        while !shutdown.load(Ordering::Relaxed) {
            // While requests run, look around without sleeping for a few
            // tens of microseconds: a trivial script finishes in less time
            // than a sleep and a wake-up of this thread cost.
            if !self.in_flight.is_empty() {
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
            // The timeout only bounds how late a stop is noticed.
            let event = self.client.wait(Some(fd), Duration::from_millis(100))?;
            self.wake.disarm();
            match event {
                Wait::Delivery(d) => self.deliver(d)?,
                Wait::Woken => self.wake.drain(),
                // The client has logged it (a reply to a full mailbox).
                Wait::Refused(_) | Wait::Timeout => {}
            }
            self.finish_completed()?;
        }
        Ok(())
    }

    fn deliver(&mut self, d: Delivery) -> Result<(), WorkerError> {
        if d.kind != DeliveryKind::Service {
            tracing::debug!(
                "ignoring {:?} message from {} on {}",
                d.kind,
                d.sender,
                d.address
            );
            return Ok(());
        }
        if self.opts.verbose {
            let size: usize = d.content.iter().map(Vec::len).sum();
            tracing::info!(
                address = %d.address,
                subject = %d.subject,
                sender = %d.sender,
                size,
                "request"
            );
        }
        self.next_id += 1;
        let id = self.next_id;
        self.in_flight.insert(
            id,
            InFlight {
                ack: d.ack,
                subject: d.subject.clone(),
                sender: d.sender.clone(),
                tracker: d.tracker.clone(),
                first: d.content.first().cloned().unwrap_or_default(),
            },
        );
        let job = Job {
            id,
            request: Request {
                sender: d.sender,
                address: d.address,
                subject: d.subject,
                tracker: d.tracker,
                content: d.content,
            },
        };
        self.submit(job)
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
        if self.overflow.len() > self.overflow_limit {
            if let Some(job) = self.overflow.pop_back() {
                let text = format!(
                    "worker overloaded: {} requests waiting beyond the pool; request not run",
                    self.overflow.len()
                );
                tracing::warn!(subject = %job.request.subject, "{text}");
                self.report_unrun(job.id, &text)?;
            }
        }
        Ok(())
    }

    /// Sends what finished requests produced, then refills the pool.
    fn finish_completed(&mut self) -> Result<(), WorkerError> {
        while let Ok(c) = self.done.try_recv() {
            self.complete(c)?;
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
        let meta = self.in_flight.remove(&c.id);
        for out in c.outputs {
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
        let req = &c.request;
        if let Some(reply) = c.reply {
            let sent = self
                .client
                .sendto(&req.sender, &req.subject, &req.tracker, 0, vec![reply]);
            self.outcome(sent)?;
        }
        if let Some(err) = &c.error {
            tracing::warn!(
                subject = %req.subject,
                sender = %req.sender,
                kind = ?err.kind,
                "script failed: {}",
                err.message
            );
            let first = req.content.first().cloned().unwrap_or_default();
            self.report(&req.subject, &req.sender, &req.tracker, &err.message, first)?;
        }
        // Acknowledge after the results are sent: if we die before this,
        // the broker redelivers (at-least-once), and nothing is lost. The
        // confirmations of one batch of completions go in one command.
        if let Some(token) = meta.and_then(|m| m.ack) {
            self.confirms.push(token);
        }
        Ok(())
    }

    /// Mails a failure to the error mailbox (and to the requester when
    /// configured): subject, error text, original first frame.
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
        if self.opts.errors_reply && !sender.is_empty() {
            let subject = clip(&format!("{ERROR_REPLY_PREFIX}{subject}"));
            let sent =
                self.client
                    .sendto(sender, &subject, tracker, 0, vec![text.as_bytes().to_vec()]);
            self.outcome(sent)?;
        }
        Ok(())
    }

    /// Reports a request that was received but never run.
    fn report_unrun(&mut self, id: u64, text: &str) -> Result<(), WorkerError> {
        if let Some(m) = self.in_flight.remove(&id) {
            if m.ack.is_some() {
                // Left unconfirmed: the broker gives it to another worker
                // when we close, which is better than an error report.
                tracing::warn!(subject = %m.subject, "{text}; returned to the broker");
                return Ok(());
            }
            self.report(&m.subject, &m.sender, &m.tracker, text, m.first)?;
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

    /// Graceful stop: no new work, running requests finish within the
    /// shutdown timeout, their results are sent, the rest is reported.
    fn stop(mut self) -> Result<(), WorkerError> {
        tracing::info!(
            running = self.in_flight.len(),
            "stopping: finishing requests already received (up to {:?})",
            self.opts.shutdown_timeout
        );
        let unstarted = match self.pool.take() {
            Some(pool) => pool.shutdown(self.opts.shutdown_timeout),
            None => Vec::new(),
        };
        // Completions of everything that finished in time.
        self.finish_completed()?;
        let leftovers: Vec<Job> = unstarted
            .into_iter()
            .chain(self.overflow.drain(..))
            .collect();
        for job in leftovers {
            self.report_unrun(job.id, "worker stopping: request received but not run")?;
        }
        let unfinished: Vec<u64> = self.in_flight.keys().copied().collect();
        for id in unfinished {
            self.report_unrun(id, "worker stopping: request did not finish in time")?;
        }
        // Deliveries that arrived during the stop are not run either.
        let deadline = Instant::now() + Duration::from_millis(50);
        while let Some(d) = self
            .client
            .recv(deadline.saturating_duration_since(Instant::now()))?
        {
            if d.kind == DeliveryKind::Service && d.ack.is_none() {
                let first = d.content.first().cloned().unwrap_or_default();
                self.report(
                    &d.subject,
                    &d.sender,
                    &d.tracker,
                    "worker stopping: request received but not run",
                    first,
                )?;
            }
        }
        tracing::info!("stopped");
        match self.client.close() {
            // Refusals that came while stopping were logged by the client.
            Ok(()) | Err(ClientError::Rejected(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
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
