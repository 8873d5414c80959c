//! alas: the producer. Reads stdin and sends it to a service as a request
//! (SERVICE SEND), optionally waiting for the reply in its own mailbox.
//!
//! With several brokers (`-e a,b`) it connects to all of them under one
//! address, sends each request to the first usable one (or round robin,
//! `--balance rr`), and with `--wait --retries N` sends a request that got
//! no reply in time, or whose broker went away, again to the next broker
//! with the same tracker; the first reply per tracker is the answer, later
//! ones are dropped (see [`alaska::failover`]).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use alaska::failover::{parse_endpoints, Balance, BrokerEvent, Brokers, Pick, ReplyKind, Retries};
use alaska::mlm::{ClientError, ClientOptions, Credentials, DeliveryKind, Refusal, RefusalKind};
use alaska::time::after;
use alaska::worker::ERROR_REPLY_PREFIX;
use clap::Parser;

/// Exit statuses, documented in `--help`.
mod exit {
    pub const OK: u8 = 0;
    pub const OTHER: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const EMPTY_INPUT: u8 = 3;
    pub const UNREACHABLE: u8 = 4;
    pub const AUTH: u8 = 5;
    pub const REPLY_TIMEOUT: u8 = 6;
    pub const ERROR_REPLY: u8 = 7;
    pub const REFUSED_FULL: u8 = 8;
    pub const DENIED: u8 = 9;
    pub const NOTHING: u8 = 10;
    pub const NOT_FOUND: u8 = 11;
    pub const NO_DELAY: u8 = 12;
}

#[path = "alas/look.rs"]
mod look;
#[path = "alas/nats.rs"]
mod nats;

