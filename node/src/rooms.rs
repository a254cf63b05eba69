//! The room actors this node owns: one task per active room, started on first use and
//! passivated when idle and empty.
//!
//! The registry hands out queue permits under its lock and an actor passivates only under the
//! same lock when no permit is outstanding and its queue is empty, so a command can never be
//! accepted by an actor that is about to disappear. A passivated room releases its members and
//! history; its last `seq` goes to [`RestingSeqs`], a bounded memory that guarantees the room's
//! sequence never goes backwards even when it forgets the room (see [`crate::resting`]). The
//! registry itself holds running rooms only, so a client that joins and leaves any number of
//! room names leaves nothing behind.
//!
//! Hand-off, old owner's side: [`Rooms::freeze`] closes a shard to new commands under the same
//! lock, then asks every room of the shard for its snapshot through the room's own queue, so
//! everything queued before the freeze is applied first. After that the actor forwards
//! whatever still reaches it to the new owner. New owner's side: [`Rooms::install`] starts the
//! rooms from their snapshots.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shard::{NodeName, RoomId, ShardId};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::edge::EdgeEvent;
use crate::metrics::Metrics;
use crate::resting::RestingSeqs;
use crate::room::{Room, RoomCommand, RoomSnapshot};
use crate::shard_load::ShardCounters;
use crate::shrink;
use crate::snowflake::{Snowflake, unix_ms};

/// Where a room actor sends what it produces: events for edge nodes, and commands that reached
/// it after its shard moved away.
pub trait Fanout: Send + Sync + std::fmt::Debug + 'static {
    /// Deliver one event to `node`'s edge, without waiting.
    fn deliver(&self, node: &NodeName, event: EdgeEvent);

    /// Send a command on to the room's current owner (the room moved away from this node).
    fn forward(&self, room: RoomId, command: RoomCommand);

    /// Whether every one of `nodes`' edges can take another event now. A message is refused
    /// with `overloaded` before it gets a seq when one of its room's nodes cannot.
    fn can_take(&self, _nodes: &mut dyn Iterator<Item = &NodeName>) -> bool {
        true
    }
}

/// What a room actor's queue carries.
#[derive(Debug)]
enum ActorMsg {
    /// A request from a member, with when the registry received it (the start of the
    /// send-to-fan-out histogram).
    Command(RoomCommand, Instant),
    /// Snapshot the room for a hand-off, then forward everything after.
    HandOff(oneshot::Sender<RoomSnapshot>),
}

/// Room actor settings.
#[derive(Debug, Clone)]
pub struct RoomSettings {
    /// Messages of history kept per room.
    pub history_limit: usize,
    /// Capacity of each room's command queue.
    pub queue: usize,
    /// How long an empty room stays in memory after its last command.
    pub passivate_after: Duration,
    /// How long a sender waits for room in a full queue before it is told `overloaded`.
    pub send_timeout: Duration,
    /// Passivated rooms whose last seq is remembered exactly (see [`crate::resting`]).
    pub remembered: usize,
}

/// Why a command could not be queued to a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The room's queue stayed full for the whole send timeout.
    #[error("room is overloaded, retry later")]
    Overloaded,
    /// The room cannot be reached right now (its owner is elsewhere and unreachable).
    #[error("room is unavailable, retry later")]
    Unavailable,
    /// The room's shard is being handed away from this node: send it to the new owner.
    #[error("room moved to another node")]
    Moved,
}

/// A command a room did not take, handed back with the reason, so that the caller can forward
/// it or answer its sender without having kept a copy.
#[derive(Debug)]
pub struct Refused {
    /// Why the room did not take it.
    pub error: RouteError,
    /// The command, untouched.
    pub command: RoomCommand,
}

/// What a shard hands to its new owner: its rooms' snapshots and its floor.
#[derive(Debug)]
pub struct FrozenShard {
    /// The highest seq this node forgot in the shard (see [`crate::resting`]): a room of it
    /// with nothing in `rooms` must start above it on the new owner.
    pub floor: u64,
    /// Every room of the shard still known here, running or passivated.
    pub rooms: Vec<RoomSnapshot>,
}

