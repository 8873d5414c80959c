//! The client's protocol state, without sockets and without a clock.
//!
//! [`Session`] holds everything the client knows about its conversation
//! with the broker: the connection state, the epoch (which CONNECTION OPEN
//! we are in) and the acknowledged-delivery numbering, the registrations to
//! replay after a reopen, the outbox of messages kept while the broker is
//! away, which answers (OK/ERROR) are still due and for whom, and the
//! heartbeat, silence and re-open timers. Time is passed in (`now`).
//!
//! It consumes [`Event`]s (a decoded message, a frame that did not decode,
//! transport up or down, a failed handshake, a timer tick) and user
//! commands (register, post, confirm, close), in the style of rumqttc's
//! `MqttState`. What it produces:
//! - messages to write, handed at once to a [`Wire`] passed in, so that a
//!   write that would block is answered on the spot (the message stays in
//!   the outbox) and the hot path neither queues nor allocates twice;
//! - deliveries for the user ([`Session::next_delivery`]);
//! - refusals of our sends ([`Session::next_refusal`]);
//! - the answer to the one synchronous call that may be waiting
//!   ([`Session::take_reply`], keyed by [`Call`]);
//! - its state ([`Session::state`]) and the instant it next needs a tick
//!   ([`Session::next_deadline`]).
//!
//! Answers are routed by order: the broker handles one client's commands
//! in order and answers OPEN, STREAM WRITE/READ/CANCEL, SERVICE OFFER and
//! CLOSE with exactly one OK or ERROR each, so the session keeps a queue
//! of the answers due (`Expect`) and every OK answers its head. Sends get
//! no answer unless refused; an ERROR whose reason is a known refusal of a
//! send ("… queue full", "mailbox … full", "no stream") is taken as such
//! even while a registration waits for its answer.
//!
//! Maintenance is state too: what is wanted, and whether the broker of
//! the current connection has been told (see [`Session::set_maintenance`]).
//! It is reconciled whenever the broker is there: after every OPEN, when a
//! silent broker answers again, and at every tick until it took.
//!
//! A delayed request (delay/1, [`Session::post_delayed`]) is two commands
//! that must reach the broker one right after the other: `CONFIRM
//! tracker="delay:<ms>"`, then the SERVICE SEND. They are written together,
//! only while connected to a broker that said `delay/1` (never kept in the
//! outbox across a reconnect, where the broker on the other side may be
//! the reference Malamute, which drops a client that sends CONFIRM). When
//! the socket would block between the two, both go to the front of the
//! outbox (the CONFIRM said again, which the broker takes as the same
//! delay); a pair still in the outbox when the broker of a new connection
//! lacks `delay/1` is dropped, counted and logged.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use super::call::{Call, Registration, Reply};
pub use super::wire::{Wire, WireError};

use super::delivery::{AckToken, Delivery, DeliveryKind};
use super::error::ClientError;
use super::options::ClientOptions;
use super::refusal::Refusal;
use super::state::{ClientStats, ConnState, Maintenance};
use super::{ACK_CAPABILITY, MAINTENANCE_OFF, MAINTENANCE_ON, MAINT_CAPABILITY};
use crate::mlm::codec::{status, DecodeError, Message, Status, MAX_STRING};
use crate::mlm::{DELAY_CAPABILITY, DELAY_PREFIX};
use crate::time::after;

/// Refusals kept for the user before older ones are only counted
/// ([`ClientStats::refused`]): a caller that never looks must not make the
/// client grow without bound.
pub const REFUSALS_KEPT: usize = 1024;

/// How a transport handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The broker refused our credentials (PLAIN) or our key (CURVE).
    Auth,
    /// The broker and we use different security mechanisms.
    MechanismMismatch,
    /// A CURVE message did not decrypt.
    Cryptographic,
    /// Another protocol error.
    Protocol,
    /// No reason given: the broker closed the connection during the
    /// handshake (with CURVE: it could not decrypt our HELLO, because we
    /// use the wrong broker key; some libzmq versions report ZAP refusals
    /// so too).
    NoDetail,
}

impl HandshakeFailure {
    /// What it means, for a log line.
    pub fn describe(self) -> &'static str {
        match self {
            HandshakeFailure::Auth => "the broker refused our credentials or key",
            HandshakeFailure::MechanismMismatch => {
                "the broker uses another security mechanism than ours"
            }
            HandshakeFailure::Cryptographic => "a CURVE message did not decrypt",
            HandshakeFailure::Protocol => "a protocol error",
            HandshakeFailure::NoDetail => {
                "the broker closed the connection (with CURVE: wrong broker public key?)"
            }
        }
    }
}

/// Something that happened to the session.
#[derive(Debug)]
pub enum Event {
    /// A message from the broker.
    Message(Message),
    /// Frames from the broker that did not decode.
    Malformed(DecodeError),
    /// The transport handshake succeeded: the broker can be written to.
    TransportUp,
    /// The transport connection ended.
    TransportDown,
    /// The transport handshake failed.
    HandshakeFailed(HandshakeFailure),
    /// A connection attempt failed (refused, unreachable) or a dropped
    /// connection is being retried: the broker cannot be reached now.
    ConnectRetried,
    /// Time passed: heartbeat, silence and re-open timers.
    Tick,
}

/// An answer (OK or ERROR) the broker owes us, in the order it will come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The answer to the CONNECTION OPEN that counts (the last one sent).
    Open,
    /// The answer to a replayed registration (`offer`: a SERVICE OFFER,
    /// whose refusal leaves the worker serving nothing).
    Replay { offer: bool },
    /// The answer a synchronous call may be waiting for.
    Answer(Call),
    /// An answer nobody waits for (a posted STREAM WRITE, an OPEN that a
    /// newer one replaced).
    Unclaimed,
}

