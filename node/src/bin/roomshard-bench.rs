//! `roomshard-bench`: a load generator for roomshard chat nodes, speaking protocol v1 over
//! loopback WebSockets.
//!
//! Two modes:
//! - load (default): `--rooms` rooms with `--users` connections each, spread round-robin over
//!   `--nodes`; every room sends `--rate` messages per second, evenly paced, for `--duration`
//!   after a `--warmup`; then a bounded drain. Prints one JSON line with throughput, end-to-end
//!   latency percentiles, losses, duplicates, errors, reconnects and the nodes' CPU and memory.
//! - idle (`--idle N`): N bare connections, to measure the nodes' memory per connection.
//!
//! Progress goes to stderr; stdout carries the JSON line alone, so scripts can `| jq`.
//! The code lives in `src/bench/` (declared here only, so the node library is untouched).

#[path = "../bench/mod.rs"]
mod bench;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = bench::args::Args::parse();
    let plan = match args.validate() {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("roomshard-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("roomshard-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench::run::run(plan)) {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("roomshard-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
