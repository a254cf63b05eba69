//! The old owner's side of a hand-off, with the peers played by the test: a node whose links
//! have no connection keeps what it sends in their outboxes, where the test reads it and
//! acknowledges it at the moment it chooses. That makes the race between the old owner's last
//! events and the new owner's first ones deterministic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shard::{AssignmentTable, Move, NodeInfo, NodeName, RoomId, ShardId};

use super::*;
use crate::edge::ConnId;
use crate::peer::PeerSettings;
use crate::room::{MemberKey, RoomSnapshot};
use crate::rooms::RoomSettings;

pub(super) const SHARDS: u32 = 8;
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn name(n: &str) -> NodeName {
    NodeName::new(n).expect("valid node name")
}

/// The old owner. It sorts after both peers, so it dials neither: its links stay unconnected
/// and everything it sends waits in their outboxes.
fn old_owner() -> (Arc<NodeState>, Arc<Peers>) {
    node_c(1000)
}

/// `node-c`, whose links hold at most `outbox` messages each.
pub(super) fn node_c(outbox: usize) -> (Arc<NodeState>, Arc<Peers>) {
    node_c_with(
        outbox,
        RoomSettings {
            history_limit: 10,
            queue: 64,
            passivate_after: Duration::from_secs(600),
            send_timeout: Duration::from_secs(1),
            remembered: 1_000,
        },
    )
}

/// `node-c` with the given room settings.
fn node_c_with(outbox: usize, rooms: RoomSettings) -> (Arc<NodeState>, Arc<Peers>) {
    let me = name("node-c");
    let peers = Peers::new(PeerSettings {
        me: me.clone(),
        secret: Arc::from(&b"secret"[..]),
        max_unacked: outbox,
    });
    let settings = NodeSettings {
        name: me,
        node_id: 2,
        shards: SHARDS,
        peer_addr: "127.0.0.1:9".into(),
        rooms,
        limits: ConnectionLimits {
            max_text_bytes: 1024,
            max_frame_bytes: 8192,
            max_rooms: 8,
            rate_per_sec: 100,
            rate_burst: 100,
            outgoing_queue: 64,
            close_timeout: Duration::from_secs(1),
            reconnect_spread: Duration::ZERO,
        },
        handoff: HandoffSettings {
            timeout: HANDOFF_TIMEOUT,
            buffer: 100,
            exit_drain: Duration::from_secs(1),
        },
    };
    let state = NodeState::clustered(settings, Authenticator::open(), peers.clone());
    (state, peers)
}

/// The three nodes of these tests, as a table names them.
pub(super) fn three_nodes() -> BTreeMap<NodeName, NodeInfo> {
    ["node-a", "node-b", "node-c"]
        .into_iter()
        .map(|n| (name(n), NodeInfo::new("127.0.0.1:9")))
        .collect()
}

pub(super) fn table(epoch: u64, owner: &str, moved: Option<(ShardId, &str)>) -> AssignmentTable {
    let nodes = three_nodes();
    let mut owners = vec![Some(name(owner)); SHARDS as usize];
    let mut moves = Vec::new();
    if let Some((shard, to)) = moved {
        owners[shard.0 as usize] = Some(name(to));
        moves.push(Move {
            shard,
            from: name(owner),
            to: name(to),
        });
    }
    let mut table = AssignmentTable::with_owners(owners, nodes).expect("valid table");
    table.epoch = epoch;
    table.moves = moves;
    table
}

/// A post by `member`, signed `user`.
pub(super) fn post_by(
    member: MemberKey,
    user: &str,
    text: &str,
    cid: Option<String>,
) -> RoomCommand {
    RoomCommand::Post {
        member,
        user: user.into(),
        text: text.into(),
        cid,
    }
}

fn has_snapshot(peers: &Peers, to: &NodeName) -> bool {
    peers
        .outbox(to)
        .iter()
        .any(|m| matches!(**m, PeerMsg::Snapshot { .. }))
}

