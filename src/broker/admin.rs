//! The admin API over what the broker holds: dead letters (the error
//! mailbox, browsed without being consumed, shown, replayed, deleted,
//! purged), any mailbox's mail (peeked), and service queues (peeked,
//! purged). Requests are parsed on the HTTP thread into an [`AdminQuery`]
//! and answered on the router thread from the core ([`answer`]).
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/dead?limit=&offset=&subject=&reason=&address=` | | `{"mailbox", "total", "offset", "letters": [letter]}`, newest first |
//! | `GET /v1/dead/<id>` | | one letter, with every mail frame |
//! | `POST /v1/dead/<id>/replay` | `{"reply_to"?, "tracker"?, "to_address"?, "to_subject"?, "keep"?}` | `{"replayed": [..], "failed": [..]}` |
//! | `POST /v1/dead/replay` | `{"subject"?, "reason"?, "address"?}` to select, and the above | the same, for every letter matching |
//! | `DELETE /v1/dead/<id>` (or `POST /v1/dead/<id>/delete`) | | `{"deleted": 1}` |
//! | `POST /v1/dead/purge` | `{"subject"?, "reason"?, "address"?}` | `{"purged": n}` |
//! | `GET /v1/mailboxes/<address>?limit=` | | `{"address", "total", "mail": [..]}`, oldest first |
//! | `GET /v1/services/<name>/queue?limit=` | | `{"service", "total", "requests": [..]}`, oldest first |
//! | `POST /v1/services/<name>/purge` | | `{"purged": n}` |
//! | `GET /v1/delayed?limit=&offset=` | | `{"total", "offset", "delayed": [..]}`, soonest due first |
//! | `DELETE /v1/delayed/<id>` (or `POST /v1/delayed/<id>/cancel`) | | `{"cancelled": 1}`; 404 when none |
//! | `GET /v1/schedules` | | `{"schedules": [..]}`: every or cron, timezone, where to, next and last fire, fires |
//!
//! A replay queues the dead letter's request again (its original service
//! address, subject and every content frame, from the letter's metadata
//! frame) in the broker's name with a fresh delivery count; nobody waits
//! for it any more, so it replies nowhere unless `reply_to` (and
//! `tracker`) say where. The letter is deleted once replayed, unless
//! `keep` is true.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::core::{unix_ms, Core, Held, HeldId, Journal, When};
use crate::ops::http::{HttpRequest, HttpResponse, Method};
use crate::worker::outcomes::rfc3339;

/// Most items one listing returns (`limit` is cut to it).
pub const MAX_LIMIT: usize = 1000;

/// Items a listing returns when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 50;

/// Which dead letters a listing, a bulk replay or a purge is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The request's subject, exactly.
    pub subject: Option<String>,
    /// Text the reason contains.
    pub reason: Option<String>,
    /// The request's service address, exactly.
    pub address: Option<String>,
}

/// What to do with a replayed request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Who gets the reply (empty: nobody).
    pub reply_to: String,
    /// The tracker of the reply.
    pub tracker: String,
    /// Send it to this service instead of the original one.
    pub address: Option<String>,
    /// With this subject instead of the original one.
    pub subject: Option<String>,
    /// Keep the dead letter after replaying it.
    pub keep: bool,
}

/// One admin request on what the broker holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminQuery {
    /// List dead letters, newest first.
    ListDead {
        /// Which ones.
        filter: Filter,
        /// How many to skip.
        offset: usize,
        /// How many to return.
        limit: usize,
    },
    /// One dead letter.
    ShowDead(HeldId),
    /// Replay one dead letter (`Some`) or every one matching the filter.
    Replay {
        /// The letter, or all matching `filter`.
        id: Option<HeldId>,
        /// For a bulk replay.
        filter: Filter,
        /// Where replies go, overrides, keep.
        options: ReplayOptions,
    },
    /// Delete one dead letter.
    DeleteDead(HeldId),
    /// Delete every dead letter matching.
    PurgeDead(Filter),
    /// Peek at the mail of a mailbox.
    Mail {
        /// The mailbox.
        address: String,
        /// How many to return.
        limit: usize,
    },
    /// Peek at a service queue.
    Queue {
        /// The service.
        service: String,
        /// How many to return.
        limit: usize,
    },
    /// Drop what waits in a service queue.
    PurgeQueue(String),
    /// List the delayed requests, soonest due first.
    ListDelayed {
        /// How many to skip.
        offset: usize,
        /// How many to return.
        limit: usize,
    },
    /// Cancel a delayed request.
    CancelDelayed(HeldId),
    /// List the schedules.
    Schedules,
}

/// Parses an admin request for the paths in the module's table;
/// `Err` is the response to give at once (400, 404).
pub fn parse(req: &HttpRequest) -> Result<AdminQuery, HttpResponse> {
    let segments: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let not_found = || HttpResponse::text(404, "not found");
    let decode = |s: &str| {
        percent_decode(s)
            .ok_or_else(|| HttpResponse::text(400, "the path is not valid percent-encoded UTF-8"))
    };
    let limit = || -> Result<usize, HttpResponse> {
        match req.query_param("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(v) => v
                .parse::<usize>()
                .map(|n| n.min(MAX_LIMIT))
                .map_err(|_| HttpResponse::text(400, "limit must be a number")),
        }
    };
    let id = |s: &str| {
        s.parse::<HeldId>()
            .map_err(|_| HttpResponse::text(400, &format!("{s:?} is not a dead letter id")))
    };
    let m = &req.method;
    let offset = || -> Result<usize, HttpResponse> {
        match req.query_param("offset") {
            None => Ok(0),
            Some(v) => v
                .parse()
                .map_err(|_| HttpResponse::text(400, "offset must be a number")),
        }
    };
    let delayed_id = |s: &str| {
        s.parse::<HeldId>()
            .map_err(|_| HttpResponse::text(400, &format!("{s:?} is not a delayed request id")))
    };
    match segments.as_slice() {
        ["v1", "dead"] if m == Method::GET => Ok(AdminQuery::ListDead {
            filter: query_filter(req)?,
            offset: offset()?,
            limit: limit()?,
        }),
        ["v1", "delayed"] if m == Method::GET => Ok(AdminQuery::ListDelayed {
            offset: offset()?,
            limit: limit()?,
        }),
        ["v1", "delayed", n] if m == Method::DELETE => {
            Ok(AdminQuery::CancelDelayed(delayed_id(n)?))
        }
        ["v1", "delayed", n, "cancel"] if m == Method::POST => {
            Ok(AdminQuery::CancelDelayed(delayed_id(n)?))
        }
        ["v1", "schedules"] if m == Method::GET => Ok(AdminQuery::Schedules),
        ["v1", "dead", "purge"] if m == Method::POST => {
            Ok(AdminQuery::PurgeDead(body_filter(&body_object(req)?)?))
        }
        ["v1", "dead", "replay"] if m == Method::POST => {
            let body = body_object(req)?;
            Ok(AdminQuery::Replay {
                id: None,
                filter: body_filter(&body)?,
                options: replay_options(&body)?,
            })
        }
        ["v1", "dead", n] if m == Method::GET => Ok(AdminQuery::ShowDead(id(n)?)),
        ["v1", "dead", n] if m == Method::DELETE => Ok(AdminQuery::DeleteDead(id(n)?)),
        ["v1", "dead", n, "delete"] if m == Method::POST => Ok(AdminQuery::DeleteDead(id(n)?)),
        ["v1", "dead", n, "replay"] if m == Method::POST => {
            let body = body_object(req)?;
            Ok(AdminQuery::Replay {
                id: Some(id(n)?),
                filter: Filter::default(),
                options: replay_options(&body)?,
            })
        }
        ["v1", "mailboxes", a] if m == Method::GET => Ok(AdminQuery::Mail {
            address: decode(a)?,
            limit: limit()?,
        }),
        ["v1", "services", s, "queue"] if m == Method::GET => Ok(AdminQuery::Queue {
            service: decode(s)?,
            limit: limit()?,
        }),
        ["v1", "services", s, "purge"] if m == Method::POST => {
            Ok(AdminQuery::PurgeQueue(decode(s)?))
        }
        _ => Err(not_found()),
    }
}

/// `%XX` sequences decoded (addresses may hold `/`, spaces, anything);
/// `None` for a bad sequence or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `%XX` for every byte but the unreserved ones (RFC 3986): a query value
/// or path segment that [`percent_decode`] gives back as it was.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The filter of a listing, from its query string (`+` is a space).
fn query_filter(req: &HttpRequest) -> Result<Filter, HttpResponse> {
    let get = |name: &str| -> Result<Option<String>, HttpResponse> {
        match req.query_param(name) {
            None | Some("") => Ok(None),
            Some(v) => percent_decode(&v.replace('+', " "))
                .map(Some)
                .ok_or_else(|| {
                    HttpResponse::text(400, &format!("{name} is not valid percent-encoded UTF-8"))
                }),
        }
    };
    Ok(Filter {
        subject: get("subject")?,
        reason: get("reason")?,
        address: get("address")?,
    })
}

/// The body as a JSON object; an empty body is `{}`.
fn body_object(req: &HttpRequest) -> Result<Map<String, Value>, HttpResponse> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(HttpResponse::text(400, "the body must be a JSON object")),
    }
}

fn string_field(body: &Map<String, Value>, name: &str) -> Result<Option<String>, HttpResponse> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(HttpResponse::text(400, &format!("{name} must be a string"))),
    }
}

fn body_filter(body: &Map<String, Value>) -> Result<Filter, HttpResponse> {
    Ok(Filter {
        subject: string_field(body, "subject")?,
        reason: string_field(body, "reason")?,
        address: string_field(body, "address")?,
    })
}

fn replay_options(body: &Map<String, Value>) -> Result<ReplayOptions, HttpResponse> {
    let keep = match body.get("keep") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(HttpResponse::text(400, "keep must be true or false")),
    };
    Ok(ReplayOptions {
        reply_to: string_field(body, "reply_to")?.unwrap_or_default(),
        tracker: string_field(body, "tracker")?.unwrap_or_default(),
        // `to_address`/`to_subject`, not `address`/`subject`: in a bulk
        // replay those select letters, they do not redirect them.
        address: string_field(body, "to_address")?,
        subject: string_field(body, "to_subject")?,
        keep,
    })
}

/// A dead letter read: the report, and the metadata frame when the
/// worker (or broker) that wrote it adds one.
#[derive(Debug, Clone)]
pub struct Letter<'a> {
    /// The mail as held.
    pub held: &'a Held,
    /// The third frame, parsed (`None` for the original two-frame format).
    pub meta: Option<Map<String, Value>>,
}

impl<'a> Letter<'a> {
    /// Reads a dead letter.
    pub fn read(held: &'a Held) -> Letter<'a> {
        let meta = held
            .content
            .get(2)
            .and_then(|f| serde_json::from_slice::<Value>(f).ok())
            .and_then(|v| match v {
                Value::Object(m) => Some(m),
                _ => None,
            });
        Letter { held, meta }
    }

    fn meta_str(&self, name: &str) -> Option<&str> {
        self.meta.as_ref()?.get(name)?.as_str()
    }

    /// The report text (first frame).
    pub fn report(&self) -> String {
        self.held
            .content
            .first()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .unwrap_or_default()
    }

    /// The service the request was for, when the letter says.
    pub fn address(&self) -> Option<&str> {
        self.meta_str("address")
    }

    /// The request's subject: the metadata's, else the mail's.
    pub fn subject(&self) -> &str {
        self.meta_str("subject").unwrap_or(&self.held.subject)
    }

    /// Why it was given up.
    pub fn reason(&self) -> String {
        self.meta_str("reason")
            .map(str::to_string)
            .unwrap_or_else(|| self.report())
    }

    /// Whether it matches `f`.
    pub fn matches(&self, f: &Filter) -> bool {
        f.subject.as_deref().is_none_or(|s| s == self.subject())
            && f.address
                .as_deref()
                .is_none_or(|a| Some(a) == self.address())
            && f.reason
                .as_deref()
                .is_none_or(|r| self.reason().contains(r))
    }

    /// The request's content frames: from the metadata (all of them), or
    /// the original format's one frame.
    pub fn frames(&self) -> Result<Vec<Vec<u8>>, String> {
        match self.meta.as_ref().and_then(|m| m.get("frames")) {
            Some(Value::Array(list)) => list.iter().map(frame_of).collect(),
            _ => Ok(self.held.content.get(1).cloned().into_iter().collect()),
        }
    }

    /// The letter as the API shows it; `full` adds every mail frame.
    pub fn to_json(&self, full: bool) -> Value {
        let meta = self.meta.clone().unwrap_or_default();
        let field = |n: &str| meta.get(n).cloned().unwrap_or(Value::Null);
        let mut v = json!({
            "id": self.held.id,
            "sender": self.held.sender,
            "subject": self.subject(),
            "address": self.address(),
            "outcome": field("outcome"),
            "reason": self.reason(),
            "attempts": field("attempts"),
            "deliveries": field("deliveries"),
            "hops": field("hops"),
            "requester": field("requester"),
            "tracker": field("tracker"),
            "when": field("when"),
            "format": meta.get("format").cloned().unwrap_or(json!(0)),
            "replayable": self.address().is_some(),
            // The metadata's frames as they are written; the original
            // format's one frame otherwise.
            "frames": match meta.get("frames") {
                Some(Value::Array(list)) => Value::Array(list.clone()),
                _ => json!(self.held.content.get(1).map(|f| vec![frame_json(f)]).unwrap_or_default()),
            },
        });
        if full {
            v["report"] = json!(self.report());
            v["mail_frames"] = json!(self
                .held
                .content
                .iter()
                .map(|f| frame_json(f))
                .collect::<Vec<_>>());
        }
        v
    }
}

/// `{"text": ..}` or `{"base64": ..}`.
fn frame_json(f: &[u8]) -> Value {
    crate::worker::outcomes::frame_json(f)
}

/// The bytes of a frame written by [`frame_json`].
pub fn frame_of(v: &Value) -> Result<Vec<u8>, String> {
    if let Some(t) = v.get("text").and_then(Value::as_str) {
        return Ok(t.as_bytes().to_vec());
    }
    if let Some(b) = v.get("base64").and_then(Value::as_str) {
        return base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| format!("a frame's base64 is not valid: {e}"));
    }
    Err("a frame is neither {\"text\": ..} nor {\"base64\": ..}".into())
}

/// The answer to `q` from the core as it is now; changes go out with the
/// router's next flush.
pub fn answer<J: Journal>(core: &mut Core<J>, q: &AdminQuery) -> HttpResponse {
    let mailbox = core.dead_letter_mailbox().to_string();
    match q {
        AdminQuery::ListDead {
            filter,
            offset,
            limit,
        } => {
            // Newest first. Without a filter only the page shown is read
            // (this runs on the router thread; the console asks every 2 s
            // and the mailbox may hold thousands).
            let newest_first = core.mail_of(&mailbox).into_iter().rev();
            let (total, letters): (usize, Vec<Value>) = if *filter == Filter::default() {
                let all: Vec<&Held> = newest_first.collect();
                let page = all.iter().skip(*offset).take(*limit);
                (
                    all.len(),
                    page.map(|h| Letter::read(h).to_json(false)).collect(),
                )
            } else {
                let matching: Vec<Letter> = newest_first
                    .map(Letter::read)
                    .filter(|l| l.matches(filter))
                    .collect();
                let page = matching.iter().skip(*offset).take(*limit);
                (matching.len(), page.map(|l| l.to_json(false)).collect())
            };
            HttpResponse::json(
                200,
                &json!({
                    "mailbox": mailbox,
                    "total": total,
                    "offset": offset,
                    "letters": letters,
                }),
            )
        }
        AdminQuery::ShowDead(id) => {
            match core.mail_of(&mailbox).into_iter().find(|h| h.id == *id) {
                Some(h) => HttpResponse::json(200, &Letter::read(h).to_json(true)),
                None => no_letter(*id),
            }
        }
        AdminQuery::DeleteDead(id) => {
            if core.delete_mail(&mailbox, *id) {
                tracing::info!("admin API: dead letter {id} deleted");
                HttpResponse::json(200, &json!({ "deleted": 1 }))
            } else {
                no_letter(*id)
            }
        }
        AdminQuery::PurgeDead(filter) => {
            let ids: Vec<HeldId> = core
                .mail_of(&mailbox)
                .into_iter()
                .filter(|h| Letter::read(h).matches(filter))
                .map(|h| h.id)
                .collect();
            let n = ids
                .into_iter()
                .filter(|&id| core.delete_mail(&mailbox, id))
                .count();
            tracing::info!("admin API: {n} dead letter(s) purged");
            HttpResponse::json(200, &json!({ "purged": n }))
        }
        AdminQuery::Replay {
            id,
            filter,
            options,
        } => {
            // Each letter to replay, and where to (or why it cannot be).
            let mut plan: Vec<(HeldId, Result<Target, String>)> = Vec::new();
            for h in core.mail_of(&mailbox) {
                let l = Letter::read(h);
                let wanted = match id {
                    Some(id) => h.id == *id,
                    None => l.matches(filter),
                };
                if !wanted {
                    continue;
                }
                let address = options
                    .address
                    .clone()
                    .or_else(|| l.address().map(str::to_string));
                let subject = options
                    .subject
                    .clone()
                    .unwrap_or_else(|| l.subject().to_string());
                let target = match address {
                    Some(a) => l.frames().map(|f| (a, subject, f)),
                    None => Err("the letter does not say which service it was for (the \
                                 original two-frame format): give to_address"
                        .into()),
                };
                plan.push((h.id, target));
            }
            if let (Some(id), true) = (id, plan.is_empty()) {
                return no_letter(*id);
            }
            let mut replayed = Vec::new();
            let mut failed = Vec::new();
            for (dead, target) in plan {
                let result = target.and_then(|(address, subject, frames)| {
                    core.inject_request(
                        &address,
                        &subject,
                        &options.reply_to,
                        &options.tracker,
                        frames,
                    )
                    .map(|req| (address, subject, req))
                    .map_err(|e| e.to_string())
                });
                match result {
                    Ok((address, subject, req)) => {
                        tracing::info!(
                            "admin API: dead letter {dead} replayed to {address:?} subject {subject:?}"
                        );
                        if !options.keep {
                            core.delete_mail(&mailbox, dead);
                        }
                        replayed.push(json!({
                            "dead": dead, "request": req, "address": address, "subject": subject,
                        }));
                    }
                    Err(e) => failed.push(json!({ "dead": dead, "error": e })),
                }
            }
            let status = if id.is_some() && replayed.is_empty() {
                409
            } else {
                200
            };
            HttpResponse::json(status, &json!({ "replayed": replayed, "failed": failed }))
        }
        AdminQuery::Mail { address, limit } => {
            peek(("address", address), "mail", core.mail_of(address), *limit)
        }
        AdminQuery::Queue { service, limit } => peek(
            ("service", service),
            "requests",
            core.queue_of(service),
            *limit,
        ),
        AdminQuery::PurgeQueue(service) => {
            let n = core.purge_queue(service);
            tracing::info!("admin API: {n} queued request(s) of {service:?} purged");
            HttpResponse::json(200, &json!({ "service": service, "purged": n }))
        }
        AdminQuery::ListDelayed { offset, limit } => {
            let all = core.delayed();
            let list: Vec<Value> = all
                .iter()
                .skip(*offset)
                .take(*limit)
                .map(|d| {
                    let due = core.wall_at(d.due);
                    json!({
                        "id": d.req.id,
                        "address": d.service,
                        "subject": d.req.subject,
                        "sender": d.req.sender,
                        "tracker": d.req.tracker,
                        "timeout_ms": d.timeout_ms,
                        "due": due.map(rfc3339),
                        "due_unix_ms": due.map(unix_ms),
                        "size": d.req.bytes(),
                    })
                })
                .collect();
            HttpResponse::json(
                200,
                &json!({ "total": all.len(), "offset": offset, "delayed": list }),
            )
        }
        AdminQuery::CancelDelayed(id) => {
            if core.cancel_delayed(*id) {
                tracing::info!("admin API: delayed request {id} cancelled");
                HttpResponse::json(200, &json!({ "cancelled": 1 }))
            } else {
                HttpResponse::text(404, &format!("no delayed request {id}"))
            }
        }
        AdminQuery::Schedules => {
            let ms_json = |ms: Option<u64>| {
                json!({
                    "time": ms
                        .and_then(|m| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(m)))
                        .map(rfc3339),
                    "unix_ms": ms,
                })
            };
            let list: Vec<Value> = core
                .schedules()
                .iter()
                .map(|s| {
                    let (every, cron, tz) = match &s.spec.when {
                        When::Every(d) => (Some(every_text(*d)), None, None),
                        When::Cron { expr, tz, .. } => (None, Some(expr.clone()), Some(tz.name().to_string())),
                    };
                    json!({
                        "name": s.spec.name,
                        "every": every,
                        "every_ms": match &s.spec.when { When::Every(d) => Some(d.as_millis() as u64), _ => None },
                        "cron": cron,
                        "timezone": tz,
                        "address": s.spec.address,
                        "subject": s.spec.subject,
                        "next_fire": ms_json(s.next),
                        "last_fire": ms_json(s.last),
                        "fires": s.fires,
                    })
                })
                .collect();
            HttpResponse::json(200, &json!({ "schedules": list }))
        }
    }
}

/// An `every` as a person writes it: `1h`, `5m`, `30s`, `250ms`.
fn every_text(d: std::time::Duration) -> String {
    match d.as_millis() {
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

/// A peek: `{"<key>": name, "total": n, "<list>": [the first `limit`]}`.
fn peek(named: (&str, &str), list: &str, all: Vec<&Held>, limit: usize) -> HttpResponse {
    let items: Vec<Value> = all.iter().take(limit).map(|h| held_json(h)).collect();
    let mut v = json!({ "total": all.len() });
    v[named.0] = json!(named.1);
    v[list] = Value::Array(items);
    HttpResponse::json(200, &v)
}

/// Where a replay goes: service address, subject, content frames.
type Target = (String, String, Vec<Vec<u8>>);

fn no_letter(id: HeldId) -> HttpResponse {
    HttpResponse::text(404, &format!("no dead letter {id}"))
}

/// A held message as the API shows it.
fn held_json(h: &Held) -> Value {
    json!({
        "id": h.id,
        "sender": h.sender,
        "subject": h.subject,
        "tracker": h.tracker,
        "deliveries": h.deliveries,
        "frames": h.content.iter().map(|f| frame_json(f)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, target: &str, body: &str) -> HttpRequest {
        HttpRequest::new(method, target, body.as_bytes().to_vec())
    }

    #[test]
    fn paths_parse_to_queries_and_bad_ones_are_refused() {
        assert_eq!(
            parse(&req(
                Method::GET,
                "/v1/dead?limit=5&offset=2&subject=a+b",
                ""
            ))
            .unwrap(),
            AdminQuery::ListDead {
                filter: Filter {
                    subject: Some("a b".into()),
                    ..Filter::default()
                },
                offset: 2,
                limit: 5
            }
        );
        assert_eq!(
            parse(&req(Method::GET, "/v1/dead?limit=999999", "")).unwrap(),
            AdminQuery::ListDead {
                filter: Filter::default(),
                offset: 0,
                limit: MAX_LIMIT
            }
        );
        assert_eq!(
            parse(&req(Method::DELETE, "/v1/dead/7", "")).unwrap(),
            AdminQuery::DeleteDead(7)
        );
        assert_eq!(
            parse(&req(
                Method::POST,
                "/v1/dead/7/replay",
                r#"{"reply_to":"me","keep":true}"#
            ))
            .unwrap(),
            AdminQuery::Replay {
                id: Some(7),
                filter: Filter::default(),
                options: ReplayOptions {
                    reply_to: "me".into(),
                    keep: true,
                    ..ReplayOptions::default()
                }
            }
        );
        assert_eq!(
            parse(&req(Method::GET, "/v1/services/a%2Fb/queue", "")).unwrap(),
            AdminQuery::Queue {
                service: "a/b".into(),
                limit: DEFAULT_LIMIT
            }
        );
        let status = |r: HttpRequest| parse(&r).unwrap_err().status;
        assert_eq!(status(req(Method::GET, "/v1/dead/x", "")), 400);
        assert_eq!(status(req(Method::GET, "/v1/dead?limit=-1", "")), 400);
        assert_eq!(status(req(Method::POST, "/v1/dead/purge", "[1]")), 400);
        assert_eq!(
            status(req(Method::POST, "/v1/dead/1/replay", r#"{"keep":1}"#)),
            400
        );
        assert_eq!(status(req(Method::GET, "/v1/services/%zz/queue", "")), 400);
        assert_eq!(status(req(Method::GET, "/v1/dead/1/2/3", "")), 404);
    }

    #[test]
    fn percent_encoding_round_trips() {
        for s in ["plain", "a b&c=d+e%f/g", "héllo ✓", ""] {
            assert_eq!(percent_decode(&percent_encode(s)).as_deref(), Some(s));
        }
        assert_eq!(percent_encode("a b"), "a%20b");
    }

    #[test]
    fn letters_read_both_formats() {
        let meta = json!({"format": 1, "address": "svc", "subject": "s", "reason": "boom",
                          "frames": [{"text": "a"}, {"base64": "/wA="}]});
        let held = Held {
            id: 3,
            sender: "w".into(),
            subject: "s".into(),
            tracker: String::new(),
            content: vec![
                b"report".to_vec(),
                b"a".to_vec(),
                meta.to_string().into_bytes(),
            ],
            expires: None,
            deliveries: 0,
        };
        let l = Letter::read(&held);
        assert_eq!(l.address(), Some("svc"));
        assert_eq!(l.frames().unwrap(), vec![b"a".to_vec(), vec![0xff, 0]]);
        assert!(l.matches(&Filter {
            reason: Some("oo".into()),
            ..Filter::default()
        }));
        let old = Held {
            content: vec![b"dead letter: x".to_vec(), b"body".to_vec()],
            ..held.clone()
        };
        let l = Letter::read(&old);
        assert_eq!(l.address(), None);
        assert_eq!(l.reason(), "dead letter: x");
        assert_eq!(l.frames().unwrap(), vec![b"body".to_vec()]);
        assert_eq!(l.to_json(false)["replayable"], json!(false));
    }
}
