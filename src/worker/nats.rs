//! The NATS backend's connection: a small tokio runtime on a thread of its
//! own (`alaska-nats`) owns the `async-nats` client and talks to the
//! dispatcher's thread over channels, as the ops HTTP server does.
//!
//! Incoming: requests on `<service>.>` (queue group `<service>`) become
//! [`Delivery`]s of kind `Service` on a crossbeam channel, and the wake-up
//! pipe is poked so the hub's poll returns; connection changes come the
//! same way ([`NatsEvent::Up`], [`NatsEvent::Down`]). The NATS micro
//! discovery requests (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`, also with
//! `.<name>` and `.<name>.<id>`) are answered on this thread, from counts
//! it keeps itself, and never reach the hub.
//!
//! Outgoing: the hub hands [`Publish`]es (and maintenance, close) over an
//! unbounded tokio channel, which never blocks the dispatcher.
//!
//! The mapping (see docs/NATS.md): a request on `<service>.<subject>` with
//! reply inbox `R` is a delivery from sender `R` with subject `<subject>`
//! and a non-empty tracker (so the core replies); a forwarded request
//! carries its envelope tracker in the `Alaska-Envelope` header. The
//! worker's subject filter (a regular expression) cannot be a NATS subject
//! filter: it is applied here, and a request it rejects gets an error
//! reply with code 404 and never runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use async_nats::{HeaderMap, Subscriber};
use crossbeam_channel::{Receiver, Sender};
use futures_util::StreamExt;
use regex::Regex;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use super::wake::Waker;
use crate::mlm::{Delivery, DeliveryKind};

/// Header carrying a forwarded or handed-back request's envelope tracker
/// (hops, attempt, original requester and tracker).
pub const ENVELOPE_HEADER: &str = "Alaska-Envelope";
/// NATS micro's error description header.
pub const ERROR_HEADER: &str = "Nats-Service-Error";
/// NATS micro's error code header.
pub const ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";
/// The tracker of a request that came with a reply inbox and no envelope:
/// any non-empty tracker makes the core reply.
pub const REPLY_TRACKER: &str = "nats";

/// How the worker connects to NATS (`worker/nats/...`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsOptions {
    /// `user` with `password`.
    pub user: Option<(String, String)>,
    /// An authentication token.
    pub token: Option<String>,
    /// A credentials file (JWT and nkey seed, as `nsc` writes them).
    pub creds: Option<PathBuf>,
    /// A file holding an nkey seed (`SU...`).
    pub nkey: Option<PathBuf>,
    /// CA certificates (PEM) that sign the server's certificate.
    pub tls_ca: Option<PathBuf>,
    /// Our client certificate and key (PEM), for servers that verify
    /// clients.
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    /// Insist on TLS even when the server does not ask for it.
    pub tls_required: bool,
    /// Consume from a JetStream durable pull consumer instead of a core
    /// NATS queue subscription.
    pub jetstream: Option<JetStreamOptions>,
}

/// `worker/nats/jetstream/...`: where the work queue is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamOptions {
    /// The stream (made by the operator; the worker does not create it).
    pub stream: String,
    /// The durable consumer's name; created (filter `<service>.>`,
    /// explicit acknowledgements) when absent, used as it is otherwise.
    pub consumer: String,
    /// How long the server waits for an acknowledgement before it
    /// redelivers (the worker sends "working" every third of it while a
    /// request is with it).
    pub ack_wait: Duration,
    /// Deliveries of one message at most (the poison-request limit).
    pub max_deliver: i64,
    /// Unacknowledged messages with this worker's consumer at most (set by
    /// the dispatcher from the pool and runners, like the MLM credit).
    pub max_ack_pending: i64,
}

/// Header of a JetStream work item naming where its reply goes.
pub const REPLY_HEADER: &str = "Alaska-Reply";

