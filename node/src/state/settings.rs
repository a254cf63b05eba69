//! A node's settings, validated once at start-up (see [`crate::config`]) and read-only after.

use std::time::Duration;

use shard::NodeName;

use crate::rooms::RoomSettings;

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Largest `text` of a `send`, in bytes.
    pub max_text_bytes: usize,
    /// Largest WebSocket message accepted at all; past it the connection is closed with 1009.
    pub max_frame_bytes: usize,
    /// Rooms one connection may be in at once.
    pub max_rooms: usize,
    /// Frames per second a connection may send on average.
    pub rate_per_sec: u32,
    /// Frames a connection may send at once.
    pub rate_burst: u32,
    /// Capacity of each connection's outgoing queue, in frames.
    pub outgoing_queue: usize,
    /// How long a closing connection may take to flush and send its close frame.
    pub close_timeout: Duration,
    /// Longest window over which a shutting-down node tells its clients `reconnect` (see
    /// [`crate::connection::reconnect_delay`]).
    pub reconnect_spread: Duration,
}

/// Hand-off settings.
#[derive(Debug, Clone)]
pub struct HandoffSettings {
    /// How long a new owner buffers a shard's commands waiting for the snapshot before the
    /// waiting senders are answered `room_unavailable`.
    pub timeout: Duration,
    /// Commands buffered per incoming shard; past it, `room_unavailable`.
    pub buffer: usize,
    /// How long a node asked to stop waits for the operator to plan its shards away and for
    /// its hand-offs to finish before it tells its clients to reconnect anyway (see
    /// [`crate::exit`]).
    pub exit_drain: Duration,
}

/// Everything a node needs to run, already validated.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// This node's name (its pod name in Kubernetes).
    pub name: NodeName,
    /// The 10-bit id in the message ids it mints.
    pub node_id: u16,
    /// Shard count of the cluster.
    pub shards: u32,
    /// Address peers and the operator reach this node at.
    pub peer_addr: String,
    /// Room actor settings.
    pub rooms: RoomSettings,
    /// Connection limits.
    pub limits: ConnectionLimits,
    /// Hand-off settings.
    pub handoff: HandoffSettings,
}
