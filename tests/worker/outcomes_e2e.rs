//! Outcomes end to end: real brokers (the project's, and the real Malamute
//! where installed), real workers, real producers (the library's client
//! and the `alas` binary); what arrives is checked byte for byte.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alaska::mlm::{Client, DeliveryKind};
use alaska::worker::{DispatcherOptions, Policy, PoolConfig};
use assert_cmd::cargo::CommandCargoExt;
use common::bin::*;
use common::*;

const T: Duration = Duration::from_secs(10);

/// A worker on `service` with the retry settings of the tests.
fn worker(endpoint: &str, dir: &Path, service: &str) -> Worker {
    let service = service.to_string();
    Worker::start(
        endpoint,
        dir,
        move |o: &mut DispatcherOptions, p: &mut PoolConfig| {
            o.service = service;
            o.policy = Policy {
                attempts: 3,
                backoff: Duration::from_millis(100),
                backoff_max: Duration::from_millis(400),
                retry_errors: false,
                max_hops: 4,
            };
            p.size = 2;
        },
    )
}

/// Sends one request to `service` with a tracker and waits for the mail
/// that answers it.
fn ask(c: &mut Client, service: &str, subject: &str, body: &[u8]) -> alaska::mlm::Delivery {
    c.sendfor(service, subject, "trk-1", 0, vec![body.to_vec()])
        .unwrap();
    expect(c, DeliveryKind::Mailbox, T)
}

/// Waits until `service` answers a probe (its offer is registered).
fn wait_ready(c: &mut Client, dir: &Path, service: &str) {
    script(dir, "ping", "return 'pong'");
    let d = ask(c, service, "ping", b"");
    assert_eq!(d.content, vec![b"pong".to_vec()]);
}

#[test]
fn retry_twice_then_succeed_respecting_the_delays() {
    for b in all_brokers("retry_twice_then_succeed") {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "flaky",
            "if alaska.attempt < 3 then return alaska.retry(300) end\n\
             return 'ok on attempt ' .. alaska.attempt .. ': ' .. alaskaContext",
        );
        let _w = worker(b.endpoint(), dir.path(), "svc");
        let mut p = client(b.endpoint(), &format!("p-{}", unique()));
        wait_ready(&mut p, dir.path(), "svc");
        let started = Instant::now();
        let d = ask(&mut p, "svc", "flaky", b"payload");
        let took = started.elapsed();
        assert_eq!(
            (d.subject.as_str(), d.tracker.as_str()),
            ("flaky", "trk-1"),
            "{}",
            b.name()
        );
        assert_eq!(d.content, vec![b"ok on attempt 3: payload".to_vec()]);
        assert!(took >= Duration::from_millis(600), "{}: {took:?}", b.name());
    }
}

#[test]
fn retries_exhausted_become_a_dead_letter_and_an_error_reply() {
    for b in all_brokers("retries_exhausted") {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "never",
            "return alaska.retry(nil, 'downstream busy')",
        );
        let _w = worker(b.endpoint(), dir.path(), "svc");
        let mut awerr = client(b.endpoint(), "awerr");
        let pname = format!("p-{}", unique());
        let mut p = client(b.endpoint(), &pname);
        wait_ready(&mut p, dir.path(), "svc");
        let started = Instant::now();
        let d = ask(&mut p, "svc", "never", b"{\"job\":1}");
        // Backoff 100 ms then 200 ms (jittered into their upper halves).
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{}",
            b.name()
        );
        assert_eq!(
            (d.subject.as_str(), d.tracker.as_str()),
            ("ERROR:never", "trk-1")
        );
        let text = String::from_utf8_lossy(&d.content[0]).into_owned();
        assert!(
            text.contains("3 attempts of 3") && text.contains("downstream busy"),
            "{text}"
        );
        let dead = expect(&mut awerr, DeliveryKind::Mailbox, T);
        assert_eq!(dead.subject, "never");
        // The original report (text, first content frame), then the
        // metadata a replay needs (docs/PROTOCOL-NOTES.md).
        assert_eq!(dead.content.len(), 3);
        assert_eq!(String::from_utf8_lossy(&dead.content[0]), text);
        assert_eq!(dead.content[1], b"{\"job\":1}".to_vec());
        let meta: serde_json::Value = serde_json::from_slice(&dead.content[2]).unwrap();
        assert_eq!(meta["format"], 1, "{}", b.name());
        assert_eq!(meta["address"], "svc");
        assert_eq!(meta["subject"], "never");
        assert_eq!(meta["requester"], pname.as_str());
        assert_eq!(meta["tracker"], "trk-1");
        assert_eq!(meta["outcome"], "fail");
        assert_eq!(meta["reason"], text.as_str());
        assert_eq!(meta["attempts"], 3);
        assert_eq!(meta["frames"], serde_json::json!([{"text": "{\"job\":1}"}]));
        assert!(meta["when"].as_str().is_some_and(|w| w.ends_with('Z')));
    }
}

