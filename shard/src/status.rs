//! The node/operator contract: what a node's `/status` says, as one type both sides use.
//!
//! The node serialises a [`NodeStatus`] and the operator deserialises the same type, so a field
//! renamed on one side is renamed on the other (a hand-written reader on the operator's side once
//! could have read a renamed field as "idle"). Fields added later carry `#[serde(default)]` so an
//! operator can read a node one version older during a rollout.

use serde::{Deserialize, Serialize};

use crate::table::Move;

/// What `/status` reports: table progress (the drain follows it) and load (autoscaling and
/// placement follow it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The reporting node's name; the operator refuses a status naming another node (a pod IP
    /// reused by a new pod).
    pub node: String,
    /// Epoch of the assignment table applied.
    pub epoch: u64,
    /// Shards this node owns in that table.
    #[serde(default)]
    pub shards_owned: u32,
    /// Shards this node follows whose copy is live: caught up with the owner and receiving its
    /// stream (replication 2). A newer operator counts these to say how many shards have a live
    /// follower.
    #[serde(default)]
    pub following: u32,
    /// Shards this node follows that are still receiving their snapshot from the owner.
    #[serde(default)]
    pub catching_up: u32,
    /// Hand-offs in progress on this node, as source or target.
    #[serde(default)]
    pub moves_in_flight: u32,
    /// Moves of the current table this node completed as the source.
    #[serde(default)]
    pub moves_done: Vec<Move>,
    /// Room actors running.
    #[serde(default)]
    pub rooms: u64,
    /// Client connections open.
    #[serde(default)]
    pub connections: u64,
    /// Peer links up.
    #[serde(default)]
    pub peers_connected: u32,
    /// Whether the node takes new clients.
    #[serde(default)]
    pub ready: bool,
    /// The node was asked to stop and is handing its shards off: the operator treats it as
    /// draining (what a pod's `deletionTimestamp` says in Kubernetes).
    #[serde(default)]
    pub terminating: bool,
    /// How busy the node is, for autoscaling and load-aware placement.
    #[serde(default)]
    pub load: NodeLoad,
}

/// A node's load, as rates over the last few seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeLoad {
    /// Chat messages written to this node's clients per second (one per recipient), averaged
    /// over the node's load window.
    #[serde(default)]
    pub deliveries_per_sec: u64,
    /// Client frames received per second over the same window.
    #[serde(default)]
    pub frames_in_per_sec: u64,
    /// The window the rates were measured over, in milliseconds (0 until a second sample).
    #[serde(default)]
    pub window_ms: u64,
    /// Per-shard load of the shards this node owns, only those with any: what load-aware
    /// placement balances (see [`crate::balance`]). Ascending by shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardLoad>,
}

/// One owned shard's load, as its owner measures it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardLoad {
    /// The shard.
    pub shard: u32,
    /// Chat messages delivered per second for the shard's rooms: each accepted message counts
    /// once per room member (its recipients), averaged over the node's shard load window.
    #[serde(default)]
    pub deliveries_per_sec: u64,
    /// Members of the shard's rooms now (connections joined to them, wherever they are).
    #[serde(default)]
    pub members: u64,
}

impl ShardLoad {
    /// The weight placement balances: deliveries per second, plus one per member so that a
    /// crowded but quiet shard is not taken for an empty one.
    pub fn weight(&self) -> u64 {
        self.deliveries_per_sec.saturating_add(self.members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_from_an_older_node_without_load_still_reads() {
        let status: NodeStatus =
            serde_json::from_str(r#"{"node":"chat-0","epoch":4,"movesInFlight":1}"#)
                .expect("old status");
        assert_eq!(status.epoch, 4);
        assert_eq!(status.moves_in_flight, 1);
        assert_eq!(status.load, NodeLoad::default());
        assert_eq!((status.following, status.catching_up), (0, 0));
    }

    #[test]
    fn a_status_round_trips_through_json_in_camel_case() {
        let status = NodeStatus {
            node: "chat-1".into(),
            epoch: 9,
            shards_owned: 3,
            following: 2,
            catching_up: 1,
            moves_in_flight: 0,
            moves_done: Vec::new(),
            rooms: 12,
            connections: 40,
            peers_connected: 2,
            ready: true,
            terminating: false,
            load: NodeLoad {
                deliveries_per_sec: 1500,
                frames_in_per_sec: 30,
                window_ms: 10_000,
                shards: vec![ShardLoad {
                    shard: 7,
                    deliveries_per_sec: 1200,
                    members: 9,
                }],
            },
        };
        let text = serde_json::to_string(&status).expect("serialise");
        assert!(text.contains("\"deliveriesPerSec\":1500"), "{text}");
        assert!(text.contains("\"shardsOwned\":3"), "{text}");
        assert!(text.contains(r#""following":2,"catchingUp":1"#), "{text}");
        assert!(
            text.contains(r#""shards":[{"shard":7,"deliveriesPerSec":1200,"members":9}]"#),
            "{text}"
        );
        let back: NodeStatus = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, status);
    }
}
