//! Scripts that reach out, end to end: `alaska.call` between real workers
//! on real brokers (the project's and, where installed, the real
//! Malamute), to Lua, HTTP-runner and exec-runner targets; `alaska.http`
//! against a real HTTP server on loopback (and an HTTPS one with a test
//! CA). What the script returns, and what the server saw, is checked byte
//! for byte.

use crate::common;
use crate::server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alaska::config::Settings;
use alaska::mlm::{Client, DeliveryKind};
use alaska::worker::reach::{HostPattern, Reach, ReachConfig};
use alaska::worker::runners::RunnerConfig;
use common::*;
use server::{Reply, Server};

const T: Duration = Duration::from_secs(15);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A reach with these settings (the defaults otherwise).
fn reach(tweak: impl FnOnce(&mut ReachConfig)) -> Arc<Reach> {
    let mut cfg = ReachConfig::default();
    tweak(&mut cfg);
    Arc::new(Reach::new(cfg).expect("reach settings"))
}

/// A worker offering `service` with `vms` VMs, a 5 s budget and `reach`.
fn worker(endpoint: &str, dir: &Path, service: &str, vms: usize, r: Arc<Reach>) -> Worker {
    worker_with(endpoint, dir, service, vms, r, Vec::new(), 8)
}

fn worker_with(
    endpoint: &str,
    dir: &Path,
    service: &str,
    vms: usize,
    r: Arc<Reach>,
    runners: Vec<RunnerConfig>,
    hops: u32,
) -> Worker {
    let service = service.to_string();
    Worker::start(endpoint, dir, move |o, p| {
        o.service = service;
        o.runners = runners;
        o.policy.max_hops = hops;
        o.policy.attempts = 1;
        p.size = vms;
        p.timeout = Duration::from_secs(5);
        p.reach = r;
    })
}

/// Sends `subject` to `service` with `body` and waits for the reply.
fn ask(c: &mut Client, service: &str, subject: &str, body: &[u8]) -> String {
    c.sendfor(service, subject, "t", 0, vec![body.to_vec()])
        .unwrap();
    let d = expect(c, DeliveryKind::Mailbox, T);
    String::from_utf8_lossy(&d.content[0]).into_owned()
}

/// Waits until `service` answers the probe `ping` (its offer is in place).
fn ready_on(c: &mut Client, dir: &Path, service: &str) {
    script(dir, "ping", "return 'pong'");
    assert_eq!(ask(c, service, "ping", b""), "pong");
}

const FRONT: &str = r#"
local r, meta = alaska.call('backend', alaska.frames[2] or 'upper', alaskaContext,
  { timeout = tonumber(alaska.frames[3]) })
if not r then return 'ERR ' .. meta end
return 'front got [' .. r .. '] from ' .. meta.address .. '/' .. meta.subject .. ' in '
  .. #meta.frames .. ' frame(s), hops here ' .. alaska.hops
"#;

#[test]
fn a_script_calls_another_service_and_uses_its_reply_on_both_brokers() {
    for b in all_brokers("alaska.call") {
        let front_dir = tempfile::tempdir().unwrap();
        let back_dir = tempfile::tempdir().unwrap();
        script(front_dir.path(), "front", FRONT);
        script(
            back_dir.path(),
            "upper",
            "return string.upper(alaskaContext)",
        );
        script(back_dir.path(), "hops", "return 'hops=' .. alaska.hops");
        script(
            back_dir.path(),
            "bad",
            "return alaska.fail('no such customer')",
        );
        script(back_dir.path(), "slow", "alaska.sleep(3000) return 'late'");
        let _f = worker(b.endpoint(), front_dir.path(), "svc", 2, reach(|_| {}));
        let _k = worker(b.endpoint(), back_dir.path(), "backend", 2, reach(|_| {}));
        let mut c = client(b.endpoint(), &format!("producer-{}", unique()));
        ready_on(&mut c, front_dir.path(), "svc");
        ready_on(&mut c, back_dir.path(), "backend");
        let name = b.name();

        assert_eq!(
            ask(&mut c, "svc", "front", b"hello"),
            "front got [HELLO] from backend/upper in 1 frame(s), hops here 0",
            "{name}"
        );
        // The callee sees the hop the call added.
        let mut frames = vec![b"x".to_vec(), b"hops".to_vec()];
        c.sendfor("svc", "front", "t", 0, frames.clone()).unwrap();
        let d = expect(&mut c, DeliveryKind::Mailbox, T);
        assert_eq!(
            String::from_utf8_lossy(&d.content[0]),
            "front got [hops=1] from backend/hops in 1 frame(s), hops here 0",
            "{name}"
        );
        // An error reply.
        frames[1] = b"bad".to_vec();
        c.sendfor("svc", "front", "t", 0, frames.clone()).unwrap();
        let d = expect(&mut c, DeliveryKind::Mailbox, T);
        let text = String::from_utf8_lossy(&d.content[0]).into_owned();
        assert!(
            text.starts_with("ERR alaska.call to backend/bad: ")
                && text.contains("no such customer"),
            "{name}: {text}"
        );
        // A timeout, cut by the call's own timeout, not the budget.
        let t0 = Instant::now();
        c.sendfor(
            "svc",
            "front",
            "t",
            0,
            vec![b"x".to_vec(), b"slow".to_vec(), b"300".to_vec()],
        )
        .unwrap();
        let d = expect(&mut c, DeliveryKind::Mailbox, T);
        let took = t0.elapsed();
        let text = String::from_utf8_lossy(&d.content[0]).into_owned();
        assert!(
            text.starts_with("ERR alaska.call to backend/slow: timeout: no reply within 300 ms"),
            "{name}: {text}"
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(2500),
            "{name}: {took:?}"
        );
        // A service nobody offers: the same timeout, naming the service.
        let mut c2 = client(b.endpoint(), &format!("producer-{}", unique()));
        script(
            front_dir.path(),
            "nobody",
            "local r, e = alaska.call('nobody-here', 'x', 'y', {timeout = 200}) return tostring(r) .. ' ' .. e",
        );
        let text = ask(&mut c2, "svc", "nobody", b"");
        assert!(
            text.starts_with("nil alaska.call to nobody-here/x: timeout")
                && text.contains("is a worker offering nobody-here?"),
            "{name}: {text}"
        );
    }
}

