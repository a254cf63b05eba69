//! One connection's sends to a room keep their order across a hand-off of the room, even when
//! the connection's node is neither the old nor the new owner (the sends before the move go
//! through the old owner, which forwards them, and the ones after go straight to the new one).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::cluster::{ClusterNode, TableServer, plan, settle, wait_applied, wait_linked};

const SHARDS: u32 = 16;
const SENDS: usize = 3000;

/// Generous limits: the sender sends in bursts, faster than a client usually may, and neither
/// client reads until the end.
const FLAGS: [&str; 6] = [
    "--rate-per-sec",
    "100000",
    "--rate-burst",
    "100000",
    "--outgoing-queue",
    "100000",
];

/// The texts of the messages in `frames`, in the order they came (which is seq order).
fn texts_in_order(frames: &[Value]) -> Vec<usize> {
    let mut seqs: Vec<(u64, usize)> = frames
        .iter()
        .filter(|f| f["op"] == "msg")
        .filter_map(|f| Some((f["seq"].as_u64()?, f["text"].as_str()?.parse().ok()?)))
        .collect();
    let in_arrival_order: Vec<u64> = seqs.iter().map(|(s, _)| *s).collect();
    assert!(
        in_arrival_order.windows(2).all(|w| w[0] < w[1]),
        "frames arrive in seq order"
    );
    seqs.sort_unstable();
    seqs.into_iter().map(|(_, t)| t).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_sends_keep_their_order_while_their_room_moves_between_two_other_nodes() {
    let server = TableServer::start(SHARDS).await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(ClusterNode::start(&format!("node-{i}"), &server.url, SHARDS, &FLAGS).await);
    }
    let refs: Vec<&ClusterNode> = nodes.iter().collect();
    let table = plan(&server.current(), &refs, &[]);
    let epoch = table.epoch;
    server.publish(table);
    wait_applied(&refs, epoch).await;
    wait_linked(&refs).await;

    // A room owned by node-1; the sender is on node-0, a watcher on node-2 (the new owner).
    let room = (0..500)
        .map(|i| format!("order-{i}"))
        .find(|r| {
            server
                .current()
                .owner_of_room(&shard::RoomId::new(r.as_str()).expect("room"))
                .is_some_and(|o| o.as_str() == "node-1")
        })
        .expect("a room on node-1");
    let mut watcher = nodes[2].client("watcher").await;
    watcher.join(&room).await;
    let mut sender = nodes[0].client("sender").await;
    sender.join(&room).await;

    let sending = {
        let room = room.clone();
        tokio::spawn(async move {
            // Bursts of 10, so that several sends are always in flight when the route changes.
            for k in 0..SENDS {
                sender.say(&room, &k.to_string(), &k.to_string()).await;
                if k % 10 == 9 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            sender
        })
    };
    // Mid-stream, node-1 is drained: its shards, this room's among them, move to the others.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let drained = plan(&server.current(), &refs, &["node-1"]);
    assert!(
        drained
            .owner_of_room(&shard::RoomId::new(room.as_str()).expect("room"))
            .is_some_and(|o| o.as_str() != "node-1"),
        "the room moves"
    );
    server.publish(drained);
    settle(&server, &refs).await;
    let mut sender = sending.await.expect("sender task");

    let mut echoes = Vec::new();
    while echoes.len() < SENDS {
        let frame = sender.recv().await;
        assert_ne!(frame["op"], "error", "no send refused: {frame}");
        if frame["op"] == "msg" {
            echoes.push(frame);
        }
    }
    let mut seen = Vec::new();
    while seen.len() < SENDS {
        let frame = watcher.recv().await;
        if frame["op"] == "msg" {
            seen.push(frame);
        }
    }
    let expected: Vec<usize> = (0..SENDS).collect();
    assert_eq!(
        texts_in_order(&echoes),
        expected,
        "the sender's messages got seqs in the order it sent them"
    );
    assert_eq!(
        texts_in_order(&seen),
        expected,
        "and every member sees that order"
    );
}
