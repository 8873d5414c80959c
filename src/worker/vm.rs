//! One long-lived Lua 5.4 VM and the scripting API it offers.
//!
//! A [`Vm`] runs one request at a time on its pool thread. Compiled chunks
//! are cached per script path and recompiled when the file's modification
//! time or size changes. Each request gets a fresh global environment whose
//! `__index` is the VM's shared globals, so a global set by one request is
//! not seen by the next, while modules loaded by `require` stay loaded.
//!
//! Budgets: an instruction-count hook (installed as mlua's global hook, so
//! Lua 5.4 copies it into every coroutine) stops a request past its time
//! budget, and the VM has a memory limit. `pcall`, `xpcall` and
//! `coroutine.resume` are wrapped so that a script cannot catch either
//! breach. `load`, `loadfile` and `dofile` accept text chunks only, and
//! `os.exit` raises an error instead of ending the worker.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mlua::{
    chunk::ChunkMode, Function, HookTriggers, Lua, LuaOptions, LuaSerdeExt, MultiValue, StdLib,
    Table, Value, VmState,
};

use super::pool::{ErrorKind, Output, PoolConfig, Request, ScriptError};
use super::subject::{script_path, SubjectError};

/// How many VM instructions run between two looks at the clock.
const HOOK_EVERY: u32 = 1000;

const BUDGET_MESSAGE: &str = "time budget exceeded";

/// What one request produced.
#[derive(Debug, Default)]
pub struct RunResult {
    /// Sends, in the order the script made them.
    pub outputs: Vec<Output>,
    /// The reply, if the script returned a value.
    pub reply: Option<Vec<u8>>,
    /// The failure, if any.
    pub error: Option<ScriptError>,
}

/// Shared between the VM and its hook: the running request's deadline.
struct Budget {
    base: Instant,
    /// Nanoseconds after `base`; 0 when no request runs.
    deadline: AtomicU64,
    timed_out: AtomicBool,
    out_of_memory: AtomicBool,
}

impl Budget {
    fn arm(&self, timeout: Duration) {
        let at = self.base.elapsed() + timeout;
        self.timed_out.store(false, Ordering::Relaxed);
        self.out_of_memory.store(false, Ordering::Relaxed);
        self.deadline
            .store(at.as_nanos().max(1) as u64, Ordering::Relaxed);
    }

    fn disarm(&self) {
        self.deadline.store(0, Ordering::Relaxed);
    }

    /// Time left, or `None` when no request runs.
    fn left(&self) -> Option<Duration> {
        let d = self.deadline.load(Ordering::Relaxed);
        (d != 0).then(|| Duration::from_nanos(d).saturating_sub(self.base.elapsed()))
    }