/// Command-line flags (the original's short flags kept).
#[derive(Parser, Debug)]
#[command(
    name = "alas",
    version,
    about = "Send stdin to an Alaska service as a request, and optionally wait for the reply",
    after_help = "Examples:\n  echo '{\"c\":1}' | alas                         # service 'default', subject 'dump'\n  reply=$(echo '{\"n\":1000}' | alas -s pi --wait)  # print the reply\n  alas --lines -s echo --wait < requests.jsonl     # one request per line\n  alas -e tcp://10.0.0.1:9999,tcp://10.0.0.2:9999 -s pi --wait 2 --retries 2\n                                                   # fail over to the second broker\n  alas -e nats://127.0.0.1:4222 -a orders -s create --wait   # NATS request to orders.create\n\n\
Several brokers: requests go to the first one that is connected (or round robin with\n\
--balance rr). With --wait and --retries N, a request with no reply within the wait\n\
(or whose broker went away) is sent again to the next broker with the same tracker,\n\
at most N times; the first reply counts, later ones are dropped (-v counts them).\n\n\
Exit status: 0 ok; 1 other error; 2 usage or bad endpoint; 3 empty input;\n4 broker unreachable; 5 authentication or security handshake refused (the message\n\
says why: credentials, CURVE key, broker key, mechanism); 6 no reply in time;\n\
7 error reply; 8 broker refused the request: service queue full (send again later);\n\
9 access denied by the broker's ACL; 10 (read, listen, dead list) nothing arrived in\n\
time; 11 (dead) no such dead letter; 12 --delay/--at and the broker does not hold\n\
delayed requests (the real Malamute: use alaska-broker).\n\n\
Delayed requests (alaska-broker only): --delay 2s (or 250ms, 5m, 1h) or --at\n\
2026-12-05T21:00:00Z (or unix seconds): the broker holds the request until then;\n\
--wait then waits that much longer for the reply.\n\n\
Reading: `alas read MAILBOX`, `alas listen STREAM [PATTERN]`, `alas dead list|show|replay|\n\
delete|purge` (see `alas help read`, ...). Without a subcommand alas sends, as always.\n\n\
CURVE: --curve-cert names our secret certificate (made by `alaska-broker --keygen NAME`:\n\
the NAME_secret file), --curve-server the broker's public certificate. Keys are only\n\
ever read from files."
)]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<look::Command>,
    /// Broker endpoint, or several comma-separated in priority order.
    #[arg(
        short,
        long,
        value_name = "ENDPOINTS",
        default_value = alaska::mlm::DEFAULT_ENDPOINT
    )]
    endpoint: String,
    /// With several brokers: `priority` (the first connected one) or `rr`
    /// (round robin over the connected ones).
    #[arg(long, value_name = "MODE", default_value = "priority")]
    balance: Balance,
    /// With --wait: send a request that got no reply in time (or whose
    /// broker went away) again, to the next broker, at most N times.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "wait")]
    retries: u32,
    /// Service address.
    #[arg(short, long, default_value = "default")]
    address: String,
    /// Subject (selects the script).
    #[arg(short, long, default_value = "dump")]
    subject: String,
    /// Our address on the broker (default: unique per run).
    #[arg(long)]
    name: Option<String>,
    /// Wait for the reply (default 5 s) and print it to stdout.
    #[arg(short, long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "5",
          value_parser = seconds)]
    wait: Option<Duration>,
    /// Have the broker hold the request(s) this long before queueing them
    /// (`250ms`, `2s`, `5m`, `1h`; alaska-broker only, exit 12 otherwise).
    #[arg(long, value_name = "DURATION", value_parser = delay_flag,
          conflicts_with_all = ["at", "retries"])]
    delay: Option<Duration>,
    /// Have the broker hold the request(s) until this time: RFC 3339
    /// (`2026-12-05T21:00:00Z`) or unix seconds (alaska-broker only).
    #[arg(long, value_name = "TIME", value_parser = at_flag, conflicts_with = "retries")]
    at: Option<std::time::SystemTime>,
    /// Send each non-empty line of stdin as its own request.
    #[arg(short, long)]
    lines: bool,
    /// Connection timeout in milliseconds.
    #[arg(short, long, value_name = "MS", default_value_t = 3000)]
    timeout: u64,
    /// PLAIN user name.
    #[arg(short, long, env = "ALAS_USER")]
    user: Option<String>,
    /// PLAIN password.
    #[arg(short, long, env = "ALAS_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    #[command(flatten)]
    curve: alaska::curve::CurveFlags,
    /// Do not warn when the content is not JSON.
    #[arg(long)]
    raw: bool,
    /// Print nothing but replies.
    #[arg(short, long)]
    quiet: bool,
    /// With nats:// endpoints: store each request in the JetStream stream
    /// that holds `<address>.<subject>` (a work queue) instead of a core
    /// NATS request; with --wait, the reply comes to an inbox named in its
    /// `Alaska-Reply` header.
    #[arg(long)]
    jetstream: bool,
    /// Report brokers going away, requests sent again and duplicate
    /// replies dropped.
    #[arg(short, long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args: Args = alaska::docgen::parse();
    let result = match &args.command {
        Some(cmd) => look::run(cmd),
        None => run(&args),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err((code, msg)) => {
            eprintln!("alas: {msg}");
            ExitCode::from(code)
        }
    }
}

type Failure = (u8, String);

