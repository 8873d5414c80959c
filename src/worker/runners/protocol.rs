//! The exec runner's line protocol (docs/RUNNER-PROTOCOL.md): one JSON
//! object per line each way. Pure: bytes in, [`RunResult`] out, no
//! processes, so every rule is unit-tested here.
//!
//! In (worker to child): `{"subject", "address", "sender", "tracker",
//! "attempt", "hops", "frames": [...]}`, frames as strings; when any frame
//! is not UTF-8, `"base64": true` and every frame is base64.
//!
//! Out (child to worker): `{"outcome", "reply", "after_ms", "reason",
//! "address", "subject", "frames", "sends": [{"stream"|"mailbox",
//! "subject", "frames"}]}`. A frame (and `reply`) is a string (its UTF-8
//! bytes), `{"base64": "..."}` (those bytes), or any other JSON value (its
//! compact JSON text).

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{Map, Value};

use crate::worker::types::{ErrorKind, Outcome, Output, Request, RunResult, ScriptError};
use crate::worker::vm::api::MAX_SENDS;

#[derive(serde::Serialize)]
struct WireRequest<'a> {
    subject: &'a str,
    address: &'a str,
    sender: &'a str,
    tracker: &'a str,
    attempt: u32,
    hops: u32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    base64: bool,
    frames: Vec<Cow<'a, str>>,
}

/// The line sent to a child for `req`, newline included.
pub fn encode_request(req: &Request) -> Vec<u8> {
    let texts: Option<Vec<&str>> = req
        .content
        .iter()
        .map(|f| std::str::from_utf8(f).ok())
        .collect();
    let (base64, frames) = match texts {
        Some(t) => (false, t.into_iter().map(Cow::Borrowed).collect()),
        None => (
            true,
            req.content
                .iter()
                .map(|f| Cow::Owned(B64.encode(f)))
                .collect(),
        ),
    };
    let wire = WireRequest {
        subject: &req.subject,
        address: &req.address,
        sender: &req.sender,
        tracker: &req.tracker,
        attempt: req.attempt,
        hops: req.hops,
        base64,
        frames,
    };
    // Serializing borrowed strings and numbers cannot fail.
    let mut line = serde_json::to_vec(&wire).unwrap_or_default();
    line.push(b'\n');
    line
}

/// How much of a bad line a report quotes.
const QUOTE: usize = 200;

fn bad(message: impl Into<String>) -> RunResult {
    RunResult::failed(ErrorKind::Protocol, message)
}

/// Reads a child's answer line (without its newline).
pub fn decode_response(line: &[u8]) -> RunResult {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return bad(format!(
                "not a JSON object ({e}): {}",
                quote(&String::from_utf8_lossy(line))
            ))
        }
    };
    let Value::Object(obj) = v else {
        return bad(format!(
            "not a JSON object: {}",
            quote(&String::from_utf8_lossy(line))
        ));
    };
    match decode_object(&obj) {
        Ok(run) => run,
        Err(message) => bad(message),
    }
}

fn decode_object(obj: &Map<String, Value>) -> Result<RunResult, String> {
    let outputs = match obj.get("sends") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(sends)) => {
            if sends.len() > MAX_SENDS {
                return Err(format!(
                    "too many sends in one request ({}; at most {MAX_SENDS})",
                    sends.len()
                ));
            }
            sends
                .iter()
                .enumerate()
                .map(|(i, s)| send(s).map_err(|e| format!("sends[{i}]: {e}")))
                .collect::<Result<_, _>>()?
        }
        Some(_) => return Err("\"sends\" must be a list".into()),
    };
    let reason = || string_field(obj, "reason").map(|r| r.unwrap_or_default());
    let outcome = string_field(obj, "outcome")?.unwrap_or_else(|| "done".into());
    let result = match outcome.as_str() {
        "done" => Ok(Outcome::Done {
            reply: match obj.get("reply") {
                None | Some(Value::Null) => None,
                Some(v) => Some(frame(v).map_err(|e| format!("reply: {e}"))?),
            },
        }),
        "retry" => Ok(Outcome::Retry {
            after: match obj.get("after_ms") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_f64()
                        .and_then(crate::time::from_ms_f64)
                        .ok_or_else(|| format!("after_ms: {v} is not a number of milliseconds"))?,
                ),
            },
            reason: reason()?,
        }),
        "fail" => Ok(Outcome::Fail { reason: reason()? }),
        "drop" => Ok(Outcome::Drop),
        "forward" => Ok(Outcome::Forward {
            address: string_field(obj, "address")?
                .filter(|a| !a.is_empty())
                .ok_or("forward without an \"address\"")?,
            subject: string_field(obj, "subject")?
                .filter(|s| !s.is_empty())
                .ok_or("forward without a \"subject\"")?,
            content: match obj.get("frames") {
                None | Some(Value::Null) => None,
                Some(v) => Some(frames(v).map_err(|e| format!("frames: {e}"))?),
            },
            delay: None,
        }),
        "error" => Err(ScriptError {
            kind: ErrorKind::Runtime,
            message: reason()?,
        }),
        other => {
            return Err(format!(
                "unknown outcome {other:?} (done, retry, fail, drop, forward or error)"
            ))
        }
    };
    Ok(RunResult { outputs, result })
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(format!("\"{key}\" must be a string, not {v}")),
    }
}

