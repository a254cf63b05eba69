//! Hand-off bookkeeping: what applying a new table means for one node.
//!
//! A node holds the rooms of the shards it owns. When it applies table `new` after `old`, it
//! compares the two from its own point of view: shards to start (fresh, or by waiting for a
//! snapshot from the previous owner), shards to snapshot and send away, shards to drop. The
//! tables say everything needed, so this is a pure diff; the node does the I/O.
//!
//! [`transition`] is about the rooms a node owns. What happens to the copies it keeps as a
//! follower (replication 2), including a copy that becomes the owned rooms (promotion) or is
//! handed to a new owner, is [`follower_transition`](crate::follower_transition)'s.

use crate::ids::{NodeName, ShardId};
use crate::table::{AssignmentTable, Move};

/// What a node must do when it applies a new table. Every list is in shard order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transition {
    /// Shards this node now owns with nobody to hand them over (the previous owner is gone or
    /// there was none) and no copy of its own: start their rooms empty. A shard this node
    /// followed and now owns without a move is not here: it is promoted (see
    /// [`FollowerTransition::promoted`](crate::FollowerTransition::promoted)).
    pub gained_fresh: Vec<ShardId>,
    /// Shards being handed to this node, with the node sending them: buffer their messages until
    /// that node's snapshot arrives.
    pub gained_by_handoff: Vec<(ShardId, NodeName)>,
    /// Shards this node must hand off, with the new owner: stop applying their messages, snapshot
    /// the rooms, send the snapshot, and forward whatever still arrives. A hand-off of a
    /// follower's copy is not here but in
    /// [`FollowerTransition::hand_off`](crate::FollowerTransition::hand_off).
    pub lost: Vec<(ShardId, NodeName)>,
    /// Shards this node owned that now have no owner (no eligible node is left): stop their rooms.
    pub lost_unassigned: Vec<ShardId>,
}

impl Transition {
    /// True when applying the new table changes nothing on this node.
    pub fn is_empty(&self) -> bool {
        self.gained_fresh.is_empty()
            && self.gained_by_handoff.is_empty()
            && self.lost.is_empty()
            && self.lost_unassigned.is_empty()
    }
}

/// What `me` must do to go from `old` to `new`.
///
/// A hand-off already in flight in `old` is not repeated. A shard `me` was still *receiving*
/// when the new table gave it to someone else is not in `lost` (there is nothing to snapshot;
/// the source hands it to the new owner): see [`abandoned_handoffs`].
pub fn transition(old: &AssignmentTable, new: &AssignmentTable, me: &NodeName) -> Transition {
    let mut t = Transition::default();
    for shard in (0..old.shards.max(new.shards)).map(ShardId) {
        let old_owner = old.owner(shard);
        let new_owner = new.owner(shard);
        let old_move = old.move_of(shard);
        let new_move = new.move_of(shard);
        let new_handoff = new_move.filter(|m| old_move != Some(*m));
        if new_owner == Some(me) {
            if let Some(m) = new_handoff.filter(|m| m.to == *me) {
                t.gained_by_handoff.push((shard, m.from.clone()));
            } else if old_owner != Some(me) && new_move.is_none() && old.follower(shard) != Some(me)
            {
                t.gained_fresh.push(shard);
            }
            // Otherwise it was already mine, possibly with its hand-off still in flight.
            continue;
        }
        if let Some(m) = new_handoff.filter(|m| m.from == *me) {
            if !hands_off_copy(old, shard, me) {
                t.lost.push((shard, m.to.clone()));
            }
            continue;
        }
        let was_receiving = old_move.is_some_and(|m| m.to == *me);
        if old_owner == Some(me) && !was_receiving {
            match new_owner {
                Some(owner) => t.lost.push((shard, owner.clone())),
                None => t.lost_unassigned.push(shard),
            }
        }
    }
    t
}

/// Whether a move from `me` of `shard` planned after `old` sends `me`'s follower copy (rule F5):
/// `me` followed the shard and neither owned it nor was already sending its rooms.
pub(crate) fn hands_off_copy(old: &AssignmentTable, shard: ShardId, me: &NodeName) -> bool {
    old.follower(shard) == Some(me)
        && old.owner(shard) != Some(me)
        && old.move_of(shard).is_none_or(|m| m.from != *me)
}

/// Hand-offs to `me` that `new` cancels before they completed, with the node that was sending:
/// the source left the cluster (the move is gone while `me` still owns the shard: stop waiting
/// for the snapshot and start the rooms fresh), or the shard was planned elsewhere because `me`
/// is draining (drop what was buffered; the new table routes its messages to the new owner).
///
/// A move that disappears while its source is still in `nodes` completed normally and is not
/// listed.
pub fn abandoned_handoffs(
    old: &AssignmentTable,
    new: &AssignmentTable,
    me: &NodeName,
) -> Vec<(ShardId, NodeName)> {
    old.moves
        .iter()
        .filter(|m| m.to == *me && new.move_of(m.shard) != Some(*m))
        .filter(|m| {
            let still_mine = new.owner(m.shard) == Some(me);
            !still_mine || !new.nodes.contains_key(&m.from)
        })
        .map(|Move { shard, from, .. }| (*shard, from.clone()))
        .collect()
}
