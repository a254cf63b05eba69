//! Custody of each shard's rooms on this node: what it holds of them, and carrying out what a
//! new table asks of it. The rule itself is `shard`'s ([`shard::duty`], pure and checked
//! against random interleavings there); this file reads the node's state into a
//! [`shard::Holding`] and does the I/O each [`shard::RoomsDuty`] names.
//!
//! What a node holds of a shard lives in three places: [`Handoffs`] (the rooms it serves, a
//! snapshot it waits for, frozen rooms it keeps after a hand-off, the hand-off last
//! acknowledged), and [`Copies`](crate::copies::Copies) (a follower's copy). Lock order:
//! the hand-off lock first, then the copies'.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::Instrument;

use shard::{AssignmentTable, Duty, Holding, NodeName, RoomsDuty, ShardId};
use tokio::time::Instant;

use super::handoffs::{Handoffs, Incoming, Outgoing};
use super::{NodeState, lock};
use crate::hashing::HashSet;
use crate::rooms::FrozenShard;

/// Numbers for [`Outgoing`] entries, so that a sending task knows its entry from a later one.
static OUTGOING: AtomicU64 = AtomicU64::new(1);

/// A fresh id for an [`Outgoing`] entry.
pub(super) fn outgoing_id() -> u64 {
    OUTGOING.fetch_add(1, Ordering::Relaxed)
}

/// What this node holds of `shard`, from its hand-off bookkeeping and the shards it keeps
/// copies of. `in_force` is the table applied last, `was_out` whether this node left the
/// cluster since (see [`Holding::stale`]).
fn holding(
    handoffs: &Handoffs,
    copies: &HashSet<ShardId>,
    shard: ShardId,
    stale: Staleness<'_>,
) -> Holding {
    let serving = handoffs.serving.contains(&shard);
    let moved_here = stale
        .in_force
        .move_of(shard)
        .is_some_and(|m| m.to == *stale.me);
    Holding {
        serving,
        receiving: handoffs.incoming.get(&shard).map(|i| i.from.clone()),
        frozen_for: handoffs.outgoing.get(&shard).map(|o| o.to.clone()),
        copy: copies.contains(&shard),
        handed_to: handoffs.handed.get(&shard).cloned(),
        stale: serving && (stale.was_out || !moved_here),
    }
}

/// What tells rooms served here from an older ownership (see [`Holding::stale`]).
#[derive(Clone, Copy)]
pub(super) struct Staleness<'a> {
    /// This node.
    pub me: &'a NodeName,
    /// The table in force before the new one.
    pub in_force: &'a AssignmentTable,
    /// This node was out of the cluster between the two tables.
    pub was_out: bool,
}

impl NodeState {
    /// What `new` asks of this node for every shard it touches, decided against what the node
    /// holds. Called under the one-table-at-a-time lock, before `new` is in force: the
    /// hand-offs to this node start buffering here, so that a command routed by `new` finds
    /// its shard's buffer.
    pub(super) fn duties(&self, new: &AssignmentTable, was_out: bool) -> Vec<(ShardId, Duty)> {
        let me = self.me().clone();
        let in_force = self.table();
        let staleness = Staleness {
            me: &me,
            in_force: &in_force,
            was_out,
        };
        let mut handoffs = lock(&self.handoffs);
        let copies = lock(&self.copies).shards();
        let held: Vec<ShardId> = handoffs
            .serving
            .iter()
            .chain(handoffs.incoming.keys())
            .chain(handoffs.outgoing.keys())
            .chain(copies.iter())
            .copied()
            .collect();
        let mut duties = Vec::new();
        for shard in shard::shards_to_visit(new, &me, held) {
            let held = holding(&handoffs, &copies, shard, staleness);
            let duty = shard::duty(new, &me, shard, &held);
            if let RoomsDuty::Receive { from } | RoomsDuty::Reclaim { from } = &duty.rooms {
                let now = Instant::now();
                let deadline = now + self.settings.handoff.timeout;
                handoffs
                    .incoming
                    .entry(shard)
                    .and_modify(|incoming| incoming.from = from.clone())
                    .or_insert_with(|| Incoming {
                        from: from.clone(),
                        buffer: Default::default(),
                        started: now,
                        deadline,
                        overdue: false,
                    });
            }
            let quiet = duty.rooms == RoomsDuty::Keep
                && duty.keep_frozen == handoffs.outgoing.contains_key(&shard)
                && duty.keep_copy == copies.contains(&shard)
                && !duty.start_copy;
            if !quiet {
                duties.push((shard, duty));
            }
        }
        // A hand-off from here the table no longer shows needs no more remembering.
        handoffs.handed.retain(|shard, to| {
            new.move_of(*shard)
                .is_some_and(|m| m.from == me && m.to == *to)
        });
        duties
    }

