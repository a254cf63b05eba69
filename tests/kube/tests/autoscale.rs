//! The scale subresource and the operator's autoscaler on the real control plane.
//!
//! `kubectl scale chat minimal --replicas N` changes the pods, `kubectl get chat` and
//! `kubectl get --subresource=scale` show it, and a scale-in drains. Then `spec.autoscaling`
//! (short windows, so the test stays bounded) follows a load that rises and falls: WebSocket
//! clients through the client Service. Invalid autoscaling specs are refused by the API server
//! with the field named.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use kube_e2e::chat::ChatClient;
use kube_e2e::history::{Seen, drained_before_removed};
use kube_e2e::{Cluster, TestResult, eventually, kubectl_row, settled, with_cluster};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_and_the_autoscaler_change_the_pods_and_scale_in_drains() -> TestResult {
    with_cluster(3, |c| Box::pin(scenario(c))).await
}

async fn scenario(cluster: &Cluster) -> TestResult {
    let stop = CancellationToken::new();
    let (chats, history, proxy) = cluster.run_minimal(&stop).await?;
    let client = cluster.client().await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod_count = || async {
        let list = pods.list(&ListParams::default()).await.ok()?;
        Some(list.items.len())
    };

    // 1. kubectl scale, up then down.
    cluster
        .kubectl(&["scale", "chat", "minimal", "--replicas", "4"])
        .await?;
    eventually("4 nodes settle", Duration::from_secs(120), || {
        settled(&chats, "minimal", 4)
    })
    .await?;
    let scale: Value = serde_json::from_str(
        &cluster
            .kubectl(&[
                "get",
                "chat",
                "minimal",
                "--subresource=scale",
                "-o",
                "json",
            ])
            .await?,
    )?;
    assert_eq!(scale["kind"], "Scale", "{scale}");
    assert_eq!(scale["spec"]["replicas"], 4, "{scale}");
    assert_eq!(scale["status"]["replicas"], 4, "{scale}");
    assert!(
        scale["status"]["selector"]
            .as_str()
            .is_some_and(|s| s.contains("roomshard.dev/cluster=minimal")),
        "{scale}"
    );
    let table = cluster.kubectl(&["get", "chat", "minimal"]).await?;
    let row = kubectl_row(&table, 1);
    assert_eq!(row.get(1..3), Some(&["4", "4"][..]), "{table}");

    cluster
        .kubectl(&["scale", "chat", "minimal", "--replicas", "2"])
        .await?;
    eventually("2 nodes settle", Duration::from_secs(180), || {
        settled(&chats, "minimal", 2)
    })
    .await?;
    eventually("2 pods are left", Duration::from_secs(90), || async {
        (pod_count().await? == 2).then_some(())
    })
    .await?;
    drained_before_removed(&history.events(), 2, &["minimal-2", "minimal-3"])?;

    // 2. Invalid autoscaling specs are refused with the field named.
    for (autoscaling, field) in [
        (
            r#"{"minReplicas":3,"maxReplicas":2,"targets":{"connectionsPerPod":10}}"#,
            "autoscaling.maxReplicas",
        ),
        (
            r#"{"minReplicas":1,"maxReplicas":2,"targets":{}}"#,
            "spec.autoscaling.targets",
        ),
        (
            r#"{"minReplicas":1,"maxReplicas":2,"targets":{"connectionsPerPod":0}}"#,
            "spec.autoscaling.targets.connectionsPerPod",
        ),
        (
            r#"{"minReplicas":0,"maxReplicas":2,"targets":{"connectionsPerPod":5}}"#,
            "spec.autoscaling.minReplicas",
        ),
    ] {
        let patch = format!(r#"{{"spec":{{"autoscaling":{autoscaling}}}}}"#);
        let out = cluster
            .kubectl_as(
                cluster.inner.kubeconfig(),
                &["patch", "chat", "minimal", "--type=merge", "-p", &patch],
            )
            .await?;
        assert!(!out.ok, "the API server accepted {autoscaling}");
        assert!(
            out.stderr.contains(field),
            "the refusal names {field}: {}",
            out.stderr
        );
    }

    // 3. The autoscaler follows the load: 2..4 nodes at 10 connections per pod.
    cluster
        .patch_chat(
            "minimal",
            r#"{"spec":{"autoscaling":{"minReplicas":2,"maxReplicas":4,
                "targets":{"connectionsPerPod":10},
                "scaleDownStabilization":"15s","maxStep":2}}}"#,
        )
        .await?;
    let addr = proxy.addr.to_string();
    let mut clients = Vec::new();
    for i in 0..35 {
        clients.push(ChatClient::connect(&addr, &format!("load-{i}")).await?);
    }
    eventually(
        "the autoscaler grows the cluster to 4",
        Duration::from_secs(120),
        || settled(&chats, "minimal", 4),
    )
    .await?;
    let grown = chats.get("minimal").await?;
    assert_eq!(grown.spec.replicas, 4);
    let auto = grown
        .status
        .and_then(|s| s.autoscaling)
        .ok_or("no status.autoscaling")?;
    // 35 connections ask for 4 pods: in one step of 2, or two steps if a pass saw part of
    // them.
    assert_eq!(auto.desired_replicas, 4, "{auto:?}");
    let reason = auto.reason.unwrap_or_default();
    assert!(
        reason.contains("to 4: connections per pod") && reason.contains("target of 10"),
        "{reason}"
    );
    let events = cluster.event_messages("Scaled", "minimal").await?;
    // Each change has its own event, with its reason.
    assert!(events.contains("to 4: connections per pod"), "{events}");
    let managers = cluster
        .kubectl(&[
            "get",
            "chat",
            "minimal",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields[*].manager}",
        ])
        .await?;
    assert!(managers.contains("roomshard-autoscaler"), "{managers}");

    // The load falls: after the 15 s window the cluster shrinks to its minimum, draining first.
    drop(clients);
    eventually(
        "the autoscaler shrinks the cluster to 2",
        Duration::from_secs(150),
        || settled(&chats, "minimal", 2),
    )
    .await?;
    eventually("2 pods are left", Duration::from_secs(90), || async {
        (pod_count().await? == 2).then_some(())
    })
    .await?;
    let events = cluster.event_messages("Scaled", "minimal").await?;
    assert!(events.contains("to 2: connections per pod 0.0"), "{events}");
    let shrunk = chats.get("minimal").await?;
    let auto = shrunk
        .status
        .and_then(|s| s.autoscaling)
        .ok_or("no status.autoscaling")?;
    assert_eq!((auto.previous_replicas, auto.desired_replicas), (4, 2));
    assert!(
        auto.reason
            .as_deref()
            .is_some_and(|r| r.contains("connections per pod 0.0")),
        "{auto:?}"
    );
    let events = history.events();
    let first_down = events
        .iter()
        .position(|(_, s)| matches!(s, Seen::Replicas(2)))
        .ok_or("the StatefulSet never had 2 replicas")?;
    let autoscaled_up = events[first_down..]
        .iter()
        .position(|(_, s)| matches!(s, Seen::Replicas(4)))
        .ok_or("the autoscaler never took the StatefulSet to 4 replicas")?;
    drained_before_removed(
        &events[first_down + autoscaled_up..],
        2,
        &["minimal-2", "minimal-3"],
    )?;
    stop.cancel();
    Ok(())
}
