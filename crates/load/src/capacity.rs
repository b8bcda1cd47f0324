//! Capacity mode: steady steps at increasing offered rates until the reserve p99 or the error
//! rate breaks the SLO (or at decreasing rates, if the start rate already broke it, until one
//! holds), then a bisection between the highest rate that held and the lowest that did not.
//! The answer is the number an SRE puts in a capacity plan.
//!
//! The search is pure ([`Search`]); [`find_capacity`] runs its steps against the server.

use std::time::Duration;

use serde::Serialize;

use crate::driver::{Deals, Driver, Mode, Plan};
use crate::limits::{exact_f64, ARRIVALS_MAX, RUN_DEAL_STOCK_UNITS_MAX};
use crate::recorder::us_to_ms;
use crate::schedule::{steady_segments, Schedule, Timing};
use crate::Settings;
use livestock_core::limits::EXPIRY_TICK_MS;

/// Bisection stops when the bracket is narrower than this fraction of the good rate.
const BRACKET_MIN_FRACTION: f64 = 0.02;
/// Stepping down from a start rate that broke the SLO stops here.
const RATE_MIN_PER_S: f64 = 1.0;

/// The service level a step must hold.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Slo {
    pub p99_ms_max: f64,
    pub error_rate_max: f64,
}

/// One step's result.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Step {
    /// Offered reserve arrivals per second: the rate the search steps.
    pub rate_per_s: f64,
    /// All requests (reserves, confirms, releases) offered and answered per second.
    pub offered_per_s: f64,
    pub served_per_s: f64,
    /// p99 of reserve latency, from intended send time.
    pub p99_ms: f64,
    pub requests: u64,
    pub error_rate: f64,
    /// Units sold or held beyond the stock on the step's deals (must be 0).
    pub oversell_units: u64,
    pub held: bool,
    /// This step broke and its rate was run again (`--step-retries`): the search went by the
    /// next try.
    pub retried: bool,
}

impl Slo {
    pub fn holds(&self, p99_ms: f64, error_rate: f64) -> bool {
        p99_ms <= self.p99_ms_max && error_rate <= self.error_rate_max
    }
}

/// The step search: grow by `factor` while the SLO holds, then bisect.
#[derive(Clone, Debug)]
pub struct Search {
    factor: f64,
    max_rate: f64,
    bisect_left: u32,
    steps_left: u32,
    next: Option<f64>,
    good: Option<Step>,
    bad: Option<Step>,
}

impl Search {
    pub fn new(start: f64, factor: f64, max_rate: f64, bisect_steps: u32, steps_max: u32) -> Self {
        assert!(factor > 1.0 && start > 0.0 && max_rate >= start, "validated by the caller");
        Search {
            factor,
            max_rate,
            bisect_left: bisect_steps,
            steps_left: steps_max,
            next: (steps_max > 0).then_some(start.round().max(1.0)),
            good: None,
            bad: None,
        }
    }

    /// The rate of the next step, or `None` when the search is over.
    pub fn next_rate(&self) -> Option<f64> {
        self.next
    }

    /// The highest rate that held.
    pub fn capacity(&self) -> Option<&Step> {
        self.good.as_ref()
    }

    pub fn record(&mut self, step: Step) {
        self.steps_left = self.steps_left.saturating_sub(1);
        if step.held {
            if self.good.is_none_or(|g| step.rate_per_s > g.rate_per_s) {
                self.good = Some(step);
            }
        } else if self.bad.is_none_or(|b| step.rate_per_s < b.rate_per_s) {
            self.bad = Some(step);
        }
        self.next = if self.steps_left == 0 {
            None
        } else {
            match (self.good, self.bad) {
                (_, None) if step.rate_per_s >= self.max_rate => None,
                (_, None) => Some((step.rate_per_s * self.factor).round().min(self.max_rate)),
                // Even the first rate broke: step down until one holds.
                (None, Some(bad)) => Some((bad.rate_per_s / self.factor).round())
                    .filter(|&r| r >= RATE_MIN_PER_S && r < bad.rate_per_s),
                (Some(good), Some(bad)) => {
                    let narrow =
                        bad.rate_per_s - good.rate_per_s <= good.rate_per_s * BRACKET_MIN_FRACTION;
                    if self.bisect_left == 0 || narrow {
                        None
                    } else {
                        self.bisect_left -= 1;
                        Some(((good.rate_per_s + bad.rate_per_s) / 2.0).round())
                    }
                }
            }
        };
    }
}

