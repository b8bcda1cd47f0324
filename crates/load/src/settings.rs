//! The arguments checked against the bounds ([`crate::limits`]) and turned into [`Settings`]:
//! every number within its bound, the profile complete, the target on this machine.

use std::time::Duration;

use livestock_core::limits::{HOLD_QTY_MAX, HOLD_TTL_MS_MIN};

use crate::args::{LoadArgs, ProfileArg, SpacingArg};
use crate::backend::{Backend, BackendKind};
use crate::capacity::Slo;
use crate::client::Target;
use crate::driver::Mode;
use crate::limits::{
    ARRIVALS_MAX, ARRIVALS_MAX_F64, ARRIVAL_PHASE_MS_MAX, CAPACITY_RATE_FACTOR_MAX,
    CAPACITY_STEPS_MAX, CAPACITY_STEP_MS_MIN, CAPACITY_STEP_RETRIES_MAX, CLIENT_THREADS_MAX,
    CONNECTIONS_MAX, DRAIN_GRACE_MS, DRAW_FAIRNESS_SEEDS_MAX, DURATION_MS_DEFAULT,
    ENTRY_POLL_RATE_MAX, FEED_SUBSCRIBERS_MAX, PAYMENT_DELAY_MS_MAX, RATE_PER_S_MAX,
    REQUEST_TIMEOUT_MS_MAX, RETRIES_CLUSTER_DEFAULT, RETRIES_MAX, RUN_DEALS_MAX,
    RUN_DEAL_STOCK_UNITS_MAX, RUN_HOLD_TTL_MS_MAX, RUN_WAITLIST_MAX, WAITLIST_WINDOW_MS_MAX,
    WAIT_MS_MAX, ZIPF_EXPONENT_MAX,
};
use crate::postgres::PgSettings;
use crate::random::Zipf;
use crate::schedule::{
    drop_segments, parse_replay, steady_segments, Choices, Mix, Schedule, Segment, Spacing, Timing,
    REPLAY_FORMAT,
};

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

/// `--waitlist`: the created deals' waitlist, and how the tool follows its entries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WaitlistSettings {
    /// `waitlist_max` of each created deal.
    pub max: u32,
    /// `offer_ttl_ms` of each created deal.
    pub offer_ttl_ms: u64,
    /// Entry reads per second, all entries together.
    pub poll_rate_per_s: f64,
    /// Entries are followed this long after the arrival phase; then those still waiting are
    /// cancelled.
    pub window_ms: u64,
    /// `--draw-window-ms`: the deals' draw window.
    pub draw_window_ms: Option<u64>,
    pub draw_fairness_seeds: u32,
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
    /// How long to wait for the target to answer before the run (zero: not at all).
    pub wait: Duration,
    pub capacity: Option<CapacitySettings>,
    /// `--feed-subscribers`: live-feed connections opened before the run (0: none).
    pub feed_subscribers: usize,
    /// `--server-pid`: whose resident memory to read around the subscribers.
    pub server_pid: Option<u32>,
    /// `--waitlist`.
    pub waitlist: Option<WaitlistSettings>,
}

