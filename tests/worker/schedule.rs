//! Delayed requests and schedules, end to end: `alas --delay 2s` and a
//! library client's delayed send arrive 2 s later and not before (the
//! reply comes back); a delayed request survives `kill -9` of a durable
//! `alaska-broker`; cancellation through the admin API; an `every = "1s"`
//! schedule fires once per second, none doubled across `kill -9` and a
//! restart; a cron expression's next fire shown by `GET /v1/schedules` and
//! `/metrics`; bad schedules refuse the broker's start; the gateway's
//! `?delay=`; and against the real Malamute, `alas --delay` refused with
//! exit 12.

use crate::common;
use crate::ops_support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use alaska::mlm::{Client, ClientError, ClientOptions, DeliveryKind};
use assert_cmd::cargo::CommandCargoExt;
use common::{broker_with, client, expect, expect_none, script, Worker};
use ops_support::http::{agent, get, json, wait_for};
use ops_support::prom;

const WAIT: Duration = Duration::from_secs(15);

/// A broker with HTTP (and `tweak`), its base URL.
fn http_broker(
    tweak: impl FnOnce(&mut alaska::broker::BrokerConfig),
) -> (alaska::broker::BrokerHandle, String) {
    let b = broker_with(|c| {
        c.http_listen = Some("127.0.0.1:0".into());
        tweak(c);
    });
    let base = format!("http://{}", b.http_addr().unwrap());
    (b, base)
}

/// A client that serves `svc` itself, in push mode (no CREDIT: nothing is
/// redelivered, so every delivery is one request queued by the broker).
fn service(endpoint: &str, pattern: &str) -> Client {
    let mut o = ClientOptions::new(endpoint, format!("svc-{}", common::unique()));
    o.timeout = Duration::from_secs(3);
    o.heartbeat = Duration::from_millis(200);
    let mut c = Client::connect(o).expect("connects");
    c.set_worker("svc", pattern).expect("offer");
    c
}

#[test]
fn a_delayed_request_arrives_after_its_delay_and_not_before() {
    let (b, base) = http_broker(|_| {});
    let ep = b.endpoint().to_string();
    let mut worker = service(&ep, ".*");
    let mut p = client(&ep, &format!("p-{}", common::unique()));
    assert!(p.supports_delay(), "the project's broker says delay/1");
    let sent = Instant::now();
    p.sendfor_delayed(
        "svc",
        "later",
        "t1",
        0,
        vec![b"x".to_vec()],
        Duration::from_secs(2),
    )
    .unwrap();
    // Listed while held, with its due time and size.
    let a = agent();
    let mut listed = serde_json::Value::Null;
    wait_for("the delayed request listed", || {
        listed = json(&get(&a, &format!("{base}/v1/delayed")).1);
        listed["total"] == 1
    });
    let d = &listed["delayed"][0];
    assert_eq!(d["address"], "svc");
    assert_eq!(d["subject"], "later");
    assert_eq!(d["tracker"], "t1");
    assert_eq!(d["size"], 1);
    assert!(d["due"].as_str().unwrap().ends_with('Z'), "{d}");
    let got = expect(&mut worker, DeliveryKind::Service, WAIT);
    let took = sent.elapsed();
    assert_eq!(got.subject, "later");
    assert!(took >= Duration::from_secs(2), "arrived after {took:?}");
    assert!(took < Duration::from_secs(4), "arrived after {took:?}");
    assert_eq!(json(&get(&a, &format!("{base}/v1/delayed")).1)["total"], 0);
    // A zero delay is a plain send.
    let sent = Instant::now();
    p.sendfor_delayed("svc", "now", "", 0, vec![], Duration::ZERO)
        .unwrap();
    expect(&mut worker, DeliveryKind::Service, WAIT);
    assert!(sent.elapsed() < Duration::from_secs(1));
}

