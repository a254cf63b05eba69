//! The planner's follower rules F1-F7 (see `shard::planner`), as properties over random clusters
//! and as the scenarios that matter in operation: a node failing, two zones, a drain.

mod common;

use std::collections::BTreeMap;

use common::{
    Cluster, balanced_with, event, follower_changes, info, membership, node, node_count,
    owner_changes, replicated, shard_count,
};
use proptest::prelude::*;
use shard::{
    AssignmentTable, LoadPolicy, Membership, Move, NodeInfo, NodeName, PlanOptions, ShardId, plan,
    plan_with_load,
};

/// Ready nodes `ready`, node i in zone `zone-{i % zones}`.
fn zoned(ready: impl IntoIterator<Item = usize>, zones: usize) -> Membership {
    Membership {
        ready: ready
            .into_iter()
            .map(|i| {
                (
                    node(i),
                    info(&node(i)).in_zone(format!("zone-{}", i % zones)),
                )
            })
            .collect(),
        draining: Default::default(),
    }
}

fn zone_of<'a>(table: &'a AssignmentTable, n: &NodeName) -> Option<&'a str> {
    table.nodes.get(n).and_then(|i| i.zone.as_deref())
}

/// Followed shards per eligible node, counting nodes that follow nothing.
fn follows(table: &AssignmentTable, eligible: &[NodeName]) -> Vec<u32> {
    let counts = table.follower_counts();
    eligible
        .iter()
        .map(|n| counts.get(n).copied().unwrap_or(0))
        .collect()
}

/// F2, and F1's exception: with fewer than two eligible nodes nothing is followed.
fn follows_balanced(table: &AssignmentTable, eligible: &[NodeName]) -> bool {
    if eligible.len() < 2 {
        return table.followers().iter().all(Option::is_none);
    }
    let owned = table.owners().iter().flatten().count() as u32;
    let n = eligible.len() as u32;
    let (floor, ceil) = (owned / n, owned.div_ceil(n));
    follows(table, eligible)
        .iter()
        .all(|&c| c == floor || c == ceil)
}

/// F1: every owned shard has an eligible follower that is not its owner.
fn every_shard_followed_by_another_node(table: &AssignmentTable, m: &Membership) -> bool {
    let eligible = m.eligible();
    table
        .owners()
        .iter()
        .zip(table.followers())
        .all(|(o, f)| match (o, f) {
            (Some(o), Some(f)) => o != f && eligible.contains(f),
            (None, None) => true,
            _ => false,
        })
}

#[test]
fn with_replication_two_every_shard_gets_a_follower_on_another_node() {
    let table = balanced_with(64, 3, 2);
    let m = membership(0..3, &[]);
    assert!(every_shard_followed_by_another_node(&table, &m));
    // node-0 owns the 22nd shard, so the one follow more goes to another node.
    assert_eq!(follows(&table, &m.eligible()), vec![21, 22, 21]);
    assert_eq!(table.epoch, 1);
    // Each owner's shards are spread over both other nodes, so either can promote some.
    for owner in m.eligible() {
        let followers: std::collections::BTreeSet<&NodeName> = table
            .shards_of(&owner)
            .iter()
            .filter_map(|s| table.follower(*s))
            .collect();
        assert_eq!(
            followers.len(),
            2,
            "{owner}'s shards have followers {followers:?}"
        );
    }
    assert_eq!(
        AssignmentTable::from_json(&table.to_json()).ok(),
        Some(table)
    );
}

#[test]
fn with_one_eligible_node_or_replication_one_no_shard_has_a_follower() {
    assert!(
        balanced_with(16, 1, 2)
            .followers()
            .iter()
            .all(Option::is_none)
    );
    assert!(
        balanced_with(16, 3, 1)
            .followers()
            .iter()
            .all(Option::is_none)
    );
    // Two nodes, one draining: a single eligible node.
    let before = balanced_with(16, 2, 2);
    let after = plan(&before, &membership(0..2, &[1]), &replicated(2));
    assert!(after.followers().iter().all(Option::is_none));
}

#[test]
fn replication_outside_one_and_two_is_clamped() {
    assert_eq!(replicated(0).copies(), 1);
    assert_eq!(replicated(9).copies(), 2);
    assert_eq!(balanced_with(16, 3, 0), balanced_with(16, 3, 1));
    assert_eq!(balanced_with(16, 3, 9), balanced_with(16, 3, 2));
}

