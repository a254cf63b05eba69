//! The planner's rules (see `shard::planner`), each checked as a property over random clusters,
//! plus examples of the cases that matter most in operation.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{
    Cluster, Event, InFlight, counts_of, event, in_flight, info, members_are_the_ready_nodes, node,
    node_count, owner_changes, shard_count,
};
use proptest::prelude::*;
use shard::{AssignmentTable, Membership, Move, NodeName, PlanOptions, ShardId, plan};

/// floor(S/N) and ceil(S/N).
fn bounds(shards: u32, nodes: usize) -> (u32, u32) {
    let n = nodes as u32;
    (shards / n, shards.div_ceil(n))
}

fn is_balanced(table: &AssignmentTable, eligible: &[NodeName]) -> bool {
    let (floor, ceil) = bounds(table.shards, eligible.len());
    counts_of(table, eligible)
        .values()
        .all(|&c| c == floor || c == ceil)
}

/// The fewest owner changes that reach balance from `old` (which has no moves in flight): shards
/// of non-eligible owners, plus each node's excess when the largest holders get the ceil targets.
fn minimum_changes(old: &AssignmentTable, eligible: &[NodeName]) -> usize {
    let eligible_set: BTreeSet<&NodeName> = eligible.iter().collect();
    let homeless = old
        .owners()
        .iter()
        .filter(|o| o.as_ref().is_none_or(|o| !eligible_set.contains(o)))
        .count();
    let mut have: Vec<u32> = counts_of(old, eligible).into_values().collect();
    have.sort_unstable_by(|a, b| b.cmp(a));
    let (floor, _) = bounds(old.shards, eligible.len());
    let extra = (old.shards as usize) % eligible.len();
    let excess: u32 = have
        .iter()
        .enumerate()
        .map(|(i, &h)| h.saturating_sub(floor + u32::from(i < extra)))
        .sum();
    homeless + excess as usize
}

/// Rules 1, 5 (epoch), 6 and 7, and the form of rule 2 that holds with moves in flight; with
/// replication 2 also F1, F2 (where no node owns more than its share) and F5.
fn check_plan(
    old: &AssignmentTable,
    new: &AssignmentTable,
    membership: &Membership,
    options: &PlanOptions,
) -> Result<(), TestCaseError> {
    let eligible = membership.eligible();
    let eligible_set: BTreeSet<&NodeName> = eligible.iter().collect();
    let ready = &membership.ready;
    prop_assert!(new.validate().is_ok(), "{:?}", new.validate());

    // Rule 7: members.
    members_are_the_ready_nodes(old, new, ready)?;
    let draining: BTreeSet<NodeName> = membership
        .draining
        .iter()
        .filter(|n| ready.contains_key(*n))
        .cloned()
        .collect();
    prop_assert_eq!(&new.draining, &draining);

    // Rule 1: owners. With nobody eligible, a shard stays with a ready holder.
    if eligible.is_empty() {
        for s in (0..new.shards).map(ShardId) {
            if let Some(o) = new.owner(s) {
                prop_assert!(ready.contains_key(o));
                let holders = [
                    old.owner(s),
                    old.follower(s),
                    old.move_of(s).map(|m| &m.from),
                ];
                prop_assert!(
                    holders.contains(&Some(o)),
                    "shard {} went to {}, which holds nothing",
                    s,
                    o
                );
            }
        }
        prop_assert!(new.followers().iter().all(Option::is_none));
    } else {
        // An owner is eligible, or the target of a move that goes on (rule 6), which may be
        // draining.
        for (s, owner) in new.owners().iter().enumerate() {
            let pinned = new
                .move_of(ShardId(s as u32))
                .is_some_and(|m| old.moves.iter().any(|o| o.shard == m.shard));
            prop_assert!(
                owner
                    .as_ref()
                    .is_some_and(|o| eligible_set.contains(o) || (pinned && ready.contains_key(o)))
            );
        }
    }

    // Rule 5: epoch.
    let mut same_epoch = new.clone();
    same_epoch.epoch = old.epoch;
    let changed = same_epoch != *old;
    prop_assert_eq!(new.epoch, old.epoch + u64::from(changed));

    // Rule 6: moves.
    if !eligible.is_empty() {
        let mut expected_moves = Vec::new();
        for s in (0..old.shards).map(ShardId) {
            let (old_owner, new_owner) = (old.owner(s), new.owner(s));
            let source = match in_flight(old, s, membership) {
                InFlight::Kept(m) => {
                    prop_assert_eq!(new_owner, Some(&m.to), "a move in flight is redirected");
                    expected_moves.push(m);
                    continue;
                }
                InFlight::Replan(source) => {
                    prop_assert_ne!(new_owner, old_owner);
                    Some(source)
                }
                InFlight::Ends if new_owner == old_owner => continue,
                // F5: an owner that is gone hands off through its ready follower.
                InFlight::Ends => match old_owner {
                    Some(o) if ready.contains_key(o) => Some(o.clone()),
                    Some(_) => old.follower(s).filter(|f| ready.contains_key(*f)).cloned(),
                    None => None,
                },
            };
            if let (Some(from), Some(to)) = (source, new_owner)
                && from != *to
            {
                expected_moves.push(Move {
                    shard: s,
                    from,
                    to: to.clone(),
                });
            }
        }
        prop_assert_eq!(&new.moves, &expected_moves);

        // Rule 2, with moves in flight: nobody is above ceil(S/N) except by shards it is
        // receiving through moves that were already in flight (kept, or with a follower
        // standing in for an end).
        let (_, ceil) = bounds(new.shards, eligible.len());
        let mut pinned: BTreeMap<&NodeName, u32> = BTreeMap::new();
        for m in new.moves.iter().filter(|m| old.move_of(m.shard).is_some()) {
            *pinned.entry(&m.to).or_insert(0) += 1;
        }
        for (n, count) in counts_of(new, &eligible) {
            let pins = pinned.get(&n).copied().unwrap_or(0);
            prop_assert!(
                count <= ceil.max(pins),
                "{n} has {count} > {ceil} ({pins} pinned)"
            );
        }
        if old.moves.is_empty() {
            prop_assert!(is_balanced(new, &eligible));
        }
    }

    check_followers(old, new, membership, options)?;

    // Rule 5: idempotent.
    prop_assert_eq!(&plan(new, membership, options), new);
    Ok(())
}

