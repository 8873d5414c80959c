//! The exec runner: `processes` long-lived child processes, each handling
//! one request at a time over its stdin and stdout with the line protocol
//! of [`super::protocol`] (docs/RUNNER-PROTOCOL.md).
//!
//! Each child has a *slot*: a thread (`alaska-exec-<runner>-<n>`) that owns
//! the child's pipes, takes jobs from the runner's bounded channel, writes
//! the request line and reads the answer line, both bounded by the
//! request's deadline (poll(2) on non-blocking pipes, so a child that
//! stops reading or writing cannot hold the thread). A second thread per
//! child reads its stderr line by line into the worker's log, tagged with
//! the runner and the pid; when that pipe closes, the slot learns the
//! child is gone even while idle.
//!
//! Failures never stop the runner: a child that exits or writes garbage
//! fails the request it had (retried per the worker's policy) and is
//! restarted with backoff ([`Restarts`]); a child past its timeout is
//! killed with its whole process group and replaced at once. Children run
//! in process groups of their own (so a kill reaches what they started)
//! and, on Linux, die with their slot thread (`PR_SET_PDEATHSIG`), so even
//! a worker killed with SIGKILL leaves no handler behind. At a stop, idle
//! children get SIGTERM at once (and EOF on stdin); busy ones finish their
//! request until the shutdown deadline, then get SIGTERM; any child still
//! there at the deadline (at least [`super::KILL_GRACE`] after its
//! SIGTERM) gets SIGKILL.
//!
//! What a child starts may outlive it: a grandchild left in the child's
//! group is killed with the group, but one that called `setsid` (or whose
//! parent exited) is out of reach of a group kill. The worker therefore
//! becomes a child subreaper (`PR_SET_CHILD_SUBREAPER`) when it starts an
//! exec runner: such orphans are re-parented to the worker instead of
//! init. Each time a child ends, the orphans that exited are reaped (no
//! zombies pile up), and when the runners stop every orphan still there is
//! ended with its group ([`end_orphans`]: SIGTERM, then SIGKILL). What
//! only a cgroup can guarantee: after a SIGKILL of the worker itself its
//! children die (`PR_SET_PDEATHSIG`), but what they started goes on
//! (nothing of the worker runs any more to end it), re-parented to the
//! next subreaper up: systemd, which ends it with the unit's cgroup (the
//! shipped `alaska.service` says `KillMode=control-group`).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::protocol::{decode_response, encode_request};
use super::{ExecConfig, Executor, RunnerError, KILL_GRACE};
use crate::time::after;
use crate::worker::types::{Completion, ErrorKind, Job, RunResult};
use crate::worker::wake::Waker;

/// Longest answer line a child may write (the request's sends included).
pub const MAX_LINE: usize = 64 << 20;

/// Longest stderr line logged as it is; longer ones are cut.
const MAX_LOG_LINE: usize = 8 << 10;

/// First delay before restarting a child that crashed; doubles per crash
/// in a row, up to [`RESTART_MAX`].
pub const RESTART_BASE: Duration = Duration::from_millis(100);

/// Longest delay before restarting a child.
pub const RESTART_MAX: Duration = Duration::from_secs(10);

/// Finds the program of `cfg.command`: a name without `/` on `PATH` (the
/// runner's `env/PATH` when set), a path relative to `workdir`. It must be
/// an executable file.
pub fn resolve_command(cfg: &ExecConfig, workdir: &Path) -> Result<PathBuf, String> {
    let Some(program) = cfg.command.first() else {
        return Err("empty command".into());
    };
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = workdir.join(program);
        return if executable(&path) {
            Ok(path)
        } else if path.exists() {
            Err(format!("{} is not an executable file", path.display()))
        } else {
            Err(format!("{} does not exist", path.display()))
        };
    }
    let search = cfg
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    for dir in search.split(':').filter(|d| !d.is_empty()) {
        let candidate = workdir.join(dir).join(program);
        if executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(format!("{program:?} not found on PATH ({search})"))
}

