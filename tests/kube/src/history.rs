//! What the API server said happened, in resourceVersion order (etcd's revision, one global
//! order): StatefulSet replicas, assignment tables in the ConfigMap, pods terminating and gone.
//! Tests assert on the order, e.g. that a StatefulSet shrank only after the table had emptied
//! the pod that goes.

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client, ResourceExt};
use shard::AssignmentTable;
use tokio_util::sync::CancellationToken;

/// One observation.
#[derive(Debug, Clone)]
pub enum Seen {
    /// The StatefulSet's `spec.replicas`.
    Replicas(i32),
    /// A table published in the ConfigMap.
    Table(Box<AssignmentTable>),
    /// A pod got a deletionTimestamp.
    PodTerminating(String),
    /// A pod left the API.
    PodDeleted(String),
}

/// Observations with their resourceVersions.
#[derive(Debug, Clone, Default)]
pub struct History(Arc<Mutex<Vec<(u64, Seen)>>>);

fn rv(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl History {
    fn record(&self, at: u64, seen: Seen) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, seen));
    }

    /// Everything seen so far, sorted by resourceVersion.
    #[must_use]
    pub fn events(&self) -> Vec<(u64, Seen)> {
        let mut events = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        events.sort_by_key(|(rv, _)| *rv);
        events
    }

    /// Starts watching `namespace` for the StatefulSet `cluster`, its `-assignments` ConfigMap
    /// and every pod, until `stop`.
    #[must_use]
    pub fn watch(
        client: &Client,
        namespace: &str,
        cluster: &str,
        stop: &CancellationToken,
    ) -> Self {
        let history = History::default();
        let sts: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
        let (h, s, name) = (history.clone(), stop.clone(), cluster.to_owned());
        tokio::spawn(async move {
            let mut events = watcher(sts, watcher::Config::default())
                .default_backoff()
                .boxed();
            loop {
                let event = tokio::select! { () = s.cancelled() => break, e = events.next() => e };
                let Some(event) = event else { break };
                let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event else {
                    continue;
                };
                if o.name_any() == name {
                    let replicas = o.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1);
                    h.record(rv(&o.metadata), Seen::Replicas(replicas));
                }
            }
        });
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let (h, s, name) = (
            history.clone(),
            stop.clone(),
            format!("{cluster}-assignments"),
        );
        tokio::spawn(async move {
            let mut events = watcher(cms, watcher::Config::default())
                .default_backoff()
                .boxed();
            loop {
                let event = tokio::select! { () = s.cancelled() => break, e = events.next() => e };
                let Some(event) = event else { break };
                let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event else {
                    continue;
                };
                if o.name_any() != name {
                    continue;
                }
                if let Some(t) = o.data.as_ref().and_then(|d| d.get("table.json"))
                    && let Ok(table) = AssignmentTable::from_json(t)
                {
                    h.record(rv(&o.metadata), Seen::Table(Box::new(table)));
                }
            }
        });
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let (h, s) = (history.clone(), stop.clone());
        tokio::spawn(async move {
            let mut events = watcher(pods, watcher::Config::default())
                .default_backoff()
                .boxed();
            loop {
                let event = tokio::select! { () = s.cancelled() => break, e = events.next() => e };
                match event {
                    Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)))
                        if o.metadata.deletion_timestamp.is_some() =>
                    {
                        h.record(rv(&o.metadata), Seen::PodTerminating(o.name_any()));
                    }
                    Some(Ok(watcher::Event::Delete(o))) => {
                        h.record(rv(&o.metadata), Seen::PodDeleted(o.name_any()));
                    }
                    None => break,
                    _ => {}
                }
            }
        });
        history
    }
}

/// Checks, in `events` (resourceVersion order), that the StatefulSet went down to `replicas`
/// only once a published table had emptied every pod in `gone` (no shards, no pending move to
/// or from it), and that each of them terminated only after that: a scale-in drains first.
///
/// # Errors
///
/// When `events` lack the scale-in, a table before it, or the termination of a pod in `gone`.
///
/// # Panics
///
/// When a pod in `gone` still had shards or moves, or terminated before the StatefulSet shrank.
pub fn drained_before_removed(
    events: &[(u64, Seen)],
    replicas: i32,
    gone: &[&str],
) -> crate::TestResult {
    let shrunk = events
        .iter()
        .find(|(_, s)| matches!(s, Seen::Replicas(r) if *r == replicas))
        .map(|(rv, _)| *rv)
        .ok_or(format!("no StatefulSet event with {replicas} replicas"))?;
    let table_then = events
        .iter()
        .filter(|(rv, _)| *rv < shrunk)
        .filter_map(|(_, s)| match s {
            Seen::Table(t) => Some(t.clone()),
            _ => None,
        })
        .next_back()
        .ok_or("no table before the StatefulSet shrank")?;
    for name in gone {
        let node = shard::NodeName::new(*name)?;
        assert!(
            table_then.shards_of(&node).is_empty(),
            "{name} owned shards when the StatefulSet shrank: {:?}",
            table_then.counts()
        );
        assert!(
            table_then
                .moves
                .iter()
                .all(|m| m.from != node && m.to != node),
            "moves of {name} were pending when the StatefulSet shrank"
        );
        let terminating = events
            .iter()
            .find(|(_, s)| matches!(s, Seen::PodTerminating(p) if p == name))
            .map(|(rv, _)| *rv)
            .ok_or(format!("{name} was never terminating"))?;
        assert!(
            shrunk < terminating,
            "{name} terminated at {terminating}, before the StatefulSet shrank at {shrunk}"
        );
    }
    Ok(())
}
