//! One long-lived Lua 5.4 VM and the scripting API it offers.
//!
//! A [`Vm`] runs one request at a time on whichever thread owns it.
//! Compiled chunks are cached per subject and recompiled when the file's
//! modification time, size or inode changes. Each request gets a fresh
//! global environment whose `__index` is the VM's shared globals, so a
//! global set by one request is not seen by the next, while modules loaded
//! by `require` stay loaded.
//!
//! The sandbox (`sandbox.lua`, run once per VM) is what makes the budgets
//! hold against hostile scripts: an instruction-count hook (installed as
//! mlua's global hook, so Lua 5.4 copies it into every coroutine) stops a
//! request past its time budget, and keeps stopping it (every hook call
//! after a breach raises again); the VM has a memory limit; no function
//! that reaches the hook, upvalues, locals, the registry or raw metatables
//! is left to scripts. See `docs/SANDBOX.md` for what a script can and
//! cannot do.
//!
//! Submodules: [`api`] (the API functions written in Rust), [`convert`]
//! (Lua values to and from what the worker sends).

pub mod api;
pub mod budget;
pub mod convert;
pub mod state;

pub use budget::{Budget, Duty, BUDGET_MESSAGE, DUTY_EVERY};
pub use state::RequestState;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mlua::{chunk::ChunkMode, Function, HookTriggers, Lua, LuaOptions, MultiValue, StdLib, Value};

use super::pool_config::PoolConfig;
use super::reach::{Answered, Waited};
use super::shared::SharedDict;
use super::subject::{script_path, SubjectError};
use super::types::{ErrorKind, Outcome, Request, RunResult, ScriptError};

/// How many VM instructions run between two looks at the clock.
const HOOK_EVERY: u32 = 1000;

/// The sandbox: run once per VM; returns the request runner.
const SANDBOX: &str = include_str!("sandbox.lua");

/// How a request's start (or resumption) on a VM ended.
#[derive(Debug)]
// A Step is moved once per request, straight to its consumer: boxing the
// common variant would cost an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// It ran to its end: the request, and what the run produced.
    Done(Request, RunResult),
    /// It waits in `alaska.call`, parked under this token.
    Parked(u64),
}

/// A request parked in `alaska.call`: its per-request state, its first
/// frame (lent to the script), its budget's deadline and its call.
struct Parked {
    state: RequestState,
    first: Vec<u8>,
    deadline: u64,
    info: Option<Waited>,
    parked_at: Instant,
}

impl Parked {
    /// When its wait is over at the latest.
    fn until(&self) -> Instant {
        self.info.as_ref().map_or(self.parked_at, Waited::until)
    }
}

/// What every script is compiled with in front of its first line: the
/// environment comes in as the chunk's argument, on the same line, so line
/// numbers in error messages stay those of the file.
const CHUNK_PREFIX: &[u8] = b"local _ENV = ...; ";

/// `alaska.<key>` for the request being run (see `sandbox.lua`).
fn metadata(lua: &Lua, key: mlua::LuaString) -> mlua::Result<Value> {
    let state = lua
        .app_data_ref::<RequestState>()
        .ok_or_else(|| mlua::Error::runtime("no request is running"))?;
    let Some(req) = state.current.as_ref() else {
        return Ok(Value::Nil);
    };
    let text = |s: &str| lua.create_string(s).map(Value::String);
    Ok(match &*key.as_bytes() {
        b"sender" => text(&req.sender)?,
        b"subject" => text(&req.subject)?,
        b"address" => text(&req.address)?,
        b"tracker" => text(&req.tracker)?,
        b"attempt" => Value::Integer(req.attempt as i64),
        b"hops" => Value::Integer(req.hops as i64),
        b"frames" => {
            let t = lua.create_table_with_capacity(req.content.len(), 0)?;
            for (i, f) in req.content.iter().enumerate() {
                t.raw_set(i + 1, lua.create_string(f)?)?;
            }
            Value::Table(t)
        }
        _ => Value::Nil,
    })
}

