//! A VM's budget: the running request's deadline, the flags that say how
//! it ended, and the duty its owner does while it runs. A leaf, shared by
//! the VM, its API functions and `alaska.call` (through [`Budget`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The error text of a time budget breach (also how a breach is told from
/// other errors that carry it).
pub const BUDGET_MESSAGE: &str = "time budget exceeded";

/// Work the owner of a VM does while that VM runs a long request on the
/// owner's own thread: called from the VM's hook with a zero wait about
/// every [`DUTY_EVERY`] of running, and from `alaska.sleep` with the time
/// left to sleep (it may return sooner). The dispatcher uses it to keep
/// its connections alive and hand new requests to other VMs.
pub type Duty = Box<dyn FnMut(Duration) + Send>;

/// How often a running request lets its VM's owner do its [`Duty`].
pub const DUTY_EVERY: Duration = Duration::from_millis(1);

/// Shared between the VM, its hook and `alaska.sleep`: the running
/// request's deadline, and the owner's duty.
pub struct Budget {
    base: Instant,
    /// Nanoseconds after `base`; 0 when no request runs.
    deadline: AtomicU64,
    pub(crate) timed_out: AtomicBool,
    pub(crate) out_of_memory: AtomicBool,
    /// The deadline was brought forward by a stop.
    pub(crate) cut: AtomicBool,
    /// Nanoseconds after `base` when the duty is due next.
    next_duty: AtomicU64,
    pub(crate) duty: std::sync::Mutex<Option<Duty>>,
}

impl Budget {
    pub(crate) fn new() -> Budget {
        Budget {
            base: Instant::now(),
            deadline: AtomicU64::new(0),
            timed_out: AtomicBool::new(false),
            out_of_memory: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            next_duty: AtomicU64::new(0),
            duty: std::sync::Mutex::new(None),
        }
    }

    /// Runs the duty if one is set and it is due (or `force`), waiting at
    /// most `wait`. Returns whether there was a duty to run.
    pub fn duty(&self, wait: Duration, force: bool) -> bool {
        let now = nanos(self.base.elapsed());
        if !force && now < self.next_duty.load(Ordering::Relaxed) {
            return true;
        }
        self.next_duty
            .store(now.saturating_add(nanos(DUTY_EVERY)), Ordering::Relaxed);
        // try_lock: the duty never runs inside itself.
        match self.duty.try_lock() {
            Ok(mut guard) => match guard.as_mut() {
                Some(f) => {
                    f(wait);
                    true
                }
                None => false,
            },
            Err(_) => false,
        }
    }

    pub(crate) fn arm(&self, timeout: Duration) {
        let now = self.base.elapsed();
        self.timed_out.store(false, Ordering::Relaxed);
        self.out_of_memory.store(false, Ordering::Relaxed);
        self.cut.store(false, Ordering::Relaxed);
        self.next_duty
            .store(nanos(now.saturating_add(DUTY_EVERY)), Ordering::Relaxed);
        let at = nanos(now.saturating_add(timeout)).max(1);
        self.deadline.store(at, Ordering::Relaxed);
    }

    pub(crate) fn disarm(&self) {
        self.deadline.store(0, Ordering::Relaxed);
    }

    /// The running request's deadline, as stored (0: none), to arm again
    /// when a parked request resumes.
    pub(crate) fn deadline_raw(&self) -> u64 {
        self.deadline.load(Ordering::Relaxed)
    }

    /// Arms for a resumed request: its own deadline, flags cleared.
    pub(crate) fn arm_raw(&self, at: u64) {
        self.timed_out.store(false, Ordering::Relaxed);
        self.out_of_memory.store(false, Ordering::Relaxed);
        self.cut.store(false, Ordering::Relaxed);
        self.next_duty.store(
            nanos(self.base.elapsed().saturating_add(DUTY_EVERY)),
            Ordering::Relaxed,
        );
        self.deadline.store(at.max(1), Ordering::Relaxed);
    }

    /// Time left, or `None` when no request runs.
    pub fn left(&self) -> Option<Duration> {
        let d = self.deadline.load(Ordering::Relaxed);
        (d != 0).then(|| Duration::from_nanos(d).saturating_sub(self.base.elapsed()))
    }

    /// Brings the running request's deadline forward to `within` from now
    /// (never later than it was): a stopping worker gives what runs the
    /// shutdown timeout, not the rest of a long budget.
    pub fn shorten(&self, within: Duration) {
        let at = nanos(self.base.elapsed().saturating_add(within)).max(1);
        if self
            .deadline
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| {
                (d != 0 && at < d).then_some(at)
            })
            .is_ok()
        {
            self.cut.store(true, Ordering::Relaxed);
        }
    }

    /// Marks the running request as out of time.
    pub fn breach(&self) {
        self.timed_out.store(true, Ordering::Relaxed);
    }

    /// Whether Lua code must stop now: the request is out of time, or no
    /// request runs at all (code running then, a finalizer say, belongs to
    /// no request and has no budget).
    pub(crate) fn expired(&self) -> bool {
        if self.timed_out.load(Ordering::Relaxed) {
            return true;
        }
        match self.left() {
            None => true,
            Some(l) if l.is_zero() => {
                self.breach();
                true
            }
            Some(_) => false,
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
