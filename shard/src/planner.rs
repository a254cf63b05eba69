//! The planner: from the current table and the cluster's membership, the next table.
//!
//! [`plan`] is a pure function, safe to call at any time and as often as wanted: planning a table
//! it produced gives the same table back, epoch included. Its rules:
//!
//! 1. **Owners.** Eligible nodes are the ready ones that are not draining. Every shard gets exactly
//!    one eligible owner. With no eligible node (every ready node draining, as when every pod is
//!    deleted at once) nothing is dropped: a shard stays with its ready owner (its move in
//!    flight going on while both ends are ready), or goes to its ready follower, or to the ready
//!    source of its move; only a shard none of whose holders is ready is unassigned. Nothing
//!    new moves and no shard has a follower until a node is eligible again.
//! 2. **Balance.** With S shards and N eligible nodes, every node ends with floor(S/N) or
//!    ceil(S/N) shards. The one exception is a hand-off still in flight: it is never redirected
//!    (rule 6), so a node receiving more in-flight shards than its share keeps them, and the other
//!    nodes share the rest as evenly as possible ("water-filling"). The next plan after those
//!    moves complete restores full balance.
//! 3. **Fewest moves.** A shard keeps its owner while that owner is eligible and not above its
//!    target; the nodes currently holding the most get the ceil(S/N) targets. So one node joining
//!    moves only shards to it, and one node leaving or draining moves only its shards.
//! 4. **Determinism.** Ties are broken by node name and shard id; inputs are ordered sets, so the
//!    result depends only on their contents.
//! 5. **Epoch.** The epoch grows by exactly 1 iff owners, followers, nodes, moves or draining
//!    changed.
//! 6. **Moves.** An owner change from a node that is still ready records a [`Move`] so the old
//!    owner hands the rooms over; from a node that is gone there is no move (the new owner starts
//!    the shard fresh), unless the shard's follower holds a copy (F5). A move in flight stays
//!    while both its ends are ready, draining or not: it is never redirected or cancelled while
//!    its snapshot may be on its way (a draining target installs the rooms, then hands them on
//!    like any shard it owns). When one end leaves, the shard's ready follower stands in for it,
//!    because its copy holds every acknowledged message: a move whose source left goes on from
//!    the follower, a move whose target left goes to the follower (which merges the source's
//!    rooms with its copy). With no such follower, a move whose source left is dropped (the
//!    target keeps the shard) and a shard whose target left is planned again from the source.
//! 7. **Members.** `nodes` is the ready set, `draining` the draining nodes that are ready.
//!    Each keeps the epoch it became a member at ([`NodeInfo::member_since`]): the epoch of
//!    the table that added it.
//! 8. **Cap.** With [`PlanOptions::max_moves_per_node`] = k, no node is source or target of more
//!    than k moves in the result, or of more than the moves that go on from the current table
//!    (rule 6 never drops one, and a follower standing in for an end of a move takes it on
//!    whatever its budget); shards that would exceed it stay with their current owner (even a
//!    draining one) for a later plan. Planning and completing moves repeatedly converges to the
//!    balanced table.
//! 9. **Load.** [`plan`] counts shards only. [`plan_with_load`](crate::plan_with_load) takes
//!    per-shard loads and then also balances load, within ⌊S/N⌋..⌈S/N⌉ + a slack instead of rule
//!    2's bounds (see [`crate::balance`]); rules 1 and 4-8 hold for it too, and with no loads it is
//!    exactly [`plan`].
//!
//! With [`PlanOptions::replication`] = 2 every shard also gets a *follower*, a node that keeps a
//! live copy of its rooms (chosen by [`crate::followers`]). Rules 1-9 hold as before, and:
//!
//! - **F1 Followers.** A shard's follower is an eligible node other than its owner. With fewer
//!   than two eligible nodes, or replication 1, no shard has a follower.
//! - **F2 Balance.** With S owned shards and N eligible nodes, every node follows ⌊S/N⌋ or
//!   ⌈S/N⌉ shards. The exception has rule 2's shape: a node cannot follow shards it owns, so
//!   when hand-offs in flight pile more than ⌈S/N⌉ owned shards on a node, it may follow fewer
//!   than ⌊S/N⌋ and the others more. (With two nodes and an odd S the node owning ⌈S/N⌉ follows
//!   ⌊S/N⌋ and the other ⌈S/N⌉: each follows exactly what the other owns.)
//! - **F3 Zones.** When nodes carry a zone ([`NodeInfo::zone`]), a follower is placed in another
//!   zone than its owner whenever the balance of F2 allows; with zones of equal node counts,
//!   every follower is in another zone than its owner. Nodes without a zone conflict with none.
//! - **F4 Fewest changes.** A follower stays while it is eligible, is not the shard's (new)
//!   owner, is not in the owner's zone and its node is not above its F2 target. So one node
//!   joining moves only follower roles to it, and one node leaving changes the roles it held
//!   (its shards' followers are promoted or hand their copy over; its followed shards get new
//!   followers) and at most one more: when F2 leaves a node one follow short and every shard
//!   left without a follower is its own, it takes over one other shard's copy and that
//!   shard's follower takes one of its shards. (Four nodes where a and b follow each other's
//!   shard: when a leaves, b owns both shards it could follow.) A shard with a move in flight
//!   keeps its follower whatever F2 and F3 say, while the follower is eligible and not the
//!   move's target: its copy is what stands in for an end of the move that fails.
//! - **F5 Failover.** When a shard's owner is no longer ready and its follower is, the follower
//!   holds the rooms' copy, so it is the hand-off source: it becomes the owner with no move when
//!   its target allows (promotion), otherwise the new owner gets a `Move` from it, exactly as from
//!   a live owner. Only when neither is ready does the shard start empty, as in rule 6. (A shard
//!   whose hand-off is in flight when its source leaves keeps rule 6: the move is dropped.)
//! - **F6 Determinism and idempotence.** As rules 4 and 5: the result depends only on the
//!   inputs' contents, and planning the planned table again gives it back, epoch included.
//! - **F7 Epoch.** Rule 5 counts followers: the epoch grows by exactly 1 iff anything changed,
//!   followers included.
//!
//! [`plan_with_load`](crate::plan_with_load) fills followers the same way after balancing load:
//! followers are balanced by count, not by load (a follower applies its shards' messages but
//! serves no client of them).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::balance::{Loads, Slot, rebalance, tolerant_targets};
use crate::followers::fill_followers;
use crate::ids::{NodeName, ShardId};
use crate::table::{AssignmentTable, Move, NodeInfo};
use crate::targets::targets;

