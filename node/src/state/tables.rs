//! Applying a new assignment table: start, receive, hand off and drop shards as it says, then
//! re-join members of rooms whose owner vanished.

use std::sync::Arc;
use tracing::Instrument;

use shard::AssignmentTable;

use super::handoffs::take_where;
use super::{NodeState, lock};
use crate::room::{MemberKey, RoomCommand};

impl NodeState {
    /// Apply a new assignment table: start, receive, hand off and drop shards as it says.
    /// Returns false when the table is not newer than the one in force (it is ignored).
    pub async fn apply_table(self: &Arc<Self>, new: AssignmentTable) -> bool {
        let _one_at_a_time = self.applying.lock().await;
        let old = self.table();
        if new.epoch <= old.epoch && !(old.epoch == 0 && old.nodes.is_empty()) {
            return false;
        }
        if new.shards != self.settings.shards {
            tracing::error!(
                table = new.shards,
                node = self.settings.shards,
                "table has a different shard count; ignored"
            );
            return false;
        }
        // Shards the previous process owned stay unowned here (see `inherited`).
        let new = self.without_inherited(new);
        let skipped = old.epoch > 0 && new.epoch > old.epoch + 1;
        // A node that was out of the cluster in between (paused, cut off from the operator)
        // lost every role it had, whatever the tables it saw say.
        let member_since = new.nodes.get(self.me()).map(|info| info.member_since);
        let was_out = {
            let mut seen = lock(&self.member_since);
            let out = matches!((*seen, member_since), (Some(before), Some(now)) if before != now);
            if member_since.is_some() {
                *seen = member_since;
            }
            out
        };
        // What the table asks of every shard this node touches (custody); hand-offs to this
        // node buffer from here on.
        let duties = self.duties(&new, was_out);
        {
            let mut handoffs = lock(&self.handoffs);
            // From here until `release_early` is through, peers' commands queue behind the
            // early ones.
            handoffs.releasing = true;
            handoffs.done.retain(|m| new.moves.contains(m));
        }
        let new = Arc::new(new);
        // Links to the nodes the table adds exist before anyone can route by it; links to the
        // nodes it drops go after, so nothing routed by the old table meanwhile is refused.
        if let Some(peers) = &self.peers {
            peers.admit(&new);
        }
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        self.depose_stale_rooms(was_out);
        if let Some(peers) = &self.peers {
            peers.retire(&new);
        }
        if skipped {
            // Tables in between may have taken a followed shard away and given it back: each
            // copy is live again only once its owner sends it whole, and is asked for at once.
            let now = tokio::time::Instant::now();
            let since = now
                .checked_sub(super::replicas::COPY_PATIENCE)
                .unwrap_or(now);
            lock(&self.copies).unsettle(since);
        }
        self.carry_out(duties, new.epoch);
        let snapshots = take_where(&mut lock(&self.handoffs).early_snapshots, |e| {
            e.epoch <= new.epoch
        });
        for early in snapshots {
            self.on_snapshot(
                &early.from,
                early.shard,
                early.epoch,
                early.floor,
                early.rooms,
            );
        }
        self.release_early(new.epoch);
        for node in old.nodes.keys().filter(|n| !new.nodes.contains_key(*n)) {
            self.rooms
                .tell_all(&RoomCommand::DropNode { node: node.clone() });
            self.release_requests_to(node);
        }
        // A node that was out of the cluster in between was dropped from every room elsewhere:
        // its members join again everywhere.
        if was_out {
            tracing::warn!(node = %self.me(), epoch = new.epoch, "this node was out of the cluster in between: its members join their rooms again");
        }
        self.rejoin_orphaned_members(&old, &new, was_out).await;
        // Followers new to a shard owned here get its rooms; a shard still waiting for its
        // snapshot is synced once installed (`on_snapshot`).
        let waiting: Vec<_> = lock(&self.handoffs).incoming.keys().copied().collect();
        for shard in self.shards_to_sync(&old, &new) {
            if !waiting.contains(&shard) {
                tokio::spawn(self.clone().sync_follower(shard).in_current_span());
            }
        }
        tracing::info!(
            node = %self.me(),
            epoch = new.epoch,
            owned = new.shards_of(self.me()).len(),
            "assignment table applied"
        );
        self.progress.notify_waiters();
        true
    }

