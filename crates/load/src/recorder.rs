//! Measurements: HdrHistogram latencies per operation and outcome, the per-100 ms time series
//! (offered vs served, reserve p50/p99, available stock), every attempt per target and
//! outcome, the longest stretch without an acknowledged write, the time from each marked
//! instant (SIGUSR1) to the first write acknowledged after it, and the figures a report or a
//! capacity step is made of.
//!
//! Pure: the driver passes instants as µs since the run's start.
//!
//! All statistics: counts, µs and rates turned into `f64` for means, rates and milliseconds.
//! Every such integer of a run is far below 2^53 (a run's arrivals are at most
//! `ARRIVALS_MAX`, its instants and latencies at most `LATENCY_US_MAX`, an hour), so the
//! conversions are exact.
#![expect(
    clippy::cast_precision_loss,
    reason = "counts and µs of a bounded run are below 2^53, exact in f64 (module doc)"
)]

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::Outcome;
use crate::limits::{exact_f64, LATENCY_US_MAX, MARKS_MAX};

/// The width of one time-series bucket.
pub const BUCKET_US: u64 = 100_000;
/// A request is "started late" when it left more than this after its intended instant: the
/// scheduler's timer has a 1 ms grain, so anything under 2 ms is the clock, not congestion.
pub const LATE_START_US: u64 = 2_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Reserve,
    Confirm,
    Release,
    /// `--waitlist`: a read of a waitlist entry (`GET /v1/waitlist/{id}`).
    Entry,
    /// `--waitlist`: the cancel of an entry still waiting at the end.
    Cancel,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Reserve, Op::Confirm, Op::Release, Op::Entry, Op::Cancel];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Reserve => "reserve",
            Op::Confirm => "confirm",
            Op::Release => "release",
            Op::Entry => "entry",
            Op::Cancel => "cancel",
        }
    }
}

/// Per-bucket latencies above this (a minute) are plotted as this.
pub const BUCKET_LATENCY_US_MAX: u64 = 60_000_000;

/// A histogram of µs from 1 µs to [`LATENCY_US_MAX`], 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, LATENCY_US_MAX, 3) {
        Ok(h) => h,
        Err(e) => panic!("histogram bounds are constants: {e:?}"),
    }
}

/// A time-series bucket's histogram: 2 significant digits and 32-bit counts keep it near
/// 10 KiB, so a ten-minute run's 6,000 buckets stay small.
fn bucket_histogram() -> Histogram<u32> {
    match Histogram::new_with_bounds(1, BUCKET_LATENCY_US_MAX, 2) {
        Ok(h) => h,
        Err(e) => panic!("histogram bounds are constants: {e:?}"),
    }
}

#[derive(Default)]
struct Bucket {
    /// Requests whose intended send instant falls in the bucket.
    offered: u64,
    /// Answers (or transport failures) that arrived in the bucket.
    answered: u64,
    errors: u64,
    /// Reserve latencies of requests intended in the bucket (2 significant digits: enough for
    /// a plot, and small).
    reserve: Option<Histogram<u32>>,
}

/// µs as ms, for reports and plots.
pub fn us_to_ms(us: u64) -> f64 {
    exact_f64(us) / 1e3
}

/// Everything measured during a run.
pub struct Recorder {
    /// End of the arrival phase: rates are taken over `[0, phase_end_us)`.
    phase_end_us: u64,
    by_outcome: BTreeMap<(Op, Outcome), Histogram<u64>>,
    start_delay: Histogram<u64>,
    started_late: u64,
    offered: u64,
    offered_in_phase: u64,
    answered: u64,
    answered_in_phase: u64,
    errors: u64,
    transport_errors: u64,
    buckets: Vec<Bucket>,
    stock: Vec<StockPoint>,
    /// Per target (by index): every attempt's outcome, retries included.
    targets: Vec<TargetTally>,
    attempts: u64,
    /// The latest acknowledged write, and the longest stretch without one that began in the
    /// arrival phase (`(from, to)`).
    last_ack_us: u64,
    longest_gap_us: Option<(u64, u64)>,
    marks: Vec<Mark>,
}

/// An instant marked during the run, and the first write acknowledged after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mark {
    at_us: u64,
    /// The earliest answer to an attempt *started* after the mark (so never a straggler that
    /// a node killed at the mark decided before it died).
    first_ack_us: Option<u64>,
}

