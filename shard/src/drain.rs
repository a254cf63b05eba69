//! Scale-down decisions: which pods to drain, and whether it is safe yet to stop them.
//!
//! Used by both the Kubernetes controller and the local cluster driver. [`drain_step`] looks only
//! at its arguments (desired replicas, current pods, the published table, the nodes' reports), so
//! it is idempotent and may run at any time, for any reason: the caller acts on the step it
//! returns and asks again later.
//!
//! The flow for N -> M pods: mark the M..N highest ordinals draining and publish a table without
//! them as owners ([`DrainStep::MarkDraining`]); wait until every live node has applied that table
//! ([`DrainStep::WaitForEpoch`]) and every hand-off off the draining pods is done
//! ([`DrainStep::WaitForMoves`]); only then stop them ([`DrainStep::Remove`]).
//!
//! Guarantee: `Remove` is returned only when the nodes to remove own no shard, no move in the
//! table involves them, every live node reports the table's epoch, and no live node reports a
//! hand-off in progress. Caveat: this trusts the reports; a node that lies about its epoch can
//! make a removal early.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{NodeName, ShardId, ordinal_of};
use crate::table::{AssignmentTable, Move};

/// What a node's `/status` says about its progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    /// The reporting node.
    pub name: NodeName,
    /// The epoch of the last table the node applied.
    pub epoch_applied: u64,
    /// Hand-offs the node still has in progress, as source or target.
    pub moves_pending: u32,
}

/// The next step of a scale-down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainStep {
    /// Nothing to drain: there are no more pods than desired.
    Steady,
    /// Mark these nodes (the highest ordinals) draining and publish a planned table without them
    /// as owners. Also returned when a draining node still owns shards and no move off it is in
    /// flight, so the table must be planned again (e.g. after a capped plan).
    MarkDraining(BTreeSet<NodeName>),
    /// Some live node has not applied the table's `epoch` yet (or has not reported).
    WaitForEpoch {
        /// The table epoch every live node must reach.
        epoch: u64,
        /// The nodes that have not reached it, by name.
        lagging: Vec<NodeName>,
    },
    /// Hand-offs are still in flight. `pending` lists the table's moves that involve a draining
    /// node; it may be empty when only the nodes' reports show hand-offs in progress.
    WaitForMoves {
        /// The table's moves from or to the nodes being drained, by shard.
        pending: Vec<Move>,
    },
    /// Safe: lower the replicas, stopping these nodes.
    Remove(BTreeSet<NodeName>),
}

/// The nodes to remove to get from `members` down to `desired_replicas`: highest ordinals first
/// (that is what a StatefulSet removes), names without an ordinal after all others, by name.
pub fn nodes_to_drain(desired_replicas: u32, members: &[NodeName]) -> BTreeSet<NodeName> {
    let members: BTreeSet<&NodeName> = members.iter().collect();
    let excess = members.len().saturating_sub(desired_replicas as usize);
    let mut order: Vec<&NodeName> = members.into_iter().collect();
    // Ordinals descending, then no ordinal; ties by name. `Reverse(Option)` would put `None`
    // first, so key on "has no ordinal" before the ordinal itself.
    order.sort_by_key(|n| {
        let ordinal = ordinal_of(n);
        (ordinal.is_none(), std::cmp::Reverse(ordinal), (*n).clone())
    });
    order.into_iter().take(excess).cloned().collect()
}

