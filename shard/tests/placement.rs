//! Load-aware placement (see `shard::balance`): its invariants as properties over random
//! clusters and random skewed loads, its convergence, and the cases that matter in operation.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{
    Cluster, InFlight, counts_of, event, in_flight, members_are_the_ready_nodes, node,
    owner_changes,
};
use proptest::prelude::*;
use shard::{
    AssignmentTable, LoadPolicy, Membership, NodeName, PlanOptions, ShardId, complete_moves, plan,
    plan_with_load,
};

type Loads = BTreeMap<ShardId, u64>;

/// Node -> summed load of the shards it owns in `table` (eligible nodes, owning or not).
fn node_loads(table: &AssignmentTable, eligible: &[NodeName], loads: &Loads) -> Vec<u64> {
    eligible
        .iter()
        .map(|n| {
            table
                .shards_of(n)
                .iter()
                .map(|s| loads.get(s).copied().unwrap_or(0))
                .sum()
        })
        .collect()
}

/// Whether the busiest node is above `percent` of max(mean, hottest shard).
fn above(table: &AssignmentTable, eligible: &[NodeName], loads: &Loads, percent: u32) -> bool {
    let per_node = node_loads(table, eligible, loads);
    let total: u64 = per_node.iter().sum();
    let hottest = (0..table.shards)
        .map(|s| loads.get(&ShardId(s)).copied().unwrap_or(0))
        .max()
        .unwrap_or(0);
    let max = per_node.iter().copied().max().unwrap_or(0);
    let n = eligible.len() as u128;
    let (l, p) = (u128::from(max) * 100, u128::from(percent));
    l * n > p * u128::from(total) && l > p * u128::from(hottest)
}

/// Skewed loads: Zipf-like weights `scale / rank^1.1` over a random ranking of the shards, with
/// some shards idle.
fn skewed_loads(shards: u32) -> impl Strategy<Value = Loads> {
    (
        Just((0..shards).collect::<Vec<_>>()).prop_shuffle(),
        1u64..1_000_000,
        0u32..=3,
    )
        .prop_map(|(order, scale, idle_every)| {
            order
                .into_iter()
                .enumerate()
                .filter(|(rank, _)| idle_every == 0 || rank % 4 != idle_every as usize)
                .map(|(rank, s)| {
                    let w = scale as f64 / ((rank + 1) as f64).powf(1.1);
                    (ShardId(s), w as u64)
                })
                .collect()
        })
}

fn policy() -> impl Strategy<Value = LoadPolicy> {
    (0u32..=2, 101u32..=200, 0u32..=20, 0u32..=10).prop_map(|(slack, trigger, band, gain)| {
        LoadPolicy {
            slack,
            trigger_percent: trigger,
            goal_percent: trigger.saturating_sub(band).max(100),
            min_gain_percent: gain,
        }
    })
}

