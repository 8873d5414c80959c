//! A small HTTP/1.1 application server for the runner tests: a real
//! listening socket on 127.0.0.1, one thread per connection, keep-alive,
//! Content-Length bodies. It records every request it gets (with the
//! connection it came on) and answers with the test's handler.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// A request as the server got it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Which connection (counted from 1 per server).
    pub conn: u64,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    #[allow(dead_code)]
    pub at: Instant,
}

impl Seen {
    /// A header's value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What to answer.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16, body: &[u8]) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_vec(),
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
}

pub type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

pub struct Server {
    pub port: u16,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `port` (0: any free one) and serves with `handler`.
    pub fn start(port: u16, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Server {
        Server::start_with(port, None, handler)
    }

    /// Like [`Server::start`], over TLS with `tls` when given (HTTPS).
    #[allow(dead_code)]
    pub fn start_with(
        port: u16,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the test HTTP server");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let (s, sn, cn) = (stop.clone(), seen.clone(), conns.clone());
        let thread = std::thread::Builder::new()
            .name("test-http-accept".into())
            .spawn(move || {
                let ids = AtomicU64::new(0);
                for stream in listener.incoming() {
                    if s.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let id = ids.fetch_add(1, Ordering::SeqCst) + 1;
                    cn.lock().unwrap().push(stream.try_clone().unwrap());
                    let (h, sn, tls) = (handler.clone(), sn.clone(), tls.clone());
                    std::thread::Builder::new()
                        .name(format!("test-http-conn-{id}"))
                        .spawn(move || match tls {
                            None => serve(stream, id, h, sn),
                            Some(cfg) => {
                                let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                                    return;
                                };
                                serve(rustls::StreamOwned::new(conn, stream), id, h, sn)
                            }
                        })
                        .unwrap();
                }
            })
            .unwrap();
        Server {
            port,
            stop,
            seen,
            conns,
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops listening and closes every connection.
    fn halt(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.halt();
    }
}

fn serve<S: Read + Write>(stream: S, conn: u64, handler: Handler, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let req = Seen {
            conn,
            method,
            path,
            headers,
            body,
            at: Instant::now(),
        };
        seen.lock().unwrap().push(req.clone());
        let reply = handler(&req);
        let mut head = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\n",
            reply.status,
            reply.body.len()
        );
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let out = r.get_mut();
        if out.write_all(head.as_bytes()).is_err()
            || out.write_all(&reply.body).is_err()
            || out.flush().is_err()
        {
            return;
        }
        if req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            return;
        }
    }
}
