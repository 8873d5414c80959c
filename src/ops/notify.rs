//! systemd service notifications (`Type=notify`): `READY=1` once the
//! program serves, `STATUS=…` lines saying what it does, `STOPPING=1` when a
//! stop begins, and `WATCHDOG=1` every half of `WATCHDOG_USEC` for as long
//! as a [`Liveness`] counter the caller's main loop bumps keeps moving, so a
//! wedged loop stops the pings and systemd restarts the service.
//!
//! Without `NOTIFY_SOCKET` in the environment every call does nothing. The
//! protocol is one datagram of `KEY=value` lines to the Unix socket named in
//! `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace), so it is
//! written here (about forty lines) rather than taken from a crate: the
//! watchdog logic, which is the part that needs care, would be ours anyway.
//!
//! The watchdog decision is a socket-free state machine ([`WatchdogClock`])
//! that takes the time and the counter as arguments; the thread that runs
//! it ([`Systemd::start_watchdog`]) only sleeps, reads, and sends.

use crate::time::after;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A counter the loop that must stay alive bumps on every turn. Clone it
/// into that loop; the watchdog reads it.
#[derive(Clone, Debug, Default)]
pub struct Liveness(Arc<AtomicU64>);

impl Liveness {
    /// A counter at zero.
    pub fn new() -> Self {
        Liveness::default()
    }

    /// Says "still turning". One relaxed atomic add: cheap enough for every
    /// loop turn.
    pub fn beat(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The number of beats so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The socket systemd listens on.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// A notifier for the `NOTIFY_SOCKET` value `target`: a filesystem
    /// path, or `@name` for a Linux abstract socket.
    pub fn new(target: &str) -> io::Result<Notifier> {
        let addr = if let Some(name) = target.strip_prefix('@') {
            abstract_addr(name.as_bytes())?
        } else if target.starts_with('/') {
            SocketAddr::from_pathname(target)?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NOTIFY_SOCKET {target:?} is neither a path nor @name"),
            ));
        };
        let socket = UnixDatagram::unbound()?;
        // A notification must never stall the loop that sends it.
        socket.set_nonblocking(true)?;
        Ok(Notifier { socket, addr })
    }

    /// Sends one notification (`KEY=value` lines).
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.addr)?;
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(target_os = "linux"))]
fn abstract_addr(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract NOTIFY_SOCKET names exist on Linux only",
    ))
}

/// What the watchdog clock says at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Not time yet.
    Wait,
    /// The loop moved since the last ping: send `WATCHDOG=1`.
    Ping,
    /// The loop did not move for a whole interval: send nothing, so that
    /// systemd's watchdog fires.
    Stalled,
}

/// When to ping, from the time and the liveness counter; no clock, no
/// socket, so it is tested without sleeping.
#[derive(Debug, Clone)]
pub struct WatchdogClock {
    interval: Duration,
    next: Instant,
    last_beat: u64,
}

impl WatchdogClock {
    /// A clock pinging every `interval` (half of `WATCHDOG_USEC`), starting
    /// at `now` with the counter at `beat`.
    pub fn new(interval: Duration, now: Instant, beat: u64) -> Self {
        WatchdogClock {
            interval,
            next: after(now, interval),
            last_beat: beat,
        }
    }

    /// When [`WatchdogClock::tick`] should be called next.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Decides at `now`, the counter reading `beat`.
    pub fn tick(&mut self, now: Instant, beat: u64) -> Tick {
        if now < self.next {
            return Tick::Wait;
        }
        self.next = after(now, self.interval);
        if beat == self.last_beat {
            return Tick::Stalled;
        }
        self.last_beat = beat;
        Tick::Ping
    }
}

/// The service manager, as seen from the environment: a notifier when
/// `NOTIFY_SOCKET` is set, a watchdog interval when `WATCHDOG_USEC` is set
/// (and `WATCHDOG_PID`, if set, is this process).
#[derive(Debug, Default)]
pub struct Systemd {
    notifier: Option<Arc<Notifier>>,
    watchdog: Option<Duration>,
}

