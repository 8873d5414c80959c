//! Workers on several brokers, end to end: one worker process serving two
//! real brokers from one pool, answering each request over the broker it
//! came from; a broker that is down at start or restarts does not stop
//! the others; and the lazy client underneath.

mod common;

use std::time::{Duration, Instant};

use alaska::mlm::{Client, ClientOptions, ConnState, DeliveryKind};
use common::bin::free_endpoint;
use common::*;

/// A worker serving every endpoint of `endpoints`, scripts from `dir`.
fn worker_on(endpoints: &[&str], dir: &std::path::Path) -> Worker {
    let list: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
    Worker::start(endpoints[0], dir, move |o, _| o.endpoints = list)
}

#[test]
fn one_worker_serves_two_brokers_and_answers_over_the_one_each_request_came_from() {
    let (b1, b2) = (broker(), broker());
    let dir = tempfile::tempdir().unwrap();
    // The script replies, mails a box and publishes: all three must go to
    // the broker the request came through, and only there.
    script(
        dir.path(),
        "tag",
        "sendTo('tagged', 'mail:' .. alaskaContext, 'box')\n\
         send('tagged', 'pub:' .. alaskaContext, 'events')\n\
         return 'reply:' .. alaskaContext",
    );
    let _w = worker_on(&[b1.endpoint(), b2.endpoint()], dir.path());
    let mut box1 = client(b1.endpoint(), "box");
    let mut box2 = client(b2.endpoint(), "box");
    let mut ev1 = client(b1.endpoint(), "");
    ev1.set_consumer("events", ".*").unwrap();
    let mut ev2 = client(b2.endpoint(), "");
    ev2.set_consumer("events", ".*").unwrap();
    let mut p1 = client(b1.endpoint(), "p1");
    let mut p2 = client(b2.endpoint(), "p2");
    ready(&mut p1, dir.path());
    ready(&mut p2, dir.path());
    for round in 0..3 {
        let (a, b) = (format!("one-{round}"), format!("two-{round}"));
        let r1 = request(&mut p1, "tag", a.as_bytes(), Duration::from_secs(10));
        let r2 = request(&mut p2, "tag", b.as_bytes(), Duration::from_secs(10));
        assert_eq!(r1.content, vec![format!("reply:{a}").into_bytes()]);
        assert_eq!(r2.content, vec![format!("reply:{b}").into_bytes()]);
        let m1 = expect(&mut box1, DeliveryKind::Mailbox, Duration::from_secs(5));
        let m2 = expect(&mut box2, DeliveryKind::Mailbox, Duration::from_secs(5));
        assert_eq!(m1.content, vec![format!("mail:{a}").into_bytes()]);
        assert_eq!(m2.content, vec![format!("mail:{b}").into_bytes()]);
        let s1 = expect(&mut ev1, DeliveryKind::Stream, Duration::from_secs(5));
        let s2 = expect(&mut ev2, DeliveryKind::Stream, Duration::from_secs(5));
        assert_eq!(s1.content, vec![format!("pub:{a}").into_bytes()]);
        assert_eq!(s2.content, vec![format!("pub:{b}").into_bytes()]);
        // The worker has one address on both brokers.
        assert_eq!(r1.sender, r2.sender);
    }
    // Nothing crossed over to the other broker.
    expect_none(&mut box1, DeliveryKind::Mailbox, Duration::from_millis(300));
    expect_none(&mut box2, DeliveryKind::Mailbox, Duration::from_millis(100));
    expect_none(&mut ev2, DeliveryKind::Stream, Duration::from_millis(100));
}

#[test]
fn one_pool_serves_both_brokers_and_a_flood_on_one_does_not_starve_the_other() {
    let (b1, b2) = (broker(), broker());
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "slow", "alaska.sleep(100) return alaskaContext");
    // Pool of 2 VMs, backlog 4: each broker may hand the worker at most 6
    // requests at once (its credit), so broker 1's flood waits in broker
    // 1, not ahead of broker 2's request in the worker.
    let list = vec![b1.endpoint().to_string(), b2.endpoint().to_string()];
    let _w = Worker::start(b1.endpoint(), dir.path(), move |o, p| {
        o.endpoints = list;
        p.backlog = 4;
    });
    let mut p1 = client(b1.endpoint(), "p1");
    let mut p2 = client(b2.endpoint(), "p2");
    ready(&mut p1, dir.path());
    ready(&mut p2, dir.path());
    // 60 requests of 100 ms on broker 1: three seconds of work for 2 VMs.
    for i in 0..60 {
        p1.sendfor("svc", "slow", "t", 0, vec![format!("{i}").into_bytes()])
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    p2.sendfor("svc", "slow", "t", 0, vec![b"other".to_vec()])
        .unwrap();
    let r = expect(&mut p2, DeliveryKind::Mailbox, Duration::from_secs(20));
    assert_eq!(r.content, vec![b"other".to_vec()]);
    // Broker 2's request did not wait for the flood to end.
    let mut done1 = 0;
    while p1.recv(Duration::ZERO).unwrap().is_some() {
        done1 += 1;
    }
    assert!(
        done1 <= 30,
        "broker 2's request was answered only after {done1} of broker 1's 60"
    );
    // And broker 1's flood is answered in full, once each.
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while done1 + seen.len() < 60 {
        assert!(Instant::now() < deadline, "broker 1's flood stalled");
        if let Some(d) = p1.recv(Duration::from_millis(100)).unwrap() {
            assert!(seen.insert(d.content), "a reply twice");
        }
    }
}

