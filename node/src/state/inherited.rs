//! Shards a restarted process must not own.
//!
//! When a node's process dies, the kubelet starts a new one in the same pod at once, often
//! before the operator has seen the pod go unready and moved its shards to their followers. The
//! new process then reads a table that still names it the owner of its predecessor's shards.
//! Their rooms died with the old process; the followers hold the only copies. Serving them would
//! start every room from nothing (members told an empty history, new messages numbered from 1)
//! and send that empty room whole to the follower, replacing its copy: every acknowledged
//! message of those rooms lost.
//!
//! So a process that finds it follows another in the same pod ([`crate::restart_marker`]) notes
//! which shards the table held by its source *when it started* gives it, as owner or as the
//! source of a hand-off ([`NodeState::inherit`]: the old process's frozen rooms died with it
//! too, and sending nothing in their place would make the target install empty rooms);
//! no node is ready before it has looked. Every table it applies is read with those shards
//! unowned ([`AssignmentTable::disowned`]): their rooms are answered `room_unavailable`, nothing
//! is sent to their followers, and `/readyz` fails. The unready pod leaves membership; the
//! operator's next table makes each follower the owner, serving from its copy; once no table
//! gives this node an inherited shard any more, it is ready, and gets shards again by hand-off,
//! like any new member.

use std::collections::BTreeSet;

use shard::{AssignmentTable, ShardId};

use super::{NodeState, lock};

/// What this process knows of the shards its predecessor owned.
#[derive(Debug, Default)]
pub(super) enum Inherited {
    /// It has not looked at its source's table yet (a cluster member, just started).
    #[default]
    Unknown,
    /// The kubelet restarted it in its pod (see [`crate::restart_marker`]); it has not looked
    /// at its source's table yet.
    Restarted,
    /// Shards the starting table gave this node that no table since has given anyone else.
    Known(BTreeSet<ShardId>),
}

impl NodeState {
    /// The table the source held when this process started (`None`: it held none, or could
    /// not be read): the shards it gives this node were its predecessor's. Called once, before
    /// the first table is applied.
    pub fn inherit(&self, starting: Option<&AssignmentTable>) {
        let restarted = matches!(&*lock(&self.inherited), Inherited::Restarted);
        let shards: BTreeSet<ShardId> = starting
            .filter(|table| restarted && table.epoch > 0)
            .map(|table| held_by(table, self.me()).collect())
            .unwrap_or_default();
        if !shards.is_empty() {
            tracing::warn!(
                shards = shards.len(),
                "this process was restarted while the table still names this node an owner: those shards' rooms died with the old process and are left to their followers"
            );
            self.metrics.shards_inherited.set(shards.len() as i64);
        }
        *lock(&self.inherited) = Inherited::Known(shards);
    }

    /// The kubelet restarted this process in its pod: another process of this node ran before
    /// it (see [`crate::restart_marker`]). Called before [`Self::inherit`].
    pub fn restarted_in_place(&self) {
        *lock(&self.inherited) = Inherited::Restarted;
    }

    /// Whether `/readyz` may say ready: the starting table was read and no shard of the
    /// predecessor is still given to this node.
    pub fn inheritance_settled(&self) -> bool {
        matches!(&*lock(&self.inherited), Inherited::Known(shards) if shards.is_empty())
    }

    /// `new` as this node applies it: the inherited shards it still gives this node unowned.
    /// A shard it gives to another node, or to nobody, is inherited no longer.
    pub(super) fn without_inherited(&self, new: AssignmentTable) -> AssignmentTable {
        let mut inherited = lock(&self.inherited);
        let Inherited::Known(shards) = &mut *inherited else {
            return new;
        };
        if shards.is_empty() {
            return new;
        }
        let me = self.me();
        let still: BTreeSet<ShardId> = held_by(&new, me).collect();
        shards.retain(|shard| still.contains(shard));
        self.metrics.shards_inherited.set(shards.len() as i64);
        if shards.is_empty() {
            tracing::info!(
                epoch = new.epoch,
                "no shard of the old process is given to this node any more: ready"
            );
            return new;
        }
        tracing::warn!(
            epoch = new.epoch,
            shards = shards.len(),
            "the table still gives this node shards of the old process: they stay unowned here"
        );
        new.disowned(me, shards)
    }
}

/// The shards `table` has `me` hold: those it owns, and those it is handing off.
fn held_by<'a>(
    table: &'a AssignmentTable,
    me: &'a shard::NodeName,
) -> impl Iterator<Item = ShardId> + 'a {
    (0..table.shards).map(ShardId).filter(move |&shard| {
        table.owner(shard) == Some(me) || table.move_of(shard).is_some_and(|m| m.from == *me)
    })
}
