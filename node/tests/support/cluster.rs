//! Test support for clusters in one process: nodes with real peer links on loopback, and a
//! table server that serves whatever table the test publishes (the driver's role).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use clap::Parser;
use node::auth::Authenticator;
use node::peer::{PeerSettings, Peers};
use node::table_source::{HttpTableSource, TableSource};
use node::{NodeConfig, NodeState};
use serde::Deserialize;
use shard::{AssignmentTable, Membership, NodeInfo, NodeName, PlanOptions};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::Client;

pub const SECRET: &[u8] = b"test-cluster-secret";

/// Serves `/table` with long-poll, like the local driver.
pub struct TableServer {
    pub url: String,
    tx: watch::Sender<Arc<AssignmentTable>>,
    task: JoinHandle<()>,
}

#[derive(Deserialize)]
struct After {
    after: Option<u64>,
}

impl TableServer {
    pub async fn start(shards: u32) -> TableServer {
        let (tx, rx) = watch::channel(Arc::new(AssignmentTable::empty(shards)));
        let app = Router::new()
            .route(
                "/table",
                get(
                    |State(rx): State<watch::Receiver<Arc<AssignmentTable>>>,
                     Query(q): Query<After>| async move {
                        let mut rx = rx.clone();
                        let after = q.after.unwrap_or(0);
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            rx.wait_for(|t| t.epoch > after),
                        )
                        .await;
                        let table = rx.borrow().clone();
                        table.to_json()
                    },
                ),
            )
            .with_state(rx);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TableServer {
            url: format!("http://{addr}/table"),
            tx,
            task,
        }
    }

    pub fn publish(&self, table: AssignmentTable) {
        self.tx.send_replace(Arc::new(table));
    }

    pub fn current(&self) -> Arc<AssignmentTable> {
        self.tx.borrow().clone()
    }
}

impl Drop for TableServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A clustered node in this process.
pub struct ClusterNode {
    pub name: NodeName,
    pub addr: SocketAddr,
    pub peer_addr: SocketAddr,
    pub state: Arc<NodeState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl ClusterNode {
    pub async fn start(name: &str, table_url: &str, shards: u32, flags: &[&str]) -> ClusterNode {
        let shards = shards.to_string();
        let mut args = vec![
            "roomshard-node",
            "--listen",
            "127.0.0.1:0",
            "--name",
            name,
            "--shards",
            &shards,
        ];
        args.extend_from_slice(flags);
        let config = NodeConfig::try_parse_from(args).expect("flags");
        let listener = TcpListener::bind(config.listen).await.expect("bind");
        let peer_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind peer");
        let addr = listener.local_addr().expect("addr");
        let peer_addr = peer_listener.local_addr().expect("peer addr");
        let settings = config.settings(peer_addr).expect("settings");
        let peers = Peers::new(PeerSettings {
            me: settings.name.clone(),
            secret: SECRET.into(),
            max_unacked: 100_000,
        });
        let state = NodeState::clustered(settings, Authenticator::open(), peers);
        let source: Arc<dyn TableSource> = Arc::new(HttpTableSource::new(table_url));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(node::run(
            listener,
            Some(peer_listener),
            state.clone(),
            Some(source),
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(5),
        ));
        ClusterNode {
            name: NodeName::new(name).expect("name"),
            addr,
            peer_addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            client_addr: Some(self.addr.to_string()),
            ..NodeInfo::new(self.peer_addr.to_string())
        }
    }

    pub async fn client(&self, user: &str) -> Client {
        Client::connect(&format!("ws://{}/ws?user={user}", self.addr)).await
    }

    /// Ask the node to stop, as SIGTERM does, without waiting for it to exit.
    pub fn request_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Whether the node has exited.
    pub fn exited(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The next table for `ready` nodes (with `draining` among them), as the driver plans it.
pub fn plan(
    current: &AssignmentTable,
    ready: &[&ClusterNode],
    draining: &[&str],
) -> AssignmentTable {
    let membership = Membership {
        ready: ready
            .iter()
            .map(|n| (n.name.clone(), n.info()))
            .collect::<BTreeMap<_, _>>(),
        draining: draining
            .iter()
            .map(|d| NodeName::new(*d).expect("name"))
            .collect::<BTreeSet<_>>(),
    };
    shard::plan(current, &membership, &PlanOptions::default())
}

/// Wait until every node in `nodes` applied `epoch`.
pub async fn wait_applied(nodes: &[&ClusterNode], epoch: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while nodes.iter().any(|n| n.state.table().epoch < epoch) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes did not apply epoch {epoch}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait until every peer link among `nodes` is up.
pub async fn wait_linked(nodes: &[&ClusterNode]) {
    let want = u32::try_from(nodes.len() - 1).unwrap_or(u32::MAX);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while nodes
        .iter()
        .any(|n| n.state.status().peers_connected < want)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "peer links did not come up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Complete every move the sources report done, as the driver does, until none is left.
pub async fn settle(server: &TableServer, nodes: &[&ClusterNode]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let table = server.current();
        wait_applied(nodes, table.epoch).await;
        if table.moves.is_empty() {
            return;
        }
        let done: Vec<_> = nodes
            .iter()
            .flat_map(|n| n.state.status().moves_done)
            .collect();
        if !done.is_empty() {
            let next = shard::complete_moves(&table, &done);
            if next.epoch != table.epoch {
                server.publish(next);
                continue;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "moves did not complete: {:?}",
            table.moves
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
