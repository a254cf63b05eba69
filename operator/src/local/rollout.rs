//! A rolling restart of the local cluster (`roomshard-operator restart`): every node gets a new
//! process, one at a time, the way a StatefulSet rolls its pods on an update.
//!
//! [`Rollout::step`] is a pure function of what the driver observes; the reconcile loop calls
//! it on every pass and acts on the [`Step`]. For each pod, highest ordinal first (as a
//! StatefulSet does):
//!
//! 1. **Stop** its process. The driver sends SIGTERM, and the pod counts as leaving (its
//!    `deletionTimestamp`): [`crate::decide()`] plans its shards off it and the node hands them
//!    off before it exits.
//! 2. **Wait** until a new process (a later generation) runs, is ready, owns its share again by
//!    hand-off, no move is left in the table, and no ready pod reports followed shards still
//!    catching up (replication 2). Waiting for the moves, not only for readiness, keeps the
//!    next pod's drain from overlapping this one's rebalance, so no room is handed off twice
//!    at once; waiting for the followers keeps the next pod from going while shards have only
//!    one copy. The driver bounds the follower wait (it reports pods it stopped waiting for as
//!    caught up, see `local::reconcile`).
//! 3. Next pod; when none is left, [`Step::Done`].
//!
//! A pod that no longer exists (the cluster was scaled down meanwhile) is skipped. The rollout
//! is idempotent: stepping again on the same observations gives the same step and never stops
//! a pod twice.

use shard::AssignmentTable;

/// What the rollout sees of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RolloutPod {
    /// The pod's ordinal.
    pub ordinal: u32,
    /// Its incarnation: grows with each new process.
    pub generation: u64,
    /// A process runs for it.
    pub running: bool,
    /// That process is ready.
    pub ready: bool,
    /// The pod's name in the table.
    pub name: shard::NodeName,
    /// Followed shards its process reports still receiving their copy (0 with no report).
    pub catching_up: u32,
}

/// What the driver should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// Stop the process of this ordinal (SIGTERM: a planned exit, drained first).
    Stop(u32),
    /// Nothing to do yet.
    Wait,
    /// Every pod has a new process.
    Done,
}

/// The pod being rolled, and the incarnation it had when its turn came.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Current {
    ordinal: u32,
    old_generation: u64,
}

/// A rolling restart in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rollout {
    /// Ordinals still to roll, in order.
    pending: Vec<u32>,
    current: Option<Current>,
    /// Pods rolled so far.
    pub updated: u32,
    /// Pods to roll in all.
    pub total: u32,
}

impl Rollout {
    /// A rollout of pods `0..replicas`, highest ordinal first.
    pub(super) fn new(replicas: u32) -> Rollout {
        Rollout {
            pending: (0..replicas).rev().collect(),
            current: None,
            updated: 0,
            total: replicas,
        }
    }

    /// The ordinal being rolled now, if any.
    pub(super) fn current(&self) -> Option<u32> {
        self.current.as_ref().map(|c| c.ordinal)
    }