#[test]
fn two_nodes_with_an_odd_shard_count_each_follow_what_the_other_owns() {
    let table = balanced_with(7, 2, 2);
    for s in (0..7).map(ShardId) {
        assert_ne!(table.owner(s), table.follower(s));
        assert!(table.follower(s).is_some());
    }
    assert_eq!(
        table.follower_counts().get(&node(0)).copied(),
        table.counts().get(&node(1)).copied()
    );
}

#[test]
fn when_an_owner_dies_its_followers_take_its_shards_with_their_copy() {
    let before = balanced_with(60, 3, 2);
    let dead = node(1);
    let after = plan(&before, &membership([0, 2], &[]), &replicated(2));
    for s in before.shards_of(&dead) {
        let follower = before.follower(s).expect("every shard has a follower");
        match after.move_of(s) {
            // Promoted: the follower serves from its copy, nothing to hand over.
            None => assert_eq!(after.owner(s), Some(follower)),
            // Above its share: the follower hands its copy over like a live owner.
            Some(m) => assert_eq!(&m.from, follower),
        }
    }
    assert_eq!(after.counts().get(&node(0)), Some(&30));
    // Two nodes left: each follows what the other owns.
    assert!(every_shard_followed_by_another_node(
        &after,
        &membership([0, 2], &[])
    ));
}

#[test]
fn a_promoted_follower_above_its_share_hands_its_copy_to_the_new_owner()
-> Result<(), shard::ShardError> {
    // node-0 owns 0-3 and node-1 follows them all; node-0 dies.
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
    assert_eq!(after.counts().get(&b), Some(&6));
    assert_eq!(after.counts().get(&c), Some(&6));
    // node-1 keeps two of node-0's shards as owner (no move) and hands the other two over.
    assert_eq!(
        after.moves,
        vec![
            Move {
                shard: ShardId(2),
                from: b.clone(),
                to: c.clone()
            },
            Move {
                shard: ShardId(3),
                from: b.clone(),
                to: c.clone()
            },
        ]
    );
    assert_eq!(after.owner(ShardId(0)), Some(&b));
    assert_eq!(after.owner(ShardId(1)), Some(&b));
    Ok(())
}

#[test]
fn when_owner_and_follower_are_both_gone_the_shard_starts_empty() {
    let before = balanced_with(64, 4, 2);
    let (x, y) = (node(0), node(1));
    let both: Vec<ShardId> = (0..64)
        .map(ShardId)
        .filter(|s| before.owner(*s) == Some(&x) && before.follower(*s) == Some(&y))
        .collect();
    assert!(!both.is_empty());
    let after = plan(&before, &membership(2..4, &[]), &replicated(2));
    for s in both {
        assert!(
            after.move_of(s).is_none(),
            "shard {s} has nobody to hand it over"
        );
        assert!(after.owner(s).is_some());
    }
}

#[test]
fn a_dead_owner_with_a_draining_follower_is_handed_over_from_the_follower() {
    let before = balanced_with(24, 4, 2);
    let (dead, drained) = (node(0), node(1));
    let shards: Vec<ShardId> = before
        .shards_of(&dead)
        .into_iter()
        .filter(|s| before.follower(*s) == Some(&drained))
        .collect();
    assert!(!shards.is_empty());
    let m = membership(1..4, &[1]);
    let after = plan(&before, &m, &replicated(2));
    for s in &shards {
        let m = after
            .move_of(*s)
            .expect("the draining follower hands its copy over");
        assert_eq!(m.from, drained);
        assert_ne!(after.owner(*s), Some(&drained));
    }
    // With no hand-off budget left, the follower keeps the shard for a later plan.
    let capped = PlanOptions {
        max_moves_per_node: 0,
        replication: 2,
    };
    let deferred = plan(&before, &m, &capped);
    for s in &shards {
        assert_eq!(deferred.owner(*s), Some(&drained));
        assert!(deferred.move_of(*s).is_none());
    }
}

#[test]
fn a_draining_node_follows_nothing_and_its_roles_move_to_the_others() {
    let before = balanced_with(64, 4, 2);
    let m = membership(0..4, &[3]);
    let after = plan(&before, &m, &replicated(2));
    assert!(after.followed_by(&node(3)).is_empty());
    assert!(every_shard_followed_by_another_node(&after, &m));
    assert!(follows_balanced(&after, &m.eligible()));
    for s in (0..64).map(ShardId) {
        if before.follower(s) != after.follower(s) {
            assert!(
                before.follower(s) == Some(&node(3))
                    || before.owner(s) == Some(&node(3))
                    || after.owner(s) == before.follower(s),
                "shard {s} changed follower without a reason"
            );
        }
    }
}

