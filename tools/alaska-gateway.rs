//! alaska-gateway: HTTP in front of MLM services. Any HTTP client can call
//! a service behind a Malamute broker (the project's or the real one),
//! mail an address or publish on a stream; `/health` and `/metrics` for
//! operators; systemd `Type=notify` with a watchdog.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alaska::gateway::{Gateway, GatewaySettings};
use alaska::ops::notify::Systemd;
use clap::Parser;

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(
    name = "alaska-gateway",
    version,
    about = "HTTP in front of Alaska/Malamute services",
    long_about = "HTTP in front of Alaska/Malamute services: POST /v1/request/<address>/<subject> \
sends the body as a service request and answers with the reply; POST /v1/mail/<address>/<subject> \
and POST /v1/stream/<stream>/<subject> send and answer 202; GET /health and GET /metrics \
(Prometheus). Stops on SIGINT or SIGTERM (requests waiting get 503).",
    after_help = "Examples:\n  alaska-gateway -e tcp://127.0.0.1:9999 --listen 127.0.0.1:8080\n  \
alaska-gateway -e tcp://10.0.0.1:9999,tcp://10.0.0.2:9999 --balance rr\n  \
curl -d '{\"n\":100}' 'http://127.0.0.1:8080/v1/request/default/pi?timeout=2000'\n  \
ALASKA_GATEWAY_USER=gw ALASKA_GATEWAY_PASSWORD=secret alaska-gateway -c /etc/alaska/alaska-gateway.cfg\n\n\
Statuses of /v1/request: 200 reply; 400 bad name or timeout; 404 bad path; 413 body too large;\n\
429 queue full (broker) or too many requests waiting (gateway); 502 error reply;\n\
501 ?delay= and the broker does not hold delayed requests (the real Malamute);\n\
503 broker not connected or gateway stopping; 504 no reply in time.\n\
?delay=2s (or ms) on /v1/request: the broker holds the request that long (alaska-broker).\n\
Exit status: 0 stopped by a signal; 1 could not start; 2 bad configuration."
)]
struct Args {
    /// Configuration file (ZPL, keys under gateway/; see alaska-gateway.cfg).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Broker endpoint, or several comma-separated in priority order;
    /// overrides gateway/broker/endpoint.
    #[arg(short, long, value_name = "ENDPOINTS")]
    endpoint: Option<String>,
    /// With several brokers: priority (the first connected) or rr (round
    /// robin); overrides gateway/broker/balance.
    #[arg(long, value_name = "MODE")]
    balance: Option<alaska::failover::Balance>,
    /// host:port to serve HTTP on; overrides gateway/http/listen.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// PLAIN user name; overrides gateway/auth/plain/username.
    #[arg(short, long, env = "ALASKA_GATEWAY_USER")]
    user: Option<String>,
    /// PLAIN password; overrides gateway/auth/plain/password.
    #[arg(short, long, env = "ALASKA_GATEWAY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Log every request (gateway/verbose).
    #[arg(short, long)]
    verbose: bool,
    /// NATS only: /v1/request stores each request in the JetStream stream
    /// that holds its subject, then waits for its reply
    /// (gateway/broker/jetstream).
    #[arg(long)]
    jetstream: bool,
}

fn main() -> ExitCode {
    let args: Args = alaska::docgen::parse();
    // Stderr cannot fail to open; syslog is not asked for.
    let _ = alaska::logging::init(&alaska::logging::LogOptions {
        syslog: false,
        ident: "alaska-gateway".into(),
    });
    let settings = match settings(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("alaska-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("alaska-gateway: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::from(1)
        }
    }
}

fn settings(args: &Args) -> Result<GatewaySettings, Box<dyn std::error::Error>> {
    let mut s = match &args.config {
        Some(path) => GatewaySettings::load(path)?,
        None => GatewaySettings::from_sources("", std::env::vars())?,
    };
    if let Some(e) = &args.endpoint {
        s.endpoint = alaska::failover::parse_endpoints(e)
            .map_err(|err| format!("--endpoint: {err}"))?
            .join(",");
    }
    if let Some(b) = args.balance {
        s.balance = b;
    }
    if let Some(l) = &args.listen {
        s.listen = l.clone();
    }
    if let Some(u) = &args.user {
        let password = args
            .password
            .clone()
            .or_else(|| s.plain.as_ref().map(|(_, p)| p.clone()))
            .unwrap_or_default();
        s.plain = Some((u.clone(), password));
    } else if let (Some(p), Some(plain)) = (&args.password, s.plain.as_mut()) {
        plain.1 = p.clone();
    }
    s.verbose |= args.verbose;
    s.jetstream |= args.jetstream;
    if s.jetstream && !alaska::worker::dispatcher::is_nats(&s.endpoint) {
        return Err("--jetstream (gateway/broker/jetstream) needs nats:// endpoints".into());
    }
    Ok(s)
}

fn run(settings: GatewaySettings) -> Result<(), Box<dyn std::error::Error>> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    let opts = settings.options();
    let gateway = Gateway::start(opts.clone())?;
    let addr = gateway
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        "alaska-gateway serving http://{addr} for broker {} as {}",
        opts.endpoint,
        opts.address
    );
    let systemd = Systemd::from_env();
    let status = |connected: bool| {
        format!(
            "serving http://{addr}; broker {} {}",
            opts.endpoint,
            if connected {
                "connected"
            } else {
                "not connected"
            }
        )
    };
    let mut connected = gateway.is_connected();
    systemd.ready(&status(connected));
    let watchdog = systemd.start_watchdog(gateway.liveness())?;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let now = gateway.is_connected();
        if now != connected {
            connected = now;
            systemd.status(&status(connected));
        }
    }
    tracing::info!("stopping");
    systemd.stopping("stopping: answering requests still waiting with 503");
    gateway.stop();
    if let Some(w) = watchdog {
        w.stop();
    }
    Ok(())
}
