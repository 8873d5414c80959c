//! The gateway's metrics, all under `alaska_gateway_`. Every labelled child
//! is created here, once, so recording a request is atomic adds only (no
//! map lookup, no lock) whichever thread records it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::ops::metrics::{
    Histogram, IntCounter, IntGauge, Metrics, MetricsError, LATENCY_BUCKETS,
};

/// What an HTTP request asked for (the `endpoint` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/request/...`.
    Request,
    /// `POST /v1/mail/...`.
    Mail,
    /// `POST /v1/stream/...`.
    Stream,
}

impl Endpoint {
    const ALL: [Endpoint; 3] = [Endpoint::Request, Endpoint::Mail, Endpoint::Stream];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Request => "request",
            Endpoint::Mail => "mail",
            Endpoint::Stream => "stream",
        }
    }
}

/// The statuses the gateway answers with, in label order.
pub const STATUSES: [u16; 10] = [200, 202, 400, 404, 413, 429, 500, 502, 503, 504];

/// The gateway's metric handles.
#[derive(Clone)]
pub struct GatewayMetrics {
    registry: Metrics,
    by_status: Arc<Vec<IntCounter>>,
    other_status: IntCounter,
    /// Requests waiting for a reply (also the admission count).
    pub in_flight: Arc<AtomicI64>,
    /// Seconds from a `/v1/request` arriving to its answer, any status.
    pub latency: Histogram,
    /// Replies to requests already answered (after `504`), discarded.
    pub late_replies: IntCounter,
    /// Mail to our address matching no request of this run, discarded.
    pub unmatched_replies: IntCounter,
    /// Times the broker connection was opened again.
    pub reconnects: IntCounter,
    /// 1 while connected to the broker.
    pub connected: IntGauge,
    /// Refusals from the broker (queue or mailbox full).
    pub broker_refusals: IntCounter,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayMetrics").finish_non_exhaustive()
    }
}

impl GatewayMetrics {
    /// Registers everything in a fresh registry.
    pub fn new() -> Result<GatewayMetrics, MetricsError> {
        let m = Metrics::new("alaska_gateway");
        let requests = m.counter_vec(
            "requests_total",
            "HTTP requests to the service endpoints, by endpoint and status.",
            &["endpoint", "status"],
        )?;
        let mut by_status = Vec::new();
        for e in Endpoint::ALL {
            for s in STATUSES {
                by_status.push(requests.with_label_values(&[e.label(), &s.to_string()]));
            }
        }
        let other_status = requests.with_label_values(&["other", "other"]);
        let in_flight = Arc::new(AtomicI64::new(0));
        let gauge = in_flight.clone();
        m.gauge_fn(
            "requests_in_flight",
            "Requests waiting for a reply from a service.",
            move || gauge.load(Ordering::Relaxed) as f64,
        )?;
        Ok(GatewayMetrics {
            by_status: Arc::new(by_status),
            other_status,
            in_flight,
            latency: m.histogram(
                "request_duration_seconds",
                "Time from a /v1/request arriving to its answer, whatever the status.",
                LATENCY_BUCKETS,
            )?,
            late_replies: m.counter(
                "late_replies_total",
                "Replies that came after their request was answered (504), discarded.",
            )?,
            unmatched_replies: m.counter(
                "unmatched_replies_total",
                "Mail to the gateway's address that matches no request of this run, discarded.",
            )?,
            reconnects: m.counter(
                "broker_reconnects_total",
                "Times the broker connection was opened again after the first.",
            )?,
            connected: m.gauge(
                "broker_connected",
                "1 while connected to the broker, else 0.",
            )?,
            broker_refusals: m.counter(
                "broker_refusals_total",
                "Sends the broker refused because a queue or mailbox was full.",
            )?,
            registry: m,
        })
    }

    /// The registry, for `/metrics`.
    pub fn registry(&self) -> &Metrics {
        &self.registry
    }

    /// Counts one answer to `endpoint` with `status`.
    pub fn count(&self, endpoint: Endpoint, status: u16) {
        let e = Endpoint::ALL
            .iter()
            .position(|x| *x == endpoint)
            .unwrap_or(0);
        match STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.by_status[e * STATUSES.len() + i].inc(),
            None => self.other_status.inc(),
        }
    }

    /// Counts an answer to `/v1/request` and its latency.
    pub fn finished_request(&self, status: u16, took: Duration) {
        self.count(Endpoint::Request, status);
        self.latency.observe(took.as_secs_f64());
    }
}
