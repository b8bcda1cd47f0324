//! Arrival schedules: when each viewer taps *buy*, on which deal, for how many units, and what
//! the viewer does after a successful reserve.
//!
//! Pure: no clock, no I/O, no threads. Two seeded generators (one for times, one for choices)
//! make a run reproducible with `--seed`, and changing the follow-up mix does not move the
//! arrival instants.
//!
//! Rates are piecewise linear in time (a drop ramps up, holds, decays; a steady run is one flat
//! segment). Arrival instants come from inverting the cumulative rate: the k-th arrival is where
//! the expected count reaches the k-th point of a unit-rate Poisson process (or exactly k, for
//! evenly spaced arrivals).

use std::fmt;

use crate::limits::exact_f64;
use crate::random::{Rng, Zipf};

/// A stretch of time whose arrival rate moves linearly from `rate_start_per_s` to
/// `rate_end_per_s`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Segment {
    pub duration_us: u64,
    pub rate_start_per_s: f64,
    pub rate_end_per_s: f64,
}

impl Segment {
    /// The expected number of arrivals in the segment.
    pub fn expected(&self) -> f64 {
        (self.rate_start_per_s + self.rate_end_per_s) / 2.0 * exact_f64(self.duration_us) / 1e6
    }

    /// The instant (µs from the segment's start) at which the expected count reaches `lambda`
    /// (`0 <= lambda <= expected()`). With rate `a + k t`, the count is `a t + k t^2 / 2`;
    /// solving for `t` in the form `2 lambda / (a + sqrt(a^2 + 2 k lambda))` stays accurate
    /// when `k` is tiny or negative and when `a` is zero.
    fn instant_of(&self, lambda: f64) -> f64 {
        let d = exact_f64(self.duration_us) / 1e6;
        let a = self.rate_start_per_s;
        let k = (self.rate_end_per_s - a) / d;
        let root = (a * a + 2.0 * k * lambda).max(0.0).sqrt();
        let t = if a + root > 0.0 { 2.0 * lambda / (a + root) } else { 0.0 };
        (t * 1e6).clamp(0.0, exact_f64(self.duration_us))
    }
}

/// The livestream drop: from zero to `peak` in `ramp`, `peak` for `hold`, back to zero in
/// `decay`.
pub fn drop_segments(peak_per_s: f64, ramp_ms: u64, hold_ms: u64, decay_ms: u64) -> Vec<Segment> {
    [(ramp_ms, 0.0, peak_per_s), (hold_ms, peak_per_s, peak_per_s), (decay_ms, peak_per_s, 0.0)]
        .into_iter()
        .filter(|&(ms, _, _)| ms > 0)
        .map(|(ms, rate_start_per_s, rate_end_per_s)| Segment {
            duration_us: ms * 1_000,
            rate_start_per_s,
            rate_end_per_s,
        })
        .collect()
}

pub fn steady_segments(rate_per_s: f64, duration_ms: u64) -> Vec<Segment> {
    vec![Segment {
        duration_us: duration_ms * 1_000,
        rate_start_per_s: rate_per_s,
        rate_end_per_s: rate_per_s,
    }]
}

/// How arrival instants are spread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spacing {
    /// Independent taps: exponential gaps (a Poisson process with the profile's rate).
    Poisson,
    /// Evenly spaced at the profile's rate (a metronome; useful to compare with Poisson).
    Even,
}

/// One line of a replay file: when, and optionally which deal and how many units.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReplayLine {
    pub offset_us: u64,
    pub deal: Option<usize>,
    pub qty: Option<u32>,
}

/// Where the arrival instants come from.
#[derive(Clone, Debug)]
pub enum Timing {
    /// A piecewise-linear rate.
    Shaped { segments: Vec<Segment>, spacing: Spacing },
    /// A recorded schedule.
    Replay(Vec<ReplayLine>),
    /// Closed loop: no instants; the next arrival goes as soon as a worker is free. Endless
    /// (the driver stops it by time).
    Unpaced,
}

