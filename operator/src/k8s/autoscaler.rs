//! The operator's autoscaler for clusters with `spec.autoscaling`: one step per reconcile pass.
//!
//! Each pass gives it the ready pods' reports (already read for the drain) and whether anything
//! is moving; [`crate::autoscale::recommend`] decides. A change is made the way a person would
//! make it: a merge patch of `spec.replicas` through the `ChatCluster`'s scale subresource, as
//! the field manager [`FIELD_MANAGER`]. The spec change then triggers an ordinary pass, so a
//! scale-in drains exactly as after `kubectl scale`. The change is recorded in
//! `status.autoscaling` (the new count, the previous one, when and why) and published as a
//! `Scaled` event.
//!
//! The recent recommendations live in memory, per cluster ([`Histories`]); a restarted or newly
//! elected operator starts with none, and then waits a whole stabilization window before it
//! moves the count (see [`crate::autoscale`]), so a restart cannot make the cluster jump.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::checks::Checked;
use super::children::Owner;
use super::crd::{AutoscalingStatus, ChatCluster};
use super::reconcile::{Context, publish};
use crate::Error;
use crate::autoscale::{History, Observed, Policy, Recommendation, loads, recommend};
use crate::decide::PodView;

/// The field manager of the autoscaler's `spec.replicas` changes, so `kubectl get chat
/// --show-managed-fields` tells them from a person's.
pub const FIELD_MANAGER: &str = "roomshard-autoscaler";

/// The reason of the event published on each change.
pub const SCALED_REASON: &str = "Scaled";

/// A history not added to for this long is dropped: its cluster was deleted (a pass never
/// sees a cluster without a finalizer go) or no longer autoscales.
const STALE: Duration = Duration::from_secs(3600);

/// The recommendation history of each cluster, with the policy it was made under (a new policy
/// starts a new history).
#[derive(Debug, Default)]
pub struct Histories(Mutex<HashMap<(String, String), (Policy, History)>>);

impl Histories {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), (Policy, History)>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One decision for the cluster `key` under `policy`.
    pub fn recommend(
        &self,
        key: (String, String),
        policy: &Policy,
        observed: &Observed<'_>,
    ) -> Recommendation {
        let mut all = self.lock();
        all.retain(|_, (_, history)| {
            history
                .newest()
                .is_none_or(|t| observed.now.saturating_duration_since(t) < STALE)
        });
        let entry = all
            .entry(key)
            .or_insert_with(|| (policy.clone(), History::default()));
        if entry.0 != *policy {
            *entry = (policy.clone(), History::default());
        }
        recommend(policy, observed, &mut entry.1)
    }

    /// Drops the history of a cluster that no longer autoscales (or no longer exists).
    pub fn forget(&self, key: &(String, String)) {
        self.lock().remove(key);
    }
}

/// What one autoscaler step observed of a cluster.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    /// `spec.replicas` now.
    pub current: u32,
    /// The pods of this pass.
    pub views: &'a [PodView],
    /// A drain, hand-offs, planned exits, or a rolling update are in progress, or the
    /// StatefulSet has not reached `spec.replicas` yet.
    pub busy: bool,
}

/// Decides for `cluster` and, on a change, patches its scale subresource and records the change
/// in `status.autoscaling`. Returns that record when it scaled, with the reason in words.
///
/// # Errors
///
/// [`Error::Kube`] when a patch fails (the pass is retried).
pub async fn step(
    client: &kube::Client,
    histories: &Histories,
    cluster: &ChatCluster,
    policy: &Policy,
    step: Step<'_>,
) -> Result<Option<AutoscalingStatus>, Error> {
    let namespace = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    let loads = loads(step.views);
    let recommendation = histories.recommend(
        (namespace.clone(), name.clone()),
        policy,
        &Observed {
            current: step.current,
            loads: &loads,
            busy: step.busy,
            now: Instant::now(),
        },
    );
    if !recommendation.changes(step.current) {
        tracing::debug!(cluster = %name, reason = %recommendation.reason, "autoscaler: no change");
        return Ok(None);
    }
    let desired = recommendation.desired;
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), &namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let patch = json!({"spec": {"replicas": desired}});
    api.patch_scale(&name, &params, &Patch::Merge(&patch))
        .await?;
    let reason = format!(
        "scaled from {} to {desired}: {}",
        step.current, recommendation.reason
    );
    tracing::info!(cluster = %name, from = step.current, to = desired, %reason, "autoscaler");
    let record = AutoscalingStatus {
        desired_replicas: i32::try_from(desired).unwrap_or(i32::MAX),
        previous_replicas: i32::try_from(step.current).unwrap_or(i32::MAX),
        last_scale_time: Some(Timestamp::now().to_string()),
        reason: Some(reason),
    };
    write_record(&api, &name, Some(&record)).await?;
    Ok(Some(record))
}

