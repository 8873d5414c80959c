//! Hostile HTTP clients and web pages against every listener of the
//! project (worker, broker, gateway share `alaska::ops::http`): bodies sent
//! a byte per TCP segment cost bounded memory and are cut by the body
//! timeout; a `Content-Length` over the limit is `413` before any body is
//! read; a cross-origin or `text/plain` state change (what any web page can
//! send without a preflight) changes nothing; with a token, no token is
//! `401` everywhere but `/health`; `HEAD /health` answers like `GET`
//! without a body.

mod common;
mod ops_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alaska::gateway::{Gateway, GatewayOptions};
use alaska::ops::http::{HttpOptions, HttpResponse, HttpServer, Method, Reply, Router};
use common::{broker, broker_with, script};
use ops_support::http::{agent, get, wait_for};
use ops_support::worker::OpsWorker;

/// The tests of this file run one at a time: one of them measures the
/// process's RSS, which the others' workers and brokers would move.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends raw bytes, reads what comes back until the server closes or 5 s
/// pass; the response text.
fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // One response is enough: stop at its end.
                let text = String::from_utf8_lossy(&out);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if request.starts_with("HEAD") || out.len() >= head_end + 4 + len {
                        break;
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn post_as(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    origin: Option<&str>,
    body: &str,
) -> String {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    raw(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n{origin}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn addr_of(url_base: &str) -> SocketAddr {
    url_base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// What a page on another site can send without a preflight: a form
/// (`text/plain`, `x-www-form-urlencoded`) with its Origin. Neither changes
/// maintenance on a worker or on the broker, nor calls a service through
/// the gateway; a JSON request of our own (no Origin, as curl sends it)
/// still does.
#[test]
fn cross_site_posts_change_nothing() {
    let _serial = serial();
    let b = broker_with(|c| c.http_listen = Some("127.0.0.1:0".into()));
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return alaskaContext");
    let w = OpsWorker::start(b.endpoint(), dir.path(), |_, _| {});
    let a = agent();
    w.wait_health(&a, 200, "serving");
    let waddr = addr_of(&w.url(""));
    for (ct, origin, want) in [
        ("text/plain", Some("http://evil.example"), 403),
        (
            "application/x-www-form-urlencoded",
            Some("http://evil.example"),
            403,
        ),
        ("application/json", Some("http://evil.example"), 403),
        ("text/plain", None, 415),
    ] {
        let r = post_as(waddr, "/v1/maintenance", ct, origin, "{\"on\": true}");
        assert_eq!(status_of(&r), want, "worker {ct} {origin:?}: {r}");
    }
    assert_eq!(
        w.health(&a),
        (200, "serving\n".to_string()),
        "maintenance changed"
    );
    // The broker's admin API.
    let baddr = b.http_addr().unwrap();
    let in_maintenance = || {
        let (_, text) = get(&a, &format!("http://{baddr}/v1/clients"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["clients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["address"] == w.address.as_str())
            .map(|c| c["maintenance"] == true)
            .unwrap_or(false)
    };
    let client = format!("/v1/clients/{}/maintenance", w.address);
    for (ct, origin, want) in [
        ("text/plain", Some("http://evil.example"), 403),
        ("text/plain", None, 415),
    ] {
        let r = post_as(baddr, &client, ct, origin, "{\"on\": true}");
        assert_eq!(status_of(&r), want, "broker {ct} {origin:?}: {r}");
    }
    assert!(!in_maintenance(), "a forged request changed maintenance");
    // Ours, as curl sends it: applied.
    let r = post_as(baddr, &client, "application/json", None, "{\"on\": true}");
    assert_eq!(status_of(&r), 200, "{r}");
    wait_for("maintenance on at the broker", in_maintenance);
    let same = format!("http://{baddr}");
    let r = post_as(
        baddr,
        &client,
        "application/json",
        Some(&same),
        "{\"on\": false}",
    );
    assert_eq!(status_of(&r), 200, "same origin: {r}");
    wait_for("maintenance off at the broker", || !in_maintenance());

    // The gateway: a page cannot call a service through it.
    let mut o = GatewayOptions::new(b.endpoint(), "127.0.0.1:0");
    o.address = format!("gw-{}", common::unique());
    let g = Gateway::start(o).unwrap();
    wait_for("gateway connected", || g.is_connected());
    let gaddr = g.local_addr().unwrap();
    script(
        dir.path(),
        "count",
        "alaska.shared:incr('calls', 1, 0) return 'counted'",
    );
    let r = post_as(
        gaddr,
        "/v1/request/svc/count",
        "text/plain",
        Some("http://evil.example"),
        "x",
    );
    assert_eq!(status_of(&r), 403, "{r}");
    // A DNS name rebound to 127.0.0.1 is refused too.
    let r = raw(gaddr, "POST /v1/request/svc/count HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx");
    assert_eq!(status_of(&r), 403, "{r}");
    script(
        dir.path(),
        "calls",
        "return tostring(alaska.shared:get('calls'))",
    );
    let r = post_as(
        gaddr,
        "/v1/request/svc/calls",
        "application/octet-stream",
        None,
        "x",
    );
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.ends_with("nil"), "a forged call reached the service: {r}");
}

/// With a token, every listener answers 401 without it on everything but
/// `/health`, and 200 with it.
#[test]
fn a_token_guards_every_endpoint_but_health() {
    let _serial = serial();
    let token = "s3cret-token".to_string();
    let t = token.clone();
    let b = broker_with(move |c| {
        c.http_listen = Some("127.0.0.1:0".into());
        c.http_token = Some(t);
    });
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "echo", "return alaskaContext");
    let w = OpsWorker::start_with_token(b.endpoint(), dir.path(), Some(token.clone()), |_, _| {});
    let mut o = GatewayOptions::new(b.endpoint(), "127.0.0.1:0");
    o.address = format!("gw-{}", common::unique());
    o.token = Some(token.clone());
    let g = Gateway::start(o).unwrap();
    wait_for("gateway connected", || g.is_connected());
    let a = agent();
    w.wait_health(&a, 200, "serving");
    let worker = w.url("");
    let broker = format!("http://{}", b.http_addr().unwrap());
    let gateway = format!("http://{}", g.local_addr().unwrap());
    let reads = [
        format!("{worker}/metrics"),
        format!("{worker}/v1/status"),
        format!("{broker}/metrics"),
        format!("{broker}/v1/clients"),
        format!("{broker}/v1/services"),
        format!("{gateway}/metrics"),
    ];
    for url in &reads {
        let (status, _) = get(&a, url);
        assert_eq!(status, 401, "{url} without a token");
        let mut r = a
            .get(url)
            .header("authorization", "Bearer wrong-token-x")
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{url} with a wrong token");
        let _ = r.body_mut().read_to_string();
        let r = a
            .get(url)
            .header("authorization", format!("Bearer {token}"))
            .call()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{url} with the token");
    }
    for base in [&worker, &broker, &gateway] {
        assert_eq!(
            get(&a, &format!("{base}/health")).0,
            200,
            "{base}/health stays open"
        );
    }
    let writes = [
        (addr_of(&worker), "/v1/maintenance".to_string()),
        (
            b.http_addr().unwrap(),
            format!("/v1/clients/{}/maintenance", w.address),
        ),
        (g.local_addr().unwrap(), "/v1/request/svc/echo".to_string()),
    ];
    for (addr, path) in &writes {
        let r = post_as(*addr, path, "application/json", None, "{\"on\": true}");
        assert_eq!(status_of(&r), 401, "{path}: {r}");
        assert!(
            r.to_ascii_lowercase().contains("www-authenticate: bearer"),
            "{r}"
        );
    }
    assert_eq!(w.health(&a).0, 200, "nothing changed");
}

/// `HEAD /health` answers like `GET`: the same status and length, no body.
#[test]
fn head_on_health_answers_like_get_without_a_body() {
    let _serial = serial();
    let b = broker();
    let dir = tempfile::tempdir().unwrap();
    let w = OpsWorker::start(b.endpoint(), dir.path(), |_, _| {});
    let a = agent();
    w.wait_health(&a, 200, "serving");
    let addr = addr_of(&w.url(""));
    let r = raw(
        addr,
        &format!("HEAD /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status_of(&r), 200, "{r}");
    assert!(r.to_ascii_lowercase().contains("content-length: 8"), "{r}");
    assert!(r.ends_with("\r\n\r\n"), "a body came with HEAD: {r:?}");
}

/// The server's side of its connections on 127.0.0.1:`port` from
/// /proc/net/tcp: how many are established, and how many of those hold
/// bytes the server has not read.
fn server_side(port: u16) -> (usize, usize) {
    let local = format!("0100007F:{port:04X}");
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let mine: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f[1] == local && f[3] == "01")
        .collect();
    let unread = mine.iter().filter(|f| !f[4].ends_with(":00000000")).count();
    (mine.len(), unread)
}

/// 200 clients each send a body one byte per TCP segment. The memory the
/// server takes for them stays under twice their bodies (each byte used to
/// cost about 1.5 KB); a declared length over the limit is 413 at once; a
/// body that does not arrive within the body timeout is 408 and closed.
#[test]
fn trickled_bodies_cost_bounded_memory_and_time_out() {
    let _serial = serial();
    const LIMIT: usize = 2048;
    let router = Router::new().route(Method::POST, "/sink", |req| {
        Reply::Now(HttpResponse::text(200, &req.body.len().to_string()))
    });
    let mut opts = HttpOptions::new("127.0.0.1:0");
    opts.max_body = LIMIT;
    opts.json_writes = false;
    // Long enough for 400,000 one-byte writes on a loaded machine: this
    // part measures memory, the timeout is shown below.
    opts.body_timeout = Duration::from_secs(300);
    let server = HttpServer::start(opts, Arc::new(router)).unwrap();
    let addr = server.local_addr();

    // Declared too large: 413 before a byte of the body.
    let r = raw(
        addr,
        &format!(
            "POST /sink HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
            LIMIT + 1
        ),
    );
    assert_eq!(status_of(&r), 413, "{r}");

    let mut conns: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            s.write_all(
                format!("POST /sink HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {LIMIT}\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
            s
        })
        .collect();
    // Every connection's headers are in: what follows is the bodies' cost.
    // The server has accepted all 200 and read what they sent (nothing
    // left unread on its side, in /proc/net/tcp).
    common::wait_until(
        Duration::from_secs(10),
        "the server to read 200 heads",
        || {
            let (open, unread) = server_side(addr.port());
            open == 200 && unread == 0
        },
    );
    let before = common::rss_kb();
    let started = Instant::now();
    for _ in 0..LIMIT - 1 {
        for s in conns.iter_mut() {
            s.write_all(b"x").unwrap();
        }
    }
    let grown_kb = common::rss_kb().saturating_sub(before);
    let bodies_kb = (200 * LIMIT / 1024) as u64;
    println!(
        "200 trickled bodies of {LIMIT} bytes ({} segments) in {:?}: RSS +{grown_kb} kB (bodies: {bodies_kb} kB)",
        200 * (LIMIT - 1),
        started.elapsed()
    );
    assert!(
        grown_kb < 2 * bodies_kb,
        "RSS grew {grown_kb} kB for {bodies_kb} kB of bodies"
    );
    // The last byte: every request completes with its whole body.
    for s in conns.iter_mut() {
        s.write_all(b"x").unwrap();
    }
    for s in conns.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with(&format!("{LIMIT}\n")),
            "{text}"
        );
    }
    drop(server);

    // A body that stops coming is cut by the body timeout.
    let router = Router::new().route(Method::POST, "/sink", |_| {
        Reply::Now(HttpResponse::text(200, "ok"))
    });
    let mut opts = HttpOptions::new("127.0.0.1:0");
    opts.json_writes = false;
    opts.body_timeout = Duration::from_millis(500);
    let server = HttpServer::start(opts, Arc::new(router)).unwrap();
    let addr = server.local_addr();
    let started = Instant::now();
    let r = raw(
        addr,
        &format!("POST /sink HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100\r\n\r\nabc"),
    );
    assert_eq!(status_of(&r), 408, "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}
