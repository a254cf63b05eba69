//! Helpers shared by the integration tests: node names, memberships and random clusters.

#![allow(dead_code)] // Each test file uses a different subset.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use shard::{AssignmentTable, Membership, NodeInfo, NodeName, PlanOptions, complete_moves, plan};

/// `node-{i}`, which is always a valid name.
pub fn node(i: usize) -> NodeName {
    NodeName::new(format!("node-{i}")).expect("node-{i} is a valid node name")
}

/// The address published for `node(i)`-style names in tests.
pub fn info(name: &NodeName) -> NodeInfo {
    NodeInfo {
        peer_addr: format!("{name}.chat:7001"),
        client_addr: Some(format!("{name}.chat:8080")),
        zone: None,
        member_since: 0,
    }
}

/// Rule 7: `new` lists exactly the ready nodes, with what they published, and each keeps the
/// epoch it became a member at (`old`'s for a node `old` lists, `new`'s epoch for one it adds).
pub fn members_are_the_ready_nodes(
    old: &AssignmentTable,
    new: &AssignmentTable,
    ready: &BTreeMap<NodeName, NodeInfo>,
) -> Result<(), TestCaseError> {
    let published = |nodes: &BTreeMap<NodeName, NodeInfo>| -> BTreeMap<NodeName, NodeInfo> {
        nodes
            .iter()
            .map(|(name, info)| {
                let mut info = info.clone();
                info.member_since = 0;
                (name.clone(), info)
            })
            .collect()
    };
    prop_assert_eq!(published(&new.nodes), published(ready));
    for (name, info) in &new.nodes {
        let since = old
            .nodes
            .get(name)
            .map_or(new.epoch, |was| was.member_since);
        prop_assert_eq!(info.member_since, since, "{} keeps its member_since", name);
    }
    Ok(())
}

/// Ready nodes `ready` (by number), of which `draining` are draining.
pub fn membership(ready: impl IntoIterator<Item = usize>, draining: &[usize]) -> Membership {
    Membership {
        ready: ready
            .into_iter()
            .map(|i| (node(i), info(&node(i))))
            .collect(),
        draining: draining.iter().map(|&i| node(i)).collect(),
    }
}

/// A table planned from empty for `nodes` nodes: balanced, no moves.
pub fn balanced(shards: u32, nodes: usize) -> AssignmentTable {
    balanced_with(shards, nodes, 1)
}

/// [`balanced`] with `replication` copies of every shard.
pub fn balanced_with(shards: u32, nodes: usize, replication: u8) -> AssignmentTable {
    plan(
        &AssignmentTable::empty(shards),
        &membership(0..nodes, &[]),
        &replicated(replication),
    )
}

/// Plan options with `replication` copies and no move cap.
pub fn replicated(replication: u8) -> PlanOptions {
    PlanOptions {
        replication,
        ..PlanOptions::default()
    }
}

/// How many shards changed follower between two tables.
pub fn follower_changes(old: &AssignmentTable, new: &AssignmentTable) -> usize {
    old.followers()
        .iter()
        .zip(new.followers())
        .filter(|(a, b)| a != b)
        .count()
}

/// Shards per eligible node, counting nodes that own nothing.
pub fn counts_of(table: &AssignmentTable, eligible: &[NodeName]) -> BTreeMap<NodeName, u32> {
    let counts = table.counts();
    eligible
        .iter()
        .map(|n| (n.clone(), counts.get(n).copied().unwrap_or(0)))
        .collect()
}

/// How many shards changed owner between two tables.
pub fn owner_changes(old: &AssignmentTable, new: &AssignmentTable) -> usize {
    old.owners()
        .iter()
        .zip(new.owners())
        .filter(|(a, b)| a != b)
        .count()
}

/// Something that happens to a cluster between two plans.
#[derive(Debug, Clone)]
pub enum Event {
    /// A new node becomes ready.
    Join,
    /// The n-th ready node (modulo their count) stops being ready.
    Leave(usize),
    /// The n-th ready node starts draining.
    Drain(usize),
    /// Every move in flight completes.
    CompleteAll,
}

