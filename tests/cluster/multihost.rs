//! Multi-host scenarios: brokers, workers and producers each on its own
//! host (a network namespace with its own address, see `netns`), under a
//! paced load from `alaska-bench`, with faults injected: a link taken down,
//! `kill -9`, `SIGSTOP`/`SIGCONT`. Each scenario counts requests sent,
//! answered, lost and duplicated (the bench's JSON summary) and asserts
//! that none is lost. The figures are printed as table rows
//! (`cargo test --test cluster multihost:: -- --nocapture`); docs/MULTIHOST.md has
//! those of a run.
//!
//! Skipped, with the reason printed, where namespaces cannot be made (not
//! root, no `ip`); scenario 4 also without the real Malamute.

use crate::common;
use crate::netns;

use std::path::PathBuf;
use std::time::Duration;

use netns::{Host, Net, Proc};

/// The brokers' port on every host.
const PORT: u16 = 9999;
/// The brokers' client expiry (`server/timeout`), shorter than the
/// reference's 10 s so a run recovers in seconds: it decides how soon a
/// broker gives a silent worker's requests to another.
/// `ALASKA_MULTIHOST_EXPIRY_MS` overrides it (to measure other values).
fn expiry_ms() -> u64 {
    std::env::var("ALASKA_MULTIHOST_EXPIRY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}
/// Requests per run, the window, and the pace (so the load lasts well
/// beyond the fault).
const REQUESTS: &str = "2000";
const WINDOW: &str = "50";

fn bin(name: &str) -> PathBuf {
    assert_cmd::cargo::cargo_bin(name)
}

/// The network, or `None` (and a line saying why) where it cannot be made.
fn net_or_skip(test: &str, lans: usize) -> Option<Net> {
    match Net::new(test, lans) {
        Ok(n) => Some(n),
        Err(why) => {
            println!("{test}: skipped: {why}");
            None
        }
    }
}

fn endpoint(net: &Net, host: Host, lan: usize) -> String {
    format!("tcp://{}:{PORT}", net.ip(host, lan))
}

/// The project's broker on `host`.
fn alaska_broker(net: &mut Net, host: Host, name: &str) -> Proc {
    let cfg = net.write(
        &format!("{name}.cfg"),
        &format!(
            "server\n    timeout = {}\nmlm_server\n    bind\n        endpoint = tcp://*:{PORT}\n",
            expiry_ms()
        ),
    );
    let p = net.spawn(
        host,
        name,
        &bin("alaska-broker"),
        &["-c", cfg.to_str().unwrap()],
    );
    assert!(
        net.wait_listening(p, PORT, Duration::from_secs(10)),
        "{name} does not listen"
    );
    p
}

/// The real Malamute on `host`.
fn malamute(net: &mut Net, host: Host, name: &str, program: &std::path::Path) -> Proc {
    let cfg = net.write(
        &format!("{name}.cfg"),
        &format!(
            "server\n    timeout = {}\n    verbose = 0\nmlm_server\n    security\n        mechanism = null\n    bind\n        endpoint = tcp://*:{PORT}\n",
            expiry_ms()
        ),
    );
    let p = net.spawn(host, name, program, &[cfg.to_str().unwrap()]);
    assert!(
        net.wait_listening(p, PORT, Duration::from_secs(10)),
        "{name} does not listen"
    );
    p
}

/// Scripts for a worker: `work` (100 ms, then the request back: so that
/// requests are in flight when a fault strikes), `echo`, `ping`, and `who`
/// answering `tag`.
fn scripts(net: &Net, tag: &str) -> PathBuf {
    net.write(
        &format!("{tag}/work.lua"),
        "alaska.sleep(100) return alaskaContext",
    );
    net.write(&format!("{tag}/echo.lua"), "return alaskaContext");
    net.write(&format!("{tag}/ping.lua"), "return 'pong'");
    net.write(&format!("{tag}/who.lua"), &format!("return '{tag}'"));
    net.dir().join(tag)
}

/// An alaska worker on `host` serving `endpoints` (service `svc`, pool 16),
/// started once it has connected to every one of them.
fn worker(net: &mut Net, host: Host, name: &str, endpoints: &[String]) -> Proc {
    let dir = scripts(net, name);
    let cfg = net.write(
        &format!("{name}.cfg"),
        &format!(
            "worker\n    scripts\n        dir = \"{}\"\n    pool\n        size = \"16\"\n    broker\n        endpoint = \"{}\"\n        embedded = \"0\"\n    service\n        address = \"svc\"\n",
            dir.display(),
            endpoints.join(",")
        ),
    );
    let p = net.spawn(
        host,
        name,
        &bin("alaska"),
        &["-c", cfg.to_str().unwrap(), "-f"],
    );
    for e in endpoints {
        offering(net, p, e, 1);
    }
    p
}

/// Waits until worker `p` has said `n` times that it is connected to
/// `endpoint` and offering there.
fn offering(net: &Net, p: Proc, endpoint: &str, n: usize) {
    assert!(
        net.wait_log(
            p,
            &["broker connected", endpoint],
            n,
            Duration::from_secs(30)
        ),
        "worker not offering on {endpoint} ({n} times):\n{}",
        net.stderr(p)
    );
}

/// alaska-bench's summary.
#[derive(Debug)]
struct Figures {
    sent: u64,
    received: u64,
    lost: u64,
    duplicated: u64,
    resent: u64,
    max_gap_ms: u64,
    max_ms: u64,
    per_broker: Vec<u64>,
}

/// Starts alaska-bench on `host`: `REQUESTS` requests of the work script,
/// window `WINDOW`, at `rate` per second, then `extra` flags.
fn bench(
    net: &mut Net,
    host: Host,
    name: &str,
    endpoints: &str,
    rate: u32,
    extra: &[&str],
) -> Proc {
    let rate = rate.to_string();
    let mut args = vec![
        "-e",
        endpoints,
        "-a",
        "svc",
        "-s",
        "work",
        "-n",
        REQUESTS,
        "-w",
        WINDOW,
        "--rate",
        &rate,
        "--idle-timeout",
        "40",
        "--json",
    ];
    args.extend_from_slice(extra);
    net.spawn(host, name, &bin("alaska-bench"), &args)
}

/// Waits for a bench run to end and reads its summary.
fn figures(net: &mut Net, p: Proc) -> Figures {
    let code = net.wait(p, Duration::from_secs(150));
    assert!(code.is_some(), "the bench did not finish");
    let out = net.stdout(p);
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("bench summary {out:?}: {e}\n{}", net.stderr(p)));
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    Figures {
        sent: n("sent"),
        received: n("received"),
        lost: n("lost"),
        duplicated: n("duplicated"),
        resent: n("resent"),
        max_gap_ms: n("max_gap_ms"),
        max_ms: n("max_us") / 1000,
        per_broker: v["per_broker"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_u64()).collect())
            .unwrap_or_default(),
    }
}