/// What happened on the NATS connection, for the hub.
#[derive(Debug)]
pub enum NatsEvent {
    /// Connected (again).
    Up,
    /// The connection dropped; the client reconnects by itself.
    Down,
    /// A request for the service.
    Request(Delivery),
    /// Maintenance is in effect (true: the server has our unsubscribe) or
    /// over (the server has our subscription again).
    Maintenance(bool),
}

/// One message to publish.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    /// The subject.
    pub subject: String,
    /// Its reply subject, if any.
    pub reply: Option<String>,
    /// Headers (name, value).
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Publish {
    /// A plain message.
    pub fn to(subject: impl Into<String>, payload: Vec<u8>) -> Publish {
        Publish {
            subject: subject.into(),
            payload,
            ..Publish::default()
        }
    }
}

/// How a JetStream delivery ends (or is kept alive).
#[derive(Debug, Clone, Copy)]
pub enum Settle {
    /// Done (`+ACK`).
    Ack,
    /// Deliver again after this long (`-NAK`).
    Nak(Duration),
    /// Never again (`+TERM`).
    Term,
}

enum Cmd {
    Publish(Publish),
    Settle(Vec<(u64, Settle)>),
    /// Unsubscribe from the service's subjects (true) or subscribe again.
    Maintenance(bool),
    /// Flush, then end the thread.
    Close,
}

/// The dispatcher's end of the connection. See the module documentation.
pub struct NatsLink {
    endpoint: String,
    tx: UnboundedSender<Cmd>,
    rx: Receiver<NatsEvent>,
    thread: Option<JoinHandle<()>>,
    done: Receiver<()>,
    up: bool,
    maintenance: bool,
    /// The maintenance state the runtime thread last confirmed.
    maintenance_applied: bool,
    jetstream: bool,
}

/// What the runtime thread needs.
struct Setup {
    servers: Vec<String>,
    opts: NatsOptions,
    service: String,
    filter: Regex,
    name: String,
    events: Sender<NatsEvent>,
    waker: Waker,
}

