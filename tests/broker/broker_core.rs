//! The broker core on its own: commands in, sends out, time passed in. No
//! socket, no sleep: each test runs in microseconds, and timers are driven
//! by moving a fake clock.

use std::time::{Duration, Instant};

use alaska::broker::core::{Core, CoreConfig, Held, HeldId, Journal, Kind, Outgoing, Removal};
use alaska::broker::Limits;
use alaska::mlm::{DecodeError, Message, Status};

/// What the journal heard, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Stored(Kind, String, HeldId, bool),
    Unconfirmed(HeldId),
    Removed(Kind, HeldId, Removal),
    Touched(String, Duration),
    Gone(String),
}

/// A journal that records, with times relative to the test's start.
struct Rec {
    start: Instant,
    events: Vec<Ev>,
}

impl Journal for Rec {
    fn stored(&mut self, kind: Kind, holder: &str, held: &Held, new: bool) {
        self.events
            .push(Ev::Stored(kind, holder.to_string(), held.id, new));
    }
    fn delivered_unconfirmed(&mut self, id: HeldId) {
        self.events.push(Ev::Unconfirmed(id));
    }
    fn removed(&mut self, kind: Kind, id: HeldId, why: Removal) {
        self.events.push(Ev::Removed(kind, id, why));
    }
    fn mailbox_touched(&mut self, address: &str, at: Instant) {
        self.events
            .push(Ev::Touched(address.to_string(), at - self.start));
    }
    fn mailbox_gone(&mut self, address: &str) {
        self.events.push(Ev::Gone(address.to_string()));
    }
}

/// The core with a fake clock. Clients are named by their routing id.
struct T {
    core: Core<Rec>,
    start: Instant,
    now: Instant,
}

type Sent = Vec<(String, Message)>;

impl T {
    fn new() -> T {
        T::with(|_| {})
    }

    fn with(tweak: impl FnOnce(&mut CoreConfig)) -> T {
        let mut cfg = CoreConfig::default();
        tweak(&mut cfg);
        let start = Instant::now();
        T {
            core: Core::with_journal(
                cfg,
                start,
                Rec {
                    start,
                    events: Vec::new(),
                },
            ),
            start,
            now: start,
        }
    }

    /// Flushes and returns the raw outgoing messages.
    fn flush_raw(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        self.core.flush(self.now, &mut out);
        out
    }

    fn flush(&mut self) -> Sent {
        self.flush_raw()
            .into_iter()
            .map(|o| (String::from_utf8(o.to.to_vec()).unwrap(), o.msg))
            .collect()
    }

    /// One command from `who`, then a flush, as one loop turn.
    fn cmd(&mut self, who: &str, msg: Message) -> Sent {
        self.core.handle(who.as_bytes(), None, msg, self.now);
        self.flush()
    }

    /// Several commands in one loop turn.
    fn turn(&mut self, cmds: Vec<(&str, Message)>) -> Sent {
        for (who, msg) in cmds {
            self.core.handle(who.as_bytes(), None, msg, self.now);
        }
        self.flush()
    }

    fn open(&mut self, who: &str, address: &str) -> Sent {
        let mut sent = self.cmd(
            who,
            Message::ConnectionOpen {
                address: address.into(),
            },
        );
        assert_eq!(
            sent.remove(0),
            (
                who.to_string(),
                Message::Ok {
                    status: Status::new(200, "alaska-broker ack/1 maint/1 delay/1")
                }
            )
        );
        sent
    }

    fn offer(&mut self, who: &str, service: &str, pattern: &str) -> Sent {
        let mut sent = self.cmd(
            who,
            Message::ServiceOffer {
                address: service.into(),
                pattern: pattern.into(),
            },
        );
        assert_eq!(sent.remove(0), (who.to_string(), ok()));
        sent
    }

    fn advance(&mut self, d: Duration) -> Sent {
        self.now += d;
        if self.core.next_deadline().is_some_and(|t| t <= self.now) {
            self.core.tick(self.now);
        }
        self.flush()
    }

    fn events(&mut self) -> Vec<Ev> {
        std::mem::take(&mut self.core.journal_mut().events)
    }
}

fn ok() -> Message {
    Message::Ok {
        status: Status::new(200, ""),
    }
}

fn request(service: &str, subject: &str, body: &str, timeout: u32) -> Message {
    Message::ServiceSend {
        address: service.into(),
        subject: subject.into(),
        tracker: "t".into(),
        timeout,
        content: vec![body.as_bytes().to_vec()],
    }
}

fn mail(to: &str, subject: &str, body: &str, timeout: u32) -> Message {
    Message::MailboxSend {
        address: to.into(),
        subject: subject.into(),
        tracker: "m".into(),
        timeout,
        content: vec![body.as_bytes().to_vec()],
    }
}

fn confirm(tracker: &str) -> Message {
    Message::Confirm {
        tracker: tracker.into(),
        status: Status::new(200, ""),
    }
}

/// (recipient, body) of each delivery, other messages skipped.
fn bodies(sent: &Sent) -> Vec<(String, String)> {
    sent.iter()
        .filter(|(_, m)| {
            matches!(
                m,
                Message::ServiceDeliver { .. } | Message::MailboxDeliver { .. }
            )
        })
        .map(|(to, m)| {
            (
                to.clone(),
                String::from_utf8(m.content()[0].clone()).unwrap(),
            )
        })
        .collect()
}

fn error_code(m: &Message) -> Option<u16> {
    match m {
        Message::Error { status } => Some(status.code),
        _ => None,
    }
}

fn pair(to: &str, body: &str) -> (String, String) {
    (to.to_string(), body.to_string())
}

// ----- clients ---------------------------------------------------------

#[test]
fn open_ping_close_and_commands_before_open() {
    let mut t = T::new();
    let sent = t.cmd("x", Message::ConnectionPing);
    assert_eq!(error_code(&sent[0].1), Some(500), "unknown client");
    t.open("c", "me");
    assert_eq!(
        t.cmd("c", Message::ConnectionPing),
        [("c".to_string(), Message::ConnectionPong)]
    );
    assert_eq!(
        t.cmd("c", Message::ConnectionClose),
        [("c".to_string(), ok())]
    );
    let sent = t.cmd("c", Message::ConnectionPing);
    assert_eq!(error_code(&sent[0].1), Some(500), "forgotten after CLOSE");
    assert_eq!(t.core.stats().clients, 0);
}

