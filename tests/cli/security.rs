//! Security between machines, end to end: CURVE through every binary with
//! keys made by `alaska-broker --keygen`, each handshake refusal with the
//! cause named by the client and by the broker's log, the bytes on the wire
//! (a TCP relay records them) with and without CURVE, the broker's ACL and
//! its reload on SIGHUP, and a worker dropping root.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alaska::broker::CurveServer;
use alaska::curve::{AllowedKeys, KeyPair};
use alaska::mlm::{
    Client, ClientError, ClientOptions, Credentials, CurveClientKeys, DeliveryKind, RefusalKind,
    Wait,
};
use assert_cmd::cargo::CommandCargoExt;
use common::bin::*;
use common::*;

// ----- harness ------------------------------------------------------------

/// `alaska-broker` as a child process, its log collected line by line.
struct BrokerProc {
    child: Running,
    endpoint: String,
    log: Arc<Mutex<String>>,
}

impl BrokerProc {
    /// Writes `cfg` to `<dir>/broker.cfg` and starts the broker on it (in
    /// `dir`); waits for its "ready" line and reads the real endpoint.
    fn start(dir: &Path, cfg: &str) -> BrokerProc {
        std::fs::write(dir.join("broker.cfg"), cfg).unwrap();
        let mut child = Command::cargo_bin("alaska-broker")
            .unwrap()
            .current_dir(dir)
            .arg("broker.cfg")
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::Builder::new()
            .name("test-broker-log".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut l = sink.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            })
            .unwrap();
        let mut b = BrokerProc {
            child: Running(child),
            endpoint: String::new(),
            log,
        };
        let line = b.wait_log("alaska-broker ready on ", Duration::from_secs(20));
        let rest = &line[line.find("ready on ").unwrap() + 9..];
        b.endpoint = rest.split_whitespace().next().unwrap().to_string();
        b
    }

    /// Waits for a log line containing `needle`; returns it.
    fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self
                .log
                .lock()
                .unwrap()
                .lines()
                .find(|l| l.contains(needle))
            {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no broker log line with {needle:?} within {within:?}; log:\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
        }
    }

    fn log_count(&self, needle: &str) -> usize {
        self.log.lock().unwrap().matches(needle).count()
    }

    fn hup(&self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.0.id() as i32, libc::SIGHUP) };
    }
}

/// Runs `alaska-broker --keygen <dir>/<name>`; returns the public path.
fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = Command::cargo_bin("alaska-broker")
        .unwrap()
        .arg("--keygen")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("public key"));
    path
}

fn secret(public: &Path) -> PathBuf {
    alaska::curve::secret_path(public)
}

/// Keys of a CURVE setup made with the tool: the broker's, a worker's and
/// an app's (both allowed, their public certificates copied into
/// `clients/` as an operator would), and a stranger's (not allowed).
struct Keys {
    dir: PathBuf,
    broker: PathBuf,
    worker: PathBuf,
    app: PathBuf,
    stranger: PathBuf,
    impostor: PathBuf,
}

fn curve_keys(dir: &Path) -> Keys {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::create_dir_all(dir.join("clients")).unwrap();
    let k = Keys {
        dir: dir.to_path_buf(),
        broker: keygen(&keys, "broker"),
        worker: keygen(&keys, "worker"),
        app: keygen(&keys, "app"),
        stranger: keygen(&keys, "stranger"),
        impostor: keygen(&keys, "impostor"),
    };
    for (from, name) in [(&k.worker, "worker"), (&k.app, "app")] {
        std::fs::copy(from, dir.join("clients").join(name)).unwrap();
    }
    k
}

fn curve_broker_cfg(extra: &str) -> String {
    format!(
        "mlm_server\n    bind\n        endpoint = tcp://127.0.0.1:*\n    security\n        mechanism = curve\n        curve\n            certificate = keys/broker_secret\n            clients = clients\n{extra}"
    )
}

