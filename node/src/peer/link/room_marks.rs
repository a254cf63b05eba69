//! Where on a link each room's last event went, so that a hand-off's old owner waits for the
//! last events of the shard's own rooms and not for everything queued on the link after them
//! (other rooms' messages, copies for followers).
//!
//! Rooms are counted in a fixed number of buckets of their name's hash, so the memory stays
//! bounded whatever the number of rooms; two rooms in one bucket only make a wait longer.

use shard::RoomId;

use super::Sent;

/// Buckets of rooms: a multiple of every shard count that divides it, so a bucket's rooms are
/// then all in one shard.
const BUCKETS: usize = 1024;

/// Which bucket a room's events count in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomMark(usize);

impl RoomMark {
    /// The bucket of `room`.
    pub fn of(room: &RoomId) -> RoomMark {
        RoomMark((shard::room_hash(room.as_str()) % BUCKETS as u64) as usize)
    }

    /// Every bucket: for an event that stands for every room.
    pub fn all() -> impl Iterator<Item = RoomMark> {
        (0..BUCKETS).map(RoomMark)
    }
}

/// The last event queued for each bucket; allocated with the first one.
#[derive(Debug, Default)]
pub(super) struct RoomMarks(Vec<Sent>);

impl RoomMarks {
    /// Note `sent` as the last event queued for the rooms of `marks`.
    pub(super) fn mark(&mut self, marks: impl IntoIterator<Item = RoomMark>, sent: Sent) {
        if self.0.is_empty() {
            self.0 = vec![Sent { resets: 0, seq: 0 }; BUCKETS];
        }
        for RoomMark(bucket) in marks {
            self.0[bucket] = sent;
        }
    }

    /// The number of the last event queued for any of `marks` in the stream of `resets`
    /// (marks from before a reset belong to an old numbering); `None` if there was none.
    pub(super) fn last(
        &self,
        marks: impl IntoIterator<Item = RoomMark>,
        resets: u64,
    ) -> Option<u64> {
        marks
            .into_iter()
            .filter_map(|RoomMark(bucket)| self.0.get(bucket))
            .filter(|sent| sent.resets == resets && sent.seq > 0)
            .map(|sent| sent.seq)
            .max()
    }
}