#[test]
fn fail_is_one_attempt_and_a_dead_letter_at_once() {
    for b in all_brokers("fail") {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "reject",
            "alaska.shared:incr('runs', 1, 0)\nreturn alaska.fail('invalid order ' .. alaskaContext)",
        );
        script(dir.path(), "runs", "return alaska.shared:get('runs')");
        let _w = worker(b.endpoint(), dir.path(), "svc");
        let mut awerr = client(b.endpoint(), "awerr");
        let mut p = client(b.endpoint(), &format!("p-{}", unique()));
        wait_ready(&mut p, dir.path(), "svc");
        let started = Instant::now();
        let d = ask(&mut p, "svc", "reject", b"42");
        assert!(started.elapsed() < Duration::from_secs(1), "{}", b.name());
        assert_eq!(d.subject, "ERROR:reject");
        assert_eq!(
            d.content,
            vec![b"failed by its handler after 1 attempt: invalid order 42".to_vec()]
        );
        let dead = expect(&mut awerr, DeliveryKind::Mailbox, T);
        // The original report's two frames, then the metadata frame.
        assert_eq!(
            dead.content[..2],
            [
                b"failed by its handler after 1 attempt: invalid order 42".to_vec(),
                b"42".to_vec()
            ]
        );
        assert_eq!(dead.content.len(), 3);
        assert_eq!(ask(&mut p, "svc", "runs", b"").content, vec![b"1".to_vec()]);
    }
}

#[test]
fn drop_leaves_nothing_anywhere() {
    for b in all_brokers("drop") {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "discard",
            "sendTo('dropped', alaskaContext, 'seen')\nreturn alaska.drop()",
        );
        let _w = worker(b.endpoint(), dir.path(), "svc");
        let mut awerr = client(b.endpoint(), "awerr");
        let mut seen = client(b.endpoint(), "seen");
        let mut p = client(b.endpoint(), &format!("p-{}", unique()));
        wait_ready(&mut p, dir.path(), "svc");
        p.sendfor("svc", "discard", "trk-1", 0, vec![b"gone".to_vec()])
            .unwrap();
        // It ran (its own sends go out), but no reply and no report.
        let s = expect(&mut seen, DeliveryKind::Mailbox, T);
        assert_eq!(s.content, vec![b"gone".to_vec()]);
        expect_none(&mut p, DeliveryKind::Mailbox, Duration::from_millis(500));
        expect_none(
            &mut awerr,
            DeliveryKind::Mailbox,
            Duration::from_millis(100),
        );
    }
}

