//! alaska-gateway end to end: real HTTP (ureq) into the gateway, a real
//! broker on `tcp://127.0.0.1:*`, real workers running Lua scripts, real
//! MLM clients receiving mail and stream posts; and the real binary under a
//! fake systemd.

use crate::common;
use crate::ops_support;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alaska::broker::{Broker, BrokerConfig, BrokerHandle};
use alaska::gateway::{Gateway, GatewayOptions};
use alaska::mlm::DeliveryKind;
use common::{broker, broker_with, client, expect, script, Worker};
use ops_support::prom::{self, Scrape};

const WAIT: Duration = Duration::from_secs(10);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

struct Reply {
    status: u16,
    body: Vec<u8>,
    frames: Option<String>,
}

fn post(a: &ureq::Agent, url: &str, body: &[u8]) -> Reply {
    let mut r = a.post(url).send(body).expect("HTTP POST");
    let frames = r
        .headers()
        .get("alaska-frames")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Reply {
        status: r.status().as_u16(),
        body: r.body_mut().read_to_vec().unwrap(),
        frames,
    }
}

fn get(a: &ureq::Agent, url: &str) -> (u16, String) {
    let mut r = a.get(url).call().expect("HTTP GET");
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// A gateway on a free port for `endpoint`.
fn gateway_with(endpoint: &str, tweak: impl FnOnce(&mut GatewayOptions)) -> Gateway {
    let mut o = GatewayOptions::new(endpoint, "127.0.0.1:0");
    o.address = format!("gw-{}", common::unique());
    o.broker_timeout = Duration::from_millis(500);
    tweak(&mut o);
    let g = Gateway::start(o).expect("gateway starts");
    wait_for("gateway connected", || g.is_connected());
    g
}

fn gateway(endpoint: &str) -> Gateway {
    gateway_with(endpoint, |_| {})
}

fn url(g: &Gateway, path: &str) -> String {
    format!("http://{}{path}", g.local_addr().unwrap())
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
    }
}

fn scrape(a: &ureq::Agent, g: &Gateway) -> Scrape {
    let (status, text) = get(a, &url(g, "/metrics"));
    assert_eq!(status, 200);
    prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn requests(s: &Scrape, endpoint: &str, status: &str) -> f64 {
    s.value(
        "alaska_gateway_requests_total",
        &[("endpoint", endpoint), ("status", status)],
    )
}

/// Scripts every test uses, in a fresh folder, and a worker serving them
/// as `svc` with error replies on.
fn scripts() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return alaskaContext");
    script(dir.path(), "fail", "error('boom: ' .. alaskaContext)");
    script(
        dir.path(),
        "slow",
        "alaska.sleep(400) return 'late ' .. alaskaContext",
    );
    dir
}

fn worker(endpoint: &str, dir: &Path) -> Worker {
    Worker::start(endpoint, dir, |o, p| {
        o.errors_reply = true;
        p.timeout = Duration::from_secs(5);
    })
}

/// Waits until the worker's offer is registered, through the gateway.
fn ready(a: &ureq::Agent, g: &Gateway) {
    wait_for("worker answering through the gateway", || {
        post(a, &url(g, "/v1/request/svc/echo?timeout=1000"), b"ping").status == 200
    });
}

#[test]
fn a_round_trip_byte_for_byte() {
    let b = broker();
    let dir = scripts();
    let _w = worker(b.endpoint(), dir.path());
    let g = gateway(b.endpoint());
    let a = agent();
    ready(&a, &g);
    let body: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let r = post(&a, &url(&g, "/v1/request/svc/echo"), &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body, "byte for byte, non-UTF-8 included");
    assert_eq!(r.frames.as_deref(), Some("1"));
    let r = post(&a, &url(&g, "/v1/request/svc/echo"), b"");
    assert_eq!((r.status, r.body.as_slice()), (200, &b""[..]));
}

#[test]
fn an_error_reply_is_502_with_the_error_text() {
    let b = broker();
    let dir = scripts();
    let _w = worker(b.endpoint(), dir.path());
    let g = gateway(b.endpoint());
    let a = agent();
    ready(&a, &g);
    let r = post(&a, &url(&g, "/v1/request/svc/fail"), b"xyz");
    assert_eq!(r.status, 502);
    let text = String::from_utf8_lossy(&r.body);
    assert!(text.contains("boom: xyz"), "{text}");
}

