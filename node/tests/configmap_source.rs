//! The node's ConfigMap table source against the real kube-apiserver (a control plane with
//! no Nodes, from `testing/kubeharness`): the table the operator writes into the ConfigMap
//! reaches the node, newest epoch first.
#![cfg(feature = "kubernetes")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kubeharness::{TestCluster, TestClusterOptions};
use node::auth::Authenticator;
use node::configmap_source::ConfigMapTableSource;
use node::peer::{PeerSettings, Peers};
use node::table_source::{TableSource, follow};
use node::{NodeConfig, NodeState};
use serde_json::json;
use shard::{AssignmentTable, NodeInfo, NodeName};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A control plane with no Nodes: the API server is all these tests need.
async fn control_plane() -> Result<TestCluster, kubeharness::Error> {
    TestCluster::start(TestClusterOptions {
        nodes: 0,
        images: BTreeMap::new(),
        ..TestClusterOptions::default()
    })
    .await
}

const SHARDS: u32 = 8;

/// A table at `epoch` where `owner` owns every shard.
fn table(epoch: u64, owner: &str) -> AssignmentTable {
    let name = NodeName::new(owner).expect("name");
    let nodes = BTreeMap::from([(name.clone(), NodeInfo::new("127.0.0.1:1"))]);
    let mut table =
        AssignmentTable::with_owners(vec![Some(name); SHARDS as usize], nodes).expect("table");
    table.epoch = epoch;
    table
}

async fn write(api: &Api<ConfigMap>, text: &str) -> TestResult {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "chat-assignments"}, "data": {"table.json": text}});
    api.patch(
        "chat-assignments",
        &PatchParams::apply("roomshard-operator").force(),
        &Patch::Apply(cm),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_source_yields_each_newer_table_and_keeps_the_last_good_one() -> TestResult {
    let cluster = control_plane().await?;
    let client = cluster.client().await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // Another ConfigMap in the namespace is not followed.
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "other"},
            "data": {"table.json": table(9, "chat-9").to_json()}}))?,
    )
    .await?;
    write(&api, &table(1, "chat-0").to_json()).await?;
    let source = ConfigMapTableSource::new(client.clone(), "default", "chat-assignments");

    let first = tokio::time::timeout(Duration::from_secs(5), source.next(0)).await??;
    assert_eq!(first, table(1, "chat-0"));

    write(&api, &table(2, "chat-1").to_json()).await?;
    let second = tokio::time::timeout(Duration::from_secs(5), source.next(1)).await??;
    assert_eq!(second, table(2, "chat-1"));

    // Garbage and an older epoch are not offered.
    write(&api, "{not json").await?;
    write(&api, &table(1, "chat-0").to_json()).await?;
    let nothing = tokio::time::timeout(Duration::from_millis(300), source.next(2)).await;
    assert!(nothing.is_err(), "no newer table was written: {nothing:?}");

    write(&api, &table(3, "chat-0").to_json()).await?;
    let third = tokio::time::timeout(Duration::from_secs(5), source.next(2)).await??;
    assert_eq!(third.epoch, 3);
    cluster.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_node_following_the_configmap_applies_each_new_epoch() -> TestResult {
    let cluster = control_plane().await?;
    let client = cluster.client().await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let config = NodeConfig::try_parse_from([
        "roomshard-node",
        "--name",
        "chat-0",
        "--shards",
        "8",
        "--table-configmap",
        "chat-assignments",
    ])?;
    let settings = config.settings("127.0.0.1:1".parse()?)?;
    let peers = Peers::new(PeerSettings {
        me: settings.name.clone(),
        secret: b"secret".to_vec().into(),
        max_unacked: 1000,
    });
    let node = NodeState::clustered(settings, Authenticator::open(), peers);
    let source: Arc<dyn TableSource> = Arc::new(ConfigMapTableSource::new(
        client.clone(),
        &config.namespace,
        "chat-assignments",
    ));
    let following = tokio::spawn(follow(source, node.clone()));

    // The node starts before the operator has written anything.
    assert_eq!(node.table().epoch, 0);
    write(&api, &table(1, "chat-0").to_json()).await?;
    wait_for_epoch(&node, 1).await?;
    assert_eq!(node.table().shards_of(&NodeName::new("chat-0")?).len(), 8);

    write(&api, &table(2, "chat-0").to_json()).await?;
    wait_for_epoch(&node, 2).await?;

    // The follower runs until aborted, as the server stops it; a panic in it still fails.
    following.abort();
    if let Err(e) = following.await
        && !e.is_cancelled()
    {
        return Err(e.into());
    }
    cluster.stop().await;
    Ok(())
}

/// Polls the node's table (the node has no table-change signal) for up to five seconds.
async fn wait_for_epoch(node: &NodeState, epoch: u64) -> TestResult {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while node.table().epoch < epoch {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("node stuck at epoch {}", node.table().epoch).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
