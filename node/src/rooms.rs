//! The room actors this node owns: one task per active room, started on first use and
//! passivated when idle and empty.
//!
//! The registry hands out queue permits under its lock and an actor passivates only under the
//! same lock when no permit is outstanding and its queue is empty, so a command can never be
//! accepted by an actor that is about to disappear. A passivated room releases its members and
//! history but keeps its last `seq` (a few bytes), so its sequence never goes backwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shard::{NodeName, RoomId};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::edge::EdgeEvent;
use crate::metrics::Metrics;
use crate::room::{Room, RoomCommand};
use crate::snowflake::{Snowflake, unix_ms};

/// Where a room actor sends the events for each edge node.
pub trait Fanout: Send + Sync + std::fmt::Debug + 'static {
    /// Deliver one event to `node`'s edge, without waiting.
    fn deliver(&self, node: &NodeName, event: EdgeEvent);
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
}

#[derive(Debug)]
struct Slot {
    /// The actor's queue; `None` while the room is passivated.
    tx: Option<mpsc::Sender<RoomCommand>>,
    /// The room's last seq, kept across passivation.
    seq: Arc<AtomicU64>,
}

/// All rooms this node owns.
#[derive(Debug)]
pub struct Rooms {
    slots: Mutex<HashMap<RoomId, Slot>>,
    settings: RoomSettings,
    fanout: Arc<dyn Fanout>,
    ids: Arc<Snowflake>,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
}

impl Rooms {
    /// An empty registry.
    pub fn new(
        settings: RoomSettings,
        fanout: Arc<dyn Fanout>,
        ids: Arc<Snowflake>,
        metrics: Arc<Metrics>,
    ) -> Arc<Rooms> {
        Arc::new(Rooms {
            slots: Mutex::default(),
            settings,
            fanout,
            ids,
            metrics,
            tracker: TaskTracker::new(),
        })
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<RoomId, Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queue a command for `room`, starting its actor if it is not running.
    ///
    /// # Errors
    /// [`RouteError::Overloaded`] when the room's queue stays full for the send timeout.
    pub async fn send(
        self: &Arc<Self>,
        room: &RoomId,
        command: RoomCommand,
    ) -> Result<(), RouteError> {
        let tx = {
            let mut slots = self.slots();
            let slot = slots.entry(room.clone()).or_insert_with(|| Slot {
                tx: None,
                seq: Arc::new(AtomicU64::new(0)),
            });
            let tx = match &slot.tx {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let tx = self.spawn_actor(room.clone(), slot.seq.clone());
                    slot.tx = Some(tx.clone());
                    tx
                }
            };
            match tx.try_reserve_owned() {
                Ok(permit) => {
                    drop(slots);
                    permit.send(command);
                    return Ok(());
                }
                // Holding a clone of the sender keeps the actor from passivating meanwhile.
                Err(mpsc::error::TrySendError::Full(tx)) => tx,
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(RouteError::Unavailable),
            }
        };
        match tokio::time::timeout(self.settings.send_timeout, tx.reserve_owned()).await {
            Ok(Ok(permit)) => {
                permit.send(command);
                Ok(())
            }
            Ok(Err(_)) => Err(RouteError::Unavailable),
            Err(_) => Err(RouteError::Overloaded),
        }
    }

    /// Number of room actors running.
    pub fn active(&self) -> usize {
        self.slots().values().filter(|s| s.tx.is_some()).count()
    }

    /// The last seq of `room` as the registry knows it (0 for a room never seen).
    pub fn last_seq(&self, room: &RoomId) -> u64 {
        self.slots()
            .get(room)
            .map_or(0, |slot| slot.seq.load(Ordering::Acquire))
    }

    /// Stop every actor and wait for them (node shutdown).
    pub async fn close(&self) {
        for slot in self.slots().values_mut() {
            slot.tx = None;
        }
        self.tracker.close();
        self.tracker.wait().await;
    }

    fn spawn_actor(
        self: &Arc<Self>,
        room: RoomId,
        seq: Arc<AtomicU64>,
    ) -> mpsc::Sender<RoomCommand> {
        let (tx, rx) = mpsc::channel(self.settings.queue.max(1));
        let actor = RoomActor {
            room: Room::new(
                room,
                seq.load(Ordering::Acquire),
                self.settings.history_limit,
            ),
            seq,
            rx,
            weak: tx.downgrade(),
            rooms: self.clone(),
        };
        self.metrics.rooms_active.fetch_add(1, Ordering::Relaxed);
        self.tracker.spawn(actor.run());
        tx
    }

    /// Passivate `room` if nothing is queued or about to be; true when the actor may exit.
    fn try_passivate(
        &self,
        room: &RoomId,
        weak: &mpsc::WeakSender<RoomCommand>,
        queued: bool,
    ) -> bool {
        let mut slots = self.slots();
        // One strong sender (the registry's) means no command holds a permit or waits for one.
        if queued || weak.strong_count() > 1 {
            return false;
        }
        if let Some(slot) = slots.get_mut(room) {
            slot.tx = None;
        }
        true
    }
}

struct RoomActor {
    room: Room,
    seq: Arc<AtomicU64>,
    rx: mpsc::Receiver<RoomCommand>,
    weak: mpsc::WeakSender<RoomCommand>,
    rooms: Arc<Rooms>,
}

impl RoomActor {
    async fn run(mut self) {
        let rooms = self.rooms.clone();
        loop {
            let idle = tokio::time::sleep(rooms.settings.passivate_after);
            tokio::select! {
                command = self.rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                () = idle, if self.room.is_empty() => {
                    if rooms.try_passivate(self.room.id(), &self.weak, !self.rx.is_empty()) {
                        rooms.metrics.rooms_passivated.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(room = %self.room.id(), seq = self.room.seq(), "room passivated");
                        break;
                    }
                }
            }
        }
        rooms.metrics.rooms_active.fetch_sub(1, Ordering::Relaxed);
    }

