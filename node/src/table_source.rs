//! Where a node gets its assignment table from.
//!
//! A source yields tables; the node applies them in epoch order and ignores older ones, so a
//! source may repeat itself or reconnect freely. Here: an HTTP source that long-polls the local
//! cluster driver (`GET <url>?after=EPOCH` answers as soon as a newer table exists). In
//! Kubernetes the same trait is fed by a watch on the cluster's ConfigMap
//! ([`crate::configmap_source`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use shard::AssignmentTable;

use crate::error::{Error, Result};
use crate::state::NodeState;

/// What [`TableSource::next`] returns.
pub type BoxedTable<'a> = Pin<Box<dyn Future<Output = Result<AssignmentTable>> + Send + 'a>>;

/// A stream of assignment tables.
pub trait TableSource: Send + Sync + 'static {
    /// The next table newer than `after`, or the current one after a while with no change.
    fn next(&self, after: u64) -> BoxedTable<'_>;
    /// The table the source holds now, without waiting for a newer one.
    fn current(&self) -> BoxedTable<'_>;
}

/// How long a starting node waits for its source's current table before it goes on without
/// one (as if the source held none).
const STARTING_LOOK: Duration = Duration::from_secs(10);

/// Long-polls a URL that serves the table as JSON.
#[derive(Debug, Clone)]
pub struct HttpTableSource {
    url: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl HttpTableSource {
    /// A source for `url` (e.g. `http://127.0.0.1:7700/table`).
    pub fn new(url: impl Into<String>) -> HttpTableSource {
        HttpTableSource {
            url: url.into(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// `GET uri`, the answer read as a table.
    async fn get(&self, uri: hyper::Uri) -> Result<AssignmentTable> {
        let response = tokio::time::timeout(Duration::from_secs(60), self.client.get(uri))
            .await
            .map_err(|_| Error::TableTimeout)?
            .map_err(Error::TableRequest)?;
        if !response.status().is_success() {
            return Err(Error::TableStatus(response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(Error::TableBody)?
            .to_bytes();
        let text = std::str::from_utf8(&body)?;
        Ok(AssignmentTable::from_json(text)?)
    }
}

impl TableSource for HttpTableSource {
    fn next(&self, after: u64) -> BoxedTable<'_> {
        Box::pin(async move {
            let separator = if self.url.contains('?') { '&' } else { '?' };
            let uri = format!("{}{separator}after={after}", self.url).parse::<hyper::Uri>()?;
            self.get(uri).await
        })
    }

    fn current(&self) -> BoxedTable<'_> {
        Box::pin(async move { self.get(self.url.parse::<hyper::Uri>()?).await })
    }
}

/// Apply every table `source` yields to `node`, for as long as the task runs: the server aborts
/// it once its last connection is gone, not when shutdown starts (see `server::run`).
pub async fn follow(source: Arc<dyn TableSource>, node: Arc<NodeState>) {
    // First the table as it stands while this process starts: what it gives this node was the
    // previous process's (see `NodeState::inherit`).
    let starting = match tokio::time::timeout(STARTING_LOOK, source.current()).await {
        Ok(Ok(table)) => Some(table),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "no assignment table to start from");
            None
        }
        Err(_) => {
            tracing::warn!("no assignment table to start from within {STARTING_LOOK:?}");
            None
        }
    };
    node.inherit(starting.as_ref());
    let mut backoff = Duration::from_millis(100);
    loop {
        let after = node.table().epoch;
        let next = source.next(after).await;
        match next {
            Ok(table) => {
                backoff = Duration::from_millis(100);
                node.apply_table(table).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch the assignment table; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
