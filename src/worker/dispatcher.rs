//! The dispatcher: the one thread that owns the worker's broker
//! connections, and one Lua VM of its own.
//!
//! It connects to every broker of [`DispatcherOptions::endpoints`] without
//! waiting for any (a broker that is down at start is offered to when it
//! comes), under one address, and offers the service on each; the hub
//! serves them all from one queue and one pool.
//!
//! It offers the service, receives SERVICE DELIVERs and runs each on its
//! own VM when that VM is idle: a short request then costs no hand-off to
//! another thread and no wake-up, which is most of what a trivial script
//! costs otherwise. While its VM runs a request longer than a millisecond,
//! the VM's duty (see [`super::vm::Duty`]) lets the dispatcher do its
//! I/O from within the hook: pings go on, finished requests of the other
//! VMs are sent, and new requests go to the pool's VMs (`pool/size` - 1
//! threads), so a slow request never blocks the others. What each finished
//! request decided (see [`super::outcomes`]) is carried out by the
//! [`super::hub::Hub`]: the handler's stream sends and mails in the order
//! it made them, then the reply, the retry, the forward or the dead letter.
//!
//! Overload is explicit. With the project's broker the worker grants credit
//! for exactly what the pool can hold (VMs plus backlog), so the broker
//! keeps the rest. With a broker that pushes (the reference Malamute), a
//! bounded overflow queue absorbs bursts and a request beyond it is
//! reported to the error mailbox instead of being buffered without bound.
//!
//! Retries wait here, bounded by `retry_pending`. With the project's broker
//! a waiting request stays unconfirmed, so if this worker dies the broker
//! gives it to another worker (at least once); each request that starts
//! waiting beyond the most that ever waited before is granted one more
//! credit, so waiting retries do not shrink the window for new work. At a
//! graceful stop, waiting retries are handed back to the service (with
//! their attempt count in an envelope tracker) and then confirmed.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::hub::{Conn, Hub};
use super::pool::{Pool, PoolError};
use super::pool_config::PoolConfig;
use super::runners::Runners;
use super::shared::SharedDict;
use super::status::WorkerOps;
use super::types::{Completion, ErrorKind, Job, Request, RunResult};
use super::vm::{Step, Vm, DUTY_EVERY};
use super::wake::waker;
use crate::mlm::Client;
use crate::ops::notify::Liveness;

pub use super::options::{DispatcherOptions, WorkerError, ERROR_REPLY_PREFIX};

/// How long the dispatcher sleeps at most when idle: how late a stop (a
/// flag) is noticed.
const IDLE_WAIT: Duration = Duration::from_millis(250);

/// Runs the worker until `shutdown` is set, then stops gracefully.
pub fn run(
    opts: DispatcherOptions,
    pool_cfg: PoolConfig,
    shutdown: Arc<AtomicBool>,
) -> Result<(), WorkerError> {
    let ops = WorkerOps::new(Default::default()).map_err(|e| PoolError::Config(e.to_string()))?;
    run_with(opts, pool_cfg, shutdown, ops)
}

