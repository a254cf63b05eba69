//! The new owner's side of a hand-off, and commands that arrive ahead of this node's table:
//! both wait in bounded buffers until the snapshot or the table arrives, or their deadline
//! passes and their senders are answered.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use shard::{Move, NodeName, RoomId, ShardId};
use tokio::time::Instant;

use super::{NodeState, lock};
use crate::hashing::{HashMap, HashSet};
use crate::room::{RoomCommand, RoomSnapshot};
use crate::rooms::{FrozenShard, Refused, RouteError};

/// A shard this node is receiving: commands wait here for the snapshot.
#[derive(Debug)]
pub(super) struct Incoming {
    pub(super) from: NodeName,
    pub(super) buffer: VecDeque<(RoomId, RoomCommand)>,
    /// When this node applied the table that moves the shard here (the hand-off histogram's
    /// start).
    pub(super) started: Instant,
    pub(super) deadline: Instant,
    /// The snapshot is late: senders are answered at once instead of waiting.
    pub(super) overdue: bool,
}

/// Frozen rooms this node keeps after a hand-off from here, until the target acknowledges
/// them: custody's rule that frozen rooms always have a holder ([`shard::custody`]).
#[derive(Debug)]
pub(super) struct Outgoing {
    /// Which keeping this is (see `custody::outgoing_id`): a sending task stops when its
    /// entry is replaced.
    pub(super) id: u64,
    /// The node they go to now (a table may send them elsewhere, see [`shard::RoomsDuty`]).
    pub(super) to: NodeName,
    /// The epoch of the table that sent them there, which the acknowledgement echoes.
    pub(super) epoch: u64,
    /// The frozen rooms, once frozen (`None` while the running rooms are being frozen).
    pub(super) frozen: Option<Arc<FrozenShard>>,
    /// A table gave the shard back while its rooms were being frozen: serve them once frozen.
    pub(super) serve_when_frozen: bool,
}

#[derive(Debug, Default)]
pub(super) struct Handoffs {
    pub(super) incoming: HashMap<ShardId, Incoming>,
    /// Shards handed away whose rooms this node keeps until the new owner confirms them.
    pub(super) outgoing: HashMap<ShardId, Outgoing>,
    /// Shards whose rooms run here: installed from a snapshot, a copy or frozen rooms, or
    /// started empty. Commands for an owned shard outside it are buffered or refused.
    pub(super) serving: HashSet<ShardId>,
    /// Shards whose last hand-off from here was acknowledged, with the node that did: while
    /// a table still shows that move, there is nothing to send.
    pub(super) handed: HashMap<ShardId, NodeName>,
    /// Moves of the current table this node finished as the source, until the table drops them.
    pub(super) done: Vec<Move>,
    /// Commands from peers that already route by a newer table than ours.
    pub(super) early: Vec<Early>,
    /// Set while `apply_table` installs a table and hands `early` on: a peer's command that
    /// arrives meanwhile waits in `early` too, although the table is in force already.
    /// Otherwise it could reach its room ahead of the waiting commands its sender sent first.
    pub(super) releasing: bool,
    /// Snapshots that arrived before the table that announces their move.
    pub(super) early_snapshots: Vec<EarlySnapshot>,
}

/// A snapshot waiting for this node's table to reach `epoch`.
#[derive(Debug)]
pub(super) struct EarlySnapshot {
    pub(super) from: NodeName,
    pub(super) shard: ShardId,
    pub(super) epoch: u64,
    pub(super) floor: u64,
    pub(super) rooms: Vec<RoomSnapshot>,
}

/// A command that waits for this node's table to reach `epoch`.
#[derive(Debug)]
pub(super) struct Early {
    pub(super) epoch: u64,
    pub(super) deadline: Instant,
    pub(super) room: RoomId,
    pub(super) command: RoomCommand,
    pub(super) hops: u8,
}

impl NodeState {
    /// Buffer `command` when its shard is on its way to this node (answering its sender when
    /// the buffer is full or the hand-off overdue); otherwise hand it back.
    pub(super) fn buffer_if_incoming(
        &self,
        room: &RoomId,
        command: RoomCommand,
    ) -> Option<RoomCommand> {
        let shard = shard::shard_of(room, self.settings.shards);
        let mut handoffs = lock(&self.handoffs);
        let Some(incoming) = handoffs.incoming.get_mut(&shard) else {
            return Some(command);
        };
        if incoming.overdue || incoming.buffer.len() >= self.settings.handoff.buffer {
            drop(handoffs);
            self.answer_error(&command, RouteError::Unavailable, room);
            return None;
        }
        incoming.buffer.push_back((room.clone(), command));
        None
    }

