//! `alas` on NATS (`-e nats://...`): each request is a core NATS request to
//! `<address>.<subject>` (with `--wait`: its reply printed, an error reply
//! being one with NATS micro's `Nats-Service-Error` header), or with
//! `--jetstream` a work item stored in the stream that holds that subject
//! (its reply, with `--wait`, comes to an inbox named in the
//! `Alaska-Reply` header). The exit statuses are those of MLM.

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;

use super::{exit, Args, Failure};

/// Whether the endpoints are NATS servers.
pub fn is_nats(endpoints: &str) -> bool {
    endpoints
        .split(',')
        .any(|e| alaska::worker::dispatcher::is_nats(e.trim()))
}

/// Sends `requests` over NATS as `args` say.
pub fn run(args: &Args, requests: &[Vec<u8>]) -> Result<(), Failure> {
    if args.delay.is_some() || args.at.is_some() {
        return Err((
            exit::NO_DELAY,
            "--delay/--at: NATS holds no delayed requests".into(),
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (exit::OTHER, format!("runtime: {e}")))?;
    rt.block_on(send(args, requests))
}

async fn send(args: &Args, requests: &[Vec<u8>]) -> Result<(), Failure> {
    let servers: Vec<String> = args
        .endpoint
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let mut o = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_millis(args.timeout.max(1)));
    if let (Some(u), Some(p)) = (&args.user, &args.password) {
        o = o.user_and_password(u.clone(), p.clone());
    }
    let client = o.connect(servers.as_slice()).await.map_err(|e| {
        let text = e.to_string();
        let code = if text.contains("authoriz") {
            exit::AUTH
        } else {
            exit::UNREACHABLE
        };
        (code, format!("connecting: {text}"))
    })?;
    let subject = format!("{}.{}", args.address, args.subject);
    let mut failed = 0;
    let mut late = 0;
    let mut stdout = std::io::stdout();
    let mut print = |body: &[u8]| {
        let _ = stdout.write_all(body);
        let _ = stdout.write_all(b"\n");
        let _ = stdout.flush();
    };
    if args.jetstream {
        let js = async_nats::jetstream::new(client.clone());
        let inbox = client.new_inbox();
        let mut replies = match args.wait {
            Some(_) => Some(
                client
                    .subscribe(inbox.clone())
                    .await
                    .map_err(|e| (exit::OTHER, format!("subscribing: {e}")))?,
            ),
            None => None,
        };
        for body in requests {
            let mut h = async_nats::HeaderMap::new();
            if replies.is_some() {
                h.insert("Alaska-Reply", inbox.as_str());
            }
            let ack = js
                .publish_with_headers(subject.clone(), h, body.clone().into())
                .await
                .map_err(|e| (exit::OTHER, format!("publishing: {e}")))?;
            ack.await.map_err(|e| {
                (
                    exit::REFUSED_FULL,
                    format!("the stream did not store it: {e}"),
                )
            })?;
        }
        if let (Some(sub), Some(wait)) = (replies.as_mut(), args.wait) {
            for _ in requests {
                match tokio::time::timeout(wait, sub.next()).await {
                    Ok(Some(m)) => match error_of(&m) {
                        Some(e) => {
                            failed += 1;
                            eprintln!("alas: error reply: {e}");
                        }
                        None => print(&m.payload),
                    },
                    _ => late += 1,
                }
            }
        }
    } else {
        for body in requests {
            let Some(wait) = args.wait else {
                client
                    .publish(subject.clone(), body.clone().into())
                    .await
                    .map_err(|e| (exit::OTHER, format!("publishing: {e}")))?;
                continue;
            };
            match tokio::time::timeout(wait, client.request(subject.clone(), body.clone().into()))
                .await
            {
                Ok(Ok(m)) => match error_of(&m) {
                    Some(e) => {
                        failed += 1;
                        eprintln!("alas: error reply: {e}");
                    }
                    None => print(&m.payload),
                },
                Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    eprintln!("alas: no worker serves {subject}");
                    late += 1;
                }
                _ => late += 1,
            }
        }
    }
    client
        .flush()
        .await
        .map_err(|e| (exit::OTHER, format!("flushing: {e}")))?;
    if late > 0 {
        return Err((
            exit::REPLY_TIMEOUT,
            format!("no reply for {late} of {} request(s)", requests.len()),
        ));
    }
    if failed > 0 {
        return Err((
            exit::ERROR_REPLY,
            format!("{failed} of {} request(s) failed", requests.len()),
        ));
    }
    Ok(())
}

/// The error text of a NATS micro error reply.
fn error_of(m: &async_nats::Message) -> Option<String> {
    let h = m.headers.as_ref()?;
    let text = h.get("Nats-Service-Error")?.as_str().to_string();
    Some(match h.get("Nats-Service-Error-Code") {
        Some(code) => format!("{text} (code {})", code.as_str()),
        None => text,
    })
}
