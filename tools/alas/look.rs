//! `alas read`, `alas listen` and `alas dead`: the operator's eyes and
//! hands on what the brokers hold.
//!
//! - `read MAILBOX` connects with the mailbox's address (MLM delivers mail
//!   only to its owner) and prints what is waiting, then what arrives.
//! - `listen STREAM [PATTERN]` subscribes and prints what is published.
//! - `dead list|show|replay|delete|purge` works on the error mailbox:
//!   through the admin API of the project's broker (`--api`), where
//!   nothing is consumed by looking; or, against the real Malamute (no
//!   `--api`), through the mailbox itself: `list` reads, which consumes,
//!   and `replay --file` sends again what a saved `--json` listing holds.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use alaska::broker::admin::{frame_of, percent_encode, Letter};
use alaska::broker::core::Held;
use alaska::failover::{Balance, Brokers, Pick};
use alaska::mlm::{ClientError, Delivery};
use alaska::time::after;
use alaska::worker::outcomes::frame_json;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::{exit, seconds, unique_name, Failure};

/// The subcommands; without one, `alas` sends stdin as before.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Take the messages waiting in a mailbox and print them (connects
    /// with that address, as MLM requires: reading consumes).
    Read(ReadArgs),
    /// Subscribe to a stream and print what is published from now on.
    Listen(ListenArgs),
    /// List, show, replay, delete or purge dead letters (the error
    /// mailbox).
    Dead(DeadArgs),
}

/// How a subcommand reaches the brokers (the send flags' names).
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Broker endpoint, or several comma-separated (all are read).
    #[arg(short, long, global = true, value_name = "ENDPOINTS", default_value = alaska::mlm::DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Connection timeout in milliseconds.
    #[arg(long, global = true, value_name = "MS", default_value_t = 3000)]
    pub connect_timeout: u64,
    /// PLAIN user name.
    #[arg(short, long, global = true, env = "ALAS_USER")]
    pub user: Option<String>,
    /// PLAIN password.
    #[arg(
        short,
        long,
        global = true,
        env = "ALAS_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    #[command(flatten)]
    pub curve: alaska::curve::CurveFlags,
}

/// How messages are printed.
#[derive(Args, Debug, Clone)]
pub struct Output {
    /// One JSON object per line: sender, address, subject, tracker and
    /// frames (`{"text": ..}` for UTF-8, `{"base64": ..}` otherwise).
    #[arg(long)]
    pub json: bool,
    /// Stop after N messages.
    #[arg(short = 'n', long = "count", value_name = "N")]
    pub count: Option<u64>,
}

/// `alas read`.
#[derive(Args, Debug)]
pub struct ReadArgs {
    /// The mailbox (an address).
    pub mailbox: String,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Output,
    /// Stop after this many seconds without a message (default 1; with
    /// --follow: never).
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub timeout: Option<Duration>,
    /// Keep reading: print mail as it arrives until interrupted (or -n).
    #[arg(short, long)]
    pub follow: bool,
}

/// `alas listen`.
#[derive(Args, Debug)]
pub struct ListenArgs {
    /// The stream.
    pub stream: String,
    /// Subjects to receive: a regular expression (default: all).
    #[arg(default_value = ".*")]
    pub pattern: String,
    #[command(flatten)]
    pub conn: Conn,
    #[command(flatten)]
    pub out: Output,
    /// Stop after this many seconds without a message (default: never).
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub timeout: Option<Duration>,
    /// Our address on the broker (default: unique per run).
    #[arg(long)]
    pub name: Option<String>,
}

/// `alas dead`.
#[derive(Args, Debug)]
pub struct DeadArgs {
    #[command(subcommand)]
    pub action: DeadAction,
    /// The project's broker's HTTP listener (`http://127.0.0.1:9100`): use
    /// its admin API, which browses without consuming. Without it, the
    /// error mailbox is read over MLM (the real Malamute's way).
    #[arg(long, global = true, env = "ALAS_API", value_name = "URL")]
    pub api: Option<String>,
    /// The admin API's bearer token (`mlm_server/http/token`).
    #[arg(
        long,
        global = true,
        env = "ALAS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// The error mailbox, without --api (`worker/errors/mailbox`).
    #[arg(long, global = true, default_value = "awerr", value_name = "ADDRESS")]
    pub mailbox: String,
    #[command(flatten)]
    pub conn: Conn,
}