#[test]
fn alas_delay_2s_is_answered_after_two_seconds() {
    let (b, base) = http_broker(|_| {});
    let ep = b.endpoint().to_string();
    let dir = tempfile::tempdir().unwrap();
    let watcher_name = format!("watch-{}", common::unique());
    // The script tells the watcher the moment it runs, then replies.
    script(
        dir.path(),
        "late",
        &format!(
            "sendTo('arrived', alaskaContext, '{watcher_name}') return 'done ' .. alaskaContext"
        ),
    );
    let _w = Worker::start(&ep, dir.path(), |_, _| {});
    let mut watcher = client(&ep, &watcher_name);
    let mut p = client(&ep, &format!("p-{}", common::unique()));
    common::ready(&mut p, dir.path());
    let started = Instant::now();
    let mut child = Command::cargo_bin("alas")
        .unwrap()
        .args([
            "-e", &ep, "-a", "svc", "-s", "late", "--delay", "2s", "--wait", "10", "-q",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"{\"n\":1}\n").unwrap();
    }
    // Held by the broker, not yet run: listed, and the watcher hears
    // nothing in the first 1.5 s.
    let a = agent();
    wait_for("alas's request held", || {
        json(&get(&a, &format!("{base}/v1/delayed")).1)["total"] == 1
    });
    expect_none(
        &mut watcher,
        DeliveryKind::Mailbox,
        Duration::from_millis(1500).saturating_sub(started.elapsed()),
    );
    let arrived = expect(&mut watcher, DeliveryKind::Mailbox, WAIT);
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(arrived.content, vec![b"{\"n\":1}".to_vec()]);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done {\"n\":1}\n");
    let scrape = prom::parse(&get(&a, &format!("{base}/metrics")).1).unwrap();
    assert!(scrape.value("alaska_broker_requests_delayed_total", &[]) >= 1.0);
}

#[test]
fn a_cancelled_delayed_request_never_arrives() {
    let (b, base) = http_broker(|_| {});
    let ep = b.endpoint().to_string();
    let mut worker = service(&ep, ".*");
    let mut p = client(&ep, &format!("p-{}", common::unique()));
    p.sendfor_delayed(
        "svc",
        "doomed",
        "",
        0,
        vec![b"x".to_vec()],
        Duration::from_millis(800),
    )
    .unwrap();
    let a = agent();
    let mut list = serde_json::Value::Null;
    wait_for("listed", || {
        list = json(&get(&a, &format!("{base}/v1/delayed")).1);
        list["total"] == 1
    });
    let id = list["delayed"][0]["id"].as_u64().unwrap();
    let url = format!("{base}/v1/delayed/{id}");
    // A change needs a JSON content type (a web page cannot forge one).
    let delete = |url: &str| {
        let mut r = a
            .delete(url)
            .header("content-type", "application/json")
            .call()
            .unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    };
    let (status, body) = delete(&url);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["cancelled"], 1);
    assert_eq!(delete(&url).0, 404);
    assert_eq!(delete(&format!("{base}/v1/delayed/x")).0, 400);
    // Past its due time, nothing comes.
    expect_none(
        &mut worker,
        DeliveryKind::Service,
        Duration::from_millis(1500),
    );
    let scrape = prom::parse(&get(&a, &format!("{base}/metrics")).1).unwrap();
    assert_eq!(
        scrape.value("alaska_broker_delayed_cancelled_total", &[]),
        1.0
    );
}

/// `alaska-broker` as a child process with storage in `dir/store`.
struct BrokerProcess {
    child: Child,
    endpoint: String,
    log: PathBuf,
}

