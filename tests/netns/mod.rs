//! Separate hosts for tests, built from Linux network namespaces.
//!
//! A [`Net`] is one test's little network: a switch namespace holding one
//! Linux bridge per LAN, and a namespace per host, each joined to the LANs
//! it is on by a veth pair (`eth<lan>` inside the host, `h<host>l<lan>` on
//! the switch). Addresses are private, `10.77.<lan>.<host + 1>/24`, and live
//! only inside namespaces the test created: nothing is routed anywhere
//! else, and parallel tests (each with its own switch) may use the same
//! addresses without meeting.
//!
//! Programs run inside a host with `ip netns exec` (which execs, so the
//! child's pid is the program's), their output kept in files of the test's
//! temporary folder. Faults: a link down or up (the host's port on the
//! switch), `kill -9`, `SIGSTOP` and `SIGCONT`.
//!
//! Everything is torn down by `Drop` (children killed and reaped, then
//! every namespace deleted), also when the test panics; the logs of every
//! program are printed then (and always with `ALASKA_MULTIHOST_LOGS=1`). Namespace names start with `amh<pid>-`, so a
//! later run finds and removes what a crashed run left (its pid is gone).
//! Where namespaces cannot be made (not root, no `ip`), [`Net::new`] says
//! why and the test skips.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Namespace names of this harness start with this, then the pid.
const PREFIX: &str = "amh";

/// A host of a [`Net`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host(usize);

/// A program started in a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc(usize);

struct HostInfo {
    name: String,
    ns: String,
    lans: Vec<usize>,
}

struct ProcInfo {
    name: String,
    child: Child,
    out: PathBuf,
    err: PathBuf,
    exited: bool,
}

/// One test's network. See the module documentation.
pub struct Net {
    tag: String,
    switch: String,
    lans: usize,
    hosts: Vec<HostInfo>,
    procs: Vec<ProcInfo>,
    dir: tempfile::TempDir,
    started: Instant,
}

