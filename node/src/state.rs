//! What one node knows and shares between its connections, and how it acts as a member of a
//! cluster: routing room operations to owners, applying assignment tables, and the two sides
//! of a hand-off.
//!
//! Routing: an edge sends a room operation to the owner its table names. An owner that is
//! receiving the room's shard buffers it until the snapshot arrives; one that handed the shard
//! away forwards it to the new owner. A forward counts hops, so two nodes whose tables
//! disagree for a moment cannot bounce a command forever: past [`MAX_HOPS`] the sender gets
//! `room_unavailable`. Every path ends in a delivery or an error frame to the sender.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use shard::{
    AssignmentTable, Membership, Move, NodeInfo, NodeLoad, NodeName, NodeStatus, PlanOptions,
    RoomId, ShardId,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::edge::{ConnId, EdgeEvent, EdgeHub};
use crate::load::LoadMeter;
use crate::metrics::Metrics;
use crate::peer::wire::PeerMsg;
use crate::peer::{PeerHandler, Peers};
use crate::protocol::{self, ErrorCode};
use crate::room::{MemberKey, RoomCommand, RoomSnapshot};
use crate::rooms::{Fanout, Refused, RoomSettings, Rooms, RouteError};
use crate::shard_load::ShardMeter;
use crate::snowflake::Snowflake;

/// Forwards a command may take before it is answered with `room_unavailable`.
pub const MAX_HOPS: u8 = 4;

/// How long a command routed by a newer table than ours waits for ours to catch up.
const TABLE_CATCH_UP: Duration = Duration::from_secs(3);

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

/// A shard this node is receiving: commands wait here for the snapshot.
#[derive(Debug)]
struct Incoming {
    from: NodeName,
    buffer: VecDeque<(RoomId, RoomCommand)>,
    /// When this node applied the table that moves the shard here (the hand-off histogram's
    /// start).
    started: Instant,
    deadline: Instant,
    /// The snapshot is late: senders are answered at once instead of waiting.
    overdue: bool,
}

#[derive(Debug, Default)]
struct Handoffs {
    incoming: HashMap<ShardId, Incoming>,
    /// Shards handed away whose snapshot the new owner has not confirmed yet.
    outgoing: HashMap<ShardId, NodeName>,
    /// Moves of the current table this node finished as the source, until the table drops them.
    done: Vec<Move>,
    /// Commands from peers that already route by a newer table than ours.
    early: Vec<Early>,
    /// Snapshots that arrived before the table that announces their move.
    early_snapshots: Vec<EarlySnapshot>,
}

/// A snapshot waiting for this node's table to reach `epoch`.
#[derive(Debug)]
struct EarlySnapshot {
    from: NodeName,
    shard: ShardId,
    epoch: u64,
    rooms: Vec<RoomSnapshot>,
}

/// A command that waits for this node's table to reach `epoch`.
#[derive(Debug)]
struct Early {
    epoch: u64,
    deadline: Instant,
    room: RoomId,
    command: RoomCommand,
    hops: u8,
}

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
    /// Rates for `/status`'s load (autoscaling and placement read them).
    load: LoadMeter,
    /// Per-shard rates for `/status`'s load (load-aware placement reads them).
    shard_load: ShardMeter,
    /// Tables are applied one at a time, in order.
    applying: tokio::sync::Mutex<()>,
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
}

/// The window `/status` load rates are averaged over: long enough to smooth a burst, short
/// enough that an autoscaler sees a change within a few of the operator's passes.
const LOAD_WINDOW: Duration = Duration::from_secs(10);