#[test]
fn a_broker_down_at_start_does_not_hold_up_the_others_and_is_served_when_it_comes() {
    let up = broker();
    let later = free_endpoint();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return alaskaContext");
    // The absent broker is listed first.
    let _w = worker_on(&[&later, up.endpoint()], dir.path());
    let mut p = client(up.endpoint(), "p");
    let r = request(&mut p, "echo", b"served at once", Duration::from_secs(10));
    assert_eq!(r.content, vec![b"served at once".to_vec()]);
    // Now the first broker starts: the worker connects and offers there
    // by itself.
    let b = broker_with(|c| c.endpoint = later.clone());
    let mut q = client(b.endpoint(), "q");
    let r = request(&mut q, "echo", b"served later", Duration::from_secs(15));
    assert_eq!(r.content, vec![b"served later".to_vec()]);
}

#[test]
fn a_broker_that_restarts_leaves_the_other_served_and_gets_the_offer_again() {
    let b1 = broker();
    let b2 = broker();
    let e1 = b1.endpoint().to_string();
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return alaskaContext");
    let _w = worker_on(&[&e1, b2.endpoint()], dir.path());
    let mut p2 = client(b2.endpoint(), "p2");
    {
        let mut p1 = client(&e1, "p1");
        ready(&mut p1, dir.path());
    }
    b1.stop();
    // While broker 1 is gone, broker 2 is served as before.
    for i in 0..20 {
        let body = format!("during {i}");
        let r = request(&mut p2, "echo", body.as_bytes(), Duration::from_secs(10));
        assert_eq!(r.content, vec![body.into_bytes()]);
    }
    let b1 = broker_with(|c| c.endpoint = e1.clone());
    let mut p1 = client(b1.endpoint(), "p1-again");
    let r = request(&mut p1, "echo", b"back", Duration::from_secs(15));
    assert_eq!(r.content, vec![b"back".to_vec()]);
    let r = request(&mut p2, "echo", b"still", Duration::from_secs(10));
    assert_eq!(r.content, vec![b"still".to_vec()]);
}

#[test]
fn a_lazy_client_returns_at_once_and_offers_when_the_broker_comes() {
    let endpoint = free_endpoint();
    let mut o = ClientOptions::new(&endpoint, "lazy-worker");
    o.timeout = Duration::from_secs(3);
    o.heartbeat = Duration::from_millis(200);
    let t = Instant::now();
    let mut w = Client::connect_lazy(o).unwrap();
    // Registrations and sends while the broker is away return at once.
    w.set_worker("lazysvc", ".*").unwrap();
    w.sendto("somebody", "early", "", 0, vec![b"kept".to_vec()])
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(w.state(), ConnState::Lost);
    assert_eq!(w.outbox_len(), 1);
    // Nothing listens: the connection attempt is refused, and said so.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !w.unreachable() {
        assert!(Instant::now() < deadline, "refusal never seen");
        w.recv(Duration::from_millis(50)).unwrap();
    }
    let b = broker_with(|c| c.endpoint = endpoint.clone());
    let mut somebody = client(b.endpoint(), "somebody");
    let mut p = client(b.endpoint(), "p");
    p.sendfor("lazysvc", "hello", "t1", 0, vec![b"hi".to_vec()])
        .unwrap();
    // The client opens, offers, flushes the mail kept, and gets the
    // request that waited for an offer.
    let d = expect(&mut w, DeliveryKind::Service, Duration::from_secs(10));
    assert_eq!(
        (d.subject.as_str(), d.content.clone()),
        ("hello", vec![b"hi".to_vec()])
    );
    assert_eq!(w.state(), ConnState::Connected);
    assert!(!w.unreachable());
    let m = expect(&mut somebody, DeliveryKind::Mailbox, Duration::from_secs(5));
    assert_eq!(m.content, vec![b"kept".to_vec()]);
    assert_eq!(m.sender, "lazy-worker");
}
