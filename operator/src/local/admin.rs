//! The admin and table HTTP server, on 127.0.0.1 only.
//!
//! - `GET /table`: the published table as format-1 JSON ([`AssignmentTable::to_json`]).
//! - `GET /table?after=N`: long-poll; answers as soon as the epoch is above `N`, or after
//!   [`LONG_POLL`] with the current table anyway (and at once when the driver shuts down).
//! - `GET /cluster`: the [`ClusterView`](super::ClusterView) as JSON.
//! - `POST /scale` with `{"replicas": M}`: sets the desired replica count; `202` with the same
//!   body, or `400` with `{"error": ...}`.
//! - `POST /restart`: starts a rolling restart; `202` with `{"nodes": N}`, or `409` with
//!   `{"error": ...}` when one is already under way.
//! - `GET /map` and `GET /map.json`: the live shard map ([`crate::map`]) of this cluster.
//! - `GET /healthz`: `200` while the driver runs.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use shard::AssignmentTable;
use tokio::net::TcpListener;

use super::Shared;

/// How long `GET /table?after=N` waits for a newer table before answering with the current one.
pub(super) const LONG_POLL: Duration = Duration::from_secs(20);

/// The body of `POST /scale` (and of its answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRequest {
    /// The desired replica count.
    pub replicas: u32,
}

/// The answer to `POST /restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartAnswer {
    /// How many nodes the rolling restart rolls.
    pub nodes: u32,
}

#[derive(Debug, Deserialize)]
struct TableQuery {
    after: Option<u64>,
}

/// Serves until the driver shuts down; waits for open requests (long-polls end at shutdown).
pub(super) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let shutdown = shared.shutdown.clone();
    let app = Router::new()
        .route("/table", get(table))
        .route("/cluster", get(cluster))
        .route("/scale", post(scale))
        .route("/restart", post(restart))
        .route("/map", get(|| async { crate::map::page() }))
        .route("/map.json", get(map_json))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared);
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn table(State(shared): State<Arc<Shared>>, Query(query): Query<TableQuery>) -> Response {
    let mut tables = shared.table.subscribe();
    if let Some(after) = query.after {
        tokio::select! {
            _ = tokio::time::timeout(LONG_POLL, tables.wait_for(|t| t.epoch > after)) => {}
            () = shared.shutdown.cancelled() => {}
        }
    }
    let current: Arc<AssignmentTable> = tables.borrow().clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        current.to_json(),
    )
        .into_response()
}

async fn cluster(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.view_now()).into_response()
}

async fn map_json(State(shared): State<Arc<Shared>>) -> Response {
    let table = shared.table.borrow().clone();
    let map = super::map::build_map(&shared.lock(), &table);
    crate::map::json(&crate::map::ShardMap {
        clusters: vec![map],
    })
}

async fn scale(State(shared): State<Arc<Shared>>, Json(request): Json<ScaleRequest>) -> Response {
    match shared.scale(request.replicas) {
        Ok(()) => (StatusCode::ACCEPTED, Json(request)).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn restart(State(shared): State<Arc<Shared>>) -> Response {
    match shared.restart() {
        Ok(nodes) => (StatusCode::ACCEPTED, Json(RestartAnswer { nodes })).into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}
