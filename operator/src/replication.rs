//! Replication as the operator sees it: how many shards have a live follower, what the
//! `Replicated` condition says about it, and which nodes a drain still waits on.
//!
//! With `replication: 2` the planner gives every shard a follower on another node; the node
//! reports in `/status` how many of the shards it follows have a live copy (`following`) and how
//! many are still receiving theirs (`catching_up`). Only the nodes know whether a copy is live,
//! so everything here is a pure function of those reports and the table:
//!
//! - [`summarize`] counts shards with a live follower, for the `ChatCluster` status and the
//!   local driver's `/cluster`.
//! - [`condition`] turns that count into the `Replicated` condition (present with replication 1
//!   too, saying replication is off, so a reader never has to guess why it is missing).
//! - [`catching_up`] names the nodes still copying shards of the published table: a drain does
//!   not remove pods while any does, since a node removed then would leave those shards with a
//!   single copy it cannot recreate (see [`crate::decide()`], step 4).

use serde::{Deserialize, Serialize};
use shard::{AssignmentTable, NodeName};

use crate::decide::PodView;

/// How many shards have a live follower, as the nodes report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FollowerSummary {
    /// Copies of every shard the cluster is configured for (1 or 2).
    pub replication: u8,
    /// Shards that have an owner in the table.
    pub assigned: u32,
    /// Shards whose follower reports a live copy.
    pub with_follower: u32,
    /// Shards whose follower is still receiving its copy.
    pub catching_up: u32,
}

impl FollowerSummary {
    /// Assigned shards without a live follower.
    pub fn without_follower(&self) -> u32 {
        self.assigned.saturating_sub(self.with_follower)
    }
}

/// A pod whose report counts: ready, not on its way out, and a member of `table`.
fn counted<'a>(pod: &'a PodView, table: &AssignmentTable) -> Option<&'a crate::Report> {
    if !pod.ready || pod.leaving() || !table.nodes.contains_key(&pod.name) {
        return None;
    }
    pod.report.as_ref()
}

/// Shards with a live follower: the sum over ready member pods of what they report following.
///
/// A node at the table's epoch is counted for at most the shards the table says it follows (a
/// copy it still keeps of a shard it no longer follows is no follower). A node whose epoch lags
/// counts no live copy: the tables it has not seen may have moved a role away and back, so its
/// copies may be stale until it applies the table (it then asks their owners to send them
/// whole again). Shards the table itself keeps on one node ([`single_copy_shards`]: no
/// follower, or a follower that is also the source of the shard's hand-off) never count. The
/// total never exceeds the assigned shards.
///
/// [`single_copy_shards`]: AssignmentTable::single_copy_shards
pub fn summarize(pods: &[PodView], table: &AssignmentTable, replication: u8) -> FollowerSummary {
    let assigned = count(table.owners().iter().filter(|o| o.is_some()).count());
    let mut with_follower = 0u32;
    let mut copying = 0u32;
    if replication >= 2 {
        let single: std::collections::BTreeSet<shard::ShardId> =
            table.single_copy_shards().into_iter().collect();
        for pod in pods {
            let Some(report) = counted(pod, table) else {
                continue;
            };
            let follows = table.followed_by(&pod.name);
            let countable = count(follows.iter().filter(|s| !single.contains(s)).count());
            let (live, catching) = if report.epoch == table.epoch {
                (
                    report.following.min(countable),
                    report.catching_up.min(count(follows.len())),
                )
            } else {
                (0, report.catching_up.max(report.following))
            };
            with_follower = with_follower.saturating_add(live);
            copying = copying.saturating_add(catching);
        }
    }
    FollowerSummary {
        replication,
        assigned,
        with_follower: with_follower.min(assigned),
        catching_up: copying.min(assigned),
    }
}

/// Nodes of the published table that report followed shards still catching up at its epoch,
/// with how many: what a drain waits for before it removes pods. Draining and leaving pods are
/// left out (they follow nothing once drained).
pub fn catching_up(pods: &[PodView], table: &AssignmentTable) -> Vec<(NodeName, u32)> {
    pods.iter()
        .filter(|p| !table.draining.contains(&p.name))
        .filter_map(|p| Some((p, counted(p, table)?)))
        .filter(|(_, r)| r.epoch == table.epoch && r.catching_up > 0)
        .map(|(p, r)| (p.name.clone(), r.catching_up))
        .collect()
}

/// The `Replicated` condition: `(status, reason, message)`.
pub fn condition(summary: &FollowerSummary) -> (&'static str, &'static str, String) {
    if summary.replication < 2 {
        return (
            "False",
            reasons::REPLICATION_OFF,
            "replication is 1: every shard has its owner's copy only".to_owned(),
        );
    }
    if summary.assigned == 0 {
        return (
            "False",
            reasons::NO_ASSIGNMENT,
            "no shard is assigned yet".to_owned(),
        );
    }
    let missing = summary.without_follower();
    if missing == 0 {
        return (
            "True",
            reasons::ALL_SHARDS_FOLLOWED,
            format!("all {} shards have a live follower", summary.assigned),
        );
    }
    let mut message = format!(
        "{missing} of {} shards have no live follower",
        summary.assigned
    );
    if summary.catching_up > 0 {
        message.push_str(&format!(
            " ({} of them catching up)",
            summary.catching_up.min(missing)
        ));
    }
    (
        "False",
        if summary.catching_up >= missing {
            reasons::CATCHING_UP
        } else {
            reasons::FOLLOWERS_MISSING
        },
        message,
    )
}

/// Reasons of the `Replicated` condition.
pub mod reasons {
    /// True: every assigned shard has a live follower.
    pub const ALL_SHARDS_FOLLOWED: &str = "AllShardsFollowed";
    /// False: the shards without a live follower are all receiving their copy.
    pub const CATCHING_UP: &str = "CatchingUp";
    /// False: some shards have no follower at all (fewer than two ready nodes, or a follower
    /// that does not report).
    pub const FOLLOWERS_MISSING: &str = "FollowersMissing";
    /// False: no table yet.
    pub const NO_ASSIGNMENT: &str = "NoAssignment";
    /// False: `replication: 1`.
    pub const REPLICATION_OFF: &str = "ReplicationOff";
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
