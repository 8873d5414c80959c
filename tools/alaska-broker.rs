//! alaska-broker: the project's Malamute-compatible broker as a standalone
//! program, a drop-in for `malamute` on one machine.
//!
//! Under systemd (`Type=notify`) it says `READY=1` once the endpoint is
//! bound, `STOPPING=1` when a stop begins, and, when asked for a watchdog,
//! `WATCHDOG=1` only while the router's loop turns: the router beats a
//! liveness counter at every turn (at least every 100 ms when idle), and
//! the watchdog thread pings only while it moves. A wedged router stops the
//! pings.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alaska::broker::{load_config, Broker};
use alaska::mlm::DEFAULT_ENDPOINT;
use alaska::ops::notify::Systemd;
use clap::Parser;

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(
    name = "alaska-broker",
    version,
    about = "A Malamute-compatible broker (MLM protocol) for Alaska workers and libmlm clients",
    long_about = "A Malamute-compatible broker (MLM protocol): streams, mailboxes and services \
for Alaska workers and any libmlm client. Reads a malamute.cfg-style ZPL file \
(see alaska-broker.cfg). With mlm_server/storage/dir set, stored mail and queued \
requests survive a crash. Stops cleanly on SIGINT or SIGTERM; SIGHUP reads the ACL \
file and the allowed CURVE client keys again.",
    after_help = format!("Examples:\n  alaska-broker                         # {DEFAULT_ENDPOINT}, NULL security, in memory\n  alaska-broker alaska-broker.cfg       # settings from a file, as with `malamute FILE`\n  alaska-broker -e tcp://0.0.0.0:9999 -v\n  alaska-broker --http 127.0.0.1:9292    # health, metrics, admin API\n  alaska-broker --keygen keys/broker    # CURVE key pair: keys/broker (public), keys/broker_secret")
)]
struct Args {
    /// Configuration file (ZPL, malamute.cfg keys).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Configuration file, as a bare argument (like `malamute FILE`).
    #[arg(value_name = "FILE", conflicts_with = "config")]
    file: Option<PathBuf>,
    /// Endpoint to bind; overrides mlm_server/bind/endpoint.
    #[arg(short, long, value_name = "ENDPOINT")]
    endpoint: Option<String>,
    /// Serve /health, /metrics and the admin API on HOST:PORT; overrides
    /// mlm_server/http/listen.
    #[arg(long, value_name = "HOST:PORT")]
    http: Option<String>,
    /// Log every command (server/verbose).
    #[arg(short, long)]
    verbose: bool,
    /// Write a new CURVE key pair to PATH (public certificate) and
    /// PATH_secret (secret, mode 0600), named after the file, and exit.
    #[arg(long, value_name = "PATH")]
    keygen: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Args = alaska::docgen::parse();
    // Stderr cannot fail to open; syslog is not asked for.
    let _ = alaska::logging::init(&alaska::logging::LogOptions {
        syslog: false,
        ident: "alaska-broker".into(),
    });
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("alaska-broker: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            // A configuration error is 2, as for the other binaries.
            let config = matches!(
                e.downcast_ref::<alaska::broker::BrokerError>(),
                Some(alaska::broker::BrokerError::Config(_))
            );
            ExitCode::from(if config { 2 } else { 1 })
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(path) = &args.keygen {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pair = alaska::curve::write_new_pair(path, &name)?;
        println!(
            "public key {} written to {} (give it to peers); secret key to {} (keep it here)",
            pair.public,
            path.display(),
            alaska::curve::secret_path(path).display()
        );
        return Ok(());
    }
    let mut cfg = match args.config.or(args.file) {
        Some(path) => {
            tracing::info!("loading configuration from {}", path.display());
            let (cfg, warnings) = load_config(&path)?;
            for w in warnings {
                tracing::warn!("{}: {w}", path.display());
            }
            cfg
        }
        // No file: the defaults, and the environment's overrides.
        None => {
            let (cfg, _) =
                alaska::broker::parse_config_with_env("", Path::new("."), std::env::vars())?;
            cfg
        }
    };
    if let Some(ep) = args.endpoint {
        cfg.endpoint = ep;
    }
    if let Some(listen) = args.http {
        cfg.http_listen = Some(listen);
    }
    cfg.verbose |= args.verbose;
    let security = cfg.mechanism();
    let authorization = match &cfg.acl_file {
        Some(p) => format!("ACL {}", p.display()),
        None => "no ACL: every client may do everything".into(),
    };
    if let Some(c) = &cfg.curve {
        tracing::info!(
            "CURVE: broker public key {}, {} allowed client key(s)",
            c.keys.public,
            c.clients.len()
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    let systemd = Systemd::from_env();
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())?;
    let broker = Broker::start(cfg)?;
    let http = broker
        .http_addr()
        .map(|a| format!(", HTTP on {a}"))
        .unwrap_or_default();
    tracing::info!(
        "alaska-broker ready on {} ({security} security, {authorization}{http})",
        broker.endpoint()
    );
    systemd.ready(&format!(
        "listening on {} ({security} security{http})",
        broker.endpoint()
    ));
    let watchdog = systemd.start_watchdog(broker.liveness())?;
    while !stop.load(Ordering::Relaxed) && broker.is_running() {
        if reload.swap(false, Ordering::Relaxed) {
            tracing::info!("SIGHUP: reloading");
            // Errors are logged by reload; the rules in use stay.
            let _ = broker.reload();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("stopping");
    systemd.stopping("stopping");
    if let Some(w) = watchdog {
        w.stop();
    }
    broker.stop_checked()?;
    Ok(())
}