#[test]
fn the_authenticated_user_is_kept_with_the_client() {
    let mut t = T::new();
    t.core.handle(
        b"c",
        Some("admin"),
        Message::ConnectionOpen {
            address: "me".into(),
        },
        t.now,
    );
    t.flush();
    let c = &t.core.clients()[0];
    assert_eq!(
        (c.address.as_str(), c.user.as_deref()),
        ("me", Some("admin"))
    );
}

#[test]
fn silent_clients_expire_and_lose_their_offers() {
    let mut t = T::with(|c| c.client_timeout = Duration::from_secs(10));
    t.open("w", "w");
    t.offer("w", "svc", ".*");
    t.open("p", "p");
    // p keeps talking, w stays silent.
    t.advance(Duration::from_secs(6));
    t.cmd("p", Message::ConnectionPing);
    t.advance(Duration::from_secs(5));
    assert_eq!(t.core.stats().clients, 1, "w expired, p kept");
    assert_eq!(t.core.stats().counters.clients_expired, 1);
    let sent = t.cmd("p", request("svc", "s", "queued", 0));
    assert!(bodies(&sent).is_empty(), "the expired worker gets nothing");
    assert_eq!(
        error_code(&t.cmd("w", Message::ConnectionPing)[0].1),
        Some(500)
    );
    t.open("w2", "w2");
    assert_eq!(bodies(&t.offer("w2", "svc", ".*")), [pair("w2", "queued")]);
}

#[test]
fn takeover_expires_the_old_connection_and_redelivers_what_it_held() {
    let mut t = T::new();
    t.open("old", "box");
    t.cmd("old", Message::Credit { amount: 5 });
    t.offer("old", "svc", ".*");
    t.open("p", "p");
    assert_eq!(
        bodies(&t.cmd("p", request("svc", "s", "1", 0))),
        [pair("old", "1")]
    );
    // A new connection opens with the same address: the old one is gone,
    // its unconfirmed request is back in the queue.
    t.open("new", "box");
    assert_eq!(
        error_code(&t.cmd("old", Message::ConnectionPing)[0].1),
        Some(500)
    );
    t.cmd("new", Message::Credit { amount: 5 });
    assert_eq!(bodies(&t.offer("new", "svc", ".*")), [pair("new", "1")]);
    // Mail for the address goes to the new connection.
    assert_eq!(
        bodies(&t.cmd("p", mail("box", "hi", "for the new one", 0))),
        [pair("new", "for the new one")]
    );
    assert_eq!(t.core.stats().counters.requests_redelivered, 1);
}

#[test]
fn a_second_open_on_the_same_connection_starts_a_new_session() {
    let mut t = T::new();
    t.open("w", "w");
    t.cmd("w", Message::Credit { amount: 1 });
    t.offer("w", "svc", ".*");
    t.open("p", "p");
    assert_eq!(bodies(&t.cmd("p", request("svc", "s", "1", 0))).len(), 1);
    t.open("w", "w");
    let info = &t.core.clients()[1];
    assert_eq!(
        (info.address.as_str(), info.offers.len(), info.credit),
        ("w", 0, None)
    );
    assert_eq!(t.core.stats().services[0].queued, 1, "requeued");
}

#[test]
fn malformed_and_server_only_commands_drop_only_their_sender() {
    let mut t = T::new();
    t.open("good", "good");
    t.open("bad", "bad");
    t.core.malformed(b"bad", &DecodeError::NoFrames, t.now);
    let sent = t.flush();
    assert_eq!(sent[0].0, "bad");
    assert_eq!(error_code(&sent[0].1), Some(500));
    t.open("bad", "bad");
    let sent = t.cmd("bad", Message::ConnectionPong);
    assert_eq!(error_code(&sent[0].1), Some(500));
    assert_eq!(
        error_code(&t.cmd("bad", Message::ConnectionPing)[0].1),
        Some(500),
        "dropped"
    );
    assert_eq!(
        t.cmd("good", Message::ConnectionPing),
        [("good".to_string(), Message::ConnectionPong)]
    );
    assert_eq!(t.core.stats().counters.malformed, 2);
}

// ----- services --------------------------------------------------------

#[test]
fn requests_go_round_robin_to_matching_offers() {
    let mut t = T::new();
    t.open("w1", "w1");
    t.open("w2", "w2");
    t.offer("w1", "svc", ".*");
    t.offer("w2", "svc", ".*");
    t.open("p", "p");
    let sent = t.turn(
        (0..4)
            .map(|i| ("p", request("svc", "s", &i.to_string(), 0)))
            .collect(),
    );
    assert_eq!(
        bodies(&sent),
        [
            pair("w1", "0"),
            pair("w2", "1"),
            pair("w1", "2"),
            pair("w2", "3")
        ]
    );
    match &sent[0].1 {
        Message::ServiceDeliver {
            sender,
            address,
            subject,
            tracker,
            ..
        } => assert_eq!(
            (
                sender.as_str(),
                address.as_str(),
                subject.as_str(),
                tracker.as_str()
            ),
            ("p", "svc", "s", "t")
        ),
        m => panic!("{m}"),
    }
}

#[test]
fn patterns_route_by_subject_and_unmatched_requests_wait_for_an_offer() {
    let mut t = T::new();
    t.open("p", "p");
    t.cmd("p", request("svc", "nomatch", "x", 0));
    t.cmd("p", request("svc", "special", "y", 0));
    t.cmd("p", request("svc", "special.2", "z", 0));
    t.open("ws", "ws");
    assert_eq!(
        bodies(&t.offer("ws", "svc", "^spec")),
        [pair("ws", "y"), pair("ws", "z")]
    );
    assert_eq!(t.core.stats().services[0].queued, 1, "nomatch waits");
    // A later offer that matches takes it.
    t.open("any", "any");
    assert_eq!(bodies(&t.offer("any", "svc", "no")), [pair("any", "x")]);
}

