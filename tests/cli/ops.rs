//! The shared ops pieces through real sockets: the HTTP server (health,
//! metrics, deferred answers from a thread that owns a resource, limits,
//! a stop that always ends) and systemd notifications to a fake
//! `NOTIFY_SOCKET`.

use crate::ops_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alaska::ops::http::{
    reply_channel, Health, HttpOptions, HttpRequest, HttpResponse, HttpServer, Method, Reply,
    Responder, Router,
};
use alaska::ops::metrics::{IntCounter, Metrics};
use alaska::ops::notify::{Liveness, Systemd};
use ops_support::prom;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn get(a: &ureq::Agent, url: &str) -> (u16, String) {
    let mut r = a.get(url).call().expect("GET");
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn post(a: &ureq::Agent, url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut r = a.post(url).send(body).expect("POST");
    (r.status().as_u16(), r.body_mut().read_to_vec().unwrap())
}

/// A server whose POST /v1/echo is answered by another thread (as a
/// socket owner would), with /health and /metrics.
struct Fixture {
    server: HttpServer,
    up: Arc<AtomicBool>,
    _owner: std::thread::JoinHandle<()>,
    requests: IntCounter,
}

fn fixture(max_body: usize) -> Fixture {
    let metrics = Metrics::new("alaska_test");
    let requests = metrics.counter("echo_total", "Echo requests.").unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let (tx, rx) = crossbeam_channel::unbounded::<(HttpRequest, Responder)>();
    let owner = std::thread::Builder::new()
        .name("test-owner".into())
        .spawn(move || {
            for (req, responder) in rx {
                if req.body == b"drop" {
                    continue; // dropped unanswered
                }
                let mut body = req.body.clone();
                body.reverse();
                responder.send(HttpResponse::new(200, "application/octet-stream", body));
            }
        })
        .unwrap();
    let flag = up.clone();
    let counter = requests.clone();
    let router = Router::new()
        .health(move || {
            if flag.load(Ordering::SeqCst) {
                Health::Up("ok".into())
            } else {
                Health::Down("broker away".into())
            }
        })
        .metrics(metrics)
        .route(Method::POST, "/v1/echo", move |req| {
            counter.inc();
            let (responder, pending) = reply_channel();
            tx.send((req, responder)).unwrap();
            Reply::Later(pending)
        });
    let mut opts = HttpOptions::new("127.0.0.1:0");
    // The echo takes any bytes (as the gateway does).
    opts.json_writes = false;
    opts.max_body = max_body;
    opts.grace = Duration::from_millis(300);
    let server = HttpServer::start(opts, Arc::new(router)).unwrap();
    Fixture {
        server,
        up,
        _owner: owner,
        requests,
    }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.local_addr())
    }
}

#[test]
fn health_metrics_and_deferred_answers_over_real_http() {
    let f = fixture(1 << 20);
    let a = agent();
    assert_eq!(get(&a, &f.url("/health")), (200, "ok\n".into()));
    f.up.store(false, Ordering::SeqCst);
    assert_eq!(get(&a, &f.url("/health")), (503, "broker away\n".into()));
    f.up.store(true, Ordering::SeqCst);
    assert_eq!(get(&a, &f.url("/health")).0, 200);

    let body: Vec<u8> = (0..=255u8).collect();
    let (status, got) = post(&a, &f.url("/v1/echo"), &body);
    assert_eq!(status, 200);
    let mut want = body.clone();
    want.reverse();
    assert_eq!(got, want, "byte for byte");
    for _ in 0..4 {
        assert_eq!(post(&a, &f.url("/v1/echo"), b"abc"), (200, b"cba".to_vec()));
    }

    let (status, text) = get(&a, &f.url("/metrics"));
    assert_eq!(status, 200);
    let scrape = prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(scrape.type_of("alaska_test_echo_total"), Some("counter"));
    assert_eq!(scrape.get("alaska_test_echo_total", &[]), Some(5.0));
    assert_eq!(f.requests.get(), 5);

    assert_eq!(get(&a, &f.url("/nowhere")).0, 404);
    assert_eq!(get(&a, &f.url("/v1/echo")).0, 405);
    drop(f);
}

#[test]
fn a_dropped_responder_is_503_and_a_big_body_413() {
    let f = fixture(16);
    let a = agent();
    let (status, body) = post(&a, &f.url("/v1/echo"), b"drop");
    assert_eq!(status, 503);
    assert_eq!(body, b"service stopping\n");
    assert_eq!(post(&a, &f.url("/v1/echo"), &[b'x'; 17]).0, 413);
    assert_eq!(post(&a, &f.url("/v1/echo"), &[b'x'; 16]).0, 200);
}

