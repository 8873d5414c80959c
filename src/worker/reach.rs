//! Scripts that reach out: `alaska.call` (a request to another service
//! through the worker's own broker connections, its reply returned to the
//! script), `alaska.http` (an HTTP or HTTPS request through one pooled
//! client per worker) and `alaska.schedule` (a service request the broker
//! holds until it is due).
//!
//! What a waiting script costs the worker: nothing but its VM. A VM of the
//! pool blocks on a channel (a call) or in the HTTP client (`alaska.http`),
//! bounded by the call's timeout and the request's time budget, while the
//! dispatcher thread keeps its connections alive and feeds the other VMs.
//! The dispatcher's own VM never blocks its thread: it lends the wait to
//! the dispatcher's duty (as `alaska.sleep` does), so replies, pings and
//! other requests flow while its script waits, and its HTTP requests run
//! on a short-lived thread of their own.
//!
//! The hub owns the sockets, so a call is handed to it over a channel
//! ([`CallLine`]) with a one-shot channel for the answer; the hub sends the
//! request with a tracker of its own (`call:<n>` inside the forward
//! envelope, which carries the hop count so that a loop of calls stops at
//! `worker/forward/hops`), and matches the reply mailed back by tracker
//! ([`Calls`]). A reply that comes after its caller stopped waiting is
//! dropped and counted.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mlua::{Lua, MultiValue, Table, Value};
use prometheus::IntCounterVec;

use super::types::Request;
use super::wake::Waker;
use crate::time::after;

/// The settings of `alaska.call` and `alaska.http`
/// (`worker/lua/call/...`, `worker/lua/http/...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReachConfig {
    /// `worker/lua/call/timeout`: a call's timeout when the script gives none.
    pub call_timeout: Duration,
    /// `worker/lua/call/max_timeout`: the longest timeout a script may ask.
    pub call_max_timeout: Duration,
    /// `worker/lua/http/allow`: the hosts scripts may reach; empty: none.
    pub http_allow: Vec<HostPattern>,
    /// `worker/lua/http/max_body`: the largest response body, bytes.
    pub http_max_body: usize,
    /// `worker/lua/http/timeout`: an HTTP request's timeout when the script
    /// gives none (never beyond the request's time budget).
    pub http_timeout: Duration,
    /// `worker/lua/http/ca`: PEM certificates trusted for HTTPS instead of
    /// the bundled Mozilla roots (`None`: those roots).
    pub http_ca: Option<Vec<u8>>,
    /// `worker/lua/http/max_idle`: idle connections kept for reuse.
    pub http_max_idle: usize,
}

impl Default for ReachConfig {
    fn default() -> Self {
        ReachConfig {
            call_timeout: Duration::from_secs(5),
            call_max_timeout: Duration::from_secs(60),
            http_allow: Vec::new(),
            http_max_body: 8 << 20,
            http_timeout: Duration::from_secs(10),
            http_ca: None,
            http_max_idle: 64,
        }
    }
}

/// One entry of `worker/lua/http/allow`: `*` (anywhere), `host`,
/// `*.domain` (any name under it, not the domain itself), each optionally
/// with `:port` (any port when none is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// The host, lower case; `*` for any, `*.x` for names under `x`.
    host: String,
    /// The port, when the pattern names one.
    port: Option<u16>,
}

impl HostPattern {
    /// Reads one pattern; `Err` says why it is not one.
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let s = s.trim().to_ascii_lowercase();
        if s.is_empty() {
            return Err("empty host pattern".into());
        }
        // `[::1]:8080`, `[::1]`, `host:port`, `host`.
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, tail) = rest
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed '['"))?;
            let port = match tail.strip_prefix(':') {
                Some(p) => Some(p),
                None if tail.is_empty() => None,
                None => return Err(format!("{s:?}: expected ':port' after ']'")),
            };
            (h.to_string(), port)
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
                _ => (s.clone(), None),
            }
        };
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("{s:?}: {p:?} is not a port"))?,
            ),
            None => None,
        };
        let name = host.strip_prefix("*.").unwrap_or(&host);
        if host != "*"
            && (name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_')))
        {
            return Err(format!(
                "{s:?}: a host pattern is '*', a name, '*.domain' or an address, with an optional :port"
            ));
        }
        Ok(HostPattern { host, port })
    }

    /// Reads a list separated by commas or white space.
    pub fn parse_list(s: &str) -> Result<Vec<HostPattern>, String> {
        s.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .map(HostPattern::parse)
            .collect()
    }

    /// Whether `host` (lower case, without brackets) on `port` matches.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        if self.host == "*" {
            return true;
        }
        match self.host.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            None => self.host == host,
        }
    }
}

/// What a finished call gives the script: the reply's frames, or why there
/// is none.
pub type CallAnswer = Result<Vec<Vec<u8>>, String>;

/// What ends a parked request's wait: its call's reply, or its HTTP
/// response.
#[derive(Debug)]
pub enum Answered {
    /// `alaska.call`'s answer.
    Call(CallAnswer),
    /// `alaska.http`'s response, or why there is none (`timeout ...`).
    Http(Result<HttpResponse, String>),
}

/// Where a call's answer goes: a channel and the token the caller knows it
/// by (a waiting VM's own channel with token 0, or the channel of the VM
/// owner that parks its requests, with the parked request's token).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The channel.
    pub tx: Sender<(u64, Answered)>,
    /// The token.
    pub token: u64,
}

impl Answer {
    /// Sends; `false` when nobody listens any more.
    pub fn send(&self, a: CallAnswer) -> bool {
        self.tx.send((self.token, Answered::Call(a))).is_ok()
    }
}

