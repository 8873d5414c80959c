//! Seeing and steering the work, end to end: `alas read` and `alas listen`
//! on both brokers (mail from a script's `sendTo` read back byte for byte,
//! a stream in order, `--follow`, exit codes), and dead letters: listed
//! through the project's broker's admin API and `alas dead` without being
//! consumed, replayed to a fixed script, deleted, purged, with the counts
//! in `/metrics` moving; a queue peeked and purged; against the real
//! Malamute, `alas dead list` (which consumes) and a replay from the saved
//! file.

use crate::common;
use crate::ops_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use alaska::mlm::DeliveryKind;
use assert_cmd::cargo::CommandCargoExt;
use base64::Engine as _;
use common::{all_brokers, broker_with, client, expect, ready, request, script, Worker};
use ops_support::http::{agent, get, json, post, wait_for};
use ops_support::prom;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

fn alas(args: &[&str]) -> Output {
    Command::cargo_bin("alas")
        .unwrap()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("alas runs")
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn read_prints_a_scripts_mail_byte_for_byte_on_both_brokers() {
    for broker in all_brokers("read") {
        let ep = broker.endpoint().to_string();
        let dir = tempfile::tempdir().unwrap();
        // Text, then a binary attachment with NUL, 0xff and a newline.
        script(
            dir.path(),
            "mail",
            "sendTo('res-' .. alaskaContext, 'héllo ' .. alaskaContext, 'outbox', '\\0\\255\\n' .. alaskaContext) return 'ok'",
        );
        let _w = Worker::start(&ep, dir.path(), |_, _| {});
        let mut c = client(&ep, &format!("p-{}", common::unique()));
        ready(&mut c, dir.path());
        for n in ["1", "2"] {
            let d = request(&mut c, "mail", n.as_bytes(), WAIT);
            assert_eq!(d.content, vec![b"ok".to_vec()], "{}", broker.name());
        }
        let o = alas(&["read", "outbox", "-e", &ep, "--json"]);
        assert_eq!(
            code(&o),
            0,
            "{}: {}",
            broker.name(),
            String::from_utf8_lossy(&o.stderr)
        );
        let got = lines(&o);
        assert_eq!(got.len(), 2, "{}: {got:?}", broker.name());
        for (l, n) in got.iter().zip(["1", "2"]) {
            assert_eq!(l["subject"], format!("res-{n}"));
            assert_eq!(l["address"], "outbox");
            assert!(l["sender"].as_str().unwrap().starts_with("worker-"), "{l}");
            assert_eq!(l["frames"][0]["text"], format!("héllo {n}"));
            let mut bin = vec![0u8, 0xff, b'\n'];
            bin.extend_from_slice(n.as_bytes());
            assert_eq!(l["frames"][1]["base64"], b64(&bin), "{}", broker.name());
        }
        // Read consumed them: nothing is left, exit 10.
        let o = alas(&["read", "outbox", "-e", &ep, "--timeout", "0.3"]);
        assert_eq!(code(&o), 10, "{}", String::from_utf8_lossy(&o.stderr));
        // Text mode: the header, the text as it is, the binary escaped.
        request(&mut c, "mail", b"3", WAIT);
        let o = alas(&["read", "outbox", "-e", &ep]);
        assert_eq!(code(&o), 0);
        let text = String::from_utf8(o.stdout).unwrap();
        assert!(text.contains("subject \"res-3\""), "{text}");
        assert!(text.contains("héllo 3\n\\x00\\xff\\n3\n"), "{text}");
    }
}

#[test]
fn read_follow_prints_mail_that_arrives_later() {
    for broker in all_brokers("follow") {
        let ep = broker.endpoint().to_string();
        let mut producer = client(&ep, &format!("p-{}", common::unique()));
        producer
            .sendto("later", "first", "", 0, vec![b"one".to_vec()])
            .unwrap();
        let mut child = Command::cargo_bin("alas")
            .unwrap()
            .args(["read", "later", "-e", &ep, "--follow", "-n", "2", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(json(&line)["frames"][0]["text"], "one", "{}", broker.name());
        // Only now the second: alas is still reading.
        producer
            .sendto("later", "second", "", 0, vec![b"two".to_vec()])
            .unwrap();
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(json(&line)["frames"][0]["text"], "two", "{}", broker.name());
        let status = common::bin::wait_exit(&mut child, WAIT).expect("alas ends after -n 2");
        assert_eq!(status.code(), Some(0));
    }
}

#[test]
fn listen_prints_a_stream_in_order_on_both_brokers() {
    for broker in all_brokers("listen") {
        let ep = broker.endpoint().to_string();
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "pub",
            "for i = 1, 3 do send('n' .. i, alaskaContext .. i, 'numbers') end return 'ok'",
        );
        let _w = Worker::start(&ep, dir.path(), |_, _| {});
        let mut c = client(&ep, &format!("p-{}", common::unique()));
        ready(&mut c, dir.path());
        let mut child = Command::cargo_bin("alas")
            .unwrap()
            .args(["listen", "numbers", "n[13]", "-e", &ep, "-n", "4", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Subscribed once it says so (after the broker's OK).
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut said = String::new();
        err.read_line(&mut said).unwrap();
        assert!(said.contains("listening to stream \"numbers\""), "{said}");
        request(&mut c, "pub", b"a", WAIT);
        request(&mut c, "pub", b"b", WAIT);
        let status = common::bin::wait_exit(&mut child, WAIT).expect("alas ends after -n 4");
        assert_eq!(status.code(), Some(0));
        let mut text = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut text).unwrap();
        let got: Vec<(String, String)> = text
            .lines()
            .map(|l| {
                let v = json(l);
                (
                    v["subject"].as_str().unwrap().to_string(),
                    v["frames"][0]["text"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = [("n1", "a1"), ("n3", "a3"), ("n1", "b1"), ("n3", "b3")]
            .iter()
            .map(|(s, t)| (s.to_string(), t.to_string()))
            .collect();
        assert_eq!(got, want, "{}", broker.name());
        // Nothing published: exit 10 after the timeout.
        let o = alas(&["listen", "quiet", "-e", &ep, "--timeout", "0.3"]);
        assert_eq!(code(&o), 10, "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn read_and_listen_exit_codes_unreachable_and_denied() {
    let ep = common::bin::free_endpoint();
    let o = alas(&["read", "x", "-e", &ep, "--connect-timeout", "300"]);
    assert_eq!(code(&o), 4, "{}", String::from_utf8_lossy(&o.stderr));
    let acl = alaska::broker::Acl::parse(
        "default\n    open = \"alas-* reader\"\n    read = \"public\"\n",
        std::path::Path::new("acl.cfg"),
    )
    .unwrap();
    let b = broker_with(|c| c.acl = Some(acl));
    let o = alas(&["read", "awerr", "-e", b.endpoint()]);
    assert_eq!(code(&o), 9, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("access denied"));
    let o = alas(&["listen", "secret", "-e", b.endpoint(), "--timeout", "0.3"]);
    assert_eq!(code(&o), 9, "{}", String::from_utf8_lossy(&o.stderr));
    // What is allowed still works (and finds nothing: 10).
    let o = alas(&["listen", "public", "-e", b.endpoint(), "--timeout", "0.3"]);
    assert_eq!(code(&o), 10, "{}", String::from_utf8_lossy(&o.stderr));
    let o = alas(&["read", "reader", "-e", b.endpoint(), "--timeout", "0.3"]);
    assert_eq!(code(&o), 10, "{}", String::from_utf8_lossy(&o.stderr));
}

/// A broker with HTTP, its base URL.
fn http_broker() -> (alaska::broker::BrokerHandle, String) {
    let b = broker_with(|c| c.http_listen = Some("127.0.0.1:0".into()));
    let base = format!("http://{}", b.http_addr().unwrap());
    (b, base)
}

fn metric(a: &ureq::Agent, base: &str, name: &str) -> f64 {
    let (_, text) = get(a, &format!("{base}/metrics"));
    prom::parse(&text).unwrap().value(name, &[])
}

#[test]
fn dead_letters_are_listed_without_being_consumed_replayed_deleted_and_purged() {
    let (b, base) = http_broker();
    let ep = b.endpoint().to_string();
    let a = agent();
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "job",
        "return alaska.fail('no stock for ' .. alaskaContext)",
    );
    let _w = Worker::start(&ep, dir.path(), |_, _| {});
    let mut c = client(&ep, &format!("p-{}", common::unique()));
    ready(&mut c, dir.path());
    // A binary second frame must survive the round trip.
    c.sendfor("svc", "job", "t1", 0, vec![b"A".to_vec(), vec![0, 0xff]])
        .unwrap();
    let e = expect(&mut c, DeliveryKind::Mailbox, WAIT);
    assert!(e.subject.starts_with("ERROR:"), "{e:?}");
    let list = json(&get(&a, &format!("{base}/v1/dead")).1);
    assert_eq!(list["total"], 1, "{list}");
    let letter = &list["letters"][0];
    assert_eq!(letter["address"], "svc");
    assert_eq!(letter["subject"], "job");
    assert_eq!(letter["outcome"], "fail");
    assert!(letter["reason"]
        .as_str()
        .unwrap()
        .contains("no stock for A"));
    assert_eq!(letter["frames"][1]["base64"], b64(&[0, 0xff]));
    let id = letter["id"].as_u64().unwrap().to_string();
    // Gauges are refreshed every 100 ms.
    wait_for("the dead-letter gauge at 1", || {
        metric(&a, &base, "alaska_broker_dead_letters") == 1.0
    });

    // alas dead list, twice: nothing consumed.
    for _ in 0..2 {
        let o = alas(&["dead", "list", "--api", &base, "--json"]);
        assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
        let got = lines(&o);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["id"].to_string(), id);
    }
    let o = alas(&["dead", "show", &id, "--api", &base]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("no stock for A"));
    let o = alas(&["dead", "show", "999999", "--api", &base]);
    assert_eq!(code(&o), 11);

    // Fixed script; the replay runs it: its side effect is seen.
    script(
        dir.path(),
        "job",
        "sendTo('fixed', alaskaContext .. '+' .. #alaska.frames[2], 'seen') return 'ok'",
    );
    let o = alas(&["dead", "replay", &id, "--api", &base]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let mut seen = client(&ep, "seen");
    let d = expect(&mut seen, DeliveryKind::Mailbox, WAIT);
    assert_eq!(d.content[0], b"A+2");
    assert_eq!(json(&get(&a, &format!("{base}/v1/dead")).1)["total"], 0);
    assert_eq!(
        metric(&a, &base, "alaska_broker_requests_replayed_total"),
        1.0
    );
    wait_for("the dead-letter gauge at 0", || {
        metric(&a, &base, "alaska_broker_dead_letters") == 0.0
    });

    // Three more dead letters: delete one, purge the rest.
    script(dir.path(), "job", "return alaska.fail('again')");
    for n in 0..3 {
        c.sendfor("svc", "job", &format!("u{n}"), 0, vec![b"B".to_vec()])
            .unwrap();
        expect(&mut c, DeliveryKind::Mailbox, WAIT);
    }
    let list = json(&get(&a, &format!("{base}/v1/dead?limit=2")).1);
    assert_eq!(list["total"], 3);
    assert_eq!(list["letters"].as_array().unwrap().len(), 2, "paged");
    let newest = list["letters"][0]["id"].as_u64().unwrap();
    let older = list["letters"][1]["id"].as_u64().unwrap();
    assert!(newest > older, "newest first");
    let o = alas(&["dead", "delete", &newest.to_string(), "--api", &base]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let left = json(&get(&a, &format!("{base}/v1/dead")).1);
    assert_eq!(left["total"], 2, "{list} then {left}");
    let o = alas(&["dead", "purge", "--api", &base]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("purged 2"));
    let left = json(&get(&a, &format!("{base}/v1/dead")).1);
    assert_eq!(left["total"], 0, "{left}");
    // The replayed letter, the deleted one and the two purged.
    assert_eq!(metric(&a, &base, "alaska_broker_mail_removed_total"), 4.0);
    let o = alas(&["dead", "list", "--api", &base]);
    assert_eq!(code(&o), 10);
}

#[test]
fn a_queue_is_peeked_and_purged_through_the_admin_api() {
    let (b, base) = http_broker();
    let a = agent();
    let mut c = client(b.endpoint(), "producer");
    for n in 0..3u8 {
        c.sendfor("nobody", "s", "", 0, vec![vec![b'r', 0xf0 + n]])
            .unwrap();
    }
    wait_for("three requests queued", || {
        json(&get(&a, &format!("{base}/v1/services/nobody/queue")).1)["total"] == 3
    });
    let q = json(&get(&a, &format!("{base}/v1/services/nobody/queue?limit=2")).1);
    assert_eq!(q["requests"].as_array().unwrap().len(), 2);
    assert_eq!(q["requests"][0]["frames"][0]["base64"], b64(&[b'r', 0xf0]));
    assert_eq!(q["requests"][0]["sender"], "producer");
    let before = metric(&a, &base, "alaska_broker_requests_purged_total");
    let (status, text) = post(&a, &format!("{base}/v1/services/nobody/purge"), "{}");
    assert_eq!(status, 200, "{text}");
    assert_eq!(json(&text)["purged"], 3);
    assert_eq!(
        json(&get(&a, &format!("{base}/v1/services/nobody/queue")).1)["total"],
        0
    );
    assert_eq!(
        metric(&a, &base, "alaska_broker_requests_purged_total") - before,
        3.0
    );
}

#[test]
fn dead_letters_through_the_mailbox_and_a_replay_from_the_saved_file_on_both_brokers() {
    for broker in all_brokers("dead-mailbox") {
        let ep = broker.endpoint().to_string();
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "job", "return alaska.fail('broken')");
        let _w = Worker::start(&ep, dir.path(), |_, _| {});
        let mut c = client(&ep, &format!("p-{}", common::unique()));
        ready(&mut c, dir.path());
        c.sendfor(
            "svc",
            "job",
            "t",
            0,
            vec![b"payload".to_vec(), vec![1, 0xfe]],
        )
        .unwrap();
        expect(&mut c, DeliveryKind::Mailbox, WAIT);
        let o = alas(&["dead", "list", "-e", &ep, "--json"]);
        assert_eq!(
            code(&o),
            0,
            "{}: {}",
            broker.name(),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stderr).contains("consumed"));
        let saved = dir.path().join("dead.jsonl");
        std::fs::write(&saved, &o.stdout).unwrap();
        let got = lines(&o);
        assert_eq!(got.len(), 1, "{}", broker.name());
        assert_eq!(got[0]["address"], "svc");
        // Listing consumed it.
        let o = alas(&["dead", "list", "-e", &ep]);
        assert_eq!(code(&o), 10, "{}", broker.name());
        script(
            dir.path(),
            "job",
            "sendTo('fixed', alaskaContext .. #alaska.frames[2], 'seen2') return 'ok'",
        );
        let o = alas(&[
            "dead",
            "replay",
            "--file",
            saved.to_str().unwrap(),
            "-e",
            &ep,
        ]);
        assert_eq!(
            code(&o),
            0,
            "{}: {}",
            broker.name(),
            String::from_utf8_lossy(&o.stderr)
        );
        let mut seen = client(&ep, "seen2");
        let d = expect(&mut seen, DeliveryKind::Mailbox, WAIT);
        assert_eq!(d.content[0], b"payload2", "{}", broker.name());
    }
}
