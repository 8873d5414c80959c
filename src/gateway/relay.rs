//! The relay thread: owns the broker connections, turns commands from the
//! HTTP thread into MLM sends, matches replies to the requests waiting,
//! times them out, and answers each through its responder.
//!
//! With several brokers (`gateway/broker/endpoint` as a list) it holds one
//! connection per broker ([`Brokers`], all under the gateway's address) and
//! sends each command to the broker the failover choice names: the first
//! connected one, or round robin (`gateway/broker/balance`). Each broker has
//! its own [`Pending`] (trackers of its own, barriers and refusals in its
//! own order), so a reply, a barrier or a refusal is matched on the
//! connection it came over. Requests waiting on a broker that goes away
//! keep waiting (it may come back and still hold the reply) and get `504`
//! in time; new ones go to the next broker at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::metrics::{Endpoint, GatewayMetrics};
use super::pending::{run_id, Matched, Pending};
use super::{GatewayOptions, Shared};
use crate::failover::{parse_endpoints, BrokerEvent, Brokers, Pick};
use crate::mlm::{ClientError, ClientOptions, Delivery, DeliveryKind, Refusal, RefusalKind, Wait};
use crate::ops::http::{HttpResponse, Responder};
use crate::ops::wake::WakeReceiver;
use crate::time::after;
use crate::worker::ERROR_REPLY_PREFIX;

/// The subject of barrier mail (see [`super::pending`]).
pub(crate) const BARRIER_SUBJECT: &str = "alaska-gateway-barrier";

/// Longest sleep of the relay loop, so the liveness counter moves (for the
/// systemd watchdog) even when nothing happens.
const MAX_SLEEP: Duration = Duration::from_millis(500);

/// Wait between attempts to set the connections up (only an endpoint
/// ZeroMQ cannot use fails; brokers that do not answer are retried by the
/// connections themselves).
const RETRY: Duration = Duration::from_secs(10);

/// Most commands taken per loop turn, so replies and timeouts are looked
/// at between bursts.
const BATCH: usize = 4096;

/// An HTTP answer in the making: counted, logged and sent exactly once
/// (dropped unanswered, it answers `503`).
pub(crate) struct Answer {
    responder: Option<Responder>,
    endpoint: Endpoint,
    started: Instant,
    metrics: Arc<GatewayMetrics>,
    /// Holds one of the `max_waiting` slots.
    admitted: bool,
    /// What to log, when verbose.
    what: Option<Box<str>>,
}

impl Answer {
    pub(crate) fn new(
        responder: Responder,
        endpoint: Endpoint,
        started: Instant,
        metrics: Arc<GatewayMetrics>,
        admitted: bool,
        what: Option<Box<str>>,
    ) -> Answer {
        Answer {
            responder: Some(responder),
            endpoint,
            started,
            metrics,
            admitted,
            what,
        }
    }

    /// Sends `response`, counting it.
    pub(crate) fn finish(mut self, response: HttpResponse) {
        self.complete(response);
    }

    fn complete(&mut self, response: HttpResponse) {
        let Some(responder) = self.responder.take() else {
            return;
        };
        let took = self.started.elapsed();
        match self.endpoint {
            Endpoint::Request => self.metrics.finished_request(response.status, took),
            e => self.metrics.count(e, response.status),
        }
        if self.admitted {
            self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(what) = &self.what {
            tracing::info!(
                "{} {what} -> {} in {:.1} ms",
                self.endpoint.label(),
                response.status,
                took.as_secs_f64() * 1e3
            );
        }
        // The HTTP client may have gone: nothing to do about it.
        responder.send(response);
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.complete(HttpResponse::text(503, "gateway stopping"));
    }
}

/// What the HTTP thread asks the relay to do.
pub(crate) enum Command {
    /// SERVICE SEND and wait for the reply.
    Request {
        service: String,
        subject: String,
        body: Vec<u8>,
        timeout: Duration,
        /// How long the broker holds it first (delay/1; zero: not held).
        delay: Duration,
        answer: Answer,
    },
    /// MAILBOX SEND.
    Mail {
        address: String,
        subject: String,
        body: Vec<u8>,
        answer: Answer,
    },
    /// STREAM SEND.
    Stream {
        stream: String,
        subject: String,
        body: Vec<u8>,
        answer: Answer,
    },
}

impl Command {
    /// The answer it carries.
    pub(crate) fn into_answer(self) -> Answer {
        match self {
            Command::Request { answer, .. }
            | Command::Mail { answer, .. }
            | Command::Stream { answer, .. } => answer,
        }
    }
}

/// What the relay keeps per broker.
struct Link {
    pending: Pending<Answer>,
    reopens: u64,
    /// When a refused handshake was last logged: once, then every 10 s
    /// while it lasts, so it is seen but does not flood the log.
    told_refused: Option<Instant>,
}

pub(crate) struct Relay {
    opts: GatewayOptions,
    commands: Receiver<Command>,
    wake: WakeReceiver,
    shared: Arc<Shared>,
    brokers: Option<Brokers>,
    links: Vec<Link>,
    run: String,
    next_connect: Instant,
}

impl Relay {
    pub(crate) fn new(
        opts: GatewayOptions,
        commands: Receiver<Command>,
        wake: WakeReceiver,
        shared: Arc<Shared>,
    ) -> Relay {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Relay {
            opts,
            commands,
            wake,
            shared,
            brokers: None,
            links: Vec::new(),
            run: run_id(std::process::id(), nanos),
            next_connect: Instant::now(),
        }
    }