#[test]
fn calls_reach_http_and_exec_runners() {
    let b = broker();
    let app = Server::start(0, |s| {
        let mut body = b"app saw ".to_vec();
        body.extend_from_slice(&s.body);
        Reply::new(200, &body)
    });
    let zpl = format!(
        "worker\n    runners\n        app\n            match = \"^app$\"\n            url = \"{}\"\n        py\n            match = \"^hello$\"\n            type = \"exec\"\n            command = \"python3 '{}'\"\n            env\n                PYTHONPATH = \"{}\"\n",
        app.url("/run"),
        repo().join("tests/runners/handler.py").display(),
        repo().join("runners/python").display(),
    );
    let runners = Settings::from_sources(&zpl, Vec::new()).unwrap().runners;
    let front_dir = tempfile::tempdir().unwrap();
    let back_dir = tempfile::tempdir().unwrap();
    script(front_dir.path(), "front", FRONT);
    let _f = worker(b.endpoint(), front_dir.path(), "svc", 2, reach(|_| {}));
    let _k = worker_with(
        b.endpoint(),
        back_dir.path(),
        "backend",
        1,
        reach(|_| {}),
        runners,
        8,
    );
    let mut c = client(b.endpoint(), "producer");
    ready_on(&mut c, front_dir.path(), "svc");
    ready_on(&mut c, back_dir.path(), "backend");
    c.sendfor(
        "svc",
        "front",
        "t",
        0,
        vec![b"payload \x01".to_vec(), b"app".to_vec()],
    )
    .unwrap();
    let d = expect(&mut c, DeliveryKind::Mailbox, T);
    assert_eq!(
        d.content[0],
        b"front got [app saw payload \x01] from backend/app in 1 frame(s), hops here 0".to_vec()
    );
    assert_eq!(app.seen()[0].body, b"payload \x01".to_vec());
    c.sendfor(
        "svc",
        "front",
        "t",
        0,
        vec![b"py".to_vec(), b"hello".to_vec()],
    )
    .unwrap();
    let d = expect(&mut c, DeliveryKind::Mailbox, T);
    let text = String::from_utf8_lossy(&d.content[0]).into_owned();
    // The exec runner sees the call's own tracker (the envelope opened).
    assert!(
        text.starts_with("front got [hello py (attempt 1, frames 1, tracker call:")
            && text.ends_with(")] from backend/hello in 1 frame(s), hops here 0"),
        "{text}"
    );
}

#[test]
fn four_vms_waiting_in_calls_leave_a_fifth_request_served_at_once() {
    let b = broker();
    let front_dir = tempfile::tempdir().unwrap();
    let back_dir = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    script(front_dir.path(), "front", FRONT);
    holding_backend(back_dir.path(), marks.path());
    let _f = worker(
        b.endpoint(),
        front_dir.path(),
        "svc",
        5,
        reach(|c| c.call_timeout = Duration::from_secs(4)),
    );
    let _k = worker(b.endpoint(), back_dir.path(), "backend", 4, reach(|_| {}));
    let mut c = client(b.endpoint(), "producer");
    ready_on(&mut c, front_dir.path(), "svc");
    ready_on(&mut c, back_dir.path(), "backend");
    for i in 0..4 {
        c.sendfor(
            "svc",
            "front",
            &format!("w{i}"),
            0,
            vec![format!("{i}").into_bytes(), b"hold".to_vec()],
        )
        .unwrap();
    }
    for i in 0..4 {
        wait_file_exists(&marks.path().join(format!("started-{i}")));
    }
    // Four of the five VMs wait in a call: the fifth answers at once.
    let t0 = Instant::now();
    c.sendfor("svc", "ping", "quick", 0, vec![vec![]]).unwrap();
    let d = expect(&mut c, DeliveryKind::Mailbox, T);
    assert_eq!(
        (d.tracker.as_str(), &d.content[0][..]),
        ("quick", &b"pong"[..])
    );
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    std::fs::write(marks.path().join("go"), "").unwrap();
    let got = sorted_replies(&mut c, 4);
    let want: Vec<String> = (0..4)
        .map(|i| format!("front got [released {i}] from backend/hold in 1 frame(s), hops here 0"))
        .collect();
    assert_eq!(got, want);
}

/// The first frames of the next `n` replies, sorted (they come in any
/// order).
fn sorted_replies(c: &mut Client, n: usize) -> Vec<String> {
    let mut got: Vec<String> = (0..n)
        .map(|_| {
            let d = expect(c, DeliveryKind::Mailbox, T);
            String::from_utf8_lossy(&d.content[0]).into_owned()
        })
        .collect();
    got.sort();
    got
}

/// Waits (bounded) for a file a script creates; polled, since the file is
/// the only sign the script gives.
fn wait_file_exists(path: &Path) {
    let deadline = Instant::now() + T;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10)); // bounded poll (deadline above)
    }
}

#[test]
fn a_loop_of_calls_stops_at_the_hop_limit_and_a_pool_of_one_cannot_call_itself() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "loop",
        "local r, e = alaska.call('svc', 'loop', alaskaContext) if not r then return 'stopped at ' .. alaska.hops .. ': ' .. e end return r",
    );
    let _w = worker_with(b.endpoint(), dir.path(), "svc", 5, reach(|_| {}), vec![], 3);
    let mut c = client(b.endpoint(), "producer");
    ready_on(&mut c, dir.path(), "svc");
    assert_eq!(
        ask(&mut c, "svc", "loop", b""),
        "stopped at 3: alaska.call to svc/loop refused: hop limit of 3 reached (a loop of calls?)"
    );

    let b2 = broker();
    let dir2 = tempfile::tempdir().unwrap();
    script(
        dir2.path(),
        "me",
        "local r, e = alaska.call('svc', 'ping', '') return tostring(r) .. ': ' .. e",
    );
    let _w2 = worker(b2.endpoint(), dir2.path(), "svc", 1, reach(|_| {}));
    let mut c2 = client(b2.endpoint(), "producer");
    ready_on(&mut c2, dir2.path(), "svc");
    let t0 = Instant::now();
    assert_eq!(
        ask(&mut c2, "svc", "me", b""),
        "nil: alaska.call to svc: this worker offers svc with a single Lua VM, which would wait \
         for itself (raise worker/pool/size)"
    );
    assert!(t0.elapsed() < Duration::from_secs(2));
}