fn run(args: &Args) -> Result<(), Failure> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| (exit::OTHER, format!("reading stdin: {e}")))?;
    let requests: Vec<Vec<u8>> = if args.lines {
        input
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(<[u8]>::to_vec)
            .collect()
    } else {
        // `echo` adds a newline; it is not part of the request.
        let body = input
            .strip_suffix(b"\n")
            .map(|b| b.strip_suffix(b"\r").unwrap_or(b))
            .unwrap_or(&input);
        if body.iter().all(u8::is_ascii_whitespace) {
            vec![]
        } else {
            vec![body.to_vec()]
        }
    };
    if requests.is_empty() {
        return Err((exit::EMPTY_INPUT, "empty input: nothing to send".into()));
    }
    if !args.raw && !args.quiet {
        for (i, r) in requests.iter().enumerate() {
            if serde_json::from_slice::<serde::de::IgnoredAny>(r).is_err() {
                let which = if args.lines {
                    format!("line {} is", i + 1)
                } else {
                    "input is".into()
                };
                eprintln!(
                    "alas: warning: {which} not valid JSON; sent as it is (--raw to silence)"
                );
            }
        }
    }
    if nats::is_nats(&args.endpoint) {
        return nats::run(args, &requests);
    }
    if args.jetstream {
        return Err((exit::USAGE, "--jetstream needs nats:// endpoints".into()));
    }
    let name = args.name.clone().unwrap_or_else(unique_name);
    let timeout = Duration::from_millis(args.timeout.max(1));
    let mut brokers = connect(
        &args.endpoint,
        &name,
        timeout,
        (args.user.as_deref(), args.password.as_deref()),
        &args.curve,
        args.balance,
    )?;
    let wait = args.wait.unwrap_or_default();
    // How long the broker is to hold them (--at: from now).
    let delay = match (args.delay, args.at) {
        (Some(d), _) => d,
        (None, Some(at)) => at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
        (None, None) => Duration::ZERO,
    };
    let delayed = args.delay.is_some() || args.at.is_some();
    // Without --retries, --wait bounds the silence between replies (a long
    // --lines run is not cut while replies keep coming); with them, each
    // request's wait runs from its (re)send, which is what says when to
    // send it again.
    let per_request = args.retries > 0;
    let mut retries: Retries<String> = Retries::new(
        if per_request {
            wait
        } else {
            Duration::from_secs((2.0 * MAX_WAIT_SECONDS) as u64)
        },
        args.retries,
    );
    let mut trackers: HashMap<String, usize> = HashMap::new();
    let mut used = vec![0usize; brokers.len()];
    for (i, body) in requests.iter().enumerate() {
        let broker = match brokers.pick(Instant::now()) {
            Pick::Use(b) => b,
            // The broker went away since: the next one, or wait for one.
            _ => match brokers.wait_usable(timeout) {
                Ok(Some(b)) => b,
                _ => return Err(connect_failure(brokers.connect_error(timeout))),
            },
        };
        // A tracker says "I wait for an answer": workers reply (and send
        // error replies) only to requests that carry one.
        let tracker = if args.wait.is_some() {
            format!("{name}-{}", i + 1)
        } else {
            String::new()
        };
        let client = brokers.client(broker);
        let sent = if delayed {
            if !client.supports_delay() {
                return Err((
                    exit::NO_DELAY,
                    format!(
                        "broker at {}: {}",
                        client.endpoint(),
                        alaska::mlm::client::NO_DELAY
                    ),
                ));
            }
            client.sendfor_delayed(
                &args.address,
                &args.subject,
                &tracker,
                0,
                vec![body.clone()],
                delay,
            )
        } else {
            client.sendfor(
                &args.address,
                &args.subject,
                &tracker,
                0,
                vec![body.clone()],
            )
        };
        sent.map_err(|e| match e {
            ClientError::Unsupported(m) => (exit::NO_DELAY, m),
            e => (exit::OTHER, format!("sending: {e}")),
        })?;
        used[broker] += 1;
        if args.wait.is_some() {
            retries.sent(tracker.clone(), broker, Instant::now());
            trackers.insert(tracker, i);
        }
    }
    let sent_line = (!args.quiet).then(|| {
        let at: Vec<String> = used
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(b, n)| {
                if brokers.len() == 1 {
                    brokers.endpoint(b).to_string()
                } else {
                    format!("{} ({n})", brokers.endpoint(b))
                }
            })
            .collect();
        format!(
            "alas: sent {} request(s) to service {:?} subject {:?} at {}",
            requests.len(),
            args.address,
            args.subject,
            at.join(", ")
        )
    });
    let Some(wait) = args.wait else {
        // CONNECTION CLOSE is answered after everything we sent before it
        // was handled, so a successful close means the requests are in,
        // and the broker's refusals (a full queue) have arrived.
        let mut refused = Vec::new();
        for (_, r) in brokers.close() {
            match r {
                Ok(()) => {}
                Err(ClientError::Rejected(more)) => refused.extend(more),
                Err(e) => return Err((exit::OTHER, format!("closing: {e}"))),
            }
        }
        if !refused.is_empty() {
            return Err(refusal(&refused, requests.len(), None));
        }
        // Said once the broker took them (not before a refusal).
        if let Some(line) = sent_line {
            eprintln!("{line}");
        }
        return Ok(());
    };
    if let Some(line) = sent_line {
        eprintln!("{line}");
    }
    // --lines on a terminal: how many replies came, as they come.
    let mut progress =
        alaska::progress::Progress::stderr("answered", Some(requests.len() as u64), Instant::now());
    if !args.lines {
        progress = alaska::progress::Progress::new(None, "", None, Instant::now());
    }
    let mut failed = 0usize;
    let mut gave_up = 0usize;
    // The broker's ERROR names no tracker: refused requests are counted,
    // and each one means one reply fewer to wait for.
    let mut refused: Vec<Refusal> = Vec::new();
    let mut stdout = std::io::stdout().lock();
    // A delayed request cannot be answered before it is due.
    let mut quiet_until = after(Instant::now(), wait.saturating_add(delay));
    while retries.outstanding() > refused.len() {
        let now = Instant::now();
        progress.update((requests.len() - retries.outstanding()) as u64, now);
        if !per_request && now >= quiet_until {
            gave_up = retries.outstanding();
            break;
        }
        // A broker that went away will not answer what it holds: send it
        // to the next one now rather than after the wait.
        while let Some(ev) = brokers.next_event() {
            let BrokerEvent::Down(b) = ev else { continue };
            let again = retries.broker_lost(b, now);
            if args.verbose {
                eprintln!(
                    "alas: broker {} went away with {} request(s) waiting; sending {} again",
                    brokers.endpoint(b),
                    retries.outstanding(),
                    again.len()
                );
            }
            for t in again {
                resend(
                    &mut brokers,
                    &mut retries,
                    args,
                    &requests,
                    &trackers,
                    &t,
                    b,
                )?;
            }
        }
        let due = retries.due(now);
        for (t, from) in due.resend {
            if args.verbose {
                eprintln!("alas: no reply in time for {t}: sending it again");
            }
            resend(
                &mut brokers,
                &mut retries,
                args,
                &requests,
                &trackers,
                &t,
                from,
            )?;
        }
        gave_up += due.gave_up.len();
        if retries.outstanding() <= refused.len() {
            break;
        }
        while let Some((b, d)) = brokers.next_delivery() {
            if d.kind != DeliveryKind::Mailbox {
                continue;
            }
            match retries.on_reply(&d.tracker, b, Instant::now()) {
                ReplyKind::First { .. } => quiet_until = after(Instant::now(), wait),
                ReplyKind::Duplicate | ReplyKind::Late => {
                    if args.verbose {
                        eprintln!(
                            "alas: reply for {} again (from {}): dropped",
                            d.tracker,
                            brokers.endpoint(b)
                        );
                    }
                    continue;
                }
                ReplyKind::Unknown => continue,
            }
            let body = d.content.first().map(Vec::as_slice).unwrap_or(b"");
            // The progress line (a terminal only) leaves room for output.
            progress.finish();
            if d.subject.starts_with(ERROR_REPLY_PREFIX) {
                failed += 1;
                eprintln!("alas: error reply: {}", String::from_utf8_lossy(body));
                continue;
            }
            let _ = stdout.write_all(body);
            let _ = stdout.write_all(b"\n");
            let _ = stdout.flush();
        }
        while let Some((_, r)) = brokers.next_refusal() {
            refused.push(r);
        }
        if retries.outstanding() <= refused.len() {
            break;
        }
        let until = retries
            .next_deadline()
            .unwrap_or(quiet_until)
            .min(if per_request {
                after(now, wait)
            } else {
                quiet_until
            })
            .max(after(now, Duration::from_millis(1)));
        let left = until.saturating_duration_since(Instant::now());
        brokers
            .poll(None, left)
            .map_err(|e| (exit::OTHER, format!("receiving: {e}")))?;
    }
    let stats = retries.stats();
    for (_, r) in brokers.close() {
        if let Err(ClientError::Rejected(more)) = r {
            refused.extend(more);
        }
    }
    if args.verbose {
        eprintln!(
            "alas: {} request(s) sent again, {} duplicate reply(ies) dropped",
            stats.resent,
            stats.duplicates + stats.late
        );
    }
    let unanswered = gave_up.saturating_sub(refused.len());
    if unanswered > 0 {
        let attempts = if args.retries > 0 {
            format!(" (each sent {} times)", args.retries + 1)
        } else {
            String::new()
        };
        let late = format!(
            "no reply within {:.1} s for {unanswered} of {} request(s){attempts}",
            wait.as_secs_f64(),
            requests.len()
        );
        if !refused.is_empty() {
            return Err(refusal(&refused, requests.len(), Some(&late)));
        }
        return Err((exit::REPLY_TIMEOUT, late));
    }
    if !refused.is_empty() {
        return Err(refusal(&refused, requests.len(), None));
    }
    if failed > 0 {
        return Err((
            exit::ERROR_REPLY,
            format!("{failed} of {} request(s) failed", requests.len()),
        ));
    }
    Ok(())
}