/// Chat messages waiting in the outbox to `edge`.
pub(super) fn messages_to(peers: &Peers, edge: &NodeName) -> usize {
    peers
        .outbox(edge)
        .iter()
        .filter(|m| {
            matches!(
                &***m,
                PeerMsg::Event(EdgeEvent::Broadcast { is_msg: true, .. })
            )
        })
        .count()
}

/// Lets spawned tasks run until `done` holds (the clock is paused: this takes no real time).
pub(super) async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the condition never held");
}

/// The old owner `node-c` owns room `r`, whose only member is on edge `node-b`; it posts a
/// message there and then hands the shard to `node-a`.
async fn owner_with_a_message_in_flight() -> (Arc<NodeState>, Arc<Peers>, ShardId) {
    let (state, peers) = old_owner();
    let room = RoomId::new("r").expect("valid room");
    let shard = shard::shard_of(&room, SHARDS);
    assert!(state.apply_table(table(1, "node-c", None)).await);
    let member = MemberKey {
        node: name("node-b"),
        conn: ConnId(1),
    };
    let user: Arc<str> = "bob".into();
    let join = RoomCommand::Join {
        member: member.clone(),
        user: user.clone(),
        since: None,
    };
    state.route(&room, join).await.expect("joined");
    let post = RoomCommand::Post {
        member,
        user,
        text: "last words".into(),
        cid: None,
    };
    state.route(&room, post).await.expect("posted");
    until(|| messages_to(&peers, &name("node-b")) == 1).await;
    assert!(
        state
            .apply_table(table(2, "node-c", Some((shard, "node-a"))))
            .await
    );
    (state, peers, shard)
}

#[tokio::test(start_paused = true)]
async fn the_snapshot_waits_until_the_rooms_edges_have_handled_the_old_owners_last_events() {
    let (state, peers, shard) = owner_with_a_message_in_flight().await;
    let (edge, new_owner) = (name("node-b"), name("node-a"));
    // The room's last message is still on its way to node-b. Were the snapshot sent now, the
    // new owner's first message could reach node-b over its own link before this one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !has_snapshot(&peers, &new_owner),
        "no snapshot while the edge has not handled the old owner's last message"
    );
    assert_eq!(state.status().moves_in_flight, 1, "the move is in flight");
    peers.ack_all(&edge);
    until(|| has_snapshot(&peers, &new_owner)).await;
    let snapshot = peers
        .outbox(&new_owner)
        .into_iter()
        .find_map(|m| match &*m {
            PeerMsg::Snapshot {
                shard: s, rooms, ..
            } if *s == shard => Some(rooms.clone()),
            _ => None,
        });
    let rooms = snapshot.expect("the shard's snapshot");
    assert_eq!(rooms.len(), 1);
    assert_eq!(
        rooms[0].seq, 1,
        "seq continues after the edge's last message"
    );
}

/// The hand-off waits for the moved rooms' last events only: another room's message queued
/// on the same edge's link after them does not hold the snapshot back.
#[tokio::test(start_paused = true)]
async fn the_snapshot_does_not_wait_for_other_rooms_events_on_the_edges_link() {
    let (state, peers) = old_owner();
    let (edge, new_owner) = (name("node-b"), name("node-a"));
    let moved = RoomId::new("r").expect("valid room");
    let shard = shard::shard_of(&moved, SHARDS);
    let other = (0..)
        .map(|n| RoomId::new(format!("q{n}")).expect("valid room"))
        .find(|room| shard::shard_of(room, SHARDS) != shard)
        .expect("a room of another shard");
    assert!(state.apply_table(table(1, "node-c", None)).await);
    let member = MemberKey {
        node: edge.clone(),
        conn: ConnId(1),
    };
    for room in [&moved, &other] {
        let join = RoomCommand::Join {
            member: member.clone(),
            user: "bob".into(),
            since: None,
        };
        state.route(room, join).await.expect("joined");
    }
    state
        .route(&moved, post_by(member.clone(), "bob", "moved room", None))
        .await
        .expect("posted");
    until(|| messages_to(&peers, &edge) == 1).await;
    peers.ack_all(&edge);
    // The edge handled the moved room's events; another room's message is on its way now.
    state
        .route(&other, post_by(member, "bob", "other room", None))
        .await
        .expect("posted");
    until(|| messages_to(&peers, &edge) == 1).await;
    assert!(
        state
            .apply_table(table(2, "node-c", Some((shard, "node-a"))))
            .await
    );
    until(|| has_snapshot(&peers, &new_owner)).await;
    assert_eq!(
        messages_to(&peers, &edge),
        1,
        "the other room's message is still unacknowledged: the snapshot did not wait for it"
    );
}

