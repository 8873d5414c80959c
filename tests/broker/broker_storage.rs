//! Durable storage through the real `alaska-broker` binary: what it holds
//! survives `kill -9`, nothing confirmed or expired comes back, and a
//! damaged store or one of another format version is reported at start.
//! Clients are the library's, reconnecting by themselves as they would in
//! production.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alaska::mlm::{Client, ClientOptions, Delivery, DeliveryKind};

/// The broker as a child process, its stderr in a file.
struct Broker {
    child: Child,
    endpoint: String,
    log: PathBuf,
}

impl Broker {
    /// Starts the broker on `endpoint` with storage in `dir/store`, and
    /// waits until it is ready (or has exited: then the log says why).
    fn start(dir: &Path, endpoint: &str, sync: &str) -> Broker {
        let mut b = Broker::spawn(dir, endpoint, sync);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = b.log_text();
            if let Some(line) = log.lines().find(|l| l.contains("alaska-broker ready on ")) {
                let ep = line
                    .rsplit("ready on ")
                    .next()
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap()
                    .to_string();
                b.endpoint = ep;
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "broker not ready in 30 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
        }
    }

    fn spawn(dir: &Path, endpoint: &str, sync: &str) -> Broker {
        let cfg = dir.join("broker.cfg");
        std::fs::write(
            &cfg,
            format!(
                "mlm_server\n    bind\n        endpoint = {endpoint}\n    storage\n        dir = store\n        sync = {sync}\n"
            ),
        )
        .unwrap();
        let n = std::fs::read_dir(dir).unwrap().count();
        let log = dir.join(format!("broker-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_alaska-broker"))
            .arg(&cfg)
            .env("RUST_LOG", "info,fjall=warn,lsm_tree=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Broker {
            child,
            endpoint: endpoint.to_string(),
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The line where storage says what it found.
    fn storage_line(&self) -> String {
        self.log_text()
            .lines()
            .find(|l| l.contains(" (sync "))
            .unwrap_or_default()
            .to_string()
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_exit(&mut self.child, Duration::from_secs(10))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log_text());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "no exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
    }
}

fn connect(endpoint: &str, name: &str, credit: Option<u16>) -> Client {
    let mut o = ClientOptions::new(endpoint, name);
    o.timeout = Duration::from_secs(5);
    o.heartbeat = Duration::from_millis(100);
    o.credit = credit;
    Client::connect(o).expect("client connects")
}

/// Writes what waits in `c`'s outbox (sends beyond the socket's
/// high-water mark wait there while the client runs), then makes a round
/// trip on its connection: the broker answers in order, and only after it
/// has stored what came before.
fn sync(c: &mut Client) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.outbox_len() > 0 {
        assert!(Instant::now() < deadline, "outbox not written in 10 s");
        if let Some(d) = c.recv(Duration::from_millis(5)).unwrap() {
            panic!("unexpected delivery {d:?}");
        }
    }
    c.set_producer("sync").expect("round trip");
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.content[0].clone()).unwrap()
}