/// Sends request `tracker` again, to the next broker after `from` (or,
/// when no other is usable, `from` itself: its client keeps it until the
/// broker is back).
fn resend(
    brokers: &mut Brokers,
    retries: &mut Retries<String>,
    args: &Args,
    requests: &[Vec<u8>],
    trackers: &HashMap<String, usize>,
    tracker: &str,
    from: usize,
) -> Result<(), Failure> {
    let Some(&i) = trackers.get(tracker) else {
        return Ok(());
    };
    let to = match brokers.after(from, Instant::now()) {
        Pick::Use(b) => b,
        Pick::Wait | Pick::NoBroker => from,
    };
    let sent = brokers.client(to).sendfor(
        &args.address,
        &args.subject,
        tracker,
        0,
        vec![requests[i].clone()],
    );
    match sent {
        Ok(()) => {}
        // Kept by nobody: it times out like a lost one.
        Err(ClientError::OutboxFull(_)) => {}
        Err(e) => return Err((exit::OTHER, format!("sending again: {e}"))),
    }
    retries.resend_to(&tracker.to_string(), to);
    Ok(())
}

/// Longest `--wait` accepted: a day.
const MAX_WAIT_SECONDS: f64 = 86_400.0;

/// `--wait` value: seconds, fractions allowed, 0 to a day.
fn seconds(v: &str) -> Result<Duration, String> {
    let n: f64 = v
        .trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a number of seconds"))?;
    if !n.is_finite() || !(0.0..=MAX_WAIT_SECONDS).contains(&n) {
        return Err(format!(
            "{v:?} is out of range: wait between 0 and {MAX_WAIT_SECONDS} seconds"
        ));
    }
    Duration::try_from_secs_f64(n).map_err(|_| format!("{v:?} is out of range"))
}

