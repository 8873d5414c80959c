//! Runners end to end: a real broker, real workers (in-process, and the
//! `alaska` binary where its log or its signals matter), real child
//! processes (Python handlers written with the shipped module, a Perl
//! one with the protocol done by hand) and a real HTTP server (a thread of
//! this test). What arrives is checked byte for byte.

use crate::common;
use crate::server;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alaska::config::Settings;
use alaska::mlm::{Client, Delivery, DeliveryKind};
use alaska::worker::runners::RunnerConfig;
use alaska::worker::{DispatcherOptions, Policy, PoolConfig};
use assert_cmd::cargo::CommandCargoExt;
use common::bin::*;
use common::*;
use server::{Reply, Server};

const T: Duration = Duration::from_secs(15);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runners from ZPL lines (indented under `worker/runners`), through the
/// real configuration reader.
fn runners(zpl: &str) -> Vec<RunnerConfig> {
    Settings::from_sources(&format!("worker\n    runners\n{zpl}"), Vec::new())
        .expect("runner settings parse")
        .runners
}

/// The ZPL of an exec runner `py` running tests/runners/handler.py with
/// the shipped module, for the subjects of `pattern`.
fn python_runner(pattern: &str, processes: usize, timeout: &str, test_dir: &Path) -> String {
    format!(
        "        py\n            match = \"{pattern}\"\n            type = \"exec\"\n            command = \"python3 '{}'\"\n            processes = \"{processes}\"\n            timeout = \"{timeout}\"\n            env\n                PYTHONPATH = \"{}\"\n                ALASKA_TEST_DIR = \"{}\"\n",
        repo().join("tests/runners/handler.py").display(),
        repo().join("runners/python").display(),
        test_dir.display()
    )
}

/// An HTTP runner `app` posting to `url` for the subjects of `pattern`.
fn http_runner(pattern: &str, url: &str, concurrency: usize, timeout: &str) -> String {
    format!(
        "        app\n            match = \"{pattern}\"\n            type = \"http\"\n            url = \"{url}\"\n            concurrency = \"{concurrency}\"\n            timeout = \"{timeout}\"\n            headers\n                X-Api-Key = \"secret\"\n"
    )
}

/// A worker on service `svc` with these runners and quick retries.
fn worker(endpoint: &str, dir: &Path, rs: Vec<RunnerConfig>, attempts: u32) -> Worker {
    Worker::start(
        endpoint,
        dir,
        move |o: &mut DispatcherOptions, p: &mut PoolConfig| {
            o.runners = rs;
            o.shutdown_timeout = Duration::from_secs(2);
            o.policy = Policy {
                attempts,
                backoff: Duration::from_millis(200),
                backoff_max: Duration::from_millis(400),
                retry_errors: false,
                max_hops: 4,
            };
            p.size = 2;
        },
    )
}

/// Sends one request with a tracker, waits for the mail that answers it.
fn ask(c: &mut Client, subject: &str, frames: &[&[u8]]) -> Delivery {
    c.sendfor(
        "svc",
        subject,
        "trk-1",
        0,
        frames.iter().map(|f| f.to_vec()).collect(),
    )
    .unwrap();
    expect(c, DeliveryKind::Mailbox, T)
}

fn text(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.content[0]).into_owned()
}

/// A producer, once the worker answers a Lua probe (its offer is in).
fn producer(endpoint: &str, dir: &Path) -> Client {
    let mut p = client(endpoint, &format!("p-{}", unique()));
    script(dir, "ping", "return 'pong'");
    let d = ask(&mut p, "ping", &[b""]);
    assert_eq!(d.content, vec![b"pong".to_vec()]);
    p
}

/// Whether a process is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Waits until every pid is gone; false if one is still there after `within`.
fn all_gone(pids: &[u32], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if pids.iter().all(|&p| gone(p)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
    }
    pids.iter().all(|&p| gone(p))
}