/// The invariants of one load-aware plan from `old` to `new`.
fn check(
    old: &AssignmentTable,
    new: &AssignmentTable,
    membership: &Membership,
    options: &PlanOptions,
    policy: &LoadPolicy,
    loads: &Loads,
) -> Result<(), TestCaseError> {
    prop_assert!(new.validate().is_ok(), "{:?}", new.validate());
    members_are_the_ready_nodes(old, new, &membership.ready)?;
    let eligible = membership.eligible();
    let eligible_set: BTreeSet<&NodeName> = eligible.iter().collect();

    // Moves: in flight ones are never redirected; every owner change from a ready node that
    // held the rooms (the owner, or its follower's copy when the owner is gone) is a hand-off
    // from it.
    for s in (0..new.shards).map(ShardId) {
        let (before, after) = (old.owner(s), new.owner(s));
        match in_flight(old, s, membership) {
            InFlight::Kept(m) => {
                prop_assert_eq!(after, Some(&m.to), "a move in flight is redirected");
                prop_assert_eq!(new.move_of(s), Some(&m));
                continue;
            }
            InFlight::Replan(source) => {
                if after.is_some() && after != Some(&source) {
                    prop_assert_eq!(
                        new.move_of(s).map(|x| &x.from),
                        Some(&source),
                        "re-planned from its source"
                    );
                }
            }
            InFlight::Ends if before == after || after.is_none() => {
                prop_assert!(new.move_of(s).is_none())
            }
            InFlight::Ends => {
                // The ready owner holds the rooms; when it is gone, its ready follower (F5).
                let ready = |n: &&NodeName| membership.ready.contains_key(*n);
                let holder = match before {
                    Some(o) if ready(&o) => Some(o),
                    Some(_) => old.follower(s).filter(ready),
                    None => None,
                };
                // A holder that keeps the shard (a promoted follower) needs no hand-off.
                let expected = holder.filter(|h| after != Some(*h));
                prop_assert_eq!(new.move_of(s).map(|m| &m.from), expected);
            }
        }
        if let Some(owner) = after.filter(|o| !eligible_set.contains(o)) {
            // Only a shard the cap deferred stays off the eligible nodes, with the node that
            // holds its rooms.
            let source = old.move_of(s).map(|m| &m.from);
            let copy = old.follower(s);
            prop_assert!(before == Some(owner) || source == Some(owner) || copy == Some(owner));
            prop_assert!(membership.ready.contains_key(owner));
        }
    }

    // Cap (rule 8): moves that go on from `old` are never dropped for it; new moves only
    // fill what is left.
    let mut per_node: BTreeMap<&NodeName, (usize, usize)> = BTreeMap::new();
    for m in &new.moves {
        let going_on = old.move_of(m.shard).is_some();
        for end in [&m.from, &m.to] {
            let (all, kept) = per_node.entry(end).or_insert((0, 0));
            *all += 1;
            *kept += usize::from(going_on);
        }
    }
    prop_assert!(
        per_node
            .values()
            .all(|&(all, kept)| all <= options.max_moves_per_node.max(kept)),
        "{per_node:?}"
    );

    // Counts: at most ceil + slack, except by hand-offs already in flight; at least floor
    // when nothing was in flight. With a cap, deferred shards may stay anywhere (rule 8).
    if !eligible.is_empty() {
        let n = eligible.len() as u32;
        let (floor, ceil) = (new.shards / n, new.shards.div_ceil(n));
        let mut pinned: BTreeMap<&NodeName, u32> = BTreeMap::new();
        // Moves that go on from `old` (kept, or with a follower standing in for an end).
        for m in new.moves.iter().filter(|m| old.move_of(m.shard).is_some()) {
            *pinned.entry(&m.to).or_insert(0) += 1;
        }
        let uncapped = options.max_moves_per_node == usize::MAX;
        for (n, count) in counts_of(new, &eligible) {
            let pins = pinned.get(&n).copied().unwrap_or(0);
            if uncapped {
                prop_assert!(count <= (ceil + policy.slack).max(pins), "{n} has {count}");
            }
            if old.moves.is_empty() && uncapped {
                prop_assert!(count >= floor, "{n} has {count} < {floor}");
            }
        }
    }

    // Stable: the same loads again move nothing. Exact without a cap, as for the count plan
    // (with one, a second plan may spend budget the first left over).
    if options.max_moves_per_node == usize::MAX {
        prop_assert_eq!(
            &plan_with_load(new, membership, options, policy, loads),
            new
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn load_aware_plans_keep_every_rule_and_are_stable(
        (shards, loads) in (1u32..=600).prop_flat_map(|s| (Just(s), skewed_loads(s))),
        nodes in 1usize..=12,
        cap in prop_oneof![Just(usize::MAX), 1usize..=8],
        policy in policy(),
        events in proptest::collection::vec(event(), 1..5),
        replication in 1u8..=2,
    ) {
        let options = PlanOptions { max_moves_per_node: cap, replication };
        let mut cluster = Cluster::replicated(shards, nodes, replication);
        for e in &events {
            cluster.apply(e);
            let old = cluster.table.clone();
            let new = plan_with_load(&old, &cluster.membership, &options, &policy, &loads);
            check(&old, &new, &cluster.membership, &options, &policy, &loads)?;
            cluster.table = new;
        }
    }

    #[test]
    fn without_loads_the_plan_is_the_count_plan_exactly(
        shards in 1u32..=600,
        nodes in 1usize..=12,
        cap in prop_oneof![Just(usize::MAX), 1usize..=8],
        policy in policy(),
        zeros in any::<bool>(),
        events in proptest::collection::vec(event(), 1..5),
        replication in 1u8..=2,
    ) {
        let options = PlanOptions { max_moves_per_node: cap, replication };
        let loads: Loads = if zeros {
            (0..shards).map(|s| (ShardId(s), 0)).collect()
        } else {
            Loads::new()
        };
        let mut cluster = Cluster::replicated(shards, nodes, replication);
        for e in &events {
            cluster.apply(e);
            let counted = plan(&cluster.table, &cluster.membership, &options);
            let aware = plan_with_load(&cluster.table, &cluster.membership, &options, &policy, &loads);
            prop_assert_eq!(&aware, &counted);
            cluster.table = counted;
        }
    }

    #[test]
    fn planning_and_completing_under_skewed_load_converges_in_bounded_rounds(
        (shards, loads) in (2u32..=600).prop_flat_map(|s| (Just(s), skewed_loads(s))),
        nodes in 2usize..=12,
        cap in prop_oneof![Just(usize::MAX), 1usize..=8],
        policy in policy(),
        replication in 1u8..=2,
    ) {
        let options = PlanOptions { max_moves_per_node: cap, replication };
        let mut cluster = Cluster::replicated(shards, nodes, replication);
        let eligible = cluster.eligible();
        let mut rounds = 0;
        loop {
            let next = plan_with_load(&cluster.table, &cluster.membership, &options, &policy, &loads);
            if next == cluster.table {
                break;
            }
            cluster.table = complete_moves(&next, &next.moves);
            rounds += 1;
            prop_assert!(rounds <= shards as usize + 2, "no convergence after {rounds} rounds");
        }
        // Settled: under the trigger, or no step left (then the busiest node holds a shard
        // that is hot enough on its own, or only crumbs would move).
        if above(&cluster.table, &eligible, &loads, policy.trigger_percent) {
            let again = plan_with_load(&cluster.table, &cluster.membership, &options, &policy, &loads);
            prop_assert_eq!(again, cluster.table.clone());
        }
        let n = eligible.len() as u32;
        for (_, count) in counts_of(&cluster.table, &eligible) {
            prop_assert!(count >= shards / n && count <= shards.div_ceil(n) + policy.slack);
        }
    }
}

/// 64 shards on 4 nodes, balanced by count, with every shard at load 10 except `hot`.
fn setup(hot: &[(u32, u64)]) -> (AssignmentTable, Membership, Loads) {
    let table = common::balanced(64, 4);
    let mut loads: Loads = (0..64).map(|s| (ShardId(s), 10)).collect();
    for &(s, l) in hot {
        loads.insert(ShardId(s), l);
    }
    (table, common::membership(0..4, &[]), loads)
}

/// Plans `table` with the default count options and the given load `policy`.
fn plan_by_load(
    table: &AssignmentTable,
    membership: &Membership,
    policy: &LoadPolicy,
    loads: &Loads,
) -> AssignmentTable {
    plan_with_load(table, membership, &PlanOptions::default(), policy, loads)
}

#[test]
fn even_load_moves_nothing() {
    let (table, membership, loads) = setup(&[]);
    let after = plan_by_load(&table, &membership, &LoadPolicy::default(), &loads);
    assert_eq!(after, table);
}

#[test]
fn load_noise_inside_the_trigger_band_moves_nothing() {
    // node-0 at 121 % of the mean: below the 125 % trigger.
    let (table, membership, loads) = setup(&[(0, 22), (1, 22), (2, 22), (3, 22)]);
    let eligible = membership.eligible();
    let per_node = node_loads(&table, &eligible, &loads);
    assert!(per_node[0] * 100 * 4 < 125 * per_node.iter().sum::<u64>());
    let after = plan_by_load(&table, &membership, &LoadPolicy::default(), &loads);
    assert_eq!(after, table);
}

#[test]
fn two_hot_shards_on_one_node_are_split_with_the_fewest_moves() {
    // Shards 0 and 1 (both on node-0) carry 100 each: node-0 has 340 of 820.
    let (table, membership, loads) = setup(&[(0, 100), (1, 100)]);
    assert_eq!(table.owner(ShardId(0)), Some(&node(0)));
    assert_eq!(table.owner(ShardId(1)), Some(&node(0)));
    let after = plan_by_load(&table, &membership, &LoadPolicy::default(), &loads);
    let eligible = membership.eligible();
    let per_node = node_loads(&after, &eligible, &loads);
    let (max, total) = (
        per_node.iter().copied().max().unwrap_or(0),
        per_node.iter().sum::<u64>(),
    );
    assert!(max * 100 * 4 <= 125 * total, "{per_node:?}");
    assert_ne!(after.owner(ShardId(0)), after.owner(ShardId(1)));
    // One hot shard swapped for a cold one: two hand-offs, counts unchanged (64 / 4 = 16 each).
    assert_eq!(after.moves.len(), 2, "{:?}", after.moves);
    assert_eq!(owner_changes(&table, &after), 2);
    assert!(after.counts().values().all(|&c| c == 16));
    assert!(after.moves.iter().any(|m| m.from == node(0)));
    // Done once the hand-offs complete: the next plan keeps the table.
    let done = complete_moves(&after, &after.moves);
    assert_eq!(
        plan_by_load(&done, &membership, &LoadPolicy::default(), &loads),
        done
    );
}

#[test]
fn a_policy_that_is_off_plans_by_count_only() {
    let (table, membership, loads) = setup(&[(0, 300), (1, 300)]);
    let after = plan_by_load(&table, &membership, &LoadPolicy::off(), &loads);
    assert_eq!(after, table);
}

#[test]
fn a_node_joining_takes_load_and_not_just_shards() {
    // node-0 holds both hot shards: 350 of 820.
    let (table, _, loads) = setup(&[(0, 100), (1, 100)]);
    let joined = common::membership(0..5, &[]);
    let after = plan_by_load(&table, &joined, &LoadPolicy::default(), &loads);
    let eligible = joined.eligible();
    let max = |t: &AssignmentTable| node_loads(t, &eligible, &loads).into_iter().max();
    let by_count = plan(&table, &joined, &PlanOptions::default());
    // By count node-0 keeps both hot shards (310); load-aware, the busiest node has one.
    assert_eq!(max(&by_count), Some(310));
    assert!(
        max(&after) <= Some(220),
        "{:?}",
        node_loads(&after, &eligible, &loads)
    );
    assert_ne!(after.owner(ShardId(0)), after.owner(ShardId(1)));
    // 64 / 5: 12 or 13 shards, plus the slack of 1.
    let newcomer = after.shards_of(&node(4)).len();
    assert!((12..=14).contains(&newcomer), "{newcomer}");
    let moved: BTreeSet<ShardId> = after.moves.iter().map(|m| m.shard).collect();
    assert_eq!(moved.len(), after.moves.len());
}