/// When a slot may start its child again, after crashes in a row. Time is
/// passed in.
#[derive(Debug, Clone, Default)]
pub struct Restarts {
    crashes: u32,
    not_before: Option<Instant>,
}

impl Restarts {
    /// A crash at `now`: the next start waits [`RESTART_BASE`] doubled per
    /// crash in a row, at most [`RESTART_MAX`]. Returns that delay.
    pub fn crashed(&mut self, now: Instant) -> Duration {
        let delay = RESTART_BASE
            .saturating_mul(1u32 << self.crashes.min(16))
            .min(RESTART_MAX);
        self.crashes = self.crashes.saturating_add(1);
        self.not_before = Some(after(now, delay));
        delay
    }

    /// A request answered properly: the next crash starts from the base.
    pub fn answered(&mut self) {
        self.crashes = 0;
        self.not_before = None;
    }

    /// How long to wait at `now` before starting a child.
    pub fn wait(&self, now: Instant) -> Duration {
        self.not_before
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or_default()
    }
}

/// What a slot needs to know about its runner.
struct Spec {
    runner: String,
    program: PathBuf,
    argv: Vec<String>,
    workdir: PathBuf,
    env: Vec<(String, String)>,
    timeout: Duration,
}

/// What the runner and its slots share.
struct Shared {
    /// Set at a stop: when running requests must be done.
    deadline: Mutex<Option<Instant>>,
    stopping: AtomicBool,
}

