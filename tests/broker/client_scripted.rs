//! The client against a scripted peer: a ROUTER socket in the test plays the
//! broker, answers by a script, records everything it receives, and can
//! inject raw frames. Shows the open handshake, ping/pong, reconnect and
//! replay after ERROR 500, acknowledged mode, clean handling of malformed
//! frames, and the distinct connection errors.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use alaska::mlm::{Client, ClientError, ClientOptions, ConnState, DeliveryKind, Message, Status};

type Handler = Box<dyn FnMut(&Message) -> Vec<Message> + Send>;

/// A fake broker on its own thread.
struct Peer {
    endpoint: String,
    seen: Arc<Mutex<Vec<Message>>>,
    inject: crossbeam_channel::Sender<Vec<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Peer {
    fn start(mut handler: Handler) -> Peer {
        let ctx = zmq::Context::new();
        let router = ctx.socket(zmq::ROUTER).unwrap();
        router.set_linger(0).unwrap();
        router.bind("tcp://127.0.0.1:*").unwrap();
        let endpoint = router.get_last_endpoint().unwrap().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (inject, injected) = crossbeam_channel::unbounded::<Vec<Vec<u8>>>();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name("scripted-peer".into())
            .spawn(move || {
                let _ctx = ctx;
                let mut last_id: Option<Vec<u8>> = None;
                while !stop2.load(Ordering::Relaxed) {
                    while let Ok(frames) = injected.try_recv() {
                        if let Some(id) = &last_id {
                            let mut all = vec![id.clone()];
                            all.extend(frames);
                            router.send_multipart(all, 0).unwrap();
                        }
                    }
                    if router.poll(zmq::POLLIN, 10).unwrap() == 0 {
                        continue;
                    }
                    let mut frames = router.recv_multipart(0).unwrap();
                    let id = frames.remove(0);
                    last_id = Some(id.clone());
                    let msg = Message::decode_owned(frames).expect("client sent a valid message");
                    let replies = handler(&msg);
                    seen2.lock().unwrap().push(msg);
                    for r in replies {
                        let mut all = vec![id.clone()];
                        all.extend(r.encode().unwrap());
                        router.send_multipart(all, 0).unwrap();
                    }
                }
            })
            .unwrap();
        Peer {
            endpoint,
            seen,
            inject,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Message> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self, pred: impl Fn(&Message) -> bool) -> usize {
        self.seen().iter().filter(|m| pred(m)).count()
    }

    /// Waits until `pred` holds on what the peer has seen.
    fn wait_for(&self, what: &str, pred: impl Fn(&[Message]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pred(&self.seen()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.seen()
            );
            thread::sleep(Duration::from_millis(10)); // bounded poll (deadline above)
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ok(reason: &str) -> Message {
    Message::Ok {
        status: Status::new(200, reason),
    }
}

/// A well-behaved broker script; `forget` makes it answer the next PING
/// with ERROR 500, `mute` makes it ignore PINGs.
fn broker_script(forget: Arc<AtomicBool>, mute: Arc<AtomicBool>, reason: &'static str) -> Handler {
    Box::new(move |m| match m {
        Message::ConnectionOpen { .. } => vec![ok(reason)],
        Message::ConnectionPing if forget.swap(false, Ordering::SeqCst) => vec![Message::Error {
            status: Status::new(500, "command invalid"),
        }],
        Message::ConnectionPing if mute.load(Ordering::SeqCst) => vec![],
        Message::ConnectionPing => vec![Message::ConnectionPong],
        Message::ServiceOffer { .. }
        | Message::StreamRead { .. }
        | Message::StreamWrite { .. }
        | Message::ConnectionClose => vec![ok("")],
        _ => vec![],
    })
}

fn opts(endpoint: &str) -> ClientOptions {
    let mut o = ClientOptions::new(endpoint, "me");
    o.timeout = Duration::from_millis(1500);
    o.heartbeat = Duration::from_millis(50);
    o
}

fn flags() -> (Arc<AtomicBool>, Arc<AtomicBool>) {
    (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    )
}

#[test]
fn open_handshake_and_registrations() {
    let (forget, mute) = flags();
    let peer = Peer::start(broker_script(forget, mute, ""));
    let mut client = Client::connect(opts(&peer.endpoint)).unwrap();
    assert_eq!(client.state(), ConnState::Connected);
    client.set_worker("svc", "^a.*").unwrap();
    client.set_consumer("numbers", "pi").unwrap();
    client.set_producer("out").unwrap();
    let seen = peer.seen();
    assert_eq!(
        seen[..4],
        [
            Message::ConnectionOpen {
                address: "me".into()
            },
            Message::ServiceOffer {
                address: "svc".into(),
                pattern: "^a.*".into()
            },
            Message::StreamRead {
                stream: "numbers".into(),
                pattern: "pi".into()
            },
            Message::StreamWrite {
                stream: "out".into()
            },
        ]
    );
    assert!(
        !client.acks_enabled(),
        "no CREDIT without the broker's ack/1"
    );
    drop(client);
    peer.wait_for("CONNECTION CLOSE on drop", |s| {
        s.contains(&Message::ConnectionClose)
    });
    assert_eq!(peer.count(|m| matches!(m, Message::Credit { .. })), 0);
}

#[test]
fn pings_every_heartbeat_and_stays_connected() {
    let (forget, mute) = flags();
    let peer = Peer::start(broker_script(forget, mute, ""));
    let mut client = Client::connect(opts(&peer.endpoint)).unwrap();
    assert!(client.recv(Duration::from_millis(400)).unwrap().is_none());
    let pings = peer.count(|m| *m == Message::ConnectionPing);
    assert!(pings >= 4, "expected a ping every 50 ms, saw {pings}");
    assert_eq!(client.state(), ConnState::Connected);
}

#[test]
fn error_500_reopens_and_replays_registrations() {
    let (forget, mute) = flags();
    let peer = Peer::start(broker_script(forget.clone(), mute, ""));
    let mut client = Client::connect(opts(&peer.endpoint)).unwrap();
    client.set_producer("out").unwrap();
    client.set_consumer("numbers", "pi").unwrap();
    client.set_worker("svc", ".*").unwrap();
    forget.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.stats().reopens == 0 || client.state() != ConnState::Connected {
        assert!(Instant::now() < deadline, "client did not reopen");
        client.recv(Duration::from_millis(20)).unwrap();
    }
    peer.wait_for("replayed registrations", |s| s.len() >= 8);
    let seen = peer.seen();
    let second_open = seen
        .iter()
        .rposition(|m| matches!(m, Message::ConnectionOpen { .. }))
        .unwrap();
    assert!(second_open > 0, "a second CONNECTION OPEN: {seen:?}");
    assert_eq!(
        seen[second_open],
        Message::ConnectionOpen {
            address: "me".into()
        }
    );
    let replay: Vec<&Message> = seen[second_open + 1..]
        .iter()
        .filter(|m| **m != Message::ConnectionPing)
        .take(3)
        .collect();
    assert_eq!(
        replay,
        [
            &Message::StreamWrite {
                stream: "out".into()
            },
            &Message::StreamRead {
                stream: "numbers".into(),
                pattern: "pi".into()
            },
            &Message::ServiceOffer {
                address: "svc".into(),
                pattern: ".*".into()
            },
        ]
    );
    assert_eq!(client.stats().reopens, 1);
}

#[test]
fn malformed_frames_from_the_peer_are_skipped() {
    let (forget, mute) = flags();
    let peer = Peer::start(broker_script(forget, mute, ""));
    let mut client = Client::connect(opts(&peer.endpoint)).unwrap();
    let bad: Vec<Vec<Vec<u8>>> = vec![
        vec![vec![0xaa, 0xa7, 0x02]],                    // wrong signature
        vec![vec![0xaa, 0xa8, 0x63]],                    // unknown id
        vec![hex::decode("aaa80a0561").unwrap()],        // truncated MAILBOX DELIVER
        vec![vec![0xaa, 0xa8, 0x03], b"extra".to_vec()], // PONG with a content frame
        vec![vec![]],                                    // empty frame
    ];
    for frames in bad {
        peer.inject.send(frames).unwrap();
    }
    let good = Message::MailboxDeliver {
        sender: "x".into(),
        address: "me".into(),
        subject: "s".into(),
        tracker: "t".into(),
        content: vec![b"payload".to_vec(), Vec::new()],
    };
    peer.inject.send(good.encode().unwrap()).unwrap();
    let d = client
        .recv(Duration::from_secs(5))
        .unwrap()
        .expect("the valid mail after the bad frames");
    assert_eq!(d.kind, DeliveryKind::Mailbox);
    assert_eq!(
        (d.sender.as_str(), d.subject.as_str(), d.tracker.as_str()),
        ("x", "s", "t")
    );
    assert_eq!(d.content, vec![b"payload".to_vec(), Vec::new()]);
    assert_eq!(client.stats().malformed, 5);
    assert_eq!(client.state(), ConnState::Connected);
}

#[test]
fn silent_broker_is_reported_gone_and_outbox_flushes_on_return() {
    let (forget, mute) = flags();
    let peer = Peer::start(broker_script(forget, mute.clone(), ""));
    let mut o = opts(&peer.endpoint);
    o.timeout = Duration::from_millis(300);
    let mut client = Client::connect(o).unwrap();
    mute.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.state() != ConnState::Lost {
        assert!(Instant::now() < deadline, "silence not detected");
        client.recv(Duration::from_millis(20)).unwrap();
    }
    client
        .sendto("box", "subj", "", 0, vec![b"kept".to_vec()])
        .unwrap();
    assert_eq!(client.outbox_len(), 1, "held while the broker is gone");
    assert_eq!(peer.count(|m| matches!(m, Message::MailboxSend { .. })), 0);
    mute.store(false, Ordering::SeqCst);
    while client.state() != ConnState::Connected {
        assert!(Instant::now() < deadline, "broker's return not noticed");
        client.recv(Duration::from_millis(20)).unwrap();
    }
    peer.wait_for("flushed mail", |s| {
        s.iter().any(|m| matches!(m, Message::MailboxSend { content, .. } if content == &vec![b"kept".to_vec()]))
    });
    assert_eq!(client.outbox_len(), 0);
}

#[test]
fn acknowledged_mode_only_with_a_broker_that_offers_it() {
    let (forget, mute) = flags();
    let peer = Peer::start(broker_script(forget, mute, "alaska-broker ack/1"));
    let mut o = opts(&peer.endpoint);
    o.credit = Some(8);
    let mut client = Client::connect(o).unwrap();
    assert!(client.acks_enabled());
    peer.wait_for("CREDIT", |s| s.contains(&Message::Credit { amount: 8 }));
    for i in 0..2 {
        let m = Message::ServiceDeliver {
            sender: "p".into(),
            address: "svc".into(),
            subject: format!("s{i}"),
            tracker: String::new(),
            content: vec![],
        };
        peer.inject.send(m.encode().unwrap()).unwrap();
    }
    let first = client.recv(Duration::from_secs(5)).unwrap().unwrap();
    let second = client.recv(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(second.subject, "s1");
    client.confirm(second.ack.unwrap()).unwrap();
    client.confirm(first.ack.unwrap()).unwrap();
    peer.wait_for("two CONFIRMs", |s| {
        s.iter()
            .filter(|m| matches!(m, Message::Confirm { .. }))
            .count()
            == 2
    });
    let trackers: Vec<String> = peer
        .seen()
        .into_iter()
        .filter_map(|m| match m {
            Message::Confirm { tracker, status } => {
                assert_eq!(status.code, 200);
                Some(tracker)
            }
            _ => None,
        })
        .collect();
    assert_eq!(trackers, ["2", "1"]);
}

#[test]
fn no_credit_and_no_confirm_towards_a_reference_broker() {
    let (forget, mute) = flags();
    let peer = Peer::start(broker_script(forget, mute, ""));
    let mut o = opts(&peer.endpoint);
    o.credit = Some(8);
    let mut client = Client::connect(o).unwrap();
    let m = Message::ServiceDeliver {
        sender: "p".into(),
        address: "svc".into(),
        subject: "s".into(),
        tracker: String::new(),
        content: vec![b"x".to_vec()],
    };
    peer.inject.send(m.encode().unwrap()).unwrap();
    let d = client.recv(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(d.ack, None);
    client.recv(Duration::from_millis(200)).unwrap();
    assert_eq!(
        peer.count(|m| matches!(m, Message::Credit { .. } | Message::Confirm { .. })),
        0
    );
}

#[test]
fn connection_errors_are_distinct() {
    let mut o = opts("bogus://nowhere");
    o.timeout = Duration::from_millis(300);
    assert!(matches!(
        Client::connect(o),
        Err(ClientError::Endpoint { .. })
    ));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut o = opts(&format!("tcp://127.0.0.1:{port}"));
    o.timeout = Duration::from_millis(300);
    let e = Client::connect(o).err().expect("nothing listens there");
    assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("unreachable"));

    // A peer that accepts the connection but never answers CONNECTION OPEN.
    let silent = Peer::start(Box::new(|_| vec![]));
    let mut o = opts(&silent.endpoint);
    o.timeout = Duration::from_millis(300);
    let e = Client::connect(o).err().expect("no OK comes");
    assert!(
        matches!(
            e,
            ClientError::Timeout {
                what: "CONNECTION_OPEN",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn broker_error_to_a_registration_is_returned() {
    let peer = Peer::start(Box::new(|m| match m {
        Message::ConnectionOpen { .. } => vec![ok("")],
        Message::ServiceOffer { .. } => vec![Message::Error {
            status: Status::new(300, "bad pattern"),
        }],
        _ => vec![],
    }));
    let mut client = Client::connect(opts(&peer.endpoint)).unwrap();
    let e = client.set_worker("svc", "[").unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Refused {
                what: "SERVICE_OFFER",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("bad pattern"));
}