/// The most a request may `print` before its output is cut (a log is not
/// a place for a script's bulk data).
pub const PRINT_LIMIT: usize = 64 * 1024;

/// `print` of a script: one log line, tagged with the request's subject,
/// at most [`PRINT_LIMIT`] bytes a request (then one line saying the rest
/// was cut).
fn log_print(lua: &Lua, line: mlua::LuaString) -> mlua::Result<()> {
    let Some(mut state) = lua.app_data_mut::<RequestState>() else {
        return Ok(());
    };
    let subject = state
        .current
        .as_ref()
        .map(|r| r.subject.clone())
        .unwrap_or_default();
    let bytes = line.as_bytes();
    if state.printed >= PRINT_LIMIT {
        return Ok(());
    }
    state.printed = state.printed.saturating_add(bytes.len());
    if state.printed > PRINT_LIMIT {
        tracing::info!(script = %subject, "print: output cut at {PRINT_LIMIT} bytes for this request");
        return Ok(());
    }
    tracing::info!(script = %subject, "print: {}", String::from_utf8_lossy(&bytes));
    Ok(())
}

/// `package.path`: see where it is set in [`Vm::with_shared`].
fn lua_path(cfg: &PoolConfig) -> String {
    let mut dirs: Vec<String> = cfg
        .lua_path
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    let scripts =
        std::fs::canonicalize(&cfg.scripts_dir).unwrap_or_else(|_| cfg.scripts_dir.clone());
    dirs.push(scripts.join("lib").display().to_string());
    for d in [
        "/usr/local/share/lua/5.4",
        "/usr/local/lib/lua/5.4",
        "/usr/share/lua/5.4",
    ] {
        dirs.push(d.to_string());
    }
    dirs.iter()
        .map(|d| format!("{d}/?.lua;{d}/?/init.lua"))
        .collect::<Vec<_>>()
        .join(";")
}

/// A compiled script and the file it came from, as it was then.
struct Cached {
    path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
    dev: u64,
    func: Function,
}

impl Cached {
    fn unchanged(&self, meta: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.modified == meta.modified().ok()
            && self.len == meta.len()
            && self.ino == meta.ino()
            && self.dev == meta.dev()
    }
}

/// A Lua VM with the Alaska API. See the module documentation.
pub struct Vm {
    lua: Lua,
    /// The sandbox's `start(chunk, context)`, `resume(token, ...)` and
    /// `breach(token, message)`.
    start_fn: Function,
    resume_fn: Function,
    breach_fn: Function,
    /// Requests parked in `alaska.call`, by token (see [`Vm::enable_parking`]).
    parked: HashMap<u64, Parked>,
    /// Their due times (the end of each one's wait), soonest first.
    due_at: std::collections::BTreeSet<(Instant, u64)>,
    /// Set at a stop: a resumed request gets at most this long.
    stop_cap: Option<Duration>,
    /// Subjects whose scripts call (start them in a coroutine), on a VM
    /// that parks.
    callers: std::collections::HashSet<String>,
    /// Compiled scripts by subject.
    cache: HashMap<String, Cached>,
    budget: Arc<Budget>,
    cfg: Arc<PoolConfig>,
    /// Set after a memory breach: the pool replaces this VM.
    pub poisoned: bool,
    /// Bytes the VM holds, as of its last request: read by the metrics
    /// without touching the VM (which only its thread may).
    memory: Arc<AtomicU64>,
}

impl Vm {
    /// A fresh VM for `cfg` with an `alaska.shared` of its own.
    pub fn new(cfg: Arc<PoolConfig>) -> mlua::Result<Vm> {
        let shared = Arc::new(SharedDict::new(cfg.shared_bytes));
        Vm::with_shared(cfg, shared)
    }

