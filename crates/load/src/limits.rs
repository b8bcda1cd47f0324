//! Every bound of the load tool in one place: what a run may ask for, and how long it may take.
//!
//! A load run is bounded in time and size so it always stops by itself and its histograms and
//! time series stay small. Where a bound meets one of the server's (`livestock_core::limits`),
//! a `const` assert below relates the two: the tool never asks for something the server would
//! refuse by its own limits. Names here say what they bound for the *tool* (`RUN_DEALS_MAX`,
//! not `DEALS_MAX`) so they cannot be mistaken for the server's.

use livestock_core::limits::{
    DEALS_MAX, DEAL_STOCK_UNITS_MAX, EXPIRY_TICK_MS, HOLD_TTL_MS_MAX, HOLD_TTL_MS_MIN, WAITLIST_MAX,
};

/// The arrival phase (of a run, or of one capacity step) is at most this long.
pub const ARRIVAL_PHASE_MS_MAX: u64 = 10 * 60 * 1_000;
/// Steady runs and closed loops without `--duration-ms` last this long.
pub const DURATION_MS_DEFAULT: u64 = 10_000;
/// Arrivals of one run or step, at most.
pub const ARRIVALS_MAX: u64 = 5_000_000;
/// [`ARRIVALS_MAX`] as a float, to compare with an expected count.
pub const ARRIVALS_MAX_F64: f64 = exact_f64(ARRIVALS_MAX);
/// `--rate`, `--max-rate`: arrivals per second, at most.
pub const RATE_PER_S_MAX: f64 = 1_000_000.0;
/// `--connections`, `--concurrency`: at most.
pub const CONNECTIONS_MAX: usize = 4_096;
/// Deals one run creates (`--deals`) or drives (`--deal`), at most.
pub const RUN_DEALS_MAX: usize = 10_000;
/// `--stock`: units of one deal the run creates, at most. Below the server's limit (2^40 - 1)
/// so that every deal of a run at once still counts exactly as a float.
pub const RUN_DEAL_STOCK_UNITS_MAX: u64 = 100_000_000_000;
/// `--zipf`: the skew's exponent, at most (past 10 deal 0 takes everything anyway).
pub const ZIPF_EXPONENT_MAX: f64 = 10.0;
/// `--payment-delay-ms`: the upper end, at most.
pub const PAYMENT_DELAY_MS_MAX: u64 = 60_000;
/// `--hold-ttl-ms`: at most. A hold left to expire holds up the drain this long, so the bound
/// stays near the payment delay rather than at the server's day.
pub const RUN_HOLD_TTL_MS_MAX: u64 = 2 * PAYMENT_DELAY_MS_MAX;
/// `--request-timeout-ms`: at most.
pub const REQUEST_TIMEOUT_MS_MAX: u64 = 60_000;
/// `--threads`: worker threads of the client's runtime, at most.
pub const CLIENT_THREADS_MAX: usize = 64;
/// After the last request, holds left to expire need their TTL plus this to come back: a few
/// of the server's reaper ticks, and the read of the counters.
pub const DRAIN_GRACE_MS: u64 = 1_000;
/// `--wait-ms` when absent: how long the tool waits for the target to answer before the run
/// (a server started in the same breath needs a moment to listen).
pub const WAIT_MS_DEFAULT: u64 = 10_000;
/// `--wait-ms`: at most.
pub const WAIT_MS_MAX: u64 = 10 * 60 * 1_000;
/// While waiting for the target, it is asked again this often.
pub const WAIT_RETRY_MS: u64 = 100;
/// `--target`: nodes of one cluster, at most (a raft group has 3, 5, at most a few more).
pub const TARGETS_MAX: usize = 9;
/// `--retries` when absent and several targets are given: a request that found no node able to
/// serve it (a refused connection, a reset, 503 `no_leader`) is tried again this many times,
/// on the next target, within its `--request-timeout-ms`. With one target the default is 0.
pub const RETRIES_CLUSTER_DEFAULT: u32 = 20;
/// `--retries`: at most.
pub const RETRIES_MAX: u32 = 100;
/// The wait before a retry: this, doubling with each retry of the same request...
pub const RETRY_BACKOFF_MS_MIN: u64 = 20;
/// ...up to this. A leader's failover takes several hundred ms (docs/replication.md); the
/// server's `Retry-After` says 1 s, which is coarser than a load tool wants.
pub const RETRY_BACKOFF_MS_MAX: u64 = 250;
/// Connections that read the run's holds back for the verification, at most.
pub const HOLD_READ_CONNECTIONS_MAX: usize = 16;
/// Instants marked with SIGUSR1 (`kill -USR1`, e.g. at a node's kill) kept per run, at most.
pub const MARKS_MAX: usize = 1_000;
/// `--feed-subscribers`: live-feed connections of one run, at most. Each is a socket, so the
/// tool needs `ulimit -n` above this plus `--connections` (and the server its own
/// `--feed-subscribers-max` and `--connections-max` at least as high). Twice the issue's
/// 10,000, with room for the process's open-files limit on this machine (20,000).
pub const FEED_SUBSCRIBERS_MAX: usize = 20_000;
/// Subscribers being opened at once: enough to open 10,000 in about a second on loopback, few
/// enough that the server's accept queue (a backlog of 4,096) never overflows into SYN retries,
/// which would add a second to an opening for nothing the feed does.
pub const FEED_OPENS_CONCURRENT: usize = 256;
/// One line of the event stream, at most: a `stock` event's `data:` line is about 100 bytes; a
/// longer line is a broken stream, not something to buffer without end.
pub const FEED_LINE_BYTES_MAX: usize = 4_096;
/// `--waitlist-max`: entries one created deal's waitlist may hold, at most: the server's bound.
pub const RUN_WAITLIST_MAX: u32 = WAITLIST_MAX;
/// `--entry-poll-rate` when absent: reads of waitlist entries per second, all entries together.
/// A viewer's app would poll its entry every second or two; 50,000 turned-away viewers doing
/// so would be 25,000-50,000 reads/s, more than the drop itself. The tool polls the entries
/// near the head of the queue often and the others rarely (`waitlist::poll_delay_ms`), within
/// this budget.
pub const ENTRY_POLL_RATE_DEFAULT: f64 = 2_000.0;
/// `--entry-poll-rate`: at most.
pub const ENTRY_POLL_RATE_MAX: f64 = 100_000.0;
/// `--draw-fairness-seeds`: each seed redoes a draw (a SHA-256 per entrant), so a drop of
/// 100,000 entries under 1,000 seeds is 10^8 hashes, about a minute.
pub const DRAW_FAIRNESS_SEEDS_MAX: u32 = 1_000;
/// An entry near the head of the queue is read again after this long at the soonest: its
/// viewer learns of an offer within about this (plus the budget's queue).
pub const ENTRY_POLL_MS_MIN: u64 = 200;
/// An entry far back is read again after this long at the latest (or half the offer's TTL, if
/// shorter), so an offer made sooner than expected is still seen in time to pay for it.
pub const ENTRY_POLL_MS_MAX: u64 = 5_000;
/// `--waitlist-ms`: how long after the arrival phase the entries are still followed, at most.
pub const WAITLIST_WINDOW_MS_MAX: u64 = 10 * 60 * 1_000;
/// Latencies above this are recorded as this (an hour: past any run's deadline, see below).
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Integers up to this convert to `f64` exactly. Every count, unit and µs of a run stays
/// below it (asserted below), which is why the statistics may turn them into floats.
pub const EXACT_F64_MAX: u64 = 1 << f64::MANTISSA_DIGITS;

