//! The local driver's shard map: [`crate::map::build`] on the driver's state, built when
//! `GET /map.json` asks (the state is in memory, so the map is as fresh as the last probe).

use std::collections::BTreeMap;
use std::time::Instant;

use shard::{AssignmentTable, NodeName, ordinal_of};

use super::pods::State;
use crate::decide::PodView;
use crate::map::{ClusterMap, MapInputs, RolloutProgress, build};

/// The name the local cluster has on the map.
pub(super) const CLUSTER_NAME: &str = "local";

/// The map of the driver's state `st` with the published `table`.
pub(super) fn build_map(st: &State, table: &AssignmentTable) -> ClusterMap {
    // Pods `0..replicas`, and those above that a scale-down removed but whose process still
    // runs (the table may still list them).
    let ordinals: std::collections::BTreeSet<u32> =
        (0..st.replicas).chain(st.pods.keys().copied()).collect();
    let pods: Vec<PodView> = ordinals
        .into_iter()
        .filter_map(|o| st.pod_view(o))
        .collect();
    let current = st.rollout.as_ref().and_then(|r| r.current());
    let rollout = RolloutProgress {
        in_progress: st.rollout.is_some(),
        updated: st.rollout.as_ref().map_or(0, |r| r.updated),
        total: st.rollout.as_ref().map_or(0, |r| r.total),
        current: current
            .and_then(|o| st.pods.get(&o))
            .map(|p| p.name.to_string()),
    };
    // A rolling restart goes from the highest ordinal down: pods above the current one have
    // their new process, those below do not yet.
    let updated: BTreeMap<NodeName, bool> = match current {
        Some(current) if st.rollout.is_some() => pods
            .iter()
            .filter_map(|p| Some((p.name.clone(), ordinal_of(&p.name)? > current)))
            .collect(),
        _ => BTreeMap::new(),
    };
    build(&MapInputs {
        namespace: "",
        name: CLUSTER_NAME,
        desired_replicas: st.desired,
        pods: &pods,
        table,
        step: &st.step,
        drain_elapsed: st
            .drain_since
            .map_or(std::time::Duration::ZERO, |t| Instant::now() - t),
        stuck: st.stuck.as_ref(),
        rollout: &rollout,
        updated: &updated,
    })
}
