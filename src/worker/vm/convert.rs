//! Conversions between Lua values and what the worker sends: message
//! bytes, replies, shared-dictionary values, and the `cjson` module.
//!
//! Lua to JSON ([`encode_json`], used by `cjson.encode` and for a table
//! returned as the reply) is written here rather than through serde: it
//! runs in Rust, outside the VM's memory limit and its instruction hook,
//! so it bounds itself. The text it makes may not grow past the VM's
//! memory limit, it looks at the request's time budget every few thousand
//! values, and nesting deeper than [`MAX_DEPTH`] (a table that contains
//! itself) is an error. A table that shares a subtable many times (`{t,
//! t}` twenty levels deep: millions of values from a few kilobytes) is
//! stopped by those bounds instead of taking the worker's memory and time.
//!
//! Tables become JSON as lua-cjson makes them: keys 1..n an array; a
//! table with other keys an object whose number keys become strings (so
//! `{1, 2, x = 3}` is `{"1":1,"2":2,"x":3}`: nothing is dropped); a
//! sparse array gets `null` in its holes unless it is excessively sparse
//! (the largest index over twice the count and over 10), which is an
//! error naming it. NaN and the infinities, which JSON cannot hold, are
//! `null` (as JavaScript's `JSON.stringify` does). An empty table is `{}`.

use std::fmt::Write as _;
use std::sync::Arc;

use mlua::{Lua, LuaSerdeExt, MultiValue, Table, Value};

use super::budget::{Budget, BUDGET_MESSAGE};

use crate::worker::shared::SharedValue;

/// Message bytes from an argument, the way Lua's `tostring` would for
/// strings and numbers; anything else is an argument error naming `func`.
pub fn bytes_arg(lua: &Lua, v: Value, func: &str, n: usize) -> mlua::Result<Vec<u8>> {
    let type_name = v.type_name();
    match lua.coerce_string(v)? {
        Some(s) => Ok(s.as_bytes().to_vec()),
        None => Err(mlua::Error::runtime(format!(
            "bad argument #{n} to '{func}' (string expected, got {type_name})"
        ))),
    }
}

/// An optional string argument (`nil` or absent: `None`).
pub fn opt_string(
    lua: &Lua,
    v: Option<Value>,
    func: &str,
    n: usize,
) -> mlua::Result<Option<String>> {
    match v {
        None | Some(Value::Nil) => Ok(None),
        Some(v) => Ok(Some(
            String::from_utf8_lossy(&bytes_arg(lua, v, func, n)?).into_owned(),
        )),
    }
}

/// Nesting deeper than this is an error (a table that contains itself);
/// serde_json reads no deeper either.
pub const MAX_DEPTH: usize = 128;

/// How many values are converted between two looks at the time budget.
const CHECK_EVERY: u64 = 4096;

/// What bounds a conversion done in Rust on script data.
#[derive(Clone)]
pub struct Bounds {
    /// The most bytes the result may have (the VM's memory limit; 0: none).
    pub max_bytes: usize,
    /// The running request's budget, looked at as the conversion goes.
    pub budget: Option<Arc<Budget>>,
}

struct Encoder<'a> {
    lua: &'a Lua,
    out: String,
    bounds: &'a Bounds,
    values: u64,
}

impl Encoder<'_> {
    fn value(&mut self, v: &Value, depth: usize) -> Result<(), String> {
        self.values += 1;
        if self.values.is_multiple_of(CHECK_EVERY) {
            if let Some(b) = &self.bounds.budget {
                if b.expired() {
                    return Err(BUDGET_MESSAGE.into());
                }
            }
        }
        if self.bounds.max_bytes > 0 && self.out.len() > self.bounds.max_bytes {
            return Err(format!(
                "the JSON text grows past the VM's memory limit ({} bytes)",
                self.bounds.max_bytes
            ));
        }
        match v {
            Value::Nil => self.out.push_str("null"),
            Value::LightUserData(p) if p.0.is_null() => self.out.push_str("null"),
            Value::Boolean(b) => self.out.push_str(if *b { "true" } else { "false" }),
            Value::Integer(i) => {
                let _ = write!(self.out, "{i}");
            }
            Value::Number(n) => self.number(*n),
            Value::String(s) => {
                let b = s.as_bytes();
                let text = std::str::from_utf8(&b).map_err(|_| {
                    "a string that is not UTF-8 cannot be JSON (send it as a frame of its own)"
                        .to_string()
                })?;
                self.string(text);
            }
            Value::Table(t) => {
                if depth >= MAX_DEPTH {
                    return Err(format!(
                        "tables nested deeper than {MAX_DEPTH} (a table that contains itself?)"
                    ));
                }
                self.table(t, depth + 1)?;
            }
            other => {
                return Err(format!("a {} cannot be JSON", other.type_name()));
            }
        }
        Ok(())
    }

    fn number(&mut self, n: f64) {
        if !n.is_finite() {
            self.out.push_str("null");
        } else if n.fract() == 0.0 && n.abs() < 1e15 {
            let _ = write!(self.out, "{}", n as i64);
        } else {
            let _ = write!(self.out, "{n}");
        }
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", c as u32);
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn table(&mut self, t: &Table, depth: usize) -> Result<(), String> {
        // One pass over the keys decides the shape.
        let (mut count, mut max_index, mut only_indices) = (0usize, 0i64, true);
        for pair in t.clone().pairs::<Value, Value>() {
            let (k, _) = pair.map_err(|e| e.to_string())?;
            count += 1;
            match k {
                Value::Integer(i) if i >= 1 => max_index = max_index.max(i),
                Value::Number(n) if n >= 1.0 && n.fract() == 0.0 && n < 9.0e15 => {
                    max_index = max_index.max(n as i64)
                }
                _ => only_indices = false,
            }
        }
        let is_array_mt = t
            .metatable()
            .is_some_and(|m| m == self.lua.array_metatable());
        if count == 0 {
            self.out.push_str(if is_array_mt { "[]" } else { "{}" });
            return Ok(());
        }
        if only_indices {
            let n = max_index as usize;
            if n > count.saturating_mul(2) && n > 10 {
                return Err(format!(
                    "an excessively sparse array (index {n} in a table of {count} entries): \
                     use string keys for an object"
                ));
            }
            self.out.push('[');
            for i in 1..=n {
                if i > 1 {
                    self.out.push(',');
                }
                let v: Value = t.raw_get(i).map_err(|e| e.to_string())?;
                self.value(&v, depth)?;
            }
            self.out.push(']');
            return Ok(());
        }
        // An object: keys as strings, sorted so the text is the same each
        // time (Lua's table order is not).
        let mut entries: Vec<(String, Value)> = Vec::with_capacity(count);
        for pair in t.clone().pairs::<Value, Value>() {
            let (k, v) = pair.map_err(|e| e.to_string())?;
            let key = match &k {
                Value::String(s) => std::str::from_utf8(&s.as_bytes())
                    .map_err(|_| "a table key that is not UTF-8 cannot be JSON".to_string())?
                    .to_string(),
                Value::Integer(i) => i.to_string(),
                Value::Number(n) => {
                    let mut e = Encoder {
                        lua: self.lua,
                        out: String::new(),
                        bounds: self.bounds,
                        values: 0,
                    };
                    e.number(*n);
                    e.out
                }
                other => {
                    return Err(format!(
                        "a table key must be a string or a number, not a {}",
                        other.type_name()
                    ))
                }
            };
            entries.push((key, v));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        self.out.push('{');
        for (i, (k, v)) in entries.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.string(k);
            self.out.push(':');
            self.value(v, depth)?;
        }
        self.out.push('}');
        Ok(())
    }
}

