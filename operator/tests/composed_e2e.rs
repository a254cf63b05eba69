//! Promises together, with the defaults a user gets (`roomshard-operator local --nodes 3`:
//! 256 shards, two copies of every room, load-aware placement on): 60 rooms, one writing client
//! per room, all on node-0, so the writers' load sets off load-aware moves; while those moves
//! are in flight another node goes away, by `kill -TERM`, `kill -9` or a rolling `restart`.
//! Afterwards a fresh client reads every room from seq 0: every message whose sender got its
//! echo must be there, under its seq and id, with no gap and no room restarted.
//!
//! Before custody (`shard::custody`), each of the three lost whole rooms of acknowledged
//! messages: a drain redirected load moves whose snapshots were on their way, and the source
//! froze its already-frozen rooms again and sent them empty.
//!
//! CI runs each mode once; `ROOMSHARD_COMPOSED_RUNS=10` runs each ten times (the long form).
//! These need the workspace's binaries (`cargo build --workspace --bins`).

mod real_nodes;

use std::process::Stdio;
use std::time::Duration;

use operator::local::{LocalCluster, LocalOptions};
use real_nodes::{bench_report, binary, cluster_with, ws_urls};
use serde_json::Value;

const ROOMS: usize = 60;

/// How a node goes away.
#[derive(Debug, Clone, Copy)]
enum Exit {
    Term,
    Kill,
    Restart,
}

fn runs() -> usize {
    std::env::var("ROOMSHARD_COMPOSED_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1)
}

/// The driver's defaults, on a free port, with the workspace's node binary.
async fn defaults() -> LocalCluster {
    cluster_with(LocalOptions {
        port: 0,
        node_bin: Some(binary("roomshard-node")),
        shutdown_grace: Duration::from_secs(5),
        ..LocalOptions::default()
    })
    .await
}

/// `roomshard-bench` with every writer on node-0: one user per room, 2 messages per second
/// per room, for 14 s (about 20 acknowledged messages per room after the warm-up), then every
/// room read back.
fn writers_on_node_0(cluster: &LocalCluster, prefix: &str) -> tokio::process::Child {
    let node_0 = ws_urls(cluster)
        .into_iter()
        .find(|(name, _)| name == "node-0")
        .map(|(_, url)| url.trim_end_matches("/ws").to_owned())
        .expect("node-0 runs");
    tokio::process::Command::new(binary("roomshard-bench"))
        .args([
            "--nodes",
            &node_0,
            "--rooms",
            &ROOMS.to_string(),
            "--users",
            "1",
            "--rate",
            "2",
            "--duration",
            "14s",
            "--warmup",
            "1s",
            "--room-prefix",
            prefix,
            "--audit-history",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start roomshard-bench")
}

/// One run: the load, an exit of node-1 (or a rolling restart) while load-aware moves are in
/// flight, then the audit.
async fn run(exit: Exit, round: usize) {
    let cluster = defaults().await;
    let prefix = format!("{exit:?}-{round}").to_lowercase();
    let bench = writers_on_node_0(&cluster, &prefix);
    // Load-aware moves start once the nodes' load windows show the imbalance. The exit goes
    // best while moves into the node that goes away are in flight (a restart drains the
    // highest ordinal first): those are the moves a drain used to redirect.
    let victim = match exit {
        Exit::Restart => "node-2",
        Exit::Term | Exit::Kill => "node-1",
    };
    let into_victim =
        |v: &operator::ClusterView| v.moves_in_flight.iter().any(|m| m.to.as_str() == victim);
    let moving = match cluster.wait_for(Duration::from_secs(15), into_victim).await {
        Ok(view) => Ok(view),
        Err(_) => {
            cluster
                .wait_for(Duration::from_secs(10), |v| !v.moves_in_flight.is_empty())
                .await
        }
    };
    let during_moves = moving
        .as_ref()
        .map(|v| {
            let into = v
                .moves_in_flight
                .iter()
                .filter(|m| m.to.as_str() == victim)
                .count();
            format!("{} ({into} into {victim})", v.moves_in_flight.len())
        })
        .unwrap_or_else(|_| "no".to_owned());
    match exit {
        Exit::Term => {
            cluster.sigterm("node-1").await.expect("kill -TERM node-1");
        }
        Exit::Kill => {
            cluster.kill9("node-1").await.expect("kill -9 node-1");
        }
        Exit::Restart => {
            cluster.restart().expect("restart starts");
        }
    }
    let report = bench_report(bench, Duration::from_secs(180)).await;
    let history = &report["history"];
    eprintln!(
        "{exit:?} run {round}: {during_moves} moves in flight at the exit; acknowledged {} missing {} cut {} resets {} out of order {}",
        history["acknowledged"],
        history["acknowledged_missing"],
        history["cut"],
        report["room_resets"],
        report["out_of_order"]
    );
    assert_promises(&report, exit);
    cluster.shutdown().await.expect("clean shutdown");
}

/// Every acknowledged message is in its room's history; no history cut, no room restarted,
/// nothing out of order; every room readable.
fn assert_promises(report: &Value, exit: Exit) {
    let history = &report["history"];
    assert_eq!(history["rooms"], ROOMS, "{exit:?}: {report}");
    assert_eq!(
        history["unreadable"], 0,
        "{exit:?}: every room read back: {report}"
    );
    assert!(
        history["acknowledged"].as_u64().unwrap_or(0) >= (ROOMS * 15) as u64,
        "{exit:?}: about 20 acknowledged messages per room were checked: {report}"
    );
    assert_eq!(
        history["acknowledged_missing"], 0,
        "{exit:?}: every acknowledged message is in its room's history: {report}"
    );
    assert_eq!(
        history["cut"], 0,
        "{exit:?}: no history has a gap: {report}"
    );
    for field in ["room_resets", "out_of_order"] {
        assert_eq!(report[field], 0, "{exit:?}: {field}: {report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_during_load_aware_moves_loses_no_acknowledged_message() {
    for round in 0..runs() {
        run(Exit::Term, round).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_during_load_aware_moves_loses_no_acknowledged_message() {
    for round in 0..runs() {
        run(Exit::Kill, round).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_during_load_aware_moves_loses_no_acknowledged_message() {
    for round in 0..runs() {
        run(Exit::Restart, round).await;
    }
}
