//! [`Client`]: the API over a [`Transport`] (the sockets) and a
//! [`Session`] (the protocol state). It turns socket readiness and monitor
//! events into session events, and offers two ways to drive them:
//!
//! - blocking calls ([`Client::recv`], [`Client::wait`], the registrations)
//!   that poll on the caller's thread;
//! - a non-blocking interface ([`Client::poll_items`], [`Client::process`],
//!   [`Client::next_delivery`], [`Client::next_refusal`],
//!   [`Client::next_deadline`]) with which one thread drives several
//!   clients (one per broker) and other descriptors in one `zmq::poll`.
//!
//! The blocking calls are loops over the non-blocking ones.

use std::os::unix::io::RawFd;
use std::time::{Duration, Instant};

use super::delivery::{AckToken, Delivery, Wait};
use super::error::ClientError;
use super::options::ClientOptions;
use super::refusal::Refusal;
use super::session::{Call, Event, HandshakeFailure, Registration, Reply, Session};
use super::state::{ClientStats, ConnState, Maintenance};
use super::transport::{
    ms, probe_mechanism, MonitorEvent, Transport, PROTOCOL_ERROR_CRYPTOGRAPHIC,
    PROTOCOL_ERROR_MECHANISM_MISMATCH,
};
use crate::mlm::codec::{Content, Message, Status};
use crate::time::after;

/// Bare hang-ups during the handshake (libzmq reconnects every 100 ms) to
/// see before one is reported as the failure of the first open: a later
/// attempt may name the cause (see [`Session::handshake_verdict`]).
const HANGUPS_BEFORE_VERDICT: u32 = 2;

/// How long the broker is given to say which security mechanism it uses,
/// when a handshake failed on a bare hang-up.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A Malamute client. See the module documentation.
pub struct Client {
    transport: Transport,
    session: Session,
    opts: ClientOptions,
    closed: bool,
}