/// Writes `status.autoscaling` (or removes it, with `None`) by server-side apply as
/// [`FIELD_MANAGER`]. The reconciler's own status apply never names the field, so it neither
/// owns nor removes it: a pass working from a cached copy of the cluster that predates the
/// change cannot wipe the record.
async fn write_record(
    api: &Api<ChatCluster>,
    name: &str,
    record: Option<&AutoscalingStatus>,
) -> Result<(), Error> {
    let status = match record {
        Some(record) => json!({"autoscaling": record}),
        None => json!({}),
    };
    let patch = json!({
        "apiVersion": "roomshard.dev/v1alpha1",
        "kind": "ChatCluster",
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(name, &params, &Patch::Apply(&patch))
        .await?;
    Ok(())
}

/// One autoscaler step of a reconcile pass for a cluster with `spec.autoscaling`: on a change,
/// `spec.replicas` is patched, the change recorded in `status.autoscaling` and a `Scaled` event
/// published. Without `spec.autoscaling`, the cluster's history and record are dropped.
pub(super) async fn run(
    ctx: &Context,
    cluster: &ChatCluster,
    owner: &Owner,
    checked: &Checked,
    views: &[PodView],
    busy: bool,
) -> Result<Option<AutoscalingStatus>, Error> {
    let Some(policy) = &checked.autoscaling else {
        ctx.autoscaler
            .forget(&(owner.namespace.clone(), owner.name.clone()));
        if cluster
            .status
            .as_ref()
            .is_some_and(|s| s.autoscaling.is_some())
        {
            let api: Api<ChatCluster> = Api::namespaced(ctx.client.clone(), &owner.namespace);
            write_record(&api, &owner.name, None).await?;
        }
        return Ok(None);
    };
    let observed = Step {
        current: checked.replicas,
        views,
        busy,
    };
    let Some(scaled) = step(&ctx.client, &ctx.autoscaler, cluster, policy, observed).await? else {
        return Ok(None);
    };
    let note = scaled.reason.clone().unwrap_or_default();
    // One action per change, so that the event recorder (which folds events of the same reason
    // and action into one series, keeping the first note) keeps each reason.
    let action = format!(
        "Scale{}To{}",
        scaled.previous_replicas, scaled.desired_replicas
    );
    publish(
        ctx,
        &cluster.object_ref(&()),
        &cluster.name_any(),
        (EventType::Normal, &action),
        SCALED_REASON,
        &note,
    )
    .await;
    Ok(Some(scaled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::PodLoad;

    #[test]
    fn a_changed_policy_starts_a_new_history() {
        use crate::autoscale::Targets;
        let histories = Histories::default();
        let key = ("ns".to_owned(), "c".to_owned());
        let targets = Targets {
            connections_per_pod: Some(10),
            deliveries_per_sec_per_pod: None,
        };
        let mut policy = Policy::new(1, 5, targets);
        policy.scale_down_window = std::time::Duration::from_secs(3600);
        let loads = [PodLoad::default(); 3];
        let observed = Observed {
            current: 3,
            loads: &loads,
            busy: false,
            now: Instant::now(),
        };
        // The down-window is not covered yet: hold.
        assert_eq!(
            histories.recommend(key.clone(), &policy, &observed).desired,
            3
        );
        policy.scale_down_window = std::time::Duration::ZERO;
        assert_eq!(
            histories.recommend(key.clone(), &policy, &observed).desired,
            1
        );
        histories.forget(&key);
        assert!(histories.lock().is_empty());
    }

    #[test]
    fn the_history_of_a_cluster_not_seen_for_an_hour_is_dropped() {
        use crate::autoscale::Targets;
        let histories = Histories::default();
        let policy = Policy::new(
            1,
            5,
            Targets {
                connections_per_pod: Some(10),
                deliveries_per_sec_per_pod: None,
            },
        );
        let loads = [PodLoad::default()];
        let t0 = Instant::now();
        let at = |now| Observed {
            current: 1,
            loads: &loads,
            busy: false,
            now,
        };
        histories.recommend(("ns".into(), "gone".into()), &policy, &at(t0));
        histories.recommend(("ns".into(), "kept".into()), &policy, &at(t0));
        let later = t0 + Duration::from_secs(3601);
        histories.recommend(("ns".into(), "kept".into()), &policy, &at(later));
        let keys: Vec<String> = histories.lock().keys().map(|(_, n)| n.clone()).collect();
        assert_eq!(keys, ["kept"]);
    }
}
