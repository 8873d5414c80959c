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

/// Drops root's privileges for good, as a daemon should: the group (the
/// user's primary group when no group is given), the supplementary groups
/// (the user's own, from the group database: `initgroups`; only the group
/// when no user is given), then the user, real, effective and saved IDs
/// alike. Then it checks that root cannot be had back. Without `user` and
/// `group` nothing changes.
///
/// The order matters: once the user is no longer root, neither groups nor
/// the group can be changed any more. glibc applies each change to every
/// thread of the process, so threads started earlier (the embedded broker)
/// lose root too.
pub fn run_as(user: Option<&str>, group: Option<&str>) -> Result<(), DaemonError> {
    let account = user.map(lookup_user).transpose()?;
    let gid = match (group, &account) {
        (Some(name), _) => lookup_group(name)?,
        (None, Some(a)) => a.gid,
        (None, None) => return Ok(()),
    };
    let failed = |what: &'static str, name: &str, step: &str| DaemonError::RunAs {
        what,
        name: name.into(),
        reason: format!("{step}: {}", std::io::Error::last_os_error()),
    };
    let group_name = group.or(user).unwrap_or_default();
    // SAFETY: plain libc calls with values we looked up; `a.name` is a
    // NUL-terminated string we own.
    unsafe {
        let rc = match &account {
            Some(a) => libc::initgroups(a.name.as_ptr(), gid),
            None => libc::setgroups(1, &gid),
        };
        if rc != 0 {
            return Err(failed("group", group_name, "setting supplementary groups"));
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(failed("group", group_name, "setresgid"));
        }
        if let Some(a) = &account {
            if libc::setresuid(a.uid, a.uid, a.uid) != 0 {
                return Err(failed("user", user.unwrap_or_default(), "setresuid"));
            }
            if a.uid != 0 && (libc::setuid(0) == 0 || libc::seteuid(0) == 0) {
                return Err(DaemonError::RunAs {
                    what: "user",
                    name: user.unwrap_or_default().into(),
                    reason: "root could be regained after switching; refusing to run".into(),
                });
            }
        }
    }
    Ok(())
}

/// What `run_as` needs of an account.
struct Account {
    name: std::ffi::CString,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

/// Room for the strings of one passwd or group entry (grown on ERANGE).
const ENTRY_BUF: usize = 16 * 1024;

fn lookup_user(name: &str) -> Result<Account, DaemonError> {
    let missing = |reason: String| DaemonError::RunAs {
        what: "user",
        name: name.into(),
        reason,
    };
    let c = std::ffi::CString::new(name).map_err(|_| missing("bad name".into()))?;
    let mut size = ENTRY_BUF;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: getpwnam_r fills `pw` and `buf` (of the size given) and
        // sets `found` to &pw or null; nothing outlives this call but the
        // two numbers we copy out.
        let (rc, found, uid, gid) = unsafe {
            let mut pw: libc::passwd = std::mem::zeroed();
            let mut found: *mut libc::passwd = std::ptr::null_mut();
            let rc = libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), size, &mut found);
            (rc, !found.is_null(), pw.pw_uid, pw.pw_gid)
        };
        match rc {
            0 if found => return Ok(Account { name: c, uid, gid }),
            0 => return Err(missing("no such user".into())),
            libc::ERANGE if size < 1 << 20 => size *= 2,
            e => return Err(missing(std::io::Error::from_raw_os_error(e).to_string())),
        }
    }
}

fn lookup_group(name: &str) -> Result<libc::gid_t, DaemonError> {
    let missing = |reason: String| DaemonError::RunAs {
        what: "group",
        name: name.into(),
        reason,
    };
    let c = std::ffi::CString::new(name).map_err(|_| missing("bad name".into()))?;
    let mut size = ENTRY_BUF;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: as in lookup_user, with getgrnam_r.
        let (rc, found, gid) = unsafe {
            let mut gr: libc::group = std::mem::zeroed();
            let mut found: *mut libc::group = std::ptr::null_mut();
            let rc = libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr(), size, &mut found);
            (rc, !found.is_null(), gr.gr_gid)
        };
        match rc {
            0 if found => return Ok(gid),
            0 => return Err(missing("no such group".into())),
            libc::ERANGE if size < 1 << 20 => size *= 2,
            e => return Err(missing(std::io::Error::from_raw_os_error(e).to_string())),
        }
    }
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