/// The next step to scale `members` down to `desired_replicas`, given the published `table` and
/// the nodes' `reports` (see the module doc for the flow and its guarantee).
///
/// Live nodes are the members listed in the table (ready when it was planned). A member that is
/// not in the table is not waited for: it owns nothing and can be removed.
pub fn drain_step(
    desired_replicas: u32,
    members: &[NodeName],
    table: &AssignmentTable,
    reports: &[NodeReport],
) -> DrainStep {
    let to_drain = nodes_to_drain(desired_replicas, members);
    if to_drain.is_empty() {
        return DrainStep::Steady;
    }
    let involved = |m: &Move| to_drain.contains(&m.from) || to_drain.contains(&m.to);
    let pending: Vec<Move> = table
        .moves
        .iter()
        .filter(|m| involved(m))
        .cloned()
        .collect();
    let unmarked = to_drain
        .iter()
        .any(|n| table.nodes.contains_key(n) && !table.draining.contains(n));
    let still_owning = table
        .owners()
        .iter()
        .flatten()
        .any(|owner| to_drain.contains(owner));
    if unmarked || (still_owning && pending.is_empty()) {
        return DrainStep::MarkDraining(to_drain);
    }

    // Merge reports conservatively: if a node reported twice, believe the less advanced report.
    let mut by_node: BTreeMap<&NodeName, (u64, u32)> = BTreeMap::new();
    for r in reports {
        by_node
            .entry(&r.name)
            .and_modify(|(epoch, moves)| {
                *epoch = (*epoch).min(r.epoch_applied);
                *moves = (*moves).max(r.moves_pending);
            })
            .or_insert((r.epoch_applied, r.moves_pending));
    }
    let live: BTreeSet<&NodeName> = members
        .iter()
        .filter(|n| table.nodes.contains_key(*n))
        .collect();
    let lagging: Vec<NodeName> = live
        .iter()
        .filter(|n| {
            by_node
                .get(*n)
                .is_none_or(|(epoch, _)| *epoch < table.epoch)
        })
        .map(|n| (*n).clone())
        .collect();
    if !lagging.is_empty() {
        return DrainStep::WaitForEpoch {
            epoch: table.epoch,
            lagging,
        };
    }
    let reported_moves = live
        .iter()
        .any(|n| by_node.get(*n).is_some_and(|(_, moves)| *moves > 0));
    if !pending.is_empty() || reported_moves || still_owning {
        return DrainStep::WaitForMoves { pending };
    }
    DrainStep::Remove(to_drain)
}

/// Whether a node that was asked to stop (SIGTERM: a rolling update, an eviction, a deleted pod)
/// has nothing left to hand off under `table`, the table it applied, and may tell its clients
/// to `reconnect` and exit.
///
/// True when `table` gives `me` no shard and names no move from or to it, and the node itself
/// has no hand-off in progress (`handoffs_in_progress`: snapshots not yet confirmed, shards it
/// still waits for). A node the table does not know owns nothing and may go at once. Until this
/// holds, the operator has not yet planned its shards away or a snapshot is still on its way:
/// exiting then would lose those rooms' history.
pub fn handed_off(table: &AssignmentTable, me: &NodeName, handoffs_in_progress: usize) -> bool {
    handoffs_in_progress == 0
        && table.owners().iter().flatten().all(|owner| owner != me)
        && !table.moves.iter().any(|m| &m.from == me || &m.to == me)
}

/// What a follower's `/status` says of its copies: the epoch of the table it applied and how
/// many of the shards it follows there are still receiving their snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyReport {
    /// The epoch of the last table the follower applied.
    pub epoch_applied: u64,
    /// Shards it follows that are not live yet.
    pub catching_up: u32,
}

/// Whether a node that is leaving may stop holding the copies it kept of `followed` (the shards
/// it followed while it was asked to stop): `table`, the table it applied, names it follower of
/// nothing, and every shard of `followed` that has an owner and a follower in `table` is
/// followed by a node that applied `table` (or a newer one) and reports nothing catching up.
///
/// Until then the shards it followed have one live copy, their owner's: exiting then would make
/// the owner's crash before its new follower catches up lose acknowledged messages. A shard
/// `table` gives no follower (replication 1, a single eligible node) has nothing to wait for.
/// `reports` holds what could be read; a follower missing from it counts as not caught up.
pub fn copies_moved_on(
    table: &AssignmentTable,
    me: &NodeName,
    followed: &BTreeSet<ShardId>,
    reports: &BTreeMap<NodeName, CopyReport>,
) -> bool {
    if table.followers().iter().flatten().any(|f| f == me) {
        return false;
    }
    new_followers(table, me, followed).iter().all(|follower| {
        reports
            .get(follower)
            .is_some_and(|r| r.epoch_applied >= table.epoch && r.catching_up == 0)
    })
}

/// The nodes whose reports [`copies_moved_on`] needs: the followers `table` names for
/// `followed`, other than `me`.
pub fn new_followers(
    table: &AssignmentTable,
    me: &NodeName,
    followed: &BTreeSet<ShardId>,
) -> BTreeSet<NodeName> {
    followed
        .iter()
        .filter(|&&shard| table.owner(shard).is_some())
        .filter_map(|&shard| table.follower(shard))
        .filter(|f| *f != me)
        .cloned()
        .collect()
}
