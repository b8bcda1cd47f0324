//! `livestock load`: drives a running livestock server over HTTP (loopback only) and reports
//! honest latencies, the server's correctness under the burst, and a picture.
//!
//! | file | concept |
//! |---|---|
//! | `mod.rs` | the command line, its validation and bounds, one run from set-up to verdict |
//! | `schedule.rs` | pure: arrival schedules (drop, steady, replay), Zipf deal picker, seeded PRNG |
//! | `backend.rs` | what is driven: livestock over HTTP, or a peer (Redis, PostgreSQL) in its own protocol |
//! | `client.rs` | the loopback-only target, keep-alive HTTP/1.1 connections, API calls |
//! | `redis.rs`, `postgres.rs` | the peers of the benchmark: Lua scripts, PL/pgSQL functions (`peers/`) |
//! | `ceiling.rs` | `livestock ceiling`: a bare hyper server with fixed answers, the benchmark's ceiling |
//! | `driver.rs` | open loop (a pacer releases requests at their intended instants) and closed loop |
//! | `ledger.rs` | pure: what the server acknowledged, and the end-of-run verification |
//! | `report.rs` | pure: HdrHistogram per operation and outcome, time series, JSON, summary |
//! | `plot.rs` | the SVG: offered vs served, p50/p99 over time, the stock burning down |
//! | `capacity.rs` | the step search for the highest rate that holds a p99 SLO |
//!
//! See `docs/load.md`, and `benches/peers/` for the peer benchmark.

pub mod backend;
pub mod capacity;
pub mod ceiling;
pub mod client;
pub mod driver;
pub mod ledger;
pub mod plot;
pub mod postgres;
pub mod redis;
pub mod report;
pub mod schedule;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use crate::backend::{Backend, BackendKind, Conn};
use crate::capacity::{CapacityReport, Slo};
use crate::client::Target;
use crate::driver::{Deals, Driver, Mode, Plan};
use crate::ledger::{verify, Counters, DealState};
use crate::postgres::PgSettings;
use crate::report::{RunReport, SellOut};
use crate::schedule::{
    drop_segments, parse_replay, steady_segments, Choices, Mix, Schedule, Spacing, Timing, Zipf,
    REPLAY_FORMAT,
};
use livestock_core::limits::{
    DEAL_STOCK_UNITS_MAX, EXPIRY_TICK_MS, HOLD_QTY_MAX, HOLD_TTL_MS_MAX, HOLD_TTL_MS_MIN,
};

// ------------------------------------------------------------------ bounds

/// A load test is bounded in time: the arrival phase (of a run, or of one capacity step) is at
/// most this long.
pub const ARRIVAL_PHASE_MS_MAX: u64 = 10 * 60 * 1_000;
/// Steady runs and closed loops without `--duration-ms` last this long.
pub const DURATION_MS_DEFAULT: u64 = 10_000;
/// Arrivals of one run or step, at most.
pub const ARRIVALS_MAX: u64 = 5_000_000;
pub const RATE_PER_S_MAX: f64 = 1_000_000.0;
pub const CONNECTIONS_MAX: usize = 4_096;
pub const DEALS_MAX: usize = 10_000;
pub const PAYMENT_DELAY_MS_MAX: u64 = 60_000;
pub const REQUEST_TIMEOUT_MS_MAX: u64 = 60_000;
pub const CAPACITY_STEPS_MAX: u32 = 30;
/// Tries of one capacity step beyond the first, at most.
pub const CAPACITY_STEP_RETRIES_MAX: u32 = 3;
pub const CLIENT_THREADS_MAX: usize = 64;
/// After the last request, holds left to expire need their TTL plus this to come back (the
/// server's reaper ticks every 10 ms).
pub const DRAIN_GRACE_MS: u64 = 1_000;

const _: () = assert!(DURATION_MS_DEFAULT <= ARRIVAL_PHASE_MS_MAX);
const _: () = assert!(PAYMENT_DELAY_MS_MAX <= HOLD_TTL_MS_MAX);

// ------------------------------------------------------------------ command line

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProfileArg {
    /// A livestream drop: ramp from 0 to --rate in --ramp-ms, hold --hold-ms, decay in --decay-ms.
    Drop,
    /// --rate arrivals per second for --duration-ms.
    Steady,
    /// The schedule recorded in --replay FILE.
    Replay,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SpacingArg {
    /// Independent taps: a Poisson process at the profile's rate.
    Poisson,
    /// Evenly spaced arrivals.
    Even,
}

/// A range of milliseconds, `MIN..MAX` (or one number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsRange {
    pub min: u64,
    pub max: u64,
}