impl BrokerProcess {
    fn start(dir: &Path, endpoint: &str, extra: &str) -> BrokerProcess {
        let cfg = dir.join("broker.cfg");
        std::fs::write(
            &cfg,
            format!(
                "mlm_server\n    bind\n        endpoint = {endpoint}\n    storage\n        dir = store\n{extra}"
            ),
        )
        .unwrap();
        let n = std::fs::read_dir(dir).unwrap().count();
        let log = dir.join(format!("broker-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_alaska-broker"))
            .arg(&cfg)
            .env("RUST_LOG", "info,fjall=warn,lsm_tree=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let b = BrokerProcess {
            child,
            endpoint: endpoint.to_string(),
            log,
        };
        common::bin::wait_file(&b.log, "alaska-broker ready on ", WAIT, "broker ready");
        b
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_delayed_request_survives_kill_9_of_a_durable_broker() {
    let dir = tempfile::tempdir().unwrap();
    let ep = common::bin::free_endpoint();
    let b = BrokerProcess::start(dir.path(), &ep, "");
    let mut p = client(&b.endpoint, &format!("p-{}", common::unique()));
    let sent = Instant::now();
    p.sendfor_delayed(
        "svc",
        "kept",
        "",
        0,
        vec![b"x".to_vec()],
        Duration::from_secs(2),
    )
    .unwrap();
    // A command answered after it: the delayed request is stored.
    p.set_consumer("sync", ".*").unwrap();
    b.kill9();
    let b = BrokerProcess::start(dir.path(), &ep, "");
    let log = std::fs::read_to_string(&b.log).unwrap();
    assert!(log.contains("1 delayed request(s)"), "{log}");
    let mut worker = service(&b.endpoint, ".*");
    let got = expect(&mut worker, DeliveryKind::Service, WAIT);
    assert_eq!(got.subject, "kept");
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
    drop(p);
}

/// Now, in ms since the Unix epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The due time (ms) a schedule's request was fired for, from its tracker.
fn due_of(tracker: &str) -> u64 {
    tracker
        .rsplit(':')
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("tracker {tracker:?}"))
}

/// Collects the due times of the schedule's requests arriving for `during`.
fn fires(worker: &mut Client, during: Duration, into: &mut Vec<u64>) {
    let until = Instant::now() + during;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        if let Some(d) = worker.recv(left).expect("recv") {
            if d.kind == DeliveryKind::Service {
                assert_eq!(d.sender, "", "sent in the broker's name");
                assert_eq!(d.content, vec![b"tick".to_vec()]);
                into.push(due_of(&d.tracker));
            }
        }
    }
}

#[test]
fn every_second_fires_once_per_second_none_doubled_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let ep = common::bin::free_endpoint();
    let sched = "    schedule\n        beat\n            every = \"1s\"\n            address = \"svc\"\n            subject = \"beat\"\n            content = \"tick\"\n";
    let b = BrokerProcess::start(dir.path(), &ep, sched);
    let mut worker = service(&b.endpoint, "^beat$");
    // Wait for the first fire, then count for N seconds.
    let mut due = Vec::new();
    fires(&mut worker, Duration::from_millis(1200), &mut due);
    assert!(!due.is_empty(), "no fire in 1.2 s");
    let n = 4u64;
    let before = due.len();
    fires(&mut worker, Duration::from_secs(n), &mut due);
    let counted = (due.len() - before) as u64;
    assert!(
        (n - 1..=n + 1).contains(&counted),
        "{counted} fires in {n} s: {due:?}"
    );
    b.kill9();
    // Down for a few due times (the outage is what is tested).
    std::thread::sleep(Duration::from_millis(2500));
    let restarted_ms = unix_ms();
    let b = BrokerProcess::start(dir.path(), &ep, sched);
    let before_kill = due.len();
    fires(&mut worker, Duration::from_secs(3), &mut due);
    let distinct: HashSet<u64> = due.iter().copied().collect();
    assert_eq!(distinct.len(), due.len(), "a due time fired twice: {due:?}");
    assert!(due.iter().all(|d| d % 1000 == 0), "{due:?}");
    let mut sorted = due.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, due, "in order");
    // Across the restart: every second up to the kill, then exactly one
    // fire for the outage (the latest due time missed, caught up because
    // the last fire was stored), then every second again.
    let (last_before, first_after) = (due[before_kill - 1], due[before_kill]);
    assert!(
        first_after >= last_before + 2000 && first_after + 1000 >= restarted_ms,
        "the first fire after the restart is for the latest due time missed: {due:?}"
    );
    let gaps = sorted.windows(2).filter(|w| w[1] - w[0] > 1000).count();
    assert_eq!(
        gaps, 1,
        "one jump, over the outage, then every second: {due:?}"
    );
    // The broker says it caught up once, for that due time: it was due
    // before the restart, so only the stored last fire made it run.
    let log = std::fs::read_to_string(&b.log).unwrap();
    assert!(
        log.contains(&format!("firing once, for {first_after}")),
        "{first_after}: {log}"
    );
    drop(b);
}

