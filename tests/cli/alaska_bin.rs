//! The real `alaska` binary: configuration file handling, --check, the
//! embedded broker, graceful stop on SIGTERM, background mode.

use crate::common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alaska::mlm::DeliveryKind;
use assert_cmd::cargo::CommandCargoExt;
use common::bin::*;
use common::*;

#[test]
fn check_writes_nothing_and_a_missing_file_given_with_c_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = alaska(dir.path()).args(["--check"]).output().unwrap();
    assert!(
        !dir.path().join("alaska.cfg").exists(),
        "--check wrote a file"
    );
    // The defaults are checked: their scripts folder does not exist here.
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("nothing written"), "{said}");
    assert!(said.contains("cannot read the scripts folder"), "{said}");
    // A typo with -c: an error, and nothing created, with or without --check.
    for args in [
        vec!["-c", "alsaka.cfg", "--check"],
        vec!["-c", "alsaka.cfg", "-f"],
    ] {
        let out = alaska(dir.path()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("alsaka.cfg: no such file"), "{args:?}: {err}");
        assert!(
            !dir.path().join("alsaka.cfg").exists(),
            "{args:?} created the file"
        );
    }
}

/// A plain start without -c creates alaska.cfg with the defaults, as the
/// original did, and says so in the log.
#[test]
fn a_plain_start_without_c_creates_the_default_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("services")).unwrap();
    script(&dir.path().join("services"), "echo", "return 1");
    let log_file = dir.path().join("stderr.log");
    let mut w = Running(
        alaska(dir.path())
            .arg("-f")
            .env("ALASKA_WORKER__BROKER__ENDPOINT", free_endpoint())
            .stderr(std::fs::File::create(&log_file).unwrap())
            .spawn()
            .unwrap(),
    );
    let file = dir.path().join("alaska.cfg");
    // Ready (signal handlers in place, the file written and said): a
    // SIGTERM before the handlers would end it unlogged.
    wait_file(
        &log_file,
        "ready:",
        Duration::from_secs(30),
        "the worker was not ready",
    );
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(w.0.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(&mut w.0, Duration::from_secs(15)).is_some());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        alaska::config::DEFAULT_CONFIG
    );
    assert!(std::fs::read_to_string(&log_file)
        .unwrap()
        .contains("alaska.cfg was missing: created it with the defaults"));
}

#[test]
fn bad_values_stop_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("alaska.cfg"),
        "worker\n    pool\n        size = \"lots\"\n",
    )
    .unwrap();
    let out = alaska(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("worker/pool/size") && err.contains("lots"),
        "{err}"
    );
    // An environment override is checked the same way.
    std::fs::write(dir.path().join("alaska.cfg"), "worker\n").unwrap();
    let out = alaska(dir.path())
        .env("ALASKA_WORKER__LUA__MEMORY", "plenty")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("worker/lua/memory"));
}