impl Shared {
    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// See the module documentation.
pub struct ExecRunner {
    name: String,
    processes: usize,
    tx: Option<Sender<Job>>,
    rx: Receiver<Job>,
    /// Dropped at a stop: wakes slots that wait to restart a child.
    stop_tx: Option<Sender<()>>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl ExecRunner {
    /// Starts `cfg.processes` slots, each starting its child.
    pub fn start(
        name: &str,
        cfg: &ExecConfig,
        scripts_dir: &Path,
        done: Sender<Completion>,
        waker: Waker,
    ) -> Result<ExecRunner, RunnerError> {
        let workdir = cfg.workdir(scripts_dir);
        let program = resolve_command(cfg, &workdir).map_err(|message| RunnerError::Config {
            key: format!("worker/runners/{name}/command"),
            message,
        })?;
        let spec = Arc::new(Spec {
            runner: name.to_string(),
            program,
            argv: cfg.command.clone(),
            workdir,
            env: cfg.env.clone(),
            timeout: cfg.timeout,
        });
        let (tx, rx) = crossbeam_channel::bounded::<Job>(cfg.processes.max(1));
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let shared = Arc::new(Shared {
            deadline: Mutex::new(None),
            stopping: AtomicBool::new(false),
        });
        let mut runner = ExecRunner {
            name: name.to_string(),
            processes: cfg.processes,
            tx: Some(tx),
            rx: rx.clone(),
            stop_tx: Some(stop_tx),
            shared: shared.clone(),
            threads: Vec::new(),
        };
        for n in 0..cfg.processes {
            let slot = Slot {
                n,
                spec: spec.clone(),
                shared: shared.clone(),
                jobs: rx.clone(),
                stop: stop_rx.clone(),
                done: done.clone(),
                waker: waker.clone(),
                child: None,
                restarts: Restarts::default(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("alaska-exec-{name}-{n}"))
                .spawn(move || slot.run());
            match spawned {
                Ok(t) => runner.threads.push(t),
                Err(source) => {
                    runner.stop_taking(Instant::now());
                    runner.finish();
                    return Err(RunnerError::Thread {
                        runner: name.to_string(),
                        source,
                    });
                }
            }
        }
        Ok(runner)
    }
}

impl Executor for ExecRunner {
    fn name(&self) -> &str {
        &self.name
    }

    fn try_submit(&self, job: Job) -> Result<(), Job> {
        super::submit(&self.tx, job)
    }

    fn slots(&self) -> usize {
        self.processes
    }

    fn stop_taking(&mut self, deadline: Instant) -> Vec<Job> {
        *self
            .shared
            .deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        self.shared.stopping.store(true, Ordering::SeqCst);
        let mut unstarted = Vec::new();
        while let Ok(job) = self.rx.try_recv() {
            unstarted.push(job);
        }
        // Disconnected channels wake every slot, idle or waiting to restart.
        self.tx = None;
        self.stop_tx = None;
        unstarted
    }

    fn finish(&mut self) {
        for t in self.threads.drain(..) {
            let name = t.thread().name().unwrap_or("an exec slot").to_string();
            if t.join().is_err() {
                tracing::error!("{name} panicked while stopping");
            }
        }
    }
}

/// A running child and its pipes.
struct Proc {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    stdout: LineReader,
    /// Disconnected when the child's stderr closes (it exited).
    gone: Receiver<()>,
}

/// One child process and the thread that talks to it.
struct Slot {
    n: usize,
    spec: Arc<Spec>,
    shared: Arc<Shared>,
    jobs: Receiver<Job>,
    stop: Receiver<()>,
    done: Sender<Completion>,
    waker: Waker,
    child: Option<Proc>,
    restarts: Restarts,
}

/// How a request's exchange with a child ended, when it did not answer.
enum Lost {
    /// The child exited or its pipes broke.
    Died(String),
    /// The answer line was not the protocol.
    Garbage(RunResult),
    /// The request's timeout passed.
    Timeout,
    /// The shutdown deadline passed.
    Stopped,
}

impl Slot {
    fn run(mut self) {
        loop {
            if self.child.is_none() {
                let wait = self.restarts.wait(Instant::now());
                if !wait.is_zero() {
                    match self.stop.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => break,
                    }
                }
                if self.shared.stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Err(e) = self.spawn() {
                    let delay = self.restarts.crashed(Instant::now());
                    tracing::error!(
                        runner = %self.spec.runner,
                        "cannot start {}: {e}; trying again in {delay:?}",
                        self.spec.program.display()
                    );
                }
                continue;
            }
            let gone = match &self.child {
                Some(c) => c.gone.clone(),
                None => continue,
            };
            crossbeam_channel::select! {
                recv(self.jobs) -> job => match job {
                    Ok(job) => self.serve(job),
                    Err(_) => break,
                },
                recv(gone) -> _ => self.gone_while_idle(),
            }
        }
        if let Some(p) = self.child.take() {
            let kill_at = self
                .shared
                .deadline()
                .unwrap_or_else(Instant::now)
                .max(after(Instant::now(), Duration::from_millis(50)));
            self.end(p, kill_at);
        }
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        become_subreaper();
        let spec = &self.spec;
        let mut cmd = Command::new(&spec.program);
        cmd.arg0(&spec.argv[0])
            .args(&spec.argv[1..])
            .current_dir(&spec.workdir)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a kill reaches whatever it started.
            .process_group(0);
        #[cfg(target_os = "linux")]
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                // Dies with the thread that started it: a worker killed
                // with SIGKILL leaves no handler behind.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let pid = child.id();
        slot_pids().insert(pid);
        let (stdin, stdout, stderr) =
            match (child.stdin.take(), child.stdout.take(), child.stderr.take()) {
                (Some(i), Some(o), Some(e)) => (i, o, e),
                _ => {
                    kill_group(pid, libc::SIGKILL);
                    let _ = child.wait();
                    return Err(std::io::Error::other("child pipes missing"));
                }
            };
        set_nonblocking(stdin.as_raw_fd())?;
        set_nonblocking(stdout.as_raw_fd())?;
        let (gone_tx, gone) = crossbeam_channel::bounded::<()>(0);
        let runner = spec.runner.clone();
        std::thread::Builder::new()
            .name(format!("alaska-exec-{}-{}-err", spec.runner, self.n))
            .spawn(move || log_stderr(stderr, &runner, pid, gone_tx))?;
        tracing::info!(
            runner = %spec.runner,
            pid,
            "started {}",
            spec.argv.join(" ")
        );
        self.child = Some(Proc {
            child,
            pid,
            stdin: Some(stdin),
            stdout: LineReader::new(stdout),
            gone,
        });
        Ok(())
    }

    /// The child's stderr closed while it had no request: it exited (or
    /// closed stderr, which is allowed: then it stays).
    fn gone_while_idle(&mut self) {
        let Some(p) = self.child.as_mut() else {
            return;
        };
        // A process closes its files before it becomes a zombie: give an
        // exiting one a moment to finish.
        let until = after(Instant::now(), Duration::from_millis(200));
        while !exited(p.pid) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        if !exited(p.pid) {
            // Still running with stderr closed: stop watching it.
            p.gone = crossbeam_channel::never();
            return;
        }
        let Some(p) = self.child.take() else {
            return;
        };
        let pid = p.pid;
        // What it started goes with it.
        let status = self.end(p, Instant::now());
        let delay = self.restarts.crashed(Instant::now());
        tracing::warn!(
            runner = %self.spec.runner,
            pid,
            "process exited while idle ({status}); restarting in {delay:?}"
        );
    }

    fn serve(&mut self, job: Job) {
        let Job { id, request } = job;
        let started = Instant::now();
        let run = match self.exchange(&encode_request(&request), after(started, self.spec.timeout))
        {
            Ok(run) => run,
            Err(lost) => self.lost(lost),
        };
        let _ = self.done.send(Completion { id, request, run });
        self.waker.wake();
    }

    /// Writes the request, reads the answer. `Ok` is a protocol answer
    /// (whatever outcome it reports).
    fn exchange(&mut self, line: &[u8], until: Instant) -> Result<RunResult, Lost> {
        let Some(p) = self.child.as_mut() else {
            return Err(Lost::Died("no process running".into()));
        };
        let shared = self.shared.clone();
        // The request's deadline, or the stop's if that comes first; the
        // stop's may be set while we wait, so look again now and then.
        let limit = || {
            let stop = shared.deadline();
            match stop {
                Some(s) if s < until => (s, true),
                _ => (until, false),
            }
        };
        let stdin_fd = match &p.stdin {
            Some(s) => s.as_raw_fd(),
            None => return Err(Lost::Died("stdin closed".into())),
        };
        let mut written = 0;
        while written < line.len() {
            let (at, stopping) = limit();
            let step = at.min(after(Instant::now(), Duration::from_millis(100)));
            match write_some(stdin_fd, &line[written..], step) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= at {
                        return Err(if stopping {
                            Lost::Stopped
                        } else {
                            Lost::Timeout
                        });
                    }
                }
                Err(e) => return Err(Lost::Died(format!("writing the request: {e}"))),
            }
        }
        let answer = loop {
            let (at, stopping) = limit();
            let step = at.min(after(Instant::now(), Duration::from_millis(100)));
            match p.stdout.read_line(step) {
                Ok(answer) => break answer,
                Err(ReadError::Timeout) => {
                    if Instant::now() >= at {
                        return Err(if stopping {
                            Lost::Stopped
                        } else {
                            Lost::Timeout
                        });
                    }
                }
                Err(ReadError::Eof) => return Err(Lost::Died("closed its stdout".into())),
                Err(ReadError::TooLong) => {
                    return Err(Lost::Garbage(RunResult::failed(
                        ErrorKind::Protocol,
                        format!("answer longer than {MAX_LINE} bytes"),
                    )))
                }
                Err(ReadError::Io(e)) => {
                    return Err(Lost::Died(format!("reading the answer: {e}")))
                }
            }
        };
        let run = decode_response(&answer);
        if run.error().is_some_and(|e| e.kind == ErrorKind::Protocol) {
            return Err(Lost::Garbage(run));
        }
        let out_of_step = p.stdout.has_pending();
        let pid = p.pid;
        self.restarts.answered();
        if out_of_step {
            // More than one line for one request: the next answer would be
            // this one's leftovers. Replace the child; this answer stands.
            tracing::warn!(
                runner = %self.spec.runner,
                pid,
                "process wrote more than one line for a request; replacing it"
            );
            if let Some(p) = self.child.take() {
                self.end(p, Instant::now());
            }
        }
        Ok(run)
    }

