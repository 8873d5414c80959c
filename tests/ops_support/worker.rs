//! An in-process alaska worker whose operations (`/health`, `/metrics`,
//! `/v1/status`, `/v1/maintenance`) are served over real HTTP.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use alaska::mlm::ClientOptions;
use alaska::ops::http::HttpServer;
use alaska::ops::notify::Systemd;
use alaska::worker::{DispatcherOptions, PoolConfig, WorkerOps};
use serde_json::Value;

use super::http::{get, json, post, wait_for};
use super::prom::{self, Scrape};

/// A process-unique worker address.
fn unique_address() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "worker-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// An in-process worker whose operations are served over real HTTP.
pub struct OpsWorker {
    /// The address it opens its broker connection with.
    pub address: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
    http: Option<HttpServer>,
    base: String,
}

impl OpsWorker {
    pub fn start(
        endpoint: &str,
        dir: &Path,
        tweak: impl FnOnce(&mut DispatcherOptions, &mut PoolConfig),
    ) -> OpsWorker {
        OpsWorker::start_with_token(endpoint, dir, None, tweak)
    }

    /// As [`OpsWorker::start`], its HTTP listener requiring `token`.
    pub fn start_with_token(
        endpoint: &str,
        dir: &Path,
        token: Option<String>,
        tweak: impl FnOnce(&mut DispatcherOptions, &mut PoolConfig),
    ) -> OpsWorker {
        let address = unique_address();
        let mut client = ClientOptions::new(endpoint, address.clone());
        client.timeout = Duration::from_secs(3);
        client.heartbeat = Duration::from_millis(200);
        let mut opts = DispatcherOptions::new(client, "svc");
        opts.shutdown_timeout = Duration::from_secs(5);
        let mut pool = PoolConfig {
            size: 2,
            scripts_dir: dir.to_path_buf(),
            timeout: Duration::from_secs(5),
            memory: 16 << 20,
            ..PoolConfig::default()
        };
        tweak(&mut opts, &mut pool);
        let ops = WorkerOps::new(Systemd::default()).unwrap();
        let http = ops.serve("127.0.0.1:0", token).expect("HTTP server starts");
        let base = format!("http://{}", http.local_addr());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("test-worker".into())
            .spawn(move || {
                alaska::worker::run_with(opts, pool, flag, ops).map_err(|e| e.to_string())
            })
            .unwrap();
        OpsWorker {
            address,
            stop,
            thread: Some(thread),
            http: Some(http),
            base,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn health(&self, a: &ureq::Agent) -> (u16, String) {
        get(a, &self.url("/health"))
    }

    pub fn wait_health(&self, a: &ureq::Agent, status: u16, text: &str) {
        let want = (status, format!("{text}\n"));
        wait_for(&format!("/health {want:?}"), || self.health(a) == want);
    }

    pub fn scrape(&self, a: &ureq::Agent) -> Scrape {
        let (status, text) = get(a, &self.url("/metrics"));
        assert_eq!(status, 200);
        prom::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    pub fn status(&self, a: &ureq::Agent) -> Value {
        let (status, text) = get(a, &self.url("/v1/status"));
        assert_eq!(status, 200, "{text}");
        json(&text)
    }

    pub fn maintenance(&self, a: &ureq::Agent, on: bool) -> Value {
        let (status, text) = post(
            a,
            &self.url("/v1/maintenance"),
            &format!("{{\"on\": {on}}}"),
        );
        assert_eq!(status, 200, "{text}");
        let v = json(&text);
        assert_eq!(v["maintenance"], on, "{v}");
        assert_eq!(v["applied"], true, "{v}");
        v
    }

    pub fn stop(mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::SeqCst);
        let r = self.thread.take().unwrap().join().expect("worker thread");
        if let Some(h) = self.http.take() {
            h.stop();
        }
        r
    }
}

impl Drop for OpsWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