impl Recorder {
    /// A recorder for a run whose arrival phase ends at `phase_end_us`, driving `targets`.
    pub fn new(phase_end_us: u64, targets: &[String]) -> Recorder {
        Recorder {
            targets: targets
                .iter()
                .map(|t| TargetTally { target: t.clone(), attempts: 0, outcomes: BTreeMap::new() })
                .collect(),
            attempts: 0,
            last_ack_us: 0,
            longest_gap_us: None,
            marks: Vec::new(),
            phase_end_us,
            by_outcome: BTreeMap::new(),
            start_delay: histogram(),
            started_late: 0,
            offered: 0,
            offered_in_phase: 0,
            answered: 0,
            answered_in_phase: 0,
            errors: 0,
            transport_errors: 0,
            buckets: Vec::new(),
            stock: Vec::new(),
        }
    }

    fn bucket(&mut self, t_us: u64) -> &mut Bucket {
        let i = usize::try_from(t_us / BUCKET_US).unwrap_or(usize::MAX);
        // Runs are bounded in time (see LoadArgs), so this stays a few thousand buckets.
        if self.buckets.len() <= i {
            self.buckets.resize_with(i + 1, Bucket::default);
        }
        &mut self.buckets[i]
    }

    /// A request is due at `intended_us`.
    pub fn offered(&mut self, intended_us: u64) {
        self.offered += 1;
        self.offered_in_phase += u64::from(intended_us < self.phase_end_us);
        self.bucket(intended_us).offered += 1;
    }

    /// A request ended. `latency_us` is measured from the intended instant in open loop and
    /// from `started_us` in closed loop; the caller decides.
    pub fn record(
        &mut self,
        op: Op,
        outcome: &Outcome,
        intended_us: u64,
        started_us: u64,
        done_us: u64,
        latency_us: u64,
    ) {
        let latency_us = latency_us.max(1);
        self.by_outcome
            .entry((op, outcome.clone()))
            .or_insert_with(histogram)
            .saturating_record(latency_us);
        let delay_us = started_us.saturating_sub(intended_us);
        self.start_delay.saturating_record(delay_us.max(1));
        self.started_late += u64::from(delay_us > LATE_START_US);
        self.answered += 1;
        self.answered_in_phase += u64::from(done_us < self.phase_end_us);
        let error = outcome.is_error();
        self.errors += u64::from(error);
        self.transport_errors += u64::from(matches!(outcome, Outcome::Transport(_)));
        let done = self.bucket(done_us);
        done.answered += 1;
        done.errors += u64::from(error);
        if op == Op::Reserve {
            self.bucket(intended_us)
                .reserve
                .get_or_insert_with(bucket_histogram)
                .saturating_record(latency_us);
        }
    }

    /// One attempt of a request went to target `target` and ended in `outcome` (every attempt,
    /// the last one too; [`Recorder::record`] books the request once).
    pub fn attempt(&mut self, target: usize, outcome: &Outcome) {
        self.attempts += 1;
        if let Some(tally) = self.targets.get_mut(target) {
            tally.attempts += 1;
            *tally.outcomes.entry(outcome.label().to_owned()).or_default() += 1;
        }
    }

    /// A write (reserve, confirm or release) was acknowledged at `done_us`, answering an
    /// attempt started at `attempt_us`.
    pub fn acknowledged(&mut self, attempt_us: u64, done_us: u64) {
        // Answers arrive from many connections; one booked a moment late is not a gap.
        if done_us > self.last_ack_us {
            let gap = done_us - self.last_ack_us;
            let longest = self.longest_gap_us.map_or(0, |(from, to)| to - from);
            if self.last_ack_us < self.phase_end_us && gap > longest {
                self.longest_gap_us = Some((self.last_ack_us, done_us));
            }
            self.last_ack_us = done_us;
        }
        // Marks are in time order, and an earlier mark's first ack is never later than a later
        // mark's: walk back from the newest until a mark already has an earlier ack.
        for mark in self.marks.iter_mut().rev() {
            if mark.at_us > attempt_us {
                continue;
            }
            match mark.first_ack_us {
                Some(first) if first <= done_us => break,
                _ => mark.first_ack_us = Some(done_us),
            }
        }
    }

