//! Planned exits on the real control plane: an image change rolls every pod through the real
//! StatefulSet controller, an eviction goes through the Eviction API (and the PodDisruptionBudget),
//! and `kubectl delete pod` deletes one; each pod is drained while it is still alive (checked from
//! watch events in etcd's order), comes back and gets its share of shards again, and chat running
//! through the client Service all along loses no acknowledged message.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::EvictParams;
use kube_e2e::history::{History, Seen};
use kube_e2e::traffic::{Traffic, plain};
use kube_e2e::{Cluster, TestResult, eventually, settled, with_cluster};
use shard::NodeName;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_change_rolls_every_pod_one_at_a_time_and_loses_nothing() -> TestResult {
    with_cluster(3, |c| Box::pin(rollout(c))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_and_a_pod_delete_each_drain_the_pod_before_it_exits() -> TestResult {
    with_cluster(3, |c| Box::pin(evict_and_delete(c))).await
}

/// Each pod in `pods` was emptied in a published table after it began terminating and before it
/// left the API: it handed its shards off while alive.
fn drained_while_alive(history: &History, pods: &[&str]) -> TestResult {
    let events = history.events();
    for pod in pods {
        let node = NodeName::new(*pod)?;
        let terminating = events
            .iter()
            .find(|(_, s)| matches!(s, Seen::PodTerminating(p) if p == pod))
            .map(|(rv, _)| *rv)
            .ok_or(format!("{pod} never terminated"))?;
        let deleted = events
            .iter()
            .find(|(rv, s)| *rv > terminating && matches!(s, Seen::PodDeleted(p) if p == pod))
            .map(|(rv, _)| *rv)
            .ok_or(format!("{pod} never left the API"))?;
        let emptied = events.iter().any(|(rv, s)| {
            *rv > terminating
                && *rv < deleted
                && matches!(s, Seen::Table(t) if t.nodes.contains_key(&node)
                    && t.shards_of(&node).is_empty()
                    && t.moves.iter().all(|m| m.from != node && m.to != node))
        });
        assert!(
            emptied,
            "{pod} handed off every shard between terminating ({terminating}) and leaving the API ({deleted})"
        );
    }
    Ok(())
}

async fn rollout(cluster: &Cluster) -> TestResult {
    let stop = CancellationToken::new();
    let (chats, history, proxy) = cluster.run_minimal(&stop).await?;
    // About 80 messages per room: the whole history stays checkable.
    let traffic = Traffic::start(
        plain(proxy.addr),
        "roll",
        8,
        Duration::from_millis(1200),
        Duration::from_secs(95),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster
        .patch_chat(
            "minimal",
            r#"{"spec":{"image":"registry.example/roomshard-node:v2"}}"#,
        )
        .await?;
    let client = cluster.client().await?;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    eventually(
        "every pod runs the new image and the rollout is done",
        Duration::from_secs(240),
        || async {
            let s = chats.get("minimal").await.ok()?.status?;
            let list = pods.list(&Default::default()).await.ok()?;
            let new_image = list.items.len() == 3
                && list.items.iter().all(|p| {
                    p.spec.as_ref().is_some_and(|s| {
                        s.containers[0].image.as_deref()
                            == Some("registry.example/roomshard-node:v2")
                    }) && p.metadata.deletion_timestamp.is_none()
                });
            (new_image
                && s.updated_replicas == Some(3)
                && settled(&chats, "minimal", 3).await.is_some())
            .then_some(())
        },
    )
    .await?;
    let table = cluster.kubectl(&["get", "chat", "minimal"]).await?;
    eprintln!("{table}");
    assert!(
        table.lines().next().unwrap_or_default().contains("UPDATED"),
        "kubectl get chat shows the rollout: {table}"
    );
    traffic.verify_flowed("rollout", 8 * 50).await?;
    stop.cancel();
    drained_while_alive(&history, &["minimal-0", "minimal-1", "minimal-2"])?;
    // One pod at a time: never two terminating at once.
    let mut going: std::collections::BTreeSet<String> = Default::default();
    let pod_events: Vec<String> = history
        .events()
        .iter()
        .filter_map(|(rv, s)| match s {
            Seen::PodTerminating(p) => Some(format!("{rv} terminating {p}")),
            Seen::PodDeleted(p) => Some(format!("{rv} deleted {p}")),
            _ => None,
        })
        .collect();
    for (_, s) in history.events() {
        match s {
            Seen::PodTerminating(p) => {
                going.insert(p);
            }
            Seen::PodDeleted(p) => {
                going.remove(&p);
            }
            _ => {}
        }
        assert!(
            going.len() <= 1,
            "two pods were going away at once during the rollout: {going:?}; pod events: {pod_events:#?}"
        );
    }
    Ok(())
}

async fn evict_and_delete(cluster: &Cluster) -> TestResult {
    let stop = CancellationToken::new();
    let (chats, history, proxy) = cluster.run_minimal(&stop).await?;
    let traffic = Traffic::start(
        plain(proxy.addr),
        "exit",
        6,
        Duration::from_millis(900),
        Duration::from_secs(80),
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client().await?, "default");
    pods.evict("minimal-1", &EvictParams::default()).await?;
    eventually(
        "minimal-1 is back and has its share",
        Duration::from_secs(120),
        || async {
            let p = pods.get("minimal-1").await.ok()?;
            (p.metadata.deletion_timestamp.is_none()
                && settled(&chats, "minimal", 3).await.is_some())
            .then_some(())
        },
    )
    .await?;
    cluster
        .kubectl(&["delete", "pod", "minimal-2", "--wait=false"])
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    eventually(
        "minimal-2 is back and has its share",
        Duration::from_secs(120),
        || async {
            let p = pods.get("minimal-2").await.ok()?;
            (p.metadata.deletion_timestamp.is_none()
                && settled(&chats, "minimal", 3).await.is_some())
            .then_some(())
        },
    )
    .await?;
    traffic.verify_flowed("eviction and delete", 6 * 40).await?;
    stop.cancel();
    drained_while_alive(&history, &["minimal-1", "minimal-2"])
}