/// [`run`], reporting to `ops`: metrics, health, status, maintenance
/// asked over HTTP, liveness and systemd notifications (`READY=1` once the
/// offer is recorded on every connection, `STOPPING=1` when the stop
/// begins).
pub fn run_with(
    opts: DispatcherOptions,
    mut pool_cfg: PoolConfig,
    shutdown: Arc<AtomicBool>,
    ops: WorkerOps,
) -> Result<(), WorkerError> {
    pool_cfg.book = ops.board.scripts().clone();
    ops.board.describe(&opts.service, &opts.filter);
    ops.board.describe_runners(
        opts.runners
            .iter()
            .map(|r| super::status::RunnerInfo {
                name: r.name.clone(),
                kind: match &r.kind {
                    super::runners::RunnerKind::Http(_) => "http".into(),
                    super::runners::RunnerKind::Exec(_) => "exec".into(),
                },
                pattern: r.pattern.0.as_str().to_string(),
                target: match &r.kind {
                    super::runners::RunnerKind::Http(h) => h.url.clone(),
                    super::runners::RunnerKind::Exec(e) => e.command.join(" "),
                },
                slots: r.slots(),
            })
            .collect(),
    );
    let capacity = pool_cfg.size + pool_cfg.backlog;
    let vms = pool_cfg.size.max(1);
    let shared = Arc::new(SharedDict::new(pool_cfg.shared_bytes));
    let cfg = Arc::new(pool_cfg.clone());
    let mut vm =
        Vm::with_shared(cfg.clone(), shared.clone()).map_err(|e| PoolError::Lua(e.to_string()))?;
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let (wake, wake_rx) = waker()?;
    ops.board.set_waker(wake.clone());
    // alaska.call: the VMs hand calls to the hub over this channel.
    let (calls_tx, calls_rx) = crossbeam_channel::unbounded();
    pool_cfg.reach.wire(
        super::reach::CallLine {
            tx: calls_tx,
            wake: wake.clone(),
        },
        &opts.service,
        vms,
        opts.policy.max_hops,
    );
    pool_cfg.reach.set_metrics(ops.metrics.calls.clone());
    // The dispatcher's own VM is one of `size`.
    let threaded = PoolConfig {
        size: vms - 1,
        ..pool_cfg
    };
    // Runners report on the same channel and wake the same way as the
    // pool. Their slots add to the credit, and a runner that is full keeps
    // at most the whole credit waiting in the hub, so with
    // acknowledgements nothing is refused for lack of room.
    let slots: usize = opts.runners.iter().map(|r| r.slots()).sum();
    let runners = Runners::start(
        &opts.runners,
        &cfg.scripts_dir,
        &done_tx,
        &wake,
        capacity + slots,
    )?;
    let pool = Pool::start_with(threaded, shared.clone(), done_tx, wake.clone())?;
    ops.metrics.set_vm_memory(
        std::iter::once(vm.memory_gauge())
            .chain(pool.memory_gauges())
            .collect(),
    );
    let mut client_opts = opts.client.clone();
    client_opts.credit = opts
        .acknowledge
        .then(|| (capacity + slots).min(u16::MAX as usize) as u16);
    let endpoints = if opts.endpoints.is_empty() {
        vec![opts.client.endpoint.clone()]
    } else {
        opts.endpoints.clone()
    };
    ops.systemd
        .status(&format!("connecting to {}", endpoints.join(",")));
    // Every connection starts without waiting for its broker: one that is
    // down holds nothing up, and its offer goes out when it comes.
    let maintenance = ops.board.maintenance_wanted();
    let ctx = zmq::Context::new();
    let mut conns = Vec::with_capacity(endpoints.len());
    let nats = endpoints.iter().filter(|e| is_nats(e)).count();
    if nats > 0 && nats < endpoints.len() {
        return Err(WorkerError::Nats(format!(
            "worker/broker/endpoint mixes nats:// and MLM endpoints ({}): one kind per worker",
            endpoints.join(",")
        )));
    }
    if nats > 0 {
        // One NATS connection for the whole list: the servers of one
        // cluster, which the client fails over between by itself.
        let mut nats_opts = opts.nats.clone();
        if let Some(j) = &mut nats_opts.jetstream {
            // As the MLM credit: what the pool and runners can hold.
            j.max_ack_pending = (capacity + slots).min(i64::MAX as usize) as i64;
        }
        let mut link = super::nats::NatsLink::start(
            &endpoints,
            nats_opts,
            &opts.service,
            &opts.filter,
            wake.clone(),
        )
        .map_err(WorkerError::Nats)?;
        if maintenance {
            link.set_maintenance(true);
        }
        conns.push(Conn::nats(link));
    }
    for endpoint in endpoints.iter().filter(|_| nats == 0) {
        let mut o = client_opts.clone();
        o.endpoint = endpoint.clone();
        let mut client = Client::connect_lazy_in(&ctx, o)?;
        if maintenance {
            // Asked before we started: in place before the offer.
            client.set_maintenance(true)?;
        }
        client.set_worker(&opts.service, &opts.filter)?;
        conns.push(Conn::new(client));
    }
    tracing::info!(
        service = %opts.service,
        filter = %opts.filter,
        endpoints = %endpoints.join(","),
        "ready: {vms} Lua VMs"
    );
    for r in &opts.runners {
        tracing::info!(runner = %r.name, "runner for subjects matching {}", r.pattern.0.as_str());
    }
    // Ready once the service is offered wherever a broker answers: a
    // broker that is down is offered to when it comes, and /health says
    // which are connected (a worker waiting for its broker is not a
    // failed start).
    ops.systemd.ready(&format!(
        "serving {} ({}) on {}{}",
        opts.service,
        opts.filter,
        endpoints.join(","),
        if maintenance { ", in maintenance" } else { "" }
    ));
    // Each broker may hand us up to its whole credit at once, runner slots
    // included, and all of it may be for Lua: the queue holds that much
    // per connection (less, and a burst of Lua requests beside idle
    // runners overflowed it).
    let queue_limit = (capacity + slots) * conns.len();
    let mut hub = Box::new(Hub::new(opts, conns, pool, done_rx, wake_rx, queue_limit));
    hub.set_inline_budget(vm.budget());
    hub.set_runners(runners);
    hub.set_ops(ops.hub());
    hub.set_calls(calls_rx, cfg.reach.clone());
    let lent: Lent = Arc::default();
    vm.set_duty(duty(lent.clone(), shutdown.clone(), ops.liveness.clone()));
    // The dispatcher's VM parks requests waiting in alaska.call and runs
    // others meanwhile; their answers come here.
    let (answers_tx, answers) = crossbeam_channel::unbounded();
    vm.enable_parking(answers_tx.clone());
    let mut d = Dispatcher {
        hub: Some(hub),
        lent,
        vm,
        cfg,
        shared,
        liveness: ops.liveness.clone(),
        answers,
        answers_tx,
        parked_jobs: HashMap::new(),
    };
    let served = d.serve(&shutdown);
    // Parked requests end now: their calls are answered "stopping", and
    // their scripts run to their end (within their budgets).
    if let Err(e) = d.drain_parked() {
        tracing::warn!("stopping: {e}");
    }
    let Dispatcher { hub, mut vm, .. } = d;
    // The hub holds the VM's budget, which holds the duty: break the
    // cycle before the hub goes.
    drop(vm.take_duty());
    drop(vm);
    served?;
    match hub {
        Some(hub) => hub.stop(),
        // Only `Dispatcher::lend` takes it, and it puts it back.
        None => Ok(()),
    }
}

