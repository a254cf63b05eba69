//! The live shard map: a page that draws each cluster's pods, the shards each owns, the moves in
//! flight, drain and rollout progress and per-pod load, updating every second.
//!
//! One model, two servers. [`model::build`] makes a [`ClusterMap`] from what a driver holds
//! after a reconcile pass. The Kubernetes controller stores the latest map of each `ChatCluster`
//! in a [`MapStore`] and serves it next to `/metrics`; the local driver builds its one map when
//! asked, on its admin port. Both answer:
//!
//! - `GET /map`: the page ([`page`]), self-contained HTML with inline CSS, JavaScript and SVG;
//!   its Content-Security-Policy lets it load nothing but `/map.json` from the same server.
//! - `GET /map.json`: the [`ShardMap`] ([`json`]); the page polls it once a second.
//!
//! The parts: [`model`] (the types and [`build`]), [`store`] (the bounded per-cluster store),
//! and the two responses here.

pub mod model;
pub mod store;

use axum::http::header;
use axum::response::{IntoResponse, Response};

pub use model::{ClusterMap, MapInputs, PodLoad, PodMap, RolloutProgress, ShardMap, build};
pub use store::MapStore;

/// The page, compiled in: it must work where nothing outside the server can be reached.
const PAGE: &str = include_str!("map.html");

/// Nothing but the page itself and `/map.json` on the same server.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'";

/// The answer to `GET /map`.
pub fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

/// The answer to `GET /map.json`.
pub fn json(map: &ShardMap) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], axum::Json(map)).into_response()
}