/// Reads "<pid> <pid>" from a file a handler wrote, waiting for it.
fn pids_from(file: &Path) -> Vec<u32> {
    let deadline = Instant::now() + T;
    loop {
        let s = std::fs::read_to_string(file).unwrap_or_default();
        if s.ends_with('\n') {
            return s.split_whitespace().map(|p| p.parse().unwrap()).collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
    }
}

// ---------------------------------------------------------------- exec --

#[test]
fn a_python_handler_replies_to_alas_wait() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let _w = worker(
        b.endpoint(),
        dir.path(),
        runners(&python_runner("^hello$", 2, "10s", dir.path())),
        3,
    );
    let _p = producer(b.endpoint(), dir.path());
    let out = Command::cargo_bin("alas")
        .unwrap()
        .args([
            "-e",
            b.endpoint(),
            "-a",
            "svc",
            "-s",
            "hello",
            "--wait",
            "10",
            "--raw",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"world\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        reply.starts_with("hello world (attempt 1, frames 1, tracker alas-")
            && reply.ends_with(")\n"),
        "{reply:?}"
    );
}

#[test]
fn a_handler_returning_retry_succeeds_on_its_third_attempt() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let _w = worker(
        b.endpoint(),
        dir.path(),
        runners(&python_runner("^flaky$", 1, "10s", dir.path())),
        3,
    );
    let mut p = producer(b.endpoint(), dir.path());
    let started = Instant::now();
    let d = ask(&mut p, "flaky", &[b"x"]);
    assert_eq!((d.subject.as_str(), d.tracker.as_str()), ("flaky", "trk-1"));
    assert_eq!(text(&d), "ok on attempt 3");
    // Two retries of 200 ms each, as the handler asked.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn an_exception_becomes_a_dead_letter_with_the_python_traceback() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let _w = worker(
        b.endpoint(),
        dir.path(),
        runners(&python_runner("^boom$", 1, "10s", dir.path())),
        3,
    );
    let mut awerr = client(b.endpoint(), "awerr");
    let mut p = producer(b.endpoint(), dir.path());
    let d = ask(&mut p, "boom", &[b"xyz"]);
    assert_eq!(
        (d.subject.as_str(), d.tracker.as_str()),
        ("ERROR:boom", "trk-1")
    );
    let t = text(&d);
    assert!(
        t.starts_with("runtime error after 1 attempt: Traceback (most recent call last):\n"),
        "{t}"
    );
    assert!(
        t.contains("in boom\n") && t.ends_with("ValueError: bad input xyz"),
        "{t}"
    );
    let dead = expect(&mut awerr, DeliveryKind::Mailbox, T);
    assert_eq!(dead.subject, "boom");
    // The original report's two frames, then the metadata frame.
    assert_eq!(dead.content[..2], [t.into_bytes(), b"xyz".to_vec()]);
    assert_eq!(dead.content.len(), 3);
}

#[test]
fn a_crashing_or_garbling_child_is_replaced_and_the_next_request_served() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let zpl = format!(
        "{}        raw\n            match = \"^raw$\"\n            command = \"python3 '{}'\"\n            processes = \"1\"\n",
        python_runner("^(pid|crash|quit)$", 1, "10s", dir.path()),
        repo().join("tests/runners/garbage.py").display()
    );
    let _w = worker(b.endpoint(), dir.path(), runners(&zpl), 3);
    let mut p = producer(b.endpoint(), dir.path());

    let first: u32 = text(&ask(&mut p, "pid", &[b""])).parse().unwrap();
    let d = ask(&mut p, "crash", &[b""]);
    assert_eq!(d.subject, "ERROR:crash");
    let t = text(&d);
    assert!(
        t.starts_with(&format!("runtime error after 1 attempt: exec runner py: process {first} died while handling the request")),
        "{t}"
    );
    assert!(t.contains("exit status: 3"), "{t}");
    // Restarted (after the backoff) and serving.
    let second: u32 = text(&ask(&mut p, "pid", &[b""])).parse().unwrap();
    assert_ne!(first, second);
    assert!(all_gone(&[first], T));
    // A child that exits while idle is replaced before the next request,
    // which does not fail.
    let quitter: u32 = text(&ask(&mut p, "quit", &[b""])).parse().unwrap();
    assert_eq!(quitter, second);
    assert!(all_gone(&[quitter], T), "the quitter did not exit");
    let d = ask(&mut p, "pid", &[b""]);
    assert_eq!(d.subject, "pid", "{}", text(&d));
    assert_ne!(text(&d).parse::<u32>().unwrap(), quitter);

    let before: u32 = text(&ask(&mut p, "raw", &[b"x"])).parse().unwrap();
    let d = ask(&mut p, "raw", &[b"garbage"]);
    assert_eq!(d.subject, "ERROR:raw");
    let t = text(&d);
    assert!(
        t.starts_with(&format!("bad handler output after 1 attempt: exec runner raw: process {before} wrote an answer that is not the protocol")),
        "{t}"
    );
    assert!(t.contains("\"this is not json\""), "{t}");
    let after: u32 = text(&ask(&mut p, "raw", &[b"x"])).parse().unwrap();
    assert_ne!(before, after);
    assert!(all_gone(&[before], T));
}

