//! A small HTTP/1.1 server for health, metrics, admin and gateway
//! endpoints.
//!
//! One named thread (`alaska-http` unless told otherwise) runs a
//! single-threaded tokio runtime with hyper on it: every connection is a
//! task on that thread, so thousands of idle keep-alive connections and
//! requests waiting for a broker cost memory, not threads. Handlers are
//! plain synchronous functions ([`Handler`]) that must not block: they
//! answer at once ([`Reply::Now`]) from counters they read without locks,
//! or hand the request to the thread that owns the resource (over a
//! channel) together with a [`Responder`], and return [`Reply::Later`]. The
//! owner completes the responder with a non-blocking call whenever it has
//! the answer; a responder dropped unanswered becomes `503`.
//!
//! [`HttpServer::stop`] always ends: it stops accepting, lets requests in
//! progress finish for at most [`HttpOptions::grace`], then drops the rest
//! and joins the thread.
//!
//! What every listener of the project (worker, broker, gateway) gets from
//! here, whatever routes it adds:
//! - bounded memory per request: a declared `Content-Length` over
//!   [`HttpOptions::max_body`] is answered `413` before any of the body is
//!   read; a body is copied into one buffer as it comes (hyper's own read
//!   buffers are released at once, so a body sent a byte per TCP segment
//!   costs its size, not a buffer per segment); headers must arrive within
//!   [`HttpOptions::header_timeout`] and the body within
//!   [`HttpOptions::body_timeout`] (`408`, connection closed);
//! - a bearer token when [`HttpOptions::token`] is set: every request but
//!   `GET`/`HEAD /health` needs `Authorization: Bearer <token>` (compared
//!   in constant time), `401` otherwise;
//! - requests a web page cannot forge: a state change (any method but
//!   `GET`/`HEAD`) with an `Origin` that is not the listener's own host is
//!   `403`; with [`HttpOptions::json_writes`] it must also be
//!   `application/json` (`415`), which no form or no-preflight `fetch` can
//!   send; on a loopback listener the `Host` must be a loopback name (a
//!   page that rebinds its DNS name to 127.0.0.1 is `403`);
//! - `HEAD` answered as `GET`, without the body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;

use super::metrics::{Metrics, CONTENT_TYPE};

pub use hyper::Method;

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address given.
        addr: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The runtime or the thread could not be started.
    #[error("starting the HTTP server: {0}")]
    Start(#[from] std::io::Error),
}

/// A request, with its body read in full.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// GET, POST, ...
    pub method: Method,
    /// The path, as sent (still percent-encoded).
    pub path: String,
    /// The query string without `?`, empty if none.
    pub query: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// When the request was read in full.
    pub received: Instant,
}

impl HttpRequest {
    /// A request built by hand (for routers and tests).
    pub fn new(method: Method, target: &str, body: Vec<u8>) -> HttpRequest {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        HttpRequest {
            method,
            path: path.to_string(),
            query: query.to_string(),
            content_type: None,
            body,
            received: Instant::now(),
        }
    }

    /// The value of query parameter `name`, if present (first one wins;
    /// not percent-decoded: our parameters are numbers).
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers besides `Content-Length` (`Content-Type` first, if any).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with a body of type `content_type`.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> HttpResponse {
        HttpResponse {
            status,
            headers: vec![("content-type", content_type.to_string())],
            body: body.into(),
        }
    }

    /// A plain-text response; a newline is added so that `curl` output
    /// ends cleanly.
    pub fn text(status: u16, text: &str) -> HttpResponse {
        HttpResponse::new(status, "text/plain; charset=utf-8", format!("{text}\n"))
    }

    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> HttpResponse {
        HttpResponse::new(status, "application/json", value.to_string())
    }

    /// The same response with one more header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> HttpResponse {
        self.headers.push((name, value.into()));
        self
    }
}

/// How a handler answers.
#[derive(Debug)]
pub enum Reply {
    /// Here is the answer.
    Now(HttpResponse),
    /// The answer will come through the [`Responder`] paired with this.
    Later(Pending),
}

/// The sending half of a deferred answer; see [`reply_channel`].
#[derive(Debug)]
pub struct Responder(oneshot::Sender<HttpResponse>);

impl Responder {
    /// Completes the answer. Never blocks; `false` if the HTTP client is
    /// gone (or the server stopped).
    pub fn send(self, response: HttpResponse) -> bool {
        self.0.send(response).is_ok()
    }

