//! The peer port refuses, with 1008 and a reason that says why, what a node of another wire
//! format version sends, and a proven peer that its table does not name.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use node::peer::handshake;
use node::peer::wire::PeerFrame;
use support::cluster::{ClusterNode, SECRET, TableServer, plan, wait_applied};
use tokio_tungstenite::tungstenite::Message;

const SHARDS: u32 = 8;

/// Opens `/peer` on `node`, answers its challenge with `proof(nonce)` and returns the reason
/// of the close frame the node answers with.
async fn close_reason(node: &ClusterNode, proof: impl FnOnce(&str) -> Vec<u8>) -> String {
    let url = format!("ws://{}/peer", node.peer_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("upgrade");
    let nonce = match ws.next().await {
        Some(Ok(Message::Binary(bytes))) => match PeerFrame::decode(&bytes) {
            Ok(PeerFrame::Challenge { nonce, .. }) => nonce,
            other => panic!("expected a challenge, got {other:?}"),
        },
        other => panic!("expected a challenge, got {other:?}"),
    };
    ws.send(Message::Binary(proof(&nonce).into()))
        .await
        .expect("send proof");
    match tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("answer in time")
    {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1008);
            frame.reason.to_string()
        }
        other => panic!("expected a 1008 close, got {other:?}"),
    }
}

async fn one_node(server: &TableServer) -> ClusterNode {
    let node = ClusterNode::start("node-0", &server.url, SHARDS, &[]).await;
    let table = plan(&server.current(), &[&node], &[]);
    let epoch = table.epoch;
    server.publish(table);
    wait_applied(&[&node], epoch).await;
    node
}

fn proof(from: &str, nonce: &str) -> Vec<u8> {
    let node = shard::NodeName::new(from).expect("name");
    PeerFrame::Proof {
        mac: handshake::sign(SECRET, handshake::DIALER, nonce, &node),
        node,
        incarnation: 1,
        nonce: "n".into(),
        last_received: 0,
    }
    .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_wire_version_is_refused_naming_both_versions() {
    let server = TableServer::start(SHARDS).await;
    let node = one_node(&server).await;
    let reason = close_reason(&node, |nonce| {
        let mut bytes = proof("node-1", nonce);
        bytes[0] = 1;
        bytes
    })
    .await;
    assert!(
        reason.contains("version 1") && reason.contains("speaks 2"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proven_peer_the_table_does_not_name_is_refused() {
    let server = TableServer::start(SHARDS).await;
    let node = one_node(&server).await;
    let reason = close_reason(&node, |nonce| proof("node-9", nonce)).await;
    assert!(
        reason.contains("not in this node's assignment table"),
        "{reason}"
    );
}
