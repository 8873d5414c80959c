//! The worker's operations end to end, through real HTTP: `/metrics` parsed
//! by a strict Prometheus text parser with counters that move by exactly
//! the requests sent, `/v1/status`, `/health` following the broker,
//! maintenance against a scripted broker (with and without `maint/1`) and
//! with two workers on real brokers (the project's and, where installed,
//! the real Malamute), and systemd notifications from the real `alaska`
//! binary to a fake `NOTIFY_SOCKET`, including the silence of the watchdog
//! while the dispatcher is wedged in a C call. (The broker's own operations
//! are in `broker_ops.rs`.)

use crate::common;
use crate::ops_support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use alaska::broker::{Broker, BrokerConfig, BrokerHandle};
use alaska::mlm::{DeliveryKind, Message, Status};
use alaska::worker::{DispatcherOptions, PoolConfig};
use common::{all_brokers, broker, broker_with, client, expect, script, unique};
use ops_support::http::{agent, get, json, post, wait_for, WAIT};
use ops_support::prom::{self, Scrape};
use ops_support::systemd::{FakeSystemd, Running};
use ops_support::worker::OpsWorker;

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
                std::thread::sleep(Duration::from_millis(50)); // bounded poll (deadline above)
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
            std::thread::sleep(Duration::from_millis(10)); // bounded poll (deadline above)
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
    // No offer within 300 ms is what is tested: a fixed wait.
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
    // No broker yet: "starting" until the hub's first turn, "reconnecting"
    // after it (which may come before the first poll on a loaded machine).
    wait_for("/health 503 without a broker", || {
        let (status, text) = w.health(&a);
        status == 503 && (text == "starting\n" || text == "reconnecting\n")
    });
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
        // The project's broker says maint/1; the reference says nothing,
        // so the worker withdraws its offer there instead.
        let by_broker = matches!(broker, common::AnyBroker::Ours(_));
        assert_eq!(
            v["connections"][0]["maintenance"]["by_broker"],
            by_broker,
            "{}: {v}",
            broker.name()
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

// ----- systemd, through the real binary ---------------------------------------

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
        // Wall time (os.time), not CPU time (os.clock): on a loaded
        // machine 1.5 s of CPU took longer than the 5 s budget.
        "local t = os.time() while os.time() - t < 2 do end return 'done'",
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

/// A broker that refuses the worker's offer (here its ACL: the anonymous
/// worker may open but not offer) leaves a worker that serves nothing:
/// `/health` says so with 503 and the broker's reason, never "serving".
#[test]
fn health_is_503_while_the_broker_refuses_our_offer() {
    let acl = alaska::broker::acl::Acl::parse(
        "default\n    open = \"*\"\n    send = \"*\"\n    mail = \"*\"\n",
        std::path::Path::new("acl.cfg"),
    )
    .unwrap();
    let b = broker_with(move |c| c.acl = Some(acl));
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return alaskaContext");
    let w = OpsWorker::start(b.endpoint(), dir.path(), |_, _| {});
    let a = agent();
    wait_for("/health says the offer is refused", || {
        let (status, text) = w.health(&a);
        status == 503 && text.starts_with("offer refused\n")
    });
    let (_, text) = w.health(&a);
    assert!(text.contains("may not offer"), "{text}");
}
