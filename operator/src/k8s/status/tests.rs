use super::*;
use crate::decide::Stuck;
use crate::replication::FollowerSummary;
use k8s_openapi::api::apps::v1::StatefulSet;
use shard::{AssignmentTable, DrainStep, NodeInfo};
use std::collections::BTreeSet;

fn name(s: &str) -> NodeName {
    NodeName::new(s).expect("name")
}

fn decision(nodes: &[&str], step: DrainStep) -> Decision {
    let mut table = AssignmentTable::empty(4);
    for n in nodes {
        table
            .nodes
            .insert(name(n), NodeInfo::new(format!("{n}:7070")));
    }
    let owners: Vec<NodeName> = nodes.iter().map(|n| name(n)).collect();
    if !owners.is_empty() {
        table = AssignmentTable::with_owners(
            (0..4)
                .map(|i| Some(owners[i % owners.len()].clone()))
                .collect(),
            table.nodes.clone(),
        )
        .expect("table");
        table.epoch = 3;
    }
    Decision {
        table,
        publish: false,
        step,
        replicas: 2,
        start: vec![],
        stop: BTreeSet::new(),
        stuck: None,
        exiting: BTreeSet::new(),
        followers: FollowerSummary {
            replication: 2,
            assigned: 4,
            with_follower: 4,
            catching_up: 0,
        },
        catching_up: vec![],
    }
}

fn pass<'a>(d: &'a Decision, old: Option<&'a ChatClusterStatus>, now: Timestamp) -> Pass<'a> {
    Pass {
        generation: Some(1),
        desired: 2,
        ready_nodes: 2,
        draining: &[],
        decision: d,
        rollout: Rollout::default(),
        old,
        now,
        pods: 2,
        selector: "app.kubernetes.io/name=roomshard,roomshard.dev/cluster=c",
    }
}

fn statefulset(generation: i64, status: serde_json::Value) -> StatefulSet {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "c", "generation": generation},
        "spec": {"replicas": 3, "selector": {}, "serviceName": "c-peers",
                 "template": {"spec": {"containers": []}}},
        "status": status,
    }))
    .expect("statefulset")
}

#[test]
fn a_statefulset_between_revisions_is_rolling_and_one_on_a_single_revision_is_not() {
    let rolling = statefulset(
        2,
        serde_json::json!({"replicas": 3, "observedGeneration": 2, "updatedReplicas": 1,
                "currentRevision": "c-a", "updateRevision": "c-b"}),
    );
    assert_eq!(
        rollout_of(Some(&rolling)),
        Rollout {
            updated: Some(1),
            replicas: 3,
            in_progress: true
        }
    );
    let done = statefulset(
        2,
        serde_json::json!({"replicas": 3, "observedGeneration": 2, "updatedReplicas": 3,
                "currentRevision": "c-b", "updateRevision": "c-b"}),
    );
    assert!(!rollout_of(Some(&done)).in_progress);
    // OnDelete: currentRevision stays behind even once every pod is updated.
    let on_delete_done = statefulset(
        2,
        serde_json::json!({"replicas": 3, "observedGeneration": 2, "updatedReplicas": 3,
                "currentRevision": "c-a", "updateRevision": "c-b"}),
    );
    assert!(!rollout_of(Some(&on_delete_done)).in_progress);
    // A template change the StatefulSet controller has not seen yet is a rollout to come.
    let behind = statefulset(
        3,
        serde_json::json!({"replicas": 3, "observedGeneration": 2, "updatedReplicas": 3,
                "currentRevision": "c-b", "updateRevision": "c-b"}),
    );
    assert!(rollout_of(Some(&behind)).in_progress);
    // No status yet (just created, before the StatefulSet controller wrote one): nothing to say.
    assert_eq!(rollout_of(None), Rollout::default());
}

#[test]
fn a_rolling_update_shows_as_updating_with_up_to_date_false_until_every_pod_is_updated() {
    let d = decision(&["c-0", "c-1"], DrainStep::Steady);
    let mut p = pass(&d, None, at(0));
    p.rollout = Rollout {
        updated: Some(1),
        replicas: 2,
        in_progress: true,
    };
    let rolling = summarize(&p);
    assert_eq!(rolling.phase.as_deref(), Some("Updating"));
    assert_eq!(rolling.updated_replicas, Some(1));
    let c = condition(Some(&rolling), types::UP_TO_DATE).expect("UpToDate");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "RollingUpdate")
    );
    assert_eq!(c.message, "1/2 pods updated");
    let progressing = condition(Some(&rolling), types::PROGRESSING).expect("Progressing");
    assert_eq!(progressing.reason, "RollingUpdate");

    p.old = Some(&rolling);
    p.rollout = Rollout {
        updated: Some(2),
        replicas: 2,
        in_progress: false,
    };
    let done = summarize(&p);
    assert_eq!(done.phase.as_deref(), Some("Running"));
    let c = condition(Some(&done), types::UP_TO_DATE).expect("UpToDate");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "AllPodsUpdated")
    );
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + second).expect("time")
}

