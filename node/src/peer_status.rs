//! Reading another node's `/status` over its internal listener (the address peers dial).
//!
//! A leaving node uses it to learn whether the nodes that took over the shards it followed hold
//! live copies yet (see [`crate::exit`]). Every read is bounded by a timeout, and a node that
//! cannot be read, answers badly or names itself differently (an address reused by another
//! node) simply has no report: callers treat that as "not known to be caught up".

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use shard::{AssignmentTable, CopyReport, NodeName, NodeStatus};

/// How long one read may take: a node slower than this is not worth waiting for.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// A `/status` body is a few hundred bytes with its per-shard load; anything far larger is not
/// one.
const MAX_BODY: usize = 4 << 20;

/// Reads nodes' `/status`.
#[derive(Debug, Clone)]
pub struct StatusReader {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for StatusReader {
    fn default() -> StatusReader {
        StatusReader {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl StatusReader {
    /// The copy reports of `nodes`, at the peer addresses `table` gives them, read concurrently;
    /// nodes that could not be read are left out.
    pub async fn copy_reports(
        &self,
        table: &AssignmentTable,
        nodes: &BTreeSet<NodeName>,
    ) -> BTreeMap<NodeName, CopyReport> {
        let reads = nodes.iter().filter_map(|name| {
            let info = table.nodes.get(name)?;
            Some(async move {
                match self.read(&info.peer_addr).await {
                    Some(status) if status.node == name.as_str() => Some((
                        name.clone(),
                        CopyReport {
                            epoch_applied: status.epoch,
                            catching_up: status.catching_up,
                        },
                    )),
                    _ => None,
                }
            })
        });
        join_all(reads).await.into_iter().flatten().collect()
    }

    /// One node's `/status`, or `None` if it could not be read within [`READ_TIMEOUT`].
    async fn read(&self, peer_addr: &str) -> Option<NodeStatus> {
        let uri = format!("http://{peer_addr}/status")
            .parse::<hyper::Uri>()
            .ok()?;
        let read = async {
            let response = self.client.get(uri).await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_BODY);
            let bytes = body.collect().await.ok()?.to_bytes();
            serde_json::from_slice::<NodeStatus>(&bytes).ok()
        };
        let status = tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .ok()
            .flatten();
        if status.is_none() {
            tracing::debug!(%peer_addr, "could not read a peer's /status");
        }
        status
    }
}
