//! What one node knows and shares between its connections, and how it acts as a member of a
//! cluster. The pieces, each in its own file below `state/`:
//! - [`settings`]: validated settings;
//! - `routing`: room operations to their owner, forwards, answers to senders;
//! - `dispatch`: what peers send (commands, events, snapshots and their acks);
//! - `gaps`: events a full peer outbox could not take, announced and answered, never lost
//!   quietly;
//! - `tables`: applying a new assignment table;
//! - `custody`: what this node holds of each shard and what a new table asks of it (the rule
//!   is `shard::duty`);
//! - `handoffs`: the new owner's buffers and deadlines; `outgoing`: the old owner's side;
//! - `status`: the `/status` report.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;
use tracing::Instrument;

use shard::{AssignmentTable, Membership, NodeInfo, NodeName, PlanOptions, RoomId, ShardId};
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::copies::Copies;
use crate::edge::{ConnId, EdgeEvent, EdgeHub};
use crate::load::LoadMeter;
use crate::lock::lock;
use crate::metrics::Metrics;
use crate::peer::wire::PeerMsg;
use crate::peer::{PeerHandler, Peers};
use crate::replication::{ChangeFor, FollowerRef};
use crate::room::RoomCommand;
use crate::rooms::{Fanout, Rooms};
use crate::shard_load::ShardMeter;
use crate::snowflake::Snowflake;

mod custody;
mod dispatch;
mod gaps;
mod handoffs;
mod inherited;
mod outgoing;
mod replicas;
mod routing;
mod settings;
mod status;
mod tables;

pub use routing::MAX_HOPS;
pub use settings::{ConnectionLimits, HandoffSettings, NodeSettings};

use handoffs::{Handoffs, watch_deadlines};
use inherited::Inherited;

/// How long a command routed by a newer table than ours waits for ours to catch up.
const TABLE_CATCH_UP: Duration = Duration::from_secs(3);

/// The shared state of a running node.
pub struct NodeState {
    /// Validated settings.
    pub settings: NodeSettings,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Local delivery.
    pub hub: Arc<EdgeHub>,
    /// Rooms owned here.
    pub rooms: Arc<Rooms>,
    /// Who may connect.
    pub auth: Authenticator,
    /// Cancelled when the node starts shutting down: connections say `reconnect` and close.
    pub shutdown: CancellationToken,
    /// Cancelled when the node is asked to stop (SIGTERM), before `shutdown`: it stops being
    /// ready and says `terminating` in `/status` while it hands its shards off.
    pub exiting: CancellationToken,
    /// Woken when a table is applied or a hand-off ends: what a stopping node waits on.
    pub(crate) progress: tokio::sync::Notify,
    /// Links to the other nodes (`None` for a node alone).
    pub peers: Option<Arc<Peers>>,
    /// Owned here, lent weakly to the peer layer (which must not keep the node alive).
    peer_handler: Option<Arc<dyn PeerHandler>>,
    table: RwLock<Arc<AssignmentTable>>,
    handoffs: Mutex<Handoffs>,
    /// Copies of the rooms of the shards this node follows.
    copies: Mutex<Copies>,
    /// Rates for `/status`'s load (autoscaling and placement read them).
    load: LoadMeter,
    /// Per-shard rates for `/status`'s load (load-aware placement reads them).
    shard_load: ShardMeter,
    /// Tables are applied one at a time, in order.
    applying: tokio::sync::Mutex<()>,
    /// Whole-shard copies to followers go one at a time (see [`replicas`]).
    follower_syncs: tokio::sync::Mutex<()>,
    /// Shards the previous process owned (see [`inherited`]).
    inherited: Mutex<Inherited>,
    /// This node's `member_since` in the last table that listed it: a change means it was out
    /// of the cluster in between (see `tables`).
    member_since: Mutex<Option<u64>>,
    next_conn: AtomicU64,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("name", &self.settings.name)
            .field("epoch", &self.table().epoch)
            .finish()
    }
}

/// The room actors' way out: events to edges, late commands to new owners.
#[derive(Debug)]
struct Outlet {
    node: Weak<NodeState>,
}

impl Fanout for Outlet {
    fn deliver(&self, node: &NodeName, event: EdgeEvent) {
        if let Some(state) = self.node.upgrade() {
            state.deliver(node, event);
        }
    }

    fn forward(&self, room: RoomId, command: RoomCommand) {
        if let Some(state) = self.node.upgrade() {
            state.forward(room, command, 0);
        }
    }

    fn can_take(&self, nodes: &mut dyn Iterator<Item = &NodeName>) -> bool {
        self.node
            .upgrade()
            .is_none_or(|state| state.can_take(nodes))
    }

    fn follower(&self, shard: ShardId) -> Option<FollowerRef> {
        self.node.upgrade()?.follower_of(shard)
    }

    fn deposed(&self, shard: ShardId) -> bool {
        self.node
            .upgrade()
            .is_some_and(|state| state.deposed_from(shard))
    }

    fn replicate(&self, to: &NodeName, change: ChangeFor) -> bool {
        self.node
            .upgrade()
            .is_some_and(|state| state.replicate(to, change))
    }
}