/// One row of the table in docs/MULTIHOST.md.
fn report(scenario: &str, f: &Figures) {
    println!(
        "| {scenario} | {} | {} | {} | {} | {} | {:.1} s | {:.1} s |",
        f.sent,
        f.received,
        f.lost,
        f.duplicated,
        f.resent,
        f.max_gap_ms as f64 / 1000.0,
        f.max_ms as f64 / 1000.0
    );
}

/// A scenario's phase (a link down, a process paused for so long): time
/// passing is what the scenarios test, not a wait for an event.
fn sleep_s(s: f64) {
    std::thread::sleep(Duration::from_secs_f64(s));
}

/// The hosts of scenarios 1 and 2: `alaska-broker` on one, a worker on
/// each of two others, a host for the producer. Returns the broker's
/// endpoint, the first worker's host and process, the producer's host.
fn one_broker_two_workers(net: &mut Net) -> (String, Host, Proc, Host) {
    let b = net.host("broker", &[0]);
    let (h1, h2, hp) = (
        net.host("w1", &[0]),
        net.host("w2", &[0]),
        net.host("prod", &[0]),
    );
    alaska_broker(net, b, "broker");
    let ep = endpoint(net, b, 0);
    let w1 = worker(net, h1, "worker1", std::slice::from_ref(&ep));
    worker(net, h2, "worker2", std::slice::from_ref(&ep));
    (ep, h1, w1, hp)
}

/// 1. One broker, two workers on two other hosts, a producer on a fourth:
///    one worker's link goes down for 10 s under load. The broker gives
///    the cut worker's unconfirmed requests to the other one when it
///    expires it (`server/timeout`); nothing is lost; the cut worker
///    reconnects by itself when its link is back.
#[test]
fn s1_worker_link_down_for_10_s() {
    let Some(mut net) = net_or_skip("s1", 1) else {
        return;
    };
    let (ep, h1, w1, hp) = one_broker_two_workers(&mut net);
    let load = bench(&mut net, hp, "bench", &ep, 100, &[]);
    sleep_s(4.0);
    net.link(h1, 0, false);
    sleep_s(10.0);
    net.link(h1, 0, true);
    let f = figures(&mut net, load);
    report("1. worker link down 10 s (1 broker, 2 workers)", &f);
    assert_eq!((f.sent, f.received, f.lost), (2000, 2000, 0), "{f:?}");
    // The cut worker comes back and offers again by itself.
    offering(&net, w1, &ep, 2);
}

