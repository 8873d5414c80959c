//! The broker's operations end to end, through real HTTP: `/metrics` parsed
//! by a strict Prometheus text parser with counters that move by exactly
//! the commands sent, the JSON admin API, maintenance of a worker through
//! its own endpoint (maint/1: the CONFIRM reaches the broker's core) and
//! through the broker's admin API with two real alaska workers, the
//! embedded broker's endpoints, and systemd notifications from the real
//! `alaska-broker` binary to a fake `NOTIFY_SOCKET` (the watchdog fed by
//! the router's loop).

use crate::common;
use crate::ops_support;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alaska::broker::{BrokerConfig, BrokerHandle, StorageConfig, SyncMode};
use alaska::mlm::{Client, ClientOptions, DeliveryKind};
use alaska::ops::notify::Systemd;
use alaska::worker::{DispatcherOptions, PoolConfig};
use common::{broker_with, client, expect, script};
use ops_support::http::{agent, get, json, post, wait_for, WAIT};
use ops_support::prom::{self, Scrape};
use ops_support::systemd::{FakeSystemd, Running};
use ops_support::worker::OpsWorker;
use serde_json::Value;

/// A broker on a free port serving HTTP on a free port too.
struct OpsBroker {
    handle: BrokerHandle,
    base: String,
}

impl OpsBroker {
    fn start(tweak: impl FnOnce(&mut BrokerConfig)) -> OpsBroker {
        let handle = broker_with(|c| {
            c.http_listen = Some("127.0.0.1:0".into());
            tweak(c);
        });
        let base = format!("http://{}", handle.http_addr().expect("HTTP is served"));
        OpsBroker { handle, base }
    }

