//! A VM pool driven directly (no broker), for tests of the scripting API
//! and the sandbox.

use std::time::Duration;

use alaska::worker::wake::waker;
use alaska::worker::{Completion, Job, Pool, PoolConfig, Request};
use crossbeam_channel::Receiver;

/// A pool driven directly, with scripts in a temporary folder.
pub struct Harness {
    pub pool: Option<Pool>,
    pub done: Receiver<Completion>,
    pub dir: tempfile::TempDir,
    next: u64,
}

impl Harness {
    pub fn new(size: usize) -> Harness {
        Harness::with(size, |_| {})
    }

    pub fn with(size: usize, tweak: impl FnOnce(&mut PoolConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = PoolConfig {
            size,
            scripts_dir: dir.path().to_path_buf(),
            timeout: Duration::from_millis(500),
            memory: 16 << 20,
            ..PoolConfig::default()
        };
        tweak(&mut cfg);
        let (tx, done) = crossbeam_channel::unbounded();
        let (w, _rx) = waker().unwrap();
        std::mem::forget(_rx);
        let pool = Pool::start(cfg, tx, w).unwrap();
        Harness {
            pool: Some(pool),
            done,
            dir,
            next: 0,
        }
    }

    pub fn script(&self, name: &str, body: &str) {
        std::fs::write(self.dir.path().join(format!("{name}.lua")), body).unwrap();
    }

    pub fn submit(&mut self, subject: &str, frames: &[&[u8]]) -> u64 {
        self.next += 1;
        let job = Job {
            id: self.next,
            request: Request {
                sender: "requester".into(),
                address: "svc".into(),
                subject: subject.into(),
                tracker: "trk".into(),
                content: frames.iter().map(|f| f.to_vec()).collect(),
                attempt: 1,
                hops: 0,
            },
        };
        self.pool
            .as_ref()
            .unwrap()
            .try_submit(job)
            .expect("pool has room");
        self.next
    }

    /// Submits a whole request (attempt, hops, tracker as given).
    pub fn submit_request(&mut self, request: Request) -> u64 {
        self.next += 1;
        let job = Job {
            id: self.next,
            request,
        };
        self.pool
            .as_ref()
            .unwrap()
            .try_submit(job)
            .expect("pool has room");
        self.next
    }

    pub fn next_done(&self) -> Completion {
        self.done
            .recv_timeout(Duration::from_secs(10))
            .expect("a completion within 10 s")
    }

    pub fn run(&mut self, subject: &str, context: &str) -> Completion {
        self.submit(subject, &[context.as_bytes()]);
        self.next_done()
    }
}

/// A reply (or `<none>`) as text.
pub fn text(v: &Option<Vec<u8>>) -> String {
    String::from_utf8_lossy(v.as_deref().unwrap_or(b"<none>")).into_owned()
}
