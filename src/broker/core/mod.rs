//! The broker's state machine, with no socket and no clock: clients and
//! their addresses, services (queues, offers, credit, confirmations),
//! mailboxes (limits, expiry, reclaim) and streams.
//!
//! The router feeds it one decoded command at a time with the sender's
//! routing id and the current time ([`Core::handle`]), lets timers run
//! ([`Core::tick`] when [`Core::next_deadline`] has passed), and collects
//! what to send ([`Core::flush`]). A send that fails comes back through
//! [`Core::send_failed`], and the core requeues or stores what it carried.
//! Every change to what the broker holds is told to a [`Journal`] as it is
//! made (durable storage listens there).
//!
//! Dispatching is deferred: a command only marks the services it touched,
//! and [`Core::flush`] dispatches each of them once, so a burst of SERVICE
//! SENDs costs one pass per service, and no handler re-enters another.
//! Queues are kept per subject, and a subject that no offer matches is
//! parked until an offer that matches arrives, so requests nobody can take
//! cost nothing to later sends.
//!
//! One file per concern, one short handler per command: `clients.rs`
//! (OPEN, PING, CLOSE, expiry, takeover), `services.rs` (SERVICE SEND,
//! SERVICE OFFER, CREDIT, CONFIRM), `mailboxes.rs` (MAILBOX SEND, storage,
//! expiry, reclaim), `streams.rs` (STREAM WRITE, READ, CANCEL, SEND),
//! `delayed.rs` (requests held for a delay, delay/1) and `schedules.rs`
//! (requests fired in the broker's name on a timetable; the wall clock is
//! passed in with [`Core::set_wall_clock`]).

mod admin;
mod authorize;
mod clients;
mod delayed;
mod held;
mod journal;
mod mailboxes;
mod schedules;
mod services;
mod stats;
mod streams;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use delayed::{parse_delay, DelayedRequest};
pub use held::{Held, HeldId};
pub use journal::{Journal, Kind, NoJournal, Removal};
pub use schedules::{unix_ms, ScheduleSpec, ScheduleState, When};
pub use stats::{
    ClientInfo, Counters, MailboxInfo, OfferInfo, ReaderInfo, ServiceInfo, ServiceStats, Stats,
    StreamInfo,
};

use self::clients::Client;
use self::delayed::DelayedSet;
use self::mailboxes::Mailbox;
use self::services::Service;
use self::streams::Reader;
use super::{BrokerConfig, Limits};
use crate::mlm::codec::{status, MAX_STRING};
use crate::mlm::{DecodeError, Message, Status};
use crate::time::after;

/// A client's ZeroMQ routing id, shared between the tables that name it.
pub type ClientId = Arc<[u8]>;

/// How often silent clients are looked for: client expiry is coarse (the
/// timeout is seconds), so one pass over the clients every 100 ms is enough.
const CLIENT_CHECK: Duration = Duration::from_millis(100);

/// The settings the core uses.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// A client silent for longer is expired.
    pub client_timeout: Duration,
    /// Limits of each service queue.
    pub service_queue_limit: Limits,
    /// Limits of each mailbox.
    pub mailbox_limit: Limits,
    /// Mail for an address away this long is dropped.
    pub mailbox_expiry: Duration,
    /// Log every command.
    pub verbose: bool,
    /// Deliveries of one request to acknowledging workers that went away
    /// without confirming it, before it is a poison request: not delivered
    /// again but dead-lettered (0: no limit).
    pub max_deliveries: u32,
    /// Where poison requests are reported (the error mailbox convention).
    pub dead_letters: String,
    /// Schedules (`mlm_server/schedule/<name>`).
    pub schedules: Vec<ScheduleSpec>,
}

impl From<&BrokerConfig> for CoreConfig {
    fn from(c: &BrokerConfig) -> Self {
        CoreConfig {
            max_deliveries: c.max_deliveries,
            dead_letters: c.dead_letters.clone(),
            client_timeout: c.client_timeout,
            service_queue_limit: c.service_queue_limit,
            mailbox_limit: c.mailbox_limit,
            mailbox_expiry: c.mailbox_expiry,
            verbose: c.verbose,
            schedules: c.schedules.clone(),
        }
    }
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig::from(&BrokerConfig::default())
    }
}

/// One message to send: to whom, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The client's routing id.
    pub to: ClientId,
    /// The command.
    pub msg: Message,
    /// For a delivery of something held: what the core needs to take it
    /// back if the send fails.
    custody: Option<Custody>,
}