#[test]
fn followers_in_two_zones_are_always_across_zones() {
    let m = zoned(0..6, 2);
    let table = plan(&AssignmentTable::empty(100), &m, &replicated(2));
    for s in (0..100).map(ShardId) {
        let (o, f) = (
            table.owner(s).expect("every shard has an owner"),
            table.follower(s).expect("every shard has a follower"),
        );
        assert_ne!(zone_of(&table, o), zone_of(&table, f), "shard {s}");
    }
    assert!(follows_balanced(&table, &m.eligible()));
}

/// Shards whose follower changed though `gone` neither owned nor followed them.
fn changed_beyond(before: &AssignmentTable, after: &AssignmentTable, gone: &NodeName) -> usize {
    (0..before.shards)
        .map(ShardId)
        .filter(|&s| before.owner(s) != Some(gone) && before.follower(s) != Some(gone))
        .filter(|&s| before.follower(s) != after.follower(s))
        .count()
}

#[test]
fn a_node_leaving_its_follow_partner_swaps_one_copy_and_no_more() {
    // 12 nodes each owning one shard and following one; some pairs follow each other's shard.
    // When one of such a pair leaves, its partner owns both shards it could follow and is one
    // follow short of its share: one other copy must move to it, and only one.
    let before = balanced_with(12, 12, 2);
    let partnered = (0..12).map(node).find(|n| {
        let mine = before.shards_of(n)[0];
        let partner = before.follower(mine).cloned();
        partner.is_some_and(|p| before.follower(before.shards_of(&p)[0]) == Some(n))
    });
    let gone = partnered.expect("a balanced 12-node table has a follow pair");
    let left = (0..12).filter(|&i| node(i) != gone);
    let m = membership(left, &[]);
    let after = plan(&before, &m, &replicated(2));
    assert!(every_shard_followed_by_another_node(&after, &m));
    assert!(follows_balanced(&after, &m.eligible()));
    assert_eq!(changed_beyond(&before, &after, &gone), 1);
}

#[test]
fn the_extra_follow_goes_to_a_node_that_can_take_the_shards_left_without_one() {
    // node-3 leaves six shards on five nodes. node-1 takes over shard 4 from node-0's copy and
    // node-3's followed shard 2 (owned by node-1) needs a follower. The one follow above the
    // floor goes to a node other than node-1, so no third shard's follower moves.
    let before = balanced_with(6, 5, 2);
    let m = membership([0, 1, 2, 4], &[]);
    let after = plan(&before, &m, &replicated(2));
    assert!(follows_balanced(&after, &m.eligible()));
    assert_eq!(changed_beyond(&before, &after, &node(3)), 0);
    // The same when node-1 of five drains with five shards.
    let before = balanced_with(5, 5, 2);
    let m = membership(0..5, &[1]);
    let after = plan(&before, &m, &replicated(2));
    assert!(follows_balanced(&after, &m.eligible()));
    assert_eq!(changed_beyond(&before, &after, &node(1)), 0);
}

#[test]
fn switching_back_to_replication_one_drops_every_follower_in_one_epoch() {
    let before = balanced_with(32, 3, 2);
    let after = plan(&before, &membership(0..3, &[]), &replicated(1));
    assert!(after.followers().iter().all(Option::is_none));
    assert_eq!(owner_changes(&before, &after), 0);
    assert_eq!(after.epoch, before.epoch + 1);
    // Only followers changed: the JSON is a replication-1 table's again.
    assert!(!after.to_json().contains("followers"));
    assert!(before.to_json().contains("\"followers\":{"));
}

