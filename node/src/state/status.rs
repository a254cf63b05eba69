//! The `/status` report, [`shard::NodeStatus`]: what the operator reads to plan, drain and scale.

use shard::{NodeLoad, NodeStatus, ShardId};
use tokio::time::Instant;

use super::{NodeState, lock};

/// A count as the `u32` `/status` carries (saturating; nothing here comes near it).
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl NodeState {
    /// The `/status` report.
    pub fn status(&self) -> NodeStatus {
        let table = self.table();
        let now = Instant::now();
        let follows = self.follow_counts();
        let handoffs = lock(&self.handoffs);
        NodeStatus {
            node: self.me().to_string(),
            epoch: table.epoch,
            shards_owned: count(table.shards_of(self.me()).len()),
            following: follows.live,
            catching_up: follows.catching_up,
            moves_in_flight: count(handoffs.incoming.len() + handoffs.outgoing.len()),
            moves_done: handoffs.done.clone(),
            rooms: self.rooms.active() as u64,
            connections: u64::try_from(self.metrics.connections.get()).unwrap_or(0),
            peers_connected: count(self.peers.as_ref().map_or(0, |p| p.connected())),
            ready: !self.exiting.is_cancelled() && !self.shutdown.is_cancelled(),
            terminating: self.exiting.is_cancelled() || self.shutdown.is_cancelled(),
            load: NodeLoad {
                shards: self.shard_load.read(self.rooms.shard_counters(), now, |s| {
                    table.owner(ShardId(s)) == Some(self.me())
                }),
                ..self.load.read(&self.metrics, now)
            },
        }
    }
}
