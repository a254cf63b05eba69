//! Scale-down decisions.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Cluster, balanced, balanced_with, event, membership, node, replicated};
use proptest::prelude::*;
use shard::{
    AssignmentTable, CopyReport, DrainStep, NodeName, NodeReport, PlanOptions, ShardError,
    complete_moves, copies_moved_on, drain_step, handed_off, new_followers, nodes_to_drain, plan,
};

fn members(n: usize) -> Vec<NodeName> {
    (0..n).map(node).collect()
}

fn all_applied(table: &AssignmentTable, names: &[NodeName]) -> Vec<NodeReport> {
    names
        .iter()
        .map(|n| NodeReport {
            name: n.clone(),
            epoch_applied: table.epoch,
            moves_pending: 0,
        })
        .collect()
}

fn set(ids: &[usize]) -> BTreeSet<NodeName> {
    ids.iter().map(|&i| node(i)).collect()
}

#[test]
fn the_highest_ordinals_drain_first_and_names_without_one_last() -> Result<(), ShardError> {
    let names: Vec<NodeName> = ["chat-2", "chat-10", "chat-9", "odd", "chat-1", "another"]
        .into_iter()
        .map(NodeName::new)
        .collect::<Result<_, _>>()?;
    let drain = |n| -> Vec<String> {
        nodes_to_drain(n, &names)
            .iter()
            .map(|n| n.to_string())
            .collect()
    };
    assert_eq!(drain(6), Vec::<String>::new());
    assert_eq!(drain(4), vec!["chat-10", "chat-9"]);
    assert_eq!(drain(2), vec!["chat-1", "chat-10", "chat-2", "chat-9"]);
    // Names without an ordinal go last, by name: "another" before "odd".
    assert_eq!(
        drain(1),
        vec!["another", "chat-1", "chat-10", "chat-2", "chat-9"]
    );
    assert_eq!(drain(0).len(), 6);
    Ok(())
}

#[test]
fn nothing_to_drain_is_steady() {
    let table = balanced(16, 3);
    assert_eq!(drain_step(3, &members(3), &table, &[]), DrainStep::Steady);
    assert_eq!(drain_step(5, &members(3), &table, &[]), DrainStep::Steady);
}

#[test]
fn the_first_step_marks_the_highest_ordinals_draining() {
    let table = balanced(16, 5);
    let reports = all_applied(&table, &members(5));
    assert_eq!(
        drain_step(3, &members(5), &table, &reports),
        DrainStep::MarkDraining(set(&[3, 4]))
    );
}

#[test]
fn a_node_that_has_not_applied_the_table_is_waited_for() {
    let table = plan(
        &balanced(16, 5),
        &membership(0..5, &[3, 4]),
        &PlanOptions::default(),
    );
    let mut reports = all_applied(&table, &members(5));
    reports[1].epoch_applied = table.epoch - 1;
    reports.remove(4);
    assert_eq!(
        drain_step(3, &members(5), &table, &reports),
        DrainStep::WaitForEpoch {
            epoch: table.epoch,
            lagging: vec![node(1), node(4)],
        }
    );
}

#[test]
fn moves_off_draining_nodes_are_waited_for() {
    let table = plan(
        &balanced(16, 5),
        &membership(0..5, &[3, 4]),
        &PlanOptions::default(),
    );
    assert!(!table.moves.is_empty());
    let reports = all_applied(&table, &members(5));
    assert_eq!(
        drain_step(3, &members(5), &table, &reports),
        DrainStep::WaitForMoves {
            pending: table.moves.clone(),
        }
    );
}

#[test]
fn a_node_reporting_a_hand_off_in_progress_is_waited_for() {
    let planned = plan(
        &balanced(16, 5),
        &membership(0..5, &[3, 4]),
        &PlanOptions::default(),
    );
    let table = complete_moves(&planned, &planned.moves);
    let mut reports = all_applied(&table, &members(5));
    reports[0].moves_pending = 1;
    assert_eq!(
        drain_step(3, &members(5), &table, &reports),
        DrainStep::WaitForMoves { pending: vec![] }
    );
}