/// A count as the `u32` `/status` carries (saturating; nothing here comes near it).
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl NodeState {
    /// A node alone: it owns every shard itself.
    pub fn new(settings: NodeSettings, auth: Authenticator) -> Arc<NodeState> {
        let table = solo_table(&settings);
        Self::build(settings, auth, None, table)
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
        tokio::spawn(watch_handoff_deadlines(Arc::downgrade(&state)));
        state
    }

    fn build(
        settings: NodeSettings,
        auth: Authenticator,
        peers: Option<Arc<Peers>>,
        table: AssignmentTable,
    ) -> Arc<NodeState> {
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
                applying: tokio::sync::Mutex::new(()),
                next_conn: AtomicU64::new(1),
            }
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

    fn me(&self) -> &NodeName {
        &self.settings.name
    }

    /// Send a room operation from a local client to the room's owner.
    ///
    /// # Errors
    /// [`RouteError`] when the owner cannot take it; the caller answers the client.
    pub async fn route(&self, room: &RoomId, command: RoomCommand) -> Result<(), RouteError> {
        let table = self.table();
        match table.owner_of_room(room) {
            None => Err(RouteError::Unavailable),
            Some(owner) if owner == self.me() => {
                let Some(command) = self.buffer_if_incoming(room, command) else {
                    return Ok(());
                };
                match self.rooms.send(room, command).await {
                    Ok(()) => Ok(()),
                    Err(Refused {
                        error: RouteError::Moved,
                        command,
                    }) => {
                        self.forward(room.clone(), command, 0);
                        Ok(())
                    }
                    Err(refused) => Err(refused.error),
                }
            }
            Some(owner) => self
                .send_command(owner, room.clone(), command, 0)
                .map_err(|_| RouteError::Unavailable),
        }
    }

    /// A command as its owner receives it from a peer; errors are answered to the member.
    fn accept_as_owner(&self, room: RoomId, command: RoomCommand, hops: u8) {
        let table = self.table();
        if table.owner_of_room(&room) != Some(self.me()) {
            return self.forward(room, command, hops);
        }
        let Some(command) = self.buffer_if_incoming(&room, command) else {
            return;
        };
        match self.rooms.try_send(&room, command) {
            Ok(()) => {}
            Err(Refused {
                error: RouteError::Moved,
                command,
            }) => self.forward(room, command, hops),
            Err(Refused { error, command }) => self.answer_error(&command, error, &room),
        }
    }

    /// Buffer `command` when its shard is on its way to this node (answering its sender when
    /// the buffer is full or the hand-off overdue); otherwise hand it back.
    fn buffer_if_incoming(&self, room: &RoomId, command: RoomCommand) -> Option<RoomCommand> {
        let shard = shard::shard_of(room, self.settings.shards);
        let mut handoffs = lock(&self.handoffs);
        let Some(incoming) = handoffs.incoming.get_mut(&shard) else {
            return Some(command);
        };
        if incoming.overdue || incoming.buffer.len() >= self.settings.handoff.buffer {
            drop(handoffs);
            self.answer_error(&command, RouteError::Unavailable, room);
            return None;
        }
        incoming.buffer.push_back((room.clone(), command));
        None
    }

    /// Queue the commands a hand-off buffered to their rooms, in order. Called under the
    /// hand-off lock, right after the shard is installed, so that nothing routed meanwhile gets
    /// ahead of them; what is not taken here is returned for [`Self::settle_refused`], to be
    /// forwarded or answered once the lock is released.
    fn replay(&self, buffer: VecDeque<(RoomId, RoomCommand)>) -> Vec<(RoomId, Refused)> {
        let table = self.table();
        buffer
            .into_iter()
            .filter_map(|(room, command)| {
                if table.owner_of_room(&room) != Some(self.me()) {
                    let error = RouteError::Moved;
                    return Some((room, Refused { error, command }));
                }
                let refused = self.rooms.try_send(&room, command).err()?;
                Some((room, refused))
            })
            .collect()
    }

    /// Forward the commands [`Self::replay`] could not queue here, or answer their senders.
    fn settle_refused(&self, refused: Vec<(RoomId, Refused)>) {
        for (room, Refused { error, command }) in refused {
            match error {
                RouteError::Moved => self.forward(room, command, 0),
                error => self.answer_error(&command, error, &room),
            }
        }
    }

    /// Send `command` on to the owner the current table names.
    fn forward(&self, room: RoomId, command: RoomCommand, hops: u8) {
        let table = self.table();
        let refused = match table.owner_of_room(&room) {
            Some(owner) if owner != self.me() && hops < MAX_HOPS => {
                self.send_command(owner, room.clone(), command, hops + 1)
            }
            _ => Err(command),
        };
        if let Err(command) = refused {
            self.answer_error(&command, RouteError::Unavailable, &room);
        }
    }

    /// Queue `command` for `owner`; the command comes back when it cannot be sent.
    fn send_command(
        &self,
        owner: &NodeName,
        room: RoomId,
        command: RoomCommand,
        hops: u8,
    ) -> Result<(), RoomCommand> {
        let Some(peers) = &self.peers else {
            return Err(command);
        };
        let epoch = self.table().epoch;
        let msg = PeerMsg::Command {
            room,
            command,
            hops,
            epoch,
        };
        match peers.send(owner, msg) {
            Ok(())
            | Err(PeerMsg::Event(_) | PeerMsg::Snapshot { .. } | PeerMsg::SnapshotAck { .. }) => {
                Ok(())
            }
            Err(PeerMsg::Command { command, .. }) => Err(command),
        }
    }

    /// Deliver an event to `node`'s edge: here, or over the link.
    fn deliver(&self, node: &NodeName, event: EdgeEvent) {
        if node == self.me() {
            self.hub.deliver(event);
        } else if let Some(peers) = &self.peers
            && peers.send(node, PeerMsg::Event(event)).is_err()
        {
            self.metrics.peer_drops.inc();
            tracing::warn!(%node, "peer outbox full: an event was dropped");
        }
    }

    /// Answer the member behind `command` with an error frame (nothing when there is none).
    fn answer_error(&self, command: &RoomCommand, error: RouteError, room: &RoomId) {
        let Some(member) = command.member() else {
            return;
        };
        let code = match error {
            RouteError::Overloaded => ErrorCode::Overloaded,
            RouteError::Unavailable | RouteError::Moved => ErrorCode::RoomUnavailable,
        };
        let frame = protocol::error_frame(code, &error.to_string(), command.cid(), Some(room));
        self.deliver_to_member(member, frame);
        if member.node == *self.me() {
            self.metrics.error(code);
        }
    }

    fn deliver_to_member(&self, member: &MemberKey, frame: String) {
        self.deliver(
            &member.node,
            EdgeEvent::ToConn {
                conn: member.conn,
                frame: frame.into(),
            },
        );
    }

    fn on_peer_message(&self, from: &NodeName, msg: PeerMsg) {
        match msg {
            PeerMsg::Command {
                room,
                command,
                hops,
                epoch,
            } => {
                // The sender knows a newer table: decide with that one, not ours. The epoch is
                // read under the lock that `apply_table` takes after swapping tables, so a
                // command parked here is always seen by the next table's flush.
                let mut handoffs = lock(&self.handoffs);
                if epoch > self.table().epoch {
                    handoffs.early.push(Early {
                        epoch,
                        deadline: Instant::now() + TABLE_CATCH_UP,
                        room,
                        command,
                        hops,
                    });
                    return;
                }
                drop(handoffs);
                self.accept_as_owner(room, command, hops)
            }
            PeerMsg::Event(event) => self.hub.deliver(event),
            PeerMsg::Snapshot {
                shard,
                epoch,
                rooms,
            } => self.on_snapshot(from, shard, epoch, rooms),
            PeerMsg::SnapshotAck { shard, epoch } => {
                let mut handoffs = lock(&self.handoffs);
                if handoffs.outgoing.remove(&shard).is_some() {
                    handoffs.done.push(Move {
                        shard,
                        from: self.me().clone(),
                        to: from.clone(),
                    });
                    tracing::info!(%shard, to = %from, epoch, "hand-off confirmed");
                }
                drop(handoffs);
                self.progress.notify_waiters();
            }
        }
    }

    fn on_snapshot(&self, from: &NodeName, shard: ShardId, epoch: u64, rooms: Vec<RoomSnapshot>) {
        let incoming = {
            let mut handoffs = lock(&self.handoffs);
            let expected = handoffs
                .incoming
                .get(&shard)
                .is_some_and(|i| &i.from == from);
            if !expected && epoch > self.table().epoch {
                // The source applied the move's table before this node did: keep the snapshot
                // until that table arrives here (read under the lock `apply_table` takes).
                handoffs.early_snapshots.push(EarlySnapshot {
                    from: from.clone(),
                    shard,
                    epoch,
                    rooms,
                });
                return;
            }
            let incoming = if expected {
                handoffs.incoming.remove(&shard)
            } else {
                None
            };
            match incoming {
                Some(incoming) => {
                    // Installed and replayed before the lock is released: a command routed
                    // here in between would otherwise start a room afresh (from seq 0) or get
                    // ahead of the commands that waited for the snapshot.
                    let count = rooms.len();
                    self.rooms.install(shard, rooms);
                    let refused = self.replay(incoming.buffer);
                    Some((incoming.started, count, refused))
                }
                None => None,
            }
        };
        match incoming {
            Some((started, count, refused)) => {
                self.settle_refused(refused);
                let took = started.elapsed();
                tracing::info!(%shard, %from, rooms = count, ?took, "shard received");
                self.metrics.handoff_completed(shard, took);
            }
            None => {
                tracing::warn!(%shard, %from, epoch, "a snapshot nobody waits for (the move was cancelled)")
            }
        }
        if let Some(peers) = &self.peers {
            let _ = peers.send(from, PeerMsg::SnapshotAck { shard, epoch });
        }
        self.progress.notify_waiters();
    }

    fn on_bounce(&self, to: &NodeName, msg: &PeerMsg) {
        match msg {
            PeerMsg::Command { room, command, .. } => {
                self.answer_error(command, RouteError::Unavailable, room);
            }
            PeerMsg::Event(_) => {
                self.metrics.peer_drops.inc();
            }
            PeerMsg::Snapshot { shard, .. } => {
                tracing::error!(%shard, %to, "a snapshot could not be delivered: the target left or restarted");
            }
            PeerMsg::SnapshotAck { .. } => {}
        }
    }

    /// Apply a new assignment table: start, receive, hand off and drop shards as it says.
    /// Returns false when the table is not newer than the one in force (it is ignored).
    pub async fn apply_table(self: &Arc<Self>, new: AssignmentTable) -> bool {
        let _one_at_a_time = self.applying.lock().await;
        let old = self.table();
        if new.epoch <= old.epoch && !(old.epoch == 0 && old.nodes.is_empty()) {
            return false;
        }
        if new.shards != self.settings.shards {
            tracing::error!(
                table = new.shards,
                node = self.settings.shards,
                "table has a different shard count; ignored"
            );
            return false;
        }
        let me = self.me().clone();
        let change = shard::transition(&old, &new, &me);
        let abandoned = shard::abandoned_handoffs(&old, &new, &me);
        {
            let mut handoffs = lock(&self.handoffs);
            let started = Instant::now();
            let deadline = started + self.settings.handoff.timeout;
            for (shard, from) in &change.gained_by_handoff {
                handoffs.incoming.insert(
                    *shard,
                    Incoming {
                        from: from.clone(),
                        buffer: VecDeque::new(),
                        started,
                        deadline,
                        overdue: false,
                    },
                );
            }
            handoffs.done.retain(|m| new.moves.contains(m));
            handoffs
                .outgoing
                .retain(|shard, to| new.move_of(*shard).is_some_and(|m| &m.to == to));
        }
        let new = Arc::new(new);
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = new.clone();
        if let Some(peers) = &self.peers {
            peers.update(&new);
        }
        for (shard, from) in abandoned {
            let refused = {
                let mut handoffs = lock(&self.handoffs);
                let incoming = handoffs.incoming.remove(&shard);
                // A snapshot already received is not abandoned: the source handed it off and
                // left before the operator cleared the move. Installed and replayed under the
                // lock, as in `on_snapshot`.
                if incoming.is_some() && new.owner(shard) == Some(&me) {
                    tracing::warn!(%shard, %from, "hand-off abandoned (source gone): starting the shard empty");
                    self.rooms.install(shard, Vec::new());
                }
                self.replay(incoming.map(|i| i.buffer).unwrap_or_default())
            };
            self.settle_refused(refused);
        }
        for shard in &change.gained_fresh {
            self.rooms.install(*shard, Vec::new());
        }
        let snapshots: Vec<EarlySnapshot> = {
            let mut handoffs = lock(&self.handoffs);
            let (ready, later) = std::mem::take(&mut handoffs.early_snapshots)
                .into_iter()
                .partition(|e| e.epoch <= new.epoch);
            handoffs.early_snapshots = later;
            ready
        };
        for early in snapshots {
            self.on_snapshot(&early.from, early.shard, early.epoch, early.rooms);
        }
        let ready: Vec<Early> = {
            let mut handoffs = lock(&self.handoffs);
            let (ready, later) = std::mem::take(&mut handoffs.early)
                .into_iter()
                .partition(|e| e.epoch <= new.epoch);
            handoffs.early = later;
            ready
        };
        for early in ready {
            self.accept_as_owner(early.room, early.command, early.hops);
        }
        for (shard, to) in change.lost {
            let handed = new
                .move_of(shard)
                .is_some_and(|m| m.from == me && m.to == to);
            tokio::spawn(self.clone().hand_off(shard, to, handed, new.epoch));
        }
        for shard in change.lost_unassigned {
            let rooms = self.rooms.clone();
            tokio::spawn(async move {
                rooms.freeze(shard).await;
            });
        }
        for node in old.nodes.keys().filter(|n| !new.nodes.contains_key(*n)) {
            self.rooms
                .tell_all(&RoomCommand::DropNode { node: node.clone() });
        }
        self.rejoin_orphaned_members(&old, &new).await;
        tracing::info!(
            epoch = new.epoch,
            owned = new.shards_of(&me).len(),
            "assignment table applied"
        );
        self.progress.notify_waiters();
        true
    }

    /// Rooms whose owner vanished (no hand-off) restart empty on a new owner: re-join this
    /// edge's members there, so each is told the room's new state with a `joined`.
    async fn rejoin_orphaned_members(&self, old: &AssignmentTable, new: &AssignmentTable) {
        for (room, members) in self.hub.rooms_with_members() {
            let shard = new.shard_of(&room);
            let (before, after) = (old.owner(shard), new.owner(shard));
            let orphaned = before != after
                && after.is_some()
                && new.move_of(shard).is_none()
                && before.is_none_or(|o| !new.nodes.contains_key(o));
            if !orphaned {
                continue;
            }
            for member in members {
                let command = RoomCommand::Join {
                    member: MemberKey {
                        node: self.me().clone(),
                        conn: member.id,
                    },
                    user: member.user.clone(),
                    since: None,
                };
                if let Err(e) = self.route(&room, command).await {
                    tracing::warn!(%room, error = %e, "could not re-join a member to the room's new owner");
                }
            }
        }
    }

    /// The `/status` report.
    pub fn status(&self) -> NodeStatus {
        let table = self.table();
        let now = Instant::now();
        let handoffs = lock(&self.handoffs);
        NodeStatus {
            node: self.me().to_string(),
            epoch: table.epoch,
            shards_owned: count(table.shards_of(self.me()).len()),
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

    /// Whether this node has nothing left to hand off: see [`shard::handed_off`].
    pub fn handed_off(&self) -> bool {
        let in_progress = {
            let handoffs = lock(&self.handoffs);
            handoffs.incoming.len() + handoffs.outgoing.len()
        };
        shard::handed_off(&self.table(), self.me(), in_progress)
    }

    /// Whether no hand-off is in progress here, either way.
    fn handoffs_idle(&self) -> bool {
        let handoffs = lock(&self.handoffs);
        handoffs.incoming.is_empty() && handoffs.outgoing.is_empty()
    }

    /// Answer senders waiting on overdue hand-offs or on a table that never came.
    fn expire_handoffs(&self, now: Instant) {
        let mut expired = Vec::new();
        {
            let mut handoffs = lock(&self.handoffs);
            let (late, waiting) = std::mem::take(&mut handoffs.early)
                .into_iter()
                .partition(|e| now >= e.deadline);
            handoffs.early = waiting;
            expired.extend(late.into_iter().map(|e: Early| (e.room, e.command)));
            for (shard, incoming) in handoffs.incoming.iter_mut() {
                if !incoming.overdue && now >= incoming.deadline {
                    incoming.overdue = true;
                    tracing::warn!(%shard, from = %incoming.from, "hand-off overdue: answering waiting senders");
                    expired.extend(incoming.buffer.drain(..));
                }
            }
        }
        for (room, command) in expired {
            self.answer_error(&command, RouteError::Unavailable, &room);
        }
    }
}

async fn watch_handoff_deadlines(node: Weak<NodeState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        if node.shutdown.is_cancelled() && node.handoffs_idle() {
            return;
        }
        node.expire_handoffs(Instant::now());
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

mod outgoing;

#[cfg(test)]
mod handoff_tests;
