//! The worker core's rules driven without sockets, threads or sleeps: a
//! fake clock (an `Instant` moved by hand), fake outlets (a pool and a
//! runner with fixed room), and the actions read back.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use super::*;
use crate::mlm::ClientOptions;
use crate::worker::outcomes::Envelope;
use crate::worker::reach::Answer;
use crate::worker::types::{Outcome, RunResult};

/// A pool with `room` places and one runner (subjects `run.*`) with
/// `runner_room` places, recording what they were given.
#[derive(Default)]
struct Fake {
    room: usize,
    pool: VecDeque<Job>,
    runner_room: usize,
    runner: Vec<Job>,
}

impl Outlets for Fake {
    fn route(&self, subject: &str) -> Option<usize> {
        subject.starts_with("run.").then_some(0)
    }
    fn to_runner(&mut self, _i: usize, job: Job, extra: usize) -> Result<(), (Job, String)> {
        if self.runner.len() >= self.runner_room + extra {
            return Err((job, "r".into()));
        }
        self.runner.push(job);
        Ok(())
    }
    fn to_pool(&mut self, job: Job) -> Result<(), Job> {
        if self.pool.len() >= self.room {
            return Err(job);
        }
        self.pool.push_back(job);
        Ok(())
    }
    fn take_back(&mut self) -> Option<Job> {
        self.pool.pop_front()
    }
    fn pool_waiting(&self) -> usize {
        self.pool.len()
    }
}

/// A fake clock: the time starts at `t0` and moves only when told.
struct Clock {
    t0: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock { t0: Instant::now() }
    }
    fn at(&self, ms: u64) -> Now {
        Now {
            at: crate::time::after(self.t0, Duration::from_millis(ms)),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }
}

fn opts() -> DispatcherOptions {
    let mut o = DispatcherOptions::new(ClientOptions::new("tcp://127.0.0.1:1", "w"), "svc");
    o.policy.backoff = Duration::from_millis(100);
    o
}

fn core(conns: usize, queue_limit: usize) -> Core {
    let mut c = Core::new(
        opts(),
        (0..conns).map(|i| format!("w{i}")).collect(),
        queue_limit,
    );
    c.seed_jitter(42);
    c
}

/// A service request from `sender` with tracker `tracker` (empty: no reply
/// wanted), acknowledged with token `ack` when given.
fn request(subject: &str, tracker: &str, body: &str, ack: Option<u64>) -> Delivery {
    Delivery {
        kind: DeliveryKind::Service,
        sender: "client".into(),
        address: "svc".into(),
        subject: subject.into(),
        tracker: tracker.into(),
        content: vec![body.as_bytes().to_vec()],
        ack: ack.map(AckToken::for_test),
    }
}

fn done(job: Job, reply: &str) -> Completion {
    finished(
        job,
        Ok(Outcome::Done {
            reply: Some(reply.as_bytes().to_vec()),
        }),
    )
}

fn finished(job: Job, result: Result<Outcome, crate::worker::types::ScriptError>) -> Completion {
    Completion {
        id: job.id,
        request: job.request,
        run: RunResult {
            outputs: Vec::new(),
            result,
        },
    }
}

fn reply_to(a: &Action) -> Option<(&str, &str, &[Vec<u8>])> {
    match a {
        Action::SendTo {
            address,
            tracker,
            content,
            ..
        } => Some((address.as_str(), tracker.as_str(), content.as_slice())),
        _ => None,
    }
}