#[test]
fn removal_is_safe_once_moves_are_done_and_every_node_applied_the_table() {
    let planned = plan(
        &balanced(16, 5),
        &membership(0..5, &[3, 4]),
        &PlanOptions::default(),
    );
    let table = complete_moves(&planned, &planned.moves);
    let reports = all_applied(&table, &members(5));
    assert_eq!(
        drain_step(3, &members(5), &table, &reports),
        DrainStep::Remove(set(&[3, 4]))
    );
}

#[test]
fn a_pod_to_remove_that_is_not_ready_is_not_waited_for() {
    // node-4 is not ready: it is not in the table and cannot report.
    let planned = plan(
        &balanced(16, 5),
        &membership(0..4, &[3]),
        &PlanOptions::default(),
    );
    let table = complete_moves(&planned, &planned.moves);
    let reports = all_applied(&table, &members(4));
    assert_eq!(
        drain_step(3, &members(5), &table, &reports),
        DrainStep::Remove(set(&[3, 4]))
    );
}

#[test]
fn a_draining_node_still_owning_shards_without_moves_needs_another_plan() {
    let capped = PlanOptions {
        max_moves_per_node: 2,
        ..PlanOptions::default()
    };
    let planned = plan(&balanced(16, 4), &membership(0..4, &[3]), &capped);
    let table = complete_moves(&planned, &planned.moves);
    assert!(!table.shards_of(&node(3)).is_empty());
    let reports = all_applied(&table, &members(4));
    assert_eq!(
        drain_step(3, &members(4), &table, &reports),
        DrainStep::MarkDraining(set(&[3]))
    );
}

#[test]
fn following_the_steps_scales_five_nodes_down_to_three() {
    let all = members(5);
    let mut table = balanced(64, 5);
    let mut ready = membership(0..5, &[]);
    for _ in 0..10 {
        let reports = all_applied(&table, &all);
        match drain_step(3, &all, &table, &reports) {
            DrainStep::MarkDraining(nodes) => {
                ready.draining = nodes;
                table = plan(&table, &ready, &PlanOptions::default());
            }
            DrainStep::WaitForMoves { pending } => table = complete_moves(&table, &pending),
            DrainStep::Remove(nodes) => {
                assert_eq!(nodes, set(&[3, 4]));
                assert!(nodes.iter().all(|n| table.shards_of(n).is_empty()));
                return;
            }
            other => panic!("unexpected step {other:?}"),
        }
    }
    panic!("the scale-down did not finish");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn remove_is_never_returned_while_a_draining_node_owns_a_shard_or_is_in_a_move(
        shards in 1u32..512,
        nodes in 1usize..20,
        events in proptest::collection::vec(event(), 0..4),
        desired in 0u32..20,
        mark in any::<bool>(),
        complete in any::<bool>(),
        lag in proptest::collection::vec(any::<bool>(), 20),
        busy in proptest::collection::vec(any::<bool>(), 20),
    ) {
        let mut cluster = Cluster::new(shards, nodes);
        for e in &events {
            cluster.apply(e);
            cluster.table = plan(&cluster.table, &cluster.membership, &PlanOptions::default());
        }
        let all: Vec<NodeName> = cluster.membership.ready.keys().cloned().collect();
        if mark {
            cluster.membership.draining = nodes_to_drain(desired, &all);
            cluster.table = plan(&cluster.table, &cluster.membership, &PlanOptions::default());
        }
        if complete {
            cluster.apply(&common::Event::CompleteAll);
        }
        let reports: Vec<NodeReport> = all
            .iter()
            .enumerate()
            .map(|(i, n)| NodeReport {
                name: n.clone(),
                epoch_applied: cluster.table.epoch - u64::from(lag[i % 20] && i % 3 == 0),
                moves_pending: u32::from(busy[i % 20] && i % 4 == 0),
            })
            .collect();
        if let DrainStep::Remove(removed) = drain_step(desired, &all, &cluster.table, &reports) {
            for n in &removed {
                prop_assert!(cluster.table.shards_of(n).is_empty(), "{n} still owns shards");
                prop_assert!(
                    cluster.table.moves.iter().all(|m| m.from != *n && m.to != *n),
                    "{n} is in a move"
                );
            }
            prop_assert!(reports.iter().all(|r| r.epoch_applied == cluster.table.epoch));
            prop_assert!(reports.iter().all(|r| r.moves_pending == 0));
        }
    }
}

