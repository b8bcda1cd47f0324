//! The command line of `livestock-load`: every flag, its default and its help. Checking the
//! values against the bounds is [`crate::settings`]' job.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::backend::BackendKind;
use crate::limits::{ENTRY_POLL_RATE_DEFAULT, WAIT_MS_DEFAULT};

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
time and stops by itself. Before the run the tool waits up to --wait-ms for the target to \
answer (with several targets: for their cluster to have a leader), so `livestock serve & \
livestock-load ...` works.

Several targets are the nodes of one cluster: connections are spread over them round-robin; a \
request no node could serve is retried on the next one (--retries), and only an OK answer \
counts as acknowledged. At the end every hold is read back from whichever node answers and \
checked against what was acknowledged. `kill -USR1 <pid of livestock-load>` marks an instant \
(say, right after killing the leader): the report gives the time from each mark to the first \
write acknowledged after it.

Examples:
  livestock-load --profile drop --rate 20000 --viewers 50000 --stock 5000 --plot target/drop.svg
  livestock-load --profile steady --rate 5000 --duration-ms 10000 --deals 100 --zipf 1.1
  livestock-load --profile drop --rate 10000 --viewers 50000 --stock 5000 --waitlist
  livestock-load --find-capacity --p99-slo-ms 5
  livestock-load --target 127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083 --rate 2000 --stock 2000
  livestock-load --backend redis --target 127.0.0.1:6379 --profile steady --rate 5000

--backend redis|postgres drives a peer of the benchmark (benches/peers/) in its own protocol \
with the same schedule, histograms and verification: Redis through Lua scripts (EVALSHA), \
PostgreSQL through PL/pgSQL functions (one transaction per operation). The run installs the \
scripts or the schema and runs the peer's hold expiry every 10 ms.";

/// `livestock-load`: drive a running server and report latencies, rates, sell-out and a
/// verification of its counters against the client's ledger.
#[derive(Parser, Clone, Debug)]
#[command(name = "livestock-load", version, after_long_help = AFTER_HELP)]
pub struct LoadArgs {
    /// The server, host:port on this machine (localhost, 127.0.0.0/8 or [::1]); or the nodes
    /// of one livestock cluster, comma-separated (connections are spread over them, and move
    /// on to the next node when theirs fails).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT[,HOST:PORT...]")]
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

    /// Give the created deals a waitlist and send every reserve with `waitlist: true`: a
    /// viewer turned away joins the queue (202), polls its entry, and pays for an offer as a
    /// winner of a reserve does (--confirm-ratio, --release-ratio, --payment-delay-ms). The
    /// report adds the units that came back after the sell-out and the share the waitlist
    /// resold. Drop and steady profiles, livestock only.
    #[arg(long, help_heading = "Waitlist")]
    pub waitlist: bool,
    /// Entries each created deal's waitlist may hold at once (`waitlist_max`). Default: the
    /// number of viewers, at most the server's 1,000,000.
    #[arg(long, requires = "waitlist", help_heading = "Waitlist")]
    pub waitlist_max: Option<u32>,
    /// TTL of a hold offered from the waitlist, ms (`offer_ttl_ms`). Default: --hold-ttl-ms.
    #[arg(long, requires = "waitlist", help_heading = "Waitlist")]
    pub offer_ttl_ms: Option<u64>,
    /// Reads of waitlist entries per second, all entries together (entries near the head of
    /// the queue are read often, those far back rarely).
    #[arg(long, default_value_t = ENTRY_POLL_RATE_DEFAULT, help_heading = "Waitlist")]
    pub entry_poll_rate: f64,
    /// How long after the arrival phase the entries are still followed, ms; then every entry
    /// still waiting is cancelled (the viewer gives up) and counted as such. Default:
    /// --hold-ttl-ms + 2 x the offer TTL + the longest payment delay (the last direct holds
    /// expire, their units are offered, and one offer that comes back is offered again).
    #[arg(long, requires = "waitlist", help_heading = "Waitlist")]
    pub waitlist_ms: Option<u64>,
    /// A draw: the created deals start now and take every reserve of their first MS as an
    /// entry; when the window closes the server draws (docs/draw.md). The report checks each
    /// draw from its reveal (seed, order, winners) and its fairness over
    /// --draw-fairness-seeds other seeds (chi-square against uniform); the drawn losers wait on
    /// the waitlist. Needs --waitlist (entries are followed the same way).
    #[arg(long, requires = "waitlist", help_heading = "Waitlist")]
    pub draw_window_ms: Option<u64>,
    /// Seeds the draw's fairness test redoes each draw under.
    #[arg(long, default_value_t = 100, help_heading = "Waitlist")]
    pub draw_fairness_seeds: u32,

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
    /// A request without an answer after this many ms (its retries included) counts as a
    /// timeout.
    #[arg(long, default_value_t = 5_000, help_heading = "Client")]
    pub request_timeout_ms: u64,
    /// Before the run, wait up to this many ms for the target to answer (a server that is
    /// still starting); 0: do not wait.
    #[arg(long, default_value_t = WAIT_MS_DEFAULT, help_heading = "Client")]
    pub wait_ms: u64,
    /// Send a request that no node could serve (refused connection, reset, 503 no_leader)
    /// again, on the next target, up to this many times within --request-timeout-ms, with the
    /// same idempotency key (confirms and releases then carry keys too). Default: 0 with one
    /// target, 20 with several.
    #[arg(long, help_heading = "Client")]
    pub retries: Option<u32>,
    /// Worker threads of the client's runtime (the server shares the machine).
    #[arg(long, default_value_t = 1, help_heading = "Client")]
    pub threads: usize,
    /// No live progress line.
    #[arg(long, help_heading = "Client")]
    pub quiet: bool,

    /// Before the first arrival, open this many live-feed subscribers (Server-Sent Events,
    /// `GET /v1/deals/{id}/live`), spread over the driven deals, and read them through the run:
    /// the report gives their events, connection errors, and the lag of each one's `sold_out`
    /// event behind the tool's first `sold_out` answer; one that missed it fails the
    /// verification. Each is a socket: mind `ulimit -n` and the server's
    /// --feed-subscribers-max and --connections-max. 0: none.
    #[arg(long, default_value_t = 0, help_heading = "Live feed")]
    pub feed_subscribers: usize,
    /// The server's process id, to read its resident memory (/proc/PID/status, VmRSS) before
    /// the subscribers open, once they are open, and at the end: memory per subscriber.
    #[arg(long, requires = "feed_subscribers", help_heading = "Live feed")]
    pub server_pid: Option<u32>,

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
    /// Parses `livestock-load` arguments (the first item is the program name).
    pub fn parse_from_args<I, T>(args: I) -> Result<LoadArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        LoadArgs::try_parse_from(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_delay_ranges_parse() {
        assert_eq!(parse_ms_range("200..1500"), Ok(MsRange { min: 200, max: 1_500 }));
        assert_eq!(parse_ms_range("300"), Ok(MsRange { min: 300, max: 300 }));
        assert!(parse_ms_range("a..b").is_err());
    }
}