/// Receives exactly `n` deliveries of `kind` (confirming acknowledged
/// ones), then checks nothing more comes for `quiet`.
fn receive(c: &mut Client, kind: DeliveryKind, n: usize, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{} of {n} {kind:?} deliveries in 30 s",
            got.len()
        );
        if let Some(d) = c.recv(left).unwrap() {
            if d.kind == kind {
                got.push(body(&d));
                if let Some(token) = d.ack {
                    c.confirm(token).unwrap();
                }
            }
        }
    }
    let deadline = Instant::now() + quiet;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return got;
        }
        if let Some(d) = c.recv(left).unwrap() {
            assert!(d.kind != kind, "one more than {n}: {:?}", body(&d));
        }
    }
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} {i}")).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn mail_queued_and_unconfirmed_requests_survive_kill_9_and_confirmed_ones_do_not_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = Broker::start(dir.path(), "tcp://127.0.0.1:*", "batch");
    let ep = a.endpoint.clone();
    assert!(a.storage_line().contains("new store"), "{}", a.log_text());
    let mut p = connect(&ep, "producer", None);
    for m in numbered("mail", 100) {
        p.sendto("absent", "m", "", 0, vec![m.into_bytes()])
            .unwrap();
    }
    for r in numbered("queued", 1000) {
        p.sendfor("nobody-yet", "s", "", 0, vec![r.into_bytes()])
            .unwrap();
    }
    let mut w = connect(&ep, "holder", Some(10));
    assert!(w.acks_enabled());
    w.set_worker("held", ".*").unwrap();
    for r in numbered("held", 10) {
        p.sendfor("held", "s", "", 0, vec![r.into_bytes()]).unwrap();
    }
    sync(&mut p);
    // The worker takes its window of 10 and confirms none of them.
    let mut held = Vec::new();
    while held.len() < 10 {
        let d = w
            .recv(Duration::from_secs(10))
            .unwrap()
            .unwrap_or_else(|| panic!("10 deliveries, got {}: {}", held.len(), a.log_text()));
        assert!(d.ack.is_some());
        held.push(body(&d));
    }
    assert_eq!(sorted(held), sorted(numbered("held", 10)));
    a.kill_9();

    // Restarted on the same directory: everything is back.
    let b = Broker::start(dir.path(), &ep, "batch");
    let line = b.storage_line();
    assert!(
        line.contains(
            "recovered 1010 request(s) for 2 service(s) and 100 mail(s) for 1 address(es)"
        ),
        "{line}"
    );
    assert!(line.contains("did not stop cleanly"), "{line}");
    // The holder reconnects by itself, offers again, and gets its 10 back.
    assert_eq!(
        sorted(receive(&mut w, DeliveryKind::Service, 10, Duration::ZERO)),
        sorted(numbered("held", 10))
    );
    let mut owner = connect(&ep, "absent", None);
    assert_eq!(
        receive(&mut owner, DeliveryKind::Mailbox, 100, Duration::ZERO),
        numbered("mail", 100),
        "in order"
    );
    let mut q = connect(&ep, "late-worker", Some(100));
    q.set_worker("nobody-yet", ".*").unwrap();
    assert_eq!(
        sorted(receive(&mut q, DeliveryKind::Service, 1000, Duration::ZERO)),
        sorted(numbered("queued", 1000))
    );
    // Each exactly once.
    for c in [&mut w, &mut q] {
        sync(c);
        assert_eq!(
            receive(c, DeliveryKind::Service, 0, Duration::from_millis(500)),
            Vec::<String>::new()
        );
    }
    assert!(receive(
        &mut owner,
        DeliveryKind::Mailbox,
        0,
        Duration::from_millis(200)
    )
    .is_empty());
    b.kill_9();

    // Everything was confirmed or delivered: nothing comes back, neither
    // to the old clients (they reconnect and offer again) nor to new ones.
    let c = Broker::start(dir.path(), &ep, "batch");
    let line = c.storage_line();
    assert!(
        line.contains("recovered 0 request(s) for 0 service(s) and 0 mail(s) for 0 address(es)"),
        "{line}"
    );
    let mut fresh = connect(&ep, "fresh-worker", None);
    fresh.set_worker("held", ".*").unwrap();
    fresh.set_worker("nobody-yet", ".*").unwrap();
    drop(owner);
    let mut owner = connect(&ep, "absent", None);
    for client in [&mut w, &mut q, &mut fresh] {
        assert!(receive(
            client,
            DeliveryKind::Service,
            0,
            Duration::from_millis(1000)
        )
        .is_empty());
    }
    assert!(receive(
        &mut owner,
        DeliveryKind::Mailbox,
        0,
        Duration::from_millis(200)
    )
    .is_empty());
    assert_eq!(c.stop().code(), Some(0));
    // A clean stop is known as such.
    let d = Broker::start(dir.path(), &ep, "always");
    let line = d.storage_line();
    assert!(line.contains("recovered 0 request(s)"), "{line}");
    assert!(!line.contains("did not stop cleanly"), "{line}");
    // Not a polite CLOSE each, to a broker about to go.
    for c in [p, w, q, fresh, owner] {
        c.abort();
    }
}

#[test]
fn expired_mail_and_requests_do_not_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let a = Broker::start(dir.path(), "tcp://127.0.0.1:*", "always");
    let ep = a.endpoint.clone();
    let mut p = connect(&ep, "producer", None);
    p.sendto("absent", "m", "", 300, vec![b"short-lived mail".to_vec()])
        .unwrap();
    p.sendto("absent", "m", "", 0, vec![b"kept mail".to_vec()])
        .unwrap();
    p.sendfor("svc", "s", "", 300, vec![b"short-lived request".to_vec()])
        .unwrap();
    p.sendfor("svc", "s", "", 600_000, vec![b"kept request".to_vec()])
        .unwrap();
    sync(&mut p);
    a.kill_9();
    // Down for longer than the short timeouts: time passing is what is
    // tested (the 300 ms request must be expired at recovery).
    std::thread::sleep(Duration::from_millis(400));
    let b = Broker::start(dir.path(), &ep, "always");
    assert!(
        b.storage_line()
            .contains("recovered 2 request(s) for 1 service(s) and 2 mail(s)"),
        "{}",
        b.storage_line()
    );
    let mut owner = connect(&ep, "absent", None);
    assert_eq!(
        receive(
            &mut owner,
            DeliveryKind::Mailbox,
            1,
            Duration::from_millis(300)
        ),
        ["kept mail"]
    );
    let mut w = connect(&ep, "w", Some(5));
    w.set_worker("svc", ".*").unwrap();
    assert_eq!(
        receive(&mut w, DeliveryKind::Service, 1, Duration::from_millis(300)),
        ["kept request"]
    );
}