#[test]
fn a_child_past_its_timeout_is_killed_with_its_group_and_reported() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let _w = worker(
        b.endpoint(),
        dir.path(),
        runners(&python_runner("^(slow|pid)$", 1, "1s", dir.path())),
        3,
    );
    let mut awerr = client(b.endpoint(), "awerr");
    let mut p = producer(b.endpoint(), dir.path());
    let started = Instant::now();
    let d = ask(&mut p, "slow", &[b""]);
    let took = started.elapsed();
    let pids = pids_from(&dir.path().join("slow.pids"));
    assert_eq!(d.subject, "ERROR:slow");
    assert_eq!(
        text(&d),
        format!(
            "time budget after 1 attempt: exec runner py: no answer within 1s; process {} \
             killed (its process group) and replaced",
            pids[0]
        )
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(
        all_gone(&pids, Duration::from_secs(5)),
        "handler and its grandchild killed: {pids:?}"
    );
    assert_eq!(expect(&mut awerr, DeliveryKind::Mailbox, T).subject, "slow");
    // The replacement serves.
    let next: u32 = text(&ask(&mut p, "pid", &[b""])).parse().unwrap();
    assert_ne!(next, pids[0]);
}

#[test]
fn sends_binary_frames_forwards_and_drops_like_lua() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "final",
        "return alaskaContext .. ' then lua, frames=' .. #alaska.frames .. ', hops=' .. alaska.hops",
    );
    let _w = worker(
        b.endpoint(),
        dir.path(),
        runners(&python_runner(
            "^(sends|binary|forward|drop)$",
            2,
            "10s",
            dir.path(),
        )),
        3,
    );
    let mut events = client(b.endpoint(), &format!("sub-{}", unique()));
    events.set_consumer("runner-events", ".*").unwrap();
    let mut mailbox = client(b.endpoint(), "runner-box");
    let mut p = producer(b.endpoint(), dir.path());

    // Sends go out whatever the outcome (here: fail), in order.
    let d = ask(&mut p, "sends", &[b"payload"]);
    assert_eq!(d.subject, "ERROR:sends");
    assert_eq!(
        text(&d),
        "failed by its handler after 1 attempt: after sending"
    );
    let s = expect(&mut events, DeliveryKind::Stream, T);
    assert_eq!(
        (s.subject.as_str(), s.content.clone()),
        ("published", vec![b"payload".to_vec()])
    );
    let m = expect(&mut mailbox, DeliveryKind::Mailbox, T);
    assert_eq!(m.subject, "mailed");
    assert_eq!(m.content, vec![b"text".to_vec(), vec![0xff, 0x00]]);

    // Binary frames both ways (base64 on the wire).
    let d = ask(&mut p, "binary", &[b"x", &[1, 2, 0xff]]);
    assert_eq!(d.content, vec![vec![0xff, 2, 1]]);

    // A forward into a Lua stage: its reply reaches us with our tracker.
    let d = ask(&mut p, "forward", &[b"abc"]);
    assert_eq!((d.subject.as_str(), d.tracker.as_str()), ("final", "trk-1"));
    assert_eq!(text(&d), "abc+exec then lua, frames=2, hops=1");

    // Drop: nothing comes back.
    p.sendfor("svc", "drop", "trk-1", 0, vec![b"x".to_vec()])
        .unwrap();
    expect_none(&mut p, DeliveryKind::Mailbox, Duration::from_millis(500));
}

