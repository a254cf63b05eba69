//! An owner's whole-shard copies to a new follower go one shard at a time, each after the
//! follower handled the last, and a follower that restarted gets them all again: the follower
//! is played by the test (the owner's link to it has no connection, so what it sends waits in
//! the outbox until the test acknowledges it).

use std::sync::Arc;

use shard::{AssignmentTable, RoomId, ShardId};

use super::handoff_tests::{
    SHARDS, join_from_b, messages_to, name, node_c, post_by, three_nodes, until,
};
use super::replicas::SYNC_TURN;
use super::*;
use crate::replication::{Answer, Change};

/// Every shard owned by `node-c`, followed by `follower` (or by nobody).
fn owned_by_c(epoch: u64, follower: Option<&str>) -> AssignmentTable {
    let nodes = three_nodes();
    let owners = vec![Some(name("node-c")); SHARDS as usize];
    let followers = vec![follower.map(name); SHARDS as usize];
    let mut table = AssignmentTable::with_roles(owners, followers, nodes).expect("valid table");
    table.epoch = epoch;
    table
}

/// The shards whose copy `node-a` was told is whole, in the order the owner queued them.
fn caught_up(peers: &Peers) -> Vec<ShardId> {
    peers
        .outbox(&name("node-a"))
        .iter()
        .filter_map(|m| match **m {
            PeerMsg::CaughtUp { shard, .. } => Some(shard),
            _ => None,
        })
        .collect()
}

