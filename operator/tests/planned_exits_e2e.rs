//! Planned exits end to end: real `roomshard-node` processes under the local driver, loaded by
//! the real `roomshard-bench`, through a rolling restart of every node and a SIGTERM sent to
//! one node by hand. Nothing may be lost or repeated, and afterwards every room's history,
//! read with `join` `since: 0`, must still hold every message from seq 1 on, in order: a room
//! that restarted empty on a new owner would show a cut.
//!
//! These need the workspace's binaries (`cargo build --workspace --bins`).

mod real_nodes;

use std::time::Duration;

use operator::ClusterView;
use operator::local::{LocalCluster, LocalOptions};
use real_nodes::{Client, bench, bench_report, cluster_with, options, ws_urls};
use serde_json::{Value, json};

const ROOMS: usize = 60;

/// Three nodes with `replication` copies of every shard that keep every message of a room in
/// its history, so the history can be checked whole at the end.
async fn three_nodes(replication: u8) -> LocalCluster {
    cluster_with(LocalOptions {
        nodes: 3,
        replication,
        node_args: vec![
            "--history-per-room".into(),
            "100000".into(),
            "--worker-threads".into(),
            "1".into(),
        ],
        ..options()
    })
    .await
}

/// Nothing lost, repeated, reordered or reset, and no error frame.
fn assert_nothing_lost(report: &Value, during: &str) {
    eprintln!("{during}: {report}");
    assert!(
        report["delivered"].as_u64().unwrap_or(0) > 10_000,
        "traffic flowed during {during}: {report}"
    );
    for field in ["lost", "duplicates", "out_of_order", "room_resets"] {
        assert_eq!(report[field], 0, "{field} during {during}: {report}");
    }
    let errors: u64 = report["errors"]
        .as_object()
        .map(|e| e.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    assert_eq!(errors, 0, "no error frames during {during}: {report}");
}

/// Joins every room with `since: 0` and checks that its history is seq 1, 2, ... up to the
/// room's seq with nothing missing; returns the number of messages the rooms hold.
async fn assert_histories_whole(cluster: &LocalCluster, prefix: &str) -> u64 {
    let urls = ws_urls(cluster);
    let mut total = 0;
    for r in 0..ROOMS {
        let room = format!("{prefix}-{r}");
        // One connection per room, on every node in turn: a client's rate limit would refuse
        // this many joins on one connection.
        let (_, url) = &urls[r % urls.len()];
        let mut client = Client::connect(url, &format!("auditor-{r}")).await;
        client
            .send(json!({"op": "join", "room": room, "since": 0}))
            .await;
        let joined = client.recv_op("joined").await;
        let seq = joined["seq"].as_u64().expect("seq");
        let seqs: Vec<u64> = joined["history"]
            .as_array()
            .expect("history")
            .iter()
            .filter_map(|m| m["seq"].as_u64())
            .collect();
        assert!(seq > 0, "{room} saw traffic");
        assert_eq!(
            seqs,
            (1..=seq).collect::<Vec<_>>(),
            "{room}'s history holds every message in seq order"
        );
        total += seq;
    }
    total
}

// The planned-exit tests run with replication 1 (owners only) and 2 (the default, where a
// hand-off's source and the shard's follower may read different tables for a moment: the
// follower must neither fence the source nor refuse an owner whose follower role moved).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_node_under_load_loses_and_repeats_nothing() {
    rolling_restart(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_with_two_copies_of_every_room_refuses_no_send() {
    rolling_restart(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sent_sigterm_by_hand_hands_its_rooms_off_and_is_started_again() {
    sigterm_by_hand(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sent_sigterm_by_hand_with_two_copies_of_every_room_refuses_no_send() {
    sigterm_by_hand(2).await;
}

/// Restarts every node under load: nothing lost, repeated or refused, every history whole, and
/// with replication 2 every shard has a live follower again afterwards.
async fn rolling_restart(replication: u8) {
    let cluster = three_nodes(replication).await;
    let before: Vec<u32> = cluster.nodes().iter().filter_map(|n| n.pid).collect();
    let bench = bench(&cluster, "roll", ROOMS, "30s", &[]);
    tokio::time::sleep(Duration::from_secs(4)).await;

    let started = std::time::Instant::now();
    assert_eq!(cluster.restart().expect("restart starts"), 3);
    assert!(
        cluster.restart().is_err(),
        "a second restart is refused while one runs"
    );
    let done = cluster
        .wait_for(Duration::from_secs(90), |v: &ClusterView| {
            v.rollout.completed == 1 && v.is_settled()
        })
        .await
        .expect("the rolling restart finishes and the cluster settles");
    eprintln!("rolling restart of 3 nodes took {:?}", started.elapsed());
    let after: Vec<u32> = done.nodes.iter().filter_map(|n| n.pid).collect();
    assert_eq!(after.len(), 3);
    assert!(
        after.iter().all(|pid| !before.contains(pid)),
        "every node runs a new process: {before:?} -> {after:?}"
    );
    assert!(
        done.nodes.iter().all(|n| n.restarts == 0),
        "no exit counted as a crash"
    );

    if replication == 2 {
        let replicated = cluster
            .wait_for(Duration::from_secs(30), |v| v.replication.replicated)
            .await
            .expect("every shard has a live follower again after the rolling restart");
        assert_eq!(
            replicated.replication.shards_with_follower,
            replicated.shards
        );
    }

    let report = bench_report(bench, Duration::from_secs(120)).await;
    assert_nothing_lost(&report, "a rolling restart");
    assert!(
        report["reconnects"].as_u64().unwrap_or(0) > 0,
        "clients of restarted nodes reconnected: {report}"
    );
    let held = assert_histories_whole(&cluster, "roll").await;
    assert!(
        held >= report["accepted"].as_u64().unwrap_or(u64::MAX),
        "the rooms hold every accepted message: {held} vs {report}"
    );
    cluster.shutdown().await.expect("clean shutdown");
}

/// Sends SIGTERM to node-1 by hand under load: it is drained, exits, is started again and gets
/// shards back; nothing lost, repeated or refused, every history whole.
async fn sigterm_by_hand(replication: u8) {
    let cluster = three_nodes(replication).await;
    let old_pid = cluster
        .view()
        .node("node-1")
        .and_then(|n| n.pid)
        .expect("node-1 runs");
    let bench = bench(&cluster, "term", ROOMS, "16s", &[]);
    tokio::time::sleep(Duration::from_secs(4)).await;

    cluster.sigterm("node-1").await.expect("kill -TERM node-1");
    // It is drained while it still runs: its shards leave it by hand-off.
    let draining = cluster
        .wait_for(Duration::from_secs(20), |v| {
            v.node("node-1")
                .is_some_and(|n| n.terminating && n.shards == 0 && n.pid == Some(old_pid))
        })
        .await
        .expect("node-1 is drained before it exits");
    assert!(
        draining
            .moves_in_flight
            .iter()
            .all(|m| m.from.as_str() == "node-1")
    );
    // Then it exits and the driver starts it again, and it gets shards back by hand-off.
    let back = cluster
        .wait_for(Duration::from_secs(60), |v| {
            v.is_settled()
                && v.node("node-1")
                    .is_some_and(|n| n.pid.is_some_and(|p| p != old_pid) && n.shards > 0)
        })
        .await
        .expect("node-1 is started again and owns shards");
    assert_eq!(
        back.node("node-1").map(|n| n.restarts),
        Some(0),
        "a planned exit is not a crash"
    );
    if replication == 2 {
        cluster
            .wait_for(Duration::from_secs(30), |v| v.replication.replicated)
            .await
            .expect("every shard has a live follower again after node-1 is back");
    }

    let report = bench_report(bench, Duration::from_secs(120)).await;
    assert_nothing_lost(&report, "a SIGTERM by hand");
    // Its clients joined their rooms on another node before leaving it: none was out.
    assert!(
        report["handover_ms"]["count"].as_u64().unwrap_or(0) > 0,
        "clients of node-1 moved by make-before-break: {report}"
    );
    assert!(
        report["rejoin_ms"].is_null(),
        "no client was out of its room: {report}"
    );
    assert_histories_whole(&cluster, "term").await;
    cluster.shutdown().await.expect("clean shutdown");
}