/// The outcome of capacity mode (also its JSON report).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CapacityReport {
    pub target: String,
    /// `http`, `redis` or `postgres`.
    pub backend: &'static str,
    pub run_id: String,
    pub slo: Slo,
    pub step_duration_ms: u64,
    pub steps: Vec<Step>,
    /// The highest offered rate that held the SLO, and its p99.
    pub capacity_per_s: Option<f64>,
    pub capacity_p99_ms: Option<f64>,
    /// All requests per second offered at that rate (reserves and their follow-ups).
    pub capacity_all_per_s: Option<f64>,
    pub oversell_units: u64,
}

impl CapacityReport {
    /// The one-line answer.
    pub fn verdict(&self) -> String {
        match (self.capacity_per_s, self.capacity_p99_ms) {
            (Some(rate), Some(p99)) => format!(
                "capacity: {rate:.0} req/s at p99 {p99:.2} ms (SLO {} ms, error rate <= {}): \
                 reserve arrivals per second, plus their confirms and releases ({:.0} req/s in \
                 all)",
                self.slo.p99_ms_max,
                self.slo.error_rate_max,
                self.capacity_all_per_s.unwrap_or(rate)
            ),
            _ => format!(
                "capacity: none (no rate down to {:.0} req/s held p99 <= {} ms, error rate <= {})",
                self.steps.iter().map(|s| s.rate_per_s).fold(f64::INFINITY, f64::min),
                self.slo.p99_ms_max,
                self.slo.error_rate_max
            ),
        }
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "livestock-load --find-capacity: open loop, steady steps of {} ms, reserve p99 from \
             intended send time; req/s count reserves and their confirms and releases\n\
             {:>10} {:>13} {:>12} {:>10} {:>10} {:>10}  verdict\n",
            self.step_duration_ms,
            "reserves/s",
            "offered req/s",
            "served req/s",
            "p99 ms",
            "errors",
            "requests"
        );
        for s in &self.steps {
            out.push_str(&format!(
                "{:>10.0} {:>13.0} {:>12.0} {:>10.2} {:>9.3}% {:>10}  {}\n",
                s.rate_per_s,
                s.offered_per_s,
                s.served_per_s,
                s.p99_ms,
                s.error_rate * 100.0,
                s.requests,
                match (s.held, s.retried) {
                    (true, _) => "held",
                    (false, false) => "broke",
                    (false, true) => "broke, tried again",
                }
            ));
        }
        if self.oversell_units > 0 {
            out.push_str(&format!("OVERSELL: {} units beyond the stock\n", self.oversell_units));
        }
        out.push_str(&self.verdict());
        out.push('\n');
        out
    }
}

