//! The assignment table from a Kubernetes ConfigMap, the way a node in a pod gets it.
//!
//! A kube watcher follows the one ConfigMap (a field selector on its name, so the node needs
//! `get`/`list`/`watch` on that object only) and keeps the newest valid table it has seen.
//! [`ConfigMapTableSource::next`] waits for a table newer than the caller's. The watcher
//! reconnects with backoff by itself, and re-lists after a gap, so a missed update arrives on
//! the next list; a deleted ConfigMap or an invalid table leaves the last good table in force.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use shard::AssignmentTable;
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

use crate::error::Error;
use crate::table_source::{BoxedTable, TableSource};

/// The ConfigMap key that holds the table (the operator writes it).
pub const TABLE_KEY: &str = "table.json";

/// How long [`ConfigMapTableSource::next`] waits before handing back the current table.
const IDLE: Duration = Duration::from_secs(30);

/// Follows one ConfigMap's table; dropping it stops the watch.
#[derive(Debug)]
pub struct ConfigMapTableSource {
    latest: watch::Receiver<Option<Arc<AssignmentTable>>>,
    _watch: AbortOnDropHandle<()>,
}

impl ConfigMapTableSource {
    /// Starts watching ConfigMap `name` in `namespace` (must be called inside a tokio runtime).
    pub fn new(client: Client, namespace: &str, name: &str) -> ConfigMapTableSource {
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let (tx, latest) = watch::channel(None);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let name = name.to_owned();
        let task = tokio::spawn(async move {
            let mut objects = watcher(api, config)
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(next) = objects.next().await {
                match next {
                    Ok(cm) => offer(&tx, &name, &cm),
                    Err(e) => {
                        tracing::warn!(configmap = %name, error = %e, "watch failed; retrying");
                    }
                }
            }
        });
        ConfigMapTableSource {
            latest,
            _watch: AbortOnDropHandle::new(task),
        }
    }
}

/// Publishes the table in `cm` if it is valid and newer than the one held.
fn offer(tx: &watch::Sender<Option<Arc<AssignmentTable>>>, name: &str, cm: &ConfigMap) {
    let Some(text) = cm.data.as_ref().and_then(|d| d.get(TABLE_KEY)) else {
        tracing::warn!(configmap = %name, "no {TABLE_KEY} in the ConfigMap; keeping the last table");
        return;
    };
    match AssignmentTable::from_json(text) {
        Ok(table) => {
            tx.send_if_modified(|held| {
                let newer = held.as_ref().is_none_or(|h| table.epoch > h.epoch);
                if newer {
                    *held = Some(Arc::new(table));
                }
                newer
            });
        }
        Err(e) => {
            tracing::warn!(configmap = %name, error = %e, "invalid table; keeping the last one");
        }
    }
}

impl TableSource for ConfigMapTableSource {
    fn current(&self) -> BoxedTable<'_> {
        Box::pin(async move {
            let mut latest = self.latest.clone();
            match latest.wait_for(Option::is_some).await {
                Ok(table) => table
                    .as_ref()
                    .map(|t| (**t).clone())
                    .ok_or(Error::NoTable("none in the ConfigMap yet")),
                Err(_) => Err(Error::NoTable("the ConfigMap watch ended")),
            }
        })
    }

    fn next(&self, after: u64) -> BoxedTable<'_> {
        Box::pin(async move {
            let mut latest = self.latest.clone();
            let waited = tokio::time::timeout(IDLE, async {
                latest
                    .wait_for(|t| t.as_ref().is_some_and(|t| t.epoch > after))
                    .await
                    .map(|t| t.clone())
            })
            .await;
            match waited {
                Ok(Ok(Some(table))) => Ok((*table).clone()),
                Ok(Ok(None)) => Err(Error::NoTable("the ConfigMap has none")),
                Ok(Err(_)) => Err(Error::NoTable("the ConfigMap watch ended")),
                Err(_) => match self.latest.borrow().as_ref() {
                    Some(table) => Ok((**table).clone()),
                    None => Err(Error::NoTable("none in the ConfigMap yet")),
                },
            }
        })
    }
}
