//! The autoscaler inside the reconciler, against the real control plane: the load comes from
//! the fake nodes' reports, the change goes through the ChatCluster's scale subresource.

mod support;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use operator::decide::Report;
use serde_json::json;
use support::{Harness, NS, TestResult};

#[tokio::test]
async fn a_loaded_cluster_is_scaled_through_the_scale_subresource_with_the_reason_recorded()
-> TestResult {
    let h = Harness::start().await?;
    let spec = json!({"replicas": 2, "shards": 12, "autoscaling": {"minReplicas": 1,
        "maxReplicas": 5, "targets": {"connectionsPerPod": 10}}});
    let table = h.running("chat", spec).await?;
    let status = h.status("chat").await;
    assert_eq!(status.replicas, 2, "status.replicas counts the pods");
    assert_eq!(
        status.selector.as_deref(),
        Some(
            "app.kubernetes.io/instance=chat,app.kubernetes.io/name=roomshard,roomshard.dev/cluster=chat"
        )
    );
    assert!(
        status.autoscaling.is_none(),
        "an idle cluster at its count is left alone"
    );
    assert_eq!(h.clusters().get("chat").await?.spec.replicas, 2);

    // 60 connections at 10 per pod ask for 6 pods: capped at maxReplicas 5.
    for pod in ["chat-0", "chat-1"] {
        h.nodes.report(
            pod,
            Report {
                epoch: table.epoch,
                connections: 30,
                ..Report::default()
            },
        );
    }
    let stale = h.clusters().get("chat").await?;
    h.pass("chat").await?;
    let cluster = h.clusters().get("chat").await?;
    assert_eq!(cluster.spec.replicas, 5);
    let scaled = cluster
        .status
        .and_then(|s| s.autoscaling)
        .expect("status.autoscaling");
    assert_eq!((scaled.previous_replicas, scaled.desired_replicas), (2, 5));
    assert!(scaled.last_scale_time.is_some());
    let reason = scaled.reason.expect("a reason");
    assert!(
        reason.starts_with(
            "scaled from 2 to 5: connections per pod 30.0 against a target of 10: 6 pods wanted"
        ),
        "{reason}"
    );
    let events = h.events("chat").await?;
    assert!(
        events.contains(&("Scaled".to_owned(), reason.clone())),
        "{events:?}"
    );

    // A pass on a copy of the cluster from before the change (a controller cache that has not
    // caught up) keeps the record: the status apply does not own it.
    // (At 10 connections per pod, that pass sees nothing to change.)
    for pod in ["chat-0", "chat-1"] {
        h.nodes.report(
            pod,
            Report {
                epoch: table.epoch,
                connections: 10,
                ..Report::default()
            },
        );
    }
    operator::k8s::reconcile::reconcile(std::sync::Arc::new(stale), h.ctx.clone()).await?;
    let kept = h
        .status("chat")
        .await
        .autoscaling
        .expect("the record stays");
    assert_eq!(kept.desired_replicas, 5);

    // Made through the scale subresource, by its own field manager.
    let gvk = GroupVersionKind::gvk("roomshard.dev", "v1alpha1", "ChatCluster");
    let api: Api<DynamicObject> =
        Api::namespaced_with(h.client.clone(), NS, &ApiResource::from_gvk(&gvk));
    let object = api.get("chat").await?;
    let scale_write: Vec<Option<&str>> = object
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|f| f.manager.as_deref() == Some("roomshard-autoscaler"))
        .map(|f| f.subresource.as_deref())
        .collect::<Vec<_>>();
    // spec.replicas through the scale subresource, status.autoscaling through the status one.
    assert!(scale_write.contains(&Some("scale")), "{scale_write:?}");
    assert!(scale_write.contains(&Some("status")), "{scale_write:?}");

    // The next pass acts on it like on any scale; the autoscaler holds meanwhile.
    h.pass("chat").await?;
    assert_eq!(h.replicas("chat").await, 5);
    assert_eq!(h.clusters().get("chat").await?.spec.replicas, 5);

    // Without spec.autoscaling the count is the user's again and the record goes.
    h.clusters()
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"autoscaling": null}})),
        )
        .await?;
    h.pass("chat").await?;
    assert!(h.status("chat").await.autoscaling.is_none());
    assert_eq!(h.clusters().get("chat").await?.spec.replicas, 5);
    h.stop().await;
    Ok(())
}
