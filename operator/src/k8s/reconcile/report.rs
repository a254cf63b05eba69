//! What the pass tells the outside: the status subresource, and events on transitions (drain
//! started, finished or cancelled, stuck).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;
use shard::DrainStep;

use super::Context;
use crate::Error;
use crate::decide::Decision;
use crate::k8s::children::{FIELD_MANAGER, Owner};
use crate::k8s::crd::{ChatCluster, ChatClusterStatus};
use crate::k8s::status::{self, reasons, types};

/// Writes `new` to the status subresource by server-side apply, unless it equals `old`.
pub(super) async fn write_status(
    ctx: &Context,
    owner: &Owner,
    old: Option<&ChatClusterStatus>,
    new: &ChatClusterStatus,
) -> Result<(), Error> {
    if old == Some(new) {
        return Ok(());
    }
    let api: Api<ChatCluster> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    // `autoscaling` belongs to the autoscaler's field manager (see `autoscaler::step`).
    let new = ChatClusterStatus {
        autoscaling: None,
        ..new.clone()
    };
    let patch = json!({
        "apiVersion": "roomshard.dev/v1alpha1",
        "kind": "ChatCluster",
        "status": new,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&owner.name, &params, &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// Whether the drain recorded in `old` ended with this pass (completed or cancelled: the caller
/// tells them apart by the replicas it keeps).
pub(super) fn drain_finished(old: Option<&ChatClusterStatus>, new: &ChatClusterStatus) -> bool {
    old.is_some_and(|s| !s.draining.is_empty()) && new.draining.is_empty()
}

/// Counts what `items` yields, saturating at `u32::MAX`.
pub(super) fn count<T>(items: impl Iterator<Item = T>) -> u32 {
    u32::try_from(items.count()).unwrap_or(u32::MAX)
}

/// Events for what changed between `old` and `new`; nothing when nothing changed.
pub(super) async fn transition_events(
    ctx: &Context,
    cluster: &ChatCluster,
    old: Option<&ChatClusterStatus>,
    new: &ChatClusterStatus,
    decision: &Decision,
    desired: u32,
) {
    let was_draining = old.is_some_and(|s| !s.draining.is_empty());
    if !was_draining && !new.draining.is_empty() {
        let note = format!(
            "draining {} before scaling down to {desired}",
            new.draining.join(", ")
        );
        event(ctx, cluster, EventType::Normal, "DrainStarted", &note).await;
    }
    if was_draining && new.draining.is_empty() {
        let drained = old.map(|s| s.draining.join(", ")).unwrap_or_default();
        if decision.replicas <= desired {
            let note = format!("{drained} drained; replicas lowered to {desired}");
            event(ctx, cluster, EventType::Normal, "DrainFinished", &note).await;
        } else {
            let note = format!("drain of {drained} cancelled: replicas raised to {desired}");
            event(ctx, cluster, EventType::Normal, "DrainCancelled", &note).await;
        }
    }
    let stuck_before = status::condition(old, types::DEGRADED)
        .is_some_and(|c| c.status == "True" && c.reason == reasons::DRAIN_STUCK);
    if let Some(stuck) = &decision.stuck
        && !stuck_before
    {
        let note = if matches!(decision.step, DrainStep::Remove(_)) {
            stuck.to_string()
        } else {
            format!("{stuck}; the pods stay until it finishes")
        };
        event(
            ctx,
            cluster,
            EventType::Warning,
            reasons::DRAIN_STUCK,
            &note,
        )
        .await;
    }
}

/// Publishes one event on `cluster`; a failure is logged, not fatal (events are best effort).
pub(super) async fn event(
    ctx: &Context,
    cluster: &ChatCluster,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let name = cluster.name_any();
    publish(
        ctx,
        &cluster.object_ref(&()),
        &name,
        (type_, "Reconcile"),
        reason,
        note,
    )
    .await;
}

/// Publishes one event of `(type, action)` on the object `reference` (named `name` in the
/// log); best effort.
pub(in crate::k8s) async fn publish(
    ctx: &Context,
    reference: &ObjectReference,
    name: &str,
    (type_, action): (EventType, &str),
    reason: &str,
    note: &str,
) {
    let ev = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, reference).await {
        tracing::warn!(object = %name, error = %e, reason, "cannot publish event");
    }
}
