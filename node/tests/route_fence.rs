//! The route fence of a connection, driven directly: a connection whose room changes owner
//! while its earlier commands are unanswered holds its next command until they are answered,
//! so that command cannot overtake them on the way to the new owner.
//!
//! The node's peers are unreachable here, so commands stay queued on the peer links, where
//! `Peers::pending` counts them: that is how the test sees whether a command was routed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_util::SinkExt;
use node::auth::Authenticator;
use node::edge::EdgeEvent;
use node::peer::{PeerSettings, Peers};
use node::{NodeConfig, NodeState};
use shard::{AssignmentTable, Move, NodeInfo, NodeName, RoomId, ShardId};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

const SHARDS: u32 = 4;

fn name(s: &str) -> NodeName {
    NodeName::new(s).expect("valid name")
}

/// Every shard owned by `owner`, with `moves_from` handing each one to it when set.
fn table(epoch: u64, owner: &str, moves_from: Option<&str>) -> AssignmentTable {
    let nodes: BTreeMap<NodeName, NodeInfo> = ["node-0", "node-1", "node-2"]
        .into_iter()
        .map(|n| {
            // Nothing listens there: links keep what they are given.
            let info = NodeInfo::new("127.0.0.1:9");
            (name(n), info)
        })
        .collect();
    let mut t = AssignmentTable::with_owners(vec![Some(name(owner)); SHARDS as usize], nodes)
        .expect("valid table");
    t.epoch = epoch;
    if let Some(from) = moves_from {
        t.moves = (0..SHARDS)
            .map(|s| Move {
                shard: ShardId(s),
                from: name(from),
                to: name(owner),
            })
            .collect();
    }
    t
}

/// Waits until `peers` hold `count` commands, or panics after a while.
async fn routed(peers: &Peers, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while peers.pending() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {count} commands routed, have {}",
            peers.pending()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn text(frame: serde_json::Value) -> Message {
    Message::Text(frame.to_string().into())
}

#[tokio::test]
async fn a_send_after_its_room_changed_owner_waits_for_the_answers_to_the_earlier_ones() {
    let config = NodeConfig::try_parse_from([
        "roomshard-node",
        "--name",
        "node-0",
        "--shards",
        &SHARDS.to_string(),
    ])
    .expect("flags");
    let settings = config
        .settings("127.0.0.1:7000".parse().expect("addr"))
        .expect("settings");
    let peers = Peers::new(PeerSettings {
        me: name("node-0"),
        secret: b"secret".to_vec().into(),
        max_unacked: 1000,
    });
    let node = NodeState::clustered(settings, Authenticator::open(), peers.clone());
    assert!(node.apply_table(table(1, "node-1", None)).await);

    // A client on a loopback socket served directly, past any HTTP upgrade.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let tcp = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (server_side, _) = listener.accept().await.expect("accept");
    let serving = tokio::spawn(node::connection::serve(
        Arc::new(server_side),
        &[],
        node.clone(),
        "ann".into(),
    ));
    let mut client_tx = WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
    let room = "r";
    let send =
        |k: u32| text(serde_json::json!({"op": "send", "room": room, "text": k.to_string()}));

    // Join and a first message go to node-1, the owner; neither is answered yet.
    client_tx
        .send(text(serde_json::json!({"op": "join", "room": room})))
        .await
        .expect("join");
    client_tx.send(send(1)).await.expect("send 1");
    routed(&peers, 2).await;

    // The room moves to node-2. The next message must not overtake the first one.
    assert!(node.apply_table(table(2, "node-2", Some("node-1"))).await);
    client_tx.send(send(2)).await.expect("send 2");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        peers.pending(),
        2,
        "held while earlier commands are unanswered"
    );

    // The answers arrive (the `joined`, then the first message's echo): it goes on.
    // The client's connection, the only one on the node (ids start at a per-process base).
    let conns = node.hub.connections();
    assert_eq!(conns.len(), 1, "one connection");
    let conn = conns[0].id;
    let room_id = RoomId::new(room).expect("room");
    node.hub.deliver(EdgeEvent::Joined {
        room: room_id,
        conn,
        frame: r#"{"op":"joined","room":"r","seq":0,"members":["ann"],"history":[]}"#.into(),
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(peers.pending(), 2, "one answer is not enough");
    node.hub.deliver(EdgeEvent::ToConn {
        conn,
        frame: r#"{"op":"msg","room":"r","seq":1,"id":"1","user":"ann","text":"1","ts":1}"#.into(),
    });
    routed(&peers, 3).await;

    // With nothing in flight any more, a later move does not hold anything.
    drop(client_tx);
    let _ = tokio::time::timeout(Duration::from_secs(10), serving).await;
    let _ = Arc::clone(&node);
}
