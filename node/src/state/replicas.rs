//! Replication between a shard's owner and its follower, as the node takes part in it.
//!
//! Owner: its room actors send changes through [`NodeState::replicate`]; when the table names
//! a new follower for a shard it owns (or it gains a shard), [`NodeState::sync_follower`] has
//! every room of the shard send its whole state, then tells the follower the shard is whole
//! ([`PeerMsg::CaughtUp`]).
//!
//! Follower: [`NodeState::on_replicate`] applies a change to the copy only as
//! [`judge`] allows (fencing: an old owner cannot get a message acknowledged once the follower
//! knows it lost the role). A copy that does not become live in time (its owner skipped the
//! table that took the role away, so it never saw the follower change) is asked for again
//! ([`NodeState::ask_for_overdue_copies`], [`NodeState::on_send_copy`]).
//!
//! Failover: when a table makes this node the owner of a shard it followed, with no hand-off,
//! the shard's rooms start from the copy (custody's `Serve`), so seq continues and every
//! acknowledged message is there. When the table moves such a shard on to another node, the
//! copy is sent to it like an owner's snapshot (`SendCopy`), and kept while this node goes on
//! following the shard.

use std::sync::Arc;
use tracing::Instrument;

use shard::{AssignmentTable, NodeName, RoomId, ShardId};

use super::{NodeState, lock};
use crate::copies::FollowCounts;
use crate::peer::wire::PeerMsg;
use crate::replication::{Answer, Change, ChangeFor, FollowerRef, Verdict, judge};

