//! The HTTP runner: reprow's contract made precise. Each request is one
//! POST to the runner's `url`; the response's status and headers say the
//! outcome. `concurrency` threads (`alaska-http-<runner>-<n>`) share one
//! `ureq` agent, whose pool keeps a connection alive per thread, so the
//! application sees at most `concurrency` requests at once over reused
//! connections. A thread blocks only in its own request: nothing here
//! holds up Lua, the dispatcher or another runner.
//!
//! The request: body = the first content frame; headers `X-Alaska-Subject`,
//! `X-Alaska-Address`, `X-Alaska-Sender`, `X-Alaska-Tracker`,
//! `X-Alaska-Attempt`, `X-Alaska-Hops`, `X-Alaska-Frames` (how many content
//! frames), and `X-Alaska-Frame-<n>` (base64) for frames 2 to n. Header
//! values are percent-encoded where they hold bytes outside printable
//! ASCII, or `%` ([`header_value`]).
//!
//! The response ([`interpret`]): 2xx is done, a non-empty body the reply
//! (`X-Alaska-Outcome: drop | fail | retry` and `X-Alaska-Forward:
//! <address>/<subject>` say otherwise); 429 and 503 retry after
//! `Retry-After` (seconds or an HTTP date) when given, else the backoff;
//! other 5xx, and connections refused, reset or timed out, retry with the
//! backoff ([`transport`]); other 4xx fail (a dead letter with the status
//! and the start of the body). A dead application thus makes requests wait
//! for their retries, never lose them.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use crossbeam_channel::{Receiver, Sender};

use super::{Executor, HttpConfig, RunnerError};
use crate::worker::types::{Completion, ErrorKind, Job, Outcome, Request, RunResult, ScriptError};
use crate::worker::wake::Waker;

/// Largest response body read; beyond, the request fails.
pub const MAX_BODY: u64 = 64 << 20;

/// How much of a response body a failure report quotes.
const QUOTE: usize = 200;

/// See the module documentation.
pub struct HttpRunner {
    name: String,
    concurrency: usize,
    tx: Option<Sender<Job>>,
    rx: Receiver<Job>,
    threads: Vec<JoinHandle<()>>,
    deadline: Arc<Mutex<Option<Instant>>>,
}

impl HttpRunner {
    /// Starts `cfg.concurrency` threads sharing one agent.
    pub fn start(
        name: &str,
        cfg: &HttpConfig,
        done: Sender<Completion>,
        waker: Waker,
    ) -> Result<HttpRunner, RunnerError> {
        let client = Arc::new(HttpClient::new(cfg));
        let (tx, rx) = crossbeam_channel::bounded::<Job>(cfg.concurrency.max(1));
        let mut runner = HttpRunner {
            name: name.to_string(),
            concurrency: cfg.concurrency,
            tx: Some(tx),
            rx: rx.clone(),
            threads: Vec::new(),
            deadline: Arc::new(Mutex::new(None)),
        };
        for n in 0..cfg.concurrency {
            let (client, rx, done, waker) =
                (client.clone(), rx.clone(), done.clone(), waker.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("alaska-http-{name}-{n}"))
                .spawn(move || {
                    // Disconnected at a stop, once drained.
                    while let Ok(Job { id, request }) = rx.recv() {
                        let run = client.call(&request);
                        let _ = done.send(Completion { id, request, run });
                        waker.wake();
                    }
                });
            match spawned {
                Ok(t) => runner.threads.push(t),
                Err(source) => {
                    runner.stop_taking(Instant::now());
                    runner.finish();
                    return Err(RunnerError::Thread {
                        runner: name.to_string(),
                        source,
                    });
                }
            }
        }
        Ok(runner)
    }
}

impl Executor for HttpRunner {
    fn name(&self) -> &str {
        &self.name
    }

    fn try_submit(&self, job: Job) -> Result<(), Job> {
        super::submit(&self.tx, job)
    }

    fn slots(&self) -> usize {
        self.concurrency
    }

    fn stop_taking(&mut self, deadline: Instant) -> Vec<Job> {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        let mut unstarted = Vec::new();
        while let Ok(job) = self.rx.try_recv() {
            unstarted.push(job);
        }
        self.tx = None;
        unstarted
    }