fn parse_ms_range(raw: &str) -> Result<MsRange, String> {
    let (lo, hi) = raw.split_once("..").unwrap_or((raw, raw));
    let parse = |s: &str| s.trim().parse::<u64>().map_err(|_| format!("{s:?} is not a number"));
    let range = MsRange { min: parse(lo)?, max: parse(hi)? };
    if range.min > range.max {
        return Err(format!("{raw}: MIN is above MAX"));
    }
    Ok(range)
}

const AFTER_HELP: &str = "\
Latency is measured from each request's intended send time (open loop), so a server that stalls \
cannot hide it by slowing the sender (coordinated omission). --closed-loop measures from the \
actual send instead and says so in every output.

Replay file format: one arrival per line, `offset_ms [deal_index [qty]]`. offset_ms is \
milliseconds from the start (decimals allowed, non-decreasing); deal_index is 0-based into the \
run's deals (default: a Zipf pick); qty defaults to --qty. Blank lines and lines starting with # \
are ignored.

Only loopback targets are accepted (localhost, 127.0.0.0/8, [::1]); every run is bounded in \
time and stops by itself.

Examples:
  livestock load --profile drop --rate 20000 --viewers 50000 --stock 5000 --plot drop.svg
  livestock load --profile steady --rate 5000 --duration-ms 10000 --deals 100 --zipf 1.1
  livestock load --find-capacity --p99-slo-ms 5
  livestock load --backend redis --target 127.0.0.1:6379 --profile steady --rate 5000

--backend redis|postgres drives a peer of the benchmark (benches/peers/) in its own protocol \
with the same schedule, histograms and verification: Redis through Lua scripts (EVALSHA), \
PostgreSQL through PL/pgSQL functions (one transaction per operation). The run installs the \
scripts or the schema and runs the peer's hold expiry every 10 ms.";

/// `livestock load`: drive a running server and report latencies, rates, sell-out and a
/// verification of its counters against the client's ledger.
#[derive(Parser, Clone, Debug)]
#[command(name = "livestock-load", version, after_long_help = AFTER_HELP)]
pub struct LoadArgs {
    /// The server, host:port on this machine (localhost, 127.0.0.0/8 or [::1]).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: String,
    /// A bearer token for a server with access control (the admin role: the run creates its
    /// deals). Prefer the environment: flags show in `ps`.
    #[arg(long, env = "LIVESTOCK_LOAD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// What the target is: livestock's HTTP API, or a peer of the benchmark in its own protocol.
    #[arg(long, value_enum, default_value = "http")]
    pub backend: BackendKind,
    /// PostgreSQL: the role to log in as (trust authentication on loopback).
    #[arg(long, env = "PGUSER", default_value = "postgres")]
    pub pg_user: String,
    /// PostgreSQL: the database.
    #[arg(long, env = "PGDATABASE", default_value = "postgres")]
    pub pg_database: String,

    /// How arrivals come.
    #[arg(long, value_enum, default_value = "drop", help_heading = "Arrivals")]
    pub profile: ProfileArg,
    /// Arrivals (taps on buy) per second: the peak of a drop, the rate of a steady run.
    #[arg(long, default_value_t = 2_000.0, help_heading = "Arrivals")]
    pub rate: f64,
    /// Drop: milliseconds from zero to the peak rate.
    #[arg(long, default_value_t = 500, help_heading = "Arrivals")]
    pub ramp_ms: u64,
    /// Drop: milliseconds at the peak rate.
    #[arg(long, default_value_t = 2_000, help_heading = "Arrivals")]
    pub hold_ms: u64,
    /// Drop: milliseconds from the peak back to zero.
    #[arg(long, default_value_t = 1_000, help_heading = "Arrivals")]
    pub decay_ms: u64,
    /// Length of the arrival phase, ms. Steady and closed loop: default 10000. Drop and
    /// replay: cuts the profile short.
    #[arg(long, help_heading = "Arrivals")]
    pub duration_ms: Option<u64>,
    /// Replay: the schedule file (format below).
    #[arg(long, value_name = "FILE", help_heading = "Arrivals")]
    pub replay: Option<PathBuf>,
    /// How arrival instants are spread.
    #[arg(long, value_enum, default_value = "poisson", help_heading = "Arrivals")]
    pub spacing: SpacingArg,
    /// Distinct viewers (user ids); each arrival is a random viewer tapping buy.
    #[arg(long, default_value_t = 10_000, help_heading = "Arrivals")]
    pub viewers: u64,
    /// Units per reserve.
    #[arg(long, default_value_t = 1, help_heading = "Arrivals")]
    pub qty: u32,
    /// Seed of the schedule and choices (random if absent; printed, for a rerun).
    #[arg(long, help_heading = "Arrivals")]
    pub seed: Option<u64>,