    fn endpoint(&self) -> &str {
        self.handle.endpoint()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn scrape(&self, a: &ureq::Agent) -> Scrape {
        let (status, text) = get(a, &self.url("/metrics"));
        assert_eq!(status, 200);
        prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn admin(&self, a: &ureq::Agent, path: &str) -> Value {
        let (status, text) = get(a, &self.url(path));
        assert_eq!(status, 200, "{path}: {text}");
        json(&text)
    }

    /// The client connected as `address`, from `/v1/clients`.
    fn client(&self, a: &ureq::Agent, address: &str) -> Value {
        self.admin(a, "/v1/clients")["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["address"] == address)
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn set_maintenance(&self, a: &ureq::Agent, address: &str, on: bool) -> (u16, String) {
        post(
            a,
            &self.url(&format!("/v1/clients/{address}/maintenance")),
            &format!("{{\"on\": {on}}}"),
        )
    }
}

/// `name` (no labels) in `after` minus in `before`.
fn delta(before: &Scrape, after: &Scrape, name: &str) -> f64 {
    after.value(name, &[]) - before.value(name, &[])
}

fn service(s: &Scrape, name: &str, svc: &str) -> f64 {
    s.value(name, &[("service", svc)])
}

/// A connected client that acknowledges (CREDIT `credit`).
fn acking_client(endpoint: &str, name: &str, credit: u16) -> Client {
    let mut o = ClientOptions::new(endpoint, name);
    o.timeout = Duration::from_secs(3);
    o.heartbeat = Duration::from_millis(200);
    o.credit = Some(credit);
    Client::connect(o).expect("client connects")
}

// ----- metrics -------------------------------------------------------------

#[test]
fn metrics_move_by_exactly_the_commands_sent() {
    let b = OpsBroker::start(|c| c.service_queue_limit.messages = 20);
    let a = agent();
    // `starting` until the router's first turn (a loaded machine may show
    // it): the broker serves from then on.
    wait_for("the broker serving", || {
        get(&a, &b.url("/health")) == (200, "serving\n".into())
    });
    let before = b.scrape(&a);
    for (family, kind) in [
        ("alaska_broker_commands_total", "counter"),
        ("alaska_broker_malformed_commands_total", "counter"),
        ("alaska_broker_requests_dispatched_total", "counter"),
        ("alaska_broker_requests_redelivered_total", "counter"),
        ("alaska_broker_requests_expired_total", "counter"),
        ("alaska_broker_requests_refused_total", "counter"),
        ("alaska_broker_mail_stored_total", "counter"),
        ("alaska_broker_mailboxes_reclaimed_total", "counter"),
        ("alaska_broker_stream_messages_total", "counter"),
        ("alaska_broker_clients", "gauge"),
        ("alaska_broker_mailboxes", "gauge"),
        ("alaska_broker_streams", "gauge"),
        ("alaska_broker_start_time_seconds", "gauge"),
    ] {
        assert_eq!(before.type_of(family), Some(kind), "{family}");
    }
    assert_eq!(
        before.type_of("alaska_broker_storage_commits_total"),
        None,
        "no storage metrics in memory"
    );

    let mut p = client(b.endpoint(), "producer");
    for i in 0..12 {
        p.sendfor(
            "svc",
            "echo",
            &format!("t{i}"),
            0,
            vec![format!("r{i}").into_bytes()],
        )
        .unwrap();
    }
    // 20 fit in the queue, 5 are refused.
    for i in 0..25 {
        p.sendfor("full", "s", "", 0, vec![format!("{i}").into_bytes()])
            .unwrap();
    }
    p.sendfor("late", "s", "", 50, vec![b"too late".to_vec()])
        .unwrap();
    for i in 0..3 {
        p.sendto("away", "s", "", 0, vec![format!("mail{i}").into_bytes()])
            .unwrap();
    }
    wait_for("the sends counted", || {
        let s = b.scrape(&a);
        delta(&before, &s, "alaska_broker_requests_queued_total") == 33.0
            && delta(&before, &s, "alaska_broker_requests_refused_total") == 5.0
            && delta(&before, &s, "alaska_broker_requests_expired_total") == 1.0
            && delta(&before, &s, "alaska_broker_mail_stored_total") == 3.0
            // Gauges follow within 100 ms.
            && s.value("alaska_broker_mail_held", &[]) == 3.0
            && s.get("alaska_broker_service_queue_depth", &[("service", "late")]).is_none()
    });
    let s = b.scrape(&a);
    assert_eq!(
        service(&s, "alaska_broker_service_queue_depth", "full"),
        20.0
    );
    assert_eq!(
        service(&s, "alaska_broker_service_queue_bytes", "full"),
        30.0
    );
    assert_eq!(service(&s, "alaska_broker_service_workers", "svc"), 0.0);
    assert_eq!(
        service(&s, "alaska_broker_service_queue_depth", "svc"),
        12.0
    );
    assert_eq!(s.value("alaska_broker_mailboxes", &[]), 1.0);
    assert_eq!(s.value("alaska_broker_mail_held", &[]), 3.0);
    assert_eq!(s.value("alaska_broker_mail_held_bytes", &[]), 15.0);

    // A worker takes the 12 and replies to each (12 mails delivered).
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return alaskaContext");
    let w = common::Worker::start(b.endpoint(), dir.path(), |_, _| {});
    let mut replies = HashSet::new();
    while replies.len() < 12 {
        let d = expect(&mut p, DeliveryKind::Mailbox, WAIT);
        assert!(replies.insert(d.tracker.clone()), "twice: {d:?}");
    }
    // Streams: one reader, four messages.
    let mut r = client(b.endpoint(), "reader");
    r.set_consumer("news", ".*").unwrap();
    let mut q = client(b.endpoint(), "writer");
    q.set_producer("news").unwrap();
    for i in 0..4 {
        q.send("s", vec![format!("n{i}").into_bytes()]).unwrap();
    }
    for _ in 0..4 {
        expect(&mut r, DeliveryKind::Stream, WAIT);
    }
    // A malformed command from a stranger.
    let ctx = zmq::Context::new();
    let raw = ctx.socket(zmq::DEALER).unwrap();
    raw.set_linger(0).unwrap();
    raw.connect(b.endpoint()).unwrap();
    raw.send(&b"\xaa\xa8\xee"[..], 0).unwrap();
    assert_eq!(raw.poll(zmq::POLLIN, 10_000).unwrap(), 1, "an ERROR back");

    wait_for("everything counted", || {
        let s = b.scrape(&a);
        delta(&before, &s, "alaska_broker_malformed_commands_total") == 1.0
            && delta(&before, &s, "alaska_broker_requests_confirmed_total") == 12.0
            && service(&s, "alaska_broker_service_unconfirmed", "svc") == 0.0
            && s.value("alaska_broker_clients", &[]) == 4.0
    });
    let after = b.scrape(&a);
    let d = |name: &str| delta(&before, &after, name);
    assert_eq!(d("alaska_broker_requests_queued_total"), 33.0);
    assert_eq!(d("alaska_broker_requests_dispatched_total"), 12.0);
    assert_eq!(d("alaska_broker_requests_redelivered_total"), 0.0);
    assert_eq!(d("alaska_broker_requests_refused_total"), 5.0);
    assert_eq!(d("alaska_broker_requests_expired_total"), 1.0);
    assert_eq!(d("alaska_broker_mail_delivered_total"), 12.0);
    assert_eq!(d("alaska_broker_mail_refused_total"), 0.0);
    assert_eq!(d("alaska_broker_stream_messages_total"), 4.0);
    assert_eq!(d("alaska_broker_stream_deliveries_total"), 4.0);
    assert_eq!(d("alaska_broker_clients_opened_total"), 4.0);
    assert_eq!(d("alaska_broker_maintenance_commands_total"), 0.0);
    assert_eq!(
        service(&after, "alaska_broker_service_queue_depth", "svc"),
        0.0
    );
    assert_eq!(service(&after, "alaska_broker_service_workers", "svc"), 1.0);
    assert_eq!(after.value("alaska_broker_services", &[]), 2.0);
    assert_eq!(after.value("alaska_broker_streams", &[]), 1.0);
    assert_eq!(after.value("alaska_broker_stream_readers", &[]), 1.0);
    assert!(d("alaska_broker_commands_total") >= 12.0 + 25.0 + 1.0 + 3.0 + 4.0 + 12.0 + 1.0);
    w.stop().unwrap();
}

#[test]
fn storage_commits_are_counted_when_durable() {
    let dir = tempfile::tempdir().unwrap();
    let b = OpsBroker::start(|c| {
        c.storage = Some(StorageConfig {
            dir: dir.path().join("store"),
            sync: SyncMode::Batch,
        })
    });
    let a = agent();
    let before = b.scrape(&a);
    assert_eq!(
        before.type_of("alaska_broker_storage_commits_total"),
        Some("counter")
    );
    assert_eq!(
        before.type_of("alaska_broker_storage_commit_seconds"),
        Some("histogram")
    );
    let mut p = client(b.endpoint(), "producer");
    for i in 0..5 {
        p.sendfor("nobody", "s", "", 0, vec![format!("{i}").into_bytes()])
            .unwrap();
    }
    wait_for("five requests stored", || {
        let s = b.scrape(&a);
        delta(&before, &s, "alaska_broker_storage_writes_total") == 5.0
    });
    let s = b.scrape(&a);
    let commits = delta(&before, &s, "alaska_broker_storage_commits_total");
    assert!((1.0..=5.0).contains(&commits), "{commits}");
    assert_eq!(
        s.value("alaska_broker_storage_commit_seconds_count", &[]),
        s.value("alaska_broker_storage_commits_total", &[])
    );
}

// ----- the admin API -------------------------------------------------------

#[test]
fn the_admin_api_lists_clients_services_mailboxes_and_streams() {
    let b = OpsBroker::start(|c| c.mailbox_expiry = Duration::from_secs(60));
    let a = agent();
    let mut w = acking_client(b.endpoint(), "w1", 5);
    w.set_worker("svc", "^a").unwrap();
    let mut p = client(b.endpoint(), "p");
    p.sendfor("svc", "zzz", "", 0, vec![b"nobody takes me".to_vec()])
        .unwrap();
    p.sendto("away", "s", "", 0, vec![b"hello".to_vec()])
        .unwrap();
    p.sendto("away", "s", "", 0, vec![b"again".to_vec()])
        .unwrap();
    let mut r = client(b.endpoint(), "r");
    r.set_consumer("news", "^x").unwrap();
    let mut q = client(b.endpoint(), "q");
    q.set_producer("news").unwrap();

    wait_for("the mail stored", || {
        b.admin(&a, "/v1/mailboxes")["mailboxes"][0]["messages"] == 2
    });
    let clients = b.admin(&a, "/v1/clients");
    let list = clients["clients"].as_array().unwrap();
    let names: Vec<&str> = list
        .iter()
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["p", "q", "r", "w1"], "{clients}");
    let w1 = &list[3];
    assert_eq!(w1["acknowledged"], true, "{w1}");
    assert_eq!(w1["credit"], 5, "{w1}");
    assert_eq!(w1["unconfirmed"], 0, "{w1}");
    assert_eq!(w1["maintenance"], false, "{w1}");
    assert_eq!(w1["offers"], serde_json::json!(["svc"]), "{w1}");
    assert_eq!(w1["user"], Value::Null, "NULL security");
    assert!(w1["silent_seconds"].as_f64().unwrap() < 10.0, "{w1}");
    assert_eq!(list[0]["acknowledged"], false);
    assert_eq!(list[0]["credit"], Value::Null);
    assert_eq!(list[1]["writes"], "news");
    assert_eq!(list[2]["reads"], serde_json::json!(["news"]));

    let services = b.admin(&a, "/v1/services");
    let svc = &services["services"][0];
    assert_eq!(svc["name"], "svc", "{services}");
    assert_eq!(svc["queued"], 1, "{svc}");
    assert_eq!(svc["queued_bytes"], 15, "{svc}");
    assert_eq!(svc["workers"], 1, "{svc}");
    assert_eq!(svc["unconfirmed"], 0, "{svc}");
    assert_eq!(
        svc["offers"],
        serde_json::json!([{"address": "w1", "pattern": "^a", "maintenance": false}])
    );
    assert_eq!(svc["unmatched_subjects"], serde_json::json!(["zzz"]));

    let mailboxes = b.admin(&a, "/v1/mailboxes");
    let away = &mailboxes["mailboxes"][0];
    assert_eq!(away["address"], "away", "{mailboxes}");
    assert_eq!(away["bytes"], 10, "{away}");
    assert_eq!(away["connected"], false, "{away}");
    let reclaim = away["reclaim_in_seconds"].as_f64().unwrap();
    assert!(reclaim > 0.0 && reclaim <= 60.0, "{away}");

    let streams = b.admin(&a, "/v1/streams");
    assert_eq!(
        streams,
        serde_json::json!({"streams": [{
            "name": "news",
            "readers": [{"address": "r", "pattern": "^x"}],
            "writers": ["q"],
        }]})
    );

    // What the API refuses.
    let (status, _) = b.set_maintenance(&a, "nobody", true);
    assert_eq!(status, 404);
    let (status, text) = post(
        &a,
        &b.url("/v1/clients/w1/maintenance"),
        "{\"on\": \"yes\"}",
    );
    assert_eq!(status, 400, "{text}");
    assert_eq!(get(&a, &b.url("/v1/clients/w1/maintenance")).0, 405);
    assert_eq!(post(&a, &b.url("/v1/clients"), "").0, 405);
    assert_eq!(get(&a, &b.url("/v1/nothing")).0, 404);
    assert_eq!(b.client(&a, "w1")["maintenance"], false, "nothing changed");
    drop((w, p, r, q));
}

// ----- maintenance with two real workers -------------------------------------

/// Sends `n` requests at once and collects every reply: how many each
/// worker answered (the reply says which), checking that none is lost or
/// duplicated and nothing more arrives.
fn burst(c: &mut Client, n: usize, tag: &str) -> (usize, usize) {
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

/// Two workers (answering `A` and `B`) on `b`, both serving, and a
/// producer that has seen both answer.
fn two_workers(
    b: &OpsBroker,
    a: &ureq::Agent,
) -> (OpsWorker, OpsWorker, Client, [tempfile::TempDir; 2]) {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    script(da.path(), "who", "return 'A'");
    script(db.path(), "who", "return 'B'");
    let tweak = |_: &mut DispatcherOptions, _: &mut PoolConfig| {};
    let wa = OpsWorker::start(b.endpoint(), da.path(), tweak);
    let wb = OpsWorker::start(b.endpoint(), db.path(), tweak);
    wa.wait_health(a, 200, "serving");
    wb.wait_health(a, 200, "serving");
    let mut c = client(b.endpoint(), "producer");
    wait_for("both workers answering", || {
        let (x, y) = burst(&mut c, 20, "warm");
        x > 0 && y > 0
    });
    (wa, wb, c, [da, db])
}

/// Bursts of 100 until both workers took some: resuming spreads the work.
fn spreads_again(c: &mut Client) {
    let mut round = 0;
    wait_for("requests spread again", || {
        round += 1;
        let (x, y) = burst(c, 100, &format!("r{round}-"));
        assert_eq!(x + y, 100);
        x > 0 && y > 0
    });
}

#[test]
fn a_worker_in_maintenance_through_its_own_endpoint_is_in_maintenance_in_the_broker() {
    let b = OpsBroker::start(|_| {});
    let a = agent();
    let (wa, wb, mut c, _dirs) = two_workers(&b, &a);
    let before = b.scrape(&a);

    let v = wa.maintenance(&a, true);
    assert_eq!(v["connections"][0]["maintenance"]["by_broker"], true, "{v}");
    // The worker's CONFIRM maintenance:on reached the core (the worker
    // says "applied" once it sent it; the broker reads it a moment later).
    wait_for("the flag in the broker", || {
        b.client(&a, &wa.address)["maintenance"] == true
    });
    assert_eq!(b.client(&a, &wb.address)["maintenance"], false);
    let svc = &b.admin(&a, "/v1/services")["services"][0];
    assert_eq!(
        (
            svc["workers"].clone(),
            svc["workers_in_maintenance"].clone()
        ),
        (2.into(), 1.into()),
        "{svc}"
    );
    wait_for("the gauges", || {
        let s = b.scrape(&a);
        s.value("alaska_broker_clients_in_maintenance", &[]) == 1.0
            && service(&s, "alaska_broker_service_workers_in_maintenance", "svc") == 1.0
    });
    wa.wait_health(&a, 503, "maintenance");
    assert_eq!(burst(&mut c, 100, "m"), (0, 100));

    wa.maintenance(&a, false);
    wait_for("the flag cleared in the broker", || {
        b.client(&a, &wa.address)["maintenance"] == false
    });
    wa.wait_health(&a, 200, "serving");
    spreads_again(&mut c);

    let after = b.scrape(&a);
    assert_eq!(
        delta(&before, &after, "alaska_broker_maintenance_commands_total"),
        2.0
    );
    // One command each way; no withdrawal (CLOSE + OPEN), nothing handed
    // back to the queue.
    assert_eq!(
        delta(&before, &after, "alaska_broker_clients_opened_total"),
        0.0
    );
    assert_eq!(
        delta(&before, &after, "alaska_broker_requests_redelivered_total"),
        0.0
    );
    wa.stop().unwrap();
    wb.stop().unwrap();
}

#[test]
fn the_admin_api_puts_a_worker_in_maintenance_without_telling_it() {
    let b = OpsBroker::start(|_| {});
    let a = agent();
    let (wa, wb, mut c, _dirs) = two_workers(&b, &a);

    let (status, text) = b.set_maintenance(&a, &wa.address, true);
    assert_eq!(status, 200, "{text}");
    let v = json(&text);
    assert_eq!(v["address"], wa.address.as_str(), "{v}");
    assert_eq!(v["maintenance"], true, "{v}");
    assert_eq!(v["client"]["maintenance"], true, "{v}");
    assert_eq!(v["client"]["offers"], serde_json::json!(["svc"]), "{v}");
    assert_eq!(
        b.set_maintenance(&a, &wa.address, true).0,
        200,
        "idempotent"
    );
    assert_eq!(burst(&mut c, 100, "m"), (0, 100));
    // The worker was not told: it still says what it asked for.
    assert_eq!(wa.health(&a), (200, "serving\n".into()));
    assert_eq!(wa.status(&a)["maintenance"], false);

    let (status, text) = b.set_maintenance(&a, &wa.address, false);
    assert_eq!(status, 200, "{text}");
    assert_eq!(json(&text)["client"]["maintenance"], false);
    spreads_again(&mut c);

    // Put in maintenance by the API, taken out by the worker's own
    // maintenance:off (the flag is the same).
    b.set_maintenance(&a, &wb.address, true);
    assert_eq!(burst(&mut c, 50, "x"), (50, 0));
    wb.maintenance(&a, true);
    wb.maintenance(&a, false);
    wait_for("the flag cleared by the worker", || {
        b.client(&a, &wb.address)["maintenance"] == false
    });
    spreads_again(&mut c);
    wa.stop().unwrap();
    wb.stop().unwrap();
}

// ----- liveness and systemd ----------------------------------------------------

#[test]
fn the_liveness_counter_moves_while_the_router_turns_and_stops_with_it() {
    let b = broker_with(|_| {});
    let live = b.liveness();
    let start = live.get();
    // Idle, the router still turns (every 100 ms at most).
    wait_for("turns while idle", || live.get() >= start + 3);
    let mut fake = FakeSystemd::new();
    let systemd = Systemd::from_vars(Some(&fake.path), Some("200000"), None, std::process::id());
    let watchdog = systemd
        .start_watchdog(b.liveness())
        .unwrap()
        .expect("a watchdog");
    for _ in 0..3 {
        fake.expect("WATCHDOG=1");
    }
    // The router ends; the watchdog thread goes on, and falls silent.
    b.stop();
    let stopped = live.get();
    fake.during(Duration::from_millis(250));
    let silent = fake.during(Duration::from_millis(600));
    assert!(
        !silent.iter().any(|n| n.lines().any(|l| l == "WATCHDOG=1")),
        "pings without a router: {silent:?}"
    );
    assert_eq!(live.get(), stopped, "nothing beats after the router ended");
    watchdog.stop();
}

/// Starts `alaska-broker` with `args` under a fake systemd; returns it and
/// where its HTTP endpoints are (when asked for), from its log.
fn spawn_broker(args: &[&str], notify: &FakeSystemd) -> (Running, Option<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_alaska-broker"))
        .args(args)
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "300000")
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
    if !args.contains(&"--http") {
        return (running, None);
    }
    let addr = http_address(&rx, "broker serving http://");
    (running, Some(addr))
}

/// The `host:port` after `marker` in the first log line that has it.
fn http_address(lines: &crossbeam_channel::Receiver<String>, marker: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no log line with {marker:?}"));
        if let Some(rest) = line.split(marker).nth(1) {
            return rest.split(':').take(2).collect::<Vec<_>>().join(":");
        }
    }
}

#[test]
fn the_broker_binary_under_a_fake_systemd_with_http() {
    let endpoint = common::bin::free_endpoint();
    let mut systemd = FakeSystemd::new();
    let (mut child, addr) = spawn_broker(&["-e", &endpoint, "--http", "127.0.0.1:0"], &systemd);
    let addr = addr.unwrap();
    let ready = systemd.expect("READY=1");
    assert!(ready.contains(&endpoint), "{ready}");
    assert!(ready.contains(&format!("HTTP on {addr}")), "{ready}");
    for _ in 0..3 {
        systemd.expect("WATCHDOG=1");
    }
    let a = agent();
    assert_eq!(
        get(&a, &format!("http://{addr}/health")),
        (200, "serving\n".into())
    );
    // It serves, and counts what it served.
    let mut c = client(&endpoint, "me");
    c.sendto("me", "s", "", 0, vec![b"to myself".to_vec()])
        .unwrap();
    assert_eq!(
        expect(&mut c, DeliveryKind::Mailbox, WAIT).content,
        [b"to myself"]
    );
    wait_for("the mail counted", || {
        let text = get(&a, &format!("http://{addr}/metrics")).1;
        let s = prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        s.value("alaska_broker_mail_delivered_total", &[]) == 1.0
            && s.value("alaska_broker_clients", &[]) == 1.0
    });
    let clients = json(&get(&a, &format!("http://{addr}/v1/clients")).1);
    assert_eq!(clients["clients"][0]["address"], "me", "{clients}");
    drop(c);
    assert!(child.terminate().success());
    systemd.expect("STOPPING=1");
}

#[test]
fn the_broker_binary_pings_under_plain_security_too() {
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
    let (mut child, _) = spawn_broker(&["-c", cfg.to_str().unwrap()], &systemd);
    systemd.expect("READY=1");
    for _ in 0..3 {
        systemd.expect("WATCHDOG=1");
    }
    assert!(child.terminate().success());
}

// ----- the embedded broker -------------------------------------------------------

#[test]
fn the_embedded_broker_serves_its_own_endpoints() {
    let endpoint = common::bin::free_endpoint();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return alaskaContext");
    let cfg = common::bin::config(
        &endpoint,
        dir.path(),
        "    shutdown\n        timeout = \"500ms\"\n",
    );
    let at = format!("        endpoint = \"{endpoint}\"\n");
    assert!(cfg.contains(&at), "{cfg}");
    let cfg = cfg.replace(
        &at,
        &format!("{at}        http\n            listen = \"127.0.0.1:0\"\n"),
    );
    std::fs::write(dir.path().join("alaska.cfg"), &cfg).unwrap();
    let mut child = common::bin::alaska(dir.path())
        .args(["-c", "alaska.cfg", "-f", "--embedded-broker"])
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
    let mut child = Running(child);
    let addr = http_address(&rx, "broker serving http://");
    let a = agent();
    // "starting" (503) until the router's first turn, which a loaded
    // machine may run a little after the listener is announced.
    wait_for("/health to say serving", || {
        get(&a, &format!("http://{addr}/health")) == (200, "serving\n".into())
    });
    wait_for("the worker's offer", || {
        let v = json(&get(&a, &format!("http://{addr}/v1/services")).1);
        v["services"][0]["name"] == "svc" && v["services"][0]["workers"] == 1
    });
    let mut c = client(&endpoint, "producer");
    assert_eq!(
        common::request(&mut c, "echo", b"embedded", WAIT).content,
        [b"embedded"]
    );
    let text = get(&a, &format!("http://{addr}/metrics")).1;
    let s = prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(s.value("alaska_broker_requests_dispatched_total", &[]), 1.0);
    drop(c);
    assert!(child.terminate().success());
}
