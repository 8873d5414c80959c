//! The NATS backend end to end (issue 25): real `nats-server` processes on
//! free loopback ports, real workers in-process, requests sent with
//! async-nats; replies checked byte for byte. Each test skips (and says
//! why) where `nats-server` is not installed.

use crate::common;
use crate::ops_support;

use std::time::Duration;

use common::nats::{header, NatsServer, Requester};
use common::*;

const T: Duration = Duration::from_secs(10);

#[test]
fn lua_service_answers_nats_requests() {
    let Some(server) = NatsServer::start("lua_service_answers_nats_requests", &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "ping", "return 'pong'");
    script(
        dir.path(),
        "hello",
        "return 'hello ' .. alaskaContext .. ' on ' .. alaska.subject",
    );
    let _w = Worker::start(&server.url, dir.path(), |_, _| {});
    let r = Requester::connect(&server.url);
    r.wait_ready("svc.ping");
    let m = r.request("svc.hello", b"world", T).unwrap();
    assert_eq!(&m.payload[..], b"hello world on hello");
    assert_eq!(header(&m, "Nats-Service-Error"), None);
    // Many in a row, each answered with its own bytes.
    for i in 0..50 {
        let body = format!("n{i}");
        let m = r.request("svc.hello", body.as_bytes(), T).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&m.payload),
            format!("hello n{i} on hello")
        );
    }
}

#[test]
fn failing_script_gets_micro_error_headers_and_a_dead_letter() {
    let Some(server) = NatsServer::start("failing_script_gets_micro_error_headers", &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "ping", "return 'pong'");
    script(
        dir.path(),
        "broken",
        "return alaska.fail('no stock for ' .. alaskaContext)",
    );
    script(dir.path(), "crash", "error('boom')");
    let _w = Worker::start(&server.url, dir.path(), |_, _| {});
    let r = Requester::connect(&server.url);
    let mut reports = r.subscribe("awerr.svc");
    r.wait_ready("svc.ping");
    let m = r.request("svc.broken", b"pears", T).unwrap();
    let error = header(&m, "Nats-Service-Error").expect("error header");
    assert!(error.contains("no stock for pears"), "{error}");
    assert_eq!(
        header(&m, "Nats-Service-Error-Code").as_deref(),
        Some("500")
    );
    let report = r.next(&mut reports, T).expect("a dead-letter report");
    let v: serde_json::Value = serde_json::from_slice(&report.payload).unwrap();
    assert_eq!(v["address"], "svc");
    assert_eq!(v["subject"], "broken");
    assert_eq!(v["outcome"], "fail");
    assert!(v["reason"].as_str().unwrap().contains("no stock for pears"));
    // A script error is an error reply too.
    let m = r.request("svc.crash", b"", T).unwrap();
    let error = header(&m, "Nats-Service-Error").expect("error header");
    assert!(error.contains("boom"), "{error}");
}

#[test]
fn subjects_outside_the_filter_get_404_and_never_run() {
    let Some(server) = NatsServer::start("subjects_outside_the_filter", &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "ping", "return 'pong'");
    script(dir.path(), "secret", "return 'ran'");
    let _w = Worker::start(&server.url, dir.path(), |o, _| o.filter = "^ping$".into());
    let r = Requester::connect(&server.url);
    r.wait_ready("svc.ping");
    let m = r.request("svc.secret", b"", T).unwrap();
    assert_eq!(
        header(&m, "Nats-Service-Error-Code").as_deref(),
        Some("404")
    );
    assert_ne!(&m.payload[..], b"ran");
}

