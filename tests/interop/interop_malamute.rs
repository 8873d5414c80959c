//! Interoperability with the real Malamute broker and the real libmlm.
//!
//! These tests need a Malamute build, which CI does not have: they look
//! for the broker in `$ALASKA_MALAMUTE`, `/opt/malamute/bin/malamute` or
//! `PATH`, and for libmlm under `$ALASKA_MLM_PREFIX` (default
//! `/opt/malamute`), and print "skipped" and pass when either is absent.
//! The C programs in `tests/interop/` are ours; they are compiled here
//! against the libmlm found. See docs/interop.md.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alaska::mlm::DeliveryKind;
use common::malamute::{free_port, malamute_binary, Malamute};
use common::*;

/// Compiles one of our C programs against libmlm; `None` if that fails.
fn c_program(name: &str, out: &Path) -> Option<PathBuf> {
    let prefix = std::env::var("ALASKA_MLM_PREFIX").unwrap_or_else(|_| "/opt/malamute".into());
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/interop/{name}.c"));
    let bin = out.join(name);
    let ok = Command::new("cc")
        .arg(&src)
        .arg("-o")
        .arg(&bin)
        .arg(format!("-I{prefix}/include"))
        .arg(format!("-L{prefix}/lib"))
        .arg(format!("-Wl,-rpath,{prefix}/lib"))
        .args(["-lmlm", "-lczmq", "-lzmq"])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(bin)
}

struct Setup {
    dir: tempfile::TempDir,
    malamute: PathBuf,
    producer: PathBuf,
    worker: PathBuf,
}

fn setup(test: &str) -> Option<Setup> {
    let Some(malamute) = malamute_binary() else {
        println!("{test}: skipped: real Malamute not found (set ALASKA_MALAMUTE)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let (Some(producer), Some(worker)) = (
        c_program("producer", dir.path()),
        c_program("worker", dir.path()),
    ) else {
        println!("{test}: skipped: cannot compile against libmlm (set ALASKA_MLM_PREFIX)");
        return None;
    };
    Some(Setup {
        dir,
        malamute,
        producer,
        worker,
    })
}

fn run_producer(
    s: &Setup,
    endpoint: &str,
    service: &str,
    subject: &str,
    body: &str,
    n: u32,
) -> String {
    let out = Command::new(&s.producer)
        .args([endpoint, service, subject, body, &n.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "producer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    replies(&out.stdout)
}

/// Our C programs print replies as `= SUBJECT BODY`; libmlm logs to
/// stdout too, so keep only those lines, without the marker.
fn replies(stdout: &[u8]) -> String {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("= "))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn project_client_serves_a_libmlm_producer_through_real_malamute() {
    let Some(s) = setup("project_client_serves_a_libmlm_producer") else {
        return;
    };
    let m = Malamute::start(&s.malamute, s.dir.path(), free_port());
    let mut w = client(&m.endpoint, "rust-worker");
    w.set_worker("svc", ".*").unwrap();
    assert!(!w.acks_enabled(), "the reference does not offer ack/1");
    let ep = m.endpoint.clone();
    let producer = std::thread::spawn({
        let s_producer = s.producer.clone();
        move || {
            Command::new(s_producer)
                .args([ep.as_str(), "svc", "hello", "from libmlm", "1"])
                .output()
                .unwrap()
        }
    });
    let d = expect(&mut w, DeliveryKind::Service, Duration::from_secs(10));
    assert_eq!(
        (d.sender.as_str(), d.subject.as_str()),
        ("c-producer", "hello")
    );
    assert_eq!(d.content, vec![b"from libmlm".to_vec()]);
    w.sendto(
        &d.sender,
        &d.subject,
        &d.tracker,
        0,
        vec![b"reply from rust".to_vec()],
    )
    .unwrap();
    let out = producer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(replies(&out.stdout), "hello reply from rust\n");
}

#[test]
fn project_client_streams_and_mail_through_real_malamute() {
    let Some(s) = setup("project_client_streams_and_mail") else {
        return;
    };
    let m = Malamute::start(&s.malamute, s.dir.path(), free_port());
    let mut reader = client(&m.endpoint, "reader");
    reader.set_consumer("numbers", "^pi").unwrap();
    let mut writer = client(&m.endpoint, "writer");
    writer.set_producer("numbers").unwrap();
    writer
        .send("pi.28", vec![b"3.14".to_vec(), b"attached".to_vec()])
        .unwrap();
    writer.send("e.1", vec![b"2.71".to_vec()]).unwrap();
    let d = expect(&mut reader, DeliveryKind::Stream, Duration::from_secs(5));
    assert_eq!(
        (d.address.as_str(), d.sender.as_str(), d.subject.as_str()),
        ("numbers", "writer", "pi.28")
    );
    assert_eq!(d.content, vec![b"3.14".to_vec(), b"attached".to_vec()]);
    // Mail only after the stream message is in: the reference keeps one
    // pending message per client, and a mail racing a stream delivery to
    // the same client can be overwritten there.
    writer
        .sendto("reader", "mail", "trk", 0, vec![b"hello".to_vec()])
        .unwrap();
    let mail = expect(&mut reader, DeliveryKind::Mailbox, Duration::from_secs(5));
    assert_eq!(
        (
            mail.sender.as_str(),
            mail.subject.as_str(),
            mail.tracker.as_str()
        ),
        ("writer", "mail", "trk")
    );
    assert_eq!(mail.content, vec![b"hello".to_vec()]);
}

#[test]
fn alaska_worker_serves_libmlm_and_survives_a_real_broker_restart() {
    let Some(s) = setup("alaska_worker_serves_libmlm_and_survives_a_real_broker_restart") else {
        return;
    };
    let port = free_port();
    let scripts = s.dir.path().join("services");
    std::fs::create_dir_all(&scripts).unwrap();
    script(&scripts, "echo", "return 'echo:' .. alaskaContext");
    let m = Malamute::start(&s.malamute, s.dir.path(), port);
    let endpoint = m.endpoint.clone();
    let _w = Worker::start(&endpoint, &scripts, |_, p| p.size = 2);
    // The worker's offer is in once a probe gets its answer.
    ready(&mut client(&endpoint, "probe"), &scripts);
    let out = run_producer(&s, &endpoint, "svc", "echo", "one", 20);
    assert_eq!(
        out,
        "echo echo:one\n".repeat(20),
        "20 requests, 20 replies: no CONFIRM got the worker dropped"
    );
    drop(m);
    // Malamute is gone (killed and reaped): its port free for the restart.
    wait_until(
        Duration::from_secs(10),
        "Malamute's port to be free",
        || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
    );
    let _m2 = Malamute::start(&s.malamute, s.dir.path(), port);
    // The worker notices, opens again and offers again by itself.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new(&s.producer)
            .args([endpoint.as_str(), "svc", "echo", "two", "1"])
            .output()
            .unwrap();
        if out.status.success() {
            assert_eq!(replies(&out.stdout), "echo echo:two\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker never served after the restart"
        );
    }
}

#[test]
fn project_broker_serves_libmlm_clients() {
    let Some(s) = setup("project_broker_serves_libmlm_clients") else {
        return;
    };
    let b = broker();
    let mut worker = Command::new(&s.worker)
        .args([b.endpoint(), "svc"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let ready = std::io::BufReader::new(worker.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "= ready");
    assert!(ready, "the libmlm worker offered its service");
    let out = run_producer(&s, b.endpoint(), "svc", "subj", "payload", 100);
    assert_eq!(out, "subj payload\n".repeat(100));
    let _ = worker.kill();
    let _ = worker.wait();
}
