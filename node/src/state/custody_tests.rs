//! Custody on one node, with its peers played by the test (its links have no connection, so
//! what it sends waits in their outboxes): frozen rooms always have a holder. A redirected
//! hand-off sends the rooms it froze, a shard given back is served from them, a target merges
//! its own copy, acknowledges only what it installed and only once its follower holds it, a
//! hand-off freezes only once the follower holds the rooms' last changes, and a restarted
//! process sends nothing for its predecessor's hand-offs.

use std::time::Duration;

use shard::{AssignmentTable, Move, RoomId, ShardId};

use super::handoff_tests::{
    SHARDS, join_from_b, messages_to, name, node_c, post_by, table, three_nodes, until,
};
use super::*;
use crate::peer::wire::PeerMsg;
use crate::replication::{Answer, Change};
use crate::room::RoomSnapshot;

/// Every shard owned by `owner` and followed by `follower`, with `moved` (shard, from, to)
/// in flight.
fn roles(
    epoch: u64,
    owner: &str,
    follower: &str,
    moved: Option<(ShardId, &str, &str)>,
) -> AssignmentTable {
    let mut owners = vec![Some(name(owner)); SHARDS as usize];
    let mut followers = vec![Some(name(follower)); SHARDS as usize];
    let mut moves = Vec::new();
    if let Some((shard, from, to)) = moved {
        owners[shard.0 as usize] = Some(name(to));
        if follower == to {
            followers[shard.0 as usize] = Some(name(from));
        }
        moves.push(Move {
            shard,
            from: name(from),
            to: name(to),
        });
    }
    let mut t = AssignmentTable::with_roles(owners, followers, three_nodes()).expect("valid table");
    t.epoch = epoch;
    t.moves = moves;
    t
}

/// A snapshot as the test reads it: (shard, epoch, rooms with their seq).
type SentSnapshot = (ShardId, u64, Vec<(RoomId, u64)>);

/// The snapshots queued for `to`.
fn snapshots_to(peers: &Peers, to: &str) -> Vec<SentSnapshot> {
    peers
        .outbox(&name(to))
        .iter()
        .filter_map(|m| match &**m {
            PeerMsg::Snapshot {
                shard,
                epoch,
                rooms,
                ..
            } => Some((
                *shard,
                *epoch,
                rooms.iter().map(|r| (r.room.clone(), r.seq)).collect(),
            )),
            _ => None,
        })
        .collect()
}

fn acks_to(peers: &Peers, to: &str) -> usize {
    peers
        .outbox(&name(to))
        .iter()
        .filter(|m| matches!(***m, PeerMsg::SnapshotAck { .. }))
        .count()
}

/// `node-c` owns room `r` (member on edge `node-b`, which has handled everything) after
/// `posts` messages.
async fn c_owns_r_after(posts: usize) -> (Arc<NodeState>, Arc<Peers>, RoomId, ShardId) {
    let (state, peers) = node_c(1000);
    let room = RoomId::new("r").expect("valid room");
    let shard = shard::shard_of(&room, SHARDS);
    assert!(state.apply_table(table(1, "node-c", None)).await);
    let member = join_from_b(&state, &room, 1).await;
    for i in 0..posts {
        let post = post_by(member.clone(), "bob", &i.to_string(), None);
        state.route(&room, post).await.expect("posted");
    }
    until(|| messages_to(&peers, &name("node-b")) == posts).await;
    peers.ack_all(&name("node-b"));
    (state, peers, room, shard)
}

/// node-a sends `shard`'s snapshot of the table of `epoch`: `room` resting at `seq`.
fn resting_snapshot_from_a(
    state: &Arc<NodeState>,
    shard: ShardId,
    epoch: u64,
    room: &RoomId,
    seq: u64,
) {
    let snapshot = PeerMsg::Snapshot {
        shard,
        epoch,
        floor: 0,
        rooms: vec![RoomSnapshot::resting(room.clone(), seq)],
    };
    state.on_peer_message(&name("node-a"), snapshot);
}

/// Table 2 moves `shard` from node-c to node-a; returns once the snapshot is queued for node-a.
async fn hand_to_a(state: &Arc<NodeState>, peers: &Peers, shard: ShardId) {
    assert!(
        state
            .apply_table(table(2, "node-c", Some((shard, "node-a"))))
            .await
    );
    until(|| !snapshots_to(peers, "node-a").is_empty()).await;
}