/// The cluster as the operator sees it: which nodes are ready, and which of those are draining.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Ready nodes with their addresses, draining ones included (a draining node still serves
    /// until it has handed its shards off).
    pub ready: BTreeMap<NodeName, NodeInfo>,
    /// Nodes being emptied for a scale-down. Entries that are not in `ready` are ignored.
    pub draining: BTreeSet<NodeName>,
}

impl Membership {
    /// The nodes that may own shards: ready and not draining, in name order.
    pub fn eligible(&self) -> Vec<NodeName> {
        self.ready
            .keys()
            .filter(|n| !self.draining.contains(*n))
            .cloned()
            .collect()
    }
}

/// Knobs for [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOptions {
    /// At most this many moves may involve any one node (as source or target) in the planned
    /// table, so a rebalance does not make one node snapshot hundreds of shards at once.
    pub max_moves_per_node: usize,
    /// Copies of every shard's rooms: 1 (owner only) or 2 (owner and follower, rules F1-F7).
    /// Other values are clamped to that range (see [`copies`](Self::copies)).
    pub replication: u8,
}

impl Default for PlanOptions {
    /// No cap: every move needed for balance is planned at once. Replication 1.
    fn default() -> Self {
        PlanOptions {
            max_moves_per_node: usize::MAX,
            replication: 1,
        }
    }
}

