//! `livestock-load`: drive a running livestock server (or a peer of the benchmark) over
//! loopback: open-loop bursts, latency histograms, a verification of the server's counters
//! against the client's ledger, a plot, capacity search. See `docs/load.md`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use livestock_load::LoadArgs;

fn main() -> ExitCode {
    livestock_load::main(LoadArgs::parse())
}
