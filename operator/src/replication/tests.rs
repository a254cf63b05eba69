//! Tests of the follower count, the `Replicated` condition and the drain's wait for followers.

use std::time::Duration;

use shard::{DrainStep, LoadPolicy, Membership, NodeInfo, PlanOptions};

use super::*;
use crate::decide::{DecideOptions, Inputs, Report, decide};

const SHARDS: u32 = 12;

fn name(i: u32) -> NodeName {
    NodeName::new(format!("node-{i}")).expect("valid name")
}

fn info(i: u32) -> NodeInfo {
    NodeInfo::new(format!("127.0.0.1:{}", 7000 + i))
}

fn replicated(members: &[u32], draining: &[u32]) -> AssignmentTable {
    let membership = Membership {
        ready: members.iter().map(|&i| (name(i), info(i))).collect(),
        draining: draining.iter().map(|&i| name(i)).collect(),
    };
    shard::plan(
        &AssignmentTable::empty(SHARDS),
        &membership,
        &PlanOptions {
            replication: 2,
            ..PlanOptions::default()
        },
    )
}

/// A ready pod at `epoch` reporting `following` live and `catching_up` copying shards.
fn pod(i: u32, epoch: u64, following: u32, catching_up: u32) -> PodView {
    PodView {
        name: name(i),
        running: true,
        ready: true,
        info: Some(info(i)),
        report: Some(Report {
            epoch,
            following,
            catching_up,
            ..Report::default()
        }),
        terminating: false,
    }
}

/// Every pod at the table's epoch, following what the table says, all caught up.
fn caught_up(table: &AssignmentTable, members: &[u32]) -> Vec<PodView> {
    members
        .iter()
        .map(|&i| {
            let follows = u32::try_from(table.followed_by(&name(i)).len()).expect("small");
            pod(i, table.epoch, follows, 0)
        })
        .collect()
}

#[test]
fn every_shard_counts_as_followed_when_every_follower_reports_its_copies_live() {
    let table = replicated(&[0, 1, 2], &[]);
    let summary = summarize(&caught_up(&table, &[0, 1, 2]), &table, 2);
    assert_eq!(
        summary,
        FollowerSummary {
            replication: 2,
            assigned: SHARDS,
            with_follower: SHARDS,
            catching_up: 0
        }
    );
    assert_eq!(summary.without_follower(), 0);
    let (status, reason, message) = condition(&summary);
    assert_eq!((status, reason), ("True", reasons::ALL_SHARDS_FOLLOWED));
    assert_eq!(message, "all 12 shards have a live follower");
}

#[test]
fn a_node_at_the_tables_epoch_counts_no_more_than_the_table_says_it_follows() {
    let table = replicated(&[0, 1, 2], &[]);
    let mut pods = caught_up(&table, &[0, 1, 2]);
    // node-0 still keeps copies of shards it no longer follows: they are not followers.
    pods[0] = pod(0, table.epoch, 40, 0);
    let summary = summarize(&pods, &table, 2);
    assert_eq!(summary.with_follower, SHARDS);
}

#[test]
fn a_node_whose_epoch_lags_counts_no_live_copy() {
    let table = replicated(&[0, 1, 2], &[]);
    let mut pods = caught_up(&table, &[0, 1, 2]);
    // Tables it has not applied may have taken a followed shard away and given it back: what
    // it reports as live may be stale.
    pods[2] = pod(2, table.epoch - 1, 40, 0);
    let lagging = u32::try_from(table.followed_by(&name(2)).len()).expect("small");
    let summary = summarize(&pods, &table, 2);
    assert_eq!(summary.with_follower, SHARDS - lagging);
    assert!(summary.catching_up > 0, "its copies count as catching up");
    assert_eq!(condition(&summary).0, "False");
}

#[test]
fn a_shard_whose_follower_is_the_source_of_its_hand_off_is_not_replicated() {
    let mut table = replicated(&[0, 1, 2], &[]);
    // Shard 0 moves from its follower to another node: until the target holds the rooms, the
    // source holds both the frozen rooms and the copy.
    let shard = shard::ShardId(0);
    let follower = table.follower(shard).expect("a follower").clone();
    let owner = table.owner(shard).expect("an owner").clone();
    table.moves = vec![shard::Move {
        shard,
        from: follower,
        to: owner,
    }];
    let pods = caught_up(&table, &[0, 1, 2]);
    let summary = summarize(&pods, &table, 2);
    assert_eq!(summary.with_follower, SHARDS - 1);
    assert_eq!(condition(&summary).0, "False");
}

#[test]
fn a_pod_that_is_not_ready_or_is_leaving_counts_no_follower() {
    let table = replicated(&[0, 1, 2], &[]);
    let mut pods = caught_up(&table, &[0, 1, 2]);
    pods[0].ready = false;
    pods[1].terminating = true;
    let summary = summarize(&pods, &table, 2);
    let node_2 = u32::try_from(table.followed_by(&name(2)).len()).expect("small");
    assert_eq!(summary.with_follower, node_2);
    let (status, reason, message) = condition(&summary);
    assert_eq!((status, reason), ("False", reasons::FOLLOWERS_MISSING));
    assert_eq!(
        message,
        format!("{} of 12 shards have no live follower", SHARDS - node_2)
    );
}

