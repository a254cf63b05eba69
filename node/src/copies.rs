//! The follower's half of replication: copies of the rooms of the shards this node follows,
//! kept current by their owners' changes, ready to be served if an owner goes away.
//!
//! A copy is a [`Room`] without an actor: the owner's changes are applied to it in the order
//! they left the owner (one peer link, in order), and nothing is sent to members from it. A
//! room its owner passivated leaves only its seq, in a bounded [`RestingSeqs`] like the
//! owner's, so a promoted shard never repeats a seq. A shard is *live* once its owner said the
//! whole shard was sent ([`Copies::caught_up`]); `/status` counts live and catching-up shards.
//!
//! Who may change a copy (fencing) is decided by the caller against its table; this store only
//! holds the copies. It holds as many rooms as the owners keep running, each bounded by the
//! history limit, and drops a shard's copies as soon as the table stops naming this node its
//! follower.

use std::time::Duration;

use shard::{RoomId, ShardId};
use tokio::time::Instant;

use crate::hashing::{HashMap, HashSet};
use crate::replication::{Answer, Change};
use crate::resting::RestingSeqs;
use crate::room::{Room, RoomSnapshot};
use crate::rooms::FrozenShard;

/// One followed shard.
#[derive(Debug)]
struct ShardCopy {
    /// Copies of the shard's running rooms.
    rooms: HashMap<RoomId, Room>,
    /// `None` once the copy is live (the owner has sent the whole shard: every room, the
    /// floor, the resting seqs); until then, since when it has been waiting for that (or
    /// since it last asked the owner for it, see [`Copies::overdue`]).
    waiting_since: Option<Instant>,
}

impl ShardCopy {
    fn is_live(&self) -> bool {
        self.waiting_since.is_none()
    }
}

/// The copies this node keeps as a follower.
#[derive(Debug)]
pub struct Copies {
    shards: u32,
    history_limit: usize,
    followed: HashMap<ShardId, ShardCopy>,
    /// The seq of rooms passivated on their owners, and each shard's floor.
    resting: RestingSeqs,
}

/// How many followed shards are live and how many are still catching up, for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FollowCounts {
    /// Shards whose copy is whole and current.
    pub live: u32,
    /// Shards whose owner has not yet sent every room.
    pub catching_up: u32,
}

impl Copies {
    /// No copies, for a cluster of `shards` shards; `remembered` bounds the resting seqs.
    pub fn new(shards: u32, history_limit: usize, remembered: usize) -> Copies {
        Copies {
            shards,
            history_limit,
            followed: HashMap::default(),
            resting: RestingSeqs::new(shards, remembered),
        }
    }

    /// Apply one change to `room`'s copy (the caller checked that its sender owns the shard).
    pub fn apply(&mut self, shard: ShardId, room: &RoomId, change: Change) -> Answer {
        let copy = Self::copy_of(&mut self.followed, shard);
        match change {
            // A copy never goes back: an older state of the room (a late resend from a node
            // that owned it before) holds nothing the copy lacks.
            Change::Whole(snapshot)
                if copy
                    .rooms
                    .get(&snapshot.room)
                    .is_some_and(|held| held.seq() > snapshot.seq) =>
            {
                Answer::Held
            }
            Change::Whole(snapshot) => {
                let room = snapshot.room.clone();
                let seq = self.resting.take(&room).max(snapshot.seq);
                let mut copy_of_room = Room::from_snapshot(snapshot, self.history_limit);
                copy_of_room.apply_change(Change::Rested { seq });
                copy.rooms.insert(room, copy_of_room);
                Answer::Held
            }
            Change::Rested { seq } if copy.rooms.get(room).is_some_and(|held| held.seq() > seq) => {
                Answer::Held
            }
            Change::Rested { seq } => {
                copy.rooms.remove(room);
                self.resting.remember(room.clone(), seq);
                Answer::Held
            }
            change => match copy.rooms.get_mut(room) {
                // The copy missed a message (a change that never came): applying the next
                // one would leave a hole in its history, so ask for the whole room instead.
                Some(copy_of_room) if matches!(change, Change::Message { seq, .. } if seq > copy_of_room.seq() + 1) => {
                    Answer::NoCopy
                }
                Some(copy_of_room) => {
                    copy_of_room.apply_change(change);
                    Answer::Held
                }
                None => Answer::NoCopy,
            },
        }
    }