/// The synchronous call in progress.
#[derive(Debug)]
struct Awaiting {
    call: Call,
    /// Recorded for replay once the broker says OK.
    registration: Option<Registration>,
}

/// What the broker should replay to after a reopen, in replay order:
/// producer, consumers, offers.
#[derive(Debug, Default)]
struct Registrations {
    producer: Option<String>,
    consumers: Vec<(String, String)>,
    offers: Vec<(String, String)>,
}

impl Registrations {
    fn add(&mut self, r: Registration) {
        match r {
            Registration::Offer { address, pattern } => self.offers.push((address, pattern)),
            Registration::Consume { stream, pattern } => self.consumers.push((stream, pattern)),
            Registration::Produce { stream } => self.producer = Some(stream),
        }
    }

    /// The commands that make them again; without the offers when
    /// `offers` is false (a client in maintenance on a broker without
    /// `maint/1` keeps them withdrawn).
    fn messages(&self, offers: bool) -> Vec<Message> {
        let mut all = Vec::with_capacity(1 + self.consumers.len() + self.offers.len());
        if let Some(stream) = &self.producer {
            all.push(Message::StreamWrite {
                stream: stream.clone(),
            });
        }
        for (stream, pattern) in &self.consumers {
            all.push(Message::StreamRead {
                stream: stream.clone(),
                pattern: pattern.clone(),
            });
        }
        if offers {
            all.extend(self.offer_messages());
        }
        all
    }

    fn offer_messages(&self) -> impl Iterator<Item = Message> + '_ {
        self.offers
            .iter()
            .map(|(address, pattern)| Message::ServiceOffer {
                address: address.clone(),
                pattern: pattern.clone(),
            })
    }
}

/// The client's protocol state. See the module documentation.
#[derive(Debug)]
pub struct Session {
    address: String,
    endpoint: String,
    timeout: Duration,
    heartbeat: Duration,
    credit: Option<u16>,
    outbox_limit: usize,
    state: ConnState,
    transport_up: bool,
    /// A CONNECTION OPEN was written (or tried) and not answered yet;
    /// [`ConnState::Opening`] unless the broker was silent meanwhile.
    opening: bool,
    closing: bool,
    acks: bool,
    epoch: u64,
    seq: u64,
    registrations: Registrations,
    /// Registered while the broker was away and not yet written: written
    /// when it answers again without a reopen, else replayed.
    unsent: Vec<Registration>,
    outbox: VecDeque<Message>,
    expected: VecDeque<Expect>,
    awaiting: Option<Awaiting>,
    reply: Option<(Call, Reply)>,
    inbox: VecDeque<Delivery>,
    refusals: VecDeque<Refusal>,
    /// Why the last SERVICE OFFER was refused, until one is accepted.
    offer_refused: Option<String>,
    /// The broker's answer to our last refused CONNECTION OPEN (an ACL
    /// that forbids our address), until an OPEN is accepted.
    open_refused: Option<Status>,
    /// For each refusal kept, how many deliveries had arrived before it:
    /// with `taken`, this keeps deliveries and refusals in arrival order.
    refusals_after: VecDeque<u64>,
    /// Deliveries that arrived, and that were taken, since the start.
    arrived: u64,
    taken: u64,
    handshake_failure: Option<HandshakeFailure>,
    /// Handshakes before the first open that ended in a bare hang-up.
    hangups: u32,
    /// An attempt to reach the broker failed since the transport was last
    /// up (see [`Session::unreachable`]).
    connect_failed: bool,
    last_heard: Instant,
    last_ping: Instant,
    opening_since: Instant,
    last_error: Option<Status>,
    stats: ClientStats,
    /// The broker of this connection said `maint/1`.
    maint_capable: bool,
    /// The broker of this connection said `delay/1`.
    delay_capable: bool,
    /// Maintenance asked for.
    maint_wanted: bool,
    /// What the broker was last told (its flag, or our offers withdrawn).
    maint_applied: bool,
    /// PINGs written and PONGs read on this connection: PONGs come back in
    /// order, so the PONG of a PING written after a command means the
    /// broker has handled that command.
    pings: u64,
    pongs: u64,
    /// The PING whose PONG says the broker has taken the last maintenance
    /// command (a CONFIRM, which is never answered).
    maint_ping: Option<u64>,
}

impl Session {
    /// A session about to open: the first CONNECTION OPEN is written when
    /// the transport comes up, and [`Call::Open`] waits for its answer.
    pub fn new(opts: &ClientOptions, now: Instant) -> Session {
        Session {
            address: opts.address.clone(),
            endpoint: opts.endpoint.clone(),
            timeout: opts.timeout,
            heartbeat: opts.heartbeat,
            credit: opts.credit,
            outbox_limit: opts.outbox_limit,
            state: ConnState::Lost,
            transport_up: false,
            opening: false,
            closing: false,
            acks: false,
            epoch: 0,
            seq: 0,
            registrations: Registrations::default(),
            unsent: Vec::new(),
            outbox: VecDeque::new(),
            expected: VecDeque::new(),
            awaiting: Some(Awaiting {
                call: Call::Open,
                registration: None,
            }),
            reply: None,
            inbox: VecDeque::new(),
            refusals: VecDeque::new(),
            offer_refused: None,
            open_refused: None,
            refusals_after: VecDeque::new(),
            arrived: 0,
            taken: 0,
            handshake_failure: None,
            hangups: 0,
            connect_failed: false,
            last_heard: now,
            last_ping: now,
            opening_since: now,
            last_error: None,
            stats: ClientStats::default(),
            maint_capable: false,
            delay_capable: false,
            maint_wanted: false,
            maint_applied: false,
            pings: 0,
            pongs: 0,
            maint_ping: None,
        }
    }

