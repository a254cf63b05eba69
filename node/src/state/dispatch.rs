//! What arrives from peers: commands for rooms owned here (or soon), events for this node's
//! edge, and the two halves of a hand-off's snapshot exchange.

use std::sync::Arc;
use tracing::Instrument;

use shard::{Move, NodeName, ShardId};
use tokio::time::Instant;

use super::handoffs::{Early, EarlySnapshot};
use super::{NodeState, TABLE_CATCH_UP, lock};
use crate::peer::wire::PeerMsg;
use crate::replication::Answer;
use crate::room::{RoomCommand, RoomSnapshot};
use crate::rooms::{FrozenShard, RouteError};

impl NodeState {
    pub(super) fn on_peer_message(self: &Arc<Self>, from: &NodeName, msg: PeerMsg) {
        match msg {
            PeerMsg::Command {
                room,
                command,
                hops,
                epoch,
            } => {
                // The sender knows a newer table: decide with that one, not ours. The epoch is
                // read under the lock that `apply_table` takes after swapping tables, so a
                // command parked here is always seen by the next table's flush. While that
                // flush runs, every command waits behind the parked ones: they came first.
                let mut handoffs = lock(&self.handoffs);
                if epoch > self.table().epoch || handoffs.releasing {
                    if handoffs.early.len() >= self.settings.handoff.buffer {
                        // Bounded like a hand-off's buffer: past it, the sender is answered.
                        drop(handoffs);
                        self.answer_error(&command, RouteError::Unavailable, &room);
                        return;
                    }
                    handoffs.early.push(Early {
                        epoch,
                        deadline: Instant::now() + TABLE_CATCH_UP,
                        room,
                        command,
                        hops,
                    });
                    return;
                }
                drop(handoffs);
                self.accept_as_owner(room, command, hops)
            }
            PeerMsg::Event(event) => self.hub.deliver(event),
            PeerMsg::Gap { rooms, all } => self.on_gap(from, &rooms, all),
            PeerMsg::Snapshot {
                shard,
                epoch,
                floor,
                rooms,
            } => self.on_snapshot(from, shard, epoch, floor, rooms),
            PeerMsg::Replicate {
                shard,
                epoch,
                room,
                rid,
                change,
            } => self.on_replicate(from, shard, epoch, room, rid, change),
            PeerMsg::Replicated {
                room, rid, answer, ..
            } => self.rooms.answered(&room, from, rid, answer),
            PeerMsg::CaughtUp {
                shard,
                epoch,
                floor,
                resting,
            } => self.on_caught_up(from, shard, epoch, floor, resting),
            // The link answers it with an acknowledgement and does not pass it on.
            PeerMsg::AckNow => {}
            PeerMsg::SendCopy { shard, epoch } => self.on_send_copy(from, shard, epoch),
            PeerMsg::SnapshotAck { shard, epoch } => self.on_snapshot_ack(from, shard, epoch),
        }
    }

    /// The target holds what this node sent it (and so does its follower): the frozen rooms
    /// are let go. Only the acknowledgement of what is kept now counts (a late one for an
    /// earlier target or epoch does not), and the move is reported done only while the table
    /// shows it, so an old acknowledgement never completes a later move between the same
    /// nodes.
    fn on_snapshot_ack(&self, from: &NodeName, shard: ShardId, epoch: u64) {
        let table = self.table();
        let mut handoffs = lock(&self.handoffs);
        let this_move = handoffs
            .outgoing
            .get(&shard)
            .is_some_and(|o| o.to == *from && o.epoch == epoch && o.frozen.is_some());
        if this_move {
            handoffs.outgoing.remove(&shard);
            handoffs.handed.insert(shard, from.clone());
            let done = Move {
                shard,
                from: self.me().clone(),
                to: from.clone(),
            };
            if table.moves.contains(&done) {
                handoffs.done.push(done);
            }
            tracing::info!(node = %self.me(), %shard, to = %from, epoch, "hand-off confirmed");
        }
        drop(handoffs);
        self.progress.notify_waiters();
    }