impl NatsLink {
    /// Starts the runtime thread and the connection (which does not wait
    /// for a server: requests come once one answers). `servers` are
    /// `nats://host:port` URLs of one cluster; `filter` is the worker's
    /// subject pattern.
    pub fn start(
        servers: &[String],
        opts: NatsOptions,
        service: &str,
        filter: &str,
        waker: Waker,
    ) -> Result<NatsLink, String> {
        let filter = Regex::new(filter).map_err(|e| format!("subject filter: {e}"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("NATS runtime: {e}"))?;
        let (tx, cmds) = unbounded_channel();
        let (events, rx) = crossbeam_channel::unbounded();
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let jetstream = opts.jetstream.is_some();
        let setup = Setup {
            servers: servers.to_vec(),
            opts,
            service: service.to_string(),
            filter,
            name: micro_name(service),
            events,
            waker,
        };
        let thread = std::thread::Builder::new()
            .name("alaska-nats".into())
            .spawn(move || {
                if let Err(e) = rt.block_on(run(setup, cmds)) {
                    tracing::error!("NATS: {e}");
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("NATS thread: {e}"))?;
        Ok(NatsLink {
            endpoint: servers.join(","),
            tx,
            rx,
            thread: Some(thread),
            done,
            up: false,
            maintenance: false,
            maintenance_applied: false,
            jetstream,
        })
    }

    /// Whether this connection consumes from JetStream (acknowledged,
    /// redelivered by the server).
    pub fn jetstream(&self) -> bool {
        self.jetstream
    }

    /// Ends (or gives back) JetStream deliveries by their ids.
    pub fn settle(&self, what: Vec<(u64, Settle)>) {
        let _ = self.tx.send(Cmd::Settle(what));
    }

    /// The servers, as configured.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Connected now (as last told by an event taken).
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Whether maintenance (no subscription) is asked.
    pub fn maintenance(&self) -> bool {
        self.maintenance
    }

    /// Whether the server has the maintenance state asked (the
    /// subscription gone, or back).
    pub fn maintenance_applied(&self) -> bool {
        self.maintenance_applied == self.maintenance
    }

    /// Whether events wait.
    pub fn has_events(&self) -> bool {
        !self.rx.is_empty()
    }

    /// The next event, if one waits.
    pub fn next_event(&mut self) -> Option<NatsEvent> {
        let e = self.rx.try_recv().ok()?;
        self.saw(&e);
        Some(e)
    }

    /// The next event within `wait`.
    pub fn event_within(&mut self, wait: Duration) -> Option<NatsEvent> {
        let e = self.rx.recv_timeout(wait).ok()?;
        self.saw(&e);
        Some(e)
    }

    fn saw(&mut self, e: &NatsEvent) {
        match e {
            NatsEvent::Up => self.up = true,
            NatsEvent::Down => self.up = false,
            NatsEvent::Maintenance(on) => self.maintenance_applied = *on,
            NatsEvent::Request(_) => {}
        }
    }

    /// Publishes (queued for the runtime thread; never blocks).
    pub fn publish(&self, p: Publish) {
        let _ = self.tx.send(Cmd::Publish(p));
    }

    /// Leaves (`true`) or rejoins the service's queue group.
    pub fn set_maintenance(&mut self, on: bool) {
        self.maintenance = on;
        let _ = self.tx.send(Cmd::Maintenance(on));
    }

    /// Flushes what was published and ends the thread, waiting `within`
    /// at most (a server that is gone cannot take the flush).
    pub fn close(mut self, within: Duration) {
        let _ = self.tx.send(Cmd::Close);
        if self.done.recv_timeout(within).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        } else {
            tracing::warn!("NATS: the connection did not close within {within:?}; left behind");
        }
    }
}

/// A NATS micro service name: letters, digits, `-` and `_` only.
pub fn micro_name(service: &str) -> String {
    service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// What `$SRV.STATS` reports, kept on the runtime thread.
#[derive(Default)]
struct Stats {
    requests: u64,
    errors: u64,
    last_error: String,
    processing: Duration,
    /// Reply inboxes of requests in flight, and when they came.
    pending: HashMap<String, Instant>,
}

impl Stats {
    /// A reply (or forward, keeping the inbox) left for `inbox`.
    fn answered(&mut self, inbox: &str, error: Option<&str>) {
        if let Some(t) = self.pending.remove(inbox) {
            self.processing += t.elapsed();
        }
        if let Some(e) = error {
            self.errors += 1;
            self.last_error = e.to_string();
        }
    }
}

/// Our service id: unique per process and start.
fn service_id() -> String {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), t & 0xffff_ffff_ffff)
}

async fn connect(setup: &Setup) -> Result<async_nats::Client, String> {
    let mut o = async_nats::ConnectOptions::new()
        .name(format!("alaska {}", setup.service))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(10))
        .reconnect_delay_callback(|n| Duration::from_millis((100 * n as u64).min(2000)));
    let opts = &setup.opts;
    if let Some((u, p)) = &opts.user {
        o = o.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &opts.token {
        o = o.token(t.clone());
    }
    if let Some(f) = &opts.creds {
        o = o
            .credentials_file(f)
            .await
            .map_err(|e| format!("worker/nats/creds {}: {e}", f.display()))?;
    }
    if let Some(f) = &opts.nkey {
        let seed = std::fs::read_to_string(f)
            .map_err(|e| format!("worker/nats/nkey {}: {e}", f.display()))?;
        o = o.nkey(seed.trim().to_string());
    }
    if let Some(ca) = &opts.tls_ca {
        o = o.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &opts.tls_cert {
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    if opts.tls_required {
        o = o.require_tls(true);
    }
    let events = setup.events.clone();
    let waker = setup.waker.clone();
    o = o.event_callback(move |e| {
        let events = events.clone();
        let waker = waker.clone();
        async move {
            let ev = match e {
                async_nats::Event::Connected => NatsEvent::Up,
                async_nats::Event::Disconnected => NatsEvent::Down,
                other => {
                    tracing::info!("NATS: {other}");
                    return;
                }
            };
            let _ = events.send(ev);
            waker.wake();
        }
    });
    o.connect(setup.servers.as_slice())
        .await
        .map_err(|e| format!("connect to {}: {e}", setup.servers.join(",")))
}

async fn subscribe_service(
    client: &async_nats::Client,
    service: &str,
) -> Result<Subscriber, String> {
    client
        .queue_subscribe(format!("{service}.>"), service.to_string())
        .await
        .map_err(|e| format!("subscribe {service}.>: {e}"))
}

/// The next message of an optional subscription (never, without one).
async fn next_of(sub: &mut Option<Subscriber>) -> Option<async_nats::Message> {
    match sub {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn run(setup: Setup, mut cmds: UnboundedReceiver<Cmd>) -> Result<(), String> {
    let client = connect(&setup).await?;
    let id = service_id();
    let started = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let js_opts = setup.opts.jetstream.clone();
    let mut requests = match js_opts {
        Some(_) => None,
        None => Some(subscribe_service(&client, &setup.service).await?),
    };
    let mut work = Work::default();
    let mut next_setup = tokio::time::Instant::now();
    let beat = js_opts.as_ref().map_or(Duration::from_secs(3600), |j| {
        (j.ack_wait / 3).max(Duration::from_millis(20))
    });
    let mut heartbeat = tokio::time::interval(beat);
    let srv = |s: String| {
        let c = client.clone();
        async move {
            c.subscribe(s.clone())
                .await
                .map_err(|e| format!("{s}: {e}"))
        }
    };
    let mut srv_all = srv("$SRV.*".into()).await?;
    let mut srv_name = srv(format!("$SRV.*.{}", setup.name)).await?;
    let mut srv_id = srv(format!("$SRV.*.{}.{id}", setup.name)).await?;
    // Said once the server has the subscriptions (a flush is a round
    // trip), so a client may send from then on; not awaited longer than
    // 2 s, so a server that is down does not hold up the loop.
    if requests.is_some() {
        match tokio::time::timeout(Duration::from_secs(2), client.flush()).await {
            Ok(Ok(())) => tracing::info!(
                "NATS: serving {}.> (queue group {})",
                setup.service,
                setup.service
            ),
            _ => tracing::info!("NATS: subscriptions made; the server has not confirmed them yet"),
        }
    }
    let prefix_len = setup.service.len() + 1;
    let mut stats = Stats::default();
    let micro = Micro {
        name: &setup.name,
        id: &id,
        service: &setup.service,
        started: &started,
    };
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None | Some(Cmd::Close) => break,
                Some(Cmd::Publish(p)) => publish(&client, p, &mut stats).await,
                Some(Cmd::Settle(what)) => work.settle(&client, what).await,
                Some(Cmd::Maintenance(on)) => {
                    work.paused = on;
                    if on {
                        work.messages = None;
                        if let Some(mut s) = requests.take() {
                            let _ = s.unsubscribe().await;
                        }
                    } else if requests.is_none() && js_opts.is_none() {
                        requests = Some(subscribe_service(&client, &setup.service).await?);
                    }
                    // In effect once the server has it (a flush is a
                    // round trip); said to the hub for /v1/maintenance.
                    if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(2), client.flush()).await {
                        let _ = setup.events.send(NatsEvent::Maintenance(on));
                        setup.waker.wake();
                    }
                }
            },
            _ = tokio::time::sleep_until(next_setup), if js_opts.is_some() && work.messages.is_none() && !work.paused => {
                let j = js_opts.as_ref().expect("JetStream options");
                match tokio::time::timeout(Duration::from_secs(5), consume(&client, j, &setup.service)).await {
                    Ok(Ok(m)) => {
                        tracing::info!(stream = %j.stream, consumer = %j.consumer, "JetStream: consuming");
                        work.messages = Some(m);
                    }
                    Ok(Err(e)) => tracing::warn!("JetStream: {e}; trying again in 1 s"),
                    Err(_) => tracing::warn!("JetStream: no answer within 5 s; trying again in 1 s"),
                }
                next_setup = in_a_second();
            },
            m = next_work(&mut work.messages) => match m {
                Some(Ok(m)) => {
                    if let Some(d) = work.delivery(&client, m, &setup).await {
                        stats.requests += 1;
                        let _ = setup.events.send(NatsEvent::Request(d));
                        setup.waker.wake();
                    }
                }
                Some(Err(e)) => tracing::warn!("JetStream: {e}"),
                None => {
                    tracing::warn!("JetStream: the consumer's message stream ended; consuming again in 1 s");
                    work.messages = None;
                    next_setup = in_a_second();
                }
            },
            _ = heartbeat.tick(), if !work.held.is_empty() => work.keep_alive(&client, beat).await,
            m = next_of(&mut requests) => {
                let Some(m) = m else { continue };
                let subject = m.subject.as_str().get(prefix_len..).unwrap_or("").to_string();
                stats.requests += 1;
                if !setup.filter.is_match(&subject) {
                    if let Some(r) = &m.reply {
                        let text = format!("no handler: subject {subject} does not match the worker's filter");
                        publish(&client, error_reply(r.as_str(), "404", &text), &mut stats).await;
                    }
                    continue;
                }
                let envelope = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(ENVELOPE_HEADER))
                    .map(|v| v.as_str().to_string());
                let sender = m.reply.as_ref().map(|r| r.as_str().to_string()).unwrap_or_default();
                if !sender.is_empty() {
                    // Requests never answered (dropped, or answered by a
                    // later stage) would stay: bounded.
                    if stats.pending.len() >= 10_000 {
                        stats.pending.clear();
                    }
                    stats.pending.insert(sender.clone(), Instant::now());
                }
                let tracker = match envelope {
                    Some(e) => e,
                    None if !sender.is_empty() => REPLY_TRACKER.to_string(),
                    None => String::new(),
                };
                let d = Delivery {
                    kind: DeliveryKind::Service,
                    sender,
                    address: setup.service.clone(),
                    subject,
                    tracker,
                    content: vec![m.payload.to_vec()],
                    ack: None,
                };
                let _ = setup.events.send(NatsEvent::Request(d));
                setup.waker.wake();
            },
            m = srv_all.next() => if let Some(m) = m { micro.answer(&client, m, &stats).await },
            m = srv_name.next() => if let Some(m) = m { micro.answer(&client, m, &stats).await },
            m = srv_id.next() => if let Some(m) = m { micro.answer(&client, m, &stats).await },
        }
    }
    let _ = client.flush().await;
    Ok(())
}