    /// A session that nobody waits on to open: the first CONNECTION OPEN is
    /// written when the transport comes up (however late), registrations
    /// made before then are replayed after its OK, and sends wait in the
    /// outbox. This is how one broker that is down at start does not hold
    /// up a program that talks to several.
    pub fn new_lazy(opts: &ClientOptions, now: Instant) -> Session {
        let mut s = Session::new(opts, now);
        s.awaiting = None;
        s
    }

    // ----- what the session reports -------------------------------------

    /// The client's view of the broker.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// Whether the transport handshake is done.
    pub fn transport_up(&self) -> bool {
        self.transport_up
    }

    /// Whether service deliveries carry tokens to confirm.
    pub fn acks_enabled(&self) -> bool {
        self.acks
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Messages kept for the broker's return.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// The stream our STREAM SENDs go to, if any.
    pub fn producer(&self) -> Option<&str> {
        self.registrations.producer.as_deref()
    }

    /// Where maintenance stands.
    pub fn maintenance(&self) -> Maintenance {
        Maintenance {
            wanted: self.maint_wanted,
            applied: self.maint_applied == self.maint_wanted
                && self.state == ConnState::Connected
                && self.maint_ping.is_none_or(|n| self.pongs >= n),
            by_broker: self.maint_capable,
        }
    }

    /// The last ERROR the broker sent that no call was waiting for.
    pub fn take_last_error(&mut self) -> Option<Status> {
        self.last_error.take()
    }

    /// How the handshake failed, while the first open is pending.
    pub fn handshake_failure(&self) -> Option<HandshakeFailure> {
        self.handshake_failure
    }

    /// The handshake failure to report before the first open, once it is
    /// known well enough: at once when it has a cause, and after
    /// `hangups` bare hang-ups ([`HandshakeFailure::NoDetail`]) otherwise.
    /// A hang-up alone is ambiguous: both sides check the other's security
    /// mechanism, and when the broker finds a mismatch first, all we see is
    /// that it hung up; libzmq reconnects, and a later attempt may name the
    /// cause.
    pub fn handshake_verdict(&self, hangups: u32) -> Option<HandshakeFailure> {
        match self.handshake_failure {
            Some(HandshakeFailure::NoDetail) if self.hangups < hangups => None,
            f => f,
        }
    }

    /// Whether the broker is known to be out of reach right now: an attempt
    /// to connect failed (or the connection dropped and is being retried)
    /// and the transport has not come up since. A broker that is merely
    /// slow to accept is not reported here; its caller judges by time.
    pub fn unreachable(&self) -> bool {
        self.connect_failed && !self.transport_up
    }

    /// The next delivery for the user.
    pub fn next_delivery(&mut self) -> Option<Delivery> {
        let d = self.inbox.pop_front()?;
        self.taken += 1;
        Some(d)
    }

    /// The broker's answer to our last CONNECTION OPEN when it refused it
    /// (`ERROR 300 access denied: ...`), until one is accepted.
    pub fn open_refused(&self) -> Option<&Status> {
        self.open_refused.as_ref()
    }

    /// Why the broker refused our last SERVICE OFFER (`ERROR 300 invalid
    /// pattern ...`, `access denied: may not offer ...`), until an offer is
    /// accepted: while set, this connection serves nothing.
    pub fn offer_refused(&self) -> Option<&str> {
        self.offer_refused.as_deref()
    }

    fn offer_was_refused(&mut self, status: &Status) {
        let why = format!("{} {}", status.code, status.reason);
        tracing::error!(
            "broker {} refused our service offer: {why}; this connection serves nothing",
            self.endpoint
        );
        self.offer_refused = Some(why);
    }

    /// The next refusal of one of our sends.
    pub fn next_refusal(&mut self) -> Option<Refusal> {
        self.refusals_after.pop_front();
        self.refusals.pop_front()
    }

    /// The next delivery or refusal, whichever arrived first: a program
    /// that matches refusals to its sends by order (the broker names no
    /// tracker in them) needs them as they came.
    pub fn next_in_order(&mut self) -> Option<Result<Delivery, Refusal>> {
        match self.refusals_after.front() {
            Some(&after) if after <= self.taken || self.inbox.is_empty() => {
                self.next_refusal().map(Err)
            }
            _ => self.next_delivery().map(Ok),
        }
    }

    /// All refusals not taken yet.
    pub fn take_refusals(&mut self) -> Vec<Refusal> {
        self.refusals_after.clear();
        self.refusals.drain(..).collect()
    }

    /// The answer to `call`, once it came.
    pub fn take_reply(&mut self, call: Call) -> Option<Reply> {
        match &self.reply {
            Some((c, _)) if *c == call => self.reply.take().map(|(_, r)| r),
            _ => None,
        }
    }

    /// The caller stopped waiting for its call: a late answer is ignored
    /// (and a registration it would have confirmed is not recorded).
    pub fn cancel_call(&mut self) {
        self.awaiting = None;
    }

    /// When the session next needs a [`Event::Tick`].
    pub fn next_deadline(&self) -> Instant {
        let ping = self.last_ping + self.heartbeat;
        let silence = after(self.last_heard, self.timeout);
        let reopen = after(self.opening_since, self.timeout);
        match self.state {
            ConnState::Lost if self.opening => ping.min(reopen),
            ConnState::Lost => ping,
            ConnState::Opening => reopen,
            ConnState::Connected => ping.min(silence),
        }
    }

    // ----- events ---------------------------------------------------------

    /// Handles one event.
    pub fn handle(
        &mut self,
        event: Event,
        now: Instant,
        wire: &mut impl Wire,
    ) -> Result<(), ClientError> {
        match event {
            Event::Message(msg) => return self.on_message(msg, now, wire),
            Event::Malformed(e) => self.on_malformed(e, now),
            Event::TransportUp => return self.on_transport_up(now, wire),
            Event::TransportDown => self.on_transport_down(),
            Event::HandshakeFailed(f) => self.on_handshake_failed(f),
            Event::ConnectRetried => self.connect_failed = true,
            Event::Tick => return self.on_tick(now, wire),
        }
        Ok(())
    }

    /// A message from the broker.
    pub fn on_message(
        &mut self,
        msg: Message,
        now: Instant,
        wire: &mut impl Wire,
    ) -> Result<(), ClientError> {
        self.last_heard = now;
        let forgot_us =
            matches!(&msg, Message::Error { status } if status.code == status::COMMAND_INVALID);
        if self.state == ConnState::Lost && !forgot_us {
            self.answers_again(now, wire)?;
        }
        match msg {
            Message::StreamDeliver {
                address,
                sender,
                subject,
                content,
            } => self.arrive(Delivery {
                kind: DeliveryKind::Stream,
                sender,
                address,
                subject,
                tracker: String::new(),
                content,
                ack: None,
            }),
            Message::MailboxDeliver {
                sender,
                address,
                subject,
                tracker,
                content,
            } => self.arrive(Delivery {
                kind: DeliveryKind::Mailbox,
                sender,
                address,
                subject,
                tracker,
                content,
                ack: None,
            }),
            Message::ServiceDeliver {
                sender,
                address,
                subject,
                tracker,
                content,
            } => {
                let ack = self.acks.then(|| {
                    // Both sides count deliveries since the OPEN alike.
                    self.seq += 1;
                    AckToken {
                        epoch: self.epoch,
                        seq: self.seq,
                    }
                });
                self.arrive(Delivery {
                    kind: DeliveryKind::Service,
                    sender,
                    address,
                    subject,
                    tracker,
                    content,
                    ack,
                })
            }
            Message::ConnectionPong => self.pongs += 1,
            Message::Ok { status } => self.on_ok(status, now, wire)?,
            Message::Error { status } => self.on_error(status, now, wire)?,
            other => tracing::warn!("ignoring unexpected {} from broker", other.name()),
        }
        Ok(())
    }

    /// Frames from the broker that did not decode: counted, logged and
    /// skipped; a bad frame from the broker must not stop us. The broker
    /// still spoke, so it is not silent.
    pub fn on_malformed(&mut self, e: DecodeError, now: Instant) {
        self.last_heard = now;
        self.stats.malformed += 1;
        tracing::warn!("ignoring malformed message from broker: {e}");
    }

    /// The transport handshake succeeded. A new transport connection means
    /// whoever is there does not know us yet: open (again).
    pub fn on_transport_up(
        &mut self,
        now: Instant,
        wire: &mut impl Wire,
    ) -> Result<(), ClientError> {
        let was_up = self.transport_up;
        self.transport_up = true;
        self.connect_failed = false;
        // A handshake that succeeded: credentials refused earlier are
        // accepted now, and must not be reported later.
        self.handshake_failure = None;
        if !was_up && !self.closing && self.state != ConnState::Connected {
            if self.epoch > 0 {
                tracing::info!("reconnected to broker {}", self.endpoint);
            }
            self.open(now, wire)?;
        }
        Ok(())
    }

    /// The transport connection ended. Answers due on it will never come;
    /// a call waiting for one runs into its timeout.
    pub fn on_transport_down(&mut self) {
        if self.transport_up {
            tracing::warn!("lost connection to broker {}", self.endpoint);
        }
        self.transport_up = false;
        self.state = ConnState::Lost;
        self.opening = false;
        self.expected.clear();
    }

    /// The transport handshake failed: the first open reports it; later
    /// ones are logged (libzmq keeps retrying).
    pub fn on_handshake_failed(&mut self, f: HandshakeFailure) {
        let again = self.handshake_failure == Some(f);
        if self.epoch == 0 {
            if f == HandshakeFailure::NoDetail {
                self.hangups += 1;
            }
            // A failure with a cause is kept over a bare hang-up.
            if self
                .handshake_failure
                .is_none_or(|old| old == HandshakeFailure::NoDetail)
            {
                self.handshake_failure = Some(f);
            }
        }
        // Before the first open, a caller waiting for it reports the
        // failure; nobody waits for the first open of a lazy session, so it
        // is said here, once (libzmq retries every second).
        let reported = self.epoch == 0 && (self.is_awaiting(Call::Open) || again);
        if !reported {
            tracing::error!(
                "security handshake with broker {} failed: {}",
                self.endpoint,
                f.describe()
            );
        }
    }

    /// Heartbeat, silence detection, re-open of a lost OPEN, and a flush
    /// of what waits in the outbox.
    pub fn on_tick(&mut self, now: Instant, wire: &mut impl Wire) -> Result<(), ClientError> {
        if self.state != ConnState::Lost && now >= after(self.last_heard, self.timeout) {
            tracing::warn!(
                "broker {} silent for {:?}: reporting it gone, still trying",
                self.endpoint,
                self.timeout
            );
            self.state = ConnState::Lost;
        }
        if self.opening && !self.closing && now >= after(self.opening_since, self.timeout) {
            // Our OPEN was lost (with a dying connection, say): start over.
            // Not sooner: a second OPEN resets the broker's delivery count.
            // (Also when the broker went silent meanwhile: ERROR 500s are
            // ignored while an OPEN is outstanding, so only this retries.)
            self.open(now, wire)?;
        } else if self.state != ConnState::Opening && now >= self.last_ping + self.heartbeat {
            self.last_ping = now;
            if self.transport_up {
                match self.write(&Message::ConnectionPing, None, now, wire) {
                    Ok(()) => self.pings += 1,
                    Err(WireError::WouldBlock) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if self.state == ConnState::Connected && !self.outbox.is_empty() {
            self.flush(now, wire)?;
        }
        // A maintenance change the socket could not take before.
        self.reconcile_maintenance(now, wire)?;
        Ok(())
    }

    // ----- commands -------------------------------------------------------

    /// Starts a registration. Returns the call to wait for, or `None` when
    /// the broker is away: then it is recorded and replayed, since waiting
    /// would block the caller for nothing.
    pub fn register(
        &mut self,
        reg: Registration,
        now: Instant,
        wire: &mut impl Wire,
    ) -> Result<Option<Call>, ClientError> {
        let msg = reg.message();
        if self.state != ConnState::Connected {
            msg.encode_header()?;
            self.registrations.add(reg.clone());
            self.unsent.push(reg);
            return Ok(None);
        }
        if matches!(reg, Registration::Offer { .. }) && self.offers_withdrawn() {
            // In maintenance on a broker without maint/1: recorded, and
            // offered when maintenance ends.
            msg.encode_header()?;
            self.registrations.add(reg);
            return Ok(None);
        }
        let call = reg.call();
        self.write(&msg, Some(Expect::Answer(call)), now, wire)?;
        self.reply = None;
        self.awaiting = Some(Awaiting {
            call,
            registration: Some(reg),
        });
        Ok(Some(call))
    }

    /// Publishes on `stream` from now on without waiting for the OK. The
    /// broker handles commands in order, so sends that follow go there.
    pub fn switch_producer(
        &mut self,
        stream: &str,
        now: Instant,
        wire: &mut impl Wire,
    ) -> Result<(), ClientError> {
        if self.registrations.producer.as_deref() == Some(stream) {
            return Ok(());
        }
        self.post(
            Message::StreamWrite {
                stream: stream.into(),
            },
            now,
            wire,
        )?;
        self.registrations.producer = Some(stream.into());
        Ok(())
    }

    /// Sends a message now if the broker is there and nothing is queued
    /// before it, else keeps it in the outbox (bounded).
    pub fn post(
        &mut self,
        msg: Message,
        now: Instant,
        wire: &mut impl Wire,
    ) -> Result<(), ClientError> {
        if self.state == ConnState::Connected && self.outbox.is_empty() {
            match self.write(&msg, expect_for_posted(&msg), now, wire) {
                Ok(()) => return Ok(()),
                // It encoded, so it is fit for the outbox.
                Err(WireError::WouldBlock) => {}
                Err(e) => return Err(e.into()),
            }
        } else {
            // Encode now so that a bad field is the caller's error, not a
            // surprise when the outbox is flushed.
            msg.encode_header()?;
        }
        self.queue(msg)
    }

    /// Whether the broker of the current (or last) connection said
    /// `delay/1` in its OK to our CONNECTION OPEN.
    pub fn delay_capable(&self) -> bool {
        self.delay_capable
    }

    /// Sends a SERVICE SEND that the broker holds for `delay_ms` before
    /// queueing it (delay/1): `CONFIRM tracker="delay:<ms>"` and the send,
    /// written together. Refused unless connected to a broker that said
    /// `delay/1` (see the module documentation for why the pair is never
    /// kept for a later connection).
    pub fn post_delayed(
        &mut self,
        send: Message,
        delay_ms: u64,
        now: Instant,
        wire: &mut impl Wire,
    ) -> Result<(), ClientError> {
        if self.state != ConnState::Connected {
            return Err(ClientError::NotConnected(
                "a delayed request is sent only while connected to the broker",
            ));
        }
        if !self.delay_capable {
            return Err(ClientError::Unsupported(NO_DELAY.into()));
        }
        send.encode_header()?;
        let confirm = delay_command(delay_ms);
        if !self.outbox.is_empty() {
            // Behind what waits, in order, together.
            if self.outbox.len() + 2 > self.outbox_limit {
                self.stats.dropped += 1;
                return Err(ClientError::OutboxFull(self.outbox_limit));
            }
            self.outbox.push_back(confirm);
            self.outbox.push_back(send);
            return Ok(());
        }
        match self.write(&confirm, None, now, wire) {
            Ok(()) => {}
            Err(WireError::WouldBlock) => {
                self.outbox.push_back(confirm);
                self.outbox.push_back(send);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        match self.write(&send, expect_for_posted(&send), now, wire) {
            Ok(()) => Ok(()),
            Err(WireError::WouldBlock) => {
                // Said again right before it: nothing may come between.
                self.outbox.push_front(send);
                self.outbox.push_front(confirm);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Confirms deliveries (acknowledged mode only) in as few CONFIRM
    /// commands as fit: comma-separated numbers, at most 255 bytes each.
    /// Tokens from before a reopen are ignored: the broker has requeued
    /// those requests and numbers from 1 again.
    pub fn confirm_all(
        &mut self,
        tokens: &[AckToken],
        now: Instant,
        wire: &mut impl Wire,
    ) -> Result<(), ClientError> {
        // While opening, every token is from the previous epoch.
        if !self.acks || self.state == ConnState::Opening {
            return Ok(());
        }
        let epoch = self.epoch;
        let mut tracker = String::new();
        for t in tokens.iter().filter(|t| t.epoch == epoch) {
            let seq = t.seq.to_string();
            if !tracker.is_empty() && tracker.len() + 1 + seq.len() > MAX_STRING {
                self.post_confirm(std::mem::take(&mut tracker), now, wire)?;
            }
            if !tracker.is_empty() {
                tracker.push(',');
            }
            tracker.push_str(&seq);
        }
        if !tracker.is_empty() {
            self.post_confirm(tracker, now, wire)?;
        }
        Ok(())
    }

    /// Asks for maintenance on or off: no new service requests while on;
    /// what was delivered is still ours to finish and answer.
    ///
    /// With a broker that said `maint/1` this is one command
    /// (`CONFIRM tracker="maintenance:on"`), and the connection, its
    /// numbering and its unconfirmed requests stay as they are. With any
    /// other broker our offers are withdrawn the only way MLM has: CONNECTION
    /// CLOSE, then CONNECTION OPEN again under the same address, replaying
    /// everything but the offers (deliveries already pushed to us arrive
    /// before the OK to the CLOSE and are ours as usual; mail for our address
    /// waits in the broker); ending maintenance offers again. While the
    /// broker is away the wish is recorded and applied when it is back, and
    /// it survives every reopen.
    pub fn set_maintenance(
        &mut self,
        on: bool,
        now: Instant,
        wire: &mut impl Wire,
    ) -> Result<(), ClientError> {
        self.maint_wanted = on;
        self.reconcile_maintenance(now, wire)
    }

    /// Whether our offers are to stay away from the broker: maintenance is
    /// wanted and the broker cannot hold it for us.
    fn offers_withdrawn(&self) -> bool {
        self.maint_wanted && !self.maint_capable
    }

    /// Brings the broker in line with the maintenance wanted, if it is
    /// there and not already.
    fn reconcile_maintenance(
        &mut self,
        now: Instant,
        wire: &mut impl Wire,
    ) -> Result<(), ClientError> {
        if self.state != ConnState::Connected
            || self.closing
            || self.maint_wanted == self.maint_applied
        {
            return Ok(());
        }
        let on = self.maint_wanted;
        if self.maint_capable {
            let confirm = maintenance_command(on);
            return match self.write(&confirm, None, now, wire) {
                Ok(()) => {
                    self.maint_applied = on;
                    self.ping_after_maintenance(now, wire);
                    Ok(())
                }
                // Tried again at the next tick.
                Err(WireError::WouldBlock) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        if on {
            if self.registrations.offers.is_empty() {
                self.maint_applied = true;
                return Ok(());
            }
            // Withdraw: CLOSE (its OK is nobody's), then OPEN again; the
            // replay after the OK leaves the offers out.
            return match self.write(
                &Message::ConnectionClose,
                Some(Expect::Unclaimed),
                now,
                wire,
            ) {
                Ok(()) => {
                    tracing::info!(
                        "maintenance: withdrawing our offers from {} (closing and opening \
                         the connection again without them)",
                        self.endpoint
                    );
                    self.send_open(now, wire)
                }
                Err(WireError::WouldBlock) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        let offers: Vec<Message> = self.registrations.offer_messages().collect();
        for (i, m) in offers.iter().enumerate() {
            match self.write(m, Some(Expect::Replay { offer: true }), now, wire) {
                Ok(()) => {}
                // Nothing written yet: all of them at the next tick.
                Err(WireError::WouldBlock) if i == 0 => return Ok(()),
                Err(e) => tracing::warn!("offering again {m} failed: {e}"),
            }
        }
        self.maint_applied = false;
        Ok(())
    }

    /// A PING after a maintenance command: its PONG tells that the broker
    /// has taken the command, since a CONFIRM gets no answer of its own.
    fn ping_after_maintenance(&mut self, now: Instant, wire: &mut impl Wire) {
        match self.write(&Message::ConnectionPing, None, now, wire) {
            Ok(()) => {
                self.pings += 1;
                self.maint_ping = Some(self.pings);
            }
            // Not said: reported applied as soon as it was written.
            Err(_) => self.maint_ping = None,
        }
    }

    fn post_confirm(
        &mut self,
        tracker: String,
        now: Instant,
        wire: &mut impl Wire,
    ) -> Result<(), ClientError> {
        self.post(
            Message::Confirm {
                tracker,
                status: Status::new(status::SUCCESS, ""),
            },
            now,
            wire,
        )
    }

    /// Starts saying goodbye: nothing reopens from now on. Returns whether
    /// the broker is there to say it to.
    pub fn begin_close(&mut self) -> bool {
        self.closing = true;
        self.state == ConnState::Connected
    }

    /// Queues CONNECTION CLOSE behind the outbox (not counted against its
    /// bound) and makes [`Call::Close`] wait for its answer.
    pub fn queue_close(&mut self) {
        self.outbox.push_back(Message::ConnectionClose);
        self.reply = None;
        self.awaiting = Some(Awaiting {
            call: Call::Close,
            registration: None,
        });
    }

    /// Writes the outbox while connected, until it is empty or the wire
    /// would block.
    pub fn flush(&mut self, now: Instant, wire: &mut impl Wire) -> Result<(), ClientError> {
        // The delay command just written, if the next message is its send.
        let mut delay_written: Option<Message> = None;
        while self.state == ConnState::Connected {
            let Some(msg) = self.outbox.pop_front() else {
                break;
            };
            if is_delay_command(&msg) && !self.delay_capable {
                // Kept from a connection to a broker that held delays; this
                // one does not (and the reference drops a client that
                // sends CONFIRM): the pair is dropped, not sent undelayed.
                let send = self.outbox.pop_front();
                self.stats.dropped += 1;
                tracing::warn!(
                    "broker {} does not hold delayed requests (no delay/1): dropping the delayed {}",
                    self.endpoint,
                    send.map_or_else(|| "request".to_string(), |m| m.to_string())
                );
                continue;
            }
            match self.write(&msg, expect_for_posted(&msg), now, wire) {
                Ok(()) => {
                    delay_written = is_delay_command(&msg).then_some(msg);
                }
                Err(WireError::WouldBlock) => {
                    self.outbox.push_front(msg);
                    if let Some(confirm) = delay_written.take() {
                        // Said again right before its send.
                        self.outbox.push_front(confirm);
                    }
                    break;
                }
                Err(e) => {
                    self.outbox.push_front(msg);
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    // ----- internals ------------------------------------------------------

    fn write(
        &mut self,
        msg: &Message,
        expect: Option<Expect>,
        now: Instant,
        wire: &mut impl Wire,
    ) -> Result<(), WireError> {
        wire.write(msg)?;
        // Any command keeps the broker from expiring us: no ping needed.
        self.last_ping = now;
        if let Some(e) = expect {
            self.expected.push_back(e);
        }
        Ok(())
    }

    fn queue(&mut self, msg: Message) -> Result<(), ClientError> {
        if self.outbox.len() >= self.outbox_limit {
            self.stats.dropped += 1;
            tracing::warn!(
                limit = self.outbox_limit,
                "broker unavailable and outbox full: dropping {msg}"
            );
            return Err(ClientError::OutboxFull(self.outbox_limit));
        }
        self.outbox.push_back(msg);
        Ok(())
    }

    /// The broker spoke while we thought it gone.
    fn answers_again(&mut self, now: Instant, wire: &mut impl Wire) -> Result<(), ClientError> {
        // A message read after the transport went down is from the old
        // connection; and with an OPEN outstanding its answer decides.
        if !self.transport_up || self.opening {
            return Ok(());
        }
        tracing::info!("broker {} answers again", self.endpoint);
        self.state = ConnState::Connected;
        // It never forgot us, so nothing is replayed: write what was
        // registered meanwhile, then what waited.
        let withheld = self.offers_withdrawn();
        for reg in std::mem::take(&mut self.unsent) {
            if withheld && matches!(reg, Registration::Offer { .. }) {
                continue;
            }
            let offer = matches!(reg, Registration::Offer { .. });
            if let Err(e) = self.write(&reg.message(), Some(Expect::Replay { offer }), now, wire) {
                tracing::warn!("registering {reg:?} failed: {e}");
            }
        }
        self.reconcile_maintenance(now, wire)?;
        self.flush(now, wire)
    }

    fn on_ok(
        &mut self,
        status: Status,
        now: Instant,
        wire: &mut impl Wire,
    ) -> Result<(), ClientError> {
        match self.expected.pop_front() {
            Some(Expect::Open) => {
                self.opening = false;
                self.open_refused = None;
                self.answer(Call::Open, Reply::Ok(status.clone()));
                self.opened(&status, now, wire);
            }
            Some(Expect::Answer(call)) => {
                if call == Call::Offer {
                    self.offer_refused = None;
                }
                self.answer(call, Reply::Ok(status))
            }
            Some(Expect::Replay { offer }) => {
                if offer {
                    self.offer_refused = None;
                }
            }
            Some(Expect::Unclaimed) => {}
            None => tracing::debug!("ignoring an OK nothing was waiting for"),
        }
        Ok(())
    }

    fn on_error(
        &mut self,
        status: Status,
        now: Instant,
        wire: &mut impl Wire,
    ) -> Result<(), ClientError> {
        if status.code == status::COMMAND_INVALID {
            return self.on_forgotten(status, now, wire);
        }
        let refusal = Refusal::from_status(status);
        if refusal.is_of_a_send() || self.expected.is_empty() {
            self.refused(refusal);
            return Ok(());
        }
        let status = refusal.status;
        match self.expected.pop_front() {
            Some(Expect::Open) => {
                self.opening = false;
                self.open_refused = Some(status.clone());
                if self.is_awaiting(Call::Open) {
                    self.answer(Call::Open, Reply::Refused(status));
                } else {
                    tracing::warn!(
                        "broker refused CONNECTION OPEN: {} {}; will retry",
                        status.code,
                        status.reason
                    );
                }
                // Pings go on; the broker answers them ERROR 500 and that
                // opens again.
                self.state = ConnState::Lost;
            }
            Some(Expect::Replay { offer: true }) => self.offer_was_refused(&status),
            Some(Expect::Replay { offer: false }) => tracing::warn!(
                "broker refused a replayed registration: {} {}",
                status.code,
                status.reason
            ),
            Some(Expect::Answer(call)) => {
                if call == Call::Offer {
                    self.offer_was_refused(&status);
                }
                self.answer(call, Reply::Refused(status))
            }
            Some(Expect::Unclaimed) | None => self.refused(Refusal::from_status(status)),
        }
        Ok(())
    }

    /// ERROR 500: the broker no longer knows us (it restarted, expired us,
    /// or dropped us for a malformed command). Open again and replay, as
    /// libmlm does.
    fn on_forgotten(
        &mut self,
        status: Status,
        now: Instant,
        wire: &mut impl Wire,
    ) -> Result<(), ClientError> {
        // An OPEN is never answered ERROR 500, and once the broker has read
        // it, it knows us: while one is outstanding, a 500 answers a command
        // written before it.
        if self.opening {
            if self.expected.front() == Some(&Expect::Open) && self.is_awaiting(Call::Open) {
                self.expected.pop_front();
                self.opening = false;
                self.answer(Call::Open, Reply::Refused(status));
                self.state = ConnState::Lost;
            } else {
                // Commands written before our new OPEN, answered by a
                // broker that did not know us yet: already handled.
                tracing::debug!("ignoring ERROR 500 sent before our CONNECTION OPEN");
            }
            return Ok(());
        }
        // Whatever is still due gets the same ERROR 500 (the broker does
        // not know us); a call among it is refused now.
        for e in std::mem::take(&mut self.expected) {
            if let Expect::Answer(call) = e {
                self.answer(call, Reply::Refused(status.clone()));
            }
        }
        if self.closing {
            // Saying goodbye to a broker that forgot us: nothing to reopen.
            self.state = ConnState::Lost;
            return Ok(());
        }
        tracing::info!(
            "broker {} forgot us ({}); opening the connection again",
            self.endpoint,
            status.reason
        );
        self.open(now, wire)
    }

    fn is_awaiting(&self, call: Call) -> bool {
        self.awaiting.as_ref().is_some_and(|a| a.call == call)
    }

    /// An answer for `call`: kept for the caller if it still waits.
    fn answer(&mut self, call: Call, reply: Reply) {
        if !self.is_awaiting(call) {
            return;
        }
        if let Some(a) = self.awaiting.take() {
            if let (Reply::Ok(_), Some(reg)) = (&reply, a.registration) {
                self.registrations.add(reg);
            }
        }
        self.reply = Some((call, reply));
    }

    fn arrive(&mut self, d: Delivery) {
        self.arrived += 1;
        self.inbox.push_back(d);
    }

    fn refused(&mut self, refusal: Refusal) {
        self.stats.refused += 1;
        tracing::warn!(
            "broker refused a message: {} {}",
            refusal.status.code,
            refusal.status.reason
        );
        self.last_error = Some(refusal.status.clone());
        if self.refusals.len() < REFUSALS_KEPT {
            self.refusals.push_back(refusal);
            self.refusals_after.push_back(self.arrived);
        }
    }

    /// Writes CONNECTION OPEN: a new epoch, numbering from 1 again.
    fn open(&mut self, now: Instant, wire: &mut impl Wire) -> Result<(), ClientError> {
        if self.epoch > 0 {
            self.stats.reopens += 1;
        }
        self.send_open(now, wire)
    }

    /// [`Session::open`] without counting a reopen (maintenance withdraws
    /// offers this way on purpose).
    fn send_open(&mut self, now: Instant, wire: &mut impl Wire) -> Result<(), ClientError> {
        // The broker forgets everything about us on OPEN.
        self.maint_applied = false;
        self.pings = 0;
        self.pongs = 0;
        self.maint_ping = None;
        self.state = ConnState::Opening;
        self.opening = true;
        self.opening_since = now;
        self.acks = false;
        self.epoch += 1;
        self.seq = 0;
        // Confirms still queued number deliveries of the old epoch; the
        // broker numbers from 1 after this OPEN, so they would confirm the
        // wrong requests.
        self.outbox
            .retain(|m| !matches!(m, Message::Confirm { .. }));
        // Only the answer to the newest OPEN counts.
        for e in self.expected.iter_mut() {
            if *e == Expect::Open {
                *e = Expect::Unclaimed;
            }
        }
        let open = Message::ConnectionOpen {
            address: self.address.clone(),
        };
        match self.write(&open, Some(Expect::Open), now, wire) {
            // Lost with the connection: the re-open timer tries again.
            Ok(()) | Err(WireError::WouldBlock) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The broker said OK to CONNECTION OPEN: CREDIT, replay, then flush.
    fn opened(&mut self, status: &Status, now: Instant, wire: &mut impl Wire) {
        self.state = ConnState::Connected;
        self.last_heard = now;
        let advertised = status
            .reason
            .split_whitespace()
            .any(|w| w == ACK_CAPABILITY);
        self.maint_capable = status
            .reason
            .split_whitespace()
            .any(|w| w == MAINT_CAPABILITY);
        self.delay_capable = status
            .reason
            .split_whitespace()
            .any(|w| w == DELAY_CAPABILITY);
        // CREDIT goes before the replayed offers: the broker must be in
        // acknowledged mode before its first SERVICE DELIVER to us, or the
        // two sides would number deliveries differently.
        if let (true, Some(credit)) = (advertised, self.credit) {
            if self
                .write(&Message::Credit { amount: credit }, None, now, wire)
                .is_ok()
            {
                self.acks = true;
            }
        }
        self.unsent.clear();
        // Maintenance before the offers, so that nothing is dispatched to
        // us in between; or the offers left out.
        if self.maint_wanted && self.maint_capable {
            match self.write(&maintenance_command(true), None, now, wire) {
                Ok(()) => {
                    self.maint_applied = true;
                    self.ping_after_maintenance(now, wire);
                }
                Err(e) => tracing::warn!("maintenance:on after the open failed: {e}"),
            }
        }
        let withheld = self.offers_withdrawn();
        if withheld {
            self.maint_applied = true;
        }
        for m in self.registrations.messages(!withheld) {
            let offer = matches!(m, Message::ServiceOffer { .. });
            if let Err(e) = self.write(&m, Some(Expect::Replay { offer }), now, wire) {
                tracing::warn!("replaying {m} failed: {e}");
            }
        }
        if let Err(e) = self.flush(now, wire) {
            tracing::warn!("flushing outbox failed: {e}");
        }
    }
}

/// The command that turns maintenance on or off at a `maint/1` broker.
fn maintenance_command(on: bool) -> Message {
    Message::Confirm {
        tracker: if on { MAINTENANCE_ON } else { MAINTENANCE_OFF }.into(),
        status: Status::new(status::SUCCESS, ""),
    }
}

/// Why a delayed request is refused by a broker without `delay/1`.
pub const NO_DELAY: &str = "this broker does not hold delayed requests (the real Malamute has \
     no such feature); use alaska-broker";

/// The delay/1 command: the next SERVICE SEND is held for `ms`.
fn delay_command(ms: u64) -> Message {
    Message::Confirm {
        tracker: format!("{DELAY_PREFIX}{ms}"),
        status: Status::new(status::SUCCESS, ""),
    }
}

fn is_delay_command(msg: &Message) -> bool {
    matches!(msg, Message::Confirm { tracker, .. } if tracker.starts_with(DELAY_PREFIX))
}

/// The answer a posted (not awaited) command will get.
fn expect_for_posted(msg: &Message) -> Option<Expect> {
    match msg {
        Message::ConnectionClose => Some(Expect::Answer(Call::Close)),
        Message::ConnectionOpen { .. }
        | Message::StreamWrite { .. }
        | Message::StreamRead { .. }
        | Message::StreamCancel { .. }
        | Message::ServiceOffer { .. } => Some(Expect::Unclaimed),
        _ => None,
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
