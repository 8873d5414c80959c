//! Logging: `tracing` to stderr, or to syslog through libc's `syslog(3)`
//! (which reconnects by itself when syslogd restarts). `RUST_LOG` overrides
//! the level; `verbose` only adds the per-request lines, which are logged
//! at info level either way.

use std::ffi::CString;

/// Where and how to log.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Log to syslog instead of stderr.
    pub syslog: bool,
    /// Program name for syslog.
    pub ident: String,
}

/// Logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// syslog was already opened in this process.
    #[error("syslog is already open in this process")]
    SyslogBusy,
    /// The identity has a NUL byte.
    #[error("bad syslog identity: {0}")]
    Ident(#[from] std::ffi::NulError),
}

/// Where syslog(3) sends its lines.
const SYSLOG_SOCKET: &str = "/dev/log";

fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fjall=warn,lsm_tree=warn"))
}

/// Installs the global subscriber. Call once, after daemonizing.
pub fn init(opts: &LogOptions) -> Result<(), LoggingError> {
    // syslog(3) drops every line in silence when no syslog daemon listens:
    // then stderr, and a line saying why.
    let fallback = if opts.syslog {
        std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.connect(SYSLOG_SOCKET))
            .err()
    } else {
        None
    };
    if let Some(why) = fallback {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .try_init();
        tracing::warn!(
            "syslog: {SYSLOG_SOCKET} cannot be reached ({why}); logging to stderr instead"
        );
        return Ok(());
    }
    if opts.syslog {
        let ident = CString::new(opts.ident.clone())?;
        let syslog = syslog_tracing::Syslog::new(
            ident,
            syslog_tracing::Options::LOG_PID,
            syslog_tracing::Facility::Daemon,
        )
        .ok_or(LoggingError::SyslogBusy)?;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_writer(syslog)
            .try_init();
    } else {
        // Colours only on a terminal: a log file or journal gets plain text.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .try_init();
    }
    Ok(())
}