#[tokio::test(start_paused = true)]
async fn a_hand_off_whose_target_left_sends_the_rooms_it_froze_to_the_new_target() {
    let (state, peers, room, shard) = c_owns_r_after(2).await;
    hand_to_a(&state, &peers, shard).await;
    // node-a leaves before it acknowledged; the move now goes to node-b.
    assert!(
        state
            .apply_table(table(3, "node-c", Some((shard, "node-b"))))
            .await
    );
    until(|| !snapshots_to(&peers, "node-b").is_empty()).await;
    let sent = snapshots_to(&peers, "node-b");
    assert_eq!(
        sent,
        [(shard, 3, vec![(room, 2)])],
        "the same rooms, at the new table's epoch, never frozen again empty"
    );
    assert_eq!(state.status().moves_in_flight, 1, "kept until acknowledged");
    state.on_peer_message(&name("node-b"), PeerMsg::SnapshotAck { shard, epoch: 3 });
    assert_eq!(state.status().moves_in_flight, 0);
    assert_eq!(
        state.status().moves_done,
        [Move {
            shard,
            from: name("node-c"),
            to: name("node-b")
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn a_shard_given_back_to_its_source_is_served_from_the_rooms_it_froze() {
    let (state, peers, room, shard) = c_owns_r_after(2).await;
    hand_to_a(&state, &peers, shard).await;
    assert!(state.apply_table(table(3, "node-c", None)).await);
    until(|| state.rooms.last_seq(&room) == 2).await;
    let member = join_from_b(&state, &room, 2).await;
    state
        .route(&room, post_by(member, "bob", "again", None))
        .await
        .expect("posted");
    until(|| state.rooms.last_seq(&room) == 3).await;
    assert_eq!(state.status().moves_in_flight, 0, "nothing kept any more");
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_of_a_shard_this_node_does_not_receive_is_not_acknowledged() {
    let (state, peers) = node_c(1000);
    assert!(state.apply_table(table(1, "node-a", None)).await);
    let room = RoomId::new("r").expect("valid room");
    let shard = shard::shard_of(&room, SHARDS);
    let stray = PeerMsg::Snapshot {
        shard,
        epoch: 1,
        floor: 0,
        rooms: vec![RoomSnapshot::resting(room, 4)],
    };
    state.on_peer_message(&name("node-b"), stray);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        acks_to(&peers, "node-b"),
        0,
        "its sender keeps the rooms: nobody here installed them"
    );
}

#[tokio::test(start_paused = true)]
async fn a_target_merges_the_copy_it_kept_with_the_snapshot_and_acknowledges_once_its_follower_holds_it()
 {
    let (state, peers) = node_c(1000);
    let (kept, sent) = (
        RoomId::new("r").expect("valid room"),
        RoomId::new("q").expect("valid room"),
    );
    let shard = shard::shard_of(&kept, SHARDS);
    let sent = (0..)
        .map(|n| RoomId::new(format!("{sent}{n}")).expect("valid room"))
        .find(|r| shard::shard_of(r, SHARDS) == shard)
        .expect("another room of the shard");
    // node-c follows every shard of node-a, and holds room `kept` at seq 3.
    assert!(state.apply_table(roles(1, "node-a", "node-c", None)).await);
    let whole = Change::Whole(RoomSnapshot {
        room: kept.clone(),
        seq: 3,
        history: Vec::new(),
        members: Vec::new(),
    });
    state.on_peer_message(
        &name("node-a"),
        PeerMsg::Replicate {
            shard,
            epoch: 1,
            room: kept.clone(),
            rid: 1,
            change: whole,
        },
    );
    // The shard moves to node-c (which followed it); node-b follows it now.
    assert!(
        state
            .apply_table(roles(
                2,
                "node-a",
                "node-b",
                Some((shard, "node-a", "node-c"))
            ))
            .await
    );
    resting_snapshot_from_a(&state, shard, 2, &sent, 7);
    until(|| state.rooms.last_seq(&sent) == 7).await;
    assert_eq!(
        state.rooms.last_seq(&kept),
        3,
        "the kept copy's room is served too"
    );
    // The follower (node-b) has not handled the shard's copy: no acknowledgement yet, so
    // node-a keeps its frozen rooms.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(acks_to(&peers, "node-a"), 0);
    peers.ack_all(&name("node-b"));
    until(|| acks_to(&peers, "node-a") == 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_hand_off_freezes_only_once_the_follower_holds_the_rooms_last_changes() {
    let (state, peers) = node_c(1000);
    let room = RoomId::new("r").expect("valid room");
    let shard = shard::shard_of(&room, SHARDS);
    assert!(state.apply_table(roles(1, "node-c", "node-a", None)).await);
    let member = join_from_b(&state, &room, 1).await;
    state
        .route(&room, post_by(member, "bob", "last words", None))
        .await
        .expect("posted");
    // Every change so far waits for node-a's answer.
    let rids = || -> Vec<u64> {
        peers
            .outbox(&name("node-a"))
            .iter()
            .filter_map(|m| match &**m {
                PeerMsg::Replicate { rid, .. } => Some(*rid),
                _ => None,
            })
            .collect()
    };
    until(|| rids().len() >= 2).await;
    peers.ack_all(&name("node-b"));
    assert!(
        state
            .apply_table(roles(
                2,
                "node-c",
                "node-a",
                Some((shard, "node-c", "node-b"))
            ))
            .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        snapshots_to(&peers, "node-b").is_empty(),
        "no snapshot while the follower has not answered the message"
    );
    let last = *rids().iter().max().expect("a change");
    state.on_peer_message(
        &name("node-a"),
        PeerMsg::Replicated {
            shard,
            room: room.clone(),
            rid: last,
            answer: Answer::Held,
        },
    );
    // The message is acknowledged (its echo goes to node-b) and the snapshot follows.
    until(|| messages_to(&peers, &name("node-b")) == 1).await;
    until(|| !snapshots_to(&peers, "node-b").is_empty()).await;
    assert_eq!(snapshots_to(&peers, "node-b")[0].2, [(room, 1)]);
}

#[tokio::test(start_paused = true)]
async fn a_restarted_process_sends_nothing_for_its_predecessors_hand_off_and_is_not_ready() {
    let (state, peers) = node_c(1000);
    let shard = ShardId(1);
    // Only the moving shard was node-c's: node-a receives it, node-b owns the rest.
    let mut owners = vec![Some(name("node-b")); SHARDS as usize];
    owners[shard.0 as usize] = Some(name("node-a"));
    let mut starting = AssignmentTable::with_owners(owners, three_nodes()).expect("valid");
    starting.epoch = 5;
    starting.moves = vec![Move {
        shard,
        from: name("node-c"),
        to: name("node-a"),
    }];
    state.restarted_in_place();
    state.inherit(Some(&starting));
    assert!(state.apply_table(starting.clone()).await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        snapshots_to(&peers, "node-a").is_empty(),
        "its frozen rooms died with the old process: nothing, not an empty snapshot"
    );
    assert!(!state.inheritance_settled(), "not ready");
    // The operator lets the follower stand in: the move goes on from node-b.
    let mut stood_in = starting;
    stood_in.epoch = 6;
    stood_in.moves = vec![Move {
        shard,
        from: name("node-b"),
        to: name("node-a"),
    }];
    assert!(state.apply_table(stood_in).await);
    assert!(state.inheritance_settled(), "ready again");
}

/// Seed 620 of the simulation: an owner cut off past its failover comes back to a table that
/// moves the shard back to it from the node that owned it meanwhile. Its own rooms are an old
/// prefix of the room: it drops them, buffers what comes meanwhile, and goes on from the seq
/// of that node's snapshot. Before, it kept its rooms, answered the snapshot with an
/// acknowledgement alone and gave out seqs the other node had given already.
#[tokio::test(start_paused = true)]
async fn an_owner_back_to_a_move_to_it_drops_its_old_rooms_for_the_snapshot() {
    let (state, _peers, room, shard) = c_owns_r_after(2).await;
    // Tables 2 to 4 gave the shard to node-a (node-c missed them); table 5 moves it back.
    assert!(
        state
            .apply_table(table(5, "node-a", Some((shard, "node-c"))))
            .await
    );
    let member = join_from_b(&state, &room, 2).await;
    state
        .route(&room, post_by(member, "bob", "meanwhile", None))
        .await
        .expect("buffered");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        state.rooms.last_seq(&room),
        2,
        "nothing is given a seq before the snapshot"
    );
    resting_snapshot_from_a(&state, shard, 5, &room, 7);
    until(|| state.rooms.last_seq(&room) == 8).await;
}