#[test]
fn shards_still_copying_make_the_condition_say_catching_up() {
    let table = replicated(&[0, 1, 2], &[]);
    let mut pods = caught_up(&table, &[0, 1, 2]);
    pods[1] = pod(1, table.epoch, 1, 3);
    let summary = summarize(&pods, &table, 2);
    assert_eq!(summary.catching_up, 3);
    let (status, reason, message) = condition(&summary);
    assert_eq!((status, reason), ("False", reasons::CATCHING_UP));
    assert!(message.ends_with("(3 of them catching up)"), "{message}");
}

#[test]
fn with_replication_one_the_condition_says_replication_is_off_and_nothing_is_counted() {
    let table = replicated(&[0, 1, 2], &[]);
    let summary = summarize(&caught_up(&table, &[0, 1, 2]), &table, 1);
    assert_eq!((summary.with_follower, summary.catching_up), (0, 0));
    let (status, reason, _) = condition(&summary);
    assert_eq!((status, reason), ("False", reasons::REPLICATION_OFF));
}

#[test]
fn an_unassigned_table_has_no_followers_to_count() {
    let table = AssignmentTable::empty(SHARDS);
    let summary = summarize(&[], &table, 2);
    assert_eq!(condition(&summary).1, reasons::NO_ASSIGNMENT);
}

#[test]
fn only_remaining_nodes_at_the_tables_epoch_are_waited_for() {
    let table = replicated(&[0, 1, 2], &[2]);
    let pods = vec![
        pod(0, table.epoch, 0, 2),
        pod(1, table.epoch - 1, 0, 5),
        pod(2, table.epoch, 0, 4),
    ];
    // node-1 lags (its count is of another table); node-2 drains.
    assert_eq!(catching_up(&pods, &table), vec![(name(0), 2)]);
}

fn options() -> DecideOptions {
    DecideOptions {
        plan: PlanOptions {
            replication: 2,
            ..PlanOptions::default()
        },
        balance: LoadPolicy::default(),
        drain_timeout: Duration::from_secs(30),
        pod_prefix: "node".into(),
        initial_grace: Duration::ZERO,
    }
}

/// A scale-down from 3 to 2 whose moves are done: the drain would remove node-2 now.
fn drained() -> (AssignmentTable, Vec<PodView>) {
    let table = replicated(&[0, 1, 2], &[2]);
    assert!(table.shards_of(&name(2)).is_empty() && table.moves.is_empty());
    assert!(table.followed_by(&name(2)).is_empty());
    let pods = caught_up(&table, &[0, 1, 2]);
    (table, pods)
}

fn run(table: &AssignmentTable, pods: &[PodView], elapsed: Duration) -> crate::Decision {
    let inputs = Inputs {
        desired_replicas: 2,
        pods,
        table,
        drain_elapsed: elapsed,
        age: Duration::from_secs(3600),
    };
    decide(inputs, &options()).expect("decide")
}

#[test]
fn a_drain_with_every_follower_caught_up_removes_the_pod() {
    let (table, pods) = drained();
    let decision = run(&table, &pods, Duration::from_secs(1));
    assert!(matches!(decision.step, DrainStep::Remove(_)));
    assert_eq!(decision.replicas, 2);
    assert!(decision.catching_up.is_empty() && decision.stuck.is_none());
    assert_eq!(decision.followers.with_follower, SHARDS);
}

#[test]
fn a_drain_waits_while_a_remaining_node_still_catches_up_followed_shards() {
    let (table, mut pods) = drained();
    pods[0] = pod(0, table.epoch, 1, 3);
    let decision = run(&table, &pods, Duration::from_secs(1));
    assert_eq!(
        decision.step,
        DrainStep::WaitForMoves {
            pending: Vec::new()
        }
    );
    assert_eq!(decision.replicas, 3);
    assert!(decision.stop.is_empty());
    assert_eq!(decision.catching_up, vec![(name(0), 3)]);
    assert!(decision.stuck.is_none());
}

#[test]
fn past_the_drain_timeout_a_follower_still_catching_up_is_named_and_the_pod_removed_anyway() {
    let (table, mut pods) = drained();
    pods[0] = pod(0, table.epoch, 1, 3);
    let decision = run(&table, &pods, Duration::from_secs(31));
    assert!(matches!(decision.step, DrainStep::Remove(_)));
    assert_eq!(decision.replicas, 2);
    let stuck = decision.stuck.expect("degraded");
    assert_eq!(stuck.catching_up, vec![(name(0), 3)]);
    let message = stuck.to_string();
    assert!(
        message.contains("followers still catching up on node-0 (3)"),
        "{message}"
    );
}

#[test]
fn with_replication_one_a_drain_does_not_wait_for_followers() {
    let (table, mut pods) = drained();
    pods[0] = pod(0, table.epoch, 1, 3);
    let mut options = options();
    options.plan.replication = 1;
    // The table of replication 2 planned again with replication 1 drops its followers first.
    let once = decide(
        Inputs {
            desired_replicas: 2,
            pods: &pods,
            table: &table,
            drain_elapsed: Duration::from_secs(1),
            age: Duration::from_secs(3600),
        },
        &options,
    )
    .expect("decide");
    assert!(once.catching_up.is_empty());
    assert_eq!(once.followers.with_follower, 0);
}