/// Whether `endpoint` is a NATS server (`nats://`, `tls://`).
pub fn is_nats(endpoint: &str) -> bool {
    endpoint.starts_with("nats://") || endpoint.starts_with("tls://")
}

/// Where the hub is while the dispatcher's VM runs a request: lent to the
/// VM's duty, which turns it (see [`Dispatcher::lend`]). Empty at all
/// other times.
type Lent = Arc<Mutex<Option<Box<Hub>>>>;

/// The work the dispatcher's VM lends its thread to while it runs a
/// request: one round of the hub's I/O (errors kept for the loop). Once a
/// stop is asked, the request gets the shutdown timeout, not the rest of
/// its budget. Each call is a sign of life for the watchdog: a script in a
/// long Lua loop keeps the pings going, one stuck in a C call does not.
///
/// The hub is in `lent` whenever the VM runs: the only code that runs the
/// dispatcher's VM is [`Dispatcher::lend`], which puts it there first. The
/// lock is never contended (one thread; nobody holds it while the VM
/// runs), so this never waits and never skips a turn for a busy lock.
fn duty(lent: Lent, shutdown: Arc<AtomicBool>, liveness: Liveness) -> super::vm::Duty {
    let mut cut = false;
    let mut told = false;
    Box::new(move |wait| {
        liveness.beat();
        let mut slot = lent.lock().unwrap_or_else(|p| p.into_inner());
        let Some(h) = slot.as_deref_mut() else {
            // Only a VM run that bypassed `lend` gets here: a bug, said
            // loudly (the broker would expire us for the missing pings).
            if !told {
                told = true;
                tracing::error!(
                    "the dispatcher's VM runs without its hub: no I/O until it ends (a bug of alaska's)"
                );
            }
            return;
        };
        if !cut && shutdown.load(Ordering::Relaxed) {
            cut = true;
            h.shorten_inline();
        }
        if h.fatal.is_some() {
            return;
        }
        if let Err(e) = h.turn(wait) {
            h.fatal = Some(e);
        }
    })
}

