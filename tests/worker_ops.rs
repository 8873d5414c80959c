//! The worker's operations end to end, through real HTTP: `/metrics` parsed
//! by a strict Prometheus text parser with counters that move by exactly
//! the requests sent, `/v1/status`, `/health` following the broker,
//! maintenance against a scripted broker (with and without `maint/1`) and
//! with two workers on real brokers (the project's and, where installed,
//! the real Malamute), and systemd notifications from the real `alaska` and
//! `alaska-broker` binaries to a fake `NOTIFY_SOCKET`, including the
//! silence of the watchdog while the dispatcher is wedged in a C call.

mod common;
mod ops_support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use alaska::broker::{Broker, BrokerConfig, BrokerHandle};
use alaska::mlm::{ClientOptions, DeliveryKind, Message, Status};
use alaska::ops::http::HttpServer;
use alaska::ops::notify::Systemd;
use alaska::worker::{DispatcherOptions, PoolConfig, WorkerOps};
use common::{all_brokers, broker, broker_with, client, expect, script, unique};
use ops_support::prom::{self, Scrape};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

fn get(a: &ureq::Agent, url: &str) -> (u16, String) {
    let mut r = a.get(url).call().expect("HTTP GET");
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn post(a: &ureq::Agent, url: &str, body: &str) -> (u16, String) {
    let mut r = a.post(url).send(body.as_bytes()).expect("HTTP POST");
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An in-process worker whose operations are served over real HTTP.
struct OpsWorker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
    http: Option<HttpServer>,
    base: String,
}

impl OpsWorker {
    fn start(
        endpoint: &str,
        dir: &Path,
        tweak: impl FnOnce(&mut DispatcherOptions, &mut PoolConfig),
    ) -> OpsWorker {
        let mut client = ClientOptions::new(endpoint, format!("worker-{}", unique()));
        client.timeout = Duration::from_secs(3);
        client.heartbeat = Duration::from_millis(200);
        let mut opts = DispatcherOptions::new(client, "svc");
        opts.shutdown_timeout = Duration::from_secs(5);
        let mut pool = PoolConfig {
            size: 2,
            scripts_dir: dir.to_path_buf(),
            timeout: Duration::from_secs(5),
            memory: 16 << 20,
            ..PoolConfig::default()
        };
        tweak(&mut opts, &mut pool);
        let ops = WorkerOps::new(Systemd::default()).unwrap();
        let http = ops.serve("127.0.0.1:0").expect("HTTP server starts");
        let base = format!("http://{}", http.local_addr());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("test-worker".into())
            .spawn(move || {
                alaska::worker::run_with(opts, pool, flag, ops).map_err(|e| e.to_string())
            })
            .unwrap();
        OpsWorker {
            stop,
            thread: Some(thread),
            http: Some(http),
            base,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn health(&self, a: &ureq::Agent) -> (u16, String) {
        get(a, &self.url("/health"))
    }

    fn wait_health(&self, a: &ureq::Agent, status: u16, text: &str) {
        let want = (status, format!("{text}\n"));
        wait_for(&format!("/health {want:?}"), || self.health(a) == want);
    }

    fn scrape(&self, a: &ureq::Agent) -> Scrape {
        let (status, text) = get(a, &self.url("/metrics"));
        assert_eq!(status, 200);
        prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn status(&self, a: &ureq::Agent) -> Value {
        let (status, text) = get(a, &self.url("/v1/status"));
        assert_eq!(status, 200, "{text}");
        json(&text)
    }

    fn maintenance(&self, a: &ureq::Agent, on: bool) -> Value {
        let (status, text) = post(
            a,
            &self.url("/v1/maintenance"),
            &format!("{{\"on\": {on}}}"),
        );
        assert_eq!(status, 200, "{text}");
        let v = json(&text);
        assert_eq!(v["maintenance"], on, "{v}");
        assert_eq!(v["applied"], true, "{v}");
        v
    }

    fn stop(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        let r = self.thread.take().unwrap().join().expect("worker thread");
        if let Some(h) = self.http.take() {
            h.stop();
        }
        r
    }
}

impl Drop for OpsWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ----- metrics and status ------------------------------------------------

#[test]
fn metrics_move_by_exactly_the_requests_sent() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return alaskaContext");
    script(dir.path(), "fail", "error('boom')");
    script(dir.path(), "gone", "return alaska.drop()");
    script(
        dir.path(),
        "note",
        "sendTo('box', 'n', alaskaContext) send('s', alaskaContext) return 'ok'",
    );
    let w = OpsWorker::start(b.endpoint(), dir.path(), |_, _| {});
    let a = agent();
    let mut c = client(b.endpoint(), "producer");
    common::ready(&mut c, dir.path());
    w.wait_health(&a, 200, "serving");

    let before = w.scrape(&a);
    for (family, kind) in [
        ("alaska_worker_requests_total", "counter"),
        ("alaska_worker_request_duration_seconds", "histogram"),
        ("alaska_worker_requests_in_flight", "gauge"),
        ("alaska_worker_vm_memory_bytes", "gauge"),
    ] {
        assert_eq!(before.type_of(family), Some(kind), "{family}");
    }
    for i in 0..7 {
        let d = common::request(&mut c, "echo", format!("e{i}").as_bytes(), WAIT);
        assert_eq!(d.content, vec![format!("e{i}").into_bytes()]);
    }
    for _ in 0..3 {
        let d = common::request(&mut c, "fail", b"f", WAIT);
        assert_eq!(d.subject, "ERROR:fail");
    }
    for _ in 0..2 {
        c.sendfor("svc", "gone", "t", 0, vec![b"g".to_vec()])
            .unwrap();
    }
    for _ in 0..4 {
        let d = common::request(&mut c, "note", b"n", WAIT);
        assert_eq!(d.content, vec![b"ok".to_vec()]);
    }
    let received = |s: &Scrape| s.value("alaska_worker_requests_received_total", &[]);
    wait_for("every request received and finished", || {
        let s = w.scrape(&a);
        received(&s) - received(&before) == 16.0
            && s.value("alaska_worker_requests_in_flight", &[]) == 0.0
    });
    let after = w.scrape(&a);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let requests = |subject: &str, outcome: &str| {
        delta(
            "alaska_worker_requests_total",
            &[("subject", subject), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("echo", "done"), 7.0);
    assert_eq!(requests("fail", "error"), 3.0);
    assert_eq!(requests("gone", "drop"), 2.0);
    assert_eq!(requests("note", "done"), 4.0);
    assert_eq!(requests("echo", "error"), 0.0);
    assert_eq!(
        delta(
            "alaska_worker_request_errors_total",
            &[("subject", "fail"), ("kind", "runtime")]
        ),
        3.0
    );
    assert_eq!(
        delta(
            "alaska_worker_request_duration_seconds_count",
            &[("subject", "echo")]
        ),
        7.0
    );
    assert_eq!(
        delta(
            "alaska_worker_request_duration_seconds_bucket",
            &[("subject", "echo"), ("le", "+Inf")]
        ),
        7.0
    );
    let sends = |kind: &str| delta("alaska_worker_sends_total", &[("kind", kind)]);
    assert_eq!(sends("reply"), 11.0);
    assert_eq!(sends("error_reply"), 3.0);
    assert_eq!(sends("error_report"), 3.0);
    assert_eq!(sends("mail"), 4.0);
    assert_eq!(sends("stream"), 4.0);
    assert_eq!(sends("forward"), 0.0);
    assert_eq!(delta("alaska_worker_dead_letters_total", &[]), 3.0);
    assert_eq!(after.value("alaska_worker_vms", &[]), 2.0);
    assert!(after.value("alaska_worker_vm_memory_bytes", &[]) > 0.0);
    assert_eq!(after.value("alaska_worker_broker_connected", &[]), 1.0);
    assert_eq!(after.value("alaska_worker_offering", &[]), 1.0);
    assert_eq!(after.value("alaska_worker_maintenance", &[]), 0.0);
    // Five scripts ran: ping (the readiness probe) and the four above.
    assert_eq!(after.value("alaska_worker_scripts_loaded", &[]), 5.0);

    let s = w.status(&a);
    assert_eq!(s["state"], "serving");
    assert_eq!(s["service"]["address"], "svc");
    assert_eq!(s["requests"]["by_subject"]["echo"]["done"], 7);
    assert_eq!(s["requests"]["by_subject"]["fail"]["errors"]["runtime"], 3);
    assert_eq!(s["requests"]["in_flight"], 0);
    assert_eq!(s["vms"]["count"], 2);
    assert_eq!(s["connections"][0]["endpoint"], b.endpoint());
    assert_eq!(s["connections"][0]["state"], "connected");
    assert_eq!(s["connections"][0]["acknowledged"], true);
    let scripts = s["scripts"].as_array().unwrap();
    let echo = scripts.iter().find(|x| x["subject"] == "echo").unwrap();
    let mtime = std::fs::metadata(dir.path().join("echo.lua"))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (echo["mtime"].as_f64().unwrap() - mtime).abs() < 1e-3,
        "{echo}"
    );
    w.stop().unwrap();
}

#[test]
fn a_script_changed_on_disk_shows_its_new_version() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let w = OpsWorker::start(b.endpoint(), dir.path(), |_, p| p.size = 1);
    let a = agent();
    let mut c = client(b.endpoint(), "producer");
    common::ready(&mut c, dir.path());
    script(dir.path(), "v", "return 'one'");
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    let f = std::fs::File::options()
        .write(true)
        .open(dir.path().join("v.lua"))
        .unwrap();
    f.set_modified(old).unwrap();
    assert_eq!(common::request(&mut c, "v", b"", WAIT).content, [b"one"]);
    script(dir.path(), "v", "return 'two'");
    assert_eq!(common::request(&mut c, "v", b"", WAIT).content, [b"two"]);
    let s = w.status(&a);
    let v = s["scripts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["subject"] == "v")
        .cloned()
        .unwrap();
    assert_eq!(v["compiles"], 2, "{v}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now - v["mtime"].as_f64().unwrap() < 30.0,
        "the new version's mtime, not the old one's: {v}"
    );
}

// ----- health --------------------------------------------------------------

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
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn health_is_503_while_the_broker_is_down_and_200_when_it_is_back() {
    let endpoint = common::bin::free_endpoint();
    let b = broker_with(|c| c.endpoint = endpoint.clone());
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return alaskaContext");
    let w = OpsWorker::start(&endpoint, dir.path(), |_, _| {});
    let a = agent();
    w.wait_health(&a, 200, "serving");
    let before = w.scrape(&a);
    assert_eq!(before.value("alaska_worker_broker_connected", &[]), 1.0);

    b.stop();
    w.wait_health(&a, 503, "reconnecting");
    let s = w.scrape(&a);
    assert_eq!(s.value("alaska_worker_broker_connected", &[]), 0.0);
    assert_eq!(s.value("alaska_worker_offering", &[]), 0.0);
    assert_eq!(w.status(&a)["connections"][0]["state"], "lost");

    let b = restart(&endpoint);
    w.wait_health(&a, 200, "serving");
    let mut c = client(b.endpoint(), "producer");
    assert_eq!(
        common::request(&mut c, "echo", b"back", WAIT).content,
        [b"back"]
    );
    let s = w.scrape(&a);
    assert_eq!(
        s.value("alaska_worker_broker_reconnects_total", &[])
            - before.value("alaska_worker_broker_reconnects_total", &[]),
        1.0
    );
    w.stop().unwrap();
}

// ----- maintenance against a scripted broker ---------------------------------

/// A broker played by the test: a ROUTER socket that answers OPEN with
/// `reason`, registrations and CLOSE with OK, PING with PONG, records
/// everything, and sends what it is told to the last client it heard.
struct Peer {
    endpoint: String,
    seen: Arc<Mutex<Vec<Message>>>,
    inject: crossbeam_channel::Sender<Message>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Peer {
    fn start(reason: &'static str) -> Peer {
        let ctx = zmq::Context::new();
        let router = ctx.socket(zmq::ROUTER).unwrap();
        router.set_linger(0).unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = router.get_last_endpoint().unwrap().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (inject, injected) = crossbeam_channel::unbounded::<Message>();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("scripted-broker".into())
            .spawn(move || {
                let _ctx = ctx;
                let mut last: Option<Vec<u8>> = None;
                let send = |id: &[u8], m: &Message| {
                    let mut all = vec![id.to_vec()];
                    all.extend(m.encode().unwrap());
                    router.send_multipart(all, 0).unwrap();
                };
                while !stop2.load(Ordering::Relaxed) {
                    while let Ok(m) = injected.try_recv() {
                        if let Some(id) = &last {
                            send(id, &m);
                        }
                    }
                    if router.poll(zmq::POLLIN, 10).unwrap() == 0 {
                        continue;
                    }
                    let mut frames = router.recv_multipart(0).unwrap();
                    let id = frames.remove(0);
                    last = Some(id.clone());
                    let msg = Message::decode_owned(frames).expect("a valid message");
                    let ok = |r: &str| Message::Ok {
                        status: Status::new(200, r),
                    };
                    let answer = match &msg {
                        Message::ConnectionOpen { .. } => Some(ok(reason)),
                        Message::ConnectionPing => Some(Message::ConnectionPong),
                        Message::ServiceOffer { .. }
                        | Message::StreamWrite { .. }
                        | Message::StreamRead { .. }
                        | Message::ConnectionClose => Some(ok("")),
                        _ => None,
                    };
                    seen2.lock().unwrap().push(msg);
                    if let Some(a) = answer {
                        send(&id, &a);
                    }
                }
            })
            .unwrap();
        Peer {
            endpoint,
            seen,
            inject,
            stop,
            thread: Some(thread),
        }
    }

    /// What it received, pings left out.
    fn seen(&self) -> Vec<Message> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|m| **m != Message::ConnectionPing)
            .cloned()
            .collect()
    }

    fn wait_for(&self, what: &str, pred: impl Fn(&[Message]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !pred(&self.seen()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:#?}",
                self.seen()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn is_offer(m: &Message) -> bool {
    matches!(m, Message::ServiceOffer { .. })
}

fn is_open(m: &Message) -> bool {
    matches!(m, Message::ConnectionOpen { .. })
}

fn confirm(tracker: &str) -> Message {
    Message::Confirm {
        tracker: tracker.into(),
        status: Status::new(200, ""),
    }
}

/// What the peer saw after the `n`th CONNECTION OPEN (1-based), OPEN
/// included.
fn since_open(seen: &[Message], n: usize) -> Vec<Message> {
    let at = seen
        .iter()
        .enumerate()
        .filter(|(_, m)| is_open(m))
        .nth(n - 1)
        .map(|(i, _)| i)
        .unwrap_or(seen.len());
    seen[at..].to_vec()
}

fn deliver(tracker: &str, content: &str) -> Message {
    Message::ServiceDeliver {
        sender: "requester".into(),
        address: "svc".into(),
        subject: "echo".into(),
        tracker: tracker.into(),
        content: vec![content.as_bytes().to_vec()],
    }
}

fn reply_to(m: &Message, tracker: &str) -> bool {
    matches!(m, Message::MailboxSend { address, tracker: t, .. } if address == "requester" && t == tracker)
}

#[test]
fn maintenance_on_a_maint1_broker_is_one_command_and_what_arrives_still_runs() {
    let peer = Peer::start("alaska-broker ack/1 maint/1");
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return alaskaContext");
    let w = OpsWorker::start(&peer.endpoint, dir.path(), |_, _| {});
    let a = agent();
    peer.wait_for("the offer", |s| s.iter().any(is_offer));
    w.wait_health(&a, 200, "serving");

    let v = w.maintenance(&a, true);
    assert_eq!(v["connections"][0]["maintenance"]["by_broker"], true, "{v}");
    peer.wait_for("maintenance:on", |s| s.contains(&confirm("maintenance:on")));
    let seen = peer.seen();
    assert!(
        !seen.contains(&Message::ConnectionClose),
        "the connection stays: {seen:?}"
    );
    assert_eq!(seen.iter().filter(|m| is_open(m)).count(), 1);
    w.wait_health(&a, 503, "maintenance");
    assert_eq!(w.scrape(&a).value("alaska_worker_maintenance", &[]), 1.0);

    // A request the broker sent before it read our command is run and
    // answered as usual, then confirmed.
    peer.inject.send(deliver("t1", "in maintenance")).unwrap();
    peer.wait_for("the reply and its confirmation", |s| {
        let r = s.iter().position(|m| reply_to(m, "t1"));
        let c = s.iter().position(|m| *m == confirm("1"));
        matches!((r, c), (Some(r), Some(c)) if r < c)
    });
    let reply = peer.seen().into_iter().find(|m| reply_to(m, "t1")).unwrap();
    assert!(
        matches!(&reply, Message::MailboxSend { content, .. } if content == &[b"in maintenance".to_vec()]),
        "{reply:?}"
    );

    w.maintenance(&a, false);
    peer.wait_for("maintenance:off", |s| {
        s.contains(&confirm("maintenance:off"))
    });
    w.wait_health(&a, 200, "serving");

    // In maintenance when the broker forgets us: maintenance goes back
    // before the offer.
    w.maintenance(&a, true);
    peer.inject
        .send(Message::Error {
            status: Status::new(500, "command invalid"),
        })
        .unwrap();
    peer.wait_for("the replay", |s| since_open(s, 2).iter().any(is_offer));
    let replay = since_open(&peer.seen(), 2);
    assert!(matches!(replay[1], Message::Credit { .. }), "{replay:?}");
    assert_eq!(replay[2], confirm("maintenance:on"), "{replay:?}");
    assert!(is_offer(&replay[3]), "{replay:?}");
    w.stop().unwrap();
}

#[test]
fn maintenance_on_another_broker_withdraws_the_offer_and_resuming_offers_again() {
    // Answers OPEN as the reference Malamute does: no capabilities.
    let peer = Peer::start("");
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return alaskaContext");
    let w = OpsWorker::start(&peer.endpoint, dir.path(), |_, _| {});
    let a = agent();
    peer.wait_for("the offer", |s| s.iter().any(is_offer));
    w.wait_health(&a, 200, "serving");

    // A request in the worker's hands when maintenance starts.
    script(dir.path(), "slow", "alaska.sleep(500) return 'slow done'");
    peer.inject
        .send(Message::ServiceDeliver {
            sender: "requester".into(),
            address: "svc".into(),
            subject: "slow".into(),
            tracker: "t0".into(),
            content: vec![b"x".to_vec()],
        })
        .unwrap();
    wait_for("the slow request running", || {
        w.status(&a)["requests"]["in_flight"] == 1
    });
    let v = w.maintenance(&a, true);
    assert_eq!(
        v["connections"][0]["maintenance"]["by_broker"], false,
        "{v}"
    );
    let after = since_open(&peer.seen(), 1);
    let close = after
        .iter()
        .position(|m| *m == Message::ConnectionClose)
        .expect("CONNECTION CLOSE");
    assert!(is_open(&after[close + 1]), "{after:?}");
    w.wait_health(&a, 503, "maintenance");
    // What ran is answered over the new session.
    peer.wait_for("the slow request's reply", |s| {
        s.iter().any(|m| reply_to(m, "t0"))
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !since_open(&peer.seen(), 2).iter().any(is_offer),
        "no offer while in maintenance: {:?}",
        peer.seen()
    );
    assert_eq!(
        w.scrape(&a)
            .value("alaska_worker_broker_reconnects_total", &[]),
        0.0,
        "a withdrawal is not a reconnect"
    );

    w.maintenance(&a, false);
    peer.wait_for("the offer again", |s| since_open(s, 2).iter().any(is_offer));
    assert_eq!(peer.seen().iter().filter(|m| is_open(m)).count(), 2);
    w.wait_health(&a, 200, "serving");
    w.stop().unwrap();
}

#[test]
fn maintenance_asked_before_the_broker_answers_is_in_place_before_the_first_offer() {
    let endpoint = common::bin::free_endpoint();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return alaskaContext");
    let w = OpsWorker::start(&endpoint, dir.path(), |_, _| {});
    let a = agent();
    w.wait_health(&a, 503, "starting");
    let (status, text) = post(&a, &w.url("/v1/maintenance"), "{\"on\": true}");
    assert_eq!(status, 202, "{text}");
    assert_eq!(json(&text)["applied"], false);
    let b = broker_with(|c| c.endpoint = endpoint.clone());
    w.wait_health(&a, 503, "maintenance");
    // Nothing comes to it while in maintenance: requests wait.
    let mut c = client(b.endpoint(), "producer");
    c.sendfor("svc", "echo", "t", 0, vec![b"waited".to_vec()])
        .unwrap();
    common::expect_none(&mut c, DeliveryKind::Mailbox, Duration::from_millis(500));
    w.maintenance(&a, false);
    let d = expect(&mut c, DeliveryKind::Mailbox, WAIT);
    assert_eq!(d.content, [b"waited"]);
    w.stop().unwrap();
}

// ----- maintenance with two workers on real brokers ---------------------------

/// Sends `n` requests at once and collects every reply: which worker
/// answered each (the reply says), checking none is lost or duplicated.
fn burst(c: &mut alaska::mlm::Client, n: usize, tag: &str) -> (usize, usize) {
    for i in 0..n {
        c.sendfor("svc", "who", &format!("{tag}{i}"), 0, vec![b"?".to_vec()])
            .unwrap();
    }
    let mut trackers = HashSet::new();
    let (mut a, mut b) = (0, 0);
    while trackers.len() < n {
        let d = expect(c, DeliveryKind::Mailbox, WAIT);
        assert!(d.tracker.starts_with(tag), "{d:?}");
        assert!(trackers.insert(d.tracker.clone()), "twice: {d:?}");
        match d.content[0].as_slice() {
            b"A" => a += 1,
            b"B" => b += 1,
            other => panic!("{other:?}"),
        }
    }
    common::expect_none(c, DeliveryKind::Mailbox, Duration::from_millis(200));
    (a, b)
}

#[test]
fn two_workers_one_in_maintenance_the_other_serves_everything() {
    for broker in all_brokers("two_workers_one_in_maintenance") {
        let endpoint = broker.endpoint().to_string();
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        script(da.path(), "who", "return 'A'");
        script(db.path(), "who", "return 'B'");
        // The reference pushes every request at once: room for all of them
        // (beyond pool + backlog a pushed request is refused, by design).
        let roomy = |_: &mut DispatcherOptions, p: &mut PoolConfig| p.backlog = 256;
        let wa = OpsWorker::start(&endpoint, da.path(), roomy);
        let wb = OpsWorker::start(&endpoint, db.path(), roomy);
        let a = agent();
        wa.wait_health(&a, 200, "serving");
        wb.wait_health(&a, 200, "serving");
        let mut c = client(&endpoint, &format!("producer-{}", unique()));
        // Both offers registered: some request reached each.
        wait_for("both workers answering", || {
            let (x, y) = burst(&mut c, 20, "warm");
            x > 0 && y > 0
        });

        let v = wa.maintenance(&a, true);
        println!(
            "{}: maintenance {}",
            broker.name(),
            if v["connections"][0]["maintenance"]["by_broker"] == true {
                "by the broker (maint/1)"
            } else {
                "by withdrawing the offer"
            }
        );
        wa.wait_health(&a, 503, "maintenance");
        assert_eq!(burst(&mut c, 100, "m"), (0, 100), "{}", broker.name());

        wa.maintenance(&a, false);
        wa.wait_health(&a, 200, "serving");
        let mut spread = (0, 0);
        wait_for("requests spread again", || {
            let (x, y) = burst(&mut c, 100, "r");
            assert_eq!(x + y, 100);
            spread = (x, y);
            x > 0 && y > 0
        });
        println!("{}: after resuming: {spread:?}", broker.name());
        wa.stop().unwrap();
        wb.stop().unwrap();
    }
}

// ----- systemd, through the real binaries -------------------------------------

/// A Unix datagram socket standing in for systemd's.
struct FakeSystemd {
    sock: UnixDatagram,
    path: String,
    _dir: tempfile::TempDir,
    got: Vec<String>,
}

impl FakeSystemd {
    fn new() -> FakeSystemd {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        FakeSystemd {
            sock,
            path: path.to_str().unwrap().to_string(),
            _dir: dir,
            got: Vec::new(),
        }
    }

    /// The next notification within `within`.
    fn next(&mut self, within: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        let note = String::from_utf8_lossy(&buf[..n]).to_string();
        self.got.push(note.clone());
        Some(note)
    }

    /// Waits for a notification with the line `want`; returns it.
    fn expect(&mut self, want: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {want}; got {:?}", self.got);
            if let Some(note) = self.next(left) {
                if note.lines().any(|l| l == want) {
                    return note;
                }
            }
        }
    }

    /// Every notification during `d`.
    fn during(&mut self, d: Duration) -> Vec<String> {
        let until = Instant::now() + d;
        let mut v = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return v;
            }
            if let Some(n) = self.next(left) {
                v.push(n);
            }
        }
    }
}

/// A child killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        common::bin::wait_exit(&mut self.0, WAIT).expect("exits after SIGTERM")
    }
}

/// Starts `alaska` with `cfg` in `dir` under a fake systemd; returns it and
/// the address its HTTP endpoints are served on (from its log).
fn spawn_alaska(
    dir: &Path,
    cfg: &str,
    notify: &FakeSystemd,
    watchdog_usec: &str,
) -> (Running, String) {
    std::fs::write(dir.join("alaska.cfg"), cfg).unwrap();
    let mut child = common::bin::alaska(dir)
        .args(["-c", "alaska.cfg", "-f", "--no-embedded-broker"])
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", watchdog_usec)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let running = Running(child);
    let addr = loop {
        let line = rx
            .recv_timeout(WAIT)
            .expect("a line saying where HTTP is served");
        if let Some(rest) = line.split("serving http://").nth(1) {
            break rest.split(':').take(2).collect::<Vec<_>>().join(":");
        }
    };
    (running, addr)
}

fn worker_cfg(endpoint: &str, scripts: &Path, pool: usize) -> String {
    common::bin::config(
        endpoint,
        scripts,
        "    http\n        listen = \"127.0.0.1:0\"\n    shutdown\n        timeout = \"500ms\"\n",
    )
    .replace("size = \"4\"", &format!("size = \"{pool}\""))
}

#[test]
fn the_worker_binary_under_a_fake_systemd() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return alaskaContext");
    let mut systemd = FakeSystemd::new();
    let (mut child, addr) = spawn_alaska(
        dir.path(),
        &worker_cfg(b.endpoint(), dir.path(), 2),
        &systemd,
        "300000",
    );
    let ready = systemd.expect("READY=1");
    assert!(
        ready.contains(&format!("STATUS=serving svc (.*) on {}", b.endpoint())),
        "{ready}"
    );
    for _ in 0..3 {
        systemd.expect("WATCHDOG=1");
    }
    let a = agent();
    assert_eq!(
        get(&a, &format!("http://{addr}/health")),
        (200, "serving\n".into())
    );
    let mut c = client(b.endpoint(), "producer");
    assert_eq!(
        common::request(&mut c, "echo", b"via the binary", WAIT).content,
        [b"via the binary"]
    );
    let text = get(&a, &format!("http://{addr}/metrics")).1;
    let s = prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        s.value(
            "alaska_worker_requests_total",
            &[("subject", "echo"), ("outcome", "done")]
        ),
        1.0
    );
    assert!(child.terminate().success());
    let stopping = systemd.expect("STOPPING=1");
    assert!(stopping.contains("STATUS=stopping"), "{stopping}");
}

#[test]
fn no_watchdog_pings_while_the_dispatcher_is_wedged_in_a_c_call() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    // Lua's pattern matcher is C: no instruction hook runs inside it, so
    // neither the time budget nor the dispatcher's duty can.
    script(
        dir.path(),
        "wedge",
        "return string.find(string.rep('a', 40), string.rep('a?', 40) .. string.rep('a', 40) .. 'b')",
    );
    script(
        dir.path(),
        "busy",
        "local t = os.clock() while os.clock() - t < 1.5 do end return 'done'",
    );
    let mut systemd = FakeSystemd::new();
    // Pool size 1: the dispatcher's own VM runs every request.
    let (mut child, addr) = spawn_alaska(
        dir.path(),
        &worker_cfg(b.endpoint(), dir.path(), 1),
        &systemd,
        "200000",
    );
    systemd.expect("READY=1");
    let a = agent();
    let mut c = client(b.endpoint(), "producer");
    // A long Lua loop on the dispatcher's thread keeps the pings going
    // (its duty beats).
    c.sendfor("svc", "busy", "t", 0, vec![b"".to_vec()])
        .unwrap();
    let during_busy = systemd.during(Duration::from_millis(1000));
    let d = expect(&mut c, DeliveryKind::Mailbox, WAIT);
    assert_eq!(d.subject, "busy", "{d:?}");
    assert_eq!(d.content, [b"done"]);
    assert!(
        during_busy
            .iter()
            .filter(|n| n.as_str() == "WATCHDOG=1")
            .count()
            // About 10 in a second; a loaded machine may deliver fewer,
            // but a stopped dispatcher none.
            >= 3,
        "{during_busy:?}"
    );

    c.sendfor("svc", "wedge", "t", 0, vec![b"".to_vec()])
        .unwrap();
    wait_for("the wedge request received", || {
        let text = get(&a, &format!("http://{addr}/metrics")).1;
        prom::parse(&text)
            .unwrap()
            .value("alaska_worker_requests_received_total", &[])
            == 2.0
    });
    // A ping already decided may still come; then silence.
    systemd.during(Duration::from_millis(300));
    let wedged = systemd.during(Duration::from_millis(1200));
    assert!(
        !wedged.iter().any(|n| n.lines().any(|l| l == "WATCHDOG=1")),
        "pings while wedged: {wedged:?}"
    );
    // The HTTP thread still answers, but the watchdog is what tells.
    assert_eq!(get(&a, &format!("http://{addr}/health")).0, 200);
    drop(child.0.kill());
    let _ = child.0.wait();
}