/// One send: `{"stream": name, ...}` or `{"mailbox": name, ...}`.
fn send(v: &Value) -> Result<Output, String> {
    let Value::Object(o) = v else {
        return Err("not an object".into());
    };
    let subject = string_field(o, "subject")?.ok_or("no \"subject\"")?;
    let content = match o.get("frames") {
        None | Some(Value::Null) => Vec::new(),
        Some(f) => frames(f).map_err(|e| format!("frames: {e}"))?,
    };
    match (string_field(o, "stream")?, string_field(o, "mailbox")?) {
        (Some(stream), None) if !stream.is_empty() => Ok(Output::Stream {
            stream,
            subject,
            content,
        }),
        (None, Some(address)) if !address.is_empty() => Ok(Output::Mail {
            address,
            subject,
            content,
        }),
        _ => Err("needs exactly one of \"stream\" and \"mailbox\" (a name)".into()),
    }
}

/// A list of frames; a single frame value stands for a list of one.
fn frames(v: &Value) -> Result<Vec<Vec<u8>>, String> {
    match v {
        Value::Array(items) => items.iter().map(frame).collect(),
        other => Ok(vec![frame(other)?]),
    }
}

/// A string is its UTF-8 bytes; `{"base64": "..."}` the decoded bytes; any
/// other value its compact JSON text.
fn frame(v: &Value) -> Result<Vec<u8>, String> {
    match v {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Object(o) if o.len() == 1 && o.contains_key("base64") => match &o["base64"] {
            Value::String(s) => B64
                .decode(s)
                .map_err(|e| format!("bad base64 ({e}): {}", quote(s))),
            other => Err(format!("\"base64\" must be a string, not {other}")),
        },
        other => Ok(other.to_string().into_bytes()),
    }
}