/// The rooms queued whole for `node-a`.
fn whole_rooms(peers: &Peers) -> Vec<RoomId> {
    peers
        .outbox(&name("node-a"))
        .iter()
        .filter_map(|m| match &**m {
            PeerMsg::Replicate {
                room,
                change: Change::Whole(_),
                ..
            } => Some(room.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_new_follower_gets_one_shard_whole_at_a_time_each_after_it_handled_the_last() {
    let (state, peers) = node_c(1000);
    assert!(state.apply_table(owned_by_c(1, None)).await);
    // One room in each of two shards, idle (no change carries them whole by itself).
    let first = RoomId::new("r").expect("valid room");
    let first_shard = shard::shard_of(&first, SHARDS);
    let second = (0..)
        .map(|n| RoomId::new(format!("q{n}")).expect("valid room"))
        .find(|room| shard::shard_of(room, SHARDS) > first_shard)
        .expect("a room of a later shard");
    join_from_b(&state, &first, 1).await;
    join_from_b(&state, &second, 2).await;
    // The rooms have handled the joins (each told node-b) before the follower is named.
    until(|| peers.outbox(&name("node-b")).len() >= 2).await;
    assert!(state.apply_table(owned_by_c(2, Some("node-a"))).await);

    // Shards go in order, each holding the turn until node-a answers.
    let second_shard = shard::shard_of(&second, SHARDS);
    let mut told: Vec<ShardId> = Vec::new();
    while !told.contains(&second_shard) {
        until(|| !caught_up(&peers).is_empty()).await;
        let queued = caught_up(&peers);
        assert_eq!(queued.len(), 1, "one shard's copy at a time: {queued:?}");
        let expected: &[RoomId] = match queued[0] {
            s if s == first_shard => std::slice::from_ref(&first),
            s if s == second_shard => std::slice::from_ref(&second),
            _ => &[],
        };
        assert_eq!(whole_rooms(&peers), expected, "only this shard's rooms");
        tokio::time::sleep(SYNC_TURN / 2).await;
        assert_eq!(
            caught_up(&peers),
            queued,
            "the next shard waits while the follower has not handled this one"
        );
        told.extend(queued);
        peers.ack_all(&name("node-a"));
    }

    // A follower that stops answering holds each turn for `SYNC_TURN` only: every shard is
    // still copied.
    tokio::time::sleep(SYNC_TURN * SHARDS).await;
    let mut all: Vec<ShardId> = told.into_iter().chain(caught_up(&peers)).collect();
    all.sort();
    assert_eq!(all, all_shards());
}

/// The replication ids of `room`'s changes queued for `node-a`, whole ones marked `true`.
fn changes_for_a(peers: &Peers, room: &RoomId) -> Vec<(u64, bool)> {
    peers
        .outbox(&name("node-a"))
        .iter()
        .filter_map(|m| match &**m {
            PeerMsg::Replicate {
                room: r,
                rid,
                change,
                ..
            } if r == room => Some((*rid, matches!(change, Change::Whole(_)))),
            _ => None,
        })
        .collect()
}

/// node-a answers that it holds change `rid` of `room` (and every one before it).
fn a_holds(state: &Arc<NodeState>, room: &RoomId, rid: u64) {
    let answer = PeerMsg::Replicated {
        shard: shard::shard_of(room, SHARDS),
        room: room.clone(),
        rid,
        answer: Answer::Held,
    };
    state.on_peer_message(&name("node-a"), answer);
}

#[tokio::test(start_paused = true)]
async fn a_follower_that_restarted_gets_every_shard_whole_again_and_held_messages_go_out() {
    let (state, peers) = node_c(1000);
    assert!(state.apply_table(owned_by_c(1, Some("node-a"))).await);
    peers.met(&name("node-a"), 1);
    // A room whose shard is not the first to be copied again, so that its turn is not soon.
    let room = (0..)
        .map(|n| RoomId::new(format!("r{n}")).expect("valid room"))
        .find(|room| shard::shard_of(room, SHARDS).0 >= 2)
        .expect("a room of a later shard");
    let member = join_from_b(&state, &room, 1).await;
    // The first copies go whole and node-a holds them all.
    until(|| !changes_for_a(&peers, &room).is_empty()).await;
    for (rid, _) in changes_for_a(&peers, &room) {
        a_holds(&state, &room, rid);
    }
    assert_eq!(every_shard_copied(&peers).await, all_shards());
    peers.ack_all(&name("node-b"));

    // A message goes to node-a as a change; its delivery waits for node-a's answer.
    state
        .route(&room, post_by(member, "bob", "hello", None))
        .await
        .expect("posted");
    until(|| !changes_for_a(&peers, &room).is_empty()).await;
    assert_eq!(messages_to(&peers, &name("node-b")), 0, "held for node-a");

    // node-a restarts: the change is bounced, never answered.
    peers.met(&name("node-a"), 2);
    assert!(changes_for_a(&peers, &room).is_empty(), "bounced");
    // The room goes whole to the new process at once, not at its shard's turn.
    tokio::time::sleep(SYNC_TURN / 2).await;
    let resent = changes_for_a(&peers, &room);
    assert!(
        resent.first().is_some_and(|&(_, whole)| whole),
        "the room is sent whole again before its shard's turn: {resent:?}"
    );
    assert_eq!(messages_to(&peers, &name("node-b")), 0, "still held");
    a_holds(&state, &room, resent[0].0);
    until(|| messages_to(&peers, &name("node-b")) == 1).await;

    // And every shard it follows is copied to it whole again.
    assert_eq!(every_shard_copied(&peers).await, all_shards());
}

fn all_shards() -> Vec<ShardId> {
    (0..SHARDS).map(ShardId).collect()
}

/// Play node-a handling each shard's copy as it comes, until it was told every shard is
/// whole; returns the shards, sorted.
async fn every_shard_copied(peers: &Peers) -> Vec<ShardId> {
    let mut told = Vec::new();
    while told.len() < SHARDS as usize {
        until(|| !caught_up(peers).is_empty()).await;
        told.extend(caught_up(peers));
        peers.ack_all(&name("node-a"));
    }
    told.sort();
    told
}

/// Seed 2412 of the simulation: once a shard's rooms are deposed here (the table gave the
/// shard to another node without a hand-off from this one), their changes still queued for
/// the follower are withdrawn, so none can reach a copy late, under a table that names this
/// node the owner again.
#[tokio::test(start_paused = true)]
async fn a_deposed_rooms_changes_still_queued_for_the_follower_are_withdrawn() {
    let (state, peers) = node_c(1000);
    assert!(state.apply_table(owned_by_c(1, Some("node-a"))).await);
    let room = RoomId::new("r").expect("valid room");
    let member = join_from_b(&state, &room, 1).await;
    state
        .route(&room, post_by(member, "bob", "hi", None))
        .await
        .expect("posted");
    until(|| changes_for_a(&peers, &room).len() >= 2).await;
    // node-c was cut off: the table gives every shard to node-b, with no hand-off.
    let owners = vec![Some(name("node-b")); SHARDS as usize];
    let followers = vec![Some(name("node-a")); SHARDS as usize];
    let mut taken =
        AssignmentTable::with_roles(owners, followers, three_nodes()).expect("valid table");
    taken.epoch = 2;
    assert!(state.apply_table(taken).await);
    assert_eq!(
        changes_for_a(&peers, &room),
        Vec::new(),
        "the deposed room's changes are withdrawn from the link"
    );
}