    /// Deals to create (1: one hot deal).
    #[arg(long, default_value_t = 1, help_heading = "Deals")]
    pub deals: usize,
    /// Zipf exponent of traffic over the deals (0: uniform; 1: deal 0 is the hottest).
    #[arg(long, default_value_t = 1.0, help_heading = "Deals")]
    pub zipf: f64,
    /// Units per created deal.
    #[arg(long, default_value_t = 1_000, help_heading = "Deals")]
    pub stock: u64,
    /// Per-user limit of each created deal (units held or bought).
    #[arg(long, help_heading = "Deals")]
    pub per_user_limit: Option<u32>,
    /// Drive this existing deal instead of creating new ones (repeatable).
    #[arg(long = "deal", value_name = "ID", help_heading = "Deals")]
    pub existing_deals: Vec<String>,

    /// Share of granted holds confirmed after the payment delay.
    #[arg(long, default_value_t = 0.6, help_heading = "After a reserve")]
    pub confirm_ratio: f64,
    /// Share of granted holds released after the payment delay (the rest expire).
    #[arg(long, default_value_t = 0.2, help_heading = "After a reserve")]
    pub release_ratio: f64,
    /// Payment delay, MIN..MAX ms after the reserve's answer.
    #[arg(long, default_value = "200..1500", value_parser = parse_ms_range, help_heading = "After a reserve")]
    pub payment_delay_ms: MsRange,
    /// Hold TTL, ms; holds left to expire resolve this long after their reserve.
    #[arg(long, default_value_t = 5_000, help_heading = "After a reserve")]
    pub hold_ttl_ms: u64,

    /// Open loop: keep-alive connections (requests wait for a free one; their latency still
    /// counts from their intended instant).
    #[arg(long, default_value_t = 64, help_heading = "Client")]
    pub connections: usize,
    /// Closed loop instead: --concurrency requests in flight, the next sent when one is
    /// answered. Under-counts stalls (coordinated omission NOT corrected).
    #[arg(long, help_heading = "Client")]
    pub closed_loop: bool,
    /// Closed loop: requests in flight.
    #[arg(long, default_value_t = 64, help_heading = "Client")]
    pub concurrency: usize,
    /// A request without an answer after this many ms counts as a timeout.
    #[arg(long, default_value_t = 5_000, help_heading = "Client")]
    pub request_timeout_ms: u64,
    /// Worker threads of the client's runtime (the server shares the machine).
    #[arg(long, default_value_t = 1, help_heading = "Client")]
    pub threads: usize,
    /// No live progress line.
    #[arg(long, help_heading = "Client")]
    pub quiet: bool,

    /// Write the report as JSON.
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub json: Option<PathBuf>,
    /// Draw offered vs served rate, p50/p99 over time and the stock burning down, as SVG.
    #[arg(long, value_name = "FILE.svg", help_heading = "Output")]
    pub plot: Option<PathBuf>,

    /// Find the highest steady rate that holds --p99-slo-ms.
    #[arg(long, requires = "p99_slo_ms", help_heading = "Capacity")]
    pub find_capacity: bool,
    /// The SLO: reserve p99 latency, ms.
    #[arg(long, help_heading = "Capacity")]
    pub p99_slo_ms: Option<f64>,
    /// The SLO: share of requests that may fail (transport errors, 5xx, non-409 refusals).
    #[arg(long, default_value_t = 0.001, help_heading = "Capacity")]
    pub max_error_rate: f64,
    /// Length of each step, ms.
    #[arg(long, default_value_t = 3_000, help_heading = "Capacity")]
    pub step_duration_ms: u64,
    /// The first step's rate, reserves per second.
    #[arg(long, default_value_t = 1_000.0, help_heading = "Capacity")]
    pub start_rate: f64,
    /// Each step offers this many times the last.
    #[arg(long, default_value_t = 1.5, help_heading = "Capacity")]
    pub rate_factor: f64,
    /// Never offer more than this.
    #[arg(long, default_value_t = 200_000.0, help_heading = "Capacity")]
    pub max_rate: f64,
    /// Bisection steps between the last rate that held and the first that broke.
    #[arg(long, default_value_t = 3, help_heading = "Capacity")]
    pub bisect_steps: u32,
    /// Run a step that broke the SLO again, up to this many times, before taking it as broken
    /// (a one-off stall on a shared machine then does not end the search early). Every try is
    /// reported.
    #[arg(long, default_value_t = 0, help_heading = "Capacity")]
    pub step_retries: u32,
}

impl LoadArgs {
    /// Parses `livestock load` arguments (the first item is the program name).
    pub fn parse_from_args<I, T>(args: I) -> Result<LoadArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        LoadArgs::try_parse_from(args)
    }
}

// ------------------------------------------------------------------ validated settings

