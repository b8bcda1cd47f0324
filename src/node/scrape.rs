//! The text of `GET /metrics`: the process-wide metrics plus the node's state read at scrape
//! time (per-deal counters, holds, idempotency keys, the log's health and its checkpoint's
//! age). Here, beside the node, because it reads the allocator and the log; the HTTP layer
//! only serves the text.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;

use crate::metrics::AtomicHistogram;
use crate::node::Node;
use crate::wal::{LogState, WalStats};

/// A count as an OpenMetrics gauge value (saturating: no count here nears 2^63).
fn gauge(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
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
        PerDeal(deals.iter().map(|d| (d.spec.id.to_string(), gauge(f(&d.counters)))).collect())
    };
    r.register("deal_available_units", "Units available, per deal", per_deal(|c| c.available()));
    r.register("deal_held_units", "Units held, per deal", per_deal(|c| c.held()));
    r.register("deal_sold_units", "Units sold, per deal", per_deal(|c| c.sold()));
    let waiting = deals.iter().filter(|d| d.options.keeps_entries());
    let waiting = PerDeal(waiting.map(|d| (d.spec.id.to_string(), gauge(d.waiting))).collect());
    r.register(
        "deal_waiting_entries",
        "Waitlist entries waiting, per deal with a waitlist or a draw",
        waiting,
    );
    let sold_out = deals.iter().filter(|d| d.counters.available() == 0).count();
    r.register("deals", "Deals in memory", Snapshot(gauge(deals.len())));
    r.register("deals_sold_out", "Deals with no unit available", Snapshot(gauge(sold_out)));
    let (open, resolved) = node.allocator().hold_counts();
    r.register("holds_open", "Holds held now", Snapshot(gauge(open)));
    r.register("holds_resolved_retained", "Resolved holds still kept", Snapshot(gauge(resolved)));
    let keys = node.idempotency().len();
    r.register("idempotency_keys", "Idempotency keys remembered", Snapshot(gauge(keys)));
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
            Snapshot(gauge(durable)),
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
        let written = gauge(stats.checkpoints_written.load(Relaxed));
        r.register("checkpoints_written", "Checkpoints written since start", Snapshot(written));
        let failed = gauge(stats.checkpoint_failures.load(Relaxed));
        r.register("checkpoint_failures", "Checkpoints failed since start", Snapshot(failed));
        let at_ms = stats.last_checkpoint_at_ms.load(Relaxed);
        if at_ms > 0 {
            let age_s = gauge(now_ms.saturating_sub(at_ms) / 1_000);
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
