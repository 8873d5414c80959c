//! The broker's router: the one thread that owns the ROUTER socket and all
//! broker state (clients, streams, mailboxes, services).
//!
//! Every command is handled to completion before the next is read, so the
//! state needs no locks. Timers (client expiry, request and mail timeouts,
//! mailbox reclaim) run from the same loop between reads.
//!
//! Authorization: each client carries the user its connection
//! authenticated as (the "User-Id" ZeroMQ attaches to its messages), read
//! when it opens. Every command that needs a right is checked against the
//! ACL before anything is changed; a refusal is `ERROR 300 access denied:
//! …` to the client (which stays connected) and one log line with the user.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use regex::Regex;

use super::acl::{self, Acl, Action};
use super::{BrokerConfig, Limits};
use crate::mlm::codec::status;
use crate::mlm::{Content, Message, Status};

/// Reason sent with the OK to CONNECTION OPEN: advertises acknowledged
/// delivery (see `docs/PROTOCOL-NOTES.md`).
pub const OPEN_OK_REASON: &str = "alaska-broker ack/1";

type Id = Vec<u8>;

/// A message the broker holds: a service request waiting in a queue or
/// given to a worker, or mail waiting for its addressee.
#[derive(Debug)]
struct Held {
    sender: String,
    subject: String,
    tracker: String,
    content: Content,
    expires: Option<Instant>,
    bytes: usize,
}

type Request = Held;
type Mail = Held;

/// Removes what has expired from `queue`; returns (messages, bytes) removed.
fn drop_expired(queue: &mut VecDeque<Held>, now: Instant) -> (usize, usize) {
    let before = queue.len();
    let mut freed = 0;
    queue.retain(|m| {
        let keep = m.expires.is_none_or(|t| t > now);
        if !keep {
            freed += m.bytes;
        }
        keep
    });
    (before - queue.len(), freed)
}

#[derive(Debug, Default)]
struct Mailbox {
    mail: VecDeque<Mail>,
    bytes: usize,
    /// When the address was last connected (or the box created).
    touched: Option<Instant>,
}

struct Offer {
    client: Id,
    pattern: Regex,
}

#[derive(Default)]
struct Service {
    offers: Vec<Offer>,
    queue: VecDeque<Request>,
    bytes: usize,
}

struct ClientState {
    address: String,
    /// Who the connection authenticated as (`""` with NULL security).
    user: String,
    last_seen: Instant,
    writer: Option<String>,
    reads: Vec<(String, Regex)>,
    offers: Vec<String>,
    /// Acknowledged mode: set by the first CREDIT.
    acked: bool,
    credit: u64,
    seq: u64,
    unconfirmed: BTreeMap<u64, (String, Request)>,
}

impl ClientState {
    fn new(address: String, user: String) -> Self {
        ClientState {
            address,
            user,
            last_seen: Instant::now(),
            writer: None,
            reads: Vec::new(),
            offers: Vec::new(),
            acked: false,
            credit: 0,
            seq: 0,
            unconfirmed: BTreeMap::new(),
        }
    }

    fn has_window(&self) -> bool {
        !self.acked || (self.unconfirmed.len() as u64) < self.credit
    }
}

/// All broker state plus the socket.
pub struct Router {
    socket: zmq::Socket,
    cfg: BrokerConfig,
    /// The rules in force; `None` allows everything.
    acl: Option<Acl>,
    clients: HashMap<Id, ClientState>,
    addresses: HashMap<String, Id>,
    mailboxes: HashMap<String, Mailbox>,
    services: HashMap<String, Service>,
    /// stream -> readers (client, pattern), in registration order.
    streams: HashMap<String, Vec<(Id, Regex)>>,
    last_sweep: Instant,
}

