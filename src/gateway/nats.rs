//! The gateway's relay for `nats://` endpoints: the same commands from the
//! HTTP thread as [`super::relay`], carried out with `async-nats` on a
//! runtime thread of its own. A request is a core NATS request to
//! `<service>.<subject>`: `200` with the reply, `502` for a reply with
//! NATS micro's error header, `504` when none comes in time, `503` when
//! no worker serves the subject (NATS says so at once), `501` for a
//! delay (NATS holds no delayed requests). With `jetstream` a request is
//! first stored in the stream that holds `<service>.<subject>` (with the
//! reply inbox in the `Alaska-Reply` header the worker answers to), then
//! its reply awaited with the same statuses; `503` when no stream stores
//! it. A mail is a publish to
//! `<address>.<subject>`, a stream post a publish to `<stream>.<subject>`
//! (`202` each).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::relay::Command;
use super::{GatewayOptions, Shared};
use crate::ops::http::HttpResponse;

/// How often the loop looks at the stop flag and beats for the watchdog.
const TICK: Duration = Duration::from_millis(100);

/// Runs until the gateway stops.
pub(crate) fn run(opts: GatewayOptions, rx: Receiver<Command>, shared: Arc<Shared>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("gateway NATS runtime: {e}");
            return;
        }
    };
    // The HTTP thread's channel is a blocking one: a thread hands its
    // commands to the runtime (it ends when the HTTP side drops it).
    let (tx, mut cmds) = tokio::sync::mpsc::unbounded_channel();
    let bridge = std::thread::Builder::new()
        .name("alaska-gateway-nats".into())
        .spawn(move || {
            while let Ok(c) = rx.recv() {
                if tx.send(c).is_err() {
                    break;
                }
            }
        });
    if let Err(e) = bridge {
        tracing::error!("gateway NATS thread: {e}");
        return;
    }
    rt.block_on(async move {
        let servers: Vec<String> = opts
            .endpoint
            .split(',')
            .map(|s| s.trim().to_string())
            .collect();
        let flag = shared.clone();
        let mut o = async_nats::ConnectOptions::new()
            .name(opts.address.clone())
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(opts.broker_timeout.max(Duration::from_millis(100)))
            .event_callback(move |e| {
                let flag = flag.clone();
                async move {
                    match e {
                        async_nats::Event::Connected => {
                            tracing::info!("NATS connected");
                            flag.connected.store(true, Ordering::SeqCst);
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!("NATS connection lost; reconnecting");
                            flag.connected.store(false, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                }
            });
        if let Some(c) = &opts.plain {
            o = o.user_and_password(c.username.clone(), c.password.clone());
        }
        let client = match o.connect(servers.as_slice()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("gateway: NATS {}: {e}", opts.endpoint);
                return;
            }
        };
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                c = cmds.recv() => match c {
                    Some(c) => carry_out(&client, opts.jetstream, c),
                    None => break,
                },
                _ = tick.tick() => {
                    shared.liveness.beat();
                    if shared.stop.load(Ordering::SeqCst) {
                        break;
                    }
                }
            }
        }
        let _ = client.flush().await;
        shared.connected.store(false, Ordering::SeqCst);
    });
    // Requests still waiting were dropped with the runtime's tasks: each
    // Answer dropped says 503 ("gateway stopping").
}

/// One command: a request waits on a task of its own.
fn carry_out(client: &async_nats::Client, jetstream: bool, c: Command) {
    let client = client.clone();
    match c {
        Command::Request {
            service,
            subject,
            body,
            timeout,
            delay,
            answer,
        } => {
            if !delay.is_zero() {
                return answer.finish(HttpResponse::text(
                    501,
                    "delay: NATS holds no delayed requests",
                ));
            }
            if jetstream {
                tokio::spawn(async move {
                    let to = format!("{service}.{subject}");
                    let response = through_jetstream(&client, to, body, timeout).await;
                    answer.finish(response);
                });
                return;
            }
            tokio::spawn(async move {
                let to = format!("{service}.{subject}");
                let r = tokio::time::timeout(timeout, client.request(to, body.into())).await;
                let response = match r {
                    Ok(Ok(m)) => reply_response(&m),
                    Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                        HttpResponse::text(503, &format!("no worker serves {service}/{subject}"))
                    }
                    Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                        HttpResponse::text(504, "no reply in time")
                    }
                    Ok(Err(e)) => HttpResponse::text(503, &format!("NATS: {e}")),
                    Err(_) => HttpResponse::text(504, "no reply in time"),
                };
                answer.finish(response);
            });
        }
        Command::Mail {
            address,
            subject,
            body,
            answer,
        } => publish(client, format!("{address}.{subject}"), body, answer),
        Command::Stream {
            stream,
            subject,
            body,
            answer,
        } => publish(client, format!("{stream}.{subject}"), body, answer),
    }
}

/// A request through JetStream: its reply inbox subscribed first, the
/// request stored (acknowledged by the stream), then the reply awaited.
async fn through_jetstream(
    client: &async_nats::Client,
    to: String,
    body: Vec<u8>,
    timeout: Duration,
) -> HttpResponse {
    use futures_util::StreamExt;
    let inbox = client.new_inbox();
    let mut sub = match client.subscribe(inbox.clone()).await {
        Ok(s) => s,
        Err(e) => return HttpResponse::text(503, &format!("NATS: {e}")),
    };
    let mut h = async_nats::HeaderMap::new();
    h.insert("Alaska-Reply", inbox.as_str());
    let js = async_nats::jetstream::new(client.clone());
    let stored = async {
        js.publish_with_headers(to.clone(), h, body.into())
            .await?
            .await
            .map_err(|e| e.to_string().into())
    };
    let stored: Result<_, Box<dyn std::error::Error + Send + Sync>> =
        match tokio::time::timeout(timeout, stored).await {
            Ok(r) => r,
            Err(_) => Err("the stream did not answer in time".into()),
        };
    if let Err(e) = stored {
        return HttpResponse::text(503, &format!("no JetStream stream stored {to}: {e}"));
    }
    match tokio::time::timeout(timeout, sub.next()).await {
        Ok(Some(m)) => reply_response(&m),
        _ => HttpResponse::text(504, "stored, but no reply in time"),
    }
}

/// A worker's reply as the HTTP answer: `502` with the text for an error
/// reply (NATS micro's error header), else `200` with the payload.
fn reply_response(m: &async_nats::Message) -> HttpResponse {
    match m.headers.as_ref().and_then(|h| h.get("Nats-Service-Error")) {
        Some(_) => HttpResponse::new(502, "text/plain; charset=utf-8", m.payload.to_vec()),
        None => HttpResponse::new(200, "application/octet-stream", m.payload.to_vec()),
    }
}

fn publish(client: async_nats::Client, to: String, body: Vec<u8>, answer: super::relay::Answer) {
    tokio::spawn(async move {
        let response = match client.publish(to, body.into()).await {
            Ok(()) => HttpResponse::text(202, "accepted"),
            Err(e) => HttpResponse::text(503, &format!("NATS: {e}")),
        };
        answer.finish(response);
    });
}