#[test]
fn invalid_patterns_get_error_300_and_register_nothing() {
    let mut t = T::new();
    t.open("c", "c");
    for pattern in ["*", "[", "(", "a{2,1}"] {
        let sent = t.cmd(
            "c",
            Message::ServiceOffer {
                address: "svc".into(),
                pattern: pattern.into(),
            },
        );
        match &sent[0].1 {
            Message::Error { status } => {
                assert_eq!(status.code, 300);
                assert!(status.reason.contains("invalid pattern"), "{status:?}");
            }
            m => panic!("{pattern}: {m}"),
        }
        let sent = t.cmd(
            "c",
            Message::StreamRead {
                stream: "s".into(),
                pattern: pattern.into(),
            },
        );
        assert_eq!(error_code(&sent[0].1), Some(300));
    }
    assert!(t.core.clients()[0].offers.is_empty());
}

#[test]
fn a_queue_of_unmatched_subjects_does_not_block_the_others() {
    let mut t = T::new();
    t.open("p", "p");
    t.open("wa", "wa");
    t.offer("wa", "svc", "^a$");
    // Many requests nobody can take, then one that wa can.
    let mut cmds: Vec<(&str, Message)> = (0..1000)
        .map(|i| ("p", request("svc", &format!("z{i}"), "stuck", 0)))
        .collect();
    cmds.push(("p", request("svc", "a", "first a", 0)));
    assert_eq!(bodies(&t.turn(cmds)), [pair("wa", "first a")]);
    for i in 0..3 {
        let body = format!("a{i}");
        assert_eq!(
            bodies(&t.cmd("p", request("svc", "a", &body, 0))),
            [pair("wa", &body)]
        );
    }
    assert_eq!(t.core.stats().services[0].queued, 1000);
    // An offer for some of the parked subjects takes those, oldest first.
    t.open("wz", "wz");
    let got = bodies(&t.offer("wz", "svc", "^z99"));
    assert_eq!(
        got.iter().map(|(_, b)| b.as_str()).collect::<Vec<_>>(),
        ["stuck"; 11]
    );
    assert_eq!(t.core.stats().services[0].queued, 989);
}

#[test]
fn credit_windows_bound_what_an_acknowledging_worker_holds() {
    let mut t = T::new();
    t.open("w", "w");
    t.cmd("w", Message::Credit { amount: 2 });
    t.offer("w", "svc", ".*");
    t.open("p", "p");
    let sent = t.turn(
        (1..=5)
            .map(|i| ("p", request("svc", "s", &i.to_string(), 0)))
            .collect(),
    );
    assert_eq!(bodies(&sent), [pair("w", "1"), pair("w", "2")]);
    // Confirming frees a slot; numbering is per connection from 1.
    assert_eq!(bodies(&t.cmd("w", confirm("1"))), [pair("w", "3")]);
    // More credit widens the window.
    assert_eq!(
        bodies(&t.cmd("w", Message::Credit { amount: 1 })),
        [pair("w", "4")]
    );
    // A batch confirmation: numbers separated by commas; unknown ones ignored.
    assert_eq!(bodies(&t.cmd("w", confirm("2,3,99,x"))), [pair("w", "5")]);
    let c = &t.core.clients()[1];
    assert_eq!((c.credit, c.unconfirmed), (Some(3), 2));
    assert_eq!(t.core.stats().counters.requests_confirmed, 3);
}

#[test]
fn confirm_without_credit_gets_error_300() {
    let mut t = T::new();
    t.open("w", "w");
    let sent = t.cmd("w", confirm("1"));
    assert_eq!(error_code(&sent[0].1), Some(300));
    assert_eq!(
        t.cmd("w", Message::ConnectionPing),
        [("w".to_string(), Message::ConnectionPong)],
        "not dropped"
    );
}

#[test]
fn unconfirmed_requests_are_redelivered_on_close_and_expiry_but_not_confirmed_ones() {
    let mut t = T::with(|c| c.client_timeout = Duration::from_secs(1));
    t.open("w", "w");
    t.cmd("w", Message::Credit { amount: 10 });
    t.offer("w", "svc", ".*");
    t.open("p", "p");
    let sent = t.turn(
        (1..=3)
            .map(|i| ("p", request("svc", "s", &i.to_string(), 0)))
            .collect(),
    );
    assert_eq!(bodies(&sent).len(), 3);
    t.cmd("w", confirm("1,3"));
    t.cmd("w", Message::ConnectionClose);
    t.open("w2", "w2");
    t.cmd("w2", Message::Credit { amount: 10 });
    assert_eq!(
        bodies(&t.offer("w2", "svc", ".*")),
        [pair("w2", "2")],
        "only the unconfirmed one"
    );
    // w2 goes silent: it expires and "2" goes to the next worker.
    t.open("w3", "w3");
    t.offer("w3", "svc", ".*");
    t.cmd("p", Message::ConnectionPing);
    t.now += Duration::from_millis(600);
    t.cmd("p", Message::ConnectionPing);
    t.cmd("w3", Message::ConnectionPing);
    let sent = t.advance(Duration::from_millis(600));
    assert_eq!(bodies(&sent), [pair("w3", "2")]);
    assert_eq!(t.core.stats().counters.requests_redelivered, 2);
}

#[test]
fn full_queues_refuse_with_error_300_by_count_and_by_bytes() {
    let mut t = T::with(|c| {
        c.service_queue_limit = Limits {
            messages: 3,
            bytes: 1000,
        }
    });
    t.open("p", "p");
    for i in 0..3 {
        assert!(t
            .cmd("p", request("nobody", "s", &i.to_string(), 0))
            .is_empty());
    }
    let sent = t.cmd("p", request("nobody", "s", "one too many", 0));
    match &sent[0].1 {
        Message::Error { status } => {
            assert_eq!(status.code, 300);
            assert_eq!(status.reason, "service nobody queue full");
        }
        m => panic!("{m}"),
    }
    let sent = t.cmd("p", request("other", "s", &"x".repeat(1001), 0));
    assert_eq!(error_code(&sent[0].1), Some(300), "byte limit");
    t.open("w", "w");
    assert_eq!(
        bodies(&t.offer("w", "nobody", ".*")),
        [pair("w", "0"), pair("w", "1"), pair("w", "2")]
    );
    assert_eq!(t.core.stats().counters.requests_refused, 2);
}

