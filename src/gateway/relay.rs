//! The relay thread: owns the broker connection, turns commands from the
//! HTTP thread into MLM sends, matches replies to the requests waiting,
//! times them out, and answers each through its responder.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::metrics::{Endpoint, GatewayMetrics};
use super::pending::{run_id, Matched, Pending};
use super::{GatewayOptions, Shared};
use crate::mlm::{
    Client, ClientError, ClientOptions, ConnState, Delivery, DeliveryKind, Refusal, RefusalKind,
    Wait,
};
use crate::ops::http::{HttpResponse, Responder};
use crate::ops::wake::WakeReceiver;
use crate::worker::ERROR_REPLY_PREFIX;

/// The subject of barrier mail (see [`super::pending`]).
pub(crate) const BARRIER_SUBJECT: &str = "alaska-gateway-barrier";

/// Longest sleep of the relay loop, so the liveness counter moves (for the
/// systemd watchdog) even when nothing happens.
const MAX_SLEEP: Duration = Duration::from_millis(500);

/// Wait between connection attempts while no broker answers.
const RETRY: Duration = Duration::from_millis(500);

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

pub(crate) struct Relay {
    opts: GatewayOptions,
    commands: Receiver<Command>,
    wake: WakeReceiver,
    shared: Arc<Shared>,
    pending: Pending<Answer>,
    client: Option<Client>,
    reopens: u64,
    next_connect: Instant,
    failed_connects: u32,
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
            pending: Pending::new(run_id(std::process::id(), nanos)),
            client: None,
            reopens: 0,
            next_connect: Instant::now(),
            failed_connects: 0,
        }
    }

    fn metrics(&self) -> &GatewayMetrics {
        &self.shared.metrics
    }

    pub(crate) fn run(mut self) {
        while !self.shared.stop.load(Ordering::SeqCst) {
            self.shared.liveness.beat();
            if self.client.is_none() {
                self.try_connect();
            }
            self.take_commands();
            self.send_barrier();
            for answer in self.pending.expire(Instant::now()) {
                answer.finish(HttpResponse::text(504, "no reply in time"));
            }
            self.observe_connection();
            self.sleep();
        }
        self.shutdown();
    }

    fn try_connect(&mut self) {
        let now = Instant::now();
        if now < self.next_connect {
            return;
        }
        let mut o = ClientOptions::new(self.opts.endpoint.clone(), self.opts.address.clone());
        o.timeout = self.opts.broker_timeout;
        o.heartbeat = self.opts.broker_timeout.min(Duration::from_secs(1));
        o.plain = self.opts.plain.clone();
        o.curve = self.opts.curve.clone();
        match Client::connect(o) {
            Ok(c) => {
                tracing::info!(
                    "connected to broker {} as {}",
                    self.opts.endpoint,
                    self.opts.address
                );
                self.reopens = c.stats().reopens;
                self.client = Some(c);
                if self.failed_connects > 0 {
                    self.metrics().reconnects.inc();
                }
                self.failed_connects = 0;
            }
            Err(e) => {
                // Said once, then every 20 attempts (10 s): a broker that
                // stays away must not flood the log.
                if self.failed_connects.is_multiple_of(20) {
                    tracing::warn!("{e}; retrying every {RETRY:?}");
                } else {
                    tracing::debug!("{e}");
                }
                self.failed_connects += 1;
                self.next_connect = Instant::now() + RETRY;
            }
        }
    }

    fn observe_connection(&mut self) {
        let (up, reopens) = match &self.client {
            Some(c) => (c.state() == ConnState::Connected, c.stats().reopens),
            None => (false, self.reopens),
        };
        if reopens != self.reopens {
            // The connection was opened again: barriers and refusals of
            // the old one will never come.
            self.metrics()
                .reconnects
                .inc_by(reopens.saturating_sub(self.reopens));
            self.reopens = reopens;
            self.pending.settle_all();
        }
        if self.shared.connected.swap(up, Ordering::Relaxed) != up {
            self.metrics().connected.set(i64::from(up));
            if up {
                tracing::info!("broker {} connected", self.opts.endpoint);
            } else {
                tracing::warn!("broker {} not connected", self.opts.endpoint);
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
        // Not into the client's outbox while the broker is away: the HTTP
        // client is told now rather than served after an unknown time.
        let Some(client) = self
            .client
            .as_mut()
            .filter(|c| c.state() == ConnState::Connected)
        else {
            cmd.into_answer()
                .finish(HttpResponse::text(503, "broker not connected"));
            return;
        };
        match cmd {
            Command::Request {
                service,
                subject,
                body,
                timeout,
                answer,
            } => {
                let deadline = Instant::now() + timeout;
                let tracker = self.pending.add(&service, deadline, answer);
                let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
                if let Err(e) = client.sendfor(&service, &subject, &tracker, ms, vec![body]) {
                    if let Some(answer) = self.pending.cancel(&tracker) {
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

    fn send_barrier(&mut self) {
        let Some(tracker) = self.pending.barrier() else {
            return;
        };
        let address = self.opts.address.clone();
        if let Some(c) = self.client.as_mut() {
            if let Err(e) = c.sendto(&address, BARRIER_SUBJECT, &tracker, 0, vec![Vec::new()]) {
                // Without it the batch settles only at the next barrier,
                // which is as good.
                tracing::debug!("barrier not sent: {e}");
            }
        }
    }

    fn sleep(&mut self) {
        let now = Instant::now();
        let mut until = now + MAX_SLEEP;
        if let Some(d) = self.pending.next_deadline() {
            until = until.min(d);
        }
        if self.client.is_none() {
            until = until.min(self.next_connect);
        }
        self.wake.arm();
        if !self.commands.is_empty() || self.shared.stop.load(Ordering::SeqCst) {
            self.wake.disarm();
            // Still look at the socket, without waiting, so a flood of
            // commands cannot starve replies.
            until = now;
        }
        let timeout = until.saturating_duration_since(now);
        let fd = self.wake.as_raw_fd();
        let waited = match self.client.as_mut() {
            Some(c) => c.wait(Some(fd), timeout),
            None => {
                let mut items = [zmq::PollItem::from_fd(fd, zmq::POLLIN)];
                let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
                let _ = zmq::poll(&mut items, ms);
                Ok(if items[0].is_readable() {
                    Wait::Woken
                } else {
                    Wait::Timeout
                })
            }
        };
        self.wake.disarm();
        // The client returns refusals in the order they came, between the
        // deliveries: each is attributed to the oldest unsettled batch.
        match waited {
            Ok(Wait::Delivery(d)) => self.delivery(d),
            Ok(Wait::Refused(r)) => self.refused(r),
            Ok(Wait::Woken) => self.wake.drain(),
            Ok(Wait::Timeout) => {}
            Err(e) => {
                tracing::warn!("broker connection: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn refused(&mut self, r: Refusal) {
        match &r.kind {
            RefusalKind::ServiceQueueFull { service } => {
                self.metrics().broker_refusals.inc();
                if let Some(answer) = self.pending.on_refused(service) {
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
                if let Some(answer) = self.pending.on_refused(name) {
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

    fn delivery(&mut self, d: Delivery) {
        if d.kind != DeliveryKind::Mailbox {
            return;
        }
        if d.subject == BARRIER_SUBJECT && self.pending.is_barrier(&d.tracker) {
            self.pending.on_barrier(&d.tracker);
            return;
        }
        match self.pending.on_reply(&d.tracker) {
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
        for answer in self.pending.drain() {
            answer.finish(HttpResponse::text(503, "gateway stopping"));
        }
        while let Ok(cmd) = self.commands.try_recv() {
            drop(cmd); // an Answer dropped unanswered says 503
        }
        self.shared.connected.store(false, Ordering::SeqCst);
        self.metrics().connected.set(0);
        if let Some(c) = self.client.take() {
            if let Err(e) = c.close() {
                tracing::debug!("closing the broker connection: {e}");
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
        _ => HttpResponse::text(503, &format!("broker: {e}")),
    }
}