    /// Whether the HTTP side still waits for this answer.
    pub fn is_wanted(&self) -> bool {
        !self.0.is_closed()
    }
}

/// The receiving half of a deferred answer.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<HttpResponse>);

/// A responder and the pending answer it completes.
pub fn reply_channel() -> (Responder, Pending) {
    let (tx, rx) = oneshot::channel();
    (Responder(tx), Pending(rx))
}

/// Answers requests. Must not block: see the module documentation.
pub trait Handler: Send + Sync + 'static {
    /// Answers `req`.
    fn handle(&self, req: HttpRequest) -> Reply;
}

impl<F> Handler for F
where
    F: Fn(HttpRequest) -> Reply + Send + Sync + 'static,
{
    fn handle(&self, req: HttpRequest) -> Reply {
        self(req)
    }
}

/// What `/health` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Serving: `200` with this text.
    Up(String),
    /// Not serving: `503` with this text.
    Down(String),
}

type Route = Box<dyn Fn(HttpRequest) -> Reply + Send + Sync>;

enum PathMatch {
    Exact(String),
    Prefix(String),
}

/// Routes by method and path (exact, or a prefix for paths that carry
/// arguments), `404` for an unknown path and `405` for a known path with
/// another method. Routes are tried in the order they were added.
#[derive(Default)]
pub struct Router {
    routes: Vec<(Method, PathMatch, Route)>,
}

impl Router {
    /// No routes.
    pub fn new() -> Router {
        Router::default()
    }

    /// `method` on exactly `path`.
    pub fn route(
        mut self,
        method: Method,
        path: &str,
        f: impl Fn(HttpRequest) -> Reply + Send + Sync + 'static,
    ) -> Router {
        self.routes
            .push((method, PathMatch::Exact(path.into()), Box::new(f)));
        self
    }

    /// `method` on every path that starts with `prefix`.
    pub fn route_prefix(
        mut self,
        method: Method,
        prefix: &str,
        f: impl Fn(HttpRequest) -> Reply + Send + Sync + 'static,
    ) -> Router {
        self.routes
            .push((method, PathMatch::Prefix(prefix.into()), Box::new(f)));
        self
    }

    /// `GET /health` answered by `f` (`200` or `503`, plain text).
    pub fn health(self, f: impl Fn() -> Health + Send + Sync + 'static) -> Router {
        self.route(Method::GET, "/health", move |_| {
            Reply::Now(match f() {
                Health::Up(s) => HttpResponse::text(200, &s),
                Health::Down(s) => HttpResponse::text(503, &s),
            })
        })
    }

    /// `GET /metrics`: `metrics` rendered as Prometheus text.
    pub fn metrics(self, metrics: Metrics) -> Router {
        self.route(Method::GET, "/metrics", move |_| {
            Reply::Now(HttpResponse::new(200, CONTENT_TYPE, metrics.render()))
        })
    }
}

impl Handler for Router {
    fn handle(&self, req: HttpRequest) -> Reply {
        let mut path_known = false;
        for (method, m, f) in &self.routes {
            let hit = match m {
                PathMatch::Exact(p) => req.path == *p,
                PathMatch::Prefix(p) => req.path.starts_with(p.as_str()),
            };
            if hit {
                if *method == req.method {
                    return f(req);
                }
                path_known = true;
            }
        }
        Reply::Now(if path_known {
            HttpResponse::text(405, "method not allowed")
        } else {
            HttpResponse::text(404, "not found")
        })
    }
}

/// Server settings.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// `host:port` to listen on (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Largest request body accepted (`413` beyond).
    pub max_body: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
    /// The bearer token every request but `/health` needs (`None`: none).
    pub token: Option<String>,
    /// With a token: reads (GET, HEAD) are allowed without it.
    pub open_reads: bool,
    /// Paths read (GET, HEAD) without the token, besides `/health`: pages
    /// that hold no data of their own.
    pub public: Vec<&'static str>,
    /// State changes must be `application/json` (admin APIs; the gateway,
    /// whose bodies are any bytes, relies on the `Origin` check alone).
    pub json_writes: bool,
    /// How long a stop lets requests in progress finish.
    pub grace: Duration,
    /// The server thread's name.
    pub thread_name: String,
}

