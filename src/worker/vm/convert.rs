//! Conversions between Lua values and what the worker sends: message
//! bytes, replies, shared-dictionary values, and the `cjson` module.

use mlua::{Lua, LuaSerdeExt, MultiValue, Table, Value};

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

/// A reply from what a script returned: a string as it is, a table as
/// JSON, a number or boolean as text, `nil` for none. Anything else (a
/// function, a coroutine, userdata) is an error: it cannot be sent.
pub fn reply(lua: &Lua, v: Value) -> Result<Option<Vec<u8>>, String> {
    match v {
        Value::Nil => Ok(None),
        Value::String(s) => Ok(Some(s.as_bytes().to_vec())),
        Value::Table(_) => {
            let json: serde_json::Value = lua.from_value(v).map_err(|e| e.to_string())?;
            serde_json::to_vec(&json)
                .map(Some)
                .map_err(|e| e.to_string())
        }
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

/// A `cjson`-compatible module on serde_json: `encode`, `decode`, `null`.
pub fn cjson_module(lua: &Lua) -> mlua::Result<Table> {
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
