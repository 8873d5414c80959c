//! alaska: the worker daemon. Flags, then configuration, then background
//! mode, then logging, then (optionally) the embedded broker and the HTTP
//! endpoints for operators, then the worker until SIGTERM or SIGINT, with
//! systemd notifications when `NOTIFY_SOCKET` is set.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alaska::broker::{Broker, BrokerConfig, BrokerHandle};
use alaska::config::{Embedded, Settings};
use alaska::mlm::{ClientOptions, Credentials, CurveClientKeys};
use alaska::ops::notify::Systemd;
use alaska::worker::{DispatcherOptions, Policy, PoolConfig, WorkerOps};
use alaska::{daemon, logging, worker};
use clap::Parser;

/// Command-line flags (the original's short flags kept).
#[derive(Parser, Debug)]
#[command(
    name = "alaska",
    version,
    about = "Lua-scripted service workers for the Malamute message broker",
    long_about = "Offers a service on a Malamute broker and runs each request through \
<scripts/dir>/<subject>.lua in a pool of Lua VMs. Configuration is read from a ZPL \
file (default alaska.cfg, created with the defaults when missing); environment \
variables ALASKA_WORKER__<KEY>__<SUBKEY> override its keys.",
    after_help = "Exit status: 0 after a clean stop (SIGTERM/SIGINT), 1 on a runtime error, \
2 on a configuration error or a failed --check."
)]
struct Args {
    /// The configuration file (default alaska.cfg, created with the
    /// defaults when missing on a plain start; a file given with -c must
    /// exist).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Stay in the foreground even if worker/background = "1".
    #[arg(short, long)]
    foreground: bool,
    /// Run a broker in this process on worker/broker/endpoint (always).
    #[arg(long, conflicts_with = "no_embedded_broker")]
    embedded_broker: bool,
    /// Never run the embedded broker; connect to an external one.
    #[arg(long)]
    no_embedded_broker: bool,
    /// Validate the configuration, compile every script, and exit.
    #[arg(long)]
    check: bool,
}

impl Args {
    /// The configuration file in use.
    fn config_path(&self) -> &std::path::Path {
        self.config
            .as_deref()
            .unwrap_or(std::path::Path::new("alaska.cfg"))
    }
}

