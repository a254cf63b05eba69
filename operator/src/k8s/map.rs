//! The controller's side of the shard map: what a pass knows about the rolling update, in the
//! map's terms. The reconciler builds the cluster's map ([`crate::map::build`]) at the end of
//! each pass and keeps it in the [`crate::map::MapStore`] of its context; the metrics server
//! answers `GET /map` and `GET /map.json` from that store.

use std::collections::BTreeMap;

use shard::NodeName;

use super::rollout::PodState;
use super::status::Rollout;
use crate::map::RolloutProgress;

/// Per pod: does it run the StatefulSet's update revision. Empty while that revision is not
/// known (the StatefulSet controller has not caught up); a pod without a revision label is left
/// out (unknown).
pub fn updated(pods: &[PodState], update_revision: Option<&str>) -> BTreeMap<NodeName, bool> {
    let Some(revision) = update_revision else {
        return BTreeMap::new();
    };
    pods.iter()
        .filter_map(|p| {
            let name = NodeName::new(p.name.clone()).ok()?;
            Some((name, p.revision.as_deref()? == revision))
        })
        .collect()
}

/// The rolling update's progress: the StatefulSet's counts, and the pod being replaced (the one
/// terminating, or else the one not ready, while a rollout runs).
pub fn rollout_progress(rollout: Rollout, pods: &[PodState]) -> RolloutProgress {
    let current = rollout
        .in_progress
        .then(|| {
            pods.iter()
                .find(|p| p.terminating)
                .or_else(|| pods.iter().find(|p| !p.ready))
        })
        .flatten()
        .map(|p| p.name.clone());
    RolloutProgress {
        in_progress: rollout.in_progress,
        updated: rollout.updated.unwrap_or(0),
        total: rollout.replicas,
        current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, revision: Option<&str>, ready: bool, terminating: bool) -> PodState {
        PodState {
            name: name.into(),
            revision: revision.map(Into::into),
            ready,
            terminating,
        }
    }

    #[test]
    fn a_pod_is_updated_when_its_revision_is_the_update_revision_and_unknown_without_one() {
        let pods = [
            pod("chat-0", Some("r1"), true, false),
            pod("chat-1", Some("r2"), true, false),
            pod("chat-2", None, true, false),
        ];
        let updated = updated(&pods, Some("r2"));
        let named = |n: &str| updated.get(&NodeName::new(n).expect("name")).copied();
        assert_eq!(named("chat-0"), Some(false));
        assert_eq!(named("chat-1"), Some(true));
        assert_eq!(named("chat-2"), None);
        assert!(super::updated(&pods, None).is_empty());
    }

    #[test]
    fn a_rolling_update_names_the_pod_being_replaced() {
        let pods = [
            pod("chat-0", Some("r1"), true, false),
            pod("chat-1", Some("r1"), false, true),
        ];
        let rolling = Rollout {
            updated: Some(1),
            replicas: 3,
            in_progress: true,
        };
        let progress = rollout_progress(rolling, &pods);
        assert_eq!(
            progress,
            RolloutProgress {
                in_progress: true,
                updated: 1,
                total: 3,
                current: Some("chat-1".into()),
            }
        );
        let settled = Rollout {
            updated: Some(3),
            replicas: 3,
            in_progress: false,
        };
        assert_eq!(rollout_progress(settled, &pods).current, None);
    }
}