/// The replay file format, for `--help` and the docs.
pub const REPLAY_FORMAT: &str = "one arrival per line: `offset_ms [deal_index [qty]]`; offset_ms \
     is milliseconds from the start (decimals allowed, non-decreasing), deal_index is 0-based \
     into the run's deals (default: a Zipf pick), qty defaults to --qty; blank lines and lines \
     starting with # are ignored";

/// Parses a replay file (see [`REPLAY_FORMAT`]). Errors name the line.
pub fn parse_replay(text: &str) -> Result<Vec<ReplayLine>, String> {
    let mut lines = Vec::new();
    let mut last_us = 0;
    for (n, raw) in text.lines().enumerate() {
        let n = n + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let offset = fields.next().unwrap_or_default();
        let offset_ms: f64 = offset
            .parse()
            .ok()
            .filter(|ms: &f64| ms.is_finite() && *ms >= 0.0 && *ms < 1e12)
            .ok_or_else(|| format!("line {n}: offset_ms {offset:?} is not a number >= 0"))?;
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "offset_ms is finite and in [0, 1e12) (checked above): the µs fit a u64"
        )]
        let offset_us = (offset_ms * 1_000.0).round() as u64;
        if offset_us < last_us {
            return Err(format!("line {n}: offset {offset_ms} ms goes back in time"));
        }
        last_us = offset_us;
        let deal = match fields.next() {
            None => None,
            Some(raw) => Some(
                raw.parse::<usize>()
                    .map_err(|_| format!("line {n}: deal_index {raw:?} is not an integer >= 0"))?,
            ),
        };
        let qty = match fields.next() {
            None => None,
            Some(raw) => Some(
                raw.parse::<u32>()
                    .ok()
                    .filter(|&q| q > 0)
                    .ok_or_else(|| format!("line {n}: qty {raw:?} is not an integer >= 1"))?,
            ),
        };
        if let Some(extra) = fields.next() {
            return Err(format!("line {n}: unexpected {extra:?} (format: {REPLAY_FORMAT})"));
        }
        lines.push(ReplayLine { offset_us, deal, qty });
    }
    Ok(lines)
}

/// What a viewer does after a successful reserve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Pays, then confirms `delay_us` after the reserve was answered.
    Confirm { delay_us: u64 },
    /// Changes their mind and releases `delay_us` after the reserve was answered.
    Release { delay_us: u64 },
    /// Walks away; the hold expires on its TTL.
    Expire,
}

/// The follow-up mix: probabilities of confirm and release (the rest let the hold expire), and
/// the payment delay range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    pub confirm_ratio: f64,
    pub release_ratio: f64,
    pub delay_us_min: u64,
    pub delay_us_max: u64,
}

/// Everything about an arrival except its instant.
#[derive(Clone, Debug)]
pub struct Choices {
    pub deals: Zipf,
    pub viewers: u64,
    pub qty: u32,
    pub mix: Mix,
}

/// One tap on *buy*.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    /// 0, 1, 2, ... in order of intended time.
    pub index: u64,
    /// The intended send instant, µs from the start of the run (0 when unpaced).
    pub offset_us: u64,
    pub deal: usize,
    pub viewer: u64,
    pub qty: u32,
    pub after: After,
}

/// The arrivals of a run, in order of intended time. An iterator, so a long run never holds
/// its whole schedule in memory.
pub struct Schedule {
    timing: Timing,
    choices: Choices,
    cursor: Cursor,
    choice_rng: Rng,
    /// Arrivals at or after this instant are not generated.
    end_us: u64,
    /// At most this many arrivals.
    arrivals_max: u64,
    next_index: u64,
}

/// Where a shaped schedule is: the current segment, its start, and the position of the
/// unit-rate "clock" inside it.
struct Cursor {
    rng: Rng,
    segment: usize,
    segment_start_us: u64,
    lambda: f64,
}