#[tokio::test(start_paused = true)]
async fn an_edge_that_never_confirms_delays_the_snapshot_by_at_most_half_the_handoff_timeout() {
    let (_state, peers, _shard) = owner_with_a_message_in_flight().await;
    let new_owner = name("node-a");
    tokio::time::sleep(HANDOFF_TIMEOUT / 2 - Duration::from_millis(100)).await;
    assert!(!has_snapshot(&peers, &new_owner));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        has_snapshot(&peers, &new_owner),
        "the hand-off goes on without the unreachable edge"
    );
}

/// Everything on `node-c` moves to `node-a`; `shard` (room `r`'s) by hand-off.
fn all_to_a(epoch: u64, handing: Option<ShardId>) -> AssignmentTable {
    let mut table = table(epoch, "node-a", None);
    if let Some(shard) = handing {
        table.moves = vec![Move {
            shard,
            from: name("node-c"),
            to: name("node-a"),
        }];
    }
    table
}

fn snapshots_to(peers: &Peers, to: &NodeName) -> usize {
    peers
        .outbox(to)
        .iter()
        .filter(|m| matches!(***m, PeerMsg::Snapshot { .. }))
        .count()
}

#[tokio::test(start_paused = true)]
async fn a_lost_snapshot_acknowledgement_is_answered_by_a_resend_and_the_drain_completes() {
    let (state, peers) = old_owner();
    let (edge, new_owner) = (name("node-b"), name("node-a"));
    let room = RoomId::new("r").expect("valid room");
    let shard = shard::shard_of(&room, SHARDS);
    assert!(state.apply_table(table(1, "node-c", None)).await);
    let join = RoomCommand::Join {
        member: MemberKey {
            node: edge.clone(),
            conn: ConnId(1),
        },
        user: "bob".into(),
        since: None,
    };
    state.route(&room, join).await.expect("joined");
    until(|| !peers.outbox(&edge).is_empty()).await;
    peers.ack_all(&edge);
    assert!(state.apply_table(all_to_a(2, Some(shard))).await);
    until(|| snapshots_to(&peers, &new_owner) == 1).await;
    // The new owner handles the snapshot (its link acknowledges it) but its SnapshotAck is
    // lost: the old owner has no move confirmed and cannot finish draining.
    peers.ack_all(&new_owner);
    assert_eq!(snapshots_to(&peers, &new_owner), 0);
    assert!(state.status().moves_done.is_empty());
    assert!(!state.handed_off());
    tokio::time::sleep(super::outgoing::SNAPSHOT_RETRY + Duration::from_millis(100)).await;
    assert_eq!(
        snapshots_to(&peers, &new_owner),
        1,
        "the snapshot is sent again"
    );
    assert_eq!(state.metrics.snapshot_resends.get(), 1);
    // A copy still on its way is not sent twice.
    tokio::time::sleep(super::outgoing::SNAPSHOT_RETRY * 3).await;
    assert_eq!(snapshots_to(&peers, &new_owner), 1);
    // This time the acknowledgement arrives.
    state.on_peer_message(&new_owner, PeerMsg::SnapshotAck { shard, epoch: 2 });
    let confirmed = Move {
        shard,
        from: name("node-c"),
        to: new_owner.clone(),
    };
    assert_eq!(state.status().moves_done, vec![confirmed]);
    // The operator sees the move done and clears it: the node has handed everything off.
    assert!(state.apply_table(all_to_a(3, None)).await);
    assert!(state.handed_off());
}