    /// The child did not answer properly: end it, say why, plan its
    /// replacement.
    fn lost(&mut self, lost: Lost) -> RunResult {
        let runner = self.spec.runner.clone();
        let Some(p) = self.child.take() else {
            return RunResult::failed(
                ErrorKind::Runtime,
                format!("exec runner {runner}: no process"),
            );
        };
        let pid = p.pid;
        match lost {
            Lost::Timeout => {
                // Replaced at once: the request was slow, not the child
                // broken.
                self.end(p, Instant::now());
                tracing::warn!(runner = %runner, pid, "no answer within {:?}: process group killed; replacing it", self.spec.timeout);
                RunResult::failed(
                    ErrorKind::Timeout,
                    format!(
                        "exec runner {runner}: no answer within {:?}; process {pid} killed \
                         (its process group) and replaced",
                        self.spec.timeout
                    ),
                )
            }
            Lost::Stopped => {
                self.end(p, after(Instant::now(), KILL_GRACE));
                RunResult::failed(
                    ErrorKind::Stopped,
                    format!(
                        "exec runner {runner}: worker stopping; process {pid} did not answer \
                         within the shutdown timeout"
                    ),
                )
            }
            Lost::Died(how) => {
                let status = self.end(p, after(Instant::now(), Duration::from_millis(200)));
                let delay = self.restarts.crashed(Instant::now());
                tracing::warn!(runner = %runner, pid, "process died ({how}; {status}); restarting in {delay:?}");
                RunResult::failed(
                    ErrorKind::Runtime,
                    format!(
                        "exec runner {runner}: process {pid} died while handling the request \
                         ({how}; {status}); restarting it"
                    ),
                )
            }
            Lost::Garbage(mut run) => {
                self.end(p, Instant::now());
                let delay = self.restarts.crashed(Instant::now());
                tracing::warn!(runner = %runner, pid, "bad answer; process killed, restarting in {delay:?}");
                if let Err(e) = &mut run.result {
                    e.message = format!(
                        "exec runner {runner}: process {pid} wrote an answer that is not the \
                         protocol ({}); process replaced",
                        e.message
                    );
                }
                run
            }
        }
    }