fn quote(s: &str) -> String {
    if s.len() <= QUOTE {
        return format!("{s:?}");
    }
    let mut end = QUOTE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(frames: Vec<Vec<u8>>) -> Request {
        Request {
            sender: "alas-1".into(),
            address: "svc".into(),
            subject: "echo".into(),
            tracker: "t-1".into(),
            content: frames,
            attempt: 2,
            hops: 1,
        }
    }

    #[test]
    fn requests_are_one_line_of_json_with_binary_frames_in_base64() {
        let line = encode_request(&req(vec![b"{\"a\":\"x\ny\"}".to_vec(), b"two".to_vec()]));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(line.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"subject": "echo", "address": "svc", "sender": "alas-1",
                "tracker": "t-1", "attempt": 2, "hops": 1,
                "frames": ["{\"a\":\"x\ny\"}", "two"]})
        );
        let line = encode_request(&req(vec![b"text".to_vec(), vec![0xff, 0, 1]]));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["base64"], Value::Bool(true));
        assert_eq!(v["frames"], serde_json::json!(["dGV4dA==", "/wAB"]));
    }

    #[test]
    fn done_with_text_binary_json_or_no_reply() {
        let reply = |line: &str| decode_response(line.as_bytes()).result;
        assert_eq!(
            reply(r#"{"outcome":"done","reply":"hi"}"#),
            Ok(Outcome::Done {
                reply: Some(b"hi".to_vec())
            })
        );
        assert_eq!(
            reply(r#"{"reply":{"base64":"/wAB"}}"#),
            Ok(Outcome::Done {
                reply: Some(vec![0xff, 0, 1])
            })
        );
        assert_eq!(
            reply(r#"{"reply":{"total":42,"ok":true}}"#),
            Ok(Outcome::Done {
                reply: Some(br#"{"ok":true,"total":42}"#.to_vec())
            })
        );
        assert_eq!(reply("{}"), Ok(Outcome::Done { reply: None }));
        assert_eq!(
            reply(r#"{"reply":null}"#),
            Ok(Outcome::Done { reply: None })
        );
    }

    #[test]
    fn every_outcome() {
        let out = |line: &str| decode_response(line.as_bytes()).result;
        assert_eq!(
            out(r#"{"outcome":"retry","after_ms":250,"reason":"busy"}"#),
            Ok(Outcome::Retry {
                after: Some(std::time::Duration::from_millis(250)),
                reason: "busy".into()
            })
        );
        assert_eq!(
            out(r#"{"outcome":"retry"}"#),
            Ok(Outcome::Retry {
                after: None,
                reason: String::new()
            })
        );
        assert_eq!(
            out(r#"{"outcome":"fail","reason":"no order"}"#),
            Ok(Outcome::Fail {
                reason: "no order".into()
            })
        );
        assert_eq!(out(r#"{"outcome":"drop"}"#), Ok(Outcome::Drop));
        assert_eq!(
            out(r#"{"outcome":"forward","address":"next","subject":"s"}"#),
            Ok(Outcome::Forward {
                address: "next".into(),
                subject: "s".into(),
                content: None,
                delay: None
            })
        );
        assert_eq!(
            out(
                r#"{"outcome":"forward","address":"next","subject":"s","frames":["a",{"base64":"AA=="}]}"#
            ),
            Ok(Outcome::Forward {
                address: "next".into(),
                subject: "s".into(),
                content: Some(vec![b"a".to_vec(), vec![0]]),
                delay: None
            })
        );
        assert_eq!(
            out(r#"{"outcome":"error","reason":"Traceback (most recent call last):\n  boom"}"#),
            Err(ScriptError {
                kind: ErrorKind::Runtime,
                message: "Traceback (most recent call last):\n  boom".into()
            })
        );
    }

    #[test]
    fn sends_in_order_whatever_the_outcome() {
        let run = decode_response(
            br#"{"outcome":"error","reason":"x","sends":[
                {"stream":"aw.res","subject":"a","frames":["1",{"base64":"Ag=="}]},
                {"mailbox":"box","subject":"b","frames":"one"}]}"#,
        );
        assert_eq!(
            run.outputs,
            vec![
                Output::Stream {
                    stream: "aw.res".into(),
                    subject: "a".into(),
                    content: vec![b"1".to_vec(), vec![2]]
                },
                Output::Mail {
                    address: "box".into(),
                    subject: "b".into(),
                    content: vec![b"one".to_vec()]
                }
            ]
        );
        assert!(run.result.is_err());
    }

    #[test]
    fn garbage_is_a_protocol_failure_naming_what_is_wrong() {
        let err = |line: &[u8]| {
            let e = decode_response(line).result.unwrap_err();
            assert_eq!(e.kind, ErrorKind::Protocol, "{}", e.message);
            e.message
        };
        assert!(err(b"hello world").contains("\"hello world\""));
        assert!(err(b"[1,2]").contains("not a JSON object"));
        assert!(err(br#"{"outcome":"maybe"}"#).contains("unknown outcome \"maybe\""));
        assert!(err(br#"{"outcome":"forward","subject":"s"}"#).contains("address"));
        assert!(err(br#"{"outcome":"retry","after_ms":-1}"#).contains("after_ms"));
        assert!(err(br#"{"outcome":"retry","after_ms":"soon"}"#).contains("after_ms"));
        assert!(err(br#"{"reply":{"base64":"***"}}"#).contains("base64"));
        assert!(err(br#"{"sends":[{"subject":"x"}]}"#).contains("sends[0]"));
        assert!(
            err(br#"{"sends":[{"stream":"a","mailbox":"b","subject":"x"}]}"#)
                .contains("exactly one")
        );
        assert!(err(br#"{"outcome":7}"#).contains("\"outcome\" must be a string"));
        let long = format!("{{\"x\": \"{}", "y".repeat(10_000));
        assert!(err(long.as_bytes()).len() < 400, "quotes are cut");
        let many = format!(
            "{{\"sends\":[{}]}}",
            vec![r#"{"stream":"s","subject":"x"}"#; MAX_SENDS + 1].join(",")
        );
        assert!(err(many.as_bytes()).contains("too many sends"));
    }
}
