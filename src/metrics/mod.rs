//! Metrics, exposed at `GET /metrics` in the Prometheus/OpenMetrics text format through the
//! `prometheus-client` registry.
//!
//! Why our own counter tables and histograms rather than the crate's `Family` and `Histogram`:
//! those take a lock per update (a read lock and a hash to find a label set, a write lock per
//! observation), which two cores answering one hot deal would contend on. Ours are fixed
//! arrays of atomics indexed by enums, updated with relaxed `fetch_add`s, and encoded
//! through the crate's `EncodeMetric` at scrape time. The per-request ones live in per-thread
//! cells (`cells.rs`), so an answer writes no cache line another core writes. Values that are cheap to read when
//! scraped (per-deal counters, open holds, checkpoint age) are read then, not maintained.
//!
//! Every metric name is listed in docs/operations.md, with the dashboard and alert rules built
//! on them (docs/grafana-dashboard.json, docs/prometheus-alerts.yml).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use livestock_core::error::ErrorCode;

mod cells;
mod histogram;

use cells::RequestCells;
pub use histogram::AtomicHistogram;

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
    /// Cluster status (cluster mode).
    Cluster,
    /// Membership changes: add or remove a node (cluster mode, admin).
    ClusterMembers,
    /// A backup of the applied state (cluster mode, admin).
    ClusterBackup,
    /// The live feed of one deal (timed to the start of its stream of events).
    DealFeed,
    /// The live feed of a stream's deals (timed likewise).
    StreamFeed,
    /// A deal's cacheable availability.
    Availability,
    /// The live page of a stream (the page alone; its feed counts as `StreamFeed`).
    LivePage,
    /// A deal's draw read.
    Draw,
    /// A waitlist entry read.
    GetEntry,
    /// A waitlist entry cancelled.
    CancelEntry,
    /// The event stream of decided changes (timed to the start of its stream).
    Events,
    /// Requests that matched no route.
    Unrouted,
}

impl Op {
    pub const ALL: [Op; 28] = [
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
        Op::Cluster,
        Op::ClusterMembers,
        Op::ClusterBackup,
        Op::DealFeed,
        Op::StreamFeed,
        Op::Availability,
        Op::LivePage,
        Op::Draw,
        Op::GetEntry,
        Op::CancelEntry,
        Op::Events,
        Op::Unrouted,
    ];

    /// Answered by whichever node gets the request, from its own state (health, metrics,
    /// cluster status, the live feed: a stream of events cannot be forwarded, and a viewer's
    /// feed may trail the leader by a follower's replication lag; the live page, whose feed is
    /// this node's; the event stream, which refuses cluster mode on every node); every other
    /// operation goes to the leader in cluster mode.
    pub const fn is_local(self) -> bool {
        matches!(
            self,
            Op::Health
                | Op::Metrics
                | Op::Cluster
                | Op::DealFeed
                | Op::StreamFeed
                | Op::LivePage
                | Op::Events
                | Op::Unrouted
        )
    }

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
            Op::Cluster => "cluster",
            Op::ClusterMembers => "cluster_members",
            Op::ClusterBackup => "cluster_backup",
            Op::DealFeed => "deal_feed",
            Op::StreamFeed => "stream_feed",
            Op::Availability => "availability",
            Op::LivePage => "live_page",
            Op::Draw => "get_draw",
            Op::GetEntry => "get_entry",
            Op::CancelEntry => "cancel_entry",
            Op::Events => "events",
            Op::Unrouted => "unrouted",
        }
    }
}

/// Outcome slots: `ok`, then every error code in `ErrorCode::ALL` order (a code's slot is
/// `1 + code as usize`; a test holds `ALL` to the declaration order).
const OUTCOMES: usize = 1 + ErrorCode::ALL.len();

fn outcome_index(code: Option<ErrorCode>) -> usize {
    match code {
        None => 0,
        Some(code) => 1 + code as usize,
    }
}

fn outcome_label(index: usize) -> &'static str {
    match index.checked_sub(1) {
        None => "ok",
        Some(i) => ErrorCode::ALL[i].as_str(),
    }
}

/// The limits that turn requests or connections away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Limit {
    BodyBytes,
    Connections,
    UserRate,
    IdempotencyKeys,
    FeedSubscribers,
    EventsSubscribers,
}

const LIMITS: [&str; 6] = [
    "body_bytes",
    "connections",
    "user_rate",
    "idempotency_keys",
    "feed_subscribers",
    "events_subscribers",
];

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

/// Requests by (operation, outcome), from the per-thread cells.
#[derive(Debug)]
struct RequestCounts(std::sync::Arc<RequestCells>);

