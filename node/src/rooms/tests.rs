//! The room actors driven directly: passivation, per-shard counters, hand-off freeze and
//! install, a full queue.

use super::*;
use crate::edge::ConnId;
use crate::room::MemberKey;

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<EdgeEvent>>);

impl Fanout for Recorder {
    fn deliver(&self, _node: &NodeName, event: EdgeEvent) {
        self.0.lock().expect("lock").push(event);
    }

    fn forward(&self, _room: RoomId, _command: RoomCommand) {}
}

fn settings(passivate_after: Duration) -> RoomSettings {
    RoomSettings {
        history_limit: 10,
        queue: 16,
        passivate_after,
        send_timeout: Duration::from_millis(100),
        remembered: 1_000,
    }
}

fn join(member: MemberKey) -> RoomCommand {
    RoomCommand::Join {
        member,
        user: "ann".into(),
        since: None,
    }
}

fn post(member: MemberKey, text: &str) -> RoomCommand {
    RoomCommand::Post {
        member,
        user: "ann".into(),
        text: text.into(),
        cid: None,
    }
}

fn leave(member: MemberKey) -> RoomCommand {
    RoomCommand::Leave {
        member,
        reply: false,
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
        256,
        recorder.clone(),
        Arc::new(Snowflake::new(1)),
        metrics.clone(),
    );
    let room = RoomId::new("r").expect("valid");
    let m = member();
    rooms.send(&room, join(m.clone())).await.expect("join");
    for _ in 0..3 {
        rooms.send(&room, post(m.clone(), "x")).await.expect("post");
    }
    rooms.send(&room, leave(m.clone())).await.expect("leave");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rooms.active(), 1, "still active before the idle time");
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(rooms.active(), 0, "passivated after the idle time");
    assert_eq!(metrics.rooms_passivated.get(), 1);
    assert_eq!(rooms.last_seq(&room), 3);
    rooms.send(&room, join(m.clone())).await.expect("join");
    rooms.send(&room, post(m, "y")).await.expect("post");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let last = recorder.0.lock().expect("lock").last().cloned();
    let Some(EdgeEvent::Broadcast { frame, .. } | EdgeEvent::ToConn { frame, .. }) = last else {
        panic!("expected the message, got {last:?}")
    };
    let value: serde_json::Value = serde_json::from_str(frame.as_str()).expect("json");
    assert_eq!(
        value["seq"].as_u64(),
        Some(4),
        "seq continues after passivation"
    );
}

/// Says `posts` messages in `room` and leaves it, so that it passivates.
async fn talk_and_leave(rooms: &Arc<Rooms>, room: &RoomId, posts: usize) {
    let m = member();
    rooms.send(room, join(m.clone())).await.expect("join");
    for _ in 0..posts {
        rooms.send(room, post(m.clone(), "x")).await.expect("post");
    }
    rooms.send(room, leave(m)).await.expect("leave");
}

#[tokio::test(start_paused = true)]
async fn a_forgotten_rooms_floor_goes_with_its_shard_and_the_new_owner_starts_above_it() {
    let mut small = settings(Duration::from_secs(1));
    small.remembered = 1;
    let new = |s: RoomSettings| {
        Rooms::new(
            s,
            16,
            Arc::new(Recorder::default()),
            Arc::new(Snowflake::new(1)),
            Arc::new(Metrics::default()),
        )
    };
    let (old, owner) = (new(small), new(settings(Duration::from_secs(1))));
    let room = RoomId::new("r").expect("valid");
    let shard = old.shard(&room);
    talk_and_leave(&old, &room, 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    talk_and_leave(&old, &RoomId::new("other").expect("valid"), 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(old.active(), 0, "both rooms passivated");
    assert_eq!(
        old.sizes().remembered,
        1,
        "`r` was forgotten, only `other` is kept"
    );
    let frozen = old.freeze(shard).await;
    assert!(
        frozen.rooms.iter().all(|snapshot| snapshot.room != room),
        "nothing is left of `r` but the floor"
    );
    assert_eq!(frozen.floor, 3, "the floor is `r`'s last seq");
    assert_eq!(owner.last_seq(&room), 0, "the new owner never saw `r`");
    owner.install(shard, frozen.floor, frozen.rooms);
    assert_eq!(owner.last_seq(&room), 3, "`r` continues above its old seq");
}

#[tokio::test(start_paused = true)]
async fn the_owner_counts_deliveries_and_members_per_shard_until_the_shard_is_handed_off() {
    let rooms = Rooms::new(
        settings(Duration::from_secs(60)),
        16,
        Arc::new(Recorder::default()),
        Arc::new(Snowflake::new(1)),
        Arc::new(Metrics::default()),
    );
    let room = RoomId::new("r").expect("valid");
    let shard = rooms.shard(&room);
    let (a, b) = (
        member(),
        MemberKey {
            conn: ConnId(2),
            ..member()
        },
    );
    rooms.send(&room, join(a.clone())).await.expect("join");
    rooms.send(&room, join(b)).await.expect("join");
    for _ in 0..3 {
        rooms.send(&room, post(a.clone(), "x")).await.expect("post");
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    let counters = rooms.shard_counters();
    let total: u64 = counters.deliveries().iter().sum();
    // Three messages, two recipients each, all in the room's shard.
    assert_eq!(counters.deliveries()[shard.0 as usize], 6);
    assert_eq!(total, 6);
    assert_eq!(counters.members(shard.0 as usize), 2);
    // Handed off: the members went with the state.
    let frozen = rooms.freeze(shard).await;
    assert_eq!(frozen.rooms.len(), 1);
    assert_eq!(counters.members(shard.0 as usize), 0);
    // Installed elsewhere (here, on the same registry): counted again.
    rooms.install(shard, frozen.floor, frozen.rooms);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(counters.members(shard.0 as usize), 2);
}

#[tokio::test(start_paused = true)]
async fn a_room_with_members_is_never_passivated() {
    let rooms = Rooms::new(
        settings(Duration::from_secs(1)),
        256,
        Arc::new(Recorder::default()),
        Arc::new(Snowflake::new(1)),
        Arc::default(),
    );
    let room = RoomId::new("r").expect("valid");
    rooms.send(&room, join(member())).await.expect("join");
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

    fn forward(&self, _room: RoomId, _command: RoomCommand) {}
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
    let rooms = Rooms::new(s, 256, gate, Arc::new(Snowflake::new(1)), Arc::default());
    let room = RoomId::new("r").expect("valid");
    let join = join(member());
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
    assert_eq!(refused.map_err(|r| r.error), Err(RouteError::Overloaded));
    for _ in 0..4 {
        let _ = release_tx.send(());
    }
}
