//! The running controller: a kube `Controller` on `ChatCluster`s that owns their StatefulSets
//! and ConfigMaps and watches their pods, plus the `/metrics` and `/healthz` server.
//!
//! Why pods are watched: readiness is membership, so a pod turning Ready or unready must
//! trigger a pass at once. Pods carry the `roomshard.dev/cluster` label, which maps them back
//! to their cluster. Node progress (`/status`) is not an API event; the reconciler requeues
//! itself while anything moves.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::children::{FIELD_MANAGER, labels};
use super::crd::ChatCluster;
use super::metrics::Metrics;
use super::reconcile::{Context, error_policy, reconcile};
use crate::Error;
use crate::map::MapStore;

/// An API over every namespace, or over `namespace` only.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The cluster a pod belongs to, from its `roomshard.dev/cluster` label.
pub fn cluster_of(pod: &Pod) -> Option<ObjectRef<ChatCluster>> {
    let cluster = pod.labels().get(labels::CLUSTER)?;
    Some(ObjectRef::new(cluster).within(&pod.namespace()?))
}

/// Reconciles every `ChatCluster` (in `namespace`, or all) until `shutdown`, then finishes the
/// passes in flight, forgets the shard maps (a replica that no longer leads must not show stale
/// ones) and returns.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let map = ctx.map.clone();
    let ns = namespace.as_deref();
    let managed = format!("{}={FIELD_MANAGER}", labels::MANAGED_BY);
    let ours = watcher::Config::default().labels(&managed);
    let pods = watcher::Config::default().labels(&format!("{}=roomshard", labels::NAME));
    Controller::new(api::<ChatCluster>(&client, ns), watcher::Config::default())
        .owns(api::<StatefulSet>(&client, ns), ours.clone())
        .owns(api::<ConfigMap>(&client, ns), ours)
        .watches(api::<Pod>(&client, ns), pods, |pod| cluster_of(&pod))
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(kube::runtime::controller::Error::ObjectNotFound(gone)) = &result {
                // A deleted cluster (it has no finalizer, so no pass sees it go): its last
                // requeue finds it gone, and its map goes too.
                map.forget(gone.namespace.as_deref().unwrap_or_default(), &gone.name);
            }
            async move {
                match result {
                    Ok((object, _)) => tracing::debug!(cluster = %object, "reconciled"),
                    Err(e) => tracing::debug!(error = %e, "reconcile failed"),
                }
            }
        })
        .await;
    map.clear();
}

/// Serves `/metrics` (Prometheus text), `/healthz` and the shard map (`/map`, `/map.json`, from
/// `map`) on `listener` until `shutdown`.
///
/// # Errors
///
/// [`Error::Io`] when serving fails.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    map: Arc<MapStore>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/map", get(|| async { crate::map::page() }))
        .route(
            "/map.json",
            get(move || {
                let map = map.clone();
                async move { crate::map::json(&map.snapshot()) }
            }),
        );
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(
        ?addr,
        "serving /metrics, /healthz and the shard map at /map"
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(|e| Error::io("serving /metrics", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_maps_to_the_cluster_named_by_its_label() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "chat-0",
            "namespace": "ns", "labels": {"roomshard.dev/cluster": "chat"}}}))
        .expect("pod");
        assert_eq!(cluster_of(&pod), Some(ObjectRef::new("chat").within("ns")));
        let stray: Pod = serde_json::from_value(json!({"metadata": {"name": "x",
            "namespace": "ns"}}))
        .expect("pod");
        assert_eq!(cluster_of(&stray), None);
    }
}