/// Where the journal's data ends (it is padded with zeros).
fn data_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

#[test]
fn a_truncated_store_is_reported_and_what_is_readable_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let a = Broker::start(dir.path(), "tcp://127.0.0.1:*", "batch");
    let ep = a.endpoint.clone();
    let mut p = connect(&ep, "producer", None);
    for half in 0..2 {
        for i in 0..50 {
            p.sendto(
                "absent",
                "m",
                "",
                0,
                vec![format!("mail {}", half * 50 + i).into_bytes()],
            )
            .unwrap();
        }
        sync(&mut p);
    }
    a.kill_9();
    // Cut the journal in the middle of its last write.
    let store = dir.path().join("store");
    let journal = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
        .max_by_key(|p| data_end(&std::fs::read(p).unwrap()))
        .expect("a journal");
    let end = data_end(&std::fs::read(&journal).unwrap());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    f.set_len(end as u64 - 10).unwrap();
    drop(f);

    let b = Broker::start(dir.path(), &ep, "batch");
    let log = b.log_text();
    assert!(
        log.contains("byte(s) that could not be read")
            && log.contains(&journal.display().to_string()),
        "{log}"
    );
    let line = b.storage_line();
    let n: usize = line
        .split("request(s) for 0 service(s) and ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        (50..100).contains(&n),
        "the first 50 are safe, the last write is cut: {n}"
    );
    let mut owner = connect(&ep, "absent", None);
    assert_eq!(
        receive(
            &mut owner,
            DeliveryKind::Mailbox,
            n,
            Duration::from_millis(300)
        ),
        numbered("mail", n),
        "what was readable, in order"
    );
}

#[test]
fn a_store_of_another_format_version_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let a = Broker::start(dir.path(), "tcp://127.0.0.1:*", "batch");
    let ep = a.endpoint.clone();
    assert_eq!(a.stop().code(), Some(0));
    let store = dir.path().join("store");
    let set_format = |v: u32| {
        let db = fjall::Database::builder(&store).open().unwrap();
        let meta = db
            .keyspace("meta", fjall::KeyspaceCreateOptions::default)
            .unwrap();
        meta.insert("format", v.to_be_bytes()).unwrap();
        db.persist(fjall::PersistMode::SyncAll).unwrap();
    };
    set_format(99);
    let mut b = Broker::spawn(dir.path(), &ep, "batch");
    let status = wait_exit(&mut b.child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(1));
    let log = b.log_text();
    assert!(
        log.contains(&format!(
            "alaska-broker: storage {}: format version 99 is newer than this broker's (1); refusing to start",
            store.display()
        )),
        "{log}"
    );
    let db = fjall::Database::builder(&store).open().unwrap();
    let meta = db
        .keyspace("meta", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    assert_eq!(
        meta.get("format").unwrap().as_deref(),
        Some(&99u32.to_be_bytes()[..]),
        "untouched"
    );
}

#[test]
fn a_directory_that_is_not_a_store_or_is_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("store")).unwrap();
    std::fs::write(dir.path().join("store/notes.txt"), "mine").unwrap();
    let mut b = Broker::spawn(dir.path(), "tcp://127.0.0.1:*", "batch");
    assert_eq!(
        wait_exit(&mut b.child, Duration::from_secs(30)).code(),
        Some(1)
    );
    let log = b.log_text();
    assert!(
        log.contains("holds files but no store") && log.contains("refusing to start over it"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("store/notes.txt")).unwrap(),
        "mine"
    );

    let other = tempfile::tempdir().unwrap();
    let first = Broker::start(other.path(), "tcp://127.0.0.1:*", "batch");
    let mut second = Broker::spawn(other.path(), "tcp://127.0.0.1:*", "batch");
    assert_eq!(
        wait_exit(&mut second.child, Duration::from_secs(30)).code(),
        Some(1)
    );
    assert!(
        second.log_text().contains("in use by another process"),
        "{}",
        second.log_text()
    );
    assert_eq!(first.stop().code(), Some(0));
}