#[test]
fn check_compiles_every_script_and_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("services");
    std::fs::create_dir_all(&scripts).unwrap();
    script(&scripts, "good", "return 1");
    script(&scripts, "broken", "local a = 1\nlocal b = (\n");
    std::fs::write(
        dir.path().join("alaska.cfg"),
        config("tcp://127.0.0.1:1", &scripts, ""),
    )
    .unwrap();
    let out = alaska(dir.path()).arg("--check").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("broken.lua") && text.contains(":3:"),
        "{text}"
    );
    assert!(!text.contains("good.lua"), "{text}");
    std::fs::remove_file(scripts.join("broken.lua")).unwrap();
    let out = alaska(dir.path()).arg("--check").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn embedded_broker_serves_alas_and_sigterm_finishes_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("services");
    std::fs::create_dir_all(&scripts).unwrap();
    let marks = scripts.display().to_string();
    script(
        &scripts,
        "slow",
        &format!(
            "io.open('{marks}/' .. alaskaContext .. '.mark', 'w'):close()\n\
             alaska.sleep(500)\nreturn 'done ' .. alaskaContext"
        ),
    );
    script(&scripts, "echo", "return alaskaContext");
    let endpoint = free_endpoint();
    std::fs::write(
        dir.path().join("alaska.cfg"),
        config(&endpoint, &scripts, ""),
    )
    .unwrap();
    let mut child = Running(
        alaska(dir.path())
            .arg("--embedded-broker")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // alas against the embedded broker: one command ran everything.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        let out = Command::cargo_bin("alas")
            .unwrap()
            .args([
                "-e", &endpoint, "-a", "svc", "-s", "echo", "--wait", "2", "-q",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(b"{\"hello\":1}\n")?;
                c.wait_with_output()
            })
            .unwrap();
        if out.status.success() {
            break out.stdout;
        }
        assert!(Instant::now() < deadline, "alaska never answered");
    };
    assert_eq!(reply, b"{\"hello\":1}\n");
    let mut p = client(&endpoint, "producer");
    for i in 0..4 {
        p.sendfor("svc", "slow", "t", 0, vec![format!("{i}").into_bytes()])
            .unwrap();
    }
    // All four on a VM: in flight when SIGTERM comes.
    wait_marks(&scripts, &["0", "1", "2", "3"], Duration::from_secs(10));
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let mut got: Vec<Vec<u8>> = (0..4)
        .map(|_| expect(&mut p, DeliveryKind::Mailbox, Duration::from_secs(10)).content[0].clone())
        .collect();
    got.sort();
    let want: Vec<Vec<u8>> = (0..4).map(|i| format!("done {i}").into_bytes()).collect();
    assert_eq!(got, want);
    let status =
        wait_exit(&mut child.0, Duration::from_secs(10)).expect("alaska exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn background_mode_detaches_and_holds_the_lock_file() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("services");
    std::fs::create_dir_all(&scripts).unwrap();
    let lock = dir.path().join("alaska.pid");
    let b = broker();
    let extra = format!(
        "    background = \"1\"\n    workdir = \"{}\"\n    lockfile = \"{}\"\n",
        dir.path().display(),
        lock.display()
    );
    std::fs::write(
        dir.path().join("alaska.cfg"),
        config(b.endpoint(), &scripts, &extra),
    )
    .unwrap();
    let status = alaska(dir.path())
        .args(["--no-embedded-broker"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the parent returns at once");
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "no pid in the lock file");
        std::thread::sleep(Duration::from_millis(50)); // bounded poll (deadline above)
    };
    // The daemon serves, and a second worker with the same lock refuses.
    script(&scripts, "echo", "return alaskaContext");
    let mut p = client(b.endpoint(), "producer");
    let r = request(&mut p, "echo", b"from the daemon", Duration::from_secs(10));
    assert_eq!(r.content, vec![b"from the daemon".to_vec()]);
    let second = alaska(dir.path())
        .args(["-f", "--no-embedded-broker"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("held by another process"));
    // SAFETY: stopping the daemon we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(Instant::now() < deadline, "daemon did not stop");
        std::thread::sleep(Duration::from_millis(50)); // bounded poll (deadline above)
    }
}

#[test]
fn help_texts_explain_the_binaries() {
    for (bin, needle) in [
        ("alaska", "--foreground"),
        ("alaska-broker", "--config"),
        ("alas", "--wait"),
        ("alaska-bench", "--echo-worker"),
    ] {
        let out = Command::cargo_bin(bin)
            .unwrap()
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{bin}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(needle),
            "{bin}"
        );
    }
}

#[test]
fn verbose_logs_each_request_and_syslog_mode_runs() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("services");
    std::fs::create_dir_all(&scripts).unwrap();
    script(&scripts, "echo", "return alaskaContext");
    let b = broker();
    // verbose = 1: one log line per request, with subject, sender and size.
    let extra = "    verbose = \"1\"\n";
    std::fs::write(
        dir.path().join("alaska.cfg"),
        config(b.endpoint(), &scripts, extra),
    )
    .unwrap();
    let mut child = Running(
        alaska(dir.path())
            .args(["--no-embedded-broker"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut p = client(b.endpoint(), "verbose-producer");
    let r = request(&mut p, "echo", b"12345", Duration::from_secs(10));
    assert_eq!(r.content, vec![b"12345".to_vec()]);
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child.0, Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0));
    let log = child.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains("request") && l.contains("subject=echo"))
        .unwrap_or_else(|| panic!("no request line in:\n{log}"));
    assert!(
        line.contains("sender=verbose-producer") && line.contains("size=5"),
        "{line}"
    );
    assert!(log.contains("ready: 4 Lua VMs"), "{log}");

    // syslog = 1: the log goes to syslog(3), not stderr; the worker runs.
    let extra = "    syslog = \"1\"\n";
    std::fs::write(
        dir.path().join("alaska.cfg"),
        config(b.endpoint(), &scripts, extra),
    )
    .unwrap();
    let mut child = Running(
        alaska(dir.path())
            .args(["--no-embedded-broker"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let r = request(&mut p, "echo", b"via syslog", Duration::from_secs(10));
    assert_eq!(r.content, vec![b"via syslog".to_vec()]);
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child.0, Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0));
    let log = child.stderr_text();
    if std::path::Path::new("/dev/log").exists() {
        assert!(
            !log.contains("ready"),
            "logged to stderr despite syslog: {log}"
        );
    } else {
        // No syslog here: stderr, with the reason (the next test).
        assert!(log.contains("logging to stderr instead"), "{log}");
    }
}

