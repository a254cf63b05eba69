//! No silent loss on a full peer outbox, nor with a node that failed.
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
//!
//! A request routed to an owner that then fails (it restarted, or left the table) may have
//! died with it, unanswered: its client is told to reconnect the same way, and the re-join
//! shows whether its message got in. Counted in `roomshard_lost_request_reconnects_total`.

use shard::{NodeName, RoomId};

use super::NodeState;
use crate::edge::{EdgeEvent, MISSED_REQUEST_REASON};
use crate::peer::Peers;

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
        if peers.mark_gap(node, event.room_named()) {
            self.metrics.peer_gaps.inc();
            tracing::warn!(%node, "peer outbox full: events wait as a gap, announced once it drains");
        }
    }

    /// An owner announced a gap: the members of those rooms here (of every room with members
    /// when `all`) reconnect and re-join with `since`, which replays what they missed. So do
    /// connections still waiting for an answer from it: the answer may have been among the
    /// lost events (an error to a connection that is no member of the room it names, say).
    pub(super) fn on_gap(&self, from: &NodeName, rooms: &[RoomId], all: bool) {
        let mut told = 0u64;
        for (room, _) in self.hub.rooms_with_members() {
            if all || rooms.contains(&room) {
                told += self.hub.send_away_from(&room, |_| true, GAP_REASON);
            }
        }
        let waiting = self.send_away_awaiting(from);
        tracing::warn!(%from, rooms = rooms.len(), all, members = told, waiting, "an owner lost events for this edge: its members re-join");
    }

    /// Tell every open local connection with a request routed to `peer` still unanswered to
    /// reconnect; returns how many.
    fn send_away_awaiting(&self, peer: &NodeName) -> u64 {
        let mut told = 0u64;
        for conn in self.hub.connections() {
            if conn.control.awaits(peer) && !conn.control.is_closed() {
                self.hub.send_away(&conn, MISSED_REQUEST_REASON);
                told += 1;
            }
        }
        if told > 0 {
            self.metrics.lost_request_reconnects.inc_by(told);
        }
        told
    }
}

impl NodeState {
    /// `peer` failed (restarted, or left the table): every local connection with a request
    /// routed to it still unanswered is told to reconnect. The request may have died with the
    /// peer (taken, not yet answered), and a connection that stays open owes an answer to
    /// every send; closed, it owes none, and the client's re-join with `since` shows whether
    /// the message got in.
    pub(super) fn release_requests_to(&self, peer: &NodeName) {
        let told = self.send_away_awaiting(peer);
        if told > 0 {
            tracing::warn!(node = %self.me(), %peer, connections = told, "a node failed with requests of these connections in flight: they reconnect");
        }
    }
}
