//! Test support: a real node on `127.0.0.1:0` and real WebSocket clients.

#![allow(dead_code)]

pub mod cluster;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use node::auth::Authenticator;
use node::{NodeConfig, NodeState};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// How long any single expected frame may take before a test fails.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// A node running in this process on a real loopback socket.
pub struct TestNode {
    pub addr: SocketAddr,
    pub state: Arc<NodeState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestNode {
    /// Start a node with these extra flags (on top of `--listen 127.0.0.1:0`).
    pub async fn start(flags: &[&str]) -> TestNode {
        Self::start_with_auth(flags, Authenticator::open()).await
    }

    pub async fn start_with_auth(flags: &[&str], auth: Authenticator) -> TestNode {
        let mut args = vec!["roomshard-node", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        let config = NodeConfig::try_parse_from(args).expect("valid test flags");
        let listener = TcpListener::bind(config.listen)
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let settings = config.settings(addr).expect("valid settings");
        let state = NodeState::new(settings, auth);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(node::run(
            listener,
            None,
            state.clone(),
            None,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(5),
        ));
        TestNode {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn ws_url(&self, user: &str) -> String {
        format!("ws://{}/ws?user={user}", self.addr)
    }

    pub async fn client(&self, user: &str) -> Client {
        Client::connect(&self.ws_url(user)).await
    }

    /// Trigger graceful shutdown and wait for `run` to return.
    pub async fn shutdown(mut self) -> Duration {
        let started = std::time::Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("node stops within 20 s")
                .expect("node task")
                .expect("node run");
        }
        started.elapsed()
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A minimal HTTP/1.1 GET over a raw socket (no client library needed for probes).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut response = Vec::new();
    tokio::time::timeout(FRAME_TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read response");
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A real WebSocket client speaking protocol v1.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    Closed { code: u16, reason: String },
    Dropped,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(FRAME_TIMEOUT, connect_async(url))
            .await
            .expect("connect in time")
            .expect("websocket handshake");
        Client { ws }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send frame");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send raw frame");
    }

    /// The next text frame as JSON; panics on anything else or a timeout.
    pub async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("stream open")
                .expect("frame ok");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).expect("server sends json");
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Skip frames until one has `op` == `op`.
    pub async fn recv_op(&mut self, op: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["op"] == op {
                return frame;
            }
        }
    }

    /// Whether a frame arrives within `wait` (used only to show that nothing else is queued).
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        match tokio::time::timeout(wait, self.ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str(text.as_str()).ok(),
            _ => None,
        }
    }

    pub async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"op": "join", "room": room})).await;
        self.recv_op("joined").await
    }

    pub async fn join_since(&mut self, room: &str, since: u64) -> Value {
        self.send(json!({"op": "join", "room": room, "since": since}))
            .await;
        self.recv_op("joined").await
    }

    pub async fn say(&mut self, room: &str, text: &str, cid: &str) {
        self.send(json!({"op": "send", "room": room, "text": text, "cid": cid}))
            .await;
    }

    pub async fn ping(&mut self, cid: &str) -> Value {
        self.send(json!({"op": "ping", "cid": cid})).await;
        self.recv_op("pong").await
    }

    /// Read until the connection ends, discarding text frames.
    pub async fn ending(&mut self, within: Duration) -> Ending {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("connection did not end within {within:?}"),
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    return Ending::Closed {
                        code: u16::from(frame.code),
                        reason: frame.reason.to_string(),
                    };
                }
                Ok(Some(Ok(Message::Close(None)))) => {
                    return Ending::Closed {
                        code: u16::from(CloseCode::Status),
                        reason: String::new(),
                    };
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(_))) | Ok(None) => return Ending::Dropped,
            }
        }
    }
}