/// Starts `alaska-broker` on a free port under a fake systemd.
fn spawn_broker(args: &[&str], notify: &FakeSystemd) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_alaska-broker"))
        .args(args)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "300000")
        .env("RUST_LOG", "info")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Running(child)
}

#[test]
fn the_broker_binary_under_a_fake_systemd() {
    let endpoint = common::bin::free_endpoint();
    let mut systemd = FakeSystemd::new();
    let mut child = spawn_broker(&["-e", &endpoint], &systemd);
    let ready = systemd.expect("READY=1");
    assert!(ready.contains(&endpoint), "{ready}");
    for _ in 0..3 {
        systemd.expect("WATCHDOG=1");
    }
    // It serves.
    let mut c = client(&endpoint, "me");
    c.sendto("me", "s", "", 0, vec![b"to myself".to_vec()])
        .unwrap();
    assert_eq!(
        expect(&mut c, DeliveryKind::Mailbox, WAIT).content,
        [b"to myself"]
    );
    drop(c);
    assert!(child.terminate().success());
    systemd.expect("STOPPING=1");
}

#[test]
fn the_broker_binary_pings_through_plain_security_too() {
    let endpoint = common::bin::free_endpoint();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.cfg");
    std::fs::write(&users, "admin=secret\n").unwrap();
    let cfg = dir.path().join("broker.cfg");
    std::fs::write(
        &cfg,
        format!(
            "server\n    auth\n        plain = {}\nmlm_server\n    security\n        mechanism = plain\n    bind\n        endpoint = {endpoint}\n",
            users.display()
        ),
    )
    .unwrap();
    let mut systemd = FakeSystemd::new();
    let mut child = spawn_broker(&["-c", cfg.to_str().unwrap()], &systemd);
    systemd.expect("READY=1");
    for _ in 0..3 {
        systemd.expect("WATCHDOG=1");
    }
    assert!(child.terminate().success());
}