#[test]
fn a_slow_script_is_504_and_its_late_reply_is_discarded_and_counted() {
    let b = broker();
    let dir = scripts();
    let _w = worker(b.endpoint(), dir.path());
    let g = gateway(b.endpoint());
    let a = agent();
    ready(&a, &g);
    let r = post(&a, &url(&g, "/v1/request/svc/slow?timeout=100"), b"one");
    assert_eq!(r.status, 504);
    wait_for("the late reply", || {
        scrape(&a, &g).value("alaska_gateway_late_replies_total", &[]) == 1.0
    });
    // The late reply went nowhere: the next requests get their own.
    let r = post(&a, &url(&g, "/v1/request/svc/slow"), b"two");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"late two"[..]));
    let r = post(&a, &url(&g, "/v1/request/svc/echo"), b"three");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"three"[..]));
    let s = scrape(&a, &g);
    assert_eq!(s.value("alaska_gateway_late_replies_total", &[]), 1.0);
    assert_eq!(s.value("alaska_gateway_unmatched_replies_total", &[]), 0.0);
}

#[test]
fn broker_down_is_503_and_health_follows_the_broker() {
    let b = broker();
    let endpoint = b.endpoint().to_string();
    let dir = scripts();
    let g = gateway(&endpoint);
    let a = agent();
    assert_eq!(get(&a, &url(&g, "/health")), (200, "ok\n".into()));
    b.stop();
    wait_for("health 503", || get(&a, &url(&g, "/health")).0 == 503);
    assert_eq!(
        get(&a, &url(&g, "/health")),
        (503, "broker not connected\n".into())
    );
    let r = post(&a, &url(&g, "/v1/request/svc/echo"), b"x");
    assert_eq!(r.status, 503);
    assert_eq!(post(&a, &url(&g, "/v1/mail/someone/s"), b"x").status, 503);
    assert_eq!(
        scrape(&a, &g).value("alaska_gateway_broker_connected", &[]),
        0.0
    );

    // The broker comes back on the same endpoint.
    let b2 = restart(&endpoint);
    wait_for("health 200", || get(&a, &url(&g, "/health")).0 == 200);
    let _w = worker(b2.endpoint(), dir.path());
    ready(&a, &g);
    let r = post(&a, &url(&g, "/v1/request/svc/echo"), b"back");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"back"[..]));
    let s = scrape(&a, &g);
    assert!(s.value("alaska_gateway_broker_reconnects_total", &[]) >= 1.0);
    assert_eq!(s.value("alaska_gateway_broker_connected", &[]), 1.0);
}

/// A broker on `endpoint` again (the port may take a moment to be free).
fn restart(endpoint: &str) -> BrokerHandle {
    let deadline = Instant::now() + WAIT;
    loop {
        let cfg = BrokerConfig {
            endpoint: endpoint.into(),
            ..BrokerConfig::default()
        };
        match Broker::start(cfg) {
            Ok(b) => return b,
            Err(e) => {
                assert!(Instant::now() < deadline, "broker restart: {e}");
                std::thread::sleep(Duration::from_millis(50)); // bounded poll (deadline above)
            }
        }
    }
}

#[test]
fn a_full_broker_queue_is_429_and_a_stop_answers_waiting_requests_503() {
    let b = broker_with(|c| c.service_queue_limit.messages = 1);
    let g = gateway(b.endpoint());
    let a = agent();
    // No worker: the first request waits in the broker's queue...
    let first = {
        let (a, u) = (a.clone(), url(&g, "/v1/request/svc/echo?timeout=20000"));
        std::thread::spawn(move || post(&a, &u, b"first"))
    };
    wait_for("the first request in flight", || g.in_flight() == 1);
    // ...so the second is refused by the broker.
    let r = post(
        &a,
        &url(&g, "/v1/request/svc/echo?timeout=20000"),
        b"second",
    );
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 429, "{text}");
    assert!(text.contains("service svc queue full"), "{text}");
    let s = scrape(&a, &g);
    assert_eq!(s.value("alaska_gateway_broker_refusals_total", &[]), 1.0);
    assert_eq!(requests(&s, "request", "429"), 1.0);
    assert_eq!(s.value("alaska_gateway_requests_in_flight", &[]), 1.0);

    // A stop ends promptly; the request still waiting gets 503.
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        g.stop();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(WAIT).expect("the stop ends");
    let r = first.join().unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.body, b"gateway stopping\n");
}