impl PlanOptions {
    /// [`replication`](Self::replication) clamped to `1..=2`: what the planner uses.
    pub fn copies(&self) -> u8 {
        self.replication.clamp(1, 2)
    }
}

/// The next table for `membership`, starting from `current` (see the module doc for the rules).
pub fn plan(
    current: &AssignmentTable,
    membership: &Membership,
    options: &PlanOptions,
) -> AssignmentTable {
    plan_inner(current, membership, options, None)
}

/// [`plan`], load-aware when `loads` is given (see [`crate::balance`]).
pub(crate) fn plan_inner(
    current: &AssignmentTable,
    membership: &Membership,
    options: &PlanOptions,
    loads: Option<Loads<'_>>,
) -> AssignmentTable {
    let ready = &membership.ready;
    let draining: BTreeSet<NodeName> = membership
        .draining
        .iter()
        .filter(|n| ready.contains_key(*n))
        .cloned()
        .collect();
    let eligible = membership.eligible();

    let mut next = AssignmentTable::empty(current.shards);
    next.epoch = current.epoch;
    next.nodes = ready.clone();
    next.draining = draining;
    if eligible.is_empty() {
        keep_with_holders(current, &mut next, ready);
    } else {
        assign(
            current,
            &mut next,
            ready,
            &eligible,
            options.max_moves_per_node,
            loads,
        );
        if options.copies() == 2 {
            fill_followers(current, &mut next, &eligible);
        }
    }
    // A node keeps the epoch it became a member at; one new to the table gets the new epoch.
    let new_epoch = current.epoch.saturating_add(1);
    for (name, info) in &mut next.nodes {
        info.member_since = current
            .nodes
            .get(name)
            .map_or(new_epoch, |was| was.member_since);
    }
    if next != *current {
        next.epoch = new_epoch;
    }
    next
}

/// Marks the hand-offs in `done` as finished: removes the moves that match one exactly (shard,
/// source and target). The epoch grows by 1 only if a move was removed, so reporting the same
/// completion twice is harmless.
pub fn complete_moves(current: &AssignmentTable, done: &[Move]) -> AssignmentTable {
    let done: BTreeSet<&Move> = done.iter().collect();
    let mut next = current.clone();
    next.moves.retain(|m| !done.contains(m));
    if next.moves.len() != current.moves.len() {
        next.epoch = current.epoch.saturating_add(1);
    }
    next
}

/// A shard that needs a new owner, with the ready node that holds its rooms (the source of the
/// hand-off), if any.
struct Homeless {
    shard: u32,
    source: Option<NodeName>,
}

/// With no eligible node, every shard stays with a ready node that holds its rooms (rule 1):
/// the ends of its move in flight, its owner, its follower, or its move's source.
fn keep_with_holders(
    current: &AssignmentTable,
    next: &mut AssignmentTable,
    ready: &BTreeMap<NodeName, NodeInfo>,
) {
    let mut moves = Vec::new();
    for s in (0..current.shards).map(ShardId) {
        let the_move = current.move_of(s);
        if let Some(Kept::Move(m)) = kept_move(current, s, ready) {
            next.set_owner(s, Some(m.to.clone()));
            moves.push(m);
            continue;
        }
        let holder = [
            current.owner(s),
            current.follower(s),
            the_move.map(|m| &m.from),
        ]
        .into_iter()
        .flatten()
        .find(|n| ready.contains_key(*n));
        next.set_owner(s, holder.cloned());
    }
    moves.sort();
    next.moves = moves;
}

/// What becomes of the move in flight of one shard (rule 6).
enum Kept {
    /// A move that goes on: as it was, or with the shard's follower standing in for the end
    /// that left.
    Move(Move),
    /// The target left and no follower can take its place: the source still holds the rooms.
    Replan(NodeName),
}

