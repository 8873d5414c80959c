//! Runners: handlers that are not Lua scripts. An HTTP application
//! ([`http`]: one POST per request, reprow's contract) or long-lived child
//! processes in any language ([`exec`]: one JSON object per line, see
//! docs/RUNNER-PROTOCOL.md and [`protocol`]).
//!
//! A runner is declared under `worker/runners/<name>/` and takes the
//! subjects its `match` regular expression matches; the first runner that
//! matches, in file order, wins ([`Router`]); a subject no runner matches
//! goes to `<scripts/dir>/<subject>.lua` as before.
//!
//! Runners are executors like the Lua pool: each has a bounded input
//! ([`Executor::try_submit`] never blocks and gives the job back when the
//! runner is full), its own named threads, and reports each finished
//! request as a [`Completion`] on the dispatcher's `done` channel, then
//! wakes it with the [`Waker`]. A runner only reports an [`super::Outcome`]
//! (or a [`super::ScriptError`]): retries, dead letters, forwards and
//! replies are decided in one place for every handler
//! ([`super::outcomes`]) and carried out by the hub.
//!
//! [`Runners`] is what the hub holds: the router, the executors, and a
//! bounded backlog per runner for jobs that arrive while it is full.

pub mod exec;
pub mod http;
pub mod protocol;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use regex::Regex;

use super::types::{Completion, Job};
use super::wake::Waker;

/// A runner's `match`: a regular expression on the subject (searched, not
/// anchored, as `worker/service/filter` is; write `^...$` to anchor).
#[derive(Debug, Clone)]
pub struct Pattern(pub Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// One runner as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerConfig {
    /// `<name>` in `worker/runners/<name>/`: tags its threads and logs.
    pub name: String,
    /// `match`.
    pub pattern: Pattern,
    /// What it runs.
    pub kind: RunnerKind,
    /// Line of each key in the configuration file, for messages.
    pub lines: Vec<(String, usize)>,
}

impl RunnerConfig {
    /// The configuration key `worker/runners/<name>/<key>`.
    pub fn key(&self, key: &str) -> String {
        format!("worker/runners/{}/{key}", self.name)
    }

    /// The file line of `key` (of the runner's first key when `key` was
    /// not in the file), 0 if unknown.
    pub fn line_of(&self, key: &str) -> usize {
        self.lines
            .iter()
            .find(|(k, _)| k == key)
            .or_else(|| self.lines.first())
            .map(|(_, l)| *l)
            .unwrap_or(0)
    }

    /// Requests it can hold at once (running or waiting in its channel).
    pub fn slots(&self) -> usize {
        match &self.kind {
            RunnerKind::Http(h) => h.concurrency,
            RunnerKind::Exec(e) => e.processes,
        }
    }
}

/// `type` and the keys of that type.
#[derive(Debug, Clone, PartialEq)]
pub enum RunnerKind {
    /// `type = "http"`.
    Http(HttpConfig),
    /// `type = "exec"`.
    Exec(ExecConfig),
}

/// Keys of an HTTP runner.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// `url`: where each request is POSTed (`http://` only).
    pub url: String,
    /// `timeout`: of one request, connecting included (default 30 s).
    pub timeout: Duration,
    /// `concurrency`: requests in flight to the application at once
    /// (default 4): one thread and one kept-alive connection each.
    pub concurrency: usize,
    /// `headers/<name>`: sent with every request, in file order.
    pub headers: Vec<(String, String)>,
}

/// Keys of an exec runner.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecConfig {
    /// `command`, split into words as a shell would (no shell runs it).
    pub command: Vec<String>,
    /// `dir`: working directory (default: `worker/scripts/dir`).
    pub dir: Option<PathBuf>,
    /// `processes`: child processes at once, one request each (default 2).
    pub processes: usize,
    /// `timeout`: of one request (default 30 s); past it the child's
    /// process group is killed and the child replaced.
    pub timeout: Duration,
    /// `env/<NAME>`: added to the worker's environment, in file order.
    pub env: Vec<(String, String)>,
}