#[test]
fn a_three_stage_forward_chain_answers_alas_with_the_original_tracker() {
    for b in all_brokers("forward_chain") {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "one",
            "return alaska.forward('stage2', 'two', alaskaContext .. '+1')",
        );
        script(
            dir.path(),
            "two",
            "return alaska.forward('stage3', 'three', {alaskaContext .. '+2', 'extra frame'})",
        );
        script(
            dir.path(),
            "three",
            "return alaskaContext .. '+3 frames=' .. #alaska.frames .. ' hops=' .. alaska.hops \
             .. ' sender=' .. alaska.sender:match('^%a+')",
        );
        let _w1 = worker(b.endpoint(), dir.path(), "stage1");
        let _w2 = worker(b.endpoint(), dir.path(), "stage2");
        let _w3 = worker(b.endpoint(), dir.path(), "stage3");
        let mut probe = client(b.endpoint(), &format!("p-{}", unique()));
        for s in ["stage1", "stage2", "stage3"] {
            wait_ready(&mut probe, dir.path(), s);
        }
        // Through the library's client: the original tracker comes back.
        let d = ask(&mut probe, "stage1", "one", b"x");
        assert_eq!(d.tracker, "trk-1", "{}", b.name());
        assert_eq!(d.subject, "three");
        assert_eq!(
            d.content,
            vec![b"x+1+2+3 frames=2 hops=2 sender=p".to_vec()]
        );
        // And through alas --wait.
        let out = Command::cargo_bin("alas")
            .unwrap()
            .args([
                "-e",
                b.endpoint(),
                "-a",
                "stage1",
                "-s",
                "one",
                "--wait",
                "10",
                "-q",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b"{\"a\":1}\n")?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            b.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "{\"a\":1}+1+2+3 frames=2 hops=2 sender=alas\n"
        );
    }
}

#[test]
fn a_forward_loop_is_stopped_by_the_hop_limit() {
    for b in all_brokers("forward_loop") {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "again",
            "alaska.shared:incr('hops', 1, 0)\nreturn alaska.forward('svc', 'again')",
        );
        script(dir.path(), "hops", "return alaska.shared:get('hops')");
        let _w = worker(b.endpoint(), dir.path(), "svc");
        let mut awerr = client(b.endpoint(), "awerr");
        let mut p = client(b.endpoint(), &format!("p-{}", unique()));
        wait_ready(&mut p, dir.path(), "svc");
        let d = ask(&mut p, "svc", "again", b"round");
        assert_eq!(
            (d.subject.as_str(), d.tracker.as_str()),
            ("ERROR:again", "trk-1")
        );
        let text = String::from_utf8_lossy(&d.content[0]).into_owned();
        assert!(text.contains("hop limit of 4 reached"), "{text}");
        let dead = expect(&mut awerr, DeliveryKind::Mailbox, T);
        assert_eq!(dead.content[1], b"round".to_vec());
        // The first stage and four forwarded ones ran; the fifth refused.
        assert_eq!(ask(&mut p, "svc", "hops", b"").content, vec![b"5".to_vec()]);
    }
}

#[test]
fn a_failing_script_answers_a_waiting_alas_at_once_with_exit_7() {
    for b in all_brokers("failing_script_alas") {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "broken", "local x = nil\nreturn x.field");
        let _w = worker(b.endpoint(), dir.path(), "default");
        let mut p = client(b.endpoint(), &format!("p-{}", unique()));
        wait_ready(&mut p, dir.path(), "default");
        let started = Instant::now();
        let out = Command::cargo_bin("alas")
            .unwrap()
            .args(["-e", b.endpoint(), "-s", "broken", "--wait"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b"{}\n")?;
                c.wait_with_output()
            })
            .unwrap();
        let took = started.elapsed();
        assert_eq!(out.status.code(), Some(7), "{}", b.name());
        assert!(took < Duration::from_secs(1), "{}: took {took:?}", b.name());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("runtime error after 1 attempt")
                && err.contains("attempt to index a nil value"),
            "{err}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn fire_and_forget_requests_leave_no_replies_in_the_broker() {
    // A request without a tracker gets neither a reply nor an error reply:
    // nothing is stored for a requester that will never read it.
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "ok", "return 'a reply nobody reads'");
    script(dir.path(), "bad", "error('boom')");
    let _w = worker(b.endpoint(), dir.path(), "svc");
    let mut awerr = client(b.endpoint(), "awerr");
    let name = format!("gone-{}", unique());
    let mut p = client(b.endpoint(), &name);
    wait_ready(&mut p, dir.path(), "svc");
    p.sendfor("svc", "ok", "", 0, vec![b"1".to_vec()]).unwrap();
    p.sendfor("svc", "bad", "", 0, vec![b"2".to_vec()]).unwrap();
    // The failure still reaches the error mailbox.
    let dead = expect(&mut awerr, DeliveryKind::Mailbox, T);
    assert_eq!(dead.subject, "bad");
    expect_none(&mut p, DeliveryKind::Mailbox, Duration::from_millis(300));
}

