//! Running the project's binaries in tests.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;

/// The `alaska` binary, run in `dir`.
pub fn alaska(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("alaska").unwrap();
    c.current_dir(dir);
    c
}

/// A worker configuration: scripts, pool of 4, endpoint, service `svc`,
/// then `extra` ZPL lines.
pub fn config(endpoint: &str, scripts: &Path, extra: &str) -> String {
    format!(
        "worker\n    scripts\n        dir = \"{}\"\n    pool\n        size = \"4\"\n    broker\n        endpoint = \"{endpoint}\"\n    service\n        address = \"svc\"\n        filter = \".*\"\n{extra}",
        scripts.display()
    )
}

/// A loopback endpoint nothing listens on (yet).
pub fn free_endpoint() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("tcp://127.0.0.1:{port}")
}

/// A child process killed (and reaped) on drop.
pub struct Running(pub Child);

impl Running {
    /// Everything the child wrote to its piped stderr (read to the end:
    /// call it once the child has exited).
    pub fn stderr_text(&mut self) -> String {
        use std::io::Read;
        let mut text = String::new();
        self.0
            .stderr
            .take()
            .expect("stderr piped")
            .read_to_string(&mut text)
            .unwrap();
        text
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits at most `within` for `child` to exit.
pub fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
    }
    None
}

/// Waits until the file at `path` (a child's log) holds `needle`, reading
/// it every 20 ms for at most `within` (the file is the event: the child
/// writes it); returns its text. Panics with `what` and the text when it
/// never does.
pub fn wait_file(path: &Path, needle: &str, within: Duration, what: &str) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {within:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
    }
}