/// `--delay` value: a duration as the configuration reads it.
fn delay_flag(v: &str) -> Result<Duration, String> {
    alaska::config::parse_duration(v)
        .ok_or_else(|| format!("{v:?} is not a duration up to a year (e.g. 250ms, 2s, 5m, 1h)"))
}

/// `--at` value: RFC 3339, or seconds since the Unix epoch.
fn at_flag(v: &str) -> Result<std::time::SystemTime, String> {
    let v = v.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
        let ms =
            u64::try_from(t.timestamp_millis()).map_err(|_| format!("{v:?} is before 1970"))?;
        return std::time::UNIX_EPOCH
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(|| format!("{v:?} is out of range"));
    }
    match v.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Duration::try_from_secs_f64(s)
            .ok()
            .and_then(|d| std::time::UNIX_EPOCH.checked_add(d))
            .ok_or_else(|| format!("{v:?} is out of range")),
        _ => Err(format!(
            "{v:?} is neither an RFC 3339 time (2026-12-05T21:00:00Z) nor unix seconds"
        )),
    }
}

/// Requests the broker refused: exit 8 when a queue was full (the caller
/// may send again later), 1 for any other refusal.
fn refusal(refused: &[Refusal], sent: usize, and_then: Option<&str>) -> Failure {
    let full = refused.iter().find(|r| r.is_full());
    let denied = refused
        .iter()
        .find(|r| matches!(r.kind, RefusalKind::AccessDenied { .. }));
    let code = if full.is_some() {
        exit::REFUSED_FULL
    } else if denied.is_some() {
        exit::DENIED
    } else {
        exit::OTHER
    };
    let Some(reason) = full.or(denied).or(refused.first()) else {
        return (exit::OTHER, "broker refused a request".into());
    };
    let what = if sent == 1 {
        "the request".to_string()
    } else {
        format!("{} of {sent} requests", refused.len())
    };
    let mut msg = format!("broker refused {what}: {reason}");
    if let Some(more) = and_then {
        msg.push_str("; ");
        msg.push_str(more);
    }
    (code, msg)
}

