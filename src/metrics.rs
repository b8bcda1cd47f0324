//! Metrics, exposed at `GET /metrics` in the Prometheus/OpenMetrics text format through the
//! `prometheus-client` registry.
//!
//! Why our own counter tables and histograms rather than the crate's `Family` and `Histogram`:
//! those take a lock per update (a read lock and a hash to find a label set, a write lock per
//! observation), which two cores answering one hot deal would contend on. Ours are fixed
//! arrays of atomics indexed by enums, updated with one relaxed `fetch_add`, and encoded
//! through the crate's `EncodeMetric` at scrape time. Values that are cheap to read when
//! scraped (per-deal counters, open holds, checkpoint age) are read then, not maintained.
//!
//! Every metric name is listed in docs/operations.md, with the dashboard and alert rules built
//! on them (docs/grafana-dashboard.json, docs/prometheus-alerts.yml).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::node::Node;
use crate::wal::{LogState, WalStats};

/// Upper bounds, in seconds, of the latency buckets: 10 µs to ~5 s, doubling.
fn latency_bounds() -> Vec<f64> {
    (0..20).map(|i| 0.000_01 * f64::from(1u32 << i)).collect()
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
        let micros = (value.max(0.0) * 1_000_000.0) as u64;
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn observe_duration(&self, elapsed: std::time::Duration) {
        self.observe(elapsed.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn encode_into(&self, encoder: &mut MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
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

/// The operations requests are counted and timed by (one per route).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Op {
    CreateDeal,
    ListDeals,
    GetDeal,
    PauseDeal,
    ResumeDeal,
    EndDeal,
    AdjustStock,
    EndStream,
    Reserve,
    Cart,
    GetHold,
    Confirm,
    Release,
    Extend,
    Health,
    Metrics,
    /// Requests that matched no route.
    Unrouted,
}

impl Op {
    pub const ALL: [Op; 17] = [
        Op::CreateDeal,
        Op::ListDeals,
        Op::GetDeal,
        Op::PauseDeal,
        Op::ResumeDeal,
        Op::EndDeal,
        Op::AdjustStock,
        Op::EndStream,
        Op::Reserve,
        Op::Cart,
        Op::GetHold,
        Op::Confirm,
        Op::Release,
        Op::Extend,
        Op::Health,
        Op::Metrics,
        Op::Unrouted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Op::CreateDeal => "create_deal",
            Op::ListDeals => "list_deals",
            Op::GetDeal => "get_deal",
            Op::PauseDeal => "pause_deal",
            Op::ResumeDeal => "resume_deal",
            Op::EndDeal => "end_deal",
            Op::AdjustStock => "adjust_stock",
            Op::EndStream => "end_stream",
            Op::Reserve => "reserve",
            Op::Cart => "cart_reserve",
            Op::GetHold => "get_hold",
            Op::Confirm => "confirm",
            Op::Release => "release",
            Op::Extend => "extend",
            Op::Health => "health",
            Op::Metrics => "metrics",
            Op::Unrouted => "unrouted",
        }
    }
}

/// Outcomes: `ok`, or an error code. Indexed by position in this list.
const OUTCOMES: [&str; 28] = [
    "ok",
    "invalid_request",
    "unknown_deal",
    "unknown_hold",
    "unknown_stream",
    "unknown_route",
    "method_not_allowed",
    "body_too_large",
    "deal_exists",
    "too_many_deals",
    "deal_not_started",
    "deal_ended",
    "deal_paused",
    "sold_out",
    "insufficient_stock",
    "per_user_limit",
    "hold_expired",
    "hold_released",
    "hold_confirmed",
    "hold_ttl_exceeded",
    "idempotency_key_reused",
    "idempotency_key_in_use",
    "idempotency_capacity",
    "storage_unavailable",
    "unauthorized",
    "forbidden",
    "rate_limited",
    "internal",
];

fn outcome_index(code: Option<&str>) -> usize {
    let code = code.unwrap_or("ok");
    OUTCOMES.iter().position(|o| *o == code).unwrap_or(OUTCOMES.len() - 1)
}

/// The limits that turn requests or connections away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Limit {
    BodyBytes,
    Connections,
    UserRate,
    IdempotencyKeys,
}

const LIMITS: [&str; 4] = ["body_bytes", "connections", "user_rate", "idempotency_keys"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    op: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

/// Requests by (operation, outcome): a flat array of counters.
#[derive(Debug)]
struct RequestCounters {
    counts: Vec<AtomicU64>,
}

impl EncodeMetric for RequestCounters {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (i, count) in self.counts.iter().enumerate() {
            let n = count.load(Ordering::Relaxed);
            if n == 0 {
                continue;
            }
            let labels = RequestLabels {
                op: Op::ALL[i / OUTCOMES.len()].as_str(),
                code: OUTCOMES[i % OUTCOMES.len()],
            };
            encoder.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// One latency histogram per operation.
#[derive(Debug)]
struct OpHistograms {
    histograms: Vec<AtomicHistogram>,
}

impl EncodeMetric for OpHistograms {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (op, histogram) in Op::ALL.iter().zip(&self.histograms) {
            if histogram.count() > 0 {
                let labels = OpLabels { op: op.as_str() };
                histogram.encode_into(&mut encoder.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[derive(Debug)]
struct LimitCounters {
    counts: Vec<AtomicU64>,
}

impl EncodeMetric for LimitCounters {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (limit, count) in LIMITS.iter().zip(&self.counts) {
            let n = count.load(Ordering::Relaxed);
            let labels = LimitLabels { limit };
            encoder.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A gauge read from an atomic.
#[derive(Debug)]
struct AtomicGauge(AtomicU64);

impl EncodeMetric for AtomicGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&(self.0.load(Ordering::Relaxed) as i64))
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[derive(Debug)]
struct AtomicCounter(AtomicU64);

impl EncodeMetric for AtomicCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.0.load(Ordering::Relaxed), None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A shared metric registered by reference: the registry owns its handle, `Metrics` keeps
/// another for updates.
#[derive(Debug)]
struct Shared<T>(std::sync::Arc<T>);

impl<T: EncodeMetric> EncodeMetric for Shared<T> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// Everything the process counts and times. Shared as `Arc<Metrics>`.
pub struct Metrics {
    requests: std::sync::Arc<RequestCounters>,
    latency: std::sync::Arc<OpHistograms>,
    rejections: std::sync::Arc<LimitCounters>,
    connections_open: std::sync::Arc<AtomicGauge>,
    expiries: std::sync::Arc<AtomicCounter>,
    /// Seconds from a hold's `expires_at` to the reaper recording its expiry.
    expiry_lag: std::sync::Arc<AtomicHistogram>,
    recovery_ms: std::sync::Arc<AtomicGauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let counters = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Metrics {
            requests: std::sync::Arc::new(RequestCounters {
                counts: counters(Op::ALL.len() * OUTCOMES.len()),
            }),
            latency: std::sync::Arc::new(OpHistograms {
                histograms: Op::ALL.iter().map(|_| AtomicHistogram::latency()).collect(),
            }),
            rejections: std::sync::Arc::new(LimitCounters { counts: counters(LIMITS.len()) }),
            connections_open: std::sync::Arc::new(AtomicGauge(AtomicU64::new(0))),
            expiries: std::sync::Arc::new(AtomicCounter(AtomicU64::new(0))),
            expiry_lag: std::sync::Arc::new(AtomicHistogram::latency()),
            recovery_ms: std::sync::Arc::new(AtomicGauge(AtomicU64::new(0))),
        }
    }
}

impl Metrics {
    /// One request answered: its operation, its error code (`None`: success), its latency.
    pub fn request(&self, op: Op, code: Option<&str>, elapsed: std::time::Duration) {
        let index = op as usize * OUTCOMES.len() + outcome_index(code);
        self.requests.counts[index].fetch_add(1, Ordering::Relaxed);
        self.latency.histograms[op as usize].observe_duration(elapsed);
    }

    pub fn rejected(&self, limit: Limit) {
        self.rejections.counts[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_opened(&self) {
        self.connections_open.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connections_open(&self) -> u64 {
        self.connections_open.0.load(Ordering::Relaxed)
    }

    pub fn expired(&self, lag_ms: u64) {
        self.expiries.0.fetch_add(1, Ordering::Relaxed);
        self.expiry_lag.observe(lag_ms as f64 / 1_000.0);
    }

    pub fn recovered_in(&self, elapsed: std::time::Duration) {
        self.recovery_ms.0.store(elapsed.as_millis() as u64, Ordering::Relaxed);
    }

    /// A registry with the process-wide metrics; the caller adds the state read at scrape time.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("livestock");
        r.register(
            "requests",
            "Requests answered, by operation and outcome code",
            Shared(self.requests.clone()),
        );
        r.register(
            "request_duration_seconds",
            "Request latency by operation",
            Shared(self.latency.clone()),
        );
        r.register(
            "rejections",
            "Requests or connections turned away, by limit",
            Shared(self.rejections.clone()),
        );
        r.register(
            "connections_open",
            "HTTP connections open",
            Shared(self.connections_open.clone()),
        );
        r.register("hold_expiries", "Holds expired by the reaper", Shared(self.expiries.clone()));
        r.register(
            "hold_expiry_lag_seconds",
            "Seconds from a hold's expires_at to its units returning",
            Shared(self.expiry_lag.clone()),
        );
        r.register(
            "recovery_duration_milliseconds",
            "Duration of the recovery at start",
            Shared(self.recovery_ms.clone()),
        );
        r
    }
}

/// A gauge whose value is fixed at scrape time (state read then).
#[derive(Debug)]
pub struct Snapshot(pub i64);

impl EncodeMetric for Snapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DealLabels {
    pub deal: String,
}

/// Per-deal gauges read at scrape time.
#[derive(Debug)]
pub struct PerDeal(pub Vec<(String, i64)>);

impl EncodeMetric for PerDeal {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (deal, value) in &self.0 {
            let labels = DealLabels { deal: deal.clone() };
            encoder.encode_family(&labels)?.encode_gauge(value)?;
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

/// Picks one histogram out of the log's statistics.
type HistogramOf = fn(&WalStats) -> &AtomicHistogram;

/// One of the log's histograms, registered by a handle on the log's statistics.
struct LogHistogram(std::sync::Arc<WalStats>, HistogramOf);

impl std::fmt::Debug for LogHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (self.1)(&self.0).fmt(f)
    }
}

impl EncodeMetric for LogHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        (self.1)(&self.0).encode_into(&mut encoder)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The text of `GET /metrics`: the process-wide metrics plus the state read now (per-deal
/// counters, holds, idempotency keys, the log's health and its checkpoint's age).
pub fn scrape(node: &Node) -> String {
    let mut r = node.metrics().registry();
    let now_ms = node.now_ms();
    let deals = node.allocator().deals(now_ms);
    let per_deal = |f: fn(&livestock_core::counters::Counters) -> u64| {
        PerDeal(deals.iter().map(|d| (d.spec.id.to_string(), f(&d.counters) as i64)).collect())
    };
    r.register("deal_available_units", "Units available, per deal", per_deal(|c| c.available()));
    r.register("deal_held_units", "Units held, per deal", per_deal(|c| c.held()));
    r.register("deal_sold_units", "Units sold, per deal", per_deal(|c| c.sold()));
    let sold_out = deals.iter().filter(|d| d.counters.available() == 0).count();
    r.register("deals", "Deals in memory", Snapshot(deals.len() as i64));
    r.register("deals_sold_out", "Deals with no unit available", Snapshot(sold_out as i64));
    let (open, resolved) = node.allocator().hold_counts();
    r.register("holds_open", "Holds held now", Snapshot(open as i64));
    r.register("holds_resolved_retained", "Resolved holds still kept", Snapshot(resolved as i64));
    let keys = node.idempotency().len();
    r.register("idempotency_keys", "Idempotency keys remembered", Snapshot(keys as i64));
    if let Some(wal) = node.wal() {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = wal.stats();
        let state = wal.state();
        let poisoned = i64::from(matches!(state, LogState::Poisoned(_)));
        r.register("log_poisoned", "1 once a log write or fsync failed", Snapshot(poisoned));
        let durable = match state {
            LogState::DurableUpTo(lsn) | LogState::Closed(lsn) => lsn,
            LogState::Poisoned(_) => 0,
        };
        r.register(
            "log_durable_lsn",
            "Newest durable log sequence number",
            Snapshot(durable as i64),
        );
        let histograms: [(&str, &str, HistogramOf); 3] = [
            ("log_batch_records", "Records per group commit", |s| &s.batch_records),
            ("log_fsync_duration_seconds", "Duration of one log fsync", |s| &s.fsync_seconds),
            ("checkpoint_duration_seconds", "Duration of one checkpoint", |s| {
                &s.checkpoint_seconds
            }),
        ];
        for (name, help, field) in histograms {
            r.register(name, help, LogHistogram(stats.clone(), field));
        }
        let written = stats.checkpoints_written.load(Relaxed) as i64;
        r.register("checkpoints_written", "Checkpoints written since start", Snapshot(written));
        let failed = stats.checkpoint_failures.load(Relaxed) as i64;
        r.register("checkpoint_failures", "Checkpoints failed since start", Snapshot(failed));
        let at_ms = stats.last_checkpoint_at_ms.load(Relaxed);
        if at_ms > 0 {
            let age_s = now_ms.saturating_sub(at_ms) as i64 / 1_000;
            r.register(
                "checkpoint_age_seconds",
                "Age of the newest checkpointed state",
                Snapshot(age_s),
            );
        }
    }
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &r) {
        Ok(()) => text,
        Err(e) => panic!("encoding metrics into a String cannot fail: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_an_outcome_slot() {
        for code in livestock_core::error::ErrorCode::ALL {
            assert!(OUTCOMES.contains(&code.as_str()), "{}", code.as_str());
        }
    }

    #[test]
    fn the_text_encoding_carries_the_observations() {
        let metrics = Metrics::default();
        metrics.request(Op::Reserve, None, std::time::Duration::from_micros(30));
        metrics.request(Op::Reserve, Some("sold_out"), std::time::Duration::from_micros(5));
        metrics.rejected(Limit::UserRate);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry()).unwrap();
        assert!(
            text.contains(r#"livestock_requests_total{op="reserve",code="sold_out"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"livestock_request_duration_seconds_count{op="reserve"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"livestock_rejections_total{limit="user_rate"} 1"#), "{text}");
    }
}