fn main() -> ExitCode {
    let mut args: Args = alaska::docgen::parse();
    // Only a plain start without -c creates the default file: --check
    // never writes, and a name given with -c (a typo, say) must exist.
    let given = args.config.is_some();
    let path = args
        .config
        .take()
        .unwrap_or_else(|| PathBuf::from("alaska.cfg"));
    let loaded = if args.check && !given && !path.exists() {
        println!(
            "{}: missing; checking the defaults (nothing written)",
            path.display()
        );
        Settings::from_sources("", std::env::vars()).map(|settings| alaska::config::Loaded {
            settings,
            created: false,
        })
    } else {
        Settings::load_with(&path, !given && !args.check)
    };
    args.config = Some(path);
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            eprintln!("alaska: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let mut s = loaded.settings;
    if args.embedded_broker {
        if s.endpoints.len() > 1 {
            eprintln!(
                "alaska: --embedded-broker: worker/broker/endpoint lists several brokers; the embedded broker serves one endpoint"
            );
            return ExitCode::from(2);
        }
        s.embedded = Embedded::Always;
    } else if args.no_embedded_broker {
        s.embedded = Embedded::Never;
    }
    // Keys are read now, before background mode and before privileges
    // are dropped (a secret certificate may be readable by root only), and
    // a missing or bad one is a configuration error.
    let curve = match &s.curve {
        Some((cert, server)) => match CurveClientKeys::load(cert, server) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("alaska: configuration: worker/auth/curve: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    if args.check {
        return check(&args, &s);
    }
    // What the file alone cannot tell (an exec runner's command exists),
    // checked before detaching so the operator sees it.
    let mut problems = runner_problems(&args, &s);
    problems.extend(host_problems(&args, &s));
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("alaska: configuration: {p}");
        }
        return ExitCode::from(2);
    }
    // The lock first: one held by another worker fails the command, in
    // the foreground or not (the daemon inherits it across the fork).
    let mut lock = match &s.lockfile {
        Some(path) => match daemon::LockFile::acquire(path) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("alaska: {e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    // Fork before any thread or ZeroMQ context exists; the launcher waits
    // for the daemon to say it started (or why not) and exits with that.
    let mut ready = daemon::Readiness::none();
    if s.background && !args.foreground {
        match daemon::daemonize(&daemon::DaemonOptions {
            workdir: s.workdir.clone(),
        }) {
            Ok(r) => ready = r,
            Err(e) => {
                eprintln!("alaska: {e}");
                return ExitCode::from(1);
            }
        }
        if let Some(l) = lock.as_mut() {
            if let Err(e) = l.write_pid() {
                ready.failed(&format!("lock file {}: {e}", l.path().display()));
                return ExitCode::from(1);
            }
        }
    }
    if let Err(e) = logging::init(&logging::LogOptions {
        syslog: s.syslog,
        ident: "alaska".into(),
    }) {
        ready.failed(&format!("logging: {e}"));
        eprintln!("alaska: logging: {e}");
        return ExitCode::from(1);
    }
    tracing::info!("Alaska workers {}", env!("CARGO_PKG_VERSION"));
    if loaded.created {
        tracing::info!(
            "{} was missing: created it with the defaults",
            args.config_path().display()
        );
    } else {
        tracing::info!("configuration loaded from {}", args.config_path().display());
    }
    match run(s, curve, &mut ready) {
        Ok(()) => {
            drop(lock);
            ExitCode::SUCCESS
        }
        Err(e) => {
            ready.failed(&e.to_string());
            drop(lock);
            tracing::error!("{e}");
            let mut source = e.source();
            while let Some(cause) = source {
                tracing::error!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(1)
        }
    }
}

fn run(
    s: Settings,
    curve: Option<CurveClientKeys>,
    ready: &mut daemon::Readiness,
) -> Result<(), Box<dyn std::error::Error>> {
    scripts_warning(&s.scripts_dir);
    let shutdown = daemon::shutdown_on_signals()?;
    let ops = WorkerOps::new(Systemd::from_env())?;
    stop_deadline(
        shutdown.clone(),
        s.shutdown_timeout + STOP_MARGIN,
        ops.systemd.clone(),
    )?;
    let _broker = embedded_broker(&s)?;
    // Bound before dropping privileges, like the broker's endpoint.
    let http = match &s.http_listen {
        Some(listen) => {
            let server = ops
                .serve(listen, s.http_token.clone())
                .map_err(|e| format!("worker/http/listen: {e}"))?;
            tracing::info!(
                "serving http://{}: GET /health, /metrics, /v1/status; POST /v1/maintenance",
                server.local_addr()
            );
            Some(server)
        }
        None => None,
    };
    daemon::run_as(s.user.as_deref(), s.group.as_deref())?;
    // Pings only while the dispatcher's loop turns (see worker::status).
    let watchdog = ops.systemd.start_watchdog(ops.liveness.clone())?;
    let mut client = ClientOptions::new(&s.endpoints[0], worker_address());
    // The original's broker/timeout (1 s) is a connect timeout; silence
    // from the broker is judged over at least three heartbeats.
    client.timeout = s.broker_timeout.max(Duration::from_secs(3));
    client.plain = s
        .plain
        .clone()
        .map(|(username, password)| Credentials { username, password });
    client.curve = curve;
    let opts = DispatcherOptions {
        client,
        endpoints: s.endpoints.clone(),
        service: s.service.clone(),
        filter: s.filter.clone(),
        errors_notify: s.errors_notify,
        errors_mailbox: s.errors_mailbox.clone(),
        errors_reply: s.errors_reply,
        verbose: s.verbose,
        shutdown_timeout: s.shutdown_timeout,
        policy: Policy {
            attempts: s.retry_attempts,
            backoff: s.retry_backoff,
            backoff_max: s.retry_backoff_max,
            retry_errors: s.retry_errors,
            max_hops: s.forward_hops,
        },
        retry_pending: s.retry_pending,
        runners: s.runners.clone(),
        acknowledge: true,
        hold_max: s.pool_hold,
        hold_bytes: s.pool_hold_bytes,
        nats: s.nats.clone(),
    };
    let pool = PoolConfig {
        size: s.pool_size,
        backlog: s.pool_backlog,
        scripts_dir: s.scripts_dir.clone(),
        lua_path: s.lua_path.clone(),
        lua_cpath: s.lua_cpath.clone(),
        processes: s.lua_processes,
        timeout: s.lua_timeout,
        memory: s.lua_memory,
        shared_bytes: s.lua_shared,
        reach: Arc::new(
            alaska::worker::reach::Reach::new(s.reach.clone())
                .map_err(|e| format!("worker/lua/http: {e}"))?,
        ),
        ..PoolConfig::default()
    };
    // Everything that can fail at start is behind us: a launcher waiting
    // in the foreground for a background start exits 0 now.
    ready.started();
    worker::run_with(opts, pool, shutdown, ops)?;
    if let Some(w) = watchdog {
        w.stop();
    }
    if let Some(h) = http {
        h.stop();
    }
    Ok(())
}

/// How long past `worker/shutdown/timeout` a stop may take (closing the
/// connection politely, reporting what did not finish) before it is cut.
const STOP_MARGIN: Duration = Duration::from_millis(1500);

/// A stop always ends: once SIGTERM or SIGINT arrives, a watchdog thread
/// gives the worker `within` to finish, then ends the process. A VM stuck
/// in a C call (which no hook can interrupt) cannot keep a stopping worker
/// alive. The thread sleeps in the signal iterator, not in a polling loop.
/// It tells systemd `STOPPING=1` at once (the dispatcher says it again when
/// it begins its stop, which may be after a long script).
fn stop_deadline(
    shutdown: Arc<AtomicBool>,
    within: Duration,
    systemd: Arc<Systemd>,
) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("alaska-stop-watchdog".into())
        .spawn(move || {
            if signals.forever().next().is_none() {
                return;
            }
            shutdown.store(true, Ordering::SeqCst);
            systemd.stopping("stopping: finishing requests already received");
            std::thread::sleep(within);
            tracing::error!(
                "stop did not finish within {within:?}: exiting now (requests still running \
                 are lost to this worker; the project's broker redelivers acknowledged ones)"
            );
            std::process::exit(1);
        })?;
    Ok(())
}

/// Starts the embedded broker when asked, or (auto) when nothing is bound
/// on the endpoint yet. It serves one endpoint: with a list of brokers
/// (`auto`) none is started; asking for it with a list is refused when the
/// configuration is read.
fn embedded_broker(s: &Settings) -> Result<Option<BrokerHandle>, Box<dyn std::error::Error>> {
    let [endpoint] = s.endpoints.as_slice() else {
        return Ok(None);
    };
    if s.embedded == Embedded::Never || alaska::worker::dispatcher::is_nats(endpoint) {
        return Ok(None);
    }
    if s.embedded == Embedded::Auto && s.curve.is_some() {
        // The embedded broker has NULL security only: a CURVE worker could
        // never talk to it, so "auto" means the broker is elsewhere.
        tracing::info!("CURVE configured: not starting the embedded broker (NULL only)");
        return Ok(None);
    }
    let cfg = BrokerConfig {
        endpoint: endpoint.clone(),
        http_listen: s.broker_http_listen.clone(),
        http_token: s.broker_http_token.clone(),
        ..BrokerConfig::default()
    };
    match Broker::start(cfg) {
        Ok(b) => {
            tracing::info!("embedded broker listening on {}", b.endpoint());
            Ok(Some(b))
        }
        // A taken HTTP port is the operator's mistake, not a sign that
        // another broker serves the endpoint.
        Err(e @ alaska::broker::BrokerError::Ops(_)) => Err(e.into()),
        Err(e) if s.embedded == Embedded::Auto => {
            tracing::info!(
                "not starting the embedded broker ({e}); using the broker at {endpoint}"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// A worker whose scripts folder is missing or has no script would say
/// "ready" and then fail every request: said loudly at start instead.
fn scripts_warning(dir: &std::path::Path) {
    let scripts = std::fs::read_dir(dir).map(|d| {
        d.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "lua"))
            .count()
    });
    match scripts {
        Err(e) => tracing::error!(
            "scripts folder {} cannot be read ({e}): every Lua request will fail \
             (worker/scripts/dir, relative to the folder the worker runs in)",
            dir.display()
        ),
        Ok(0) => tracing::error!(
            "scripts folder {} has no <subject>.lua script: every Lua request will fail",
            dir.display()
        ),
        Ok(_) => {}
    }
}

/// `AW::<host>::<pid>-<4 hex>`, the original's worker address form.
fn worker_address() -> String {
    let mut host = [0u8; 256];
    // SAFETY: gethostname writes at most len bytes into our buffer.
    let rc = unsafe { libc::gethostname(host.as_mut_ptr().cast(), host.len()) };
    let host = if rc == 0 {
        let end = host.iter().position(|&b| b == 0).unwrap_or(host.len());
        String::from_utf8_lossy(&host[..end]).into_owned()
    } else {
        "localhost".into()
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut addr = format!("AW::{host}::{}-{:04X}", std::process::id(), nanos & 0xFFFF);
    addr.truncate(255);
    addr
}

/// Problems with the runners' commands and folders, as `file: key (line
/// N): message`. Relative paths count from where the worker will run (its
/// `workdir` when it detaches).
fn runner_problems(args: &Args, s: &Settings) -> Vec<String> {
    let base = if s.background && !args.foreground {
        s.workdir.clone()
    } else {
        PathBuf::from(".")
    };
    worker::runners::check(&s.runners, &s.scripts_dir, &base)
        .into_iter()
        .map(|p| {
            let at = if p.line > 0 {
                format!(" (line {})", p.line)
            } else {
                String::new()
            };
            format!(
                "{}: {}{at}: {}",
                args.config_path().display(),
                p.key,
                p.message
            )
        })
        .collect()
}

/// What the host must have for these settings: the account to switch to
/// and the folder a daemon changes to.
fn host_problems(args: &Args, s: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    if let Err(e) = daemon::check_account(s.user.as_deref(), s.group.as_deref()) {
        out.push(format!(
            "{}: worker/user, worker/group: {e}",
            args.config_path().display()
        ));
    }
    if s.background && !s.workdir.is_dir() {
        out.push(format!(
            "{}: worker/workdir: {} is not a folder",
            args.config_path().display(),
            s.workdir.display()
        ));
    }
    out
}

fn check(args: &Args, s: &Settings) -> ExitCode {
    let mut runners = runner_problems(args, s);
    runners.extend(host_problems(args, s));
    if runners.is_empty() {
        println!("{}: configuration valid", args.config_path().display());
    }
    for p in &runners {
        println!("{p}");
    }
    let problems = worker::check::check_scripts(&s.scripts_dir);
    for p in &problems {
        println!("{}: {}", p.file, p.message);
    }
    if problems.is_empty() {
        println!("{}: every script compiles", s.scripts_dir.display());
    }
    let total = problems.len() + runners.len();
    if total == 0 {
        ExitCode::SUCCESS
    } else {
        println!("{total} problem(s)");
        ExitCode::from(2)
    }
}
