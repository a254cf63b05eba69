//! The operator-driven rolling update of the node pods: which pod, if any, to delete next.
//!
//! The node StatefulSet uses `updateStrategy: OnDelete`, so a template change (image,
//! resources, scheduling) replaces no pod by itself. The reconciler asks [`next_to_replace`]
//! on every pass and deletes the pod it names: one pod at a time, highest ordinal first, and
//! only while the cluster is settled. The deleted pod drains through the same path as any
//! planned exit (its `deletionTimestamp` makes it a draining member), and the StatefulSet
//! controller recreates it from the new template.
//!
//! Why not the StatefulSet's own `RollingUpdate`: with `podManagementPolicy: Parallel` and the
//! `MaxUnavailableStatefulSet` feature (on by default in Kubernetes 1.37), the controller
//! deletes every old-revision pod that is not yet *available* (Ready for `minReadySeconds`) at
//! once, with no budget. Measured on 1.37: an image change shortly after the pods became Ready
//! deleted all of them together, leaving no member to hand the shards to.
//!
//! # Guarantees
//!
//! - At most one pod is ever being replaced: nothing is deleted while any pod of the
//!   StatefulSet is terminating, missing or not Ready.
//! - Nothing is deleted while shards move, a pod exits or a drain (scale-down) runs, so the
//!   replacement got its shards back (the hand-offs to it are done) before the next pod goes.
//! - Stateless: every input is read again on every pass, so a restarted operator continues the
//!   rollout where it stands.
//!
//! # Assumptions
//!
//! - Pods carry the StatefulSet controller's `controller-revision-hash` label; a pod without
//!   it is left alone.
//! - `status.updateRevision` is only trusted when `status.observedGeneration` has caught up
//!   with the StatefulSet's generation (see [`update_revision`]).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::observe::{is_ready, is_terminating};

/// The label the StatefulSet controller puts on each pod: the revision it was created from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// What the rollout needs to know about one pod of the StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// The pod's name, `{statefulset}-{ordinal}`.
    pub name: String,
    /// Its `controller-revision-hash` label.
    pub revision: Option<String>,
    /// Its Ready condition is True (and it is not being deleted).
    pub ready: bool,
    /// It has a `deletionTimestamp`.
    pub terminating: bool,
}

impl PodState {
    /// The state of `pod`.
    pub fn of(pod: &Pod) -> PodState {
        PodState {
            name: pod.name_any(),
            revision: pod.labels().get(REVISION_LABEL).cloned(),
            ready: is_ready(pod),
            terminating: is_terminating(pod),
        }
    }
}

/// Everything [`next_to_replace`] decides from.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The StatefulSet's name, the prefix of its pods' names.
    pub statefulset: &'a str,
    /// The pods that should exist: ordinals `0..replicas`.
    pub replicas: u32,
    /// The revision new pods are created from (see [`update_revision`]); `None` while unknown.
    pub update_revision: Option<&'a str>,
    /// Every pod of the StatefulSet, whatever its ordinal.
    pub pods: &'a [PodState],
    /// The reconciler's decision is quiet: no drain or scale-down under way, no move in the
    /// table, no pod exiting.
    pub quiet: bool,
}

/// The pod to delete now to move the rollout on, or `None`: the highest ordinal on an old
/// revision, once every pod `0..replicas` exists and is Ready, none is terminating and the
/// cluster is quiet (see the module doc).
pub fn next_to_replace(observed: &Observed<'_>) -> Option<String> {
    let update = observed.update_revision?;
    if !observed.quiet || observed.pods.iter().any(|p| p.terminating) {
        return None;
    }
    let mut outdated = None;
    for ordinal in 0..observed.replicas {
        let name = format!("{}-{ordinal}", observed.statefulset);
        let pod = observed.pods.iter().find(|p| p.name == name)?;
        if !pod.ready {
            return None;
        }
        if pod.revision.as_deref().is_some_and(|r| r != update) {
            outdated = Some(name);
        }
    }
    // A pod above the range is a scale-down's pod still being removed.
    let prefix = format!("{}-", observed.statefulset);
    let beyond = observed.pods.iter().any(|p| {
        p.name
            .strip_prefix(&prefix)
            .and_then(|o| o.parse::<u32>().ok())
            .is_some_and(|o| o >= observed.replicas)
    });
    if beyond {
        return None;
    }
    outdated
}

