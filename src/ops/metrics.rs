//! A metrics registry for hot paths, rendered as Prometheus text.
//!
//! Built on the `prometheus` crate (TiKV's client): counters and gauges are
//! atomics, and a histogram observation is a few atomic adds on a "hot"
//! shard while a scrape reads the other one, so recording never takes a
//! lock. What does take a lock is resolving a *labelled* child
//! (`with_label_values` reads a `RwLock`ed map); [`LabelCache`] keeps the
//! children a thread uses in a map of its own, so after the first request
//! of each label set the hot path is a lookup in a thread-owned map plus an
//! atomic add. Label values that come from the outside (subjects, paths)
//! are capped in number, so a client cannot grow the series without bound.
//!
//! [`Metrics::render`] gives the text exposition format 0.0.4
//! ([`CONTENT_TYPE`]) that Prometheus scrapes.

use std::collections::HashMap;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{Encoder, HistogramOpts, Opts, TextEncoder};

pub use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, PullingGauge,
};

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency buckets in seconds, from 100 µs to 30 s: requests through a
/// broker on one machine take about a millisecond, scripts may take
/// seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Errors of the registry: a name registered twice or not a valid
/// Prometheus name. Both are programming errors found at start-up.
#[derive(Debug, thiserror::Error)]
#[error("metric {name}: {source}")]
pub struct MetricsError {
    /// The metric's full name.
    pub name: String,
    /// What the prometheus crate said.
    #[source]
    pub source: prometheus::Error,
}

/// A registry whose metric names all start with one prefix (e.g.
/// `alaska_gateway`).
#[derive(Clone)]
pub struct Metrics {
    registry: prometheus::Registry,
    prefix: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl Metrics {
    /// An empty registry; `prefix` and `_` are put before every name.
    pub fn new(prefix: &str) -> Metrics {
        Metrics {
            registry: prometheus::Registry::new(),
            prefix: prefix.to_string(),
        }
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}_{name}", self.prefix)
        }
    }

    fn register<C: Collector + Clone + 'static>(
        &self,
        name: &str,
        made: Result<C, prometheus::Error>,
    ) -> Result<C, MetricsError> {
        let err = |source| MetricsError {
            name: self.full(name),
            source,
        };
        let c = made.map_err(err)?;
        self.registry.register(Box::new(c.clone())).map_err(err)?;
        Ok(c)
    }

    /// A counter (name should end in `_total`).
    pub fn counter(&self, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
        self.register(
            name,
            IntCounter::with_opts(Opts::new(self.full(name), help)),
        )
    }

    /// A counter with labels.
    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, MetricsError> {
        self.register(
            name,
            IntCounterVec::new(Opts::new(self.full(name), help), labels),
        )
    }

    /// A gauge.
    pub fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
        self.register(name, IntGauge::with_opts(Opts::new(self.full(name), help)))
    }

    /// A gauge with labels.
    pub fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, MetricsError> {
        self.register(
            name,
            IntGaugeVec::new(Opts::new(self.full(name), help), labels),
        )
    }

    /// A gauge read at scrape time from `value` (for numbers another part
    /// of the program already keeps, such as a queue length in an atomic).
    pub fn gauge_fn(
        &self,
        name: &str,
        help: &str,
        value: impl Fn() -> f64 + Send + Sync + 'static,
    ) -> Result<PullingGauge, MetricsError> {
        self.register(
            name,
            PullingGauge::new(self.full(name), help, Box::new(value)),
        )
    }

    /// A histogram with the given bucket upper bounds.
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, MetricsError> {
        let opts = HistogramOpts::new(self.full(name), help).buckets(buckets.to_vec());
        self.register(name, Histogram::with_opts(opts))
    }

    /// A histogram with labels.
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<HistogramVec, MetricsError> {
        let opts = HistogramOpts::new(self.full(name), help).buckets(buckets.to_vec());
        self.register(name, HistogramVec::new(opts, labels))
    }

    /// Everything registered, as Prometheus text ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(4096);
        // Encoding into a Vec only fails on a metric family with no
        // metrics of a known type, which the typed constructors above
        // cannot make.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!("rendering metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The value that stands for every label value past a [`LabelCache`]'s
