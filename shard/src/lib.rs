//! The pure core of roomshard: which shard a room lives in, which node owns which shard, how
//! ownership changes when the cluster changes, and when a scale-down is safe.
//!
//! Nothing in this crate does I/O, reads a clock or draws random numbers, so every decision the
//! node and the operator make about placement can be tested as a plain function.
//!
//! A tour, from the ground up:
//!
//! - [`ids`]: validated newtypes for the things we name: [`RoomId`], [`ShardId`], [`NodeName`].
//! - [`hash`]: the fixed room -> shard hash ([`room_hash`], [`shard_of`]). It is a stable contract:
//!   every node of every version must agree on it.
//! - [`table`]: the [`AssignmentTable`], shard -> owner node (and follower node, with
//!   replication 2) plus the moves in flight, versioned by an epoch.
//! - [`format`](mod@format): the table's compact, versioned JSON form (ConfigMap and HTTP).
//! - [`planner`]: [`plan`] turns the current table and the cluster's [`Membership`] into the next
//!   table, balanced and with the fewest moves; [`complete_moves`] clears finished hand-offs.
//! - [`balance`]: [`plan_with_load`] also balances per-shard load (deliveries per second) under a
//!   [`LoadPolicy`], moving the fewest shards.
//! - [`followers`]: how the planner chooses each shard's follower (replication 2).
//! - [`custody`]: [`duty`] tells one node what applying a new table means for a shard, from
//!   what it holds of it: the rule that frozen rooms always have a holder.
//! - [`drain`]: [`drain_step`] decides the next safe step of a scale-down.
//! - [`status`]: [`NodeStatus`], what a node's `/status` tells the operator (progress and load).
//!
//! All fallible functions return [`ShardError`].

pub mod balance;
pub mod custody;
pub mod drain;
pub mod followers;
pub mod format;
pub mod hash;
pub mod ids;
pub mod planner;
pub mod status;
pub mod table;
mod targets;

pub use balance::{LoadPolicy, plan_with_load};
pub use custody::{Duty, Holding, RoomsDuty, duty, shards_to_visit};
pub use drain::{
    CopyReport, DrainStep, NodeReport, copies_moved_on, drain_step, handed_off, new_followers,
    nodes_to_drain,
};
pub use hash::{room_hash, shard_of};
pub use ids::{NodeName, RoomId, ShardId, ordinal_of};
pub use planner::{Membership, PlanOptions, complete_moves, plan};
pub use status::{NodeLoad, NodeStatus, ShardLoad};
pub use table::{AssignmentTable, Move, NodeInfo};

/// Everything that can go wrong in this crate: invalid names and invalid assignment tables.
///
/// Table errors name the offending shard or node so an operator reading a log can find it in the
/// ConfigMap.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// A room name was empty, too long or contained a control character.
    #[error("invalid room id: {0}")]
    InvalidRoomId(String),
    /// A node name is not a DNS-1123 subdomain (what Kubernetes allows for a pod name).
    #[error("invalid node name {name:?}: {reason}")]
    InvalidNodeName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The text is not JSON, or a field has the wrong type.
    #[error("assignment table is not valid json: {0}")]
    Json(#[from] serde_json::Error),
    /// The table was written by a version of roomshard that this one cannot read.
    #[error("unsupported assignment table format {0} (this version reads format 1)")]
    UnsupportedFormat(u64),
    /// A table must have at least one shard.
    #[error("the shard count must be at least 1")]
    ZeroShards,
    /// A shard index is not below the table's shard count.
    #[error("shard {shard} is out of range (the table has {shards} shards)")]
    ShardOutOfRange {
        /// The offending shard index.
        shard: u64,
        /// The table's shard count.
        shards: u32,
    },
    /// Two nodes claim the same role (owner or follower) for one shard.
    #[error("shard {shard} is {role} both {first} and {second}")]
    DuplicateShard {
        /// The shard claimed twice.
        shard: u32,
        /// The role claimed twice, worded for the message: "assigned to" (owner) or
        /// "followed by" (follower).
        role: &'static str,
        /// The first owner found.
        first: String,
        /// The second owner found.
        second: String,
    },
    /// A node's shard list in `assignments` could not be parsed.
    #[error("bad shard range {range:?} for node {node}")]
    BadRange {
        /// The node whose list is malformed.
        node: String,
        /// The malformed piece of the list.
        range: String,
    },
    /// A node is referred to (as owner, move endpoint or draining) but not listed in `nodes`.
    #[error("{role} {node} is not listed in nodes")]
    UnknownNode {
        /// How the node was referred to, e.g. "owner" or "move source".
        role: &'static str,
        /// The unknown node.
        node: String,
    },
    /// Any other inconsistency inside a table, described in words.
    #[error("inconsistent assignment table: {0}")]
    Inconsistent(String),
}