/// `alas` with `args`, `input` on stdin; (exit code, stdout, stderr).
fn alas(dir: &Path, args: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut child = Command::cargo_bin("alas")
        .unwrap()
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The child may exit before reading its input (a usage error does):
    // a closed pipe is its answer, not the test's failure.
    if let Err(e) = child.stdin.take().unwrap().write_all(input) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let mut child = Running(child);
    let status = wait_exit(&mut child.0, Duration::from_secs(30)).expect("alas ends");
    let mut out = String::new();
    let mut err = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), out, err)
}

/// An `alaska` worker binary offering `svc` on `endpoint`, with the echo
/// script and `extra` config lines; stderr to `<dir>/worker.log`.
fn worker_bin(dir: &Path, endpoint: &str, extra: &str) -> Running {
    let scripts = dir.join("services");
    std::fs::create_dir_all(&scripts).unwrap();
    script(&scripts, "echo", "return alaskaContext");
    std::fs::write(dir.join("alaska.cfg"), config(endpoint, &scripts, extra)).unwrap();
    let log = std::fs::File::create(dir.join("worker.log")).unwrap();
    Running(
        alaska(dir)
            .arg("--no-embedded-broker")
            .stderr(log)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn curve_worker_cfg(keys: &Keys, public: &Path) -> String {
    format!(
        "    auth\n        curve\n            certificate = \"{}\"\n            server = \"{}\"\n",
        secret(public).display(),
        keys.broker.display()
    )
}

// ----- CURVE through the binaries ------------------------------------------

#[test]
fn curve_round_trip_through_worker_producer_bench_and_broker_with_generated_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = curve_keys(tmp.path());
    // CURVE key names are the users of the ACL: "worker" may offer svc,
    // "app" may send to it.
    std::fs::write(
        tmp.path().join("acl.cfg"),
        "user\n    worker\n        open = \"*\"\n        offer = \"svc\"\n        mail = \"*\"\n    app\n        open = \"*\"\n        send = \"svc\"\n        mail = \"*\"\n",
    )
    .unwrap();
    let broker = BrokerProc::start(&keys.dir, &curve_broker_cfg("        acl = acl.cfg\n"));
    broker.wait_log("CURVE security", Duration::from_secs(5));
    let wdir = tmp.path().join("w");
    std::fs::create_dir_all(&wdir).unwrap();
    let _worker = worker_bin(
        &wdir,
        &broker.endpoint,
        &curve_worker_cfg(&keys, &keys.worker),
    );

    let cert = secret(&keys.app);
    let args = [
        "-e",
        &broker.endpoint,
        "-a",
        "svc",
        "-s",
        "echo",
        "--wait",
        "15",
        "-q",
        "--curve-cert",
        cert.to_str().unwrap(),
        "--curve-server",
        keys.broker.to_str().unwrap(),
    ];
    let (code, out, err) = alas(tmp.path(), &args, b"{\"secret\":\"over CURVE\"}\n");
    assert_eq!(code, 0, "alas: {err}\nworker: {}", worker_log(&wdir));
    assert_eq!(out, "{\"secret\":\"over CURVE\"}\n");

    // The same keys from the environment (files named there, never keys).
    let mut child = Command::cargo_bin("alas")
        .unwrap()
        .args([
            "-e",
            &broker.endpoint,
            "-a",
            "svc",
            "-s",
            "echo",
            "-w",
            "15",
            "-q",
        ])
        .env("ALAS_CURVE_CERT", &cert)
        .env("ALAS_CURVE_SERVER", &keys.broker)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"[1,2,3]\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"[1,2,3]\n");

    // alaska-bench as a CURVE producer against the CURVE worker.
    let out = Command::cargo_bin("alaska-bench")
        .unwrap()
        .args([
            "-e",
            &broker.endpoint,
            "-a",
            "svc",
            "-s",
            "echo",
            "-n",
            "50",
            "-w",
            "10",
            "--json",
            "--idle-timeout",
            "15",
        ])
        .arg("--curve-cert")
        .arg(&cert)
        .arg("--curve-server")
        .arg(&keys.broker)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\"received\":50,\"lost\":0"), "{text}");
}

