//! The run's report: what one run measured and concluded, serialized as the `--json` report,
//! and its human summary.
//!
//! Pure: built from the recorder's [`Measurements`] and the ledger's verdict.

use std::fmt::Write as _;

use serde::Serialize;

use crate::draw_check::DrawCheck;
use crate::feed::FeedReport;
use crate::ledger::{Fairness, Verification};
use crate::recorder::{us_to_ms, Measurements};
use crate::waitlist_check::{LagStats, Returns, WaitlistReport};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SellOut {
    /// Deals that answered `sold_out` at least once.
    pub deals_sold_out: usize,
    /// When the hottest deal (index 0) first answered `sold_out`: the send instant of that
    /// request, ms from the start.
    pub hot_deal_ms: Option<f64>,
    /// The same for each deal (the first 100).
    pub per_deal_ms: Vec<Option<f64>>,
}

/// Everything one run measured and concluded: the JSON report, and the source of the summary
/// and the plot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunReport {
    /// `open_loop` or `closed_loop`.
    pub mode: &'static str,
    /// What the latencies are measured from.
    pub latency_from: &'static str,
    /// The target, or the nodes of a cluster, comma-separated.
    pub target: String,
    /// `http`, `redis` or `postgres`.
    pub backend: &'static str,
    pub run_id: String,
    pub seed: u64,
    pub profile: String,
    pub deals: usize,
    pub stock_units: u64,
    pub viewers: u64,
    pub arrival_phase_ms: f64,
    pub wall_ms: f64,
    #[serde(flatten)]
    pub measured: Measurements,
    pub sell_out: SellOut,
    pub fairness: Fairness,
    /// `--feed-subscribers`: what the live feed's subscribers saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feed: Option<FeedReport>,
    /// The units that came back after the sell-out, and what became of them (livestock: read
    /// from the holds at the end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub returns: Option<Returns>,
    /// `--waitlist`: the entries, the offers, and their check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waitlist: Option<WaitlistReport>,
    /// `--draw-window-ms`: each deal's draw, checked from its reveal, and its fairness.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draws: Option<Vec<DrawCheck>>,
    pub verification: Verification,
}

pub const OPEN_LOOP_LABEL: &str =
    "open loop: latency from each request's intended send time (coordinated omission corrected)";
pub const CLOSED_LOOP_LABEL: &str = "CLOSED LOOP: latency from the actual send; a stalled server \
     slows the senders, so stalls are under-counted (coordinated omission NOT corrected)";

fn ms(us: u64) -> String {
    format!("{:.2}", us_to_ms(us))
}

