//! The VM pool: `size` threads, each owning one long-lived Lua VM, fed by
//! one bounded channel. (The worker's dispatcher owns one more VM of its
//! own, which takes jobs from the same channel when it is idle.)
//!
//! An idle VM takes the next job, so a slow request occupies one VM and
//! never holds up the others. The channel holds at most `backlog` waiting
//! jobs; [`Pool::try_submit`] never blocks and gives the job back when the
//! pool is full, so the dispatcher decides what overload means. Each
//! finished job goes back as a [`Completion`] on the `done` channel, and a
//! [`Waker`] pokes the dispatcher out of its poll.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::pool_config::PoolConfig;
use super::shared::SharedDict;
use super::types::{Completion, ErrorKind, Job, Request, RunResult};
use super::vm::Vm;
use super::wake::Waker;
use crate::time::after;

/// Why the pool could not start.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A VM could not be created.
    #[error("creating a Lua VM: {0}")]
    Lua(String),
    /// A thread could not be started.
    #[error("starting a VM thread: {0}")]
    Thread(#[from] std::io::Error),
    /// Bad settings.
    #[error("{0}")]
    Config(String),
}

/// The running pool.
pub struct Pool {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    size: usize,
    shared: Arc<SharedDict>,
    /// Each VM's memory figure (see [`Vm::memory_gauge`]).
    memory: Vec<Arc<AtomicU64>>,
    /// Kept even with no threads: the other end polls for it, and a
    /// closed pipe would read as always ready.
    _waker: Waker,
}

impl Pool {
    /// Creates `cfg.size` VMs (each on its thread, sharing one new
    /// `alaska.shared`) and starts taking jobs.
    pub fn start(
        cfg: PoolConfig,
        done: Sender<Completion>,
        waker: Waker,
    ) -> Result<Pool, PoolError> {
        let shared = Arc::new(SharedDict::new(cfg.shared_bytes));
        Pool::start_with(cfg, shared, done, waker)
    }

    /// As [`Pool::start`], with `alaska.shared` given (the dispatcher's own
    /// VM shares it). A pool of 0 threads is allowed: its channel is then
    /// read by the dispatcher's VM alone.
    pub fn start_with(
        cfg: PoolConfig,
        shared: Arc<SharedDict>,
        done: Sender<Completion>,
        waker: Waker,
    ) -> Result<Pool, PoolError> {
        let size = cfg.size;
        let cfg = Arc::new(cfg);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(cfg.backlog.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(size);
        let mut memory = Vec::with_capacity(size);
        for n in 0..size {
            // Create the VM here so a failure is a start-up error, then
            // move it to its thread (mlua's `send` feature allows that).
            let vm = Vm::with_shared(cfg.clone(), shared.clone())
                .map_err(|e| PoolError::Lua(e.to_string()))?;
            memory.push(vm.memory_gauge());
            let (cfg, rx, done, waker, stop, shared) = (
                cfg.clone(),
                rx.clone(),
                done.clone(),
                waker.clone(),
                stop.clone(),
                shared.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name(format!("alaska-vm-{n}"))
                    .spawn(move || vm_thread(vm, cfg, rx, done, waker, stop, shared))?,
            );
        }
        Ok(Pool {
            tx,
            rx,
            stop,
            threads,
            size,
            shared,
            memory,
            _waker: waker,
        })
    }

    /// Each VM's memory in bytes as of its last request, one figure per
    /// VM (a replaced VM reports in its predecessor's place).
    pub fn memory_gauges(&self) -> Vec<Arc<AtomicU64>> {
        self.memory.clone()
    }

    /// The dictionary the pool's VMs share.
    pub fn shared(&self) -> Arc<SharedDict> {
        self.shared.clone()
    }

    /// The receiving end of the job channel, for a VM outside the pool
    /// that takes jobs when it is idle.
    pub fn receiver(&self) -> Receiver<Job> {
        self.rx.clone()
    }

    /// Jobs waiting in the channel.
    pub fn waiting(&self) -> usize {
        self.tx.len()
    }

    /// Queues a job; gives it back when the backlog is full. Never blocks.
    #[allow(clippy::result_large_err)]
    pub fn try_submit(&self, job: Job) -> Result<(), Job> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j)) | Err(TrySendError::Disconnected(j)) => Err(j),
        }
    }

    /// Number of VMs.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Stops taking work: jobs already running finish (their completions
    /// go to `done` as usual) within `deadline`; jobs never started are
    /// returned. Threads still busy after the deadline are left to finish
    /// on their own.
    pub fn shutdown(self, deadline: Duration) -> Vec<Job> {
        self.stop.store(true, Ordering::SeqCst);
        let mut unstarted = Vec::new();
        while let Ok(job) = self.rx.try_recv() {
            unstarted.push(job);
        }
        drop(self.tx);
        let until = after(Instant::now(), deadline);
        let mut threads = self.threads;
        while !threads.is_empty() && Instant::now() < until {
            threads.retain(|t| !t.is_finished());
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in threads {
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!(
                    "{} still running after the shutdown timeout",
                    t.thread().name().unwrap_or("a VM thread")
                );
            }
        }
        unstarted
    }
}

fn vm_thread(
    mut vm: Vm,
    cfg: Arc<PoolConfig>,
    rx: Receiver<Job>,
    done: Sender<Completion>,
    waker: Waker,
    stop: Arc<AtomicBool>,
    shared: Arc<SharedDict>,
) {
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        // Blocks without waking up when idle; the channel is disconnected
        // when the pool shuts down.
        let Ok(job) = rx.recv() else {
            return;
        };
        let Job { id, request } = job;
        let (request, run, replace) = match catch_unwind(AssertUnwindSafe(|| vm.run(request))) {
            Ok((request, run)) => (request, run, vm.poisoned),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                let run = RunResult::failed(
                    ErrorKind::Panic,
                    format!("internal error while running the script: {what}"),
                );
                // The request is still where the VM keeps it during a run
                // (or, if the panic came before, lost: say so).
                let request = vm.take_request().unwrap_or_else(Request::lost);
                (request, run, true)
            }
        };
        let _ = done.send(Completion { id, request, run });
        waker.wake();
        if replace {
            match Vm::with_shared(cfg.clone(), shared.clone()) {
                Ok(mut fresh) => {
                    tracing::info!("Lua VM replaced after a memory breach or internal error");
                    fresh.share_memory_gauge(vm.memory_gauge());
                    vm = fresh;
                }
                Err(e) => tracing::error!("could not replace a Lua VM: {e}; keeping the old one"),
            }
        }
    }
}