/// limit.
pub const OTHER: &str = "_other";

/// A thread's own map of the labelled children it uses, so that recording
/// takes no lock after the first use of a label set. Past `limit` distinct
/// label sets, new ones are counted under [`OTHER`].
pub struct LabelCache<T: MetricVecBuilder> {
    vec: MetricVec<T>,
    children: HashMap<String, T::M>,
    other: Option<T::M>,
    limit: usize,
    key: String,
}

impl<T: MetricVecBuilder> LabelCache<T> {
    /// A cache over `vec` holding at most `limit` label sets.
    pub fn new(vec: MetricVec<T>, limit: usize) -> Self {
        LabelCache {
            vec,
            children: HashMap::new(),
            other: None,
            limit,
            key: String::new(),
        }
    }

    /// The child for `values` (one per label, in the vec's order).
    pub fn get(&mut self, values: &[&str]) -> &T::M {
        self.key.clear();
        for v in values {
            self.key.push_str(v);
            // A separator no label value of ours contains, so ("a","bc")
            // and ("ab","c") stay apart.
            self.key.push('\u{1f}');
        }
        if self.children.contains_key(self.key.as_str()) {
            return &self.children[self.key.as_str()];
        }
        if self.children.len() >= self.limit {
            let vec = &self.vec;
            return self.other.get_or_insert_with(|| {
                let others: Vec<&str> = values.iter().map(|_| OTHER).collect();
                vec.with_label_values(&others)
            });
        }
        let child = self.vec.with_label_values(values);
        self.children.entry(self.key.clone()).or_insert(child)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new("alaska_test");
        let c = m.counter("things_total", "Things done.").unwrap();
        let v = m
            .counter_vec("by_status_total", "By status.", &["status"])
            .unwrap();
        let h = m.histogram("seconds", "Latency.", &[0.1, 1.0]).unwrap();
        m.gauge_fn("answer", "Pulled.", || 42.0).unwrap();
        c.inc_by(3);
        v.with_label_values(&["200"]).inc();
        h.observe(0.5);
        let text = m.render();
        assert!(
            text.contains("# TYPE alaska_test_things_total counter\nalaska_test_things_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("alaska_test_by_status_total{status=\"200\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("alaska_test_seconds_bucket{le=\"0.1\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("alaska_test_seconds_bucket{le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("alaska_test_seconds_count 1\n"), "{text}");
        assert!(text.contains("alaska_test_answer 42\n"), "{text}");
    }

    #[test]
    fn a_name_twice_is_an_error() {
        let m = Metrics::new("x");
        m.counter("a_total", "A.").unwrap();
        let e = m.counter("a_total", "A.").unwrap_err();
        assert_eq!(e.name, "x_a_total");
        assert!(m.counter("bad name", "B.").is_err());
    }

    #[test]
    fn the_cache_shares_children_and_caps_label_sets() {
        let m = Metrics::new("x");
        let v = m
            .counter_vec("req_total", "R.", &["subject", "outcome"])
            .unwrap();
        let mut cache = LabelCache::new(v.clone(), 2);
        cache.get(&["a", "done"]).inc();
        cache.get(&["a", "done"]).inc();
        cache.get(&["ab", "c"]).inc();
        cache.get(&["a", "bc"]).inc(); // over the limit
        cache.get(&["z", "fail"]).inc(); // over the limit
        assert_eq!(v.with_label_values(&["a", "done"]).get(), 2);
        assert_eq!(v.with_label_values(&["ab", "c"]).get(), 1);
        assert_eq!(v.with_label_values(&[OTHER, OTHER]).get(), 2);
        // Children already cached stay usable past the limit.
        cache.get(&["a", "done"]).inc();
        assert_eq!(v.with_label_values(&["a", "done"]).get(), 3);
    }
}