#[test]
fn requests_that_time_out_in_the_queue_are_never_delivered() {
    let mut t = T::new();
    t.open("p", "p");
    t.cmd("p", request("svc", "s", "stale", 200));
    t.cmd("p", request("svc", "s", "fresh", 0));
    t.cmd("p", request("svc", "s", "later", 1000));
    assert_eq!(
        t.core.next_deadline(),
        Some(t.start + Duration::from_millis(100)),
        "the client check comes first"
    );
    t.advance(Duration::from_millis(100));
    assert_eq!(
        t.core.next_deadline(),
        Some(t.start + Duration::from_millis(200))
    );
    t.advance(Duration::from_millis(100));
    assert_eq!(t.core.stats().counters.requests_expired, 1);
    t.open("w", "w");
    assert_eq!(
        bodies(&t.offer("w", "svc", ".*")),
        [pair("w", "fresh"), pair("w", "later")]
    );
}

#[test]
fn an_expired_request_is_not_delivered_even_between_ticks() {
    let mut t = T::new();
    t.open("p", "p");
    t.cmd("p", request("svc", "s", "stale", 50));
    t.open("w", "w");
    // No tick: the flush itself drops what expired.
    t.now += Duration::from_millis(50);
    assert!(bodies(&t.offer("w", "svc", ".*")).is_empty());
}

#[test]
fn maintenance_stops_new_dispatch_to_a_worker_until_cleared() {
    let mut t = T::new();
    t.open("w1", "w1");
    t.open("w2", "w2");
    t.offer("w1", "svc", ".*");
    t.offer("w2", "svc", ".*");
    assert!(t.core.set_maintenance("w1", true));
    assert!(!t.core.set_maintenance("nobody", true));
    t.open("p", "p");
    let sent = t.turn(
        (0..3)
            .map(|i| ("p", request("svc", "s", &i.to_string(), 0)))
            .collect(),
    );
    assert_eq!(
        bodies(&sent),
        [pair("w2", "0"), pair("w2", "1"), pair("w2", "2")]
    );
    t.core.set_maintenance("w2", true);
    assert!(bodies(&t.cmd("p", request("svc", "s", "3", 0))).is_empty());
    t.core.set_maintenance("w1", false);
    assert_eq!(bodies(&t.flush()), [pair("w1", "3")]);
}

// ----- maint/1 ---------------------------------------------------------

fn maint(on: bool) -> Message {
    confirm(if on {
        "maintenance:on"
    } else {
        "maintenance:off"
    })
}

fn maintenance_of(t: &T, address: &str) -> bool {
    t.core
        .clients()
        .iter()
        .find(|c| c.address == address)
        .unwrap_or_else(|| panic!("no client {address}"))
        .maintenance
}

#[test]
fn maint1_commands_from_a_push_mode_worker_stop_and_resume_its_dispatch() {
    let mut t = T::new();
    t.open("w1", "w1");
    t.open("w2", "w2");
    t.offer("w1", "svc", ".*");
    t.offer("w2", "svc", ".*");
    // No CREDIT: maint/1 does not need acknowledged mode, and gets no answer.
    assert!(t.cmd("w1", maint(true)).is_empty());
    assert!(maintenance_of(&t, "w1"));
    assert!(t.cmd("w1", maint(true)).is_empty(), "idempotent");
    t.open("p", "p");
    let sent = t.turn(
        (0..4)
            .map(|i| ("p", request("svc", "s", &i.to_string(), 0)))
            .collect(),
    );
    assert_eq!(
        bodies(&sent),
        [
            pair("w2", "0"),
            pair("w2", "1"),
            pair("w2", "2"),
            pair("w2", "3")
        ]
    );
    // Both in maintenance: requests wait in the queue.
    t.cmd("w2", maint(true));
    assert!(bodies(&t.cmd("p", request("svc", "s", "4", 0))).is_empty());
    assert_eq!(t.core.stats().services[0].queued, 1);
    assert_eq!(t.core.stats().clients_in_maintenance, 2);
    // Off: what waits goes at once, to the one that came back.
    assert_eq!(bodies(&t.cmd("w1", maint(false))), [pair("w1", "4")]);
    assert!(t.cmd("w1", maint(false)).is_empty(), "idempotent");
    assert!(!maintenance_of(&t, "w1"));
    assert!(maintenance_of(&t, "w2"));
    assert_eq!(t.core.stats().counters.maintenance_commands, 5);
    assert!(t
        .events()
        .iter()
        .all(|e| !matches!(e, Ev::Removed(_, _, Removal::Confirmed))));
}