/// Starts a worker on its own broker with `body` as script `stuck`, sends
/// it one request (pool of 1, shutdown timeout 1 s, a budget far longer),
/// then SIGTERM: the process must be gone within the shutdown timeout plus
/// 2 s, whatever the VM is doing.
fn sigterm_with_a_stuck_vm(body: &str) -> (std::process::ExitStatus, Duration, String) {
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    // The script says when it is in its loop: SIGTERM then finds the VM
    // busy, which is what the callers test.
    script(
        dir.path(),
        "stuck",
        &format!("print('stuck: entered')\n{body}"),
    );
    std::fs::write(
        dir.path().join("w.cfg"),
        config(
            b.endpoint(),
            dir.path(),
            "    pool\n        size = \"1\"\n    lua\n        timeout = \"60s\"\n    shutdown\n        timeout = \"1s\"\n    verbose = \"1\"\n",
        ),
    )
    .unwrap();
    let log = dir.path().join("w.log");
    let mut child = Running(
        alaska(dir.path())
            .args(["-f", "--no-embedded-broker", "-c", "w.cfg"])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut p = client(b.endpoint(), "producer");
    p.sendfor("svc", "stuck", "t", 0, vec![b"x".to_vec()])
        .unwrap();
    wait_file(
        &log,
        "stuck: entered",
        Duration::from_secs(10),
        "the request never started",
    );
    let asked = Instant::now();
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child.0, Duration::from_secs(10))
        .expect("alaska exits after SIGTERM whatever its VM does");
    (
        status,
        asked.elapsed(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

#[test]
fn sigterm_ends_a_worker_whose_vm_is_wedged_in_lua() {
    // The budget is 60 s; the stop cuts the request at the shutdown
    // timeout, hands it back to the broker, and ends cleanly.
    let (status, took, log) = sigterm_with_a_stuck_vm("while true do end");
    assert!(took < Duration::from_secs(3), "took {took:?}\n{log}");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("shutdown timeout ran out"), "{log}");
    assert!(log.contains("returned to the broker"), "{log}");
}

#[test]
fn sigterm_ends_a_worker_whose_vm_is_stuck_in_a_c_call() {
    // A pattern match that backtracks 2^40 times: no hook runs inside it.
    let (status, took, log) = sigterm_with_a_stuck_vm(
        "return string.find(string.rep('a', 40), string.rep('a?', 40) .. string.rep('a', 40) .. 'b')",
    );
    assert!(took < Duration::from_secs(3), "took {took:?}\n{log}");
    assert!(status.code().is_some(), "{status:?}");
    assert!(log.contains("did not finish"), "{log}");
}

#[test]
fn sethook_in_a_script_cannot_wedge_a_worker() {
    // The escape of the old sandbox: with a pool of one, the worker served
    // nothing again and SIGTERM never ended it.
    let (status, took, log) = sigterm_with_a_stuck_vm("debug.sethook(); while true do end");
    assert!(took < Duration::from_secs(3), "took {took:?}\n{log}");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("attempt to call a nil value (field 'sethook')"),
        "{log}"
    );
}

/// Durations that pass a parse but no clock can hold (or that make no
/// sense) are refused where they are read, naming the key: `--check` exits
/// 2 instead of a worker that panics at its first stop or retry.
#[test]
fn huge_or_zero_durations_fail_check_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("services")).unwrap();
    script(&dir.path().join("services"), "echo", "return 1");
    for (section, key, value) in [
        ("shutdown", "timeout", "1.8e19s"),
        ("retry", "backoff", "1e15s"),
        ("retry", "backoff_max", "1e15s"),
        ("lua", "timeout", "0"),
        ("lua", "timeout", "400000000m"),
        ("broker", "timeout", "0"),
    ] {
        std::fs::write(
            dir.path().join("alaska.cfg"),
            format!("worker\n    {section}\n        {key} = \"{value}\"\n"),
        )
        .unwrap();
        let out = alaska(dir.path()).arg("--check").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{section}/{key} = {value}: {err}"
        );
        assert!(
            err.contains(&format!("worker/{section}/{key}")),
            "{section}/{key} = {value}: {err}"
        );
    }
}