    /// The next step, given the pods and the published table.
    pub(super) fn step(&mut self, pods: &[RolloutPod], table: &AssignmentTable) -> Step {
        loop {
            let Some(current) = &self.current else {
                let Some(ordinal) = self.pending.first().copied() else {
                    return Step::Done;
                };
                self.pending.remove(0);
                let Some(pod) = pods.iter().find(|p| p.ordinal == ordinal) else {
                    continue; // scaled away meanwhile
                };
                self.current = Some(Current {
                    ordinal,
                    old_generation: pod.generation,
                });
                return Step::Stop(ordinal);
            };
            let Some(pod) = pods.iter().find(|p| p.ordinal == current.ordinal) else {
                self.current = None;
                continue;
            };
            let replaced = pod.generation > current.old_generation && pod.running && pod.ready;
            let settled = table.nodes.contains_key(&pod.name)
                && !table.shards_of(&pod.name).is_empty()
                && table.moves.is_empty()
                && pods.iter().all(|p| !p.ready || p.catching_up == 0);
            if !(replaced && settled) {
                return Step::Wait;
            }
            self.current = None;
            self.updated += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shard::{Membership, NodeInfo, NodeName, PlanOptions};

    fn name(i: u32) -> NodeName {
        NodeName::new(format!("node-{i}")).expect("valid name")
    }

    fn pod(i: u32, generation: u64, ready: bool) -> RolloutPod {
        RolloutPod {
            ordinal: i,
            generation,
            running: true,
            ready,
            name: name(i),
            catching_up: 0,
        }
    }

    fn table(members: &[u32]) -> AssignmentTable {
        let membership = Membership {
            ready: members
                .iter()
                .map(|&i| {
                    let info = NodeInfo {
                        peer_addr: format!("127.0.0.1:{}", 7000 + i),
                        client_addr: None,
                        zone: None,
                        member_since: 0,
                    };
                    (name(i), info)
                })
                .collect(),
            draining: Default::default(),
        };
        shard::plan(
            &AssignmentTable::empty(12),
            &membership,
            &PlanOptions::default(),
        )
    }

    #[test]
    fn pods_are_rolled_highest_ordinal_first_one_at_a_time() {
        let all = table(&[0, 1, 2]);
        let mut rollout = Rollout::new(3);
        let mut pods = vec![pod(0, 1, true), pod(1, 1, true), pod(2, 1, true)];
        assert_eq!(rollout.step(&pods, &all), Step::Stop(2));
        // Stepping again while the old process drains stops nothing more.
        assert_eq!(rollout.step(&pods, &all), Step::Wait);

        // The old process is gone and a new one started, not ready yet.
        pods[2] = pod(2, 2, false);
        let without = table(&[0, 1]);
        assert_eq!(rollout.step(&pods, &without), Step::Wait);

        // Ready, but it has no shards yet: wait for the rebalance by hand-off.
        pods[2] = pod(2, 2, true);
        assert_eq!(rollout.step(&pods, &without), Step::Wait);

        // Owning its share again with no move left: the next pod.
        assert_eq!(rollout.step(&pods, &all), Step::Stop(1));
        assert_eq!(rollout.updated, 1);
        assert_eq!(rollout.current(), Some(1));
    }

    #[test]
    fn a_rollout_waits_while_moves_are_in_flight() {
        let mut with_moves = table(&[0, 1, 2]);
        with_moves.moves.push(shard::Move {
            shard: shard::ShardId(0),
            from: name(0),
            to: with_moves
                .owner(shard::ShardId(0))
                .cloned()
                .expect("an owner"),
        });
        let mut rollout = Rollout::new(1);
        assert_eq!(rollout.step(&[pod(0, 1, true)], &with_moves), Step::Stop(0));
        assert_eq!(rollout.step(&[pod(0, 2, true)], &with_moves), Step::Wait);
    }

    #[test]
    fn the_rollout_is_done_once_every_pod_has_a_new_ready_process() {
        let all = table(&[0, 1]);
        let mut rollout = Rollout::new(2);
        assert_eq!(
            rollout.step(&[pod(0, 1, true), pod(1, 1, true)], &all),
            Step::Stop(1)
        );
        assert_eq!(
            rollout.step(&[pod(0, 1, true), pod(1, 2, true)], &all),
            Step::Stop(0)
        );
        assert_eq!(
            rollout.step(&[pod(0, 2, true), pod(1, 2, true)], &all),
            Step::Done
        );
        assert_eq!(rollout.updated, 2);
        assert_eq!(rollout.total, 2);
    }

    #[test]
    fn a_rollout_waits_while_a_ready_pod_still_catches_up_followed_shards() {
        let all = table(&[0, 1]);
        let mut rollout = Rollout::new(2);
        let mut pods = vec![pod(0, 1, true), pod(1, 1, true)];
        assert_eq!(rollout.step(&pods, &all), Step::Stop(1));
        pods[1] = pod(1, 2, true);
        pods[0].catching_up = 2;
        assert_eq!(rollout.step(&pods, &all), Step::Wait);
        pods[0].catching_up = 0;
        assert_eq!(rollout.step(&pods, &all), Step::Stop(0));
    }

    #[test]
    fn a_pod_scaled_away_during_the_rollout_is_skipped() {
        let one = table(&[0]);
        let mut rollout = Rollout::new(3);
        // Only node-0 is left.
        assert_eq!(rollout.step(&[pod(0, 1, true)], &one), Step::Stop(0));
        assert_eq!(rollout.step(&[pod(0, 2, true)], &one), Step::Done);
    }
}