#[test]
fn four_vms_count_to_exactly_four_thousand_through_the_broker() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "count",
        "for i = 1, 1000 do alaska.shared:incr('n', 1, 0) end return 'ok'",
    );
    script(dir.path(), "total", "return alaska.shared:get('n')");
    let _w = Worker::start(b.endpoint(), dir.path(), |_, p| p.size = 4);
    let mut p = client(b.endpoint(), &format!("p-{}", unique()));
    ready(&mut p, dir.path());
    for i in 0..4 {
        p.sendfor("svc", "count", &format!("c{i}"), 0, vec![b"".to_vec()])
            .unwrap();
    }
    for _ in 0..4 {
        let d = expect(&mut p, DeliveryKind::Mailbox, T);
        assert_eq!(d.content, vec![b"ok".to_vec()]);
    }
    p.sendfor("svc", "total", "t", 0, vec![b"".to_vec()])
        .unwrap();
    let d = expect(&mut p, DeliveryKind::Mailbox, T);
    assert_eq!(d.content, vec![b"4000".to_vec()]);
}

#[test]
fn a_worker_killed_holding_retries_loses_nothing() {
    // Project's broker only: with the reference, nothing is acknowledged.
    let b = broker_with(|c| c.client_timeout = Duration::from_secs(2));
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "hold",
        "if os.getenv('ALASKA_TEST_HOLD') == '1' then return alaska.retry(60000) end\n\
         return 'done ' .. alaskaContext",
    );
    std::fs::write(
        dir.path().join("w.cfg"),
        config(
            b.endpoint(),
            dir.path(),
            "    verbose = \"1\"\n    retry\n        attempts = \"5\"\n",
        ),
    )
    .unwrap();
    let start = |hold: &str, log: &str| {
        let log = std::fs::File::create(dir.path().join(log)).unwrap();
        Running(
            alaska(dir.path())
                .args(["-f", "--no-embedded-broker", "-c", "w.cfg"])
                .env("ALASKA_TEST_HOLD", hold)
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    };
    let mut first = start("1", "first.log");
    let mut p = client(b.endpoint(), &format!("p-{}", unique()));
    for i in 0..10 {
        p.sendfor(
            "svc",
            "hold",
            &format!("t{i}"),
            0,
            vec![format!("r{i}").into_bytes()],
        )
        .unwrap();
    }
    // Wait until all ten wait for their retry in the first worker.
    let deadline = Instant::now() + T;
    loop {
        let log = std::fs::read_to_string(dir.path().join("first.log")).unwrap_or_default();
        if log.matches("outcome: retry").count() == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "not all held: {log}");
        std::thread::sleep(Duration::from_millis(50)); // bounded poll of the log
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let _second = start("0", "second.log");
    let mut got: Vec<String> = (0..10)
        .map(|_| {
            let d = expect(&mut p, DeliveryKind::Mailbox, Duration::from_secs(20));
            String::from_utf8_lossy(&d.content[0]).into_owned()
        })
        .collect();
    got.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("done r{i}")).collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn waiting_retries_are_bounded_and_the_overflow_is_a_dead_letter() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "later", "return alaska.retry(60000)");
    let _w = Worker::start(b.endpoint(), dir.path(), |o, p| {
        o.retry_pending = 2;
        p.size = 1;
    });
    let mut awerr = client(b.endpoint(), "awerr");
    let mut p = client(b.endpoint(), &format!("p-{}", unique()));
    ready(&mut p, dir.path());
    for i in 0..4 {
        p.sendfor(
            "svc",
            "later",
            &format!("t{i}"),
            0,
            vec![format!("r{i}").into_bytes()],
        )
        .unwrap();
    }
    // Two wait; the other two are dead letters at once, saying why.
    let mut dead: Vec<String> = (0..2)
        .map(|_| {
            let d = expect(&mut awerr, DeliveryKind::Mailbox, T);
            let text = String::from_utf8_lossy(&d.content[0]).into_owned();
            assert!(text.contains("2 retries already wait"), "{text}");
            String::from_utf8_lossy(&d.content[1]).into_owned()
        })
        .collect();
    dead.sort();
    assert_eq!(dead, vec!["r2".to_string(), "r3".to_string()]);
    for _ in 0..2 {
        let e = expect(&mut p, DeliveryKind::Mailbox, T);
        assert_eq!(e.subject, "ERROR:later");
    }
    expect_none(
        &mut awerr,
        DeliveryKind::Mailbox,
        Duration::from_millis(300),
    );
}

