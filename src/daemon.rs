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

/// The daemon's end of the readiness pipe: it says "started" or "failed:
/// why" once, and the launching process (waiting in [`daemonize`]) exits
/// with 0 or 1 accordingly, printing the reason. Dropped unsaid (the
/// daemon died): the launcher says so and exits 1.
#[derive(Debug, Default)]
pub struct Readiness(Option<File>);

impl Readiness {
    /// Nothing to tell (the foreground).
    pub fn none() -> Readiness {
        Readiness(None)
    }

    /// The daemon is up: the launcher exits 0.
    pub fn started(&mut self) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(b"started\n");
        }
    }

    /// The daemon could not start: the launcher prints `why` and exits 1.
    pub fn failed(&mut self, why: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = writeln!(f, "failed: {why}");
        }
    }
}

/// How long the launcher waits for the daemon's word (recovering a large
/// store or reaching a slow broker is not part of starting: the worker
/// says "started" before it connects).
const START_WAIT_MS: libc::c_int = 120_000;

/// Forks into the background (a new session, a second fork so no terminal
/// can be acquired), changes to `workdir`, sets the umask, points the
/// standard streams at /dev/null. The launching process waits in here for
/// the daemon's word over a pipe (see [`Readiness`]) and exits with its
/// status: a daemon that fails to start is a failed command, with its
/// reason on stderr. Must run before any thread exists.
pub fn daemonize(opts: &DaemonOptions) -> Result<Readiness, DaemonError> {
    let fail =
        |what: &str| DaemonError::Daemonize(format!("{what}: {}", std::io::Error::last_os_error()));
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(fail("pipe"));
    }
    // SAFETY: no other thread exists (the caller's contract), so the child
    // may go on running Rust code.
    match unsafe { libc::fork() } {
        -1 => Err(fail("fork")),
        0 => {
            // SAFETY: closing our copy of the read end; setsid and a second
            // fork in the single-threaded child.
            unsafe {
                libc::close(fds[0]);
                libc::setsid();
                match libc::fork() {
                    -1 => libc::_exit(1),
                    0 => {}
                    _ => libc::_exit(0),
                }
            }
            // SAFETY: we own fds[1] from here on.
            let mut ready = Readiness(Some(unsafe {
                <File as std::os::unix::io::FromRawFd>::from_raw_fd(fds[1])
            }));
            if let Err(e) = std::env::set_current_dir(&opts.workdir) {
                ready.failed(&format!("worker/workdir {}: {e}", opts.workdir.display()));
                // SAFETY: leaving the failed daemon at once.
                unsafe { libc::_exit(1) };
            }
            // SAFETY: umask, open and dup2 on descriptors we own.
            unsafe {
                libc::umask(0o027);
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    for fd in 0..3 {
                        libc::dup2(null, fd);
                    }
                    if null > 2 {
                        libc::close(null);
                    }
                }
            }
            Ok(ready)
        }
        child => {
            // SAFETY: closing our copy of the write end, then reaping the
            // intermediate child (it exits at once).
            unsafe {
                libc::close(fds[1]);
                libc::waitpid(child, std::ptr::null_mut(), 0);
            }
            // SAFETY: we own fds[0].
            let mut pipe = unsafe { <File as std::os::unix::io::FromRawFd>::from_raw_fd(fds[0]) };
            // Bounded: a daemon that neither starts nor fails (wedged
            // before its first word) must not hold the launcher forever.
            let mut pfd = libc::pollfd {
                fd: fds[0],
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on the one descriptor we own.
            let ready = unsafe { libc::poll(&mut pfd, 1, START_WAIT_MS) };
            if ready == 0 {
                eprintln!(
                    "alaska: the worker did not say it started within {} s; it may still be \
                     starting (see its log)",
                    START_WAIT_MS / 1000
                );
                std::process::exit(1);
            }
            let mut word = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut word);
            let word = word.trim();
            if word == "started" {
                std::process::exit(0);
            }
            match word.strip_prefix("failed: ") {
                Some(why) => eprintln!("alaska: {why}"),
                None => eprintln!(
                    "alaska: the worker ended while starting in the background (see its log)"
                ),
            }
            std::process::exit(1);
        }
    }
}

/// A held lock file; the lock lasts as long as this value, and the file
/// is removed when it is dropped (a stopped worker leaves no pid file).
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
        let file = std::fs::OpenOptions::new()
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
        let mut lock = LockFile {
            _file: file,
            path: path.to_path_buf(),
        };
        lock.write_pid().map_err(err)?;
        Ok(lock)
    }

    /// Writes our pid into the file again (after [`daemonize`]: the lock,
    /// taken before the fork so a held one fails the command, is the
    /// daemon's now, and so must the pid be).
    pub fn write_pid(&mut self) -> std::io::Result<()> {
        use std::io::Seek;
        self._file.set_len(0)?;
        self._file.seek(std::io::SeekFrom::Start(0))?;
        writeln!(self._file, "{}", std::process::id())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Still locked by us: nobody else can hold it, so removing it
        // cannot take another worker's pid file away.
        let _ = std::fs::remove_file(&self.path);
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

/// Checks that `user` and `group` exist (what [`run_as`] will need),
/// without switching to them: for `--check` and before forking.
pub fn check_account(user: Option<&str>, group: Option<&str>) -> Result<(), DaemonError> {
    if let Some(u) = user {
        lookup_user(u)?;
    }
    if let Some(g) = group {
        lookup_group(g)?;
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
