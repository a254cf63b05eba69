//! The HTTP side of a node: `/ws` for clients, the chat page, health, readiness, metrics and
//! status; and [`run`], which serves until its shutdown signal and then drains every
//! connection.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::auth::IdentityParams;
use crate::connection::{self, truncate_reason};
use crate::edge::CLOSE_POLICY;
use crate::state::NodeState;

/// The chat page: a complete client for protocol v1, served at `/`.
const CHAT_PAGE: &str = include_str!("../static/index.html");

#[derive(Clone)]
struct AppState {
    node: Arc<NodeState>,
    connections: TaskTracker,
}

/// Serve `node` on `listener` until `shutdown` resolves, then tell every client to reconnect,
/// close the connections and wait (at most `grace`) for them to finish.
///
/// # Errors
/// An I/O error from the listener.
pub async fn run(
    listener: TcpListener,
    node: Arc<NodeState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    let state = AppState {
        node: node.clone(),
        connections: connections.clone(),
    };
    let app = router(state);
    let stop = node.shutdown.clone();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: telling clients to reconnect");
        stop.cancel();
    };
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(signal)
    .await;
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
    node.rooms.close().await;
    served
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(chat_page))
        .route("/ws", get(websocket))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(state)
}

async fn chat_page() -> Html<&'static str> {
    Html(CHAT_PAGE)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.node.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else {
        "ready".into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let active = state.node.rooms.active() as i64;
    state
        .node
        .metrics
        .rooms_active
        .store(active, Ordering::Relaxed);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.node.metrics.render(),
    )
        .into_response()
}

/// What `/status` reports: what the controller reads to follow a drain.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// This node's name.
    pub node: String,
    /// Epoch of the assignment table applied.
    pub epoch: u64,
    /// Shards this node owns in that table.
    pub shards_owned: usize,
    /// Hand-offs in progress on this node.
    pub moves_in_flight: usize,
    /// Room actors running.
    pub rooms: usize,
    /// Client connections open.
    pub connections: i64,
    /// Peer links up.
    pub peers_connected: usize,
    /// Whether the node takes new clients.
    pub ready: bool,
}

async fn status(State(state): State<AppState>) -> axum::Json<NodeStatus> {
    let node = &state.node;
    let table = node.table();
    axum::Json(NodeStatus {
        node: node.settings.name.to_string(),
        epoch: table.epoch,
        shards_owned: table.shards_of(&node.settings.name).len(),
        moves_in_flight: 0,
        rooms: node.rooms.active(),
        connections: node.metrics.connections.load(Ordering::Relaxed),
        peers_connected: 0,
        ready: !node.shutdown.is_cancelled(),
    })
}

async fn websocket(
    State(state): State<AppState>,
    params: Result<Query<IdentityParams>, QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let limits = &state.node.settings.limits;
    let upgrade = upgrade
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes);
    if state.node.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "node shutting down").into_response();
    }
    let params = params.map(|Query(p)| p).unwrap_or_default();
    let identity = state.node.auth.identify(&params);
    let node = state.node.clone();
    let tracker = state.connections.clone();
    upgrade.on_upgrade(move |socket| {
        tracker.track_future(async move {
            match identity {
                Ok(user) => {
                    let (sink, stream) = socket.split();
                    connection::serve(sink, stream, node, user).await;
                }
                Err(reason) => refuse(socket, &node, &reason).await,
            }
        })
    })
}

/// Close a connection that has no usable identity with 1008 and the reason.
async fn refuse(mut socket: WebSocket, node: &NodeState, reason: &str) {
    node.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%reason, "refusing connection");
    let frame = CloseFrame {
        code: CLOSE_POLICY,
        reason: truncate_reason(reason).into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = socket.send(Message::Close(Some(frame))).await;
        // Wait for the client's close answer so the frame is not lost to a reset.
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