#[test]
fn a_settled_cluster_is_running_and_ready() {
    let d = decision(&["c-0", "c-1"], DrainStep::Steady);
    let status = summarize(&pass(&d, None, at(0)));
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.epoch, 3);
    assert_eq!(status.shards_per_node.get("c-0"), Some(&2));
    let ready = condition(Some(&status), types::READY).expect("ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "AllNodesReady")
    );
    let degraded = condition(Some(&status), types::DEGRADED).expect("degraded");
    assert_eq!(degraded.status, "False");
}

#[test]
fn summarizing_an_unchanged_cluster_again_gives_the_same_status() {
    let d = decision(&["c-0", "c-1"], DrainStep::Steady);
    let first = summarize(&pass(&d, None, at(0)));
    let again = summarize(&pass(&d, Some(&first), at(60)));
    assert_eq!(first, again);
}

#[test]
fn a_drain_records_when_it_started_and_keeps_that_time() {
    let d = decision(
        &["c-0", "c-1"],
        DrainStep::WaitForEpoch {
            epoch: 3,
            lagging: vec![name("c-0")],
        },
    );
    let draining = [name("c-2")];
    let mut p = pass(&d, None, at(10));
    p.draining = &draining;
    let first = summarize(&p);
    assert_eq!(first.phase.as_deref(), Some("Draining"));
    assert_eq!(first.draining, vec!["c-2".to_owned()]);
    assert_eq!(first.drain_started.as_deref(), Some("2023-11-14T22:13:30Z"));
    let mut later = pass(&d, Some(&first), at(40));
    later.draining = &draining;
    let second = summarize(&later);
    assert_eq!(second.drain_started, first.drain_started);
    assert_eq!(
        drain_elapsed(Some(&second), at(40)),
        Duration::from_secs(30)
    );
}

#[test]
fn the_replicated_condition_names_how_many_shards_have_no_live_follower() {
    let mut d = decision(&["c-0", "c-1"], DrainStep::Steady);
    let all = summarize(&pass(&d, None, at(0)));
    assert_eq!(all.shards_with_follower, 4);
    let replicated = condition(Some(&all), types::REPLICATED).expect("replicated");
    assert_eq!(
        (replicated.status.as_str(), replicated.reason.as_str()),
        ("True", "AllShardsFollowed")
    );
    d.followers.with_follower = 1;
    let some = summarize(&pass(&d, Some(&all), at(10)));
    assert_eq!(some.shards_with_follower, 1);
    let replicated = condition(Some(&some), types::REPLICATED).expect("replicated");
    assert_eq!(replicated.status, "False");
    assert_eq!(replicated.reason, "FollowersMissing");
    assert_eq!(replicated.message, "3 of 4 shards have no live follower");
    assert_eq!(replicated.last_transition_time, Time(at(10)));
}

#[test]
fn a_stuck_drain_is_degraded_with_the_stuck_message() {
    let mut d = decision(&["c-0", "c-1"], DrainStep::WaitForMoves { pending: vec![] });
    d.stuck = Some(Stuck {
        draining: vec![name("c-2")],
        elapsed: Duration::from_secs(31),
        lagging: vec![],
        pending: vec![],
        busy: vec![(name("c-0"), 1)],
        catching_up: vec![],
        epoch: 3,
    });
    let status = summarize(&pass(&d, None, at(0)));
    assert_eq!(status.phase.as_deref(), Some("Degraded"));
    let degraded = condition(Some(&status), types::DEGRADED).expect("degraded");
    assert_eq!(degraded.reason, "DrainStuck");
    assert!(
        degraded.message.contains("draining c-2"),
        "{}",
        degraded.message
    );
}

#[test]
fn a_condition_keeps_its_transition_time_until_its_status_flips() {
    let steady = decision(&["c-0", "c-1"], DrainStep::Steady);
    let first = summarize(&pass(&steady, None, at(0)));
    let mut p = pass(&steady, Some(&first), at(50));
    p.ready_nodes = 1;
    let second = summarize(&p);
    let ready = condition(Some(&second), types::READY).expect("ready");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.last_transition_time, Time(at(50)));
    let degraded = condition(Some(&second), types::DEGRADED).expect("degraded");
    assert_eq!(degraded.last_transition_time, Time(at(0)));
}

#[test]
fn an_invalid_spec_only_sets_degraded() {
    let d = decision(&["c-0", "c-1"], DrainStep::Steady);
    let before = summarize(&pass(&d, None, at(0)));
    let after = invalid_spec(
        Some(&before),
        Some(2),
        "spec.auth.secretRef is missing",
        at(5),
    );
    assert_eq!(after.epoch, before.epoch);
    assert_eq!(after.phase.as_deref(), Some("Degraded"));
    let degraded = condition(Some(&after), types::DEGRADED).expect("degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert_eq!(degraded.message, "spec.auth.secretRef is missing");
}