    /// Marks the instant `at_us` (SIGUSR1: e.g. the moment a node was killed).
    pub fn mark(&mut self, at_us: u64) {
        if self.marks.len() < MARKS_MAX {
            self.marks.push(Mark { at_us, first_ack_us: None });
        }
    }

    /// The run's deals had `available` units in total at `t_us`.
    pub fn stock_sample(&mut self, t_us: u64, available: u64) {
        self.stock.push(StockPoint { t_ms: t_us as f64 / 1_000.0, available });
    }

    /// Requests offered but not answered yet.
    pub fn in_flight(&self) -> u64 {
        self.offered.saturating_sub(self.answered)
    }

    /// One line on the last second before `now_us`, for the live progress display.
    pub fn progress_line(&self, now_us: u64) -> String {
        let last = usize::try_from(now_us / BUCKET_US).unwrap_or(usize::MAX);
        let first = last.saturating_sub(10);
        let window = self.buckets.get(first..last.min(self.buckets.len())).unwrap_or(&[]);
        let seconds = (window.len().max(1) as f64) * BUCKET_US as f64 / 1e6;
        let offered: u64 = window.iter().map(|b| b.offered).sum();
        let served: u64 = window.iter().map(|b| b.answered).sum();
        let mut reserve = bucket_histogram();
        for h in window.iter().filter_map(|b| b.reserve.as_ref()) {
            let _ = reserve.add(h);
        }
        let p99 = if reserve.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.2} ms", reserve.value_at_quantile(0.99) as f64 / 1e3)
        };
        let stock = self.stock.last().map_or("-".to_owned(), |s| s.available.to_string());
        format!(
            "t={:>5.1}s offered {:>7.0}/s served {:>7.0}/s reserve p99 {p99:>9} in flight \
             {:>5} errors {} late {} stock {stock}",
            now_us as f64 / 1e6,
            offered as f64 / seconds,
            served as f64 / seconds,
            self.in_flight(),
            self.errors,
            self.started_late,
        )
    }

    /// Latency of one operation over all its outcomes, or of one outcome.
    fn latency(&self, op: Op, outcome: Option<&Outcome>) -> Option<Latency> {
        let mut merged = histogram();
        for ((o, out), h) in &self.by_outcome {
            if *o == op && outcome.is_none_or(|want| want == out) {
                let _ = merged.add(h);
            }
        }
        (!merged.is_empty()).then(|| Latency::of(&merged))
    }

    /// Reserve answers and errors over all outcomes: what a capacity step is judged on.
    pub fn step_figures(&self) -> StepFigures {
        let p99_us = self.latency(Op::Reserve, None).map_or(0, |l| l.p99_us);
        let phase_s = self.phase_end_us.max(1) as f64 / 1e6;
        StepFigures {
            p99_us,
            requests: self.answered,
            errors: self.errors,
            offered_per_s: self.offered_in_phase as f64 / phase_s,
            served_per_s: self.answered_in_phase as f64 / phase_s,
        }
    }

    /// The per-operation and per-outcome tables, rates and time series.
    pub fn measurements(&self) -> Measurements {
        let phase_s = self.phase_end_us.max(1) as f64 / 1e6;
        let per_s = BUCKET_US as f64 / 1e6;
        let full_buckets = usize::try_from(self.phase_end_us / BUCKET_US).unwrap_or(usize::MAX);
        let in_phase = self.buckets.iter().take(full_buckets.max(1));
        let peak_offered = in_phase.clone().map(|b| b.offered).max().unwrap_or(0);
        let peak_served = in_phase.map(|b| b.answered).max().unwrap_or(0);
        let mut latency = Vec::new();
        for op in Op::ALL {
            for ((o, outcome), h) in &self.by_outcome {
                if *o == op {
                    latency.push(OpLatency {
                        op,
                        outcome: outcome.label().to_owned(),
                        latency: Latency::of(h),
                    });
                }
            }
            if let Some(all) = self.latency(op, None) {
                latency.push(OpLatency { op, outcome: "all".to_owned(), latency: all });
            }
        }
        let series = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| SeriesPoint {
                t_ms: (i as u64 * BUCKET_US) as f64 / 1e3,
                offered_per_s: b.offered as f64 / per_s,
                served_per_s: b.answered as f64 / per_s,
                errors: b.errors,
                reserve_p50_us: b.reserve.as_ref().map(|h| h.value_at_quantile(0.5)),
                reserve_p99_us: b.reserve.as_ref().map(|h| h.value_at_quantile(0.99)),
            })
            .collect();
        Measurements {
            requests: Requests {
                offered: self.offered,
                answered: self.answered,
                retries: self.attempts.saturating_sub(self.answered),
                errors: self.errors,
                transport_errors: self.transport_errors,
                started_late: self.started_late,
                late_threshold_us: LATE_START_US,
                start_delay: Latency::of(&self.start_delay),
            },
            rates: Rates {
                offered_per_s: self.offered_in_phase as f64 / phase_s,
                served_per_s: self.answered_in_phase as f64 / phase_s,
                peak_offered_per_s: peak_offered as f64 / per_s,
                peak_served_per_s: peak_served as f64 / per_s,
            },
            latency,
            series,
            stock: self.stock.clone(),
            targets: self.targets.clone(),
            longest_write_gap: self.longest_gap_us.map(|(from, to)| WriteGap {
                from_ms: us_to_ms(from),
                to_ms: us_to_ms(to),
                ms: us_to_ms(to - from),
            }),
            marks: self
                .marks
                .iter()
                .map(|m| MarkReport {
                    at_ms: us_to_ms(m.at_us),
                    first_write_acked_ms: m.first_ack_us.map(us_to_ms),
                    failover_ms: m.first_ack_us.map(|t| us_to_ms(t - m.at_us)),
                })
                .collect(),
        }
    }
}