impl Outgoing {
    fn reply(to: ClientId, msg: Message) -> Outgoing {
        Outgoing {
            to,
            msg,
            custody: None,
        }
    }
}

/// What a delivery carried out of custody.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Custody {
    id: HeldId,
    expires: Option<Instant>,
    /// The worker acknowledges: the request is still held in its
    /// unconfirmed set and comes back when the worker is dropped.
    acked: bool,
    /// Who sent the mail, to tell if it cannot be stored after all.
    from: Option<ClientId>,
}

/// The broker's state. `J` hears every change to what it holds.
pub struct Core<J: Journal = NoJournal> {
    cfg: CoreConfig,
    clients: HashMap<ClientId, Client>,
    /// Address -> the client that holds it now.
    addresses: HashMap<String, ClientId>,
    services: HashMap<String, Service>,
    /// Requests with a timeout, by deadline: (service, subject).
    request_expiry: BTreeMap<(Instant, HeldId), (String, String)>,
    mailboxes: HashMap<String, Mailbox>,
    /// Mail with a timeout, by deadline: its mailbox.
    mail_expiry: BTreeMap<(Instant, HeldId), String>,
    /// Mailboxes by the time their reclaim clock started.
    reclaim: BTreeSet<(Instant, String)>,
    /// Stream -> readers, in registration order.
    streams: HashMap<String, Vec<Reader>>,
    /// Services to dispatch at the next flush.
    touched: Vec<String>,
    /// Requests held until their due time (delay/1).
    delayed: DelayedSet,
    /// Schedules, in configuration order.
    schedules: Vec<ScheduleState>,
    /// A monotonic instant and the wall-clock time at it (schedules are
    /// wall-clock), once the caller said ([`Core::set_wall_clock`]).
    wall: Option<(Instant, SystemTime)>,
    out: Vec<Outgoing>,
    next_id: HeldId,
    last_client_check: Instant,
    counters: Counters,
    journal: J,
    /// Authorization rules; `None` allows everything.
    acl: Option<crate::broker::acl::Acl>,
}

impl Core<NoJournal> {
    /// An empty broker state, in memory.
    pub fn new(cfg: CoreConfig, now: Instant) -> Self {
        Core::with_journal(cfg, now, NoJournal)
    }
}

impl<J: Journal> Core<J> {
    /// An empty broker state that tells `journal` what it holds.
    pub fn with_journal(cfg: CoreConfig, now: Instant, journal: J) -> Self {
        let schedules = cfg
            .schedules
            .iter()
            .cloned()
            .map(ScheduleState::new)
            .collect();
        Core {
            cfg,
            clients: HashMap::new(),
            addresses: HashMap::new(),
            services: HashMap::new(),
            request_expiry: BTreeMap::new(),
            mailboxes: HashMap::new(),
            mail_expiry: BTreeMap::new(),
            reclaim: BTreeSet::new(),
            streams: HashMap::new(),
            touched: Vec::new(),
            delayed: DelayedSet::default(),
            schedules,
            wall: None,
            out: Vec::new(),
            next_id: 1,
            last_client_check: now,
            counters: Counters::default(),
            journal,
            acl: None,
        }
    }

    /// The journal.
    pub fn journal(&self) -> &J {
        &self.journal
    }

    /// The journal, to take what it gathered.
    pub fn journal_mut(&mut self) -> &mut J {
        &mut self.journal
    }