/// What a parked request waits for.
#[derive(Debug, Clone)]
pub enum Waited {
    /// The reply to an `alaska.call`.
    Call(CallInfo),
    /// The response to an `alaska.http`.
    Http(HttpInfo),
}

impl Waited {
    /// When the wait ends at the latest.
    pub fn until(&self) -> Instant {
        match self {
            Waited::Call(i) => i.until,
            Waited::Http(i) => i.until,
        }
    }

    /// Whether the request's budget, not the wait's own timeout, ends it.
    pub fn budget_cuts(&self) -> bool {
        match self {
            Waited::Call(i) => i.budget_cuts,
            Waited::Http(i) => i.budget_cuts,
        }
    }
}

/// What a parked `alaska.http` needs when it resumes.
#[derive(Debug, Clone)]
pub struct HttpInfo {
    /// The host and port, for messages.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The timeout given to the client.
    pub timeout: Duration,
    /// When the script stops waiting (the client's own timeout ends the
    /// request just before).
    pub until: Instant,
    /// The request's budget ends before the request's own timeout.
    pub budget_cuts: bool,
}

/// What a parked request's call needs when it resumes: what it called,
/// until when it waits, and whether the request's budget is what ends the
/// wait.
#[derive(Debug, Clone)]
pub struct CallInfo {
    /// Service address.
    pub address: String,
    /// Subject.
    pub subject: String,
    /// The call's timeout as asked (for the message).
    pub timeout: Duration,
    /// When the caller stops waiting.
    pub until: Instant,
    /// The request's budget ends before the call's own timeout.
    pub budget_cuts: bool,
}

/// Set (as app data) on a VM whose owner parks requests waiting in a call:
/// the owner's answer channel, the next token, and the calls made.
#[derive(Debug)]
pub struct ParkLine {
    tx: Sender<(u64, Answered)>,
    next: u64,
    calls: HashMap<u64, Waited>,
    /// A request that could not park called: its script should start in
    /// a coroutine from now on.
    wanted: bool,
}

impl ParkLine {
    /// Answers for parked requests go to `tx`.
    pub fn new(tx: Sender<(u64, Answered)>) -> ParkLine {
        ParkLine {
            tx,
            next: 0,
            calls: HashMap::new(),
            wanted: false,
        }
    }

    /// Whether a request that could not park called since the last look.
    pub fn take_wanted(&mut self) -> bool {
        std::mem::take(&mut self.wanted)
    }

    /// What a request parked with `token` waits for.
    pub fn take(&mut self, token: u64) -> Option<Waited> {
        self.calls.remove(&token)
    }

    /// Numbers a wait for `what`: the answer's way back.
    fn park(&mut self, what: Waited) -> Answer {
        self.next += 1;
        self.calls.insert(self.next, what);
        Answer {
            tx: self.tx.clone(),
            token: self.next,
        }
    }
}

/// A call handed to the hub.
#[derive(Debug)]
pub struct CallOut {
    /// Service address.
    pub address: String,
    /// Subject there.
    pub subject: String,
    /// Frames.
    pub content: Vec<Vec<u8>>,
    /// The caller's hop count plus one.
    pub hops: u32,
    /// The caller stops waiting then.
    pub deadline: Instant,
    /// Where the answer goes (the caller may have stopped waiting).
    pub answer: Answer,
}

/// The way from the VMs to the hub: calls over a channel, then a wake-up.
#[derive(Debug, Clone)]
pub struct CallLine {
    /// The hub's receiving end is [`Calls::new`]'s.
    pub tx: Sender<CallOut>,
    /// Wakes the hub out of its poll.
    pub wake: Waker,
}

/// The worker facts `alaska.call` needs, set when the dispatcher starts.
#[derive(Debug)]
struct Wiring {
    line: CallLine,
    /// The service this worker offers.
    service: String,
    /// Lua VMs in this worker (a pool of one cannot call itself).
    vms: usize,
    /// `worker/forward/hops`.
    max_hops: u32,
}

/// Shared by every VM of a worker (through [`super::pool_config::PoolConfig`]):
/// the settings, the way to the hub, the HTTP client and its pool.
pub struct Reach {
    cfg: ReachConfig,
    wiring: OnceLock<Wiring>,
    agent: ureq::Agent,
    /// Every connected broker holds delayed requests (said `delay/1`).
    delay_ok: AtomicBool,
    /// `script_calls_total{kind, result}`, once the worker has metrics.
    metrics: OnceLock<IntCounterVec>,
    /// The worker stops: calls are refused at once.
    stopping: AtomicBool,
    /// The threads that run the HTTP requests of the dispatcher's VM
    /// (started at the first).
    executor: OnceLock<Sender<HttpJob>>,
}

impl std::fmt::Debug for Reach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reach")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Default for Reach {
    fn default() -> Self {
        Reach::new(ReachConfig::default()).expect("the default HTTP client builds")
    }
}