    fn finish(&mut self) {
        let deadline = self
            .deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or_else(Instant::now);
        let mut threads = std::mem::take(&mut self.threads);
        while !threads.is_empty() && Instant::now() < deadline {
            threads.retain(|t| !t.is_finished());
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in threads {
            if t.is_finished() {
                let _ = t.join();
            } else {
                // A request cannot be cut short from outside; the process
                // exits after the stop anyway.
                tracing::warn!(
                    "{} still waiting for the application after the shutdown timeout",
                    t.thread().name().unwrap_or("an HTTP runner thread")
                );
            }
        }
    }
}

/// What a runner's threads share: the agent (its pool of kept-alive
/// connections) and where and how to post. Public so that the benchmark
/// calls an application directly with exactly the runner's client.
pub struct HttpClient {
    agent: ureq::Agent,
    url: String,
    timeout: Duration,
    headers: Vec<(String, String)>,
    /// Send `Content-Type: application/octet-stream` (the configured
    /// headers have none).
    content_type: bool,
}

impl HttpClient {
    /// A client for `cfg`: at most `concurrency` connections kept alive,
    /// `timeout` per request, no redirects followed, no proxy.
    pub fn new(cfg: &HttpConfig) -> HttpClient {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            // An application behind a runner is reached directly, never
            // through a proxy named in the worker's environment.
            .proxy(None)
            .max_idle_connections(cfg.concurrency.max(1))
            .max_idle_connections_per_host(cfg.concurrency.max(1))
            .user_agent(format!("alaska/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        HttpClient {
            agent,
            url: cfg.url.clone(),
            timeout: cfg.timeout,
            headers: cfg.headers.clone(),
            content_type: !cfg
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type")),
        }
    }

    /// One POST for `req`, and what its response means.
    pub fn call(&self, req: &Request) -> RunResult {
        call(self, req)
    }
}

fn call(t: &HttpClient, req: &Request) -> RunResult {
    let mut rb = t.agent.post(&t.url);
    for (k, v) in request_headers(req) {
        rb = rb.header(k, v);
    }
    if t.content_type {
        rb = rb.header("Content-Type", "application/octet-stream");
    }
    for (k, v) in &t.headers {
        rb = rb.header(k.as_str(), v.as_str());
    }
    let body: &[u8] = req.content.first().map(Vec::as_slice).unwrap_or(&[]);
    let result = match rb.send(body) {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            match resp.body_mut().with_config().limit(MAX_BODY).read_to_vec() {
                Ok(body) => interpret(
                    status,
                    |name| {
                        headers
                            .get(name)
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    },
                    body,
                    SystemTime::now(),
                ),
                Err(e) => transport(e, t.timeout),
            }
        }
        Err(e) => transport(e, t.timeout),
    };
    RunResult {
        outputs: Vec::new(),
        result,
    }
}

/// The headers that carry the request's metadata and its frames after the
/// first, in the order they are sent.
pub fn request_headers(req: &Request) -> Vec<(String, String)> {
    let mut h = vec![
        ("X-Alaska-Subject".to_string(), header_value(&req.subject)),
        ("X-Alaska-Address".to_string(), header_value(&req.address)),
        ("X-Alaska-Sender".to_string(), header_value(&req.sender)),
        ("X-Alaska-Tracker".to_string(), header_value(&req.tracker)),
        ("X-Alaska-Attempt".to_string(), req.attempt.to_string()),
        ("X-Alaska-Hops".to_string(), req.hops.to_string()),
        ("X-Alaska-Frames".to_string(), req.content.len().to_string()),
    ];
    for (i, f) in req.content.iter().enumerate().skip(1) {
        h.push((format!("X-Alaska-Frame-{}", i + 1), B64.encode(f)));
    }
    h
}

/// A header value for any string: printable ASCII other than `%` as it is,
/// everything else (spaces, controls, non-ASCII, `%`) as `%XX` per UTF-8
/// byte, so names from the broker always make a valid header and decode
/// with any URL-decoding function.
pub fn header_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a response means. `header` looks a response header up by name
/// (case-insensitive); `now` turns a `Retry-After` date into a delay.
pub fn interpret(
    status: u16,
    header: impl Fn(&str) -> Option<String>,
    body: Vec<u8>,
    now: SystemTime,
) -> Result<Outcome, ScriptError> {
    let line = |body: &[u8]| {
        let reason = reason_phrase(status);
        match start_of(body) {
            s if s.is_empty() => format!("HTTP {status} {reason}"),
            s => format!("HTTP {status} {reason}: {s}"),
        }
    };
    let retry_after = || {
        header("retry-after")
            .as_deref()
            .and_then(|v| retry_after(v, now))
    };
    match status {
        200..=299 => {
            let outcome = header("x-alaska-outcome").map(|v| v.trim().to_ascii_lowercase());
            let forward = header("x-alaska-forward");
            match (outcome.as_deref(), forward) {
                (None | Some("done") | Some("forward"), Some(to)) => {
                    let Some((address, subject)) = to
                        .trim()
                        .split_once('/')
                        .filter(|(a, s)| !a.is_empty() && !s.is_empty())
                    else {
                        return Err(ScriptError {
                            kind: ErrorKind::Protocol,
                            message: format!("X-Alaska-Forward: {to:?} is not <address>/<subject>"),
                        });
                    };
                    Ok(Outcome::Forward {
                        address: address.to_string(),
                        subject: subject.to_string(),
                        // An empty body forwards the request as it came.
                        content: (!body.is_empty()).then(|| vec![body]),
                        delay: None,
                    })
                }
                (None | Some("done"), None) => Ok(Outcome::Done {
                    reply: (!body.is_empty()).then_some(body),
                }),
                (Some("drop"), _) => Ok(Outcome::Drop),
                (Some("fail"), _) => Ok(Outcome::Fail {
                    reason: line(&body),
                }),
                (Some("retry"), _) => Ok(Outcome::Retry {
                    after: retry_after(),
                    reason: line(&body),
                }),
                (Some(other), _) => Err(ScriptError {
                    kind: ErrorKind::Protocol,
                    message: format!(
                        "X-Alaska-Outcome: {other:?} is not done, drop, fail or retry"
                    ),
                }),
            }
        }
        429 | 503 => Ok(Outcome::Retry {
            after: retry_after(),
            reason: line(&body),
        }),
        500..=599 => Ok(Outcome::Retry {
            after: None,
            reason: line(&body),
        }),
        _ => Ok(Outcome::Fail {
            reason: line(&body),
        }),
    }
}

/// A request that got no usable response: refused, reset, timed out and
/// the like are retried with the backoff; the rest is a failure.
pub fn transport(e: ureq::Error, timeout: Duration) -> Result<Outcome, ScriptError> {
    use std::io::ErrorKind as Io;
    match e {
        ureq::Error::Timeout(_) => Ok(Outcome::Retry {
            after: None,
            reason: format!("no response within {timeout:?}"),
        }),
        ureq::Error::Io(io) if io.kind() == Io::TimedOut || io.kind() == Io::WouldBlock => {
            Ok(Outcome::Retry {
                after: None,
                reason: format!("no response within {timeout:?}"),
            })
        }
        ureq::Error::Io(io) => Ok(Outcome::Retry {
            after: None,
            reason: match io.kind() {
                Io::ConnectionRefused => "connection refused (is the application running?)".into(),
                Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe => {
                    format!("connection reset: {io}")
                }
                _ => format!("connection: {io}"),
            },
        }),
        e @ (ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Protocol(_)) => Ok(Outcome::Retry {
            after: None,
            reason: format!("connection: {e}"),
        }),
        ureq::Error::BodyExceedsLimit(n) => Err(ScriptError {
            kind: ErrorKind::Protocol,
            message: format!("response body larger than {n} bytes"),
        }),
        other => Err(ScriptError {
            kind: ErrorKind::Protocol,
            message: format!("HTTP request: {other}"),
        }),
    }
}

/// `Retry-After`: whole seconds, or an HTTP date (a date past is now).
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u32>() {
        return Some(Duration::from_secs(secs.into()));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// The start of a body, as text, for reports.
fn start_of(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(QUOTE)]);
    let text = text.trim();
    if body.len() > QUOTE {
        format!("{text}...")
    } else {
        text.to_string()
    }
}