/// A running room.
#[derive(Debug)]
struct Slot {
    /// The actor's queue.
    tx: mpsc::Sender<ActorMsg>,
    /// The room's last seq, written by its actor, read when it passivates.
    seq: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Registry {
    /// Running rooms only: a passivated room leaves only its seq, in `resting`.
    slots: HashMap<RoomId, Slot>,
    /// The last seq of rooms that do not run here, bounded.
    resting: RestingSeqs,
    /// Shards being handed away: no new command gets into their rooms.
    frozen: HashSet<ShardId>,
}

/// How many entries the room registries hold, for tests and `/metrics`: all of them return to
/// their baseline once clients have left and the rooms passivated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegistrySizes {
    /// Room actors running (including ones only forwarding to a new owner).
    pub running: usize,
    /// Passivated rooms whose seq is remembered exactly.
    pub remembered: usize,
}

/// All rooms this node owns.
#[derive(Debug)]
pub struct Rooms {
    registry: Mutex<Registry>,
    shards: u32,
    settings: RoomSettings,
    fanout: Arc<dyn Fanout>,
    ids: Arc<Snowflake>,
    metrics: Arc<Metrics>,
    /// Per-shard deliveries and members, for `/status`'s shard load.
    counters: ShardCounters,
    tracker: TaskTracker,
}

type Reservation = Result<mpsc::OwnedPermit<ActorMsg>, mpsc::Sender<ActorMsg>>;

impl Rooms {
    /// An empty registry for a cluster of `shards` shards.
    pub fn new(
        settings: RoomSettings,
        shards: u32,
        fanout: Arc<dyn Fanout>,
        ids: Arc<Snowflake>,
        metrics: Arc<Metrics>,
    ) -> Arc<Rooms> {
        Arc::new(Rooms {
            registry: Mutex::new(Registry {
                slots: HashMap::new(),
                resting: RestingSeqs::new(shards, settings.remembered),
                frozen: HashSet::new(),
            }),
            shards,
            settings,
            fanout,
            ids,
            metrics,
            counters: ShardCounters::new(shards),
            tracker: TaskTracker::new(),
        })
    }

