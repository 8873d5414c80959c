//! The chaos soak: the real binaries under a random sequence of faults for
//! a set time, on hosts made of network namespaces (see `netns`). A durable
//! `alaska-broker`, three `alaska` workers (a Lua echo that also appends the
//! request's sequence number to a file of its own: a side effect the soak
//! counts), `alaska-bench` as the producer with trackers at a steady rate
//! (resending what got no reply). Every few seconds one fault, chosen by a
//! seeded PRNG: `kill -9` of the broker and a restart on the same store,
//! `kill -9` of a worker and a restart, `SIGSTOP`/`SIGCONT` of a worker for
//! 2-15 s, a worker's link cut for 2-15 s.
//!
//! At the end it prints one line (`sent=... answered=... lost=...
//! duplicated_replies=... side_effects=... max_latency=... faults=...`) and
//! fails when a request was lost, when an answered request left no side
//! effect, or when a process misbehaved (ended without being killed, or did
//! not stop within its shutdown time on SIGTERM).
//!
//! It runs only when asked: `ALASKA_CHAOS_SECONDS=N` (`tools/chaos.sh
//! --seconds N` sets it), with `ALASKA_CHAOS_STORAGE=always|batch|memory`,
//! `ALASKA_CHAOS_RETRIES=N` (the producer's resends, default 50) and
//! `ALASKA_CHAOS_SEED=S` (printed at the start, so a run can be repeated with
//! the same faults). Skipped, with the reason printed, where namespaces
//! cannot be made (not root, no `ip`).

mod common;
mod netns;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use netns::{Host, Net, Proc};

const PORT: u16 = 9999;
/// The broker's client expiry: how soon a silent worker's requests go to
/// another worker.
const EXPIRY_MS: u64 = 3000;
/// Requests per second from the producer, and its window. The workers
/// serve at most 30 per second (3 x pool 2, 200 ms a request), so the
/// window stays full and requests always wait in the broker's queue: a
/// broker that lost its queue in a crash would lose them.
const RATE: u64 = 40;
const WINDOW: &str = "20";

fn bin(name: &str) -> PathBuf {
    assert_cmd::cargo::cargo_bin(name)
}

/// xorshift64*: small, seeded, the same faults for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

struct Soak {
    net: Net,
    broker_host: Host,
    broker: Proc,
    broker_cfg: PathBuf,
    workers: Vec<(Host, Proc, PathBuf)>,
    /// Processes this soak ended itself (their exit is no misbehaviour).
    killed: Vec<Proc>,
    misbehaved: Vec<String>,
    /// Starts so far, to name each run's log files apart.
    starts: u32,
}

impl Soak {
    fn endpoint(&self) -> String {
        format!("tcp://{}:{PORT}", self.net.ip(self.broker_host, 0))
    }

    fn start_broker(&mut self) {
        self.starts += 1;
        let name = format!("broker-{}", self.starts);
        let p = self.net.spawn(
            self.broker_host,
            &name,
            &bin("alaska-broker"),
            &["-c", self.broker_cfg.to_str().unwrap()],
        );
        assert!(
            self.net.wait_listening(p, PORT, Duration::from_secs(30)),
            "the broker does not listen:\n{}",
            self.net.stderr(p)
        );
        self.broker = p;
    }

    fn start_worker(&mut self, i: usize) {
        let (host, _, cfg) = self.workers[i].clone();
        self.starts += 1;
        let name = format!("worker{i}-{}", self.starts);
        let p = self.net.spawn(
            host,
            &name,
            &bin("alaska"),
            &["-c", cfg.to_str().unwrap(), "-f"],
        );
        self.workers[i].1 = p;
    }

    /// Notes every process that ended though nobody ended it.
    fn check_alive(&mut self) {
        let mut all = vec![("broker".to_string(), self.broker)];
        for (i, (_, p, _)) in self.workers.iter().enumerate() {
            all.push((format!("worker{i}"), *p));
        }
        for (name, p) in all {
            if self.killed.contains(&p) {
                continue;
            }
            if let Some(status) = self.net.exited(p) {
                self.misbehaved.push(format!(
                    "{name} ended by itself ({status}) at {:.1} s",
                    self.net.t()
                ));
                self.killed.push(p);
            }
        }
    }
}

fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[test]
fn chaos_soak() {
    let Some(seconds) = setting("ALASKA_CHAOS_SECONDS").and_then(|s| s.parse::<u64>().ok()) else {
        println!("chaos_soak: skipped: set ALASKA_CHAOS_SECONDS (tools/chaos.sh --seconds N)");
        return;
    };
    let storage = setting("ALASKA_CHAOS_STORAGE").unwrap_or_else(|| "always".into());
    assert!(
        ["always", "batch", "memory"].contains(&storage.as_str()),
        "ALASKA_CHAOS_STORAGE: always, batch or memory"
    );
    // The producer resends what got no reply (as a careful producer does);
    // `ALASKA_CHAOS_RETRIES=0` shows what the brokers alone keep.
    let retries = setting("ALASKA_CHAOS_RETRIES").unwrap_or_else(|| "50".into());
    let seed = setting("ALASKA_CHAOS_SEED")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        .max(1);
    println!("chaos_soak: {seconds} s, storage {storage}, seed {seed}");
    let mut net = match Net::new("chaos", 1) {
        Ok(n) => n,
        Err(why) => {
            println!("chaos_soak: skipped: {why}");
            return;
        }
    };
    let broker_host = net.host("broker", &[0]);
    let store = net.dir().join("store");
    let storage_cfg = if storage == "memory" {
        String::new()
    } else {
        format!(
            "    storage\n        dir = {}\n        sync = {storage}\n",
            store.display()
        )
    };
    let broker_cfg = net.write(
        "broker.cfg",
        &format!(
            "server\n    timeout = {EXPIRY_MS}\nmlm_server\n    bind\n        endpoint = tcp://*:{PORT}\n{storage_cfg}"
        ),
    );
    let first = net.spawn(
        broker_host,
        "broker-0",
        &bin("alaska-broker"),
        &["-c", broker_cfg.to_str().unwrap()],
    );
    assert!(
        net.wait_listening(first, PORT, Duration::from_secs(30)),
        "the broker does not listen:\n{}",
        net.stderr(first)
    );
    let mut soak = Soak {
        net,
        broker_host,
        broker: first,
        broker_cfg,
        workers: Vec::new(),
        killed: Vec::new(),
        misbehaved: Vec::new(),
        starts: 0,
    };
    let ep = soak.endpoint();
    let effects = soak.net.dir().join("effects");
    std::fs::create_dir_all(&effects).unwrap();
    for i in 0..3 {
        let host = soak.net.host(&format!("w{i}"), &[0]);
        let script = format!(
            "local f = assert(io.open('{}/worker{i}.log', 'a'))\nf:write(alaskaContext:sub(1, 16), '\\n')\nf:close()\nalaska.sleep(200)\nreturn alaskaContext\n",
            effects.display()
        );
        soak.net.write(&format!("scripts{i}/chaos.lua"), &script);
        let cfg = soak.net.write(
            &format!("worker{i}.cfg"),
            &format!(
                "worker\n    scripts\n        dir = \"{}\"\n    pool\n        size = \"2\"\n    broker\n        endpoint = \"{ep}\"\n        embedded = \"0\"\n    service\n        address = \"chaos\"\n    shutdown\n        timeout = \"5s\"\n",
                soak.net.dir().join(format!("scripts{i}")).display()
            ),
        );
        let name = format!("worker{i}-0");
        let p = soak.net.spawn(
            host,
            &name,
            &bin("alaska"),
            &["-c", cfg.to_str().unwrap(), "-f"],
        );
        soak.workers.push((host, p, cfg));
        assert!(
            soak.net.wait_log(
                soak.workers[i].1,
                &["broker connected"],
                1,
                Duration::from_secs(30)
            ),
            "worker{i} not connected:\n{}",
            soak.net.stderr(soak.workers[i].1)
        );
    }
    let prod = soak.net.host("prod", &[0]);
    let total = (seconds * RATE).to_string();
    let rate = RATE.to_string();
    let bench = soak.net.spawn(
        prod,
        "bench",
        &bin("alaska-bench"),
        &[
            "-e",
            &ep,
            "-a",
            "chaos",
            "-s",
            "chaos",
            "-n",
            &total,
            "-w",
            WINDOW,
            "--rate",
            &rate,
            "--retries",
            "50",
            "--retry-after",
            "4000",
            "--idle-timeout",
            "90",
            "--json",
        ],
    );

    let mut rng = Rng(seed);
    let mut faults: HashMap<&str, u32> = HashMap::new();
    let began = Instant::now();
    let end = began + Duration::from_secs(seconds);
    let nap = |d: u64| std::thread::sleep(Duration::from_millis(d));
    while Instant::now() < end {
        // The time between faults is the point of a soak, not a wait for
        // an event: 3-6 s of normal service.
        nap(rng.range(3000, 6000));
        soak.check_alive();
        if Instant::now() >= end {
            break;
        }
        let w = rng.range(0, 2) as usize;
        let hold = rng.range(2000, 15000);
        match rng.range(0, 3) {
            0 => {
                *faults.entry("broker_kill").or_default() += 1;
                let b = soak.broker;
                soak.killed.push(b);
                soak.net.kill9(b);
                soak.start_broker();
            }
            1 => {
                *faults.entry("worker_kill").or_default() += 1;
                let p = soak.workers[w].1;
                soak.killed.push(p);
                soak.net.kill9(p);
                soak.start_worker(w);
            }
            2 => {
                *faults.entry("pause").or_default() += 1;
                let p = soak.workers[w].1;
                soak.net.signal(p, libc::SIGSTOP);
                nap(hold);
                soak.net.signal(p, libc::SIGCONT);
            }
            _ => {
                *faults.entry("link_cut").or_default() += 1;
                let h = soak.workers[w].0;
                soak.net.link(h, 0, false);
                nap(hold);
                soak.net.link(h, 0, true);
            }
        }
    }
    soak.check_alive();
    // The producer ends once every request is answered (or nothing came
    // for its idle timeout): bounded by the rest of its pace plus that.
    let code = soak.net.wait(bench, Duration::from_secs(seconds + 200));
    let out = soak.net.stdout(bench);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
        panic!(
            "bench summary {out:?} (status {code:?}): {e}\n{}",
            soak.net.stderr(bench)
        )
    });
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    // A stop always ends: SIGTERM, then each process within its bound.
    let mut stopping = vec![("broker".to_string(), soak.broker, 10u64)];
    for (i, (_, p, _)) in soak.workers.iter().enumerate() {
        stopping.push((format!("worker{i}"), *p, 10));
    }
    for (_, p, _) in &stopping {
        if !soak.killed.contains(p) {
            soak.net.signal(*p, libc::SIGTERM);
        }
    }
    for (name, p, within) in stopping {
        if soak.killed.contains(&p) {
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(within);
        // Bounded poll for the exit (no event to await on another
        // process's end but its status).
        let status = loop {
            if let Some(s) = soak.net.exited(p) {
                break Some(s);
            }
            if Instant::now() >= deadline {
                break None;
            }
            nap(50);
        };
        match status {
            Some(s) if s == "exit status: 0" => {}
            Some(s) => soak
                .misbehaved
                .push(format!("{name} ended with {s} on SIGTERM")),
            None => soak
                .misbehaved
                .push(format!("{name} did not stop within {within} s of SIGTERM")),
        }
    }
    // Side effects: every line a run of the script; distinct sequence
    // numbers are the requests that ran at least once.
    let mut lines = 0u64;
    let mut seen = std::collections::HashSet::new();
    for i in 0..3 {
        let text =
            std::fs::read_to_string(effects.join(format!("worker{i}.log"))).unwrap_or_default();
        for l in text.lines() {
            lines += 1;
            seen.insert(l.to_string());
        }
    }
    let fault_text = {
        let mut v: Vec<String> = faults.iter().map(|(k, n)| format!("{k}:{n}")).collect();
        v.sort();
        v.join(",")
    };
    let total_faults: u32 = faults.values().sum();
    println!(
        "sent={} answered={} lost={} duplicated_replies={} resent={} side_effects={lines} side_effects_distinct={} max_latency={}ms max_gap={}ms faults={total_faults} ({fault_text}) storage={storage} retries={retries} seed={seed} misbehaved={}",
        n("sent"),
        n("received"),
        n("lost"),
        n("duplicated"),
        n("resent"),
        seen.len(),
        n("max_us") / 1000,
        n("max_gap_ms"),
        soak.misbehaved.len()
    );
    for m in &soak.misbehaved {
        println!("misbehaved: {m}");
    }
    assert_eq!(
        n("sent"),
        seconds * RATE,
        "the producer did not send everything"
    );
    assert_eq!(n("lost"), 0, "requests lost (seed {seed})");
    assert!(
        seen.len() as u64 >= n("received"),
        "answered requests without a side effect: {} distinct side effects, {} answered (seed {seed})",
        seen.len(),
        n("received")
    );
    assert!(
        soak.misbehaved.is_empty(),
        "processes misbehaved (seed {seed}): {:?}",
        soak.misbehaved
    );
}