    fn metrics(&self) -> &GatewayMetrics {
        &self.shared.metrics
    }

    pub(crate) fn run(mut self) {
        while !self.shared.stop.load(Ordering::SeqCst) {
            self.shared.liveness.beat();
            if self.brokers.is_none() {
                self.try_connect();
            }
            self.take_commands();
            self.send_barriers();
            let now = Instant::now();
            for i in 0..self.links.len() {
                for answer in self.links[i].pending.expire(now) {
                    answer.finish(HttpResponse::text(504, "no reply in time"));
                }
            }
            self.observe_connection();
            self.sleep();
        }
        self.shutdown();
    }

    /// Sets up one connection per broker. They connect in the background
    /// (and reconnect by themselves), so this fails only on an endpoint
    /// ZeroMQ cannot use.
    fn try_connect(&mut self) {
        let now = Instant::now();
        if now < self.next_connect {
            return;
        }
        let endpoints = match parse_endpoints(&self.opts.endpoint) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("gateway/broker/endpoint: {e}");
                self.next_connect = after(now, RETRY);
                return;
            }
        };
        let mut o = ClientOptions::new(endpoints[0].clone(), self.opts.address.clone());
        o.timeout = self.opts.broker_timeout;
        // Three pings per timeout: with one, a pong a little later than
        // the previous one made the broker "silent" for a moment, and
        // requests arriving then got 503.
        o.heartbeat =
            (self.opts.broker_timeout / 3).clamp(Duration::from_millis(50), Duration::from_secs(1));
        o.plain = self.opts.plain.clone();
        o.curve = self.opts.curve.clone();
        match Brokers::connect(&endpoints, &o, self.opts.balance) {
            Ok(b) => {
                tracing::info!(
                    "connecting to {} as {}",
                    endpoints.join(", "),
                    self.opts.address
                );
                // A tracker run per broker: `<run><i>.r<seq>`, so each
                // connection's replies and barriers are told apart.
                self.links = (0..b.len())
                    .map(|i| Link {
                        pending: Pending::new(format!("{}{i}.", self.run)),
                        reopens: 0,
                        told_refused: None,
                    })
                    .collect();
                self.brokers = Some(b);
            }
            Err(e) => {
                tracing::error!("{e}; trying again in {RETRY:?}");
                self.next_connect = after(now, RETRY);
            }
        }
    }

    fn observe_connection(&mut self) {
        let Some(brokers) = self.brokers.as_mut() else {
            return;
        };
        while let Some(ev) = brokers.next_event() {
            match ev {
                BrokerEvent::Up(i) => tracing::info!("broker {} connected", brokers.endpoint(i)),
                BrokerEvent::Down(i) => {
                    tracing::warn!("broker {} not connected", brokers.endpoint(i))
                }
            }
        }
        let mut up = false;
        let mut reconnects = 0;
        for (i, link) in self.links.iter_mut().enumerate() {
            let c = &brokers.clients()[i];
            up |= c.state() == crate::mlm::ConnState::Connected;
            let reopens = c.stats().reopens;
            if reopens != link.reopens {
                // The connection was opened again: barriers and refusals
                // of the old one will never come.
                reconnects += reopens.saturating_sub(link.reopens);
                link.reopens = reopens;
                link.pending.settle_all();
            }
            let due = link
                .told_refused
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
            if due {
                if let Some(e) = c.refused_handshake() {
                    tracing::warn!("{e}; still trying");
                    link.told_refused = Some(Instant::now());
                }
            }
        }
        self.metrics().reconnects.inc_by(reconnects);
        if self.shared.connected.swap(up, Ordering::Relaxed) != up {
            self.metrics().connected.set(i64::from(up));
            if up {
                tracing::info!("serving: a broker is connected");
            } else {
                tracing::warn!("no broker connected");
            }
        }
    }

    fn take_commands(&mut self) {
        for _ in 0..BATCH {
            match self.commands.try_recv() {
                Ok(cmd) => self.command(cmd),
                Err(_) => break,
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        // Not into a client's outbox while its broker is away: the HTTP
        // client is told now rather than served after an unknown time.
        let chosen = self
            .brokers
            .as_mut()
            .and_then(|b| match b.pick(Instant::now()) {
                Pick::Use(i) => Some(i),
                Pick::Wait | Pick::NoBroker => None,
            });
        let (Some(i), Some(brokers)) = (chosen, self.brokers.as_mut()) else {
            cmd.into_answer()
                .finish(HttpResponse::text(503, "broker not connected"));
            return;
        };
        let client = brokers.client(i);
        match cmd {
            Command::Request {
                service,
                subject,
                body,
                timeout,
                delay,
                answer,
            } => {
                if !delay.is_zero() && !client.supports_delay() {
                    answer.finish(HttpResponse::text(
                        501,
                        &format!("delay: {}", crate::mlm::client::NO_DELAY),
                    ));
                    return;
                }
                let pending = &mut self.links[i].pending;
                // The reply cannot come before the broker queues it.
                let deadline = after(Instant::now(), timeout.saturating_add(delay));
                let tracker = pending.add(&service, deadline, answer);
                let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
                let sent =
                    client.sendfor_delayed(&service, &subject, &tracker, ms, vec![body], delay);
                if let Err(e) = sent {
                    if let Some(answer) = pending.cancel(&tracker) {
                        answer.finish(send_failed(&e));
                    }
                }
            }
            Command::Mail {
                address,
                subject,
                body,
                answer,
            } => {
                let r = client.sendto(&address, &subject, "", 0, vec![body]);
                answer.finish(match r {
                    Ok(()) => accepted(),
                    Err(e) => send_failed(&e),
                });
            }
            Command::Stream {
                stream,
                subject,
                body,
                answer,
            } => {
                let r = client
                    .switch_producer(&stream)
                    .and_then(|()| client.send(&subject, vec![body]));
                answer.finish(match r {
                    Ok(()) => accepted(),
                    Err(e) => send_failed(&e),
                });
            }
        }
    }

    fn send_barriers(&mut self) {
        let Some(brokers) = self.brokers.as_mut() else {
            return;
        };
        let address = self.opts.address.clone();
        for (i, link) in self.links.iter_mut().enumerate() {
            let Some(tracker) = link.pending.barrier() else {
                continue;
            };
            let sent =
                brokers
                    .client(i)
                    .sendto(&address, BARRIER_SUBJECT, &tracker, 0, vec![Vec::new()]);
            if let Err(e) = sent {
                // Without it the batch settles only at the next barrier,
                // which is as good.
                tracing::debug!("barrier not sent: {e}");
            }
        }
    }

    fn sleep(&mut self) {
        let now = Instant::now();
        let mut until = after(now, MAX_SLEEP);
        for link in &self.links {
            if let Some(d) = link.pending.next_deadline() {
                until = until.min(d);
            }
        }
        if self.brokers.is_none() {
            until = until.min(self.next_connect);
        }
        self.wake.arm();
        if !self.commands.is_empty() || self.shared.stop.load(Ordering::SeqCst) {
            self.wake.disarm();
            // Still look at the sockets, without waiting, so a flood of
            // commands cannot starve replies.
            until = now;
        }
        let timeout = until.saturating_duration_since(now);
        let fd = self.wake.as_raw_fd();
        let woken = match self.brokers.as_mut() {
            Some(b) => b.poll(Some(fd), timeout),
            None => {
                let mut items = [zmq::PollItem::from_fd(fd, zmq::POLLIN)];
                let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
                let _ = zmq::poll(&mut items, ms);
                Ok(items[0].is_readable())
            }
        };
        self.wake.disarm();
        match woken {
            Ok(true) => self.wake.drain(),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!("broker connection: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Deliveries and refusals in the order each connection received
        // them (a refusal belongs to the batch whose barrier had not come
        // back yet), each matched on its own broker's Pending.
        while let Some((i, w)) = self.brokers.as_mut().and_then(Brokers::next_in_order) {
            match w {
                Wait::Delivery(d) => self.delivery(i, d),
                Wait::Refused(r) => self.refused(i, r),
                Wait::Woken | Wait::Timeout => {}
            }
        }
    }

    fn refused(&mut self, i: usize, r: Refusal) {
        match &r.kind {
            RefusalKind::ServiceQueueFull { service } => {
                self.metrics().broker_refusals.inc();
                if let Some(answer) = self.links[i].pending.on_refused(service) {
                    answer.finish(HttpResponse::text(
                        429,
                        &format!("broker refused the request: {r}"),
                    ));
                }
            }
            RefusalKind::AccessDenied {
                target: "service",
                name,
            } => {
                self.metrics().broker_refusals.inc();
                if let Some(answer) = self.links[i].pending.on_refused(name) {
                    answer.finish(HttpResponse::text(
                        403,
                        &format!("broker refused the request: {r}"),
                    ));
                }
            }
            RefusalKind::MailboxFull { .. } => {
                self.metrics().broker_refusals.inc();
                tracing::warn!("broker refused mail: {r}");
            }
            _ => tracing::warn!("broker error: {r}"),
        }
    }

    fn delivery(&mut self, i: usize, d: Delivery) {
        if d.kind != DeliveryKind::Mailbox {
            return;
        }
        let pending = &mut self.links[i].pending;
        if d.subject == BARRIER_SUBJECT && pending.is_barrier(&d.tracker) {
            pending.on_barrier(&d.tracker);
            return;
        }
        match pending.on_reply(&d.tracker) {
            Matched::Waiting(answer) => {
                let frames = d.content.len();
                let mut content = d.content;
                let first = if content.is_empty() {
                    Vec::new()
                } else {
                    content.swap_remove(0)
                };
                let response = if d.subject.starts_with(ERROR_REPLY_PREFIX) {
                    HttpResponse::new(502, "text/plain; charset=utf-8", first)
                } else {
                    HttpResponse::new(200, "application/octet-stream", first)
                };
                answer.finish(response.with_header("alaska-frames", frames.to_string()));
            }
            Matched::Late => self.metrics().late_replies.inc(),
            Matched::Unmatched => {
                self.metrics().unmatched_replies.inc();
                tracing::debug!(
                    "mail from {:?} (subject {:?}, tracker {:?}) matches no request: discarded",
                    d.sender,
                    d.subject,
                    d.tracker
                );
            }
        }
    }

    fn shutdown(&mut self) {
        for link in &mut self.links {
            for answer in link.pending.drain() {
                answer.finish(HttpResponse::text(503, "gateway stopping"));
            }
        }
        while let Ok(cmd) = self.commands.try_recv() {
            drop(cmd); // an Answer dropped unanswered says 503
        }
        self.shared.connected.store(false, Ordering::SeqCst);
        self.metrics().connected.set(0);
        if let Some(b) = self.brokers.take() {
            for (i, r) in b.close() {
                if let Err(e) = r {
                    tracing::debug!("closing broker connection {i}: {e}");
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Also on a panic: /health must not keep saying "connected" for a
        // relay that is gone (its liveness stops too, so a systemd
        // watchdog restarts the gateway).
        self.shared.connected.store(false, Ordering::SeqCst);
    }
}

fn accepted() -> HttpResponse {
    HttpResponse::text(202, "accepted")
}

fn send_failed(e: &ClientError) -> HttpResponse {
    match e {
        ClientError::Encode(_) => HttpResponse::text(400, &e.to_string()),
        ClientError::Unsupported(m) => HttpResponse::text(501, &format!("delay: {m}")),
        _ => HttpResponse::text(503, &format!("broker: {e}")),
    }
}
