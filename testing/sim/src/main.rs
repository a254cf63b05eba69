//! `roomshard-sim`: run the cluster simulation over many seeds, or replay one.
//!
//! ```text
//! roomshard-sim                       2,000 seeds from 1, on every core
//! roomshard-sim --seeds 100000        the long run
//! roomshard-sim --from 5000 --seeds 10
//! roomshard-sim --seed 1234           replay one seed and print what happened
//! ```

use std::time::Instant;

use sim::{Options, run, run_many};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| -> Option<u64> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
    };
    let options = Options::default();
    if let Some(seed) = value("--seed") {
        // `RUST_LOG=info roomshard-sim --seed N` shows the nodes' logs, stamped with the
        // simulated time.
        if std::env::var_os("RUST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_timer(SimTime)
                .with_target(false)
                .init();
        }
        let report = run(seed, &options);
        for event in &report.events {
            println!("{event}");
        }
        println!(
            "seed {seed}: {} acknowledged, {} held, {} reconnects, {} frames, errors {:?}, settled {}, digest {:016x}",
            report.verdict.acknowledged,
            report.verdict.held,
            report.reconnects,
            report.frames,
            report.errors,
            report.settled,
            report.digest
        );
        for v in &report.verdict.violations {
            println!("VIOLATION: {v}");
        }
        std::process::exit(i32::from(!report.passed()));
    }
    let from = value("--from").unwrap_or(1);
    let seeds = value("--seeds").unwrap_or(2_000);
    let started = Instant::now();
    let summary = run_many(from..from + seeds, &options, &|report| {
        if !report.passed() {
            eprintln!(
                "seed {} FAILED (settled {}): {:?}",
                report.seed, report.settled, report.verdict.violations
            );
        }
    });
    let failed: Vec<u64> = summary.failed.iter().map(|(seed, _, _)| *seed).collect();
    println!(
        "{} seeds from {from} in {:.1} s: {} acknowledged messages checked, {} failed {failed:?}",
        summary.runs,
        started.elapsed().as_secs_f64(),
        summary.acknowledged,
        failed.len()
    );
    std::process::exit(i32::from(!failed.is_empty()));
}

/// Log lines stamped with the simulated clock (the paused tokio clock of the run).
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{:>9.3}", sim::seconds())
    }
}