/// Runs `ip` with `args`; the error says what failed and what `ip` said.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Removes namespaces an earlier run left behind: ours by prefix, whose
/// process is gone. Programs still running in them are killed first.
fn clean_leftovers() {
    let me = std::process::id();
    for line in ip_output(&["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: u32 = match rest.split('-').next().and_then(|p| p.parse().ok()) {
            Some(p) => p,
            None => continue,
        };
        if pid == me || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        for p in ip_output(&["netns", "pids", name]).split_whitespace() {
            if let Ok(p) = p.parse::<i32>() {
                // SAFETY: kill(2) on a process of a leftover namespace.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        let _ = ip(&["netns", "del", name]);
        eprintln!("netns: removed {name}, left by an earlier run");
    }
}

impl Net {
    /// A switch with `lans` bridges, no hosts yet. `Err` is the reason to
    /// skip: namespaces cannot be made here.
    pub fn new(test: &str, lans: usize) -> Result<Net, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: network namespaces need CAP_SYS_ADMIN".into());
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Err("no `ip` command (iproute2)".into());
        }
        clean_leftovers();
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{PREFIX}{}-{}{}",
            std::process::id(),
            test,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{tag}-sw");
        ip(&["netns", "add", &switch])?;
        let net = Net {
            tag,
            switch,
            lans,
            hosts: Vec::new(),
            procs: Vec::new(),
            dir: tempfile::tempdir().map_err(|e| e.to_string())?,
            started: Instant::now(),
        };
        for lan in 0..lans {
            let br = format!("br{lan}");
            ip(&["-n", &net.switch, "link", "add", &br, "type", "bridge"])?;
            ip(&["-n", &net.switch, "link", "set", &br, "up"])?;
        }
        Ok(net)
    }

    /// The test's folder (configurations, scripts, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Seconds since the network was made, for log lines.
    pub fn t(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// A host named `name` on the LANs `lans`.
    pub fn host(&mut self, name: &str, lans: &[usize]) -> Host {
        let i = self.hosts.len();
        let ns = format!("{}-{name}", self.tag);
        ip(&["netns", "add", &ns]).unwrap();
        ip(&["-n", &ns, "link", "set", "lo", "up"]).unwrap();
        for &lan in lans {
            assert!(lan < self.lans, "no LAN {lan}");
            let inside = format!("eth{lan}");
            let port = port_name(i, lan);
            // Made inside the host, the peer sent straight to the switch:
            // nothing appears in the namespace the tests run in.
            ip(&[
                "-n",
                &ns,
                "link",
                "add",
                &inside,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &self.switch,
            ])
            .unwrap();
            ip(&[
                "-n",
                &self.switch,
                "link",
                "set",
                &port,
                "master",
                &format!("br{lan}"),
            ])
            .unwrap();
            ip(&["-n", &self.switch, "link", "set", &port, "up"]).unwrap();
            let addr = format!("{}/24", address(i, lan));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &inside]).unwrap();
            ip(&["-n", &ns, "link", "set", &inside, "up"]).unwrap();
        }
        self.hosts.push(HostInfo {
            name: name.into(),
            ns,
            lans: lans.to_vec(),
        });
        Host(i)
    }

    /// `host`'s address on `lan`.
    pub fn ip(&self, host: Host, lan: usize) -> String {
        assert!(
            self.hosts[host.0].lans.contains(&lan),
            "host not on LAN {lan}"
        );
        address(host.0, lan)
    }

    /// Takes `host`'s link to `lan` down (`up = false`) or up again: its
    /// port on the switch, so neither side is told.
    pub fn link(&self, host: Host, lan: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &port_name(host.0, lan),
            state,
        ])
        .unwrap();
        eprintln!(
            "[{:6.2}] link {} lan {lan} {state}",
            self.t(),
            self.hosts[host.0].name
        );
    }

    /// Starts `program args` in `host`; its output goes to files named
    /// after `name`.
    pub fn spawn(&mut self, host: Host, name: &str, program: &Path, args: &[&str]) -> Proc {
        self.spawn_with_input(host, name, program, args, None)
    }

    /// Runs `program args` in `host` with `input` on its stdin, waits at
    /// most `within` for it, and returns its exit code, stdout and stderr.
    pub fn run(
        &mut self,
        host: Host,
        name: &str,
        program: &Path,
        args: &[&str],
        input: &[u8],
        within: Duration,
    ) -> (Option<i32>, String, String) {
        let p = self.spawn_with_input(host, name, program, args, Some(input));
        let code = self.wait(p, within);
        if code.is_none() {
            self.kill9(p);
        }
        (code, self.stdout(p), self.stderr(p))
    }

    fn spawn_with_input(
        &mut self,
        host: Host,
        name: &str,
        program: &Path,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Proc {
        let out = self.dir.path().join(format!("{name}.out"));
        let err = self.dir.path().join(format!("{name}.err"));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.hosts[host.0].ns])
            .arg(program)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap();
        if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
            use std::io::Write;
            // Dropped at the end of this block: the program sees EOF.
            let _ = stdin.write_all(bytes);
        }
        eprintln!(
            "[{:6.2}] start {name} on {} (pid {})",
            self.t(),
            self.hosts[host.0].name,
            child.id()
        );
        self.procs.push(ProcInfo {
            name: name.into(),
            child,
            out,
            err,
            exited: false,
        });
        Proc(self.procs.len() - 1)
    }

    /// `p`'s process id.
    pub fn pid(&self, p: Proc) -> u32 {
        self.procs[p.0].child.id()
    }

    /// Sends `sig` to `p`.
    pub fn signal(&self, p: Proc, sig: i32) {
        let info = &self.procs[p.0];
        // SAFETY: kill(2) on our own child, which we have not reaped yet.
        unsafe { libc::kill(info.child.id() as i32, sig) };
        let what = match sig {
            libc::SIGKILL => "kill -9",
            libc::SIGSTOP => "SIGSTOP",
            libc::SIGCONT => "SIGCONT",
            libc::SIGTERM => "SIGTERM",
            _ => "signal",
        };
        eprintln!("[{:6.2}] {what} {}", self.t(), info.name);
    }

    /// `kill -9 p`, and reaps it.
    pub fn kill9(&mut self, p: Proc) {
        self.signal(p, libc::SIGKILL);
        let info = &mut self.procs[p.0];
        let _ = info.child.wait();
        info.exited = true;
    }

    /// Whether `p` has ended, and how (`exit status: N` or
    /// `signal: N (SIGSEGV)`, as std says it), without waiting. Unlike
    /// [`Net::wait`], also tells an end by a signal.
    pub fn exited(&mut self, p: Proc) -> Option<String> {
        let info = &mut self.procs[p.0];
        match info.child.try_wait() {
            Ok(Some(s)) => {
                info.exited = true;
                Some(s.to_string())
            }
            _ => None,
        }
    }

    /// Waits at most `within` for `p` to exit; its exit code.
    pub fn wait(&mut self, p: Proc, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let info = &mut self.procs[p.0];
        loop {
            if let Ok(Some(s)) = info.child.try_wait() {
                info.exited = true;
                return s.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50)); // bounded poll (deadline above)
        }
    }

    /// What `p` wrote to stdout so far.
    pub fn stdout(&self, p: Proc) -> String {
        std::fs::read_to_string(&self.procs[p.0].out).unwrap_or_default()
    }

    /// What `p` wrote to stderr so far.
    pub fn stderr(&self, p: Proc) -> String {
        std::fs::read_to_string(&self.procs[p.0].err).unwrap_or_default()
    }

    /// Waits at most `within` until `p`'s stderr has `n` lines containing
    /// every one of `words`.
    pub fn wait_log(&self, p: Proc, words: &[&str], n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let count = self
                .stderr(p)
                .lines()
                .filter(|l| words.iter().all(|w| l.contains(w)))
                .count();
            if count >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50)); // bounded poll (deadline above)
        }
    }

    /// Waits at most `within` until `p` listens on TCP `port` (read from
    /// its namespace's socket table in /proc: no client needed).
    pub fn wait_listening(&self, p: Proc, port: u16, within: Duration) -> bool {
        let pid = self.procs[p.0].child.id();
        let needle = format!(":{port:04X} ");
        let deadline = Instant::now() + within;
        loop {
            let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
            // Columns: sl, local address, remote address, state (0A = LISTEN).
            let listening = table.lines().skip(1).any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && format!("{} ", cols[1]).ends_with(&needle) && cols[3] == "0A"
            });
            if listening {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50)); // bounded poll (deadline above)
        }
    }

    /// Writes `text` to `<dir>/<name>` and returns the path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    fn dump_logs(&self) {
        for p in &self.procs {
            for (kind, path) in [("stdout", &p.out), ("stderr", &p.err)] {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                if text.is_empty() {
                    continue;
                }
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(60)..];
                eprintln!("----- {} {kind} (last {} lines)", p.name, tail.len());
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Also on demand, to look at a run that passed.
        if std::thread::panicking() || std::env::var_os("ALASKA_MULTIHOST_LOGS").is_some() {
            self.dump_logs();
        }
        for p in &mut self.procs {
            if !p.exited {
                // SIGKILL ends a stopped process too.
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        for h in &self.hosts {
            if let Err(e) = ip(&["netns", "del", &h.ns]) {
                eprintln!("netns: {e}");
            }
        }
        if let Err(e) = ip(&["netns", "del", &self.switch]) {
            eprintln!("netns: {e}");
        }
    }
}

/// The switch-side name of host `i`'s port on `lan` (at most 15 bytes).
fn port_name(i: usize, lan: usize) -> String {
    format!("h{i}l{lan}")
}

/// `10.77.<lan>.<i + 1>`.
fn address(i: usize, lan: usize) -> String {
    format!("10.77.{lan}.{}", i + 1)
}