/// The human summary.
pub fn render(r: &RunReport) -> String {
    let m = &r.measured;
    let mut out = String::new();
    let label = if r.mode == "closed_loop" { CLOSED_LOOP_LABEL } else { OPEN_LOOP_LABEL };
    let _ = writeln!(out, "livestock-load: {label}");
    let _ = writeln!(out, "target {} ({})  run {}  seed {}", r.target, r.backend, r.run_id, r.seed);
    let _ = writeln!(
        out,
        "profile: {}; {} deal(s), {} units in all, {} viewers",
        r.profile, r.deals, r.stock_units, r.viewers
    );
    let _ = writeln!(
        out,
        "arrival phase {:.2} s, whole run {:.2} s",
        r.arrival_phase_ms / 1e3,
        r.wall_ms / 1e3
    );
    let q = &m.requests;
    let _ = writeln!(
        out,
        "requests: {} offered, {} answered, {} errors ({} transport), {} retries; {} started more \
         than {} ms late (start delay p99 {} ms, max {} ms)",
        q.offered,
        q.answered,
        q.errors,
        q.transport_errors,
        q.retries,
        q.started_late,
        q.late_threshold_us / 1_000,
        ms(q.start_delay.p99_us),
        ms(q.start_delay.max_us),
    );
    let _ = writeln!(
        out,
        "rate over the arrival phase: offered {:.0}/s, served {:.0}/s; busiest 100 ms: offered \
         {:.0}/s, served {:.0}/s",
        m.rates.offered_per_s,
        m.rates.served_per_s,
        m.rates.peak_offered_per_s,
        m.rates.peak_served_per_s
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<8} {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op", "outcome", "count", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    for row in &m.latency {
        let l = &row.latency;
        let _ = writeln!(
            out,
            "{:<8} {:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            row.op.as_str(),
            row.outcome,
            l.count,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us
        );
    }
    if m.targets.len() > 1 {
        let _ = writeln!(out);
        let _ = writeln!(out, "attempts per target (retries included), by outcome:");
        for t in &m.targets {
            let outcomes: Vec<String> =
                t.outcomes.iter().map(|(label, n)| format!("{label} {n}")).collect();
            let _ = writeln!(out, "  {:<22} {:>8}  {}", t.target, t.attempts, outcomes.join(", "));
        }
    }
    if let Some(gap) = &m.longest_write_gap {
        let _ = writeln!(
            out,
            "longest stretch without an acknowledged write: {:.0} ms (from {:.0} to {:.0} ms)",
            gap.ms, gap.from_ms, gap.to_ms
        );
    }
    for mark in &m.marks {
        match mark.failover_ms {
            Some(ms) => {
                let _ = writeln!(
                    out,
                    "mark at {:.0} ms: first write acknowledged {ms:.0} ms after it",
                    mark.at_ms
                );
            }
            None => {
                let _ =
                    writeln!(out, "mark at {:.0} ms: no write acknowledged after it", mark.at_ms);
            }
        }
    }
    let _ = writeln!(out);
    match r.sell_out.hot_deal_ms {
        Some(t) => {
            let _ = writeln!(
                out,
                "sell-out: the hot deal sold out at {:.0} ms; {} of {} deals sold out",
                t, r.sell_out.deals_sold_out, r.deals
            );
        }
        None => {
            let _ = writeln!(
                out,
                "sell-out: the hot deal did not sell out; {} of {} deals sold out",
                r.sell_out.deals_sold_out, r.deals
            );
        }
    }
    if let Some(feed) = &r.feed {
        render_feed(&mut out, feed);
    }
    if let Some(returns) = &r.returns {
        render_returns(&mut out, returns, r.waitlist.is_some());
    }
    if let Some(waitlist) = &r.waitlist {
        render_waitlist(&mut out, waitlist);
    }
    for d in r.draws.iter().flatten() {
        let _ = writeln!(
            out,
            "draw {}: {} entries, {} units, {} winners; verified from its seed: {}; fairness over \
             {} seeds: chi-square {:.0} ({} df), p = {:.3}; win rate of the first tenth to \
             enter {:.3} (everyone {:.3})",
            d.deal_id,
            d.entrants,
            d.units,
            d.winners,
            if d.verified { "yes" } else { "NO" },
            d.fairness_seeds,
            d.chi_square,
            d.degrees_of_freedom,
            d.p_value,
            d.early_win_rate,
            d.win_rate
        );
    }
    let v = &r.verification;
    let _ = writeln!(out, "verification: {}", if v.passed { "PASS" } else { "FAIL" });
    let _ = writeln!(
        out,
        "  oversell: {} units by the server's counters, {} by the client ledger (must be 0)",
        v.oversell_units, v.oversell_units_client
    );
    let sold: u64 = v.deals.iter().map(|d| d.sold_units).sum();
    let confirmed: u64 = v.deals.iter().map(|d| d.confirmed_units).sum();
    let unknown: u64 = v.deals.iter().map(|d| d.confirm_unknown_units).sum();
    let _ = writeln!(
        out,
        "  ledger: sold {sold} units, acknowledged confirms {confirmed}; lost confirms {}, sold \
         without a confirm {} (unanswered confirms: {unknown})",
        v.lost_confirm_units, v.unacknowledged_sold_units
    );
    let _ = writeln!(
        out,
        "  undersell: {} units still held after {} (must be 0)",
        v.stuck_held_units,
        if v.drained { "every hold resolved" } else { "the drain timed out" }
    );
    let _ = writeln!(out, "  per-user limit breaches: {} (must be 0)", v.per_user_limit_breaches);
    match (&v.holds, v.lost_changes) {
        (Some(h), Some(lost)) => {
            let _ = writeln!(
                out,
                "  lost acknowledged changes: {lost} (holds {}, confirms {}, releases {}; must be \
                 0) over {} holds read back; unexplained {}, unread {} (must be 0)",
                h.lost_reserves, h.lost_confirms, h.lost_releases, h.read, h.unexplained, h.unread
            );
        }
        _ => {
            let _ = writeln!(out, "  lost acknowledged changes: not checked hold by hold");
        }
    }
    for problem in &v.problems {
        let _ = writeln!(out, "  problem: {problem}");
    }
    match r.fairness.share {
        Some(share) => {
            let _ = writeln!(
                out,
                "fairness: {} of the first {} arrivals (the stock's worth, by intended time) won \
                 ({:.1}%)",
                r.fairness.won,
                r.fairness.first_arrivals,
                share * 100.0
            );
        }
        None => {
            let _ = writeln!(out, "fairness: no arrivals");
        }
    }
    out
}

