//! The real Malamute broker for tests, found where it is installed (it is
//! never part of the project): `$ALASKA_MALAMUTE`,
//! `/opt/malamute/bin/malamute`, or `malamute` on `PATH`. Tests that need
//! it print "skipped" and pass when it is absent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the real Malamute is, if installed.
pub fn malamute_binary() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ALASKA_MALAMUTE") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let default = PathBuf::from("/opt/malamute/bin/malamute");
    if default.exists() {
        return Some(default);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("malamute"))
            .find(|p| p.exists())
    })
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real broker, killed on drop.
pub struct Malamute {
    pub child: Child,
    pub endpoint: String,
}

impl Malamute {
    /// Starts it on `port` with a configuration written into `dir`.
    pub fn start(bin: &Path, dir: &Path, port: u16) -> Malamute {
        let cfg = dir.join("malamute.cfg");
        std::fs::write(
            &cfg,
            format!(
                "server\n    timeout = 10000\n    verbose = 0\nmlm_server\n    security\n        mechanism = null\n    bind\n        endpoint = tcp://127.0.0.1:{port}\n"
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg(&cfg)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "malamute did not start");
            std::thread::sleep(Duration::from_millis(20)); // bounded poll (deadline above)
        }
        Malamute {
            child,
            endpoint: format!("tcp://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Malamute {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
