//! A real `nats-server` for tests (Debian's package), on a free loopback
//! port, killed on drop; and a small async-nats requester driven from
//! synchronous tests. Tests skip (print why, pass) where `nats-server` is
//! not installed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `nats-server` binary, if installed (`ALASKA_TEST_NO_NATS=1`
/// pretends it is not, to check that the tests skip).
pub fn nats_binary() -> Option<PathBuf> {
    if std::env::var_os("ALASKA_TEST_NO_NATS").is_some() {
        return None;
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.exists())
}

/// A running `nats-server`.
pub struct NatsServer {
    pub child: Child,
    pub port: u16,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
}

impl NatsServer {
    /// Starts one with `extra` arguments (e.g. `-js -sd <dir>`); `None`
    /// (after saying why) when `nats-server` is not installed.
    pub fn start(test: &str, extra: &[&str]) -> Option<NatsServer> {
        let Some(bin) = nats_binary() else {
            eprintln!("{test}: skipped: nats-server not installed (apt-get install nats-server)");
            return None;
        };
        let port = super::malamute::free_port();
        Some(NatsServer::start_with(&bin, port, extra))
    }

    /// Starts `bin` on `port` and waits for its "Server is ready" line.
    pub fn start_with(bin: &Path, port: u16, extra: &[&str]) -> NatsServer {
        let mut child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut told = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !told && line.contains("Server is ready") {
                    told = true;
                    let _ = tx.send(());
                }
                if std::env::var_os("NATS_TEST_LOG").is_some() {
                    eprintln!("nats-server {port}: {line}");
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("nats-server says it is ready");
        NatsServer {
            child,
            port,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A requester: an async-nats client on a runtime of its own.
pub struct Requester {
    pub rt: tokio::runtime::Runtime,
    pub client: async_nats::Client,
}

impl Requester {
    /// Connects to `url`.
    pub fn connect(url: &str) -> Requester {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt
            .block_on(async_nats::connect(url))
            .expect("test client connects");
        Requester { rt, client }
    }

    /// One request and its reply (or why none came) within `within`.
    pub fn request(
        &self,
        subject: &str,
        body: &[u8],
        within: Duration,
    ) -> Result<async_nats::Message, String> {
        let c = self.client.clone();
        let subject = subject.to_string();
        let body = body.to_vec();
        self.rt.block_on(async move {
            match tokio::time::timeout(within, c.request(subject, body.into())).await {
                Ok(Ok(m)) => Ok(m),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".into()),
            }
        })
    }

    /// Waits until a worker answers on `subject` (a script that answers
    /// at once). Polled: a subscription's arrival at the server is not
    /// observable from here, and "no responders" comes back at once, so
    /// each try waits 20 ms before the next, for 15 s at most.
    pub fn wait_ready(&self, subject: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match self.request(subject, b"", Duration::from_secs(2)) {
                Ok(_) => return,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "no worker answers {subject}: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// A subscription (for reports a worker publishes).
    pub fn subscribe(&self, subject: &str) -> async_nats::Subscriber {
        let c = self.client.clone();
        let s = subject.to_string();
        let sub = self
            .rt
            .block_on(async move { c.subscribe(s).await.unwrap() });
        let c = self.client.clone();
        self.rt.block_on(async move { c.flush().await.unwrap() });
        sub
    }

    /// The next message of `sub` within `within`.
    pub fn next(
        &self,
        sub: &mut async_nats::Subscriber,
        within: Duration,
    ) -> Option<async_nats::Message> {
        use futures_util::StreamExt;
        self.rt.block_on(async {
            tokio::time::timeout(within, sub.next())
                .await
                .ok()
                .flatten()
        })
    }
}

/// A header's value, if present.
pub fn header(m: &async_nats::Message, name: &str) -> Option<String> {
    m.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

/// JetStream from the test's side: a stream, publishing, consumer info.
impl Requester {
    /// Creates stream `name` on `subjects` with `replicas` copies.
    pub fn create_stream(&self, name: &str, subjects: &[&str], replicas: usize) {
        let _in = self.rt.enter();
        let js = async_nats::jetstream::new(self.client.clone());
        let cfg = async_nats::jetstream::stream::Config {
            name: name.to_string(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            num_replicas: replicas,
            ..Default::default()
        };
        self.rt
            .block_on(async move { js.create_stream(cfg).await })
            .expect("stream created");
    }

    /// Publishes a work item (stored before this returns) whose reply goes
    /// to `reply` (none when empty).
    pub fn publish_work(&self, subject: &str, body: &[u8], reply: &str) {
        let _in = self.rt.enter();
        let js = async_nats::jetstream::new(self.client.clone());
        let mut h = async_nats::HeaderMap::new();
        if !reply.is_empty() {
            h.insert("Alaska-Reply", reply);
        }
        let (s, b) = (subject.to_string(), body.to_vec());
        self.rt
            .block_on(async move { js.publish_with_headers(s, h, b.into()).await?.await })
            .expect("work stored");
    }

    /// Messages stream `name` holds now.
    pub fn stream_messages(&self, name: &str) -> u64 {
        let _in = self.rt.enter();
        let js = async_nats::jetstream::new(self.client.clone());
        let n = name.to_string();
        self.rt
            .block_on(async move {
                let mut st = js.get_stream(n).await.map_err(|e| e.to_string())?;
                st.info()
                    .await
                    .map(|i| i.state.messages)
                    .map_err(|e| e.to_string())
            })
            .expect("stream info")
    }

    /// The consumer's info.
    pub fn consumer_info(
        &self,
        stream: &str,
        consumer: &str,
    ) -> async_nats::jetstream::consumer::Info {
        let _in = self.rt.enter();
        let js = async_nats::jetstream::new(self.client.clone());
        let (s, c) = (stream.to_string(), consumer.to_string());
        self.rt
            .block_on(async move {
                let st = js.get_stream(s).await.map_err(|e| e.to_string())?;
                st.consumer_info(c).await.map_err(|e| e.to_string())
            })
            .expect("consumer info")
    }

    /// Polls the consumer's info until `done` holds (acknowledgements are
    /// asynchronous: the reply can arrive before the server applied the
    /// ack), every 20 ms for 10 s at most.
    pub fn consumer_until(
        &self,
        stream: &str,
        consumer: &str,
        what: &str,
        done: impl Fn(&async_nats::jetstream::consumer::Info) -> bool,
    ) -> async_nats::jetstream::consumer::Info {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info = self.consumer_info(stream, consumer);
            if done(&info) {
                return info;
            }
            assert!(Instant::now() < deadline, "{what}: {info:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Requester {
    /// Connects to any of `urls` (a cluster), failing over between them.
    pub fn connect_many(urls: &[String]) -> Requester {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt
            .block_on(
                async_nats::ConnectOptions::new()
                    .retry_on_initial_connect()
                    .connect(urls),
            )
            .expect("test client connects");
        Requester { rt, client }
    }

    /// Publishes a work item with a `Nats-Msg-Id` (so a resend after a
    /// lost acknowledgement is stored once) until the stream acknowledges
    /// it. Each try waits 2 s for the acknowledgement at most; a cluster
    /// electing a new leader answers nothing meanwhile, so tries go on for
    /// 30 s.
    pub fn publish_work_once(&self, subject: &str, body: &[u8], id: &str) {
        let _in = self.rt.enter();
        let js = async_nats::jetstream::new(self.client.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", id);
            let (s, b, js) = (subject.to_string(), body.to_vec(), js.clone());
            let r = self.rt.block_on(async move {
                let ack = js
                    .publish_with_headers(s, h, b.into())
                    .await
                    .map_err(|e| e.to_string())?;
                match tokio::time::timeout(Duration::from_secs(2), ack).await {
                    Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
                    Err(_) => Err("no acknowledgement within 2 s".to_string()),
                }
            });
            match r {
                Ok(()) => return,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{id} never stored: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// The name of the server leading stream `name` (`None` while none
    /// does).
    pub fn stream_leader(&self, name: &str) -> Option<String> {
        let _in = self.rt.enter();
        let js = async_nats::jetstream::new(self.client.clone());
        let n = name.to_string();
        self.rt.block_on(async move {
            let s = js.get_stream(n).await.ok()?;
            s.get_info().await.ok()?.cluster?.leader
        })
    }
}