/// Capacity-mode settings.
#[derive(Clone, Debug)]
pub struct CapacitySettings {
    pub slo: Slo,
    pub step_duration_ms: u64,
    pub start_rate: f64,
    pub rate_factor: f64,
    pub max_rate: f64,
    pub bisect_steps: u32,
    pub steps_max: u32,
    pub step_retries: u32,
}

/// The arguments, checked against the bounds.
#[derive(Clone, Debug)]
pub struct Settings {
    pub backend: Backend,
    pub run_id: String,
    pub seed: u64,
    pub mode: Mode,
    pub connections: usize,
    pub timing: Timing,
    pub spacing: Spacing,
    pub profile: String,
    pub phase_us: u64,
    pub choices: Choices,
    pub qty: u32,
    pub deals: usize,
    pub stock: u64,
    pub per_user_limit: Option<u32>,
    pub existing_deals: Vec<String>,
    pub hold_ttl_ms: u64,
    pub payment_delay_ms_max: u64,
    pub request_timeout: Duration,
    pub progress: bool,
    pub capacity: Option<CapacitySettings>,
}

impl Settings {
    /// The instant (µs from the start) by which every request of a phase of `phase_us` must
    /// have been answered: the last follow-up is sent a payment delay after its reserve's
    /// answer, and each may take a timeout.
    pub fn deadline_us(&self, phase_us: u64) -> u64 {
        phase_us
            + self.payment_delay_ms_max * 1_000
            + 2 * u64::try_from(self.request_timeout.as_micros()).unwrap_or(u64::MAX / 4)
            + DRAIN_GRACE_MS * 1_000
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        // A run id only needs to differ from the last run's; the time will do.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        return now.map_or(0, |d| d.as_nanos() as u64) ^ u64::from(std::process::id());
    }
    u64::from_le_bytes(bytes)
}

fn check(ok: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(message())
    }
}

