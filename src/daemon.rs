//! Running as a service: background mode, the lock file, switching user
//! and group, and the stop signals.
//!
//! [`daemonize`] must run before any thread or ZeroMQ context exists (a
//! fork copies only the calling thread). The lock file holds the pid and
//! stays locked (`flock`) while the worker runs, so a second worker with
//! the same lock file refuses to start.

use std::fs::File;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Errors of daemon mode.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Forking or detaching failed.
    #[error("cannot run in the background: {0}")]
    Daemonize(String),
    /// The lock file is held by another process.
    #[error("lock file {0} is held by another process (is a worker already running?)")]
    Locked(PathBuf),
    /// The lock file could not be written.
    #[error("lock file {path}: {source}")]
    LockFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// No such user or group, or switching failed.
    #[error("cannot switch to {what} {name:?}: {reason}")]
    RunAs {
        /// "user" or "group".
        what: &'static str,
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Signal handlers could not be installed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Background-mode settings.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// Directory to change to.
    pub workdir: PathBuf,
}

/// Forks into the background, detaches, changes to `workdir`. The parent
/// exits inside this call.
pub fn daemonize(opts: &DaemonOptions) -> Result<(), DaemonError> {
    daemonix::Daemonize::new()
        .working_directory(&opts.workdir)
        .umask(0o027)
        .start()
        .map_err(|e| DaemonError::Daemonize(e.to_string()))
}

/// A held lock file; the lock lasts as long as this value.
#[derive(Debug)]
pub struct LockFile {
    _file: File,
    path: PathBuf,
}

impl LockFile {
    /// Creates (or opens) `path`, takes an exclusive lock without waiting,
    /// and writes our pid into it.
    pub fn acquire(path: &Path) -> Result<LockFile, DaemonError> {
        let err = |source| DaemonError::LockFile {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(err)?;
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(DaemonError::Locked(path.to_path_buf()));
        }
        file.set_len(0).map_err(err)?;
        writeln!(file, "{}", std::process::id()).map_err(err)?;
        Ok(LockFile {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Switches group, then user (the order that still has the right to).
pub fn run_as(user: Option<&str>, group: Option<&str>) -> Result<(), DaemonError> {
    if let Some(name) = group {
        let gid = lookup_group(name)?;
        // SAFETY: plain libc calls with values we looked up.
        if unsafe { libc::setgid(gid) } != 0 {
            return Err(DaemonError::RunAs {
                what: "group",
                name: name.into(),
                reason: std::io::Error::last_os_error().to_string(),
            });
        }
    }
    if let Some(name) = user {
        let uid = lookup_user(name)?;
        // SAFETY: as above.
        if unsafe { libc::setuid(uid) } != 0 {
            return Err(DaemonError::RunAs {
                what: "user",
                name: name.into(),
                reason: std::io::Error::last_os_error().to_string(),
            });
        }
    }
    Ok(())
}

fn lookup_user(name: &str) -> Result<libc::uid_t, DaemonError> {
    let missing = |reason: &str| DaemonError::RunAs {
        what: "user",
        name: name.into(),
        reason: reason.into(),
    };
    let c = std::ffi::CString::new(name).map_err(|_| missing("bad name"))?;
    // SAFETY: getpwnam returns a pointer to static storage or null; we read
    // one field before any other call can overwrite it.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(missing("no such user"));
    }
    Ok(unsafe { (*pw).pw_uid })
}

fn lookup_group(name: &str) -> Result<libc::gid_t, DaemonError> {
    let missing = |reason: &str| DaemonError::RunAs {
        what: "group",
        name: name.into(),
        reason: reason.into(),
    };
    let c = std::ffi::CString::new(name).map_err(|_| missing("bad name"))?;
    // SAFETY: as in lookup_user.
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        return Err(missing("no such group"));
    }
    Ok(unsafe { (*gr).gr_gid })
}

/// A flag that SIGTERM and SIGINT set; the worker loop polls it.
pub fn shutdown_on_signals() -> Result<Arc<AtomicBool>, DaemonError> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, flag.clone()).map_err(DaemonError::Signals)?;
    }
    Ok(flag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_and_the_pid_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alaska.pid");
        let held = LockFile::acquire(&path).unwrap();
        let text = std::fs::read_to_string(held.path()).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        assert!(matches!(
            LockFile::acquire(&path),
            Err(DaemonError::Locked(_))
        ));
        drop(held);
        assert!(LockFile::acquire(&path).is_ok(), "free again once dropped");
    }

    #[test]
    fn unknown_user_and_group_are_clear_errors() {
        let e = run_as(Some("no-such-user-alaska"), None).unwrap_err();
        assert!(e.to_string().contains("no such user"), "{e}");
        let e = run_as(None, Some("no-such-group-alaska")).unwrap_err();
        assert!(e.to_string().contains("no such group"), "{e}");
    }
}