fn reason_phrase(status: u16) -> &'static str {
    ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn respond(status: u16, headers: &[(&str, &str)], body: &str) -> Result<Outcome, ScriptError> {
        let h: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
            .collect();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        interpret(
            status,
            |n| h.get(&n.to_ascii_lowercase()).cloned(),
            body.as_bytes().to_vec(),
            now,
        )
    }

    #[test]
    fn two_hundreds_are_done_with_the_body_as_reply() {
        assert_eq!(
            respond(200, &[], "hello"),
            Ok(Outcome::Done {
                reply: Some(b"hello".to_vec())
            })
        );
        assert_eq!(respond(204, &[], ""), Ok(Outcome::Done { reply: None }));
        assert_eq!(
            respond(202, &[("X-Alaska-Outcome", "done")], "x"),
            Ok(Outcome::Done {
                reply: Some(b"x".to_vec())
            })
        );
    }

    #[test]
    fn outcome_and_forward_headers() {
        assert_eq!(
            respond(200, &[("X-Alaska-Outcome", "Drop")], "ignored"),
            Ok(Outcome::Drop)
        );
        assert_eq!(
            respond(200, &[("X-Alaska-Forward", "enrich/order")], "{\"id\":1}"),
            Ok(Outcome::Forward {
                address: "enrich".into(),
                subject: "order".into(),
                content: Some(vec![b"{\"id\":1}".to_vec()]),
                delay: None
            })
        );
        assert_eq!(
            respond(200, &[("X-Alaska-Forward", "a/b/c")], ""),
            Ok(Outcome::Forward {
                address: "a".into(),
                subject: "b/c".into(),
                content: None,
                delay: None
            })
        );
        assert_eq!(
            respond(200, &[("X-Alaska-Outcome", "fail")], "no stock"),
            Ok(Outcome::Fail {
                reason: "HTTP 200 OK: no stock".into()
            })
        );
        assert_eq!(
            respond(
                200,
                &[("X-Alaska-Outcome", "retry"), ("Retry-After", "7")],
                ""
            ),
            Ok(Outcome::Retry {
                after: Some(Duration::from_secs(7)),
                reason: "HTTP 200 OK".into()
            })
        );
        for bad in ["nowhere", "/x", "x/"] {
            let e = respond(200, &[("X-Alaska-Forward", bad)], "").unwrap_err();
            assert_eq!(e.kind, ErrorKind::Protocol);
        }
        let e = respond(200, &[("X-Alaska-Outcome", "explode")], "").unwrap_err();
        assert!(e.message.contains("explode"), "{}", e.message);
    }

    #[test]
    fn retry_statuses_honour_retry_after_seconds_or_date() {
        assert_eq!(
            respond(503, &[("Retry-After", "1")], ""),
            Ok(Outcome::Retry {
                after: Some(Duration::from_secs(1)),
                reason: "HTTP 503 Service Unavailable".into()
            })
        );
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        assert_eq!(
            respond(
                429,
                &[("Retry-After", "Tue, 14 Nov 2023 22:13:50 GMT")],
                "slow down"
            ),
            Ok(Outcome::Retry {
                after: Some(Duration::from_secs(30)),
                reason: "HTTP 429 Too Many Requests: slow down".into()
            })
        );
        assert_eq!(
            respond(503, &[("Retry-After", "Tue, 14 Nov 2023 22:00:00 GMT")], ""),
            Ok(Outcome::Retry {
                after: Some(Duration::ZERO),
                reason: "HTTP 503 Service Unavailable".into()
            })
        );
        assert_eq!(
            respond(503, &[("Retry-After", "soon")], ""),
            Ok(Outcome::Retry {
                after: None,
                reason: "HTTP 503 Service Unavailable".into()
            })
        );
        assert_eq!(
            respond(500, &[("Retry-After", "5")], "boom"),
            Ok(Outcome::Retry {
                after: None,
                reason: "HTTP 500 Internal Server Error: boom".into()
            })
        );
    }

    #[test]
    fn four_hundreds_fail_with_status_and_start_of_body() {
        assert_eq!(
            respond(400, &[], "missing field \"order\"\n"),
            Ok(Outcome::Fail {
                reason: "HTTP 400 Bad Request: missing field \"order\"".into()
            })
        );
        let long = "x".repeat(1000);
        let Ok(Outcome::Fail { reason }) = respond(404, &[], &long) else {
            panic!("404 is a failure");
        };
        assert!(reason.starts_with("HTTP 404 Not Found: xxx") && reason.len() < 260);
        assert!(matches!(respond(302, &[], ""), Ok(Outcome::Fail { .. })));
    }

    #[test]
    fn transport_errors_retry() {
        let io = |k| ureq::Error::Io(std::io::Error::from(k));
        let t = Duration::from_secs(2);
        let retry = |r: Result<Outcome, ScriptError>| match r {
            Ok(Outcome::Retry {
                after: None,
                reason,
            }) => reason,
            other => panic!("not a retry: {other:?}"),
        };
        assert!(retry(transport(io(std::io::ErrorKind::ConnectionRefused), t)).contains("refused"));
        assert!(retry(transport(io(std::io::ErrorKind::ConnectionReset), t)).contains("reset"));
        assert!(retry(transport(io(std::io::ErrorKind::TimedOut), t)).contains("2s"));
        assert!(retry(transport(ureq::Error::ConnectionFailed, t)).contains("connection"));
        assert!(transport(ureq::Error::BadUri("x".into()), t).is_err());
    }

    #[test]
    fn metadata_and_further_frames_travel_in_headers() {
        let req = Request {
            sender: "alas-host-1".into(),
            address: "svc".into(),
            subject: "orders.new".into(),
            tracker: "t 1%\u{e9}".into(),
            content: vec![b"body".to_vec(), vec![0xff, 0], b"three".to_vec()],
            attempt: 2,
            hops: 1,
        };
        let h = request_headers(&req);
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("X-Alaska-Subject"), Some("orders.new"));
        assert_eq!(get("X-Alaska-Tracker"), Some("t%201%25%C3%A9"));
        assert_eq!(get("X-Alaska-Attempt"), Some("2"));
        assert_eq!(get("X-Alaska-Hops"), Some("1"));
        assert_eq!(get("X-Alaska-Frames"), Some("3"));
        assert_eq!(get("X-Alaska-Frame-1"), None);
        assert_eq!(get("X-Alaska-Frame-2"), Some("/wA="));
        assert_eq!(get("X-Alaska-Frame-3"), Some("dGhyZWU="));
    }
}
