//! Helpers for tests that run real `roomshard-node` processes under the local driver: the
//! workspace's binaries, a settled cluster, the real `roomshard-bench` as load, and a plain
//! WebSocket client.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use operator::ClusterView;
use operator::local::{LocalCluster, LocalOptions};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::process::Child;
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

/// `roomshard-bench` on every node of `cluster`: `rooms` rooms of 4 users, 10 messages/s per
/// room, named `{prefix}-N`, for `duration`, with `extra` flags.
pub fn bench(
    cluster: &LocalCluster,
    prefix: &str,
    rooms: usize,
    duration: &str,
    extra: &[&str],
) -> Child {
    let nodes: Vec<String> = ws_urls(cluster)
        .into_iter()
        .map(|(_, u)| u.trim_end_matches("/ws").to_owned())
        .collect();
    tokio::process::Command::new(binary("roomshard-bench"))
        .args([
            "--nodes",
            &nodes.join(","),
            "--rooms",
            &rooms.to_string(),
            "--users",
            "4",
            "--rate",
            "10",
            "--duration",
            duration,
            "--warmup",
            "1s",
            "--room-prefix",
            prefix,
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start roomshard-bench")
}

/// The bench's JSON report, once it has finished (within `within`).
pub async fn bench_report(mut bench: Child, within: Duration) -> Value {
    let output = tokio::time::timeout(within, async {
        let mut stdout = bench.stdout.take().expect("stdout");
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text)
            .await
            .expect("read bench output");
        let _ = bench.wait().await;
        text
    })
    .await
    .expect("bench finishes");
    serde_json::from_str(output.lines().last().expect("a JSON line")).expect("bench prints JSON")
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
