//! Replication in the reconciler, against the real control plane: the table gets followers,
//! the status counts the live ones and says so in the `Replicated` condition, and a scale-down
//! waits for followers still catching up before it lowers the replicas.

mod support;

use kube::api::{Patch, PatchParams};
use operator::decide::Report;
use serde_json::json;
use support::{Harness, TestResult, condition, n};

async fn set_spec(h: &Harness, spec: serde_json::Value) -> TestResult {
    h.clusters()
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn every_shard_gets_a_follower_the_status_counts_them_and_replication_1_drops_them()
-> TestResult {
    let h = Harness::start().await?;
    let all = ["chat-0", "chat-1", "chat-2"];
    let table = h
        .running("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    for (shard, (owner, follower)) in table.owners().iter().zip(table.followers()).enumerate() {
        let (owner, follower) = (owner.as_ref(), follower.as_ref());
        assert!(owner.is_some() && follower.is_some(), "shard {shard}");
        assert_ne!(owner, follower, "shard {shard} follows itself");
    }
    h.nodes.applied(&all, &table, false);
    h.pass("chat").await?;
    let status = h.status("chat").await;
    assert_eq!(status.shards_with_follower, 12);
    assert_eq!(
        condition(&status, "Replicated"),
        (
            "True".to_owned(),
            "AllShardsFollowed".to_owned(),
            "all 12 shards have a live follower".to_owned()
        )
    );

    // A follower that stops answering no longer counts.
    h.nodes.silence("chat-1");
    h.pass("chat").await?;
    let status = h.status("chat").await;
    let followed_by_1 = table.followed_by(&n("chat-1")).len();
    assert_eq!(
        usize::try_from(status.shards_with_follower)?,
        12 - followed_by_1
    );
    let (replicated, reason, message) = condition(&status, "Replicated");
    assert_eq!(
        (replicated.as_str(), reason.as_str()),
        ("False", "FollowersMissing")
    );
    assert_eq!(
        message,
        format!("{followed_by_1} of 12 shards have no live follower")
    );

    set_spec(&h, json!({"replication": 1})).await?;
    h.nodes.applied(&all, &table, false);
    h.pass("chat").await?;
    let owners_only = h.table("chat").await;
    assert_eq!(owners_only.epoch, table.epoch + 1);
    assert!(owners_only.followers().iter().all(Option::is_none));
    assert_eq!(owners_only.owners(), table.owners(), "owners stay put");
    let status = h.status("chat").await;
    assert_eq!(status.shards_with_follower, 0);
    let (replicated, reason, _) = condition(&status, "Replicated");
    assert_eq!(
        (replicated.as_str(), reason.as_str()),
        ("False", "ReplicationOff")
    );
    Ok(())
}

#[tokio::test]
async fn a_scale_down_lowers_the_replicas_only_once_no_follower_is_catching_up() -> TestResult {
    let h = Harness::start().await?;
    let all = ["chat-0", "chat-1", "chat-2"];
    h.running("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    set_spec(&h, json!({"replicas": 2})).await?;
    h.pass("chat").await?;
    let marked = h.table("chat").await;
    assert!(marked.followed_by(&n("chat-2")).is_empty());
    h.nodes.applied(&all, &marked, false);
    h.nodes.applied(&["chat-2"], &marked, true);
    h.pass("chat").await?;
    let cleared = h.table("chat").await;
    assert!(cleared.moves.is_empty());

    // Every node has the cleared table and the moves are done, but chat-0 is still copying
    // three of the shards it newly follows: the drain waits.
    h.nodes.applied(&all, &cleared, false);
    h.nodes.report(
        "chat-0",
        Report {
            epoch: cleared.epoch,
            catching_up: 3,
            ..Report::default()
        },
    );
    h.pass("chat").await?;
    assert_eq!(h.replicas("chat").await, 3);
    let status = h.status("chat").await;
    assert_eq!(status.phase.as_deref(), Some("Draining"));
    assert_eq!(status.draining, ["chat-2"]);
    assert_eq!(condition(&status, "Replicated").0, "False");

    // Caught up: the pod goes.
    h.nodes.applied(&all, &cleared, false);
    h.pass("chat").await?;
    assert_eq!(h.replicas("chat").await, 2);
    let status = h.status("chat").await;
    assert!(status.draining.is_empty());
    assert_eq!(condition(&status, "Replicated").0, "True");
    Ok(())
}