impl Reach {
    /// The HTTP client for `cfg`; `Err` when `http_ca` holds no usable
    /// certificate.
    pub fn new(cfg: ReachConfig) -> Result<Reach, String> {
        use ureq::tls::{Certificate, RootCerts, TlsConfig};
        let mut tls = TlsConfig::builder();
        if let Some(pem) = &cfg.http_ca {
            let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err("worker/lua/http/ca: no PEM certificate in the file".into());
            }
            tls = tls.root_certs(RootCerts::new_with_certs(&certs));
        }
        let agent = ureq::Agent::config_builder()
            // A script reads the status itself; redirects are not
            // followed (the next host would escape the allow list check).
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections(cfg.http_max_idle)
            .max_idle_connections_per_host(cfg.http_max_idle)
            .max_idle_age(Duration::from_secs(30))
            .user_agent(concat!("alaska/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls.build())
            .build()
            .new_agent();
        Ok(Reach {
            cfg,
            wiring: OnceLock::new(),
            agent,
            delay_ok: AtomicBool::new(false),
            metrics: OnceLock::new(),
            stopping: AtomicBool::new(false),
            executor: OnceLock::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &ReachConfig {
        &self.cfg
    }

    /// Connects the VMs to the hub (once; later calls are ignored).
    pub fn wire(&self, line: CallLine, service: &str, vms: usize, max_hops: u32) {
        let _ = self.wiring.set(Wiring {
            line,
            service: service.to_string(),
            vms,
            max_hops,
        });
    }

    /// Where calls and HTTP requests are counted (once).
    pub fn set_metrics(&self, m: IntCounterVec) {
        let _ = self.metrics.set(m);
    }

    /// The hub says whether every connected broker holds delayed requests.
    pub fn set_delay_supported(&self, yes: bool) {
        self.delay_ok.store(yes, Ordering::Relaxed);
    }

    /// Whether `alaska.schedule` and delayed forwards can be sent now.
    pub fn delay_supported(&self) -> bool {
        self.delay_ok.load(Ordering::Relaxed)
    }

    fn count(&self, kind: &str, result: &str) {
        if let Some(m) = self.metrics.get() {
            m.with_label_values(&[kind, result]).inc();
        }
    }

    /// Runs `job` on the executor's threads: its response goes to its
    /// answer, then the dispatcher is woken.
    fn execute(&self, job: HttpJob) {
        let tx = self.executor.get_or_init(|| {
            let (tx, rx) = crossbeam_channel::unbounded::<HttpJob>();
            let wake = self.wiring.get().map(|w| w.line.wake.clone());
            // As many as the connections kept for reuse, up to 16: each
            // blocks in one request at a time.
            for n in 0..self.cfg.http_max_idle.clamp(1, 16) {
                let (rx, agent, wake) = (rx.clone(), self.agent.clone(), wake.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("alaska-http-{n}"))
                    .spawn(move || {
                        // Ends when the Reach (the channel's sender) goes.
                        for job in rx {
                            let r = perform(&agent, job.req, job.timeout, job.max_body);
                            let _ = job.answer.tx.send((job.answer.token, Answered::Http(r)));
                            if let Some(w) = &wake {
                                w.wake();
                            }
                        }
                    });
                if let Err(e) = spawned {
                    tracing::error!("alaska.http: cannot start an HTTP thread: {e}");
                }
            }
            tx
        });
        if let Err(e) = tx.send(job) {
            let job = e.into_inner();
            let _ = job.answer.tx.send((
                job.answer.token,
                Answered::Http(Err("no HTTP thread could be started".into())),
            ));
        }
    }

    /// From now on calls are refused at once (the worker stops).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Counts an answer that came after its caller stopped waiting: a
    /// call's reply, or (`http`) an HTTP response.
    pub fn late(&self, http: bool) {
        self.count(if http { "http" } else { "call" }, "late");
    }
}

/// How a VM waits: the budget (to lend the wait to its owner's duty when it
/// has one) and the time left.
pub trait Waiting {
    /// Time left in the running request's budget (`None`: none runs).
    fn left(&self) -> Option<Duration>;
    /// Lends up to `wait` to the owner's duty; `false` when there is none.
    fn lend(&self, wait: Duration) -> bool;
    /// Marks the running request as out of time.
    fn breach(&self);
}

impl Waiting for super::vm::budget::Budget {
    fn left(&self) -> Option<Duration> {
        super::vm::budget::Budget::left(self)
    }
    fn lend(&self, wait: Duration) -> bool {
        self.duty(wait, true)
    }
    fn breach(&self) {
        super::vm::budget::Budget::breach(self)
    }
}

/// Waits for `rx` until `until`: blocking when the VM has no duty, else
/// lending the wait to it in slices and looking in between.
fn wait_for<T>(
    waiting: &dyn Waiting,
    rx: &Receiver<T>,
    until: Instant,
    slice: Duration,
) -> Option<T> {
    loop {
        if let Ok(v) = rx.try_recv() {
            return Some(v);
        }
        let rest = until.saturating_duration_since(Instant::now());
        if rest.is_zero() {
            return None;
        }
        if !waiting.lend(rest.min(slice)) {
            return rx.recv_timeout(rest).ok();
        }
    }
}

/// The deadline of a wait of `want`, cut by the budget left: the instant,
/// and whether the budget is what cuts it.
fn deadline(waiting: &dyn Waiting, want: Duration) -> (Instant, bool) {
    let left = waiting.left().unwrap_or(Duration::ZERO);
    (after(Instant::now(), want.min(left)), left < want)
}

/// A timeout in milliseconds from a script (a number ≥ 0), cut to `max`.
fn ms_option(v: Value, what: &str, max: Duration) -> mlua::Result<Option<Duration>> {
    let ms = match v {
        Value::Nil => return Ok(None),
        Value::Integer(i) => i as f64,
        Value::Number(n) => n,
        other => {
            return Err(mlua::Error::runtime(format!(
                "{what}: timeout in milliseconds expected, got {}",
                other.type_name()
            )))
        }
    };
    if ms.is_nan() || ms < 0.0 {
        return Err(mlua::Error::runtime(format!(
            "{what}: timeout must be 0 or more milliseconds, got {ms}"
        )));
    }
    Ok(Some(
        Duration::try_from_secs_f64(ms / 1000.0)
            .unwrap_or(Duration::MAX)
            .min(max),
    ))
}

/// A name argument: a string of 1 to 255 bytes.
fn name_arg(v: Value, func: &str, n: usize) -> mlua::Result<String> {
    match v {
        Value::String(s) if !s.as_bytes().is_empty() && s.as_bytes().len() <= 255 => {
            Ok(s.to_string_lossy())
        }
        _ => Err(mlua::Error::runtime(format!(
            "bad argument #{n} to '{func}' (a string of 1 to 255 bytes expected)"
        ))),
    }
}

/// Content: a string (one frame), a list of strings (frames), or nil (one
/// empty frame). Numbers count as their text.
fn frames_arg(v: Value, func: &str, n: usize) -> mlua::Result<Vec<Vec<u8>>> {
    let bad =
        |what: String| mlua::Error::runtime(format!("bad argument #{n} to '{func}' ({what})"));
    match v {
        Value::Nil => Ok(vec![Vec::new()]),
        Value::String(s) => Ok(vec![s.as_bytes().to_vec()]),
        Value::Integer(_) | Value::Number(_) => Ok(vec![v.to_string()?.into_bytes()]),
        Value::Table(t) => {
            let mut frames = Vec::new();
            for (i, f) in t.sequence_values::<Value>().enumerate() {
                match f? {
                    Value::String(s) => frames.push(s.as_bytes().to_vec()),
                    v @ (Value::Integer(_) | Value::Number(_)) => {
                        frames.push(v.to_string()?.into_bytes())
                    }
                    _ => return Err(bad(format!("frame {} is not a string", i + 1))),
                }
            }
            if frames.is_empty() {
                frames.push(Vec::new());
            }
            Ok(frames)
        }
        other => Err(bad(format!(
            "string, list of strings or nil expected, got {}",
            other.type_name()
        ))),
    }
}

/// `nil, message` for the script.
fn nil_err(lua: &Lua, text: &str) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_iter([
        Value::Nil,
        Value::String(lua.create_string(text)?),
    ]))
}

/// The running request's hop count, or an error outside a request.
fn current_hops(lua: &Lua, func: &str) -> mlua::Result<u32> {
    super::vm::state::current_request(lua, |r: &Request| r.hops).ok_or_else(|| {
        mlua::Error::runtime(format!("{func} can only be used while a request runs"))
    })
}

/// The functions `alaska.call`, `alaska.http` and `alaska.schedule`, as a
/// table for the sandbox.
pub fn functions(
    lua: &Lua,
    reach: Arc<Reach>,
    waiting: Arc<dyn Waiting + Send + Sync>,
    max_bytes: usize,
) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let (r, w) = (reach.clone(), waiting.clone());
    t.set(
        "call",
        lua.create_function(
            move |lua,
                  (can_park, address, subject, content, options): (
                bool,
                Value,
                Value,
                Value,
                Value,
            )| { call(lua, &r, &*w, can_park, address, subject, content, options) },
        )?,
    )?;
    let (r, w) = (reach.clone(), waiting);
    t.set(
        "http",
        lua.create_function(move |lua, (can_park, req): (bool, Value)| {
            http(lua, &r, &*w, can_park, req)
        })?,
    )?;
    t.set(
        "schedule",
        lua.create_function(
            move |lua, (address, subject, content, delay): (Value, Value, Value, Value)| {
                schedule(lua, &reach, max_bytes, address, subject, content, delay)
            },
        )?,
    )?;
    Ok(t)
}

/// `alaska.call`: `reply, info` or `nil, err` at once (a waiting VM), or
/// `nil, nil, token` when the request is to park (its coroutine yields, and
/// its owner resumes it with [`answer_values`]).
#[allow(clippy::too_many_arguments)]
fn call(
    lua: &Lua,
    reach: &Reach,
    waiting: &dyn Waiting,
    can_park: bool,
    address: Value,
    subject: Value,
    content: Value,
    options: Value,
) -> mlua::Result<MultiValue> {
    let address = name_arg(address, "call", 1)?;
    let subject = name_arg(subject, "call", 2)?;
    let content = frames_arg(content, "call", 3)?;
    let timeout = match options {
        Value::Nil => None,
        Value::Table(o) => ms_option(o.get("timeout")?, "alaska.call", reach.cfg.call_max_timeout)?,
        other => {
            return Err(mlua::Error::runtime(format!(
                "bad argument #4 to 'call' (options table or nil expected, got {})",
                other.type_name()
            )))
        }
    }
    .unwrap_or(reach.cfg.call_timeout.min(reach.cfg.call_max_timeout));
    let hops = current_hops(lua, "alaska.call")?;
    let Some(w) = reach.wiring.get() else {
        return nil_err(
            lua,
            "alaska.call: no broker connection (the VM runs outside a worker)",
        );
    };
    if reach.stopping.load(Ordering::Relaxed) {
        reach.count("call", "refused");
        return nil_err(lua, "alaska.call: the worker is stopping");
    }
    if hops >= w.max_hops {
        reach.count("call", "refused");
        return nil_err(
            lua,
            &format!(
                "alaska.call to {address}/{subject} refused: hop limit of {} reached (a loop of calls?)",
                w.max_hops
            ),
        );
    }
    if w.vms <= 1 && address == w.service {
        // Its only VM would wait for itself: the request could run only
        // once this one gave up.
        reach.count("call", "refused");
        return nil_err(
            lua,
            &format!(
                "alaska.call to {address}: this worker offers {address} with a single Lua VM, \
                 which would wait for itself (raise worker/pool/size)"
            ),
        );
    }
    let (until, budget_cuts) = deadline(waiting, timeout);
    let info = CallInfo {
        address: address.clone(),
        subject: subject.clone(),
        timeout,
        until,
        budget_cuts,
    };
    let (parking, info) = match lua.app_data_mut::<ParkLine>() {
        // The info goes with the parked request; the caller keeps none.
        Some(mut line) if can_park => (Some(line.park(Waited::Call(info))), None),
        _ => (None, Some(info)),
    };
    if parking.is_none() {
        if let Some(mut line) = lua.app_data_mut::<ParkLine>() {
            // This script calls: its next requests on this VM start in a
            // coroutine, so they can park.
            line.wanted = true;
        }
    }
    let (answer, rx) = match parking {
        Some(a) => (a, None),
        None => {
            let (tx, rx) = crossbeam_channel::bounded(1);
            (Answer { tx, token: 0 }, Some(rx))
        }
    };
    let token = answer.token;
    let out = CallOut {
        address,
        subject,
        content,
        hops: hops + 1,
        deadline: until,
        answer,
    };
    if w.line.tx.send(out).is_err() {
        reach.count("call", "error");
        if let Some(mut line) = lua.app_data_mut::<ParkLine>() {
            line.take(token);
        }
        return nil_err(lua, "alaska.call: the worker is stopping");
    }
    w.line.wake.wake();
    let (Some(rx), Some(info)) = (rx, info) else {
        return Ok(MultiValue::from_iter([
            Value::Nil,
            Value::Nil,
            Value::Integer(token as i64),
        ]));
    };
    // The hub answers from inside the duty's own turn: the duty returns
    // as soon as it has, so a long slice costs no latency.
    match wait_for(waiting, &rx, until, Duration::from_millis(100)) {
        Some((_, Answered::Call(a))) => answer_values(lua, reach, &info, Some(a)),
        Some((_, Answered::Http(_))) => answer_values(lua, reach, &info, None),
        None if budget_cuts => {
            reach.count("call", "timeout");
            waiting.breach();
            Err(mlua::Error::runtime(super::vm::budget::BUDGET_MESSAGE))
        }
        None => answer_values(lua, reach, &info, None),
    }
}

/// What `alaska.call` returns for `answer` (`None`: the call's own timeout
/// passed): `reply, info` or `nil, err`; counted.
pub fn answer_values(
    lua: &Lua,
    reach: &Reach,
    info: &CallInfo,
    answer: Option<CallAnswer>,
) -> mlua::Result<MultiValue> {
    let (address, subject) = (&info.address, &info.subject);
    match answer {
        Some(Ok(frames)) => {
            reach.count("call", "ok");
            let first = frames.first().map(Vec::as_slice).unwrap_or_default();
            let all = lua.create_table_with_capacity(frames.len(), 0)?;
            for (i, f) in frames.iter().enumerate() {
                all.raw_set(i + 1, lua.create_string(f)?)?;
            }
            let meta = lua.create_table()?;
            meta.set("frames", all)?;
            meta.set("address", address.as_str())?;
            meta.set("subject", subject.as_str())?;
            Ok(MultiValue::from_iter([
                Value::String(lua.create_string(first)?),
                Value::Table(meta),
            ]))
        }
        Some(Err(text)) => {
            reach.count("call", "error");
            nil_err(lua, &format!("alaska.call to {address}/{subject}: {text}"))
        }
        None => {
            reach.count("call", "timeout");
            nil_err(
                lua,
                &format!(
                    "alaska.call to {address}/{subject}: timeout: no reply within {} ms \
                     (is a worker offering {address}?)",
                    info.timeout.as_millis()
                ),
            )
        }
    }
}

/// Counts a call whose request's budget ended the wait.
pub fn count_budget(reach: &Reach) {
    reach.count("call", "timeout");
}

/// The longest delay `alaska.schedule` and a delayed forward may ask (the
/// broker's own limit).
pub const MAX_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// `alaska.schedule(address, subject, content, delay_ms)`: a service
/// request the broker holds for `delay_ms`, sent when the request ends
/// (with its other sends). `true`, or `nil, err` when the brokers cannot
/// hold it (the real Malamute has no delayed requests).
fn schedule(
    lua: &Lua,
    reach: &Reach,
    max_bytes: usize,
    address: Value,
    subject: Value,
    content: Value,
    delay: Value,
) -> mlua::Result<MultiValue> {
    let address = name_arg(address, "schedule", 1)?;
    let subject = name_arg(subject, "schedule", 2)?;
    let content = frames_arg(content, "schedule", 3)?;
    let delay = match delay {
        Value::Integer(i) if i >= 0 => Duration::from_millis(i as u64),
        Value::Number(n) if n >= 0.0 => {
            Duration::try_from_secs_f64(n / 1000.0).unwrap_or(MAX_DELAY)
        }
        other => {
            return Err(mlua::Error::runtime(format!(
                "bad argument #4 to 'schedule' (milliseconds, 0 or more, expected, got {})",
                match other {
                    Value::Integer(i) => i.to_string(),
                    Value::Number(n) => n.to_string(),
                    v => v.type_name().to_string(),
                }
            )))
        }
    };
    if delay > MAX_DELAY {
        return nil_err(lua, "alaska.schedule: a delay is at most a year");
    }
    current_hops(lua, "alaska.schedule")?;
    if !reach.delay_supported() {
        return nil_err(
            lua,
            "alaska.schedule: the broker does not hold delayed requests (delay/1: the real \
             Malamute has no such feature; use alaska-broker)",
        );
    }
    super::vm::api::push(
        lua,
        super::types::Output::Delayed {
            address,
            subject,
            content,
            delay,
        },
        max_bytes,
    )?;
    Ok(MultiValue::from_iter([Value::Boolean(true)]))
}

/// An HTTP request as a script gave it, checked.
#[derive(Debug)]
struct HttpRequest {
    method: String,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    timeout: Option<Duration>,
}

/// An HTTP response for the script.
#[derive(Debug)]
pub struct HttpResponse {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

fn http_request(req: Value, max: Duration) -> mlua::Result<HttpRequest> {
    let Value::Table(t) = req else {
        return Err(mlua::Error::runtime(
            "bad argument #1 to 'http' (a table {method=, url=, headers=, body=, timeout=} expected)",
        ));
    };
    let method = match t.get::<Value>("method")? {
        Value::Nil => "GET".to_string(),
        Value::String(s) => {
            let m = s.to_string_lossy().to_ascii_uppercase();
            if m.is_empty() || m.len() > 16 || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(mlua::Error::runtime(format!(
                    "alaska.http: method {m:?} is not an HTTP method"
                )));
            }
            m
        }
        other => {
            return Err(mlua::Error::runtime(format!(
                "alaska.http: method must be a string, got {}",
                other.type_name()
            )))
        }
    };
    let url = match t.get::<Value>("url")? {
        Value::String(s) => s.to_string_lossy(),
        _ => {
            return Err(mlua::Error::runtime(
                "alaska.http: url (a string) is required",
            ))
        }
    };
    let mut headers = Vec::new();
    match t.get::<Value>("headers")? {
        Value::Nil => {}
        Value::Table(h) => {
            for pair in h.pairs::<Value, Value>() {
                let (k, v) = pair?;
                let (Value::String(k), Value::String(v)) = (&k, &v) else {
                    return Err(mlua::Error::runtime(
                        "alaska.http: headers must map names (strings) to values (strings)",
                    ));
                };
                headers.push((k.to_string_lossy(), v.as_bytes().to_vec()));
            }
        }
        other => {
            return Err(mlua::Error::runtime(format!(
                "alaska.http: headers must be a table, got {}",
                other.type_name()
            )))
        }
    }
    let body = match t.get::<Value>("body")? {
        Value::Nil => None,
        Value::String(s) => Some(s.as_bytes().to_vec()),
        other => {
            return Err(mlua::Error::runtime(format!(
                "alaska.http: body must be a string, got {}",
                other.type_name()
            )))
        }
    };
    let timeout = ms_option(t.get("timeout")?, "alaska.http", max)?;
    Ok(HttpRequest {
        method,
        url,
        headers,
        body,
        timeout,
    })
}

/// The host and port of an `http://` or `https://` URL; `Err` says why
/// the URL is not one a script may use.
fn target(url: &str) -> Result<(String, u16), String> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if !lower.starts_with("http://") && !lower.starts_with("https://") {
        return Err(format!(
            "url {url:?}: only http:// and https:// are allowed"
        ));
    }
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("bad url {url:?}: {e}"))?;
    let port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => {
            return Err(format!(
                "url {url:?}: only http:// and https:// are allowed"
            ))
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("url {url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    Ok((host, uri.port_u16().unwrap_or(port)))
}

/// Runs one HTTP request on the calling thread; `Err` is the text for
/// the script.
fn perform(
    agent: &ureq::Agent,
    req: HttpRequest,
    timeout: Duration,
    max_body: usize,
) -> Result<HttpResponse, String> {
    let mut builder = ureq::http::Request::builder()
        .method(req.method.as_str())
        .uri(req.url.as_str());
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), v.as_slice());
    }
    let map_err = |e: ureq::Error| match e {
        ureq::Error::Timeout(_) => format!("timeout after {} ms", timeout.as_millis()),
        other => other.to_string(),
    };
    // No body is no body (a GET carries no Content-Length: 0).
    let mut response = match req.body {
        Some(body) => {
            let request = builder
                .body(body)
                .map_err(|e| format!("bad request: {e}"))?;
            let request = agent
                .configure_request(request)
                .timeout_global(Some(timeout))
                .build();
            agent.run(request).map_err(map_err)?
        }
        None => {
            let request = builder.body(()).map_err(|e| format!("bad request: {e}"))?;
            let request = agent
                .configure_request(request)
                .timeout_global(Some(timeout))
                .build();
            agent.run(request).map_err(map_err)?
        }
    };
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    let mut body = Vec::new();
    let mut reader = response
        .body_mut()
        .with_config()
        .limit(max_body as u64 + 1)
        .reader();
    reader.read_to_end(&mut body).map_err(|e| {
        let text = e.to_string();
        if text.contains("limit") {
            format!("response body over worker/lua/http/max_body ({max_body} bytes)")
        } else if text.to_ascii_lowercase().contains("timeout") || text.contains("timed out") {
            format!("timeout after {} ms", timeout.as_millis())
        } else {
            format!("reading the response body: {text}")
        }
    })?;
    if body.len() > max_body {
        return Err(format!(
            "response body over worker/lua/http/max_body ({max_body} bytes)"
        ));
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// An HTTP request for the executor, and where its response goes.
struct HttpJob {
    req: HttpRequest,
    timeout: Duration,
    max_body: usize,
    answer: Answer,
}

/// `alaska.http`: the response or `nil, err` at once, or `nil, nil,
/// token` when the request is to park (see [`call`]).
fn http(
    lua: &Lua,
    reach: &Reach,
    waiting: &dyn Waiting,
    can_park: bool,
    req: Value,
) -> mlua::Result<MultiValue> {
    let req = http_request(req, Duration::from_secs(24 * 3600))?;
    current_hops(lua, "alaska.http")?;
    let (host, port) = match target(&req.url) {
        Ok(t) => t,
        Err(e) => {
            reach.count("http", "refused");
            return nil_err(lua, &format!("alaska.http: {e}"));
        }
    };
    if !reach.cfg.http_allow.iter().any(|p| p.matches(&host, port)) {
        reach.count("http", "refused");
        return nil_err(
            lua,
            &format!(
                "alaska.http: {host}:{port} is not in worker/lua/http/allow (scripts may reach \
                 only the hosts listed there)"
            ),
        );
    }
    let want = req.timeout.unwrap_or(reach.cfg.http_timeout);
    let (until, budget_cuts) = deadline(waiting, want);
    let timeout = until.saturating_duration_since(Instant::now());
    if timeout.is_zero() {
        waiting.breach();
        return Err(mlua::Error::runtime(super::vm::budget::BUDGET_MESSAGE));
    }
    let max_body = reach.cfg.http_max_body;
    let info = HttpInfo {
        host: host.clone(),
        port,
        timeout,
        // A little slack, so that the client's own timeout, not ours, is
        // what ends the request.
        until: after(until, Duration::from_millis(50)),
        budget_cuts,
    };
    // A request that can park hands the HTTP request to the executor and
    // yields; its owner resumes it with the response.
    if can_park {
        if let Some(answer) = lua
            .app_data_mut::<ParkLine>()
            .map(|mut line| line.park(Waited::Http(info.clone())))
        {
            let token = answer.token;
            reach.execute(HttpJob {
                req,
                timeout,
                max_body,
                answer,
            });
            return Ok(MultiValue::from_iter([
                Value::Nil,
                Value::Nil,
                Value::Integer(token as i64),
            ]));
        }
    }
    // The dispatcher's VM must not block its thread: the request goes to
    // the executor and the wait to the duty.
    let result = if waiting.lend(Duration::ZERO) {
        if let Some(mut line) = lua.app_data_mut::<ParkLine>() {
            // This script reaches out: its next requests start parkable.
            line.wanted = true;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        reach.execute(HttpJob {
            req,
            timeout,
            max_body,
            answer: Answer { tx, token: 0 },
        });
        // Short slices: the executor's wake-up can land between the look
        // at the channel and the poll's arming, and then only the slice
        // ends the wait.
        match wait_for(waiting, &rx, info.until, Duration::from_millis(2)) {
            Some((_, Answered::Http(r))) => r,
            _ => Err(format!("timeout after {} ms", timeout.as_millis())),
        }
    } else {
        perform(&reach.agent, req, timeout, max_body)
    };
    http_values(lua, reach, waiting, &info, Some(result))
}

/// What `alaska.http` returns for `result` (`None`: its time ran out
/// before any answer): the response table, or `nil, err`; counted. A
/// timeout that the budget caused is a budget breach.
pub fn http_values(
    lua: &Lua,
    reach: &Reach,
    waiting: &dyn Waiting,
    info: &HttpInfo,
    result: Option<Result<HttpResponse, String>>,
) -> mlua::Result<MultiValue> {
    let (host, port) = (&info.host, info.port);
    let result =
        result.unwrap_or_else(|| Err(format!("timeout after {} ms", info.timeout.as_millis())));
    match result {
        Ok(resp) => {
            reach.count("http", "ok");
            let t = lua.create_table()?;
            t.set("status", resp.status)?;
            let h = lua.create_table()?;
            for (k, v) in resp.headers {
                // Repeated headers are joined as HTTP allows (", ").
                let joined = match h.get::<Option<mlua::LuaString>>(k.as_str())? {
                    Some(old) => {
                        let mut b = old.as_bytes().to_vec();
                        b.extend_from_slice(b", ");
                        b.extend_from_slice(&v);
                        b
                    }
                    None => v,
                };
                h.set(k, lua.create_string(&joined)?)?;
            }
            t.set("headers", h)?;
            t.set("body", lua.create_string(&resp.body)?)?;
            Ok(MultiValue::from_iter([Value::Table(t)]))
        }
        Err(e) => {
            let timed_out = e.starts_with("timeout");
            reach.count("http", if timed_out { "timeout" } else { "error" });
            if timed_out && info.budget_cuts {
                waiting.breach();
                return Err(mlua::Error::runtime(super::vm::budget::BUDGET_MESSAGE));
            }
            nil_err(lua, &format!("alaska.http {host}:{port}: {e}"))
        }
    }
}

/// A call the hub sent and waits to answer.
#[derive(Debug)]
struct Pending {
    conn: usize,
    address: String,
    deadline: Instant,
    answer: Answer,
}

/// The hub's side of `alaska.call`: the calls sent and not answered, by
/// number. Socket-free: the hub sends, and tells this what arrived.
#[derive(Debug, Default)]
pub struct Calls {
    pending: HashMap<u64, Pending>,
    next: u64,
}

/// The tracker prefix of a call's reply (inside the envelope it is sent
/// with; the reply comes back with this tracker alone).
pub const CALL_TRACKER: &str = "call:";

impl Calls {
    /// Numbers a call about to be sent on `conn`: the tracker to send it
    /// with (before wrapping in the envelope).
    pub fn start(&mut self, conn: usize, out: &CallOut) -> String {
        self.next += 1;
        self.pending.insert(
            self.next,
            Pending {
                conn,
                address: out.address.clone(),
                deadline: out.deadline,
                answer: out.answer.clone(),
            },
        );
        format!("{CALL_TRACKER}{}", self.next)
    }

    /// A mail with a call's tracker arrived: answers its caller. `false`
    /// when nobody waits for it any more (late, or not ours).
    pub fn answer(&mut self, tracker: &str, error: bool, content: Vec<Vec<u8>>) -> bool {
        let Some(n) = tracker
            .strip_prefix(CALL_TRACKER)
            .and_then(|n| n.parse::<u64>().ok())
        else {
            return false;
        };
        let Some(p) = self.pending.remove(&n) else {
            return false;
        };
        let answer = if error {
            Err(
                String::from_utf8_lossy(content.first().map(Vec::as_slice).unwrap_or_default())
                    .into_owned(),
            )
        } else {
            Ok(content)
        };
        p.answer.send(answer)
    }

    /// Answers every call sent on `conn` with `why` (the connection went
    /// away: their replies cannot come).
    pub fn fail_conn(&mut self, conn: usize, why: &str) {
        self.pending.retain(|_, p| {
            if p.conn != conn {
                return true;
            }
            p.answer.send(Err(why.to_string()));
            false
        });
    }

    /// Answers the call sent with `tracker` with `why` (it could not be
    /// sent).
    pub fn fail(&mut self, tracker: &str, why: &str) {
        self.answer(tracker, true, vec![why.as_bytes().to_vec()]);
    }

    /// The broker refused a SERVICE SEND of ours on `conn`: when it names a
    /// service a call went to, the oldest such call is answered with the
    /// refusal (the broker's ERROR names no tracker; sends on one
    /// connection are refused in the order they were sent).
    pub fn refused(&mut self, conn: usize, r: &crate::mlm::Refusal) {
        use crate::mlm::RefusalKind;
        let service = match &r.kind {
            RefusalKind::ServiceQueueFull { service } => service,
            RefusalKind::AccessDenied {
                target: "service",
                name,
            } => name,
            _ => return,
        };
        let oldest = self
            .pending
            .iter()
            .filter(|(_, p)| p.conn == conn && &p.address == service)
            .map(|(n, _)| *n)
            .min();
        if let Some(n) = oldest {
            if let Some(p) = self.pending.remove(&n) {
                p.answer
                    .send(Err(format!("refused by the broker: {}", r.status.reason)));
            }
        }
    }

    /// Forgets calls whose callers stopped waiting before `now`.
    pub fn expire(&mut self, now: Instant) {
        self.pending.retain(|_, p| p.deadline > now);
    }

    /// Answers every call with `why` (the worker stops).
    pub fn fail_all(&mut self, why: &str) {
        for (_, p) in self.pending.drain() {
            p.answer.send(Err(why.to_string()));
        }
    }

    /// Calls waiting for their reply.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let p = |s: &str| HostPattern::parse(s).unwrap();
        assert!(p("*").matches("example.com", 443));
        assert!(p("api.example.com").matches("api.example.com", 80));
        assert!(!p("api.example.com").matches("example.com", 80));
        assert!(p("*.example.com").matches("a.b.example.com", 443));
        assert!(!p("*.example.com").matches("example.com", 443));
        assert!(!p("*.example.com").matches("badexample.com", 443));
        assert!(p("127.0.0.1:8080").matches("127.0.0.1", 8080));
        assert!(!p("127.0.0.1:8080").matches("127.0.0.1", 8081));
        assert!(p("[::1]:80").matches("::1", 80));
        assert!(p("LOCALHOST").matches("localhost", 1));
        assert!(HostPattern::parse("a b").is_err());
        assert!(HostPattern::parse("host:99999").is_err());
        assert!(HostPattern::parse("http://x").is_err());
        assert_eq!(
            HostPattern::parse_list("a.com, *.b.com  c:1")
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            target("http://127.0.0.1:81/x").unwrap(),
            ("127.0.0.1".into(), 81)
        );
        assert_eq!(
            target("https://Example.com/").unwrap(),
            ("example.com".into(), 443)
        );
        assert_eq!(target("http://[::1]/").unwrap(), ("::1".into(), 80));
        assert!(target("file:///etc/passwd").is_err());
        assert!(target("ftp://x/").is_err());
        assert!(target("not a url").is_err());
    }

    #[test]
    fn calls_are_answered_once_and_late_ones_counted() {
        let mut calls = Calls::default();
        let (tx, rx) = crossbeam_channel::bounded(1);
        let now = Instant::now();
        let out = CallOut {
            address: "s".into(),
            subject: "x".into(),
            content: vec![],
            hops: 1,
            deadline: after(now, Duration::from_secs(1)),
            answer: Answer { tx, token: 7 },
        };
        let tracker = calls.start(0, &out);
        assert_eq!(tracker, "call:1");
        assert!(calls.answer(&tracker, false, vec![b"hi".to_vec()]));
        assert!(
            matches!(rx.try_recv().unwrap(), (7, Answered::Call(Ok(f))) if f == vec![b"hi".to_vec()])
        );
        // A second reply with the same tracker is late.
        assert!(!calls.answer(&tracker, false, vec![]));
        // An expired call's reply is late too.
        let t2 = calls.start(0, &out);
        calls.expire(after(now, Duration::from_secs(2)));
        assert!(calls.is_empty());
        assert!(!calls.answer(&t2, false, vec![]));
        // A lost connection answers its calls.
        let t3 = calls.start(1, &out);
        calls.fail_conn(1, "lost");
        assert!(matches!(rx.try_recv().unwrap(), (7, Answered::Call(Err(e))) if e == "lost"));
        assert!(!calls.answer(&t3, false, vec![]));
        assert!(!calls.answer("nonsense", false, vec![]));
    }
}
