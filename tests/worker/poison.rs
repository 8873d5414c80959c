//! Poison requests, end to end: a request that kills every worker it is
//! given to (an exec-runner child that SIGKILLs its worker, as an
//! out-of-memory kill would) is delivered at most
//! `mlm_server/service/max_deliveries` times by the project's broker, then
//! dead-lettered with the count; the requester waiting with `alas --wait`
//! gets the error (exit 7); the workers, restarted by the test as a
//! supervisor would, serve other requests. The count survives a `kill -9`
//! of a durable broker.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alaska::mlm::DeliveryKind;
use assert_cmd::cargo::CommandCargoExt;
use common::bin::{free_endpoint, Running};
use common::client;

const MAX: u32 = 3;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Rig {
    dir: tempfile::TempDir,
    endpoint: String,
    broker: Running,
    workers: Vec<Running>,
    deaths: u32,
}

impl Rig {
    fn start() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = free_endpoint();
        std::fs::write(
            dir.path().join("broker.cfg"),
            format!(
                "server\n    timeout = 3000\nmlm_server\n    bind\n        endpoint = {endpoint}\n    service\n        max_deliveries = {MAX}\n    storage\n        dir = store\n        sync = always\n"
            ),
        )
        .unwrap();
        let scripts = dir.path().join("services");
        std::fs::create_dir_all(&scripts).unwrap();
        std::fs::write(scripts.join("ok.lua"), "return 'ok'").unwrap();
        std::fs::write(
            dir.path().join("killer.py"),
            "import os, signal\nimport alaska_runner as alaska\n\n\
             def handle(req):\n    os.kill(os.getppid(), signal.SIGKILL)\n\n\
             if __name__ == '__main__':\n    alaska.run(handle)\n",
        )
        .unwrap();
        for n in 0..2 {
            std::fs::write(
                dir.path().join(format!("w{n}.cfg")),
                format!(
                    "worker\n    scripts\n        dir = \"{}\"\n    pool\n        size = \"1\"\n    broker\n        endpoint = \"{endpoint}\"\n        embedded = \"0\"\n        timeout = \"1000\"\n    service\n        address = \"svc\"\n    runners\n        killer\n            match = \"^poison\"\n            type = \"exec\"\n            command = \"python3 '{}'\"\n            env\n                PYTHONPATH = \"{}\"\n",
                    scripts.display(),
                    dir.path().join("killer.py").display(),
                    repo().join("runners/python").display()
                ),
            )
            .unwrap();
        }
        let broker = start_broker(dir.path());
        let mut rig = Rig {
            dir,
            endpoint,
            broker,
            workers: Vec::new(),
            deaths: 0,
        };
        for n in 0..2 {
            let w = rig.worker(n);
            rig.workers.push(w);
        }
        rig
    }

    fn worker(&self, n: usize) -> Running {
        Running(
            Command::cargo_bin("alaska")
                .unwrap()
                .current_dir(self.dir.path())
                .args(["-f", "-c", &format!("w{n}.cfg")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// Restarts every worker that died (a supervisor's job); how many.
    fn supervise(&mut self) -> u32 {
        let mut died = 0;
        for n in 0..self.workers.len() {
            if self.workers[n].0.try_wait().unwrap().is_some() {
                died += 1;
                self.workers[n] = self.worker(n);
            }
        }
        self.deaths += died;
        died
    }

    fn alas(&self, subject: &str, wait: &str) -> Child {
        let mut c = Command::cargo_bin("alas")
            .unwrap()
            .args([
                "-e",
                &self.endpoint,
                "-a",
                "svc",
                "-s",
                subject,
                "--wait",
                wait,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(b"{\"x\":1}\n").unwrap();
        c
    }
}

fn start_broker(dir: &Path) -> Running {
    let b = Running(
        Command::cargo_bin("alaska-broker")
            .unwrap()
            .current_dir(dir)
            .arg("broker.cfg")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    b
}

/// Supervises the workers until the dead letter for `subject` is in the
/// error mailbox (read by a client named `awerr`); the report's text.
fn until_dead_letter(rig: &mut Rig, subject: &str, within: Duration) -> String {
    let mut awerr = client(&rig.endpoint, "awerr");
    let deadline = Instant::now() + within;
    loop {
        rig.supervise();
        if let Ok(Some(d)) = awerr.recv(Duration::from_millis(100)) {
            if d.kind == DeliveryKind::Mailbox && d.subject == subject {
                assert_eq!(d.content[1], b"{\"x\":1}", "the request's content");
                return String::from_utf8_lossy(&d.content[0]).into_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter for {subject} (deaths: {})",
            rig.deaths
        );
    }
}

fn ok_served(rig: &mut Rig) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        rig.supervise();
        let out = rig.alas("ok", "5").wait_with_output().unwrap();
        if out.status.success() {
            assert_eq!(out.stdout, b"ok\n");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ok not served: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_request_that_kills_its_workers_is_dead_lettered_after_max_deliveries() {
    if Command::new("python3").arg("-V").output().is_err() {
        println!("skipped: python3 is not installed");
        return;
    }
    let mut rig = Rig::start();
    ok_served(&mut rig);
    let waiting = rig.alas("poison", "60");
    let text = until_dead_letter(&mut rig, "poison", Duration::from_secs(60));
    assert!(text.contains(&format!("delivered {MAX} times")), "{text}");
    // Each delivery killed its worker (a worker the broker expired while
    // it ran, on a loaded machine, counts too: at most MAX deaths).
    assert!(
        (1..=MAX).contains(&rig.deaths),
        "{} deaths: {text}",
        rig.deaths
    );
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "alas --wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("poison request"));
    // Not delivered again; the workers serve the rest.
    let before = rig.deaths;
    ok_served(&mut rig);
    ok_served(&mut rig);
    assert_eq!(rig.deaths, before, "the poison request came back");
}

#[test]
fn the_delivery_count_survives_a_broker_restart() {
    if Command::new("python3").arg("-V").output().is_err() {
        println!("skipped: python3 is not installed");
        return;
    }
    let mut rig = Rig::start();
    ok_served(&mut rig);
    // Fire and forget (no tracker needed for the dead letter).
    let mut c = Command::cargo_bin("alas")
        .unwrap()
        .args(["-e", &rig.endpoint, "-a", "svc", "-s", "poison-2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"{\"x\":1}\n").unwrap();
    let sent = c.wait_with_output().unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    // One delivery, one death: then the broker is killed and restarted on
    // its store.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig.supervise() == 0 {
        assert!(
            Instant::now() < deadline,
            "the first delivery killed nobody"
        );
        std::thread::sleep(Duration::from_millis(50)); // bounded poll of the workers' exits
    }
    let _ = rig.broker.0.kill();
    let _ = rig.broker.0.wait();
    rig.broker = start_broker(rig.dir.path());
    let after_restart = rig.deaths;
    let text = until_dead_letter(&mut rig, "poison-2", Duration::from_secs(60));
    assert!(text.contains(&format!("delivered {MAX} times")), "{text}");
    // Had the count restarted with the broker, it would have taken MAX
    // more deliveries (and deaths) after the restart.
    assert!(
        rig.deaths - after_restart < MAX,
        "the count restarted with the broker ({} deaths after it): {text}",
        rig.deaths - after_restart
    );
    ok_served(&mut rig);
}