#[test]
fn past_max_waiting_the_gateway_answers_429_at_once() {
    let b = broker();
    let g = gateway_with(b.endpoint(), |o| o.max_waiting = 2);
    let a = agent();
    let waiting: Vec<_> = (0..2)
        .map(|i| {
            let (a, u) = (a.clone(), url(&g, "/v1/request/nobody/echo?timeout=1500"));
            std::thread::spawn(move || post(&a, &u, format!("w{i}").as_bytes()))
        })
        .collect();
    wait_for("two requests in flight", || g.in_flight() == 2);
    let r = post(&a, &url(&g, "/v1/request/nobody/echo"), b"third");
    assert_eq!(r.status, 429);
    assert_eq!(r.body, b"too many requests waiting (at most 2)\n");
    for w in waiting {
        assert_eq!(w.join().unwrap().status, 504);
    }
    // Room again.
    let r = post(&a, &url(&g, "/v1/request/nobody/echo?timeout=50"), b"x");
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    let s = scrape(&a, &g);
    assert_eq!(requests(&s, "request", "429"), 1.0);
    assert_eq!(requests(&s, "request", "504"), 3.0);
    assert_eq!(s.value("alaska_gateway_broker_refusals_total", &[]), 0.0);
}

#[test]
fn mail_and_stream_posts_arrive_at_a_real_client() {
    let b = broker();
    let g = gateway(b.endpoint());
    let a = agent();
    let mut inbox = client(b.endpoint(), "inbox");
    let mut reader = client(b.endpoint(), "reader");
    reader.set_consumer("events", "^tick").unwrap();

    let r = post(&a, &url(&g, "/v1/mail/inbox/hello"), b"\x00mail\xff");
    assert_eq!((r.status, r.body.as_slice()), (202, &b"accepted\n"[..]));
    let d = expect(&mut inbox, DeliveryKind::Mailbox, WAIT);
    assert_eq!(d.subject, "hello");
    assert_eq!(d.content, vec![b"\x00mail\xff".to_vec()]);
    assert!(d.sender.starts_with("gw-"), "{}", d.sender);

    let r = post(&a, &url(&g, "/v1/stream/events/tick%2E1"), b"published");
    assert_eq!(r.status, 202);
    let d = expect(&mut reader, DeliveryKind::Stream, WAIT);
    assert_eq!(
        (d.address.as_str(), d.subject.as_str()),
        ("events", "tick.1")
    );
    assert_eq!(d.content, vec![b"published".to_vec()]);

    let s = scrape(&a, &g);
    assert_eq!(requests(&s, "mail", "202"), 1.0);
    assert_eq!(requests(&s, "stream", "202"), 1.0);
}

#[test]
fn two_hundred_concurrent_requests_each_get_their_own_reply() {
    let b = broker();
    let dir = scripts();
    let _w = worker(b.endpoint(), dir.path());
    let g = gateway(b.endpoint());
    let a = agent();
    ready(&a, &g);
    let before = scrape(&a, &g);
    let u = Arc::new(url(&g, "/v1/request/svc/echo?timeout=20000"));
    let barrier = Arc::new(std::sync::Barrier::new(200));
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let (u, barrier) = (u.clone(), barrier.clone());
            std::thread::spawn(move || {
                // An agent each: 200 connections at once, not a pool.
                let a = agent();
                let body = format!("request {i} {}", common::unique());
                barrier.wait();
                let r = post(&a, &u, body.as_bytes());
                (body, r)
            })
        })
        .collect();
    for t in threads {
        let (body, r) = t.join().unwrap();
        assert_eq!(
            r.status,
            200,
            "{body}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(String::from_utf8_lossy(&r.body), body, "crossed reply");
    }
    let after = scrape(&a, &g);
    assert_eq!(
        requests(&after, "request", "200") - requests(&before, "request", "200"),
        200.0
    );
    assert_eq!(after.value("alaska_gateway_requests_in_flight", &[]), 0.0);
    assert_eq!(after.value("alaska_gateway_late_replies_total", &[]), 0.0);
}

