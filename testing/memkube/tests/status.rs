//! Built-in status subresources (pods, statefulsets): main writes keep status, status writes keep
//! everything else; tests act as the kubelet through the store or over HTTP.

mod common;

use common::{TestResult, start};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

fn pod(name: &str) -> Result<Pod, serde_json::Error> {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"app": "chat"}},
        "spec": {"containers": [{"name": "node", "image": "roomshard/node:dev"}]}}),
    )
}

#[tokio::test]
async fn a_test_acting_as_kubelet_makes_a_pod_ready() -> TestResult {
    let (server, client) = start().await?;
    let pods: Api<Pod> = Api::default_namespaced(client);
    let created = pods.create(&PostParams::default(), &pod("chat-0")?).await?;
    assert_eq!(
        created.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );
    server.store().set_pod_ready("default", "chat-0", true)?;
    let ready = pods.get("chat-0").await?;
    let conditions = ready.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    let typed: Option<Pod> = server.store().get_typed("default", "chat-0");
    assert!(
        typed
            .and_then(|p| p.status)
            .and_then(|s| s.pod_ip)
            .is_some()
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn main_writes_keep_status_and_status_writes_keep_spec() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<StatefulSet> = Api::default_namespaced(client);
    let sts: StatefulSet = serde_json::from_value(
        json!({"metadata": {"name": "web"}, "spec": {"replicas": 1,
        "serviceName": "web", "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}}}}),
    )?;
    api.create(&PostParams::default(), &sts).await?;
    let status = api
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"replicas": 1, "readyReplicas": 1}, "spec": {"replicas": 7}}),
            ),
        )
        .await?;
    assert_eq!(status.spec.as_ref().and_then(|s| s.replicas), Some(1));
    assert_eq!(
        status.status.as_ref().and_then(|s| s.ready_replicas),
        Some(1)
    );
    let scaled = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}, "status": {"readyReplicas": 0}})),
        )
        .await?;
    assert_eq!(scaled.spec.as_ref().and_then(|s| s.replicas), Some(3));
    assert_eq!(
        scaled.status.as_ref().and_then(|s| s.ready_replicas),
        Some(1)
    );
    assert_eq!(scaled.metadata.generation, Some(2));
    let mut replaced = scaled.clone();
    replaced.status = None;
    let after_put = api
        .replace("web", &PostParams::default(), &replaced)
        .await?;
    assert_eq!(
        after_put.status.and_then(|s| s.ready_replicas),
        Some(1),
        "a PUT without status keeps it"
    );
    server.shutdown().await?;
    Ok(())
}
