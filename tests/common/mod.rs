//! Shared test harness: a real broker on `tcp://127.0.0.1:*`, real workers
//! in-process, real clients.
#![allow(dead_code)]

pub mod bin;
pub mod browser;
pub mod malamute;
pub mod nats;
pub mod pool;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use alaska::broker::{Broker, BrokerConfig, BrokerHandle};
use alaska::mlm::{Client, ClientOptions, Delivery, DeliveryKind};
use alaska::worker::{DispatcherOptions, PoolConfig};

/// A broker on a free loopback port.
pub fn broker() -> BrokerHandle {
    broker_with(|_| {})
}

/// A broker with settings tweaked.
pub fn broker_with(tweak: impl FnOnce(&mut BrokerConfig)) -> BrokerHandle {
    let mut cfg = BrokerConfig {
        endpoint: "tcp://127.0.0.1:*".into(),
        ..BrokerConfig::default()
    };
    tweak(&mut cfg);
    Broker::start(cfg).expect("broker starts")
}

/// A connected client with a short timeout.
pub fn client(endpoint: &str, name: &str) -> Client {
    let mut o = ClientOptions::new(endpoint, name);
    o.timeout = Duration::from_secs(3);
    o.heartbeat = Duration::from_millis(200);
    Client::connect(o).expect("client connects")
}

/// Waits for the next delivery of `kind`, skipping others.
pub fn expect(c: &mut Client, kind: DeliveryKind, within: Duration) -> Delivery {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {kind:?} delivery within {within:?}");
        if let Some(d) = c.recv(left).expect("recv") {
            if d.kind == kind {
                return d;
            }
        }
    }
}

/// Asserts nothing of `kind` arrives for `during`.
pub fn expect_none(c: &mut Client, kind: DeliveryKind, during: Duration) {
    let deadline = Instant::now() + during;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        if let Some(d) = c.recv(left).expect("recv") {
            assert!(d.kind != kind, "unexpected delivery: {d:?}");
        }
    }
}

/// An alaska worker running in-process on its own thread.
pub struct Worker {
    pub stop: Arc<AtomicBool>,
    pub thread: Option<JoinHandle<Result<(), String>>>,
}

impl Worker {
    /// Starts a worker offering `service` with scripts from `dir`.
    pub fn start(
        endpoint: &str,
        dir: &Path,
        tweak: impl FnOnce(&mut DispatcherOptions, &mut PoolConfig),
    ) -> Worker {
        let mut client = ClientOptions::new(endpoint, format!("worker-{}", unique()));
        client.timeout = Duration::from_secs(3);
        client.heartbeat = Duration::from_millis(200);
        let mut opts = DispatcherOptions::new(client, "svc");
        opts.verbose = true;
        opts.shutdown_timeout = Duration::from_secs(5);
        let mut pool = PoolConfig {
            size: 2,
            scripts_dir: dir.to_path_buf(),
            timeout: Duration::from_millis(500),
            memory: 16 << 20,
            ..PoolConfig::default()
        };
        tweak(&mut opts, &mut pool);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("test-worker".into())
            .spawn(move || alaska::worker::run(opts, pool, flag).map_err(|e| e.to_string()))
            .unwrap();
        Worker {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops gracefully and returns how the worker ended.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().expect("worker thread")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A process-unique number.
pub fn unique() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) + std::process::id() as u64 * 1_000_000
}

/// Writes `<dir>/<name>.lua`.
pub fn script(dir: &Path, name: &str, body: &str) {
    std::fs::write(dir.join(format!("{name}.lua")), body).unwrap();
}

/// Sends a request and waits for the reply in the requester's mailbox.
pub fn request(c: &mut Client, subject: &str, body: &[u8], within: Duration) -> Delivery {
    c.sendfor("svc", subject, "t", 0, vec![body.to_vec()])
        .unwrap();
    expect(c, DeliveryKind::Mailbox, within)
}

/// Waits until the worker's offer is registered: a probe request to a
/// script that answers immediately.
pub fn ready(c: &mut Client, dir: &Path) {
    script(dir, "ping", "return 'pong'");
    let d = request(c, "ping", b"", Duration::from_secs(10));
    assert_eq!(d.content, vec![b"pong".to_vec()]);
}

/// A broker to run a test against: the project's (in-process), or the real
/// Malamute (a child process) where installed.
pub enum AnyBroker {
    /// `alaska::broker` on a free port.
    Ours(Box<BrokerHandle>),
    /// The real Malamute, and the folder of its configuration.
    Malamute(malamute::Malamute, tempfile::TempDir),
}

impl AnyBroker {
    /// Its endpoint.
    pub fn endpoint(&self) -> &str {
        match self {
            AnyBroker::Ours(b) => b.endpoint(),
            AnyBroker::Malamute(m, _) => &m.endpoint,
        }
    }