#[test]
fn a_graceful_stop_hands_waiting_retries_back_with_their_attempt_count() {
    for b in all_brokers("stop_hands_back") {
        let holding = tempfile::tempdir().unwrap();
        script(
            holding.path(),
            "job",
            &format!(
                "{}return alaska.retry(60000)",
                mark_lua(holding.path(), "job")
            ),
        );
        script(holding.path(), "who", "return 'first'");
        let finishing = tempfile::tempdir().unwrap();
        script(
            finishing.path(),
            "job",
            "return 'finished on attempt ' .. alaska.attempt .. ': ' .. alaskaContext",
        );
        script(finishing.path(), "who", "return 'second'");
        let first = worker(b.endpoint(), holding.path(), "svc");
        let mut p = client(b.endpoint(), &format!("p-{}", unique()));
        wait_ready(&mut p, holding.path(), "svc");
        p.sendfor("svc", "job", "trk-7", 0, vec![b"payload".to_vec()])
            .unwrap();
        // The job ran on the first worker, which holds it for its retry.
        wait_marks(holding.path(), &["job"], T);
        let _second = worker(b.endpoint(), finishing.path(), "svc");
        // The second's offer is in once a request reaches it.
        wait_until(T, "the second worker's offer", || {
            ask(&mut p, "svc", "who", b"").content == [b"second".to_vec()]
        });
        assert_eq!(first.stop(), Ok(()), "{}", b.name());
        let d = expect(&mut p, DeliveryKind::Mailbox, T);
        assert_eq!(d.tracker, "trk-7", "{}", b.name());
        assert_eq!(d.content, vec![b"finished on attempt 2: payload".to_vec()]);
    }
}

#[test]
fn script_errors_are_retried_when_configured() {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "shaky",
        "if alaska.attempt == 1 then error('first run fails') end\nreturn 'ok on ' .. alaska.attempt",
    );
    let _w = Worker::start(b.endpoint(), dir.path(), |o, _| {
        o.policy.retry_errors = true;
        o.policy.backoff = Duration::from_millis(50);
    });
    let mut p = client(b.endpoint(), &format!("p-{}", unique()));
    ready(&mut p, dir.path());
    let d = request(&mut p, "shaky", b"", T);
    assert_eq!(d.content, vec![b"ok on 2".to_vec()]);
}
