//! Unplanned exits end to end: real `roomshard-node` processes under the local driver with two
//! copies of every room, loaded by the real `roomshard-bench`, and each node killed with
//! SIGKILL in turn (no drain, no hand-off: a crash). Every message whose sender got its echo
//! must still be in its room's history afterwards, under its seq and id, with no gap and no
//! repeat; the bench reads every history back (`--audit-history`) and says so.
//!
//! These need the workspace's binaries (`cargo build --workspace --bins`).

mod real_nodes;

use std::time::Duration;

use operator::ClusterView;
use operator::local::{LocalCluster, LocalOptions};
use real_nodes::{bench, bench_report, cluster_with, options};

const ROOMS: usize = 60;

/// Three nodes with two copies of every room, keeping every message in history so the audit
/// can find each acknowledged one.
async fn three_replicated_nodes() -> LocalCluster {
    cluster_with(LocalOptions {
        nodes: 3,
        replication: 2,
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

/// Settled, with every shard's copy live on its follower (from the nodes' `/status`).
fn replicated(view: &ClusterView) -> bool {
    let field = |n: &operator::NodeView, f: &str| {
        n.status.as_ref().and_then(|s| s[f].as_u64()).unwrap_or(0)
    };
    let live: u64 = view.nodes.iter().map(|n| field(n, "following")).sum();
    let catching_up: u64 = view.nodes.iter().map(|n| field(n, "catchingUp")).sum();
    view.is_settled() && live == u64::from(view.shards) && catching_up == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_each_node_in_turn_under_load_loses_no_acknowledged_message() {
    let cluster = three_replicated_nodes().await;
    cluster
        .wait_for(Duration::from_secs(60), replicated)
        .await
        .expect("every shard has a live follower before the first kill");
    let bench = bench(&cluster, "crash", ROOMS, "60s", &["--audit-history"]);
    tokio::time::sleep(Duration::from_secs(5)).await;

    for name in ["node-0", "node-1", "node-2"] {
        let old = cluster.kill9(name).await.expect("kill -9");
        let started = std::time::Instant::now();
        let back = cluster
            .wait_for(Duration::from_secs(60), |v| {
                replicated(v)
                    && v.node(name)
                        .is_some_and(|n| n.pid.is_some_and(|p| p != old) && n.shards > 0)
            })
            .await
            .expect("the killed node is started again and every shard has two copies again");
        eprintln!(
            "kill -9 {name}: back and replicated after {:?} (epoch {})",
            started.elapsed(),
            back.epoch
        );
        assert_eq!(
            back.node(name).map(|n| n.restarts),
            Some(1),
            "the driver counted the crash"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    let report = bench_report(bench, Duration::from_secs(180)).await;
    eprintln!("three kills: {report}");
    assert!(
        report["delivered"].as_u64().unwrap_or(0) > 10_000,
        "traffic flowed: {report}"
    );
    let history = &report["history"];
    assert_eq!(history["rooms"], ROOMS, "{report}");
    assert_eq!(history["unreadable"], 0, "every room read back: {report}");
    assert!(
        history["acknowledged"].as_u64().unwrap_or(0) > 5_000,
        "many acknowledged messages were checked: {report}"
    );
    assert_eq!(
        history["acknowledged_missing"], 0,
        "every acknowledged message is in its room's history: {report}"
    );
    assert_eq!(history["cut"], 0, "no history has a gap: {report}");
    for field in ["room_resets", "out_of_order"] {
        assert_eq!(report[field], 0, "{field}: {report}");
    }
    cluster.shutdown().await.expect("clean shutdown");
}

/// The short form of the chaos soak (`bench/cluster.sh chaos` is the long one): a node picked
/// at random killed with SIGKILL every 10 s, without waiting for the cluster to recover in
/// between, under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chaos_soak_of_random_kills_loses_no_acknowledged_message() {
    let cluster = three_replicated_nodes().await;
    cluster
        .wait_for(Duration::from_secs(60), replicated)
        .await
        .expect("every shard has a live follower before the first kill");
    let bench = bench(&cluster, "chaos", ROOMS, "45s", &["--audit-history"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // A small xorshift seeded from the clock, printed so a failing order can be replayed
    // (`CHAOS_SEED=<seed>`).
    let mut seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    eprintln!("chaos seed {seed}");
    for _ in 0..4 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let name = format!("node-{}", seed % 3);
        match cluster.kill9(&name).await {
            Ok(pid) => eprintln!("kill -9 {name} (pid {pid})"),
            // Still being started again after an earlier kill.
            Err(e) => eprintln!("{name} not running: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let report = bench_report(bench, Duration::from_secs(180)).await;
    eprintln!("chaos: {report}");
    eprintln!(
        "chaos figures: acknowledged {} missing {}, duplicates {}, longest pause {} ms, room_unavailable {}",
        report["history"]["acknowledged"],
        report["history"]["acknowledged_missing"],
        report["duplicates"],
        report["longest_pause_ms"],
        report["errors"]["room_unavailable"]
    );
    let history = &report["history"];
    assert_eq!(history["unreadable"], 0, "every room read back: {report}");
    assert!(
        history["acknowledged"].as_u64().unwrap_or(0) > 2_000,
        "many acknowledged messages were checked: {report}"
    );
    assert_eq!(
        history["acknowledged_missing"], 0,
        "every acknowledged message is in its room's history: {report}"
    );
    assert_eq!(history["cut"], 0, "no history has a gap: {report}");
    assert_eq!(report["out_of_order"], 0, "{report}");
    cluster.shutdown().await.expect("clean shutdown");
}