    /// "alaska-broker" or "malamute", for messages.
    pub fn name(&self) -> &'static str {
        match self {
            AnyBroker::Ours(_) => "alaska-broker",
            AnyBroker::Malamute(..) => "malamute",
        }
    }
}

/// The project's broker, and the real Malamute when it is installed (a
/// line says when it is not).
pub fn all_brokers(test: &str) -> Vec<AnyBroker> {
    let mut v = vec![AnyBroker::Ours(Box::new(broker()))];
    match malamute::malamute_binary() {
        Some(bin) => {
            let dir = tempfile::tempdir().unwrap();
            let m = malamute::Malamute::start(&bin, dir.path(), malamute::free_port());
            v.push(AnyBroker::Malamute(m, dir));
        }
        None => println!("{test}: real Malamute not found: run on alaska-broker only"),
    }
    v
}

/// This test process's resident memory, in kB (`VmRSS`).
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Polls `cond` until it holds; panics naming `what` (and how long it
/// waited) when it does not within `within`. For an event with no
/// message to wait on (a state a process reaches, a file, a port).
pub fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        // Bounded poll: the interval between looks, not a wait for the event.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A broker on a free port serving its admin API on a free port too.
pub fn broker_with_admin(tweak: impl FnOnce(&mut BrokerConfig)) -> BrokerHandle {
    broker_with(|c| {
        c.http_listen = Some("127.0.0.1:0".into());
        tweak(c);
    })
}

/// `GET path` of a broker's admin API (see [`broker_with_admin`]), as JSON.
pub fn admin(b: &BrokerHandle, path: &str) -> serde_json::Value {
    let addr = b.http_addr().expect("the broker serves HTTP");
    let mut r = ureq::get(&format!("http://{addr}{path}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let text = r.body_mut().read_to_string().unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
}

/// Whether the broker's `/v1/clients` lists `address`.
pub fn has_client(b: &BrokerHandle, address: &str) -> bool {
    admin(b, "/v1/clients")["clients"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["address"] == address)
}

/// A Lua statement creating `<dir>/<name>.mark`: first in a script, it
/// tells the test (see [`wait_marks`]) that the script is running on a VM.
pub fn mark_lua(dir: &Path, name: &str) -> String {
    format!(
        "io.open('{}', 'w'):close()\n",
        dir.join(format!("{name}.mark")).display()
    )
}

/// Waits until every `<dir>/<name>.mark` exists (see [`mark_lua`]).
pub fn wait_marks(dir: &Path, names: &[&str], within: Duration) {
    wait_until(within, &format!("scripts {names:?} to start"), || {
        names.iter().all(|n| dir.join(format!("{n}.mark")).exists())
    });
}

/// The value of the unlabelled metric `name` on a broker's `/metrics` (see
/// [`broker_with_admin`]); 0 when absent.
pub fn broker_metric(b: &BrokerHandle, name: &str) -> f64 {
    let addr = b.http_addr().expect("the broker serves HTTP");
    let mut r = ureq::get(&format!("http://{addr}/metrics"))
        .call()
        .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    let text = r.body_mut().read_to_string().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}
