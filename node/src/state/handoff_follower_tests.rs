//! A hand-off waits for the follower to hold the room's last change before the snapshot goes
//! and what that change produced for members is released: until the new owner installs the
//! snapshot, the follower's copy is the message's second node. The follower (`node-a`) and
//! the new owner (`node-b`, also the member's edge) are played by the test.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shard::{AssignmentTable, Move, NodeInfo, RoomId, ShardId};

use super::handoff_tests::{SHARDS, join_from_b, name, node_c, post_by, until};
use super::*;
use crate::replication::{Answer, Change};

/// Every shard owned by `node-c` and followed by `node-a`; `moved` goes to `node-b`.
fn followed_by_a(epoch: u64, moved: Option<ShardId>) -> AssignmentTable {
    let nodes: BTreeMap<NodeName, NodeInfo> = ["node-a", "node-b", "node-c"]
        .into_iter()
        .map(|n| (name(n), NodeInfo::new("127.0.0.1:9")))
        .collect();
    let mut owners = vec![Some(name("node-c")); SHARDS as usize];
    let followers = vec![Some(name("node-a")); SHARDS as usize];
    let mut moves = Vec::new();
    if let Some(shard) = moved {
        owners[shard.0 as usize] = Some(name("node-b"));
        moves.push(Move {
            shard,
            from: name("node-c"),
            to: name("node-b"),
        });
    }
    let mut table = AssignmentTable::with_roles(owners, followers, nodes).expect("valid table");
    table.epoch = epoch;
    table.moves = moves;
    table
}

/// The changes for `room` waiting for node-a's answer: their replication ids.
fn changes_to_follower(peers: &Peers, room: &RoomId) -> Vec<(u64, bool)> {
    peers
        .outbox(&name("node-a"))
        .iter()
        .filter_map(|m| match &**m {
            PeerMsg::Replicate {
                room: r,
                rid,
                change,
                ..
            } if r == room => Some((*rid, matches!(change, Change::Message { .. }))),
            _ => None,
        })
        .collect()
}

/// What node-b was sent: `m` for a chat message, `s` for a snapshot.
fn to_new_owner(peers: &Peers) -> String {
    peers
        .outbox(&name("node-b"))
        .iter()
        .filter_map(|m| match &**m {
            PeerMsg::Event(EdgeEvent::Broadcast { is_msg: true, .. }) => Some('m'),
            PeerMsg::Snapshot { .. } => Some('s'),
            _ => None,
        })
        .collect()
}

/// node-a answers that it holds change `rid` of `room` (and every one before it).
fn follower_holds(state: &Arc<NodeState>, room: &RoomId, rid: u64) {
    let answer = PeerMsg::Replicated {
        shard: shard::shard_of(room, SHARDS),
        room: room.clone(),
        rid,
        answer: Answer::Held,
    };
    state.on_peer_message(&name("node-a"), answer);
}

/// `node-c` owns room `r` (its member on `node-b`); the member's message is on its way to
/// the follower when the table moves the shard to `node-b`. Returns the message's change id.
async fn hand_off_with_a_message_unconfirmed() -> (Arc<NodeState>, Arc<Peers>, RoomId, u64) {
    let (state, peers) = node_c(1000);
    let room = RoomId::new("r").expect("valid room");
    let shard = shard::shard_of(&room, SHARDS);
    assert!(state.apply_table(followed_by_a(1, None)).await);
    let member = join_from_b(&state, &room, 1).await;
    // The follower holds the room (its whole state went with the join) before the message.
    until(|| !changes_to_follower(&peers, &room).is_empty()).await;
    for (rid, _) in changes_to_follower(&peers, &room) {
        follower_holds(&state, &room, rid);
    }
    peers.ack_all(&name("node-a"));
    peers.ack_all(&name("node-b"));
    state
        .route(&room, post_by(member, "bob", "last words", None))
        .await
        .expect("posted");
    until(|| changes_to_follower(&peers, &room).iter().any(|(_, m)| *m)).await;
    let (rid, _) = changes_to_follower(&peers, &room)[0];
    assert!(state.apply_table(followed_by_a(2, Some(shard))).await);
    (state, peers, room, rid)
}

#[tokio::test(start_paused = true)]
async fn the_snapshot_waits_for_the_follower_to_hold_the_rooms_last_message() {
    let (state, peers, room, rid) = hand_off_with_a_message_unconfirmed().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        to_new_owner(&peers),
        "",
        "neither the message nor the snapshot goes before the follower holds the message"
    );
    follower_holds(&state, &room, rid);
    until(|| to_new_owner(&peers) == "ms").await;
    let seq = peers
        .outbox(&name("node-b"))
        .iter()
        .find_map(|m| match &**m {
            PeerMsg::Snapshot { rooms, .. } => Some(rooms[0].seq),
            _ => None,
        });
    assert_eq!(seq, Some(1), "the snapshot carries the message");
}

#[tokio::test(start_paused = true)]
async fn a_follower_that_never_answers_delays_the_hand_off_by_the_hold_only() {
    let (_state, peers, _room, _rid) = hand_off_with_a_message_unconfirmed().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(to_new_owner(&peers), "");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        to_new_owner(&peers),
        "ms",
        "after the hold the message is released and the snapshot follows it"
    );
}
