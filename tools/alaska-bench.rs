//! alaska-bench: load generator and reference echo worker.
//!
//! As a producer it connects with a mailbox of its own, keeps at most
//! `--window` requests outstanding towards a service, and matches the
//! replies that come back to its mailbox by the sequence number carried in
//! the payload. It prints one summary line: sent, received, lost,
//! duplicated, requests per second, and p50/p99/max latency.
//!
//! With `--echo-worker` it is instead the fastest possible worker: no Lua,
//! each request's content mailed straight back to the requester. Running
//! the producer against it gives the ceiling any scripted worker on the same
//! broker can reach.
//!
//! It speaks plain MLM, so it works against any broker, the real Malamute
//! included.
//!
//! For the runners' benchmark (tools/bench-runners.sh) it also plays a
//! minimal HTTP application (`--http-echo ADDR`: each POST's body back, 200,
//! kept alive) and calls such an application directly (`--http-direct
//! URL`), one request at a time with the HTTP runner's own client, so the
//! runner's latency can be set beside the application's.
//!
//! With several brokers (`-e a,b`) the producer fails over (or balances,
//! `--balance rr`) as `alas` does, and with `--retries N` sends a request
//! that got no reply within `--retry-after` (or whose broker went away)
//! again to the next broker; the summary then counts the requests sent
//! again and the replies that came twice. `--rate` paces the load so a run
//! lasts long enough to inject faults into (tests/cluster/multihost.rs).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alaska::failover::{parse_endpoints, Balance, BrokerEvent, Brokers, Pick, ReplyKind, Retries};
use alaska::mlm::{Client, ClientOptions, DeliveryKind};
use alaska::time::after;
use clap::Parser;

/// Command-line flags.
#[derive(Parser, Debug)]
#[command(
    name = "alaska-bench",
    version,
    about = "Load generator for Alaska services, and a no-Lua echo worker for comparison",
    after_help = "Producer:    alaska-bench -e tcp://127.0.0.1:9999 -a default -s echo -n 100000 -w 100 -b 64\n\
                  Failover:    alaska-bench -e tcp://10.0.0.1:9999,tcp://10.0.0.2:9999 --retries 3 --retry-after 2000 --rate 200\n\
                  Echo worker: alaska-bench --echo-worker -e tcp://127.0.0.1:9999 -a default\n\n\
                  Exit status: 0 every request answered once; 3 some lost or duplicated; 1 error."
)]
struct Args {
    /// Broker endpoint, or several comma-separated in priority order (the
    /// echo worker takes one).
    #[arg(
        short,
        long,
        value_name = "ENDPOINTS",
        default_value = alaska::mlm::DEFAULT_ENDPOINT
    )]
    endpoint: String,
    /// With several brokers: `priority` (the first connected) or `rr`.
    #[arg(long, value_name = "MODE", default_value = "priority")]
    balance: Balance,
    /// Send a request that got no reply within --retry-after (or whose
    /// broker went away) again to the next broker, at most N times.
    #[arg(long, value_name = "N", default_value_t = 0)]
    retries: u32,
    /// Milliseconds a request waits for its reply before it is sent again
    /// (with --retries).
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    retry_after: u64,
    /// Requests per second at most (0: as fast as the window allows).
    #[arg(long, value_name = "PER_SECOND", default_value_t = 0)]
    rate: u64,
    /// Service address.
    #[arg(short, long, default_value = "default")]
    address: String,
    /// Request subject (selects the script).
    #[arg(short, long, default_value = "echo")]
    subject: String,
    /// Number of requests.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    requests: u64,
    /// Requests outstanding at most.
    #[arg(short, long, default_value_t = 100)]
    window: u64,
    /// Payload size in bytes (at least 32: sequence number and timestamp).
    #[arg(short, long, default_value_t = 64)]
    bytes: usize,
    /// Give up when no reply came for this many seconds.
    #[arg(long, default_value_t = 10)]
    idle_timeout: u64,
    /// Print the summary as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Run as the no-Lua echo worker instead of a producer.
    #[arg(long)]
    echo_worker: bool,
    /// Echo worker: subject pattern to offer.
    #[arg(long, default_value = ".*")]
    filter: String,
    /// Echo worker: use acknowledged delivery when the broker offers it
    /// (as the alaska worker does), with this window.
    #[arg(long)]
    ack_window: Option<u16>,
    /// No broker: time one Lua VM running a script (default: an echo) for
    /// `--requests` requests, and print the cost per request.
    #[arg(long)]
    vm_only: bool,
    #[command(flatten)]
    curve: alaska::curve::CurveFlags,
    /// With --vm-only: the script to time instead of the echo.
    #[arg(long, value_name = "FILE")]
    script: Option<std::path::PathBuf>,
    /// Run as a minimal HTTP echo application on this address
    /// (`127.0.0.1:0` for any port; the URL is printed on stdout).
    #[arg(long, value_name = "ADDR")]
    http_echo: Option<String>,
    /// No broker: POST `--requests` payloads one at a time to this URL
    /// with the HTTP runner's client, and print the summary.
    #[arg(long, value_name = "URL")]
    http_direct: Option<String>,
}