impl ExecConfig {
    /// The working directory of the children.
    pub fn workdir(&self, scripts_dir: &Path) -> PathBuf {
        self.dir
            .clone()
            .unwrap_or_else(|| scripts_dir.to_path_buf())
    }
}

/// Why runners could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// A thread could not be started.
    #[error("runner {runner}: starting a thread: {source}")]
    Thread {
        /// The runner.
        runner: String,
        /// Why.
        source: std::io::Error,
    },
    /// The settings do not work (a command that does not exist, say).
    #[error("{key}: {message}")]
    Config {
        /// The configuration key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A problem with a runner's settings found before start, for `--check`
/// and start-up: the key, its line, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `worker/runners/<name>/<key>`.
    pub key: String,
    /// Line in the configuration file (0 if unknown).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Checks what the configuration alone cannot: that each exec runner's
/// command exists and is executable, and its working directory exists.
/// Relative paths are taken from `base` (the directory the worker will run
/// in: its `workdir` when it detaches).
pub fn check(runners: &[RunnerConfig], scripts_dir: &Path, base: &Path) -> Vec<Problem> {
    let mut problems = Vec::new();
    for r in runners {
        let RunnerKind::Exec(e) = &r.kind else {
            continue;
        };
        let dir = base.join(e.workdir(scripts_dir));
        if !dir.is_dir() {
            problems.push(Problem {
                key: r.key("dir"),
                line: r.line_of("dir"),
                message: format!("{} is not a directory", dir.display()),
            });
            continue;
        }
        if let Err(message) = exec::resolve_command(e, &dir) {
            problems.push(Problem {
                key: r.key("command"),
                line: r.line_of("command"),
                message,
            });
        }
    }
    problems
}

/// Which runner takes a subject: the first whose `match` matches, in
/// file order.
#[derive(Debug, Clone, Default)]
pub struct Router {
    patterns: Vec<Regex>,
}

impl Router {
    /// A router over the runners' patterns, in order.
    pub fn new(runners: &[RunnerConfig]) -> Router {
        Router {
            patterns: runners.iter().map(|r| r.pattern.0.clone()).collect(),
        }
    }

    /// The index of the runner that takes `subject`, if any.
    pub fn route(&self, subject: &str) -> Option<usize> {
        self.patterns.iter().position(|p| p.is_match(subject))
    }
}

/// A running runner, as the hub sees it.
pub trait Executor: Send {
    /// The runner's name.
    fn name(&self) -> &str;
    /// Queues a job; gives it back when the runner is full. Never blocks.
    #[allow(clippy::result_large_err)]
    fn try_submit(&self, job: Job) -> Result<(), Job>;
    /// Requests it runs at once.
    fn slots(&self) -> usize;
    /// Stops taking work and returns the jobs it had not started. Requests
    /// running may go on until `deadline`.
    fn stop_taking(&mut self, deadline: Instant) -> Vec<Job>;
    /// Waits for running requests until the deadline given to
    /// [`Executor::stop_taking`] (their completions go to `done` as
    /// usual), then ends what is left: an exec runner's children get
    /// SIGTERM, then SIGKILL; none is left behind.
    fn finish(&mut self);
}

/// Queues a job on a runner's channel without blocking: gives it back when
/// the channel is full, or gone (`None`: the runner stopped taking work).
#[allow(clippy::result_large_err)]
fn submit(tx: &Option<Sender<Job>>, job: Job) -> Result<(), Job> {
    match tx {
        Some(tx) => tx.try_send(job).map_err(|e| e.into_inner()),
        None => Err(job),
    }
}

/// Starts the executor of one runner.
pub fn start(
    cfg: &RunnerConfig,
    scripts_dir: &Path,
    done: Sender<Completion>,
    waker: Waker,
) -> Result<Box<dyn Executor>, RunnerError> {
    Ok(match &cfg.kind {
        RunnerKind::Http(h) => Box::new(http::HttpRunner::start(&cfg.name, h, done, waker)?),
        RunnerKind::Exec(e) => Box::new(exec::ExecRunner::start(
            &cfg.name,
            e,
            scripts_dir,
            done,
            waker,
        )?),
    })
}

/// The runners the hub holds: router, executors, and a bounded backlog per
/// runner for jobs that arrive while it is full.
pub struct Runners {
    router: Router,
    executors: Vec<Box<dyn Executor>>,
    backlogs: Vec<VecDeque<Job>>,
    backlog_limit: usize,
}

impl Runners {
    /// No runners: every subject goes to Lua.
    pub fn none() -> Runners {
        Runners {
            router: Router::default(),
            executors: Vec::new(),
            backlogs: Vec::new(),
            backlog_limit: 0,
        }
    }

    /// Starts every runner. At most `backlog_limit` jobs wait in the hub
    /// per runner while it is full.
    pub fn start(
        configs: &[RunnerConfig],
        scripts_dir: &Path,
        done: &Sender<Completion>,
        waker: &Waker,
        backlog_limit: usize,
    ) -> Result<Runners, RunnerError> {
        let mut executors = Vec::with_capacity(configs.len());
        for cfg in configs {
            match start(cfg, scripts_dir, done.clone(), waker.clone()) {
                Ok(e) => executors.push(e),
                Err(e) => {
                    // Those already started end now; nothing ran on them.
                    let now = Instant::now();
                    for mut started in executors {
                        started.stop_taking(now);
                        started.finish();
                    }
                    return Err(e);
                }
            }
        }
        Ok(Runners::with(
            Router::new(configs),
            executors,
            backlog_limit,
        ))
    }

    /// Runners over executors already started (tests use their own).
    pub fn with(
        router: Router,
        executors: Vec<Box<dyn Executor>>,
        backlog_limit: usize,
    ) -> Runners {
        Runners {
            backlogs: executors.iter().map(|_| VecDeque::new()).collect(),
            router,
            executors,
            backlog_limit,
        }
    }

    /// Whether there is any runner.
    pub fn is_empty(&self) -> bool {
        self.executors.is_empty()
    }

    /// Requests all runners run at once.
    pub fn slots(&self) -> usize {
        self.executors.iter().map(|e| e.slots()).sum()
    }

    /// Jobs waiting in the hub's backlogs.
    pub fn backlogged(&self) -> usize {
        self.backlogs.iter().map(VecDeque::len).sum()
    }

    /// The runner that takes `subject`, if any.
    pub fn route(&self, subject: &str) -> Option<usize> {
        self.router.route(subject)
    }

    /// Gives `job` to runner `i`, or keeps it in its backlog when the
    /// runner is full (in arrival order: nothing overtakes the backlog).
    /// The backlog holds the limit plus `extra` (the credit granted for
    /// waiting retries, which come back through here); beyond, the job is
    /// given back with the runner's name.
    #[allow(clippy::result_large_err)]
    pub fn place(&mut self, i: usize, job: Job, extra: usize) -> Result<(), (Job, String)> {
        let job = if self.backlogs[i].is_empty() {
            match self.executors[i].try_submit(job) {
                Ok(()) => return Ok(()),
                Err(job) => job,
            }
        } else {
            job
        };
        if self.backlogs[i].len() >= self.backlog_limit + extra {
            return Err((job, self.executors[i].name().to_string()));
        }
        self.backlogs[i].push_back(job);
        Ok(())
    }

    /// Moves backlogged jobs to their runners while they have room.
    pub fn feed(&mut self) {
        for (e, backlog) in self.executors.iter().zip(self.backlogs.iter_mut()) {
            while let Some(job) = backlog.pop_front() {
                if let Err(job) = e.try_submit(job) {
                    backlog.push_front(job);
                    break;
                }
            }
        }
    }

    /// Stops every runner taking work; returns what none of them started
    /// (the backlogs included). Running requests may go on until
    /// `deadline`.
    pub fn stop_taking(&mut self, deadline: Instant) -> Vec<Job> {
        let mut out = Vec::new();
        for (e, backlog) in self.executors.iter_mut().zip(self.backlogs.iter_mut()) {
            out.extend(e.stop_taking(deadline));
            out.extend(backlog.drain(..));
        }
        out
    }

    /// Lets running requests finish until the deadline given to
    /// [`Runners::stop_taking`], then ends the runners (see
    /// [`Executor::finish`]). All runners wait at once.
    pub fn finish(self) {
        let handles: Vec<_> = self
            .executors
            .into_iter()
            .map(|mut e| {
                std::thread::Builder::new()
                    .name(format!("alaska-stop-{}", e.name()))
                    .spawn(move || e.finish())
            })
            .collect();
        for h in handles {
            match h {
                Ok(h) => {
                    let _ = h.join();
                }
                Err(e) => tracing::error!("stopping a runner: {e}"),
            }
        }
        // What handlers started and left behind (setsid, double fork):
        // re-parented to us (the subreaper), ended now.
        exec::end_orphans(KILL_GRACE);
    }
}

/// How long a child may take to exit after SIGTERM, when the shutdown
/// timeout has already run out, before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::types::Request;
    use std::sync::{Arc, Mutex};

    fn cfg(name: &str, pattern: &str) -> RunnerConfig {
        RunnerConfig {
            name: name.into(),
            pattern: Pattern(Regex::new(pattern).unwrap()),
            kind: RunnerKind::Http(HttpConfig {
                url: "http://127.0.0.1:1/".into(),
                timeout: Duration::from_secs(1),
                concurrency: 1,
                headers: Vec::new(),
            }),
            lines: Vec::new(),
        }
    }

    #[test]
    fn first_match_in_file_order_wins() {
        let r = Router::new(&[cfg("a", "^orders\\."), cfg("b", "orders"), cfg("c", ".*")]);
        assert_eq!(r.route("orders.new"), Some(0));
        assert_eq!(r.route("old-orders"), Some(1));
        assert_eq!(r.route("anything"), Some(2));
        let r = Router::new(&[cfg("a", "^x$")]);
        assert_eq!(r.route("xy"), None);
        assert_eq!(Router::default().route("x"), None);
    }

    /// An executor that holds `room` jobs and records what it was given.
    struct Fake {
        room: usize,
        taken: Arc<Mutex<Vec<u64>>>,
    }

    impl Executor for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        fn try_submit(&self, job: Job) -> Result<(), Job> {
            let mut t = self.taken.lock().unwrap();
            if t.len() >= self.room {
                return Err(job);
            }
            t.push(job.id);
            Ok(())
        }
        fn slots(&self) -> usize {
            self.room
        }
        fn stop_taking(&mut self, _deadline: Instant) -> Vec<Job> {
            Vec::new()
        }
        fn finish(&mut self) {}
    }

    fn job(id: u64) -> Job {
        Job {
            id,
            request: Request {
                sender: "s".into(),
                address: "a".into(),
                subject: "x".into(),
                tracker: String::new(),
                content: vec![],
                attempt: 1,
                hops: 0,
            },
        }
    }

    #[test]
    fn a_full_runner_backlogs_in_order_then_refuses() {
        let taken = Arc::new(Mutex::new(Vec::new()));
        let fake = Fake {
            room: 1,
            taken: taken.clone(),
        };
        let mut r = Runners::with(Router::new(&[cfg("f", ".*")]), vec![Box::new(fake)], 2);
        assert!(r.place(0, job(1), 0).is_ok());
        assert!(r.place(0, job(2), 0).is_ok());
        assert!(r.place(0, job(3), 0).is_ok());
        assert_eq!(r.backlogged(), 2);
        let (back, name) = r.place(0, job(4), 0).unwrap_err();
        assert_eq!((back.id, name.as_str()), (4, "fake"));
        // Credit granted for waiting retries makes room for them.
        assert!(r.place(0, job(4), 1).is_ok());
        assert_eq!(r.backlogged(), 3);
        // Room again: the backlog goes first, in order.
        taken.lock().unwrap().clear();
        r.feed();
        assert_eq!(*taken.lock().unwrap(), vec![2]);
        taken.lock().unwrap().clear();
        r.feed();
        assert_eq!(*taken.lock().unwrap(), vec![3]);
        taken.lock().unwrap().clear();
        r.feed();
        assert_eq!(*taken.lock().unwrap(), vec![4]);
        assert_eq!(r.backlogged(), 0);
        let left = r.stop_taking(Instant::now());
        assert!(left.is_empty());
    }
}