#[test]
fn the_shipped_examples_run() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let perl = Command::new("perl")
        .args(["-MJSON::PP", "-MMIME::Base64", "-e", "1"])
        .status()
        .is_ok_and(|s| s.success());
    let mut zpl = format!(
        "        pricing\n            match = \"^price$\"\n            command = \"python3 example.py\"\n            dir = \"{}\"\n",
        repo().join("runners/python").display()
    );
    if perl {
        zpl.push_str(&format!(
            "        shout\n            command = \"perl example.pl\"\n            dir = \"{}\"\n",
            repo().join("runners/perl").display()
        ));
    } else {
        println!("the_shipped_examples_run: perl with JSON::PP not found: Perl example skipped");
    }
    let _w = worker(b.endpoint(), dir.path(), runners(&zpl), 3);
    let mut orders = client(b.endpoint(), &format!("sub-{}", unique()));
    orders.set_consumer("orders", ".*").unwrap();
    let mut lengths = client(b.endpoint(), &format!("sub-{}", unique()));
    lengths.set_consumer("lengths", ".*").unwrap();
    let mut p = producer(b.endpoint(), dir.path());

    let d = ask(
        &mut p,
        "price",
        &[br#"{"id":"A-1","items":[{"sku":"apple","qty":3},{"sku":"melon"}]}"#],
    );
    assert_eq!(text(&d), r#"{"id":"A-1","total":4.0}"#);
    let s = expect(&mut orders, DeliveryKind::Stream, T);
    assert_eq!(
        (s.subject.as_str(), s.content.clone()),
        ("priced", vec![br#"{"id":"A-1","total":4.0}"#.to_vec()])
    );
    let d = ask(
        &mut p,
        "price",
        &[br#"{"id":"A-2","items":[{"sku":"kiwi"}]}"#],
    );
    assert_eq!(
        text(&d),
        "failed by its handler after 1 attempt: unknown sku 'kiwi'"
    );

    if perl {
        let d = ask(&mut p, "shout", &["héllo".as_bytes()]);
        assert_eq!(text(&d), "HÉLLO");
        let s = expect(&mut lengths, DeliveryKind::Stream, T);
        assert_eq!(
            (s.subject.as_str(), s.content.clone()),
            ("shout", vec![b"5".to_vec()])
        );
        let d = ask(&mut p, "shout", &[&[0xff, b'a']]);
        assert_eq!(d.content, vec![vec![0xff, b'A']]);
        let d = ask(&mut p, "shout", &[b""]);
        assert_eq!(
            text(&d),
            "failed by its handler after 1 attempt: empty request"
        );
    }
}

#[test]
fn requests_waiting_for_a_runner_at_a_stop_go_to_another_worker() {
    let b = common::broker_with_admin(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let zpl = python_runner("^(slow|pid)$", 1, "60s", dir.path());
    let w1 = worker(b.endpoint(), dir.path(), runners(&zpl), 3);
    let mut p = producer(b.endpoint(), dir.path());
    // The only child busy; three more wait in the runner and its backlog.
    p.sendfor("svc", "slow", "s0", 0, vec![b"".to_vec()])
        .unwrap();
    let held = pids_from(&dir.path().join("slow.pids"));
    for i in 1..=3 {
        p.sendfor("svc", "pid", &format!("q{i}"), 0, vec![b"".to_vec()])
            .unwrap();
    }
    // All three taken by the worker (none left in the broker's queue).
    common::wait_until(T, "the worker to take q1..q3", || {
        common::admin(&b, "/v1/services")["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "svc" && s["queued"] == 0)
    });
    // A graceful stop: the running request gets the shutdown timeout (2 s)
    // and is cut; none is lost.
    let stopping = Instant::now();
    assert_eq!(w1.stop(), Ok(()));
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    assert!(all_gone(&held, Duration::from_secs(2)), "{held:?}");
    // The second worker gets all four back (two children: "slow" holds one).
    let zpl2 = python_runner("^(slow|pid)$", 2, "60s", dir.path());
    let _w2 = worker(b.endpoint(), dir.path(), runners(&zpl2), 3);
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 3 {
        let d = expect(&mut p, DeliveryKind::Mailbox, T);
        assert_eq!(d.subject, "pid", "{}", text(&d));
        assert_ne!(text(&d).parse::<u32>().unwrap(), held[0]);
        got.insert(d.tracker.clone());
    }
    assert_eq!(got.into_iter().collect::<Vec<_>>(), ["q1", "q2", "q3"]);
}

/// Starts the `alaska` binary on broker `endpoint` with `extra` ZPL, its
/// log going to `log`.
fn alaska_bin(dir: &Path, endpoint: &str, extra: &str, log: &Path) -> Running {
    std::fs::write(dir.join("w.cfg"), config(endpoint, dir, extra)).unwrap();
    Running(
        alaska(dir)
            .args(["-f", "--no-embedded-broker", "-c", "w.cfg"])
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// The pids the log says the runner started.
fn started_pids(log: &str) -> Vec<u32> {
    log.lines()
        .filter(|l| l.contains("started python3"))
        .filter_map(|l| l.split("pid=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn stderr_lines_appear_in_the_worker_log_tagged_with_runner_and_pid() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("w.log");
    let extra = format!(
        "    runners\n{}",
        python_runner("^(talk|pid)$", 1, "10s", dir.path())
    );
    let mut child = alaska_bin(dir.path(), b.endpoint(), &extra, &log);
    let mut p = producer(b.endpoint(), dir.path());
    let pid: u32 = text(&ask(&mut p, "pid", &[b""])).parse().unwrap();
    assert_eq!(text(&ask(&mut p, "talk", &[b"hi there"])), "said");
    let deadline = Instant::now() + T;
    let wanted = |l: &str| l.contains("runner=py") && l.contains(&format!("pid={pid}"));
    loop {
        let got = read(&log);
        let lines: Vec<&str> = got.lines().filter(|l| wanted(l)).collect();
        if lines
            .iter()
            .any(|l| l.contains("stderr: a line for the log: hi there"))
            && lines
                .iter()
                .any(|l| l.contains("stderr: printed to stdout goes to the log"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stderr lines not in the log:\n{got}"
        );
        std::thread::sleep(Duration::from_millis(50)); // bounded poll (deadline above)
    }
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_exit(&mut child.0, T).and_then(|s| s.code()), Some(0));
    assert!(all_gone(&[pid], Duration::from_secs(2)));
}

#[test]
fn no_child_survives_sigterm_of_the_worker() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("w.log");
    let extra = format!(
        "    shutdown\n        timeout = \"1s\"\n    runners\n{}",
        python_runner("^(stubborn|pid)$", 2, "60s", dir.path())
    );
    let mut child = alaska_bin(dir.path(), b.endpoint(), &extra, &log);
    let mut p = producer(b.endpoint(), dir.path());
    // One child busy ignoring SIGTERM, with a grandchild that does too; the
    // other idle.
    p.sendfor("svc", "stubborn", "trk-1", 0, vec![b"".to_vec()])
        .unwrap();
    let stubborn = pids_from(&dir.path().join("stubborn.pids"));
    let deadline = Instant::now() + T;
    let children = loop {
        let pids = started_pids(&read(&log));
        if pids.len() >= 2 {
            break pids;
        }
        assert!(
            Instant::now() < deadline,
            "two children never started:\n{}",
            read(&log)
        );
        std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
    };
    assert!(children.contains(&stubborn[0]), "{children:?} {stubborn:?}");
    let asked = Instant::now();
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child.0, T).expect("the worker exits");
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "{}", read(&log));
    // Shutdown timeout 1 s, then SIGKILL after a short grace.
    assert!(took < Duration::from_secs(5), "{took:?}");
    let mut all = children.clone();
    all.extend(&stubborn);
    assert!(
        all_gone(&all, Duration::from_secs(2)),
        "survivors among {all:?}:\n{}",
        read(&log)
    );
    // The busy request was not lost: left to the broker, which holds it
    // unconfirmed (another worker would get it).
    assert!(
        read(&log).contains("returned to the broker"),
        "{}",
        read(&log)
    );
}

#[test]
fn check_and_start_up_name_a_missing_command_and_a_bad_regex() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("w.cfg"),
        config(
            "tcp://127.0.0.1:1",
            dir.path(),
            "    runners\n        py\n            command = \"no-such-interpreter handler.py\"\n",
        ),
    )
    .unwrap();
    let out = alaska(dir.path())
        .args(["--check", "-c", "w.cfg"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains(
            "w.cfg: worker/runners/py/command (line 13): \"no-such-interpreter\" not found on PATH"
        ),
        "{stdout}"
    );
    let out = alaska(dir.path())
        .args(["-f", "-c", "w.cfg"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("worker/runners/py/command (line 13)"),
        "{stderr}"
    );

    std::fs::write(
        dir.path().join("w.cfg"),
        config(
            "tcp://127.0.0.1:1",
            dir.path(),
            "    runners\n        app\n            match = \"orders(\"\n            url = \"http://127.0.0.1:1/\"\n",
        ),
    )
    .unwrap();
    let out = alaska(dir.path())
        .args(["--check", "-c", "w.cfg"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "w.cfg: worker/runners/app/match (line 13): \"orders(\" is not a regular expression"
        ),
        "{stderr}"
    );
}

// ---------------------------------------------------------------- http --

#[test]
fn http_200_with_a_body_is_the_reply_over_one_kept_alive_connection() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let app = Server::start(0, |r| {
        let mut body = b"got:".to_vec();
        body.extend(&r.body);
        Reply::new(200, &body)
    });
    let _w = worker(
        b.endpoint(),
        dir.path(),
        runners(&http_runner("^app\\.", &app.url("/handle"), 1, "5s")),
        3,
    );
    let mut p = producer(b.endpoint(), dir.path());
    let d = ask(&mut p, "app.one", &[b"payload", &[0xff, 0, 1]]);
    assert_eq!(
        (d.subject.as_str(), d.tracker.as_str()),
        ("app.one", "trk-1")
    );
    assert_eq!(d.content, vec![b"got:payload".to_vec()]);
    let seen = app.seen();
    let r = &seen[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/handle"));
    assert_eq!(r.body, b"payload");
    for (k, v) in [
        ("X-Alaska-Subject", "app.one"),
        ("X-Alaska-Address", "svc"),
        ("X-Alaska-Sender", p.address()),
        ("X-Alaska-Tracker", "trk-1"),
        ("X-Alaska-Attempt", "1"),
        ("X-Alaska-Hops", "0"),
        ("X-Alaska-Frames", "2"),
        ("X-Alaska-Frame-2", "/wAB"),
        ("X-Api-Key", "secret"),
        ("Content-Type", "application/octet-stream"),
    ] {
        assert_eq!(r.header(k), Some(v), "{k} in {:?}", r.headers);
    }
    // Kept alive: more requests, one connection.
    for i in 0..5 {
        let body = format!("n{i}");
        let d = ask(&mut p, "app.more", &[body.as_bytes()]);
        assert_eq!(text(&d), format!("got:n{i}"));
    }
    let conns: std::collections::BTreeSet<u64> = app.seen().iter().map(|r| r.conn).collect();
    assert_eq!(conns.len(), 1, "{conns:?}");
}

#[test]
fn http_503_with_retry_after_is_retried_after_at_least_that() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let app = Server::start(0, move |_| {
        if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Reply::new(503, b"warming up").header("Retry-After", "1")
        } else {
            Reply::new(200, b"fine now")
        }
    });
    let _w = worker(
        b.endpoint(),
        dir.path(),
        runners(&http_runner(".*app.*", &app.url("/"), 2, "5s")),
        3,
    );
    let mut p = producer(b.endpoint(), dir.path());
    let started = Instant::now();
    let d = ask(&mut p, "app", &[b"x"]);
    assert_eq!(text(&d), "fine now");
    assert!(started.elapsed() >= Duration::from_secs(1));
    let seen = app.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].at.duration_since(seen[0].at) >= Duration::from_secs(1));
    assert_eq!(seen[1].header("X-Alaska-Attempt"), Some("2"));
}

#[test]
fn http_400_is_a_dead_letter_with_the_status() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let app = Server::start(0, |_| Reply::new(400, b"missing field \"order\"\n"));
    let _w = worker(
        b.endpoint(),
        dir.path(),
        runners(&http_runner("^app$", &app.url("/"), 2, "5s")),
        3,
    );
    let mut awerr = client(b.endpoint(), "awerr");
    let mut p = producer(b.endpoint(), dir.path());
    let d = ask(&mut p, "app", &[b"{}"]);
    let want =
        "failed by its handler after 1 attempt: HTTP 400 Bad Request: missing field \"order\"";
    assert_eq!((d.subject.as_str(), text(&d).as_str()), ("ERROR:app", want));
    let dead = expect(&mut awerr, DeliveryKind::Mailbox, T);
    assert_eq!(dead.subject, "app");
    // The original report's two frames, then the metadata frame.
    assert_eq!(
        dead.content[..2],
        [want.as_bytes().to_vec(), b"{}".to_vec()]
    );
    assert_eq!(dead.content.len(), 3);
    assert_eq!(app.seen().len(), 1, "a 4xx is not retried");
}

#[test]
fn http_requests_wait_while_the_application_is_down_and_all_are_served() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let _w = worker(
        b.endpoint(),
        dir.path(),
        runners(&http_runner("^app$", &url, 2, "5s")),
        20,
    );
    let mut p = producer(b.endpoint(), dir.path());
    for i in 0..5 {
        p.sendfor(
            "svc",
            "app",
            &format!("t{i}"),
            0,
            vec![format!("job{i}").into_bytes()],
        )
        .unwrap();
    }
    // Refused for a while: the requests wait for their retries.
    expect_none(&mut p, DeliveryKind::Mailbox, Duration::from_millis(1000));
    let app = Server::start(port, |r| Reply::new(200, &r.body));
    let mut got = std::collections::BTreeMap::new();
    while got.len() < 5 {
        let d = expect(&mut p, DeliveryKind::Mailbox, T);
        assert_eq!(d.subject, "app", "{}", text(&d));
        got.insert(d.tracker.clone(), text(&d));
    }
    for i in 0..5 {
        assert_eq!(got[&format!("t{i}")], format!("job{i}"));
    }
    let seen = app.seen();
    let mut bodies: Vec<Vec<u8>> = seen.iter().map(|r| r.body.clone()).collect();
    bodies.sort();
    assert_eq!(
        bodies,
        (0..5)
            .map(|i| format!("job{i}").into_bytes())
            .collect::<Vec<_>>(),
        "each served once"
    );
    assert!(
        seen.iter()
            .all(|r| r.header("X-Alaska-Attempt") != Some("1")),
        "all were retried"
    );
}

#[test]
fn x_alaska_forward_chains_into_a_lua_stage_and_nothing_blocks_lua_or_other_runners() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "stage2",
        "return 'lua got ' .. alaskaContext .. ' (hops=' .. alaska.hops .. ')'",
    );
    let app = Server::start(0, |r| {
        if r.body == b"slow" {
            // The slow application under test: busy for 3 s.
            std::thread::sleep(Duration::from_secs(3));
            return Reply::new(200, b"slow done");
        }
        let mut body = r.body.clone();
        body.extend(b"+http");
        Reply::new(200, &body).header("X-Alaska-Forward", "svc/stage2")
    });
    let zpl = format!(
        "{}{}",
        http_runner("^app$", &app.url("/"), 1, "10s"),
        python_runner("^pid$", 1, "10s", dir.path())
    );
    let _w = worker(b.endpoint(), dir.path(), runners(&zpl), 3);
    let mut p = producer(b.endpoint(), dir.path());
    let d = ask(&mut p, "app", &[b"order"]);
    assert_eq!(
        (d.subject.as_str(), d.tracker.as_str()),
        ("stage2", "trk-1")
    );
    assert_eq!(text(&d), "lua got order+http (hops=1)");

    // The application busy for 3 s on its only connection: Lua and the
    // exec runner still answer at once.
    p.sendfor("svc", "app", "slow-1", 0, vec![b"slow".to_vec()])
        .unwrap();
    common::wait_until(T, "the slow request at the application", || {
        app.seen().iter().any(|r| r.body == b"slow")
    });
    let started = Instant::now();
    let d = ask(&mut p, "ping", &[b""]);
    assert_eq!(text(&d), "pong");
    let d = ask(&mut p, "pid", &[b""]);
    assert!(text(&d).parse::<u32>().is_ok(), "{}", text(&d));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let d = expect(&mut p, DeliveryKind::Mailbox, T);
    assert_eq!(
        (d.tracker.as_str(), text(&d).as_str()),
        ("slow-1", "slow done")
    );
}