#[test]
fn metrics_move_by_exactly_the_requests_sent() {
    let b = broker();
    let dir = scripts();
    let _w = worker(b.endpoint(), dir.path());
    let g = gateway(b.endpoint());
    let a = agent();
    ready(&a, &g);
    let before = scrape(&a, &g);
    let hist = "alaska_gateway_request_duration_seconds_count";
    for i in 0..7 {
        assert_eq!(post(&a, &url(&g, "/v1/request/svc/echo"), &[i]).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(post(&a, &url(&g, "/v1/request/svc/fail"), b"x").status, 502);
    }
    assert_eq!(
        post(&a, &url(&g, "/v1/request/nobody/x?timeout=30"), b"x").status,
        504
    );
    assert_eq!(
        post(&a, &url(&g, "/v1/request/svc/echo?timeout=soon"), b"x").status,
        400
    );
    assert_eq!(post(&a, &url(&g, "/v1/request/only-one"), b"x").status, 404);
    for _ in 0..3 {
        assert_eq!(post(&a, &url(&g, "/v1/mail/nobody/s"), b"x").status, 202);
    }
    for _ in 0..2 {
        assert_eq!(post(&a, &url(&g, "/v1/stream/s/t"), b"x").status, 202);
    }
    assert_eq!(get(&a, &url(&g, "/v1/request/svc/echo")).0, 405);
    assert_eq!(get(&a, &url(&g, "/nothing")).0, 404);
    let after = scrape(&a, &g);
    let delta = |e: &str, s: &str| requests(&after, e, s) - requests(&before, e, s);
    assert_eq!(delta("request", "200"), 7.0);
    assert_eq!(delta("request", "502"), 2.0);
    assert_eq!(delta("request", "504"), 1.0);
    assert_eq!(delta("request", "400"), 1.0);
    assert_eq!(delta("request", "404"), 1.0);
    assert_eq!(delta("mail", "202"), 3.0);
    assert_eq!(delta("stream", "202"), 2.0);
    assert_eq!(delta("request", "429") + delta("request", "503"), 0.0);
    // Latency is observed for every /v1/request answered after admission
    // checks that look at the request itself: 7 + 2 + 1 here.
    assert_eq!(after.value(hist, &[]) - before.value(hist, &[]), 10.0);
    assert_eq!(
        after.type_of("alaska_gateway_request_duration_seconds"),
        Some("histogram")
    );
    assert_eq!(
        after.type_of("alaska_gateway_requests_total"),
        Some("counter")
    );
    assert_eq!(
        after.type_of("alaska_gateway_requests_in_flight"),
        Some("gauge")
    );
    assert_eq!(after.value("alaska_gateway_requests_in_flight", &[]), 0.0);
}

/// The real binary: flags, READY/WATCHDOG/STOPPING to a fake
/// NOTIFY_SOCKET, a request through it, SIGTERM with a request waiting.
#[test]
fn the_binary_under_a_fake_systemd() {
    let b = broker();
    let dir = scripts();
    let _w = worker(b.endpoint(), dir.path());
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let (mut child, addr, _lines) = spawn_gateway(
        &["-e", b.endpoint(), "--listen", "127.0.0.1:0", "-v"],
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "300000"),
        ],
    );
    let mut got = Vec::new();
    let notes = |want: &str, got: &mut Vec<String>| {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no {want}; got {got:?}");
            let mut buf = [0u8; 1024];
            let n = sock.recv(&mut buf).expect("a notification");
            let note = String::from_utf8_lossy(&buf[..n]).to_string();
            got.push(note.clone());
            if note.lines().any(|l| l == want) {
                return note;
            }
        }
    };
    let ready = notes("READY=1", &mut got);
    assert!(
        ready.contains(&format!("STATUS=serving http://{addr}")),
        "{ready}"
    );
    for _ in 0..3 {
        notes("WATCHDOG=1", &mut got);
    }
    let a = agent();
    let base = format!("http://{addr}");
    wait_for("the binary answering", || {
        post(
            &a,
            &format!("{base}/v1/request/svc/echo?timeout=1000"),
            b"hi",
        )
        .status
            == 200
    });
    let r = post(
        &a,
        &format!("{base}/v1/request/svc/echo"),
        b"through the binary",
    );
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"through the binary"[..])
    );

    // SIGTERM with a request waiting: it gets 503, the process exits 0.
    let waiting = {
        let (a, u) = (
            a.clone(),
            format!("{base}/v1/request/nobody/x?timeout=20000"),
        );
        std::thread::spawn(move || post(&a, &u, b"w"))
    };
    let scrape_waiting = || {
        let (_, text) = get(&a, &format!("{base}/metrics"));
        prom::parse(&text)
            .unwrap()
            .value("alaska_gateway_requests_in_flight", &[])
            == 1.0
    };
    wait_for("a request waiting", scrape_waiting);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    notes("STOPPING=1", &mut got);
    let r = waiting.join().unwrap();
    assert_eq!(r.status, 503);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the gateway did not exit");
        std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
    };
    assert!(status.success(), "{status:?}");
}

