//! The last `seq` of rooms that are not running here, in bounded memory.
//!
//! A passivated room keeps only its last seq, so that it continues above it when it comes back
//! (a client resuming with `since` must never see a seq twice). Room names come from clients,
//! so this memory is bounded: a room that never had a message (seq 0) needs nothing, and when
//! more than `capacity` rooms are remembered the oldest is forgotten, raising its shard's
//! *floor* (the highest seq forgotten in that shard). A room that comes back with nothing
//! remembered starts at its shard's floor, so its seqs still never repeat; they may skip some
//! numbers, which a client sees as a gap, not as a repeat.

use std::collections::VecDeque;

use shard::{RoomId, ShardId};

use crate::hashing::HashMap;
use crate::shrink;

/// Remembered seqs of resting rooms, oldest forgotten first, with a floor per shard.
#[derive(Debug)]
pub struct RestingSeqs {
    /// Room -> (last seq, stamp of the entry in `order` that is current).
    seqs: HashMap<RoomId, (u64, u64)>,
    /// Rooms in the order they came to rest; entries whose stamp no longer matches `seqs` are
    /// stale (the room came back or rested again) and skipped.
    order: VecDeque<(RoomId, u64)>,
    /// The next stamp.
    stamp: u64,
    /// Per shard: the highest seq forgotten here.
    floors: Vec<u64>,
    /// Rooms remembered at most.
    capacity: usize,
}

impl RestingSeqs {
    /// Empty memory for `shards` shards, remembering at most `capacity` rooms.
    pub fn new(shards: u32, capacity: usize) -> RestingSeqs {
        RestingSeqs {
            seqs: HashMap::default(),
            order: VecDeque::new(),
            stamp: 0,
            floors: vec![0; shards as usize],
            capacity,
        }
    }

    fn shards(&self) -> u32 {
        u32::try_from(self.floors.len()).unwrap_or(u32::MAX)
    }

    fn floor_mut(&mut self, shard: ShardId) -> Option<&mut u64> {
        self.floors.get_mut(shard.0 as usize)
    }

    /// The floor of `shard`: where a room of it with nothing remembered starts.
    pub fn floor(&self, shard: ShardId) -> u64 {
        self.floors.get(shard.0 as usize).copied().unwrap_or(0)
    }

    /// Raise the floor of `shard` to at least `floor`: the old owner of a shard handed here
    /// forgot rooms up to it, so they must start above it here too.
    pub fn raise_floor(&mut self, shard: ShardId, floor: u64) {
        if let Some(mine) = self.floor_mut(shard) {
            *mine = (*mine).max(floor);
        }
        // Remembered seqs at or below the new floor say nothing the floor does not.
        let shards = self.shards();
        self.seqs
            .retain(|room, (seq, _)| shard::shard_of(room, shards) != shard || *seq > floor);
        self.tidy();
    }

    /// Remember that `room` rests at `seq` (nothing is kept for a room at or below its floor).
    pub fn remember(&mut self, room: RoomId, seq: u64) {
        let shard = shard::shard_of(&room, self.shards());
        if seq <= self.floor(shard) {
            self.seqs.remove(&room);
            self.tidy();
            return;
        }
        self.stamp += 1;
        self.seqs.insert(room.clone(), (seq, self.stamp));
        self.order.push_back((room, self.stamp));
        while self.seqs.len() > self.capacity {
            self.forget_oldest();
        }
        self.tidy();
    }

    /// The seq `room` continues from, forgetting it here (it is running again, or moved).
    pub fn take(&mut self, room: &RoomId) -> u64 {
        let shard = shard::shard_of(room, self.shards());
        let seq = self.seqs.remove(room).map_or(0, |(seq, _)| seq);
        self.tidy();
        seq.max(self.floor(shard))
    }

    /// The seq `room` would continue from, without forgetting it.
    pub fn peek(&self, room: &RoomId) -> u64 {
        let shard = shard::shard_of(room, self.shards());
        let seq = self.seqs.get(room).map_or(0, |(seq, _)| *seq);
        seq.max(self.floor(shard))
    }

    /// Every remembered room of `shard` with its seq, forgotten here (the shard moves away).
    pub fn take_shard(&mut self, shard: ShardId) -> Vec<(RoomId, u64)> {
        let shards = self.shards();
        let mut taken = Vec::new();
        self.seqs.retain(|room, (seq, _)| {
            if shard::shard_of(room, shards) == shard {
                taken.push((room.clone(), *seq));
                false
            } else {
                true
            }
        });
        self.tidy();
        taken
    }

    /// Every remembered room of `shard` with its seq, still remembered here (sent to the
    /// shard's follower).
    pub fn peek_shard(&self, shard: ShardId) -> Vec<(RoomId, u64)> {
        let shards = self.shards();
        self.seqs
            .iter()
            .filter(|(room, _)| shard::shard_of(room, shards) == shard)
            .map(|(room, (seq, _))| (room.clone(), *seq))
            .collect()
    }

