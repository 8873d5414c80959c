//! Unit tests of [`Session`]: no sockets, no sleeps. Time is an `Instant`
//! moved by hand; the wire records what would have been written and can
//! be told to refuse (a full socket).

use std::time::{Duration, Instant};

use super::*;
use crate::mlm::client::refusal::RefusalKind;
use crate::mlm::client::state::Maintenance;

/// Records every message written; `blocked` makes it refuse as a socket
/// at its high-water mark does.
#[derive(Default)]
struct FakeWire {
    sent: Vec<Message>,
    blocked: bool,
}

impl Wire for FakeWire {
    fn write(&mut self, msg: &Message) -> Result<(), WireError> {
        if self.blocked {
            return Err(WireError::WouldBlock);
        }
        msg.encode_header()?;
        self.sent.push(msg.clone());
        Ok(())
    }
}

impl FakeWire {
    /// What was written since the last call, pings left out.
    fn take(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.sent)
            .into_iter()
            .filter(|m| *m != Message::ConnectionPing)
            .collect()
    }

    fn pings(&self) -> usize {
        self.sent
            .iter()
            .filter(|m| **m == Message::ConnectionPing)
            .count()
    }
}

const TIMEOUT: Duration = Duration::from_millis(1000);
const HEARTBEAT: Duration = Duration::from_millis(100);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn options(credit: Option<u16>) -> ClientOptions {
    let mut o = ClientOptions::new("tcp://test", "me");
    o.timeout = TIMEOUT;
    o.heartbeat = HEARTBEAT;
    o.credit = credit;
    o.outbox_limit = 3;
    o
}

fn ok(reason: &str) -> Message {
    Message::Ok {
        status: Status::new(200, reason),
    }
}

fn error(code: u16, reason: &str) -> Message {
    Message::Error {
        status: Status::new(code, reason),
    }
}

fn open_msg() -> Message {
    Message::ConnectionOpen {
        address: "me".into(),
    }
}

fn offer(address: &str, pattern: &str) -> Registration {
    Registration::Offer {
        address: address.into(),
        pattern: pattern.into(),
    }
}

fn service_deliver(subject: &str) -> Message {
    Message::ServiceDeliver {
        sender: "p".into(),
        address: "svc".into(),
        subject: subject.into(),
        tracker: String::new(),
        content: vec![b"x".to_vec()],
    }
}

fn mail(content: &[u8]) -> Message {
    Message::MailboxSend {
        address: "box".into(),
        subject: "s".into(),
        tracker: String::new(),
        timeout: 0,
        content: vec![content.to_vec()],
    }
}

/// A session whose first open was answered with `reason`; the wire is
/// emptied.
fn connected(credit: Option<u16>, reason: &str) -> (Session, FakeWire, Instant) {
    let t0 = Instant::now();
    let mut s = Session::new(&options(credit), t0);
    let mut w = FakeWire::default();
    s.handle(Event::TransportUp, t0, &mut w).unwrap();
    assert_eq!(w.take(), [open_msg()]);
    s.handle(Event::Message(ok(reason)), t0, &mut w).unwrap();
    assert_eq!(
        s.take_reply(Call::Open),
        Some(Reply::Ok(Status::new(200, reason)))
    );
    assert_eq!(s.state(), ConnState::Connected);
    (s, w, t0)
}

/// Drives a registration to its OK.
fn register_ok(s: &mut Session, w: &mut FakeWire, reg: Registration, now: Instant) {
    let call = s.register(reg, now, w).unwrap().expect("connected: a call");
    s.on_message(ok(""), now, w).unwrap();
    assert_eq!(s.take_reply(call), Some(Reply::Ok(Status::new(200, ""))));
}

/// Takes the deliveries waiting.
fn deliveries(s: &mut Session) -> Vec<Delivery> {
    std::iter::from_fn(|| s.next_delivery()).collect()
}

// ----- handshake and OPEN ----------------------------------------------

#[test]
fn first_open_waits_for_the_transport_then_answers_the_caller() {
    let t0 = Instant::now();
    let mut s = Session::new(&options(None), t0);
    let mut w = FakeWire::default();
    assert_eq!(s.state(), ConnState::Lost);
    s.handle(Event::Tick, t0, &mut w).unwrap();
    assert!(w.sent.is_empty(), "nothing written before the handshake");
    s.handle(Event::TransportUp, t0, &mut w).unwrap();
    assert_eq!(w.take(), [open_msg()]);
    assert_eq!(s.state(), ConnState::Opening);
    assert_eq!(s.take_reply(Call::Open), None);
    s.handle(Event::Message(ok("")), t0 + ms(5), &mut w)
        .unwrap();
    assert_eq!(
        s.take_reply(Call::Open),
        Some(Reply::Ok(Status::new(200, "")))
    );
    assert_eq!(s.state(), ConnState::Connected);
    assert_eq!(s.stats().reopens, 0, "the first open is not a reopen");
    assert!(w.take().is_empty(), "nothing to replay or flush");
}

#[test]
fn first_open_refused_is_answered_to_the_caller() {
    let t0 = Instant::now();
    let mut s = Session::new(&options(None), t0);
    let mut w = FakeWire::default();
    s.handle(Event::TransportUp, t0, &mut w).unwrap();
    s.handle(Event::Message(error(300, "go away")), t0, &mut w)
        .unwrap();
    assert_eq!(
        s.take_reply(Call::Open),
        Some(Reply::Refused(Status::new(300, "go away")))
    );
    assert_eq!(s.next_refusal(), None, "an answer, not a refusal of a send");
}

#[test]
fn handshake_failure_before_the_first_open_is_reported() {
    let t0 = Instant::now();
    let mut s = Session::new(&options(None), t0);
    let mut w = FakeWire::default();
    s.handle(Event::HandshakeFailed(HandshakeFailure::Auth), t0, &mut w)
        .unwrap();
    assert_eq!(s.handshake_failure(), Some(HandshakeFailure::Auth));
    let (mut s, mut w, t0) = connected(None, "");
    s.handle(Event::HandshakeFailed(HandshakeFailure::Auth), t0, &mut w)
        .unwrap();
    assert_eq!(
        s.handshake_failure(),
        None,
        "after the open it is only logged"
    );
}

#[test]
fn a_bare_hang_up_is_reported_only_when_no_cause_comes_after_it() {
    let t0 = Instant::now();
    let mut s = Session::new(&options(None), t0);
    let mut w = FakeWire::default();
    let hang_up = |s: &mut Session, w: &mut FakeWire| {
        s.handle(Event::HandshakeFailed(HandshakeFailure::NoDetail), t0, w)
            .unwrap()
    };
    hang_up(&mut s, &mut w);
    assert_eq!(s.handshake_verdict(3), None, "one hang-up says little");
    hang_up(&mut s, &mut w);
    s.handle(
        Event::HandshakeFailed(HandshakeFailure::MechanismMismatch),
        t0,
        &mut w,
    )
    .unwrap();
    assert_eq!(
        s.handshake_verdict(3),
        Some(HandshakeFailure::MechanismMismatch),
        "a cause wins at once"
    );
    hang_up(&mut s, &mut w);
    assert_eq!(
        s.handshake_verdict(3),
        Some(HandshakeFailure::MechanismMismatch),
        "and is not overwritten by a later hang-up"
    );
    let mut s = Session::new(&options(None), t0);
    for _ in 0..3 {
        hang_up(&mut s, &mut w);
    }
    assert_eq!(s.handshake_verdict(3), Some(HandshakeFailure::NoDetail));
}