/// The move in flight of `shard` in `current`, as the next table keeps it (rule 6): unchanged
/// while both ends are ready (draining or not); with the shard's follower as the new source
/// when the source left (the follower's copy holds every acknowledged message), or as the new
/// target when the target left (it merges the source's rooms with its copy); `None` when the
/// shard has no such move, or the move ends with the target keeping the shard.
fn kept_move(
    current: &AssignmentTable,
    shard: ShardId,
    ready: &BTreeMap<NodeName, NodeInfo>,
) -> Option<Kept> {
    let m = current
        .move_of(shard)
        .filter(|m| Some(&m.to) == current.owner(shard) && m.from != m.to)?;
    let follower = current
        .follower(shard)
        .filter(|f| ready.contains_key(*f) && **f != m.from && **f != m.to)
        .cloned();
    match (ready.contains_key(&m.from), ready.contains_key(&m.to)) {
        (true, true) => Some(Kept::Move(m.clone())),
        (true, false) => Some(match follower {
            Some(f) => Kept::Move(Move {
                shard,
                from: m.from.clone(),
                to: f,
            }),
            None => Kept::Replan(m.from.clone()),
        }),
        (false, true) => follower.map(|f| {
            Kept::Move(Move {
                shard,
                from: f,
                to: m.to.clone(),
            })
        }),
        (false, false) => None,
    }
}