/// Connects to every broker of `endpoint` (a comma-separated list) under
/// the address `name`, with PLAIN (`plain`: user, password) or CURVE from
/// the flags, and waits at most `timeout` for one to be usable: what every
/// subcommand and the send share.
fn connect(
    endpoint: &str,
    name: &str,
    timeout: Duration,
    plain: (Option<&str>, Option<&str>),
    curve: &alaska::curve::CurveFlags,
    balance: Balance,
) -> Result<Brokers, Failure> {
    let endpoints =
        parse_endpoints(endpoint).map_err(|e| (exit::USAGE, format!("--endpoint: {e}")))?;
    let mut opts = ClientOptions::new(&endpoints[0], name);
    opts.timeout = timeout;
    if let (Some(user), password) = plain {
        opts.plain = Some(Credentials {
            username: user.to_string(),
            password: password.unwrap_or_default().to_string(),
        });
    }
    if let Some(keys) = curve
        .keys()
        .map_err(|e| (exit::USAGE, format!("CURVE: {e}")))?
    {
        if opts.plain.is_some() {
            return Err((
                exit::USAGE,
                "PLAIN (-u) and CURVE cannot both be used".into(),
            ));
        }
        opts.curve = Some(keys);
    }
    let mut brokers = Brokers::connect(&endpoints, &opts, balance).map_err(connect_failure)?;
    match brokers.wait_usable(timeout) {
        Ok(Some(_)) => Ok(brokers),
        Ok(None) => Err(connect_failure(brokers.connect_error(timeout))),
        Err(e) => Err((exit::OTHER, format!("connecting: {e}"))),
    }
}

fn connect_failure(e: ClientError) -> Failure {
    let code = match &e {
        ClientError::Endpoint { .. } => exit::USAGE,
        ClientError::Unreachable { .. } | ClientError::Timeout { .. } => exit::UNREACHABLE,
        ClientError::Refused { status, .. } if status.reason.starts_with("access denied") => {
            exit::DENIED
        }
        e if e.is_security() => exit::AUTH,
        _ => exit::OTHER,
    };
    (code, e.to_string())
}

/// `alas-<host>-<pid>-<hex>`: two runs at once never share an address
/// (the original's fixed `alas_producer` made them kick each other off).
fn unique_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut name = format!(
        "alas-{host}-{}-{:x}",
        std::process::id(),
        nanos & 0xffff_ffff
    );
    name.truncate(255);
    name
}
