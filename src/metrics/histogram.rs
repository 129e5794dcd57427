//! A latency histogram that many threads add to without a lock: a count per
//! bucket and the sum of what was recorded, as Prometheus histograms need.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

/// The buckets' upper bounds in seconds, from a local server's millisecond to a
/// request that took most of a default `--io-timeout`; above the last, `+Inf`.
pub const BOUNDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// How many fell in each bucket (not cumulative); the last is above every
    /// bound.
    counts: [AtomicU64; BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn record(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BOUNDS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// How many were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// `{"counts": [per bucket, +Inf last], "sum": seconds}`, as the report
    /// carries it (the bounds are [`BOUNDS`], named once in the report).
    pub fn to_json(&self) -> Value {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        json!({ "counts": counts, "sum": sum })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_duration_lands_in_the_first_bucket_that_holds_it() {
        let h = Histogram::default();
        h.record(Duration::from_micros(500)); // ≤ 1 ms
        h.record(Duration::from_millis(1)); // a bound is its own bucket's
        h.record(Duration::from_millis(3)); // ≤ 5 ms
        h.record(Duration::from_secs(60)); // above every bound
        let json = h.to_json();
        let counts: Vec<u64> = serde_json::from_value(json["counts"].clone()).unwrap();
        assert_eq!(counts.len(), BOUNDS.len() + 1);
        assert_eq!(counts[0], 2);
        assert_eq!(counts[2], 1);
        assert_eq!(counts[BOUNDS.len()], 1);
        assert_eq!(h.count(), 4);
        let sum = json["sum"].as_f64().unwrap();
        assert!((sum - 60.0045).abs() < 1e-9, "{sum}");
    }
}