/// Fills `next`'s owners and moves; `eligible` is non-empty and sorted by name.
fn assign(
    current: &AssignmentTable,
    next: &mut AssignmentTable,
    ready: &BTreeMap<NodeName, NodeInfo>,
    eligible: &[NodeName],
    max_moves: usize,
    loads: Option<Loads<'_>>,
) {
    let index: BTreeMap<&NodeName, usize> = eligible.iter().zip(0..).collect();
    let shards = next.shards;

    // 1. Where every shard stands: kept by an eligible node (pinned when its hand-off is in
    //    flight), or homeless.
    let mut kept: Vec<Vec<u32>> = vec![Vec::new(); eligible.len()];
    // Shards a follower keeps because their owner is gone (rule F5): given up first when the
    // follower is above its target, since they change owner anyway.
    let mut promoted: Vec<Vec<u32>> = vec![Vec::new(); eligible.len()];
    let mut pinned = vec![0u32; eligible.len()];
    let mut kept_moves: Vec<Move> = Vec::new();
    let mut homeless: Vec<Homeless> = Vec::new();
    for shard in 0..shards {
        let owner = current.owner(ShardId(shard));
        match kept_move(current, ShardId(shard), ready) {
            Some(Kept::Move(m)) => {
                // Pinned: the move goes on even when its target is draining (rule 6).
                next.set_owner(ShardId(shard), Some(m.to.clone()));
                if let Some(&i) = index.get(&m.to) {
                    pinned[i] += 1;
                }
                kept_moves.push(m);
                continue;
            }
            // The target left and no follower holds a copy: plan the shard again from the
            // source, which still holds the rooms.
            Some(Kept::Replan(source)) => {
                homeless.push(Homeless {
                    shard,
                    source: Some(source),
                });
                continue;
            }
            // The source left and no follower holds a copy (the target keeps the shard), or
            // both ends left (rule F5): planned below from the owner.
            None => {}
        }
        match owner {
            Some(o) => match index.get(o) {
                Some(&i) => kept[i].push(shard),
                // The owner is still ready (draining): it hands the rooms over.
                None if ready.contains_key(o) => homeless.push(Homeless {
                    shard,
                    source: Some(o.clone()),
                }),
                // The owner is gone: its ready follower holds the rooms' copy (rule F5), and
                // keeps the shard as owner when it may (promotion) or hands the copy over.
                None => match current
                    .follower(ShardId(shard))
                    .filter(|f| ready.contains_key(*f))
                {
                    Some(f) => match index.get(f) {
                        Some(&i) => promoted[i].push(shard),
                        None => homeless.push(Homeless {
                            shard,
                            source: Some(f.clone()),
                        }),
                    },
                    None => homeless.push(Homeless {
                        shard,
                        source: None,
                    }),
                },
            },
            None => homeless.push(Homeless {
                shard,
                source: None,
            }),
        }
    }

    // 2. Targets, then give up what is above them (highest shard ids first, so the remaining
    //    ranges stay compact). Pinned shards are never given up; targets cover them.
    let have: Vec<u32> = (0..eligible.len())
        .map(|i| (kept[i].len() + promoted[i].len()) as u32 + pinned[i])
        .collect();
    let mut targets = targets(&have, &pinned, shards);
    if let Some(loads) = loads {
        targets = tolerant_targets(&have, &pinned, &targets, shards, loads.policy.slack);
    }
    let mut deficit = vec![0u32; eligible.len()];
    for (i, node) in eligible.iter().enumerate() {
        let keep = targets[i].saturating_sub(pinned[i]) as usize;
        let promotions = keep.saturating_sub(kept[i].len());
        while promoted[i].len() > promotions {
            if let Some(shard) = promoted[i].pop() {
                homeless.push(Homeless {
                    shard,
                    source: Some(node.clone()),
                });
            }
        }
        let mut mine = std::mem::take(&mut promoted[i]);
        mine.append(&mut kept[i]);
        mine.sort_unstable();
        kept[i] = mine;
        while kept[i].len() > keep {
            if let Some(shard) = kept[i].pop() {
                homeless.push(Homeless {
                    shard,
                    source: Some(node.clone()),
                });
            }
        }
        for &shard in &kept[i] {
            next.set_owner(ShardId(shard), Some(node.clone()));
        }
        deficit[i] = targets[i].saturating_sub(pinned[i] + kept[i].len() as u32);
    }
    homeless.sort_by_key(|h| h.shard);
    if let Some(loads) = loads {
        // Hottest first, so the big ones land on the least loaded nodes.
        homeless.sort_by_key(|h| (Reverse(loads.of(h.shard)), h.shard));
    }

    // 3. Budgets for the cap: moves kept in flight already use some.
    let mut budget: BTreeMap<&NodeName, usize> = ready.keys().map(|n| (n, max_moves)).collect();
    for m in &kept_moves {
        for end in [&m.from, &m.to] {
            if let Some(b) = budget.get_mut(end) {
                *b = b.saturating_sub(1);
            }
        }
    }
    let left = |budget: &BTreeMap<&NodeName, usize>, n: &NodeName| -> usize {
        budget.get(n).copied().unwrap_or(0)
    };

    // 4. Hand homeless shards out in shard order, filling one receiver after another (name
    //    order) so a node's new shards form runs. Both cursors only move forward: a receiver
    //    whose deficit (or budget) is used up never becomes usable again within one plan.
    //    Load-aware, the hottest shard goes first to the least loaded receiver instead.
    let mut node_load: Vec<u64> = vec![0; eligible.len()];
    if let Some(loads) = loads {
        for shard in 0..shards {
            if let Some(&i) = next.owner(ShardId(shard)).and_then(|o| index.get(o)) {
                node_load[i] += loads.of(shard);
            }
        }
    }
    let least_loaded = |node_load: &[u64], usable: &dyn Fn(usize) -> bool| -> Option<usize> {
        (0..eligible.len())
            .filter(|&i| usable(i))
            .min_by_key(|&i| (node_load[i], i))
    };
    let mut fresh: BTreeSet<u32> = BTreeSet::new();
    let mut new_moves: Vec<Move> = Vec::new();
    let mut fresh_cursor = 0;
    let mut moved_cursor = 0;
    for Homeless { shard, source } in homeless {
        let shard_id = ShardId(shard);
        let shard_load = loads.map_or(0, |l| l.of(shard));
        let Some(source) = source else {
            // Deficits add up to the homeless count, so a receiver exists; fall back to the
            // first node rather than leave a shard without owner.
            let i = if loads.is_some() {
                least_loaded(&node_load, &|i| deficit[i] > 0).unwrap_or(0)
            } else {
                while deficit.get(fresh_cursor) == Some(&0) {
                    fresh_cursor += 1;
                }
                if fresh_cursor < eligible.len() {
                    fresh_cursor
                } else {
                    0
                }
            };
            deficit[i] = deficit[i].saturating_sub(1);
            node_load[i] += shard_load;
            fresh.insert(shard);
            next.set_owner(shard_id, Some(eligible[i].clone()));
            continue;
        };
        let source_index = index.get(&source).copied();
        let receiver = if left(&budget, &source) == 0 {
            None
        } else if loads.is_some() {
            least_loaded(&node_load, &|i| {
                deficit[i] > 0 && left(&budget, &eligible[i]) > 0
            })
        } else {
            while moved_cursor < eligible.len()
                && (deficit[moved_cursor] == 0 || left(&budget, &eligible[moved_cursor]) == 0)
            {
                moved_cursor += 1;
            }
            (moved_cursor < eligible.len()).then_some(moved_cursor)
        };
        match receiver {
            Some(i) if Some(i) != source_index => {
                deficit[i] -= 1;
                node_load[i] += shard_load;
                for end in [&source, &eligible[i]] {
                    if let Some(b) = budget.get_mut(end) {
                        *b = b.saturating_sub(1);
                    }
                }
                next.set_owner(shard_id, Some(eligible[i].clone()));
                new_moves.push(Move {
                    shard: shard_id,
                    from: source,
                    to: eligible[i].clone(),
                });
            }
            // Going back to the node that holds it (or deferred by the cap): the source keeps
            // the shard, with no move.
            _ => {
                if let Some(i) = source_index {
                    deficit[i] = deficit[i].saturating_sub(1);
                    node_load[i] += shard_load;
                }
                next.set_owner(shard_id, Some(source));
            }
        }
    }
    kept_moves.extend(new_moves);

    // 5. Load-aware: move or swap the busiest node's shards (see `crate::balance`), once the
    //    count plan is not held back by the cap (no shard left with a node that may not own it).
    let deferred = next
        .owners()
        .iter()
        .any(|o| o.as_ref().is_some_and(|o| !index.contains_key(o)));
    if let Some(loads) = loads.filter(|_| !deferred) {
        let moving: BTreeSet<ShardId> = kept_moves.iter().map(|m| m.shard).collect();
        let mut count = vec![0u32; eligible.len()];
        let mut slots: Vec<Slot> = (0..shards)
            .map(|shard| {
                let owner = next
                    .owner(ShardId(shard))
                    .and_then(|o| index.get(o))
                    .copied();
                if let Some(i) = owner {
                    count[i] += 1;
                }
                Slot {
                    owner: owner.filter(|_| !moving.contains(&ShardId(shard))),
                    holds: !fresh.contains(&shard),
                }
            })
            .collect();
        let mut left_per_node: Vec<usize> = eligible.iter().map(|n| left(&budget, n)).collect();
        let steps = rebalance(
            &mut slots,
            &mut count,
            &mut left_per_node,
            loads,
            shards,
            &mut node_load,
        );
        for step in steps {
            next.set_owner(ShardId(step.shard), Some(eligible[step.to].clone()));
            if step.handoff {
                kept_moves.push(Move {
                    shard: ShardId(step.shard),
                    from: eligible[step.from].clone(),
                    to: eligible[step.to].clone(),
                });
            }
        }
    }
    kept_moves.sort();
    next.moves = kept_moves;
}