impl Settings {
    /// The instant (µs from the start) by which every request of a phase of `phase_us` must
    /// have been answered: the last follow-up is sent a payment delay after its reserve's
    /// answer, and each may take a timeout.
    pub fn deadline_us(&self, phase_us: u64) -> u64 {
        phase_us
            + self.waitlist.map_or(0, |w| w.window_ms * 1_000)
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
        let time = now.map_or(0, |d| d.as_secs().rotate_left(32) ^ u64::from(d.subsec_nanos()));
        return time ^ u64::from(std::process::id());
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
    let targets = Target::parse_list(&args.target)?
        .into_iter()
        .map(|t| t.with_token(args.token.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    check(args.backend == BackendKind::Http || targets.len() == 1, || {
        format!("--backend {} drives one server: give one --target", args.backend)
    })?;
    let retries_default = if targets.len() > 1 { RETRIES_CLUSTER_DEFAULT } else { 0 };
    let retries = args.retries.unwrap_or(retries_default);
    check(retries <= RETRIES_MAX, || format!("--retries must be 0..={RETRIES_MAX}"))?;
    check(args.backend == BackendKind::Http || retries == 0, || {
        format!("--backend {} is not retried: drop --retries", args.backend)
    })?;
    check(args.rate.is_finite() && args.rate > 0.0 && args.rate <= RATE_PER_S_MAX, || {
        format!("--rate must be in (0, {RATE_PER_S_MAX}]")
    })?;
    check((1..=u64::from(u32::MAX)).contains(&args.viewers), || {
        "--viewers must be at least 1".to_owned()
    })?;
    check((1..=HOLD_QTY_MAX).contains(&args.qty), || format!("--qty must be 1..={HOLD_QTY_MAX}"))?;
    check((1..=RUN_DEALS_MAX).contains(&args.deals), || {
        format!("--deals must be 1..={RUN_DEALS_MAX}")
    })?;
    check(args.zipf.is_finite() && (0.0..=ZIPF_EXPONENT_MAX).contains(&args.zipf), || {
        format!("--zipf must be in [0, {ZIPF_EXPONENT_MAX}]")
    })?;
    check((1..=RUN_DEAL_STOCK_UNITS_MAX).contains(&args.stock), || {
        format!("--stock must be 1..={RUN_DEAL_STOCK_UNITS_MAX}")
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
    check((HOLD_TTL_MS_MIN..=RUN_HOLD_TTL_MS_MAX).contains(&args.hold_ttl_ms), || {
        format!("--hold-ttl-ms must be {HOLD_TTL_MS_MIN}..={RUN_HOLD_TTL_MS_MAX}")
    })?;
    check(args.feed_subscribers <= FEED_SUBSCRIBERS_MAX, || {
        format!("--feed-subscribers must be 0..={FEED_SUBSCRIBERS_MAX}")
    })?;
    check(args.feed_subscribers == 0 || args.backend == BackendKind::Http, || {
        format!("--backend {} has no live feed: drop --feed-subscribers", args.backend)
    })?;
    check(args.feed_subscribers == 0 || !args.find_capacity, || {
        "--feed-subscribers is for one run, not --find-capacity".to_owned()
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
    check(args.wait_ms <= WAIT_MS_MAX, || format!("--wait-ms must be 0..={WAIT_MS_MAX}"))?;
    let per_user_limit = args.per_user_limit;
    check(per_user_limit.is_none_or(|l| l >= 1), || "--per-user-limit must be at least 1".into())?;
    let existing = args.existing_deals.clone();
    check(existing.len() <= RUN_DEALS_MAX, || format!("at most {RUN_DEALS_MAX} --deal"))?;
    let deals = if existing.is_empty() { args.deals } else { existing.len() };
    let waitlist = if args.waitlist { Some(waitlist_settings(args)?) } else { None };

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
        check(expected <= ARRIVALS_MAX_F64, || {
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
        check(
            (CAPACITY_STEP_MS_MIN..=ARRIVAL_PHASE_MS_MAX).contains(&args.step_duration_ms),
            || {
                format!(
                    "--step-duration-ms must be {CAPACITY_STEP_MS_MIN}..={ARRIVAL_PHASE_MS_MAX}"
                )
            },
        )?;
        check(
            args.start_rate.is_finite()
                && args.start_rate >= 1.0
                && args.max_rate.is_finite()
                && args.start_rate <= args.max_rate
                && args.max_rate <= RATE_PER_S_MAX,
            || format!("need 1 <= --start-rate <= --max-rate <= {RATE_PER_S_MAX}"),
        )?;
        check(
            args.rate_factor.is_finite()
                && args.rate_factor > 1.0
                && args.rate_factor <= CAPACITY_RATE_FACTOR_MAX,
            || format!("--rate-factor must be in (1, {CAPACITY_RATE_FACTOR_MAX}]"),
        )?;
        check(!args.closed_loop, || "capacity mode is open loop; drop --closed-loop".to_owned())?;
        check(args.existing_deals.is_empty(), || {
            "capacity mode creates fresh deals for each step; drop --deal".to_owned()
        })?;
        check(args.plot.is_none(), || "--plot draws a single run, not a capacity search".into())?;
        let step = steady_segments(args.max_rate, args.step_duration_ms);
        let step_expected: f64 = step.iter().map(Segment::expected).sum();
        check(step_expected <= ARRIVALS_MAX_F64, || {
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
        targets,
        timeout: Duration::from_millis(args.request_timeout_ms),
        retries,
        pg: PgSettings { user: args.pg_user.clone(), dbname: args.pg_database.clone() },
    };
    Ok(Settings {
        backend,
        // The high half: eight hex digits.
        run_id: format!("ld{:08x}", random_u64() >> 32),
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
        feed_subscribers: args.feed_subscribers,
        server_pid: args.server_pid,
        wait: Duration::from_millis(args.wait_ms),
        capacity,
        waitlist,
    })
}

/// `--waitlist` and its bounds: drop and steady runs that create their deals, on livestock.
fn waitlist_settings(args: &LoadArgs) -> Result<WaitlistSettings, String> {
    check(args.backend == BackendKind::Http, || {
        format!("--backend {} has no waitlist: drop --waitlist", args.backend)
    })?;
    check(matches!(args.profile, ProfileArg::Drop | ProfileArg::Steady), || {
        "--waitlist drives the drop and steady profiles".to_owned()
    })?;
    check(!args.closed_loop && !args.find_capacity, || {
        "--waitlist is for one open-loop run (not --closed-loop or --find-capacity)".to_owned()
    })?;
    check(args.existing_deals.is_empty(), || {
        "--waitlist creates its deals with a waitlist: drop --deal".to_owned()
    })?;
    let max = args.waitlist_max.unwrap_or_else(|| {
        u32::try_from(args.viewers.min(u64::from(RUN_WAITLIST_MAX))).unwrap_or(RUN_WAITLIST_MAX)
    });
    check((1..=RUN_WAITLIST_MAX).contains(&max), || {
        format!("--waitlist-max must be 1..={RUN_WAITLIST_MAX}")
    })?;
    let offer_ttl_ms = args.offer_ttl_ms.unwrap_or(args.hold_ttl_ms);
    check((HOLD_TTL_MS_MIN..=RUN_HOLD_TTL_MS_MAX).contains(&offer_ttl_ms), || {
        format!("--offer-ttl-ms must be {HOLD_TTL_MS_MIN}..={RUN_HOLD_TTL_MS_MAX}")
    })?;
    let rate = args.entry_poll_rate;
    check(rate.is_finite() && (1.0..=ENTRY_POLL_RATE_MAX).contains(&rate), || {
        format!("--entry-poll-rate must be in [1, {ENTRY_POLL_RATE_MAX}]")
    })?;
    let window_ms =
        args.waitlist_ms.unwrap_or(args.hold_ttl_ms + 2 * offer_ttl_ms + args.payment_delay_ms.max);
    check(window_ms <= WAITLIST_WINDOW_MS_MAX, || {
        format!("--waitlist-ms must be 0..={WAITLIST_WINDOW_MS_MAX}")
    })?;
    if let Some(draw) = args.draw_window_ms {
        use livestock_core::limits::{DRAW_WINDOW_MS_MAX, DRAW_WINDOW_MS_MIN};
        check((DRAW_WINDOW_MS_MIN..=DRAW_WINDOW_MS_MAX).contains(&draw), || {
            format!("--draw-window-ms must be {DRAW_WINDOW_MS_MIN}..={DRAW_WINDOW_MS_MAX}")
        })?;
    }
    check(args.draw_fairness_seeds <= DRAW_FAIRNESS_SEEDS_MAX, || {
        format!("--draw-fairness-seeds must be at most {DRAW_FAIRNESS_SEEDS_MAX}")
    })?;
    Ok(WaitlistSettings {
        max,
        offer_ttl_ms,
        poll_rate_per_s: rate,
        window_ms,
        draw_window_ms: args.draw_window_ms,
        draw_fairness_seeds: args.draw_fairness_seeds,
    })
}

fn replay_timing(args: &LoadArgs, deals: usize) -> Result<Timing, String> {
    let path = args.replay.as_ref().ok_or("--profile replay needs --replay FILE")?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --replay {}: {e}", path.display()))?;
    let lines = parse_replay(&text)
        .map_err(|e| format!("{}: {e}\n(format: {REPLAY_FORMAT})", path.display()))?;
    check(u64::try_from(lines.len()).is_ok_and(|n| n <= ARRIVALS_MAX), || {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::WAIT_MS_DEFAULT;

    fn parse(extra: &[&str]) -> Result<Settings, String> {
        let mut argv = vec!["livestock-load"];
        argv.extend_from_slice(extra);
        let args = LoadArgs::parse_from_args(argv).map_err(|e| e.to_string())?;
        settings(&args)
    }

    #[test]
    fn defaults_are_a_bounded_drop_on_loopback() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.backend.targets.len(), 1);
        assert_eq!(s.backend.target().addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.backend.retries, 0, "one target: no retries unless asked");
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
        assert_eq!(s.wait, Duration::from_millis(WAIT_MS_DEFAULT));
        assert_eq!(parse(&["--wait-ms", "0"]).unwrap().wait, Duration::ZERO, "0: no wait");
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
            (&["--wait-ms", "600001"][..], "--wait-ms"),
            (&["--deals", "10001"][..], "--deals"),
            (&["--target", "127.0.0.1:1,10.0.0.1:2"][..], "refusing"),
            (&["--target", "127.0.0.1:1,127.0.0.1:1"][..], "twice"),
            (&["--target", "127.0.0.1:1,"][..], "refusing"),
            (&["--backend", "redis", "--target", "127.0.0.1:1,127.0.0.1:2"][..], "one --target"),
            (&["--backend", "redis", "--target", "127.0.0.1:1", "--retries", "1"][..], "retried"),
            (&["--retries", "101"][..], "--retries"),
            (&["--waitlist", "--profile", "replay"][..], "drop and steady"),
            (&["--waitlist", "--backend", "redis", "--target", "127.0.0.1:1"][..], "no waitlist"),
            (&["--waitlist", "--closed-loop"][..], "open-loop"),
            (&["--waitlist", "--deal", "x"][..], "drop --deal"),
            (&["--waitlist", "--waitlist-max", "1000001"][..], "--waitlist-max"),
            (&["--waitlist", "--waitlist-max", "0"][..], "--waitlist-max"),
            (&["--waitlist", "--offer-ttl-ms", "10"][..], "--offer-ttl-ms"),
            (&["--waitlist", "--entry-poll-rate", "0"][..], "--entry-poll-rate"),
            (&["--waitlist", "--waitlist-ms", "600001"][..], "--waitlist-ms"),
        ] {
            let e = parse(argv).err().unwrap_or_else(|| panic!("{argv:?} was accepted"));
            assert!(e.contains(says), "{argv:?}: {e}");
        }
        assert!(parse(&["--find-capacity"]).is_err(), "capacity needs an SLO");
    }

    #[test]
    fn a_waitlist_run_defaults_to_the_viewers_and_the_hold_ttl() {
        assert_eq!(parse(&[]).unwrap().waitlist, None);
        let s = parse(&["--waitlist", "--viewers", "50000"]).unwrap();
        let w = s.waitlist.unwrap();
        assert_eq!(w.max, 50_000);
        assert_eq!(w.offer_ttl_ms, 5_000, "the hold TTL");
        assert_eq!(w.window_ms, 5_000 + 2 * 5_000 + 1_500);
        assert!(s.deadline_us(s.phase_us) > s.phase_us + w.window_ms * 1_000);
        let many = parse(&["--waitlist", "--viewers", "5000000"]).unwrap();
        assert_eq!(many.waitlist.unwrap().max, RUN_WAITLIST_MAX, "capped at the server's");
        let set = parse(&[
            "--waitlist",
            "--waitlist-max",
            "7",
            "--offer-ttl-ms",
            "2000",
            "--entry-poll-rate",
            "50",
            "--waitlist-ms",
            "0",
            "--profile",
            "steady",
        ])
        .unwrap();
        let w = set.waitlist.unwrap();
        assert_eq!((w.max, w.offer_ttl_ms, w.window_ms), (7, 2_000, 0));
        assert!((w.poll_rate_per_s - 50.0).abs() < 1e-9);
        assert!(
            LoadArgs::parse_from_args(["l", "--waitlist-max", "3"]).is_err(),
            "needs --waitlist"
        );
    }

    #[test]
    fn several_targets_are_a_cluster_with_retries() {
        let s = parse(&["--target", "127.0.0.1:8081, localhost:8082,[::1]:8083"]).unwrap();
        let addrs: Vec<String> = s.backend.targets.iter().map(|t| t.addr.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:8081", "127.0.0.1:8082", "[::1]:8083"]);
        assert!(s.backend.is_cluster());
        assert_eq!(s.backend.targets_label(), "127.0.0.1:8081,127.0.0.1:8082,[::1]:8083");
        assert_eq!(s.backend.retries, RETRIES_CLUSTER_DEFAULT);
        let none = parse(&["--target", "127.0.0.1:8081,127.0.0.1:8082", "--retries", "0"]);
        assert_eq!(none.unwrap().backend.retries, 0);
        let one = parse(&["--target", "127.0.0.1:8081", "--retries", "3"]).unwrap();
        assert_eq!((one.backend.is_cluster(), one.backend.retries), (false, 3));
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