struct Handler(Weak<NodeState>);

impl PeerHandler for Handler {
    fn on_message(&self, from: &NodeName, msg: PeerMsg) {
        if let Some(state) = self.0.upgrade() {
            state.on_peer_message(from, msg);
        }
    }

    fn on_bounce(&self, to: &NodeName, msg: &PeerMsg) {
        if let Some(state) = self.0.upgrade() {
            state.on_bounce(to, msg);
        }
    }

    fn on_restart(&self, peer: &NodeName) {
        if let Some(state) = self.0.upgrade() {
            state.on_peer_restarted(peer);
        }
    }
}

/// The window `/status` load rates are averaged over: long enough to smooth a burst, short
/// enough that an autoscaler sees a change within a few of the operator's passes.
const LOAD_WINDOW: Duration = Duration::from_secs(10);

impl NodeState {
    /// A node alone: it owns every shard itself.
    pub fn new(settings: NodeSettings, auth: Authenticator) -> Arc<NodeState> {
        let table = solo_table(&settings);
        let state = Self::build(settings, auth, None, table);
        lock(&state.handoffs).serving = (0..state.settings.shards).map(ShardId).collect();
        // Alone, it has no source and no predecessor's table.
        state.inherit(None);
        state
    }

    /// A cluster member: it owns nothing until the first assignment table arrives.
    pub fn clustered(
        settings: NodeSettings,
        auth: Authenticator,
        peers: Arc<Peers>,
    ) -> Arc<NodeState> {
        let table = AssignmentTable::empty(settings.shards);
        let state = Self::build(settings, auth, Some(peers.clone()), table);
        if let Some(handler) = &state.peer_handler {
            peers.set_handler(Arc::downgrade(handler));
        }
        tokio::spawn(watch_deadlines(Arc::downgrade(&state)).in_current_span());
        state
    }

    fn build(
        settings: NodeSettings,
        auth: Authenticator,
        peers: Option<Arc<Peers>>,
        table: AssignmentTable,
    ) -> Arc<NodeState> {
        // Solo nodes have no peers and no predecessor that peers could remember.
        let peers_incarnation = peers
            .as_ref()
            .map_or_else(rand::random::<u64>, |peers| peers.incarnation());
        Arc::new_cyclic(|weak| {
            let metrics = Arc::new(Metrics::default());
            let hub = Arc::new(EdgeHub::new(metrics.clone()));
            let rooms = Rooms::new(
                settings.rooms.clone(),
                settings.shards,
                Arc::new(Outlet { node: weak.clone() }),
                Arc::new(Snowflake::new(settings.node_id)),
                metrics.clone(),
            );
            let copies = Mutex::new(Copies::new(
                settings.shards,
                settings.rooms.history_limit,
                settings.rooms.remembered,
            ));
            let peer_handler: Option<Arc<dyn PeerHandler>> = peers
                .is_some()
                .then(|| Arc::new(Handler(weak.clone())) as Arc<dyn PeerHandler>);
            NodeState {
                settings,
                peer_handler,
                load: LoadMeter::new(LOAD_WINDOW),
                shard_load: ShardMeter::new(LOAD_WINDOW),
                metrics,
                hub,
                rooms,
                auth,
                shutdown: CancellationToken::new(),
                exiting: CancellationToken::new(),
                progress: tokio::sync::Notify::new(),
                peers,
                table: RwLock::new(Arc::new(table)),
                handoffs: Mutex::default(),
                copies,
                applying: tokio::sync::Mutex::new(()),
                follower_syncs: tokio::sync::Mutex::new(()),
                inherited: Mutex::default(),
                member_since: Mutex::default(),
                next_conn: AtomicU64::new(conn_base(peers_incarnation)),
            }
        })
    }

    /// A fresh connection id.
    /// A connection id no other process of this node has used: a restarted process must not
    /// reuse its predecessor's ids, or a new connection would inherit a membership a room's
    /// copy still holds for an old one (and post without joining).
    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// The assignment table in force.
    pub fn table(&self) -> Arc<AssignmentTable> {
        self.table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// This node's name.
    pub fn me(&self) -> &NodeName {
        &self.settings.name
    }
}

/// The table of a node that is alone: every shard is its own.
fn solo_table(settings: &NodeSettings) -> AssignmentTable {
    let info = NodeInfo::new(settings.peer_addr.clone());
    let membership = Membership {
        ready: BTreeMap::from([(settings.name.clone(), info)]),
        draining: BTreeSet::new(),
    };
    shard::plan(
        &AssignmentTable::empty(settings.shards),
        &membership,
        &PlanOptions::default(),
    )
}

#[cfg(test)]
mod custody_tests;
#[cfg(test)]
mod gap_tests;
#[cfg(test)]
mod handoff_tests;
#[cfg(test)]
mod inherited_tests;
#[cfg(test)]
mod membership_tests;
#[cfg(test)]
mod order_tests;
#[cfg(test)]
mod sync_tests;

/// Where a process's connection ids start: one of 2^20 bases drawn from the process's
/// incarnation, each with room for 2^40 connections.
fn conn_base(incarnation: u64) -> u64 {
    (incarnation >> 44).max(1) << 40
}
