//! The real kube `Controller` wiring against memkube: watch events (the cluster, its pods)
//! trigger passes; no requeue timer is needed for membership to follow readiness.

mod support;

use std::time::Duration;

use operator::k8s::controller;
use operator::k8s::reconcile::Options;
use serde_json::json;
use support::{Harness, TestResult};
use tokio_util::sync::CancellationToken;

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
    wait(|| async { h.replicas("chat").await == 2 }).await?;
    h.kubelet("chat").await?;
    h.ready("chat-0", true)?;
    wait(|| async { h.status("chat").await.ready_nodes == 1 }).await?;
    h.ready("chat-1", true)?;
    wait(|| async { h.status("chat").await.ready_nodes == 2 }).await?;
    let table = h.table("chat").await;
    assert_eq!(table.nodes.len(), 2);
    assert!(h.ctx.metrics.reconciles() >= 3);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running).await??;
    Ok(())
}

/// Polls `check` every 20 ms for up to ten seconds.
async fn wait<F, Fut>(mut check: F) -> TestResult
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            return Err("timed out".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