/// Every attempt that went to one target, by outcome (`ok`, `sold_out`, `no_leader`,
/// `connect`, ...), retries included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetTally {
    pub target: String,
    pub attempts: u64,
    pub outcomes: BTreeMap<String, u64>,
}

/// The longest stretch without an acknowledged write that began in the arrival phase, ms
/// from the start (a failover shows here).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WriteGap {
    pub from_ms: f64,
    pub to_ms: f64,
    pub ms: f64,
}

/// An instant marked with SIGUSR1 and the first write acknowledged after it, answering an
/// attempt started after it: `kill -9` a leader, then `kill -USR1` the load, and
/// `failover_ms` is the time to the first write the new leader acknowledged.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MarkReport {
    pub at_ms: f64,
    pub first_write_acked_ms: Option<f64>,
    pub failover_ms: Option<f64>,
}

/// What a capacity step is judged on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepFigures {
    pub p99_us: u64,
    pub requests: u64,
    pub errors: u64,
    /// All requests (reserves and their follow-ups) per second over the step.
    pub offered_per_s: f64,
    pub served_per_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpLatency {
    pub op: Op,
    /// `ok`, an error code (`sold_out`, ...), a transport failure, or `all`.
    pub outcome: String,
    #[serde(flatten)]
    pub latency: Latency,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Requests {
    pub offered: u64,
    pub answered: u64,
    /// Attempts beyond each request's first (after a refused connection, a reset or
    /// `no_leader`, with several targets).
    pub retries: u64,
    /// Transport failures, 5xx, and refusals other than 409 state conflicts.
    pub errors: u64,
    pub transport_errors: u64,
    /// Requests that could not even be started within `late_threshold_us` of their intended
    /// instant (every connection was busy, or the client itself was starved).
    pub started_late: u64,
    pub late_threshold_us: u64,
    /// From the intended instant to the request leaving.
    pub start_delay: Latency,
}

/// Requests per second over the arrival phase, and the busiest 100 ms bucket.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rates {
    pub offered_per_s: f64,
    pub served_per_s: f64,
    pub peak_offered_per_s: f64,
    pub peak_served_per_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeriesPoint {
    pub t_ms: f64,
    pub offered_per_s: f64,
    pub served_per_s: f64,
    pub errors: u64,
    pub reserve_p50_us: Option<u64>,
    pub reserve_p99_us: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StockPoint {
    pub t_ms: f64,
    pub available: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Measurements {
    pub requests: Requests,
    pub rates: Rates,
    pub latency: Vec<OpLatency>,
    pub series: Vec<SeriesPoint>,
    pub stock: Vec<StockPoint>,
    pub targets: Vec<TargetTally>,
    pub longest_write_gap: Option<WriteGap>,
    pub marks: Vec<MarkReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: &str) -> Outcome {
        Outcome::Refused { status: 409, code: code.to_owned() }
    }

    #[test]
    fn histograms_summarize_per_op_and_outcome() {
        let mut r = Recorder::new(1_000_000, &[]);
        for i in 1..=100u64 {
            r.offered(i * 1_000);
            r.record(Op::Reserve, &Outcome::Ok, i * 1_000, i * 1_000, i * 1_000 + i, i);
        }
        for _ in 0..10 {
            r.offered(0);
            r.record(Op::Reserve, &refused("sold_out"), 0, 0, 50, 50);
        }
        r.offered(500_000);
        r.record(Op::Confirm, &Outcome::Transport("timeout"), 500_000, 503_000, 900_000, 400_000);
        let m = r.measurements();
        let row = |op: Op, outcome: &str| {
            m.latency
                .iter()
                .find(|l| l.op == op && l.outcome == outcome)
                .unwrap_or_else(|| panic!("{op:?} {outcome}"))
                .latency
                .clone()
        };
        let ok = row(Op::Reserve, "ok");
        assert_eq!((ok.count, ok.p50_us, ok.p99_us, ok.max_us), (100, 50, 99, 100));
        assert_eq!(row(Op::Reserve, "sold_out").count, 10);
        assert_eq!(row(Op::Reserve, "all").count, 110);
        assert_eq!(row(Op::Confirm, "timeout").p50_us, 400_127, "3 significant digits");
        assert_eq!(m.requests.errors, 1);
        assert_eq!(m.requests.transport_errors, 1);
        assert_eq!(m.requests.started_late, 1, "the confirm left 3 ms late");
        assert_eq!(m.rates.offered_per_s, 111.0);
        // Buckets: 101 offered in the first 100 ms... the first bucket holds 99 + 10 offered.
        assert_eq!(m.series[0].offered_per_s, 1_090.0);
        assert_eq!(m.series[5].offered_per_s, 10.0);
        assert_eq!(m.series[9].errors, 1, "errors land where the answer arrived");
        assert_eq!(r.in_flight(), 0);
        let step = r.step_figures();
        assert_eq!(step.requests, 111);
        assert_eq!(step.errors, 1);
        assert!(step.p99_us >= 99);
    }

    #[test]
    fn progress_line_covers_the_last_second() {
        let mut r = Recorder::new(2_000_000, &[]);
        for i in 0..1_000u64 {
            r.offered(i * 1_000);
            r.record(Op::Reserve, &Outcome::Ok, i * 1_000, i * 1_000, i * 1_000 + 200, 200);
        }
        r.stock_sample(900_000, 42);
        let line = r.progress_line(1_000_000);
        assert!(line.contains("offered    1000/s"), "{line}");
        assert!(line.contains("stock 42"), "{line}");
        assert!(line.contains("0.20 ms"), "{line}");
    }

    #[test]
    fn attempts_gaps_and_marks_are_counted() {
        let mut r = Recorder::new(1_000_000, &["a:1".to_owned(), "b:2".to_owned()]);
        r.attempt(0, &Outcome::Transport("connect"));
        r.attempt(1, &Outcome::Refused { status: 503, code: "no_leader".into() });
        r.attempt(1, &Outcome::Ok);
        r.record(Op::Reserve, &Outcome::Ok, 0, 0, 100, 100);
        r.acknowledged(50, 100);
        r.mark(200);
        r.acknowledged(150, 300); // started before the mark: a straggler, not the failover
        r.acknowledged(900, 1_000);
        r.acknowledged(400, 950); // booked late: not a gap, but the first answer after the mark
        r.mark(2_000);
        r.acknowledged(2_500, 2_600);
        r.mark(5_000);
        let m = r.measurements();
        assert_eq!(m.requests.retries, 2);
        assert_eq!(m.targets[0].outcomes.get("connect"), Some(&1));
        assert_eq!(m.targets[1].attempts, 2);
        assert_eq!(m.targets[1].outcomes.get("no_leader"), Some(&1));
        let gap = m.longest_write_gap.expect("a gap");
        assert_eq!((gap.from_ms, gap.to_ms), (1.0, 2.6), "{gap:?}");
        let marks: Vec<Option<f64>> = m.marks.iter().map(|k| k.failover_ms).collect();
        assert_eq!(marks, [Some(0.75), Some(0.6), None]);
    }
}
