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
//! A crate of its own: a client of the node, it depends on nothing of the node's code, only on
//! the protocol as documented in `docs/protocol.md`.
//!
//! The pieces, from the outside in:
//! - [`args`]: flags, checked into a [`args::Plan`] (loopback-only node addresses);
//! - [`run`]: the phases (connect, warm up, send, drain, report) and the idle mode;
//! - [`client`]: one simulated user, its connection, reconnects and what it observed;
//! - [`wire`]: the protocol v1 frames the bench sends and reads;
//! - [`audit`]: after the run, every room's whole history, checked for cuts;
//! - [`pacer`]: the thread that tells each room's users when to send;
//! - [`histogram`]: latency percentiles in fixed memory;
//! - [`procfs`]: the nodes' CPU time and memory from `/proc`, and our own file limit;
//! - [`scrape`]: optional before/after reads of the nodes' `/metrics`.

mod args;
mod audit;
mod client;
mod histogram;
mod pacer;
mod procfs;
mod run;
mod scrape;
mod wire;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = args::Args::parse();
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
    match runtime.block_on(run::run(plan)) {
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
