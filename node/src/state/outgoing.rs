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

/// How long the old owner waits for the acknowledgement of a snapshot the new owner has
/// handled before it sends the snapshot again.
pub(super) const SNAPSHOT_RETRY: Duration = Duration::from_secs(1);

impl NodeState {
    /// The old owner's side of a hand-off: freeze the shard (each room once its follower holds
    /// every change, see `rooms::actor`), keep the frozen rooms in the shard's outgoing entry,
    /// and send them. A table that gave the shard back meanwhile has them served instead; one
    /// that needs them no more (the entry is gone) has them dropped.
    pub(super) async fn hand_off(self: Arc<Self>, shard: ShardId) {
        let started = std::time::Instant::now();
        let frozen = Arc::new(self.rooms.freeze(shard).await);
        tracing::debug!(node = %self.me(), %shard, frozen = ?started.elapsed(), "shard frozen");
        let serve = {
            let mut handoffs = lock(&self.handoffs);
            match handoffs.outgoing.get_mut(&shard) {
                None => return,
                Some(outgoing) => {
                    outgoing.frozen = Some(frozen);
                    outgoing.serve_when_frozen
                }
            }
        };
        if serve {
            self.serve(shard);
        } else {
            self.send_held(shard).await;
        }
    }

    /// Send the rooms kept in `shard`'s outgoing entry to the node it names, once the edges
    /// have handled what the rooms sent them; again to a new target when a table changes it
    /// (`Resend`), and again when the target handled a copy without acknowledging it; until
    /// the acknowledgement removes the entry, or a table makes it needless.
    pub(super) async fn send_held(self: Arc<Self>, shard: ShardId) {
        let Some(peers) = self.peers.clone() else {
            return;
        };
        let Some(id) = lock(&self.handoffs).outgoing.get(&shard).map(|o| o.id) else {
            return;
        };
        let current = || {
            let handoffs = lock(&self.handoffs);
            let outgoing = handoffs.outgoing.get(&shard).filter(|o| o.id == id)?;
            Some((
                outgoing.to.clone(),
                outgoing.epoch,
                outgoing.frozen.clone()?,
            ))
        };
        let mut flushed = false;
        let mut sent: Option<(NodeName, u64)> = None;
        let mut copies = 0u32;
        let mut deadline = Instant::now();
        let mut mark = peers.sent_to(std::iter::empty::<&NodeName>());
        loop {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            let Some((to, epoch, frozen)) = current() else {
                return;
            };
            if self.shutdown.is_cancelled() {
                return;
            }
            if !flushed {
                let started = std::time::Instant::now();
                self.flush_edges(&peers, shard, &to, &frozen.rooms).await;
                flushed = true;
                tracing::info!(node = %self.me(), %shard, %to, rooms = frozen.rooms.len(), flushed = ?started.elapsed(), "handing the shard off");
                continue;
            }
            let retry = Instant::now() >= deadline;
            let due =
                sent.as_ref() != Some(&(to.clone(), epoch)) || (retry && mark.waiting().is_empty());
            if retry && !due {
                // The last copy is still on its way (the link resends it across reconnects):
                // look again later.
                deadline = Instant::now() + SNAPSHOT_RETRY;
            }
            if due {
                let snapshot = Arc::new(PeerMsg::Snapshot {
                    shard,
                    epoch,
                    floor: frozen.floor,
                    rooms: frozen.rooms.clone(),
                });
                match peers.send_shared(&to, snapshot) {
                    Ok(()) => {
                        if sent.as_ref() == Some(&(to.clone(), epoch)) {
                            self.metrics.snapshot_resends.inc();
                            tracing::warn!(node = %self.me(), %shard, %to, copies, "no acknowledgement of the snapshot: sent it again");
                        }
                        copies += 1;
                        sent = Some((to.clone(), epoch));
                        mark = peers.sent_to([&to]);
                    }
                    Err(_) => {
                        tracing::warn!(node = %self.me(), %shard, %to, "could not queue the snapshot (outbox full or peer gone): trying again");
                    }
                }
                deadline = Instant::now() + SNAPSHOT_RETRY;
            }
            tokio::select! {
                () = progress => {}
                () = tokio::time::sleep_until(deadline) => {}
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
            tracing::warn!(node = %self.me(), %shard, %to, waiting = ?flush.waiting(), "edges did not confirm the shard's last events in time; handing off anyway");
        }
    }
}