#[tokio::test(start_paused = true)]
async fn an_acknowledgement_of_another_epoch_or_node_does_not_confirm_the_move() {
    let (state, peers) = old_owner();
    let new_owner = name("node-a");
    let shard = shard::shard_of(&RoomId::new("r").expect("room"), SHARDS);
    assert!(state.apply_table(table(1, "node-c", None)).await);
    assert!(state.apply_table(all_to_a(2, Some(shard))).await);
    until(|| snapshots_to(&peers, &new_owner) == 1).await;
    state.on_peer_message(&new_owner, PeerMsg::SnapshotAck { shard, epoch: 1 });
    state.on_peer_message(&name("node-b"), PeerMsg::SnapshotAck { shard, epoch: 2 });
    assert!(state.status().moves_done.is_empty());
    assert_eq!(state.status().moves_in_flight, 1);
}

/// The chat messages waiting in the outbox to `edge`, as JSON, in the order they were queued.
pub(super) fn messages_queued_to(peers: &Peers, edge: &NodeName) -> Vec<serde_json::Value> {
    peers
        .outbox(edge)
        .iter()
        .filter_map(|m| match &**m {
            PeerMsg::Event(EdgeEvent::Broadcast {
                frame,
                is_msg: true,
                ..
            }) => serde_json::from_str(frame.as_str()).ok(),
            _ => None,
        })
        .collect()
}

