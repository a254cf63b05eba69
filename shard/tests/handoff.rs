//! What applying a new table means for one node.

mod common;

use common::{balanced, membership, node};
use shard::{
    AssignmentTable, PlanOptions, ShardId, Transition, abandoned_handoffs, plan, transition,
};

fn plan_for(
    current: &AssignmentTable,
    ready: std::ops::Range<usize>,
    draining: &[usize],
) -> AssignmentTable {
    plan(
        current,
        &membership(ready, draining),
        &PlanOptions::default(),
    )
}

#[test]
fn a_joining_node_gains_its_shards_by_hand_off_from_their_old_owners() {
    let before = balanced(64, 2);
    let after = plan_for(&before, 0..3, &[]);
    let t = transition(&before, &after, &node(2));
    assert!(t.gained_fresh.is_empty());
    assert_eq!(t.gained_by_handoff.len(), after.shards_of(&node(2)).len());
    for (shard, from) in &t.gained_by_handoff {
        assert_eq!(before.owner(*shard), Some(from));
    }
    assert!(t.lost.is_empty() && t.lost_unassigned.is_empty());
}

#[test]
fn the_old_owners_lose_those_shards_to_the_newcomer() {
    let before = balanced(64, 2);
    let after = plan_for(&before, 0..3, &[]);
    let lost: Vec<_> = [node(0), node(1)]
        .iter()
        .flat_map(|n| transition(&before, &after, n).lost)
        .collect();
    assert_eq!(lost.len(), after.moves.len());
    assert!(
        lost.iter()
            .all(|(shard, to)| *to == node(2) && after.owner(*shard) == Some(to))
    );
}

#[test]
fn shards_of_a_node_that_left_are_gained_fresh() {
    let before = balanced(64, 3);
    let after = plan_for(&before, 0..2, &[]);
    let gained: Vec<ShardId> = [node(0), node(1)]
        .iter()
        .flat_map(|n| transition(&before, &after, n).gained_fresh)
        .collect();
    let mut expected = before.shards_of(&node(2));
    let mut gained_sorted = gained.clone();
    gained_sorted.sort();
    expected.sort();
    assert_eq!(gained_sorted, expected);
    assert!(
        transition(&before, &after, &node(0))
            .gained_by_handoff
            .is_empty()
    );
}

#[test]
fn a_hand_off_already_in_flight_is_not_repeated() {
    let before = balanced(64, 2);
    let joined = plan_for(&before, 0..3, &[]);
    let mut republished = joined.clone();
    republished.epoch += 1;
    for n in 0..3 {
        assert!(transition(&joined, &republished, &node(n)).is_empty());
    }
    // Completing the moves is not a change of ownership either.
    let done = shard::complete_moves(&joined, &joined.moves);
    for n in 0..3 {
        assert_eq!(transition(&joined, &done, &node(n)), Transition::default());
        assert!(abandoned_handoffs(&joined, &done, &node(n)).is_empty());
    }
}

#[test]
fn a_hand_off_whose_source_left_is_abandoned_and_the_shard_stays() {
    let before = balanced(64, 2);
    let joined = plan_for(&before, 0..3, &[]);
    let source_left = plan_for(&joined, 1..3, &[]);
    let abandoned = abandoned_handoffs(&joined, &source_left, &node(2));
    let expected: Vec<_> = joined
        .moves
        .iter()
        .filter(|m| m.from == node(0))
        .map(|m| (m.shard, m.from.clone()))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(abandoned, expected);
    assert!(transition(&joined, &source_left, &node(2)).lost.is_empty());
}