    /// Handles one decoded command from the client with routing id `from`.
    /// `user` is the name the connection authenticated with (ZAP), if any.
    /// Replies and deliveries are collected for [`Core::flush`].
    pub fn handle(&mut self, from: &[u8], user: Option<&str>, msg: Message, now: Instant) {
        self.counters.commands += 1;
        // delay/1: a delay applies to the very next command if it is a
        // SERVICE SEND (a PING may come between); any other forgets it.
        let keep_delay = matches!(msg, Message::ConnectionPing);
        let (id, known, delay) = match self.clients.get_mut(from) {
            Some(c) => {
                c.last_seen = now;
                let delay = if keep_delay { None } else { c.delay.take() };
                (c.id.clone(), true, delay)
            }
            None => (ClientId::from(from), false, None),
        };
        if self.cfg.verbose {
            tracing::info!("{} -> {msg}", self.name(&id));
        }
        let is_open = matches!(msg, Message::ConnectionOpen { .. });
        if (known || is_open) && !self.authorized(&id, user, &msg) {
            return;
        }
        match msg {
            Message::ConnectionOpen { address } => self.on_open(id, user, address, now),
            // The reference crashes on CLOSE before OPEN; we answer.
            _ if !known => self.reply_error(
                &id,
                status::COMMAND_INVALID,
                "command invalid: not connected",
            ),
            Message::ConnectionPing => self.on_ping(id),
            Message::ConnectionClose => self.on_close(id, now),
            Message::StreamWrite { stream } => self.on_stream_write(id, stream),
            Message::StreamRead { stream, pattern } => self.on_stream_read(id, stream, &pattern),
            Message::StreamCancel { stream } => self.on_stream_cancel(id, &stream),
            Message::StreamSend { subject, content } => self.on_stream_send(id, subject, content),
            Message::MailboxSend {
                address,
                subject,
                tracker,
                timeout,
                content,
            } => self.on_mailbox_send(id, address, subject, tracker, timeout, content, now),
            Message::ServiceSend {
                address,
                subject,
                tracker,
                timeout,
                content,
            } => self.on_service_send(id, address, subject, tracker, timeout, content, delay, now),
            Message::ServiceOffer { address, pattern } => {
                self.on_service_offer(id, address, &pattern)
            }
            Message::Credit { amount } => self.on_credit(id, amount),
            Message::Confirm { tracker, .. } => self.on_confirm(id, &tracker),
            other => self.on_server_only(id, &other, now),
        }
    }

    /// A command from `from` that could not be decoded: ERROR 500, and that
    /// client is dropped. Nobody else is affected.
    pub fn malformed(&mut self, from: &[u8], error: &DecodeError, now: Instant) {
        self.counters.commands += 1;
        self.counters.malformed += 1;
        let id = self.id_of(from);
        tracing::warn!(
            "malformed command from {}: {error}; dropping that client",
            self.name(&id)
        );
        self.reply_error(&id, status::COMMAND_INVALID, &format!("malformed: {error}"));
        self.drop_client(&id, "malformed command", now);
    }

    /// Commands only a broker sends, from a client: a confused or hostile
    /// peer, answered and dropped.
    fn on_server_only(&mut self, id: ClientId, msg: &Message, now: Instant) {
        self.counters.malformed += 1;
        tracing::warn!(
            "{} sent {}, which only a broker sends; dropping that client",
            self.name(&id),
            msg.name()
        );
        self.reply_error(
            &id,
            status::COMMAND_INVALID,
            &format!("command invalid: {} is not a client command", msg.name()),
        );
        self.drop_client(&id, "server-only command", now);
    }

    /// Runs the timers due at `now`: delayed requests due, request and
    /// mail timeouts, mailbox reclaim, and (every 100 ms) client expiry.
    pub fn tick(&mut self, now: Instant) {
        if let Some(wall) = self.wall_at(now) {
            self.run_schedules(unix_ms(wall));
        }
        self.release_delayed(now);
        self.expire_requests(now);
        self.expire_mail(now);
        self.reclaim_mailboxes(now);
        if now >= self.last_client_check + CLIENT_CHECK {
            self.last_client_check = now;
            self.expire_clients(now);
            self.services.retain(|_, s| !s.is_idle());
        }
    }

    /// Pairs the monotonic clock with the wall clock (schedules fire at
    /// wall-clock times): the caller says what time it is, now and then.
    /// Schedules do not run before the first call.
    pub fn set_wall_clock(&mut self, now: Instant, wall: SystemTime) {
        let first = self.wall.is_none();
        self.wall = Some((now, wall));
        if first && !self.schedules.is_empty() {
            // Their first due times, so next_deadline knows them.
            self.run_schedules(unix_ms(wall));
        }
    }

    /// The wall-clock time at `now`, if known (from the last
    /// [`Core::set_wall_clock`]).
    pub fn wall_at(&self, now: Instant) -> Option<SystemTime> {
        let (at, wall) = self.wall?;
        Some(match now.checked_duration_since(at) {
            Some(ahead) => wall.checked_add(ahead).unwrap_or(wall),
            None => wall.checked_sub(at.duration_since(now)).unwrap_or(wall),
        })
    }

