//! The HTTP side of a node: `/ws` for clients, the chat page and its client module, health,
//! readiness, metrics and status; and [`run`], which serves until its shutdown signal and then
//! drains every connection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use shard::NodeStatus;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::auth::IdentityParams;
use crate::connection;
use crate::edge::CLOSE_POLICY;
use crate::exit::{self, ExitDrain};
use crate::metrics::PeerView;
use crate::state::NodeState;
use crate::table_source::{self, TableSource};
use crate::ws::frame::WireFrame;
use crate::ws::socket::{ClientListener, ClientSocket, shutdown_write};
use crate::ws::{ClientStream, upgrade};

/// How long a stopping node waits for its peer links to deliver what its clients sent last.
const PEER_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// The chat page, served at `/`; it uses the JavaScript client below.
const CHAT_PAGE: &str = include_str!("../static/index.html");

/// The JavaScript client library (`clients/js`), served at `/roomshard.js` so the chat page and
/// any page on the cluster's origin get the very client that is tested and published.
const CLIENT_MODULE: &str = include_str!("../../clients/js/roomshard.js");

#[derive(Clone)]
struct AppState {
    node: Arc<NodeState>,
    connections: TaskTracker,
}

/// Serve `node` on `listener` (clients) and, in a cluster, `peer_listener` (peer links and
/// the controller's `/status`), following `source` for assignment tables, until `shutdown`
/// resolves; then tell every client to reconnect, close the connections and wait (at most
/// `grace`) for them to finish.
///
/// # Errors
/// An I/O error from a listener.
pub async fn run(
    listener: TcpListener,
    peer_listener: Option<TcpListener>,
    node: Arc<NodeState>,
    source: Option<Arc<dyn TableSource>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    let state = AppState {
        node: node.clone(),
        connections: connections.clone(),
    };
    let stop = node.shutdown.clone();
    let exiting = node.clone();
    let clustered = source.is_some();
    let signal = async move {
        shutdown.await;
        if clustered {
            // A planned exit is a hand-off: see `exit`. A node alone has nobody to hand to.
            let timeout = exiting.settings.handoff.exit_drain;
            tracing::info!(
                ?timeout,
                "stop requested: handing shards off before exiting"
            );
            match exit::drain_before_exit(&exiting, timeout).await {
                ExitDrain::HandedOff => {
                    tracing::info!("every shard handed off, every followed shard copied elsewhere");
                }
                ExitDrain::CopiesBehind => tracing::warn!(
                    "every shard handed off, but some shards this node followed have no live copy elsewhere yet"
                ),
                ExitDrain::TimedOut => tracing::warn!(
                    owned = exiting.status().shards_owned,
                    "exit drain timed out: rooms still owned here restart empty elsewhere"
                ),
            }
        }
        tracing::info!("shutting down: telling clients to reconnect");
        stop.cancel();
    };
    // Tables are followed until the connections are gone (the follower is aborted below), not
    // only until shutdown starts: the clients not yet told to reconnect are still served, and a
    // send of theirs that waits for a newer table (a move in flight elsewhere) would otherwise
    // wait for one that never comes.
    if source.is_none() {
        node.inherit(None);
    }
    let follower = source.map(|source| tokio::spawn(table_source::follow(source, node.clone())));
    let peer_server = peer_listener.map(|peer_listener| {
        let app = peer_router(state.clone());
        let stop = node.shutdown.clone();
        tokio::spawn(async move {
            let peer_listener = peer_listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(peer_listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    });
    // Client sockets are shared with the connections that write to them directly.
    let served = axum::serve(
        ClientListener(listener),
        router(state).into_make_service_with_connect_info::<ClientSocket>(),
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
    if let Some(peers) = &node.peers {
        // What the last clients sent is still on its way to the rooms' owners: let the links
        // deliver it (until acknowledged, bounded) before they close with the process.
        let deadline = tokio::time::Instant::now() + PEER_FLUSH_TIMEOUT;
        while peers.pending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if peers.pending() > 0 {
            tracing::warn!(
                unacknowledged = peers.pending(),
                "peer links closed with messages in flight"
            );
        }
        peers.close();
    }
    if let Some(follower) = follower {
        follower.abort();
    }
    if let Some(peer_server) = peer_server {
        peer_server.abort();
    }
    node.rooms.close().await;
    served
}

fn peer_router(state: AppState) -> Router {
    Router::new()
        .route("/peer", get(peer_link))
        .route("/status", get(status))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

async fn peer_link(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    let Some(peers) = state.node.peers.clone() else {
        return (StatusCode::NOT_FOUND, "this node is not in a cluster").into_response();
    };
    upgrade
        .max_message_size(64 << 20)
        .read_buffer_size(crate::peer::READ_BUFFER)
        .on_upgrade(move |socket| peers.accept(socket))
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(chat_page))
        .route("/roomshard.js", get(client_module))
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

async fn client_module() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        CLIENT_MODULE,
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.node.shutdown.is_cancelled() || state.node.exiting.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if !state.node.inheritance_settled() {
        let why = "restarted: the shards of the previous process go to their followers first";
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    } else {
        "ready".into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let node = &state.node;
    let active = i64::try_from(node.rooms.active()).unwrap_or(i64::MAX);
    node.metrics.rooms_active.set(active);
    let table = node.table();
    if let Some(peers) = &node.peers {
        let me = &node.settings.name;
        node.metrics.set_peers(PeerView {
            connected: peers.connected(),
            expected: table.nodes.keys().filter(|n| *n != me).count(),
            sessions: peers.sessions(),
            unacked: peers.pending(),
        });
    }
    let status = node.status();
    node.metrics
        .set_table(table.epoch, status.shards_owned, status.moves_in_flight);
    let text = node.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn status(State(state): State<AppState>) -> axum::Json<NodeStatus> {
    axum::Json(state.node.status())
}

async fn websocket(
    State(state): State<AppState>,
    ConnectInfo(socket): ConnectInfo<ClientSocket>,
    params: Result<Query<IdentityParams>, QueryRejection>,
    request: Request,
) -> Response {
    let (mut parts, _body) = request.into_parts();
    let (accept, on_upgrade) =
        match upgrade::accept(&parts.method, &parts.headers, &mut parts.extensions) {
            Ok(accepted) => accepted,
            Err(refused) => return refused.into_response(),
        };
    if state.node.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "node shutting down").into_response();
    }
    let params = params.map(|Query(p)| p).unwrap_or_default();
    let identity = state.node.auth.identify(&params);
    let node = state.node.clone();
    tokio::spawn(state.connections.track_future(async move {
        let already_read = match on_upgrade.await {
            Ok(upgraded) => upgrade::already_read(upgraded),
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        match identity {
            Ok(user) => connection::serve(socket.tcp, &already_read, node, user).await,
            Err(reason) => refuse(socket.tcp, &already_read, &node, &reason.to_string()).await,
        }
    }));
    upgrade::switching_protocols(accept)
}

/// Close a connection that has no usable identity with 1008 and the reason.
async fn refuse(tcp: Arc<TcpStream>, already_read: &[u8], node: &NodeState, reason: &str) {
    node.metrics.auth_failures.inc();
    tracing::info!(%reason, "refusing connection");
    let close = WireFrame::close(CLOSE_POLICY, reason);
    let mut stream = ClientStream::new(tcp.clone(), already_read, 4096);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if crate::ws::write_all(&tcp, close.bytes()).await.is_err() {
            return;
        }
        // Wait for the client's close answer so the frame is not lost to a reset.
        while let Ok(Some(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    let _ = shutdown_write(&tcp);
}