impl Client {
    /// Connects with a context of its own. See [`Client::connect_in`].
    pub fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        Client::connect_in(&zmq::Context::new(), opts)
    }

    /// Connects to `opts.endpoint` and opens the connection under
    /// `opts.address`, waiting at most `opts.timeout` for the broker's OK.
    pub fn connect_in(ctx: &zmq::Context, opts: ClientOptions) -> Result<Client, ClientError> {
        let transport = Transport::open(ctx, &opts)?;
        let session = Session::new(&opts, Instant::now());
        let mut client = Client {
            transport,
            session,
            opts,
            closed: false,
        };
        client.first_open()?;
        Ok(client)
    }

    /// Connects with a context of its own. See [`Client::connect_lazy_in`].
    pub fn connect_lazy(opts: ClientOptions) -> Result<Client, ClientError> {
        Client::connect_lazy_in(&zmq::Context::new(), opts)
    }

    /// Sets the sockets up and returns at once, without waiting for the
    /// broker: the state is [`ConnState::Lost`] until the transport comes
    /// up, then CONNECTION OPEN goes out, and registrations made meanwhile
    /// ([`Client::set_worker`] and the others return at once while the
    /// broker is away) are replayed after its OK, sends kept in the outbox
    /// are written after them. A broker that is down at start is retried
    /// in the background like one that went away later, so a program with
    /// several brokers is never held up by one of them. Only a bad
    /// endpoint is an error here; refused credentials are logged.
    pub fn connect_lazy_in(ctx: &zmq::Context, opts: ClientOptions) -> Result<Client, ClientError> {
        let transport = Transport::open(ctx, &opts)?;
        let session = Session::new_lazy(&opts, Instant::now());
        Ok(Client {
            transport,
            session,
            opts,
            closed: false,
        })
    }

    /// Waits for the transport handshake, so that a refused connection, a
    /// failed authentication and a silent broker are told apart, and then
    /// for the OK to CONNECTION OPEN (written by the session when the
    /// transport comes up).
    fn first_open(&mut self) -> Result<(), ClientError> {
        let deadline = after(Instant::now(), self.opts.timeout);
        loop {
            if let Some(f) = self.session.handshake_verdict(HANGUPS_BEFORE_VERDICT) {
                return Err(self.handshake_error(f));
            }
            match self.session.take_reply(Call::Open) {
                Some(Reply::Ok(_)) => return Ok(()),
                Some(Reply::Refused(status)) => {
                    return Err(ClientError::Refused {
                        what: Call::Open.command(),
                        status,
                    })
                }
                None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(if self.session.transport_up() {
                    ClientError::Timeout {
                        what: Call::Open.command(),
                        waited: self.opts.timeout,
                    }
                } else {
                    ClientError::Unreachable {
                        endpoint: self.opts.endpoint.clone(),
                        waited: self.opts.timeout,
                    }
                });
            }
            self.poll_and_read(deadline.saturating_duration_since(now))?;
        }
    }

    fn handshake_error(&self, f: HandshakeFailure) -> ClientError {
        let endpoint = self.opts.endpoint.clone();
        let ours = match (&self.opts.curve, &self.opts.plain) {
            (Some(_), _) => "CURVE",
            (None, Some(_)) => "PLAIN",
            (None, None) => "NULL",
        };
        // libzmq reports a mismatch only when we find it first; when the
        // broker does, it hangs up (NoDetail). Asking the broker which
        // mechanism it uses tells the two apart, and names it.
        let theirs = match f {
            HandshakeFailure::MechanismMismatch | HandshakeFailure::NoDetail => {
                probe_mechanism(&endpoint, PROBE_TIMEOUT)
            }
            _ => None,
        };
        let mismatch = match &theirs {
            Some(t) => t != ours,
            None => f == HandshakeFailure::MechanismMismatch,
        };
        if mismatch {
            return ClientError::MechanismMismatch {
                endpoint,
                ours,
                theirs,
            };
        }
        if let Some(keys) = &self.opts.curve {
            return match f {
                HandshakeFailure::Auth => ClientError::UnknownClientKey {
                    endpoint,
                    client_key: keys.client.public.to_z85(),
                },
                // The broker closes the connection without a word when our
                // HELLO does not decrypt; a WELCOME that does not decrypt
                // on our side means the same.
                HandshakeFailure::NoDetail | HandshakeFailure::Cryptographic => {
                    ClientError::WrongServerKey {
                        endpoint,
                        server_key: keys.server.to_z85(),
                    }
                }
                _ => ClientError::Handshake { endpoint },
            };
        }
        match f {
            HandshakeFailure::Auth => ClientError::AuthFailed { endpoint },
            // A PLAIN client talking to a NULL broker (or the reverse) ends
            // up here; so does a ZAP refusal on some libzmq versions.
            HandshakeFailure::Protocol | HandshakeFailure::NoDetail
                if self.opts.plain.is_some() =>
            {
                ClientError::AuthFailed { endpoint }
            }
            _ => ClientError::Handshake { endpoint },
        }
    }

    /// Why the transport handshake was refused (credentials, security
    /// mismatch) before the connection ever opened, if it was. For a lazy
    /// client, which does not stop on it.
    pub fn refused_handshake(&self) -> Option<ClientError> {
        if self.session.state() == ConnState::Connected {
            return None;
        }
        self.session
            .handshake_verdict(HANGUPS_BEFORE_VERDICT)
            .map(|f| self.handshake_error(f))
    }

    /// Whether a handshake ended in a bare hang-up whose cause a later
    /// attempt may still name: [`Client::refused_handshake`] says nothing
    /// yet, and waiting for libzmq's next attempt may tell more.
    pub fn handshake_unsettled(&self) -> bool {
        self.session.state() != ConnState::Connected
            && self.session.handshake_failure().is_some()
            && self
                .session
                .handshake_verdict(HANGUPS_BEFORE_VERDICT)
                .is_none()
    }

    /// The last handshake failure seen before the connection opened,
    /// settled or not: for an error message when giving up, where it says
    /// more than "unreachable".
    pub fn last_handshake_failure(&self) -> Option<ClientError> {
        if self.session.state() == ConnState::Connected {
            return None;
        }
        self.session
            .handshake_failure()
            .map(|f| self.handshake_error(f))
    }

    /// Our address.
    pub fn address(&self) -> &str {
        &self.opts.address
    }

    /// The endpoint we connect to.
    pub fn endpoint(&self) -> &str {
        &self.opts.endpoint
    }

    /// The client's view of the broker right now.
    pub fn state(&self) -> ConnState {
        self.session.state()
    }

    /// Whether the broker is known to be out of reach now: the last attempt
    /// to connect failed, or the connection dropped, and it has not come
    /// back. (A broker that does not answer at all is only found out by
    /// time: [`ConnState`] stays `Lost`.)
    pub fn unreachable(&self) -> bool {
        self.session.unreachable()
    }

    /// Whether service deliveries must be confirmed (the broker supports
    /// acknowledgements and we asked for them).
    pub fn acks_enabled(&self) -> bool {
        self.session.acks_enabled()
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.session.stats()
    }

    /// Messages waiting in the outbox for the broker to come back.
    pub fn outbox_len(&self) -> usize {
        self.session.outbox_len()
    }

    /// The last ERROR the broker sent that no call was waiting for. (The
    /// refusals themselves are kept, typed: [`Client::next_refusal`].)
    pub fn take_last_error(&mut self) -> Option<Status> {
        self.session.take_last_error()
    }

    /// Offers the service `address` for subjects matching `pattern`
    /// (SERVICE OFFER); waits for the broker's OK. Replayed on reconnect.
    pub fn set_worker(&mut self, address: &str, pattern: &str) -> Result<(), ClientError> {
        self.register(Registration::Offer {
            address: address.into(),
            pattern: pattern.into(),
        })
    }

    /// Reads `stream` for subjects matching `pattern` (STREAM READ); waits
    /// for the broker's OK. Replayed on reconnect.
    pub fn set_consumer(&mut self, stream: &str, pattern: &str) -> Result<(), ClientError> {
        self.register(Registration::Consume {
            stream: stream.into(),
            pattern: pattern.into(),
        })
    }

    /// Publishes on `stream` from now on (STREAM WRITE); waits for the OK.
    /// Replayed on reconnect.
    pub fn set_producer(&mut self, stream: &str) -> Result<(), ClientError> {
        self.register(Registration::Produce {
            stream: stream.into(),
        })
    }

    /// Like [`Client::set_producer`] but does not wait for the OK, so a
    /// sender that switches streams pays no round trip. The broker handles
    /// commands in order, so sends that follow go to the new stream.
    pub fn switch_producer(&mut self, stream: &str) -> Result<(), ClientError> {
        self.session
            .switch_producer(stream, Instant::now(), &mut self.transport)
    }

    /// The stream our STREAM SENDs go to, if any.
    pub fn producer(&self) -> Option<&str> {
        self.session.producer()
    }

    /// STREAM SEND on the current producer stream.
    pub fn send(&mut self, subject: &str, content: Content) -> Result<(), ClientError> {
        self.post(Message::StreamSend {
            subject: subject.into(),
            content,
        })
    }

    /// MAILBOX SEND to `address`.
    pub fn sendto(
        &mut self,
        address: &str,
        subject: &str,
        tracker: &str,
        timeout_ms: u32,
        content: Content,
    ) -> Result<(), ClientError> {
        self.post(Message::MailboxSend {
            address: address.into(),
            subject: subject.into(),
            tracker: tracker.into(),
            timeout: timeout_ms,
            content,
        })
    }

    /// SERVICE SEND to the service `address`.
    pub fn sendfor(
        &mut self,
        address: &str,
        subject: &str,
        tracker: &str,
        timeout_ms: u32,
        content: Content,
    ) -> Result<(), ClientError> {
        self.post(Message::ServiceSend {
            address: address.into(),
            subject: subject.into(),
            tracker: tracker.into(),
            timeout: timeout_ms,
            content,
        })
    }

    /// Whether the broker of the current connection holds delayed requests:
    /// its OK to our CONNECTION OPEN said `delay/1` (the project's broker
    /// does, the reference Malamute does not).
    pub fn supports_delay(&self) -> bool {
        self.session.delay_capable()
    }

    /// SERVICE SEND to the service `address`, held by the broker for
    /// `delay` before it is queued (delay/1; the timeout counts from then).
    /// A zero delay is a plain [`Client::sendfor`]. Fails with
    /// [`ClientError::Unsupported`] when the broker does not hold delayed
    /// requests (the reference Malamute), and with
    /// [`ClientError::NotConnected`] while the broker is away: a delayed
    /// request is never kept in the outbox for a later connection, whose
    /// broker might not hold it. Delays are whole milliseconds (rounded
    /// up), at most one year.
    pub fn sendfor_delayed(
        &mut self,
        address: &str,
        subject: &str,
        tracker: &str,
        timeout_ms: u32,
        content: Content,
        delay: Duration,
    ) -> Result<(), ClientError> {
        if delay.is_zero() {
            return self.sendfor(address, subject, tracker, timeout_ms, content);
        }
        let ms = u64::try_from(delay.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        if ms > crate::mlm::MAX_DELAY_MS {
            return Err(ClientError::Unsupported(format!(
                "a delay of {delay:?} is longer than the one year a broker holds a request"
            )));
        }
        self.session.post_delayed(
            Message::ServiceSend {
                address: address.into(),
                subject: subject.into(),
                tracker: tracker.into(),
                timeout: timeout_ms,
                content,
            },
            ms,
            Instant::now(),
            &mut self.transport,
        )
    }

    /// Confirms a service delivery (acknowledged mode only). A token from
    /// before a reconnect is ignored: the broker has requeued that request.
    pub fn confirm(&mut self, token: AckToken) -> Result<(), ClientError> {
        self.confirm_all(&[token])
    }

    /// Confirms several deliveries in as few CONFIRM commands as fit: the
    /// tracker carries comma-separated numbers (at most 255 bytes each).
    pub fn confirm_all(&mut self, tokens: &[AckToken]) -> Result<(), ClientError> {
        self.session
            .confirm_all(tokens, Instant::now(), &mut self.transport)
    }

    /// Maintenance on or off: while on, no new service requests come to
    /// this client; what it already received is still its own to finish
    /// and answer. With a broker that says `maint/1` the connection stays
    /// as it is; with any other broker (the reference Malamute) the offers
    /// are withdrawn by closing the connection and opening it again without
    /// them, and made again when maintenance ends. Never waits: while the
    /// broker is away the wish is applied when it is back. See
    /// [`Session::set_maintenance`].
    pub fn set_maintenance(&mut self, on: bool) -> Result<(), ClientError> {
        self.session
            .set_maintenance(on, Instant::now(), &mut self.transport)
    }

    /// Where maintenance stands.
    pub fn maintenance(&self) -> Maintenance {
        self.session.maintenance()
    }

    /// Sends any command as it is. Sends of STREAM, MAILBOX and SERVICE
    /// messages should use the typed methods; this is for tools and tests.
    pub fn post(&mut self, msg: Message) -> Result<(), ClientError> {
        self.session.post(msg, Instant::now(), &mut self.transport)
    }

    // ----- the non-blocking interface -----------------------------------

    /// The DEALER socket and its monitor, for the caller's `zmq::poll`
    /// (with `POLLIN`), in the order [`Client::process`] takes them.
    pub fn poll_items(&self) -> [zmq::PollItem<'_>; 2] {
        self.transport.poll_items()
    }

    /// Reads, without blocking, what the poll said is readable (the socket,
    /// the monitor), then runs the timers (heartbeat, silence, re-open) for
    /// `now`. Deliveries and refusals are then waiting in
    /// [`Client::next_delivery`] and [`Client::next_refusal`]. Passing
    /// `true` for a source that is not readable costs one failed read.
    pub fn process(
        &mut self,
        readable_socket: bool,
        readable_monitor: bool,
        now: Instant,
    ) -> Result<(), ClientError> {
        self.read(readable_socket, readable_monitor, now)?;
        self.session.on_tick(now, &mut self.transport)
    }

    /// The next delivery already received, if any.
    pub fn next_delivery(&mut self) -> Option<Delivery> {
        self.session.next_delivery()
    }

    /// The broker's refusal of our CONNECTION OPEN (an ACL that forbids
    /// our address), as an error, until an OPEN is accepted.
    pub fn open_refused(&self) -> Option<ClientError> {
        self.session
            .open_refused()
            .map(|status| ClientError::Refused {
                what: "CONNECTION OPEN",
                status: status.clone(),
            })
    }

    /// Why the broker refused our last service offer, until one is
    /// accepted (see [`Session::offer_refused`]).
    pub fn offer_refused(&self) -> Option<&str> {
        self.session.offer_refused()
    }

    /// The next refusal of one of our sends already received, if any
    /// (e.g. `service default queue full`).
    pub fn next_refusal(&mut self) -> Option<Refusal> {
        self.session.next_refusal()
    }

    /// All refusals received and not taken yet.
    pub fn take_refusals(&mut self) -> Vec<Refusal> {
        self.session.take_refusals()
    }

    /// When [`Client::process`] must run next even if nothing is readable
    /// (the next ping, silence check or re-open).
    pub fn next_deadline(&self) -> Instant {
        self.session.next_deadline()
    }

    // ----- blocking calls ---------------------------------------------

    /// Waits at most `timeout` for a delivery. Refusals are not returned
    /// here: they stay for [`Client::next_refusal`], [`Client::wait`] and
    /// [`Client::close`].
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Delivery>, ClientError> {
        let deadline = after(Instant::now(), timeout);
        loop {
            if let Some(d) = self.session.next_delivery() {
                return Ok(Some(d));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_for_input(None, left)? {
                Input::Deliveries | Input::Woken => {}
                Input::Timeout => return Ok(self.session.next_delivery()),
            }
        }
    }

    /// Waits at most `timeout` for a delivery, a refusal of one of our
    /// sends, or for `wake_fd` to become readable (the caller drains it),
    /// keeping the connection alive meanwhile. This is how a thread that
    /// owns the client also listens to other threads.
    pub fn wait(&mut self, wake_fd: Option<RawFd>, timeout: Duration) -> Result<Wait, ClientError> {
        let deadline = after(Instant::now(), timeout);
        loop {
            if let Some(w) = self.next_wait() {
                return Ok(w);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_for_input(wake_fd, left)? {
                Input::Deliveries => {}
                Input::Woken => return Ok(self.next_wait().unwrap_or(Wait::Woken)),
                Input::Timeout => return Ok(self.next_wait().unwrap_or(Wait::Timeout)),
            }
        }
    }

    /// The next delivery or refusal already received, in the order they
    /// came ([`Wait::Delivery`] or [`Wait::Refused`]): a refusal is given
    /// out after the deliveries that arrived before it and before those
    /// that arrived after it.
    pub fn next_in_order(&mut self) -> Option<Wait> {
        self.next_wait()
    }

    fn next_wait(&mut self) -> Option<Wait> {
        Some(match self.session.next_in_order()? {
            Ok(d) => Wait::Delivery(d),
            Err(r) => Wait::Refused(r),
        })
    }

    /// One turn of the blocking loop: timers, then a poll until `left`
    /// has passed or a timer is due, then whatever became readable.
    fn wait_for_input(
        &mut self,
        wake_fd: Option<RawFd>,
        left: Duration,
    ) -> Result<Input, ClientError> {
        let now = Instant::now();
        self.session.on_tick(now, &mut self.transport)?;
        let deadline = after(now, left);
        let until = deadline.min(self.session.next_deadline());
        let [sock, mon] = self.transport.poll_items();
        let mut items = [
            sock,
            mon,
            zmq::PollItem::from_fd(wake_fd.unwrap_or(-1), zmq::POLLIN),
        ];
        let n = if wake_fd.is_some() { 3 } else { 2 };
        match zmq::poll(&mut items[..n], ms(until.saturating_duration_since(now))) {
            // A signal (e.g. the one asking us to stop) is not an error:
            // the caller looks at its flags on Timeout.
            Err(zmq::Error::EINTR) => return Ok(Input::Timeout),
            r => r?,
        };
        let (sock_in, mon_in) = (items[0].is_readable(), items[1].is_readable());
        let woken = n == 3 && items[2].is_readable();
        let now = Instant::now();
        self.read(sock_in, mon_in, now)?;
        Ok(if woken {
            Input::Woken
        } else if now >= deadline {
            Input::Timeout
        } else {
            Input::Deliveries
        })
    }

    /// Says goodbye (CONNECTION CLOSE) and waits briefly for the OK. The
    /// broker answers it after everything we sent before, so refusals of
    /// our sends have arrived by then: if any arrived that were never
    /// taken (through [`Client::wait`] or [`Client::next_refusal`]), they
    /// are returned as [`ClientError::Rejected`] once the connection is
    /// closed.
    pub fn close(mut self) -> Result<(), ClientError> {
        self.say_goodbye()?;
        let refusals = self.session.take_refusals();
        if refusals.is_empty() {
            Ok(())
        } else {
            Err(ClientError::Rejected(refusals))
        }
    }

    /// Drops the connection without CONNECTION CLOSE and without sending
    /// what is queued, as a crashed process would. For tests and tools.
    pub fn abort(mut self) {
        self.closed = true;
        self.session.begin_close();
        self.transport.discard_on_close();
    }

    fn say_goodbye(&mut self) -> Result<(), ClientError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if !self.session.begin_close() {
            return Ok(());
        }
        // Whatever is still queued goes out before the goodbye; a full
        // socket (high-water mark) is waited on, within the timeout.
        let deadline = after(Instant::now(), self.opts.timeout);
        self.flush_until(deadline)?;
        if self.session.outbox_len() > 0 {
            tracing::warn!(
                "{} message(s) not sent before closing: broker too slow",
                self.session.outbox_len()
            );
        }
        self.session.queue_close();
        self.flush_until(deadline)?;
        let wait = deadline.min(after(Instant::now(), Duration::from_secs(1)));
        let _ = self.await_reply(Call::Close, wait);
        Ok(())
    }

    /// Writes the outbox, waiting for room in the socket, until `deadline`.
    fn flush_until(&mut self, deadline: Instant) -> Result<(), ClientError> {
        loop {
            self.session.flush(Instant::now(), &mut self.transport)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if self.session.outbox_len() == 0 || left.is_zero() {
                return Ok(());
            }
            self.transport.poll_writable(left)?;
        }
    }

    // ----- internals ----------------------------------------------------

    /// Sends a registration and waits for its OK.
    fn register(&mut self, reg: Registration) -> Result<(), ClientError> {
        let deadline = after(Instant::now(), self.opts.timeout);
        // Sends still waiting in the outbox (a full socket) go first: the
        // registration must not overtake them, so that its OK also means
        // they reached the broker.
        if self.session.state() == ConnState::Connected && self.session.outbox_len() > 0 {
            self.flush_until(deadline)?;
            if self.session.outbox_len() > 0 {
                return Err(ClientError::Timeout {
                    what: reg.call().command(),
                    waited: self.opts.timeout,
                });
            }
        }
        let now = Instant::now();
        let Some(call) = self.session.register(reg, now, &mut self.transport)? else {
            return Ok(());
        };
        match self.await_reply(call, deadline)? {
            Reply::Ok(_) => Ok(()),
            Reply::Refused(status) => Err(ClientError::Refused {
                what: call.command(),
                status,
            }),
        }
    }

    /// Waits for the answer to `call`; deliveries that arrive meanwhile
    /// are kept for later. Timers do not run here (as in the first open,
    /// the wait is bounded by the timeout).
    fn await_reply(&mut self, call: Call, deadline: Instant) -> Result<Reply, ClientError> {
        loop {
            if let Some(reply) = self.session.take_reply(call) {
                return Ok(reply);
            }
            let now = Instant::now();
            if now >= deadline {
                self.session.cancel_call();
                return Err(ClientError::Timeout {
                    what: call.command(),
                    waited: self.opts.timeout,
                });
            }
            self.poll_and_read(deadline.saturating_duration_since(now))?;
        }
    }

    /// Polls the socket and the monitor for at most `left`, then reads.
    fn poll_and_read(&mut self, left: Duration) -> Result<(), ClientError> {
        let mut items = self.transport.poll_items();
        match zmq::poll(&mut items, ms(left)) {
            Err(zmq::Error::EINTR) => return Ok(()),
            r => r?,
        };
        let (sock_in, mon_in) = (items[0].is_readable(), items[1].is_readable());
        self.read(sock_in, mon_in, Instant::now())
    }

    /// Hands the session what the monitor and the socket have, without
    /// blocking. Monitor first: a disconnect must be known before what
    /// follows it is read.
    fn read(&mut self, socket: bool, monitor: bool, now: Instant) -> Result<(), ClientError> {
        if monitor {
            while let Some((ev, value)) = self.transport.next_event()? {
                if let Some(ev) = session_event(ev, value) {
                    self.session.handle(ev, now, &mut self.transport)?;
                }
            }
        }
        if socket {
            while let Some(decoded) = self.transport.read()? {
                match decoded {
                    Ok(msg) => self.session.on_message(msg, now, &mut self.transport)?,
                    Err(e) => self.session.on_malformed(e, now),
                }
            }
        }
        Ok(())
    }
}

/// What ended one turn of a blocking loop.
enum Input {
    /// Something was read (maybe deliveries).
    Deliveries,
    /// The extra descriptor is readable.
    Woken,
    /// The time is up.
    Timeout,
}

/// The monitor events the session cares about; `value` is the event's
/// (for a protocol failure, which protocol error).
fn session_event(ev: MonitorEvent, value: u32) -> Option<Event> {
    match ev {
        MonitorEvent::Disconnected => Some(Event::TransportDown),
        MonitorEvent::HandshakeSucceeded => Some(Event::TransportUp),
        MonitorEvent::ConnectRetried => Some(Event::ConnectRetried),
        MonitorEvent::HandshakeFailedAuth => Some(Event::HandshakeFailed(HandshakeFailure::Auth)),
        MonitorEvent::HandshakeFailedProtocol => Some(Event::HandshakeFailed(match value {
            PROTOCOL_ERROR_MECHANISM_MISMATCH => HandshakeFailure::MechanismMismatch,
            PROTOCOL_ERROR_CRYPTOGRAPHIC => HandshakeFailure::Cryptographic,
            _ => HandshakeFailure::Protocol,
        })),
        MonitorEvent::HandshakeFailedNoDetail => {
            Some(Event::HandshakeFailed(HandshakeFailure::NoDetail))
        }
        _ => None,
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Err(e) = self.say_goodbye() {
            tracing::debug!("closing connection: {e}");
        }
    }
}