/// F1 and F2: followers are eligible and not the owner, one per owned shard with replication 2
/// and two eligible nodes, none otherwise; balanced unless some node owns more than its share.
fn check_followers(
    old: &AssignmentTable,
    new: &AssignmentTable,
    membership: &Membership,
    options: &PlanOptions,
) -> Result<(), TestCaseError> {
    let eligible = membership.eligible();
    let eligible_set: BTreeSet<&NodeName> = eligible.iter().collect();
    if options.copies() < 2 || eligible.len() < 2 {
        prop_assert!(new.followers().iter().all(Option::is_none));
        return Ok(());
    }
    for (owner, follower) in new.owners().iter().zip(new.followers()) {
        prop_assert_eq!(owner.is_some(), follower.is_some());
        if let Some(f) = follower {
            prop_assert!(eligible_set.contains(f), "{f} follows but is not eligible");
            prop_assert_ne!(Some(f), owner.as_ref());
        }
    }
    let owned = new.owners().iter().flatten().count() as u32;
    let (_, ceil) = bounds(owned, eligible.len());
    let (floor_f, ceil_f) = bounds(owned, eligible.len());
    // F4: a moving shard keeps its follower, whatever the balance says; a node that keeps
    // more such follows than its share takes no other.
    let mut pins: BTreeMap<&NodeName, u32> = BTreeMap::new();
    for s in new.moves.iter().map(|m| m.shard) {
        if let Some(f) = new.follower(s).filter(|f| old.follower(s) == Some(*f)) {
            *pins.entry(f).or_insert(0) += 1;
        }
    }
    let pinned_above = pins.values().any(|&p| p > floor_f);
    if counts_of(new, &eligible).values().all(|&c| c <= ceil) {
        let follows = new.follower_counts();
        for n in &eligible {
            let c = follows.get(n).copied().unwrap_or(0);
            let p = pins.get(n).copied().unwrap_or(0);
            if pinned_above {
                prop_assert!(c <= ceil_f.max(p), "{n} follows {c} with {p} pinned");
            } else {
                prop_assert!(
                    c == floor_f || c == ceil_f,
                    "{n} follows {c}, not {floor_f} or {ceil_f}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn planning_from_empty_gives_each_node_one_balanced_run() {
    let table = common::balanced(4096, 100);
    let counts = table.counts();
    assert_eq!(counts.len(), 100);
    assert!(counts.values().all(|&c| c == 40 || c == 41));
    assert_eq!(counts.values().filter(|&&c| c == 41).count(), 96);
    assert_eq!(table.epoch, 1);
    assert!(table.moves.is_empty());
    for n in counts.keys() {
        let shards = table.shards_of(n);
        let (first, last) = (shards[0].0, shards[shards.len() - 1].0);
        assert_eq!(
            (last - first + 1) as usize,
            shards.len(),
            "{n} is not one run"
        );
    }
}

#[test]
fn a_joining_node_takes_its_share_and_nothing_else_moves() {
    let before = common::balanced(4096, 100);
    let after = plan(
        &before,
        &common::membership(0..101, &[]),
        &PlanOptions::default(),
    );
    let newcomer = node(100);
    assert_eq!(after.counts().get(&newcomer), Some(&40));
    assert_eq!(owner_changes(&before, &after), 40);
    assert_eq!(after.moves.len(), 40);
    assert!(after.moves.iter().all(|m| m.to == newcomer));
    assert_eq!(after.epoch, before.epoch + 1);
}

#[test]
fn removing_a_node_moves_only_its_shards_and_without_hand_off() {
    let before = common::balanced(4096, 100);
    let gone = node(42);
    let lost = before.shards_of(&gone);
    let mut ready: Vec<usize> = (0..100).collect();
    ready.retain(|&i| i != 42);
    let after = plan(
        &before,
        &common::membership(ready, &[]),
        &PlanOptions::default(),
    );
    assert_eq!(owner_changes(&before, &after), lost.len());
    assert!(lost.iter().all(|s| after.owner(*s) != Some(&gone)));
    // The owner is gone: there is nobody to hand off from.
    assert!(after.moves.is_empty());
    assert!(!after.nodes.contains_key(&gone));
}

#[test]
fn draining_a_node_hands_each_of_its_shards_off() {
    let before = common::balanced(4096, 100);
    let drained = node(7);
    let after = plan(
        &before,
        &common::membership(0..100, &[7]),
        &PlanOptions::default(),
    );
    let lost = before.shards_of(&drained);
    assert_eq!(after.moves.len(), lost.len());
    assert!(after.moves.iter().all(|m| m.from == drained));
    assert_eq!(owner_changes(&before, &after), lost.len());
    assert!(after.shards_of(&drained).is_empty());
    assert!(after.draining.contains(&drained) && after.nodes.contains_key(&drained));
}

#[test]
fn without_eligible_nodes_every_shard_stays_with_its_draining_owner() {
    let before = common::balanced(64, 2);
    let after = plan(
        &before,
        &common::membership(0..2, &[0, 1]),
        &PlanOptions::default(),
    );
    assert_eq!(
        after.owners(),
        before.owners(),
        "nothing is dropped or moved"
    );
    assert!(after.moves.is_empty());
    assert_eq!(after.draining.len(), 2);
    // Once the owner of half of them is gone too, those are unassigned (nobody holds them).
    let gone = plan(
        &after,
        &common::membership(1..2, &[1]),
        &PlanOptions::default(),
    );
    for s in (0..64).map(ShardId) {
        let expected = before.owner(s).filter(|o| **o == node(1));
        assert_eq!(gone.owner(s), expected);
    }
}

#[test]
fn a_move_in_flight_is_kept_until_it_completes() {
    let before = common::balanced(64, 2);
    let joined = plan(
        &before,
        &common::membership(0..3, &[]),
        &PlanOptions::default(),
    );
    assert!(!joined.moves.is_empty());
    // Another node joins before the hand-offs finish: they are not redirected.
    let again = plan(
        &joined,
        &common::membership(0..4, &[]),
        &PlanOptions::default(),
    );
    assert!(joined.moves.iter().all(|m| again.moves.contains(m)));
    let done = shard::complete_moves(&again, &again.moves);
    assert!(done.moves.is_empty());
    assert_eq!(done.epoch, again.epoch + 1);
    assert_eq!(shard::complete_moves(&done, &again.moves), done);
}

#[test]
fn a_move_whose_source_left_is_dropped_and_the_target_keeps_the_shard() {
    let before = common::balanced(64, 2);
    let joined = plan(
        &before,
        &common::membership(0..3, &[]),
        &PlanOptions::default(),
    );
    let moved: Vec<ShardId> = joined.moves.iter().map(|m| m.shard).collect();
    let source_left = plan(
        &joined,
        &common::membership(1..3, &[]),
        &PlanOptions::default(),
    );
    assert!(source_left.moves.iter().all(|m| m.from != node(0)));
    for s in moved
        .iter()
        .filter(|s| joined.move_of(**s).is_some_and(|m| m.from == node(0)))
    {
        assert_eq!(source_left.owner(*s), Some(&node(2)));
    }
}

#[test]
fn a_move_whose_target_left_is_planned_again_from_its_source() {
    let before = common::balanced(64, 2);
    let joined = plan(
        &before,
        &common::membership(0..3, &[]),
        &PlanOptions::default(),
    );
    let target_left = plan(
        &joined,
        &common::membership(0..2, &[]),
        &PlanOptions::default(),
    );
    for m in &joined.moves {
        // Going back to the source needs no hand-off; anything else moves from the source.
        match target_left.owner(m.shard) {
            Some(owner) if *owner == m.from => assert!(target_left.move_of(m.shard).is_none()),
            Some(owner) => assert_eq!(
                target_left.move_of(m.shard).map(|x| (&x.from, &x.to)),
                Some((&m.from, owner))
            ),
            None => panic!("shard {} lost its owner", m.shard),
        }
    }
}

#[test]
fn the_cap_limits_moves_per_node_and_leaves_the_rest_with_the_draining_owner() {
    let before = common::balanced(64, 4);
    let options = PlanOptions {
        max_moves_per_node: 3,
        ..PlanOptions::default()
    };
    let after = plan(&before, &common::membership(0..4, &[0]), &options);
    assert_eq!(after.moves.len(), 3);
    assert!(after.moves.iter().all(|m| m.from == node(0)));
    assert_eq!(after.shards_of(&node(0)).len(), 16 - 3);
    // Nothing more until those complete.
    assert_eq!(
        plan(&after, &common::membership(0..4, &[0]), &options),
        after
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn settled_clusters_stay_balanced_with_the_fewest_moves(
        shards in shard_count(),
        nodes in node_count(),
        events in proptest::collection::vec(event(), 1..5),
        replication in 1u8..=2,
    ) {
        let options = common::replicated(replication);
        let mut cluster = Cluster::replicated(shards, nodes, replication);
        prop_assert!(is_balanced(&cluster.table, &cluster.eligible()));
        for e in &events {
            cluster.apply(&Event::CompleteAll);
            cluster.apply(e);
            let old = cluster.table.clone();
            let new = plan(&old, &cluster.membership, &options);
            check_plan(&old, &new, &cluster.membership, &options)?;
            let eligible = cluster.eligible();
            if !eligible.is_empty() {
                prop_assert_eq!(owner_changes(&old, &new), minimum_changes(&old, &eligible));
            }
            cluster.table = new;
        }
    }

    #[test]
    fn clusters_with_moves_in_flight_follow_the_rules_and_settle_balanced(
        shards in shard_count(),
        nodes in node_count(),
        events in proptest::collection::vec(event(), 1..6),
        replication in 1u8..=2,
    ) {
        let options = common::replicated(replication);
        let mut cluster = Cluster::replicated(shards, nodes, replication);
        for e in &events {
            cluster.apply(e);
            let old = cluster.table.clone();
            let new = plan(&old, &cluster.membership, &options);
            check_plan(&old, &new, &cluster.membership, &options)?;
            cluster.table = new;
        }
        cluster.apply(&Event::CompleteAll);
        let settled = plan(&cluster.table, &cluster.membership, &options);
        let eligible = cluster.eligible();
        if !eligible.is_empty() {
            prop_assert!(is_balanced(&settled, &eligible));
        }
    }

    #[test]
    fn one_node_joining_a_balanced_cluster_moves_only_shards_to_it(
        shards in shard_count(),
        nodes in node_count(),
        replication in 1u8..=2,
    ) {
        let options = common::replicated(replication);
        let before = common::balanced_with(shards, nodes, replication);
        let after = plan(&before, &common::membership(0..=nodes, &[]), &options);
        let newcomer = node(nodes);
        let (floor, ceil) = bounds(shards, nodes + 1);
        let gained = after.shards_of(&newcomer).len() as u32;
        prop_assert!(gained == floor || gained == ceil);
        prop_assert_eq!(owner_changes(&before, &after), gained as usize);
        prop_assert!(after.moves.iter().all(|m| m.to == newcomer));
        prop_assert_eq!(after.moves.len(), gained as usize);
    }

    #[test]
    fn one_node_leaving_or_draining_moves_only_its_shards(
        shards in shard_count(),
        nodes in 2usize..200,
        which in any::<usize>(),
        drain in any::<bool>(),
        replication in 1u8..=2,
    ) {
        let options = common::replicated(replication);
        let before = common::balanced_with(shards, nodes, replication);
        let gone = which % nodes;
        let membership = if drain {
            common::membership(0..nodes, &[gone])
        } else {
            common::membership((0..nodes).filter(|&i| i != gone), &[])
        };
        let after = plan(&before, &membership, &options);
        let lost = before.shards_of(&node(gone));
        prop_assert_eq!(owner_changes(&before, &after), lost.len());
        if drain {
            prop_assert_eq!(after.moves.len(), lost.len());
        } else {
            // F5: only a follower above its share hands its copy on (none with replication 1).
            for m in &after.moves {
                prop_assert_eq!(before.owner(m.shard), Some(&node(gone)));
                prop_assert_eq!(before.follower(m.shard), Some(&m.from));
            }
        }
        prop_assert!(is_balanced(&after, &membership.eligible()));
    }

    #[test]
    fn the_plan_depends_on_membership_contents_not_insertion_order(
        shards in shard_count(),
        ready in Just((0..40usize).collect::<Vec<_>>()).prop_shuffle(),
        draining in proptest::collection::vec(0..60usize, 0..5),
        replication in 1u8..=2,
    ) {
        let options = common::replicated(replication);
        let current = common::balanced_with(shards, 30, replication);
        let sorted = common::membership(0..40, &{
            let mut d = draining.clone();
            d.sort_unstable();
            d
        });
        let mut shuffled = Membership::default();
        for &i in &ready {
            shuffled.ready.insert(node(i), info(&node(i)));
        }
        for &i in draining.iter().rev() {
            shuffled.draining.insert(node(i));
        }
        let a = plan(&current, &sorted, &options);
        let b = plan(&current, &shuffled, &options);
        prop_assert_eq!(a, b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn capped_plans_respect_the_cap_and_converge_to_balance(
        shards in prop_oneof![1u32..=16, 1u32..=1024],
        nodes in 1usize..40,
        cap in 1usize..=8,
        events in proptest::collection::vec(event(), 1..5),
        replication in 1u8..=2,
    ) {
        let options = PlanOptions { max_moves_per_node: cap, replication };
        let mut cluster = Cluster::replicated(shards, nodes, replication);
        // Moves that go on from the table before (kept, or with a follower standing in for an
        // end that left) are never dropped for the cap; new moves only fill what is left.
        let check_cap = |old: &AssignmentTable, table: &AssignmentTable| -> Result<(), TestCaseError> {
            let mut per_node: BTreeMap<&NodeName, (usize, usize)> = BTreeMap::new();
            for m in &table.moves {
                let going_on = old.move_of(m.shard).is_some();
                for end in [&m.from, &m.to] {
                    let (all, kept) = per_node.entry(end).or_insert((0, 0));
                    *all += 1;
                    *kept += usize::from(going_on);
                }
            }
            prop_assert!(per_node.values().all(|&(all, kept)| all <= cap.max(kept)), "{per_node:?}");
            Ok(())
        };
        for e in &events {
            cluster.apply(e);
            let old = cluster.table.clone();
            let new = plan(&old, &cluster.membership, &options);
            check_cap(&old, &new)?;
            let eligible: BTreeSet<NodeName> = cluster.eligible().into_iter().collect();
            // A shard is only ever given to an eligible node; one left elsewhere was deferred
            // and stays where it was: with its owner, or when the owner is gone, with the
            // source of the hand-off to it (which still holds the rooms) or its follower's copy.
            let ready = &cluster.membership.ready;
            for s in (0..shards).map(ShardId) {
                if let Some(owner) = new.owner(s).filter(|o| !eligible.contains(*o)) {
                    let holder = match old.owner(s) {
                        Some(o) if !ready.contains_key(o) => old
                            .move_of(s)
                            .map(|m| &m.from)
                            .filter(|from| ready.contains_key(*from))
                            .or(old.follower(s)),
                        o => o,
                    };
                    prop_assert_eq!(holder, Some(owner));
                    prop_assert!(cluster.membership.ready.contains_key(owner));
                }
            }
            cluster.table = new;
        }
        // Keep planning and completing: balance is reached in a bounded number of rounds.
        let eligible = cluster.eligible();
        let mut rounds = 0;
        loop {
            let next = plan(&cluster.table, &cluster.membership, &options);
            check_cap(&cluster.table, &next)?;
            let done = next.moves.is_empty() && next == cluster.table;
            cluster.table = next;
            if done {
                break;
            }
            let moves = cluster.table.moves.clone();
            cluster.table = shard::complete_moves(&cluster.table, &moves);
            rounds += 1;
            prop_assert!(rounds <= 2 * shards as usize + 10, "no convergence");
        }
        if !eligible.is_empty() {
            prop_assert!(is_balanced(&cluster.table, &eligible));
            let eligible_set: BTreeSet<&NodeName> = eligible.iter().collect();
            prop_assert!(cluster.table.owners().iter().flatten().all(|o| eligible_set.contains(o)));
        }
    }
}