fn worker_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("worker.log")).unwrap_or_default()
}

/// Runs the `alaska` worker until it exits (it must, on a refusal);
/// returns its exit code and log.
fn worker_fails(dir: &Path, endpoint: &str, extra: &str) -> (i32, String) {
    let mut w = worker_bin(dir, endpoint, extra);
    let status = wait_exit(&mut w.0, Duration::from_secs(30)).expect("the worker gives up");
    (status.code().unwrap_or(-1), worker_log(dir))
}

#[test]
fn wrong_broker_key_unknown_client_key_and_no_curve_each_fail_naming_the_cause() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = curve_keys(tmp.path());
    let broker = BrokerProc::start(&keys.dir, &curve_broker_cfg(""));
    let ep = broker.endpoint.clone();
    let base = ["-e", ep.as_str(), "-a", "svc", "-t", "5000"];

    // 1. Our key is allowed, but the broker key we were given is another.
    let cert = secret(&keys.app);
    let mut args = base.to_vec();
    args.extend([
        "--curve-cert",
        cert.to_str().unwrap(),
        "--curve-server",
        keys.impostor.to_str().unwrap(),
    ]);
    let (code, _, err) = alas(tmp.path(), &args, b"{}\n");
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("is not this broker's"), "{err}");
    assert!(!err.contains("unreachable"), "{err}");
    broker.wait_log("wrong broker public key", Duration::from_secs(5));

    // 2. The broker key is right, but ours is not allowed.
    let stranger = KeyPair::load(&secret(&keys.stranger)).unwrap();
    let cert = secret(&keys.stranger);
    let mut args = base.to_vec();
    args.extend([
        "--curve-cert",
        cert.to_str().unwrap(),
        "--curve-server",
        keys.broker.to_str().unwrap(),
    ]);
    let (code, _, err) = alas(tmp.path(), &args, b"{}\n");
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("refused our CURVE key"), "{err}");
    assert!(
        err.contains(&stranger.public.to_z85()),
        "names the key to allow: {err}"
    );
    let line = broker.wait_log("not an allowed client key", Duration::from_secs(5));
    assert!(line.contains(&stranger.public.to_z85()), "{line}");

    // 3. No CURVE at all against a CURVE broker.
    let (code, _, err) = alas(tmp.path(), &base, b"{}\n");
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("another security mechanism than ours (NULL): it uses CURVE"),
        "{err}"
    );
    broker.wait_log("does not use CURVE", Duration::from_secs(5));

    // And the reverse: CURVE against a broker without it.
    let null = common::broker();
    let cert = secret(&keys.app);
    let (code, _, err) = alas(
        tmp.path(),
        &[
            "-e",
            null.endpoint(),
            "-t",
            "5000",
            "--curve-cert",
            cert.to_str().unwrap(),
            "--curve-server",
            keys.broker.to_str().unwrap(),
        ],
        b"{}\n",
    );
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("another security mechanism than ours (CURVE): it uses NULL"),
        "{err}"
    );

    // The same three, told by the worker binary.
    let cases = [
        (
            format!(
                "    auth\n        curve\n            certificate = \"{}\"\n            server = \"{}\"\n",
                secret(&keys.worker).display(),
                keys.impostor.display()
            ),
            "is not this broker's",
        ),
        (curve_worker_cfg(&keys, &keys.stranger), "refused our CURVE key"),
        (
            String::new(),
            "another security mechanism than ours (NULL): it uses CURVE",
        ),
    ];
    for (i, (extra, cause)) in cases.iter().enumerate() {
        let wdir = tmp.path().join(format!("w{i}"));
        std::fs::create_dir_all(&wdir).unwrap();
        let (code, log) = worker_fails(&wdir, &ep, extra);
        assert_eq!(code, 1, "{log}");
        assert!(log.contains(cause), "worker {i}: {log}");
    }
    // Each refusal was logged by the broker once per attempt, at least.
    assert!(broker.log_count("wrong broker public key") >= 2);
    assert!(broker.log_count("not an allowed client key") >= 2);
    assert!(broker.log_count("does not use CURVE") >= 2);
}

