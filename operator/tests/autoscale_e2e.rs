//! Autoscaling end to end under the local driver: real `roomshard-node` processes, real
//! WebSocket clients and the load generator as the load. The cluster grows when the clients come and shrinks, through
//! the drain, when they leave.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`, which `./test.sh` does).

mod real_nodes;

use std::time::Duration;

use operator::ClusterView;
use operator::autoscale::{Policy, Targets};
use operator::local::{LocalCluster, LocalOptions};
use real_nodes::{Client, binary, cluster_with, options, ws_urls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_grows_with_its_connections_and_shrinks_through_the_drain_when_they_leave() {
    let policy = Policy {
        scale_up_window: Duration::ZERO,
        scale_down_window: Duration::from_secs(3),
        max_step: 2,
        ..Policy::new(
            1,
            3,
            Targets {
                connections_per_pod: Some(10),
                deliveries_per_sec_per_pod: None,
            },
        )
    };
    let cluster = cluster_with(LocalOptions {
        nodes: 1,
        autoscale: Some(policy),
        ..options()
    })
    .await;
    let idle = cluster.view();
    assert_eq!(
        idle.desired_replicas, 1,
        "an idle cluster stays at its minimum"
    );
    assert_eq!(idle.autoscaling.as_ref().map(|a| a.scalings), Some(0));

    // The load rises: 25 clients on node-0 ask for ceil(25 / 10) = 3 nodes.
    let (_, ws) = ws_urls(&cluster).into_iter().next().expect("node-0");
    let mut clients = Vec::new();
    for i in 0..25 {
        clients.push(Client::connect(&ws, &format!("load-{i}")).await);
    }
    let grown = cluster
        .wait_for(Duration::from_secs(60), |v| {
            v.desired_replicas == 3 && v.is_settled()
        })
        .await
        .expect("the cluster grows to 3 nodes");
    let scaled = grown.autoscaling.expect("autoscaling view");
    assert_eq!((scaled.last_from, scaled.last_to), (Some(1), Some(3)));
    let reason = scaled.last_reason.expect("a reason");
    assert!(
        reason.contains("connections per pod 25.0 against a target of 10: 3 pods wanted"),
        "{reason}"
    );
    assert_eq!(grown.shards_per_node.len(), 3, "every new node owns shards");

    // The load falls: the clients leave, and after the 3 s down-window the cluster shrinks,
    // each removed node drained first.
    drop(clients);
    let shrunk = shrinks_to_one_node_through_the_drain(&cluster).await;
    let scaled = shrunk.autoscaling.clone().expect("autoscaling view");
    assert_eq!(scaled.last_to, Some(1));
    assert!(
        scaled
            .last_reason
            .as_deref()
            .is_some_and(|r| r.contains("connections per pod 0.0")),
        "{scaled:?}"
    );
    assert_eq!(shrunk.shards_per_node.len(), 1);
    assert!(shrunk.summary().contains("autoscaling 1..3"));
    cluster.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_follows_the_delivery_rate_of_a_chat_load_up_and_back_down() {
    let policy = Policy {
        scale_down_window: Duration::from_secs(3),
        ..Policy::new(
            1,
            2,
            Targets {
                connections_per_pod: None,
                deliveries_per_sec_per_pod: Some(100),
            },
        )
    };
    let cluster = cluster_with(LocalOptions {
        nodes: 1,
        autoscale: Some(policy),
        ..options()
    })
    .await;
    let (_, ws) = ws_urls(&cluster).into_iter().next().expect("node-0");
    // 20 rooms of 4 users at 5 messages per second per room: 400 deliveries per second, which
    // asks for 4 nodes at 100 per node, capped at 2.
    let mut bench = tokio::process::Command::new(binary("roomshard-bench"))
        .args([
            "--nodes",
            ws.trim_end_matches("/ws"),
            "--rooms",
            "20",
            "--users",
            "4",
            "--rate",
            "5",
            "--duration",
            "15s",
            "--warmup",
            "1s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start roomshard-bench");
    let grown = cluster
        .wait_for(Duration::from_secs(60), |v| {
            v.desired_replicas == 2 && v.is_settled()
        })
        .await
        .expect("the cluster grows to 2 nodes");
    let reason = grown
        .autoscaling
        .and_then(|a| a.last_reason)
        .expect("a reason");
    assert!(
        reason.starts_with("scaled from 1 to 2: deliveries/s per pod"),
        "{reason}"
    );
    let finished = tokio::time::timeout(Duration::from_secs(60), bench.wait())
        .await
        .expect("the bench ends")
        .expect("the bench runs");
    assert!(finished.success(), "roomshard-bench: {finished}");
    // The rate decays over the nodes' 10 s window; 3 s of low recommendations later the
    // cluster shrinks, through the drain.
    let shrunk = shrinks_to_one_node_through_the_drain(&cluster).await;
    let scaled = shrunk.autoscaling.expect("autoscaling view");
    assert_eq!(
        (scaled.last_from, scaled.last_to, scaled.scalings),
        (Some(2), Some(1), 2)
    );
    cluster.shutdown().await.expect("clean shutdown");
}

/// Waits (up to 90 s) for `cluster` to settle at 1 node, asserting that the scale-in went
/// through the drain, and returns the settled view.
async fn shrinks_to_one_node_through_the_drain(cluster: &LocalCluster) -> ClusterView {
    let mut saw_drain = false;
    let shrunk = cluster
        .wait_for(Duration::from_secs(90), |v| {
            saw_drain |= !v.drain.draining.is_empty();
            v.desired_replicas == 1 && v.is_settled()
        })
        .await
        .expect("the cluster shrinks back to 1 node");
    assert!(saw_drain, "the scale-in went through the drain");
    shrunk
}