/// 2. The same, with the worker paused (SIGSTOP) for 15 s, then
///    continued: nothing lost; what the paused worker finishes after it
///    wakes up arrives as duplicates, counted.
#[test]
fn s2_worker_paused_for_15_s() {
    let Some(mut net) = net_or_skip("s2", 1) else {
        return;
    };
    let (ep, _, w1, hp) = one_broker_two_workers(&mut net);
    let load = bench(&mut net, hp, "bench", &ep, 80, &[]);
    sleep_s(4.0);
    net.signal(w1, libc::SIGSTOP);
    sleep_s(15.0);
    net.signal(w1, libc::SIGCONT);
    let f = figures(&mut net, load);
    report("2. worker paused 15 s (1 broker, 2 workers)", &f);
    assert_eq!((f.sent, f.received, f.lost), (2000, 2000, 0), "{f:?}");
    offering(&net, w1, &ep, 2);
}

/// Which broker program scenarios 3 and 4 run.
#[derive(Clone)]
enum BrokerKind {
    Ours,
    Malamute(PathBuf),
}

fn start_broker(net: &mut Net, host: Host, name: &str, kind: &BrokerKind) -> Proc {
    match kind {
        BrokerKind::Ours => alaska_broker(net, host, name),
        BrokerKind::Malamute(p) => malamute(net, host, name, p),
    }
}

/// Scenarios 3 and 4: two brokers on two hosts, two workers each serving
/// both, a producer with both endpoints and retries; broker 1 is killed
/// (`kill -9`) under load and started again 7 s later.
fn two_brokers_one_killed(test: &str, row: &str, kind: BrokerKind) {
    let Some(mut net) = net_or_skip(test, 1) else {
        return;
    };
    let (hb1, hb2) = (net.host("b1", &[0]), net.host("b2", &[0]));
    let (h1, h2, hp) = (
        net.host("w1", &[0]),
        net.host("w2", &[0]),
        net.host("prod", &[0]),
    );
    let b1 = start_broker(&mut net, hb1, "broker1", &kind);
    start_broker(&mut net, hb2, "broker2", &kind);
    let (ep1, ep2) = (endpoint(&net, hb1, 0), endpoint(&net, hb2, 0));
    let both = [ep1.clone(), ep2.clone()];
    let w1 = worker(&mut net, h1, "worker1", &both);
    let w2 = worker(&mut net, h2, "worker2", &both);
    let list = both.join(",");
    let load = bench(
        &mut net,
        hp,
        "bench",
        &list,
        100,
        &["--retries", "3", "--retry-after", "2000"],
    );
    sleep_s(5.0);
    net.kill9(b1);
    sleep_s(7.0);
    start_broker(&mut net, hb1, "broker1-again", &kind);
    let f = figures(&mut net, load);
    report(row, &f);
    assert_eq!((f.sent, f.received, f.lost), (2000, 2000, 0), "{f:?}");
    assert!(f.per_broker[1] > 0, "broker 2 took over: {f:?}");
    // Both workers offer on the broker that came back, by themselves...
    offering(&net, w1, &ep1, 2);
    offering(&net, w2, &ep1, 2);
    // ... and it serves: a run through it alone.
    let again = net.spawn(
        hp,
        "bench-b1",
        &bin("alaska-bench"),
        &[
            "-e",
            &ep1,
            "-a",
            "svc",
            "-s",
            "echo",
            "-n",
            "200",
            "-w",
            "20",
            "--idle-timeout",
            "20",
            "--json",
        ],
    );
    let g = figures(&mut net, again);
    assert_eq!((g.received, g.lost), (200, 0), "{g:?}");
}

/// 3. Two project brokers, one killed under load and restarted.
#[test]
fn s3_broker_killed_and_restarted_with_retries() {
    two_brokers_one_killed(
        "s3",
        "3. broker kill -9, restart after 7 s (2 alaska-brokers, 2 workers on both, --retries 3)",
        BrokerKind::Ours,
    );
}

/// 4. The same with the real Malamute as both brokers (skipped where it is
///    not installed).
#[test]
fn s4_malamute_killed_and_restarted_with_retries() {
    let Some(m) = common::malamute::malamute_binary() else {
        println!("s4: skipped: real Malamute not found (set ALASKA_MALAMUTE)");
        return;
    };
    two_brokers_one_killed(
        "s4",
        "4. the same with the real Malamute as both brokers",
        BrokerKind::Malamute(m),
    );
}