#[test]
fn sighup_reloads_the_allowed_client_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = curve_keys(tmp.path());
    let broker = BrokerProc::start(&keys.dir, &curve_broker_cfg(""));
    let connect = || {
        let mut o = ClientOptions::new(&broker.endpoint, "");
        o.timeout = Duration::from_secs(3);
        o.curve = Some(CurveClientKeys::load(&secret(&keys.stranger), &keys.broker).unwrap());
        Client::connect(o)
    };
    assert!(matches!(
        connect(),
        Err(ClientError::UnknownClientKey { .. })
    ));
    std::fs::copy(&keys.stranger, keys.dir.join("clients/stranger")).unwrap();
    broker.hup();
    broker.wait_log("allowed CURVE client keys reloaded", Duration::from_secs(5));
    connect().expect("allowed after the reload");
    // A broken key file on reload keeps the keys in use.
    std::fs::write(
        keys.dir.join("clients/broken"),
        "curve\n    public-key = \"short\"\n",
    )
    .unwrap();
    broker.hup();
    broker.wait_log("client keys not reloaded", Duration::from_secs(5));
    connect().expect("still allowed");
}

// ----- what crosses the wire ----------------------------------------------

/// A TCP relay between a client and the broker that records every byte it
/// forwards, both ways: what anyone on the path between them could read.
struct Relay {
    port: u16,
    bytes: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(to: &str) -> Relay {
        let target = to.trim_start_matches("tcp://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (rec, flag) = (bytes.clone(), stop.clone());
        std::thread::Builder::new()
            .name("test-relay".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let Ok((client, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(10)); // non-blocking accept: the relay polls its stop flag
                        continue;
                    };
                    client.set_nonblocking(false).unwrap();
                    let server = TcpStream::connect(&target).unwrap();
                    for (from, to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        let (rec, flag) = (rec.clone(), flag.clone());
                        std::thread::Builder::new()
                            .name("test-relay-copy".into())
                            .spawn(move || copy(from, to, &rec, &flag))
                            .unwrap();
                    }
                }
            })
            .unwrap();
        Relay { port, bytes, stop }
    }

    fn endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn seen(&self, needle: &[u8]) -> bool {
        self.bytes
            .lock()
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream, rec: &Mutex<Vec<u8>>, stop: &AtomicBool) {
    from.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                rec.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// One request and its reply between a producer that goes through a relay
/// and an echo worker, with CURVE or without; returns whether the relay
/// saw the request's bytes.
fn run_through_relay(curve: bool) -> bool {
    const SECRET: &[u8] = b"{\"card\":\"4111-1111-1111-1111\",\"pin\":\"8842\"}";
    let broker_keys = KeyPair::generate().unwrap();
    let producer_keys = KeyPair::generate().unwrap();
    let worker_keys = KeyPair::generate().unwrap();
    let broker = broker_with(|c| {
        if curve {
            let mut clients = AllowedKeys::default();
            clients.insert("producer", producer_keys.public);
            clients.insert("worker", worker_keys.public);
            c.curve = Some(CurveServer {
                keys: broker_keys.clone(),
                clients,
                clients_path: None,
            });
        }
    });
    let relay = Relay::start(broker.endpoint());
    let opts = |endpoint: &str, name: &str, keys: &KeyPair| {
        let mut o = ClientOptions::new(endpoint, name);
        o.timeout = Duration::from_secs(5);
        o.heartbeat = Duration::from_millis(200);
        if curve {
            o.curve = Some(CurveClientKeys {
                client: keys.clone(),
                server: broker_keys.public,
            });
        }
        o
    };
    let mut worker = Client::connect(opts(broker.endpoint(), "echo-w", &worker_keys)).unwrap();
    worker.set_worker("svc", ".*").unwrap();
    let mut producer =
        Client::connect(opts(&relay.endpoint(), "producer", &producer_keys)).unwrap();
    producer
        .sendfor("svc", "echo", "t1", 0, vec![SECRET.to_vec()])
        .unwrap();
    let req = expect(&mut worker, DeliveryKind::Service, Duration::from_secs(5));
    assert_eq!(req.content, vec![SECRET.to_vec()]);
    worker
        .sendto(&req.sender, &req.subject, &req.tracker, 0, req.content)
        .unwrap();
    let reply = expect(&mut producer, DeliveryKind::Mailbox, Duration::from_secs(5));
    assert_eq!(reply.content, vec![SECRET.to_vec()], "the run went through");
    assert!(
        relay.bytes.lock().unwrap().len() > SECRET.len(),
        "the relay carried the traffic"
    );
    relay.seen(SECRET) || relay.seen(b"4111-1111")
}

#[test]
fn curve_traffic_carries_none_of_the_requests_bytes_while_null_does() {
    assert!(
        run_through_relay(false),
        "without CURVE the request crosses the wire in clear (else this check proves nothing)"
    );
    assert!(
        !run_through_relay(true),
        "with CURVE no byte sequence of the request is on the wire"
    );
}

// ----- authorization (the broker binary, PLAIN users) ----------------------

const ACL: &str = "\
user
    app
        open = \"app-*\"
        send = \"svc default\"
        mail = \"*\"
    worker
        open = \"w-*\"
        offer = \"svc\"
        write = \"aw.res\"
        mail = \"*\"
    worker2
        open = \"w-*\"
        offer = \"svc\"
    ops
        open = \"awerr ops-*\"
        read = \"aw.*\"
        mail = \"*\"
";

fn acl_broker(dir: &Path, acl: &str) -> BrokerProc {
    std::fs::write(
        dir.join("passwords.cfg"),
        "app=a\nworker=w\nworker2=w2\nops=o\n",
    )
    .unwrap();
    std::fs::write(dir.join("acl.cfg"), acl).unwrap();
    BrokerProc::start(
        dir,
        "server\n    auth\n        plain = passwords.cfg\nmlm_server\n    bind\n        endpoint = tcp://127.0.0.1:*\n    security\n        mechanism = plain\n        acl = acl.cfg\n",
    )
}

fn as_user(endpoint: &str, user: &str, address: &str) -> Result<Client, ClientError> {
    let mut o = ClientOptions::new(endpoint, address);
    o.timeout = Duration::from_secs(3);
    o.heartbeat = Duration::from_millis(200);
    o.plain = Some(Credentials {
        username: user.into(),
        password: match user {
            "app" => "a",
            "worker" => "w",
            "worker2" => "w2",
            _ => "o",
        }
        .into(),
    });
    Client::connect(o)
}

fn denied(r: Result<(), ClientError>, what: &str) {
    match r {
        Err(ClientError::Refused { status, .. }) => {
            assert_eq!(status.code, 300);
            assert_eq!(status.reason, format!("access denied: may not {what}"));
        }
        other => panic!("{what}: expected an access-denied ERROR, got {other:?}"),
    }
}

#[test]
fn a_user_without_the_right_cannot_open_awerr_offer_default_or_read_a_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let b = acl_broker(tmp.path(), ACL);
    let ep = b.endpoint.as_str();

    // Opening the error mailbox.
    match as_user(ep, "app", "awerr") {
        Err(ClientError::Refused { status, .. }) => {
            assert_eq!(status.reason, "access denied: may not open address awerr")
        }
        other => panic!("app opened awerr: {:?}", other.map(|_| ())),
    }
    b.wait_log(
        "access denied: user \"app\" may not open address awerr",
        Duration::from_secs(5),
    );
    let mut ops = as_user(ep, "ops", "awerr").expect("ops may open awerr");

    // Offering a service it may not: refused, still connected, and the
    // refused offer left nothing behind.
    let mut app = as_user(ep, "app", "app-1").unwrap();
    denied(app.set_worker("default", ".*"), "offer service default");
    b.wait_log(
        "user \"app\" may not offer service default",
        Duration::from_secs(5),
    );
    let mut app2 = as_user(ep, "app", "app-2").unwrap();
    app2.sendfor("default", "x", "", 0, vec![b"for default".to_vec()])
        .unwrap();
    expect_none(&mut app, DeliveryKind::Service, Duration::from_millis(500));

    // Reading a stream it may not; ops may, and gets what is written.
    denied(app.set_consumer("aw.res", ".*"), "read stream aw.res");
    b.wait_log(
        "user \"app\" may not read stream aw.res",
        Duration::from_secs(5),
    );
    ops.set_consumer("aw.res", ".*").unwrap();
    let mut w = as_user(ep, "worker", "w-1").unwrap();
    w.set_producer("aw.res").unwrap();
    w.send("result", vec![b"r1".to_vec()]).unwrap();
    let d = expect(&mut ops, DeliveryKind::Stream, Duration::from_secs(5));
    assert_eq!(d.content, vec![b"r1".to_vec()]);
    expect_none(&mut app, DeliveryKind::Stream, Duration::from_millis(300));

    // Allowed actions still work: app's request reaches the worker and the
    // reply comes back; app (refused twice) is still connected.
    w.set_worker("svc", ".*").unwrap();
    app.sendfor("svc", "echo", "t", 0, vec![b"hello".to_vec()])
        .unwrap();
    let req = expect(&mut w, DeliveryKind::Service, Duration::from_secs(5));
    w.sendto(&req.sender, "echo", "t", 0, req.content).unwrap();
    let reply = expect(&mut app, DeliveryKind::Mailbox, Duration::from_secs(5));
    assert_eq!(reply.content, vec![b"hello".to_vec()]);
}

