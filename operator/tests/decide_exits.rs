//! The decision step on planned exits: a pod that is going away (a `deletionTimestamp`, a stop
//! sent by the driver, or a node that reports `terminating` after a SIGTERM by hand) is drained
//! like a scale-down, stays in the table as a source until its process is gone, and a pod that
//! comes back under the same name gets shards again only once ready, by hand-off.

mod decide_support;

use std::time::Duration;

use decide_support::{name, options};
use operator::decide::{Decision, Inputs, PodView, Report, decide};
use shard::{AssignmentTable, DrainStep, NodeInfo, complete_moves};

const SHARDS: u32 = 12;

fn ready(i: u32, epoch: u64) -> PodView {
    PodView {
        name: name(i),
        running: true,
        ready: true,
        info: Some(NodeInfo {
            peer_addr: format!("127.0.0.1:{}", 7000 + i),
            client_addr: None,
            zone: None,
            member_since: 0,
        }),
        report: Some(Report {
            epoch,
            ..Report::default()
        }),
        terminating: false,
    }
}

/// A pod with a `deletionTimestamp`: still running, no longer ready (its probe fails on
/// purpose once it is stopping).
fn terminating(i: u32, epoch: u64) -> PodView {
    PodView {
        ready: false,
        terminating: true,
        ..ready(i, epoch)
    }
}

fn run(desired: u32, pods: &[PodView], table: &AssignmentTable) -> Decision {
    let inputs = Inputs {
        desired_replicas: desired,
        pods,
        table,
        drain_elapsed: Duration::ZERO,
        age: Duration::from_secs(3600),
    };
    decide(inputs, &options()).expect("decide")
}

fn settled(n: u32) -> AssignmentTable {
    let pods: Vec<PodView> = (0..n).map(|i| ready(i, 0)).collect();
    run(n, &pods, &AssignmentTable::empty(SHARDS)).table
}

#[test]
fn a_terminating_pod_is_drained_at_once_and_stays_in_the_table_as_the_source() {
    let table = settled(3);
    let owned = table.shards_of(&name(1));
    assert!(!owned.is_empty());
    let pods = [
        ready(0, table.epoch),
        terminating(1, table.epoch),
        ready(2, table.epoch),
    ];
    let decision = run(3, &pods, &table);
    assert!(decision.publish);
    assert!(
        decision.table.nodes.contains_key(&name(1)),
        "still a member"
    );
    assert!(decision.table.draining.contains(&name(1)));
    assert!(decision.table.shards_of(&name(1)).is_empty());
    // Every shard it owned is handed off from it, none restarts empty.
    assert_eq!(decision.table.moves.len(), owned.len());
    assert!(decision.table.moves.iter().all(|m| m.from == name(1)));
    assert_eq!(decision.exiting.iter().collect::<Vec<_>>(), vec![&name(1)]);
    // A planned exit is not a scale-down: nothing is stopped or started by the driver.
    assert_eq!(decision.step, DrainStep::Steady);
    assert!(decision.stop.is_empty());
    assert!(decision.start.is_empty());
    assert_eq!(decision.replicas, 3);
}

#[test]
fn a_node_that_reports_terminating_after_a_sigterm_by_hand_is_drained_the_same_way() {
    let table = settled(3);
    let mut pods = vec![
        ready(0, table.epoch),
        ready(1, table.epoch),
        ready(2, table.epoch),
    ];
    if let Some(r) = pods[2].report.as_mut() {
        r.terminating = true;
    }
    pods[2].ready = false;
    let decision = run(3, &pods, &table);
    assert!(decision.table.draining.contains(&name(2)));
    assert!(decision.table.shards_of(&name(2)).is_empty());
    assert!(decision.table.moves.iter().all(|m| m.from == name(2)));
}

#[test]
fn a_terminating_pod_leaves_the_table_only_once_its_process_is_gone_and_then_starts_again() {
    let table = settled(3);
    let pods = [
        ready(0, table.epoch),
        ready(1, table.epoch),
        terminating(2, table.epoch),
    ];
    let draining = run(3, &pods, &table).table;
    // The hand-offs finish and are cleared; the pod still runs, so it stays (owning nothing).
    let done = complete_moves(&draining, &draining.moves);
    let at = |epoch| [ready(0, epoch), ready(1, epoch), terminating(2, epoch)];
    let decision = run(3, &at(done.epoch), &done);
    assert!(!decision.publish, "nothing changes while it runs");
    assert!(decision.table.nodes.contains_key(&name(2)));
    assert!(decision.start.is_empty(), "it still runs");

    // Its process exits: it leaves the table, and (in the local driver) starts again.
    let mut gone = at(done.epoch);
    gone[2] = PodView {
        running: false,
        ready: false,
        info: None,
        report: None,
        terminating: false,
        name: name(2),
    };
    let decision = run(3, &gone, &done);
    assert!(decision.publish);
    assert!(!decision.table.nodes.contains_key(&name(2)));
    assert!(decision.table.moves.is_empty(), "it owned nothing");
    assert_eq!(decision.start, vec![name(2)]);
}

#[test]
fn a_pod_that_comes_back_gets_shards_only_once_ready_by_hand_off_with_the_fewest_moves() {
    let table = settled(3);
    // node-2 was drained and is gone: the table has two members.
    let two = {
        let pods = [ready(0, table.epoch), ready(1, table.epoch)];
        let mut pods = pods.to_vec();
        pods.push(PodView {
            running: false,
            ready: false,
            info: None,
            report: None,
            terminating: false,
            name: name(2),
        });
        run(3, &pods, &table).table
    };
    // The new process of node-2 runs but is not ready: nothing for it.
    let mut back = vec![ready(0, two.epoch), ready(1, two.epoch), ready(2, 0)];
    back[2].ready = false;
    let decision = run(3, &back, &two);
    assert!(!decision.publish);
    assert!(!decision.table.nodes.contains_key(&name(2)));

    // Ready: it gets its share, every shard by a hand-off to it, and nothing else moves.
    back[2].ready = true;
    let decision = run(3, &back, &two);
    assert!(decision.publish);
    assert_eq!(decision.table.shards_of(&name(2)).len(), 4);
    assert_eq!(decision.table.moves.len(), 4);
    assert!(decision.table.moves.iter().all(|m| m.to == name(2)));
}

#[test]
fn a_terminating_pod_the_table_does_not_list_never_gets_shards() {
    let table = settled(2);
    let mut pods = vec![ready(0, table.epoch), ready(1, table.epoch)];
    // node-2 was ready for a moment but is deleted before the operator gave it anything.
    pods.push(PodView {
        ready: true,
        ..terminating(2, 0)
    });
    let decision = run(3, &pods, &table);
    assert!(!decision.publish);
    assert!(!decision.table.nodes.contains_key(&name(2)));
}

#[test]
fn deciding_again_during_a_planned_exit_publishes_nothing_new() {
    let table = settled(3);
    let pods = [
        terminating(0, table.epoch),
        ready(1, table.epoch),
        ready(2, table.epoch),
    ];
    let first = run(3, &pods, &table);
    let again = run(3, &pods, &first.table);
    assert!(!again.publish);
    assert_eq!(again.table, first.table);
}
