//! What arrives from peers: commands for rooms owned here (or soon), events for this node's
//! edge, and the two halves of a hand-off's snapshot exchange.

use std::sync::Arc;

use shard::{Move, NodeName, ShardId};
use tokio::time::Instant;

use super::handoffs::{Early, EarlySnapshot};
use super::{NodeState, TABLE_CATCH_UP, lock};
use crate::peer::wire::PeerMsg;
use crate::replication::Answer;
use crate::room::RoomSnapshot;
use crate::rooms::RouteError;

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
            PeerMsg::SnapshotAck { shard, epoch } => {
                let mut handoffs = lock(&self.handoffs);
                // Only the acknowledgement of this move's snapshot ends it (a late one from an
                // earlier move of the same shard does not).
                let this_move = handoffs
                    .outgoing
                    .get(&shard)
                    .is_some_and(|(to, sent)| to == from && *sent == epoch);
                if this_move {
                    handoffs.outgoing.remove(&shard);
                    handoffs.done.push(Move {
                        shard,
                        from: self.me().clone(),
                        to: from.clone(),
                    });
                    tracing::info!(%shard, to = %from, epoch, "hand-off confirmed");
                }
                drop(handoffs);
                self.progress.notify_waiters();
            }
        }
    }

    pub(super) fn on_snapshot(
        self: &Arc<Self>,
        from: &NodeName,
        shard: ShardId,
        epoch: u64,
        floor: u64,
        rooms: Vec<RoomSnapshot>,
    ) {
        let incoming = {
            let mut handoffs = lock(&self.handoffs);
            let expected = handoffs
                .incoming
                .get(&shard)
                .is_some_and(|i| &i.from == from);
            if !expected && epoch > self.table().epoch {
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
                return;
            }
            let incoming = if expected {
                handoffs.incoming.remove(&shard)
            } else {
                None
            };
            match incoming {
                Some(incoming) => {
                    // Installed and replayed before the lock is released: a command routed
                    // here in between would otherwise start a room afresh (from seq 0) or get
                    // ahead of the commands that waited for the snapshot.
                    let count = rooms.len();
                    self.rooms.install(shard, floor, rooms);
                    let refused = self.replay(incoming.buffer);
                    Some((incoming.started, count, refused))
                }
                None => None,
            }
        };
        match incoming {
            Some((started, count, refused)) => {
                self.settle_refused(refused);
                tokio::spawn(self.clone().sync_follower(shard));
                let took = started.elapsed();
                tracing::info!(%shard, %from, rooms = count, ?took, "shard received");
                self.metrics.handoff_completed(shard, took);
            }
            None if self.table().owner(shard) == Some(self.me()) => {
                // The old owner did not get our acknowledgement and sent the snapshot again:
                // the shard is installed already, so only the acknowledgement is repeated.
                tracing::info!(%shard, %from, epoch, "repeated snapshot of an installed shard: acknowledged again");
            }
            None => {
                tracing::warn!(%shard, %from, epoch, "a snapshot nobody waits for (the move was cancelled)")
            }
        }
        // A lost acknowledgement (full outbox) is not retried here: the old owner sends the
        // snapshot again, and this answers it again.
        if let Some(peers) = &self.peers
            && peers
                .send(from, PeerMsg::SnapshotAck { shard, epoch })
                .is_err()
        {
            tracing::warn!(%shard, %from, "could not queue the snapshot's acknowledgement (outbox full or peer gone): it waits for the resend");
        }
        self.progress.notify_waiters();
    }

    pub(super) fn on_bounce(&self, to: &NodeName, msg: &PeerMsg) {
        match msg {
            PeerMsg::Command { room, command, .. } => {
                self.answer_error(command, RouteError::Unavailable, room);
            }
            PeerMsg::Event(_) => {
                self.metrics.peer_drops.inc();
            }
            PeerMsg::Snapshot { shard, .. } => {
                tracing::error!(%shard, %to, "a snapshot could not be delivered: the target left or restarted");
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