#[test]
fn a_flood_of_lua_requests_beside_runners_is_answered_in_full() {
    // A runner's slots add to the credit the worker gives its broker; the
    // Lua queue must hold that whole credit too, or a burst of Lua
    // requests overflows it while the runners sit idle (it did: a worker
    // with 8 HTTP slots lost 8 requests of a burst, and their credit).
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let app = Server::start(0, |_| Reply::new(200, b"unused"));
    // One VM: every Lua request waits in the worker's own queue.
    let rs = runners(&http_runner("^app\\.", &app.url("/"), 8, "5s"));
    let _w = Worker::start(
        b.endpoint(),
        dir.path(),
        move |o: &mut DispatcherOptions, p: &mut PoolConfig| {
            o.runners = rs;
            p.size = 1;
        },
    );
    script(dir.path(), "slow", "alaska.sleep(5)\nreturn alaskaContext");
    let mut p = producer(b.endpoint(), dir.path());
    let n = 150;
    for i in 0..n {
        p.sendfor(
            "svc",
            "slow",
            &format!("t{i}"),
            0,
            vec![format!("b{i}").into_bytes()],
        )
        .unwrap();
    }
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < n {
        let d = expect(&mut p, DeliveryKind::Mailbox, T);
        assert_eq!(
            d.content,
            vec![format!("b{}", &d.tracker[1..]).into_bytes()]
        );
        *seen.entry(d.tracker.clone()).or_insert(0) += 1;
    }
    assert!(seen.values().all(|&c| c == 1), "{seen:?}");
    // And the credit is whole again: another burst goes through too.
    for i in 0..n {
        p.sendfor(
            "svc",
            "slow",
            &format!("u{i}"),
            0,
            vec![format!("b{i}").into_bytes()],
        )
        .unwrap();
    }
    for _ in 0..n {
        let d = expect(&mut p, DeliveryKind::Mailbox, T);
        assert!(d.tracker.starts_with('u'), "{}", d.tracker);
    }
    expect_none(&mut p, DeliveryKind::Mailbox, Duration::from_millis(300));
}

