//! Watches: a long-lived response of newline-delimited `WatchEvent` JSON objects.
//!
//! - No `resourceVersion` (or `"0"`): ADDED for every current object, then changes.
//! - `resourceVersion=N`: every retained change after N, then live changes; if N is older than the
//!   retained history, a single ERROR event carrying a 410 `Expired` Status (the client relists).
//! - `sendInitialEvents=true`: ADDED for every current object, then a BOOKMARK annotated
//!   `k8s.io/initial-events-end` (the streaming-list protocol), then changes.
//! - `allowWatchBookmarks=true`: a BOOKMARK with the latest resourceVersion when idle.
//! - Selectors filter as the real server does: an object that stops matching is sent as DELETED,
//!   one that starts matching as ADDED.
//! - `timeoutSeconds` ends the response; so do server shutdown and a watcher that falls more than
//!   the channel's capacity behind (it re-watches from its last resourceVersion).
//!
//! Each watch is a task feeding a bounded channel; when the client goes away the send fails and
//! the task ends.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Event, EventKind, Store};

/// The query parameters of a watch.
#[derive(Debug, Clone, Default)]
pub(crate) struct WatchParams {
    /// `resourceVersion`; `None` for unset or `"0"`.
    pub since: Option<u64>,
    /// `sendInitialEvents=true`.
    pub send_initial: bool,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
}

/// Where a watch looks and how it behaves.
#[derive(Debug, Clone)]
pub(crate) struct WatchTarget {
    pub ty: ResourceType,
    pub namespace: Option<String>,
    pub params: WatchParams,
    pub bookmark_interval: Duration,
    pub shutdown: CancellationToken,
    /// Render each object as a one-row `Table` (`kubectl get -w`).
    pub table: bool,
}

impl WatchTarget {
    fn matches(&self, obj: &Value) -> bool {
        self.params.labels.matches(obj) && self.params.fields.matches(obj)
    }

    fn line(&self, kind: &str, mut obj: Value) -> Bytes {
        obj["apiVersion"] = json!(self.ty.api_version());
        obj["kind"] = json!(self.ty.kind);
        if self.table && kind != "BOOKMARK" {
            let rv = obj["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|r| r.parse().ok())
                .unwrap_or_default();
            obj = crate::table::render(&self.ty, &[obj], rv);
        }
        let mut s = json!({"type": kind, "object": obj}).to_string();
        s.push('\n');
        Bytes::from(s)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        self.line("BOOKMARK", json!({"metadata": meta}))
    }

    /// The line for one change, if this watch should see it.
    fn render(&self, e: &Event) -> Option<Bytes> {
        if e.gr != self.ty.group_resource()
            || self.namespace.as_ref().is_some_and(|ns| *ns != e.namespace)
        {
            return None;
        }
        let now = self.matches(&e.object);
        let before = e.old.as_ref().is_some_and(|o| self.matches(o));
        let kind = match (e.kind, before, now) {
            (EventKind::Modified, true, true) => "MODIFIED",
            (EventKind::Modified, false, true) => "ADDED",
            (EventKind::Modified, true, false) => "DELETED",
            (EventKind::Added | EventKind::Deleted, _, true) => e.kind.as_str(),
            _ => return None,
        };
        Some(self.line(kind, e.object.clone()))
    }
}

/// Starts a watch and returns its body stream.
pub(crate) fn start(
    store: &Store,
    target: WatchTarget,
) -> impl Stream<Item = Result<Bytes, Infallible>> + use<> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    let prepared = {
        let st = store.lock();
        match target.params.since {
            Some(since) if since < st.compacted() => Err(ApiError::gone(format!(
                "too old resource version: {since} ({})",
                st.compacted()
            ))),
            since => {
                let initial: Vec<Value> = if since.is_none() || target.params.send_initial {
                    st.list(&target.ty.group_resource(), target.namespace.as_deref())
                        .into_iter()
                        .filter(|o| target.matches(o))
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                };
                let from = match since {
                    Some(r) if !target.params.send_initial => r,
                    _ => st.rv(),
                };
                let (backlog, live) = st.subscribe(from);
                Ok((initial, from, backlog, live))
            }
        }
    };
    tokio::spawn(async move {
        match prepared {
            Err(gone) => {
                let mut s = json!({"type": "ERROR", "object": gone.to_status()}).to_string();
                s.push('\n');
                let _ = tx.send(Bytes::from(s)).await;
            }
            Ok((initial, from, backlog, live)) => {
                run(target, tx, initial, from, backlog, live).await
            }
        }
    });
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(Ok)))
}

async fn run(
    t: WatchTarget,
    tx: mpsc::Sender<Bytes>,
    initial: Vec<Value>,
    from: u64,
    backlog: Vec<Arc<Event>>,
    mut live: broadcast::Receiver<Arc<Event>>,
) {
    let mut last = from;
    for obj in initial {
        if tx.send(t.line("ADDED", obj)).await.is_err() {
            return;
        }
    }
    if t.params.send_initial && tx.send(t.bookmark(from, true)).await.is_err() {
        return;
    }
    for e in backlog {
        last = last.max(e.rv);
        if let Some(line) = t.render(&e)
            && tx.send(line).await.is_err()
        {
            return;
        }
    }
    let deadline = t.params.timeout.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(t.bookmark_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let line = tokio::select! {
            _ = t.shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => return,
            _ = tick.tick(), if t.params.bookmarks => Some(t.bookmark(last, false)),
            received = live.recv() => match received {
                Ok(e) => {
                    last = last.max(e.rv);
                    t.render(&e)
                }
                Err(_) => return,
            },
        };
        if let Some(line) = line
            && tx.send(line).await.is_err()
        {
            return;
        }
    }
}