type Messages = async_nats::jetstream::consumer::pull::Stream;

/// A second from now, for the next attempt to consume.
fn in_a_second() -> tokio::time::Instant {
    tokio::time::Instant::from_std(crate::time::after(Instant::now(), Duration::from_secs(1)))
}

/// The next JetStream message, when consuming.
async fn next_work(
    m: &mut Option<Messages>,
) -> Option<Result<async_nats::jetstream::Message, String>> {
    match m {
        Some(s) => s.next().await.map(|r| r.map_err(|e| e.to_string())),
        None => std::future::pending().await,
    }
}

/// Binds (or creates) the durable pull consumer and starts its message
/// stream.
async fn consume(
    client: &async_nats::Client,
    j: &JetStreamOptions,
    service: &str,
) -> Result<Messages, String> {
    use async_nats::jetstream::consumer::{pull, AckPolicy};
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .get_stream(&j.stream)
        .await
        .map_err(|e| format!("stream {}: {e}", j.stream))?;
    let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = stream
        .get_or_create_consumer(
            &j.consumer,
            pull::Config {
                durable_name: Some(j.consumer.clone()),
                filter_subject: format!("{service}.>"),
                ack_policy: AckPolicy::Explicit,
                ack_wait: j.ack_wait,
                max_deliver: j.max_deliver,
                max_ack_pending: j.max_ack_pending,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {}: {e}", j.consumer))?;
    consumer
        .messages()
        .await
        .map_err(|e| format!("consumer {} messages: {e}", j.consumer))
}

/// JetStream deliveries with the worker: their acknowledgement subjects
/// by id, and when each was last said to be in progress.
#[derive(Default)]
struct Work {
    messages: Option<Messages>,
    held: HashMap<u64, (String, Instant)>,
    next_id: u64,
    /// Maintenance: not consuming.
    paused: bool,
}

impl Work {
    /// A delivery for the hub, or `None` (a message the worker's filter
    /// rejects is terminated here).
    async fn delivery(
        &mut self,
        client: &async_nats::Client,
        m: async_nats::jetstream::Message,
        setup: &Setup,
    ) -> Option<Delivery> {
        let delivered = m.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
        let m = m.message;
        let ack_subject = m.reply.as_ref()?.as_str().to_string();
        let subject = m
            .subject
            .as_str()
            .get(setup.service.len() + 1..)
            .unwrap_or("")
            .to_string();
        if !setup.filter.is_match(&subject) {
            tracing::warn!(subject = %subject, "JetStream: subject outside the worker's filter; terminated");
            let _ = client.publish(ack_subject, "+TERM".into()).await;
            return None;
        }
        let header = |name: &str| {
            m.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_string())
        };
        let reply = header(REPLY_HEADER).unwrap_or_default();
        // The attempt is the server's delivery count (so worker/retry/
        // attempts counts redeliveries); hops and the original requester
        // come from an envelope when a stage forwarded it here.
        let mut env = header(ENVELOPE_HEADER)
            .and_then(|t| super::outcomes::Envelope::decode(&t))
            .unwrap_or(super::outcomes::Envelope {
                hops: 0,
                attempt: 1,
                sender: reply.clone(),
                tracker: if reply.is_empty() {
                    String::new()
                } else {
                    REPLY_TRACKER.to_string()
                },
            });
        env.attempt = env.attempt.max(delivered);
        self.next_id += 1;
        let id = self.next_id;
        self.held.insert(id, (ack_subject, Instant::now()));
        Some(Delivery {
            kind: DeliveryKind::Service,
            sender: env.sender.clone(),
            address: setup.service.clone(),
            subject,
            tracker: env.encode().unwrap_or_default(),
            content: vec![m.payload.to_vec()],
            ack: Some(crate::mlm::AckToken::foreign(id)),
        })
    }

    async fn settle(&mut self, client: &async_nats::Client, what: Vec<(u64, Settle)>) {
        use async_nats::jetstream::AckKind;
        for (id, how) in what {
            let Some((subject, _)) = self.held.remove(&id) else {
                continue;
            };
            let kind = match how {
                Settle::Ack => AckKind::Ack,
                Settle::Nak(d) if d.is_zero() => AckKind::Nak(None),
                Settle::Nak(d) => AckKind::Nak(Some(d)),
                Settle::Term => AckKind::Term,
            };
            if let Err(e) = client.publish(subject, kind.into()).await {
                tracing::warn!("JetStream acknowledgement not sent: {e}");
            }
        }
    }

    /// "Working" (`+WPI`) for every delivery with us for a third of the
    /// acknowledgement wait since it was last said, so a long script is
    /// not redelivered to another worker meanwhile.
    async fn keep_alive(&mut self, client: &async_nats::Client, every: Duration) {
        let now = Instant::now();
        for (subject, last) in self.held.values_mut() {
            if now.duration_since(*last) >= every {
                *last = now;
                let _ = client.publish(subject.clone(), "+WPI".into()).await;
            }
        }
    }
}

/// An error reply with NATS micro's headers; the text is the payload too.
pub fn error_reply(inbox: &str, code: &str, text: &str) -> Publish {
    // A header value is one line.
    let line: String = text
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    Publish {
        subject: inbox.to_string(),
        reply: None,
        headers: vec![
            (ERROR_HEADER.to_string(), line),
            (ERROR_CODE_HEADER.to_string(), code.to_string()),
        ],
        payload: text.as_bytes().to_vec(),
    }
}

async fn publish(client: &async_nats::Client, p: Publish, stats: &mut Stats) {
    let error = p
        .headers
        .iter()
        .find(|(k, _)| k == ERROR_HEADER)
        .map(|(_, v)| v.clone());
    // A reply, or a forward that keeps the requester's inbox, ends this
    // worker's part of the request.
    let inbox = p.reply.clone().unwrap_or_else(|| p.subject.clone());
    stats.answered(&inbox, error.as_deref());
    let Publish {
        subject,
        reply,
        headers,
        payload,
    } = p;
    let r = if headers.is_empty() && reply.is_none() {
        client.publish(subject.clone(), payload.into()).await
    } else {
        let mut h = HeaderMap::new();
        for (k, v) in &headers {
            h.insert(k.as_str(), v.as_str());
        }
        match reply {
            Some(r) => {
                client
                    .publish_with_reply_and_headers(subject.clone(), r, h, payload.into())
                    .await
            }
            None => {
                client
                    .publish_with_headers(subject.clone(), h, payload.into())
                    .await
            }
        }
    };
    if let Err(e) = r {
        tracing::warn!(subject = %subject, "NATS publish failed: {e}");
    }
}

/// The NATS micro discovery answers.
struct Micro<'a> {
    name: &'a str,
    id: &'a str,
    service: &'a str,
    started: &'a str,
}