/// The StatefulSet's `status.updateRevision`, once its controller has seen the current spec
/// (`status.observedGeneration` is the generation); before that it may name the revision being
/// replaced.
pub fn update_revision(sts: &StatefulSet) -> Option<&str> {
    let status = sts.status.as_ref()?;
    let seen = match (status.observed_generation, sts.metadata.generation) {
        (Some(observed), Some(generation)) => observed >= generation,
        (_, None) => true,
        (None, Some(_)) => false,
    };
    if seen {
        status.update_revision.as_deref()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ordinal: u32, revision: &str) -> PodState {
        PodState {
            name: format!("chat-{ordinal}"),
            revision: Some(revision.to_owned()),
            ready: true,
            terminating: false,
        }
    }

    fn observed(pods: &[PodState]) -> Observed<'_> {
        Observed {
            statefulset: "chat",
            replicas: 3,
            update_revision: Some("new"),
            pods,
            quiet: true,
        }
    }

    #[test]
    fn a_settled_cluster_deletes_its_highest_outdated_pod() {
        let pods = [pod(0, "old"), pod(1, "old"), pod(2, "old")];
        assert_eq!(next_to_replace(&observed(&pods)).as_deref(), Some("chat-2"));
        let pods = [pod(0, "old"), pod(1, "old"), pod(2, "new")];
        assert_eq!(next_to_replace(&observed(&pods)).as_deref(), Some("chat-1"));
        let pods = [pod(0, "old"), pod(1, "new"), pod(2, "new")];
        assert_eq!(next_to_replace(&observed(&pods)).as_deref(), Some("chat-0"));
    }

    #[test]
    fn nothing_is_deleted_while_one_pod_is_terminating() {
        let mut pods = [pod(0, "old"), pod(1, "old"), pod(2, "old")];
        pods[2].terminating = true;
        pods[2].ready = false;
        assert_eq!(next_to_replace(&observed(&pods)), None);
    }

    #[test]
    fn nothing_is_deleted_while_a_pod_is_not_ready() {
        let mut pods = [pod(0, "old"), pod(1, "old"), pod(2, "new")];
        pods[2].ready = false;
        assert_eq!(next_to_replace(&observed(&pods)), None);
    }

    #[test]
    fn nothing_is_deleted_while_a_pod_is_missing() {
        let pods = [pod(0, "old"), pod(1, "old")];
        assert_eq!(next_to_replace(&observed(&pods)), None);
    }

    #[test]
    fn nothing_is_deleted_when_every_pod_is_updated() {
        let pods = [pod(0, "new"), pod(1, "new"), pod(2, "new")];
        assert_eq!(next_to_replace(&observed(&pods)), None);
    }

    #[test]
    fn nothing_is_deleted_while_shards_move_or_a_drain_runs() {
        let pods = [pod(0, "old"), pod(1, "old"), pod(2, "old")];
        let busy = Observed {
            quiet: false,
            ..observed(&pods)
        };
        assert_eq!(next_to_replace(&busy), None);
    }

    #[test]
    fn nothing_is_deleted_while_a_pod_above_the_range_still_exists() {
        let pods = [pod(0, "old"), pod(1, "old"), pod(2, "old"), pod(3, "old")];
        assert_eq!(next_to_replace(&observed(&pods)), None);
    }

    #[test]
    fn nothing_is_deleted_before_the_update_revision_is_known() {
        let pods = [pod(0, "old"), pod(1, "old"), pod(2, "old")];
        let unknown = Observed {
            update_revision: None,
            ..observed(&pods)
        };
        assert_eq!(next_to_replace(&unknown), None);
    }

    #[test]
    fn a_pod_without_a_revision_label_is_left_alone() {
        let mut pods = [pod(0, "new"), pod(1, "new"), pod(2, "new")];
        pods[2].revision = None;
        assert_eq!(next_to_replace(&observed(&pods)), None);
    }

    #[test]
    fn the_update_revision_is_trusted_only_once_the_controller_saw_the_spec() {
        let sts = |generation: i64, observed: i64| -> StatefulSet {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "chat", "generation": generation},
                "status": {"replicas": 3, "observedGeneration": observed,
                           "currentRevision": "chat-a", "updateRevision": "chat-b"},
            }))
            .expect("statefulset")
        };
        assert_eq!(update_revision(&sts(2, 2)), Some("chat-b"));
        assert_eq!(update_revision(&sts(3, 2)), None);
        assert_eq!(update_revision(&StatefulSet::default()), None);
    }
}