    /// Carry out `duties` once the table of `epoch` is in force.
    pub(super) fn carry_out(self: &Arc<Self>, duties: Vec<(ShardId, Duty)>, epoch: u64) {
        for (shard, duty) in duties {
            if !matches!(duty.rooms, RoomsDuty::Keep | RoomsDuty::Receive { .. }) {
                tracing::debug!(node = %self.me(), %shard, epoch, duty = ?duty.rooms, "custody");
            }
            match duty.rooms {
                RoomsDuty::Keep | RoomsDuty::Receive { .. } => {}
                RoomsDuty::Serve => self.serve(shard),
                RoomsDuty::HandOff { to } => {
                    lock(&self.handoffs).serving.remove(&shard);
                    self.begin_outgoing(shard, to, epoch, None);
                    tokio::spawn(self.clone().hand_off(shard).in_current_span());
                }
                RoomsDuty::Resend { to } => {
                    let mut handoffs = lock(&self.handoffs);
                    handoffs.done.retain(|m| m.shard != shard);
                    if let Some(outgoing) = handoffs.outgoing.get_mut(&shard) {
                        tracing::info!(node = %self.me(), %shard, from = %outgoing.to, %to, "the hand-off's target left: its frozen rooms go to the new target");
                        outgoing.to = to;
                        outgoing.epoch = epoch;
                    }
                    drop(handoffs);
                    // The sending task reads its entry again and sends to the new target.
                    self.progress.notify_waiters();
                }
                RoomsDuty::SendCopy { to } => {
                    let copy = lock(&self.copies).snapshot(shard).unwrap_or_default();
                    tracing::info!(node = %self.me(), %shard, %to, rooms = copy.rooms.len(), "the hand-off's source left: this follower's copy goes to the new owner");
                    self.send_kept(shard, to, epoch, copy);
                }
                RoomsDuty::SendEmpty { to } => {
                    tracing::info!(node = %self.me(), %shard, %to, "this node's rooms were acknowledged by a target that left: the new target merges its own copy");
                    self.send_kept(shard, to, epoch, FrozenShard::default());
                }
                RoomsDuty::Stop | RoomsDuty::Reclaim { .. } => {
                    lock(&self.handoffs).serving.remove(&shard);
                    if matches!(duty.rooms, RoomsDuty::Reclaim { .. }) {
                        tracing::warn!(node = %self.me(), %shard, epoch, "the rooms served here are older than the shard's (another node owned it since): dropped, its snapshot comes from that node");
                    }
                    self.depose_rooms(shard);
                    tokio::spawn(self.rooms.depose(shard).in_current_span());
                }
                RoomsDuty::StopReceiving => {
                    let refused = {
                        let mut handoffs = lock(&self.handoffs);
                        let buffer = handoffs
                            .incoming
                            .remove(&shard)
                            .map(|i| i.buffer)
                            .unwrap_or_default();
                        self.replay(buffer)
                    };
                    self.settle_refused(refused);
                }
            }
            if !duty.keep_frozen {
                lock(&self.handoffs).outgoing.remove(&shard);
            }
            if !duty.keep_copy {
                lock(&self.copies).drop_copy(shard);
            }
            if duty.start_copy {
                lock(&self.copies).start(shard);
            }
        }
    }