/// Retry delays no clock can hold, from every source: a Lua script's
/// `alaska.retry(math.huge)`, an exec child's `"after_ms": 1e22`, an HTTP
/// application's `Retry-After` of u64::MAX seconds. Each used to panic the
/// worker (an `Instant` overflow); now each is cut to a day, held, and the
/// worker and its broker go on serving at once.
#[test]
fn huge_retry_delays_from_any_handler_neither_panic_nor_stall_the_worker() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let app = Server::start(0, |_| {
        Reply::new(503, b"later").header("Retry-After", "18446744073709551615")
    });
    let zpl = format!(
        "{}{}",
        python_runner("^huge$", 1, "10s", dir.path()),
        http_runner("^app$", &app.url("/"), 1, "5s")
    );
    let _w = worker(b.endpoint(), dir.path(), runners(&zpl), 3);
    script(dir.path(), "luahuge", "return alaska.retry(math.huge)");
    let mut p = producer(b.endpoint(), dir.path());
    for subject in ["luahuge", "huge", "app"] {
        p.sendfor(
            "svc",
            subject,
            &format!("t-{subject}"),
            0,
            vec![b"x".to_vec()],
        )
        .unwrap();
    }
    // The HTTP application was called once (no retry came back soon).
    let deadline = Instant::now() + T;
    while app.seen().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20)); // bounded poll: no event to await in the app
    }
    assert_eq!(app.seen().len(), 1);
    // Every one of them is held; the next request is answered at once.
    for _ in 0..3 {
        let d = ask(&mut p, "ping", &[b""]);
        assert_eq!(d.content, vec![b"pong".to_vec()]);
    }
    assert_eq!(app.seen().len(), 1, "the 503 was retried early");
}