/// The broker and the gateway refuse such durations at start too.
#[test]
fn broker_and_gateway_refuse_durations_beyond_a_year() {
    let dir = tempfile::tempdir().unwrap();
    for (key, text) in [
        (
            "server/timeout",
            "server\n    timeout = 99999999999999999\n",
        ),
        (
            "mlm_server/mailbox/expiry",
            "mlm_server\n    mailbox\n        expiry = 18446744073709551615\n",
        ),
    ] {
        let cfg = dir.path().join("broker.cfg");
        std::fs::write(&cfg, text).unwrap();
        let out = Command::cargo_bin("alaska-broker")
            .unwrap()
            .arg("-c")
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}: {err}");
        assert!(
            err.contains(key) && err.contains("one year"),
            "{key}: {err}"
        );
    }
    let cfg = dir.path().join("gateway.cfg");
    std::fs::write(
        &cfg,
        "gateway\n    request\n        timeout = \"1.8e19s\"\n",
    )
    .unwrap();
    let out = Command::cargo_bin("alaska-gateway")
        .unwrap()
        .arg("-c")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("gateway/request/timeout"), "{err}");
}

/// A subject filter the broker would refuse is an error at start and in
/// `--check` (exit 2 naming the key), not a worker that says "ready" and
/// serves nothing.
#[test]
fn an_invalid_filter_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("services")).unwrap();
    script(&dir.path().join("services"), "echo", "return 1");
    std::fs::write(
        dir.path().join("alaska.cfg"),
        "worker\n    service\n        filter = \"(\"\n",
    )
    .unwrap();
    for args in [vec!["--check"], vec!["-f", "--no-embedded-broker"]] {
        let mut c = alaska(dir.path());
        c.args(&args);
        let out = c.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("worker/service/filter"), "{args:?}: {err}");
    }
}