impl Micro<'_> {
    async fn answer(&self, client: &async_nats::Client, m: async_nats::Message, stats: &Stats) {
        let Some(reply) = m.reply else { return };
        let verb = m.subject.as_str().split('.').nth(1).unwrap_or("");
        let body = match verb {
            "PING" => self.ping(),
            "INFO" => self.info(),
            "STATS" => self.stats(stats),
            _ => return,
        };
        let _ = client.publish(reply, body.to_string().into()).await;
    }

    fn base(&self, kind: &str) -> serde_json::Value {
        serde_json::json!({
            "type": format!("io.nats.micro.v1.{kind}"),
            "name": self.name,
            "id": self.id,
            "version": env!("CARGO_PKG_VERSION"),
            "metadata": {"alaska.service": self.service},
        })
    }

    fn ping(&self) -> serde_json::Value {
        self.base("ping_response")
    }

    fn endpoint(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "subject": format!("{}.>", self.service),
            "queue_group": self.service,
            "metadata": null,
        })
    }

    fn info(&self) -> serde_json::Value {
        let mut v = self.base("info_response");
        v["description"] = format!("alaska worker for {}", self.service).into();
        v["endpoints"] = serde_json::json!([self.endpoint()]);
        v
    }

    fn stats(&self, s: &Stats) -> serde_json::Value {
        let mut v = self.base("stats_response");
        let answered = s.requests.saturating_sub(s.pending.len() as u64).max(1);
        let mut e = self.endpoint();
        e["num_requests"] = s.requests.into();
        e["num_errors"] = s.errors.into();
        e["last_error"] = s.last_error.clone().into();
        e["processing_time"] = (s.processing.as_nanos() as u64).into();
        e["average_processing_time"] =
            ((s.processing.as_nanos() / u128::from(answered)) as u64).into();
        v["started"] = self.started.into();
        v["endpoints"] = serde_json::json!([e]);
        v
    }
}