/// The `seq`s of chat messages waiting in the outbox to `edge`.
fn seqs_to(peers: &Peers, edge: &NodeName) -> Vec<u64> {
    messages_queued_to(peers, edge)
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_repeated_snapshot_is_acknowledged_again_without_reinstalling_the_shard() {
    let (state, peers) = old_owner(); // node-c, here the new owner
    let (edge, source) = (name("node-b"), name("node-a"));
    let room = RoomId::new("r").expect("valid room");
    let shard = shard::shard_of(&room, SHARDS);
    assert!(state.apply_table(table(1, "node-a", None)).await);
    assert!(
        state
            .apply_table(table(2, "node-a", Some((shard, "node-c"))))
            .await
    );
    let member = MemberKey {
        node: edge.clone(),
        conn: ConnId(1),
    };
    let snapshot = || PeerMsg::Snapshot {
        shard,
        epoch: 2,
        floor: 0,
        rooms: vec![RoomSnapshot {
            room: room.clone(),
            seq: 5,
            history: Vec::new(),
            members: vec![(member.clone(), "bob".into())],
        }],
    };
    let post = || RoomCommand::Post {
        member: member.clone(),
        user: "bob".into(),
        text: "hi".into(),
        cid: None,
    };
    let acks = |peers: &Peers| {
        peers
            .outbox(&source)
            .iter()
            .filter(|m| matches!(***m, PeerMsg::SnapshotAck { epoch: 2, .. }))
            .count()
    };
    state.on_peer_message(&source, snapshot());
    // Acknowledged once the shard's follower (none here) holds it.
    until(|| acks(&peers) == 1).await;
    state.route(&room, post()).await.expect("posted");
    until(|| seqs_to(&peers, &edge) == [6]).await;
    state.on_peer_message(&source, snapshot());
    assert_eq!(acks(&peers), 2, "the repeat is acknowledged again");
    state.route(&room, post()).await.expect("posted");
    until(|| seqs_to(&peers, &edge) == [6, 7]).await;
}

/// Error answers waiting in the outbox to `edge`.
fn errors_to(peers: &Peers, edge: &NodeName) -> usize {
    peers
        .outbox(edge)
        .iter()
        .filter(|m| matches!(&***m, PeerMsg::Event(EdgeEvent::ToConn { frame, .. }) if frame.as_str().contains("room_unavailable")))
        .count()
}

#[tokio::test(start_paused = true)]
async fn commands_ahead_of_this_nodes_table_wait_in_a_bounded_buffer_and_the_rest_are_answered() {
    let (state, peers) = old_owner();
    assert!(state.apply_table(table(1, "node-c", None)).await);
    let buffer = state.settings.handoff.buffer;
    let (edge, room) = (name("node-b"), RoomId::new("r").expect("valid room"));
    for i in 0..buffer + 3 {
        let member = MemberKey {
            node: edge.clone(),
            conn: ConnId(1),
        };
        let command = post_by(member, "bob", &i.to_string(), Some(i.to_string()));
        let early = PeerMsg::Command {
            room: room.clone(),
            command,
            hops: 0,
            epoch: 2,
        };
        state.on_peer_message(&edge, early);
    }
    assert_eq!(lock(&state.handoffs).early.len(), buffer, "bounded");
    assert_eq!(
        errors_to(&peers, &edge),
        3,
        "the ones past the bound are answered"
    );
}

/// Joins `room` as user bob on connection `conn` of edge `node-b`.
pub(super) async fn join_from_b(state: &NodeState, room: &RoomId, conn: u64) -> MemberKey {
    let member = MemberKey {
        node: name("node-b"),
        conn: ConnId(conn),
    };
    let join = RoomCommand::Join {
        member: member.clone(),
        user: "bob".into(),
        since: None,
    };
    state.route(room, join).await.expect("joined");
    member
}

/// Joins `room` from edge `node-b`, says `posts` messages and leaves, so that it passivates.
async fn talk_and_leave(state: &NodeState, room: &RoomId, posts: usize) {
    let member = join_from_b(state, room, 1).await;
    for i in 0..posts {
        let post = post_by(member.clone(), "bob", &i.to_string(), None);
        state.route(room, post).await.expect("posted");
    }
    let leave = RoomCommand::Leave {
        member,
        reply: false,
    };
    state.route(room, leave).await.expect("left");
}

#[tokio::test(start_paused = true)]
async fn a_room_forgotten_on_the_old_owner_comes_back_on_the_new_one_above_its_old_seq() {
    let rooms = RoomSettings {
        history_limit: 10,
        queue: 64,
        passivate_after: Duration::from_secs(1),
        send_timeout: Duration::from_secs(1),
        remembered: 1,
    };
    let (old, old_peers) = node_c_with(1000, rooms.clone());
    let (edge, new_owner) = (name("node-b"), name("node-a"));
    let room = RoomId::new("r").expect("valid room");
    let shard = shard::shard_of(&room, SHARDS);
    assert!(old.apply_table(table(1, "node-c", None)).await);
    talk_and_leave(&old, &room, 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // A second room to remember pushes `r` out of a memory of one room.
    talk_and_leave(&old, &RoomId::new("other").expect("valid room"), 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(old.rooms.active(), 0, "both rooms passivated");
    assert_eq!(old.rooms.sizes().remembered, 1, "`r` was forgotten");
    assert!(
        old.apply_table(table(2, "node-c", Some((shard, "node-a"))))
            .await
    );
    until(|| has_snapshot(&old_peers, &new_owner)).await;
    let snapshot = old_peers
        .outbox(&new_owner)
        .into_iter()
        .find(|m| matches!(**m, PeerMsg::Snapshot { .. }))
        .expect("the shard's snapshot");
    let PeerMsg::Snapshot {
        floor,
        rooms: ref snapshots,
        ..
    } = *snapshot
    else {
        unreachable!("matched above")
    };
    assert_eq!(floor, 3, "the snapshot carries the floor `r` left");
    assert!(
        snapshots.iter().all(|s| s.room != room),
        "nothing else of `r`"
    );

    // Another node-c plays the new owner, to which node-a hands the shard.
    let (new, new_peers) = node_c_with(1000, rooms);
    assert!(new.apply_table(table(1, "node-a", None)).await);
    assert!(
        new.apply_table(table(2, "node-a", Some((shard, "node-c"))))
            .await
    );
    new.on_peer_message(&new_owner, (*snapshot).clone());
    talk_and_leave(&new, &room, 1).await;
    until(|| seqs_to(&new_peers, &edge) == [4]).await;
}
