//! The NATS backend on a 3-node JetStream cluster (issue 25): three
//! `nats-server` processes with cluster routes on loopback ports, a
//! stream with 3 replicas, two alaska workers consuming one durable
//! consumer with an HTTP runner as the handler (its side effect: the
//! POST our HTTP server counts). The stream's leader is killed with
//! SIGKILL under load; afterwards every request must have had its side
//! effect at least once (none lost); duplicates (at-least-once) are
//! counted and reported. Skips (and says why) without `nats-server`.

use crate::common;
use crate::server;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use alaska::config::Settings;
use common::malamute::free_port;
use common::nats::{nats_binary, NatsServer, Requester};
use common::*;
use server::{Reply, Server};

const N: usize = 300;

#[test]
fn three_node_jetstream_cluster_loses_nothing_when_the_stream_leader_is_killed() {
    let Some(bin) = nats_binary() else {
        eprintln!("three_node_jetstream_cluster: skipped: nats-server not installed");
        return;
    };
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let cports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes = cports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut servers: Vec<Option<NatsServer>> = (0..3)
        .map(|i| {
            let name = format!("n{}", i + 1);
            let cluster = format!("nats://127.0.0.1:{}", cports[i]);
            Some(NatsServer::start_with(
                &bin,
                ports[i],
                &[
                    "-js",
                    "-sd",
                    dirs[i].path().to_str().unwrap(),
                    "-n",
                    &name,
                    "--cluster_name",
                    "alaska",
                    "--cluster",
                    &cluster,
                    "--routes",
                    &routes,
                ],
            ))
        })
        .collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    let r = Requester::connect_many(&urls);
    // The cluster elects its JetStream meta leader after the servers say
    // they are ready: creating the stream is tried until one answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _in = r.rt.enter();
        let js = async_nats::jetstream::new(r.client.clone());
        let made = r.rt.block_on(async move {
            js.create_stream(async_nats::jetstream::stream::Config {
                name: "WORK".into(),
                subjects: vec!["svc.>".into()],
                num_replicas: 3,
                ..Default::default()
            })
            .await
        });
        match made {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "no R3 stream: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    // The handler: an HTTP application that counts what it is given.
    let app = Server::start(0, |_| Reply::new(200, b"ok"));
    let runner = Settings::from_sources(
        &format!(
            "worker\n    runners\n        app\n            match = \"^job$\"\n            type = \"http\"\n            url = \"{}\"\n            concurrency = \"4\"\n            timeout = \"5s\"\n",
            app.url("/job")
        ),
        Vec::new(),
    )
    .expect("runner settings")
    .runners;
    let dir = tempfile::tempdir().unwrap();
    let workers: Vec<Worker> = (0..2)
        .map(|_| {
            let (urls, runner) = (urls.clone(), runner.clone());
            Worker::start(&urls[0].clone(), dir.path(), move |o, _| {
                o.endpoints = urls;
                o.runners = runner;
                o.policy.attempts = 20;
                o.nats.jetstream = Some(alaska::worker::nats::JetStreamOptions {
                    stream: "WORK".into(),
                    consumer: "svc".into(),
                    ack_wait: Duration::from_secs(2),
                    max_deliver: 20,
                    max_ack_pending: 0,
                });
            })
        })
        .collect();
    let started = Instant::now();
    for i in 0..N / 2 {
        r.publish_work_once("svc.job", format!("j{i}").as_bytes(), &format!("j{i}"));
    }
    // Under load: the kill comes once the workers are handling (a tenth
    // done), with the rest of the first half still queued or running.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.seen().len() < N / 10 {
        assert!(
            Instant::now() < deadline,
            "the workers never started handling"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let leader = r.stream_leader("WORK").expect("a stream leader");
    let k: usize = leader[1..].parse::<usize>().unwrap() - 1;
    let handled_before_kill = app.seen().len();
    let killed_at = Instant::now();
    drop(servers[k].take()); // SIGKILL (Child::kill), then reaped
    for i in N / 2..N {
        r.publish_work_once("svc.job", format!("j{i}").as_bytes(), &format!("j{i}"));
    }
    let published = started.elapsed();
    // Every request's side effect, awaited (bounded: a lost one fails).
    let deadline = Instant::now() + Duration::from_secs(90);
    let counts = loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for s in app.seen() {
            *counts
                .entry(String::from_utf8_lossy(&s.body).into_owned())
                .or_default() += 1;
        }
        if counts.len() >= N {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "lost: {} of {N} requests never handled",
            N - counts.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let all = started.elapsed();
    for i in 0..N {
        assert!(counts.contains_key(&format!("j{i}")), "j{i} lost");
    }
    let calls: usize = counts.values().sum();
    let duplicates = calls - N;
    let new_leader = r.stream_leader("WORK");
    println!(
        "cluster figures: {N} requests, leader {leader} killed after {handled_before_kill} handled \
         ({:?} after the start); new leader {new_leader:?}; all published in {published:?}, all \
         handled in {all:?}; {calls} handler calls, {duplicates} duplicates, 0 lost",
        killed_at - started
    );
    drop(workers);
}