    fn handle(&mut self, command: RoomCommand) {
        let before = self.room.seq();
        let ids = &self.rooms.ids;
        let out = self.room.apply(command, &mut || {
            let ts = unix_ms();
            (ids.next(ts), ts)
        });
        if self.room.seq() != before {
            self.seq.store(self.room.seq(), Ordering::Release);
            self.rooms
                .metrics
                .messages_in
                .fetch_add(1, Ordering::Relaxed);
        }
        for (node, event) in out {
            self.rooms.fanout.deliver(&node, event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::ConnId;
    use crate::room::MemberKey;

    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<EdgeEvent>>);

    impl Fanout for Recorder {
        fn deliver(&self, _node: &NodeName, event: EdgeEvent) {
            self.0.lock().expect("lock").push(event);
        }
    }

    fn settings(passivate_after: Duration) -> RoomSettings {
        RoomSettings {
            history_limit: 10,
            queue: 16,
            passivate_after,
            send_timeout: Duration::from_millis(100),
        }
    }

    fn member() -> MemberKey {
        MemberKey {
            node: NodeName::new("n").expect("valid"),
            conn: ConnId(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_empty_room_is_passivated_and_its_seq_survives() {
        let recorder = Arc::new(Recorder::default());
        let metrics = Arc::new(Metrics::default());
        let rooms = Rooms::new(
            settings(Duration::from_secs(60)),
            recorder.clone(),
            Arc::new(Snowflake::new(1)),
            metrics.clone(),
        );
        let room = RoomId::new("r").expect("valid");
        let m = member();
        rooms
            .send(
                &room,
                RoomCommand::Join {
                    member: m.clone(),
                    user: "ann".into(),
                    since: None,
                },
            )
            .await
            .expect("join");
        for _ in 0..3 {
            rooms
                .send(
                    &room,
                    RoomCommand::Post {
                        member: m.clone(),
                        user: "ann".into(),
                        text: "x".into(),
                        cid: None,
                    },
                )
                .await
                .expect("post");
        }
        rooms
            .send(
                &room,
                RoomCommand::Leave {
                    member: m.clone(),
                    reply: false,
                },
            )
            .await
            .expect("leave");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(rooms.active(), 1, "still active before the idle time");
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(rooms.active(), 0, "passivated after the idle time");
        assert_eq!(metrics.rooms_passivated.load(Ordering::Relaxed), 1);
        assert_eq!(rooms.last_seq(&room), 3);
        rooms
            .send(
                &room,
                RoomCommand::Join {
                    member: m.clone(),
                    user: "ann".into(),
                    since: None,
                },
            )
            .await
            .expect("join");
        rooms
            .send(
                &room,
                RoomCommand::Post {
                    member: m,
                    user: "ann".into(),
                    text: "y".into(),
                    cid: None,
                },
            )
            .await
            .expect("post");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let last = recorder.0.lock().expect("lock").last().cloned();
        let Some(EdgeEvent::Broadcast { frame, .. }) = last else {
            panic!("expected a broadcast, got {last:?}")
        };
        let value: serde_json::Value = serde_json::from_str(frame.as_str()).expect("json");
        assert_eq!(
            value["seq"].as_u64(),
            Some(4),
            "seq continues after passivation"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_room_with_members_is_never_passivated() {
        let rooms = Rooms::new(
            settings(Duration::from_secs(1)),
            Arc::new(Recorder::default()),
            Arc::new(Snowflake::new(1)),
            Arc::default(),
        );
        let room = RoomId::new("r").expect("valid");
        rooms
            .send(
                &room,
                RoomCommand::Join {
                    member: member(),
                    user: "ann".into(),
                    since: None,
                },
            )
            .await
            .expect("join");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(rooms.active(), 1);
    }

    /// A fan-out that blocks the actor inside `deliver` until the test lets it go.
    #[derive(Debug)]
    struct Gate {
        entered: Mutex<std::sync::mpsc::Sender<()>>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Fanout for Gate {
        fn deliver(&self, _node: &NodeName, _event: EdgeEvent) {
            let _ = self.entered.lock().expect("lock").send(());
            let _ = self
                .release
                .lock()
                .expect("lock")
                .recv_timeout(Duration::from_secs(10));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_room_queue_answers_overloaded_after_the_timeout() {
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel();
        let gate = Arc::new(Gate {
            entered: Mutex::new(entered_tx),
            release: Mutex::new(release_rx),
        });
        let mut s = settings(Duration::from_secs(60));
        s.queue = 1;
        let rooms = Rooms::new(s, gate, Arc::new(Snowflake::new(1)), Arc::default());
        let room = RoomId::new("r").expect("valid");
        let join = RoomCommand::Join {
            member: member(),
            user: "ann".into(),
            since: None,
        };
        rooms
            .send(&room, join.clone())
            .await
            .expect("the first command is queued");
        let entered =
            tokio::task::spawn_blocking(move || entered_rx.recv_timeout(Duration::from_secs(10)));
        entered
            .await
            .expect("join")
            .expect("the actor is now stuck delivering");
        rooms
            .send(&room, join.clone())
            .await
            .expect("the second command fills the queue");
        let refused = rooms.send(&room, join).await;
        assert_eq!(refused, Err(RouteError::Overloaded));
        for _ in 0..4 {
            let _ = release_tx.send(());
        }
    }
}