#[test]
fn refused_sends_are_typed_and_nothing_is_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    let b = acl_broker(tmp.path(), ACL);
    let ep = b.endpoint.as_str();
    let mut w = as_user(ep, "worker", "w-1").unwrap();
    w.set_worker("svc", ".*").unwrap();
    // The worker may not send requests at all, nor write another stream.
    w.sendfor("svc", "x", "", 0, vec![b"from worker".to_vec()])
        .unwrap();
    match w.wait(None, Duration::from_secs(5)).unwrap() {
        Wait::Refused(r) => assert_eq!(
            r.kind,
            RefusalKind::AccessDenied {
                target: "service",
                name: "svc".into()
            }
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    expect_none(&mut w, DeliveryKind::Service, Duration::from_millis(300));
    denied(w.set_producer("other"), "write stream other");
    b.wait_log(
        "user \"worker\" may not send to service svc",
        Duration::from_secs(5),
    );
    // ops may mail but not send requests: alas says so with exit 9.
    let (code, _, err) = alas(
        tmp.path(),
        &[
            "-e", ep, "-a", "svc", "-u", "ops", "-p", "o", "-q", "--name", "ops-1",
        ],
        b"{}\n",
    );
    assert_eq!(code, 9, "{err}");
    assert!(
        err.contains("access denied: may not send to service svc"),
        "{err}"
    );
    expect_none(&mut w, DeliveryKind::Service, Duration::from_millis(300));
}

#[test]
fn only_the_same_user_may_take_over_an_address() {
    let tmp = tempfile::tempdir().unwrap();
    let b = acl_broker(tmp.path(), ACL);
    let ep = b.endpoint.as_str();
    let mut w1 = as_user(ep, "worker", "w-1").unwrap();
    w1.set_worker("svc", ".*").unwrap();
    // worker2 may open w-* addresses, but w-1 is held by "worker".
    match as_user(ep, "worker2", "w-1") {
        Err(ClientError::Refused { status, .. }) => assert!(
            status.reason.contains("held by another user"),
            "{}",
            status.reason
        ),
        other => panic!("worker2 took over w-1: {:?}", other.map(|_| ())),
    }
    b.wait_log(
        "user \"worker2\" may not take over address w-1",
        Duration::from_secs(5),
    );
    // w1 was not touched: it still gets its requests and mail.
    let mut app = as_user(ep, "app", "app-1").unwrap();
    app.sendto("w-1", "hi", "", 0, vec![b"mail".to_vec()])
        .unwrap();
    let d = expect(&mut w1, DeliveryKind::Mailbox, Duration::from_secs(5));
    assert_eq!(d.content, vec![b"mail".to_vec()]);
    // The same user takes it over (a restarted worker): allowed.
    w1.abort();
    let mut again = as_user(ep, "worker", "w-1").expect("same user takes over");
    app.sendto("w-1", "hi", "", 0, vec![b"mail 2".to_vec()])
        .unwrap();
    let d = expect(&mut again, DeliveryKind::Mailbox, Duration::from_secs(5));
    assert_eq!(d.content, vec![b"mail 2".to_vec()]);
}

#[test]
fn sighup_reloads_the_acl_and_a_broken_file_keeps_the_old_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let mut b = acl_broker(tmp.path(), ACL);
    let ep = b.endpoint.clone();
    let mut app = as_user(&ep, "app", "app-1").unwrap();
    denied(app.set_worker("default", ".*"), "offer service default");

    let granted = ACL.replace(
        "        send = \"svc default\"\n",
        "        send = \"svc default\"\n        offer = \"default\"\n",
    );
    std::fs::write(tmp.path().join("acl.cfg"), &granted).unwrap();
    b.hup();
    b.wait_log("ACL reloaded", Duration::from_secs(5));
    // Later commands get the new rules, on a connection opened before.
    app.set_worker("default", ".*")
        .expect("allowed after reload");

    std::fs::write(
        tmp.path().join("acl.cfg"),
        "user\n    app\n        offer = \"default\"\n        frobnicate = \"*\"\n",
    )
    .unwrap();
    b.hup();
    let line = b.wait_log("ACL not reloaded", Duration::from_secs(5));
    assert!(line.contains("line 4"), "{line}");
    // The rules in force are still the granted ones: app may still offer
    // default (the broken file would have allowed it too, but not open).
    let mut app2 = as_user(&ep, "app", "app-2").expect("open still allowed");
    app2.set_worker("default", ".*").unwrap();
    assert!(matches!(
        as_user(&ep, "app", "awerr"),
        Err(ClientError::Refused { .. })
    ));
    assert!(b.child.0.try_wait().unwrap().is_none(), "still running");
}

