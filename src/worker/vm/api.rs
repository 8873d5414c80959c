//! The functions of the scripting API written in Rust: `send`, `sendTo`,
//! `alaska.sleep` and the operations of `alaska.shared`. The rest of the
//! API (outcomes, the request's metadata) is built in `sandbox.lua`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mlua::{Function, Lua, MultiValue, Table, Value};

use super::budget::{Budget, BUDGET_MESSAGE};
use super::convert::{bytes_arg, from_shared, opt_string, to_shared};
use super::state::RequestState;
use crate::time::after;
use crate::worker::shared::{SharedDict, SharedValue};
use crate::worker::types::Output;

/// Most sends one request may make: they are held in memory until the
/// request ends, outside the VM's memory limit, so they are bounded here.
pub const MAX_SENDS: usize = 10_000;

/// `(subject, content, [destination], [attachment], [sender])`.
type SendArgs = (Value, Value, Option<Value>, Option<Value>, Option<Value>);

/// `send` and `sendTo`, as globals shared by all requests of this VM.
pub fn install_send(
    lua: &Lua,
    globals: &Table,
    default_stream: &str,
    default_mailbox: &str,
    max_bytes: usize,
) -> mlua::Result<()> {
    let stream_default = default_stream.to_string();
    let send = lua.create_function(move |lua, args: SendArgs| {
        let (stream, subject, content) = send_args(lua, args, "send", &stream_default)?;
        push(
            lua,
            Output::Stream {
                stream,
                subject,
                content,
            },
            max_bytes,
        )
    })?;
    let mailbox_default = default_mailbox.to_string();
    let send_to = lua.create_function(move |lua, args: SendArgs| {
        let (address, subject, content) = send_args(lua, args, "sendTo", &mailbox_default)?;
        push(
            lua,
            Output::Mail {
                address,
                subject,
                content,
            },
            max_bytes,
        )
    })?;
    globals.set("send", send)?;
    globals.set("sendTo", send_to)?;
    Ok(())
}

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
    // The connection has one address, so a per-message sender cannot be
    // honoured; it is accepted (and checked) for compatibility.
    let _ = opt_string(lua, sender, func, 5)?;
    if subject.len() > 255 || dest.len() > 255 {
        return Err(mlua::Error::runtime(format!(
            "bad argument to '{func}': subject and destination are at most 255 bytes"
        )));
    }
    Ok((dest, subject, frames))
}

/// Keeps a send of the running request (written when it ends), bounded
/// by [`MAX_SENDS`] and `max_bytes`.
pub(crate) fn push(lua: &Lua, out: Output, max_bytes: usize) -> mlua::Result<()> {
    let Some(mut state) = lua.app_data_mut::<RequestState>() else {
        return Err(mlua::Error::runtime("send/sendTo outside a request"));
    };
    if !state.active {
        return Err(mlua::Error::runtime(
            "send/sendTo/schedule can only be used while a request runs",
        ));
    }
    let size: usize = match &out {
        Output::Stream { content, .. }
        | Output::Mail { content, .. }
        | Output::Delayed { content, .. } => content.iter().map(Vec::len).sum(),
    };
    if state.outputs.len() >= MAX_SENDS || state.output_bytes + size > max_bytes {
        return Err(mlua::Error::runtime(format!(
            "too many sends in one request (at most {MAX_SENDS} messages and {max_bytes} bytes)"
        )));
    }
    state.output_bytes += size;
    state.outputs.push(out);
    Ok(())
}

/// `alaska.sleep(ms)`: sleeps without using CPU; counts against the time
/// budget (sleeping past it ends the request as a budget breach).
pub fn sleep_function(lua: &Lua, budget: Arc<Budget>) -> mlua::Result<Function> {
    lua.create_function(move |_, ms: Value| {
        let ms = match ms {
            Value::Integer(i) => i as f64,
            Value::Number(f) => f,
            other => {
                return Err(mlua::Error::runtime(format!(
                    "bad argument #1 to 'sleep' (milliseconds expected, got {})",
                    other.type_name()
                )))
            }
        };
        if ms.is_nan() || ms < 0.0 {
            return Err(mlua::Error::runtime(format!(
                "bad argument #1 to 'sleep' (milliseconds must be 0 or more, got {ms})"
            )));
        }
        // math.huge, or any value too large for a Duration: until the
        // budget ends.
        let want = Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::MAX);
        let left = budget.left().unwrap_or(Duration::ZERO);
        // A VM run by its owner's thread lends the sleep to the owner's
        // duty (which returns early when it has done something); others
        // simply sleep.
        let until = after(Instant::now(), want.min(left));
        loop {
            let rest = until.saturating_duration_since(Instant::now());
            if rest.is_zero() {
                break;
            }
            if !budget.duty(rest.min(Duration::from_millis(100)), true) {
                std::thread::sleep(rest);
            }
        }
        if want > left {
            budget.breach();
            return Err(mlua::Error::runtime(BUDGET_MESSAGE));
        }
        Ok(())
    })
}