#[test]
fn load_aware_plans_fill_followers_too() {
    let before = balanced_with(64, 4, 2);
    let m = membership(0..4, &[]);
    let loads: BTreeMap<ShardId, u64> = (0..16).map(|s| (ShardId(s), 1000)).collect();
    let after = plan_with_load(&before, &m, &replicated(2), &LoadPolicy::default(), &loads);
    assert!(!after.moves.is_empty(), "the hot node should shed shards");
    assert!(every_shard_followed_by_another_node(&after, &m));
    assert!(follows_balanced(&after, &m.eligible()));
    let again = plan_with_load(&after, &m, &replicated(2), &LoadPolicy::default(), &loads);
    assert_eq!(again, after);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn one_node_joining_moves_only_follower_roles_to_it(
        shards in shard_count(),
        nodes in node_count(),
    ) {
        let before = balanced_with(shards, nodes, 2);
        let after = plan(&before, &membership(0..=nodes, &[]), &replicated(2));
        let newcomer = node(nodes);
        for s in (0..shards).map(ShardId) {
            if before.follower(s) != after.follower(s) && before.follower(s).is_some() {
                prop_assert_eq!(after.follower(s), Some(&newcomer), "shard {}", s);
            }
        }
        prop_assert!(follows_balanced(&after, &membership(0..=nodes, &[]).eligible()));
        let gained = after.followed_by(&newcomer).len();
        let fresh = before.followers().iter().filter(|f| f.is_none()).count();
        prop_assert_eq!(follower_changes(&before, &after), gained.max(fresh));
    }

    #[test]
    fn one_node_leaving_changes_only_the_roles_it_held(
        shards in shard_count(),
        nodes in 2usize..60,
        which in any::<usize>(),
        drain in any::<bool>(),
    ) {
        let before = balanced_with(shards, nodes, 2);
        let gone = node(which % nodes);
        let m = if drain {
            membership(0..nodes, &[which % nodes])
        } else {
            membership((0..nodes).filter(|&i| i != which % nodes), &[])
        };
        let after = plan(&before, &m, &replicated(2));
        // F4: only the roles it held change, and at most one more (a swap F2 forces).
        let others: Vec<ShardId> = (0..shards)
            .map(ShardId)
            .filter(|&s| before.owner(s) != Some(&gone) && before.follower(s) != Some(&gone))
            .filter(|&s| before.follower(s) != after.follower(s))
            .collect();
        prop_assert!(others.len() <= 1, "followers changed beyond the node's roles: {:?}", others);
        prop_assert!(follows_balanced(&after, &m.eligible()));
        if !drain {
            // F5: every shard of the node that left is taken over from its follower's copy.
            for s in before.shards_of(&gone) {
                let follower = before.follower(s);
                match after.move_of(s) {
                    None => prop_assert_eq!(after.owner(s), follower),
                    Some(m) => prop_assert_eq!(Some(&m.from), follower),
                }
            }
        }
    }

    #[test]
    fn with_zones_of_equal_size_every_follower_is_in_another_zone(
        shards in prop_oneof![1u32..=64, 1u32..=4096],
        zones in 2usize..=3,
        per_zone in 1usize..=8,
        earlier in 1usize..=24,
    ) {
        // Start from a table planned for another membership, with no zones.
        let current = balanced_with(shards, earlier, 2);
        let m = zoned(0..zones * per_zone, zones);
        let table = plan(&current, &m, &replicated(2));
        prop_assert!(every_shard_followed_by_another_node(&table, &m));
        // A moving shard keeps its follower (F4), wherever its new owner is, and those pins can
        // leave other shards without a place in another zone until the moves are done.
        for s in (0..shards).map(ShardId).filter(|_| table.moves.is_empty()) {
            let (Some(o), Some(f)) = (table.owner(s), table.follower(s)) else { continue };
            prop_assert_ne!(zone_of(&table, o), zone_of(&table, f), "shard {}", s);
        }
        if table.moves.is_empty() {
            prop_assert!(follows_balanced(&table, &m.eligible()));
        }
        prop_assert_eq!(&plan(&table, &m, &replicated(2)), &table);
        // Once the moves are done, every follower is in another zone than its owner.
        let done = plan(&shard::complete_moves(&table, &table.moves), &m, &replicated(2));
        for s in (0..shards).map(ShardId) {
            let (Some(o), Some(f)) = (done.owner(s), done.follower(s)) else { continue };
            prop_assert_ne!(zone_of(&done, o), zone_of(&done, f), "shard {} once settled", s);
        }
    }

    #[test]
    fn zoned_clusters_under_events_follow_the_rules(
        shards in shard_count(),
        nodes in 2usize..30,
        zones in 1usize..=4,
        events in proptest::collection::vec(event(), 1..6),
    ) {
        let mut cluster = Cluster::replicated(shards, nodes, 2);
        for e in &events {
            cluster.apply(e);
            // Everyone gets a zone from its number.
            let m = Membership {
                ready: cluster
                    .membership
                    .ready
                    .keys()
                    .map(|n| {
                        let i: usize = n.as_str()["node-".len()..].parse().unwrap_or(0);
                        (n.clone(), info(n).in_zone(format!("zone-{}", i % zones)))
                    })
                    .collect(),
                draining: cluster.membership.draining.clone(),
            };
            let new = plan(&cluster.table, &m, &replicated(2));
            let eligible = m.eligible();
            if eligible.len() >= 2 {
                prop_assert!(every_shard_followed_by_another_node(&new, &m));
            }
            let mut same = new.clone();
            same.epoch = cluster.table.epoch;
            prop_assert_eq!(new.epoch, cluster.table.epoch + u64::from(same != cluster.table));
            prop_assert_eq!(&plan(&new, &m, &replicated(2)), &new);
            cluster.table = new;
            cluster.membership = m;
        }
    }
}