fn main() -> ExitCode {
    let args: Args = alaska::docgen::parse();
    let r = if let Some(addr) = &args.http_echo {
        http_echo(addr)
    } else if let Some(url) = &args.http_direct {
        http_direct(&args, url)
    } else if args.vm_only {
        vm_only(&args)
    } else if args.echo_worker {
        echo_worker(&args)
    } else {
        produce(&args)
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("alaska-bench: {e}");
            ExitCode::from(1)
        }
    }
}

fn echo_worker(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if parse_endpoints(&args.endpoint)?.len() != 1 {
        return Err("the echo worker serves one broker: give one endpoint".into());
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    let mut opts = ClientOptions::new(
        &args.endpoint,
        format!("alaska-bench-echo-{}", std::process::id()),
    );
    opts.credit = args.ack_window;
    opts.curve = args.curve.keys()?;
    let mut client = Client::connect(opts)?;
    client.set_worker(&args.address, &args.filter)?;
    eprintln!(
        "echo worker ready on {} service {} (acknowledged: {})",
        args.endpoint,
        args.address,
        client.acks_enabled()
    );
    let mut served: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(d) = client.recv(Duration::from_millis(100))? else {
            continue;
        };
        if d.kind != DeliveryKind::Service {
            continue;
        }
        client.sendto(&d.sender, &d.subject, &d.tracker, 0, d.content)?;
        if let Some(token) = d.ack {
            client.confirm(token)?;
        }
        served += 1;
    }
    eprintln!("echo worker served {served} requests");
    client.close()?;
    Ok(ExitCode::SUCCESS)
}

/// Times the Lua side alone: one VM, the same request again and again.
fn vm_only(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use alaska::worker::vm::Vm;
    use alaska::worker::{PoolConfig, Request};
    let dir = std::env::temp_dir().join(format!("alaska-bench-vm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let body = match &args.script {
        Some(path) => std::fs::read_to_string(path)?,
        None => "return alaskaContext".to_string(),
    };
    std::fs::write(dir.join("bench.lua"), body)?;
    let cfg = PoolConfig {
        scripts_dir: dir.clone(),
        ..PoolConfig::default()
    };
    let mut vm = Vm::new(std::sync::Arc::new(cfg))?;
    let mut req = Request {
        sender: "alaska-bench".into(),
        address: args.address.clone(),
        subject: "bench".into(),
        tracker: "t".into(),
        content: vec![payload(0, 0, args.bytes.max(32))],
        attempt: 1,
        hops: 0,
    };
    let warm = (args.requests / 10).max(1);
    for _ in 0..warm {
        req = vm.run(req).0;
    }
    let start = Instant::now();
    let mut failed = 0u64;
    for _ in 0..args.requests {
        let (back, run) = vm.run(req);
        req = back;
        if run.error().is_some() {
            failed += 1;
        }
    }
    let per = start.elapsed() / args.requests.max(1) as u32;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "vm requests={} failed={failed} per_request={:.2}us",
        args.requests,
        per.as_secs_f64() * 1e6
    );
    Ok(ExitCode::SUCCESS)
}