impl EncodeMetric for RequestCounts {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for i in 0..self.0.slots() {
            let n = self.0.count(i);
            if n == 0 {
                continue;
            }
            let labels = RequestLabels {
                op: Op::ALL[i / OUTCOMES].as_str(),
                code: outcome_label(i % OUTCOMES),
            };
            encoder.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        Ok(())
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// One latency histogram per operation, from the per-thread cells.
#[derive(Debug)]
struct RequestLatency(std::sync::Arc<RequestCells>);

impl EncodeMetric for RequestLatency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (i, op) in Op::ALL.iter().enumerate() {
            let (sum_s, count, buckets) = self.0.histogram(i);
            if count > 0 {
                let labels = OpLabels { op: op.as_str() };
                encoder
                    .encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(sum_s, count, &buckets, None)?;
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
        let value = i64::try_from(self.0.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        encoder.encode_gauge(&value)
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
    /// Request counts and latencies: per-thread cells (`cells.rs`).
    requests: std::sync::Arc<RequestCells>,
    rejections: std::sync::Arc<LimitCounters>,
    connections_open: std::sync::Arc<AtomicGauge>,
    expiries: std::sync::Arc<AtomicCounter>,
    /// Seconds from a hold's `expires_at` to the reaper recording its expiry.
    expiry_lag: std::sync::Arc<AtomicHistogram>,
    recovery_ms: std::sync::Arc<AtomicGauge>,
    /// Holds offered to waitlist entries (units that came back, draw winners).
    offers: std::sync::Arc<AtomicCounter>,
    /// Waitlist entries lapsed at their turn (a per-user limit full) or by a deal's window end.
    lapses: std::sync::Arc<AtomicCounter>,
    /// Draws done.
    draws: std::sync::Arc<AtomicCounter>,
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
            requests: std::sync::Arc::new(RequestCells::new(Op::ALL.len(), OUTCOMES)),
            rejections: std::sync::Arc::new(LimitCounters { counts: counters(LIMITS.len()) }),
            connections_open: std::sync::Arc::new(AtomicGauge(AtomicU64::new(0))),
            expiries: std::sync::Arc::new(AtomicCounter(AtomicU64::new(0))),
            expiry_lag: std::sync::Arc::new(AtomicHistogram::latency()),
            recovery_ms: std::sync::Arc::new(AtomicGauge(AtomicU64::new(0))),
            offers: std::sync::Arc::new(AtomicCounter(AtomicU64::new(0))),
            lapses: std::sync::Arc::new(AtomicCounter(AtomicU64::new(0))),
            draws: std::sync::Arc::new(AtomicCounter(AtomicU64::new(0))),
        }
    }
}

impl Metrics {
    /// One request answered: its operation, its error code (`None`: success), its latency.
    pub fn request(&self, op: Op, code: Option<ErrorCode>, elapsed: std::time::Duration) {
        let slot = op as usize * OUTCOMES + outcome_index(code);
        self.requests.record(slot, op as usize, elapsed);
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
        #[expect(clippy::cast_precision_loss, reason = "a lag in ms is far below 2^53")]
        self.expiry_lag.observe(lag_ms as f64 / 1_000.0);
    }

    /// A hold offered to a waitlist entry.
    pub fn offered(&self) {
        self.offers.0.fetch_add(1, Ordering::Relaxed);
    }

    /// A waitlist entry lapsed by a decision of its own (`WaitlistLapsed`).
    pub fn lapsed(&self) {
        self.lapses.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn drawn(&self) {
        self.draws.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn recovered_in(&self, elapsed: std::time::Duration) {
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        self.recovery_ms.0.store(ms, Ordering::Relaxed);
    }

    /// A registry with the process-wide metrics; the caller adds the state read at scrape time.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("livestock");
        r.register(
            "requests",
            "Requests answered, by operation and outcome code",
            RequestCounts(self.requests.clone()),
        );
        r.register(
            "request_duration_seconds",
            "Request latency by operation",
            RequestLatency(self.requests.clone()),
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
            "waitlist_offers",
            "Holds offered to waitlist entries (units that came back, draw winners)",
            Shared(self.offers.clone()),
        );
        r.register(
            "waitlist_lapses",
            "Waitlist entries lapsed at their turn (per-user limit) or at their deal's end time",
            Shared(self.lapses.clone()),
        );
        r.register("draws", "Draws done", Shared(self.draws.clone()));
        r.register(
            "recovery_duration_milliseconds",
            "Duration of the recovery at start",
            Shared(self.recovery_ms.clone()),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_has_its_own_outcome_slot() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i, "ErrorCode::ALL is in declaration order");
            assert_eq!(outcome_label(outcome_index(Some(*code))), code.as_str());
        }
        assert_eq!(outcome_label(outcome_index(None)), "ok");
    }

    #[test]
    fn the_text_encoding_carries_the_observations() {
        let metrics = Metrics::default();
        metrics.request(Op::Reserve, None, std::time::Duration::from_micros(30));
        metrics.request(Op::Reserve, Some(ErrorCode::SoldOut), std::time::Duration::from_micros(5));
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