impl Cursor {
    /// The next instant of a shaped schedule, or `None` past its last segment.
    fn next_us(&mut self, segments: &[Segment], spacing: Spacing, first: bool) -> Option<u64> {
        self.lambda += match spacing {
            Spacing::Poisson => self.rng.exp1(),
            // The first arrival half a gap in, so a flat segment is symmetric.
            Spacing::Even if first => 0.5,
            Spacing::Even => 1.0,
        };
        loop {
            let segment = segments.get(self.segment)?;
            let expected = segment.expected();
            if self.lambda <= expected {
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    reason = "instant_of clamps to [0, duration_us], a u64"
                )]
                let t_us = segment.instant_of(self.lambda) as u64;
                return Some(self.segment_start_us + t_us);
            }
            self.lambda -= expected;
            self.segment_start_us += segment.duration_us;
            self.segment += 1;
        }
    }
}

impl Schedule {
    pub fn new(
        timing: Timing,
        choices: Choices,
        seed: u64,
        end_us: u64,
        arrivals_max: u64,
    ) -> Schedule {
        Schedule {
            timing,
            choices,
            cursor: Cursor { rng: Rng::new(seed), segment: 0, segment_start_us: 0, lambda: 0.0 },
            choice_rng: Rng::new(seed ^ 0xC401_CE5E_ED00_0001),
            end_us,
            arrivals_max,
            next_index: 0,
        }
    }

    /// The expected number of arrivals (before the end and count caps), for display.
    pub fn expected(timing: &Timing) -> Option<f64> {
        match timing {
            Timing::Shaped { segments, .. } => Some(segments.iter().map(Segment::expected).sum()),
            Timing::Replay(lines) => Some(u64::try_from(lines.len()).map_or(f64::MAX, exact_f64)),
            Timing::Unpaced => None,
        }
    }

    /// The length of the arrival phase: the last instant a schedule can produce, capped.
    pub fn span_us(timing: &Timing, end_us: u64) -> u64 {
        let span = match timing {
            Timing::Shaped { segments, .. } => segments.iter().map(|s| s.duration_us).sum(),
            Timing::Replay(lines) => lines.last().map_or(0, |l| l.offset_us + 1),
            Timing::Unpaced => end_us,
        };
        span.min(end_us)
    }
}

impl Iterator for Schedule {
    type Item = Arrival;

    fn next(&mut self) -> Option<Arrival> {
        if self.next_index >= self.arrivals_max {
            return None;
        }
        let (offset_us, deal, qty) = match &self.timing {
            Timing::Shaped { segments, spacing } => {
                (self.cursor.next_us(segments, *spacing, self.next_index == 0)?, None, None)
            }
            Timing::Replay(lines) => {
                let line = lines.get(usize::try_from(self.next_index).ok()?)?;
                (line.offset_us, line.deal, line.qty)
            }
            Timing::Unpaced => (0, None, None),
        };
        if offset_us >= self.end_us {
            return None;
        }
        let rng = &mut self.choice_rng;
        let c = &self.choices;
        // Always draw the same numbers per arrival, whether or not a replay line overrides
        // them, so the choices do not depend on the file's columns.
        let picked = c.deals.sample(rng);
        let viewer = rng.below(c.viewers.max(1));
        let roll = rng.next_f64();
        let delay_us = rng.between(c.mix.delay_us_min, c.mix.delay_us_max);
        let after = if roll < c.mix.confirm_ratio {
            After::Confirm { delay_us }
        } else if roll < c.mix.confirm_ratio + c.mix.release_ratio {
            After::Release { delay_us }
        } else {
            After::Expire
        };
        let arrival = Arrival {
            index: self.next_index,
            offset_us,
            deal: deal.unwrap_or(picked),
            viewer,
            qty: qty.unwrap_or(c.qty),
            after,
        };
        self.next_index += 1;
        Some(arrival)
    }
}