    /// Rooms running here that will never give out a seq again are marked so at once, for
    /// good (see `Rooms::mark_deposed`): those of a shard the table in force took from this
    /// node without a hand-off, and, when the node was out of the cluster in between, those of
    /// every shard it does not serve (rooms still freezing for a hand-off the follower took
    /// over meanwhile). A later table that gives the shard back must not revive them: the
    /// actor only checks the table when it wakes, and by then the table may name it owner
    /// again (seed 593 of the simulation), and a follower's `Held` for what they had in flight
    /// would release seqs the shard's owner meanwhile gave to others.
    fn depose_stale_rooms(&self, was_out: bool) {
        let serving = lock(&self.handoffs).serving.clone();
        for shard in self.rooms.running_shards() {
            if self.deposed_from(shard) || (was_out && !serving.contains(&shard)) {
                self.depose_rooms(shard);
            }
        }
    }

    /// Mark `shard`'s running rooms deposed (see `Rooms::mark_deposed`), and withdraw their
    /// changes still queued for followers: the rooms refuse what they had in flight, and a
    /// change delivered late could reach a copy under a table that names this node the
    /// shard's owner again, as a new tenure (seed 2412 of the simulation: a paused owner's
    /// queued changes reached its old follower after such a table, and that copy, holding
    /// messages their senders had been refused, won a merge with the shard's rooms).
    pub(super) fn depose_rooms(&self, shard: shard::ShardId) {
        self.rooms.mark_deposed(shard);
        if let Some(peers) = &self.peers {
            let withdrawn = peers.withdraw(&|msg| {
                matches!(msg, crate::peer::wire::PeerMsg::Replicate { shard: s, .. } if *s == shard)
            });
            if withdrawn > 0 {
                tracing::info!(node = %self.me(), %shard, withdrawn, "changes of deposed rooms withdrawn from the links");
            }
        }
    }

    /// Rooms whose owner vanished (no hand-off from it) go on from the follower's copy, or
    /// restart empty, on a new owner: re-join this edge's members there, so each is told the
    /// room's state with a `joined`. With `every_room`, every room's members join again (this
    /// node was out of the cluster, and the owners dropped its members).
    pub(super) async fn rejoin_orphaned_members(
        &self,
        old: &AssignmentTable,
        new: &AssignmentTable,
        every_room: bool,
    ) {
        for (room, members) in self.hub.rooms_with_members() {
            let shard = new.shard_of(&room);
            let (before, after) = (old.owner(shard), new.owner(shard));
            // A shard handed on by the old owner's follower (the owner is gone) is orphaned
            // too: members re-join so they get what the old owner acknowledged but never
            // delivered to their node.
            let handed_by_owner = new.move_of(shard).is_some_and(|m| Some(&m.from) == before);
            let gone = |node: &shard::NodeName| !new.nodes.contains_key(node);
            // So is a shard whose hand-off source left before its snapshot (the follower's copy
            // stands in for it): what the source delivered last may not have reached us.
            let source_left = old.move_of(shard).is_some_and(|m| gone(&m.from));
            let orphaned = after.is_some()
                && (every_room
                    || source_left
                    || (before != after && !handed_by_owner && before.is_none_or(gone)));
            if !orphaned {
                continue;
            }
            for member in members {
                let command = RoomCommand::Join {
                    member: MemberKey {
                        node: self.me().clone(),
                        conn: member.id,
                    },
                    user: member.user.clone(),
                    since: None,
                };
                member.control.expect_unrouted();
                if let Err(e) = self.route(&room, command).await {
                    member.control.unrouted_failed();
                    tracing::warn!(%room, error = %e, "could not re-join a member to the room's new owner");
                }
            }
        }
    }
}
