//! `follower_transition`: what a new table means for the copies a node keeps as a follower, and
//! how it splits the work with `transition` (promoted copies are not started fresh, a copy handed
//! over is not an owned shard lost).

mod common;

use std::collections::BTreeMap;

use common::{Cluster, balanced_with, event, info, membership, node, replicated};
use proptest::prelude::*;
use shard::{
    AssignmentTable, FollowerTransition, NodeInfo, NodeName, ShardError, ShardId,
    follower_transition, plan, transition,
};

#[test]
fn when_an_owner_dies_its_followers_promote_their_copies_instead_of_starting_fresh() {
    let before = balanced_with(60, 3, 2);
    let after = plan(&before, &membership([0, 2], &[]), &replicated(2));
    let dead = node(1);
    let mut promoted_anywhere = Vec::new();
    for me in [node(0), node(2)] {
        let copies = follower_transition(&before, &after, &me);
        let rooms = transition(&before, &after, &me);
        for s in &copies.promoted {
            assert_eq!(before.owner(*s), Some(&dead));
            assert_eq!(before.follower(*s), Some(&me));
            assert_eq!(after.owner(*s), Some(&me));
            assert!(after.move_of(*s).is_none());
        }
        assert!(
            rooms.gained_fresh.is_empty(),
            "{me} starts {:?} empty",
            rooms.gained_fresh
        );
        for (s, owner) in &copies.start {
            assert_eq!(after.follower(*s), Some(&me));
            assert_eq!(after.owner(*s), Some(owner));
        }
        promoted_anywhere.extend(copies.promoted);
    }
    promoted_anywhere.sort();
    // Without moves in the plan, every shard of the dead node was promoted somewhere.
    if after.moves.is_empty() {
        assert_eq!(promoted_anywhere, before.shards_of(&dead));
    }
}

#[test]
fn a_follower_above_its_share_hands_its_copy_over_and_does_not_count_it_as_owned()
-> Result<(), ShardError> {
    let (a, b, c) = (node(0), node(1), node(2));
    let owners: Vec<Option<NodeName>> = [&a, &a, &a, &a, &b, &b, &b, &b, &c, &c, &c, &c]
        .into_iter()
        .map(|n| Some(n.clone()))
        .collect();
    let followers: Vec<Option<NodeName>> = [&b, &b, &b, &b, &c, &c, &a, &a, &a, &a, &b, &b]
        .into_iter()
        .map(|n| Some(n.clone()))
        .collect();
    let nodes: BTreeMap<NodeName, NodeInfo> = [&a, &b, &c]
        .into_iter()
        .map(|n| (n.clone(), info(n)))
        .collect();
    let before = AssignmentTable::with_roles(owners, followers, nodes)?;
    let after = plan(&before, &membership([1, 2], &[]), &replicated(2));

    let copies_b = follower_transition(&before, &after, &b);
    assert_eq!(copies_b.promoted, vec![ShardId(0), ShardId(1)]);
    assert_eq!(
        copies_b.hand_off,
        vec![(ShardId(2), c.clone()), (ShardId(3), c.clone())]
    );
    let rooms_b = transition(&before, &after, &b);
    assert!(rooms_b.lost.is_empty(), "{:?}", rooms_b.lost);
    assert!(rooms_b.gained_fresh.is_empty());

    let rooms_c = transition(&before, &after, &c);
    assert_eq!(
        rooms_c.gained_by_handoff,
        vec![(ShardId(2), b.clone()), (ShardId(3), b.clone())]
    );
    Ok(())
}

#[test]
fn a_joining_node_starts_following_and_the_followers_of_moved_shards_switch_owner() {
    let before = balanced_with(16, 2, 2);
    let after = plan(&before, &membership(0..3, &[]), &replicated(2));
    let newcomer = node(2);
    let copies = follower_transition(&before, &after, &newcomer);
    let expected: Vec<(ShardId, NodeName)> = after
        .followed_by(&newcomer)
        .into_iter()
        .filter_map(|s| after.owner(s).map(|o| (s, o.clone())))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(copies.start, expected);
    assert!(copies.stop.is_empty() && copies.promoted.is_empty() && copies.hand_off.is_empty());

    // The shards the newcomer took over are still followed by the same node, now from it.
    for old in [node(0), node(1)] {
        let copies = follower_transition(&before, &after, &old);
        for (s, owner) in &copies.new_owner {
            assert_eq!(owner, &newcomer);
            assert_eq!(before.follower(*s), Some(&old));
        }
        // The roles the newcomer took are dropped by whoever held them.
        for s in &copies.stop {
            assert_eq!(after.follower(*s), Some(&newcomer));
        }
    }
}

#[test]
fn with_replication_one_no_node_has_anything_to_do_with_copies() {
    let before = balanced_with(32, 3, 1);
    let after = plan(&before, &membership([0, 2, 3], &[]), &replicated(1));
    for i in 0..4 {
        assert_eq!(
            follower_transition(&before, &after, &node(i)),
            FollowerTransition::default()
        );
    }
}

#[test]
fn dropping_to_replication_one_stops_every_copy() {
    let before = balanced_with(32, 3, 2);
    let after = plan(&before, &membership(0..3, &[]), &replicated(1));
    for i in 0..3 {
        let copies = follower_transition(&before, &after, &node(i));
        assert_eq!(copies.stop, before.followed_by(&node(i)));
        assert!(copies.start.is_empty() && copies.promoted.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn every_copy_change_of_a_plan_is_told_to_exactly_the_nodes_concerned(
        shards in 1u32..=256,
        nodes in 2usize..12,
        events in proptest::collection::vec(event(), 1..6),
    ) {
        let mut cluster = Cluster::replicated(shards, nodes, 2);
        for e in &events {
            cluster.apply(e);
            let old = cluster.table.clone();
            let new = plan(&old, &cluster.membership, &replicated(2));
            let mut starts = 0;
            for me in cluster.membership.ready.keys() {
                let copies = follower_transition(&old, &new, me);
                let rooms = transition(&old, &new, me);
                for s in &copies.promoted {
                    prop_assert_eq!(new.owner(*s), Some(me));
                    prop_assert!(!rooms.gained_fresh.contains(s));
                }
                for (s, to) in &copies.hand_off {
                    prop_assert!(new.move_of(*s).is_some_and(|m| m.from == *me && m.to == *to));
                    prop_assert!(!rooms.lost.iter().any(|(l, _)| l == s));
                }
                for (s, owner) in &copies.start {
                    prop_assert_eq!(new.follower(*s), Some(me));
                    prop_assert_eq!(new.owner(*s), Some(owner));
                    prop_assert_ne!(old.follower(*s), Some(me));
                }
                for s in &copies.stop {
                    prop_assert_eq!(old.follower(*s), Some(me));
                    prop_assert_ne!(new.follower(*s), Some(me));
                }
                starts += copies.start.len();
            }
            // Each shard with a new follower is started by that follower, once.
            let changed = (0..shards)
                .map(ShardId)
                .filter(|s| new.follower(*s).is_some() && old.follower(*s) != new.follower(*s))
                .count();
            prop_assert_eq!(starts, changed);
            cluster.table = new;
        }
    }
}