    /// Forget every room whose shard `keep` refuses (a follower stopped following it).
    pub fn retain_shards(&mut self, keep: impl Fn(ShardId) -> bool) {
        let shards = self.shards();
        self.seqs
            .retain(|room, _| keep(shard::shard_of(room, shards)));
        self.tidy();
    }

    /// Rooms remembered.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether no room is remembered.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    fn forget_oldest(&mut self) {
        while let Some((room, stamp)) = self.order.pop_front() {
            let current = self.seqs.get(&room).is_some_and(|(_, s)| *s == stamp);
            if !current {
                continue;
            }
            if let Some((seq, _)) = self.seqs.remove(&room) {
                let shard = shard::shard_of(&room, self.shards());
                if let Some(floor) = self.floor_mut(shard) {
                    *floor = (*floor).max(seq);
                }
            }
            return;
        }
    }

    /// Drop stale order entries once they outnumber the live ones, and give back memory the
    /// maps no longer need.
    fn tidy(&mut self) {
        if self.order.len() > 2 * self.seqs.len() + 64 {
            let seqs = &self.seqs;
            self.order
                .retain(|(room, stamp)| seqs.get(room).is_some_and(|(_, s)| s == stamp));
        }
        shrink::map_if_sparse(&mut self.seqs);
        shrink::deque_if_sparse(&mut self.order);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomId {
        RoomId::new(name).expect("valid")
    }

    #[test]
    fn a_remembered_room_continues_from_its_seq_and_is_then_forgotten_here() {
        let mut seqs = RestingSeqs::new(16, 10);
        seqs.remember(room("a"), 7);
        assert_eq!(seqs.peek(&room("a")), 7);
        assert_eq!(seqs.take(&room("a")), 7);
        assert!(seqs.is_empty());
    }

    #[test]
    fn a_room_without_messages_takes_no_memory() {
        let mut seqs = RestingSeqs::new(16, 10);
        seqs.remember(room("a"), 0);
        assert!(seqs.is_empty());
        assert_eq!(seqs.take(&room("a")), 0);
    }

    #[test]
    fn past_its_capacity_the_oldest_room_is_forgotten_and_its_shard_starts_above_it() {
        let mut seqs = RestingSeqs::new(4, 100);
        for i in 0..1_000u64 {
            seqs.remember(room(&format!("r{i}")), i + 1);
        }
        assert_eq!(seqs.len(), 100);
        // r0..r899 were forgotten: each restarts at or above its own old seq.
        for i in 0..900u64 {
            assert!(seqs.peek(&room(&format!("r{i}"))) > i, "r{i}");
        }
        // The newest are remembered exactly.
        assert_eq!(seqs.peek(&room("r999")), 1000);
    }

    #[test]
    fn a_room_that_rests_and_wakes_again_and_again_does_not_grow_the_memory() {
        let mut seqs = RestingSeqs::new(4, 100);
        for i in 0..10_000u64 {
            seqs.remember(room("busy"), i + 1);
            let _ = seqs.take(&room("busy"));
        }
        seqs.remember(room("busy"), 10_001);
        assert_eq!(seqs.len(), 1);
        assert!(seqs.order.len() <= 2 * seqs.len() + 65);
    }

    #[test]
    fn a_raised_floor_lifts_every_room_of_its_shard_and_no_other() {
        let mut seqs = RestingSeqs::new(4, 100);
        let shard = shard::shard_of(&room("r0"), 4);
        let other = (0..100)
            .map(|i| room(&format!("o{i}")))
            .find(|r| shard::shard_of(r, 4) != shard)
            .expect("a room of another shard");
        seqs.remember(room("r0"), 3);
        seqs.raise_floor(shard, 9);
        assert_eq!(seqs.floor(shard), 9);
        assert_eq!(seqs.peek(&room("r0")), 9);
        assert_eq!(seqs.peek(&other), 0);
        // A lower floor never lowers it.
        seqs.raise_floor(shard, 2);
        assert_eq!(seqs.floor(shard), 9);
    }

    #[test]
    fn a_shard_moving_away_takes_its_rooms_with_it() {
        let mut seqs = RestingSeqs::new(4, 100);
        for i in 0..40u64 {
            seqs.remember(room(&format!("r{i}")), i + 1);
        }
        let shard = shard::shard_of(&room("r0"), 4);
        let taken = seqs.take_shard(shard);
        assert!(taken.iter().any(|(r, seq)| r == &room("r0") && *seq == 1));
        assert!(
            taken
                .iter()
                .all(|(r, _)| shard::shard_of(r, 4) == shard && seqs.peek(r) == 0)
        );
        assert_eq!(seqs.len() + taken.len(), 40);
    }
}