// ----- acknowledged mode -------------------------------------------------

#[test]
fn ack_capability_is_a_whole_word_of_the_ok_reason() {
    for (reason, acks) in [
        ("alaska-broker ack/1", true),
        ("ack/1", true),
        ("ack/1 more", true),
        ("", false),
        ("ack/10", false),
        ("alaska-broker ack/2", false),
        ("xack/1", false),
    ] {
        let (s, _, _) = connected(Some(8), reason);
        assert_eq!(s.acks_enabled(), acks, "reason {reason:?}");
    }
}

#[test]
fn credit_only_when_asked_for_and_advertised() {
    let t0 = Instant::now();
    for (credit, reason, sent) in [
        (Some(8), "alaska-broker ack/1", true),
        (None, "alaska-broker ack/1", false),
        (Some(8), "", false),
    ] {
        let mut s = Session::new(&options(credit), t0);
        let mut w = FakeWire::default();
        s.handle(Event::TransportUp, t0, &mut w).unwrap();
        s.handle(Event::Message(ok(reason)), t0, &mut w).unwrap();
        let credits = w
            .take()
            .into_iter()
            .filter(|m| matches!(m, Message::Credit { .. }))
            .count();
        assert_eq!(credits, usize::from(sent), "{credit:?} {reason:?}");
        assert_eq!(s.acks_enabled(), sent);
    }
}

#[test]
fn credit_that_cannot_be_written_leaves_push_mode() {
    let t0 = Instant::now();
    let mut s = Session::new(&options(Some(8)), t0);
    let mut w = FakeWire::default();
    s.handle(Event::TransportUp, t0, &mut w).unwrap();
    w.blocked = true;
    s.handle(Event::Message(ok("ack/1")), t0, &mut w).unwrap();
    assert!(!s.acks_enabled(), "the broker never got CREDIT: it pushes");
    s.on_message(service_deliver("a"), t0, &mut w).unwrap();
    assert_eq!(deliveries(&mut s)[0].ack, None);
}

#[test]
fn credit_goes_before_the_replayed_registrations() {
    let (mut s, mut w, t0) = connected(Some(8), "ack/1");
    assert_eq!(w.take(), [Message::Credit { amount: 8 }]);
    register_ok(&mut s, &mut w, offer("svc", ".*"), t0);
    w.take();
    s.on_message(error(500, "command invalid"), t0, &mut w)
        .unwrap();
    assert_eq!(w.take(), [open_msg()]);
    s.on_message(ok("ack/1"), t0, &mut w).unwrap();
    assert_eq!(
        w.take(),
        [Message::Credit { amount: 8 }, offer("svc", ".*").message()]
    );
}

#[test]
fn deliveries_are_numbered_from_one_per_epoch() {
    let (mut s, mut w, t0) = connected(Some(8), "ack/1");
    for subject in ["a", "b", "c"] {
        s.on_message(service_deliver(subject), t0, &mut w).unwrap();
    }
    let first: Vec<AckToken> = deliveries(&mut s).iter().map(|d| d.ack.unwrap()).collect();
    assert_eq!(first.iter().map(|t| t.seq).collect::<Vec<_>>(), [1, 2, 3]);
    s.on_message(error(500, "command invalid"), t0, &mut w)
        .unwrap();
    s.on_message(ok("ack/1"), t0, &mut w).unwrap();
    s.on_message(service_deliver("d"), t0, &mut w).unwrap();
    let after = deliveries(&mut s)[0].ack.unwrap();
    assert_eq!(after.seq, 1, "numbering starts again after a reopen");
    assert_ne!(after.epoch, first[0].epoch);
    // Mail and streams are never numbered.
    s.on_message(
        Message::MailboxDeliver {
            sender: "x".into(),
            address: "me".into(),
            subject: "s".into(),
            tracker: "t".into(),
            content: vec![],
        },
        t0,
        &mut w,
    )
    .unwrap();
    s.on_message(service_deliver("e"), t0, &mut w).unwrap();
    let ds = deliveries(&mut s);
    assert_eq!(ds[0].ack, None);
    assert_eq!(ds[1].ack.unwrap().seq, 2);
}

#[test]
fn stale_tokens_are_ignored_after_a_reopen() {
    let (mut s, mut w, t0) = connected(Some(8), "ack/1");
    s.on_message(service_deliver("a"), t0, &mut w).unwrap();
    let old = deliveries(&mut s)[0].ack.unwrap();
    s.on_message(error(500, "command invalid"), t0, &mut w)
        .unwrap();
    s.confirm_all(&[old], t0, &mut w).unwrap();
    s.on_message(ok("ack/1"), t0, &mut w).unwrap();
    w.take();
    s.confirm_all(&[old], t0, &mut w).unwrap();
    assert!(w.take().is_empty(), "no CONFIRM for the old epoch");
    s.on_message(service_deliver("b"), t0, &mut w).unwrap();
    let new = deliveries(&mut s)[0].ack.unwrap();
    s.confirm_all(&[old, new], t0, &mut w).unwrap();
    assert_eq!(
        w.take(),
        [Message::Confirm {
            tracker: "1".into(),
            status: Status::new(200, "")
        }]
    );
}