/// Validates the arguments: every number within its bound, the profile complete, the target
/// on this machine.
pub fn settings(args: &LoadArgs) -> Result<Settings, String> {
    let target = Target::parse(&args.target)?.with_token(args.token.as_deref())?;
    check(args.rate.is_finite() && args.rate > 0.0 && args.rate <= RATE_PER_S_MAX, || {
        format!("--rate must be in (0, {RATE_PER_S_MAX}]")
    })?;
    check((1..=u64::from(u32::MAX)).contains(&args.viewers), || {
        "--viewers must be at least 1".to_owned()
    })?;
    check((1..=HOLD_QTY_MAX).contains(&args.qty), || format!("--qty must be 1..={HOLD_QTY_MAX}"))?;
    check((1..=DEALS_MAX).contains(&args.deals), || format!("--deals must be 1..={DEALS_MAX}"))?;
    check(args.zipf.is_finite() && (0.0..=10.0).contains(&args.zipf), || {
        "--zipf must be in [0, 10]".to_owned()
    })?;
    check((1..=DEAL_STOCK_UNITS_MAX).contains(&args.stock), || {
        format!("--stock must be 1..={DEAL_STOCK_UNITS_MAX}")
    })?;
    let ratios_ok = |r: f64| r.is_finite() && (0.0..=1.0).contains(&r);
    check(
        ratios_ok(args.confirm_ratio)
            && ratios_ok(args.release_ratio)
            && args.confirm_ratio + args.release_ratio <= 1.0 + 1e-9,
        || {
            "--confirm-ratio and --release-ratio must be in [0, 1] and add up to at most 1"
                .to_owned()
        },
    )?;
    check(args.payment_delay_ms.max <= PAYMENT_DELAY_MS_MAX, || {
        format!("--payment-delay-ms must stay under {PAYMENT_DELAY_MS_MAX}")
    })?;
    check((HOLD_TTL_MS_MIN..=PAYMENT_DELAY_MS_MAX * 2).contains(&args.hold_ttl_ms), || {
        format!("--hold-ttl-ms must be {HOLD_TTL_MS_MIN}..={}", PAYMENT_DELAY_MS_MAX * 2)
    })?;
    check((1..=CONNECTIONS_MAX).contains(&args.connections), || {
        format!("--connections must be 1..={CONNECTIONS_MAX}")
    })?;
    check((1..=CONNECTIONS_MAX).contains(&args.concurrency), || {
        format!("--concurrency must be 1..={CONNECTIONS_MAX}")
    })?;
    check((1..=REQUEST_TIMEOUT_MS_MAX).contains(&args.request_timeout_ms), || {
        format!("--request-timeout-ms must be 1..={REQUEST_TIMEOUT_MS_MAX}")
    })?;
    check((1..=CLIENT_THREADS_MAX).contains(&args.threads), || {
        format!("--threads must be 1..={CLIENT_THREADS_MAX}")
    })?;
    let per_user_limit = args.per_user_limit;
    check(per_user_limit.is_none_or(|l| l >= 1), || "--per-user-limit must be at least 1".into())?;
    let existing = args.existing_deals.clone();
    check(existing.len() <= DEALS_MAX, || format!("at most {DEALS_MAX} --deal"))?;
    let deals = if existing.is_empty() { args.deals } else { existing.len() };

    let spacing = match args.spacing {
        SpacingArg::Poisson => Spacing::Poisson,
        SpacingArg::Even => Spacing::Even,
    };
    let duration_ms = args.duration_ms.unwrap_or(DURATION_MS_DEFAULT);
    check((1..=ARRIVAL_PHASE_MS_MAX).contains(&duration_ms), || {
        format!("--duration-ms must be 1..={ARRIVAL_PHASE_MS_MAX}")
    })?;
    let cap_us = args.duration_ms.map_or(u64::MAX, |ms| ms * 1_000);
    let (timing, profile, phase_us) = if args.closed_loop {
        let timing = match args.profile {
            ProfileArg::Replay => replay_timing(args, deals)?,
            _ => Timing::Unpaced,
        };
        let profile = format!("closed loop, {} in flight, {duration_ms} ms", args.concurrency);
        (timing, profile, duration_ms * 1_000)
    } else {
        let (timing, profile) = match args.profile {
            ProfileArg::Drop => {
                check(
                    args.ramp_ms + args.hold_ms + args.decay_ms > 0
                        && args.ramp_ms.max(args.hold_ms).max(args.decay_ms)
                            <= ARRIVAL_PHASE_MS_MAX,
                    || "the drop needs --ramp-ms, --hold-ms, --decay-ms within bounds".to_owned(),
                )?;
                let segments = drop_segments(args.rate, args.ramp_ms, args.hold_ms, args.decay_ms);
                let profile = format!(
                    "drop: 0 -> {:.0}/s in {} ms, {} ms at the peak, back to 0 in {} ms \
                     ({spacing})",
                    args.rate, args.ramp_ms, args.hold_ms, args.decay_ms
                );
                (Timing::Shaped { segments, spacing }, profile)
            }
            ProfileArg::Steady => {
                let profile =
                    format!("steady: {:.0}/s for {duration_ms} ms ({spacing})", args.rate);
                (
                    Timing::Shaped { segments: steady_segments(args.rate, duration_ms), spacing },
                    profile,
                )
            }
            ProfileArg::Replay => {
                let timing = replay_timing(args, deals)?;
                let profile = format!(
                    "replay of {}",
                    args.replay.as_ref().map_or(String::new(), |p| p.display().to_string())
                );
                (timing, profile)
            }
        };
        let phase_us = Schedule::span_us(&timing, cap_us);
        check(phase_us <= ARRIVAL_PHASE_MS_MAX * 1_000, || {
            format!("the arrival phase is over {ARRIVAL_PHASE_MS_MAX} ms; shorten the profile")
        })?;
        check(phase_us > 0, || "the profile has no arrivals".to_owned())?;
        let expected = Schedule::expected(&timing).unwrap_or(0.0);
        check(expected <= ARRIVALS_MAX as f64, || {
            format!("the profile expects {expected:.0} arrivals; at most {ARRIVALS_MAX}")
        })?;
        (timing, profile, phase_us)
    };

    let capacity = if args.find_capacity {
        let slo_ms = args.p99_slo_ms.unwrap_or(0.0);
        check(slo_ms.is_finite() && slo_ms > 0.0, || "--p99-slo-ms must be positive".to_owned())?;
        check(
            args.max_error_rate.is_finite() && (0.0..=1.0).contains(&args.max_error_rate),
            || "--max-error-rate must be in [0, 1]".to_owned(),
        )?;
        check((100..=ARRIVAL_PHASE_MS_MAX).contains(&args.step_duration_ms), || {
            format!("--step-duration-ms must be 100..={ARRIVAL_PHASE_MS_MAX}")
        })?;
        check(
            args.start_rate.is_finite()
                && args.start_rate >= 1.0
                && args.max_rate.is_finite()
                && args.start_rate <= args.max_rate
                && args.max_rate <= RATE_PER_S_MAX,
            || format!("need 1 <= --start-rate <= --max-rate <= {RATE_PER_S_MAX}"),
        )?;
        check(
            args.rate_factor.is_finite() && args.rate_factor > 1.0 && args.rate_factor <= 10.0,
            || "--rate-factor must be in (1, 10]".to_owned(),
        )?;
        check(!args.closed_loop, || "capacity mode is open loop; drop --closed-loop".to_owned())?;
        check(args.existing_deals.is_empty(), || {
            "capacity mode creates fresh deals for each step; drop --deal".to_owned()
        })?;
        check(args.plot.is_none(), || "--plot draws a single run, not a capacity search".into())?;
        check(args.max_rate * args.step_duration_ms as f64 / 1e3 <= ARRIVALS_MAX as f64, || {
            format!("a step at --max-rate would exceed {ARRIVALS_MAX} arrivals")
        })?;
        Some(CapacitySettings {
            slo: Slo { p99_ms_max: slo_ms, error_rate_max: args.max_error_rate },
            step_duration_ms: args.step_duration_ms,
            start_rate: args.start_rate,
            rate_factor: args.rate_factor,
            max_rate: args.max_rate,
            bisect_steps: args.bisect_steps.min(CAPACITY_STEPS_MAX),
            steps_max: CAPACITY_STEPS_MAX,
            step_retries: args.step_retries.min(CAPACITY_STEP_RETRIES_MAX),
        })
    } else {
        None
    };

    let seed = args.seed.unwrap_or_else(random_u64);
    let backend = Backend {
        kind: args.backend,
        target,
        timeout: Duration::from_millis(args.request_timeout_ms),
        pg: PgSettings { user: args.pg_user.clone(), dbname: args.pg_database.clone() },
    };
    Ok(Settings {
        backend,
        run_id: format!("ld{:08x}", random_u64() as u32),
        seed,
        mode: if args.closed_loop {
            Mode::Closed { concurrency: args.concurrency }
        } else {
            Mode::Open
        },
        connections: args.connections,
        timing,
        spacing,
        profile,
        phase_us,
        choices: Choices {
            deals: Zipf::new(deals, args.zipf),
            viewers: args.viewers,
            qty: args.qty,
            mix: Mix {
                confirm_ratio: args.confirm_ratio,
                release_ratio: args.release_ratio,
                delay_us_min: args.payment_delay_ms.min * 1_000,
                delay_us_max: args.payment_delay_ms.max * 1_000,
            },
        },
        qty: args.qty,
        deals,
        stock: args.stock,
        per_user_limit,
        existing_deals: existing,
        hold_ttl_ms: args.hold_ttl_ms,
        payment_delay_ms_max: args.payment_delay_ms.max,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        progress: !args.quiet,
        capacity,
    })
}