/// `print` goes to the worker's log (stderr here; syslog in the
/// background) tagged with the script, and a script written for the
/// original (Penlight's pretty-printer, from Debian's lua-penlight, found
/// on the system's Lua path with no configuration) runs as it is.
#[test]
fn print_reaches_the_log_and_penlight_loads_from_the_system() {
    if !std::path::Path::new("/usr/share/lua/5.4/pl/pretty.lua").exists() {
        println!("skipped: Debian's lua-penlight is not installed (apt install lua-penlight)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("services");
    std::fs::create_dir_all(&scripts).unwrap();
    // The original's dump service, in its shape: a ruler, the decoded
    // context through Penlight, a ruler.
    script(
        &scripts,
        "pldump",
        "local ruler = string.rep('-', 80)\n\
         print(ruler .. '\\nContext dump from Lua:')\n\
         local ctx = require 'cjson'.decode(alaskaContext)\n\
         require 'pl.pretty'.dump(ctx)\n\
         print(ruler)\n\
         return 'dumped'",
    );
    let endpoint = free_endpoint();
    std::fs::write(
        dir.path().join("alaska.cfg"),
        config(
            &endpoint,
            &scripts,
            "    broker\n        embedded = \"1\"\n",
        ),
    )
    .unwrap();
    let mut worker = Running(
        alaska(dir.path())
            .arg("-f")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The embedded broker binds as the worker starts: connect once it does.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut p = loop {
        let mut o = alaska::mlm::ClientOptions::new(&endpoint, "producer");
        o.timeout = Duration::from_secs(2);
        match alaska::mlm::Client::connect(o) {
            Ok(c) => break c,
            Err(e) => assert!(Instant::now() < deadline, "no broker: {e}"),
        }
    };
    let d = request(
        &mut p,
        "pldump",
        b"{\"answer\":42,\"list\":[1,2]}",
        Duration::from_secs(10),
    );
    assert_eq!(d.content, vec![b"dumped".to_vec()]);
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(worker.0.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(&mut worker.0, Duration::from_secs(15)).is_some());
    let log = worker.stderr_text();
    assert!(log.contains("Context dump from Lua:"), "{log}");
    assert!(
        log.contains("answer = 42") && log.contains("script=pldump"),
        "{log}"
    );
}

/// Background mode reports a failed start: the launching command exits
/// non-zero with the reason on stderr (it exited 0 and said nothing).
#[test]
fn a_failed_background_start_exits_non_zero_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("services")).unwrap();
    script(&dir.path().join("services"), "echo", "return 1");
    let scripts = dir.path().join("services");
    let endpoint = free_endpoint();
    let base = config(&endpoint, &scripts, "");
    let cases = [
        (
            "    background = \"1\"\n    workdir = \"/no/such/folder\"\n",
            "worker/workdir",
        ),
        (
            "    background = \"1\"\n    user = \"no-such-user-here\"\n",
            "no such user",
        ),
    ];
    for (extra, said) in cases {
        std::fs::write(
            dir.path().join("alaska.cfg"),
            base.replacen("worker\n", &format!("worker\n{extra}"), 1),
        )
        .unwrap();
        let out = alaska(dir.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: exited 0: {err}");
        assert!(err.contains(said), "{extra}: {err}");
    }
    // A lock file held by another process.
    let lock = dir.path().join("w.pid");
    let held = std::fs::File::create(&lock).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );
    let extra = format!(
        "    background = \"1\"\n    lockfile = \"{}\"\n",
        lock.display()
    );
    std::fs::write(
        dir.path().join("alaska.cfg"),
        base.replacen("worker\n", &format!("worker\n{extra}"), 1),
    )
    .unwrap();
    let out = alaska(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a held lock: exited 0: {err}");
    assert!(err.contains("held by another process"), "{err}");
    drop(held);
    // A failure after the fork (the embedded broker's port taken) reaches
    // the launcher through the readiness pipe.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let extra = "    background = \"1\"\n";
    let cfg = config(
        &format!("tcp://127.0.0.1:{port}"),
        &scripts,
        "    broker\n        embedded = \"1\"\n",
    );
    std::fs::write(
        dir.path().join("alaska.cfg"),
        cfg.replacen("worker\n", &format!("worker\n{extra}"), 1),
    )
    .unwrap();
    let out = alaska(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a taken port: exited 0: {err}");
    assert!(err.contains(&port.to_string()), "{err}");
}

/// A background start that works exits 0 once the daemon is up; its pid
/// file names the daemon and is removed when it stops.
#[test]
fn a_background_start_reports_success_and_the_pid_file_goes_with_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("services");
    std::fs::create_dir_all(&scripts).unwrap();
    script(&scripts, "echo", "return alaskaContext");
    let endpoint = free_endpoint();
    let lock = dir.path().join("w.pid");
    let extra = format!(
        "    background = \"1\"\n    workdir = \"{}\"\n    lockfile = \"{}\"\n",
        dir.path().display(),
        lock.display()
    );
    let cfg = config(
        &endpoint,
        &scripts,
        "    broker\n        embedded = \"1\"\n",
    );
    std::fs::write(
        dir.path().join("alaska.cfg"),
        cfg.replacen("worker\n", &format!("worker\n{extra}"), 1),
    )
    .unwrap();
    let out = alaska(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = std::fs::read_to_string(&lock)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signal 0 only checks the process exists.
    assert_eq!(
        unsafe { libc::kill(pid, 0) },
        0,
        "the daemon is not running"
    );
    let mut p = client(&endpoint, "producer");
    assert_eq!(
        request(&mut p, "echo", b"up", Duration::from_secs(10)).content,
        vec![b"up".to_vec()]
    );
    // SAFETY: a signal to the daemon we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while lock.exists() {
        assert!(
            Instant::now() < deadline,
            "the pid file outlived the daemon"
        );
        std::thread::sleep(Duration::from_millis(20)); // bounded poll: the file is the event
    }
}

/// With syslog asked for and no syslog socket, the log goes to stderr with
/// one line saying why (it went nowhere and the worker exited 1).
#[test]
fn syslog_without_dev_log_falls_back_to_stderr() {
    if std::path::Path::new("/dev/log").exists() {
        println!("skipped: /dev/log exists here (the fallback cannot be shown)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("alaska.cfg"),
        "worker\n    syslog = \"1\"\n",
    )
    .unwrap();
    let log_file = dir.path().join("stderr.log");
    let mut w = Running(
        alaska(dir.path())
            .args(["-f"])
            .env("ALASKA_WORKER__BROKER__ENDPOINT", free_endpoint())
            .stderr(std::fs::File::create(&log_file).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_file(
        &log_file,
        "ready:",
        Duration::from_secs(15),
        "no log on stderr",
    );
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(w.0.id() as i32, libc::SIGTERM) };
    assert!(wait_exit(&mut w.0, Duration::from_secs(15)).is_some());
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(log.contains("syslog: /dev/log"), "{log}");
    assert!(log.contains("Alaska workers"), "{log}");
}

/// One strict reader for the three binaries: an unknown key in the file
/// or in the environment exits 2, naming it and the nearest known key.
#[test]
fn unknown_keys_in_file_or_environment_exit_2_in_every_binary() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("services")).unwrap();
    script(&dir.path().join("services"), "echo", "return 1");
    let run = |bin: &str, args: &[&str], env: Option<(&str, &str)>| {
        let mut c = Command::cargo_bin(bin).unwrap();
        c.current_dir(dir.path()).args(args);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let cases: [(&str, &str, &str, &[&str], &str); 3] = [
        (
            "alaska",
            "w.cfg",
            "worker\n    pool\n        sise = \"2\"\n",
            &["-c", "w.cfg", "--check"],
            "worker/pool/size",
        ),
        (
            "alaska-gateway",
            "g.cfg",
            "gateway\n    http\n        lisen = \"127.0.0.1:0\"\n",
            &["-c", "g.cfg"],
            "gateway/http/listen",
        ),
        (
            "alaska-broker",
            "b.cfg",
            "server\n    timout = 1000\n",
            &["-c", "b.cfg"],
            "server/timeout",
        ),
    ];
    for (bin, file, text, args, near) in cases {
        std::fs::write(dir.path().join(file), text).unwrap();
        let out = run(bin, args, None);
        let err = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(out.status.code(), Some(2), "{bin}: {err}");
        assert!(
            err.contains("unknown key") && err.contains(near),
            "{bin}: {err}"
        );
    }
    // The environment, with a file that is right.
    std::fs::write(dir.path().join("w.cfg"), "worker\n").unwrap();
    std::fs::write(dir.path().join("g.cfg"), "gateway\n").unwrap();
    std::fs::write(dir.path().join("b.cfg"), "server\n    timeout = 1000\n").unwrap();
    for (bin, args, var, near) in [
        (
            "alaska",
            &["-c", "w.cfg", "--check"][..],
            "ALASKA_WORKER__POOL__SIZ",
            "ALASKA_WORKER__POOL__SIZE",
        ),
        (
            "alaska-gateway",
            &["-c", "g.cfg"][..],
            "ALASKA_GATEWAY__HTTP__LISTN",
            "ALASKA_GATEWAY__HTTP__LISTEN",
        ),
        (
            "alaska-broker",
            &["-c", "b.cfg"][..],
            "ALASKA_SERVER__TIMOUT",
            "server/timeout",
        ),
    ] {
        let out = run(bin, args, Some((var, "1")));
        let err = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(out.status.code(), Some(2), "{bin} {var}: {err}");
        assert!(
            err.contains(var) && err.contains(near),
            "{bin} {var}: {err}"
        );
    }
}

/// In the background (stdout is /dev/null) with `syslog = "1"`, what the
/// shipped dump.lua prints reaches syslog, tagged with the script. The
/// syslog socket is a stand-in of this test's, put at /dev/log in a mount
/// namespace of the worker's own (root and unshare needed; skipped with
/// the reason otherwise).
#[test]
fn print_reaches_syslog_in_the_background() {
    // SAFETY: geteuid only reads.
    if unsafe { libc::geteuid() } != 0 || Command::new("unshare").arg("--version").output().is_err()
    {
        println!("skipped: needs root and unshare(1) to stand in for /dev/log");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("services");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("services/dump.lua"),
        scripts.join("dump.lua"),
    )
    .unwrap();
    let sock_path = dir.path().join("log.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let endpoint = free_endpoint();
    let pid_file = dir.path().join("w.pid");
    let cfg = config(&endpoint, &scripts, "    broker\n        embedded = \"1\"\n").replacen(
        "worker\n",
        &format!(
            "worker\n    background = \"1\"\n    syslog = \"1\"\n    workdir = \"{}\"\n    lockfile = \"{}\"\n",
            dir.path().display(),
            pid_file.display()
        ),
        1,
    );
    std::fs::write(dir.path().join("alaska.cfg"), cfg).unwrap();
    let alaska_bin = assert_cmd::cargo::cargo_bin("alaska");
    let script = format!(
        "mount -t tmpfs tmpfs /dev && mknod -m 666 /dev/null c 1 3 && touch /dev/log && \
         mount --bind '{}' /dev/log && exec '{}' -c '{}'",
        sock_path.display(),
        alaska_bin.display(),
        dir.path().join("alaska.cfg").display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unshare") {
        println!(
            "skipped: unshare failed here: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut p = client(&endpoint, "syslog-producer");
    let r = request(
        &mut p,
        "dump",
        b"{\"seen\":\"in syslog\"}",
        Duration::from_secs(10),
    );
    assert!(!r.content.is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let found = loop {
        let mut buf = [0u8; 8192];
        if let Ok(n) = sock.recv(&mut buf) {
            let line = String::from_utf8_lossy(&buf[..n]).to_string();
            if line.contains("seen = in syslog") && line.contains("script=dump") {
                break true;
            }
            got.push(line);
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    // SAFETY: a signal to the daemon we started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(found, "no print in syslog; got:\n{}", got.join("\n"));
}

/// A worker whose scripts folder is missing or empty says so loudly at
/// start (it said "ready" and failed every request).
#[test]
fn a_missing_or_empty_scripts_folder_is_an_error_in_the_log() {
    for make in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let scripts = dir.path().join("services");
        if make {
            std::fs::create_dir_all(&scripts).unwrap();
        }
        let log_file = dir.path().join("stderr.log");
        std::fs::write(
            dir.path().join("alaska.cfg"),
            config(&free_endpoint(), &scripts, ""),
        )
        .unwrap();
        let mut w = Running(
            alaska(dir.path())
                .args(["-f", "--embedded-broker"])
                .stderr(std::fs::File::create(&log_file).unwrap())
                .spawn()
                .unwrap(),
        );
        wait_file(&log_file, "ready:", Duration::from_secs(15), "not ready");
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(w.0.id() as i32, libc::SIGTERM) };
        assert!(wait_exit(&mut w.0, Duration::from_secs(15)).is_some());
        let log = std::fs::read_to_string(&log_file).unwrap();
        let want = if make {
            "has no <subject>.lua script"
        } else {
            "cannot be read"
        };
        assert!(log.contains("ERROR") && log.contains(want), "{log}");
    }
}

/// `--check` catches what the host must have: the user and group to switch
/// to, the folder a daemon changes to, scripts in the scripts folder, an
/// exec runner's command, an HTTP runner's URL.
#[test]
fn check_catches_what_the_host_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("services");
    std::fs::create_dir_all(&scripts).unwrap();
    let base = config("tcp://127.0.0.1:1", &scripts, "");
    for (extra, said) in [
        ("    user = \"no-such-user-here\"\n", "no such user"),
        ("    group = \"no-such-group-here\"\n", "no-such-group-here"),
        ("    background = \"1\"\n    workdir = \"/no/such/folder\"\n", "worker/workdir"),
        ("", "has no <subject>.lua script"),
        (
            "    runners\n        r\n            type = \"exec\"\n            command = \"no-such-command-here\"\n",
            "no-such-command-here",
        ),
        (
            "    runners\n        r\n            url = \"not a url\"\n",
            "is not a URL",
        ),
    ] {
        std::fs::write(dir.path().join("alaska.cfg"), base.replacen("worker\n", &format!("worker\n{extra}"), 1))
            .unwrap();
        let out = alaska(dir.path()).arg("--check").output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{extra}: {text}");
        assert!(text.contains(said), "{extra}: {text}");
    }
}