#[test]
fn confirms_are_batched_and_split_at_255_bytes() {
    let (mut s, mut w, t0) = connected(Some(500), "ack/1");
    w.take();
    for i in 0..200 {
        s.on_message(service_deliver(&i.to_string()), t0, &mut w)
            .unwrap();
    }
    let tokens: Vec<AckToken> = deliveries(&mut s).iter().map(|d| d.ack.unwrap()).collect();
    s.confirm_all(&tokens, t0, &mut w).unwrap();
    let trackers: Vec<String> = w
        .take()
        .into_iter()
        .map(|m| match m {
            Message::Confirm { tracker, status } => {
                assert_eq!(status.code, 200);
                tracker
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(trackers.len() > 1, "200 numbers do not fit one tracker");
    for t in &trackers {
        assert!(t.len() <= 255, "{} bytes", t.len());
        assert!(!t.starts_with(',') && !t.ends_with(','));
    }
    // Each tracker is as full as it can be: the next number would not fit.
    for pair in trackers.windows(2) {
        let next = pair[1].split(',').next().unwrap();
        assert!(pair[0].len() + 1 + next.len() > 255);
    }
    let all: Vec<u64> = trackers
        .join(",")
        .split(',')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(all, (1..=200).collect::<Vec<u64>>());
}

#[test]
fn no_confirm_in_push_mode() {
    let (mut s, mut w, t0) = connected(Some(8), "");
    s.on_message(service_deliver("a"), t0, &mut w).unwrap();
    assert_eq!(deliveries(&mut s)[0].ack, None);
    let token = AckToken { epoch: 1, seq: 1 };
    s.confirm_all(&[token], t0, &mut w).unwrap();
    assert!(w.take().is_empty());
}

#[test]
fn confirms_kept_while_lost_are_dropped_by_a_reopen() {
    let (mut s, mut w, t0) = connected(Some(8), "ack/1");
    w.take();
    s.on_message(service_deliver("a"), t0, &mut w).unwrap();
    let token = deliveries(&mut s)[0].ack.unwrap();
    s.on_transport_down();
    s.confirm_all(&[token], t0, &mut w).unwrap();
    s.post(mail(b"kept"), t0, &mut w).unwrap();
    assert_eq!(s.outbox_len(), 2, "CONFIRM and mail wait");
    s.on_transport_up(t0, &mut w).unwrap();
    assert_eq!(s.outbox_len(), 1, "the CONFIRM numbered the old epoch");
    s.on_message(ok("ack/1"), t0, &mut w).unwrap();
    assert_eq!(
        w.take(),
        [open_msg(), Message::Credit { amount: 8 }, mail(b"kept")]
    );
}

#[test]
fn confirms_kept_while_silent_go_out_when_the_broker_answers_again() {
    let (mut s, mut w, t0) = connected(Some(8), "ack/1");
    s.on_message(service_deliver("a"), t0, &mut w).unwrap();
    let token = deliveries(&mut s)[0].ack.unwrap();
    s.on_tick(t0 + TIMEOUT, &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Lost);
    w.take();
    s.confirm_all(&[token], t0 + TIMEOUT, &mut w).unwrap();
    assert!(w.take().is_empty());
    s.on_message(Message::ConnectionPong, t0 + TIMEOUT, &mut w)
        .unwrap();
    assert_eq!(
        w.take(),
        [Message::Confirm {
            tracker: "1".into(),
            status: Status::new(200, "")
        }],
        "same connection, same numbering: the confirm is still right"
    );
}

// ----- reopen and replay ---------------------------------------------------

#[test]
fn error_500_reopens_and_replays_in_order() {
    let (mut s, mut w, t0) = connected(None, "");
    register_ok(&mut s, &mut w, offer("svc", ".*"), t0);
    register_ok(
        &mut s,
        &mut w,
        Registration::Consume {
            stream: "numbers".into(),
            pattern: "pi".into(),
        },
        t0,
    );
    register_ok(
        &mut s,
        &mut w,
        Registration::Produce {
            stream: "out".into(),
        },
        t0,
    );
    w.take();
    s.on_message(error(500, "command invalid"), t0 + ms(1), &mut w)
        .unwrap();
    assert_eq!(s.state(), ConnState::Opening);
    assert_eq!(s.stats().reopens, 1);
    assert_eq!(w.take(), [open_msg()]);
    s.on_message(ok(""), t0 + ms(2), &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Connected);
    assert_eq!(
        w.take(),
        [
            Message::StreamWrite {
                stream: "out".into()
            },
            Message::StreamRead {
                stream: "numbers".into(),
                pattern: "pi".into()
            },
            offer("svc", ".*").message(),
        ],
        "producer, consumers, offers"
    );
}

#[test]
fn stale_500s_before_the_reopen_is_answered_are_ignored() {
    let (mut s, mut w, t0) = connected(None, "");
    w.take();
    // The broker forgot us; our ping and a posted STREAM WRITE were
    // written before it said so, and both get ERROR 500.
    s.on_tick(t0 + HEARTBEAT, &mut w).unwrap();
    s.switch_producer("out", t0, &mut w).unwrap();
    for _ in 0..3 {
        s.on_message(error(500, "command invalid"), t0, &mut w)
            .unwrap();
    }
    assert_eq!(s.stats().reopens, 1, "one reopen, not three");
    s.on_message(ok(""), t0, &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Connected);
    let sent = w.take();
    assert_eq!(
        sent.iter().filter(|m| **m == open_msg()).count(),
        1,
        "{sent:?}"
    );
}

#[test]
fn a_call_pending_when_the_broker_forgets_us_is_refused() {
    let (mut s, mut w, t0) = connected(None, "");
    let call = s.register(offer("svc", ".*"), t0, &mut w).unwrap().unwrap();
    s.on_message(error(500, "command invalid"), t0, &mut w)
        .unwrap();
    assert_eq!(
        s.take_reply(call),
        Some(Reply::Refused(Status::new(500, "command invalid")))
    );
    s.on_message(ok(""), t0, &mut w).unwrap();
    w.take();
    // Not recorded: the next reopen does not replay it.
    s.on_message(error(500, "command invalid"), t0, &mut w)
        .unwrap();
    s.on_message(ok(""), t0, &mut w).unwrap();
    assert_eq!(w.take(), [open_msg()]);
}

#[test]
fn transport_down_then_up_reopens() {
    let (mut s, mut w, t0) = connected(None, "");
    register_ok(&mut s, &mut w, offer("svc", ".*"), t0);
    w.take();
    s.handle(Event::TransportDown, t0, &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Lost);
    s.on_tick(t0 + HEARTBEAT, &mut w).unwrap();
    assert_eq!(w.pings(), 0, "no ping without a transport");
    s.handle(Event::TransportUp, t0 + ms(150), &mut w).unwrap();
    assert_eq!(w.take(), [open_msg()]);
    assert_eq!(s.stats().reopens, 1);
    s.on_message(ok(""), t0 + ms(160), &mut w).unwrap();
    assert_eq!(w.take(), [offer("svc", ".*").message()]);
}

#[test]
fn a_message_from_the_old_connection_does_not_count_as_the_broker_back() {
    let (mut s, mut w, t0) = connected(None, "");
    s.on_transport_down();
    s.on_message(Message::ConnectionPong, t0, &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Lost);
}

#[test]
fn a_lost_open_is_sent_again_after_the_timeout_and_only_the_last_counts() {
    let (mut s, mut w, t0) = connected(None, "");
    register_ok(&mut s, &mut w, offer("svc", ".*"), t0);
    s.on_message(error(500, "command invalid"), t0, &mut w)
        .unwrap();
    w.take();
    s.on_tick(t0 + TIMEOUT - ms(1), &mut w).unwrap();
    assert!(w.take().is_empty(), "not before the timeout");
    assert_eq!(w.pings(), 0, "no pings while opening");
    s.on_tick(t0 + TIMEOUT, &mut w).unwrap();
    assert_eq!(w.take(), [open_msg()]);
    assert_eq!(s.stats().reopens, 2);
    // The first OPEN was slow, not lost: its OK comes first.
    s.on_message(ok(""), t0 + TIMEOUT, &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Opening);
    assert!(w.take().is_empty(), "no replay on the stale OK");
    s.on_message(ok(""), t0 + TIMEOUT, &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Connected);
    assert_eq!(w.take(), [offer("svc", ".*").message()]);
}

#[test]
fn a_refused_reopen_leaves_the_session_lost_and_pinging() {
    let (mut s, mut w, t0) = connected(None, "");
    s.on_message(error(500, "command invalid"), t0, &mut w)
        .unwrap();
    s.on_message(error(300, "not now"), t0, &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Lost);
    assert_eq!(s.next_refusal(), None);
    s.on_tick(t0 + HEARTBEAT, &mut w).unwrap();
    assert_eq!(w.pings(), 1);
    s.on_message(error(500, "command invalid"), t0, &mut w)
        .unwrap();
    assert_eq!(s.state(), ConnState::Opening);
    assert_eq!(s.stats().reopens, 2);
}

// ----- replies while replays are pending --------------------------------------

#[test]
fn a_call_made_while_replays_are_pending_gets_its_own_answer() {
    let (mut s, mut w, t0) = connected(None, "");
    register_ok(&mut s, &mut w, offer("a", ".*"), t0);
    register_ok(&mut s, &mut w, offer("b", ".*"), t0);
    s.on_message(error(500, "command invalid"), t0, &mut w)
        .unwrap();
    s.on_message(ok(""), t0, &mut w).unwrap();
    // Two replays are in flight; a new registration waits behind them.
    let call = s.register(offer("c", "x"), t0, &mut w).unwrap().unwrap();
    s.on_message(ok(""), t0, &mut w).unwrap();
    assert_eq!(s.take_reply(call), None, "the OK of replay a");
    s.on_message(error(300, "invalid pattern"), t0, &mut w)
        .unwrap();
    assert_eq!(s.take_reply(call), None, "the ERROR of replay b");
    assert_eq!(s.next_refusal(), None);
    s.on_message(error(300, "invalid pattern x"), t0, &mut w)
        .unwrap();
    assert_eq!(
        s.take_reply(call),
        Some(Reply::Refused(Status::new(300, "invalid pattern x")))
    );
}

#[test]
fn the_ok_of_a_switched_producer_does_not_answer_a_later_call() {
    let (mut s, mut w, t0) = connected(None, "");
    s.switch_producer("out", t0, &mut w).unwrap();
    s.switch_producer("out", t0, &mut w).unwrap();
    assert_eq!(
        w.take(),
        [Message::StreamWrite {
            stream: "out".into()
        }],
        "switching to the same stream writes nothing"
    );
    let call = s.register(offer("svc", "["), t0, &mut w).unwrap().unwrap();
    s.on_message(ok(""), t0, &mut w).unwrap();
    assert_eq!(s.take_reply(call), None);
    s.on_message(error(300, "invalid pattern"), t0, &mut w)
        .unwrap();
    assert_eq!(
        s.take_reply(call),
        Some(Reply::Refused(Status::new(300, "invalid pattern")))
    );
    assert_eq!(s.producer(), Some("out"));
}

#[test]
fn a_refused_registration_is_not_replayed() {
    let (mut s, mut w, t0) = connected(None, "");
    let call = s.register(offer("svc", "["), t0, &mut w).unwrap().unwrap();
    s.on_message(error(300, "invalid pattern"), t0, &mut w)
        .unwrap();
    assert!(matches!(s.take_reply(call), Some(Reply::Refused(_))));
    w.take();
    s.on_message(error(500, "command invalid"), t0, &mut w)
        .unwrap();
    s.on_message(ok(""), t0, &mut w).unwrap();
    assert_eq!(w.take(), [open_msg()]);
}

#[test]
fn a_late_answer_after_the_caller_gave_up_is_ignored() {
    let (mut s, mut w, t0) = connected(None, "");
    let call = s.register(offer("svc", ".*"), t0, &mut w).unwrap().unwrap();
    s.cancel_call();
    s.on_message(ok(""), t0, &mut w).unwrap();
    assert_eq!(s.take_reply(call), None);
    w.take();
    s.on_message(error(500, "command invalid"), t0, &mut w)
        .unwrap();
    s.on_message(ok(""), t0, &mut w).unwrap();
    assert_eq!(w.take(), [open_msg()], "not recorded, not replayed");
}

// ----- refusals -------------------------------------------------------------

#[test]
fn a_full_queue_is_a_typed_refusal() {
    let (mut s, mut w, t0) = connected(None, "");
    s.on_message(error(300, "service default queue full"), t0, &mut w)
        .unwrap();
    let r = s.next_refusal().expect("a refusal");
    assert_eq!(
        r.kind,
        RefusalKind::ServiceQueueFull {
            service: "default".into()
        }
    );
    assert!(r.is_full());
    assert_eq!(s.stats().refused, 1);
    assert_eq!(
        s.take_last_error(),
        Some(Status::new(300, "service default queue full"))
    );
    assert_eq!(s.state(), ConnState::Connected);
}

#[test]
fn a_refusal_of_a_send_does_not_answer_a_pending_call() {
    let (mut s, mut w, t0) = connected(None, "");
    let call = s.register(offer("svc", ".*"), t0, &mut w).unwrap().unwrap();
    s.on_message(error(300, "mailbox someone full"), t0, &mut w)
        .unwrap();
    assert_eq!(s.take_reply(call), None);
    assert!(matches!(
        s.next_refusal().map(|r| r.kind),
        Some(RefusalKind::MailboxFull { .. })
    ));
    s.on_message(ok(""), t0, &mut w).unwrap();
    assert_eq!(s.take_reply(call), Some(Reply::Ok(Status::new(200, ""))));
}

#[test]
fn an_unknown_error_nobody_waits_for_is_a_refusal_of_kind_other() {
    let (mut s, mut w, t0) = connected(None, "");
    s.on_message(error(300, "CONFIRM needs CREDIT first"), t0, &mut w)
        .unwrap();
    let r = s.next_refusal().unwrap();
    assert_eq!(r.kind, RefusalKind::Other);
    assert!(!r.is_full());
}

#[test]
fn deliveries_and_refusals_come_out_in_the_order_they_arrived() {
    // A program matching refusals to its sends by order (the gateway does:
    // the broker's ERROR names no tracker) must see them as they came.
    let (mut s, mut w, t0) = connected(None, "");
    let mail = |tracker: &str| Message::MailboxDeliver {
        sender: "x".into(),
        address: "me".into(),
        subject: "s".into(),
        tracker: tracker.into(),
        content: vec![],
    };
    s.on_message(mail("a"), t0, &mut w).unwrap();
    s.on_message(error(300, "service svc queue full"), t0, &mut w)
        .unwrap();
    s.on_message(mail("b"), t0, &mut w).unwrap();
    s.on_message(error(300, "mailbox m full"), t0, &mut w)
        .unwrap();
    s.on_message(error(300, "service svc queue full"), t0, &mut w)
        .unwrap();
    s.on_message(mail("c"), t0, &mut w).unwrap();
    let order: Vec<String> = std::iter::from_fn(|| s.next_in_order())
        .map(|e| match e {
            Ok(d) => d.tracker,
            Err(r) => r.status.reason,
        })
        .collect();
    assert_eq!(
        order,
        [
            "a",
            "service svc queue full",
            "b",
            "mailbox m full",
            "service svc queue full",
            "c"
        ]
    );
}

#[test]
fn refusals_kept_are_bounded_and_all_counted() {
    let (mut s, mut w, t0) = connected(None, "");
    for _ in 0..REFUSALS_KEPT + 5 {
        s.on_message(error(300, "service x queue full"), t0, &mut w)
            .unwrap();
    }
    assert_eq!(s.take_refusals().len(), REFUSALS_KEPT);
    assert_eq!(s.stats().refused, (REFUSALS_KEPT + 5) as u64);
    assert_eq!(s.next_refusal(), None);
}

// ----- silence, heartbeat, outbox --------------------------------------------

#[test]
fn pings_every_heartbeat_unless_something_was_written() {
    let (mut s, mut w, t0) = connected(None, "");
    s.on_tick(t0 + ms(99), &mut w).unwrap();
    assert_eq!(w.pings(), 0);
    s.on_tick(t0 + ms(100), &mut w).unwrap();
    assert_eq!(w.pings(), 1);
    assert_eq!(s.next_deadline(), t0 + ms(200));
    s.post(mail(b"m"), t0 + ms(150), &mut w).unwrap();
    s.on_tick(t0 + ms(200), &mut w).unwrap();
    assert_eq!(w.pings(), 1, "the mail at 150 ms counts as traffic");
    s.on_tick(t0 + ms(250), &mut w).unwrap();
    assert_eq!(w.pings(), 2);
}

#[test]
fn silence_then_lost_then_pings_then_back_and_outbox_flushed() {
    let (mut s, mut w, t0) = connected(None, "");
    // The broker answered nothing since t0; pings went out.
    let mut now = t0;
    while now < t0 + TIMEOUT - ms(1) {
        now += HEARTBEAT;
        s.on_tick(now.min(t0 + TIMEOUT - ms(1)), &mut w).unwrap();
    }
    assert_eq!(s.state(), ConnState::Connected);
    s.on_tick(t0 + TIMEOUT, &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Lost);
    s.post(mail(b"kept"), t0 + TIMEOUT, &mut w).unwrap();
    assert_eq!(s.outbox_len(), 1);
    let pings = w.pings();
    s.on_tick(t0 + TIMEOUT + HEARTBEAT, &mut w).unwrap();
    assert_eq!(w.pings(), pings + 1, "still pinging while lost");
    assert!(!w.take().contains(&mail(b"kept")));
    s.on_message(Message::ConnectionPong, t0 + ms(1200), &mut w)
        .unwrap();
    assert_eq!(s.state(), ConnState::Connected);
    assert_eq!(w.take(), [mail(b"kept")]);
    assert_eq!(s.outbox_len(), 0);
    assert_eq!(s.stats().reopens, 0, "it never forgot us: no reopen");
}

#[test]
fn next_deadline_follows_the_state() {
    let (mut s, mut w, t0) = connected(None, "");
    assert_eq!(s.next_deadline(), t0 + HEARTBEAT, "ping first");
    s.on_message(error(500, "command invalid"), t0 + ms(10), &mut w)
        .unwrap();
    assert_eq!(
        s.next_deadline(),
        t0 + ms(10) + TIMEOUT,
        "opening: the re-open"
    );
    s.on_transport_down();
    assert_eq!(s.next_deadline(), t0 + ms(10) + HEARTBEAT, "lost: pings");
}

#[test]
fn the_outbox_is_bounded() {
    let (mut s, mut w, t0) = connected(None, "");
    s.on_transport_down();
    for i in 0..3 {
        s.post(mail(&[i]), t0, &mut w).unwrap();
    }
    let e = s.post(mail(b"one too many"), t0, &mut w).unwrap_err();
    assert!(matches!(e, ClientError::OutboxFull(3)), "{e}");
    assert_eq!(s.stats().dropped, 1);
    assert_eq!(s.outbox_len(), 3);
}

#[test]
fn a_full_socket_keeps_messages_in_order_in_the_outbox() {
    let (mut s, mut w, t0) = connected(None, "");
    w.blocked = true;
    s.post(mail(b"1"), t0, &mut w).unwrap();
    w.blocked = false;
    s.post(mail(b"2"), t0, &mut w).unwrap();
    assert!(w.take().is_empty(), "2 queues behind 1");
    s.on_tick(t0 + ms(1), &mut w).unwrap();
    assert_eq!(w.take(), [mail(b"1"), mail(b"2")]);
}

#[test]
fn a_bad_field_is_the_callers_error_whether_sent_or_queued() {
    let (mut s, mut w, t0) = connected(None, "");
    let long = "x".repeat(300);
    let bad = Message::ServiceSend {
        address: long.clone(),
        subject: "s".into(),
        tracker: String::new(),
        timeout: 0,
        content: vec![],
    };
    assert!(matches!(
        s.post(bad.clone(), t0, &mut w),
        Err(ClientError::Encode(_))
    ));
    s.on_transport_down();
    assert!(matches!(
        s.post(bad, t0, &mut w),
        Err(ClientError::Encode(_))
    ));
    assert_eq!(s.outbox_len(), 0);
    assert!(matches!(
        s.register(offer(&long, ".*"), t0, &mut w),
        Err(ClientError::Encode(_))
    ));
}

#[test]
fn malformed_frames_are_counted_and_count_as_hearing_from_the_broker() {
    let (mut s, mut w, t0) = connected(None, "");
    let e = Message::decode(&[[0xaa_u8, 0xa7, 0x02]]).unwrap_err();
    s.handle(Event::Malformed(e), t0 + ms(900), &mut w).unwrap();
    assert_eq!(s.stats().malformed, 1);
    s.on_tick(t0 + TIMEOUT, &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Connected, "heard at 900 ms");
}

// ----- registrations while away ----------------------------------------------

#[test]
fn a_registration_while_away_is_recorded_and_replayed_not_written() {
    let (mut s, mut w, t0) = connected(None, "");
    s.on_transport_down();
    assert_eq!(s.register(offer("svc", ".*"), t0, &mut w).unwrap(), None);
    assert!(w.take().is_empty());
    s.on_transport_up(t0, &mut w).unwrap();
    s.on_message(ok(""), t0, &mut w).unwrap();
    assert_eq!(w.take(), [open_msg(), offer("svc", ".*").message()]);
}

#[test]
fn a_registration_while_silent_is_written_when_the_broker_answers_again() {
    let (mut s, mut w, t0) = connected(None, "");
    s.on_tick(t0 + TIMEOUT, &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Lost);
    assert_eq!(s.register(offer("svc", ".*"), t0, &mut w).unwrap(), None);
    s.post(mail(b"after"), t0, &mut w).unwrap();
    w.take();
    s.on_message(Message::ConnectionPong, t0 + TIMEOUT, &mut w)
        .unwrap();
    assert_eq!(
        w.take(),
        [offer("svc", ".*").message(), mail(b"after")],
        "the offer first, then what waited"
    );
    // Its OK is a replay's, not an answer for anyone.
    s.on_message(ok(""), t0 + TIMEOUT, &mut w).unwrap();
    assert_eq!(s.next_refusal(), None);
}

// ----- close ----------------------------------------------------------------

#[test]
fn close_goes_after_the_outbox_and_its_ok_answers_the_close() {
    let (mut s, mut w, t0) = connected(None, "");
    w.blocked = true;
    s.post(mail(b"last"), t0, &mut w).unwrap();
    assert!(s.begin_close());
    s.queue_close();
    w.blocked = false;
    s.flush(t0, &mut w).unwrap();
    assert_eq!(w.take(), [mail(b"last"), Message::ConnectionClose]);
    s.on_message(error(300, "service default queue full"), t0, &mut w)
        .unwrap();
    assert_eq!(s.take_reply(Call::Close), None);
    s.on_message(ok(""), t0, &mut w).unwrap();
    assert_eq!(
        s.take_reply(Call::Close),
        Some(Reply::Ok(Status::new(200, "")))
    );
    assert_eq!(s.take_refusals().len(), 1, "the refusal before the OK");
}

#[test]
fn nothing_reopens_once_closing() {
    let (mut s, mut w, t0) = connected(None, "");
    assert!(s.begin_close());
    s.on_transport_down();
    assert!(!s.begin_close(), "nobody to say goodbye to");
    s.on_transport_up(t0, &mut w).unwrap();
    assert!(w.take().is_empty());
}

#[test]
fn an_open_outstanding_when_the_broker_goes_silent_is_still_retried() {
    let (mut s, mut w, t0) = connected(None, "");
    s.on_message(error(500, "command invalid"), t0, &mut w)
        .unwrap();
    assert_eq!(s.state(), ConnState::Opening);
    w.take();
    // Silence and the re-open fall due together: the OPEN is sent again.
    s.on_tick(t0 + TIMEOUT, &mut w).unwrap();
    assert_eq!(w.take(), [open_msg()]);
    // Silent again, but ERROR 500s to our pings are ignored while the OPEN
    // is outstanding: the re-open timer keeps the session going.
    s.on_tick(t0 + TIMEOUT * 2, &mut w).unwrap();
    assert_eq!(w.take(), [open_msg()]);
    assert_eq!(s.stats().reopens, 3);
    s.on_message(error(500, "command invalid"), t0 + TIMEOUT * 2, &mut w)
        .unwrap();
    assert_eq!(s.stats().reopens, 3);
    assert_eq!(s.next_deadline(), t0 + TIMEOUT * 3);
}

#[test]
fn a_broker_that_forgot_us_while_we_close_is_not_opened_again() {
    let (mut s, mut w, t0) = connected(None, "");
    assert!(s.begin_close());
    s.queue_close();
    s.flush(t0, &mut w).unwrap();
    assert_eq!(w.take(), [Message::ConnectionClose]);
    s.on_message(error(500, "command invalid"), t0, &mut w)
        .unwrap();
    assert_eq!(
        s.take_reply(Call::Close),
        Some(Reply::Refused(Status::new(500, "command invalid"))),
        "the close is over"
    );
    assert!(w.take().is_empty(), "no CONNECTION OPEN");
    assert_eq!(s.stats().reopens, 0);
}

// ----- maintenance ----------------------------------------------------------

fn maint(on: bool) -> Message {
    Message::Confirm {
        tracker: if on {
            "maintenance:on"
        } else {
            "maintenance:off"
        }
        .into(),
        status: Status::new(200, ""),
    }
}

#[test]
fn maintenance_capability_is_a_whole_word_of_the_ok_reason() {
    for (reason, capable) in [
        ("alaska-broker ack/1 maint/1", true),
        ("maint/1", true),
        ("alaska-broker ack/1", false),
        ("", false),
        ("maint/10", false),
        ("xmaint/1", false),
    ] {
        let (s, _, _) = connected(Some(8), reason);
        assert_eq!(s.maintenance().by_broker, capable, "reason {reason:?}");
    }
}

#[test]
fn with_maint1_maintenance_is_one_confirm_each_way_and_the_connection_stays() {
    let (mut s, mut w, t0) = connected(Some(8), "alaska-broker ack/1 maint/1");
    register_ok(&mut s, &mut w, offer("svc", ".*"), t0);
    w.take();
    s.on_message(service_deliver("before"), t0, &mut w).unwrap();
    s.set_maintenance(true, t0, &mut w).unwrap();
    assert_eq!(
        w.pings(),
        1,
        "a PING after the CONFIRM, to learn it was taken"
    );
    assert_eq!(w.take(), [maint(true)]);
    assert!(
        !s.maintenance().applied,
        "a CONFIRM gets no answer: applied only when the PONG after it comes"
    );
    s.on_message(Message::ConnectionPong, t0, &mut w).unwrap();
    assert_eq!(
        s.maintenance(),
        Maintenance {
            wanted: true,
            applied: true,
            by_broker: true
        }
    );
    s.set_maintenance(true, t0, &mut w).unwrap();
    assert!(w.take().is_empty(), "nothing twice");
    // A request the broker sent before it read ours is still ours, and
    // numbered on: the connection did not change.
    s.on_message(service_deliver("in between"), t0, &mut w)
        .unwrap();
    let d = deliveries(&mut s);
    assert_eq!(d.len(), 2);
    s.confirm_all(&[d[0].ack.unwrap(), d[1].ack.unwrap()], t0, &mut w)
        .unwrap();
    assert_eq!(
        w.take(),
        [Message::Confirm {
            tracker: "1,2".into(),
            status: Status::new(200, "")
        }]
    );
    s.set_maintenance(false, t0, &mut w).unwrap();
    assert_eq!(w.take(), [maint(false)]);
    assert_eq!(s.stats().reopens, 0);
    assert_eq!(s.state(), ConnState::Connected);
}

#[test]
fn with_maint1_a_reopen_says_maintenance_before_the_offers() {
    let (mut s, mut w, t0) = connected(Some(8), "ack/1 maint/1");
    register_ok(&mut s, &mut w, offer("svc", ".*"), t0);
    s.set_maintenance(true, t0, &mut w).unwrap();
    w.take();
    s.on_message(error(500, "command invalid"), t0, &mut w)
        .unwrap();
    assert_eq!(w.take(), [open_msg()]);
    assert!(
        !s.maintenance().applied,
        "a new broker session knows nothing"
    );
    s.on_message(ok("ack/1 maint/1"), t0, &mut w).unwrap();
    assert_eq!(
        w.take(),
        [
            Message::Credit { amount: 8 },
            maint(true),
            offer("svc", ".*").message()
        ]
    );
    assert!(!s.maintenance().applied, "until the PONG after it");
    s.on_message(Message::ConnectionPong, t0, &mut w).unwrap();
    assert!(s.maintenance().applied);
}

#[test]
fn without_maint1_maintenance_withdraws_the_offers_by_reopening_without_them() {
    let (mut s, mut w, t0) = connected(None, "");
    let producer = Registration::Produce {
        stream: "out".into(),
    };
    register_ok(&mut s, &mut w, producer.clone(), t0);
    register_ok(&mut s, &mut w, offer("svc", ".*"), t0);
    w.take();
    s.set_maintenance(true, t0, &mut w).unwrap();
    assert_eq!(w.take(), [Message::ConnectionClose, open_msg()]);
    assert_eq!(s.state(), ConnState::Opening);
    assert!(!s.maintenance().applied);
    // A request pushed before the broker read our CLOSE is ours.
    s.on_message(service_deliver("pushed"), t0, &mut w).unwrap();
    assert_eq!(deliveries(&mut s).len(), 1);
    // A reply sent meanwhile waits for the new OPEN's OK.
    s.post(mail(b"reply"), t0, &mut w).unwrap();
    assert!(w.take().is_empty());
    s.on_message(ok(""), t0, &mut w).unwrap(); // the CLOSE's OK: nobody's
    assert_eq!(s.state(), ConnState::Opening);
    s.on_message(ok(""), t0, &mut w).unwrap(); // the OPEN's
    assert_eq!(s.state(), ConnState::Connected);
    assert_eq!(
        w.take(),
        [producer.message(), mail(b"reply")],
        "everything replayed but the offer, then the outbox"
    );
    assert_eq!(
        s.maintenance(),
        Maintenance {
            wanted: true,
            applied: true,
            by_broker: false
        }
    );
    assert_eq!(s.stats().reopens, 0, "a withdrawal is not a reconnect");
    // A broker restart in maintenance: still no offer.
    s.on_message(error(500, "command invalid"), t0, &mut w)
        .unwrap();
    s.on_message(ok(""), t0, &mut w).unwrap();
    assert_eq!(w.take(), [open_msg(), producer.message()]);
    // Resuming offers again, on the same connection.
    s.set_maintenance(false, t0, &mut w).unwrap();
    assert_eq!(w.take(), [offer("svc", ".*").message()]);
    s.on_message(ok(""), t0, &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Connected);
    assert!(!s.maintenance().wanted && s.maintenance().applied);
}

#[test]
fn without_maint1_an_offer_made_in_maintenance_waits_for_its_end() {
    let (mut s, mut w, t0) = connected(None, "");
    s.set_maintenance(true, t0, &mut w).unwrap();
    assert!(w.take().is_empty(), "no offers: nothing to withdraw");
    assert!(s.maintenance().applied);
    assert_eq!(s.register(offer("svc", "a"), t0, &mut w).unwrap(), None);
    assert!(w.take().is_empty(), "recorded, not offered");
    s.set_maintenance(false, t0, &mut w).unwrap();
    assert_eq!(w.take(), [offer("svc", "a").message()]);
}

#[test]
fn maintenance_asked_while_the_broker_is_away_is_applied_when_it_answers() {
    // Silent, then answering again without a reopen: the broker still has
    // our offer, so it is withdrawn then.
    let (mut s, mut w, t0) = connected(None, "");
    register_ok(&mut s, &mut w, offer("svc", ".*"), t0);
    w.take();
    s.on_tick(t0 + TIMEOUT, &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Lost);
    w.take();
    s.set_maintenance(true, t0 + TIMEOUT, &mut w).unwrap();
    assert!(w.take().is_empty(), "nothing while the broker is away");
    s.on_message(Message::ConnectionPong, t0 + TIMEOUT, &mut w)
        .unwrap();
    assert_eq!(w.take(), [Message::ConnectionClose, open_msg()]);

    // The same with maint/1.
    let (mut s, mut w, t0) = connected(Some(4), "ack/1 maint/1");
    s.on_tick(t0 + TIMEOUT, &mut w).unwrap();
    w.take();
    s.set_maintenance(true, t0 + TIMEOUT, &mut w).unwrap();
    assert!(w.take().is_empty());
    s.on_message(Message::ConnectionPong, t0 + TIMEOUT, &mut w)
        .unwrap();
    assert_eq!(w.take(), [maint(true)]);
}

#[test]
fn a_heartbeat_pong_from_before_the_maintenance_command_does_not_say_applied() {
    let (mut s, mut w, t0) = connected(Some(4), "ack/1 maint/1");
    // A heartbeat PING goes out, then the command (and its PING); the
    // first PONG answers the heartbeat, not the command.
    s.on_tick(t0 + HEARTBEAT, &mut w).unwrap();
    assert_eq!(w.pings(), 1);
    s.set_maintenance(true, t0 + HEARTBEAT, &mut w).unwrap();
    assert_eq!(w.pings(), 2);
    s.on_message(Message::ConnectionPong, t0 + HEARTBEAT, &mut w)
        .unwrap();
    assert!(!s.maintenance().applied);
    s.on_message(Message::ConnectionPong, t0 + HEARTBEAT, &mut w)
        .unwrap();
    assert!(s.maintenance().applied);
}

#[test]
fn a_maintenance_command_the_socket_refused_goes_out_at_the_next_tick() {
    let (mut s, mut w, t0) = connected(Some(4), "ack/1 maint/1");
    w.take();
    w.blocked = true;
    s.set_maintenance(true, t0, &mut w).unwrap();
    assert!(!s.maintenance().applied);
    w.blocked = false;
    s.on_tick(t0 + ms(1), &mut w).unwrap();
    assert_eq!(w.take(), [maint(true)]);
    s.on_message(Message::ConnectionPong, t0 + ms(1), &mut w)
        .unwrap();
    assert!(s.maintenance().applied);

    let (mut s, mut w, t0) = connected(None, "");
    register_ok(&mut s, &mut w, offer("svc", ".*"), t0);
    w.take();
    w.blocked = true;
    s.set_maintenance(true, t0, &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Connected, "nothing written yet");
    w.blocked = false;
    s.on_tick(t0 + ms(1), &mut w).unwrap();
    assert_eq!(w.take(), [Message::ConnectionClose, open_msg()]);
}

#[test]
fn no_maintenance_command_while_closing() {
    let (mut s, mut w, t0) = connected(Some(4), "ack/1 maint/1");
    w.take();
    assert!(s.begin_close());
    s.set_maintenance(true, t0, &mut w).unwrap();
    assert!(w.take().is_empty());
}

// ----- lazy start (a broker that may be down when we start) ------------

fn lazy(credit: Option<u16>) -> (Session, FakeWire, Instant) {
    let t0 = Instant::now();
    (
        Session::new_lazy(&options(credit), t0),
        FakeWire::default(),
        t0,
    )
}

#[test]
fn lazy_start_records_offers_and_sends_until_the_broker_is_there() {
    let (mut s, mut w, t0) = lazy(None);
    assert_eq!(s.state(), ConnState::Lost);
    // Nothing can be written yet: the offer is recorded, the mail kept.
    assert_eq!(s.register(offer("svc", ".*"), t0, &mut w).unwrap(), None);
    s.post(mail(b"early"), t0, &mut w).unwrap();
    // Time passes with the broker away: still nothing on the wire, and
    // nothing retried before the transport is up.
    s.handle(Event::Tick, t0 + ms(5_000), &mut w).unwrap();
    assert!(w.sent.is_empty(), "{:?}", w.sent);
    assert_eq!(s.outbox_len(), 1);
    // The broker comes up ten seconds late: OPEN, then on its OK the offer
    // replayed and the mail flushed behind it.
    let t1 = t0 + ms(10_000);
    s.handle(Event::TransportUp, t1, &mut w).unwrap();
    assert_eq!(w.take(), [open_msg()]);
    assert_eq!(s.state(), ConnState::Opening);
    s.handle(Event::Message(ok("")), t1, &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Connected);
    assert_eq!(
        w.take(),
        [
            Message::ServiceOffer {
                address: "svc".into(),
                pattern: ".*".into(),
            },
            mail(b"early"),
        ]
    );
    assert_eq!(s.outbox_len(), 0);
    assert_eq!(s.stats().reopens, 0, "the first open, however late");
    // Nobody waited for the OPEN: no answer is left lying around to be
    // mistaken for a later call's.
    assert_eq!(s.take_reply(Call::Open), None);
    // The offer's OK is a replay's: it answers nobody, refuses nothing.
    s.handle(Event::Message(ok("")), t1, &mut w).unwrap();
    assert_eq!(s.next_refusal(), None);
}

#[test]
fn lazy_start_against_an_ack_broker_credits_before_the_replayed_offer() {
    let (mut s, mut w, t0) = lazy(Some(8));
    s.register(offer("svc", ".*"), t0, &mut w).unwrap();
    s.handle(Event::TransportUp, t0, &mut w).unwrap();
    s.handle(Event::Message(ok("alaska-broker ack/1")), t0, &mut w)
        .unwrap();
    assert_eq!(
        w.take(),
        [
            open_msg(),
            Message::Credit { amount: 8 },
            Message::ServiceOffer {
                address: "svc".into(),
                pattern: ".*".into(),
            },
        ]
    );
    assert!(s.acks_enabled());
    s.handle(Event::Message(service_deliver("a")), t0, &mut w)
        .unwrap();
    let got = deliveries(&mut s);
    assert_eq!(got[0].ack, Some(AckToken { epoch: 1, seq: 1 }));
}

#[test]
fn lazy_start_whose_transport_drops_before_the_ok_opens_again() {
    let (mut s, mut w, t0) = lazy(None);
    s.register(offer("svc", ".*"), t0, &mut w).unwrap();
    s.handle(Event::TransportUp, t0, &mut w).unwrap();
    assert_eq!(w.take(), [open_msg()]);
    s.handle(Event::TransportDown, t0 + ms(10), &mut w).unwrap();
    assert_eq!(s.state(), ConnState::Lost);
    s.handle(Event::TransportUp, t0 + ms(500), &mut w).unwrap();
    assert_eq!(w.take(), [open_msg()], "a new connection: open again");
    s.handle(Event::Message(ok("")), t0 + ms(510), &mut w)
        .unwrap();
    assert_eq!(s.state(), ConnState::Connected);
    assert_eq!(
        w.take(),
        [Message::ServiceOffer {
            address: "svc".into(),
            pattern: ".*".into(),
        }]
    );
}

#[test]
fn lazy_start_refused_open_keeps_trying_without_a_caller() {
    let (mut s, mut w, t0) = lazy(None);
    s.register(offer("svc", ".*"), t0, &mut w).unwrap();
    s.handle(Event::TransportUp, t0, &mut w).unwrap();
    w.take();
    s.handle(Event::Message(error(300, "not now")), t0, &mut w)
        .unwrap();
    assert_eq!(s.state(), ConnState::Lost);
    assert_eq!(s.take_reply(Call::Open), None, "nobody waits for it");
    assert_eq!(s.next_refusal(), None, "an answer to OPEN, not a refusal");
    // Pings go on; the broker does not know us and says 500: open again,
    // and on the OK the offer is replayed.
    s.handle(Event::Tick, t0 + HEARTBEAT, &mut w).unwrap();
    assert_eq!(w.pings(), 1);
    w.sent.clear();
    s.handle(
        Event::Message(error(500, "unknown")),
        t0 + HEARTBEAT,
        &mut w,
    )
    .unwrap();
    assert_eq!(w.take(), [open_msg()]);
    s.handle(Event::Message(ok("")), t0 + HEARTBEAT, &mut w)
        .unwrap();
    assert_eq!(s.state(), ConnState::Connected);
    assert_eq!(
        w.take(),
        [Message::ServiceOffer {
            address: "svc".into(),
            pattern: ".*".into(),
        }]
    );
}

#[test]
fn lazy_start_with_refused_credentials_is_recorded_and_not_fatal() {
    let (mut s, mut w, t0) = lazy(None);
    s.handle(Event::HandshakeFailed(HandshakeFailure::Auth), t0, &mut w)
        .unwrap();
    assert_eq!(s.handshake_failure(), Some(HandshakeFailure::Auth));
    assert_eq!(s.state(), ConnState::Lost);
    // The broker's password file is fixed: the next handshake succeeds and
    // the old refusal is forgotten.
    s.handle(Event::TransportUp, t0 + ms(1000), &mut w).unwrap();
    assert_eq!(s.handshake_failure(), None);
}

#[test]
fn unreachable_while_connects_fail_until_the_transport_comes_up() {
    let (mut s, mut w, t0) = lazy(None);
    assert!(!s.unreachable(), "not known yet: only time will tell");
    s.handle(Event::ConnectRetried, t0, &mut w).unwrap();
    assert!(s.unreachable());
    s.handle(Event::TransportUp, t0 + ms(100), &mut w).unwrap();
    assert!(!s.unreachable());
    s.handle(Event::Message(ok("")), t0 + ms(100), &mut w)
        .unwrap();
    // The broker dies: the drop, then libzmq retrying.
    s.handle(Event::TransportDown, t0 + ms(200), &mut w)
        .unwrap();
    s.handle(Event::ConnectRetried, t0 + ms(200), &mut w)
        .unwrap();
    assert!(s.unreachable());
    assert_eq!(s.state(), ConnState::Lost);
    s.handle(Event::TransportUp, t0 + ms(900), &mut w).unwrap();
    assert!(!s.unreachable());
}

#[test]
fn lazy_start_in_maintenance_says_so_before_the_offer_or_withholds_it() {
    // A worker started in maintenance with its broker not there yet.
    let (mut s, mut w, t0) = lazy(Some(8));
    s.set_maintenance(true, t0, &mut w).unwrap();
    s.register(offer("svc", ".*"), t0, &mut w).unwrap();
    assert!(w.take().is_empty(), "nothing before the transport");
    s.handle(Event::TransportUp, t0, &mut w).unwrap();
    assert_eq!(w.take(), [open_msg()]);
    s.handle(
        Event::Message(ok("alaska-broker ack/1 maint/1")),
        t0,
        &mut w,
    )
    .unwrap();
    assert_eq!(
        w.take(),
        [
            Message::Credit { amount: 8 },
            maint(true),
            offer("svc", ".*").message()
        ]
    );
    // A broker without maint/1 never sees the offer until the end.
    let (mut s, mut w, t0) = lazy(None);
    s.set_maintenance(true, t0, &mut w).unwrap();
    s.register(offer("svc", ".*"), t0, &mut w).unwrap();
    s.handle(Event::TransportUp, t0, &mut w).unwrap();
    s.handle(Event::Message(ok("")), t0, &mut w).unwrap();
    assert_eq!(w.take(), [open_msg()]);
    assert!(s.maintenance().applied);
    s.set_maintenance(false, t0, &mut w).unwrap();
    assert_eq!(w.take(), [offer("svc", ".*").message()]);
}

fn delayed_send(subject: &str) -> Message {
    Message::ServiceSend {
        address: "svc".into(),
        subject: subject.into(),
        tracker: String::new(),
        timeout: 0,
        content: vec![b"x".to_vec()],
    }
}

fn delay(ms: u64) -> Message {
    Message::Confirm {
        tracker: format!("delay:{ms}"),
        status: Status::new(200, ""),
    }
}

#[test]
fn delay_capability_is_a_whole_word_of_the_ok_reason() {
    for (reason, capable) in [
        ("alaska-broker ack/1 maint/1 delay/1", true),
        ("delay/1", true),
        ("alaska-broker ack/1 maint/1", false),
        ("", false),
        ("delay/10", false),
        ("xdelay/1", false),
    ] {
        let (s, _, _) = connected(Some(8), reason);
        assert_eq!(s.delay_capable(), capable, "reason {reason:?}");
    }
}

#[test]
fn a_delayed_send_is_the_delay_confirm_then_the_send_adjacent() {
    let (mut s, mut w, t0) = connected(None, "alaska-broker ack/1 maint/1 delay/1");
    s.post_delayed(delayed_send("later"), 2000, t0, &mut w)
        .unwrap();
    assert_eq!(w.take(), [delay(2000), delayed_send("later")]);
    // The socket blocks after the CONFIRM: both wait, the CONFIRM said
    // again right before the send.
    struct OneThenBlock(FakeWire, usize);
    impl Wire for OneThenBlock {
        fn write(&mut self, msg: &Message) -> Result<(), WireError> {
            if self.1 == 0 {
                return Err(WireError::WouldBlock);
            }
            self.1 -= 1;
            self.0.write(msg)
        }
    }
    let mut one = OneThenBlock(FakeWire::default(), 1);
    s.post_delayed(delayed_send("again"), 5, t0, &mut one)
        .unwrap();
    assert_eq!(one.0.take(), [delay(5)]);
    assert_eq!(s.outbox_len(), 2);
    s.flush(t0, &mut w).unwrap();
    assert_eq!(w.take(), [delay(5), delayed_send("again")]);
}

#[test]
fn a_delayed_send_is_refused_without_delay1_or_while_away() {
    let (mut s, mut w, t0) = connected(None, "alaska-broker ack/1 maint/1");
    let e = s
        .post_delayed(delayed_send("x"), 10, t0, &mut w)
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Unsupported(m) if m.contains("real Malamute")),
        "{e}"
    );
    assert!(w.take().is_empty(), "nothing written");
    let mut s = Session::new(&options(None), t0);
    let e = s
        .post_delayed(delayed_send("x"), 10, t0, &mut w)
        .unwrap_err();
    assert!(matches!(e, ClientError::NotConnected(_)), "{e}");
}