#[test]
fn a_stopping_node_may_exit_only_once_it_owns_nothing_and_no_move_names_it() {
    let table = balanced(12, 3);
    let leaving = node(2);
    assert!(
        !handed_off(&table, &leaving, 0),
        "it still owns shards: the operator has not planned them away yet"
    );

    // The operator marks it draining: its shards move to the others.
    let planned = plan(&table, &membership(0..3, &[2]), &PlanOptions::default());
    assert!(planned.shards_of(&leaving).is_empty());
    assert!(planned.moves.iter().any(|m| m.from == leaving));
    assert!(
        !handed_off(&planned, &leaving, 0),
        "its moves are still in the table"
    );

    // The moves are done and cleared; a snapshot still unconfirmed holds it back.
    let done = complete_moves(&planned, &planned.moves);
    assert!(!handed_off(&done, &leaving, 1));
    assert!(handed_off(&done, &leaving, 0));
}

#[test]
fn a_node_the_table_does_not_know_may_exit_at_once() {
    assert!(handed_off(&AssignmentTable::empty(8), &node(0), 0));
    assert!(handed_off(&balanced(8, 2), &node(5), 0));
}

/// Each node of `table` reporting `catching_up` at `table`'s epoch.
fn copy_reports(table: &AssignmentTable, catching_up: u32) -> BTreeMap<NodeName, CopyReport> {
    table
        .nodes
        .keys()
        .map(|n| {
            let report = CopyReport {
                epoch_applied: table.epoch,
                catching_up,
            };
            (n.clone(), report)
        })
        .collect()
}

#[test]
fn a_stopping_follower_keeps_its_copies_until_the_new_followers_caught_up() {
    let table = balanced_with(12, 3, 2);
    let leaving = node(2);
    let followed: BTreeSet<_> = table.followed_by(&leaving).into_iter().collect();
    assert!(!followed.is_empty());
    assert!(
        !copies_moved_on(&table, &leaving, &followed, &copy_reports(&table, 0)),
        "the table still names it follower"
    );

    // Marked draining: the shards it followed get followers among the others.
    let planned = plan(&table, &membership(0..3, &[2]), &replicated(2));
    let done = complete_moves(&planned, &planned.moves);
    let waiting_on = new_followers(&done, &leaving, &followed);
    assert!(!waiting_on.is_empty() && !waiting_on.contains(&leaving));
    assert!(!copies_moved_on(
        &done,
        &leaving,
        &followed,
        &copy_reports(&done, 1)
    ));
    assert!(
        !copies_moved_on(&done, &leaving, &followed, &copy_reports(&table, 0)),
        "a report of an older table says nothing of the new roles"
    );
    assert!(
        !copies_moved_on(&done, &leaving, &followed, &BTreeMap::new()),
        "a follower that cannot be read is not known to be caught up"
    );
    assert!(copies_moved_on(
        &done,
        &leaving,
        &followed,
        &copy_reports(&done, 0)
    ));
    // Only the new followers' reports count.
    let mut reports = copy_reports(&done, 0);
    reports.insert(
        leaving.clone(),
        CopyReport {
            epoch_applied: 0,
            catching_up: 9,
        },
    );
    assert!(copies_moved_on(&done, &leaving, &followed, &reports));
}

#[test]
fn a_node_that_followed_nothing_or_runs_with_one_copy_has_no_copies_to_wait_for() {
    let none = BTreeMap::new();
    let single = balanced(12, 3);
    assert!(copies_moved_on(&single, &node(1), &BTreeSet::new(), &none));
    // A shard the table leaves without a follower (one eligible node left) waits for nobody.
    let two = balanced_with(4, 2, 2);
    let followed: BTreeSet<_> = two.followed_by(&node(1)).into_iter().collect();
    let alone = plan(&two, &membership(0..2, &[1]), &replicated(2));
    let alone = complete_moves(&alone, &alone.moves);
    assert!(alone.followers().iter().all(Option::is_none));
    assert!(new_followers(&alone, &node(1), &followed).is_empty());
    assert!(copies_moved_on(&alone, &node(1), &followed, &none));
}