    /// A fresh VM for `cfg` whose `alaska.shared` is `shared` (one per
    /// worker process, shared by all its VMs).
    pub fn with_shared(cfg: Arc<PoolConfig>, shared: Arc<SharedDict>) -> mlua::Result<Vm> {
        // The debug library is loaded for the sandbox's own use (traceback,
        // setupvalue); scripts only get a safe part of it.
        let lua =
            unsafe { Lua::unsafe_new_with(StdLib::ALL_SAFE | StdLib::DEBUG, LuaOptions::new()) };
        let budget = Arc::new(Budget::new());
        // Setting up runs Lua code too: give it a budget.
        budget.arm(Duration::from_secs(5));
        let hook_budget = budget.clone();
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                if hook_budget.expired() {
                    return Err(mlua::Error::runtime(BUDGET_MESSAGE));
                }
                hook_budget.duty(Duration::ZERO, false);
                Ok(mlua::VmState::Continue)
            },
        )?;
        let globals = lua.globals();
        api::install_send(
            &lua,
            &globals,
            &cfg.default_stream,
            &cfg.default_mailbox,
            cfg.memory,
        )?;
        let cjson = convert::cjson_module(
            &lua,
            convert::Bounds {
                max_bytes: cfg.memory,
                budget: Some(budget.clone()),
            },
        )?;
        let preload: mlua::Table = globals.get::<mlua::Table>("package")?.get("preload")?;
        let cj = cjson.clone();
        preload.set("cjson", lua.create_function(move |_, ()| Ok(cj.clone()))?)?;
        // Where `require` looks: the operator's folders, the scripts
        // folder's `lib/` (helpers, never subjects), then where Lua
        // libraries live on a system (as the stock lua5.4 looks, so
        // Debian's lua-penlight and LuaRocks' trees work). Never `./`: the
        // process's current folder is nobody's library.
        {
            let package: mlua::Table = globals.get("package")?;
            package.set("path", lua_path(&cfg))?;
        }
        let b = budget.clone();
        let breached = lua.create_function(move |_, e: Value| {
            if b.expired() {
                return Ok(true);
            }
            let oom = matches!(&e, Value::String(s) if s.as_bytes().starts_with(b"not enough memory"))
                || matches!(&e, Value::Error(err) if matches!(**err, mlua::Error::MemoryError(_)));
            if oom {
                b.out_of_memory.store(true, Ordering::Relaxed);
            }
            Ok(oom)
        })?;
        let options = lua.create_table()?;
        options.set("processes", cfg.processes)?;
        if let Some(cpath) = &cfg.lua_cpath {
            options.set("cpath", cpath.as_str())?;
        }
        // The memory limit is armed by the runner once inside the protected
        // call, and taken off after it: with a limit set, mlua protects
        // every value it pushes (a failing allocation must not unwind
        // through Rust), which costs more than the script itself for a
        // small request. Between requests no Lua code runs.
        let limit = cfg.memory;
        let arm_memory = lua.create_function(move |lua, ()| {
            lua.set_memory_limit(limit)?;
            Ok(())
        })?;
        let runner: mlua::Table = lua.load(SANDBOX).set_name("=alaska").call((
            breached,
            cjson.get::<Function>("encode")?,
            api::sleep_function(&lua, budget.clone())?,
            api::shared_functions(&lua, shared)?,
            options,
            arm_memory,
            lua.create_function(metadata)?,
            lua.create_function(log_print)?,
            crate::worker::reach::functions(&lua, cfg.reach.clone(), budget.clone(), cfg.memory)?,
        ))?;
        budget.disarm();
        lua.set_app_data(RequestState::default());
        let memory = Arc::new(AtomicU64::new(lua.used_memory() as u64));
        Ok(Vm {
            lua,
            start_fn: runner.get("start")?,
            resume_fn: runner.get("resume")?,
            breach_fn: runner.get("breach")?,
            parked: HashMap::new(),
            due_at: std::collections::BTreeSet::new(),
            stop_cap: None,
            callers: std::collections::HashSet::new(),
            cache: HashMap::new(),
            budget,
            cfg,
            poisoned: false,
            memory,
        })
    }

    /// Runs one request to its outcome (or to a failure), and gives the
    /// request back. For a VM that does not park (no
    /// [`Vm::enable_parking`]): its calls wait in place.
    pub fn run(&mut self, req: Request) -> (Request, RunResult) {
        match self.start(req) {
            Step::Done(req, run) => (req, run),
            Step::Parked(token) => {
                // Cannot happen without a park line; never leave it hanging.
                let req = self.abandon(token).unwrap_or_else(Request::lost);
                (
                    req,
                    RunResult::failed(
                        ErrorKind::Panic,
                        "a request parked on a VM that does not park",
                    ),
                )
            }
        }
    }

    /// Starts one request: it runs to its outcome ([`Step::Done`]), or
    /// parks in `alaska.call` ([`Step::Parked`]) until [`Vm::resume`].
    pub fn start(&mut self, req: Request) -> Step {
        let func = match self.script(&req.subject) {
            Ok(f) => f,
            Err(e) => {
                let run = RunResult {
                    outputs: Vec::new(),
                    result: Err(e),
                };
                return Step::Done(req, run);
            }
        };
        // The first frame goes to the script as alaskaContext; it is moved
        // out of the request for the call (no copy) and put back after.
        let mut req = req;
        let first = req
            .content
            .first_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        let parkable = !self.callers.is_empty() && self.callers.contains(&req.subject);
        if let Some(mut state) = self.lua.app_data_mut::<RequestState>() {
            state.active = true;
            state.current = Some(req);
        }
        self.budget.arm(self.cfg.timeout);
        // Only a script known to call starts in a coroutine (the first
        // request that calls waits in place and marks its script).
        // Text is pushed straight onto the stack (no memory limit is armed
        // yet, so mlua need not protect the push); other bytes go through
        // a Lua string.
        let called = match std::str::from_utf8(&first) {
            Ok(text) => self.start_fn.call((func, text, parkable)),
            Err(_) => self
                .lua
                .create_string(&first)
                .and_then(|ctx| self.start_fn.call((func, ctx, parkable))),
        };
        if self
            .lua
            .app_data_mut::<crate::worker::reach::ParkLine>()
            .is_some_and(|mut l| l.take_wanted())
        {
            let subject = self
                .lua
                .app_data_ref::<RequestState>()
                .and_then(|s| s.current.as_ref().map(|r| r.subject.clone()));
            self.callers.extend(subject);
        }
        self.settle(called, first)
    }

    /// Resumes the request parked as `token` with its call's answer
    /// (`None`: the call's time is up). `None` when no such request is
    /// parked here (it was answered already).
    pub fn resume(&mut self, token: u64, answer: Option<Answered>) -> Option<Step> {
        let p = self.parked.remove(&token)?;
        self.due_at.remove(&(p.until(), token));
        let Parked {
            state,
            first,
            deadline,
            info,
            ..
        } = p;
        if let Some(mut s) = self.lua.app_data_mut::<RequestState>() {
            *s = state;
            s.active = true;
        }
        self.budget.arm_raw(deadline);
        if let Some(cap) = self.stop_cap {
            self.budget.shorten(cap);
        }
        let reach = self.cfg.reach.clone();
        let values = match (&info, answer) {
            (Some(w), None) if w.budget_cuts() => None,
            (Some(Waited::Call(i)), a) => {
                let a = match a {
                    Some(Answered::Call(a)) => Some(a),
                    _ => None,
                };
                Some(crate::worker::reach::answer_values(&self.lua, &reach, i, a))
            }
            (Some(Waited::Http(i)), a) => {
                let a = match a {
                    Some(Answered::Http(r)) => Some(r),
                    _ => None,
                };
                Some(crate::worker::reach::http_values(
                    &self.lua,
                    &reach,
                    &*self.budget,
                    i,
                    a,
                ))
            }
            (None, _) => Some(Err(mlua::Error::runtime("the wait was lost"))),
        };
        let called = match values {
            Some(Ok(values)) => {
                let mut args = MultiValue::from_iter([Value::Integer(token as i64)]);
                args.extend(values);
                self.resume_fn.call(args)
            }
            // The request's budget, not the wait's own timeout, ends it.
            None => {
                if matches!(info, Some(Waited::Call(_))) {
                    crate::worker::reach::count_budget(&reach);
                }
                self.budget.breach();
                self.breach_fn.call((token, BUDGET_MESSAGE))
            }
            Some(Err(_)) if self.budget.expired() => self.breach_fn.call((token, BUDGET_MESSAGE)),
            Some(Err(e)) => self.breach_fn.call((token, e.to_string())),
        };
        Some(self.settle(called, first))
    }

    /// When the first parked request's call is due (its reply's timeout).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.due_at.first().map(|&(at, _)| at)
    }

    /// The parked requests whose wait is over at `now`.
    pub fn due(&self, now: Instant) -> Vec<u64> {
        match self.due_at.first() {
            Some(&(at, _)) if at <= now => self
                .due_at
                .iter()
                .take_while(|&&(at, _)| at <= now)
                .map(|&(_, t)| t)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The worker stops: requests resumed from now on get at most
    /// `within` (the shutdown timeout), not the rest of their budgets.
    pub fn cap_for_stop(&mut self, within: Duration) {
        self.stop_cap = Some(within);
    }

    /// Requests parked now.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Gives up every parked request (the VM is being replaced): the
    /// requests, as they came, by token.
    pub fn abandon_all_by_token(&mut self) -> HashMap<u64, Request> {
        let tokens: Vec<u64> = self.parked.keys().copied().collect();
        tokens
            .into_iter()
            .filter_map(|t| self.abandon(t).map(|r| (t, r)))
            .collect()
    }

    fn abandon(&mut self, token: u64) -> Option<Request> {
        let p = self.parked.remove(&token)?;
        self.due_at.remove(&(p.until(), token));
        let mut req = p.state.current?;
        if let Some(slot) = req.content.first_mut() {
            *slot = p.first;
        }
        Some(req)
    }

    /// From now on, requests of this VM waiting in `alaska.call` park:
    /// their answers come to `tx`, for the owner to [`Vm::resume`] them.
    pub fn enable_parking(&mut self, tx: crossbeam_channel::Sender<(u64, Answered)>) {
        self.lua
            .set_app_data(crate::worker::reach::ParkLine::new(tx));
    }

    /// What the sandbox's runner returned, made a [`Step`]: the request
    /// parked, or its outcome.
    fn settle(&mut self, called: mlua::Result<Returned>, first: Vec<u8>) -> Step {
        if let Ok((true, _, Some(kind), Value::Integer(token), _, _, _)) = &called {
            if kind.as_bytes().as_ref() == b"park" {
                let token = *token as u64;
                let deadline = self.budget.deadline_raw();
                self.budget.disarm();
                let _ = self.lua.set_memory_limit(0);
                let state = match self.lua.app_data_mut::<RequestState>() {
                    Some(mut s) => std::mem::take(&mut *s),
                    None => RequestState::default(),
                };
                let info = self
                    .lua
                    .app_data_mut::<crate::worker::reach::ParkLine>()
                    .and_then(|mut l| l.take(token));
                let p = Parked {
                    state,
                    first,
                    deadline,
                    info,
                    // Without its wait (never expected): resumed at once.
                    parked_at: Instant::now(),
                };
                self.due_at.insert((p.until(), token));
                self.parked.insert(token, p);
                return Step::Parked(token);
            }
        }
        let result = match called {
            Ok(values) => self.outcome(values),
            Err(e) => Err(self.failure(e.to_string())),
        };
        self.budget.disarm();
        // Values taken from the results are plain Rust values by now.
        let _ = self.lua.set_memory_limit(0);
        let (outputs, req) = match self.lua.app_data_mut::<RequestState>() {
            Some(mut state) => {
                state.active = false;
                state.output_bytes = 0;
                state.printed = 0;
                (std::mem::take(&mut state.outputs), state.current.take())
            }
            None => (Vec::new(), None),
        };
        // Whatever a failed request left behind is garbage now; collect
        // while the VM is idle rather than in the middle of the next one.
        if result.is_err() {
            let _ = self.lua.gc_collect();
        }
        let mut req = req.unwrap_or_else(|| Request {
            sender: String::new(),
            address: String::new(),
            subject: String::new(),
            tracker: String::new(),
            content: Vec::new(),
            attempt: 1,
            hops: 0,
        });
        if let Some(slot) = req.content.first_mut() {
            *slot = first;
        }
        self.memory
            .store(self.lua.used_memory() as u64, Ordering::Relaxed);
        Step::Done(req, RunResult { outputs, result })
    }

    /// The VM's memory figure (bytes, as of its last request), for
    /// metrics read from other threads.
    pub fn memory_gauge(&self) -> Arc<AtomicU64> {
        self.memory.clone()
    }

    /// Makes this VM (a replacement) report its memory where `gauge`, the
    /// figure of the VM it replaces, is read.
    pub fn share_memory_gauge(&mut self, gauge: Arc<AtomicU64>) {
        gauge.store(self.lua.used_memory() as u64, Ordering::Relaxed);
        self.memory = gauge;
    }

    /// Sets the work the VM's owner does while this VM runs a request on
    /// the owner's thread (see [`Duty`]).
    pub fn set_duty(&mut self, duty: Duty) {
        if let Ok(mut d) = self.budget.duty.lock() {
            *d = Some(duty);
        }
    }

    /// The budget of this VM's requests (for its owner to shorten).
    pub fn budget(&self) -> Arc<Budget> {
        self.budget.clone()
    }

    /// Takes the duty back (to give it to a replacement VM).
    pub fn take_duty(&mut self) -> Option<Duty> {
        self.budget.duty.lock().ok().and_then(|mut d| d.take())
    }

    /// The request a run left in the VM, after a panic cut the run short.
    pub fn take_request(&mut self) -> Option<Request> {
        self.lua
            .app_data_mut::<RequestState>()
            .and_then(|mut s| s.current.take())
    }

    /// Reads what the runner returned: `ok, value, kind, a, b, c`.
    fn outcome(&mut self, values: Returned) -> Result<Outcome, ScriptError> {
        let (ok, value, kind, a, b, c, d) = values;
        if !ok {
            let text = match &value {
                Value::String(s) => s.to_string_lossy(),
                other => format!("{other:?}"),
            };
            return Err(self.failure(text));
        }
        let kind = match kind {
            Some(k) => k.to_string_lossy(),
            None => {
                let bounds = convert::Bounds {
                    max_bytes: self.cfg.memory,
                    budget: Some(self.budget.clone()),
                };
                return match convert::reply(&self.lua, value, &bounds) {
                    Ok(reply) => Ok(Outcome::Done { reply }),
                    Err(e) => Err(ScriptError {
                        kind: ErrorKind::Protocol,
                        message: format!("reply: {e}"),
                    }),
                };
            }
        };
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.to_string_lossy()),
            _ => None,
        };
        Ok(match kind.as_str() {
            "retry" => Outcome::Retry {
                after: match a {
                    Value::Integer(ms) => Some(Duration::from_millis(ms.max(0) as u64)),
                    // NaN and negatives were refused by `alaska.retry`; a
                    // huge value (`math.huge`) is clamped, never a panic.
                    Value::Number(ms) => crate::time::from_ms_f64(ms),
                    _ => None,
                },
                reason: text(&b).unwrap_or_else(|| "the script asked to retry".into()),
            },
            "fail" => Outcome::Fail {
                reason: text(&a).unwrap_or_else(|| "failed".into()),
            },
            "drop" => Outcome::Drop,
            "forward" => Outcome::Forward {
                address: text(&a).unwrap_or_default(),
                subject: text(&b).unwrap_or_default(),
                content: match c {
                    Value::String(s) => Some(vec![s.as_bytes().to_vec()]),
                    Value::Table(t) => Some(
                        t.sequence_values::<mlua::LuaString>()
                            .map(|f| f.map(|s| s.as_bytes().to_vec()))
                            .collect::<mlua::Result<Vec<_>>>()
                            .map_err(|e| ScriptError {
                                kind: ErrorKind::Protocol,
                                message: format!("forward: {e}"),
                            })?,
                    ),
                    _ => None,
                },
                delay: match d {
                    Value::Integer(ms) => Some(Duration::from_millis(ms.max(0) as u64)),
                    // Checked by `alaska.forward`; a huge value is clamped.
                    Value::Number(ms) => crate::time::from_ms_f64(ms),
                    _ => None,
                },
            },
            other => {
                return Err(ScriptError {
                    kind: ErrorKind::Protocol,
                    message: format!("unknown outcome {other:?}"),
                })
            }
        })
    }

    /// Classifies a failure by the budget flags, then by the text.
    fn failure(&mut self, text: String) -> ScriptError {
        if self.budget.timed_out.load(Ordering::Relaxed) && self.budget.cut.load(Ordering::Relaxed)
        {
            return ScriptError {
                kind: ErrorKind::Stopped,
                message: format!("the worker is stopping and its shutdown timeout ran out; request stopped\n{text}"),
            };
        }
        if self.budget.timed_out.load(Ordering::Relaxed) {
            return ScriptError {
                kind: ErrorKind::Timeout,
                message: format!(
                    "time budget of {:?} exceeded; request stopped\n{text}",
                    self.cfg.timeout
                ),
            };
        }
        if self.budget.out_of_memory.load(Ordering::Relaxed) || text.contains("not enough memory") {
            self.poisoned = true;
            return ScriptError {
                kind: ErrorKind::Memory,
                message: format!(
                    "memory limit of {} bytes exceeded; request stopped\n{text}",
                    self.cfg.memory
                ),
            };
        }
        ScriptError {
            kind: ErrorKind::Runtime,
            message: text,
        }
    }

    fn script(&mut self, subject: &str) -> Result<Function, ScriptError> {
        // Fast path, one stat: a subject that was validated before (only
        // those are cached) whose file is still the same file, unchanged.
        if let Some(c) = self.cache.get(subject) {
            if std::fs::metadata(&c.path).is_ok_and(|m| c.unchanged(&m)) {
                return Ok(c.func.clone());
            }
        }
        let path = script_path(&self.cfg.scripts_dir, subject).map_err(|e| {
            let kind = match e {
                SubjectError::Missing { .. } => ErrorKind::MissingScript,
                _ => ErrorKind::BadSubject,
            };
            ScriptError {
                kind,
                message: e.to_string(),
            }
        })?;
        let missing = |e: std::io::Error| ScriptError {
            kind: ErrorKind::MissingScript,
            message: format!("{}: {e}", path.display()),
        };
        let meta = std::fs::metadata(&path).map_err(missing)?;
        let source = std::fs::read(&path).map_err(missing)?;
        // A script that names alaska.call starts in a coroutine on a VM
        // that parks (one that reaches it another way is found at its
        // first call, which waits in place).
        if source
            .windows(11)
            .any(|w| w == b"alaska.call" || w == b"alaska.http")
        {
            self.callers.insert(subject.to_string());
        }
        let name = format!("@{}/{subject}.lua", self.cfg.scripts_dir.display());
        let mut text = Vec::with_capacity(CHUNK_PREFIX.len() + source.len());
        text.extend_from_slice(CHUNK_PREFIX);
        text.extend_from_slice(&source);
        let func = self
            .lua
            .load(&text[..])
            .set_name(name)
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| ScriptError {
                kind: ErrorKind::Syntax,
                message: e.to_string(),
            })?;
        use std::os::unix::fs::MetadataExt;
        self.cfg.book.compiled(subject, &path, meta.modified().ok());
        self.cache.insert(
            subject.to_string(),
            Cached {
                path,
                modified: meta.modified().ok(),
                len: meta.len(),
                ino: meta.ino(),
                dev: meta.dev(),
                func: func.clone(),
            },
        );
        Ok(func)
    }
}

/// What the runner returns: `ok, value, kind, a, b, c`.
type Returned = (
    bool,
    Value,
    Option<mlua::LuaString>,
    Value,
    Value,
    Value,
    Value,
);
