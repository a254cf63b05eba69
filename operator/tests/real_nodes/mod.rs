//! Helpers for tests that run real `roomshard-node` processes under the local driver: the
//! workspace's binaries, a settled cluster, and a plain WebSocket client.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use operator::ClusterView;
use operator::local::{LocalCluster, LocalOptions};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

pub async fn cluster(nodes: u32) -> LocalCluster {
    cluster_with(LocalOptions { nodes, ..options() }).await
}

/// What these tests run with: 128 shards, any free port, the workspace's node binary.
pub fn options() -> LocalOptions {
    LocalOptions {
        shards: 128,
        port: 0,
        node_bin: Some(binary("roomshard-node")),
        shutdown_grace: Duration::from_secs(5),
        ..LocalOptions::default()
    }
}

/// Starts a cluster with `options` and waits until it is settled.
pub async fn cluster_with(options: LocalOptions) -> LocalCluster {
    let cluster = LocalCluster::start(options)
        .await
        .expect("local cluster starts");
    cluster
        .wait_for(Duration::from_secs(60), ClusterView::is_settled)
        .await
        .expect("cluster settles");
    cluster
}

pub fn ws_urls(cluster: &LocalCluster) -> Vec<(String, String)> {
    cluster
        .nodes()
        .into_iter()
        .filter_map(|n| n.ws_url.map(|u| (n.name, u)))
        .collect()
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(ws_url: &str, user: &str) -> Client {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(format!("{ws_url}?user={user}")),
        )
        .await
        .expect("connect in time")
        .expect("handshake");
        Client { ws }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send");
    }

    pub async fn recv(&mut self, within: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(within, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    return serde_json::from_str(text.as_str()).ok();
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => return None,
            }
        }
    }

    pub async fn recv_op(&mut self, op: &str) -> Value {
        loop {
            let frame = self
                .recv(Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("no `{op}` frame in time"));
            if frame["op"] == op {
                return frame;
            }
        }
    }

    pub async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"op": "join", "room": room})).await;
        self.recv_op("joined").await
    }
}