fn confirmed(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Confirm { tokens, .. } => {
                Some(tokens.iter().map(|t| t.seq_for_test()).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn replies_go_out_at_once_and_confirmations_in_one_batch() {
    let clock = Clock::new();
    let mut c = core(1, 8);
    let mut out = Fake::default();
    c.connection_up(0, true, false);
    for n in 1..=3 {
        c.delivery(
            0,
            request("echo", &format!("t{n}"), "x", Some(n)),
            clock.at(0),
            &mut out,
        );
    }
    for n in 1..=3 {
        let job = c
            .take_inline(&mut out)
            .expect("queued for the dispatcher's VM");
        assert_eq!(job.request.tracker, format!("t{n}"), "in arrival order");
        c.completion(done(job, &format!("r{n}")), clock.at(1));
    }
    let acts = c.take_actions();
    assert_eq!(acts.len(), 3, "{acts:?}");
    for (n, a) in acts.iter().enumerate() {
        let (to, tracker, content) = reply_to(a).unwrap();
        assert_eq!((to, tracker), ("client", format!("t{}", n + 1).as_str()));
        assert_eq!(content, &[format!("r{}", n + 1).into_bytes()]);
    }
    // The confirmations wait for the end of the turn: one command.
    c.tick(clock.at(1), &mut out);
    assert_eq!(
        c.take_actions(),
        vec![Action::Confirm {
            conn: 0,
            tokens: (1..=3).map(AckToken::for_test).collect()
        }]
    );
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn a_full_confirmation_batch_goes_out_without_waiting_for_the_turn() {
    let clock = Clock::new();
    let mut c = core(1, 100);
    let mut out = Fake::default();
    c.connection_up(0, true, false);
    for n in 1..=(CONFIRM_BATCH as u64 + 1) {
        c.delivery(0, request("echo", "", "x", Some(n)), clock.at(0), &mut out);
        let job = c.take_inline(&mut out).unwrap();
        c.completion(done(job, "r"), clock.at(0));
    }
    // No tracker: no reply; the 64th confirmation sent the batch.
    let acts = c.take_actions();
    assert_eq!(
        confirmed(&acts),
        (1..=CONFIRM_BATCH as u64).collect::<Vec<_>>()
    );
    c.tick(clock.at(0), &mut out);
    assert_eq!(confirmed(&c.take_actions()), vec![CONFIRM_BATCH as u64 + 1]);
}

#[test]
fn a_retry_waits_its_time_unconfirmed_with_one_more_credit() {
    let clock = Clock::new();
    let mut c = core(1, 8);
    let mut out = Fake::default();
    c.connection_up(0, true, false);
    c.delivery(
        0,
        request("flaky", "t", "x", Some(7)),
        clock.at(0),
        &mut out,
    );
    let job = c.take_inline(&mut out).unwrap();
    let retry = Ok(Outcome::Retry {
        after: Some(Duration::from_millis(500)),
        reason: "busy".into(),
    });
    c.completion(finished(job, retry), clock.at(10));
    // Waiting: not confirmed (the broker keeps it if we die), and one more
    // credit so the window for new work does not shrink.
    assert_eq!(
        c.take_actions(),
        vec![Action::Credit { conn: 0, amount: 1 }]
    );
    assert_eq!(c.retries(), 1);
    assert_eq!(c.next_deadline(), Some(clock.at(510).at));
    c.tick(clock.at(509), &mut out);
    assert!(c.take_inline(&mut out).is_none(), "not due yet");
    c.tick(clock.at(510), &mut out);
    let again = c.take_inline(&mut out).expect("due at 510 ms");
    assert_eq!(again.request.attempt, 2);
    c.completion(done(again, "ok"), clock.at(520));
    c.tick(clock.at(520), &mut out);
    let acts = c.take_actions();
    assert_eq!(reply_to(&acts[0]).unwrap().1, "t");
    assert_eq!(confirmed(&acts), vec![7], "confirmed once, after the reply");
    // A second retry on the same connection while none waits: no new credit.
    c.delivery(
        0,
        request("flaky", "", "y", Some(8)),
        clock.at(600),
        &mut out,
    );
    let job = c.take_inline(&mut out).unwrap();
    let retry = Ok(Outcome::Retry {
        after: Some(Duration::from_millis(50)),
        reason: "busy".into(),
    });
    c.completion(finished(job, retry), clock.at(600));
    assert!(
        c.take_actions().is_empty(),
        "the credit granted before covers it"
    );
}

#[test]
fn attempts_run_out_into_a_dead_letter_then_a_confirmation() {
    let clock = Clock::new();
    let mut c = core(1, 8);
    let mut out = Fake::default();
    c.connection_up(0, true, false);
    c.delivery(
        0,
        request("flaky", "t", "body", Some(1)),
        clock.at(0),
        &mut out,
    );
    let mut t = 0;
    for attempt in 1..=3 {
        let job = c.take_inline(&mut out).expect("attempt runs");
        assert_eq!(job.request.attempt, attempt);
        let retry = Ok(Outcome::Retry {
            after: None,
            reason: "down".into(),
        });
        c.completion(finished(job, retry), clock.at(t));
        // Backoff 100 ms doubling, jittered into its upper half.
        t += 100 << (attempt - 1);
        c.tick(clock.at(t), &mut out);
    }
    let acts = c.take_actions();
    let letters: Vec<_> = acts.iter().filter_map(reply_to).collect();
    assert_eq!(letters.len(), 2, "{acts:?}");
    assert_eq!(letters[0].0, "awerr", "the report to the error mailbox");
    assert_eq!(
        letters[1].0, "client",
        "the error reply to the waiting requester"
    );
    assert!(String::from_utf8_lossy(&letters[1].2[0]).contains("down"));
    assert_eq!(confirmed(&acts), vec![1]);
    assert_eq!(c.retries(), 0);
}

#[test]
fn a_pushing_broker_overflows_into_held_then_dead_letters() {
    let clock = Clock::new();
    let mut o = opts();
    o.hold_max = 2;
    let mut c = Core::new(o, vec!["w".into()], 2);
    let mut out = Fake::default();
    c.connection_up(0, false, false);
    for n in 1..=5 {
        c.delivery(
            0,
            request("echo", &format!("t{n}"), "x", None),
            clock.at(0),
            &mut out,
        );
    }
    // Two queued, two held, the fifth beyond: reported and answered.
    assert_eq!(c.queued(&out), 4);
    let acts = c.take_actions();
    let letters: Vec<_> = acts.iter().filter_map(reply_to).collect();
    assert_eq!(letters.len(), 2, "{acts:?}");
    assert_eq!(letters[0].0, "awerr");
    assert_eq!(letters[1].1, "t5");
    assert!(String::from_utf8_lossy(&letters[1].2[0]).contains("overloaded"));
    // Held requests run in arrival order as the queue frees.
    let order: Vec<String> = std::iter::from_fn(|| c.take_inline(&mut out))
        .map(|j| j.request.tracker)
        .collect();
    assert_eq!(order, ["t1", "t2", "t3", "t4"]);
    assert!(
        c.take_actions().is_empty(),
        "nothing confirmed: nothing to confirm"
    );
}

#[test]
fn the_held_bytes_bound_the_overflow_too() {
    let clock = Clock::new();
    let mut o = opts();
    o.hold_bytes = 10;
    let mut c = Core::new(o, vec!["w".into()], 1);
    let mut out = Fake::default();
    c.delivery(0, request("a", "", "q", None), clock.at(0), &mut out);
    c.delivery(0, request("a", "", "123456", None), clock.at(0), &mut out);
    c.delivery(0, request("a", "", "1234567", None), clock.at(0), &mut out);
    assert_eq!(c.queued(&out), 2, "6 bytes held; 6 + 7 > 10 is not");
    assert_eq!(c.take_actions().iter().filter_map(reply_to).count(), 1);
}

#[test]
fn an_acknowledging_broker_that_oversends_gets_the_request_back() {
    let clock = Clock::new();
    let mut c = core(1, 1);
    let mut out = Fake::default();
    c.connection_up(0, true, false);
    c.delivery(
        0,
        request("echo", "t1", "a", Some(1)),
        clock.at(0),
        &mut out,
    );
    c.delivery(
        0,
        request("echo", "t2", "b", Some(2)),
        clock.at(0),
        &mut out,
    );
    let acts = c.take_actions();
    match &acts[..] {
        [Action::SendFor {
            address,
            tracker,
            content,
            ..
        }] => {
            assert_eq!(address, "svc", "handed back to its service");
            let env = Envelope::decode(tracker).expect("in an envelope");
            assert_eq!(
                (env.sender.as_str(), env.tracker.as_str()),
                ("client", "t2")
            );
            assert_eq!(content, &vec![b"b".to_vec()]);
        }
        other => panic!("{other:?}"),
    }
    c.tick(clock.at(0), &mut out);
    assert_eq!(confirmed(&c.take_actions()), vec![2], "our copy confirmed");
}

#[test]
fn while_the_dispatchers_vm_is_busy_work_goes_to_the_pool_and_runners() {
    let clock = Clock::new();
    let mut c = core(1, 8);
    let mut out = Fake {
        room: 2,
        runner_room: 1,
        ..Fake::default()
    };
    c.connection_up(0, true, false);
    c.delivery(0, request("a", "", "1", Some(1)), clock.at(0), &mut out);
    assert!(out.pool.is_empty(), "the idle dispatcher's VM takes it");
    c.set_inline_busy(true, &mut out);
    assert_eq!(out.pool.len(), 1, "moved to the pool when the VM got busy");
    c.delivery(0, request("b", "", "2", Some(2)), clock.at(0), &mut out);
    c.delivery(0, request("c", "", "3", Some(3)), clock.at(0), &mut out);
    assert_eq!(out.pool.len(), 2);
    assert_eq!(c.queued(&out), 3, "one waits for room");
    c.delivery(0, request("run.x", "", "4", Some(4)), clock.at(0), &mut out);
    assert_eq!(out.runner.len(), 1, "a runner's subject never reaches a VM");
    c.set_inline_busy(false, &mut out);
    assert_eq!(c.take_inline(&mut out).unwrap().request.subject, "c");
    assert_eq!(
        c.take_inline(&mut out).unwrap().request.subject,
        "a",
        "then the pool's"
    );
}

#[test]
fn maintenance_is_said_on_every_connection() {
    let mut c = core(2, 8);
    c.maintenance(true);
    c.maintenance(false);
    assert_eq!(
        c.take_actions(),
        vec![
            Action::Maintenance { conn: 0, on: true },
            Action::Maintenance { conn: 1, on: true },
            Action::Maintenance { conn: 0, on: false },
            Action::Maintenance { conn: 1, on: false },
        ]
    );
}

#[test]
fn a_request_is_answered_over_the_connection_it_came_from() {
    let clock = Clock::new();
    let mut c = core(2, 8);
    let mut out = Fake::default();
    c.connection_up(0, true, false);
    c.connection_up(1, true, false);
    c.delivery(1, request("echo", "t", "x", Some(9)), clock.at(0), &mut out);
    let job = c.take_inline(&mut out).unwrap();
    c.completion(done(job, "r"), clock.at(0));
    c.tick(clock.at(0), &mut out);
    let acts = c.take_actions();
    assert!(matches!(acts[0], Action::SendTo { conn: 1, .. }));
    assert!(matches!(acts[1], Action::Confirm { conn: 1, .. }));
}

#[test]
fn the_stop_hands_back_retries_leaves_the_acknowledged_and_reports_the_pushed() {
    let clock = Clock::new();
    let mut c = core(1, 8);
    let mut out = Fake::default();
    c.connection_up(0, true, false);
    // A retry waiting.
    c.delivery(
        0,
        request("flaky", "t1", "a", Some(1)),
        clock.at(0),
        &mut out,
    );
    let job = c.take_inline(&mut out).unwrap();
    let retry = Ok(Outcome::Retry {
        after: Some(Duration::from_secs(60)),
        reason: "later".into(),
    });
    c.completion(finished(job, retry), clock.at(0));
    // One acknowledged request never started, one pushed request (no
    // acknowledgement) running when the stop came and never finished.
    c.delivery(0, request("slow", "t3", "c", None), clock.at(0), &mut out);
    c.delivery(
        0,
        request("slow", "t2", "b", Some(2)),
        clock.at(0),
        &mut out,
    );
    let running = c.take_inline(&mut out).unwrap();
    assert_eq!(running.request.tracker, "t3");
    let _ = c.take_actions();
    assert_eq!(c.stop_begin(&out, 0), 3);
    c.stop_finish(Vec::new(), clock.at(1000));
    let acts = c.take_actions();
    // The retry goes back to its service with its attempt count, then is
    // confirmed; the acknowledged one is left unconfirmed for its broker
    // to give to another worker; the pushed one is reported.
    match &acts[0] {
        Action::SendFor { tracker, .. } => {
            let env = Envelope::decode(tracker).unwrap();
            assert_eq!((env.attempt, env.tracker.as_str()), (2, "t1"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(confirmed(&acts), vec![1]);
    let letters: Vec<_> = acts.iter().filter_map(reply_to).collect();
    assert_eq!(letters.len(), 2, "{acts:?}");
    assert_eq!(letters[1].1, "t3");
    assert!(String::from_utf8_lossy(&letters[1].2[0]).contains("did not finish in time"));
    assert_eq!(c.in_flight(), 0);
    // What comes after: a pushed request is handed back, not run.
    c.delivery_at_stop(0, request("late", "t4", "d", None), clock.at(1001));
    assert!(matches!(&c.take_actions()[..], [Action::SendFor { .. }]));
}

#[test]
fn a_calls_reply_is_matched_by_its_tracker_and_a_lost_connection_answers_the_rest() {
    let clock = Clock::new();
    let mut c = core(2, 8);
    let mut out = Fake::default();
    let (tx, rx) = crossbeam_channel::unbounded();
    let call = |token: u64, ms: u64| CallOut {
        address: "other".into(),
        subject: "price".into(),
        content: vec![b"q".to_vec()],
        hops: 1,
        deadline: clock.at(ms).at,
        answer: Answer {
            tx: tx.clone(),
            token,
        },
    };
    c.call(call(1, 1000), clock.at(0));
    assert_eq!(
        rx.try_recv().unwrap().0,
        1,
        "no broker connected: answered at once"
    );
    c.connection_up(1, true, false);
    c.call(call(2, 1000), clock.at(0));
    let acts = c.take_actions();
    let tracker = match &acts[..] {
        [Action::SendFor {
            conn: 1,
            address,
            tracker,
            timeout_ms: 1000,
            ..
        }] if address == "other" => tracker.clone(),
        other => panic!("{other:?}"),
    };
    let env = Envelope::decode(&tracker).unwrap();
    assert_eq!((env.sender.as_str(), env.hops), ("w1", 1));
    let mail = |tracker: &str, subject: &str| Delivery {
        kind: DeliveryKind::Mailbox,
        sender: "other-worker".into(),
        address: "w1".into(),
        subject: subject.into(),
        tracker: tracker.into(),
        content: vec![b"42".to_vec()],
        ack: None,
    };
    c.delivery(1, mail(&env.tracker, "price"), clock.at(5), &mut out);
    match rx.try_recv().unwrap() {
        (2, crate::worker::reach::Answered::Call(Ok(frames))) => {
            assert_eq!(frames, vec![b"42".to_vec()])
        }
        other => panic!("{other:?}"),
    }
    // Twice: nobody waits any more (dropped, counted as late).
    c.delivery(1, mail(&env.tracker, "price"), clock.at(6), &mut out);
    assert!(rx.try_recv().is_err());
    // A call in flight when its connection goes: answered with why.
    c.call(call(3, 1000), clock.at(10));
    let _ = c.take_actions();
    c.connection_down(1);
    match rx.try_recv().unwrap() {
        (3, crate::worker::reach::Answered::Call(Err(why))) => {
            assert!(why.contains("lost"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.calls_waiting(), 0);
    // A call whose send the client refuses: its caller is told why.
    c.connection_up(0, true, false);
    c.call(call(4, 1000), clock.at(20));
    let tracker = match c.take_actions().pop() {
        Some(Action::SendFor {
            origin: Origin::Call(t),
            ..
        }) => t,
        other => panic!("{other:?}"),
    };
    c.call_not_sent(&tracker, "cannot send: outbox full");
    match rx.try_recv().unwrap() {
        (4, crate::worker::reach::Answered::Call(Err(why))) => assert!(why.contains("outbox")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_delayed_forward_to_a_broker_without_delays_is_a_dead_letter() {
    let clock = Clock::new();
    let mut c = core(1, 8);
    let mut out = Fake::default();
    c.connection_up(0, true, false);
    c.delivery(
        0,
        request("stage1", "t", "x", Some(1)),
        clock.at(0),
        &mut out,
    );
    let job = c.take_inline(&mut out).unwrap();
    let fwd = Ok(Outcome::Forward {
        address: "next".into(),
        subject: "stage2".into(),
        content: None,
        delay: Some(Duration::from_secs(5)),
    });
    c.completion(finished(job, fwd), clock.at(0));
    c.tick(clock.at(0), &mut out);
    let acts = c.take_actions();
    let letters: Vec<_> = acts.iter().filter_map(reply_to).collect();
    assert_eq!(letters.len(), 2, "{acts:?}");
    assert!(String::from_utf8_lossy(&letters[1].2[0]).contains("delayed forward"));
    assert_eq!(confirmed(&acts), vec![1]);
    // With delay/1 it goes out delayed, the request kept in case the
    // connection refuses after all.
    c.connection_up(0, true, true);
    c.delivery(
        0,
        request("stage1", "t", "x", Some(2)),
        clock.at(0),
        &mut out,
    );
    let job = c.take_inline(&mut out).unwrap();
    let fwd = Ok(Outcome::Forward {
        address: "next".into(),
        subject: "stage2".into(),
        content: None,
        delay: Some(Duration::from_secs(5)),
    });
    c.completion(finished(job, fwd), clock.at(0));
    match &c.take_actions()[..] {
        [Action::SendFor {
            address,
            delay: Some(d),
            origin: Origin::DelayedForward(r),
            ..
        }] => {
            assert_eq!((address.as_str(), *d), ("next", Duration::from_secs(5)));
            assert_eq!(r.tracker, "t");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_relayed_reply_goes_to_the_original_requester() {
    let clock = Clock::new();
    let mut c = core(1, 8);
    let mut out = Fake::default();
    let env = Envelope {
        hops: 2,
        attempt: 1,
        sender: "origin".into(),
        tracker: "t9".into(),
    };
    let d = Delivery {
        kind: DeliveryKind::Mailbox,
        sender: "stage2".into(),
        address: "w0".into(),
        subject: "done".into(),
        tracker: env.encode().unwrap(),
        content: vec![b"r".to_vec()],
        ack: None,
    };
    c.delivery(0, d, clock.at(0), &mut out);
    assert_eq!(
        c.take_actions(),
        vec![Action::SendTo {
            conn: 0,
            address: "origin".into(),
            subject: "done".into(),
            tracker: "t9".into(),
            content: vec![b"r".to_vec()]
        }]
    );
    assert_eq!(c.in_flight(), 0, "a relayed mail is not a request");
}

#[test]
fn a_broker_that_redelivers_gets_a_nak_for_a_retry_and_a_term_for_a_dead_letter_or_drop() {
    let clock = Clock::new();
    let mut c = core(1, 8);
    let mut out = Fake::default();
    c.set_redelivers(0, true);
    c.connection_up(0, true, false);
    for (i, subject) in ["flaky", "broken", "dropped", "fine"].iter().enumerate() {
        let tracker = if *subject == "dropped" { "" } else { "t" };
        c.delivery(
            0,
            request(subject, tracker, "x", Some(i as u64 + 1)),
            clock.at(0),
            &mut out,
        );
    }
    let job = c.take_inline(&mut out).unwrap();
    let retry = Ok(Outcome::Retry {
        after: Some(Duration::from_millis(500)),
        reason: "busy".into(),
    });
    c.completion(finished(job, retry), clock.at(10));
    // Handed to the broker with the delay: nothing waits here, no credit.
    let acts = c.take_actions();
    assert_eq!(acts.len(), 1, "{acts:?}");
    match &acts[0] {
        Action::Nak {
            conn: 0,
            token,
            delay,
        } => {
            assert_eq!(token.seq_for_test(), 1);
            assert_eq!(*delay, Duration::from_millis(500));
        }
        a => panic!("not a nak: {a:?}"),
    }
    assert_eq!(c.retries(), 0);
    assert_eq!(c.next_deadline(), None);
    let job = c.take_inline(&mut out).unwrap();
    let fail = Ok(Outcome::Fail {
        reason: "no stock".into(),
    });
    c.completion(finished(job, fail), clock.at(20));
    // The report and the error reply, then the term (never redelivered).
    let acts = c.take_actions();
    assert_eq!(acts.len(), 3, "{acts:?}");
    assert!(matches!(&acts[0], Action::SendTo { address, .. } if address == "awerr"));
    assert!(matches!(&acts[1], Action::SendTo { subject, .. } if subject == "ERROR:broken"));
    assert!(matches!(&acts[2], Action::Term { conn: 0, token } if token.seq_for_test() == 2));
    let job = c.take_inline(&mut out).unwrap();
    c.completion(finished(job, Ok(Outcome::Drop)), clock.at(30));
    let acts = c.take_actions();
    assert!(
        matches!(&acts[..], [Action::Term { conn: 0, token }] if token.seq_for_test() == 3),
        "{acts:?}"
    );
    // Done is the usual confirmation (an acknowledgement).
    let job = c.take_inline(&mut out).unwrap();
    c.completion(done(job, "ok"), clock.at(40));
    c.flush_confirms();
    let acts = c.take_actions();
    assert_eq!(confirmed(&acts), vec![4]);
    assert_eq!(c.in_flight(), 0);
}