fn replay_timing(args: &LoadArgs, deals: usize) -> Result<Timing, String> {
    let path = args.replay.as_ref().ok_or("--profile replay needs --replay FILE")?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --replay {}: {e}", path.display()))?;
    let lines = parse_replay(&text)
        .map_err(|e| format!("{}: {e}\n(format: {REPLAY_FORMAT})", path.display()))?;
    check(lines.len() as u64 <= ARRIVALS_MAX, || {
        format!("the replay has over {ARRIVALS_MAX} lines")
    })?;
    if let Some(bad) = lines.iter().find(|l| l.deal.is_some_and(|d| d >= deals)) {
        return Err(format!(
            "{}: deal_index {} but the run has {deals} deals",
            path.display(),
            bad.deal.unwrap_or_default()
        ));
    }
    if let Some(bad) = lines.iter().find(|l| l.qty.is_some_and(|q| q > HOLD_QTY_MAX)) {
        return Err(format!("{}: qty {:?} is over {HOLD_QTY_MAX}", path.display(), bad.qty));
    }
    Ok(Timing::Replay(lines))
}

// ------------------------------------------------------------------ a run

/// What `livestock load` produced.
#[derive(Clone, Debug)]
pub enum LoadOutcome {
    Run(Box<RunReport>),
    Capacity(CapacityReport),
}

/// Runs the load the arguments describe, writes `--json` and `--plot` if asked, and returns
/// the report. Errors are set-up problems (bad arguments, no server, a deal that cannot be
/// created); a server that misbehaves under load is a report whose verification failed.
pub async fn run(args: &LoadArgs) -> Result<LoadOutcome, String> {
    let settings = settings(args)?;
    let outcome = if settings.capacity.is_some() {
        LoadOutcome::Capacity(capacity::find_capacity(&settings).await?)
    } else {
        LoadOutcome::Run(Box::new(single(&settings).await?))
    };
    if let Some(path) = &args.json {
        let json = match &outcome {
            LoadOutcome::Run(report) => serde_json::to_string_pretty(report),
            LoadOutcome::Capacity(report) => serde_json::to_string_pretty(report),
        }
        .map_err(|e| format!("cannot encode the report: {e}"))?;
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("cannot write --json {}: {e}", path.display()))?;
    }
    if let (Some(path), LoadOutcome::Run(report)) = (&args.plot, &outcome) {
        plot::write_svg(report, path)?;
    }
    Ok(outcome)
}

/// Reads the counters of every deal.
async fn read_all(admin: &mut Conn, ids: &[String]) -> Result<Vec<Counters>, String> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(admin.deal(id).await?.0);
    }
    Ok(out)
}