/// What `alas dead` does.
#[derive(Subcommand, Debug)]
pub enum DeadAction {
    /// List dead letters, newest first (without --api: reads, and so
    /// consumes, the error mailbox; save the output with --json to replay
    /// later).
    List {
        /// One JSON object per line (what `replay --file` reads).
        #[arg(long)]
        json: bool,
        /// At most N (with --api).
        #[arg(long, value_name = "N", default_value_t = 50)]
        limit: usize,
        /// Only letters for this subject.
        #[arg(long)]
        subject: Option<String>,
        /// Only letters whose reason contains this text.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show one dead letter whole (--api).
    Show {
        /// Its id, from `list`.
        id: u64,
    },
    /// Send dead letters' requests again to their service and subject
    /// (a fresh attempt count; replies go nowhere unless --reply-to).
    Replay {
        /// Letter ids, from `list` (--api).
        ids: Vec<u64>,
        /// Every letter (--api; --subject/--reason narrow it).
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// Replay the letters of a saved `list --json` (or `read --json`)
        /// output; works against any broker.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["ids", "all"])]
        file: Option<PathBuf>,
        /// With --all: only this subject.
        #[arg(long)]
        subject: Option<String>,
        /// With --all: only reasons containing this text.
        #[arg(long)]
        reason: Option<String>,
        /// Keep the letters after replaying them (--api).
        #[arg(long)]
        keep: bool,
        /// Address that gets the replies (with --api).
        #[arg(long, value_name = "ADDRESS")]
        reply_to: Option<String>,
    },
    /// Delete dead letters (--api).
    Delete {
        /// Letter ids.
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Delete every dead letter (--subject/--reason narrow it). Without
    /// --api: reads the error mailbox to the end and drops what it read.
    Purge {
        /// Only this subject (--api).
        #[arg(long)]
        subject: Option<String>,
        /// Only reasons containing this text (--api).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Runs a subcommand.
pub fn run(cmd: &Command) -> Result<(), Failure> {
    match cmd {
        Command::Read(a) => read(a),
        Command::Listen(a) => listen(a),
        Command::Dead(a) => dead(a),
    }
}

// ----- connecting and receiving ------------------------------------------

fn connect(conn: &Conn, address: &str) -> Result<Brokers, Failure> {
    super::connect(
        &conn.endpoint,
        address,
        Duration::from_millis(conn.connect_timeout.max(1)),
        (conn.user.as_deref(), conn.password.as_deref()),
        &conn.curve,
        Balance::Priority,
    )
}

/// Hands each delivery to `each` until `count` were handed, `quiet`
/// passes without one (`None`: never), `each` says stop (a closed pipe),
/// or the brokers fail or refuse. Returns how many were handed.
fn receive(
    brokers: &mut Brokers,
    count: Option<u64>,
    quiet: Option<Duration>,
    mut each: impl FnMut(Delivery) -> bool,
) -> Result<u64, Failure> {
    let mut n = 0u64;
    let mut until = quiet.map(|q| after(Instant::now(), q));
    loop {
        while let Some((_, d)) = brokers.next_delivery() {
            n += 1;
            if !each(d) || count.is_some_and(|c| n >= c) {
                return Ok(n);
            }
            until = quiet.map(|q| after(Instant::now(), q));
        }
        if let Some((_, r)) = brokers.next_refusal() {
            let code = if r.to_string().contains("access denied") {
                exit::DENIED
            } else {
                exit::OTHER
            };
            return Err((code, format!("the broker refused: {r}")));
        }
        let left = match until {
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(n);
                }
                left
            }
            None => Duration::from_secs(1),
        };
        brokers
            .poll(None, left)
            .map_err(|e| (exit::OTHER, format!("receiving: {e}")))?;
    }
}

/// Writes `line` to stdout; false when whoever reads us went away (a
/// closed pipe), which ends the reading.
fn emit(line: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .is_ok()
}

/// Receives and prints, as `out` says.
fn print_until(
    brokers: &mut Brokers,
    out: &Output,
    quiet: Option<Duration>,
) -> Result<u64, Failure> {
    receive(brokers, out.count, quiet, |d| {
        emit(&if out.json {
            delivery_json(&d).to_string()
        } else {
            delivery_text(&d)
        })
    })
}

/// A delivery as one JSON object.
pub fn delivery_json(d: &Delivery) -> Value {
    json!({
        "sender": d.sender,
        "address": d.address,
        "subject": d.subject,
        "tracker": d.tracker,
        "frames": d.content.iter().map(|f| frame_json(f)).collect::<Vec<_>>(),
    })
}

/// A delivery as text: a header line, then each frame on its own line,
/// text as it is, anything else escaped.
pub fn delivery_text(d: &Delivery) -> String {
    let mut s = format!(
        "from {:?} to {:?} subject {:?} tracker {:?} ({} frame(s))",
        d.sender,
        d.address,
        d.subject,
        d.tracker,
        d.content.len()
    );
    for f in &d.content {
        s.push('\n');
        match std::str::from_utf8(f) {
            Ok(t) if !t.contains(['\0', '\x1b']) => s.push_str(t),
            _ => s.push_str(&escape(f)),
        }
    }
    s
}

/// Bytes as text with `\xNN` for what is not printable ASCII.
fn escape(f: &[u8]) -> String {
    f.iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

// ----- read, listen --------------------------------------------------------

fn read(a: &ReadArgs) -> Result<(), Failure> {
    let mut brokers = connect(&a.conn, &a.mailbox)?;
    let quiet = match (a.follow, a.timeout) {
        (true, t) => t,
        (false, t) => Some(t.unwrap_or(Duration::from_secs(1))),
    };
    let n = print_until(&mut brokers, &a.out, quiet)?;
    let _ = brokers.close();
    if n == 0 {
        return Err((
            exit::NOTHING,
            format!(
                "nothing in mailbox {:?} within {:.1} s",
                a.mailbox,
                quiet.unwrap_or_default().as_secs_f64()
            ),
        ));
    }
    Ok(())
}

fn listen(a: &ListenArgs) -> Result<(), Failure> {
    let name = a.name.clone().unwrap_or_else(unique_name);
    let mut brokers = connect(&a.conn, &name)?;
    for i in 0..brokers.len() {
        if let Err(e) = brokers.client(i).set_consumer(&a.stream, &a.pattern) {
            let code = match &e {
                ClientError::Refused { status, .. } if status.reason.contains("access denied") => {
                    exit::DENIED
                }
                _ => exit::OTHER,
            };
            return Err((code, format!("subscribing to {:?}: {e}", a.stream)));
        }
    }
    eprintln!(
        "alas: listening to stream {:?} subjects {:?}",
        a.stream, a.pattern
    );
    let n = print_until(&mut brokers, &a.out, a.timeout)?;
    let _ = brokers.close();
    if n == 0 {
        return Err((
            exit::NOTHING,
            format!(
                "nothing on stream {:?} within {:.1} s",
                a.stream,
                a.timeout.unwrap_or_default().as_secs_f64()
            ),
        ));
    }
    Ok(())
}

// ----- dead letters --------------------------------------------------------

/// How long the error mailbox must stay silent before a read through MLM
/// takes it as emptied (stored mail comes right after the OPEN).
const DRAINED: Duration = Duration::from_secs(1);

fn dead(a: &DeadArgs) -> Result<(), Failure> {
    match (&a.api, &a.action) {
        (Some(api), action) => dead_api(a, api.trim_end_matches('/'), action),
        (None, DeadAction::List { json, .. }) => dead_mailbox_list(a, *json),
        (None, DeadAction::Purge { .. }) => {
            let mut brokers = connect(&a.conn, &a.mailbox)?;
            let n = receive(&mut brokers, None, Some(DRAINED), |_| true)?;
            let _ = brokers.close();
            println!("purged {n} dead letter(s) from {:?}", a.mailbox);
            Ok(())
        }
        (None, DeadAction::Replay { file: Some(f), .. }) => replay_file(a, f),
        (None, _) => Err((
            exit::USAGE,
            "without --api only `dead list`, `dead purge` and `dead replay --file` work \
             (the real Malamute keeps no dead letters apart: they are mail, read by consuming it)"
                .into(),
        )),
    }
}

/// A mail of the error mailbox read as the admin API reads it
/// ([`Letter`]): the same JSON whichever way the letters were listed,
/// without an id (mail read over MLM has none).
fn letter_of(d: Delivery) -> Value {
    let held = Held {
        id: 0,
        sender: d.sender,
        subject: d.subject,
        tracker: d.tracker,
        content: d.content,
        expires: None,
        deliveries: 0,
    };
    let mut v = Letter::read(&held).to_json(false);
    v["id"] = Value::Null;
    v
}

fn dead_mailbox_list(a: &DeadArgs, json_out: bool) -> Result<(), Failure> {
    eprintln!(
        "alas: reading mailbox {:?} over MLM: the letters are consumed (save them with --json to replay later)",
        a.mailbox
    );
    let mut brokers = connect(&a.conn, &a.mailbox)?;
    let n = receive(&mut brokers, None, Some(DRAINED), |d| {
        let letter = letter_of(d);
        emit(&if json_out {
            letter.to_string()
        } else {
            letter_line(&letter)
        })
    })?;
    let _ = brokers.close();
    if n == 0 {
        return Err((exit::NOTHING, format!("no dead letters in {:?}", a.mailbox)));
    }
    Ok(())
}

/// One letter as a line of text.
fn letter_line(l: &Value) -> String {
    let s = |k: &str| match &l[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    };
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}",
        s("id"),
        s("when"),
        s("address"),
        s("subject"),
        s("outcome"),
        s("reason")
    )
}

/// The frames of a saved JSON object (`{"frames": [{"text"}|{"base64"}]}`).
fn frames_of(v: &Value) -> Result<Vec<Vec<u8>>, String> {
    v["frames"]
        .as_array()
        .ok_or("no \"frames\" list")?
        .iter()
        .map(frame_of)
        .collect()
}

/// The request a saved line holds: a `dead list --json` line is a letter;
/// a `read --json` line is the mail, whose frames hold the letter.
fn saved_request(v: &Value) -> Result<(String, String, Vec<Vec<u8>>), String> {
    if v.get("format").is_none() {
        let held = Held {
            id: 0,
            sender: v["sender"].as_str().unwrap_or_default().into(),
            subject: v["subject"].as_str().unwrap_or_default().into(),
            tracker: String::new(),
            content: frames_of(v)?,
            expires: None,
            deliveries: 0,
        };
        let l = Letter::read(&held);
        return match l.address() {
            Some(a) => Ok((a.to_string(), l.subject().to_string(), l.frames()?)),
            None => Err(NO_SERVICE.into()),
        };
    }
    match (v["address"].as_str(), v["subject"].as_str()) {
        (Some(a), Some(s)) => Ok((a.to_string(), s.to_string(), frames_of(v)?)),
        _ => Err(NO_SERVICE.into()),
    }
}

const NO_SERVICE: &str =
    "the letter does not name its service (the original two-frame format cannot be replayed)";

fn replay_file(a: &DeadArgs, file: &std::path::Path) -> Result<(), Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| (exit::USAGE, format!("{}: {e}", file.display())))?;
    let mut plan = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{} line {}", file.display(), i + 1);
        let v: Value = serde_json::from_str(line)
            .map_err(|e| (exit::USAGE, format!("{at}: not JSON: {e}")))?;
        plan.push(saved_request(&v).map_err(|e| (exit::USAGE, format!("{at}: {e}")))?);
    }
    if plan.is_empty() {
        return Err((exit::EMPTY_INPUT, format!("{}: no letters", file.display())));
    }
    let mut brokers = connect(&a.conn, &unique_name())?;
    for (address, subject, frames) in plan.iter().cloned() {
        // The first usable broker (the one that answered, with several).
        let to = match brokers.pick(Instant::now()) {
            Pick::Use(b) => b,
            Pick::Wait | Pick::NoBroker => 0,
        };
        brokers
            .client(to)
            .sendfor(&address, &subject, "", 0, frames)
            .map_err(|e| (exit::OTHER, format!("sending: {e}")))?;
    }
    for (_, r) in brokers.close() {
        match r {
            Ok(()) => {}
            Err(ClientError::Rejected(refused)) => {
                return Err((
                    exit::REFUSED_FULL,
                    format!("the broker refused {} replay(s)", refused.len()),
                ))
            }
            Err(e) => return Err((exit::OTHER, format!("closing: {e}"))),
        }
    }
    println!("replayed {} dead letter(s)", plan.len());
    Ok(())
}

