//! The HTTP side: parses `/v1/...` paths, admits or refuses at once
//! (`400`, `404`, `429`, `503`), and hands the rest to the relay thread.
//! Runs on the HTTP thread and never blocks: a bounded channel
//! (`try_send`), a wake-up byte, atomics.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};

use super::metrics::Endpoint;
use super::relay::{Answer, Command};
use super::{GatewayOptions, Shared};
use crate::ops::http::{reply_channel, Health, HttpRequest, HttpResponse, Method, Reply, Router};
use crate::ops::wake::Waker;

/// Longest address, subject or stream name: MLM strings are at most 255
/// bytes.
const MAX_NAME: usize = 255;

#[derive(Clone)]
pub(crate) struct Api {
    tx: Sender<Command>,
    waker: Waker,
    shared: Arc<Shared>,
    default_timeout: Duration,
    max_timeout: Duration,
    max_waiting: i64,
    verbose: bool,
}

impl Api {
    pub(crate) fn new(
        opts: &GatewayOptions,
        tx: Sender<Command>,
        waker: Waker,
        shared: Arc<Shared>,
    ) -> Api {
        Api {
            tx,
            waker,
            shared,
            default_timeout: opts.default_timeout,
            max_timeout: opts.max_timeout,
            max_waiting: i64::try_from(opts.max_waiting).unwrap_or(i64::MAX),
            verbose: opts.verbose,
        }
    }

    pub(crate) fn router(self) -> Router {
        let health = self.shared.clone();
        let metrics = self.shared.metrics.registry().clone();
        let (a, b, c) = (self.clone(), self.clone(), self);
        Router::new()
            .health(move || {
                if health.stopping.load(Ordering::Relaxed) {
                    Health::Down("stopping".into())
                } else if health.connected.load(Ordering::Relaxed) {
                    Health::Up("ok".into())
                } else {
                    Health::Down("broker not connected".into())
                }
            })
            .metrics(metrics)
            .route_prefix(Method::POST, "/v1/request/", move |r| {
                a.post(Endpoint::Request, "/v1/request/", r)
            })
            .route_prefix(Method::POST, "/v1/mail/", move |r| {
                b.post(Endpoint::Mail, "/v1/mail/", r)
            })
            .route_prefix(Method::POST, "/v1/stream/", move |r| {
                c.post(Endpoint::Stream, "/v1/stream/", r)
            })
    }

    fn now(&self, endpoint: Endpoint, response: HttpResponse) -> Reply {
        self.shared.metrics.count(endpoint, response.status);
        Reply::Now(response)
    }

    fn post(&self, endpoint: Endpoint, prefix: &str, req: HttpRequest) -> Reply {
        let rest = &req.path[prefix.len()..];
        let Some((name, subject)) = rest.split_once('/') else {
            return self.now(
                endpoint,
                HttpResponse::text(404, "expected .../<name>/<subject>"),
            );
        };
        if subject.contains('/') {
            return self.now(
                endpoint,
                HttpResponse::text(404, "expected .../<name>/<subject>"),
            );
        }
        let (name, subject) = match (decode_name(name), decode_name(subject)) {
            (Ok(n), Ok(s)) => (n, s),
            (Err(e), _) | (_, Err(e)) => return self.now(endpoint, HttpResponse::text(400, &e)),
        };
        let timeout = match self.timeout(&req) {
            Ok(t) => t,
            Err(e) => return self.now(endpoint, HttpResponse::text(400, &e)),
        };
        let delay = match req.query_param("delay") {
            None => Duration::ZERO,
            Some(_) if endpoint != Endpoint::Request => {
                return self.now(
                    endpoint,
                    HttpResponse::text(400, "delay is for /v1/request only"),
                )
            }
            Some(v) => match crate::config::parse_duration(v) {
                Some(d) => d,
                None => {
                    return self.now(
                        endpoint,
                        HttpResponse::text(
                            400,
                            &format!("delay: {v:?} is not milliseconds or a duration (250ms, 2s, 5m, 1h) up to a year"),
                        ),
                    )
                }
            },
        };
        if self.shared.stopping.load(Ordering::Relaxed) {
            return self.now(endpoint, HttpResponse::text(503, "gateway stopping"));
        }
        if !self.shared.connected.load(Ordering::Relaxed) {
            return self.now(endpoint, HttpResponse::text(503, "broker not connected"));
        }
        let admitted = endpoint == Endpoint::Request;
        if admitted {
            let waiting = self
                .shared
                .metrics
                .in_flight
                .fetch_add(1, Ordering::Relaxed);
            if waiting >= self.max_waiting {
                self.shared
                    .metrics
                    .in_flight
                    .fetch_sub(1, Ordering::Relaxed);
                return self.now(
                    endpoint,
                    HttpResponse::text(
                        429,
                        &format!("too many requests waiting (at most {})", self.max_waiting),
                    ),
                );
            }
        }
        let what = self
            .verbose
            .then(|| format!("{name}/{subject} ({} bytes)", req.body.len()).into_boxed_str());
        let (responder, pending) = reply_channel();
        let answer = Answer::new(
            responder,
            endpoint,
            req.received,
            self.shared.metrics.clone(),
            admitted,
            what,
        );
        let body = req.body;
        let cmd = match endpoint {
            Endpoint::Request => Command::Request {
                service: name,
                subject,
                body,
                timeout,
                delay,
                answer,
            },
            Endpoint::Mail => Command::Mail {
                address: name,
                subject,
                body,
                answer,
            },
            Endpoint::Stream => Command::Stream {
                stream: name,
                subject,
                body,
                answer,
            },
        };
        match self.tx.try_send(cmd) {
            Ok(()) => self.waker.wake(),
            Err(TrySendError::Full(cmd)) => cmd
                .into_answer()
                .finish(HttpResponse::text(429, "gateway queue full")),
            // The relay is gone: the Answer dropped with it says 503.
            Err(TrySendError::Disconnected(_)) => {}
        }
        Reply::Later(pending)
    }

    fn timeout(&self, req: &HttpRequest) -> Result<Duration, String> {
        match req.query_param("timeout") {
            None => Ok(self.default_timeout),
            Some(v) => match v.parse::<u64>() {
                Ok(0) | Err(_) => Err(format!(
                    "timeout: {v:?} is not a number of milliseconds above 0"
                )),
                Ok(ms) => Ok(Duration::from_millis(ms).min(self.max_timeout)),
            },
        }
    }
}

/// A path segment, percent-decoded, as an MLM name: UTF-8, 1 to 255
/// bytes.
fn decode_name(segment: &str) -> Result<String, String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {segment:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).map_err(|_| format!("{segment:?} is not UTF-8"))?;
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("{segment:?}: names are 1 to {MAX_NAME} bytes"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_decoded_and_bounded() {
        assert_eq!(decode_name("svc").unwrap(), "svc");
        assert_eq!(decode_name("a%2Fb%20c").unwrap(), "a/b c");
        assert_eq!(decode_name("%C3%A9t%C3%A9").unwrap(), "été");
        assert!(decode_name("").is_err());
        assert!(decode_name("%zz").is_err());
        assert!(decode_name("%4").is_err());
        assert!(decode_name("%ff").is_err(), "not UTF-8");
        assert!(decode_name(&"x".repeat(256)).is_err());
        assert!(decode_name(&"x".repeat(255)).is_ok());
    }
}