/// Starts the real binary; returns it, its HTTP address (from its log)
/// and the rest of its stderr, line by line.
fn spawn_gateway(
    args: &[&str],
    env: &[(&str, &str)],
) -> (
    std::process::Child,
    String,
    crossbeam_channel::Receiver<String>,
) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alaska-gateway"));
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env_remove("ALASKA_GATEWAY_USER")
        .env_remove("ALASKA_GATEWAY_PASSWORD")
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (line_tx, line_rx) = crossbeam_channel::unbounded::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = line_tx.send(line);
        }
    });
    // The lines before the serving line are kept for the caller: the relay
    // thread may log (a refused handshake, say) before the main thread
    // says it serves, and a test waiting for that line must still see it.
    let (keep_tx, keep_rx) = crossbeam_channel::unbounded::<String>();
    let addr = loop {
        let line = line_rx.recv_timeout(WAIT).expect("a serving line");
        if let Some(rest) = line.split("serving http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
        let _ = keep_tx.send(line);
    };
    std::thread::spawn(move || {
        for line in line_rx {
            if keep_tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, addr, keep_rx)
}

/// Stops the binary with SIGTERM and returns its exit status.
fn terminate(mut child: std::process::Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway did not exit on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
    }
}

#[test]
fn plain_credentials_from_the_environment() {
    let users = std::collections::HashMap::from([("gw".to_string(), "secret".to_string())]);
    let b = broker_with(|c| c.plain = Some(users));
    let a = agent();

    let (child, addr, _) = spawn_gateway(
        &["-e", b.endpoint(), "--listen", "127.0.0.1:0"],
        &[
            ("ALASKA_GATEWAY_USER", "gw"),
            ("ALASKA_GATEWAY_PASSWORD", "secret"),
        ],
    );
    wait_for("connected with PLAIN", || {
        get(&a, &format!("http://{addr}/health")).0 == 200
    });
    assert!(terminate(child).success());

    let (child, addr, lines) = spawn_gateway(
        &["-e", b.endpoint(), "--listen", "127.0.0.1:0"],
        &[
            ("ALASKA_GATEWAY_USER", "gw"),
            ("ALASKA_GATEWAY_PASSWORD", "wrong"),
        ],
    );
    let deadline = Instant::now() + WAIT;
    let mut seen = String::new();
    loop {
        let line = lines
            .recv_deadline(deadline)
            .unwrap_or_else(|e| panic!("an authentication error ({e}); the gateway said:\n{seen}"));
        if line.contains("refused authentication") {
            break;
        }
        seen.push_str(&line);
        seen.push('\n');
    }
    assert_eq!(
        get(&a, &format!("http://{addr}/health")),
        (503, "broker not connected\n".into())
    );
    let r = post(&a, &format!("http://{addr}/v1/request/svc/echo"), b"x");
    assert_eq!(r.status, 503);
    assert!(terminate(child).success());
}

#[test]
fn bad_configuration_is_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.cfg");
    std::fs::write(
        &cfg,
        "gateway\n    request\n        max_waiting = \"none\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_alaska-gateway"))
        .args(["-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gateway/request/max_waiting"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_alaska-gateway"))
        .args(["-c", dir.path().join("missing.cfg").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.cfg"));

    // The shipped sample works as it is (a port of its own, though).
    let (child, _, _) = spawn_gateway(
        &[
            "-c",
            "alaska-gateway.cfg",
            "--listen",
            "127.0.0.1:0",
            "-e",
            "tcp://127.0.0.1:1",
        ],
        &[],
    );
    assert!(terminate(child).success());
}