    /// Ends a child: EOF on stdin and SIGTERM to its process group, then
    /// SIGKILL to the group at `kill_at` if the child is still there (and
    /// always to the group once the child exited, for what it started).
    /// Reaps it; returns how it ended.
    fn end(&self, mut p: Proc, kill_at: Instant) -> String {
        drop(p.stdin.take());
        let pid = p.pid;
        let mut signalled = false;
        if kill_at > Instant::now() {
            kill_group(pid, libc::SIGTERM);
            signalled = true;
        }
        while Instant::now() < kill_at && !exited(pid) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The child is not reaped yet, so its pid (the group's id) cannot
        // have been reused.
        kill_group(pid, libc::SIGKILL);
        let status = match p.child.wait() {
            Ok(s) => s.to_string(),
            Err(e) => format!("not reaped: {e}"),
        };
        slot_pids().remove(&pid);
        // What its child left behind and has exited since: reaped now.
        reap_exited_orphans();
        tracing::debug!(runner = %self.spec.runner, pid, signalled, "process ended: {status}");
        status
    }
}

/// The pids of the children the slots started (and reap themselves).
fn slot_pids() -> std::sync::MutexGuard<'static, std::collections::HashSet<u32>> {
    static PIDS: std::sync::OnceLock<Mutex<std::collections::HashSet<u32>>> =
        std::sync::OnceLock::new();
    PIDS.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Makes this process the parent of what its children's children leave
/// behind when their parent exits (once; Linux only).
fn become_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(target_os = "linux")]
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag.
        unsafe {
            if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
                tracing::warn!(
                    "cannot become a child subreaper: {}; orphans of exec handlers go to init",
                    std::io::Error::last_os_error()
                );
            }
        }
    });
}

