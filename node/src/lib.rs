//! # roomshard node
//!
//! A chat node: it serves WebSocket clients (protocol v1, `docs/protocol.md`), hosts the
//! actors of the rooms it owns and delivers their messages to its own clients.
//!
//! A tour, from the wire inwards:
//! - [`ws`]: WebSocket itself: the upgrade, client frames read off the socket, server frames
//!   encoded once per fan-out.
//! - [`protocol`]: the wire format; every client frame is parsed into one enum here.
//! - [`auth`]: who a connection is (`?user=` or a signed `?token=`).
//! - [`connection`]: one client: reader, limits (size, rate, rooms), the route fence.
//! - [`outbox`]: a connection's way out: direct writes, a bounded queue, slow consumers.
//! - [`edge`]: this node's clients per room; owners deliver to it once per node.
//! - [`room`]: a room's state on its owner (seq, history, members) as a pure state machine.
//! - [`rooms`]: the room actors, started on demand and passivated when idle; [`resting`]: the
//!   bounded memory of passivated rooms' seqs; [`shrink`]: registries give memory back.
//! - [`state`]: the node's shared state, routing to a room's owner, tables and hand-offs.
//! - [`peer`]: authenticated links between nodes that resend what a broken link lost.
//! - [`table_source`]: where the assignment table comes from (HTTP long-poll), and
//!   [`configmap_source`]: from a Kubernetes ConfigMap.
//! - [`server`]: HTTP routes and [`server::run`] with graceful shutdown; [`exit`]: a stopping
//!   node hands its shards off before it lets its clients go.
//! - [`config`]: flags and environment variables.
//! - [`snowflake`], [`rate`], [`metrics`]: message ids, token buckets, counters;
//!   [`hashing`]: the node's hash maps (their iteration order fixed in a simulation).

pub mod auth;
pub mod config;
#[cfg(feature = "kubernetes")]
pub mod configmap_source;
pub mod connection;
pub mod copies;
pub mod edge;
pub mod error;
pub mod exit;
pub mod hashing;
pub mod listen;
pub mod load;
mod lock;
pub mod metrics;
pub mod outbox;
pub mod peer;
pub mod peer_status;
pub mod protocol;
pub mod rate;
pub mod replication;
pub mod restart_marker;
pub mod resting;
pub mod room;
pub mod rooms;
pub mod server;
pub mod shard_load;
pub mod shrink;
pub mod snowflake;
pub mod state;
pub mod table_source;
pub mod ws;

pub use config::{ConfigError, NodeConfig};
pub use error::{Error, Result};
pub use server::run;
pub use state::{NodeSettings, NodeState};
