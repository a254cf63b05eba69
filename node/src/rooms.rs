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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::Instrument;

use shard::{NodeName, RoomId, ShardId};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::edge::EdgeEvent;
use crate::hashing::{HashMap, HashSet};
use crate::metrics::Metrics;
use crate::replication::{Answer, ChangeFor, FollowerRef};
use crate::resting::RestingSeqs;
use crate::room::{Room, RoomCommand, RoomSnapshot};
use crate::shard_load::ShardCounters;
use crate::shrink;
use crate::snowflake::Snowflake;
use actor::{Answers, RoomActor};

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

    /// The follower of `shard` in the table in force; `None` when it has none (replication
    /// 1, or a single node), and then nothing is held back.
    fn follower(&self, _shard: ShardId) -> Option<FollowerRef> {
        None
    }

    /// Whether the table in force took `shard` from this node without a hand-off from it
    /// (another node owns it, or nobody does, and no move from here is in flight): a room
    /// of the shard that still runs here must acknowledge nothing more.
    fn deposed(&self, _shard: ShardId) -> bool {
        false
    }

    /// Send a change to a room's copy on `to`, without waiting; false when it could not be
    /// queued (the link's outbox is full or the peer unknown).
    fn replicate(&self, _to: &NodeName, _change: ChangeFor) -> bool {
        false
    }
}

/// What a room actor's queue carries.
#[derive(Debug)]
enum ActorMsg {
    /// A request from a member, with when the registry received it (the start of the
    /// send-to-fan-out histogram).
    Command(RoomCommand, Instant),
    /// Snapshot the room for a hand-off, then forward everything after. With `deposed`, the
    /// shard was taken from this node without a hand-off: what is in flight to the follower
    /// is refused first, not waited for.
    HandOff {
        reply: oneshot::Sender<RoomSnapshot>,
        deposed: bool,
    },
    /// Bring the room's copy on the shard's follower up to date (the table named a new one),
    /// then answer. With `again`, the whole room goes even to a follower it was sent to (that
    /// follower says it holds no copy).
    Sync {
        again: bool,
        reply: oneshot::Sender<()>,
    },
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
#[derive(Debug, Clone, Default)]
pub struct FrozenShard {
    /// The highest seq this node forgot in the shard (see [`crate::resting`]): a room of it
    /// with nothing in `rooms` must start above it on the new owner.
    pub floor: u64,
    /// Every room of the shard still known here, running or passivated.
    pub rooms: Vec<RoomSnapshot>,
}

impl FrozenShard {
    /// This state of the shard and `other`, room by room: the room's state with the higher
    /// seq wins, `self`'s on a tie, and the higher floor. A room's states on different nodes
    /// are prefixes of one history (one node at a time gives out its seqs), so the higher seq
    /// holds everything the lower one does. What a hand-off's target installs: the snapshot it
    /// received merged with whatever it held itself (its follower's copy, frozen rooms).
    #[must_use]
    pub fn merged(self, other: FrozenShard) -> FrozenShard {
        let mut rooms: HashMap<RoomId, RoomSnapshot> = HashMap::default();
        for room in self.rooms {
            rooms.insert(room.room.clone(), room);
        }
        for room in other.rooms {
            match rooms.get(&room.room) {
                Some(mine) if mine.seq >= room.seq => {}
                _ => {
                    rooms.insert(room.room.clone(), room);
                }
            }
        }
        let mut rooms: Vec<RoomSnapshot> = rooms.into_values().collect();
        rooms.sort_by(|a, b| a.room.as_str().cmp(b.room.as_str()));
        FrozenShard {
            floor: self.floor.max(other.floor),
            rooms,
        }
    }
}

/// A running room.
#[derive(Debug)]
struct Slot {
    /// The actor's queue.
    tx: mpsc::Sender<ActorMsg>,
    /// The room's last seq, written by its actor, read when it passivates.
    seq: Arc<AtomicU64>,
    /// The follower's answers to the room's changes, for its actor.
    answers: Arc<Answers>,
    /// Set when the room's shard is deposed here (see [`Rooms::depose`]), before the actor
    /// reads its queue again: from then on it gives out no seq.
    deposed: Arc<AtomicBool>,
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

impl Registry {
    /// The queues of `shard`'s running rooms (out of `shards`).
    /// Mark every running room of `shard` deposed (see [`Slot::deposed`]).
    fn depose(&self, shard: ShardId, shards: u32) {
        for (room, slot) in &self.slots {
            if shard::shard_of(room, shards) == shard {
                slot.deposed.store(true, Ordering::Release);
            }
        }
    }

    fn running_in(&self, shard: ShardId, shards: u32) -> Vec<mpsc::Sender<ActorMsg>> {
        self.slots
            .iter()
            .filter(|(room, _)| shard::shard_of(room, shards) == shard)
            .map(|(_, slot)| slot.tx.clone())
            .collect()
    }
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
                slots: HashMap::default(),
                resting: RestingSeqs::new(shards, settings.remembered),
                frozen: HashSet::default(),
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
                let slot = self.spawn_actor(state, seq);
                let tx = slot.tx.clone();
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
        self.freeze_as(shard, false).await
    }