/// How long a followed shard may wait for its owner's whole copy before the follower asks the
/// owner for it (and again after as long, until it comes). A sync normally takes well under a
/// second; a generous wait keeps a slow one from being sent twice.
pub(super) const COPY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a shard's whole copy may keep the next shard's waiting for its turn (see
/// [`NodeState::sync_follower`]): a follower that does not answer must not stall the others'.
pub(super) const SYNC_TURN: std::time::Duration = std::time::Duration::from_millis(250);

impl NodeState {
    /// The follower of `shard` in the table in force, with that table's epoch. `None` when it
    /// names none, or this node: the source of a hand-off may be named the shard's follower,
    /// and a node never counts itself as a copy.
    pub(super) fn follower_of(&self, shard: ShardId) -> Option<FollowerRef> {
        let table = self.table();
        let me = self.me();
        table
            .follower(shard)
            .filter(|f| *f != me)
            .map(|node| FollowerRef {
                node: node.clone(),
                epoch: table.epoch,
            })
    }

    /// Whether the table took `shard` from this node without a hand-off from it (see
    /// `Fanout::deposed`). A node without peers owns everything it serves.
    pub(super) fn deposed_from(&self, shard: ShardId) -> bool {
        if self.peers.is_none() {
            return false;
        }
        let table = self.table();
        let me = self.me();
        table.owner(shard) != Some(me) && table.move_of(shard).is_none_or(|m| &m.from != me)
    }

    /// Queue a change for a room's follower; false when it cannot be queued.
    pub(super) fn replicate(&self, to: &NodeName, change: ChangeFor) -> bool {
        let Some(peers) = &self.peers else {
            return false;
        };
        let ChangeFor {
            shard,
            epoch,
            room,
            rid,
            change,
        } = change;
        let msg = PeerMsg::Replicate {
            shard,
            epoch,
            room,
            rid,
            change,
        };
        peers.send(to, msg).is_ok()
    }

    /// A change from an owner: apply it to the copy if the sender may make it, and answer.
    pub(super) fn on_replicate(
        &self,
        from: &NodeName,
        shard: ShardId,
        epoch: u64,
        room: RoomId,
        rid: u64,
        change: Change,
    ) {
        // A hand-off's target that kept its follower's copy of the shard (it followed it)
        // holds the source's last changes in it until the snapshot comes to merge with.
        let receiving =
            lock(&self.handoffs).incoming.contains_key(&shard) && lock(&self.copies).holds(shard);
        let mut verdict = judge(&self.table(), self.me(), from, shard, epoch);
        if verdict == Verdict::NotFollower && receiving {
            verdict = Verdict::Apply;
        }
        let answer = match verdict {
            Verdict::Apply => lock(&self.copies).apply(shard, &room, change),
            Verdict::NotFollower => Answer::NoCopy,
            Verdict::Fenced => {
                self.metrics.replication_fenced.inc();
                tracing::warn!(node = %self.me(), %shard, %from, epoch, "refused a change from a node that does not own the shard here");
                Answer::Fenced
            }
        };
        let reply = PeerMsg::Replicated {
            shard,
            room,
            rid,
            answer,
        };
        if let Some(peers) = &self.peers
            && peers.send(from, reply).is_err()
        {
            // The owner resends the whole room when its changes stay unanswered.
            tracing::warn!(node = %self.me(), %shard, %from, "could not queue an answer to a change (outbox full or peer gone)");
        }
    }

    /// The owner sent the whole shard: the copy is live.
    pub(super) fn on_caught_up(
        &self,
        from: &NodeName,
        shard: ShardId,
        epoch: u64,
        floor: u64,
        resting: Vec<(RoomId, u64)>,
    ) {
        if judge(&self.table(), self.me(), from, shard, epoch) == Verdict::Apply {
            lock(&self.copies).caught_up(shard, floor, resting);
            tracing::info!(node = %self.me(), %shard, %from, "copy of the shard is live");
        }
    }

    /// Owner: bring `shard`'s follower up to date (every room whole), then tell it the
    /// shard is whole. A table that changes the follower meanwhile starts another sync.
    pub(super) async fn sync_follower(self: Arc<Self>, shard: ShardId) {
        self.send_follower_the_shard(shard, false).await;
    }

    /// [`Self::sync_follower`]; with `again`, every room goes whole even if it was sent to
    /// this follower before.
    async fn send_follower_the_shard(self: Arc<Self>, shard: ShardId, again: bool) {
        // One shard at a time, each handled by its follower before the next goes: a drain
        // gives a node dozens of shards to copy whole at once, and queued together they sit
        // ahead of every live change on the same links (a room's message waits for its
        // follower's answer). Rooms with traffic do not wait for their turn: their next change
        // carries the whole room first (`Replication::needs_whole`). A shard with no follower
        // copies nothing and does not queue.
        let _turn = match self.follower_of(shard) {
            Some(_) => Some(self.follower_syncs.lock().await),
            None => None,
        };
        // Read again after the wait: the table may have changed meanwhile.
        let Some(follower) = self.follower_of(shard) else {
            // No follower: the rooms release what they held.
            self.rooms.sync(shard, again).await;
            return;
        };
        let (floor, resting) = self.rooms.sync(shard, again).await;
        let msg = PeerMsg::CaughtUp {
            shard,
            epoch: follower.epoch,
            floor,
            resting,
        };
        let Some(peers) = &self.peers else { return };
        if peers.send(&follower.node, msg).is_err() {
            tracing::warn!(node = %self.me(), %shard, follower = %follower.node, "could not tell the follower its copy is whole (outbox full or peer gone)");
        }
        let copied = peers.sent_to([&follower.node]);
        if tokio::time::timeout(SYNC_TURN, copied.delivered())
            .await
            .is_err()
        {
            tracing::debug!(node = %self.me(), %shard, follower = %follower.node, "the follower has not handled the shard's copy yet: copying the next shard");
        }
    }

    /// A follower says it has no live copy of `shard` (see [`PeerMsg::SendCopy`]): when this
    /// node owns and serves the shard (a shard still on its way here has nothing to send) and
    /// its table names that follower, the shard goes to it whole again. A follower this
    /// node's table does not name (yet) is not answered: it asks again.
    pub(super) fn on_send_copy(self: &Arc<Self>, from: &NodeName, shard: ShardId, epoch: u64) {
        let table = self.table();
        let serving = lock(&self.handoffs).serving.contains(&shard);
        if table.owner(shard) != Some(self.me()) || table.follower(shard) != Some(from) || !serving
        {
            tracing::debug!(node = %self.me(), %shard, %from, epoch, "a copy asked for by a node this table does not name follower");
            return;
        }
        tracing::warn!(node = %self.me(), %shard, %from, epoch, "the follower holds no live copy of the shard: sending it whole again");
        self.metrics.copies_resent.inc();
        tokio::spawn(
            self.clone()
                .send_follower_the_shard(shard, true)
                .in_current_span(),
        );
    }

    /// `peer` restarted: the new process holds none of the copies the old one did. Every
    /// shard this node owns and `peer` follows goes to it whole again, one at a time as for a
    /// new follower; otherwise those shards would have one live copy until the follower asked
    /// for them ([`COPY_PATIENCE`]).
    pub(super) fn on_peer_restarted(self: &Arc<Self>, peer: &NodeName) {
        self.release_requests_to(peer);
        let table = self.table();
        let me = self.me();
        let serving = lock(&self.handoffs).serving.clone();
        let followed: Vec<ShardId> = table
            .followed_by(peer)
            .into_iter()
            .filter(|&shard| table.owner(shard) == Some(me) && serving.contains(&shard))
            .collect();
        if followed.is_empty() {
            return;
        }
        tracing::warn!(%peer, shards = followed.len(), "the follower restarted with no copies: sending its shards whole again");
        for shard in followed {
            self.metrics.copies_resent.inc();
            tokio::spawn(
                self.clone()
                    .send_follower_the_shard(shard, true)
                    .in_current_span(),
            );
        }
    }

    /// Follower: ask the owner of every followed shard whose copy has not become live within
    /// [`COPY_PATIENCE`] to send it (again).
    pub(super) fn ask_for_overdue_copies(&self) {
        let overdue = lock(&self.copies).overdue(tokio::time::Instant::now(), COPY_PATIENCE);
        if overdue.is_empty() {
            return;
        }
        let table = self.table();
        let Some(peers) = &self.peers else { return };
        for shard in overdue {
            let Some(owner) = table.owner(shard) else {
                continue;
            };
            if owner == self.me() || table.follower(shard) != Some(self.me()) {
                continue;
            }
            tracing::info!(node = %self.me(), %shard, %owner, "no live copy of a followed shard yet: asking its owner for it");
            let msg = PeerMsg::SendCopy {
                shard,
                epoch: table.epoch,
            };
            if peers.send(owner, msg).is_err() {
                tracing::warn!(node = %self.me(), %shard, %owner, "could not ask for the shard's copy (outbox full or peer gone): asking again later");
            }
        }
    }

    /// Followed shards, live and catching up, for `/status`.
    pub fn follow_counts(&self) -> FollowCounts {
        lock(&self.copies).counts()
    }

    /// Shards this node owns whose follower is new to them in `new` (or that it just gained):
    /// each needs a sync.
    pub(super) fn shards_to_sync(
        &self,
        old: &AssignmentTable,
        new: &AssignmentTable,
    ) -> Vec<ShardId> {
        let me = self.me();
        (0..new.shards)
            .map(ShardId)
            .filter(|&shard| {
                new.owner(shard) == Some(me)
                    && (old.owner(shard) != Some(me) || old.follower(shard) != new.follower(shard))
            })
            .collect()
    }
}
