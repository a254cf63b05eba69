//! A client that invents room names cannot grow a node for good: once it has left and the
//! rooms passivated, every registry is back to its baseline, and a room the node forgot still
//! continues above its old seq when it comes back.

mod support;

use std::time::Duration;

use node::edge::HubSizes;
use node::rooms::RegistrySizes;
use serde_json::json;
use support::{Client, TestNode};

/// Distinct rooms the hostile client joins and leaves.
const ROOMS: usize = 20_000;
/// Rooms a node remembers the seq of in these tests.
const REMEMBERED: usize = 100;
/// Rooms sent per burst before the client reads their answers.
const BURST: usize = 200;

const FLAGS: [&str; 10] = [
    "--rate-per-sec",
    "1000000",
    "--rate-burst",
    "1000000",
    "--outgoing-queue",
    "100000",
    "--passivate-after",
    "20ms",
    "--remembered-rooms",
    "100",
];

/// Join and leave `rooms`, in bursts, posting `posts` messages in each while in it.
async fn visit(client: &mut Client, rooms: impl Iterator<Item = String>, posts: usize) {
    let rooms: Vec<String> = rooms.collect();
    for burst in rooms.chunks(BURST) {
        for room in burst {
            client.send(json!({"op": "join", "room": room})).await;
            for i in 0..posts {
                client
                    .send(json!({"op": "send", "room": room, "text": "x", "cid": i.to_string()}))
                    .await;
            }
            client.send(json!({"op": "leave", "room": room})).await;
        }
        for _ in burst {
            client.recv_op("left").await;
        }
    }
}

/// Wait until every room actor has passivated (a condition polled, not a timed assertion).
async fn until_passivated(node: &TestNode) {
    for _ in 0..2_000 {
        if node.state.rooms.sizes().running == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("rooms never passivated: {:?}", node.state.rooms.sizes());
}

#[tokio::test]
async fn joining_and_leaving_many_distinct_rooms_leaves_the_registries_at_their_baseline() {
    let node = TestNode::start(&FLAGS).await;
    let mut client = node.client("mallory").await;
    visit(&mut client, (0..ROOMS).map(|i| format!("junk-{i}")), 0).await;
    until_passivated(&node).await;
    assert_eq!(
        node.state.rooms.sizes(),
        RegistrySizes::default(),
        "rooms without messages leave nothing behind"
    );
    assert_eq!(
        node.state.hub.sizes(),
        HubSizes { rooms: 0, conns: 1 },
        "the edge keeps only the connection itself"
    );

    // Rooms with messages are remembered, up to the bound.
    visit(&mut client, (0..ROOMS / 10).map(|i| format!("said-{i}")), 1).await;
    until_passivated(&node).await;
    let sizes = node.state.rooms.sizes();
    assert_eq!(sizes.running, 0);
    assert_eq!(sizes.remembered, REMEMBERED, "never more than the bound");
    drop(client);
    node.shutdown().await;
}

#[tokio::test]
async fn a_room_the_node_forgot_continues_above_its_old_seq() {
    let node = TestNode::start(&FLAGS).await;
    let mut client = node.client("ann").await;
    // `first` gets three messages, then rests; enough other rooms rest after it that the node
    // forgets it.
    visit(&mut client, std::iter::once("first".to_string()), 3).await;
    until_passivated(&node).await;
    visit(
        &mut client,
        (0..10 * REMEMBERED).map(|i| format!("later-{i}")),
        1,
    )
    .await;
    until_passivated(&node).await;
    assert!(node.state.rooms.sizes().remembered <= REMEMBERED);

    let joined = client.join_since("first", 0).await;
    client.say("first", "again", "c").await;
    let msg = client.recv_op("msg").await;
    let seq = msg["seq"].as_u64().expect("a seq");
    assert!(
        seq > 3,
        "seq continues above the old one, got {seq} (joined: {joined})"
    );
    drop(client);
    node.shutdown().await;
}