/// The HTTP test server: `/echo` answers with what it got, `/slow` after
/// 2 s, `/huge` with 10,000 bytes.
fn app() -> Server {
    Server::start(0, app_handler)
}

fn app_handler(s: &server::Seen) -> Reply {
    match s.path.as_str() {
        "/slow" => {
            // The slow server under test (not a wait of the test).
            std::thread::sleep(Duration::from_secs(2));
            Reply::new(200, b"slow")
        }
        "/huge" => Reply::new(200, &[b'x'; 10_000]),
        _ => {
            let mut body = format!("{} {} ", s.method, s.path).into_bytes();
            body.extend_from_slice(&s.body);
            Reply::new(201, &body)
                .header("X-Echo", s.header("x-test").unwrap_or("none"))
                .header("Set-Cookie", "a=1")
                .header("Set-Cookie", "b=2")
        }
    }
}

const HTTP_SCRIPT: &str = r#"
local req = require('cjson').decode(alaskaContext)
local r, err = alaska.http(req)
if not r then return 'ERR ' .. err end
return r.status .. '|' .. (r.headers['x-echo'] or '-') .. '|' .. (r.headers['set-cookie'] or '-')
  .. '|' .. r.body
"#;

/// What an HTTP test keeps alive: the worker, the scripts' folder, the
/// broker (dropped in that order: the worker stops while its broker is up).
type Setup = (Worker, tempfile::TempDir, alaska::broker::BrokerHandle);

/// The test HTTP server, a producer, and a worker with `vms` VMs running
/// `HTTP_SCRIPT` as `get`, allowed to reach 127.0.0.1.
fn http_setup(vms: usize) -> (Server, Client, Setup) {
    let b = broker();
    let srv = app();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "get", HTTP_SCRIPT);
    let w = worker(
        b.endpoint(),
        dir.path(),
        "svc",
        vms,
        reach(|c| c.http_allow = HostPattern::parse_list("127.0.0.1").unwrap()),
    );
    let mut c = client(b.endpoint(), "producer");
    ready_on(&mut c, dir.path(), "svc");
    (srv, c, (w, dir, b))
}

fn http_ask(c: &mut Client, req: serde_json::Value) -> String {
    ask(c, "svc", "get", req.to_string().as_bytes())
}

#[test]
fn http_from_a_script_get_post_headers_bodies_timeouts_limits_and_the_allow_list() {
    let b = broker();
    let srv = app();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "get", HTTP_SCRIPT);
    let _w = worker(
        b.endpoint(),
        dir.path(),
        "svc",
        2,
        reach(|c| {
            c.http_allow = HostPattern::parse_list("127.0.0.1").unwrap();
            c.http_max_body = 1000;
        }),
    );
    let mut c = client(b.endpoint(), "producer");
    ready_on(&mut c, dir.path(), "svc");

    let got = http_ask(
        &mut c,
        serde_json::json!({"url": srv.url("/a?b=c"), "headers": {"X-Test": "yes"}}),
    );
    assert_eq!(got, "201|yes|a=1, b=2|GET /a?b=c ");
    let got = http_ask(
        &mut c,
        serde_json::json!({"method": "post", "url": srv.url("/p"), "body": "{\"n\":1}",
            "headers": {"Content-Type": "application/json"}}),
    );
    assert_eq!(got, "201|none|a=1, b=2|POST /p {\"n\":1}");
    let seen = srv.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].header("x-test"), Some("yes"));
    assert_eq!(
        seen[0].header("content-length"),
        None,
        "a GET carries no body"
    );
    assert_eq!(seen[1].body, b"{\"n\":1}".to_vec());
    assert_eq!(seen[1].header("content-type"), Some("application/json"));

    // A slow server is cut by the script's timeout.
    let t0 = Instant::now();
    let got = http_ask(
        &mut c,
        serde_json::json!({"url": srv.url("/slow"), "timeout": 300}),
    );
    assert!(
        got.starts_with("ERR alaska.http 127.0.0.1:") && got.contains("timeout"),
        "{got}"
    );
    assert!(
        t0.elapsed() < Duration::from_millis(1800),
        "{:?}",
        t0.elapsed()
    );
    // A body over max_body.
    let got = http_ask(&mut c, serde_json::json!({"url": srv.url("/huge")}));
    assert!(
        got.contains("response body over worker/lua/http/max_body (1000 bytes)"),
        "{got}"
    );
    // A host outside the allow list: refused before any connection.
    let before = srv.seen().len();
    let other = format!("http://127.0.0.2:{}/x", srv.port);
    let got = http_ask(&mut c, serde_json::json!({ "url": other }));
    assert_eq!(
        got,
        format!(
            "ERR alaska.http: 127.0.0.2:{} is not in worker/lua/http/allow (scripts may reach \
             only the hosts listed there)",
            srv.port
        )
    );
    let got = http_ask(&mut c, serde_json::json!({"url": "file:///etc/passwd"}));
    assert!(
        got.contains("only http:// and https:// are allowed"),
        "{got}"
    );
    assert_eq!(srv.seen().len(), before);
}

#[test]
fn http_is_refused_everywhere_by_default() {
    let b = broker();
    let srv = app();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "get", HTTP_SCRIPT);
    let _w = worker(b.endpoint(), dir.path(), "svc", 2, reach(|_| {}));
    let mut c = client(b.endpoint(), "producer");
    ready_on(&mut c, dir.path(), "svc");
    let got = http_ask(&mut c, serde_json::json!({"url": srv.url("/")}));
    assert!(got.contains("is not in worker/lua/http/allow"), "{got}");
    assert!(srv.seen().is_empty());
}