/// The operations of `alaska.shared`, as a table of functions (the
/// sandbox wraps them so both `shared.get(k)` and `shared:get(k)` work).
pub fn shared_functions(lua: &Lua, dict: Arc<SharedDict>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let key = |v: Value, f: &str| -> mlua::Result<Vec<u8>> {
        match v {
            Value::String(s) => Ok(s.as_bytes().to_vec()),
            Value::Integer(_) | Value::Number(_) => Ok(v.to_string()?.into_bytes()),
            other => Err(mlua::Error::runtime(format!(
                "bad argument #1 to 'shared.{f}' (key string expected, got {})",
                other.type_name()
            ))),
        }
    };
    let ttl = |v: Option<Value>, f: &str| -> mlua::Result<Option<Duration>> {
        match v {
            None | Some(Value::Nil) => Ok(None),
            Some(Value::Integer(i)) if i >= 0 => Ok(Some(Duration::from_millis(i as u64))),
            Some(Value::Number(n)) if n >= 0.0 => Ok(Duration::try_from_secs_f64(n / 1000.0).ok()),
            Some(other) => Err(mlua::Error::runtime(format!(
                "bad argument #3 to 'shared.{f}' (ttl in milliseconds expected, got {other:?})"
            ))),
        }
    };
    let d = dict.clone();
    t.set(
        "get",
        lua.create_function(
            move |lua, k: Value| match d.get(&key(k, "get")?, Instant::now()) {
                Some(v) => from_shared(lua, v),
                None => Ok(Value::Nil),
            },
        )?,
    )?;
    let d = dict.clone();
    t.set(
        "set",
        lua.create_function(move |_, (k, v, t): (Value, Value, Option<Value>)| {
            let k = key(k, "set")?;
            let v = to_shared(v, "set", 2)?;
            d.set(&k, v, ttl(t, "set")?, Instant::now())
                .map_err(|e| mlua::Error::runtime(format!("shared.set: {e}")))?;
            Ok(true)
        })?,
    )?;
    let d = dict.clone();
    t.set(
        "add",
        lua.create_function(move |_, (k, v, t): (Value, Value, Option<Value>)| {
            let k = key(k, "add")?;
            let Some(v) = to_shared(v, "add", 2)? else {
                return Err(mlua::Error::runtime(
                    "bad argument #2 to 'shared.add' (a value expected, got nil)",
                ));
            };
            d.add(&k, v, ttl(t, "add")?, Instant::now())
                .map_err(|e| mlua::Error::runtime(format!("shared.add: {e}")))
        })?,
    )?;
    let d = dict.clone();
    t.set(
        "incr",
        lua.create_function(
            move |lua, (k, by, init): (Value, Option<Value>, Option<Value>)| {
                let k = key(k, "incr")?;
                let number = |v: Value, n: usize| match to_shared(v, "incr", n)? {
                    Some(v @ (SharedValue::Int(_) | SharedValue::Num(_))) => Ok(v),
                    _ => Err(mlua::Error::runtime(format!(
                        "bad argument #{n} to 'shared.incr' (number expected)"
                    ))),
                };
                let by = number(by.unwrap_or(Value::Integer(1)), 2)?;
                let init = match init {
                    None | Some(Value::Nil) => None,
                    Some(v) => Some(number(v, 3)?),
                };
                match d.incr(&k, by, init, Instant::now()) {
                    Ok(v) => Ok(MultiValue::from_iter([from_shared(lua, v)?])),
                    // As OpenResty does: nil and the reason, not an error.
                    Err(e) => Ok(MultiValue::from_iter([
                        Value::Nil,
                        Value::String(lua.create_string(e.to_string())?),
                    ])),
                }
            },
        )?,
    )?;
    let d = dict.clone();
    t.set(
        "delete",
        lua.create_function(move |_, k: Value| {
            d.delete(&key(k, "delete")?);
            Ok(())
        })?,
    )?;
    let d = dict;
    t.set(
        "keys",
        lua.create_function(move |lua, ()| {
            let keys = lua.create_table()?;
            for (i, k) in d.keys(Instant::now()).into_iter().enumerate() {
                keys.raw_set(i + 1, lua.create_string(k)?)?;
            }
            Ok(keys)
        })?,
    )?;
    Ok(t)
}