/// JSON text for a Lua value, within `bounds` (see the module
/// documentation for the shapes).
pub fn encode_json(lua: &Lua, v: &Value, bounds: &Bounds) -> Result<String, String> {
    let mut e = Encoder {
        lua,
        out: String::new(),
        bounds,
        values: 0,
    };
    e.value(v, 0)?;
    if bounds.max_bytes > 0 && e.out.len() > bounds.max_bytes {
        return Err(format!(
            "the JSON text grows past the VM's memory limit ({} bytes)",
            bounds.max_bytes
        ));
    }
    Ok(e.out)
}

/// A reply from what a script returned: a string as it is, a table as
/// JSON (see [`encode_json`]), a number or boolean as text, `nil` for
/// none. Anything else (a function, a coroutine, userdata) is an error: it
/// cannot be sent.
pub fn reply(lua: &Lua, v: Value, bounds: &Bounds) -> Result<Option<Vec<u8>>, String> {
    match v {
        Value::Nil => Ok(None),
        Value::String(s) => Ok(Some(s.as_bytes().to_vec())),
        Value::Table(_) => encode_json(lua, &v, bounds).map(|s| Some(s.into_bytes())),
        Value::Boolean(b) => Ok(Some(if b {
            b"true".to_vec()
        } else {
            b"false".to_vec()
        })),
        Value::Integer(_) | Value::Number(_) => lua
            .coerce_string(v)
            .map_err(|e| e.to_string())
            .map(|s| s.map(|s| s.as_bytes().to_vec())),
        other => Err(format!(
            "a {} cannot be a reply (return a string, number, boolean, table, nil or an \
             alaska outcome such as alaska.retry())",
            other.type_name()
        )),
    }
}

/// A value for `alaska.shared` (`nil` is `None`: delete).
pub fn to_shared(v: Value, func: &str, n: usize) -> mlua::Result<Option<SharedValue>> {
    Ok(Some(match v {
        Value::Nil => return Ok(None),
        Value::String(s) => SharedValue::Str(s.as_bytes().to_vec()),
        Value::Integer(i) => SharedValue::Int(i),
        Value::Number(f) => SharedValue::Num(f),
        Value::Boolean(b) => SharedValue::Bool(b),
        other => {
            return Err(mlua::Error::runtime(format!(
                "bad argument #{n} to 'shared.{func}' (string, number, boolean or nil expected, got {})",
                other.type_name()
            )))
        }
    }))
}

/// A shared value back as a Lua value.
pub fn from_shared(lua: &Lua, v: SharedValue) -> mlua::Result<Value> {
    Ok(match v {
        SharedValue::Str(s) => Value::String(lua.create_string(s)?),
        SharedValue::Int(i) => Value::Integer(i),
        SharedValue::Num(f) => Value::Number(f),
        SharedValue::Bool(b) => Value::Boolean(b),
    })
}

/// A `cjson`-compatible module: `encode` ([`encode_json`], within
/// `bounds`), `decode` (serde_json), `null`.
pub fn cjson_module(lua: &Lua, bounds: Bounds) -> mlua::Result<Table> {
    let m = lua.create_table()?;
    m.set(
        "encode",
        lua.create_function(move |lua, v: Value| {
            encode_json(lua, &v, &bounds).map_err(|e| {
                if e == BUDGET_MESSAGE {
                    mlua::Error::runtime(e)
                } else {
                    mlua::Error::runtime(format!("cjson.encode: {e}"))
                }
            })
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
