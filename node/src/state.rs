//! What one node knows and shares between its connections: its name, the assignment table,
//! its edge hub, the rooms it owns, its limits and counters.
//!
//! Routing lives here: a room operation goes to the room's owner as the current table names
//! it. A node alone owns every shard; peers and hand-off plug in behind [`NodeState::route`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use shard::{AssignmentTable, Membership, NodeInfo, NodeName, PlanOptions, RoomId};
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::edge::{ConnId, EdgeEvent, EdgeHub};
use crate::metrics::Metrics;
use crate::room::RoomCommand;
use crate::rooms::{Fanout, RoomSettings, Rooms, RouteError};
use crate::snowflake::Snowflake;

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
}

/// The shared state of a running node.
#[derive(Debug)]
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
    table: RwLock<Arc<AssignmentTable>>,
    next_conn: AtomicU64,
}

/// Delivers room events to edges; a node alone is its own only edge.
#[derive(Debug)]
struct LocalFanout {
    me: NodeName,
    hub: Arc<EdgeHub>,
}

impl Fanout for LocalFanout {
    fn deliver(&self, node: &NodeName, event: EdgeEvent) {
        if node == &self.me {
            self.hub.deliver(event);
        } else {
            tracing::warn!(%node, "event for an edge node this node has no link to");
        }
    }
}

impl NodeState {
    /// A node that owns every shard itself.
    pub fn new(settings: NodeSettings, auth: Authenticator) -> Arc<NodeState> {
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(EdgeHub::new(metrics.clone()));
        let fanout = Arc::new(LocalFanout {
            me: settings.name.clone(),
            hub: hub.clone(),
        });
        let rooms = Rooms::new(
            settings.rooms.clone(),
            fanout,
            Arc::new(Snowflake::new(settings.node_id)),
            metrics.clone(),
        );
        let table = solo_table(&settings);
        Arc::new(NodeState {
            settings,
            metrics,
            hub,
            rooms,
            auth,
            shutdown: CancellationToken::new(),
            table: RwLock::new(Arc::new(table)),
            next_conn: AtomicU64::new(1),
        })
    }

    /// A fresh connection id.
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

    /// Send a room operation to the room's owner.
    ///
    /// # Errors
    /// [`RouteError`] when the owner's queue is full or the owner cannot be reached.
    pub async fn route(&self, room: &RoomId, command: RoomCommand) -> Result<(), RouteError> {
        let table = self.table();
        match table.owner_of_room(room) {
            Some(owner) if owner == &self.settings.name => self.rooms.send(room, command).await,
            _ => Err(RouteError::Unavailable),
        }
    }
}

/// The table of a node that is alone: every shard is its own.
fn solo_table(settings: &NodeSettings) -> AssignmentTable {
    let info = NodeInfo {
        peer_addr: settings.peer_addr.clone(),
        client_addr: None,
    };
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