#[test]
fn http_connections_are_reused_and_a_waiting_script_delays_nobody() {
    let (srv, mut c, _setup) = http_setup(2);
    for i in 0..20 {
        let got = http_ask(
            &mut c,
            serde_json::json!({"url": srv.url(&format!("/n{i}"))}),
        );
        assert_eq!(got, format!("201|none|a=1, b=2|GET /n{i} "));
    }
    let seen = srv.seen();
    let mut conns: Vec<u64> = seen.iter().map(|s| s.conn).collect();
    conns.sort();
    conns.dedup();
    // Each of the two VMs may open one; never one per request.
    assert!(
        conns.len() <= 2,
        "20 requests on {} connections",
        conns.len()
    );

    // A script waiting 2 s for a slow server: the other VM answers at once.
    c.sendfor(
        "svc",
        "get",
        "slow",
        0,
        vec![serde_json::json!({"url": srv.url("/slow")})
            .to_string()
            .into_bytes()],
    )
    .unwrap();
    let deadline = Instant::now() + T;
    while !srv.seen().iter().any(|s| s.path == "/slow") {
        assert!(
            Instant::now() < deadline,
            "the slow request never reached the server"
        );
        std::thread::sleep(Duration::from_millis(5)); // bounded poll (deadline above)
    }
    let t0 = Instant::now();
    c.sendfor("svc", "ping", "quick", 0, vec![vec![]]).unwrap();
    let d = expect(&mut c, DeliveryKind::Mailbox, T);
    assert_eq!(d.tracker, "quick");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    let d = expect(&mut c, DeliveryKind::Mailbox, T);
    assert_eq!(
        (d.tracker.as_str(), &d.content[0][..]),
        ("slow", &b"200|-|-|slow"[..])
    );
}

/// A test CA and a server certificate for `localhost` signed by it: the
/// server's TLS settings and the CA's PEM.
fn test_tls() -> (Arc<rustls::ServerConfig>, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    (Arc::new(cfg), ca_cert.pem())
}

#[test]
fn https_with_a_test_ca_and_refused_without_it() {
    let b = broker();
    let (tls, ca_pem) = test_tls();
    let srv = Server::start_with(0, Some(tls), app_handler);
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "get", HTTP_SCRIPT);
    let url = format!("https://localhost:{}/secure", srv.port);
    let _w = worker(
        b.endpoint(),
        dir.path(),
        "svc",
        2,
        reach(|c| {
            c.http_allow = HostPattern::parse_list("localhost").unwrap();
            c.http_ca = Some(ca_pem.into_bytes());
        }),
    );
    let mut c = client(b.endpoint(), "producer");
    ready_on(&mut c, dir.path(), "svc");
    let got = http_ask(
        &mut c,
        serde_json::json!({"method": "PUT", "url": url, "body": "secret"}),
    );
    assert_eq!(got, "201|none|a=1, b=2|PUT /secure secret");

    // The bundled roots do not know the test CA.
    let b2 = broker();
    let _w2 = worker(
        b2.endpoint(),
        dir.path(),
        "svc",
        2,
        reach(|c| c.http_allow = HostPattern::parse_list("localhost").unwrap()),
    );
    let mut c2 = client(b2.endpoint(), "producer");
    ready_on(&mut c2, dir.path(), "svc");
    let got = http_ask(&mut c2, serde_json::json!({ "url": url }));
    assert!(
        got.starts_with("ERR alaska.http localhost:") && got.to_lowercase().contains("certificate"),
        "{got}"
    );
}

/// The backend of the parking tests: says it has the call, then holds it
/// until the test lets it go (a file), at most 10 s.
fn holding_backend(dir: &Path, marks: &Path) {
    script(
        dir,
        "hold",
        &format!(
            r#"
local dir = '{}'
io.open(dir .. '/started-' .. alaskaContext, 'w'):close()
for _ = 1, 1000 do
  local f = io.open(dir .. '/go', 'r')
  if f then f:close() return 'released ' .. alaskaContext end
  alaska.sleep(10)
end
return 'never released'
"#,
            marks.display()
        ),
    );
}