struct Dispatcher {
    /// The hub, between runs of the VM (lent to the VM's duty during them).
    hub: Option<Box<Hub>>,
    /// Where it is lent.
    lent: Lent,
    vm: Vm,
    cfg: Arc<PoolConfig>,
    shared: Arc<SharedDict>,
    /// Bumped at every turn of the loop (and by the VM's duty).
    liveness: Liveness,
    /// Answers to the calls of requests parked on the VM.
    answers: crossbeam_channel::Receiver<(u64, super::reach::Answered)>,
    answers_tx: crossbeam_channel::Sender<(u64, super::reach::Answered)>,
    /// The job of each parked request, by its token.
    parked_jobs: HashMap<u64, u64>,
}

/// Requests the dispatcher's VM holds parked in calls at most; beyond, new
/// requests wait for the pool or for a parked one to end.
const MAX_PARKED: usize = 1024;

impl Dispatcher {
    fn hub(&mut self) -> &mut Hub {
        // Always home here: only `lend` takes it, and `lend` holds `self`
        // until it has put it back.
        self.hub
            .as_deref_mut()
            .expect("the hub is lent only while the VM runs")
    }

    /// Runs the dispatcher's VM with the hub lent to its duty, and takes
    /// it back after (a panic in the VM is caught and returned). While the
    /// VM runs, the dispatcher has no hub to touch: the duty is its only
    /// user, by construction.
    fn lend<R>(&mut self, run: impl FnOnce(&mut Vm) -> R) -> std::thread::Result<R> {
        let hub = self.hub.take();
        *self.lent.lock().unwrap_or_else(|p| p.into_inner()) = hub;
        let vm = &mut self.vm;
        let r = catch_unwind(AssertUnwindSafe(|| run(vm)));
        self.hub = self.lent.lock().unwrap_or_else(|p| p.into_inner()).take();
        r
    }

    fn serve(&mut self, shutdown: &AtomicBool) -> Result<(), WorkerError> {
        let mut last_turn = Instant::now();
        while !shutdown.load(Ordering::Relaxed) {
            self.liveness.beat();
            self.settle_parked()?;
            let room = self.vm.parked() < MAX_PARKED;
            let job = {
                let h = self.hub();
                if let Some(e) = h.fatal.take() {
                    return Err(e);
                }
                if room {
                    h.take_inline()
                } else {
                    None
                }
            };
            let Some(job) = job else {
                let wait = match self.vm.next_deadline() {
                    Some(d) => d.saturating_duration_since(Instant::now()).min(IDLE_WAIT),
                    None => IDLE_WAIT,
                };
                let h = self.hub();
                h.turn(wait)?;
                // Credentials refused by every broker will not get better
                // by retrying: stop with the reason, as a single broker did.
                if let Some(e) = h.refused_everywhere() {
                    return Err(e.into());
                }
                last_turn = Instant::now();
                continue;
            };
            self.run_inline(job)?;
            // Between requests run back to back, look at the sockets (and
            // the pool's completions) at least every millisecond. With
            // nothing queued the loop's next turn polls at once anyway
            // (what the request sent, confirmation included, is out).
            let now = Instant::now();
            if now.duration_since(last_turn) >= DUTY_EVERY {
                self.hub().turn(Duration::ZERO)?;
                last_turn = now;
            }
        }
        Ok(())
    }

    /// Runs one job on the dispatcher's own VM; the hub's I/O goes on
    /// through the VM's duty meanwhile. A job that parks in `alaska.call`
    /// is finished later by [`Dispatcher::settle_parked`].
    fn run_inline(&mut self, job: Job) -> Result<(), WorkerError> {
        self.hub().set_inline_busy(true);
        let Job { id, request } = job;
        let step = self.lend(|vm| vm.start(request));
        self.hub().set_inline_busy(false);
        self.after_step(id, step)
    }

    /// Completes what a start or a resumption of job `id` ended in: done,
    /// parked (nothing to do yet), or a panic (reported; the VM replaced).
    fn after_step(&mut self, id: u64, step: std::thread::Result<Step>) -> Result<(), WorkerError> {
        let (request, run, replace) = match step {
            Ok(Step::Parked(token)) => {
                self.parked_jobs.insert(token, id);
                return Ok(());
            }
            Ok(Step::Done(request, run)) => (request, run, self.vm.poisoned),
            Err(_) => {
                let run = RunResult::failed(
                    ErrorKind::Panic,
                    "internal error while running the script (a bug of alaska's)",
                );
                let request = self.vm.take_request().unwrap_or_else(Request::lost);
                (request, run, true)
            }
        };
        self.hub().complete(Completion { id, request, run })?;
        if replace {
            self.replace_vm()?;
        }
        Ok(())
    }