/// Capacity mode: steps of one search, at most.
pub const CAPACITY_STEPS_MAX: u32 = 30;
/// Capacity mode: tries of one step beyond the first, at most.
pub const CAPACITY_STEP_RETRIES_MAX: u32 = 3;
/// Capacity mode: `--step-duration-ms`, at least (shorter steps measure the ramp, not a rate).
pub const CAPACITY_STEP_MS_MIN: u64 = 100;
/// Capacity mode: `--rate-factor`, at most.
pub const CAPACITY_RATE_FACTOR_MAX: f64 = 10.0;

const _: () = assert!(DURATION_MS_DEFAULT <= ARRIVAL_PHASE_MS_MAX);
const _: () = assert!(ARRIVALS_MAX < EXACT_F64_MAX);
const _: () = assert!(LATENCY_US_MAX < EXACT_F64_MAX);
const _: () = assert!(RUN_DEAL_STOCK_UNITS_MAX <= DEAL_STOCK_UNITS_MAX);
const _: () = assert!(RUN_DEAL_STOCK_UNITS_MAX * (RUN_DEALS_MAX as u64) < EXACT_F64_MAX);
const _: () = assert!(CAPACITY_STEP_MS_MIN <= ARRIVAL_PHASE_MS_MAX);
const _: () = assert!(WAIT_MS_DEFAULT <= WAIT_MS_MAX);
const _: () = assert!(WAIT_RETRY_MS < WAIT_MS_DEFAULT);
// One run never creates more deals than the server keeps alive at once.
const _: () = assert!(RUN_DEALS_MAX <= DEALS_MAX);
// Every TTL the tool may ask for is one the server accepts, and a payment delay never
// outlasts the longest hold.
const _: () = assert!(HOLD_TTL_MS_MIN <= RUN_HOLD_TTL_MS_MAX);
const _: () = assert!(RUN_HOLD_TTL_MS_MAX <= HOLD_TTL_MS_MAX);
const _: () = assert!(PAYMENT_DELAY_MS_MAX <= RUN_HOLD_TTL_MS_MAX);
// The drain outlasts several reaper ticks.
const _: () = assert!(10 * EXPIRY_TICK_MS <= DRAIN_GRACE_MS);
// No request of a run can take longer than the run's deadline (`Settings::deadline_us`), so
// the histograms never clamp a real latency.
const _: () = assert!(
    (ARRIVAL_PHASE_MS_MAX
        + WAITLIST_WINDOW_MS_MAX
        + PAYMENT_DELAY_MS_MAX
        + 2 * REQUEST_TIMEOUT_MS_MAX
        + DRAIN_GRACE_MS)
        * 1_000
        <= LATENCY_US_MAX
);
// The tool never asks for a longer waitlist than the server keeps.
const _: () = assert!(RUN_WAITLIST_MAX <= WAITLIST_MAX);
const _: () = assert!(0 < ENTRY_POLL_MS_MIN && ENTRY_POLL_MS_MIN < ENTRY_POLL_MS_MAX);
// An entry far back is still read several times within the shortest offer TTL...
const _: () = assert!(2 * ENTRY_POLL_MS_MIN <= HOLD_TTL_MS_MIN);
// ...and the budget's default fits well under its bound.
const _: () = assert!(ENTRY_POLL_RATE_DEFAULT <= ENTRY_POLL_RATE_MAX);
const _: () = assert!(1.0 < CAPACITY_RATE_FACTOR_MAX);
const _: () = assert!(RETRIES_CLUSTER_DEFAULT <= RETRIES_MAX);
const _: () = assert!(0 < RETRY_BACKOFF_MS_MIN && RETRY_BACKOFF_MS_MIN <= RETRY_BACKOFF_MS_MAX);
// Several backoffs fit in the shortest sensible request budget (a second).
const _: () = assert!(4 * RETRY_BACKOFF_MS_MAX <= 1_000);
const _: () = assert!(HOLD_READ_CONNECTIONS_MAX <= CONNECTIONS_MAX);
const _: () = assert!(0 < FEED_OPENS_CONCURRENT && FEED_OPENS_CONCURRENT <= FEED_SUBSCRIBERS_MAX);

/// A count, a number of units or of µs of a run, as a float for a rate, a share or a mean.
/// Exact: such numbers stay below [`EXACT_F64_MAX`] (asserted in debug builds).
#[expect(clippy::cast_precision_loss, reason = "n <= EXACT_F64_MAX fits the mantissa exactly")]
pub const fn exact_f64(n: u64) -> f64 {
    debug_assert!(n <= EXACT_F64_MAX, "a run's count is beyond 2^53");
    n as f64
}