    /// A hand-off's snapshot. A shard this node waits for is installed from it merged with
    /// whatever the node holds itself (custody: a follower's copy it kept, frozen rooms), and
    /// the buffered commands go to the rooms; the acknowledgement follows once the node's own
    /// follower holds the shard. One for a shard it serves already (a resend, or a follower
    /// standing in for a source whose snapshot came first) is acknowledged at once. One that
    /// came ahead of the table announcing its move waits for that table; any other is not
    /// acknowledged, so its sender keeps the rooms.
    pub(super) fn on_snapshot(
        self: &Arc<Self>,
        from: &NodeName,
        shard: ShardId,
        epoch: u64,
        floor: u64,
        rooms: Vec<RoomSnapshot>,
    ) {
        enum Outcome {
            Installed {
                started: Instant,
                count: usize,
                refused: Vec<(shard::RoomId, crate::rooms::Refused)>,
            },
            Served,
            Early,
            Unwanted,
        }
        tracing::debug!(node = %self.me(), %shard, %from, epoch, rooms = rooms.len(), table = self.table().epoch, "snapshot");
        let outcome = {
            let mut handoffs = lock(&self.handoffs);
            if let Some(incoming) = handoffs.incoming.remove(&shard) {
                // Installed and replayed before the lock is released: a command routed here
                // in between would otherwise start a room afresh (from seq 0) or get ahead of
                // the commands that waited for the snapshot.
                let mut received = FrozenShard { floor, rooms };
                if let Some(frozen) = handoffs.outgoing.remove(&shard).and_then(|o| o.frozen) {
                    received = received.merged(Arc::unwrap_or_clone(frozen));
                }
                if let Some(copy) = lock(&self.copies).take(shard) {
                    received = received.merged(copy);
                }
                let count = received.rooms.len();
                self.open_shard(shard, received);
                handoffs.serving.insert(shard);
                let refused = self.replay(incoming.buffer);
                Outcome::Installed {
                    started: incoming.started,
                    count,
                    refused,
                }
            } else if handoffs.serving.contains(&shard) {
                Outcome::Served
            } else if epoch > self.table().epoch {
                // The source applied the move's table before this node did: keep the snapshot
                // until that table arrives here (read under the lock `apply_table` takes). One
                // per shard at most: a newer one for the same shard replaces it.
                handoffs.early_snapshots.retain(|e| e.shard != shard);
                handoffs.early_snapshots.push(EarlySnapshot {
                    from: from.clone(),
                    shard,
                    epoch,
                    floor,
                    rooms,
                });
                Outcome::Early
            } else {
                Outcome::Unwanted
            }
        };
        match outcome {
            Outcome::Installed {
                started,
                count,
                refused,
            } => {
                self.settle_refused(refused);
                let took = started.elapsed();
                tracing::info!(node = %self.me(), %shard, %from, rooms = count, ?took, "shard received");
                self.metrics.handoff_completed(shard, took);
                tokio::spawn(
                    self.clone()
                        .acknowledge_when_followed(from.clone(), shard, epoch)
                        .in_current_span(),
                );
            }
            Outcome::Served => {
                // The source did not get our acknowledgement and sent the snapshot again, or a
                // stand-in's came after the source's: only the acknowledgement is repeated.
                tracing::info!(node = %self.me(), %shard, %from, epoch, "snapshot of a shard served here: acknowledged again");
                self.acknowledge(from, shard, epoch);
            }
            Outcome::Early => {}
            Outcome::Unwanted => {
                tracing::warn!(node = %self.me(), %shard, %from, epoch, "a snapshot of a shard this node does not receive: not acknowledged, its sender keeps the rooms");
            }
        }
        self.progress.notify_waiters();
    }

    /// Acknowledge a snapshot installed here once this node's follower holds the shard (every
    /// room sent whole, handled by the follower; bounded by half the hand-off timeout, so a
    /// follower that does not answer delays the move but does not stop it): the source lets
    /// its frozen rooms go only when two nodes hold them again.
    async fn acknowledge_when_followed(self: Arc<Self>, to: NodeName, shard: ShardId, epoch: u64) {
        self.clone().sync_follower(shard).await;
        if let (Some(peers), Some(follower)) = (&self.peers, self.follower_of(shard)) {
            let copied = peers.sent_to([&follower.node]);
            let bound = self.settings.handoff.timeout / 2;
            if tokio::time::timeout(bound, copied.delivered())
                .await
                .is_err()
            {
                tracing::warn!(node = %self.me(), %shard, follower = %follower.node, "the follower did not confirm the received shard in time: acknowledging it anyway");
            }
        }
        self.acknowledge(&to, shard, epoch);
    }

    /// Queue a snapshot's acknowledgement. A lost one (full outbox) is not retried here: the
    /// source sends the snapshot again, and this answers it again.
    fn acknowledge(&self, to: &NodeName, shard: ShardId, epoch: u64) {
        if let Some(peers) = &self.peers
            && peers
                .send(to, PeerMsg::SnapshotAck { shard, epoch })
                .is_err()
        {
            tracing::warn!(node = %self.me(), %shard, %to, "could not queue the snapshot's acknowledgement (outbox full or peer gone): it waits for the resend");
        }
    }

    pub(super) fn on_bounce(&self, to: &NodeName, msg: &PeerMsg) {
        match msg {
            // The peer left or restarted before it acknowledged the command, which does not
            // say it never got it: it may have passed it on (a node outside the table
            // forwards to the owner once it reaches it). A send told `room_unavailable` would
            // be sent again and could be in the room twice, so its connection is sent away
            // instead, and the re-join with `since` shows whether it got in. Anything else is
            // safe to ask again.
            PeerMsg::Command { room, command, .. } => match command {
                RoomCommand::Post { .. } => self.answer_unknown(command, room),
                _ => self.answer_error(command, RouteError::Unavailable, room),
            },
            PeerMsg::Event(_) => {
                self.metrics.peer_drops.inc();
            }
            PeerMsg::Snapshot { shard, .. } => {
                tracing::error!(node = %self.me(), %shard, %to, "a snapshot could not be delivered: the target left or restarted");
            }
            // The follower restarted (its copy went with the old process) or left: answered
            // as a follower with no copy answers, the room sends itself whole again, to
            // whichever follower the table names by then, and that answer releases what the
            // change held. Unanswered, the room would hold its sends until the table changed.
            PeerMsg::Replicate { room, rid, .. } => {
                self.rooms.answered(room, to, *rid, Answer::NoCopy);
            }
            PeerMsg::SnapshotAck { .. }
            | PeerMsg::Gap { .. }
            | PeerMsg::Replicated { .. }
            | PeerMsg::CaughtUp { .. }
            | PeerMsg::AckNow
            | PeerMsg::SendCopy { .. } => {}
        }
    }
}
