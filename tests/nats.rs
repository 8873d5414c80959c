//! The NATS backend end to end (issue 25): real `nats-server` processes on
//! free loopback ports, real workers in-process, requests sent with
//! async-nats; replies checked byte for byte. Each test skips (and says
//! why) where `nats-server` is not installed.

mod common;

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