/// A minimal HTTP/1.1 application: every request's body back with 200,
/// connections kept alive, one thread each. Ends on SIGTERM or SIGINT.
fn http_echo(addr: &str) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind(addr)?;
    println!("http://{}/", listener.local_addr()?);
    std::io::Write::flush(&mut std::io::stdout())?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::Builder::new().name("http-echo".into()).spawn(
            move || -> std::io::Result<()> {
                stream.set_nodelay(true)?;
                let mut out = stream.try_clone()?;
                let mut r = BufReader::new(stream);
                let (mut line, mut body, mut resp) = (String::new(), Vec::new(), Vec::new());
                loop {
                    let mut len = 0usize;
                    line.clear();
                    if r.read_line(&mut line)? == 0 {
                        return Ok(());
                    }
                    loop {
                        line.clear();
                        if r.read_line(&mut line)? == 0 {
                            return Ok(());
                        }
                        let h = line.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    body.resize(len, 0);
                    r.read_exact(&mut body)?;
                    resp.clear();
                    write!(resp, "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n")?;
                    resp.extend_from_slice(&body);
                    out.write_all(&resp)?;
                }
            },
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The application's own latency: the payloads the producer would send,
/// POSTed one at a time with the HTTP runner's client.
fn http_direct(args: &Args, url: &str) -> Result<ExitCode, Box<dyn std::error::Error>> {
    use alaska::worker::runners::http::HttpClient;
    use alaska::worker::runners::HttpConfig;
    use alaska::worker::{Outcome, Request};
    let client = HttpClient::new(&HttpConfig {
        url: url.to_string(),
        timeout: Duration::from_secs(args.idle_timeout.max(1)),
        concurrency: 1,
        headers: Vec::new(),
    });
    let mut req = Request {
        sender: "alaska-bench".into(),
        address: args.address.clone(),
        subject: args.subject.clone(),
        tracker: "b".into(),
        content: Vec::new(),
        attempt: 1,
        hops: 0,
    };
    let start = Instant::now();
    let mut latencies_us = Vec::with_capacity(args.requests as usize);
    let (mut received, mut lost) = (0u64, 0u64);
    for seq in 0..args.requests {
        let t = start.elapsed().as_nanos() as u64;
        req.content = vec![payload(seq, t, args.bytes.max(32))];
        let run = client.call(&req);
        match run.result {
            Ok(Outcome::Done { reply: Some(r) }) if parse(&r) == Some((seq, t)) => {
                received += 1;
                let now = start.elapsed().as_nanos() as u64;
                latencies_us.push(now.saturating_sub(t) / 1000);
            }
            other => {
                lost += 1;
                eprintln!("alaska-bench: request {seq}: {other:?}");
            }
        }
    }
    let summary = Summary {
        sent: args.requests,
        received,
        lost,
        duplicated: 0,
        resent: 0,
        elapsed: start.elapsed(),
        latencies_us,
        max_gap: Duration::ZERO,
        per_broker: Vec::new(),
    };
    print_summary(&summary, args.json);
    Ok(if lost == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// Summary of one run.
struct Summary {
    sent: u64,
    received: u64,
    lost: u64,
    duplicated: u64,
    resent: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    /// Longest time without a new answer while requests waited.
    max_gap: Duration,
    /// Requests first sent through each broker, in list order.
    per_broker: Vec<u64>,
}

fn produce(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let bytes = args.bytes.max(32);
    let window = args.window.max(1);
    let endpoints = parse_endpoints(&args.endpoint)?;
    let address = format!(
        "alaska-bench-{}-{}",
        std::process::id(),
        nanos_now() % 1_000_000
    );
    let mut template = ClientOptions::new(&endpoints[0], address);
    template.curve = args.curve.keys()?;
    let mut brokers = Brokers::connect(&endpoints, &template, args.balance)?;
    if brokers.wait_usable(template.timeout)?.is_none() {
        return Err(brokers.connect_error(template.timeout).into());
    }
    let mut retries: Retries<u64> =
        Retries::new(Duration::from_millis(args.retry_after.max(1)), args.retries);
    let start = Instant::now();
    let mut latencies_us = Vec::with_capacity(args.requests as usize);
    let mut per_broker = vec![0u64; brokers.len()];
    let (mut sent, mut received, mut duplicated) = (0u64, 0u64, 0u64);
    let mut last_reply = Instant::now();
    let mut max_gap = Duration::ZERO;
    let idle = Duration::from_secs(args.idle_timeout);
    let pace = (args.rate > 0).then(|| Duration::from_nanos(1_000_000_000 / args.rate));
    // On a terminal, a line that says how far the run is (a paced run of
    // thousands of requests otherwise says nothing for minutes).
    let mut progress = alaska::progress::Progress::stderr("answered", Some(args.requests), start);
    while received < args.requests {
        let now = Instant::now();
        progress.update(received, now);
        // A broker that went away answers nothing it holds: send it on.
        while let Some(ev) = brokers.next_event() {
            match ev {
                BrokerEvent::Down(b) => {
                    let again = retries.broker_lost(b, now);
                    eprintln!(
                        "alaska-bench: broker {} went away at {:.1} s; {} request(s) sent again",
                        brokers.endpoint(b),
                        start.elapsed().as_secs_f64(),
                        again.len()
                    );
                    for seq in again {
                        resend(&mut brokers, &mut retries, args, seq, b, bytes, start)?;
                    }
                }
                // Worth a line only when there is a choice, or it came back.
                BrokerEvent::Up(b) if brokers.len() > 1 || retries.stats().sent > 0 => eprintln!(
                    "alaska-bench: broker {} connected at {:.1} s",
                    brokers.endpoint(b),
                    start.elapsed().as_secs_f64()
                ),
                BrokerEvent::Up(_) => {}
            }
        }
        for (seq, from) in retries.due(now).resend {
            resend(&mut brokers, &mut retries, args, seq, from, bytes, start)?;
        }
        // New requests, within the window and the pace.
        let mut next_slot = None;
        while sent < args.requests && (retries.outstanding() as u64) < window {
            if let Some(p) = pace {
                let slot = after(
                    start,
                    p.saturating_mul(u32::try_from(sent).unwrap_or(u32::MAX)),
                );
                if slot > now {
                    next_slot = Some(slot);
                    break;
                }
            }
            let Pick::Use(b) = brokers.pick(now) else {
                break;
            };
            let t = start.elapsed().as_nanos() as u64;
            // A tracker asks for a reply (the worker's convention); the
            // payload carries what matching needs.
            brokers.client(b).sendfor(
                &args.address,
                &args.subject,
                &format!("{sent:x}"),
                0,
                vec![payload(sent, t, bytes)],
            )?;
            retries.sent(sent, b, now);
            per_broker[b] += 1;
            sent += 1;
        }
        let mut got = false;
        while let Some((b, d)) = brokers.next_delivery() {
            if d.kind != DeliveryKind::Mailbox {
                continue;
            }
            let Some((seq, t)) = d.content.first().and_then(|f| parse(f)) else {
                eprintln!("alaska-bench: reply without a sequence number ignored");
                continue;
            };
            let now = Instant::now();
            match retries.on_reply(&seq, b, now) {
                // A reply after every attempt timed out still answers it.
                ReplyKind::First { .. } | ReplyKind::Late => {
                    received += 1;
                    got = true;
                    max_gap = max_gap.max(now.saturating_duration_since(last_reply));
                    last_reply = now;
                    let at = start.elapsed().as_nanos() as u64;
                    latencies_us.push(at.saturating_sub(t) / 1000);
                }
                ReplyKind::Duplicate => duplicated += 1,
                ReplyKind::Unknown => eprintln!("alaska-bench: reply with unknown sequence {seq}"),
            }
        }
        while let Some((b, r)) = brokers.next_refusal() {
            eprintln!(
                "alaska-bench: broker {} refused a send: {r}",
                brokers.endpoint(b)
            );
        }
        if received >= args.requests {
            break;
        }
        // Nothing answered for the idle timeout (also: no broker to send
        // to): the rest is lost.
        if !got && last_reply.elapsed() > idle {
            break;
        }
        if got {
            // Replies free window slots: fill them before waiting again
            // (at window 1, waiting first cost up to 100 ms per request).
            continue;
        }
        let mut until = after(Instant::now(), Duration::from_millis(100));
        if let Some(d) = retries.next_deadline() {
            until = until.min(d);
        }
        if let Some(s) = next_slot {
            until = until.min(s);
        }
        let left = until.saturating_duration_since(Instant::now());
        brokers.poll(None, left)?;
    }
    progress.finish();
    let elapsed = start.elapsed();
    let resent = retries.stats().resent;
    for (b, r) in brokers.close() {
        if let Err(e) = r {
            eprintln!("alaska-bench: closing {}: {e}", endpoints[b]);
        }
    }
    let summary = Summary {
        sent,
        received,
        lost: sent - received.min(sent),
        duplicated,
        resent,
        elapsed,
        latencies_us,
        max_gap,
        per_broker,
    };
    print_summary(&summary, args.json);
    Ok(if summary.lost == 0 && summary.duplicated == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// Sends request `seq` again to the broker after `from` (or `from` itself
/// when no other is usable: its client keeps it until the broker is back).
/// The payload keeps the request's sequence; its timestamp is the resend's,
/// so latency counts from the last attempt.
fn resend(
    brokers: &mut Brokers,
    retries: &mut Retries<u64>,
    args: &Args,
    seq: u64,
    from: usize,
    bytes: usize,
    start: Instant,
) -> Result<(), Box<dyn std::error::Error>> {
    let to = match brokers.after(from, Instant::now()) {
        Pick::Use(b) => b,
        Pick::Wait | Pick::NoBroker => from,
    };
    let t = start.elapsed().as_nanos() as u64;
    match brokers.client(to).sendfor(
        &args.address,
        &args.subject,
        &format!("{seq:x}"),
        0,
        vec![payload(seq, t, bytes)],
    ) {
        Ok(()) | Err(alaska::mlm::ClientError::OutboxFull(_)) => {}
        Err(e) => return Err(e.into()),
    }
    retries.resend_to(&seq, to);
    Ok(())
}

/// Payload: 16 hex digits of sequence, 16 of send time (ns since start),
/// padded with `x`: printable, so a Lua echo script passes it unchanged.
fn payload(seq: u64, t: u64, bytes: usize) -> Vec<u8> {
    let mut p = format!("{seq:016x}{t:016x}").into_bytes();
    p.resize(bytes, b'x');
    p
}

fn parse(frame: &[u8]) -> Option<(u64, u64)> {
    let head = std::str::from_utf8(frame.get(..32)?).ok()?;
    let seq = u64::from_str_radix(&head[..16], 16).ok()?;
    let t = u64::from_str_radix(&head[16..], 16).ok()?;
    Some((seq, t))
}

fn nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn print_summary(s: &Summary, json: bool) {
    let mut l = s.latencies_us.clone();
    l.sort_unstable();
    let rps = s.received as f64 / s.elapsed.as_secs_f64().max(1e-9);
    let (p50, p99, max) = (
        percentile(&l, 0.50),
        percentile(&l, 0.99),
        l.last().copied().unwrap_or(0),
    );
    let gap_ms = s.max_gap.as_millis();
    let per_broker = s
        .per_broker
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if json {
        println!(
            "{{\"sent\":{},\"received\":{},\"lost\":{},\"duplicated\":{},\"resent\":{},\"rps\":{:.0},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"max_gap_ms\":{},\"per_broker\":[{}]}}",
            s.sent, s.received, s.lost, s.duplicated, s.resent, rps, p50, p99, max, gap_ms, per_broker
        );
    } else {
        println!(
            "sent={} received={} lost={} duplicated={} resent={} rps={:.0} p50={}us p99={}us max={}us max_gap={}ms per_broker={}",
            s.sent, s.received, s.lost, s.duplicated, s.resent, rps, p50, p99, max, gap_ms, per_broker
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_and_has_the_asked_size() {
        let p = payload(42, 123_456_789, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(parse(&p), Some((42, 123_456_789)));
        assert_eq!(parse(b"short"), None);
    }

    #[test]
    fn percentiles_pick_from_sorted_latencies() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 51);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