#[test]
fn a_stop_ends_with_idle_connections_and_requests_never_answered() {
    let mut f = fixture(1 << 20);
    let addr = f.server.local_addr();
    // An idle keep-alive connection, and one that sent half its headers.
    let idle = TcpStream::connect(addr).unwrap();
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"POST /v1/echo HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A request whose answer never comes: the owner keeps its responder.
    let (hold_tx, hold_rx) = crossbeam_channel::unbounded::<Responder>();
    let router = Router::new().route(Method::POST, "/wait", move |_| {
        let (responder, pending) = reply_channel();
        hold_tx.send(responder).unwrap();
        Reply::Later(pending)
    });
    let mut opts = HttpOptions::new("127.0.0.1:0");
    opts.json_writes = false;
    opts.grace = Duration::from_millis(200);
    let waiting_server = HttpServer::start(opts, Arc::new(router)).unwrap();
    let waddr = waiting_server.local_addr();
    let mut waiter = TcpStream::connect(waddr).unwrap();
    waiter
        .write_all(b"POST /wait HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let held = hold_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("request arrived");

    let (done_tx, done_rx) = crossbeam_channel::bounded(2);
    let server = std::mem::replace(
        &mut f.server,
        HttpServer::start(HttpOptions::new("127.0.0.1:0"), Arc::new(Router::new())).unwrap(),
    );
    for s in [server, waiting_server] {
        let done = done_tx.clone();
        std::thread::spawn(move || {
            s.stop();
            done.send(()).unwrap();
        });
    }
    for _ in 0..2 {
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("stop ends despite open connections");
    }
    assert!(
        !held.is_wanted(),
        "the waiting request's client side is gone"
    );
    // The waiting client sees its connection closed, not a hang.
    waiter
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let _ = waiter.read_to_end(&mut buf);
    drop((idle, half));
}

fn recv_dgram(sock: &UnixDatagram, within: Duration) -> Option<String> {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(_) => None,
    }
}

fn expect_dgram(sock: &UnixDatagram, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no notification containing {want:?}");
        if let Some(d) = recv_dgram(sock, left) {
            if d.lines().any(|l| l == want) {
                return d;
            }
        }
    }
}

#[test]
fn systemd_ready_watchdog_while_alive_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    // WATCHDOG_USEC of 200 ms: a ping every 100 ms.
    let sd = Systemd::from_vars(path.to_str(), Some("200000"), None, std::process::id());
    assert!(sd.enabled());
    assert_eq!(sd.watchdog_interval(), Some(Duration::from_millis(100)));

    sd.ready("serving on 127.0.0.1:1");
    let d = expect_dgram(&sock, "READY=1");
    assert!(d.contains("STATUS=serving on 127.0.0.1:1"), "{d}");

    let liveness = Liveness::new();
    let alive = Arc::new(AtomicBool::new(true));
    let beat = {
        let (l, alive) = (liveness.clone(), alive.clone());
        std::thread::spawn(move || {
            while alive.load(Ordering::SeqCst) {
                l.beat();
                std::thread::sleep(Duration::from_millis(5)); // the liveness beat under test, every 5 ms
            }
        })
    };
    let watchdog = sd
        .start_watchdog(liveness.clone())
        .unwrap()
        .expect("watchdog");
    for _ in 0..3 {
        expect_dgram(&sock, "WATCHDOG=1");
    }

    // The loop wedges: at most the ping already due, then silence.
    alive.store(false, Ordering::SeqCst);
    beat.join().unwrap();
    let _ = recv_dgram(&sock, Duration::from_millis(250));
    assert_eq!(
        recv_dgram(&sock, Duration::from_millis(600)),
        None,
        "no WATCHDOG=1 while the liveness counter stands still"
    );
    // It moves again: pings again.
    let again = {
        let l = liveness.clone();
        std::thread::spawn(move || {
            for _ in 0..100 {
                l.beat();
                std::thread::sleep(Duration::from_millis(5)); // the liveness beat under test, every 5 ms
            }
        })
    };
    expect_dgram(&sock, "WATCHDOG=1");
    again.join().unwrap();

    sd.stopping("stopping");
    expect_dgram(&sock, "STOPPING=1");
    watchdog.stop();
}

#[test]
fn systemd_abstract_socket_and_nothing_without_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("alaska-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    let sd = Systemd::from_vars(Some(&format!("@{name}")), None, None, 1);
    sd.status("working");
    assert_eq!(
        recv_dgram(&sock, Duration::from_secs(10)).as_deref(),
        Some("STATUS=working")
    );
    assert!(
        sd.start_watchdog(Liveness::new()).unwrap().is_none(),
        "no WATCHDOG_USEC"
    );

    let off = Systemd::from_vars(None, Some("200000"), None, 1);
    assert!(!off.enabled());
    off.ready("x");
    off.stopping("y");
    assert!(off.start_watchdog(Liveness::new()).unwrap().is_none());
}
