//! A histogram of atomics for hot paths: observed with relaxed `fetch_add`s, encoded through
//! `prometheus-client` at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Upper bounds, in seconds, of the latency buckets: the request histograms' (10 µs to ~5 s,
/// doubling).
fn latency_bounds() -> Vec<f64> {
    (0..super::cells::LATENCY_BOUNDS).map(super::cells::latency_bound_s).collect()
}

/// A histogram of atomics: one `fetch_add` per bucket, count and sum per observation.
pub struct AtomicHistogram {
    bounds: Vec<f64>,
    /// Per bucket (not cumulative), plus one for +Inf.
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum of observations in millionths of the unit.
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: Vec<f64>) -> Self {
        let buckets = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram { bounds, buckets, count: AtomicU64::new(0), sum_micros: AtomicU64::new(0) }
    }

    pub fn latency() -> Self {
        AtomicHistogram::new(latency_bounds())
    }

    /// Relaxed: each field is a statistic on its own; a scrape may see one observation in the
    /// count and not yet in the sum, which monitoring tolerates.
    pub fn observe(&self, value: f64) {
        let index = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "clamped at 0 above; a float past u64::MAX saturates, and no latency is that long"
        )]
        let micros = (value.max(0.0) * 1_000_000.0) as u64;
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, elapsed: std::time::Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Encodes into an encoder that a caller already labelled (one family per operation).
    pub fn encode_into(&self, encoder: &mut MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        #[expect(
            clippy::cast_precision_loss,
            reason = "a sum of seconds for monitoring: exact to the microsecond below 2^53 us (285 years)"
        )]
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1_000_000.0;
        encoder.encode_histogram::<NoLabelSet>(sum, self.count(), &buckets, None)
    }
}

impl std::fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AtomicHistogram({} observations)", self.count())
    }
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.encode_into(&mut encoder)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}
