//! An owner's whole-shard copies to a new follower go one shard at a time, each after the
//! follower handled the last: the follower is played by the test (the owner's link to it has
//! no connection, so what it sends waits in the outbox until the test acknowledges it).

use shard::{AssignmentTable, RoomId, ShardId};

use super::handoff_tests::{SHARDS, join_from_b, name, node_c, three_nodes, until};
use super::replicas::SYNC_TURN;
use super::*;
use crate::replication::Change;

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
    assert_eq!(all, (0..SHARDS).map(ShardId).collect::<Vec<_>>());
}