    /// A hand-off of `shard` from here to `to` begins: its rooms, `frozen` already or not yet,
    /// are held until `to` acknowledges them, in place of whatever this node did with the shard
    /// before.
    fn begin_outgoing(
        &self,
        shard: ShardId,
        to: NodeName,
        epoch: u64,
        frozen: Option<Arc<FrozenShard>>,
    ) {
        let mut handoffs = lock(&self.handoffs);
        handoffs.handed.remove(&shard);
        handoffs.done.retain(|m| m.shard != shard);
        handoffs.outgoing.insert(
            shard,
            Outgoing {
                id: outgoing_id(),
                to,
                epoch,
                frozen,
                serve_when_frozen: false,
            },
        );
    }

    /// Keep `kept` as the rooms a hand-off from here sends to `to`, and send them.
    fn send_kept(self: &Arc<Self>, shard: ShardId, to: NodeName, epoch: u64, kept: FrozenShard) {
        self.begin_outgoing(shard, to, epoch, Some(Arc::new(kept)));
        tokio::spawn(self.clone().send_held(shard).in_current_span());
    }

    /// Start `shard`'s rooms here from `rooms`. A member on a node the table no longer names
    /// is dropped as it was from the rooms running when that node left (the rooms' other
    /// members see it leave): a copy or snapshot taken before can still name it, and without
    /// this the room would keep sending to a node that is gone, or, if the same process comes
    /// back, to members it dropped and rejoins itself.
    pub(super) fn open_shard(&self, shard: ShardId, rooms: FrozenShard) {
        let table = self.table();
        let gone: std::collections::BTreeSet<NodeName> = rooms
            .rooms
            .iter()
            .flat_map(|room| room.members.iter().map(|(member, _)| &member.node))
            .filter(|node| *node != self.me() && !table.nodes.contains_key(*node))
            .cloned()
            .collect();
        self.rooms.install(shard, rooms.floor, rooms.rooms);
        for node in gone {
            self.rooms
                .tell_all(&crate::room::RoomCommand::DropNode { node });
        }
    }

    /// Serve `shard` from what this node holds of it: its frozen rooms and its copy, merged
    /// room by room, or empty rooms with neither. A wait for a snapshot ends here; what it
    /// buffered goes to the rooms. Rooms still being frozen are served once frozen.
    pub(super) fn serve(self: &Arc<Self>, shard: ShardId) {
        let refused = {
            let mut handoffs = lock(&self.handoffs);
            let frozen = match handoffs.outgoing.remove(&shard) {
                Some(outgoing) => match outgoing.frozen {
                    Some(frozen) => Some(frozen),
                    None => {
                        // Still freezing: the hand-off's task serves them when done.
                        handoffs.outgoing.insert(
                            shard,
                            Outgoing {
                                serve_when_frozen: true,
                                ..outgoing
                            },
                        );
                        return;
                    }
                },
                None => None,
            };
            let copy = lock(&self.copies).take(shard);
            let from_copy = copy.is_some();
            let held = frozen.map(Arc::unwrap_or_clone).unwrap_or_default();
            let rooms = held.merged(copy.unwrap_or_default());
            if from_copy {
                tracing::info!(node = %self.me(), %shard, rooms = rooms.rooms.len(), "serving the shard from this node's copy");
            }
            self.open_shard(shard, rooms);
            handoffs.serving.insert(shard);
            let buffer = handoffs
                .incoming
                .remove(&shard)
                .map(|i| i.buffer)
                .unwrap_or_default();
            self.replay(buffer)
        };
        self.settle_refused(refused);
    }
}
