//! A deterministic simulation of a whole roomshard cluster, in the way FoundationDB and
//! TigerBeetle test theirs: the real node code (rooms, replication, hand-offs, custody, peer
//! links with their handshake and resends, the per-connection logic clients go through) and
//! the operator's real decision step run in one process, on one thread, under a simulated
//! network and clock, with faults composed at random from a seed; after every run a checker
//! verifies the promises against what the clients saw. A failing seed replays the same run.
//!
//! - [`rng`]: the seed's random numbers;
//! - [`network`]: the simulated network the peer links run over (delays, resets,
//!   partitions, isolation, slow nodes);
//! - [`cluster`]: pods, processes, table feeds and the operator's passes;
//! - [`clients`]: clients chatting through real connection logic, recording what they see;
//! - [`checker`]: the promises, checked;
//! - [`run`]: one seeded run.
//!
//! What it does not cover, and other suites do: the WebSocket codec and sockets (the node's
//! own tests, the chaos suite on real processes), the HTTP table source and `/status` (the
//! local driver's tests), Kubernetes (the real-cluster suite).

pub mod checker;
pub mod clients;
pub mod cluster;
pub mod network;
pub mod rng;
pub mod run;

pub use run::{Options, Report, Summary, run, run_many};

/// The span every task of node `name` runs in, so that its log lines say which node wrote
/// them (all nodes share one process here).
pub fn span_of(name: &shard::NodeName) -> tracing::Span {
    tracing::info_span!(parent: None, "node", n = %name)
}

thread_local! {
    /// When this thread's run began, in simulated time.
    static STARTED: std::cell::Cell<Option<tokio::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// The run on this thread begins now: [`seconds`] counts from here.
pub fn start_clock() {
    STARTED.with(|s| s.set(Some(tokio::time::Instant::now())));
}

/// Simulated seconds since the run on this thread began (0 outside one), the time every log
/// line and trace of the run is stamped with.
pub fn seconds() -> f64 {
    if tokio::runtime::Handle::try_current().is_err() {
        return 0.0;
    }
    STARTED
        .with(std::cell::Cell::get)
        .map_or(0.0, |start| start.elapsed().as_secs_f64())
}