    /// The per-shard load counters the room actors keep.
    pub fn shard_counters(&self) -> &ShardCounters {
        &self.counters
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn shard(&self, room: &RoomId) -> ShardId {
        shard::shard_of(room, self.shards)
    }

    /// Queue a command for `room`, starting its actor if it is not running; wait for room in a
    /// full queue at most the send timeout.
    ///
    /// # Errors
    /// [`Refused`] with [`RouteError::Overloaded`] when the queue stays full,
    /// [`RouteError::Moved`] when the room's shard is being handed away.
    pub async fn send(
        self: &Arc<Self>,
        room: &RoomId,
        command: RoomCommand,
    ) -> Result<(), Refused> {
        let received = Instant::now();
        let tx = match self.reserve(room) {
            Ok(Ok(permit)) => {
                permit.send(ActorMsg::Command(command, received));
                return Ok(());
            }
            Ok(Err(tx)) => tx,
            Err(error) => return Err(Refused { error, command }),
        };
        let error = match tokio::time::timeout(self.settings.send_timeout, tx.reserve_owned()).await
        {
            Ok(Ok(permit)) => {
                permit.send(ActorMsg::Command(command, received));
                return Ok(());
            }
            Ok(Err(_)) => RouteError::Unavailable,
            Err(_) => RouteError::Overloaded,
        };
        Err(Refused { error, command })
    }

    /// Queue a command without waiting (peer links must never stall on one room).
    ///
    /// # Errors
    /// As [`Rooms::send`], with `Overloaded` as soon as the queue is full.
    pub fn try_send(self: &Arc<Self>, room: &RoomId, command: RoomCommand) -> Result<(), Refused> {
        let received = Instant::now();
        let error = match self.reserve(room) {
            Ok(Ok(permit)) => {
                permit.send(ActorMsg::Command(command, received));
                return Ok(());
            }
            Ok(Err(_)) => RouteError::Overloaded,
            Err(error) => error,
        };
        Err(Refused { error, command })
    }

    /// Under the registry lock: a permit for `room`'s queue, or its sender when it is full.
    fn reserve(self: &Arc<Self>, room: &RoomId) -> Result<Reservation, RouteError> {
        let shard = self.shard(room);
        let mut registry = self.registry();
        if registry.frozen.contains(&shard) {
            return Err(RouteError::Moved);
        }
        let running = registry.slots.get(room).filter(|slot| !slot.tx.is_closed());
        let tx = match running {
            Some(slot) => slot.tx.clone(),
            None => {
                let last = match registry.slots.remove(room) {
                    // An actor that ended without passivating (it panicked): its seq stands.
                    Some(slot) => slot.seq.load(Ordering::Acquire),
                    None => registry.resting.take(room),
                };
                let seq = Arc::new(AtomicU64::new(last));
                let state = Room::new(room.clone(), last, self.settings.history_limit);
                let tx = self.spawn_actor(state, seq.clone());
                let slot = Slot {
                    tx: tx.clone(),
                    seq,
                };
                registry.slots.insert(room.clone(), slot);
                tx
            }
        };
        match tx.try_reserve_owned() {
            Ok(permit) => Ok(Ok(permit)),
            // Holding a clone of the sender keeps the actor from passivating meanwhile.
            Err(mpsc::error::TrySendError::Full(tx)) => Ok(Err(tx)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(RouteError::Unavailable),
        }
    }

    /// Close `shard` to new commands and collect the snapshots of its rooms (running ones
    /// through their queues, passivated ones from their remembered seq) with the shard's
    /// floor (rooms forgotten here start above it on the new owner). The running actors stay,
    /// only to forward late commands to the new owner.
    pub async fn freeze(self: &Arc<Self>, shard: ShardId) -> FrozenShard {
        let (running, mut snapshots, floor) = {
            let mut registry = self.registry();
            registry.frozen.insert(shard);
            let shards = self.shards;
            let running: Vec<_> = registry
                .slots
                .iter()
                .filter(|(room, _)| shard::shard_of(room, shards) == shard)
                .map(|(_, slot)| slot.tx.clone())
                .collect();
            let passive: Vec<_> = registry
                .resting
                .take_shard(shard)
                .into_iter()
                .map(|(room, seq)| RoomSnapshot {
                    room,
                    seq,
                    history: Vec::new(),
                    members: Vec::new(),
                })
                .collect();
            (running, passive, registry.resting.floor(shard))
        };
        // Every room is asked at once and answers as soon as its own queue is through: the
        // shard waits for its busiest room, not for the sum of all of them.
        let asked = running.into_iter().map(|tx| async move {
            let (reply, snapshot) = oneshot::channel();
            tx.send(ActorMsg::HandOff(reply)).await.ok()?;
            snapshot.await.ok()
        });
        snapshots.extend(
            futures_util::future::join_all(asked)
                .await
                .into_iter()
                .flatten(),
        );
        FrozenShard {
            floor,
            rooms: snapshots,
        }
    }

    /// Whether `shard` is closed here because it was handed away.
    pub fn is_frozen(&self, shard: ShardId) -> bool {
        self.registry().frozen.contains(&shard)
    }

    /// Open `shard` on this node (it owns it now), starting rooms from `snapshots`, its floor
    /// raised to at least `floor` (the old owner's, so rooms it forgot never repeat a seq).
    pub fn install(self: &Arc<Self>, shard: ShardId, floor: u64, snapshots: Vec<RoomSnapshot>) {
        let mut registry = self.registry();
        registry.frozen.remove(&shard);
        registry.resting.raise_floor(shard, floor);
        for snapshot in snapshots {
            let room = snapshot.room.clone();
            if snapshot.members.is_empty() && snapshot.history.is_empty() {
                // Nothing worth an actor: keep only the seq, as for a passivated room.
                registry.resting.remember(room, snapshot.seq);
                continue;
            }
            let seq = Arc::new(AtomicU64::new(snapshot.seq));
            let state = Room::from_snapshot(snapshot, self.settings.history_limit);
            let tx = self.spawn_actor(state, seq.clone());
            registry.slots.insert(room, Slot { tx, seq });
        }
    }

    /// Tell every running room the same thing (a departed edge node's members must go).
    pub fn tell_all(&self, command: &RoomCommand) {
        let senders: Vec<_> = self
            .registry()
            .slots
            .values()
            .map(|slot| slot.tx.clone())
            .collect();
        let received = Instant::now();
        for tx in senders {
            if tx
                .try_send(ActorMsg::Command(command.clone(), received))
                .is_err()
            {
                tracing::warn!("a room's queue is full; it misses a membership update");
            }
        }
    }

    /// Number of room actors running.
    pub fn active(&self) -> usize {
        self.registry().slots.len()
    }

    /// How many entries the registries hold (see [`RegistrySizes`]).
    pub fn sizes(&self) -> RegistrySizes {
        let registry = self.registry();
        RegistrySizes {
            running: registry.slots.len(),
            remembered: registry.resting.len(),
        }
    }

    /// The seq `room` continues from here: its last seq, or its shard's floor when this node
    /// forgot it (0 for a room never seen).
    pub fn last_seq(&self, room: &RoomId) -> u64 {
        let registry = self.registry();
        match registry.slots.get(room) {
            Some(slot) => slot.seq.load(Ordering::Acquire),
            None => registry.resting.peek(room),
        }
    }

    /// Stop every actor and wait for them (node shutdown).
    pub async fn close(&self) {
        self.registry().slots.clear();
        self.tracker.close();
        self.tracker.wait().await;
    }

    fn spawn_actor(self: &Arc<Self>, room: Room, seq: Arc<AtomicU64>) -> mpsc::Sender<ActorMsg> {
        let (tx, rx) = mpsc::channel(self.settings.queue.max(1));
        let actor = RoomActor {
            shard: self.shard(room.id()).0,
            counted: 0,
            room,
            forwarding: false,
            seq,
            rx,
            weak: tx.downgrade(),
            rooms: self.clone(),
        };
        self.metrics.rooms_active.inc();
        self.tracker.spawn(actor.run());
        tx
    }

    /// Passivate `room` if nothing is queued or about to be; true when the actor may exit.
    fn try_passivate(
        &self,
        room: &RoomId,
        weak: &mpsc::WeakSender<ActorMsg>,
        queued: bool,
    ) -> bool {
        let mut registry = self.registry();
        let registered = registry.slots.get(room).is_some_and(|slot| {
            weak.upgrade()
                .is_some_and(|mine| mine.same_channel(&slot.tx))
        });
        // Strong senders besides the registry's own mean a permit is held or awaited.
        let others = weak.strong_count().saturating_sub(usize::from(registered));
        if queued || others > 0 {
            return false;
        }
        if registered && let Some(slot) = registry.slots.remove(room) {
            // A frozen shard's state went to the new owner with the hand-off: nothing to keep.
            if !registry.frozen.contains(&self.shard(room)) {
                registry
                    .resting
                    .remember(room.clone(), slot.seq.load(Ordering::Acquire));
            }
            shrink::map_if_sparse(&mut registry.slots);
        }
        true
    }
}

struct RoomActor {
    /// The room's shard, for the per-shard counters.
    shard: u32,
    /// The members this actor has added to its shard's member gauge.
    counted: usize,
    room: Room,
    /// Set by a hand-off: the state went to the new owner, late commands follow it there.
    forwarding: bool,
    seq: Arc<AtomicU64>,
    rx: mpsc::Receiver<ActorMsg>,
    weak: mpsc::WeakSender<ActorMsg>,
    rooms: Arc<Rooms>,
}

impl RoomActor {
    async fn run(mut self) {
        let rooms = self.rooms.clone();
        self.count_members(self.room.member_count());
        // One timer for the actor's life, moved only when it fires early: a command costs a
        // clock read, not a new timer.
        let idle = tokio::time::sleep(self.idle_after());
        tokio::pin!(idle);
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                message = self.rx.recv() => {
                    last = tokio::time::Instant::now();
                    match message {
                        Some(ActorMsg::Command(command, _)) if self.forwarding => {
                            rooms.fanout.forward(self.room.id().clone(), command);
                        }
                        Some(ActorMsg::Command(command, received)) => self.handle(command, received),
                        Some(ActorMsg::HandOff(reply)) => {
                            if !self.forwarding {
                                let _ = reply.send(self.room.snapshot());
                                self.forwarding = true;
                                // The members went with the state.
                                self.count_members(0);
                                // A forwarding actor lingers briefly: bring the timer forward.
                                idle.as_mut().reset(last + self.idle_after());
                            }
                        }
                        None => break,
                    }
                }
                () = &mut idle, if self.forwarding || self.room.is_empty() => {
                    let now = tokio::time::Instant::now();
                    let due = last + self.idle_after();
                    if now < due {
                        idle.as_mut().reset(due);
                        continue;
                    }
                    if rooms.try_passivate(self.room.id(), &self.weak, !self.rx.is_empty()) {
                        if !self.forwarding {
                            rooms.metrics.rooms_passivated.inc();
                        }
                        tracing::debug!(room = %self.room.id(), seq = self.room.seq(), "room actor stopped");
                        break;
                    }
                    idle.as_mut().reset(now + self.idle_after());
                }
            }
        }
        self.count_members(0);
        rooms.metrics.rooms_active.dec();
    }