#[test]
fn micro_discovery_ping_info_stats() {
    let Some(server) = NatsServer::start("micro_discovery_ping_info_stats", &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "ping", "return 'pong'");
    script(dir.path(), "broken", "return alaska.fail('nope')");
    let _w = Worker::start(&server.url, dir.path(), |_, _| {});
    let r = Requester::connect(&server.url);
    r.wait_ready("svc.ping");
    r.request("svc.broken", b"", T).unwrap();
    let json = |subject: &str| -> serde_json::Value {
        let m = r.request(subject, b"", T).unwrap();
        serde_json::from_slice(&m.payload).unwrap()
    };
    let ping = json("$SRV.PING");
    assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
    assert_eq!(ping["name"], "svc");
    let id = ping["id"].as_str().unwrap().to_string();
    assert!(!id.is_empty());
    assert!(ping["version"].as_str().unwrap().contains('.'));
    assert_eq!(json("$SRV.PING.svc")["id"], id.as_str());
    let info = json(&format!("$SRV.INFO.svc.{id}"));
    assert_eq!(info["type"], "io.nats.micro.v1.info_response");
    assert_eq!(info["endpoints"][0]["subject"], "svc.>");
    assert_eq!(info["endpoints"][0]["queue_group"], "svc");
    let stats = json("$SRV.STATS.svc");
    assert_eq!(stats["type"], "io.nats.micro.v1.stats_response");
    let e = &stats["endpoints"][0];
    // wait_ready's probes count too: at least one ping and the failure.
    assert!(e["num_requests"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(e["num_errors"], 1, "{stats}");
    assert!(
        e["last_error"].as_str().unwrap().contains("nope"),
        "{stats}"
    );
    assert!(stats["started"].as_str().unwrap().ends_with('Z'), "{stats}");
}

#[test]
fn forward_across_two_workers_replies_to_the_original_inbox() {
    let Some(server) = NatsServer::start("forward_across_two_workers", &[]) else {
        return;
    };
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    script(one.path(), "ping", "return 'pong'");
    script(
        one.path(),
        "order",
        "return alaska.forward('stage2', 'pack', alaskaContext .. '+checked')",
    );
    script(two.path(), "ping", "return 'pong'");
    script(
        two.path(),
        "pack",
        "return 'packed ' .. alaskaContext .. ' (' .. alaska.subject .. ')'",
    );
    let _w1 = Worker::start(&server.url, one.path(), |_, _| {});
    let _w2 = Worker::start(&server.url, two.path(), |o, _| o.service = "stage2".into());
    let r = Requester::connect(&server.url);
    r.wait_ready("svc.ping");
    r.wait_ready("stage2.ping");
    let m = r.request("svc.order", b"o1", T).unwrap();
    assert_eq!(&m.payload[..], b"packed o1+checked (pack)");
    // The second stage failing answers the original requester with the
    // error headers.
    script(two.path(), "pack", "return alaska.fail('no box')");
    let m = r.request("svc.order", b"o2", T).unwrap();
    let error = header(&m, "Nats-Service-Error").expect("error header");
    assert!(error.contains("no box"), "{error}");
}

#[test]
fn retry_on_core_nats_runs_again_in_the_worker() {
    let Some(server) = NatsServer::start("retry_on_core_nats", &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "ping", "return 'pong'");
    script(
        dir.path(),
        "flaky",
        "local n = alaska.shared:incr('runs', 1, 0)\n\
         if n < 3 then return alaska.retry(10, 'not yet') end\n\
         return 'ok after ' .. n",
    );
    let _w = Worker::start(&server.url, dir.path(), |_, _| {});
    let r = Requester::connect(&server.url);
    r.wait_ready("svc.ping");
    let m = r.request("svc.flaky", b"", T).unwrap();
    assert_eq!(&m.payload[..], b"ok after 3");
}

#[test]
fn mixed_endpoint_kinds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = Worker::start("nats://127.0.0.1:1", dir.path(), |o, _| {
        o.endpoints = vec!["nats://127.0.0.1:1".into(), "tcp://127.0.0.1:2".into()];
    });
    let e = w.stop().unwrap_err();
    assert!(e.contains("one kind per worker"), "{e}");
}

/// A worker consuming stream `WORK` through durable consumer `svc`.
fn js_worker(
    url: &str,
    dir: &std::path::Path,
    ack_wait: Duration,
    max_deliver: i64,
    tweak: impl FnOnce(&mut alaska::worker::DispatcherOptions, &mut alaska::worker::PoolConfig),
) -> Worker {
    Worker::start(url, dir, |o, p| {
        o.nats.jetstream = Some(alaska::worker::nats::JetStreamOptions {
            stream: "WORK".into(),
            consumer: "svc".into(),
            ack_wait,
            max_deliver,
            max_ack_pending: 0,
        });
        tweak(o, p);
    })
}

#[test]
fn jetstream_outcomes_ack_nak_with_delay_and_term_in_consumer_info() {
    let sd = tempfile::tempdir().unwrap();
    let Some(server) = NatsServer::start(
        "jetstream_outcomes",
        &["-js", "-sd", sd.path().to_str().unwrap()],
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "ok", "return 'done ' .. alaskaContext");
    script(
        dir.path(),
        "later",
        "if alaska.attempt < 2 then return alaska.retry(400, 'later') end\n\
         return 'second run, attempt ' .. alaska.attempt",
    );
    script(dir.path(), "bad", "return alaska.fail('bad item')");
    let r = Requester::connect(&server.url);
    r.create_stream("WORK", &["svc.>"], 1);
    let mut replies = r.subscribe("replies.>");
    let mut terminated = r.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.WORK.svc");
    let _w = js_worker(
        &server.url,
        dir.path(),
        Duration::from_secs(5),
        5,
        |_, _| {},
    );
    let t0 = std::time::Instant::now();
    r.publish_work("svc.ok", b"a", "replies.ok");
    r.publish_work("svc.later", b"b", "replies.later");
    r.publish_work("svc.bad", b"c", "replies.bad");
    let mut got = std::collections::HashMap::new();
    while got.len() < 3 {
        let m = r.next(&mut replies, T).expect("three replies");
        got.insert(m.subject.to_string(), (m, t0.elapsed()));
    }
    assert_eq!(&got["replies.ok"].0.payload[..], b"done a");
    let (later, at) = &got["replies.later"];
    assert_eq!(&later.payload[..], b"second run, attempt 2");
    assert!(
        *at >= Duration::from_millis(400),
        "redelivered after {at:?}"
    );
    let bad = &got["replies.bad"].0;
    let error = header(bad, "Nats-Service-Error").expect("error header");
    assert!(error.contains("bad item"), "{error}");
    // The term, as the server saw it: its advisory names the message.
    let adv = r
        .next(&mut terminated, T)
        .expect("a MSG_TERMINATED advisory");
    let adv: serde_json::Value = serde_json::from_slice(&adv.payload).unwrap();
    assert_eq!(adv["stream_seq"], 3, "{adv}");
    // Four deliveries (one nak redelivered), all three settled.
    let info = r.consumer_until("WORK", "svc", "all settled", |i| {
        i.ack_floor.stream_sequence == 3 && i.num_ack_pending == 0
    });
    assert_eq!(info.delivered.consumer_sequence, 4, "{info:?}");
    assert_eq!(info.num_pending, 0, "{info:?}");
    assert_eq!(info.config.max_deliver, 5);
}

#[test]
fn jetstream_long_script_is_kept_alive_by_working_heartbeats() {
    let sd = tempfile::tempdir().unwrap();
    let Some(server) = NatsServer::start(
        "jetstream_long_script",
        &["-js", "-sd", sd.path().to_str().unwrap()],
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "long",
        "alaska.sleep(2500)\nreturn 'slept ' .. alaskaContext",
    );
    let r = Requester::connect(&server.url);
    r.create_stream("WORK", &["svc.>"], 1);
    let mut replies = r.subscribe("replies.>");
    // ack_wait 1 s: without "working" the server would redeliver it to
    // the pool's other VM twice while the first run sleeps.
    let _w = js_worker(
        &server.url,
        dir.path(),
        Duration::from_secs(1),
        5,
        |_, p| {
            p.timeout = Duration::from_secs(10);
        },
    );
    r.publish_work("svc.long", b"z", "replies.long");
    let m = r.next(&mut replies, T).expect("the reply");
    assert_eq!(&m.payload[..], b"slept z");
    let info = r.consumer_until("WORK", "svc", "acknowledged", |i| {
        i.ack_floor.stream_sequence == 1 && i.num_ack_pending == 0
    });
    assert_eq!(info.delivered.consumer_sequence, 1, "redelivered: {info:?}");
    assert_eq!(info.num_redelivered, 0, "{info:?}");
}

#[test]
fn jetstream_max_deliver_stops_a_poison_message() {
    let sd = tempfile::tempdir().unwrap();
    let Some(server) = NatsServer::start(
        "jetstream_max_deliver",
        &["-js", "-sd", sd.path().to_str().unwrap()],
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "poison",
        "sendTo('run', alaskaContext .. alaska.attempt, 'runs')\n\
         return alaska.retry(50, 'again')",
    );
    script(dir.path(), "ok", "return 'fine'");
    let r = Requester::connect(&server.url);
    r.create_stream("WORK", &["svc.>"], 1);
    let mut runs = r.subscribe("runs.run");
    let mut replies = r.subscribe("replies.>");
    let mut max = r.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.WORK.svc");
    // The worker's own attempts are many: the server's limit is the one hit.
    let _w = js_worker(
        &server.url,
        dir.path(),
        Duration::from_secs(5),
        3,
        |o, _| {
            o.policy.attempts = 100;
        },
    );
    r.publish_work("svc.poison", b"p", "");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let m = r.next(&mut runs, T).expect("a run");
        seen.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    assert_eq!(seen, ["p1", "p2", "p3"]);
    let adv = r.next(&mut max, T).expect("a MAX_DELIVERIES advisory");
    let adv: serde_json::Value = serde_json::from_slice(&adv.payload).unwrap();
    assert_eq!(adv["deliveries"], 3, "{adv}");
    // Work behind it still flows, and the poison never ran a fourth time.
    r.publish_work("svc.ok", b"", "replies.ok");
    assert_eq!(
        &r.next(&mut replies, T).expect("reply").payload[..],
        b"fine"
    );
    assert!(
        r.next(&mut runs, Duration::from_millis(200)).is_none(),
        "a fourth run"
    );
}

/// Runs `alas -e <url> ARGS` with `stdin`.
fn alas(url: &str, args: &[&str], stdin: &[u8]) -> std::process::Output {
    use assert_cmd::cargo::CommandCargoExt;
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::cargo_bin("alas")
        .unwrap()
        .arg("-e")
        .arg(url)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn alas_sends_nats_requests_and_jetstream_work_with_the_same_exit_codes() {
    let sd = tempfile::tempdir().unwrap();
    let Some(server) =
        NatsServer::start("alas_on_nats", &["-js", "-sd", sd.path().to_str().unwrap()])
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "ping", "return 'pong'");
    script(dir.path(), "echo", "return 'got ' .. alaskaContext");
    script(dir.path(), "broken", "return alaska.fail('out of pears')");
    let core = Worker::start(&server.url, dir.path(), |_, _| {});
    let r = Requester::connect(&server.url);
    r.wait_ready("svc.ping");
    let out = alas(
        &server.url,
        &["-a", "svc", "-s", "echo", "--wait", "5"],
        b"{\"a\":1}\n",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got {\"a\":1}\n");
    let out = alas(
        &server.url,
        &["-a", "svc", "-s", "broken", "--wait", "5"],
        b"{}",
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("out of pears"),
        "{out:?}"
    );
    // Nobody serves `none`: no reply (6).
    let out = alas(
        &server.url,
        &["-a", "none", "-s", "x", "--wait", "1"],
        b"{}",
    );
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    // Nothing listens there: unreachable (4).
    let out = alas(
        "nats://127.0.0.1:1",
        &["-a", "svc", "-s", "echo", "--wait", "1"],
        b"{}",
    );
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    drop(core);
    // JetStream: the work is stored, a worker consumes it and replies.
    r.create_stream("WORK", &["svc.>"], 1);
    let _js = js_worker(
        &server.url,
        dir.path(),
        Duration::from_secs(5),
        5,
        |_, _| {},
    );
    let out = alas(
        &server.url,
        &["-a", "svc", "-s", "echo", "--jetstream", "--wait", "10"],
        b"{\"b\":2}",
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got {\"b\":2}\n");
    let out = alas(
        &server.url,
        &["-a", "svc", "-s", "broken", "--jetstream", "--wait", "10"],
        b"{}",
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
}

/// POSTs `body` to `url`: status and body.
fn http_post(url: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let mut r = agent.post(url).send(body).expect("HTTP POST");
    (r.status().as_u16(), r.body_mut().read_to_vec().unwrap())
}

#[test]
fn gateway_relays_http_to_nats_with_the_same_statuses() {
    let Some(server) = NatsServer::start("gateway_on_nats", &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "ping", "return 'pong'");
    script(dir.path(), "echo", "return 'got ' .. alaskaContext");
    script(dir.path(), "broken", "return alaska.fail('out of pears')");
    let _w = Worker::start(&server.url, dir.path(), |_, _| {});
    let r = Requester::connect(&server.url);
    r.wait_ready("svc.ping");
    let mut mail = r.subscribe("box.note");
    let g = alaska::gateway::Gateway::start(alaska::gateway::GatewayOptions::new(
        server.url.as_str(),
        "127.0.0.1:0",
    ))
    .expect("gateway starts");
    let deadline = std::time::Instant::now() + T;
    // Polled: the gateway's connection is a flag, set by the client's event.
    while !g.is_connected() {
        assert!(
            std::time::Instant::now() < deadline,
            "gateway never connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let base = format!("http://{}", g.local_addr().unwrap());
    let (status, body) = http_post(&format!("{base}/v1/request/svc/echo"), b"hi");
    assert_eq!((status, body.as_slice()), (200, b"got hi".as_slice()));
    let (status, body) = http_post(&format!("{base}/v1/request/svc/broken"), b"");
    assert_eq!(status, 502);
    assert!(String::from_utf8_lossy(&body).contains("out of pears"));
    let (status, _) = http_post(&format!("{base}/v1/request/nobody/x"), b"");
    assert_eq!(status, 503);
    let (status, _) = http_post(&format!("{base}/v1/request/svc/echo?delay=1s"), b"");
    assert_eq!(status, 501);
    let (status, _) = http_post(&format!("{base}/v1/mail/box/note"), b"hello box");
    assert_eq!(status, 202);
    let m = r.next(&mut mail, T).expect("the mail");
    assert_eq!(&m.payload[..], b"hello box");
    g.stop();
}

#[test]
fn operations_are_the_same_on_nats_health_metrics_maintenance() {
    use ops_support::http::{agent, wait_for};
    use ops_support::worker::OpsWorker;
    let Some(server) = NatsServer::start("operations_on_nats", &[]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "ping", "return 'pong'");
    script(dir.path(), "echo", "return alaskaContext");
    let w = OpsWorker::start(&server.url, dir.path(), |_, _| {});
    let a = agent();
    let r = Requester::connect(&server.url);
    r.wait_ready("svc.ping");
    w.wait_health(&a, 200, "serving");
    let received = |w: &OpsWorker| {
        w.scrape(&a)
            .value("alaska_worker_requests_received_total", &[])
    };
    let before = received(&w);
    for i in 0..5 {
        let m = r
            .request("svc.echo", format!("e{i}").as_bytes(), T)
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&m.payload), format!("e{i}"));
    }
    wait_for("five requests counted", || received(&w) - before == 5.0);
    let status = w.status(&a);
    assert_eq!(
        status["connections"][0]["endpoint"],
        server.url.as_str(),
        "{status}"
    );
    assert_eq!(status["connections"][0]["state"], "connected", "{status}");
    // Maintenance leaves the queue group: NATS then has no responder.
    w.maintenance(&a, true);
    w.wait_health(&a, 503, "maintenance");
    wait_for("no responder in maintenance", || {
        r.request("svc.echo", b"x", Duration::from_secs(2))
            .is_err_and(|e| e.contains("no responders"))
    });
    w.maintenance(&a, false);
    w.wait_health(&a, 200, "serving");
    wait_for("served again", || {
        r.request("svc.echo", b"back", Duration::from_secs(2))
            .is_ok_and(|m| &m.payload[..] == b"back")
    });
    w.stop().unwrap();
}

#[test]
fn gateway_requests_through_jetstream_are_stored_then_answered() {
    let sd = tempfile::tempdir().unwrap();
    let Some(server) = NatsServer::start(
        "gateway_jetstream",
        &["-js", "-sd", sd.path().to_str().unwrap()],
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return 'stored ' .. alaskaContext");
    script(dir.path(), "broken", "return alaska.fail('no pears')");
    let r = Requester::connect(&server.url);
    r.create_stream("WORK", &["svc.>"], 1);
    let mut opts = alaska::gateway::GatewayOptions::new(server.url.as_str(), "127.0.0.1:0");
    opts.jetstream = true;
    let g = alaska::gateway::Gateway::start(opts).expect("gateway starts");
    let deadline = std::time::Instant::now() + T;
    // Polled: the gateway's connection is a flag, set by the client's event.
    while !g.is_connected() {
        assert!(
            std::time::Instant::now() < deadline,
            "gateway never connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let base = format!("http://{}", g.local_addr().unwrap());
    // No stream holds this subject: refused, nothing waits for a reply.
    let (status, body) = http_post(&format!("{base}/v1/request/other/x?timeout=3000"), b"");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    // Stored before any worker runs: the work queue keeps it, and the
    // worker started afterwards answers the waiting HTTP request.
    let base2 = base.clone();
    let waiting = std::thread::spawn(move || {
        http_post(
            &format!("{base2}/v1/request/svc/echo?timeout=20000"),
            b"early",
        )
    });
    let stored = std::time::Instant::now() + T;
    // Polled: the stream's message count is where "stored" shows.
    while r.stream_messages("WORK") < 1 {
        assert!(
            std::time::Instant::now() < stored,
            "the request was never stored"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _w = js_worker(
        &server.url,
        dir.path(),
        Duration::from_secs(5),
        5,
        |_, _| {},
    );
    let (status, body) = waiting.join().unwrap();
    assert_eq!((status, body.as_slice()), (200, b"stored early".as_slice()));
    let (status, body) = http_post(&format!("{base}/v1/request/svc/broken"), b"");
    assert_eq!(status, 502);
    assert!(String::from_utf8_lossy(&body).contains("no pears"));
    g.stop();
}
