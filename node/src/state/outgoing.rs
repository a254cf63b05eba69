//! The old owner's side of a hand-off: freeze the shard, let the edges of its rooms handle
//! the last events the rooms sent them, then send the snapshot.
//!
//! The wait in the middle is what keeps a room's messages in seq order on every edge. The old
//! owner's events reach an edge over its link to that edge; once the snapshot is installed,
//! the new owner's events reach the same edge over another link, and nothing orders two links.
//! So the snapshot leaves only when every edge with members in the shard's rooms (other than
//! the new owner, whose events from us travel ahead of the snapshot on the same link) has
//! acknowledged everything we queued for it, and a peer acknowledges a message only after it
//! has handled it.

use std::collections::BTreeSet;
use std::sync::Arc;

use shard::{NodeName, ShardId};

use super::{NodeState, lock};
use crate::peer::Peers;
use crate::peer::wire::PeerMsg;
use crate::room::RoomSnapshot;

impl NodeState {
    /// The old owner's side of a hand-off: freeze the shard, wait until its rooms' other edges
    /// have handled what the rooms sent them, then send the snapshot to `to` (when the table
    /// moves the shard there; otherwise the new owner starts it fresh and nothing is sent).
    pub(super) async fn hand_off(
        self: Arc<Self>,
        shard: ShardId,
        to: NodeName,
        handed: bool,
        epoch: u64,
    ) {
        let started = std::time::Instant::now();
        let rooms = self.rooms.freeze(shard).await;
        let frozen = started.elapsed();
        if !handed {
            return;
        }
        lock(&self.handoffs).outgoing.insert(shard, to.clone());
        let Some(peers) = &self.peers else { return };
        self.flush_edges(peers, shard, &to, &rooms).await;
        let flushed = started.elapsed();
        let count = rooms.len();
        let snapshot = PeerMsg::Snapshot {
            shard,
            epoch,
            rooms,
        };
        if peers.send(&to, snapshot).is_err() {
            tracing::error!(%shard, %to, "peer outbox full: snapshot not sent");
        } else {
            // The steps of the pause this shard's rooms see, for finding where it goes.
            tracing::info!(%shard, %to, rooms = count, ?frozen, ?flushed, "shard handed off");
        }
    }

    /// Wait until every other edge with members in `rooms` has handled the events these rooms
    /// sent it. The new owner's events reach those edges over other links than ours, so
    /// without the wait its first message could overtake our last ones (a member would see
    /// seq 31 before 30). The new owner itself needs no wait: our events to it travel ahead of
    /// the snapshot on the same link. Bounded by half the hand-off timeout, so an edge that
    /// stays unreachable delays the hand-off but does not stop it.
    async fn flush_edges(
        &self,
        peers: &Peers,
        shard: ShardId,
        to: &NodeName,
        rooms: &[RoomSnapshot],
    ) {
        let edges: BTreeSet<&NodeName> = rooms
            .iter()
            .flat_map(|room| room.members.iter().map(|(member, _)| &member.node))
            .filter(|node| *node != self.me() && *node != to)
            .collect();
        let flush = peers.sent_to(edges);
        let bound = self.settings.handoff.timeout / 2;
        if tokio::time::timeout(bound, flush.delivered())
            .await
            .is_err()
        {
            tracing::warn!(%shard, %to, waiting = ?flush.waiting(), "edges did not confirm the shard's last events in time; handing off anyway");
        }
    }
}