    /// When [`Core::tick`] has something to do next, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let clients = (!self.clients.is_empty()).then(|| self.last_client_check + CLIENT_CHECK);
        let requests = self.request_expiry.keys().next().map(|(t, _)| *t);
        let mail = self.mail_expiry.keys().next().map(|(t, _)| *t);
        let reclaim = self
            .reclaim
            .iter()
            .next()
            .map(|(t, _)| after(*t, self.cfg.mailbox_expiry));
        let delayed = self.delayed.next_due();
        let schedule = self.next_schedule_ms().and_then(|ms| {
            let (at, wall) = self.wall?;
            let ahead = ms.saturating_sub(unix_ms(wall));
            Some(after(at, Duration::from_millis(ahead)))
        });
        [clients, requests, mail, reclaim, delayed, schedule]
            .into_iter()
            .flatten()
            .min()
    }

    /// Dispatches the services touched since the last flush, each once, and
    /// moves everything to send into `out`, in order.
    pub fn flush(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        // Nothing expired is ever delivered, even between ticks.
        self.expire_requests(now);
        while !self.touched.is_empty() {
            let touched = std::mem::take(&mut self.touched);
            for service in &touched {
                self.dispatch(service, now);
            }
        }
        out.append(&mut self.out);
    }

    /// `sent` could not be sent: `unreachable` when the peer is gone
    /// (EHOSTUNREACH), otherwise it is not reading (high-water mark).
    /// Returns whether the core dropped that client; the caller then treats
    /// whatever else it had for it in this flush as failed too.
    pub fn send_failed(
        &mut self,
        sent: Outgoing,
        unreachable: bool,
        reason: &str,
        now: Instant,
    ) -> bool {
        let known = self.clients.contains_key(&sent.to);
        match (sent.msg, sent.custody) {
            (
                Message::ServiceDeliver {
                    sender,
                    address,
                    subject,
                    tracker,
                    content,
                },
                Some(c),
            ) => {
                tracing::warn!(
                    "request for {address:?} not deliverable to {} ({reason}); requeued",
                    self.name(&sent.to)
                );
                if !c.acked {
                    // Push mode forgot it on delivery: take it back.
                    let req = Held {
                        id: c.id,
                        sender,
                        subject,
                        tracker,
                        content,
                        expires: c.expires,
                        // Push mode: it never counted (the worker never had it).
                        deliveries: 0,
                    };
                    self.requeue(&address, req, now);
                }
                // An acknowledging worker's unconfirmed requests come back
                // when it is dropped.
                self.drop_client(&sent.to, "unreachable", now);
            }
            (
                Message::MailboxDeliver {
                    sender,
                    address,
                    subject,
                    tracker,
                    content,
                },
                Some(c),
            ) => {
                tracing::warn!("mail for {address:?} not deliverable now ({reason}); stored");
                self.drop_client(&sent.to, "unreachable", now);
                let mail = Held {
                    id: c.id,
                    sender,
                    subject,
                    tracker,
                    content,
                    expires: c.expires,
                    deliveries: 0,
                };
                self.store_mail(c.from.as_ref(), address, mail, false, now);
            }
            (Message::StreamDeliver { .. }, _) => {
                // Streams are fire-and-forget for everyone; a reader that is
                // gone or not reading misses this one, and we say so.
                tracing::warn!(
                    "stream message to {} not delivered: {reason}",
                    self.name(&sent.to)
                );
                if unreachable {
                    self.drop_client(&sent.to, "unreachable", now);
                }
            }
            (msg, _) => {
                tracing::debug!(
                    "{} to {} not sent: {reason}",
                    msg.name(),
                    self.name(&sent.to)
                );
            }
        }
        known && !self.clients.contains_key(&sent.to)
    }

    /// The counters, as they are now: cheap (no gauge is computed), for
    /// publishing once per loop turn.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counters and the gauges of the moment. Costs a pass over clients,
    /// services, mailboxes and streams: for metrics now and then and the
    /// admin API, not for every loop turn.
    pub fn stats(&self) -> Stats {
        let (streams, stream_readers) = self.stream_counts();
        Stats {
            counters: self.counters.clone(),
            clients: self.clients.len(),
            clients_in_maintenance: self.clients.values().filter(|c| c.maintenance).count(),
            services: self.service_stats(),
            mailboxes: self.mailboxes.len(),
            mail_held: self.mailboxes.values().map(|m| m.mail.len()).sum(),
            mail_bytes: self.mailboxes.values().map(|m| m.bytes).sum(),
            streams,
            stream_readers,
            dead_letters: self
                .mailboxes
                .get(&self.cfg.dead_letters)
                .map_or(0, |m| m.mail.len()),
            delayed_requests: self.delayed.len(),
            schedules: self
                .schedules
                .iter()
                .map(|s| (s.spec.name.clone(), s.fires, s.next, s.last))
                .collect(),
        }
    }

    /// The error mailbox's address (`mlm_server/service/dead_letters`).
    pub fn dead_letter_mailbox(&self) -> &str {
        &self.cfg.dead_letters
    }

    /// The connected clients, sorted by address.
    pub fn clients(&self) -> Vec<ClientInfo> {
        let mut list: Vec<ClientInfo> = self
            .clients
            .values()
            .map(|c| ClientInfo {
                address: c.address.clone(),
                user: c.user.clone(),
                offers: c.offers.clone(),
                reads: c.reads.clone(),
                credit: c.acked.then_some(c.credit),
                unconfirmed: c.unconfirmed.len(),
                maintenance: c.maintenance,
                writer: c.writer.clone(),
                last_seen: c.last_seen,
            })
            .collect();
        list.sort_by(|a, b| a.address.cmp(&b.address));
        list
    }

    // ----- restoring from storage ------------------------------------

    /// Puts back a request read from storage, queued on `service`, as it
    /// was before the restart (limits are not applied: nothing kept is
    /// dropped). Tells the journal nothing: storage has it.
    ///
    /// A request that already had its `max_deliveries` deliveries (the
    /// last one ended by the broker's own crash) is not queued again but
    /// dead-lettered as a poison request: a request that kills its worker
    /// and, with it, an embedded broker must not loop through restarts.
    /// (Found by the simulator, seed 13: a sixth delivery after a restart.)
    pub fn restore_request(&mut self, service: &str, req: Held) {
        self.next_id = self.next_id.max(req.id + 1);
        let max = self.cfg.max_deliveries;
        if max > 0 && req.deliveries >= max {
            let now = self.last_client_check;
            return self.poisoned(service, req, now);
        }
        self.enqueue(service, req);
    }

    /// Puts back mail read from storage into the mailbox `address`; a new
    /// mailbox's reclaim clock starts at `now` unless
    /// [`Core::restore_mailbox_clock`] says otherwise.
    pub fn restore_mail(&mut self, address: &str, mail: Held, now: Instant) {
        self.next_id = self.next_id.max(mail.id + 1);
        self.put_mail(address, mail, now);
    }

    /// Sets the reclaim clock of a restored mailbox to when it started
    /// before the restart.
    pub fn restore_mailbox_clock(&mut self, address: &str, touched: Instant) {
        self.set_mailbox_clock(address, touched);
    }

    // ----- shared helpers --------------------------------------------

    /// The next held-message number.
    fn take_id(&mut self) -> HeldId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The routing id as a shared key, reusing the client's if known.
    fn id_of(&self, from: &[u8]) -> ClientId {
        match self.clients.get(from) {
            Some(c) => c.id.clone(),
            None => Arc::from(from),
        }
    }

    fn touch_service(&mut self, service: &str) {
        if !self.touched.iter().any(|s| s == service) {
            self.touched.push(service.to_string());
        }
    }

    fn send(&mut self, to: &ClientId, msg: Message) {
        self.out.push(Outgoing::reply(to.clone(), msg));
    }

    fn reply_ok(&mut self, to: &ClientId) {
        self.send(
            to,
            Message::Ok {
                status: Status::new(status::SUCCESS, ""),
            },
        );
    }

    fn reply_error(&mut self, to: &ClientId, code: u16, reason: &str) {
        let mut reason = reason.to_string();
        if reason.len() > MAX_STRING {
            let mut end = MAX_STRING;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        self.send(
            to,
            Message::Error {
                status: Status::new(code, reason),
            },
        );
    }

    fn address_of(&self, id: &ClientId) -> String {
        self.clients
            .get(id)
            .map(|c| c.address.clone())
            .unwrap_or_default()
    }

    /// How logs name a client.
    fn name(&self, id: &[u8]) -> String {
        match self.clients.get(id) {
            Some(c) if !c.address.is_empty() => format!("{:?}", c.address),
            Some(_) => "anonymous client".into(),
            None => "unknown client".into(),
        }
    }
}

/// Compiles a subject pattern (search semantics: it may match anywhere).
fn compile(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(pattern).map_err(|e| {
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

/// A timeout in ms (0: none) as a deadline.
fn deadline(now: Instant, timeout_ms: u32) -> Option<Instant> {
    (timeout_ms > 0).then(|| after(now, Duration::from_millis(u64::from(timeout_ms))))
}

fn limits_hit(l: &Limits, count: usize, bytes: usize, add: usize) -> bool {
    count >= l.messages || bytes.saturating_add(add) > l.bytes
}
