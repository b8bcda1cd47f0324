//! `livestock-ceiling`: the peer benchmark's ceiling (benches/peers/): a bare hyper server on
//! `livestock serve`'s runtime settings that answers every POST with a fixed hold.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use livestock_load::ceiling::CeilingArgs;

#[derive(Parser)]
#[command(name = "livestock-ceiling", version, about = "A bare hyper server with fixed answers")]
struct Cli {
    #[command(flatten)]
    args: CeilingArgs,
}

fn main() -> ExitCode {
    livestock_load::ceiling::main(Cli::parse().args)
}
