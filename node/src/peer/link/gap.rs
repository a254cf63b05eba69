//! What a full outbox refused, to announce to the peer once it has room (see
//! [`PeerMsg::Gap`]).

use std::collections::BTreeSet;

use shard::RoomId;

use crate::peer::wire::PeerMsg;

/// Rooms a gap names one by one; past this many it covers every room (bounded whatever the
/// number of rooms whose events were refused).
pub(super) const MAX_GAP_ROOMS: usize = 256;

/// What a full outbox refused: the rooms of the events, or all rooms.
#[derive(Debug, Default)]
pub(super) struct Gap {
    pub(super) rooms: BTreeSet<RoomId>,
    pub(super) all: bool,
}

impl Gap {
    /// Count an event for `room` (`None`: a room not known) as refused.
    pub(super) fn add(&mut self, room: Option<RoomId>) {
        match room {
            Some(room) if !self.all && self.rooms.len() < MAX_GAP_ROOMS => {
                self.rooms.insert(room);
            }
            Some(room) if self.rooms.contains(&room) => {}
            _ => {
                self.all = true;
                self.rooms.clear();
            }
        }
    }

    /// The announcement to send.
    pub(super) fn into_msg(self) -> PeerMsg {
        PeerMsg::Gap {
            rooms: self.rooms.into_iter().collect(),
            all: self.all,
        }
    }
}