fn lag(l: Option<&LagStats>) -> String {
    match l {
        Some(l) => format!(
            "p50 {} ms, p90 {} ms, p99 {} ms, max {} ms over {}",
            l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, l.count
        ),
        None => "none".to_owned(),
    }
}

/// The units that came back after the sell-out.
fn render_returns(out: &mut String, r: &Returns, waitlist: bool) {
    let _ = writeln!(
        out,
        "came back after the sell-out: {} units ({} from the first buyers, {} of offers that came \
         back); unsold at the end: {} units",
        r.came_back_units,
        r.came_back_first_hand_units,
        r.came_back_from_offers_units,
        r.unsold_units
    );
    if waitlist {
        let share = r.resold_share.map_or("-".to_owned(), |s| format!("{:.1}%", s * 100.0));
        let _ = writeln!(
            out,
            "  resold by the waitlist: {} units, {share} of those that came back from the first \
             buyers; from a unit coming back to its offer (server clock): {}",
            r.resold_units,
            lag(r.offer_lag.as_ref())
        );
    }
}

/// `--waitlist`'s lines of the summary.
fn render_waitlist(out: &mut String, w: &WaitlistReport) {
    let s = &w.states;
    let _ = writeln!(
        out,
        "waitlist: {} entries ({} taps answered with their own, {} refused waitlist_full); \
         offers seen and followed {}, missed (expired before a read saw them) {}",
        w.entries, w.entry_repeats, w.waitlist_full, w.offers_seen, w.offers_missed
    );
    let _ = writeln!(
        out,
        "  at the end: offered and bought {}, lapsed {}, cancelled {}, waiting {}; still waiting \
         when followed until {:.0} ms: {} (cancelled by the tool, {} of them giving up an offer \
         made since their last read)",
        s.offered,
        s.lapsed,
        s.cancelled,
        s.waiting,
        w.followed_until_ms,
        w.still_waiting_at_end,
        w.offers_given_up
    );
    let _ = writeln!(
        out,
        "  entry reads: {} ({} without an answer) within {:.0}/s; from an offer to the read that \
         saw it: {}",
        w.reads,
        w.read_errors,
        w.entry_poll_rate_per_s,
        lag(w.learn_lag.as_ref())
    );
    let c = &w.check;
    let _ = writeln!(
        out,
        "  entries checked: {} read back; lost {}, wrong state {}, still waiting {}, bad offers \
         {}, offered twice {}, unread {} (must be 0); waited while units sat available: {}",
        c.read,
        c.lost,
        c.wrong_state,
        c.still_waiting,
        c.bad_offers,
        c.offered_twice,
        c.unread,
        if w.waiting_while_available.is_empty() { "no" } else { "YES" }
    );
}

/// The live feed's lines of the summary.
fn render_feed(out: &mut String, f: &FeedReport) {
    let l = &f.sold_out_lag;
    let _ = writeln!(
        out,
        "live feed: {} subscribers, {} connection errors; stock events per subscriber min {}, \
         mean {:.1}, max {}",
        f.subscribers, f.connection_errors, f.events_min, f.events_mean, f.events_max
    );
    let _ = writeln!(
        out,
        "  sold_out lag (from the tool's first sold_out answer): p50 {} ms, p99 {} ms, max {} ms \
         over {} subscribers; missed {} (must be 0), ahead of the client {}",
        ms(l.p50_us),
        ms(l.p99_us),
        ms(l.max_us),
        l.count,
        f.sold_out_missed,
        f.ahead_of_client
    );
    if let Some(error) = &f.first_error {
        let _ = writeln!(out, "  first connection error: {error}");
    }
    if let Some(rss) = &f.server_rss_kib {
        let _ = writeln!(
            out,
            "  server RSS: {} KiB before, {} KiB with the subscribers open, {} KiB at the end: \
             {:.2} KiB per subscriber at rest, {:.2} KiB at the end",
            rss.before_kib,
            rss.subscribed_kib,
            rss.end_kib,
            rss.per_subscriber_kib,
            rss.per_subscriber_end_kib
        );
    }
}