    /// Stop serving `shard`, which the table gave to another node without a hand-off (this
    /// node was paused or cut off meanwhile): messages still waiting for the follower are
    /// refused and the rooms go back to what the follower held, since the new owner started
    /// from its copy. What comes after is forwarded, as after a freeze.
    ///
    /// The rooms are marked deposed at the call, not when the returned future first runs: a
    /// snapshot installed meanwhile replaces them, and what they still have queued must not
    /// take a seq (their table may name this node the owner again).
    pub fn depose(self: &Arc<Self>, shard: ShardId) -> impl Future<Output = ()> + use<> {
        let frozen = self.freeze_as(shard, true);
        async move {
            frozen.await;
        }
    }

    fn freeze_as(
        self: &Arc<Self>,
        shard: ShardId,
        deposed: bool,
    ) -> impl Future<Output = FrozenShard> + use<> {
        let (running, mut snapshots, floor) = {
            let mut registry = self.registry();
            registry.frozen.insert(shard);
            if deposed {
                registry.depose(shard, self.shards);
            }
            let running = registry.running_in(shard, self.shards);
            let passive: Vec<_> = registry
                .resting
                .take_shard(shard)
                .into_iter()
                .map(|(room, seq)| RoomSnapshot::resting(room, seq))
                .collect();
            (running, passive, registry.resting.floor(shard))
        };
        // Every room is asked at once and answers as soon as its own queue is through: the
        // shard waits for its busiest room, not for the sum of all of them.
        let asked = running.into_iter().map(move |tx| async move {
            let (reply, snapshot) = oneshot::channel();
            tx.send(ActorMsg::HandOff { reply, deposed }).await.ok()?;
            snapshot.await.ok()
        });
        let asked: Vec<_> = asked.collect();
        async move {
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
    }

    /// The shards with rooms running here (serving, freezing or forwarding).
    pub fn running_shards(&self) -> HashSet<ShardId> {
        let registry = self.registry();
        registry
            .slots
            .keys()
            .map(|room| shard::shard_of(room, self.shards))
            .collect()
    }

    /// Mark `shard`'s running rooms deposed without freezing them (a freeze under way goes on):
    /// what waits for the follower is refused, nothing more gets a seq. For a hand-off's
    /// source that was out of the cluster while its rooms waited to freeze.
    pub fn mark_deposed(&self, shard: ShardId) {
        self.registry().depose(shard, self.shards);
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
        // What still runs of the shard here was frozen or deposed (it was not served here):
        // those actors only forward, and the rooms from `snapshots` take their place, a
        // resting one too (else its commands would go on to a forwarder whose owner is this
        // node, and its seq would be read from the old actor).
        let shards = self.shards;
        registry
            .slots
            .retain(|room, _| shard::shard_of(room, shards) != shard);
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
            let slot = self.spawn_actor(state, seq);
            registry.slots.insert(room, slot);
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

    fn spawn_actor(self: &Arc<Self>, room: Room, seq: Arc<AtomicU64>) -> Slot {
        let (tx, rx) = mpsc::channel(self.settings.queue.max(1));
        let answers = Arc::new(Answers::default());
        let deposed = Arc::new(AtomicBool::new(false));
        let actor = RoomActor::new(
            room,
            seq.clone(),
            rx,
            tx.downgrade(),
            answers.clone(),
            deposed.clone(),
            self.clone(),
        );
        self.metrics.rooms_active.inc();
        self.tracker.spawn(actor.run().in_current_span());
        Slot {
            tx,
            seq,
            answers,
            deposed,
        }
    }

    /// The follower of `room`'s shard answered one of its changes: pass it to the room's actor.
    /// An answer for a room no longer running here is stale and dropped.
    pub fn answered(&self, room: &RoomId, from: &NodeName, rid: u64, answer: Answer) {
        if let Some(slot) = self.registry().slots.get(room) {
            slot.answers.push(from, rid, answer);
        }
    }

    /// Bring every room of `shard` up to date on the shard's follower in the table in force
    /// (each running room sends its whole state if the follower is new to it, through its own
    /// queue), then give the shard's floor and passivated rooms, for the follower's
    /// [`PeerMsg::CaughtUp`](crate::peer::wire::PeerMsg::CaughtUp).
    /// With `again`, every room is sent whole, even to a follower it was sent to before.
    pub async fn sync(self: &Arc<Self>, shard: ShardId, again: bool) -> (u64, Vec<(RoomId, u64)>) {
        let (running, resting, floor) = {
            let registry = self.registry();
            (
                registry.running_in(shard, self.shards),
                registry.resting.peek_shard(shard),
                registry.resting.floor(shard),
            )
        };
        let asked = running.into_iter().map(|tx| async move {
            let (reply, synced) = oneshot::channel();
            if tx.send(ActorMsg::Sync { again, reply }).await.is_ok() {
                let _ = synced.await;
            }
        });
        futures_util::future::join_all(asked).await;
        (floor, resting)
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

mod actor;
#[cfg(test)]
mod tests;