#[test]
fn an_unknown_maintenance_command_gets_error_300_and_changes_nothing() {
    let mut t = T::new();
    t.open("w", "w");
    t.cmd("w", Message::Credit { amount: 4 });
    for tracker in ["maintenance:maybe", "maintenance:", "maintenance:ON"] {
        let sent = t.cmd("w", confirm(tracker));
        match &sent[..] {
            [(to, Message::Error { status })] => {
                assert_eq!(to, "w");
                assert_eq!(status.code, 300);
                assert_eq!(
                    status.reason,
                    format!("unknown maintenance command {tracker}")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(!maintenance_of(&t, "w"));
    }
    // Still connected, still in acknowledged mode with its window.
    assert_eq!(
        t.cmd("w", Message::ConnectionPing),
        [("w".to_string(), Message::ConnectionPong)]
    );
    assert_eq!(t.core.clients()[0].credit, Some(4));
    // Not a number either: never taken for an acknowledgement.
    assert_eq!(t.core.stats().counters.requests_confirmed, 0);
}

#[test]
fn maintenance_from_an_unknown_client_is_refused_and_anonymous_clients_may_use_it() {
    let mut t = T::new();
    let sent = t.cmd("x", maint(true));
    assert_eq!(error_code(&sent[0].1), Some(500), "not opened");
    t.open("anon", "");
    t.offer("anon", "svc", ".*");
    assert!(t.cmd("anon", maint(true)).is_empty());
    assert!(t.core.clients()[0].maintenance);
    t.open("p", "p");
    assert!(bodies(&t.cmd("p", request("svc", "s", "0", 0))).is_empty());
    assert_eq!(bodies(&t.cmd("anon", maint(false))), [pair("anon", "0")]);
}

#[test]
fn an_acknowledging_worker_in_maintenance_keeps_its_window_and_confirms_as_usual() {
    let mut t = T::new();
    t.open("w", "w");
    t.cmd("w", Message::Credit { amount: 3 });
    t.offer("w", "svc", ".*");
    t.open("p", "p");
    let sent = t.turn(
        (1..=2)
            .map(|i| ("p", request("svc", "s", &i.to_string(), 0)))
            .collect(),
    );
    assert_eq!(bodies(&sent).len(), 2);
    t.cmd("w", maint(true));
    // Confirming in maintenance frees slots but brings nothing new.
    assert!(bodies(&t.cmd("w", confirm("1"))).is_empty());
    assert!(bodies(&t.cmd("p", request("svc", "s", "3", 0))).is_empty());
    let c = &t.core.clients()[1];
    assert_eq!((c.credit, c.unconfirmed, c.maintenance), (Some(3), 1, true));
    assert_eq!(t.core.stats().services[0].unconfirmed, 1);
    assert_eq!(t.core.stats().services[0].workers_in_maintenance, 1);
    // Numbering goes on across maintenance: the next delivery is 3.
    assert_eq!(bodies(&t.cmd("w", maint(false))), [pair("w", "3")]);
    t.cmd("w", confirm("2,3"));
    assert_eq!(t.core.stats().counters.requests_confirmed, 3);
    assert_eq!(t.core.clients()[1].unconfirmed, 0);
}

#[test]
fn the_maintenance_flag_is_forgotten_with_the_session() {
    let mut t = T::new();
    t.open("w", "w");
    t.cmd("w", maint(true));
    // A second OPEN on the same connection: a new session, no flag.
    t.open("w", "w");
    assert!(!maintenance_of(&t, "w"));
    t.cmd("w", maint(true));
    // A takeover of the address by another connection.
    t.open("w2", "w");
    assert!(!maintenance_of(&t, "w"));
    t.cmd("w2", maint(true));
    // CLOSE, then a new OPEN.
    t.cmd("w2", Message::ConnectionClose);
    t.open("w2", "w");
    assert!(!maintenance_of(&t, "w"));
    // The admin API sets the same flag, and the client clears it.
    assert!(t.core.set_maintenance("w", true));
    assert!(maintenance_of(&t, "w"));
    t.cmd("w2", maint(false));
    assert!(!maintenance_of(&t, "w"));
}

// ----- snapshots for metrics and the admin API ---------------------------

#[test]
fn snapshots_list_services_mailboxes_streams_and_clients() {
    let mut t = T::with(|c| c.mailbox_expiry = Duration::from_secs(60));
    t.open("w1", "w1");
    t.open("w2", "w2");
    t.cmd("w1", Message::Credit { amount: 1 });
    t.offer("w1", "svc", "^a");
    t.offer("w1", "svc", "^b");
    t.offer("w2", "svc", "^a");
    t.cmd("w2", maint(true));
    t.open("p", "p");
    t.turn(vec![
        ("p", request("svc", "a.1", "x", 0)),
        ("p", request("svc", "a.2", "yy", 0)),
        ("p", request("svc", "zzz", "zzz", 0)),
        ("p", mail("away", "s", "hello", 0)),
        ("p", mail("away", "s", "again", 0)),
    ]);
    let svc = t.core.services();
    assert_eq!(svc.len(), 1);
    let s = &svc[0];
    assert_eq!(s.stats.name, "svc");
    // a.1 went to w1 (window 1); a.2 waits (w2 in maintenance), zzz waits
    // for an offer that matches it.
    assert_eq!((s.stats.queued, s.stats.bytes), (2, 5));
    assert_eq!((s.stats.offers, s.stats.workers), (3, 2));
    assert_eq!(
        (s.stats.unconfirmed, s.stats.workers_in_maintenance),
        (1, 1)
    );
    assert_eq!(s.unmatched_subjects, ["zzz"]);
    let offers: Vec<(&str, &str, bool)> = s
        .offers
        .iter()
        .map(|o| (o.address.as_str(), o.pattern.as_str(), o.maintenance))
        .collect();
    // Round-robin order: the offer used last went to the end.
    assert_eq!(
        offers,
        [("w1", "^b", false), ("w2", "^a", true), ("w1", "^a", false)]
    );
    assert_eq!(t.core.stats().services, vec![s.stats.clone()]);

    t.now += Duration::from_secs(15);
    let boxes = t.core.mailboxes(t.now);
    assert_eq!(boxes.len(), 1);
    assert_eq!(
        (boxes[0].address.as_str(), boxes[0].messages, boxes[0].bytes),
        ("away", 2, 10)
    );
    assert!(!boxes[0].connected);
    assert_eq!(boxes[0].reclaim_in, Some(Duration::from_secs(45)));
    let stats = t.core.stats();
    assert_eq!(
        (stats.mailboxes, stats.mail_held, stats.mail_bytes),
        (1, 2, 10)
    );

    t.cmd(
        "w1",
        Message::StreamWrite {
            stream: "news".into(),
        },
    );
    t.cmd(
        "p",
        Message::StreamWrite {
            stream: "quiet".into(),
        },
    );
    t.cmd(
        "w2",
        Message::StreamRead {
            stream: "news".into(),
            pattern: "^x".into(),
        },
    );
    let streams = t.core.streams();
    assert_eq!(streams.len(), 2);
    assert_eq!(streams[0].name, "news");
    assert_eq!(streams[0].writers, ["w1"]);
    assert_eq!(
        (
            streams[0].readers[0].address.as_str(),
            streams[0].readers[0].pattern.as_str()
        ),
        ("w2", "^x")
    );
    assert_eq!(
        (streams[1].name.as_str(), streams[1].readers.len()),
        ("quiet", 0)
    );
    let stats = t.core.stats();
    assert_eq!((stats.streams, stats.stream_readers), (1, 1));

    let clients = t.core.clients();
    let w1 = clients.iter().find(|c| c.address == "w1").unwrap();
    assert_eq!(w1.writer.as_deref(), Some("news"));
    assert_eq!(w1.offers, ["svc", "svc"]);
    assert_eq!(t.core.counters(), &t.core.stats().counters);
}

// ----- mailboxes -------------------------------------------------------

#[test]
fn mail_is_delivered_at_once_or_stored_until_the_owner_opens() {
    let mut t = T::new();
    t.open("s", "sender");
    t.open("h", "here");
    let sent = t.cmd("s", mail("here", "now", "1", 0));
    assert_eq!(
        sent,
        [(
            "h".to_string(),
            Message::MailboxDeliver {
                sender: "sender".into(),
                address: "here".into(),
                subject: "now".into(),
                tracker: "m".into(),
                content: vec![b"1".to_vec()],
            }
        )]
    );
    assert!(t.cmd("s", mail("later", "a", "first", 0)).is_empty());
    assert!(t.cmd("s", mail("later", "b", "second", 0)).is_empty());
    assert_eq!(
        bodies(&t.open("l", "later")),
        [pair("l", "first"), pair("l", "second")]
    );
    assert_eq!(t.core.stats().mailboxes, 0);
}

#[test]
fn full_mailboxes_refuse_with_error_300() {
    let mut t = T::with(|c| {
        c.mailbox_limit = Limits {
            messages: 2,
            bytes: 10,
        }
    });
    t.open("p", "p");
    assert!(t.cmd("p", mail("away", "s", "12345678", 0)).is_empty());
    let sent = t.cmd("p", mail("away", "s", "too big now", 0));
    match &sent[0].1 {
        Message::Error { status } => assert_eq!(status.reason, "mailbox away full"),
        m => panic!("{m}"),
    }
    assert!(t.cmd("p", mail("away", "s", "ok", 0)).is_empty());
    assert_eq!(
        error_code(&t.cmd("p", mail("away", "s", "3", 0))[0].1),
        Some(300)
    );
    assert_eq!(t.core.stats().counters.mail_refused, 2);
}

#[test]
fn mail_that_times_out_is_dropped_and_an_empty_mailbox_forgotten() {
    let mut t = T::new();
    t.open("p", "p");
    t.cmd("p", mail("later", "s", "stale", 200));
    t.cmd("p", mail("other", "s", "kept", 0));
    t.cmd("p", mail("other", "s", "stale too", 300));
    t.advance(Duration::from_millis(250));
    assert_eq!(t.core.stats().mailboxes, 1, "'later' is empty and gone");
    assert_eq!(t.core.stats().mail_held, 2);
    // Expired mail is not delivered even if no tick ran since.
    t.now += Duration::from_millis(100);
    assert_eq!(bodies(&t.open("o", "other")), [pair("o", "kept")]);
    assert_eq!(t.core.stats().counters.mail_expired, 2);
}

#[test]
fn mailboxes_of_owners_that_stay_away_are_reclaimed() {
    let mut t = T::with(|c| {
        c.mailbox_expiry = Duration::from_secs(60);
        c.client_timeout = Duration::from_secs(3600);
    });
    t.open("p", "p");
    // ghost never comes: its clock starts when its mailbox is made (0 s).
    t.cmd("p", mail("ghost", "s", "lost cause", 0));
    t.open("b", "back");
    t.cmd("b", Message::ConnectionClose);
    t.cmd("p", mail("back", "s", "kept", 0));
    t.advance(Duration::from_secs(40));
    // back comes and goes: its clock starts again when it leaves (40 s).
    assert_eq!(bodies(&t.open("b", "back")), [pair("b", "kept")]);
    t.cmd("b", Message::ConnectionClose);
    t.cmd("p", mail("back", "s", "after", 0));
    assert_eq!(
        t.core.next_deadline().map(|d| d - t.start),
        Some(Duration::from_millis(40_100)),
        "the client check"
    );
    t.advance(Duration::from_secs(21));
    let stats = t.core.stats();
    assert_eq!(
        (
            stats.mailboxes,
            stats.counters.mail_reclaimed,
            stats.counters.mailboxes_reclaimed
        ),
        (1, 1, 1),
        "ghost reclaimed at 60 s, back kept"
    );
    assert!(bodies(&t.open("g", "ghost")).is_empty());
    assert_eq!(bodies(&t.open("b", "back")), [pair("b", "after")]);
}

#[test]
fn mail_that_cannot_be_sent_is_stored_and_its_owner_dropped() {
    let mut t = T::new();
    t.open("s", "sender");
    t.open("h", "here");
    t.core
        .handle(b"s", None, mail("here", "x", "kept", 0), t.now);
    let mut out = t.flush_raw();
    assert_eq!(out.len(), 1);
    assert!(t
        .core
        .send_failed(out.remove(0), true, "host unreachable", t.now));
    assert!(t.flush().is_empty());
    assert_eq!(t.core.stats().mail_held, 1);
    assert_eq!(bodies(&t.open("h2", "here")), [pair("h2", "kept")]);
}

// ----- streams ---------------------------------------------------------

#[test]
fn streams_deliver_matching_subjects_once_per_reader() {
    let mut t = T::new();
    t.open("r", "reader");
    t.open("r2", "reader2");
    for pattern in ["^pi\\.", "pi"] {
        let sent = t.cmd(
            "r",
            Message::StreamRead {
                stream: "numbers".into(),
                pattern: pattern.into(),
            },
        );
        assert_eq!(sent, [("r".to_string(), ok())]);
    }
    t.cmd(
        "r2",
        Message::StreamRead {
            stream: "numbers".into(),
            pattern: "^e".into(),
        },
    );
    t.open("w", "writer");
    let sent = t.cmd(
        "w",
        Message::StreamSend {
            subject: "pi.1".into(),
            content: vec![],
        },
    );
    assert_eq!(error_code(&sent[0].1), Some(300), "no STREAM WRITE yet");
    t.cmd(
        "w",
        Message::StreamWrite {
            stream: "numbers".into(),
        },
    );
    let sent = t.turn(
        ["pi.28", "e.2", "x"]
            .into_iter()
            .map(|s| {
                (
                    "w",
                    Message::StreamSend {
                        subject: s.into(),
                        content: vec![s.as_bytes().to_vec()],
                    },
                )
            })
            .collect(),
    );
    assert_eq!(
        sent,
        [
            (
                "r".to_string(),
                Message::StreamDeliver {
                    address: "numbers".into(),
                    sender: "writer".into(),
                    subject: "pi.28".into(),
                    content: vec![b"pi.28".to_vec()],
                }
            ),
            (
                "r2".to_string(),
                Message::StreamDeliver {
                    address: "numbers".into(),
                    sender: "writer".into(),
                    subject: "e.2".into(),
                    content: vec![b"e.2".to_vec()],
                }
            )
        ]
    );
    t.cmd(
        "r",
        Message::StreamCancel {
            stream: "numbers".into(),
        },
    );
    let sent = t.cmd(
        "w",
        Message::StreamSend {
            subject: "pi.1".into(),
            content: vec![],
        },
    );
    assert!(sent.is_empty(), "nothing after STREAM CANCEL");
    assert_eq!(t.core.stats().counters.stream_deliveries, 2);
    assert!(t.events().is_empty(), "streams are never stored");
}

#[test]
fn a_stream_reader_that_is_unreachable_is_dropped() {
    let mut t = T::new();
    t.open("r", "r");
    t.cmd(
        "r",
        Message::StreamRead {
            stream: "s".into(),
            pattern: "".into(),
        },
    );
    t.open("w", "w");
    t.cmd("w", Message::StreamWrite { stream: "s".into() });
    t.core.handle(
        b"w",
        None,
        Message::StreamSend {
            subject: "x".into(),
            content: vec![],
        },
        t.now,
    );
    let mut out = t.flush_raw();
    assert!(!t
        .core
        .send_failed(out[0].clone(), false, "would block", t.now));
    assert_eq!(t.core.stats().clients, 2, "not reading is not gone");
    assert!(t
        .core
        .send_failed(out.remove(0), true, "unreachable", t.now));
    assert_eq!(t.core.stats().clients, 1);
}

// ----- failed sends ----------------------------------------------------

#[test]
fn a_request_that_cannot_be_sent_goes_to_another_worker() {
    for acked in [false, true] {
        let mut t = T::new();
        t.open("w1", "w1");
        t.open("w2", "w2");
        if acked {
            t.cmd("w1", Message::Credit { amount: 5 });
            t.cmd("w2", Message::Credit { amount: 5 });
        }
        t.offer("w1", "svc", ".*");
        t.offer("w2", "svc", ".*");
        t.open("p", "p");
        for i in 0..2 {
            t.core
                .handle(b"p", None, request("svc", "s", &i.to_string(), 0), t.now);
        }
        let out = t.flush_raw();
        assert_eq!(out.len(), 2);
        let to_w1 = out.into_iter().next().unwrap();
        assert!(t.core.send_failed(to_w1, true, "gone", t.now), "{acked}");
        assert_eq!(bodies(&t.flush()), [pair("w2", "0")], "{acked}");
        assert_eq!(t.core.stats().counters.requests_redelivered, 1);
    }
}

// ----- the journal -----------------------------------------------------

#[test]
fn the_journal_hears_every_change_to_what_is_held() {
    let mut t = T::with(|c| c.mailbox_expiry = Duration::from_secs(10));
    t.open("p", "p");
    t.cmd("p", request("svc", "s", "r1", 0));
    t.cmd("p", request("svc", "s", "r2", 500));
    t.cmd("p", mail("away", "s", "m3", 0));
    assert_eq!(
        t.events(),
        [
            Ev::Stored(Kind::Request, "svc".into(), 1, true),
            Ev::Stored(Kind::Request, "svc".into(), 2, true),
            Ev::Stored(Kind::Mail, "away".into(), 3, true),
            Ev::Touched("away".into(), Duration::ZERO),
        ]
    );
    // An acknowledging worker takes r1; a push worker would end custody.
    // The delivery count is stored with it (it must survive a crash).
    t.open("w", "w");
    t.cmd("w", Message::Credit { amount: 1 });
    t.offer("w", "svc", ".*");
    assert_eq!(
        t.events(),
        [
            Ev::Stored(Kind::Request, "svc".into(), 1, false),
            Ev::Unconfirmed(1)
        ]
    );
    t.advance(Duration::from_millis(500));
    assert_eq!(
        t.events(),
        [Ev::Removed(Kind::Request, 2, Removal::Expired)]
    );
    t.cmd("w", confirm("1"));
    assert_eq!(
        t.events(),
        [Ev::Removed(Kind::Request, 1, Removal::Confirmed)]
    );
    t.open("pw", "pw");
    t.offer("pw", "other", ".*");
    t.cmd("p", request("other", "s", "r4", 0));
    assert_eq!(
        t.events(),
        [
            Ev::Stored(Kind::Request, "other".into(), 4, true),
            Ev::Removed(Kind::Request, 4, Removal::Delivered),
        ]
    );
    t.open("a", "away");
    assert_eq!(
        t.events(),
        [
            Ev::Gone("away".into()),
            Ev::Removed(Kind::Mail, 3, Removal::Delivered),
        ]
    );
    // Mail for a connected owner is never stored; mail that waits is, and
    // its mailbox clock restarts when the owner leaves.
    t.cmd("p", mail("away", "s", "m5", 0));
    assert!(t.events().is_empty());
    t.cmd("p", mail("gone", "s", "m6", 0));
    t.advance(Duration::from_secs(10));
    assert_eq!(
        t.events(),
        [
            Ev::Stored(Kind::Mail, "gone".into(), 6, true),
            Ev::Touched("gone".into(), Duration::from_millis(500)),
            Ev::Removed(Kind::Mail, 6, Removal::Reclaimed),
            Ev::Gone("gone".into()),
        ]
    );
    // A worker that leaves with unconfirmed work: stored again, not new.
    t.cmd("p", request("svc", "s", "r7", 0));
    t.events();
    t.cmd("w", Message::ConnectionClose);
    assert_eq!(
        t.events(),
        [Ev::Stored(Kind::Request, "svc".into(), 7, false)]
    );
}

#[test]
fn restored_requests_and_mail_come_back_in_order_with_their_clocks() {
    let mut t = T::with(|c| c.mailbox_expiry = Duration::from_secs(60));
    let held = |id: HeldId, body: &str, expires: Option<Instant>| Held {
        id,
        sender: "p".into(),
        subject: "s".into(),
        tracker: String::new(),
        content: vec![body.as_bytes().to_vec()],
        expires,
        deliveries: 0,
    };
    t.core.restore_request("svc", held(7, "seven", None));
    t.core.restore_request("svc", held(3, "three", None));
    t.core
        .restore_request("svc", held(5, "expired", Some(t.now)));
    t.core.restore_mail("box", held(9, "mail", None), t.now);
    t.core.restore_mail("old", held(4, "old mail", None), t.now);
    t.core
        .restore_mailbox_clock("old", t.now - Duration::from_secs(59));
    t.advance(Duration::from_secs(1));
    assert_eq!(
        t.core.stats().counters.mail_reclaimed,
        1,
        "old's clock ran out"
    );
    assert_eq!(t.core.stats().counters.requests_expired, 1);
    t.open("w", "w");
    assert_eq!(
        bodies(&t.offer("w", "svc", ".*")),
        [pair("w", "three"), pair("w", "seven")]
    );
    assert_eq!(bodies(&t.open("b", "box")), [pair("b", "mail")]);
    // New messages are numbered after the restored ones.
    t.events();
    t.cmd("w", request("x", "s", "new", 0));
    assert_eq!(
        t.events(),
        [Ev::Stored(Kind::Request, "x".into(), 10, true)]
    );
}

/// The ERROR:<subject> reply and the dead letter a poison request leaves.
fn poison_mail(sent: &Sent, to: &str) -> Option<(String, String, Vec<Vec<u8>>)> {
    sent.iter().find_map(|(who, m)| match m {
        Message::MailboxDeliver {
            subject,
            tracker,
            content,
            ..
        } if who == to => Some((subject.clone(), tracker.clone(), content.clone())),
        _ => None,
    })
}

/// A request whose workers all go away holding it (they crash on it) is
/// delivered at most `max_deliveries` times: then it is a dead letter in
/// the error mailbox, with the count, and its waiting requester gets an
/// error reply; other requests go on being served.
#[test]
fn a_poison_request_is_dead_lettered_after_max_deliveries() {
    let mut t = T::with(|c| c.max_deliveries = 3);
    t.open("p", "p");
    t.open("ops", "awerr");
    t.cmd(
        "p",
        Message::ServiceSend {
            address: "svc".into(),
            subject: "poison".into(),
            tracker: "trk-9".into(),
            timeout: 0,
            content: vec![b"kills workers".to_vec()],
        },
    );
    for n in 1..=3u32 {
        let w = format!("w{n}");
        t.open(&w, &w);
        t.cmd(&w, Message::Credit { amount: 1 });
        let got = bodies(&t.offer(&w, "svc", ".*"));
        assert_eq!(got, [pair(&w, "kills workers")], "delivery {n}");
        // The worker goes away holding it (a close here; a crash is seen
        // as an expiry, the next test).
        let sent = t.cmd(&w, Message::ConnectionClose);
        if n < 3 {
            assert!(poison_mail(&sent, "p").is_none(), "too early at {n}");
            assert_eq!(t.core.stats().services[0].queued, 1, "requeued after {n}");
        } else {
            let (subject, tracker, content) = poison_mail(&sent, "p").expect("error reply");
            assert_eq!(
                (subject.as_str(), tracker.as_str()),
                ("ERROR:poison", "trk-9")
            );
            let text = String::from_utf8_lossy(&content[0]).to_string();
            assert!(
                text.contains("delivered 3 times") && text.contains("poison"),
                "{text}"
            );
            let (subject, _, content) = poison_mail(&sent, "ops").expect("dead letter");
            assert_eq!(subject, "poison");
            assert!(String::from_utf8_lossy(&content[0]).starts_with("dead letter: poison request"));
            assert_eq!(content[1], b"kills workers");
        }
    }
    assert_eq!(t.core.stats().counters.requests_poisoned, 1);
    assert!(
        t.core.stats().services.iter().all(|s| s.queued == 0),
        "not queued again"
    );
    // A fourth worker is not given it; a good request is served.
    t.open("w4", "w4");
    t.cmd("w4", Message::Credit { amount: 2 });
    assert!(bodies(&t.offer("w4", "svc", ".*")).is_empty());
    assert_eq!(
        bodies(&t.cmd("p", request("svc", "s", "fine", 0))),
        [pair("w4", "fine")]
    );
}

/// Expiry counts as a worker going away; a confirmation ends it; 0 means
/// no limit.
#[test]
fn deliveries_count_across_expiry_and_zero_is_unlimited() {
    let mut t = T::with(|c| {
        c.max_deliveries = 0;
        c.client_timeout = Duration::from_secs(1);
    });
    t.open("p", "p");
    t.cmd("p", request("svc", "s", "again and again", 0));
    for n in 0..8 {
        let w = format!("w{n}");
        t.open(&w, &w);
        t.cmd(&w, Message::Credit { amount: 1 });
        assert_eq!(bodies(&t.offer(&w, "svc", ".*")).len(), 1, "delivery {n}");
        t.advance(Duration::from_secs(2)); // silent: expired
    }
    assert_eq!(t.core.stats().counters.requests_poisoned, 0);
    assert_eq!(t.core.stats().services[0].queued, 1);
}

/// A STREAM WRITE the ACL refuses, then STREAM SENDs: each send is refused
/// naming the stream ("may not publish on stream numbers"), not with the
/// misleading "no stream: send STREAM WRITE first".
#[test]
fn sends_after_a_refused_stream_write_name_the_stream() {
    let mut t = T::new();
    t.core.set_acl(Some(
        alaska::broker::acl::Acl::parse(
            "default\n    open = \"*\"\n",
            std::path::Path::new("acl.cfg"),
        )
        .unwrap(),
    ));
    t.open("w", "w");
    let sent = t.cmd(
        "w",
        Message::StreamWrite {
            stream: "numbers".into(),
        },
    );
    assert_eq!(error_code(&sent[0].1), Some(300));
    let sent = t.cmd(
        "w",
        Message::StreamSend {
            subject: "pi".into(),
            content: vec![b"3.14".to_vec()],
        },
    );
    let Message::Error { status } = &sent[0].1 else {
        panic!("{sent:?}")
    };
    assert!(
        status.reason.contains("may not publish on stream numbers"),
        "{}",
        status.reason
    );
}