/// Our children that no slot started and that came to us as orphans (see
/// [`was_orphaned`]): what handlers' children left behind.
fn orphans() -> Vec<u32> {
    let me = std::process::id();
    let ours = slot_pids().clone();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !ours.contains(pid))
        .filter(|pid| {
            // Field 4 of /proc/<pid>/stat, after the parenthesised name
            // (which may hold spaces and parentheses itself).
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = &s[s.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(me)
        })
        .filter(|pid| was_orphaned(*pid))
        .collect()
}

/// Whether our child `pid` came to us as an orphan: a process we started
/// ourselves has our name as its parent's at start; an adopted one was
/// started by another process. Without that record, Linux's
/// `/proc/<pid>/stat` keeps no original parent, so only processes in a
/// session or group other than ours and not a slot's count: exec handlers
/// and what they start run in groups of their own, `io.popen` children
/// stay in ours.
fn was_orphaned(pid: u32) -> bool {
    // SAFETY: getpgid only reads.
    let (theirs, ours) = unsafe { (libc::getpgid(pid as libc::pid_t), libc::getpgid(0)) };
    theirs >= 0 && theirs != ours
}

/// Reaps the orphans that have exited (without waiting).
fn reap_exited_orphans() {
    for pid in orphans() {
        // SAFETY: waitpid on a child of ours that no one else waits for.
        unsafe {
            let mut status = 0;
            libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG);
        }
    }
}

/// Ends every orphan still there (see the module documentation):
/// SIGTERM to it and its group, at most `grace` for them to go, then
/// SIGKILL; all reaped. Called when the runners have stopped. Returns how
/// many there were.
pub fn end_orphans(grace: Duration) -> usize {
    let found = orphans();
    if found.is_empty() {
        return 0;
    }
    tracing::info!(
        "ending {} process(es) left behind by exec handlers: {found:?}",
        found.len()
    );
    for &pid in &found {
        kill_group(pid, libc::SIGTERM);
    }
    let until = after(Instant::now(), grace);
    while Instant::now() < until && !found.iter().all(|&p| exited(p)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    for &pid in &found {
        kill_group(pid, libc::SIGKILL);
        // SAFETY: waitpid on a child of ours that no one else waits for.
        unsafe {
            let mut status = 0;
            libc::waitpid(pid as libc::pid_t, &mut status, 0);
        }
    }
    found.len()
}

/// Whether `pid` (our child) has exited, without reaping it.
fn exited(pid: u32) -> bool {
    // SAFETY: a zeroed siginfo_t is valid for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with WNOWAIT only reads the child's state.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is set by waitid when a child changed state.
    rc != 0 || unsafe { info.si_pid() } != 0
}

/// Signals the child's process group, and the child itself in case it
/// left the group (`setpgid`): reaping it must not wait on a live child.
/// Only called before the child is reaped, so neither id can have been
/// reused.
fn kill_group(pid: u32, sig: libc::c_int) {
    // SAFETY: killpg and kill only send a signal; a missing target is ESRCH.
    unsafe {
        libc::killpg(pid as libc::pid_t, sig);
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `fd` is ready for `events` or `until` passes.
fn wait_fd(fd: RawFd, events: libc::c_short, until: Instant) -> std::io::Result<bool> {
    loop {
        let ms = until
            .saturating_duration_since(Instant::now())
            .as_micros()
            .div_ceil(1000)
            .min(i32::MAX as u128) as i32;
        let mut pfd = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(rc > 0);
    }
}

/// Writes what the pipe takes before `until`; `WouldBlock` if nothing.
/// Tries first and polls only when the pipe is full: one system call for
/// a request line in the usual case.
fn write_some(fd: RawFd, data: &[u8], until: Instant) -> std::io::Result<usize> {
    let mut polled = false;
    loop {
        // SAFETY: writes from a live slice to a descriptor we own.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock if !polled => {
                if !wait_fd(fd, libc::POLLOUT, until)? {
                    return Err(e);
                }
                polled = true;
            }
            _ => return Err(e),
        }
    }
}

/// Why no line was read.
#[derive(Debug)]
enum ReadError {
    Timeout,
    Eof,
    TooLong,
    Io(std::io::Error),
}

/// Reads lines from a non-blocking pipe with a deadline.
struct LineReader {
    out: ChildStdout,
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    /// What one read takes (a pipe holds 64 KiB).
    chunk: Box<[u8]>,
}

impl LineReader {
    fn new(out: ChildStdout) -> LineReader {
        LineReader {
            out,
            buf: Vec::with_capacity(64 << 10),
            scanned: 0,
            chunk: vec![0; 64 << 10].into_boxed_slice(),
        }
    }

    /// Bytes read beyond the last line returned.
    fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// The next line, without its newline.
    fn read_line(&mut self, until: Instant) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(i) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + i;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                self.scanned = 0;
                return Ok(line);
            }
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_LINE {
                return Err(ReadError::TooLong);
            }
            // Read first, poll only when there is nothing yet.
            match self.out.read(&mut self.chunk) {
                Ok(0) => return Err(ReadError::Eof),
                Ok(n) => self.buf.extend_from_slice(&self.chunk[..n]),
                Err(e) => match e.kind() {
                    std::io::ErrorKind::Interrupted => {}
                    std::io::ErrorKind::WouldBlock => {
                        let fd = self.out.as_raw_fd();
                        if !wait_fd(fd, libc::POLLIN, until).map_err(ReadError::Io)? {
                            return Err(ReadError::Timeout);
                        }
                    }
                    _ => return Err(ReadError::Io(e)),
                },
            }
        }
    }
}

