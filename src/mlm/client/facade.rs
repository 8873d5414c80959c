//! [`Client`]: the blocking API. It owns the [`Transport`] and keeps the
//! session state (connection state, epoch and ack numbering, replay list,
//! outbox, timers) next to it.

use std::collections::VecDeque;
use std::os::unix::io::RawFd;
use std::time::{Duration, Instant};

use super::delivery::{AckToken, Delivery, DeliveryKind, Wait};
use super::error::ClientError;
use super::options::ClientOptions;
use super::state::{ClientStats, ConnState};
use super::transport::{ms, MonitorEvent, Transport};
use super::ACK_CAPABILITY;
use crate::mlm::codec::{status, Content, DecodeError, Message, Status};

/// A blocking Malamute client. See the module documentation.
pub struct Client {
    transport: Transport,
    opts: ClientOptions,
    state: ConnState,
    transport_up: bool,
    acks: bool,
    epoch: u64,
    seq: u64,
    offers: Vec<(String, String)>,
    consumers: Vec<(String, String)>,
    producer: Option<String>,
    inbox: VecDeque<Delivery>,
    replies: VecDeque<Message>,
    pending_replay: usize,
    outbox: VecDeque<Message>,
    last_heard: Instant,
    last_ping: Instant,
    last_error: Option<Status>,
    opening_since: Instant,
    stats: ClientStats,
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
        let now = Instant::now();
        let mut client = Client {
            transport,
            opts,
            state: ConnState::Lost,
            transport_up: false,
            acks: false,
            epoch: 0,
            seq: 0,
            offers: Vec::new(),
            consumers: Vec::new(),
            producer: None,
            inbox: VecDeque::new(),
            replies: VecDeque::new(),
            pending_replay: 0,
            outbox: VecDeque::new(),
            last_heard: now,
            last_ping: now,
            last_error: None,
            opening_since: now,
            stats: ClientStats::default(),
            closed: false,
        };
        client.first_open()?;
        Ok(client)
    }

    fn first_open(&mut self) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.opts.timeout;
        // Wait for the transport handshake so that a refused connection, a
        // failed authentication and a silent broker are told apart.
        while !self.transport_up {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Unreachable {
                    endpoint: self.opts.endpoint.clone(),
                    waited: self.opts.timeout,
                });
            }
            if self.transport.poll_monitor(left)? {
                while let Some(ev) = self.transport.next_event()? {
                    match ev {
                        MonitorEvent::HandshakeSucceeded => self.transport_up = true,
                        MonitorEvent::HandshakeFailedAuth => {
                            return Err(ClientError::AuthFailed {
                                endpoint: self.opts.endpoint.clone(),
                            })
                        }
                        MonitorEvent::HandshakeFailedProtocol
                        | MonitorEvent::HandshakeFailedNoDetail => {
                            // A PLAIN client talking to a NULL broker (or
                            // the reverse) ends up here; so does a ZAP
                            // refusal on some libzmq versions.
                            if self.opts.plain.is_some() {
                                return Err(ClientError::AuthFailed {
                                    endpoint: self.opts.endpoint.clone(),
                                });
                            }
                            return Err(ClientError::Handshake {
                                endpoint: self.opts.endpoint.clone(),
                            });
                        }
                        _ => {}
                    }
                }
            }
        }
        self.send_open()?;
        let msg = self.await_reply("CONNECTION_OPEN", deadline)?;
        match msg {
            Message::Ok { status } => {
                self.opened(&status);
                Ok(())
            }
            Message::Error { status } => Err(ClientError::Refused {
                what: "CONNECTION_OPEN",
                status,
            }),
            _ => unreachable_reply(),
        }
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
        self.state
    }

    /// Whether service deliveries must be confirmed (the broker supports
    /// acknowledgements and we asked for them).
    pub fn acks_enabled(&self) -> bool {
        self.acks
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Messages waiting in the outbox for the broker to come back.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// The last ERROR the broker sent that no call was waiting for.
    pub fn take_last_error(&mut self) -> Option<Status> {
        self.last_error.take()
    }

    /// Offers the service `address` for subjects matching `pattern`
    /// (SERVICE OFFER); waits for the broker's OK. Replayed on reconnect.
    pub fn set_worker(&mut self, address: &str, pattern: &str) -> Result<(), ClientError> {
        let m = Message::ServiceOffer {
            address: address.into(),
            pattern: pattern.into(),
        };
        self.command(&m)?;
        self.offers.push((address.into(), pattern.into()));
        Ok(())
    }

    /// Reads `stream` for subjects matching `pattern` (STREAM READ); waits
    /// for the broker's OK. Replayed on reconnect.
    pub fn set_consumer(&mut self, stream: &str, pattern: &str) -> Result<(), ClientError> {
        let m = Message::StreamRead {
            stream: stream.into(),
            pattern: pattern.into(),
        };
        self.command(&m)?;
        self.consumers.push((stream.into(), pattern.into()));
        Ok(())
    }

    /// Publishes on `stream` from now on (STREAM WRITE); waits for the OK.
    /// Replayed on reconnect.
    pub fn set_producer(&mut self, stream: &str) -> Result<(), ClientError> {
        let m = Message::StreamWrite {
            stream: stream.into(),
        };
        self.command(&m)?;
        self.producer = Some(stream.into());
        Ok(())
    }

    /// Like [`Client::set_producer`] but does not wait for the OK, so a
    /// sender that switches streams pays no round trip. The broker handles
    /// commands in order, so sends that follow go to the new stream.
    pub fn switch_producer(&mut self, stream: &str) -> Result<(), ClientError> {
        if self.producer.as_deref() == Some(stream) {
            return Ok(());
        }
        self.post(Message::StreamWrite {
            stream: stream.into(),
        })?;
        self.producer = Some(stream.into());
        Ok(())
    }

    /// The stream our STREAM SENDs go to, if any.
    pub fn producer(&self) -> Option<&str> {
        self.producer.as_deref()
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

    /// Confirms a service delivery (acknowledged mode only). A token from
    /// before a reconnect is ignored: the broker has requeued that request.
    pub fn confirm(&mut self, token: AckToken) -> Result<(), ClientError> {
        self.confirm_all(&[token])
    }

    /// Confirms several deliveries in as few CONFIRM commands as fit: the
    /// tracker carries comma-separated numbers (at most 255 bytes each).
    pub fn confirm_all(&mut self, tokens: &[AckToken]) -> Result<(), ClientError> {
        if !self.acks || self.state != ConnState::Connected {
            return Ok(());
        }
        let epoch = self.epoch;
        let mut tracker = String::new();
        for t in tokens.iter().filter(|t| t.epoch == epoch) {
            let seq = t.seq.to_string();
            if !tracker.is_empty() && tracker.len() + 1 + seq.len() > 255 {
                self.post_confirm(std::mem::take(&mut tracker))?;
            }
            if !tracker.is_empty() {
                tracker.push(',');
            }
            tracker.push_str(&seq);
        }
        if !tracker.is_empty() {
            self.post_confirm(tracker)?;
        }
        Ok(())
    }

    fn post_confirm(&mut self, tracker: String) -> Result<(), ClientError> {
        self.post(Message::Confirm {
            tracker,
            status: Status::new(status::SUCCESS, ""),
        })
    }

    /// Sends any command as it is. Sends of STREAM, MAILBOX and SERVICE
    /// messages should use the typed methods; this is for tools and tests.
    pub fn post(&mut self, msg: Message) -> Result<(), ClientError> {
        // Encode now so that a bad field is the caller's error, not a
        // surprise when the outbox is flushed.
        msg.encode_header()?;
        if self.state == ConnState::Connected && self.outbox.is_empty() {
            match self.write(&msg) {
                Ok(()) => return Ok(()),
                Err(ClientError::Zmq(zmq::Error::EAGAIN)) => {}
                Err(e) => return Err(e),
            }
        }
        self.queue(msg)
    }

    fn queue(&mut self, msg: Message) -> Result<(), ClientError> {
        if self.outbox.len() >= self.opts.outbox_limit {
            self.stats.dropped += 1;
            tracing::warn!(
                limit = self.opts.outbox_limit,
                "broker unavailable and outbox full: dropping {msg}"
            );
            return Err(ClientError::OutboxFull(self.opts.outbox_limit));
        }
        self.outbox.push_back(msg);
        Ok(())
    }

    /// Waits at most `timeout` for a delivery.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Delivery>, ClientError> {
        match self.wait(None, timeout)? {
            Wait::Delivery(d) => Ok(Some(d)),
            Wait::Woken | Wait::Timeout => Ok(None),
        }
    }

    /// Waits at most `timeout` for a delivery or for `wake_fd` to become
    /// readable (the caller drains it), keeping the connection alive
    /// meanwhile. This is how a thread that owns the client also listens
    /// to other threads.
    pub fn wait(&mut self, wake_fd: Option<RawFd>, timeout: Duration) -> Result<Wait, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(d) = self.inbox.pop_front() {
                return Ok(Wait::Delivery(d));
            }
            let now = Instant::now();
            self.tick(now)?;
            let until = deadline.min(self.next_timer());
            let left = until.saturating_duration_since(now);
            let (sock_in, mon_in, woken) = {
                let [sock, mon] = self.transport.poll_items();
                let mut items = [
                    sock,
                    mon,
                    zmq::PollItem::from_fd(wake_fd.unwrap_or(-1), zmq::POLLIN),
                ];
                let n = if wake_fd.is_some() { 3 } else { 2 };
                match zmq::poll(&mut items[..n], ms(left)) {
                    // A signal (e.g. the one asking us to stop) is not an
                    // error: the caller looks at its flags on Timeout.
                    Err(zmq::Error::EINTR) => return Ok(Wait::Timeout),
                    r => r?,
                };
                (
                    items[0].is_readable(),
                    items[1].is_readable(),
                    n == 3 && items[2].is_readable(),
                )
            };
            if mon_in {
                self.drain_monitor()?;
            }
            if sock_in {
                self.drain_socket()?;
            }
            if let Some(d) = self.inbox.pop_front() {
                return Ok(Wait::Delivery(d));
            }
            if woken {
                return Ok(Wait::Woken);
            }
            if Instant::now() >= deadline {
                return Ok(Wait::Timeout);
            }
        }
    }

    /// Says goodbye (CONNECTION CLOSE) and waits briefly for the OK.
    pub fn close(mut self) -> Result<(), ClientError> {
        self.say_goodbye()
    }

    /// Drops the connection without CONNECTION CLOSE and without sending
    /// what is queued, as a crashed process would. For tests and tools.
    pub fn abort(mut self) {
        self.closed = true;
        self.transport.discard_on_close();
    }

    fn say_goodbye(&mut self) -> Result<(), ClientError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        if self.state != ConnState::Connected {
            return Ok(());
        }
        // Whatever is still queued goes out before the goodbye; a full
        // socket (high-water mark) is waited on, within the timeout.
        let deadline = Instant::now() + self.opts.timeout;
        self.flush_until(deadline)?;
        if !self.outbox.is_empty() {
            tracing::warn!(
                "{} message(s) not sent before closing: broker too slow",
                self.outbox.len()
            );
        }
        self.outbox.push_back(Message::ConnectionClose);
        self.flush_until(deadline)?;
        let wait = deadline.min(Instant::now() + Duration::from_secs(1));
        let _ = self.await_reply("CONNECTION_CLOSE", wait);
        Ok(())
    }

    /// Writes the outbox, waiting for room in the socket, until `deadline`.
    fn flush_until(&mut self, deadline: Instant) -> Result<(), ClientError> {
        loop {
            self.flush()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if self.outbox.is_empty() || left.is_zero() {
                return Ok(());
            }
            self.transport.poll_writable(left)?;
        }
    }

    // ----- internals -------------------------------------------------

    fn write(&mut self, msg: &Message) -> Result<(), ClientError> {
        self.transport.write(msg)?;
        self.last_ping = Instant::now();
        Ok(())
    }

    fn send_open(&mut self) -> Result<(), ClientError> {
        self.state = ConnState::Opening;
        self.opening_since = Instant::now();
        self.acks = false;
        self.epoch += 1;
        self.seq = 0;
        self.pending_replay = 0;
        self.replies.clear();
        let open = Message::ConnectionOpen {
            address: self.opts.address.clone(),
        };
        match self.write(&open) {
            Ok(()) | Err(ClientError::Zmq(zmq::Error::EAGAIN)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The broker said OK to CONNECTION OPEN: replay, then flush.
    fn opened(&mut self, status: &Status) {
        self.state = ConnState::Connected;
        self.last_heard = Instant::now();
        let advertised = status
            .reason
            .split_whitespace()
            .any(|w| w == ACK_CAPABILITY);
        // CREDIT goes before the replayed offers: the broker must be in
        // acknowledged mode before its first SERVICE DELIVER to us, or the
        // two sides would number deliveries differently.
        if let (true, Some(credit)) = (advertised, self.opts.credit) {
            if self.write(&Message::Credit { amount: credit }).is_ok() {
                self.acks = true;
            }
        }
        let mut replay: Vec<Message> = Vec::new();
        if let Some(stream) = &self.producer {
            replay.push(Message::StreamWrite {
                stream: stream.clone(),
            });
        }
        for (stream, pattern) in &self.consumers {
            replay.push(Message::StreamRead {
                stream: stream.clone(),
                pattern: pattern.clone(),
            });
        }
        for (address, pattern) in &self.offers {
            replay.push(Message::ServiceOffer {
                address: address.clone(),
                pattern: pattern.clone(),
            });
        }
        self.pending_replay = replay.len();
        for m in &replay {
            if let Err(e) = self.write(m) {
                tracing::warn!("replaying {m} failed: {e}");
                self.pending_replay -= 1;
            }
        }
        if let Err(e) = self.flush() {
            tracing::warn!("flushing outbox failed: {e}");
        }
    }

    fn flush(&mut self) -> Result<(), ClientError> {
        while self.state == ConnState::Connected {
            let Some(msg) = self.outbox.pop_front() else {
                break;
            };
            match self.write(&msg) {
                Ok(()) => {}
                Err(ClientError::Zmq(zmq::Error::EAGAIN)) => {
                    self.outbox.push_front(msg);
                    break;
                }
                Err(e) => {
                    self.outbox.push_front(msg);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Sends a registration command and waits for its OK.
    fn command(&mut self, msg: &Message) -> Result<(), ClientError> {
        let what = msg.name();
        let deadline = Instant::now() + self.opts.timeout;
        // A registration made while the broker is away is simply recorded
        // and replayed; waiting here would block the caller for nothing.
        if self.state != ConnState::Connected {
            msg.encode_header()?;
            return Ok(());
        }
        self.write(msg)?;
        match self.await_reply(what, deadline)? {
            Message::Ok { .. } => Ok(()),
            Message::Error { status } => Err(ClientError::Refused { what, status }),
            _ => unreachable_reply(),
        }
    }

    /// Waits for the next OK or ERROR meant for a synchronous call,
    /// buffering deliveries that arrive meanwhile.
    fn await_reply(
        &mut self,
        what: &'static str,
        deadline: Instant,
    ) -> Result<Message, ClientError> {
        loop {
            if let Some(m) = self.replies.pop_front() {
                return Ok(m);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout {
                    what,
                    waited: self.opts.timeout,
                });
            }
            let left = deadline.saturating_duration_since(now);
            let (sock_in, mon_in) = {
                let mut items = self.transport.poll_items();
                match zmq::poll(&mut items, ms(left)) {
                    Err(zmq::Error::EINTR) => continue,
                    r => r?,
                };
                (items[0].is_readable(), items[1].is_readable())
            };
            if mon_in {
                self.drain_monitor()?;
            }
            if sock_in {
                self.drain_socket_for_reply(what == "CONNECTION_OPEN" && self.epoch == 1)?;
            }
        }
    }

    /// `first_open`: the reply is the one to our very first CONNECTION OPEN.
    /// Otherwise an OK that belongs to a reopen or a replay is handled as
    /// such, not taken for the answer the caller waits for.
    fn drain_socket_for_reply(&mut self, first_open: bool) -> Result<(), ClientError> {
        while let Some(msg) = self.read()? {
            let for_caller = matches!(msg, Message::Ok { .. } | Message::Error { .. })
                && (first_open || (self.state == ConnState::Connected && self.pending_replay == 0));
            if for_caller {
                self.replies.push_back(msg);
            } else {
                self.handle(msg)?;
            }
        }
        Ok(())
    }

    /// Reads one message if one is waiting. Malformed frames are counted,
    /// logged and skipped: a bad frame from the broker must not stop us.
    fn read(&mut self) -> Result<Option<Message>, ClientError> {
        loop {
            let Some(decoded) = self.transport.read()? else {
                return Ok(None);
            };
            self.last_heard = Instant::now();
            match decoded {
                Ok(m) => return Ok(Some(m)),
                Err(e) => self.malformed(e),
            }
        }
    }

    fn malformed(&mut self, e: DecodeError) {
        self.stats.malformed += 1;
        tracing::warn!("ignoring malformed message from broker: {e}");
    }

    fn drain_socket(&mut self) -> Result<(), ClientError> {
        while let Some(msg) = self.read()? {
            self.handle(msg)?;
        }
        Ok(())
    }

    fn handle(&mut self, msg: Message) -> Result<(), ClientError> {
        let forgot_us =
            matches!(&msg, Message::Error { status } if status.code == status::COMMAND_INVALID);
        if self.state == ConnState::Lost && !forgot_us {
            tracing::info!("broker {} answers again", self.opts.endpoint);
            self.state = ConnState::Connected;
            self.flush()?;
        }
        match msg {
            Message::StreamDeliver {
                address,
                sender,
                subject,
                content,
            } => self.inbox.push_back(Delivery {
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
            } => self.inbox.push_back(Delivery {
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
                let ack = if self.acks {
                    self.seq += 1;
                    Some(AckToken {
                        epoch: self.epoch,
                        seq: self.seq,
                    })
                } else {
                    None
                };
                self.inbox.push_back(Delivery {
                    kind: DeliveryKind::Service,
                    sender,
                    address,
                    subject,
                    tracker,
                    content,
                    ack,
                })
            }
            Message::ConnectionPong => {}
            Message::Ok { status } => {
                if self.state == ConnState::Opening {
                    self.opened(&status);
                } else if self.pending_replay > 0 {
                    self.pending_replay -= 1;
                }
            }
            Message::Error { status } => {
                if self.state == ConnState::Opening {
                    tracing::warn!(
                        "broker refused CONNECTION OPEN: {} {}; will retry",
                        status.code,
                        status.reason
                    );
                    self.state = ConnState::Lost;
                } else if status.code == status::COMMAND_INVALID {
                    // The broker no longer knows us: it restarted or
                    // expired us. Open again and replay, as libmlm does.
                    tracing::info!(
                        "broker {} forgot us ({}); opening the connection again",
                        self.opts.endpoint,
                        status.reason
                    );
                    self.reopen()?;
                } else if self.pending_replay > 0 {
                    self.pending_replay -= 1;
                    tracing::warn!(
                        "broker refused a replayed registration: {} {}",
                        status.code,
                        status.reason
                    );
                } else {
                    tracing::warn!("broker error: {} {}", status.code, status.reason);
                    self.last_error = Some(status);
                }
            }
            other => {
                tracing::warn!("ignoring unexpected {} from broker", other.name());
            }
        }
        Ok(())
    }

    fn reopen(&mut self) -> Result<(), ClientError> {
        self.stats.reopens += 1;
        self.send_open()
    }

    fn next_timer(&self) -> Instant {
        let ping = self.last_ping + self.opts.heartbeat;
        let silence = self.last_heard + self.opts.timeout;
        match self.state {
            ConnState::Lost => ping,
            ConnState::Opening => self.opening_since + self.opts.timeout,
            ConnState::Connected => ping.min(silence),
        }
    }

    /// Heartbeat and silence detection.
    fn tick(&mut self, now: Instant) -> Result<(), ClientError> {
        if self.state != ConnState::Lost && now >= self.last_heard + self.opts.timeout {
            tracing::warn!(
                "broker {} silent for {:?}: reporting it gone, still trying",
                self.opts.endpoint,
                self.opts.timeout
            );
            self.state = ConnState::Lost;
        }
        if self.state == ConnState::Opening && now >= self.opening_since + self.opts.timeout {
            // Our OPEN was lost (with a dying connection, say): start over.
            // Not sooner: a second OPEN resets the broker's delivery count.
            self.reopen()?;
        } else if self.state != ConnState::Opening && now >= self.last_ping + self.opts.heartbeat {
            self.last_ping = now;
            if self.transport_up {
                match self.write(&Message::ConnectionPing) {
                    Ok(()) | Err(ClientError::Zmq(zmq::Error::EAGAIN)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if self.state == ConnState::Connected && !self.outbox.is_empty() {
            self.flush()?;
        }
        Ok(())
    }

    fn drain_monitor(&mut self) -> Result<(), ClientError> {
        while let Some(ev) = self.transport.next_event()? {
            match ev {
                MonitorEvent::Disconnected => {
                    if self.transport_up {
                        tracing::warn!("lost connection to broker {}", self.opts.endpoint);
                    }
                    self.transport_up = false;
                    if self.state != ConnState::Lost {
                        self.state = ConnState::Lost;
                    }
                }
                MonitorEvent::HandshakeSucceeded => {
                    let was_up = self.transport_up;
                    self.transport_up = true;
                    if !was_up && !self.closed && self.state != ConnState::Connected {
                        // A new transport connection: whoever is there does
                        // not know us yet.
                        tracing::info!("reconnected to broker {}", self.opts.endpoint);
                        self.reopen()?;
                    }
                }
                MonitorEvent::HandshakeFailedAuth => {
                    tracing::error!("broker {} refused our credentials", self.opts.endpoint);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Err(e) = self.say_goodbye() {
            tracing::debug!("closing connection: {e}");
        }
    }
}

fn unreachable_reply<T>() -> Result<T, ClientError> {
    // await_reply only ever returns OK or ERROR.
    Err(ClientError::Zmq(zmq::Error::EPROTO))
}