pub fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => Just(Event::Join),
        2 => any::<usize>().prop_map(Event::Leave),
        2 => any::<usize>().prop_map(Event::Drain),
        2 => Just(Event::CompleteAll),
    ]
}

/// Shard counts biased towards small ones, where rounding edge cases live.
pub fn shard_count() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..=16, 1u32..=2048, 1u32..=65536]
}

/// Node counts from 1 to 199, biased towards small ones.
pub fn node_count() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..=8, 1usize..200]
}

/// A cluster evolving under events: its membership and its latest table.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub membership: Membership,
    pub table: AssignmentTable,
    next_id: usize,
}

impl Cluster {
    /// `nodes` ready nodes with a table planned from empty.
    pub fn new(shards: u32, nodes: usize) -> Cluster {
        Cluster::replicated(shards, nodes, 1)
    }

    /// [`Cluster::new`] with `replication` copies of every shard.
    pub fn replicated(shards: u32, nodes: usize, replication: u8) -> Cluster {
        Cluster {
            membership: membership(0..nodes, &[]),
            table: balanced_with(shards, nodes, replication),
            next_id: nodes,
        }
    }

    /// Applies a membership event (`CompleteAll` completes the table's moves instead).
    pub fn apply(&mut self, event: &Event) {
        let ready: Vec<NodeName> = self.membership.ready.keys().cloned().collect();
        match event {
            Event::Join => {
                let name = node(self.next_id);
                self.next_id += 1;
                self.membership.ready.insert(name.clone(), info(&name));
            }
            Event::Leave(i) if !ready.is_empty() => {
                let name = &ready[i % ready.len()];
                self.membership.ready.remove(name);
                self.membership.draining.remove(name);
            }
            Event::Drain(i) if !ready.is_empty() => {
                self.membership
                    .draining
                    .insert(ready[i % ready.len()].clone());
            }
            Event::CompleteAll => {
                let moves = self.table.moves.clone();
                self.table = complete_moves(&self.table, &moves);
            }
            Event::Leave(_) | Event::Drain(_) => {}
        }
    }

    /// The nodes that may own shards now.
    pub fn eligible(&self) -> Vec<NodeName> {
        self.membership.eligible()
    }

    /// Ready nodes that are draining.
    pub fn draining(&self) -> BTreeSet<NodeName> {
        self.membership
            .draining
            .iter()
            .filter(|n| self.membership.ready.contains_key(*n))
            .cloned()
            .collect()
    }
}

/// What rule 6 of the planner says becomes of `old`'s move in flight of `shard`, given the
/// ready nodes: kept as it is while both ends are ready; with the ready follower (other than
/// the ends) standing in for an end that left; `Replan(source)` when the target left with no
/// such follower; `Ends` when there is no move or it ends (the source left with no follower
/// standing in, or both ends left).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InFlight {
    Kept(shard::Move),
    Replan(NodeName),
    Ends,
}

pub fn in_flight(old: &AssignmentTable, shard: shard::ShardId, ready: &Membership) -> InFlight {
    let ready = |n: &NodeName| ready.ready.contains_key(n);
    let Some(m) = old
        .move_of(shard)
        .filter(|m| Some(&m.to) == old.owner(shard))
    else {
        return InFlight::Ends;
    };
    let stand_in = old
        .follower(shard)
        .filter(|f| ready(f) && **f != m.from && **f != m.to)
        .cloned();
    match (ready(&m.from), ready(&m.to), stand_in) {
        (true, true, _) => InFlight::Kept(m.clone()),
        (true, false, Some(f)) => InFlight::Kept(shard::Move {
            shard,
            from: m.from.clone(),
            to: f,
        }),
        (true, false, None) => InFlight::Replan(m.from.clone()),
        (false, true, Some(f)) => InFlight::Kept(shard::Move {
            shard,
            from: f,
            to: m.to.clone(),
        }),
        (false, _, _) => InFlight::Ends,
    }
}