    fn expired(&self) -> bool {
        if self.timed_out.load(Ordering::Relaxed) {
            return true;
        }
        if self.left().is_some_and(|l| l.is_zero()) {
            self.timed_out.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// Per-request state the API functions reach through the VM's app data.
#[derive(Default)]
struct RequestState {
    outputs: Vec<Output>,
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
    runner: Function,
    /// Compiled scripts by subject.
    cache: HashMap<String, Cached>,
    budget: Arc<Budget>,
    cfg: Arc<PoolConfig>,
    /// Set after a memory breach: the pool replaces this VM.
    pub poisoned: bool,
}

impl Vm {
    /// A fresh VM for `cfg`.
    pub fn new(cfg: Arc<PoolConfig>) -> mlua::Result<Vm> {
        // The debug library is loaded because scripts of the original
        // could use it and the runner needs traceback; binary chunks, the
        // real way to break the VM, are refused below.
        let lua =
            unsafe { Lua::unsafe_new_with(StdLib::ALL_SAFE | StdLib::DEBUG, LuaOptions::new()) };
        let budget = Arc::new(Budget {
            base: Instant::now(),
            deadline: AtomicU64::new(0),
            timed_out: AtomicBool::new(false),
            out_of_memory: AtomicBool::new(false),
        });
        let hook_budget = budget.clone();
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_EVERY),
            move |_, _| {
                if hook_budget.expired() {
                    Err(mlua::Error::runtime(BUDGET_MESSAGE))
                } else {
                    Ok(VmState::Continue)
                }
            },
        )?;
        let globals = lua.globals();
        install_api(&lua, &globals, &cfg)?;
        let cjson = cjson_module(&lua)?;
        let preload: Table = globals.get::<Table>("package")?.get("preload")?;
        let cj = cjson.clone();
        preload.set("cjson", lua.create_function(move |_, ()| Ok(cj.clone()))?)?;
        if !cfg.lua_path.is_empty() {
            let package: Table = globals.get("package")?;
            let mut path: String = package.get("path")?;
            for dir in &cfg.lua_path {
                let d = dir.display();
                path = format!("{d}/?.lua;{d}/?/init.lua;{path}");
            }
            package.set("path", path)?;
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
        let b = budget.clone();
        let sleep = lua.create_function(move |_, ms: f64| {
            let want = Duration::from_secs_f64((ms / 1000.0).max(0.0));
            let left = b.left().unwrap_or(want);
            std::thread::sleep(want.min(left));
            if want > left {
                b.timed_out.store(true, Ordering::Relaxed);
                return Err(mlua::Error::runtime(BUDGET_MESSAGE));
            }
            Ok(())
        })?;
        let env_meta = lua.create_table()?;
        env_meta.set("__index", globals)?;
        let runner: Function = lua.load(RUNNER).set_name("=alaska").call((
            breached,
            cjson.get::<Function>("encode")?,
            env_meta,
            sleep,
        ))?;
        lua.set_memory_limit(cfg.memory)?;
        Ok(Vm {
            lua,
            runner,
            cache: HashMap::new(),
            budget,
            cfg,
            poisoned: false,
        })
    }

    /// Runs one request to completion (or to a budget breach).
    pub fn run(&mut self, req: &Request) -> RunResult {
        let mut result = RunResult::default();
        let func = match self.script(&req.subject) {
            Ok(f) => f,
            Err(e) => {
                result.error = Some(e);
                return result;
            }
        };
        let args = match self.arguments(func, req) {
            Ok(args) => args,
            Err(e) => {
                result.error = Some(self.failure(e.to_string()));
                return result;
            }
        };
        self.lua.set_app_data(RequestState::default());
        self.budget.arm(self.cfg.timeout);
        let outcome = self.runner.call::<MultiValue>(args);
        self.budget.disarm();
        if let Some(state) = self.lua.remove_app_data::<RequestState>() {
            result.outputs = state.outputs;
        }
        match outcome {
            Ok(values) => {
                let mut values = values.into_iter();
                let ok = matches!(values.next(), Some(Value::Boolean(true)));
                let first = values.next().unwrap_or(Value::Nil);
                if ok {
                    match self.reply(first) {
                        Ok(reply) => result.reply = reply,
                        Err(e) => result.error = Some(self.failure(format!("reply: {e}"))),
                    }
                } else {
                    let text = match &first {
                        Value::String(s) => s.to_string_lossy(),
                        other => format!("{other:?}"),
                    };
                    result.error = Some(self.failure(text));
                }
            }
            Err(e) => result.error = Some(self.failure(e.to_string())),
        }
        // Whatever the request left behind is garbage now; collect while
        // the VM is idle rather than in the middle of the next request.
        if result.error.is_some() {
            let _ = self.lua.gc_collect();
        }
        result
    }

    /// Classifies a failure by the budget flags, then by the text.
    fn failure(&mut self, text: String) -> ScriptError {
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
        let name = format!("@{}/{subject}.lua", self.cfg.scripts_dir.display());
        let func = self
            .lua
            .load(&source[..])
            .set_name(name)
            .set_mode(ChunkMode::Text)
            .into_function()
            .map_err(|e| ScriptError {
                kind: ErrorKind::Syntax,
                message: e.to_string(),
            })?;
        use std::os::unix::fs::MetadataExt;
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

    /// The runner's arguments: the chunk, then the request. The runner
    /// builds the environment in Lua, which costs far fewer crossings of
    /// the Rust/Lua boundary than building it from here.
    fn arguments(&self, func: Function, req: &Request) -> mlua::Result<MultiValue> {
        let lua = &self.lua;
        let first: &[u8] = req.content.first().map(Vec::as_slice).unwrap_or(b"");
        let mut args = MultiValue::with_capacity(6 + req.content.len());
        args.push_back(Value::Function(func));
        args.push_back(Value::String(lua.create_string(first)?));
        for field in [&req.sender, &req.subject, &req.address, &req.tracker] {
            args.push_back(Value::String(lua.create_string(field)?));
        }
        for frame in &req.content {
            args.push_back(Value::String(lua.create_string(frame)?));
        }
        Ok(args)
    }

    /// A string as it is, a table as JSON, numbers and booleans as text.
    fn reply(&self, v: Value) -> mlua::Result<Option<Vec<u8>>> {
        Ok(match v {
            Value::Nil => None,
            Value::String(s) => Some(s.as_bytes().to_vec()),
            Value::Table(_) => {
                let json: serde_json::Value = self.lua.from_value(v)?;
                Some(serde_json::to_vec(&json).map_err(mlua::Error::external)?)
            }
            other => self
                .lua
                .coerce_string(other.clone())?
                .map(|s| s.as_bytes().to_vec())
                .or_else(|| Some(format!("{other:?}").into_bytes())),
        })
    }
}

/// Wraps the functions a script could use to escape a budget, and returns
/// the runner: `runner(chunk, env)` sets the chunk's `_ENV` and calls it,
/// turning any error into text with a traceback.
const RUNNER: &str = r#"
local breached, encode, env_meta, sleep = ...
local setmetatable = setmetatable
local setupvalue, traceback = debug.setupvalue, debug.traceback
local raw_pcall, raw_xpcall, co_resume = pcall, xpcall, coroutine.resume
local raw_load, raw_loadfile = load, loadfile
local select, type, tostring, error, assert = select, type, tostring, error, assert

local function pass(ok, ...)
  if not ok and breached((...)) then error((...), 0) end
  return ok, ...
end
pcall = function(f, ...) return pass(raw_pcall(f, ...)) end
xpcall = function(f, h, ...)
  return pass(raw_xpcall(f, function(e)
    if breached(e) then return e end
    return h(e)
  end, ...))
end
coroutine.resume = function(co, ...) return pass(co_resume(co, ...)) end
load = function(chunk, name, mode, ...)
  if select('#', ...) > 0 then return raw_load(chunk, name, 't', ...) end
  return raw_load(chunk, name, 't')
end
loadfile = function(name, mode, ...)
  if select('#', ...) > 0 then return raw_loadfile(name, 't', ...) end
  return raw_loadfile(name, 't')
end
dofile = function(name) local f = assert(loadfile(name)); return f() end
os.exit = function() error('os.exit is not allowed in an alaska worker', 2) end

local function describe(e)
  if type(e) == 'table' then
    local ok, s = raw_pcall(encode, e)
    if ok then return s end
  end
  return tostring(e)
end
local function handler(e)
  return traceback(describe(e), 2)
end
-- runner(chunk, context, sender, subject, address, tracker, frames...):
-- a fresh global environment over the shared globals, then the call.
return function(f, ctx, sender, subject, address, tracker, ...)
  local env = setmetatable({
    alaskaContext = ctx,
    alaska = {
      sender = sender, subject = subject, address = address,
      tracker = tracker, frames = { ... }, sleep = sleep,
    },
  }, env_meta)
  env._G = env
  setupvalue(f, 1, env)
  return raw_xpcall(f, handler)
end
"#;

/// Turns an argument into message bytes the way Lua's `tostring` would for
/// strings and numbers.
fn bytes_arg(lua: &Lua, v: Value, func: &str, n: usize) -> mlua::Result<Vec<u8>> {
    let type_name = v.type_name();
    match lua.coerce_string(v)? {
        Some(s) => Ok(s.as_bytes().to_vec()),
        None => Err(mlua::Error::runtime(format!(
            "bad argument #{n} to '{func}' (string expected, got {type_name})"
        ))),
    }
}

fn opt_string(lua: &Lua, v: Option<Value>, func: &str, n: usize) -> mlua::Result<Option<String>> {
    match v {
        None | Some(Value::Nil) => Ok(None),
        Some(v) => Ok(Some(
            String::from_utf8_lossy(&bytes_arg(lua, v, func, n)?).into_owned(),
        )),
    }
}

/// `send` and `sendTo`, as globals shared by all requests of this VM.
fn install_api(lua: &Lua, globals: &Table, cfg: &PoolConfig) -> mlua::Result<()> {
    let stream_default = cfg.default_stream.clone();
    let send = lua.create_function(move |lua, args: SendArgs| {
        let (stream, subject, content) = send_args(lua, args, "send", &stream_default)?;
        push(
            lua,
            Output::Stream {
                stream,
                subject,
                content,
            },
        )
    })?;
    let mailbox_default = cfg.default_mailbox.clone();
    let send_to = lua.create_function(move |lua, args: SendArgs| {
        let (address, subject, content) = send_args(lua, args, "sendTo", &mailbox_default)?;
        push(
            lua,
            Output::Mail {
                address,
                subject,
                content,
            },
        )
    })?;
    globals.set("send", send)?;
    globals.set("sendTo", send_to)?;
    Ok(())
}

/// `(subject, content, [destination], [attachment], [sender])`.
type SendArgs = (Value, Value, Option<Value>, Option<Value>, Option<Value>);

/// Checks and converts the arguments of `send`/`sendTo`: destination (or
/// its default), subject, and the frames (content, then the attachment).
fn send_args(
    lua: &Lua,
    (subject, content, dest, attachment, sender): SendArgs,
    func: &str,
    default: &str,
) -> mlua::Result<(String, String, Vec<Vec<u8>>)> {
    let subject = String::from_utf8_lossy(&bytes_arg(lua, subject, func, 1)?).into_owned();
    let mut frames = vec![bytes_arg(lua, content, func, 2)?];
    let dest = opt_string(lua, dest, func, 3)?.unwrap_or_else(|| default.to_string());
    if let Some(a) = attachment.filter(|a| !a.is_nil()) {
        frames.push(bytes_arg(lua, a, func, 4)?);
    }
    // The one broker connection has one address, so a per-message sender
    // cannot be honoured; it is accepted (and checked) for compatibility.
    let _ = opt_string(lua, sender, func, 5)?;
    Ok((dest, subject, frames))
}

fn push(lua: &Lua, out: Output) -> mlua::Result<()> {
    match lua.app_data_mut::<RequestState>() {
        Some(mut state) => {
            state.outputs.push(out);
            Ok(())
        }
        None => Err(mlua::Error::runtime(
            "send/sendTo can only be used while a request runs",
        )),
    }
}

/// A `cjson`-compatible module on serde_json: `encode`, `decode`, `null`.
fn cjson_module(lua: &Lua) -> mlua::Result<Table> {
    let m = lua.create_table()?;
    m.set(
        "encode",
        lua.create_function(|lua, v: Value| {
            let json: serde_json::Value = lua
                .from_value(v)
                .map_err(|e| mlua::Error::runtime(format!("cjson.encode: {e}")))?;
            serde_json::to_string(&json)
                .map_err(|e| mlua::Error::runtime(format!("cjson.encode: {e}")))
        })?,
    )?;
    m.set(
        "decode",
        lua.create_function(|lua, s: mlua::LuaString| {
            let json: serde_json::Value = serde_json::from_slice(&s.as_bytes())
                .map_err(|e| mlua::Error::runtime(format!("cjson.decode: {e}")))?;
            lua.to_value(&json)
        })?,
    )?;
    m.set("null", lua.null())?;
    // lua-cjson tuning knobs: accepted so scripts that set them still run.
    for knob in [
        "encode_empty_table_as_object",
        "encode_sparse_array",
        "encode_max_depth",
        "decode_max_depth",
        "encode_number_precision",
        "encode_keep_buffer",
        "encode_invalid_numbers",
        "decode_invalid_numbers",
    ] {
        m.set(knob, lua.create_function(|_, _: MultiValue| Ok(()))?)?;
    }
    m.set("_NAME", "cjson")?;
    Ok(m)
}
