//! Scaling on the real control plane under load: `kubectl patch` 3 → 5 → 2 while
//! `roomshard-bench` chats through the client Service. The StatefulSet is lowered only after the
//! drain (checked from watch events in etcd's order), and nothing is lost or repeated.

use std::time::Duration;

use kube::Api;
use kube_e2e::bench::Load;
use kube_e2e::history::{Seen, drained_before_removed};
use kube_e2e::{Cluster, TestResult, eventually, settled, with_cluster};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_three_five_two_under_load_drains_before_the_statefulset_shrinks_and_loses_nothing()
-> TestResult {
    with_cluster(3, |c| Box::pin(scale(c))).await
}

async fn scale(cluster: &Cluster) -> TestResult {
    let stop = CancellationToken::new();
    let (chats, history, proxy) = cluster.run_minimal(&stop).await?;
    let client = cluster.client().await?;

    let load = Load::start(&format!("ws://{}", proxy.addr), 60, 3, 5.0, "70s")?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster
        .patch_chat("minimal", r#"{"spec":{"replicas":5}}"#)
        .await?;
    eventually("5 nodes settle", Duration::from_secs(120), || {
        settled(&chats, "minimal", 5)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster
        .patch_chat("minimal", r#"{"spec":{"replicas":2}}"#)
        .await?;
    eventually("2 nodes settle", Duration::from_secs(180), || {
        settled(&chats, "minimal", 2)
    })
    .await?;
    eventually("minimal-2..4 are gone", Duration::from_secs(90), || async {
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "default");
        let list = pods.list(&kube::api::ListParams::default()).await.ok()?;
        (list.items.len() == 2).then_some(())
    })
    .await?;

    let report = load.report(Duration::from_secs(150)).await?;
    eprintln!("bench across 3 -> 5 -> 2: {}", report.0);
    assert!(
        report.count("delivered") > 5_000,
        "traffic flowed: {}",
        report.0
    );
    assert_eq!(report.count("lost"), 0, "no message lost: {}", report.0);
    assert_eq!(
        report.count("duplicates"),
        0,
        "no message repeated: {}",
        report.0
    );
    assert_eq!(report.errors(), 0, "no send refused: {}", report.0);
    assert!(
        report.count("reconnects") > 0,
        "clients of drained pods reconnected: {}",
        report.0
    );
    assert!(
        report.moves_without_leaving() > 0,
        "clients of drained pods joined through the Service again before leaving: {}",
        report.0
    );
    stop.cancel();

    // The order, as etcd saw it: each removed pod was emptied in a published table before the
    // StatefulSet went to 2, and terminated only after that.
    let events = history.events();
    drained_before_removed(&events, 2, &["minimal-2", "minimal-3", "minimal-4"])?;
    let replicas: Vec<i32> = events
        .iter()
        .filter_map(|(_, s)| match s {
            Seen::Replicas(r) => Some(*r),
            _ => None,
        })
        .collect();
    assert!(
        replicas.iter().all(|r| [3, 5, 2].contains(r)),
        "the StatefulSet only ever had 3, 5 or 2 replicas: {replicas:?}"
    );
    Ok(())
}
