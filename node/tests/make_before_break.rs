//! A client told `reconnect` by a node that is going away moves make-before-break: the told
//! connection is still served (deliveries, answers to sends) while the client opens its next
//! connection on another node and re-joins with `since`; the room never falls silent for it and
//! its seqs run on without a gap across the two connections.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::Client;
use support::cluster::{ClusterNode, TableServer, plan, settle, wait_linked};
use tokio_tungstenite::tungstenite::Message;

const SHARDS: u32 = 16;

/// The next `msg` frame (presence and other frames skipped).
async fn next_msg(client: &mut Client) -> Value {
    client.recv_op("msg").await
}

fn seq(frame: &Value) -> u64 {
    frame["seq"].as_u64().expect("seq")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_told_connection_keeps_delivering_until_the_client_has_joined_elsewhere() {
    let server = TableServer::start(SHARDS).await;
    let stays = ClusterNode::start("node-0", &server.url, SHARDS, &[]).await;
    let goes = ClusterNode::start("node-1", &server.url, SHARDS, &[]).await;
    // node-1 is drained first, as the operator does before it stops a node: it owns nothing,
    // so its exit drain is over at once and its clients are told to reconnect.
    let table = plan(&server.current(), &[&stays, &goes], &["node-1"]);
    server.publish(table);
    settle(&server, &[&stays, &goes]).await;
    wait_linked(&[&stays, &goes]).await;

    let room = "lobby";
    let mut old = goes.client("ann").await;
    old.join(room).await;
    let mut bob = stays.client("bob").await;
    bob.join(room).await;
    bob.say(room, "before", "b1").await;
    let first = next_msg(&mut old).await;
    assert_eq!((seq(&first), first["text"].as_str()), (1, Some("before")));

    let stopping = tokio::spawn(goes.stop());
    let told = old.recv_op("reconnect").await;
    assert_eq!(told["reason"], "node shutting down");

    // Told, and still served: a message from elsewhere arrives, and a send is answered.
    bob.say(room, "while told", "b2").await;
    let during = next_msg(&mut old).await;
    assert_eq!(
        (seq(&during), during["text"].as_str()),
        (2, Some("while told"))
    );
    old.say(room, "from the old connection", "a1").await;
    let echo = next_msg(&mut old).await;
    assert_eq!((seq(&echo), echo["cid"].as_str()), (3, Some("a1")));

    // The new connection re-joins with `since`: nothing was missed, so no history.
    let mut new = stays.client("ann").await;
    let joined = new.join_since(room, 3).await;
    assert_eq!(joined["seq"], 3);
    assert_eq!(joined["history"].as_array().map(Vec::len), Some(0));

    // Both connections now deliver the next message, under the same id: the client keeps one.
    bob.say(room, "after", "b3").await;
    let on_new = next_msg(&mut new).await;
    let on_old = next_msg(&mut old).await;
    assert_eq!(seq(&on_new), 4);
    assert_eq!(on_new["id"], on_old["id"]);

    // The client lets the old connection go; the node then finishes its exit.
    old.send_raw(Message::Close(None)).await;
    assert!(matches!(
        old.ending(Duration::from_secs(10)).await,
        support::Ending::Closed { .. } | support::Ending::Dropped
    ));
    stopping.await.expect("node-1 stops");
    bob.say(room, "last", "b4").await;
    assert_eq!(seq(&next_msg(&mut new).await), 5);
}