/// Exec handlers' grandchildren: one in the handler's group, one that left
/// it with setsid. SIGTERM of the worker ends both (the setsid one is
/// re-parented to the worker, a child subreaper, and ended with the
/// runners). Each survived a stop before.
#[test]
fn a_setsid_grandchild_is_gone_after_the_workers_sigterm() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("w.log");
    let extra = format!(
        "    shutdown\n        timeout = \"1s\"\n    runners\n{}",
        python_runner("^escape$", 1, "10s", dir.path())
    );
    let mut child = alaska_bin(dir.path(), b.endpoint(), &extra, &log);
    let mut p = producer(b.endpoint(), dir.path());
    assert_eq!(text(&ask(&mut p, "escape", &[b""])), "escaped");
    let pids = pids_from(&dir.path().join("escape.pids"));
    assert!(pids.iter().all(|&p| !gone(p)), "{pids:?}");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child.0, T).expect("the worker exits");
    assert_eq!(status.code(), Some(0), "{}", read(&log));
    assert!(
        all_gone(&pids, Duration::from_secs(3)),
        "survivors among {pids:?} (handler, grouped, setsid):\n{}",
        read(&log)
    );
}

/// SIGKILL of the worker itself, seen from a subreaper above it (this test,
/// standing for systemd): the handler dies with the worker
/// (PR_SET_PDEATHSIG), but what it started (in its group or out of it)
/// survives, re-parented to the subreaper above: nothing of the worker
/// runs any more to end them. Only a cgroup does (the shipped unit's
/// KillMode=control-group); this asserts exactly that and then ends them,
/// as systemd would.
#[test]
fn after_a_sigkill_of_the_worker_its_grandchildren_are_left_to_the_supervisor() {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag of this
    // (test) process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("w.log");
    let extra = format!(
        "    runners\n{}",
        python_runner("^escape$", 1, "10s", dir.path())
    );
    let mut child = alaska_bin(dir.path(), b.endpoint(), &extra, &log);
    let mut p = producer(b.endpoint(), dir.path());
    assert_eq!(text(&ask(&mut p, "escape", &[b""])), "escaped");
    let pids = pids_from(&dir.path().join("escape.pids"));
    let handler = pids[0];
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    assert!(
        all_gone(&[handler], Duration::from_secs(3)),
        "the handler outlived the worker"
    );
    // Both grandchildren are still there, now ours (the subreaper).
    let parent_of = |pid: u32| -> Option<u32> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        s[s.rfind(')')? + 1..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    for &orphan in &pids[1..] {
        let deadline = Instant::now() + T;
        while parent_of(orphan) != Some(std::process::id()) {
            assert!(
                Instant::now() < deadline,
                "{orphan} was not re-parented to us"
            );
            std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
        }
        assert!(!gone(orphan));
        // SAFETY: a signal and a wait for our own (adopted) child.
        unsafe {
            libc::kill(orphan as i32, libc::SIGKILL);
            libc::waitpid(orphan as i32, std::ptr::null_mut(), 0);
        }
    }
}