    /// The owner sent the whole shard: its floor and the seqs of its passivated rooms. From
    /// now on the copy is live.
    pub fn caught_up(&mut self, shard: ShardId, floor: u64, resting: Vec<(RoomId, u64)>) {
        let copy = Self::copy_of(&mut self.followed, shard);
        self.resting.raise_floor(shard, floor);
        for (room, seq) in resting {
            if !copy.rooms.contains_key(&room) {
                self.resting.remember(room, seq);
            }
        }
        copy.waiting_since = None;
    }

    /// The copy of `shard`, made empty (catching up since now) when there is none.
    fn copy_of(followed: &mut HashMap<ShardId, ShardCopy>, shard: ShardId) -> &mut ShardCopy {
        followed.entry(shard).or_insert_with(|| ShardCopy {
            rooms: HashMap::default(),
            waiting_since: Some(Instant::now()),
        })
    }

    /// Shards whose copy has waited `patience` or more to become live at `now`: their owner
    /// may not know this node holds nothing (it skipped the table that took the role away, so
    /// for it the follower never changed). Each is marked as asked at `now`, so it is named
    /// again only after another `patience`.
    pub fn overdue(&mut self, now: Instant, patience: Duration) -> Vec<ShardId> {
        let mut overdue = Vec::new();
        for (shard, copy) in &mut self.followed {
            if let Some(since) = copy.waiting_since
                && now.saturating_duration_since(since) >= patience
            {
                copy.waiting_since = Some(now);
                overdue.push(*shard);
            }
        }
        overdue.sort_unstable();
        overdue
    }

    /// Start a copy of `shard`, empty and catching up (the table names this node its
    /// follower); nothing changes if there is one already.
    pub fn start(&mut self, shard: ShardId) {
        Self::copy_of(&mut self.followed, shard);
    }

    /// Forget the copy of `shard` (this node neither follows nor receives it any more).
    pub fn drop_copy(&mut self, shard: ShardId) {
        self.followed.remove(&shard);
        self.resting.retain_shards(|s| s != shard);
    }

    /// The shards this node keeps a copy of.
    pub fn shards(&self) -> HashSet<ShardId> {
        self.followed.keys().copied().collect()
    }

    /// Whether this node keeps a copy of `shard`, live or catching up.
    pub fn holds(&self, shard: ShardId) -> bool {
        self.followed.contains_key(&shard)
    }

    /// Every copy waits for its owner's whole shard again, as if it had been waiting since
    /// `since`: after skipped tables this node cannot tell whether it stopped following a
    /// shard in between (and missed changes) before it was named again.
    pub fn unsettle(&mut self, since: Instant) {
        for copy in self.followed.values_mut() {
            copy.waiting_since = Some(since);
        }
    }

    /// Hand over the copy of `shard` (to serve it, or to send it to a new owner): its rooms,
    /// its passivated rooms' seqs and its floor. `None` when this node holds no copy of it.
    pub fn take(&mut self, shard: ShardId) -> Option<FrozenShard> {
        let copy = self.snapshot(shard)?;
        self.drop_copy(shard);
        Some(copy)
    }

    /// The copy of `shard` as it stands, kept: what a follower standing in for a hand-off's
    /// source that left sends the new owner while it goes on following.
    pub fn snapshot(&self, shard: ShardId) -> Option<FrozenShard> {
        let copy = self.followed.get(&shard)?;
        let mut rooms: Vec<RoomSnapshot> = copy.rooms.values().map(Room::snapshot).collect();
        rooms.extend(
            self.resting
                .peek_shard(shard)
                .into_iter()
                .filter(|(room, _)| !copy.rooms.contains_key(room))
                .map(|(room, seq)| RoomSnapshot::resting(room, seq)),
        );
        Some(FrozenShard {
            floor: self.resting.floor(shard),
            rooms,
        })
    }

    /// Whether this node holds a live copy of `shard`.
    pub fn is_live(&self, shard: ShardId) -> bool {
        self.followed.get(&shard).is_some_and(ShardCopy::is_live)
    }

    /// Live and catching-up followed shards.
    pub fn counts(&self) -> FollowCounts {
        let live = self.followed.values().filter(|c| c.is_live()).count() as u32;
        FollowCounts {
            live,
            catching_up: self.followed.len() as u32 - live,
        }
    }

    /// Copies of running rooms held, for tests and `/metrics`.
    pub fn rooms(&self) -> usize {
        self.followed.values().map(|c| c.rooms.len()).sum()
    }

    /// The last seq of `room`'s copy, if this node holds one.
    pub fn seq(&self, room: &RoomId) -> Option<u64> {
        let shard = shard::shard_of(room, self.shards);
        self.followed.get(&shard)?.rooms.get(room).map(Room::seq)
    }
}

#[cfg(test)]
mod tests;