    /// How long the room waits idle before it passivates: briefly once it only forwards, and
    /// at once when it is bare (joined and left, nothing said): it has nothing to keep, so
    /// joining and leaving room names costs no memory past the visit.
    fn idle_after(&self) -> Duration {
        let passivate_after = self.rooms.settings.passivate_after;
        if self.forwarding {
            Duration::from_millis(200).min(passivate_after)
        } else if self.room.is_bare() {
            // A millisecond, not zero: a sender holding a permit makes passivation wait, and
            // the actor must not spin meanwhile.
            Duration::from_millis(1).min(passivate_after)
        } else {
            passivate_after
        }
    }

    /// Brings the shard's member gauge to `members` for this room.
    fn count_members(&mut self, members: usize) {
        if members != self.counted {
            let delta = members as i64 - self.counted as i64;
            self.rooms.counters.members_changed(self.shard, delta);
            self.counted = members;
        }
    }

    fn handle(&mut self, command: RoomCommand, received: Instant) {
        if let RoomCommand::Post { member, cid, .. } = &command
            && !self.rooms.fanout.can_take(&mut self.room.nodes())
        {
            // Refused before it takes a seq: a message some members could not be sent.
            let frame = crate::protocol::error_frame(
                crate::protocol::ErrorCode::Overloaded,
                "a node with members in this room cannot take more messages now; retry later",
                cid.as_deref(),
                Some(self.room.id()),
            );
            let answer = EdgeEvent::ToConn {
                conn: member.conn,
                frame: frame.into(),
            };
            self.rooms.metrics.sends_refused_overloaded.inc();
            return self.rooms.fanout.deliver(&member.node, answer);
        }
        let before = self.room.seq();
        let ids = &self.rooms.ids;
        let out = self.room.apply(command, &mut || {
            let ts = unix_ms();
            (ids.next(ts), ts)
        });
        let accepted = self.room.seq() != before;
        if accepted {
            self.seq.store(self.room.seq(), Ordering::Release);
            self.rooms.metrics.messages_in.inc();
            // Every member gets it, the sender's echo included.
            self.rooms
                .counters
                .delivered(self.shard, self.room.member_count());
        }
        if !self.forwarding {
            self.count_members(self.room.member_count());
        }
        for (node, event) in out {
            self.rooms.fanout.deliver(&node, event);
        }
        if accepted {
            self.rooms.metrics.send_fanned_out(received.elapsed());
        }
    }
}

#[cfg(test)]
mod tests;