impl HttpOptions {
    /// Options with the defaults: 1 MiB bodies, headers within 10 s and
    /// bodies within 30 s, no token, JSON state changes, 1 s grace, thread
    /// `alaska-http`.
    pub fn new(listen: impl Into<String>) -> HttpOptions {
        HttpOptions {
            listen: listen.into(),
            max_body: 1 << 20,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            token: None,
            open_reads: false,
            public: Vec::new(),
            json_writes: true,
            grace: Duration::from_secs(1),
            thread_name: "alaska-http".into(),
        }
    }
}

/// A running server. Dropping it stops it.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl HttpServer {
    /// Binds `opts.listen` (so a taken port is an error here, not later)
    /// and starts the server thread.
    pub fn start(opts: HttpOptions, handler: Arc<dyn Handler>) -> Result<HttpServer, HttpError> {
        let bind_err = |source| HttpError::Bind {
            addr: opts.listen.clone(),
            source,
        };
        let listener = std::net::TcpListener::bind(&opts.listen).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        if !addr.ip().is_loopback() && opts.token.is_none() {
            tracing::warn!(
                "HTTP on {addr} without a token: anyone who reaches this address can read \
                 and change what it serves (set the listener's http/token)"
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(opts.thread_name.clone())
            .spawn(move || {
                rt.block_on(serve(listener, handler, opts, stop_rx));
                // Whatever is left (connections past the grace) is dropped.
                rt.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(HttpServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address actually bound (with the real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server and joins its thread (at most the grace period
    /// plus a moment).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn serve(
    listener: std::net::TcpListener,
    handler: Arc<dyn Handler>,
    opts: HttpOptions,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("HTTP server on {}: {e}", opts.listen);
            return;
        }
    };
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_timeout)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let guard = Arc::new(Guard {
        token: opts.token.clone(),
        open_reads: opts.open_reads,
        public: opts.public.clone(),
        json_writes: opts.json_writes,
        loopback,
        max_body: opts.max_body,
        body_timeout: opts.body_timeout,
    });
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    tracing::warn!("HTTP accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let guard = guard.clone();
        let service = service_fn(move |req| {
            let handler = handler.clone();
            let guard = guard.clone();
            async move { Ok::<_, Infallible>(answer(handler, req, &guard).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("HTTP connection: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(opts.grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!(
            "HTTP connections still open after {:?}: dropped",
            opts.grace
        );
    }
}

/// What every request is checked against before its route sees it.
struct Guard {
    token: Option<String>,
    open_reads: bool,
    public: Vec<&'static str>,
    json_writes: bool,
    loopback: bool,
    max_body: usize,
    body_timeout: Duration,
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

/// The host part of a `Host` header or an origin's authority.
fn host_of(authority: &str) -> &str {
    let a = authority.trim();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    a.rsplit_once(':').map_or(a, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            a
        }
    })
}

impl Guard {
    /// `Some(refusal)` when the request must not reach its route.
    fn refuse(&self, parts: &hyper::http::request::Parts) -> Option<HttpResponse> {
        let header = |n: hyper::header::HeaderName| {
            parts
                .headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let host = header(hyper::header::HOST).unwrap_or("");
        if self.loopback {
            let h = host_of(host).to_ascii_lowercase();
            let local = h.is_empty()
                || h == "localhost"
                || h.ends_with(".localhost")
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !local {
                return Some(HttpResponse::text(
                    403,
                    "this listener is on loopback: Host must be localhost or a loopback address",
                ));
            }
        }
        let reads = parts.method == Method::GET || parts.method == Method::HEAD;
        let free = reads
            && (self.open_reads
                || parts.uri.path() == "/health"
                || self.public.contains(&parts.uri.path()));
        if !free {
            if let Some(token) = &self.token {
                let given = header(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim);
                if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
                    return Some(
                        HttpResponse::text(401, "a bearer token is required")
                            .with_header("www-authenticate", "Bearer"),
                    );
                }
            }
        }
        if reads {
            return None;
        }
        if let Some(origin) = header(hyper::header::ORIGIN) {
            let same = origin
                .split_once("://")
                .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host));
            if !same {
                return Some(HttpResponse::text(
                    403,
                    &format!("cross-origin request refused (Origin {origin}, Host {host})"),
                ));
            }
        }
        if header(hyper::header::HeaderName::from_static("sec-fetch-site"))
            .is_some_and(|s| s == "cross-site")
        {
            return Some(HttpResponse::text(403, "cross-site request refused"));
        }
        if self.json_writes {
            let json = header(hyper::header::CONTENT_TYPE).is_some_and(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
            if !json {
                return Some(HttpResponse::text(
                    415,
                    "a change must be sent as Content-Type: application/json",
                ));
            }
        }
        None
    }

    /// Reads the body into one buffer, within the size and the time
    /// allowed.
    async fn body(
        &self,
        parts: &hyper::http::request::Parts,
        mut body: Incoming,
    ) -> Result<Vec<u8>, HttpResponse> {
        let declared = parts
            .headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(HttpResponse::text(
                413,
                &format!("request body: over the limit of {} bytes", self.max_body),
            ));
        }
        let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(self.max_body));
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|e| HttpResponse::text(400, &format!("request body: {e}")))?;
                if let Some(data) = frame.data_ref() {
                    if buf.len() + data.len() > self.max_body {
                        return Err(HttpResponse::text(
                            413,
                            &format!("request body: over the limit of {} bytes", self.max_body),
                        ));
                    }
                    buf.extend_from_slice(data);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.body_timeout, read).await {
            Ok(Ok(())) => Ok(buf),
            Ok(Err(r)) => Err(r),
            Err(_) => Err(HttpResponse::text(
                408,
                &format!("request body: not received within {:?}", self.body_timeout),
            )
            .with_header("connection", "close")),
        }
    }
}

async fn answer(
    handler: Arc<dyn Handler>,
    req: hyper::Request<Incoming>,
    guard: &Guard,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    if let Some(r) = guard.refuse(&parts) {
        return to_hyper(r.with_header("connection", "close"));
    }
    let body = match guard.body(&parts, body).await {
        Ok(b) => b,
        Err(r) => return to_hyper(r.with_header("connection", "close")),
    };
    let request = HttpRequest {
        method: if parts.method == Method::HEAD {
            Method::GET
        } else {
            parts.method
        },
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        content_type: parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body,
        received: Instant::now(),
    };
    let response = match handler.handle(request) {
        Reply::Now(r) => r,
        Reply::Later(Pending(rx)) => match rx.await {
            Ok(r) => r,
            Err(_) => HttpResponse::text(503, "service stopping"),
        },
    };
    // HEAD: the status and headers a GET gets; hyper sends no body for a
    // HEAD request (its Content-Length stays that of the GET).
    to_hyper(response)
}

fn to_hyper(r: HttpResponse) -> hyper::Response<Full<Bytes>> {
    let mut b = hyper::Response::builder().status(r.status);
    for (name, value) in &r.headers {
        b = b.header(*name, value.as_str());
    }
    b.body(Full::new(Bytes::from(r.body))).unwrap_or_else(|e| {
        // Only a bad status code or header value gets here: a bug, told
        // to the client rather than panicking the server.
        let mut resp = hyper::Response::new(Full::new(Bytes::from(format!("bad response: {e}\n"))));
        *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        resp
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(reply: Reply) -> HttpResponse {
        match reply {
            Reply::Now(r) => r,
            Reply::Later(_) => panic!("deferred"),
        }
    }

    #[test]
    fn router_matches_method_and_path() {
        let r = Router::new()
            .health(|| Health::Down("reconnecting".into()))
            .route_prefix(Method::POST, "/v1/x/", |req| {
                Reply::Now(HttpResponse::text(200, &req.path))
            });
        let get = |t: &str| now(r.handle(HttpRequest::new(Method::GET, t, vec![])));
        assert_eq!(get("/health").status, 503);
        assert_eq!(get("/health").body, b"reconnecting\n");
        assert_eq!(get("/nope").status, 404);
        assert_eq!(get("/v1/x/a").status, 405);
        let post = now(r.handle(HttpRequest::new(Method::POST, "/v1/x/a/b?t=1", vec![])));
        assert_eq!(
            (post.status, post.body.as_slice()),
            (200, &b"/v1/x/a/b\n"[..])
        );
    }

    #[test]
    fn query_parameters() {
        let r = HttpRequest::new(Method::GET, "/p?a=1&timeout=250&flag", vec![]);
        assert_eq!(r.query_param("timeout"), Some("250"));
        assert_eq!(r.query_param("a"), Some("1"));
        assert_eq!(r.query_param("flag"), Some(""));
        assert_eq!(r.query_param("none"), None);
    }
}