impl Router {
    /// A router over a bound ROUTER socket.
    pub fn new(socket: zmq::Socket, cfg: BrokerConfig) -> Self {
        Router {
            socket,
            acl: cfg.acl.clone(),
            cfg,
            clients: HashMap::new(),
            addresses: HashMap::new(),
            mailboxes: HashMap::new(),
            services: HashMap::new(),
            streams: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    /// Serves until `stop` receives (or its sender is dropped). New ACL
    /// rules arriving on `acls` apply to the commands read after them.
    pub fn run(
        mut self,
        stop: &crossbeam_channel::Receiver<()>,
        acls: &crossbeam_channel::Receiver<Option<Acl>>,
    ) {
        loop {
            match stop.try_recv() {
                Ok(()) | Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            }
            while let Ok(acl) = acls.try_recv() {
                self.acl = acl;
            }
            match self.socket.poll(zmq::POLLIN, 100) {
                Ok(n) if n > 0 => {
                    // Rules sent while we waited apply to what woke us.
                    while let Ok(acl) = acls.try_recv() {
                        self.acl = acl;
                    }
                    // Handle a batch, then look at timers and the stop flag.
                    for _ in 0..10_000 {
                        match self.receive() {
                            Ok((frames, user)) => self.handle_frames(frames, user),
                            Err(zmq::Error::EAGAIN) => break,
                            Err(e) => {
                                tracing::error!("broker receive failed: {e}");
                                break;
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(zmq::Error::EINTR) => {}
                Err(e) => {
                    tracing::error!("broker poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if self.last_sweep.elapsed() >= Duration::from_millis(100) {
                self.sweep();
            }
        }
        tracing::info!("broker stopped");
    }

    /// Reads one message without waiting: its frames, and for a CONNECTION
    /// OPEN the user its connection authenticated as. (libzmq attaches the
    /// connection's metadata to the frames that came over it, not to the
    /// routing id the ROUTER puts first, so the header frame is asked.)
    fn receive(&mut self) -> Result<(Vec<Vec<u8>>, Option<String>), zmq::Error> {
        let mut frames = Vec::with_capacity(3);
        let mut user = None;
        let mut msg = self.socket.recv_msg(zmq::DONTWAIT)?;
        loop {
            let more = msg.get_more();
            if frames.len() == 1 && is_open(&msg) {
                user = Some(msg.gets("User-Id").unwrap_or("").to_string());
            }
            frames.push(msg.to_vec());
            if !more {
                break;
            }
            // The rest of a message is there once its first frame is.
            self.socket.recv(&mut msg, 0)?;
        }
        Ok((frames, user))
    }

    fn handle_frames(&mut self, mut frames: Vec<Vec<u8>>, user: Option<String>) {
        if frames.is_empty() {
            return;
        }
        let id = frames.remove(0);
        let msg = match Message::decode_owned(frames) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(
                    "malformed command from {}: {e}; dropping that client",
                    self.name(&id)
                );
                self.reply_error(&id, status::COMMAND_INVALID, &format!("malformed: {e}"));
                self.drop_client(&id, "malformed command");
                return;
            }
        };
        if self.cfg.verbose {
            tracing::info!("{} -> {msg}", self.name(&id));
        }
        let known = match self.clients.get_mut(&id) {
            Some(c) => {
                c.last_seen = Instant::now();
                true
            }
            None => false,
        };
        match msg {
            Message::ConnectionOpen { address } => self.open(id, address, user.unwrap_or_default()),
            _ if !known => {
                // The reference crashes on CLOSE before OPEN; we answer.
                self.reply_error(
                    &id,
                    status::COMMAND_INVALID,
                    "command invalid: not connected",
                )
            }
            Message::ConnectionPing => self.send_to(&id, Message::ConnectionPong),
            Message::ConnectionClose => {
                self.reply_ok(&id);
                self.drop_client(&id, "closed");
            }
            Message::StreamWrite { stream } => {
                if !self.allowed(&id, Action::Write(&stream)) {
                    return;
                }
                if let Some(c) = self.clients.get_mut(&id) {
                    c.writer = Some(stream);
                }
                self.reply_ok(&id);
            }
            Message::StreamRead { .. } | Message::ServiceOffer { .. }
                if !self.registration_allowed(&id, &msg) => {}
            Message::StreamRead { stream, pattern } => match compile(&pattern) {
                Ok(re) => {
                    if let Some(c) = self.clients.get_mut(&id) {
                        c.reads.push((stream.clone(), re.clone()));
                    }
                    self.streams
                        .entry(stream)
                        .or_default()
                        .push((id.clone(), re));
                    self.reply_ok(&id);
                }
                Err(e) => self.reply_error(&id, status::FAILED, &e),
            },
            Message::StreamCancel { stream } => {
                if let Some(c) = self.clients.get_mut(&id) {
                    c.reads.retain(|(s, _)| *s != stream);
                }
                if let Some(readers) = self.streams.get_mut(&stream) {
                    readers.retain(|(cid, _)| *cid != id);
                }
                self.reply_ok(&id);
            }
            Message::StreamSend { subject, content } => self.stream_send(&id, subject, content),
            Message::MailboxSend {
                address,
                subject,
                tracker,
                timeout,
                content,
            } => {
                if !self.allowed(&id, Action::Mail(&address)) {
                    return;
                }
                let sender = self.address_of(&id);
                let mail = Mail {
                    bytes: size(&content),
                    sender,
                    subject,
                    tracker,
                    content,
                    expires: expiry(timeout),
                };
                self.mail(&id, address, mail);
            }
            Message::ServiceSend {
                address,
                subject,
                tracker,
                timeout,
                content,
            } => {
                if !self.allowed(&id, Action::Send(&address)) {
                    return;
                }
                let req = Request {
                    bytes: size(&content),
                    sender: self.address_of(&id),
                    subject,
                    tracker,
                    content,
                    expires: expiry(timeout),
                };
                self.service_send(&id, address, req);
            }
            Message::ServiceOffer { address, pattern } => match compile(&pattern) {
                Ok(re) => {
                    if let Some(c) = self.clients.get_mut(&id) {
                        c.offers.push(address.clone());
                    }
                    let svc = self.services.entry(address.clone()).or_default();
                    svc.offers.push(Offer {
                        client: id.clone(),
                        pattern: re,
                    });
                    self.reply_ok(&id);
                    self.dispatch(&address);
                }
                Err(e) => self.reply_error(&id, status::FAILED, &e),
            },
            Message::Credit { amount } => {
                let offers = match self.clients.get_mut(&id) {
                    Some(c) => {
                        c.acked = true;
                        c.credit += amount as u64;
                        c.offers.clone()
                    }
                    None => Vec::new(),
                };
                for s in offers {
                    self.dispatch(&s);
                }
            }
            Message::Confirm { tracker, .. } => self.confirm(&id, &tracker),
            other => {
                // Commands only a broker sends: a confused or hostile peer.
                tracing::warn!(
                    "{} sent {}, which only a broker sends; dropping that client",
                    self.name(&id),
                    other.name()
                );
                self.reply_error(
                    &id,
                    status::COMMAND_INVALID,
                    &format!("command invalid: {} is not a client command", other.name()),
                );
                self.drop_client(&id, "server-only command");
            }
        }
    }

    /// Whether the ACL lets the client `id` do `action`; if not, the
    /// client is told (ERROR 300, it stays connected) and it is logged.
    fn allowed(&mut self, id: &Id, action: Action<'_>) -> bool {
        let user = match self.clients.get(id) {
            Some(c) => c.user.as_str(),
            None => "",
        };
        match acl::check(self.acl.as_ref(), user, &action) {
            Ok(()) => true,
            Err(r) => {
                self.refuse(id, &r);
                false
            }
        }
    }

    /// The ACL check of STREAM READ and SERVICE OFFER, which the match in
    /// `handle_frames` consumes only when it passes.
    fn registration_allowed(&mut self, id: &Id, msg: &Message) -> bool {
        match msg {
            Message::StreamRead { stream, .. } => self.allowed(id, Action::Read(stream)),
            Message::ServiceOffer { address, .. } => self.allowed(id, Action::Offer(address)),
            _ => true,
        }
    }

    fn refuse(&mut self, id: &Id, r: &acl::Refusal) {
        tracing::warn!("access denied: {r} (client {})", self.name(id));
        self.reply_error(id, status::FAILED, &r.error_reason());
    }

    fn open(&mut self, id: Id, address: String, user: String) {
        // Everything is checked before anything changes: a refused OPEN
        // leaves the connection's previous session, if any, as it was.
        if let Err(r) = acl::check(self.acl.as_ref(), &user, &Action::Open(&address)) {
            tracing::warn!("access denied: {r}");
            self.reply_error(&id, status::FAILED, &r.error_reason());
            return;
        }
        if !address.is_empty() {
            let holder = self
                .addresses
                .get(&address)
                .filter(|old| **old != id)
                .and_then(|old| self.clients.get(old));
            if let Some(holder) = holder {
                if holder.user != user {
                    let r = acl::Refusal::takeover(&user, &address);
                    tracing::warn!("access denied: {r} ({:?})", holder.user);
                    self.reply_error(&id, status::FAILED, &r.error_reason());
                    return;
                }
            }
        }
        if self.clients.contains_key(&id) {
            // A second OPEN on the same connection starts a new session.
            self.drop_client(&id, "opened again");
        }
        if !address.is_empty() {
            if let Some(old) = self.addresses.get(&address).cloned() {
                if old != id {
                    tracing::info!("address {address:?} taken over by a new connection");
                    self.drop_client(&old, "address taken over");
                }
            }
            self.addresses.insert(address.clone(), id.clone());
        }
        self.clients
            .insert(id.clone(), ClientState::new(address.clone(), user));
        self.send_to(
            &id,
            Message::Ok {
                status: Status::new(status::SUCCESS, OPEN_OK_REASON),
            },
        );
        if !address.is_empty() {
            self.deliver_mailbox(&address);
        }
    }

    /// Forgets a client: registrations removed, unconfirmed requests back
    /// to the front of their queues.
    fn drop_client(&mut self, id: &Id, why: &str) {
        let Some(c) = self.clients.remove(id) else {
            return;
        };
        if self.addresses.get(&c.address) == Some(id) {
            self.addresses.remove(&c.address);
            if let Some(mb) = self.mailboxes.get_mut(&c.address) {
                mb.touched = Some(Instant::now());
            }
        }
        for (stream, _) in &c.reads {
            if let Some(readers) = self.streams.get_mut(stream) {
                readers.retain(|(cid, _)| cid != id);
            }
        }
        for name in &c.offers {
            if let Some(svc) = self.services.get_mut(name) {
                svc.offers.retain(|o| o.client != *id);
            }
        }
        let requeued = c.unconfirmed.len();
        // Reverse order so the oldest ends up first.
        for (_, (service, req)) in c.unconfirmed.into_iter().rev() {
            let svc = self.services.entry(service).or_default();
            svc.bytes += req.bytes;
            svc.queue.push_front(req);
        }
        if requeued > 0 {
            tracing::warn!(
                "client {:?} gone ({why}): {requeued} unconfirmed request(s) requeued",
                c.address
            );
        } else {
            tracing::debug!("client {:?} gone ({why})", c.address);
        }
        let names: Vec<String> = self.services.keys().cloned().collect();
        if requeued > 0 {
            for n in names {
                self.dispatch(&n);
            }
        }
    }

    fn stream_send(&mut self, id: &Id, subject: String, content: Content) {
        let (sender, stream) = match self.clients.get(id) {
            Some(c) => (c.address.clone(), c.writer.clone()),
            None => return,
        };
        let Some(stream) = stream else {
            tracing::warn!("{sender:?} sent STREAM SEND without STREAM WRITE");
            self.reply_error(id, status::FAILED, "no stream: send STREAM WRITE first");
            return;
        };
        // Checked again on every send: rules reloaded since the STREAM
        // WRITE apply to later commands. Said as "publish on" so that the
        // client takes it for the refusal of a send.
        if self.acl.is_some() && !self.publish_allowed(id, &stream) {
            return;
        }
        let mut targets: Vec<Id> = Vec::new();
        if let Some(readers) = self.streams.get(&stream) {
            for (cid, re) in readers {
                if !targets.contains(cid) && matches(re, &subject) {
                    targets.push(cid.clone());
                }
            }
        }
        if targets.is_empty() {
            return;
        }
        let header = Message::StreamDeliver {
            address: stream,
            sender,
            subject,
            content: Vec::new(),
        };
        let Ok(header) = header.encode_header() else {
            return;
        };
        for t in targets {
            if let Err(e) = self.send_parts(&t, &header, &content) {
                // Streams are fire-and-forget for everyone; a reader that
                // is gone or not reading misses this one, and we say so.
                tracing::warn!("stream message to {} not delivered: {e}", self.name(&t));
                if e == zmq::Error::EHOSTUNREACH {
                    self.drop_client(&t, "unreachable");
                }
            }
        }
    }

    fn publish_allowed(&mut self, id: &Id, stream: &str) -> bool {
        let user = self
            .clients
            .get(id)
            .map(|c| c.user.clone())
            .unwrap_or_default();
        match acl::check(self.acl.as_ref(), &user, &Action::Write(stream)) {
            Ok(()) => true,
            Err(_) => {
                let r = acl::Refusal {
                    user,
                    reason: format!("may not publish on stream {stream}"),
                };
                self.refuse(id, &r);
                false
            }
        }
    }

    fn mail(&mut self, from: &Id, address: String, mail: Mail) {
        if let Some(to) = self.addresses.get(&address).cloned() {
            match self.send_mail(&to, &address, mail) {
                Ok(()) => return,
                Err(mail) => {
                    self.drop_client(&to, "unreachable");
                    self.store_mail(from, address, mail);
                    return;
                }
            }
        }
        self.store_mail(from, address, mail);
    }

    /// Delivers one mail; gives it back if the addressee cannot take it.
    fn send_mail(&mut self, to: &Id, address: &str, mail: Mail) -> Result<(), Mail> {
        match self.deliver_held(to, address, &mail, true) {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!("mail for {address:?} not deliverable now ({e}); stored");
                Err(mail)
            }
        }
    }

    /// Sends a held message as MAILBOX DELIVER (`mail`) or SERVICE DELIVER.
    /// Nothing is sent if the peer cannot take it (unroutable, or not
    /// reading); the caller keeps the message.
    fn deliver_held(
        &mut self,
        to: &Id,
        address: &str,
        held: &Held,
        mail: bool,
    ) -> Result<(), zmq::Error> {
        let (sender, address, subject, tracker) = (
            held.sender.clone(),
            address.to_string(),
            held.subject.clone(),
            held.tracker.clone(),
        );
        let header = if mail {
            Message::MailboxDeliver {
                sender,
                address,
                subject,
                tracker,
                content: Vec::new(),
            }
        } else {
            Message::ServiceDeliver {
                sender,
                address,
                subject,
                tracker,
                content: Vec::new(),
            }
        };
        // Fields came from decoded frames, so they always fit.
        let Ok(header) = header.encode_header() else {
            return Ok(());
        };
        self.send_parts(to, &header, &held.content)
    }

    fn store_mail(&mut self, from: &Id, address: String, mail: Mail) {
        let limit = self.cfg.mailbox_limit;
        let mb = self.mailboxes.entry(address.clone()).or_default();
        if mb.touched.is_none() {
            mb.touched = Some(Instant::now());
        }
        if limits_hit(&limit, mb.mail.len(), mb.bytes, mail.bytes) {
            tracing::warn!(
                "mailbox {address:?} full ({} messages, {} bytes): mail from {:?} refused",
                mb.mail.len(),
                mb.bytes,
                mail.sender
            );
            self.reply_error(from, status::FAILED, &format!("mailbox {address} full"));
            return;
        }
        mb.bytes += mail.bytes;
        mb.mail.push_back(mail);
    }

    fn deliver_mailbox(&mut self, address: &str) {
        let Some(mut mb) = self.mailboxes.remove(address) else {
            return;
        };
        let Some(to) = self.addresses.get(address).cloned() else {
            self.mailboxes.insert(address.to_string(), mb);
            return;
        };
        let now = Instant::now();
        while let Some(mail) = mb.mail.pop_front() {
            mb.bytes -= mail.bytes;
            if mail.expires.is_some_and(|t| t <= now) {
                tracing::info!("mail for {address:?} expired before delivery; dropped");
                continue;
            }
            if let Err(mail) = self.send_mail(&to, address, mail) {
                mb.bytes += mail.bytes;
                mb.mail.push_front(mail);
                break;
            }
        }
        if !mb.mail.is_empty() {
            mb.touched = Some(now);
            self.mailboxes.insert(address.to_string(), mb);
        }
    }

    fn service_send(&mut self, from: &Id, service: String, req: Request) {
        let limit = self.cfg.service_queue_limit;
        let svc = self.services.entry(service.clone()).or_default();
        if limits_hit(&limit, svc.queue.len(), svc.bytes, req.bytes) {
            tracing::warn!(
                "service {service:?} queue full ({} requests, {} bytes): request from {:?} refused",
                svc.queue.len(),
                svc.bytes,
                req.sender
            );
            self.reply_error(
                from,
                status::FAILED,
                &format!("service {service} queue full"),
            );
            return;
        }
        svc.bytes += req.bytes;
        svc.queue.push_back(req);
        self.dispatch(&service);
    }

    /// Gives queued requests of `service` to matching offers with window,
    /// round robin: the offer used moves to the end of the list.
    fn dispatch(&mut self, service: &str) {
        let Some(mut svc) = self.services.remove(service) else {
            return;
        };
        let now = Instant::now();
        let mut i = 0;
        while i < svc.queue.len() {
            if svc.offers.is_empty() {
                break;
            }
            if svc.queue[i].expires.is_some_and(|t| t <= now) {
                if let Some(req) = svc.queue.remove(i) {
                    svc.bytes -= req.bytes;
                    tracing::info!(
                        "request {:?} from {:?} for {service:?} expired in the queue; dropped",
                        req.subject,
                        req.sender
                    );
                }
                continue;
            }
            let subject = &svc.queue[i].subject;
            let pick = svc.offers.iter().position(|o| {
                matches(&o.pattern, subject)
                    && self
                        .clients
                        .get(&o.client)
                        .is_some_and(ClientState::has_window)
            });
            let Some(pos) = pick else {
                // Nobody can take this one now; later ones may match others.
                if !svc.offers.iter().any(|o| {
                    self.clients
                        .get(&o.client)
                        .is_some_and(ClientState::has_window)
                }) {
                    break;
                }
                i += 1;
                continue;
            };
            let offer = svc.offers.remove(pos);
            let worker = offer.client.clone();
            svc.offers.push(offer);
            let Some(req) = svc.queue.remove(i) else {
                break;
            };
            svc.bytes -= req.bytes;
            match self.deliver_request(&worker, service, req) {
                Ok(()) => {}
                Err(req) => {
                    // The worker is gone: forget it, keep the request first.
                    svc.bytes += req.bytes;
                    svc.queue.insert(i, req);
                    svc.offers.retain(|o| o.client != worker);
                    self.services.insert(service.to_string(), svc);
                    self.drop_client(&worker, "unreachable");
                    svc = match self.services.remove(service) {
                        Some(s) => s,
                        None => return,
                    };
                }
            }
        }
        self.services.insert(service.to_string(), svc);
    }

    fn deliver_request(&mut self, worker: &Id, service: &str, req: Request) -> Result<(), Request> {
        if let Err(e) = self.deliver_held(worker, service, &req, false) {
            tracing::warn!(
                "request for {service:?} not deliverable to {} ({e}); requeued",
                self.name(worker)
            );
            return Err(req);
        }
        if let Some(c) = self.clients.get_mut(worker) {
            if c.acked {
                c.seq += 1;
                c.unconfirmed.insert(c.seq, (service.to_string(), req));
            }
        }
        Ok(())
    }

    fn confirm(&mut self, id: &Id, tracker: &str) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        if !c.acked {
            tracing::warn!("CONFIRM from {:?}, which never sent CREDIT", c.address);
            self.reply_error(id, status::FAILED, "CONFIRM needs CREDIT first (ack/1)");
            return;
        }
        // One number, or several separated by commas (a batch).
        let mut services: Vec<String> = Vec::new();
        for part in tracker.split(',') {
            match part
                .trim()
                .parse::<u64>()
                .ok()
                .and_then(|seq| c.unconfirmed.remove(&seq))
            {
                Some((service, _)) => {
                    if !services.contains(&service) {
                        services.push(service);
                    }
                }
                None => tracing::warn!(
                    "CONFIRM {part:?} from {:?} matches nothing; ignored",
                    c.address
                ),
            }
        }
        for s in services {
            self.dispatch(&s);
        }
    }

    /// Timers: expire silent clients, drop timed-out requests and mail,
    /// reclaim mailboxes of addresses that never came back.
    fn sweep(&mut self) {
        let now = Instant::now();
        self.last_sweep = now;
        let silent: Vec<Id> = self
            .clients
            .iter()
            .filter(|(_, c)| now.duration_since(c.last_seen) > self.cfg.client_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in silent {
            tracing::info!(
                "client {} expired after {:?} of silence",
                self.name(&id),
                self.cfg.client_timeout
            );
            self.drop_client(&id, "expired");
        }
        for (name, svc) in self.services.iter_mut() {
            let (n, freed) = drop_expired(&mut svc.queue, now);
            svc.bytes -= freed;
            if n > 0 {
                tracing::info!("{n} request(s) for {name:?} expired in the queue; dropped");
            }
        }
        self.services
            .retain(|_, s| !s.offers.is_empty() || !s.queue.is_empty());
        let expiry = self.cfg.mailbox_expiry;
        let addresses = &self.addresses;
        self.mailboxes.retain(|name, mb| {
            let (n, freed) = drop_expired(&mut mb.mail, now);
            mb.bytes -= freed;
            if n > 0 {
                tracing::info!("{n} mail(s) for {name:?} expired; dropped");
            }
            let away = !addresses.contains_key(name);
            let stale = mb.touched.is_some_and(|t| now.duration_since(t) > expiry);
            if away && stale && !mb.mail.is_empty() {
                tracing::warn!(
                    "mailbox {name:?} reclaimed: address away for over {expiry:?}, {} mail(s) dropped",
                    mb.mail.len()
                );
                return false;
            }
            !mb.mail.is_empty()
        });
    }

    // ----- sending ---------------------------------------------------

    /// Sends identity, header and content; nothing is sent if the peer is
    /// not routable (ROUTER_MANDATORY) or not reading (high-water mark).
    fn send_parts(
        &mut self,
        id: &Id,
        header: &[u8],
        content: &[Vec<u8>],
    ) -> Result<(), zmq::Error> {
        self.socket.send(&id[..], zmq::SNDMORE | zmq::DONTWAIT)?;
        if content.is_empty() {
            self.socket.send(header, 0)?;
        } else {
            self.socket.send(header, zmq::SNDMORE)?;
            let last = content.len() - 1;
            for (i, f) in content.iter().enumerate() {
                self.socket
                    .send(&f[..], if i == last { 0 } else { zmq::SNDMORE })?;
            }
        }
        Ok(())
    }

    fn send_to(&mut self, id: &Id, msg: Message) {
        let Ok(header) = msg.encode_header() else {
            return;
        };
        if let Err(e) = self.send_parts(id, &header, msg.content()) {
            tracing::debug!("{} to {} not sent: {e}", msg.name(), self.name(id));
        }
    }

    fn reply_ok(&mut self, id: &Id) {
        self.send_to(
            id,
            Message::Ok {
                status: Status::new(status::SUCCESS, ""),
            },
        );
    }

    fn reply_error(&mut self, id: &Id, code: u16, reason: &str) {
        let mut reason = reason.to_string();
        if reason.len() > 255 {
            let mut end = 255;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        self.send_to(
            id,
            Message::Error {
                status: Status::new(code, reason),
            },
        );
    }

    fn address_of(&self, id: &Id) -> String {
        self.clients
            .get(id)
            .map(|c| c.address.clone())
            .unwrap_or_default()
    }

    fn name(&self, id: &Id) -> String {
        match self.clients.get(id) {
            Some(c) if !c.address.is_empty() => format!("{:?}", c.address),
            Some(_) => "anonymous client".into(),
            None => "unknown client".into(),
        }
    }
}

/// Whether a header frame is a CONNECTION OPEN (signature, then id 1),
/// without decoding it.
fn is_open(frame: &[u8]) -> bool {
    frame.len() >= 3 && frame[0] == 0xAA && frame[1] == 0xA8 && frame[2] == 1
}

fn compile(pattern: &str) -> Result<Regex, String> {
    Regex::new(pattern).map_err(|e| {
        let first = e
            .to_string()
            .lines()
            .last()
            .unwrap_or("")
            .trim()
            .to_string();
        format!("invalid pattern {pattern:?}: {first}")
    })
}

/// Search semantics: the pattern may match anywhere in the subject.
fn matches(re: &Regex, subject: &str) -> bool {
    re.is_match(subject)
}

fn size(content: &Content) -> usize {
    content.iter().map(Vec::len).sum()
}

fn expiry(timeout_ms: u32) -> Option<Instant> {
    (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64))
}

fn limits_hit(l: &Limits, count: usize, bytes: usize, add: usize) -> bool {
    count >= l.messages || bytes.saturating_add(add) > l.bytes
}