/// Calls the admin API; the JSON answer, or the failure to report.
fn api_call(a: &DeadArgs, url: &str, method: &str, body: Option<Value>) -> Result<Value, Failure> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(
            a.conn.connect_timeout.max(1000),
        )))
        .build()
        .into();
    let auth = a.token.as_ref().map(|t| format!("Bearer {t}"));
    let result = match method {
        "GET" => {
            let mut r = agent.get(url);
            if let Some(v) = &auth {
                r = r.header("Authorization", v);
            }
            r.call()
        }
        "DELETE" => {
            // The admin API takes changes as JSON only (a form another
            // site posts cannot be one), DELETE included.
            let mut r = agent.delete(url).header("Content-Type", "application/json");
            if let Some(v) = &auth {
                r = r.header("Authorization", v);
            }
            r.call()
        }
        _ => {
            let mut r = agent.post(url).header("Content-Type", "application/json");
            if let Some(v) = &auth {
                r = r.header("Authorization", v);
            }
            r.send(body.unwrap_or(json!({})).to_string())
        }
    };
    let mut resp = result.map_err(|e| (exit::UNREACHABLE, format!("{url}: {e}")))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| (exit::OTHER, format!("{url}: reading the answer: {e}")))?;
    match status {
        200..=299 => serde_json::from_str(&text)
            .map_err(|e| (exit::OTHER, format!("{url}: the answer is not JSON: {e}"))),
        401 | 403 => Err((exit::AUTH, format!("{url}: {status} {}", text.trim()))),
        404 => Err((exit::NOT_FOUND, format!("{url}: {}", text.trim()))),
        _ => Err((exit::OTHER, format!("{url}: {status} {}", text.trim()))),
    }
}