    /// Resumes the parked requests whose answer came or whose time is up.
    fn settle_parked(&mut self) -> Result<(), WorkerError> {
        if self.parked_jobs.is_empty() {
            return Ok(());
        }
        let mut ready: Vec<(u64, Option<super::reach::Answered>)> = Vec::new();
        while let Ok((token, a)) = self.answers.try_recv() {
            ready.push((token, Some(a)));
        }
        ready.extend(self.vm.due(Instant::now()).into_iter().map(|t| (t, None)));
        for (token, answer) in ready {
            self.resume_one(token, answer)?;
        }
        Ok(())
    }

    /// Resumes one parked request with its call's answer (`None`: its
    /// time is up).
    fn resume_one(
        &mut self,
        token: u64,
        answer: Option<super::reach::Answered>,
    ) -> Result<(), WorkerError> {
        let Some(id) = self.parked_jobs.remove(&token) else {
            // Answered after its time was up (or twice): nobody waits.
            let http = matches!(answer, Some(super::reach::Answered::Http(_)));
            self.cfg.reach.late(http);
            return Ok(());
        };
        let step = self.lend(|vm| vm.resume(token, answer));
        match step {
            Ok(None) => Ok(()),
            Ok(Some(step)) => self.after_step(id, Ok(step)),
            Err(p) => self.after_step(id, Err(p)),
        }
    }

    /// At a stop: refuses new calls, answers the pending ones, and lets the
    /// parked requests run to their end (each within its budget).
    fn drain_parked(&mut self) -> Result<(), WorkerError> {
        if self.parked_jobs.is_empty() {
            return Ok(());
        }
        self.cfg.reach.stop();
        self.hub().fail_calls("the worker is stopping");
        let within = self.hub().shutdown_timeout();
        self.vm.cap_for_stop(within);
        let until = crate::time::after(Instant::now(), within);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if self.parked_jobs.is_empty() || left.is_zero() {
                break;
            }
            if let Ok((token, a)) = self
                .answers
                .recv_timeout(left.min(Duration::from_millis(10)))
            {
                self.resume_one(token, Some(a))?;
            }
            self.settle_parked()?;
        }
        Ok(())
    }

    /// A fresh VM after a memory breach or a panic; the duty moves over.
    /// Requests parked on the old VM cannot go on without it: each ends as
    /// failed, saying why (retried where the policy retries errors).
    fn replace_vm(&mut self) -> Result<(), WorkerError> {
        match Vm::with_shared(self.cfg.clone(), self.shared.clone()) {
            Ok(mut fresh) => {
                if let Some(d) = self.vm.take_duty() {
                    fresh.set_duty(d);
                }
                fresh.share_memory_gauge(self.vm.memory_gauge());
                fresh.enable_parking(self.answers_tx.clone());
                self.hub().set_inline_budget(fresh.budget());
                tracing::info!("Lua VM replaced after a memory breach or internal error");
                let old = std::mem::replace(&mut self.vm, fresh);
                self.abandon_parked(old)
            }
            Err(e) => {
                tracing::error!("could not replace a Lua VM: {e}; keeping the old one");
                Ok(())
            }
        }
    }

    /// Ends the requests parked on `old` (a VM being replaced) as failed.
    fn abandon_parked(&mut self, mut old: Vm) -> Result<(), WorkerError> {
        let ids: HashMap<u64, u64> = std::mem::take(&mut self.parked_jobs);
        let mut reqs = old.abandon_all_by_token();
        for (token, id) in ids {
            let request = reqs.remove(&token).unwrap_or_else(Request::lost);
            let run = RunResult::failed(
                ErrorKind::Runtime,
                "the Lua VM this request waited on was replaced (another request's memory \
                 breach or an internal error); request stopped",
            );
            self.hub().complete(Completion { id, request, run })?;
        }
        Ok(())
    }
}