impl Systemd {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. A value
    /// that cannot be used is logged and ignored: notifications are never
    /// a reason not to run.
    pub fn from_env() -> Systemd {
        let var = |k: &str| std::env::var(k).ok();
        Systemd::from_vars(
            var("NOTIFY_SOCKET").as_deref(),
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    /// [`Systemd::from_env`] with the values given, for tests.
    pub fn from_vars(
        notify_socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Systemd {
        let Some(target) = notify_socket.filter(|s| !s.is_empty()) else {
            return Systemd::default();
        };
        let notifier = match Notifier::new(target) {
            Ok(n) => Arc::new(n),
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET ignored: {e}");
                return Systemd::default();
            }
        };
        let for_us = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(pid));
        let watchdog = match watchdog_usec.map(|u| u.trim().parse::<u64>()) {
            Some(Ok(usec)) if usec > 0 && for_us => Some(Duration::from_micros(usec / 2)),
            Some(Ok(_)) | None => None,
            Some(Err(_)) => {
                tracing::warn!("WATCHDOG_USEC {watchdog_usec:?} ignored: not a number");
                None
            }
        };
        Systemd {
            notifier: Some(notifier),
            watchdog,
        }
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.notifier.is_some()
    }

    /// How often the watchdog pings (half of `WATCHDOG_USEC`), if asked to.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, state: &str) {
        if let Some(n) = &self.notifier {
            if let Err(e) = n.send(state) {
                tracing::debug!("systemd notification {state:?} not sent: {e}");
            }
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A `STATUS=` line (what the service is doing, shown by
    /// `systemctl status`).
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// Starts the watchdog thread (`alaska-watchdog`) when systemd asked
    /// for one; `None` otherwise. It pings while `liveness` moves.
    pub fn start_watchdog(&self, liveness: Liveness) -> io::Result<Option<Watchdog>> {
        let (Some(notifier), Some(interval)) = (self.notifier.clone(), self.watchdog) else {
            return Ok(None);
        };
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("alaska-watchdog".into())
            .spawn(move || {
                let mut clock = WatchdogClock::new(interval, Instant::now(), liveness.get());
                let mut stalled = false;
                loop {
                    let left = clock.next().saturating_duration_since(Instant::now());
                    match stop_rx.recv_timeout(left) {
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    match clock.tick(Instant::now(), liveness.get()) {
                        Tick::Wait => {}
                        Tick::Ping => {
                            stalled = false;
                            if let Err(e) = notifier.send("WATCHDOG=1") {
                                tracing::debug!("watchdog ping not sent: {e}");
                            }
                        }
                        Tick::Stalled => {
                            if !stalled {
                                tracing::error!(
                                    "main loop stalled for {interval:?}: no watchdog ping"
                                );
                            }
                            stalled = true;
                        }
                    }
                }
            })?;
        Ok(Some(Watchdog {
            stop: stop_tx,
            thread: Some(thread),
        }))
    }
}

/// The running watchdog thread. Dropping it stops it.
#[derive(Debug)]
pub struct Watchdog {
    stop: crossbeam_channel::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Stops the thread. Returns at once: the thread sleeps on the channel
    /// this closes.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A status must stay one line: a newline would start another assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_pings_only_while_the_counter_moves() {
        let t0 = Instant::now();
        let i = Duration::from_secs(5);
        let mut c = WatchdogClock::new(i, t0, 7);
        assert_eq!(c.tick(t0 + Duration::from_secs(1), 8), Tick::Wait);
        assert_eq!(c.tick(t0 + i, 9), Tick::Ping);
        assert_eq!(c.next(), t0 + 2 * i);
        assert_eq!(
            c.tick(t0 + 2 * i, 9),
            Tick::Stalled,
            "no beat in a whole interval"
        );
        assert_eq!(c.tick(t0 + 3 * i, 9), Tick::Stalled);
        assert_eq!(c.tick(t0 + 4 * i, 10), Tick::Ping, "moving again");
    }

    #[test]
    fn a_counter_that_never_moved_is_never_pinged() {
        let t0 = Instant::now();
        let mut c = WatchdogClock::new(Duration::from_millis(10), t0, 0);
        for k in 1..10 {
            assert_eq!(c.tick(t0 + Duration::from_millis(10 * k), 0), Tick::Stalled);
        }
    }

    #[test]
    fn the_environment_decides() {
        assert!(!Systemd::from_vars(None, Some("1000000"), None, 1).enabled());
        assert!(!Systemd::from_vars(Some(""), None, None, 1).enabled());
        assert!(!Systemd::from_vars(Some("relative/path"), None, None, 1).enabled());
        let s = Systemd::from_vars(Some("/run/x"), Some("1000000"), None, 1);
        assert_eq!(s.watchdog_interval(), Some(Duration::from_millis(500)));
        let s = Systemd::from_vars(Some("/run/x"), Some("1000000"), Some("42"), 42);
        assert_eq!(s.watchdog_interval(), Some(Duration::from_millis(500)));
        let s = Systemd::from_vars(Some("/run/x"), Some("1000000"), Some("43"), 42);
        assert_eq!(
            s.watchdog_interval(),
            None,
            "the watchdog is another process's"
        );
        let s = Systemd::from_vars(Some("@abstract"), Some("soon"), None, 1);
        assert!(s.enabled());
        assert_eq!(s.watchdog_interval(), None);
    }

    #[test]
    fn status_stays_on_one_line() {
        assert_eq!(one_line("a\nb\rc"), "a b c");
    }
}
