//! alaska-broker: the project's Malamute-compatible broker as a standalone
//! program, a drop-in for `malamute` on one machine.
//!
//! Under systemd (`Type=notify`) it says `READY=1` once the endpoint is
//! bound, `STOPPING=1` when a stop begins, and, when asked for a watchdog,
//! `WATCHDOG=1` only while the router answers: a probe socket of this
//! process pings the broker's own endpoint (the router answers a stranger's
//! PING with ERROR 500 and keeps nothing of it), and each answer is a sign
//! of life. A wedged router answers nothing and the pings stop.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alaska::broker::{load_config, Broker, BrokerConfig};
use alaska::mlm::Message;
use alaska::mlm::DEFAULT_ENDPOINT;
use alaska::ops::notify::{Liveness, Systemd};
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
    after_help = format!("Examples:\n  alaska-broker                         # {DEFAULT_ENDPOINT}, NULL security, in memory\n  alaska-broker alaska-broker.cfg       # settings from a file, as with `malamute FILE`\n  alaska-broker -e tcp://0.0.0.0:9999 -v\n  alaska-broker --keygen keys/broker    # CURVE key pair: keys/broker (public), keys/broker_secret")
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
    /// Log every command (server/verbose).
    #[arg(short, long)]
    verbose: bool,
    /// Write a new CURVE key pair to PATH (public certificate) and
    /// PATH_secret (secret, mode 0600), named after the file, and exit.
    #[arg(long, value_name = "PATH")]
    keygen: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
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
            ExitCode::from(1)
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
        None => BrokerConfig::default(),
    };
    if let Some(ep) = args.endpoint {
        cfg.endpoint = ep;
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
    // The probe logs in as the first user, by name, under PLAIN.
    let login = cfg.plain.as_ref().and_then(|users| {
        users
            .iter()
            .min_by(|a, b| a.0.cmp(b.0))
            .map(|(u, p)| (u.clone(), p.clone()))
    });
    let systemd = Systemd::from_env();
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())?;
    let broker = Broker::start(cfg)?;
    tracing::info!(
        "alaska-broker ready on {} ({security} security, {authorization})",
        broker.endpoint()
    );
    systemd.ready(&format!(
        "listening on {} ({security} security)",
        broker.endpoint()
    ));
    let liveness = Liveness::new();
    let watchdog = systemd.start_watchdog(liveness.clone())?;
    let mut probe = match systemd.watchdog_interval() {
        Some(interval) => Some(Probe::new(broker.endpoint(), login, interval / 3)?),
        None => None,
    };
    while !stop.load(Ordering::Relaxed) && broker.is_running() {
        if reload.swap(false, Ordering::Relaxed) {
            tracing::info!("SIGHUP: reloading");
            // Errors are logged by reload; the rules in use stay.
            let _ = broker.reload();
        }
        match probe.as_mut() {
            Some(p) => {
                if p.turn(Duration::from_millis(100)) {
                    liveness.beat();
                }
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    tracing::info!("stopping");
    systemd.stopping("stopping");
    drop(probe);
    if let Some(w) = watchdog {
        w.stop();
    }
    broker.stop_checked()?;
    Ok(())
}

/// A DEALER socket on the broker's own endpoint that sends CONNECTION PING
/// every `every` and counts any answer as a turn of the router's loop.
struct Probe {
    _ctx: zmq::Context,
    socket: zmq::Socket,
    ping: Vec<Vec<u8>>,
    every: Duration,
    next: Instant,
}

impl Probe {
    fn new(
        bound: &str,
        login: Option<(String, String)>,
        every: Duration,
    ) -> Result<Probe, Box<dyn std::error::Error>> {
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::DEALER)?;
        socket.set_linger(0)?;
        if let Some((user, password)) = login {
            socket.set_plain_username(Some(&user))?;
            socket.set_plain_password(Some(&password))?;
        }
        socket.connect(&reachable(bound))?;
        Ok(Probe {
            _ctx: ctx,
            socket,
            ping: Message::ConnectionPing.encode()?,
            every: every.max(Duration::from_millis(10)),
            next: Instant::now(),
        })
    }

    /// Pings when due, then waits at most `wait` for answers; whether one
    /// came.
    fn turn(&mut self, wait: Duration) -> bool {
        let now = Instant::now();
        if now >= self.next {
            self.next = now + self.every;
            // A full queue (the broker away) just skips this ping.
            let _ = self.socket.send_multipart(&self.ping, zmq::DONTWAIT);
        }
        let wait = wait.min(self.next.saturating_duration_since(now));
        let ms = wait.as_millis().max(1) as i64;
        if !matches!(self.socket.poll(zmq::POLLIN, ms), Ok(n) if n > 0) {
            return false;
        }
        let mut answered = false;
        while self.socket.recv_multipart(zmq::DONTWAIT).is_ok() {
            answered = true;
        }
        answered
    }
}

/// Where a process on this machine reaches an endpoint bound on every
/// interface.
fn reachable(bound: &str) -> String {
    bound
        .replace("//0.0.0.0:", "//127.0.0.1:")
        .replace("//*:", "//127.0.0.1:")
        .replace("//[::]:", "//[::1]:")
}