#[test]
fn a_cron_schedules_next_fire_is_shown_in_the_api_and_metrics() {
    let (cfg, _) = alaska::broker::parse_config(
        "mlm_server\n    schedule\n        nightly\n            cron = \"*/5 * * * *\"\n            timezone = \"Europe/Paris\"\n            address = \"svc\"\n            subject = \"report\"\n",
        Path::new("."),
    )
    .unwrap();
    let (_b, base) = http_broker(|c| c.schedules = cfg.schedules);
    let a = agent();
    let list = json(&get(&a, &format!("{base}/v1/schedules")).1);
    let s = &list["schedules"][0];
    assert_eq!(s["name"], "nightly");
    assert_eq!(s["cron"], "*/5 * * * *");
    assert_eq!(s["timezone"], "Europe/Paris");
    assert_eq!(s["every"], serde_json::Value::Null);
    assert_eq!(s["fires"], 0);
    let next = s["next_fire"]["unix_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(next % 300_000, 0, "{s}");
    assert!(next > now && next <= now + 300_000, "{s}");
    assert!(
        s["next_fire"]["time"]
            .as_str()
            .unwrap()
            .ends_with(":00.000Z"),
        "{s}"
    );
    wait_for("the next fire in /metrics", || {
        let scrape = prom::parse(&get(&a, &format!("{base}/metrics")).1).unwrap();
        scrape.get(
            "alaska_broker_schedule_next_fire_timestamp_seconds",
            &[("schedule", "nightly")],
        ) == Some((next / 1000) as f64)
    });
}

#[test]
fn a_bad_schedule_refuses_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    for (keys, says) in [
        ("cron = \"61 * * * *\"\n            address = \"a\"\n            subject = \"s\"", "cron expression"),
        ("every = \"1s\"\n            cron = \"* * * * *\"\n            address = \"a\"\n            subject = \"s\"", "both every and cron"),
        ("every = \"1s\"\n            address = \"a\"", "needs subject"),
    ] {
        let cfg = dir.path().join("bad.cfg");
        std::fs::write(
            &cfg,
            format!("mlm_server\n    bind\n        endpoint = tcp://127.0.0.1:*\n    schedule\n        broken\n            {keys}\n"),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_alaska-broker"))
            .arg(&cfg)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{keys}: started");
        assert!(
            err.contains("mlm_server/schedule/broken") && err.contains(says),
            "{keys}: {err}"
        );
    }
}

#[test]
fn the_gateway_delays_a_request_with_delay() {
    let b = broker_with(|_| {});
    let ep = b.endpoint().to_string();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return 'echo ' .. alaskaContext");
    let _w = Worker::start(&ep, dir.path(), |_, _| {});
    let mut p = client(&ep, &format!("p-{}", common::unique()));
    common::ready(&mut p, dir.path());
    let mut o = alaska::gateway::GatewayOptions::new(&ep, "127.0.0.1:0");
    o.address = format!("gw-{}", common::unique());
    let g = alaska::gateway::Gateway::start(o).expect("gateway starts");
    wait_for("gateway connected", || g.is_connected());
    let url = format!("http://{}/v1/request/svc/echo", g.local_addr().unwrap());
    let a = agent();
    let started = Instant::now();
    let mut r = a
        .post(&format!("{url}?delay=1500&timeout=3000"))
        .send(&b"hi"[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.body_mut().read_to_string().unwrap(), "echo hi");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    let r = a
        .post(&format!("{url}?delay=soon"))
        .send(&b"hi"[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let started = Instant::now();
    let r = a.post(&format!("{url}?delay=1s")).send(&b"x"[..]).unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[test]
fn against_the_real_malamute_delays_are_refused() {
    let Some(bin) = common::malamute::malamute_binary() else {
        println!("real Malamute not found: skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let m = common::malamute::Malamute::start(&bin, dir.path(), common::malamute::free_port());
    let mut c = client(&m.endpoint, &format!("p-{}", common::unique()));
    assert!(!c.supports_delay());
    let e = c
        .sendfor_delayed("svc", "s", "", 0, vec![], Duration::from_secs(1))
        .unwrap_err();
    assert!(matches!(e, ClientError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("real Malamute"), "{e}");
    let out: Output = Command::cargo_bin("alas")
        .unwrap()
        .args(["-e", &m.endpoint, "--delay", "2s"])
        .write_stdin_compat(b"{}")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(12),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not hold delayed requests"), "{err}");
    // The gateway says 501.
    let mut o = alaska::gateway::GatewayOptions::new(&m.endpoint, "127.0.0.1:0");
    o.address = format!("gw-{}", common::unique());
    let g = alaska::gateway::Gateway::start(o).expect("gateway starts");
    wait_for("gateway connected", || g.is_connected());
    let url = format!(
        "http://{}/v1/request/svc/echo?delay=1s",
        g.local_addr().unwrap()
    );
    let mut r = agent().post(&url).send(&b"x"[..]).unwrap();
    assert_eq!(r.status().as_u16(), 501);
    assert!(r
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains("real Malamute"));
}

/// Stdin for a command, through a temporary file (Command has no
/// in-memory stdin).
trait StdinCompat {
    fn write_stdin_compat(&mut self, data: &[u8]) -> &mut Self;
}

impl StdinCompat for Command {
    fn write_stdin_compat(&mut self, data: &[u8]) -> &mut Self {
        let path = std::env::temp_dir().join(format!("alas-stdin-{}", common::unique()));
        std::fs::write(&path, data).unwrap();
        self.stdin(std::fs::File::open(&path).unwrap())
    }
}

#[test]
fn a_schedules_last_fire_is_shown_in_the_api_and_metrics() {
    let (cfg, _) = alaska::broker::parse_config(
        "mlm_server\n    schedule\n        tick\n            every = \"1s\"\n            address = \"svc\"\n            subject = \"tick\"\n",
        Path::new("."),
    )
    .unwrap();
    let (b, base) = http_broker(|c| c.schedules = cfg.schedules);
    let mut w = service(b.endpoint(), ".*");
    let d = expect(&mut w, DeliveryKind::Service, WAIT);
    let due = due_of(&d.tracker);
    let a = agent();
    // The last fire is the due time it fired for (or a later one, if the
    // next second came meanwhile): in the API and in /metrics alike.
    wait_for("the last fire in /v1/schedules", || {
        let list = json(&get(&a, &format!("{base}/v1/schedules")).1);
        list["schedules"][0]["last_fire"]["unix_ms"]
            .as_u64()
            .is_some_and(|ms| ms >= due && ms % 1000 == 0)
    });
    wait_for("the last fire in /metrics", || {
        let scrape = prom::parse(&get(&a, &format!("{base}/metrics")).1).unwrap();
        scrape
            .get(
                "alaska_broker_schedule_last_fire_timestamp_seconds",
                &[("schedule", "tick")],
            )
            .is_some_and(|s| s >= (due / 1000) as f64)
    });
}
