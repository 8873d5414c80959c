//! The client's non-blocking interface and broker refusals, against real
//! brokers: one thread drives two clients on two brokers with one
//! `zmq::poll`; a full service queue reaches the caller as a typed refusal.

use crate::common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alaska::mlm::{Client, ClientError, DeliveryKind, RefusalKind, Wait};
use common::*;

/// Echoes every service request back to its sender, over the connection it
/// came from, for each of `clients`, all from one poll. Returns how many
/// requests each client served.
fn drive(mut clients: Vec<Client>, stop: Arc<AtomicBool>) -> Vec<usize> {
    let mut served = vec![0; clients.len()];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        // Timers of every client, and a bound so that `stop` is seen.
        let until = clients
            .iter()
            .map(Client::next_deadline)
            .fold(now + Duration::from_millis(50), Instant::min);
        let readable: Vec<(bool, bool)> = {
            let mut items: Vec<zmq::PollItem<'_>> =
                clients.iter().flat_map(|c| c.poll_items()).collect();
            let ms = until.saturating_duration_since(now).as_millis() as i64;
            zmq::poll(&mut items, ms).expect("poll");
            items
                .chunks(2)
                .map(|p| (p[0].is_readable(), p[1].is_readable()))
                .collect()
        };
        let now = Instant::now();
        for (i, c) in clients.iter_mut().enumerate() {
            let (socket, monitor) = readable[i];
            c.process(socket, monitor, now).expect("process");
            while let Some(d) = c.next_delivery() {
                if d.kind == DeliveryKind::Service {
                    served[i] += 1;
                    c.sendto(&d.sender, &d.subject, &d.tracker, 0, d.content)
                        .expect("reply");
                }
            }
        }
    }
    for c in clients {
        c.close().expect("close");
    }
    served
}

#[test]
fn one_thread_drives_two_clients_on_two_brokers_with_one_poll() {
    let brokers = [broker(), broker()];
    let workers: Vec<Client> = brokers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut c = client(b.endpoint(), &format!("worker-{i}-{}", unique()));
            c.set_worker("svc", ".*").expect("offer");
            c
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let driver = std::thread::Builder::new()
        .name("test-driver".into())
        .spawn(move || drive(workers, flag))
        .unwrap();

    let mut producers: Vec<Client> = brokers
        .iter()
        .enumerate()
        .map(|(i, b)| client(b.endpoint(), &format!("producer-{i}-{}", unique())))
        .collect();
    const N: usize = 50;
    for (i, p) in producers.iter_mut().enumerate() {
        for n in 0..N {
            let body = format!("broker {i} request {n}").into_bytes();
            p.sendfor(
                "svc",
                "echo",
                &n.to_string(),
                0,
                vec![body, vec![0, i as u8]],
            )
            .unwrap();
        }
    }
    for (i, p) in producers.iter_mut().enumerate() {
        let mut got = BTreeSet::new();
        while got.len() < N {
            let d = expect(p, DeliveryKind::Mailbox, Duration::from_secs(10));
            let n: usize = d.tracker.parse().unwrap();
            assert_eq!(
                d.content,
                vec![
                    format!("broker {i} request {n}").into_bytes(),
                    vec![0, i as u8]
                ],
                "byte for byte, from the broker it was sent to"
            );
            assert!(got.insert(n), "reply {n} twice");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let served = driver.join().expect("driver thread");
    assert_eq!(served, [N, N]);
}

#[test]
fn a_full_queue_is_a_typed_refusal_for_wait_next_refusal_and_close() {
    let b = broker_with(|c| c.service_queue_limit.messages = 1);
    let mut p = client(b.endpoint(), &format!("producer-{}", unique()));
    // No worker: the first request fills the queue, the second is refused.
    p.sendfor("svc", "s", "1", 0, vec![b"one".to_vec()])
        .unwrap();
    p.sendfor("svc", "s", "2", 0, vec![b"two".to_vec()])
        .unwrap();
    let refusal = match p.wait(None, Duration::from_secs(5)).unwrap() {
        Wait::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        refusal.kind,
        RefusalKind::ServiceQueueFull {
            service: "svc".into()
        }
    );
    assert!(refusal.is_full());
    assert_eq!(refusal.status.code, 300);
    assert_eq!(refusal.to_string(), "service svc queue full");

    // Through the non-blocking interface.
    p.sendfor("svc", "s", "3", 0, vec![b"three".to_vec()])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let refusal = loop {
        if let Some(r) = p.next_refusal() {
            break r;
        }
        assert!(Instant::now() < deadline, "no refusal for request 3");
        let (socket, monitor) = {
            let mut items = p.poll_items();
            zmq::poll(&mut items, 50).unwrap();
            (items[0].is_readable(), items[1].is_readable())
        };
        p.process(socket, monitor, Instant::now()).unwrap();
    };
    assert!(refusal.is_full());
    assert_eq!(p.stats().refused, 2);

    // Refusals never taken are returned by close: its OK comes after them.
    p.sendfor("svc", "s", "4", 0, vec![b"four".to_vec()])
        .unwrap();
    match p.close() {
        Err(ClientError::Rejected(refused)) => {
            assert_eq!(refused.len(), 1);
            assert!(refused[0].is_full());
        }
        other => panic!("expected the refusal from close, got {other:?}"),
    }
}

#[test]
fn recv_leaves_refusals_for_close() {
    let b = broker_with(|c| c.service_queue_limit.messages = 1);
    let mut p = client(b.endpoint(), &format!("producer-{}", unique()));
    p.sendfor("svc", "s", "1", 0, vec![b"one".to_vec()])
        .unwrap();
    p.sendfor("svc", "s", "2", 0, vec![b"two".to_vec()])
        .unwrap();
    assert!(p.recv(Duration::from_millis(300)).unwrap().is_none());
    assert!(matches!(p.close(), Err(ClientError::Rejected(r)) if r.len() == 1));
}

#[test]
fn a_registration_never_overtakes_sends_waiting_in_the_outbox() {
    // Enough mail to fill the socket: the rest waits in the outbox. A
    // registration made then goes after it, so its OK means all of it
    // reached the broker (the broker answers in order).
    let b = broker();
    let mut box_ = client(b.endpoint(), "box");
    let mut c = client(b.endpoint(), "sender");
    let n = 8_000;
    for i in 0..n {
        c.sendto("box", "m", "", 0, vec![format!("{i}").into_bytes()])
            .unwrap();
    }
    assert!(c.outbox_len() > 0, "the socket should be full by now");
    c.set_producer("after").unwrap();
    assert_eq!(c.outbox_len(), 0, "the OK came before the sends went out");
    // And all of them arrive, in order.
    let mut next = 0;
    while next < n {
        let d = expect(&mut box_, DeliveryKind::Mailbox, Duration::from_secs(10));
        assert_eq!(d.content, vec![format!("{next}").into_bytes()]);
        next += 1;
    }
}
