//! No silent loss on a full peer outbox.
//!
//! An owner first refuses what it can before anything is given out: a `send` whose room has
//! members on a node whose outbox is full is answered `overloaded` before it takes a seq (see
//! `rooms`' `Fanout::can_take`). What still cannot be queued (presence, `joined`, a message
//! when another room filled the outbox in between) opens a gap on the link: its rooms are
//! noted, bounded, and announced to the edge as [`PeerMsg::Gap`] ahead of anything newer as
//! soon as the outbox has room. The edge then tells those rooms' local members to reconnect
//! (a `reconnect` frame, then close 1013); they re-join with `since` and the room's history
//! replays what they missed. Counted in `roomshard_peer_drops_total` (events not queued),
//! `roomshard_peer_gaps_total` (gaps opened) and `roomshard_gap_reconnects_total`.

use std::borrow::Cow;

use serde::Deserialize;
use shard::{NodeName, RoomId};

use super::NodeState;
use crate::edge::{CLOSE_SLOW_CONSUMER, CloseReason, EdgeEvent};
use crate::peer::Peers;
use crate::protocol;
use crate::ws::frame::WireFrame;

/// What a reconnect after a gap says, in the frame and in the close frame.
const GAP_REASON: &str = "events for a room were lost under overload: re-join with since";

impl NodeState {
    /// Whether every one of `nodes`' edges can take another event now (this node's always can).
    pub(super) fn can_take(&self, nodes: &mut dyn Iterator<Item = &NodeName>) -> bool {
        let me = self.me();
        self.peers
            .as_ref()
            .is_none_or(|p| p.can_take(&mut (&mut *nodes).filter(|n| *n != me)))
    }

    /// `event` for `node` did not fit in its outbox: open (or widen) the link's gap.
    pub(super) fn gap(&self, peers: &Peers, node: &NodeName, event: &EdgeEvent) {
        self.metrics.peer_drops.inc();
        if peers.mark_gap(node, room_of(event)) {
            self.metrics.peer_gaps.inc();
            tracing::warn!(%node, "peer outbox full: events wait as a gap, announced once it drains");
        }
    }

    /// An owner announced a gap: the members of those rooms here (of every room with members
    /// when `all`) reconnect and re-join with `since`, which replays what they missed.
    pub(super) fn on_gap(&self, from: &NodeName, rooms: &[RoomId], all: bool) {
        let frame = WireFrame::text(&protocol::reconnect_frame(GAP_REASON, Some(0)));
        let mut told = 0u64;
        for (room, members) in self.hub.rooms_with_members() {
            if !all && !rooms.contains(&room) {
                continue;
            }
            for member in members {
                self.hub.push(&member, &frame, false);
                member.control.close(CloseReason {
                    code: CLOSE_SLOW_CONSUMER,
                    reason: GAP_REASON.to_owned(),
                    flush: true,
                });
                told += 1;
            }
        }
        self.metrics.gap_reconnects.inc_by(told);
        tracing::warn!(%from, rooms = rooms.len(), all, members = told, "an owner lost events for this edge: its members re-join");
    }
}

/// The room an event is about; for a frame to one connection, the `room` its JSON names.
fn room_of(event: &EdgeEvent) -> Option<RoomId> {
    #[derive(Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        room: Option<Cow<'a, str>>,
    }
    match event {
        EdgeEvent::Joined { room, .. }
        | EdgeEvent::Left { room, .. }
        | EdgeEvent::Broadcast { room, .. } => Some(room.clone()),
        EdgeEvent::ToConn { frame, .. } => {
            let named: Named<'_> = serde_json::from_str(frame.as_str()).ok()?;
            RoomId::new(named.room?.into_owned()).ok()
        }
    }
}
