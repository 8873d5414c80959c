//! systemd stand-ins for the ops tests: a Unix datagram socket in place of
//! `NOTIFY_SOCKET`, and a child process killed on drop.

use std::os::unix::net::UnixDatagram;
use std::process::Child;
use std::time::{Duration, Instant};

use super::http::WAIT;

/// A Unix datagram socket standing in for systemd's.
pub struct FakeSystemd {
    sock: UnixDatagram,
    /// The socket's path, for `NOTIFY_SOCKET`.
    pub path: String,
    _dir: tempfile::TempDir,
    got: Vec<String>,
}

impl FakeSystemd {
    pub fn new() -> FakeSystemd {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        FakeSystemd {
            sock,
            path: path.to_str().unwrap().to_string(),
            _dir: dir,
            got: Vec::new(),
        }
    }

    /// The next notification within `within`.
    pub fn next(&mut self, within: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        let note = String::from_utf8_lossy(&buf[..n]).to_string();
        self.got.push(note.clone());
        Some(note)
    }

    /// Waits for a notification with the line `want`; returns it.
    pub fn expect(&mut self, want: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {want}; got {:?}", self.got);
            if let Some(note) = self.next(left) {
                if note.lines().any(|l| l == want) {
                    return note;
                }
            }
        }
    }

    /// Every notification during `d`.
    pub fn during(&mut self, d: Duration) -> Vec<String> {
        let until = Instant::now() + d;
        let mut v = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return v;
            }
            if let Some(n) = self.next(left) {
                v.push(n);
            }
        }
    }
}

/// A child killed on drop.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.0.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {WAIT:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
        }
    }
}
