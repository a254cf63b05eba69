//! The old owner's side of a hand-off: freeze the shard, let the edges of its rooms handle
//! the last events the rooms sent them, then send the snapshot.
//!
//! The wait in the middle is what keeps a room's messages in seq order on every edge. The old
//! owner's events reach an edge over its link to that edge; once the snapshot is installed,
//! the new owner's events reach the same edge over another link, and nothing orders two links.
//! So the snapshot leaves only when every edge with members in the shard's rooms (other than
//! the new owner, whose events from us travel ahead of the snapshot on the same link) has
//! acknowledged the last events we queued for it for those rooms, and a peer acknowledges a
//! message only after it has handled it. Only those: the rest of the link's traffic (other
//! rooms' messages, copies for followers) does not hold the hand-off up; the link remembers
//! where each room's last event went (`peer::link::RoomMark`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use shard::{NodeName, ShardId};
use tokio::time::Instant;

use super::{NodeState, lock};
use crate::peer::Peers;
use crate::peer::link::RoomMark;
use crate::peer::wire::PeerMsg;
use crate::room::RoomSnapshot;
use crate::rooms::FrozenShard;

/// How long the old owner waits for the acknowledgement of a snapshot the new owner has
/// handled before it sends the snapshot again.
pub(super) const SNAPSHOT_RETRY: Duration = Duration::from_secs(1);

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
        let frozen_shard = self.rooms.freeze(shard).await;
        tracing::debug!(%shard, frozen = ?started.elapsed(), "shard frozen");
        if handed {
            self.send_shard(shard, to, epoch, frozen_shard).await;
        }
    }

    /// Send a frozen shard (this node's rooms, or its copy of a shard whose owner left) to
    /// its new owner `to`, once the edges have handled what the rooms sent them, until the
    /// new owner acknowledges it.
    pub(super) async fn send_shard(
        self: Arc<Self>,
        shard: ShardId,
        to: NodeName,
        epoch: u64,
        FrozenShard { floor, rooms }: FrozenShard,
    ) {
        let started = std::time::Instant::now();
        lock(&self.handoffs)
            .outgoing
            .insert(shard, (to.clone(), epoch));
        let Some(peers) = &self.peers else { return };
        self.flush_edges(peers, shard, &to, &rooms).await;
        let flushed = started.elapsed();
        let count = rooms.len();
        let snapshot = Arc::new(PeerMsg::Snapshot {
            shard,
            epoch,
            floor,
            rooms,
        });
        // The steps of the pause this shard's rooms see, for finding where it goes.
        tracing::info!(%shard, %to, rooms = count, ?flushed, "handing the shard off");
        self.send_until_acknowledged(peers, shard, &to, epoch, snapshot)
            .await;
    }

    /// Send the snapshot, and again whenever the new owner handled (or bounced) the last copy
    /// and its acknowledgement has not come [`SNAPSHOT_RETRY`] later, until it comes or the
    /// table drops the move. The acknowledgement can be lost (the new owner's outbox to this
    /// node was full) and a node cannot drain until it comes; a new owner answers a repeated
    /// snapshot with the acknowledgement again without reinstalling anything. A copy that is
    /// still on its way (the link resends it across reconnects) is not sent twice.
    async fn send_until_acknowledged(
        &self,
        peers: &Peers,
        shard: ShardId,
        to: &NodeName,
        epoch: u64,
        snapshot: Arc<PeerMsg>,
    ) {
        let awaiting = || {
            lock(&self.handoffs)
                .outgoing
                .get(&shard)
                .is_some_and(|(t, e)| t == to && *e == epoch)
        };
        let mut copies = 0u32;
        while awaiting() && !self.shutdown.is_cancelled() {
            let queued = match peers.send_shared(to, snapshot.clone()) {
                Ok(()) => true,
                Err(_) => {
                    tracing::warn!(%shard, %to, "could not queue the snapshot (outbox full or peer gone): trying again");
                    false
                }
            };
            if queued && copies > 0 {
                self.metrics.snapshot_resends.inc();
                tracing::warn!(%shard, %to, copies, "no acknowledgement of the snapshot: sent it again");
            }
            copies += u32::from(queued);
            let mark = peers.sent_to([to]);
            let mut deadline = Instant::now() + SNAPSHOT_RETRY;
            loop {
                let progress = self.progress.notified();
                tokio::pin!(progress);
                progress.as_mut().enable();
                if !awaiting() || self.shutdown.is_cancelled() {
                    return;
                }
                tokio::select! {
                    () = progress => continue,
                    () = tokio::time::sleep_until(deadline) => {}
                }
                if !queued || mark.waiting().is_empty() {
                    break;
                }
                deadline += SNAPSHOT_RETRY;
            }
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
        let marks: Vec<RoomMark> = rooms.iter().map(|room| RoomMark::of(&room.room)).collect();
        let flush = peers.sent_for_rooms(edges, &marks);
        let bound = self.settings.handoff.timeout / 2;
        if tokio::time::timeout(bound, flush.delivered())
            .await
            .is_err()
        {
            tracing::warn!(%shard, %to, waiting = ?flush.waiting(), "edges did not confirm the shard's last events in time; handing off anyway");
        }
    }
}
