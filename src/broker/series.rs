//! The console's time series: per service, the queue depth, requests per
//! second, redeliveries and dead letters over the last minutes, sampled at a
//! fixed resolution and kept in memory, bounded (a fixed number of samples
//! per series and of services). Time is an argument, so it is tested
//! without sockets or clocks. The router samples it in `RouterOps::publish`
//! and serves it as `GET /v1/series`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One service's counters as the core has them at a sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Requests queued now.
    pub depth: u64,
    /// Requests dispatched since start (a counter).
    pub dispatched: u64,
    /// Redeliveries since start (a counter).
    pub redeliveries: u64,
    /// Dead letters stored now.
    pub dead_letters: u64,
}

/// The points of one service.
#[derive(Default)]
struct Lines {
    depth: VecDeque<u64>,
    rate: VecDeque<f64>,
    redeliveries: VecDeque<u64>,
    dead_letters: VecDeque<u64>,
    last: Option<Sample>,
}

/// Bounded in-memory series at a fixed resolution.
pub struct Series {
    resolution: Duration,
    keep: usize,
    max_services: usize,
    next: Option<Instant>,
    services: BTreeMap<String, Lines>,
}

impl Series {
    /// `keep` samples every `resolution` (900 at 1 s = 15 minutes), for at
    /// most `max_services` services (others are not drawn).
    pub fn new(resolution: Duration, keep: usize, max_services: usize) -> Series {
        Series {
            resolution: resolution.max(Duration::from_millis(1)),
            keep: keep.max(2),
            max_services,
            next: None,
            services: BTreeMap::new(),
        }
    }

    /// Whether a sample is due at `now` (the router asks before gathering).
    pub fn due(&self, now: Instant) -> bool {
        self.next.is_none_or(|n| now >= n)
    }

    /// Records one sample of every service at `now`. Counters give a rate
    /// and a count per interval; a service gone from `samples` is dropped.
    pub fn record(&mut self, now: Instant, samples: &[(String, Sample)]) {
        self.next = Some(crate::time::after(now, self.resolution));
        let secs = self.resolution.as_secs_f64();
        self.services
            .retain(|name, _| samples.iter().any(|(n, _)| n == name));
        for (name, s) in samples {
            if !self.services.contains_key(name) && self.services.len() >= self.max_services {
                continue;
            }
            let keep = self.keep;
            let l = self.services.entry(name.clone()).or_default();
            let (rate, redelivered) = match &l.last {
                Some(p) => (
                    s.dispatched.saturating_sub(p.dispatched) as f64 / secs,
                    s.redeliveries.saturating_sub(p.redeliveries),
                ),
                None => (0.0, 0),
            };
            push(&mut l.depth, s.depth, keep);
            push(&mut l.rate, rate, keep);
            push(&mut l.redeliveries, redelivered, keep);
            push(&mut l.dead_letters, s.dead_letters, keep);
            l.last = Some(s.clone());
        }
    }

    /// `{"resolution_seconds": r, "services": {name: {"depth": [..],
    /// "requests_per_second": [..], "redeliveries": [..], "dead_letters": [..]}}}`,
    /// oldest point first.
    pub fn to_json(&self) -> Value {
        let services: serde_json::Map<String, Value> = self
            .services
            .iter()
            .map(|(n, l)| {
                (
                    n.clone(),
                    json!({
                        "depth": l.depth,
                        "requests_per_second": l.rate,
                        "redeliveries": l.redeliveries,
                        "dead_letters": l.dead_letters,
                    }),
                )
            })
            .collect();
        json!({ "resolution_seconds": self.resolution.as_secs_f64(), "services": services })
    }
}

/// Appends `v`, dropping the oldest point beyond `keep`.
fn push<T>(q: &mut VecDeque<T>, v: T, keep: usize) {
    if q.len() == keep {
        q.pop_front();
    }
    q.push_back(v);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(depth: u64, dispatched: u64) -> Sample {
        Sample {
            depth,
            dispatched,
            ..Sample::default()
        }
    }

    #[test]
    fn rates_come_from_counters_and_points_stay_bounded() {
        let t0 = Instant::now();
        let mut series = Series::new(Duration::from_secs(1), 3, 10);
        assert!(series.due(t0));
        for i in 0..5u64 {
            let now = t0 + Duration::from_secs(i);
            assert!(series.due(now));
            series.record(now, &[("echo".into(), s(i, i * 10))]);
            assert!(!series.due(now + Duration::from_millis(500)));
        }
        let j = series.to_json();
        assert_eq!(j["services"]["echo"]["depth"], json!([2, 3, 4]));
        assert_eq!(
            j["services"]["echo"]["requests_per_second"],
            json!([10.0, 10.0, 10.0])
        );
    }

    #[test]
    fn services_are_bounded_and_gone_ones_dropped() {
        let t0 = Instant::now();
        let mut series = Series::new(Duration::from_secs(1), 10, 1);
        series.record(t0, &[("a".into(), s(1, 0)), ("b".into(), s(1, 0))]);
        assert!(series.to_json()["services"].get("b").is_none());
        series.record(t0 + Duration::from_secs(1), &[("b".into(), s(1, 0))]);
        let j = series.to_json();
        assert!(j["services"].get("a").is_none());
        assert_eq!(j["services"]["b"]["depth"], json!([1]));
    }
}