/// One run: set up the deals, drive the load, drain the holds, verify, report.
async fn single(s: &Settings) -> Result<RunReport, String> {
    let started = Instant::now();
    let mut admin = s.backend.admin().await?;
    // A peer's hold expiry (livestock runs its own), through the drain.
    let _reaper = s.backend.start_reaper(Duration::from_millis(EXPIRY_TICK_MS)).await?;
    let (ids, limits) = if s.existing_deals.is_empty() {
        let mut ids = Vec::new();
        for i in 0..s.deals {
            let id = format!("{}-d{i}", s.run_id);
            admin.create_deal(&id, s.stock, s.per_user_limit, s.hold_ttl_ms).await?;
            ids.push(id);
        }
        (ids, vec![s.per_user_limit; s.deals])
    } else {
        let mut limits = Vec::new();
        for id in &s.existing_deals {
            limits.push(admin.deal(id).await?.1);
        }
        (s.existing_deals.clone(), limits)
    };
    let before = read_all(&mut admin, &ids).await?;
    let deals = Deals { ids: ids.clone(), units: before.iter().map(|c| c.available).collect() };
    let end_us = match s.mode {
        Mode::Open => s.phase_us,
        Mode::Closed { .. } => u64::MAX,
    };
    let schedule = Schedule::new(s.timing.clone(), s.choices.clone(), s.seed, end_us, ARRIVALS_MAX);
    let plan = Plan {
        backend: s.backend.clone(),
        mode: s.mode,
        connections: s.connections,
        schedule,
        phase_us: s.phase_us,
        hold_ttl_ms: s.hold_ttl_ms,
        run_id: s.run_id.clone(),
        poll_stock: true,
        progress: s.progress,
    };
    let mut driver = Driver::start(plan, &deals).await?;
    let completed = driver.finish(s.deadline_us(s.phase_us)).await;
    let arrival_phase_ms = s.phase_us as f64 / 1e3;

    // Drain: holds left to expire come back within their TTL; wait (bounded) until every
    // deal holds no more than it did before the run.
    let drain_until = Instant::now() + Duration::from_millis(s.hold_ttl_ms + DRAIN_GRACE_MS);
    let (after, drained) = loop {
        let now = read_all(&mut admin, &ids).await?;
        let drained = now.iter().zip(&before).all(|(a, b)| a.held <= b.held);
        if drained || Instant::now() >= drain_until {
            break (now, drained);
        }
        tokio::time::sleep(Duration::from_millis(driver::STOCK_POLL_MS)).await;
    };
    // One more stock sample at the end, then stop the watchers.
    tokio::time::sleep(Duration::from_millis(driver::STOCK_POLL_MS)).await;
    let driven = driver.stop(completed);

    let states: Vec<DealState<'_>> = ids
        .iter()
        .zip(&before)
        .zip(&after)
        .zip(&limits)
        .map(|(((id, b), a), l)| DealState { id, before: *b, after: *a, per_user_limit: *l })
        .collect();
    let mut verification = verify(&states, &driven.ledger, drained);
    if !completed {
        verification.passed = false;
        verification.problems.push(format!(
            "{} requests were still unanswered at the run's deadline; the ledger is incomplete",
            driven.abandoned
        ));
    }
    let sold_out_ms: Vec<Option<f64>> = driven
        .ledger
        .deals
        .iter()
        .map(|d| d.first_sold_out_us.map(|us| (us as f64 / 1e3).round()))
        .collect();
    let (mode, latency_from) = match s.mode {
        Mode::Open => ("open_loop", report::OPEN_LOOP_LABEL),
        Mode::Closed { .. } => ("closed_loop", report::CLOSED_LOOP_LABEL),
    };
    Ok(RunReport {
        mode,
        latency_from,
        target: s.backend.target.to_string(),
        backend: s.backend.kind.as_str(),
        run_id: s.run_id.clone(),
        seed: s.seed,
        profile: s.profile.clone(),
        deals: ids.len(),
        stock_units: before.iter().map(|c| c.available).sum(),
        viewers: s.choices.viewers,
        arrival_phase_ms,
        wall_ms: (started.elapsed().as_secs_f64() * 1e3).round(),
        measured: driven.recorder.measurements(),
        sell_out: SellOut {
            deals_sold_out: sold_out_ms.iter().filter(|t| t.is_some()).count(),
            hot_deal_ms: sold_out_ms.first().copied().flatten(),
            per_deal_ms: sold_out_ms.into_iter().take(100).collect(),
        },
        fairness: driven.ledger.fairness(),
        verification,
    })
}