/// 5. A worker host partitioned from one of two brokers only (two LANs:
///    broker 1 on one, broker 2 on the other, workers and producer on
///    both): it keeps serving through the other broker.
#[test]
fn s5_worker_partitioned_from_one_broker() {
    let Some(mut net) = net_or_skip("s5", 2) else {
        return;
    };
    let (hb1, hb2) = (net.host("b1", &[0]), net.host("b2", &[1]));
    let (h1, h2, hp) = (
        net.host("w1", &[0, 1]),
        net.host("w2", &[0, 1]),
        net.host("prod", &[0, 1]),
    );
    alaska_broker(&mut net, hb1, "broker1");
    alaska_broker(&mut net, hb2, "broker2");
    let (ep1, ep2) = (endpoint(&net, hb1, 0), endpoint(&net, hb2, 1));
    let both = [ep1.clone(), ep2.clone()];
    worker(&mut net, h1, "worker1", &both);
    worker(&mut net, h2, "worker2", &both);
    let list = both.join(",");
    let load = bench(
        &mut net,
        hp,
        "bench",
        &list,
        100,
        &["--balance", "rr", "--retries", "3", "--retry-after", "2000"],
    );
    sleep_s(4.0);
    // Worker 1 loses broker 1's LAN only.
    net.link(h1, 0, false);
    // Past broker 1's expiry of worker 1, ask each broker who serves.
    sleep_s(expiry_ms() as f64 / 1000.0 + 2.0);
    let ten = b"{}\n".repeat(10);
    let who = |net: &mut Net, name: &str, ep: &str| {
        let args = [
            "-e", ep, "-a", "svc", "-s", "who", "--wait", "15", "--lines", "-q",
        ];
        let (code, out, err) =
            net.run(hp, name, &bin("alas"), &args, &ten, Duration::from_secs(30));
        assert_eq!(code, Some(0), "{err}");
        out
    };
    let via2 = who(&mut net, "who-b2", &ep2);
    let via1 = who(&mut net, "who-b1", &ep1);
    let f = figures(&mut net, load);
    net.link(h1, 0, true);
    report(
        "5. worker 1 cut from broker 1 only (2 brokers on 2 LANs, rr, --retries 3)",
        &f,
    );
    assert_eq!((f.sent, f.received, f.lost), (2000, 2000, 0), "{f:?}");
    assert!(
        f.per_broker.iter().all(|n| *n > 0),
        "round robin used both: {f:?}"
    );
    // Worker 1 keeps serving through broker 2; broker 1 has only worker 2.
    assert!(
        via2.lines().any(|l| l == "worker1"),
        "worker 1 served nothing through broker 2: {via2:?}"
    );
    assert!(
        via1.lines().all(|l| l == "worker2") && via1.lines().count() == 10,
        "through broker 1: {via1:?}"
    );
}

/// The harness itself: a test that panics leaves no namespace and no
/// process behind, and namespaces a crashed run left are removed.
#[test]
fn harness_tears_down_on_panic_and_removes_leftovers() {
    let Some(probe) = net_or_skip("td", 1) else {
        return;
    };
    drop(probe);
    let names = || {
        String::from_utf8_lossy(
            &std::process::Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    // A run that "crashed": a namespace of a pid that does not exist.
    let dead = format!("amh{}-crashed0-sw", u32::MAX - 7);
    assert!(std::process::Command::new("ip")
        .args(["netns", "add", &dead])
        .status()
        .unwrap()
        .success());
    let (tx, rx) = std::sync::mpsc::channel();
    let panicked = std::thread::spawn(move || {
        let mut net = Net::new("td", 1).unwrap();
        let h = net.host("broker", &[0]);
        let b = alaska_broker(&mut net, h, "broker");
        tx.send((net.dir().to_path_buf(), names(), net.pid(b)))
            .unwrap();
        panic!("on purpose: the harness must clean up");
    })
    .join();
    assert!(panicked.is_err());
    let (dir, during, pid) = rx.recv().unwrap();
    assert!(!during.contains(&dead), "leftover not removed: {during}");
    assert!(
        during.contains("-td") && during.contains("-broker"),
        "{during}"
    );
    let after = names();
    let me = format!("amh{}-td", std::process::id());
    assert!(
        !after.lines().any(|l| l.starts_with(&me)),
        "namespaces left: {after}"
    );
    assert!(!dir.exists(), "temporary folder left");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "broker process {pid} left running"
    );
}