#[test]
fn an_acl_syntax_error_stops_the_broker_naming_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("acl.cfg"),
        "user\n    app\n        open = \"*\"\n    bob\n        offre = \"svc\"\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("broker.cfg"),
        "mlm_server\n    bind\n        endpoint = tcp://127.0.0.1:*\n    security\n        acl = acl.cfg\n",
    )
    .unwrap();
    let out = Command::cargo_bin("alaska-broker")
        .unwrap()
        .current_dir(tmp.path())
        .arg("broker.cfg")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("acl.cfg: line 5"), "{err}");
    assert!(err.contains("offre"), "{err}");
}

// ----- dropping privileges ---------------------------------------------------

/// Ids in a `/proc/<pid>/task/<tid>/status` line ("Uid:", "Gid:",
/// "Groups:").
fn ids(status: &str, key: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn account_exists(kind: &str, name: &str) -> bool {
    Command::new("getent")
        .args([kind, name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The worker's threads' ids once it has switched: (uids, gids, groups)
/// over every thread.
fn ids_after_switch(pid: u32) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if !ids(&status, "Uid:").is_empty() && !ids(&status, "Uid:").contains(&0) {
            break;
        }
        assert!(Instant::now() < deadline, "the worker never switched user");
        std::thread::sleep(Duration::from_millis(50)); // bounded poll of /proc
    }
    // Then every thread, the ones started before the switch included.
    wait_until(
        Duration::from_secs(20),
        "every thread to switch user",
        || {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .all(|t| {
                    let s = std::fs::read_to_string(t.unwrap().path().join("status"))
                        .unwrap_or_default();
                    !ids(&s, "Uid:").contains(&0)
                })
        },
    );
    let (mut u, mut g, mut gr) = (Vec::new(), Vec::new(), Vec::new());
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let s = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        // No capability left either: root cannot be had back.
        for cap in ["CapEff:", "CapPrm:"] {
            let v = s.lines().find_map(|l| l.strip_prefix(cap)).unwrap_or("?");
            assert_eq!(u64::from_str_radix(v.trim(), 16).ok(), Some(0), "{cap} {v}");
        }
        u.extend(ids(&s, "Uid:"));
        g.extend(ids(&s, "Gid:"));
        gr.extend(ids(&s, "Groups:"));
    }
    (u, g, gr)
}

#[test]
fn a_worker_started_as_root_keeps_no_root_uid_gid_or_group() {
    // SAFETY: reads our own effective uid.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: not root");
        return;
    }
    if !account_exists("passwd", "nobody") {
        println!("skipped: no user nobody");
        return;
    }
    let b = broker();
    let tmp = tempfile::tempdir().unwrap();
    // The worker reads its scripts as nobody.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    // User alone: its primary group, its own supplementary groups.
    let w = worker_bin(tmp.path(), b.endpoint(), "    user = \"nobody\"\n");
    let (uids, gids, groups) = ids_after_switch(w.0.id());
    let nobody = 65534;
    assert!(uids.iter().all(|&u| u == nobody), "uids {uids:?}");
    assert!(!gids.contains(&0), "gids {gids:?} (root's group kept)");
    assert!(
        !groups.contains(&0),
        "groups {groups:?} (root's groups kept)"
    );
    let mut c = client(b.endpoint(), "p");
    let d = request(&mut c, "echo", b"as nobody", Duration::from_secs(10));
    assert_eq!(d.content, vec![b"as nobody".to_vec()]);
    drop(w);

    // User and group.
    if account_exists("group", "daemon") {
        let dir2 = tmp.path().join("two");
        std::fs::create_dir_all(&dir2).unwrap();
        std::fs::set_permissions(&dir2, std::fs::Permissions::from_mode(0o755)).unwrap();
        let w = worker_bin(
            &dir2,
            b.endpoint(),
            "    user = \"nobody\"\n    group = \"daemon\"\n",
        );
        let daemon_gid: u32 = String::from_utf8(
            Command::new("getent")
                .args(["group", "daemon"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .unwrap();
        let (uids, gids, groups) = ids_after_switch(w.0.id());
        assert!(uids.iter().all(|&u| u == nobody), "uids {uids:?}");
        assert!(gids.iter().all(|&g| g == daemon_gid), "gids {gids:?}");
        assert!(!groups.contains(&0), "groups {groups:?}");
    }
}

/// `alaska-broker --keygen keys/broker` as the README shows it, in a folder
/// without `keys/`: the folder is made (owner only), both files written.
#[test]
fn keygen_makes_the_missing_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("alaska-broker")
        .unwrap()
        .current_dir(dir.path())
        .args(["--keygen", "keys/broker"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("keys/broker").is_file());
    assert!(dir.path().join("keys/broker_secret").is_file());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("keys"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "keys/ open to others: {mode:o}");
}