/// `livestock load`: runs, prints the summary, exits 0 if the verification passed (1 if not,
/// 2 on a set-up error).
pub fn main(args: LoadArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.clamp(1, CLIENT_THREADS_MAX))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(&args)) {
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Ok(LoadOutcome::Run(report)) => {
            let mut text = report::render(&report);
            if let Some(path) = &args.json {
                text.push_str(&format!("report: {}\n", path.display()));
            }
            if let Some(path) = &args.plot {
                text.push_str(&format!("plot: {}\n", path.display()));
            }
            say(&text);
            if report.verification.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(LoadOutcome::Capacity(report)) => {
            say(&report.render());
            if report.oversell_units > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

/// Prints to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn say(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Settings, String> {
        let mut argv = vec!["load"];
        argv.extend_from_slice(extra);
        let args = LoadArgs::parse_from_args(argv).map_err(|e| e.to_string())?;
        settings(&args)
    }

    #[test]
    fn defaults_are_a_bounded_drop_on_loopback() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.backend.target.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.backend.kind, BackendKind::Http);
        let redis = parse(&["--backend", "redis", "--target", "127.0.0.1:6379"]).unwrap();
        assert_eq!(redis.backend.kind, BackendKind::Redis);
        let pg = parse(&["--backend", "postgres", "--target", "localhost:5432", "--pg-user", "u"])
            .unwrap();
        assert_eq!((pg.backend.kind, pg.backend.pg.user.as_str()), (BackendKind::Postgres, "u"));
        assert_eq!(s.mode, Mode::Open);
        assert_eq!(s.phase_us, 3_500_000);
        assert_eq!(s.deals, 1);
        assert!(s.run_id.starts_with("ld") && s.run_id.len() == 10);
        let steady = parse(&["--profile", "steady"]).unwrap();
        assert_eq!(steady.phase_us, DURATION_MS_DEFAULT * 1_000);
        let cut = parse(&["--duration-ms", "1000"]).unwrap();
        assert_eq!(cut.phase_us, 1_000_000, "--duration-ms cuts a drop short");
        let closed = parse(&["--closed-loop", "--concurrency", "8"]).unwrap();
        assert_eq!(closed.mode, Mode::Closed { concurrency: 8 });
        assert!(s.deadline_us(s.phase_us) > s.phase_us);
    }

    #[test]
    fn refuses_what_is_out_of_bounds() {
        for (argv, says) in [
            (&["--target", "10.0.0.1:8080"][..], "refusing"),
            (&["--target", "example.com:80"][..], "refusing"),
            (&["--backend", "redis", "--target", "10.0.0.2:6379"][..], "refusing"),
            (&["--backend", "postgres", "--target", "192.168.0.9:5432"][..], "refusing"),
            (&["--rate", "0"][..], "--rate"),
            (&["--rate", "1e9"][..], "--rate"),
            (&["--confirm-ratio", "0.8", "--release-ratio", "0.3"][..], "add up"),
            (&["--hold-ttl-ms", "10"][..], "--hold-ttl-ms"),
            (&["--duration-ms", "0"][..], "--duration-ms"),
            (&["--duration-ms", "99999999"][..], "--duration-ms"),
            (&["--stock", "0"][..], "--stock"),
            (&["--profile", "replay"][..], "--replay FILE"),
            (
                &["--profile", "steady", "--rate", "1000000", "--duration-ms", "600000"][..],
                "arrivals",
            ),
            (&["--find-capacity", "--p99-slo-ms", "0"][..], "--p99-slo-ms"),
            (&["--find-capacity", "--p99-slo-ms", "5", "--plot", "x.svg"][..], "--plot"),
            (&["--payment-delay-ms", "9..3"][..], "MIN is above MAX"),
        ] {
            let e = parse(argv).err().unwrap_or_else(|| panic!("{argv:?} was accepted"));
            assert!(e.contains(says), "{argv:?}: {e}");
        }
        assert!(parse(&["--find-capacity"]).is_err(), "capacity needs an SLO");
    }

    #[test]
    fn payment_delay_ranges_parse() {
        assert_eq!(parse_ms_range("200..1500"), Ok(MsRange { min: 200, max: 1_500 }));
        assert_eq!(parse_ms_range("300"), Ok(MsRange { min: 300, max: 300 }));
        assert!(parse_ms_range("a..b").is_err());
    }

    #[test]
    fn replay_files_are_checked_against_the_run() {
        let dir = std::env::temp_dir().join(format!("livestock-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.txt");
        std::fs::write(&good, "0\n10 1\n20 0 2\n").unwrap();
        let s = parse(&["--profile", "replay", "--replay", good.to_str().unwrap(), "--deals", "2"])
            .unwrap();
        assert_eq!(s.phase_us, 20_001);
        let e = parse(&["--profile", "replay", "--replay", good.to_str().unwrap()]).unwrap_err();
        assert!(e.contains("deal_index 1"), "{e}");
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "0\nten\n").unwrap();
        let e = parse(&["--profile", "replay", "--replay", bad.to_str().unwrap()]).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
