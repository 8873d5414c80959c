//! The real `alas` binary against a broker started in the test, with a
//! service played by a client of the project.

use crate::common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use alaska::mlm::{Client, ClientOptions, DeliveryKind};
use assert_cmd::cargo::CommandCargoExt;
use common::*;

/// A service that records every request and, for subject `echo`, mails
/// the content back; for subject `fail`, mails an error reply.
/// Subject and content of each request the service saw.
type Seen = Vec<(String, Vec<Vec<u8>>)>;

struct Service {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Service {
    fn start(endpoint: &str, service: &str) -> Service {
        let mut o = ClientOptions::new(endpoint, format!("svc-{}", unique()));
        o.timeout = Duration::from_secs(3);
        let mut c = Client::connect(o).unwrap();
        c.set_worker(service, ".*").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Some(d) = c.recv(Duration::from_millis(50)).unwrap() else {
                    continue;
                };
                if d.kind != DeliveryKind::Service {
                    continue;
                }
                seen2
                    .lock()
                    .unwrap()
                    .push((d.subject.clone(), d.content.clone()));
                match d.subject.as_str() {
                    "echo" => c
                        .sendto(&d.sender, &d.subject, &d.tracker, 0, d.content)
                        .unwrap(),
                    "fail" => c
                        .sendto(
                            &d.sender,
                            "ERROR:fail",
                            &d.tracker,
                            0,
                            vec![b"it broke".to_vec()],
                        )
                        .unwrap(),
                    _ => {}
                }
            }
        });
        Service {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    fn wait_for(&self, n: usize) -> Seen {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.seen().len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} arrived",
                self.seen().len()
            );
            std::thread::sleep(Duration::from_millis(10)); // bounded poll (deadline above)
        }
        self.seen()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn alas(endpoint: &str, args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = Command::cargo_bin("alas")
        .unwrap()
        .arg("-e")
        .arg(endpoint)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The child may exit before reading its input (a usage error does):
    // a closed pipe is its answer, not the test's failure.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

#[test]
fn single_send_arrives_exactly() {
    let b = broker();
    let s = Service::start(b.endpoint(), "default");
    let out = alas(b.endpoint(), &[], b"{\"c\":1}\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = s.wait_for(1);
    assert_eq!(
        seen,
        vec![("dump".to_string(), vec![b"{\"c\":1}".to_vec()])]
    );
}

#[test]
fn the_loop_of_five_delivers_five_in_order() {
    let b = broker();
    let s = Service::start(b.endpoint(), "default");
    for run in 1..=5 {
        let out = alas(b.endpoint(), &[], format!("{{\"c\":{run}}}\n").as_bytes());
        assert!(out.status.success());
    }
    let seen = s.wait_for(5);
    let bodies: Vec<Vec<u8>> = seen.into_iter().map(|(_, c)| c[0].clone()).collect();
    let want: Vec<Vec<u8>> = (1..=5)
        .map(|r| format!("{{\"c\":{r}}}").into_bytes())
        .collect();
    assert_eq!(bodies, want);
}

#[test]
fn lines_mode_delivers_a_thousand_once_each() {
    let b = broker();
    let s = Service::start(b.endpoint(), "default");
    let input: String = (0..1000).map(|i| format!("{{\"i\":{i}}}\n\n")).collect();
    let out = alas(b.endpoint(), &["--lines", "-s", "batch"], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("sent 1000 request(s)"));
    let seen = s.wait_for(1000);
    // Nothing more within 200 ms is what is tested: a fixed wait.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.seen().len(), 1000, "no duplicates");
    let mut got: Vec<Vec<u8>> = seen.into_iter().map(|(_, c)| c[0].clone()).collect();
    got.sort();
    let mut want: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("{{\"i\":{i}}}").into_bytes())
        .collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn wait_prints_the_reply_and_error_replies_fail() {
    let b = broker();
    let _s = Service::start(b.endpoint(), "default");
    let out = alas(
        b.endpoint(),
        &["-s", "echo", "--wait", "5", "-q"],
        b"{\"x\":42}\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"{\"x\":42}\n");
    assert!(out.stderr.is_empty(), "-q prints nothing else");

    let input = "{\"a\":1}\n{\"a\":2}\n";
    let out = alas(
        b.endpoint(),
        &["-s", "echo", "--lines", "--wait", "-q"],
        input.as_bytes(),
    );
    assert!(out.status.success());
    let mut lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    lines.sort();
    assert_eq!(lines, ["{\"a\":1}", "{\"a\":2}"]);

    let out = alas(b.endpoint(), &["-s", "fail", "--wait", "5"], b"{}\n");
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("it broke"));
}

#[test]
fn timeout_unreachable_and_empty_input_have_their_exit_codes() {
    let b = broker();
    let _s = Service::start(b.endpoint(), "default");
    let out = alas(b.endpoint(), &["-s", "silent", "--wait", "0.5"], b"{}\n");
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no reply within"));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = alas(
        &format!("tcp://127.0.0.1:{port}"),
        &["--timeout", "300"],
        b"{}\n",
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unreachable"));

    let out = alas(b.endpoint(), &[], b"  \n");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty input"));
}

#[test]
fn non_json_is_sent_as_it_is_with_a_warning_unless_raw() {
    let b = broker();
    let s = Service::start(b.endpoint(), "default");
    let out = alas(b.endpoint(), &[], b"not json\n");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
    let out = alas(b.endpoint(), &["--raw"], b"\x00\x01binary\n");
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("not valid JSON"));
    let seen = s.wait_for(2);
    assert_eq!(seen[0].1, vec![b"not json".to_vec()]);
    assert_eq!(seen[1].1, vec![b"\x00\x01binary".to_vec()]);
}

#[test]
fn two_concurrent_runs_are_both_delivered() {
    let b = broker();
    let s = Service::start(b.endpoint(), "default");
    let ep = b.endpoint().to_string();
    let runs: Vec<_> = (0..2)
        .map(|i| {
            let ep = ep.clone();
            std::thread::spawn(move || {
                alas(
                    &ep,
                    &["-s", "echo", "--wait", "5", "-q"],
                    format!("{{\"run\":{i}}}").as_bytes(),
                )
            })
        })
        .collect();
    let mut outs: Vec<Vec<u8>> = runs.into_iter().map(|r| r.join().unwrap().stdout).collect();
    outs.sort();
    assert_eq!(
        outs,
        vec![b"{\"run\":0}\n".to_vec(), b"{\"run\":1}\n".to_vec()]
    );
    assert_eq!(s.wait_for(2).len(), 2);
}

#[test]
fn plain_authentication_refused_has_its_exit_code() {
    let mut users = std::collections::HashMap::new();
    users.insert("admin".to_string(), "secret".to_string());
    let b = broker_with(|c| c.plain = Some(users));
    let out = alas(
        b.endpoint(),
        &[
            "--user",
            "admin",
            "--password",
            "wrong",
            "--timeout",
            "1000",
        ],
        b"{}\n",
    );
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = alas(b.endpoint(), &["--timeout", "1000"], b"{}\n");
    assert_eq!(
        out.status.code(),
        Some(5),
        "no credentials: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = alas(
        b.endpoint(),
        &["--user", "admin", "--password", "secret"],
        b"{}\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn wait_values_that_are_not_a_sane_duration_are_usage_errors() {
    for v in ["inf", "1e300", "-1", "NaN", "soon", "86401"] {
        let out = Command::cargo_bin("alas")
            .unwrap()
            .arg(format!("--wait={v}"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{v}: {err}");
        assert!(
            err.contains("--wait") && !err.contains("panicked"),
            "{v}: {err}"
        );
    }
}

#[test]
fn a_request_refused_because_the_queue_is_full_exits_8() {
    let b = broker_with(|c| c.service_queue_limit.messages = 1);
    // No worker: the first request fills the queue of one.
    let out = alas(b.endpoint(), &[], b"{\"n\":1}\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("refused"), "{stderr}");

    let out = alas(b.endpoint(), &[], b"{\"n\":2}\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(
        stderr.contains("alas: broker refused the request: service default queue full"),
        "{stderr}"
    );
    // Not "sent" first: the broker did not take it.
    assert!(!stderr.contains("alas: sent"), "{stderr}");

    // With --wait the refusal ends the wait: no reply can come, so it is
    // not reported as late.
    let out = alas(b.endpoint(), &["--wait", "30"], b"{\"n\":3}\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(
        stderr.contains("alas: broker refused the request: service default queue full"),
        "{stderr}"
    );
    assert!(!stderr.contains("no reply within"), "{stderr}");

    // Two requests in one run: one queued (no reply in time), one refused;
    // the refusal decides the exit status.
    let out = alas(
        b.endpoint(),
        &["-a", "other", "--lines", "--wait", "0.5"],
        b"{\"n\":4}\n{\"n\":5}\n",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(
        stderr.contains("broker refused 1 of 2 requests: service other queue full"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no reply within 0.5 s for 1 of 2"),
        "{stderr}"
    );
}

#[test]
fn help_documents_exit_status_8() {
    let out = Command::cargo_bin("alas")
        .unwrap()
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("8 broker refused the request"), "{help}");
}

/// A broker whose ACL does not let alas open its address: alas says the
/// broker's reason and exits 9 (access denied), not 4 (unreachable).
#[test]
fn an_acl_refusal_at_connect_exits_9_with_the_brokers_reason() {
    let acl = alaska::broker::acl::Acl::parse(
        "default\n    open = \"worker-*\"\n    send = \"*\"\n",
        std::path::Path::new("acl.cfg"),
    )
    .unwrap();
    let b = broker_with(move |c| c.acl = Some(acl));
    let out = alas(b.endpoint(), &["-s", "x"], b"{}\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{err}");
    assert!(
        err.contains("access denied") && err.contains("may not open"),
        "{err}"
    );
    assert!(!err.contains("unreachable"), "{err}");
}