impl fmt::Display for Spacing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Spacing::Poisson => "poisson",
            Spacing::Even => "even",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choices(deals: usize, zipf: f64) -> Choices {
        Choices {
            deals: Zipf::new(deals, zipf),
            viewers: 1_000,
            qty: 1,
            mix: Mix {
                confirm_ratio: 0.5,
                release_ratio: 0.25,
                delay_us_min: 100,
                delay_us_max: 200,
            },
        }
    }

    fn shaped(segments: Vec<Segment>, spacing: Spacing) -> Timing {
        Timing::Shaped { segments, spacing }
    }

    #[test]
    fn steady_even_schedule_is_a_metronome() {
        let timing = shaped(steady_segments(1_000.0, 100), Spacing::Even);
        let arrivals: Vec<Arrival> =
            Schedule::new(timing, choices(1, 1.0), 3, u64::MAX, u64::MAX).collect();
        assert_eq!(arrivals.len(), 100);
        let offsets: Vec<u64> = arrivals.iter().map(|a| a.offset_us).collect();
        assert_eq!(offsets[0], 500);
        assert!(offsets.windows(2).all(|w| w[1] - w[0] == 1_000), "{offsets:?}");
        assert!(arrivals.iter().enumerate().all(|(i, a)| a.index == i as u64 && a.deal == 0));
    }

    #[test]
    fn drop_schedule_ramps_holds_and_decays() {
        // 0 -> 10k/s in 1 s, 10k/s for 1 s, back to 0 in 1 s: 5k + 10k + 5k expected.
        let segments = drop_segments(10_000.0, 1_000, 1_000, 1_000);
        let timing = shaped(segments, Spacing::Poisson);
        assert_eq!(Schedule::expected(&timing), Some(20_000.0));
        assert_eq!(Schedule::span_us(&timing, u64::MAX), 3_000_000);
        let arrivals: Vec<Arrival> =
            Schedule::new(timing, choices(1, 1.0), 42, u64::MAX, u64::MAX).collect();
        let n = f64::from(u32::try_from(arrivals.len()).unwrap());
        assert!((n - 20_000.0).abs() < 600.0, "{n} arrivals");
        assert!(arrivals.windows(2).all(|w| w[0].offset_us <= w[1].offset_us));
        assert!(arrivals.iter().all(|a| a.offset_us < 3_000_000));
        let in_window =
            |lo: u64, hi: u64| arrivals.iter().filter(|a| (lo..hi).contains(&a.offset_us)).count();
        // The first 100 ms of the ramp expect 50 arrivals; the hold expects 1000 per 100 ms;
        // the ramp's second half expects three times its first.
        assert!(in_window(0, 100_000) < 120);
        let hold = in_window(1_400_000, 1_500_000);
        assert!((850..1150).contains(&hold), "{hold}");
        let (early, late) = (in_window(0, 500_000), in_window(500_000, 1_000_000));
        assert!(late > 2 * early, "{early} then {late}");
        // Reproducible.
        let again: Vec<Arrival> = Schedule::new(
            shaped(drop_segments(10_000.0, 1_000, 1_000, 1_000), Spacing::Poisson),
            choices(1, 1.0),
            42,
            u64::MAX,
            u64::MAX,
        )
        .collect();
        assert_eq!(arrivals, again);
    }

    #[test]
    fn segment_inversion_matches_the_cumulative_rate() {
        for (a, b) in [(0.0, 1_000.0), (1_000.0, 0.0), (500.0, 500.0), (100.0, 100.000_001)] {
            let s = Segment { duration_us: 2_000_000, rate_start_per_s: a, rate_end_per_s: b };
            for frac in [0.0, 0.1, 0.5, 0.9, 1.0] {
                let lambda = s.expected() * frac;
                let t = s.instant_of(lambda) / 1e6;
                let k = (b - a) / 2.0;
                let back = a * t + k * t * t / 2.0;
                assert!((back - lambda).abs() < 1e-6 * s.expected().max(1.0), "{a}->{b} {frac}");
            }
        }
    }

    #[test]
    fn caps_stop_the_schedule() {
        let timing = shaped(steady_segments(1_000.0, 10_000), Spacing::Even);
        let capped = Schedule::new(timing.clone(), choices(1, 1.0), 1, 1_000_000, u64::MAX);
        assert_eq!(capped.count(), 1_000);
        assert_eq!(Schedule::new(timing, choices(1, 1.0), 1, u64::MAX, 7).count(), 7);
        let unpaced = Schedule::new(Timing::Unpaced, choices(2, 0.0), 1, u64::MAX, 50);
        let arrivals: Vec<Arrival> = unpaced.collect();
        assert_eq!(arrivals.len(), 50);
        assert!(arrivals.iter().all(|a| a.offset_us == 0 && a.deal < 2));
    }

    #[test]
    fn choices_follow_the_mix() {
        let timing = shaped(steady_segments(100_000.0, 100), Spacing::Even);
        let arrivals: Vec<Arrival> =
            Schedule::new(timing, choices(3, 1.0), 9, u64::MAX, u64::MAX).collect();
        assert_eq!(arrivals.len(), 10_000);
        let confirms = arrivals.iter().filter(|a| matches!(a.after, After::Confirm { .. })).count();
        let releases = arrivals.iter().filter(|a| matches!(a.after, After::Release { .. })).count();
        assert!((4_700..5_300).contains(&confirms), "{confirms}");
        assert!((2_250..2_750).contains(&releases), "{releases}");
        for a in &arrivals {
            assert!(a.viewer < 1_000 && a.qty == 1 && a.deal < 3);
            if let After::Confirm { delay_us } | After::Release { delay_us } = a.after {
                assert!((100..=200).contains(&delay_us));
            }
        }
        let hot = arrivals.iter().filter(|a| a.deal == 0).count();
        assert!(hot > 5_000, "deal 0 is the hottest: {hot}");
    }

    #[test]
    fn replay_files_parse_and_drive_the_schedule() {
        let text = "# recorded\n0 0\n\n1.5 1 2\n  2   \n2 0 1\n";
        let lines = parse_replay(text).unwrap();
        assert_eq!(
            lines,
            vec![
                ReplayLine { offset_us: 0, deal: Some(0), qty: None },
                ReplayLine { offset_us: 1_500, deal: Some(1), qty: Some(2) },
                ReplayLine { offset_us: 2_000, deal: None, qty: None },
                ReplayLine { offset_us: 2_000, deal: Some(0), qty: Some(1) },
            ]
        );
        let timing = Timing::Replay(lines);
        assert_eq!(Schedule::span_us(&timing, u64::MAX), 2_001);
        let arrivals: Vec<Arrival> =
            Schedule::new(timing, choices(2, 0.0), 5, u64::MAX, u64::MAX).collect();
        assert_eq!(arrivals.len(), 4);
        assert_eq!((arrivals[1].offset_us, arrivals[1].deal, arrivals[1].qty), (1_500, 1, 2));
        assert_eq!(arrivals[3].qty, 1);

        assert!(parse_replay("5\n4\n").unwrap_err().contains("line 2"));
        assert!(parse_replay("x\n").unwrap_err().contains("line 1"));
        assert!(parse_replay("-1\n").is_err());
        assert!(parse_replay("1 a\n").unwrap_err().contains("deal_index"));
        assert!(parse_replay("1 0 0\n").unwrap_err().contains("qty"));
        assert!(parse_replay("1 0 1 9\n").unwrap_err().contains("unexpected"));
        assert_eq!(parse_replay("").unwrap(), vec![]);
    }
}