    /// Queue the commands a hand-off buffered to their rooms, in order. Called under the
    /// hand-off lock, right after the shard is installed, so that nothing routed meanwhile gets
    /// ahead of them; what is not taken here is returned for [`Self::settle_refused`], to be
    /// forwarded or answered once the lock is released.
    pub(super) fn replay(&self, buffer: VecDeque<(RoomId, RoomCommand)>) -> Vec<(RoomId, Refused)> {
        let table = self.table();
        buffer
            .into_iter()
            .filter_map(|(room, command)| {
                if table.owner_of_room(&room) != Some(self.me()) {
                    let error = RouteError::Moved;
                    return Some((room, Refused { error, command }));
                }
                let refused = self.rooms.try_send(&room, command).err()?;
                Some((room, refused))
            })
            .collect()
    }

    /// Forward the commands [`Self::replay`] could not queue here, or answer their senders.
    pub(super) fn settle_refused(&self, refused: Vec<(RoomId, Refused)>) {
        for (room, Refused { error, command }) in refused {
            match error {
                RouteError::Moved => self.forward(room, command, 0),
                error => self.answer_error(&command, error, &room),
            }
        }
    }

    /// Hand the commands that waited for a table up to `epoch` on, in the order they arrived,
    /// then let peers' commands through directly again. Those that arrive meanwhile wait (see
    /// [`Handoffs::releasing`]) and are handed on in the next round, after the ones ahead of
    /// them.
    pub(super) fn release_early(&self, epoch: u64) {
        loop {
            let ready = {
                let mut handoffs = lock(&self.handoffs);
                let ready = take_where(&mut handoffs.early, |e| e.epoch <= epoch);
                handoffs.releasing = !ready.is_empty();
                ready
            };
            if ready.is_empty() {
                return;
            }
            for early in ready {
                self.accept_as_owner(early.room, early.command, early.hops);
            }
        }
    }

    /// Whether this node has nothing left to hand off: see [`shard::handed_off`].
    pub fn handed_off(&self) -> bool {
        let in_progress = {
            let handoffs = lock(&self.handoffs);
            handoffs.incoming.len() + handoffs.outgoing.len()
        };
        shard::handed_off(&self.table(), self.me(), in_progress)
    }

    /// Whether no hand-off is in progress here, either way.
    pub(super) fn handoffs_idle(&self) -> bool {
        let handoffs = lock(&self.handoffs);
        handoffs.incoming.is_empty() && handoffs.outgoing.is_empty()
    }

    /// Answer senders waiting on overdue hand-offs or on a table that never came.
    pub(super) fn expire_handoffs(&self, now: Instant) {
        let mut expired = Vec::new();
        {
            let mut handoffs = lock(&self.handoffs);
            let late = take_where(&mut handoffs.early, |e| now >= e.deadline);
            expired.extend(late.into_iter().map(|e| (e.room, e.command)));
            for (shard, incoming) in handoffs.incoming.iter_mut() {
                if !incoming.overdue && now >= incoming.deadline {
                    incoming.overdue = true;
                    tracing::warn!(node = %self.me(), %shard, from = %incoming.from, "hand-off overdue: answering waiting senders");
                    expired.extend(incoming.buffer.drain(..));
                }
            }
        }
        for (room, command) in expired {
            self.answer_error(&command, RouteError::Unavailable, &room);
        }
    }
}

/// Every 100 ms: expire overdue hand-offs, and ask for followed shards whose copy is overdue.
pub(super) async fn watch_deadlines(node: Weak<NodeState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        if node.shutdown.is_cancelled() && node.handoffs_idle() {
            return;
        }
        node.expire_handoffs(Instant::now());
        node.ask_for_overdue_copies();
    }
}

/// Take out of `items`, in order, those `take` picks: what a table or a deadline releases from
/// the waiting buffers; the rest stay, in order.
pub(super) fn take_where<T>(items: &mut Vec<T>, take: impl Fn(&T) -> bool) -> Vec<T> {
    let (taken, kept) = std::mem::take(items)
        .into_iter()
        .partition(|item| take(item));
    *items = kept;
    taken
}
