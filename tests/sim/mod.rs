//! The deterministic fault simulation (see `tests/simulation.rs`).
//!
//! | file | concept |
//! |---|---|
//! | `rng.rs` | the seeded PRNG every decision comes from; the trace hash |
//! | `storage.rs` | `SimStorage`: page cache, directory, power loss, faults, corrupted sectors |
//! | `workload.rs` | client requests as the HTTP API carries them, rendered as the server does |
//! | `ledger.rs` | what was acknowledged; the model of remembered idempotent answers |
//! | `check.rs` | the checks after each recovery |
//! | `history.rs` | one seed's history: the step loop, crashes, restarts, retries |
//! | `harness.rs` | what both simulations' drivers share: settings, many seeds, the verdict |

pub mod check;
pub mod harness;
pub mod history;
pub mod ledger;
pub mod rng;
pub mod storage;
pub mod workload;

use std::collections::BTreeMap;

pub use history::{run_seed, Failure, KNOWN_BUGS};

/// Counts over one or many histories.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub seeds: u64,
    pub steps: u64,
    pub requests: u64,
    pub acknowledged: u64,
    pub group_commits: u64,
    pub poisoned: u64,
    pub checkpoints: u64,
    pub checkpoint_failures: u64,
    pub power_losses: u64,
    pub process_crashes: u64,
    pub crashes_mid_operation: u64,
    pub clean_restarts: u64,
    pub recoveries: u64,
    pub open_failures: u64,
    pub torn_tails_cut: u64,
    pub flips: u64,
    pub flips_harmless: u64,
    pub refused_for_corruption: u64,
    pub exact_state_checks: u64,
    pub ledger_checks: u64,
    pub replays_checked: u64,
    pub histories_ended_early: u64,
    /// Acknowledged waitlist joins (202), cancels (2xx), and offers the clients saw.
    pub waitlist_joins: u64,
    pub waitlist_cancels: u64,
    pub offers_seen: u64,
    /// Acknowledged draw entries (202 `entered`), and draws seen in recovered states.
    pub draw_entries: u64,
    pub draws_recovered: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub known: BTreeMap<&'static str, u64>,
}

impl Stats {
    pub fn merge(&mut self, o: &Stats) {
        self.seeds += o.seeds;
        self.steps += o.steps;
        self.requests += o.requests;
        self.acknowledged += o.acknowledged;
        self.group_commits += o.group_commits;
        self.poisoned += o.poisoned;
        self.checkpoints += o.checkpoints;
        self.checkpoint_failures += o.checkpoint_failures;
        self.power_losses += o.power_losses;
        self.process_crashes += o.process_crashes;
        self.crashes_mid_operation += o.crashes_mid_operation;
        self.clean_restarts += o.clean_restarts;
        self.recoveries += o.recoveries;
        self.open_failures += o.open_failures;
        self.torn_tails_cut += o.torn_tails_cut;
        self.flips += o.flips;
        self.flips_harmless += o.flips_harmless;
        self.refused_for_corruption += o.refused_for_corruption;
        self.exact_state_checks += o.exact_state_checks;
        self.ledger_checks += o.ledger_checks;
        self.replays_checked += o.replays_checked;
        self.histories_ended_early += o.histories_ended_early;
        self.waitlist_joins += o.waitlist_joins;
        self.waitlist_cancels += o.waitlist_cancels;
        self.draw_entries += o.draw_entries;
        self.draws_recovered += o.draws_recovered;
        self.offers_seen += o.offers_seen;
        for (k, v) in &o.faults {
            *self.faults.entry(k).or_default() += v;
        }
        for (k, v) in &o.known {
            *self.known.entry(k).or_default() += v;
        }
    }

    /// The tally, one `key=value` per item, in lines.
    pub fn summary(&self) -> String {
        let faults: u64 = self.faults.values().sum();
        let by_kind: Vec<String> = self.faults.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let known: Vec<String> = self.known.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "simulation: seeds={} steps={} requests={} acknowledged={}\n\
             \x20 crashes: power_losses={} process_crashes={} mid_operation={} clean_restarts={}\n\
             \x20 log: group_commits={} poisoned={} checkpoints={} checkpoint_failures={}\n\
             \x20 faults={} [{}]\n\
             \x20 corrupted_sectors={} harmless={} recoveries_refused_for_corruption={}\n\
             \x20 recoveries={} failed_starts={} torn_tails_cut={}\n\
             \x20 checks passed: recovered_state_exact={} ledger={} idempotent_replays={}\n\
             \x20 waitlists: joins={} cancels={} offers_seen={}\n\
             \x20 draws: entries={} draws_recovered={}\n\
             \x20 histories_ended_early={} known_bugs_hit=[{}]",
            self.seeds,
            self.steps,
            self.requests,
            self.acknowledged,
            self.power_losses,
            self.process_crashes,
            self.crashes_mid_operation,
            self.clean_restarts,
            self.group_commits,
            self.poisoned,
            self.checkpoints,
            self.checkpoint_failures,
            faults,
            by_kind.join(" "),
            self.flips,
            self.flips_harmless,
            self.refused_for_corruption,
            self.recoveries,
            self.open_failures,
            self.torn_tails_cut,
            self.exact_state_checks,
            self.ledger_checks,
            self.replays_checked,
            self.waitlist_joins,
            self.waitlist_cancels,
            self.offers_seen,
            self.draw_entries,
            self.draws_recovered,
            self.histories_ended_early,
            known.join(" "),
        )
    }
}

/// What a run of many seeds found.
pub struct Run {
    pub stats: Stats,
    /// Failures by seed.
    pub failures: Vec<Failure>,
    /// Known bugs hit, by seed.
    pub known: Vec<Failure>,
}

/// Runs seeds `first..first + count` on `threads` threads (each history is single-threaded
/// and deterministic; the threads only share the list of seeds).
pub fn run_seeds(first: u64, count: u64, steps: u64, threads: usize, strict: bool) -> Run {
    let reports =
        harness::for_seeds(first, count, threads, |seed| run_seed(seed, steps, false, strict));
    let mut stats = Stats::default();
    let mut failures = Vec::new();
    let mut known = Vec::new();
    for report in reports {
        stats.merge(&report.stats);
        failures.extend(report.failure);
        known.extend(report.known);
    }
    Run { stats, failures, known }
}
