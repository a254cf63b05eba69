//! What applying a new table means for the copies a node keeps as a follower (replication 2).
//!
//! A follower holds a live copy of each followed shard's rooms, fed by the shard's owner. When a
//! node applies table `new` after `old`, [`follower_transition`] lists, for that node, the copies
//! to start (catch up from the owner), to drop, to serve from (promotion: the owner is gone and
//! this node now owns the shard with no hand-off), and to hand to a new owner (the owner is gone
//! and the planner gave the shard to another node, which receives the copy like a snapshot from
//! a live owner). It is a pure diff like [`transition`](crate::transition), which covers the
//! rooms the node owns and leaves these cases to this one.

use crate::handoff::hands_off_copy;
use crate::ids::{NodeName, ShardId};
use crate::table::AssignmentTable;

/// What a node must do with its follower copies when it applies a new table. Every list is in
/// shard order; a shard is in at most one of `start`, `stop`, `promoted` and `hand_off`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowerTransition {
    /// Shards this node starts following, with their owner: get the owner's snapshot, then its
    /// live stream (the copy is *catching up* until the snapshot is applied).
    pub start: Vec<(ShardId, NodeName)>,
    /// Shards this node followed and no longer follows, owns or hands off: drop the copy.
    pub stop: Vec<ShardId>,
    /// Shards this node followed and now owns with no move: serve their rooms from the copy,
    /// continuing its sequence numbers.
    pub promoted: Vec<ShardId>,
    /// Shards this node followed whose owner is gone and whose new owner receives them from this
    /// node (a [`Move`](crate::Move) from it), with that owner: snapshot the copy and send it,
    /// exactly as an owner hands off. If the node also follows the shard in the new table it
    /// keeps the copy (see `new_owner`); otherwise it drops it once the hand-off is done.
    pub hand_off: Vec<(ShardId, NodeName)>,
    /// Shards this node keeps following whose owner changed, with the new owner: take the
    /// stream from it from now on (and refuse the old owner's, whose epoch is past).
    pub new_owner: Vec<(ShardId, NodeName)>,
}

impl FollowerTransition {
    /// True when applying the new table changes nothing for this node's copies.
    pub fn is_empty(&self) -> bool {
        self.start.is_empty()
            && self.stop.is_empty()
            && self.promoted.is_empty()
            && self.hand_off.is_empty()
            && self.new_owner.is_empty()
    }
}

/// What `me` must do with its follower copies to go from `old` to `new`.
pub fn follower_transition(
    old: &AssignmentTable,
    new: &AssignmentTable,
    me: &NodeName,
) -> FollowerTransition {
    let mut t = FollowerTransition::default();
    for shard in (0..old.shards.max(new.shards)).map(ShardId) {
        let was_following = old.follower(shard) == Some(me);
        let follows = new.follower(shard) == Some(me);
        let new_owner = new.owner(shard);
        let new_move = new.move_of(shard);
        let copy_handed_off = new_move
            .filter(|m| m.from == *me && old.move_of(shard) != Some(*m))
            .filter(|_| hands_off_copy(old, shard, me));
        if let Some(m) = copy_handed_off {
            t.hand_off.push((shard, m.to.clone()));
        } else if was_following && new_owner == Some(me) && new_move.is_none() {
            t.promoted.push(shard);
            continue;
        } else if was_following && !follows {
            t.stop.push(shard);
        }
        match (follows, new_owner) {
            (true, Some(owner)) if !was_following => t.start.push((shard, owner.clone())),
            (true, Some(owner)) if old.owner(shard) != Some(owner) => {
                t.new_owner.push((shard, owner.clone()));
            }
            _ => {}
        }
    }
    t
}