fn dead_api(a: &DeadArgs, api: &str, action: &DeadAction) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match action {
        DeadAction::List {
            json: json_out,
            limit,
            subject,
            reason,
        } => {
            let mut url = format!("{api}/v1/dead?limit={limit}");
            if let Some(s) = subject {
                url += &format!("&subject={}", percent_encode(s));
            }
            if let Some(r) = reason {
                url += &format!("&reason={}", percent_encode(r));
            }
            let v = api_call(a, &url, "GET", None)?;
            let letters = v["letters"].as_array().cloned().unwrap_or_default();
            for l in &letters {
                let line = if *json_out {
                    l.to_string()
                } else {
                    letter_line(l)
                };
                let _ = writeln!(stdout, "{line}");
            }
            eprintln!(
                "alas: {} of {} dead letter(s) in {:?} (nothing consumed)",
                letters.len(),
                v["total"],
                v["mailbox"].as_str().unwrap_or_default()
            );
            if letters.is_empty() {
                return Err((exit::NOTHING, "no dead letters".into()));
            }
            Ok(())
        }
        DeadAction::Show { id } => {
            let v = api_call(a, &format!("{api}/v1/dead/{id}"), "GET", None)?;
            let _ = writeln!(
                stdout,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            );
            Ok(())
        }
        DeadAction::Delete { ids } => {
            for id in ids {
                api_call(a, &format!("{api}/v1/dead/{id}"), "DELETE", None)?;
                let _ = writeln!(stdout, "deleted {id}");
            }
            Ok(())
        }
        DeadAction::Purge { subject, reason } => {
            let v = api_call(
                a,
                &format!("{api}/v1/dead/purge"),
                "POST",
                Some(json!({ "subject": subject, "reason": reason })),
            )?;
            let _ = writeln!(stdout, "purged {} dead letter(s)", v["purged"]);
            Ok(())
        }
        DeadAction::Replay {
            ids,
            all,
            file,
            subject,
            reason,
            keep,
            reply_to,
        } => {
            if let Some(f) = file {
                return replay_file(a, f);
            }
            let options = json!({ "keep": keep, "reply_to": reply_to });
            let mut answers = Vec::new();
            if *all {
                let mut body = options.clone();
                body["subject"] = json!(subject);
                body["reason"] = json!(reason);
                answers.push(api_call(
                    a,
                    &format!("{api}/v1/dead/replay"),
                    "POST",
                    Some(body),
                )?);
            } else if ids.is_empty() {
                return Err((
                    exit::USAGE,
                    "replay: give letter ids, --all or --file".into(),
                ));
            } else {
                for id in ids {
                    answers.push(api_call(
                        a,
                        &format!("{api}/v1/dead/{id}/replay"),
                        "POST",
                        Some(options.clone()),
                    )?);
                }
            }
            let mut failed = 0;
            for v in answers {
                for r in v["replayed"].as_array().into_iter().flatten() {
                    let _ = writeln!(
                        stdout,
                        "replayed {} to {} subject {} (request {})",
                        r["dead"], r["address"], r["subject"], r["request"]
                    );
                }
                for f in v["failed"].as_array().into_iter().flatten() {
                    failed += 1;
                    eprintln!("alas: dead letter {}: {}", f["dead"], f["error"]);
                }
            }
            if failed > 0 {
                return Err((exit::OTHER, format!("{failed} replay(s) failed")));
            }
            Ok(())
        }
    }
}
