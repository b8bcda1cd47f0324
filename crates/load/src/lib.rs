//! `livestock-load` drives a running livestock server (or a peer of the benchmark) over
//! loopback and reports honest latencies, the server's correctness under the burst, and a
//! picture; `livestock-ceiling` is the peer benchmark's ceiling. The server's binary links none
//! of this (no redis, PostgreSQL or plotting crate).
//!
//! | file | concept |
//! |---|---|
//! | `main.rs`, `bin/livestock-ceiling.rs` | the two commands: parse, then call [`main`] or [`ceiling::main`] |
//! | `args.rs` | the command line: every flag of `livestock-load`, its default and help |
//! | `limits.rs` | every bound of the tool, related to the server's by `const` asserts |
//! | `settings.rs` | the arguments checked against the bounds: [`Settings`] |
//! | `run.rs` | one invocation from set-up to verdict: wait, deals, drive, drain, verify, exit code |
//! | `random.rs` | pure: the seeded PRNG and the Zipf deal picker |
//! | `schedule.rs` | pure: arrival schedules (drop, steady, replay) and each arrival's choices |
//! | `backend.rs` | what is driven: livestock over HTTP, or a peer (Redis, PostgreSQL) in its own protocol |
//! | `client.rs` | the loopback-only targets (one server, or a cluster's nodes), keep-alive HTTP/1.1 connections that move on to the next node, retries, API calls |
//! | `redis.rs`, `postgres.rs` | the peers of the benchmark: Lua scripts, PL/pgSQL functions (`peers/`) |
//! | `ceiling.rs` | `livestock-ceiling`: a bare hyper server with fixed answers, the benchmark's ceiling |
//! | `driver.rs` | open loop (a pacer releases requests at their intended instants) and closed loop |
//! | `draw_check.rs` | pure: `--draw-window-ms`: a deal's draw recomputed from its reveal, and its fairness over many seeds (chi-square) |
//! | `feed.rs` | `--feed-subscribers`: live-feed (SSE) connections read through the run, the SSE parser (pure), the `sold_out` lag |
//! | `ledger.rs` | pure: what the server acknowledged, and the end-of-run verification (counters, and every hold read back) |
//! | `recorder.rs` | pure: HdrHistogram per operation and outcome, the time series, attempts per target, failover marks, the measured figures |
//! | `report.rs` | pure: the run's report (the JSON) and its human summary |
//! | `plot.rs` | the SVG: offered vs served, p50/p99 over time, the stock burning down |
//! | `capacity.rs` | the step search for the highest rate that holds a p99 SLO |
//! | `waitlist.rs` | pure: `--waitlist`'s entries as the tool knows them, the poll budget, when to read an entry again |
//! | `waitlist_check.rs` | pure: the units that came back after the sell-out and the share the waitlist resold, the check of every entry and offer read back |
//!
//! See `docs/load.md`, and `benches/peers/` for the peer benchmark.

#![forbid(unsafe_code)]

pub mod args;
pub mod backend;
pub mod capacity;
pub mod ceiling;
pub mod client;
pub mod draw_check;
pub mod driver;
pub mod feed;
pub mod ledger;
pub mod limits;
pub mod plot;
pub mod postgres;
pub mod random;
pub mod recorder;
pub mod redis;
pub mod report;
pub mod run;
pub mod schedule;
pub mod settings;
pub mod waitlist;
pub mod waitlist_check;

pub use args::LoadArgs;
pub use run::{main, run, LoadOutcome};
pub use settings::{settings, Settings};
