//! The real kube `Controller` wiring against the real control plane: watch events (the
//! cluster, its pods) trigger passes; no requeue timer is needed for membership to follow
//! readiness, and the shard map forgets a deleted cluster.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::Api;
use operator::k8s::controller;
use operator::k8s::crd::ChatCluster;
use operator::k8s::reconcile::Options;
use serde_json::json;
use support::{Harness, NS, TestResult, until};
use tokio_util::sync::CancellationToken;

/// `ready` nodes in the cluster's status.
fn ready_nodes(ready: i32) -> impl Fn(Option<&ChatCluster>) -> bool {
    move |c: Option<&ChatCluster>| {
        c.and_then(|c| c.status.as_ref())
            .is_some_and(|s| s.ready_nodes == ready)
    }
}

#[tokio::test]
async fn the_controller_follows_pod_readiness_through_its_watches() -> TestResult {
    // Requeues far in the future: only watch events can drive this test.
    let h = Harness::with_options(Options {
        initial_grace: Duration::ZERO,
        busy_requeue: Duration::from_secs(3600),
        idle_requeue: Duration::from_secs(3600),
        ..Options::default()
    })
    .await?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(controller::run(h.ctx.clone(), None, stop.clone()));

    h.create("chat", json!({"replicas": 2, "shards": 8}))
        .await?;
    let sts: Api<StatefulSet> = Api::namespaced(h.client.clone(), NS);
    until(
        &sts,
        "chat",
        "the StatefulSet has 2 replicas",
        |s: Option<&StatefulSet>| s.and_then(|s| s.spec.as_ref()?.replicas) == Some(2),
    )
    .await?;
    h.statefulset_pods("chat").await?;
    h.ready("chat-0", true).await?;
    until(&h.clusters(), "chat", "1 ready node", ready_nodes(1)).await?;
    h.ready("chat-1", true).await?;
    until(&h.clusters(), "chat", "2 ready nodes", ready_nodes(2)).await?;
    let table = h.table("chat").await;
    assert_eq!(table.nodes.len(), 2);
    assert!(h.ctx.metrics.reconciles() >= 3);
    let shown = |h: &Harness| -> Vec<usize> {
        h.ctx
            .map
            .snapshot()
            .clusters
            .iter()
            .filter(|m| m.namespace == NS && m.name == "chat")
            .map(|m| m.pods.iter().filter(|p| p.ready).count())
            .collect()
    };
    assert_eq!(
        shown(&h),
        [2],
        "the shard map shows the cluster's 2 ready pods"
    );

    // Deleted: no pass sees it (there is no finalizer), but the map forgets it once the
    // controller is triggered for it again (its children going) and finds it gone.
    h.clusters()
        .delete("chat", &kube::api::DeleteParams::default())
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !shown(&h).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the map still shows the deleted cluster"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running).await??;
    Ok(())
}