/// A child's stderr, line by line, into the worker's log; `gone` is
/// dropped (disconnected) when the pipe closes.
fn log_stderr(stderr: std::process::ChildStderr, runner: &str, pid: u32, gone: Sender<()>) {
    let mut r = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r
            .by_ref()
            .take(MAX_LOG_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                tracing::info!(runner = %runner, pid, "stderr: {text}");
            }
        }
    }
    drop(gone);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_then_reset_after_an_answer() {
        let t0 = Instant::now();
        let mut r = Restarts::default();
        assert_eq!(r.wait(t0), Duration::ZERO);
        assert_eq!(r.crashed(t0), RESTART_BASE);
        assert_eq!(r.wait(t0), RESTART_BASE);
        assert_eq!(r.wait(t0 + RESTART_BASE), Duration::ZERO);
        assert_eq!(r.crashed(t0), RESTART_BASE * 2);
        assert_eq!(r.crashed(t0), RESTART_BASE * 4);
        for _ in 0..40 {
            r.crashed(t0);
        }
        assert_eq!(r.wait(t0), RESTART_MAX);
        r.answered();
        assert_eq!(r.wait(t0), Duration::ZERO);
        assert_eq!(r.crashed(t0), RESTART_BASE);
    }

    fn exec(command: &[&str], env: &[(&str, &str)]) -> ExecConfig {
        ExecConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            dir: None,
            processes: 1,
            timeout: Duration::from_secs(1),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn commands_resolve_on_path_or_relative_to_the_workdir() {
        let dir = tempfile::tempdir().unwrap();
        let found = resolve_command(&exec(&["sh", "-c", "true"], &[]), dir.path()).unwrap();
        assert!(found.ends_with("sh"), "{found:?}");
        let e = resolve_command(&exec(&["no-such-program-here"], &[]), dir.path()).unwrap_err();
        assert!(e.contains("not found on PATH"), "{e}");
        let e = resolve_command(&exec(&["sh"], &[("PATH", "/nowhere")]), dir.path()).unwrap_err();
        assert!(e.contains("/nowhere"), "{e}");
        std::fs::write(dir.path().join("h.sh"), "#!/bin/sh\n").unwrap();
        let e = resolve_command(&exec(&["./h.sh"], &[]), dir.path()).unwrap_err();
        assert!(e.contains("not an executable"), "{e}");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("h.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_eq!(
            resolve_command(&exec(&["./h.sh"], &[]), dir.path()).unwrap(),
            dir.path().join("./h.sh")
        );
        let e = resolve_command(&exec(&["./missing"], &[]), dir.path()).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }
}