#[test]
fn one_vm_parks_twenty_requests_in_calls_and_keeps_each_ones_state() {
    let b = broker();
    let front_dir = tempfile::tempdir().unwrap();
    let back_dir = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    // Each request sets a global, mails its own note, calls, and reads its
    // own frames and global back after the call: parked requests must not
    // see each other's state.
    script(
        front_dir.path(),
        "front",
        r#"
mine = alaskaContext
sendTo('note', 'before ' .. alaskaContext, 'notes')
local r, e = alaska.call('backend', 'hold', alaskaContext, { timeout = 8000 })
sendTo('note', 'after ' .. alaskaContext, 'notes')
return (r or e) .. ' / frames[1]=' .. alaska.frames[1] .. ' global=' .. tostring(mine)
"#,
    );
    holding_backend(back_dir.path(), marks.path());
    // One VM (the dispatcher's own): only parking lets it hold 20 calls.
    let _f = worker(
        b.endpoint(),
        front_dir.path(),
        "svc",
        1,
        reach(|c| c.call_timeout = Duration::from_secs(8)),
    );
    let _k = worker(b.endpoint(), back_dir.path(), "backend", 20, reach(|_| {}));
    let mut c = client(b.endpoint(), "producer");
    let mut notes = client(b.endpoint(), "notes");
    ready_on(&mut c, front_dir.path(), "svc");
    ready_on(&mut c, back_dir.path(), "backend");
    for i in 0..20 {
        c.sendfor(
            "svc",
            "front",
            &format!("w{i}"),
            0,
            vec![format!("{i}").into_bytes()],
        )
        .unwrap();
    }
    for i in 0..20 {
        wait_file_exists(&marks.path().join(format!("started-{i}")));
    }
    // All twenty wait in calls on the one VM; a new request runs at once.
    let t0 = Instant::now();
    c.sendfor("svc", "ping", "quick", 0, vec![vec![]]).unwrap();
    let d = expect(&mut c, DeliveryKind::Mailbox, T);
    assert_eq!(
        (d.tracker.as_str(), &d.content[0][..]),
        ("quick", &b"pong"[..])
    );
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    std::fs::write(marks.path().join("go"), "").unwrap();
    let mut got: Vec<(String, String)> = (0..20)
        .map(|_| {
            let d = expect(&mut c, DeliveryKind::Mailbox, T);
            (
                d.tracker,
                String::from_utf8_lossy(&d.content[0]).into_owned(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = (0..20)
        .map(|i| {
            (
                format!("w{i}"),
                format!("released {i} / frames[1]={i} global={i}"),
            )
        })
        .collect();
    want.sort();
    assert_eq!(got, want);
    // Each request's mail went out with its own completion, in its order.
    let mut seen: Vec<String> = (0..40)
        .map(|_| {
            let d = expect(&mut notes, DeliveryKind::Mailbox, T);
            String::from_utf8_lossy(&d.content[0]).into_owned()
        })
        .collect();
    for i in 0..20 {
        let before = seen
            .iter()
            .position(|n| *n == format!("before {i}"))
            .unwrap();
        let after = seen
            .iter()
            .position(|n| *n == format!("after {i}"))
            .unwrap();
        assert_eq!(after, before + 1, "{i}: {seen:?}");
    }
    seen.sort();
    assert_eq!(seen.len(), 40);
}

#[test]
fn a_parked_call_ends_at_its_timeout_or_the_budget_and_scripts_keep_their_coroutine_rules() {
    let b = broker();
    let front_dir = tempfile::tempdir().unwrap();
    let back_dir = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    holding_backend(back_dir.path(), marks.path());
    script(
        front_dir.path(),
        "short",
        "local r, e = alaska.call('backend', 'hold', 's', {timeout = 200}) return tostring(r) .. ' ' .. e",
    );
    // The budget (1 s here) ends a call that asks for longer.
    script(
        front_dir.path(),
        "long",
        "local ok, e = pcall(alaska.call, 'backend', 'hold', 'l', {timeout = 5000}) return 'caught ' .. tostring(e)",
    );
    // A call inside a script's own coroutine waits in place, and works.
    script(
        front_dir.path(),
        "inco",
        "local f = coroutine.wrap(function() return (alaska.call('backend', 'ping', '')) end) return 'in a coroutine: ' .. f()",
    );
    script(
        front_dir.path(),
        "yield",
        "coroutine.yield(1) return 'not here'",
    );
    let _f = Worker::start(b.endpoint(), front_dir.path(), |o, p| {
        o.policy.attempts = 1;
        p.size = 1;
        p.timeout = Duration::from_secs(1);
    });
    let _k = worker(b.endpoint(), back_dir.path(), "backend", 4, reach(|_| {}));
    let mut c = client(b.endpoint(), "producer");
    ready_on(&mut c, front_dir.path(), "svc");
    ready_on(&mut c, back_dir.path(), "backend");
    let t0 = Instant::now();
    let got = ask(&mut c, "svc", "short", b"");
    assert_eq!(
        got,
        "nil alaska.call to backend/hold: timeout: no reply within 200 ms (is a worker offering backend?)"
    );
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    // The budget breach cannot be caught by pcall: the request fails.
    let t0 = Instant::now();
    c.sendfor("svc", "long", "t", 0, vec![vec![]]).unwrap();
    let d = expect(&mut c, DeliveryKind::Mailbox, T);
    let text = String::from_utf8_lossy(&d.content[0]).into_owned();
    assert_eq!(d.subject, "ERROR:long", "{text}");
    assert!(text.contains("time budget"), "{text}");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(ask(&mut c, "svc", "inco", b""), "in a coroutine: pong");
    c.sendfor("svc", "yield", "t", 0, vec![vec![]]).unwrap();
    let d = expect(&mut c, DeliveryKind::Mailbox, T);
    assert_eq!(d.subject, "ERROR:yield");
    assert!(
        String::from_utf8_lossy(&d.content[0])
            .contains("attempt to yield from outside a coroutine"),
        "{:?}",
        String::from_utf8_lossy(&d.content[0])
    );
    std::fs::write(marks.path().join("go"), "").unwrap();
}

#[test]
fn a_stop_answers_parked_calls_and_their_requests_reply() {
    let b = broker();
    let front_dir = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    script(
        front_dir.path(),
        "wait",
        &format!(
            "io.open('{}/' .. alaska.tracker, 'w'):close() \
             local r, e = alaska.call('nobody-here', 'x', '', {{timeout = 20000}}) \
             if alaska.tracker == 'w2' then while true do end end return 'ended: ' .. e",
            marks.path().display()
        ),
    );
    let w = Worker::start(b.endpoint(), front_dir.path(), |o, p| {
        o.shutdown_timeout = Duration::from_secs(1);
        p.size = 1;
        p.timeout = Duration::from_secs(30);
        p.reach = reach(|c| c.call_max_timeout = Duration::from_secs(30));
    });
    let mut c = client(b.endpoint(), "producer");
    ready_on(&mut c, front_dir.path(), "svc");
    for i in 0..3 {
        c.sendfor("svc", "wait", &format!("w{i}"), 0, vec![vec![]])
            .unwrap();
    }
    for i in 0..3 {
        wait_file_exists(&marks.path().join(format!("w{i}")));
    }
    // Stopping is bounded by the shutdown timeout, never by the calls'.
    let t0 = Instant::now();
    w.stop().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    // Two end as their scripts say. The third loops after its call fails:
    // it gets the shutdown timeout (the stop above ended in time), not the
    // rest of its 30 s budget, and goes back to the broker unconfirmed.
    let mut got: Vec<(String, String)> = (0..2)
        .map(|_| {
            let d = expect(&mut c, DeliveryKind::Mailbox, T);
            (
                d.tracker,
                String::from_utf8_lossy(&d.content[0]).into_owned(),
            )
        })
        .collect();
    got.sort();
    for (t, text) in &got {
        assert_eq!(
            text, "ended: alaska.call to nobody-here/x: the worker is stopping",
            "{t}"
        );
    }
    assert_eq!((got[0].0.as_str(), got[1].0.as_str()), ("w0", "w1"));
    // The next worker of the service gets it.
    script(
        front_dir.path(),
        "wait",
        "return 'again ' .. alaska.tracker",
    );
    let _w2 = worker(b.endpoint(), front_dir.path(), "svc", 1, reach(|_| {}));
    let d = expect(&mut c, DeliveryKind::Mailbox, T);
    assert_eq!(
        (d.tracker.as_str(), &d.content[0][..]),
        ("w2", &b"again w2"[..])
    );
}

#[test]
fn a_script_reaching_alaska_call_indirectly_parks_from_its_second_request() {
    let b = broker();
    let front_dir = tempfile::tempdir().unwrap();
    let back_dir = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    holding_backend(back_dir.path(), marks.path());
    // The text never names the function: the VM learns it at the first call.
    script(
        front_dir.path(),
        "front",
        "local f = alaska['cal' .. 'l'] return (f('backend', alaska.frames[2] or 'hold', alaskaContext, {timeout = 8000}))",
    );
    let _f = worker(
        b.endpoint(),
        front_dir.path(),
        "svc",
        1,
        reach(|c| c.call_timeout = Duration::from_secs(8)),
    );
    let _k = worker(b.endpoint(), back_dir.path(), "backend", 6, reach(|_| {}));
    let mut c = client(b.endpoint(), "producer");
    ready_on(&mut c, front_dir.path(), "svc");
    ready_on(&mut c, back_dir.path(), "backend");
    // The first waits in place (and works).
    c.sendfor(
        "svc",
        "front",
        "t",
        0,
        vec![b"x".to_vec(), b"ping".to_vec()],
    )
    .unwrap();
    let d = expect(&mut c, DeliveryKind::Mailbox, T);
    assert_eq!(d.content[0], b"pong".to_vec());
    // From then on its requests park: five wait at once on the one VM.
    for i in 0..5 {
        c.sendfor(
            "svc",
            "front",
            &format!("w{i}"),
            0,
            vec![format!("{i}").into_bytes()],
        )
        .unwrap();
    }
    for i in 0..5 {
        wait_file_exists(&marks.path().join(format!("started-{i}")));
    }
    std::fs::write(marks.path().join("go"), "").unwrap();
    let got = sorted_replies(&mut c, 5);
    assert_eq!(
        got,
        (0..5).map(|i| format!("released {i}")).collect::<Vec<_>>()
    );
}

#[test]
fn schedule_and_delayed_forward_from_scripts_and_refused_by_the_real_malamute() {
    for b in all_brokers("alaska.schedule") {
        let name = b.name();
        let ours = matches!(b, AnyBroker::Ours(_));
        let front_dir = tempfile::tempdir().unwrap();
        let back_dir = tempfile::tempdir().unwrap();
        script(
            front_dir.path(),
            "later",
            "local ok, err = alaska.schedule('backend', 'note', 'hello ' .. alaskaContext, 1500) return tostring(ok) .. ' ' .. tostring(err)",
        );
        script(
            front_dir.path(),
            "fwd",
            "return alaska.forward('backend', 'upper', nil, { delay = 1000 })",
        );
        script(
            back_dir.path(),
            "note",
            "sendTo('note', alaskaContext, 'notes') return 'noted'",
        );
        script(
            back_dir.path(),
            "upper",
            "return string.upper(alaskaContext)",
        );
        let _f = worker(b.endpoint(), front_dir.path(), "svc", 2, reach(|_| {}));
        let _k = worker(b.endpoint(), back_dir.path(), "backend", 2, reach(|_| {}));
        let mut c = client(b.endpoint(), &format!("producer-{}", unique()));
        let mut notes = client(b.endpoint(), "notes");
        ready_on(&mut c, front_dir.path(), "svc");
        ready_on(&mut c, back_dir.path(), "backend");
        let t0 = Instant::now();
        let got = ask(&mut c, "svc", "later", b"ada");
        if !ours {
            assert_eq!(
                got,
                "nil alaska.schedule: the broker does not hold delayed requests (delay/1: the \
                 real Malamute has no such feature; use alaska-broker)",
                "{name}"
            );
            c.sendfor("svc", "fwd", "t", 0, vec![b"x".to_vec()])
                .unwrap();
            let d = expect(&mut c, DeliveryKind::Mailbox, T);
            assert_eq!(d.subject, "ERROR:fwd", "{name}");
            let text = String::from_utf8_lossy(&d.content[0]).into_owned();
            assert!(
                text.contains("delayed forward to backend/upper refused"),
                "{text}"
            );
            continue;
        }
        assert_eq!(got, "true nil", "{name}");
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the reply does not wait"
        );
        let d = expect(&mut notes, DeliveryKind::Mailbox, T);
        let took = t0.elapsed();
        assert_eq!(d.content[0], b"hello ada".to_vec());
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
            "{took:?}"
        );
        // A delayed forward: the original requester gets the next stage's
        // reply, a second later.
        let t0 = Instant::now();
        assert_eq!(ask(&mut c, "svc", "fwd", b"late"), "LATE");
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(1000) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
}

/// Starts the `alaska` binary in `dir` with `cfg`; returns it and the
/// address its HTTP listener serves on (read from its log).
fn spawn_alaska(dir: &Path, cfg: &str) -> (common::bin::Running, String) {
    use std::io::BufRead;
    std::fs::write(dir.join("alaska.cfg"), cfg).unwrap();
    let mut child = common::bin::alaska(dir)
        .args(["-c", "alaska.cfg", "-f", "--no-embedded-broker"])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let running = common::bin::Running(child);
    let addr = loop {
        let line = rx
            .recv_timeout(T)
            .expect("a line saying where HTTP is served");
        if let Some(rest) = line.split("serving http://").nth(1) {
            break rest.split(':').take(2).collect::<Vec<_>>().join(":");
        }
    };
    (running, addr)
}

/// `alaska_worker_script_calls_total{kind, result}` from `/metrics`.
fn calls_metric(addr: &str, kind: &str, result: &str) -> u64 {
    let text = ureq::get(format!("http://{addr}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let want = format!("alaska_worker_script_calls_total{{kind=\"{kind}\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(want.as_str()))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn the_binary_reads_the_keys_and_counts_calls_including_late_replies() {
    let b = broker();
    let front_dir = tempfile::tempdir().unwrap();
    let back_dir = tempfile::tempdir().unwrap();
    let srv = app();
    script(
        front_dir.path(),
        "late",
        "local r, e = alaska.call('backend', 'slow', '') return tostring(r) .. ' ' .. e",
    );
    script(
        front_dir.path(),
        "web",
        &format!(
            "local r = alaska.http{{ url = '{}' }} local _, e = alaska.http{{ url = 'http://127.0.0.2:1/' }} return r.status .. ' ' .. e",
            srv.url("/w")
        ),
    );
    script(
        back_dir.path(),
        "slow",
        "alaska.sleep(600) return 'too late'",
    );
    let cfg = common::bin::config(
        b.endpoint(),
        front_dir.path(),
        "    lua\n        call\n            timeout = \"200ms\"\n        http\n            allow = \"127.0.0.1\"\n    http\n        listen = \"127.0.0.1:0\"\n",
    );
    let (_alaska, addr) = spawn_alaska(front_dir.path(), &cfg);
    let _k = worker(b.endpoint(), back_dir.path(), "backend", 2, reach(|_| {}));
    let mut c = client(b.endpoint(), "producer");
    ready_on(&mut c, front_dir.path(), "svc");
    ready_on(&mut c, back_dir.path(), "backend");
    assert_eq!(
        ask(&mut c, "svc", "late", b""),
        "nil alaska.call to backend/slow: timeout: no reply within 200 ms (is a worker offering backend?)"
    );
    // The reply comes 400 ms after its caller stopped waiting: counted late.
    let deadline = Instant::now() + T;
    while calls_metric(&addr, "call", "late") < 1 {
        assert!(
            Instant::now() < deadline,
            "the late reply was never counted"
        );
        std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
    }
    assert_eq!(calls_metric(&addr, "call", "timeout"), 1);
    assert_eq!(
        ask(&mut c, "svc", "web", b""),
        "201 alaska.http: 127.0.0.2:1 is not in worker/lua/http/allow (scripts may reach only the hosts listed there)"
    );
    assert_eq!(calls_metric(&addr, "http", "ok"), 1);
    assert_eq!(calls_metric(&addr, "http", "refused"), 1);
}

#[test]
fn a_bad_allow_list_or_ca_file_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, key) in [
        (
            "    lua\n        http\n            allow = \"http://example.com\"\n",
            "worker/lua/http/allow",
        ),
        (
            "    lua\n        http\n            ca = \"/nonexistent/ca.pem\"\n",
            "worker/lua/http/ca",
        ),
    ] {
        let cfg = common::bin::config(&common::bin::free_endpoint(), dir.path(), extra);
        std::fs::write(dir.path().join("bad.cfg"), cfg).unwrap();
        let out = common::bin::alaska(dir.path())
            .args(["-c", "bad.cfg", "-f", "--no-embedded-broker"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}: started anyway");
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn http_on_the_dispatchers_own_vm_does_not_stall() {
    // One VM: every request runs on the dispatcher's thread, whose HTTP
    // requests run on a thread of their own that must wake the dispatcher
    // (a missed wake-up costs a whole 100 ms slice each).
    let (srv, mut c, _setup) = http_setup(1);
    let t0 = Instant::now();
    for i in 0..20 {
        let got = http_ask(
            &mut c,
            serde_json::json!({"url": srv.url(&format!("/n{i}"))}),
        );
        assert_eq!(got, format!("201|none|a=1, b=2|GET /n{i} "));
    }
    // Twenty stalls would be 2 s; a request on loopback takes about a ms.
    assert!(
        t0.elapsed() < Duration::from_millis(1900),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn one_vm_parks_ten_slow_http_requests_at_once() {
    let b = broker();
    let srv = app();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "get", HTTP_SCRIPT);
    let _w = Worker::start(b.endpoint(), dir.path(), |o, p| {
        o.policy.attempts = 1;
        p.size = 1;
        p.timeout = Duration::from_secs(10);
        p.reach = reach(|c| c.http_allow = HostPattern::parse_list("127.0.0.1").unwrap());
    });
    let mut c = client(b.endpoint(), "producer");
    ready_on(&mut c, dir.path(), "svc");
    let t0 = Instant::now();
    for i in 0..10 {
        let req = serde_json::json!({"url": srv.url("/slow"), "timeout": 8000});
        c.sendfor(
            "svc",
            "get",
            &format!("s{i}"),
            0,
            vec![req.to_string().into_bytes()],
        )
        .unwrap();
    }
    let deadline = Instant::now() + T;
    while srv.seen().iter().filter(|s| s.path == "/slow").count() < 10 {
        assert!(
            Instant::now() < deadline,
            "the ten requests never all reached the server"
        );
        std::thread::sleep(Duration::from_millis(5)); // bounded poll (deadline above)
    }
    // All ten wait on the server at once, on the worker's single VM.
    c.sendfor("svc", "ping", "quick", 0, vec![vec![]]).unwrap();
    let d = expect(&mut c, DeliveryKind::Mailbox, T);
    assert_eq!(d.tracker, "quick");
    for _ in 0..10 {
        let d = expect(&mut c, DeliveryKind::Mailbox, T);
        assert_eq!(d.content[0], b"200|-|-|slow".to_vec());
    }
    // One after the other they would take 20 s.
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
}

#[test]
fn hostile_arguments_get_clear_errors_and_the_vm_keeps_serving() {
    use common::pool::{text, Harness};
    let mut h = Harness::with(1, |p| {
        p.reach = reach(|c| c.http_allow = HostPattern::parse_list("*").unwrap());
    });
    let cases: &[(&str, &str)] = &[
        // Each script returns what it saw; a raised error is the request's.
        ("return tostring(select(2, pcall(alaska.call, string.rep('x', 300), 's', '')))", "a string of 1 to 255 bytes"),
        ("return tostring(select(2, pcall(alaska.call, 'a', 's', {{}})))", "frame 1 is not a string"),
        ("return tostring(select(2, pcall(alaska.call, 'a', 's', '', {timeout = -1})))", "0 or more"),
        ("return tostring(select(2, pcall(alaska.call, 'a', 's', '', 'x')))", "options table or nil"),
        ("return tostring(select(2, alaska.call('a', 's', '')))", "no broker connection"),
        ("return tostring(select(2, pcall(alaska.http, 'http://x/')))", "a table {method=, url="),
        ("return tostring(select(2, pcall(alaska.http, {url = 'http://127.0.0.1:1/', method = 'GE T'})))", "not an HTTP method"),
        ("return tostring(select(2, pcall(alaska.http, {url = 'http://127.0.0.1:1/', headers = {1}})))", "headers must map names"),
        ("return tostring(select(2, alaska.http{url = 'http://127.0.0.1:1/', headers = {['bad name'] = 'x'}}))", "bad request"),
        ("return tostring(select(2, alaska.http{url = 'http://127.0.0.1:1/'}))", "alaska.http 127.0.0.1:1"),
        ("return tostring(select(2, pcall(alaska.schedule, 'a', 's', '', -5)))", "milliseconds, 0 or more"),
        ("return tostring(select(2, alaska.schedule('a', 's', '', 5)))", "does not hold delayed requests"),
        ("return tostring(select(2, pcall(alaska.forward, 'a', 's', nil, {delay = 'soon'})))", "milliseconds expected"),
    ];
    for (i, (body, want)) in cases.iter().enumerate() {
        let name = format!("h{i}");
        h.script(&name, body);
        let c = h.run(&name, "");
        let got = match &c.run.result {
            Ok(_) => text(&c.reply()),
            Err(e) => e.message.clone(),
        };
        assert!(got.contains(want), "{body}: {got}");
    }
    h.script("ok", "return 'still serving'");
    assert_eq!(text(&h.run("ok", "").reply()), "still serving");
}

#[test]
fn a_script_cannot_reach_the_workers_coroutine() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    // Named alaska.call: the request runs in the worker's coroutine.
    script(
        dir.path(),
        "peek",
        r#"
local _ = alaska.call
local co, main = coroutine.running()
local ok, e = coroutine.resume(co)
return tostring(main) .. ' ' .. tostring(ok) .. ' ' .. tostring(e) .. ' ' .. tostring(coroutine.isyieldable())
"#,
    );
    let _w = worker(b.endpoint(), dir.path(), "svc", 1, reach(|_| {}));
    let mut c = client(b.endpoint(), "producer");
    ready_on(&mut c, dir.path(), "svc");
    let got = ask(&mut c, "svc", "peek", b"");
    assert_eq!(got, "true false cannot resume non-suspended coroutine true");
    // And the VM still parks and serves.
    assert_eq!(ask(&mut c, "svc", "ping", b""), "pong");
}

#[test]
fn a_worker_calling_its_own_service_with_room_does_not_deadlock() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "outer",
        "local r, e = alaska.call('svc', 'inner', alaskaContext, {timeout = 4000}) return r or e",
    );
    script(dir.path(), "inner", "return 'inner saw ' .. alaskaContext");
    // Two VMs and ten callers at once: the dispatcher's VM parks the
    // callers it runs and serves the inner requests meanwhile.
    let _w = worker(b.endpoint(), dir.path(), "svc", 2, reach(|_| {}));
    let mut c = client(b.endpoint(), "producer");
    ready_on(&mut c, dir.path(), "svc");
    for i in 0..10 {
        c.sendfor(
            "svc",
            "outer",
            &format!("o{i}"),
            0,
            vec![format!("{i}").into_bytes()],
        )
        .unwrap();
    }
    let got = sorted_replies(&mut c, 10);
    let mut want: Vec<String> = (0..10).map(|i| format!("inner saw {i}")).collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_refused_call_and_a_lost_broker_each_return_nil_and_why() {
    // A queue of one per service: a second call to a service nobody
    // offers finds its queue full and is refused by the broker.
    let b = broker_with(|cfg| {
        cfg.service_queue_limit = alaska::broker::Limits {
            messages: 1,
            bytes: 1 << 20,
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let marks = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "call",
        &format!(
            "local dir = '{}' io.open(dir .. '/started-' .. alaska.tracker, 'w'):close() \
             local r, e = alaska.call('nobody-here', 'x', '', {{timeout = 4000}}) \
             local f = io.open(dir .. '/' .. alaska.tracker, 'w') f:write(e) f:close() return e",
            marks.path().display()
        ),
    );
    let _w = worker(b.endpoint(), dir.path(), "svc", 2, reach(|_| {}));
    let mut c = client(b.endpoint(), "producer");
    ready_on(&mut c, dir.path(), "svc");
    // One at a time (the queue of svc holds one too).
    c.sendfor("svc", "call", "first", 0, vec![vec![]]).unwrap();
    wait_file_exists(&marks.path().join("started-first"));
    c.sendfor("svc", "call", "second", 0, vec![vec![]]).unwrap();
    // The broker's refusal names no tracker: one of the two waiting calls
    // is answered with it (the oldest), the other still waits.
    let d = expect(&mut c, DeliveryKind::Mailbox, T);
    let text = String::from_utf8_lossy(&d.content[0]).into_owned();
    assert!(
        text.starts_with(
            "alaska.call to nobody-here/x: refused by the broker: service nobody-here queue full"
        ),
        "{text}"
    );
    // The broker goes away while the other still waits: its call ends.
    b.stop();
    let other = marks.path().join(if d.tracker == "first" {
        "second"
    } else {
        "first"
    });
    let deadline = Instant::now() + T;
    while std::fs::read_to_string(&other)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the waiting call never ended");
        std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
    }
    assert_eq!(
        std::fs::read_to_string(&other).unwrap(),
        "alaska.call to nobody-here/x: the broker connection was lost"
    );
}