/// Runs the search against the server. Each step gets fresh deals with enough stock that
/// nothing sells out, so every step measures the same work.
pub async fn find_capacity(settings: &Settings) -> Result<CapacityReport, String> {
    let c = settings.capacity.as_ref().ok_or("capacity mode without an SLO")?;
    let mut admin = settings.backend.admin().await?;
    // A peer's hold expiry (livestock runs its own).
    let _reaper = settings.backend.start_reaper(Duration::from_millis(EXPIRY_TICK_MS)).await?;
    let mut search =
        Search::new(c.start_rate, c.rate_factor, c.max_rate, c.bisect_steps, c.steps_max);
    let mut steps = Vec::new();
    let mut oversell_units = 0;
    let mut n = 0;
    while let Some(rate) = search.next_rate() {
        let mut tries = 0;
        let step = loop {
            n += 1;
            let timing = Timing::Shaped {
                segments: steady_segments(rate, c.step_duration_ms),
                spacing: settings.spacing,
            };
            let expected = Schedule::expected(&timing).unwrap_or(0.0);
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a non-negative expected count, far below 2^64 (rate and step are \
                          bounded); `as` saturates, and the stock is capped next"
            )]
            let units = (expected * f64::from(settings.qty) * 1.2) as u64;
            let stock = (units + 100).min(RUN_DEAL_STOCK_UNITS_MAX);
            let run_id = format!("{}-s{n}", settings.run_id);
            let mut ids = Vec::new();
            for i in 0..settings.deals {
                let id = format!("{run_id}-d{i}");
                admin
                    .create_deal(&id, stock, settings.per_user_limit, settings.hold_ttl_ms)
                    .await?;
                ids.push(id);
            }
            let deals = Deals { units: vec![stock; ids.len()], ids };
            let phase_us = c.step_duration_ms * 1_000;
            let schedule = Schedule::new(
                timing,
                settings.choices.clone(),
                settings.seed.wrapping_add(n),
                phase_us,
                ARRIVALS_MAX,
            );
            let plan = Plan {
                backend: settings.backend.clone(),
                mode: Mode::Open,
                connections: settings.connections,
                schedule,
                phase_us,
                hold_ttl_ms: settings.hold_ttl_ms,
                run_id,
                poll_stock: false,
                progress: false,
                marks: None,
                waitlist: None,
            };
            let mut driver = Driver::start(plan, &deals).await?;
            let completed = driver.finish(settings.deadline_us(phase_us)).await;
            let driven = driver.stop(completed);
            let figures = driven.recorder.step_figures();
            for id in &deals.ids {
                let (after, _) = admin.deal(id).await?;
                oversell_units += (after.sold + after.held).saturating_sub(after.stock);
            }
            let requests = figures.requests + driven.abandoned;
            let errors = figures.errors + driven.abandoned;
            let error_rate =
                if requests == 0 { 0.0 } else { exact_f64(errors) / exact_f64(requests) };
            let p99_ms = us_to_ms(figures.p99_us);
            let step = Step {
                rate_per_s: rate,
                offered_per_s: figures.offered_per_s,
                served_per_s: figures.served_per_s,
                p99_ms,
                requests,
                error_rate,
                oversell_units,
                held: completed && c.slo.holds(p99_ms, error_rate),
                retried: false,
            };
            let retry = !step.held && tries < c.step_retries;
            if settings.progress {
                eprintln!(
                    "step {n}: {rate:.0} reserves/s ({:.0} req/s in all), served {:.0} req/s, \
                 reserve p99 {p99_ms:.2} ms, errors {:.3}%: {}",
                    step.offered_per_s,
                    step.served_per_s,
                    error_rate * 100.0,
                    match (step.held, retry) {
                        (true, _) => "held",
                        (false, false) => "broke the SLO",
                        (false, true) => "broke the SLO; trying the rate again",
                    }
                );
            }
            // Let the server settle (its queues empty, the reaper catch up) between steps.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if !retry {
                break step;
            }
            tries += 1;
            steps.push(Step { retried: true, ..step });
        };
        steps.push(step);
        search.record(step);
    }
    let best = search.capacity().copied();
    Ok(CapacityReport {
        target: settings.backend.targets_label(),
        backend: settings.backend.kind.as_str(),
        run_id: settings.run_id.clone(),
        slo: c.slo,
        step_duration_ms: c.step_duration_ms,
        steps,
        capacity_per_s: best.map(|s| s.rate_per_s),
        capacity_p99_ms: best.map(|s| s.p99_ms),
        capacity_all_per_s: best.map(|s| s.offered_per_s),
        oversell_units,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLO: Slo = Slo { p99_ms_max: 10.0, error_rate_max: 0.001 };

    fn step(rate: f64, p99_ms: f64) -> Step {
        Step {
            rate_per_s: rate,
            offered_per_s: rate,
            served_per_s: rate,
            p99_ms,
            requests: 100,
            error_rate: 0.0,
            oversell_units: 0,
            held: SLO.holds(p99_ms, 0.0),
            retried: false,
        }
    }

    /// Runs the search against a server whose p99 is 1 ms up to `knee` req/s and 100 ms above.
    fn search_with_knee(knee: f64, bisect: u32) -> (Search, Vec<f64>) {
        let mut search = Search::new(1_000.0, 2.0, 1e6, bisect, 30);
        let mut rates = Vec::new();
        while let Some(rate) = search.next_rate() {
            rates.push(rate);
            search.record(step(rate, if rate <= knee { 1.0 } else { 100.0 }));
        }
        (search, rates)
    }

    #[test]
    fn grows_until_the_slo_breaks_then_bisects() {
        let (search, rates) = search_with_knee(5_000.0, 2);
        assert_eq!(rates, vec![1_000.0, 2_000.0, 4_000.0, 8_000.0, 6_000.0, 5_000.0]);
        assert_eq!(search.capacity().map(|s| s.rate_per_s), Some(5_000.0));
        let (search, rates) = search_with_knee(5_000.0, 0);
        assert_eq!(rates, vec![1_000.0, 2_000.0, 4_000.0, 8_000.0]);
        assert_eq!(search.capacity().map(|s| s.rate_per_s), Some(4_000.0));
    }

    #[test]
    fn steps_down_when_the_start_rate_breaks() {
        let (search, rates) = search_with_knee(10.0, 3);
        assert_eq!(rates, vec![1e3, 500.0, 250.0, 125.0, 63.0, 32.0, 16.0, 8.0, 12.0, 10.0, 11.0]);
        assert_eq!(search.capacity().map(|s| s.rate_per_s), Some(10.0));
        let (search, rates) = search_with_knee(0.5, 3);
        assert_eq!(rates.last(), Some(&1.0), "down to one per second, then it gives up");
        assert!(search.capacity().is_none());
    }

    #[test]
    fn stops_at_the_cap_a_narrow_bracket_and_the_step_budget() {
        let mut capped = Search::new(1_000.0, 2.0, 3_000.0, 3, 30);
        let mut rates = Vec::new();
        while let Some(rate) = capped.next_rate() {
            rates.push(rate);
            capped.record(step(rate, 1.0));
        }
        assert_eq!(rates, vec![1_000.0, 2_000.0, 3_000.0]);

        let mut narrow = Search::new(1_000.0, 1.01, 1e6, 5, 30);
        narrow.record(step(1_000.0, 1.0));
        assert_eq!(narrow.next_rate(), Some(1_010.0));
        narrow.record(step(1_010.0, 100.0));
        assert_eq!(narrow.next_rate(), None, "a 1% bracket is tight enough");

        let mut few = Search::new(1_000.0, 2.0, 1e6, 5, 2);
        few.record(step(1_000.0, 1.0));
        few.record(step(2_000.0, 1.0));
        assert_eq!(few.next_rate(), None, "the step budget is spent");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_step_is_tried_again_and_both_tries_are_reported() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(crate::ceiling::run(listener, Default::default()));
        // No server answers within a microsecond: every step with reserves breaks.
        let args = crate::LoadArgs::parse_from_args([
            "load",
            "--target",
            &target,
            "--quiet",
            "--find-capacity",
            "--p99-slo-ms",
            "0.001",
            "--step-duration-ms",
            "100",
            "--start-rate",
            "200",
            "--max-rate",
            "200",
            "--rate-factor",
            "10",
            "--step-retries",
            "1",
            "--connections",
            "2",
            "--hold-ttl-ms",
            "1000",
            "--payment-delay-ms",
            "0..10",
        ])
        .unwrap();
        let settings = crate::settings(&args).unwrap();
        let report = find_capacity(&settings).await.unwrap();
        let (first, second) = (&report.steps[0], &report.steps[1]);
        assert!(!first.held && first.retried, "{first:?}");
        assert_eq!(second.rate_per_s, first.rate_per_s, "the same rate, tried again");
        assert!(!second.retried, "one retry, then the search goes by it");
        assert!(report.render().contains("broke, tried again"));
        server.abort();
    }

    #[test]
    fn errors_break_the_slo_too() {
        assert!(SLO.holds(10.0, 0.001));
        assert!(!SLO.holds(10.01, 0.0));
        assert!(!SLO.holds(1.0, 0.002));
    }
}
