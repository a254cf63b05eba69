//! Load-aware placement: the part of planning that looks at how busy each shard is.
//!
//! Counting shards balances rooms only on average: a few popular rooms can make one node carry
//! far more traffic than the others while every node holds its ⌊S/N⌋ or ⌈S/N⌉ shards. With
//! per-shard loads (deliveries per second, as nodes report them), [`plan_with_load`] plans like
//! [`plan`] and then moves or swaps the shards that lower the busiest node's load the most.
//!
//! What it guarantees, on top of the planner's rules 1 and 4–8:
//!
//! - **Counts.** Every eligible node ends with between ⌊S/N⌋ and ⌈S/N⌉ + [`LoadPolicy::slack`]
//!   shards. The exceptions are the planner's own: hand-offs in flight are never redirected, and
//!   shards the move cap defers stay where they are.
//! - **When it acts (hysteresis).** Only when the busiest node's load is above
//!   [`LoadPolicy::trigger_percent`] of the *reference*, the larger of the mean node load and
//!   the hottest shard's load (no placement can do better than either). Once acting, it moves
//!   shards until the busiest node is at or below [`LoadPolicy::goal_percent`] of the
//!   reference, or no step gains at least [`LoadPolicy::min_gain_percent`] of the mean, or the
//!   move cap is used up. Noise smaller than the band between goal and trigger moves nothing.
//! - **Counts first.** While the move cap holds the count plan back (a shard still with a node
//!   that may not own it, or a node below ⌊S/N⌋), load moves wait: they would spend the budget
//!   the count moves need.
//! - **Fewest moves.** Each step is the one move (preferred) or swap of a shard of the busiest
//!   node that leaves the pair's busier node the least loaded; a step that would not lower the
//!   busiest node's load is never taken. Hand-offs in flight and shards moved earlier in the same
//!   plan do not move, and each step counts against [`PlanOptions::max_moves_per_node`] (a swap
//!   is two moves for both nodes).
//! - **Stable.** Planning again with the same loads changes nothing: moves in flight still hold
//!   their budget, and a table the balance step produced either is under the trigger or has no
//!   step left that gains enough. (Like [`plan`], this is exact without a move cap; with one, a
//!   second plan may use budget the first left over for count moves.)
//! - **No loads, no change.** With an empty load map [`plan_with_load`] is exactly [`plan`].
//!
//! Loads are read as given: a shard that has just moved reads low until its new owner has a full
//! load window, which the trigger band absorbs.
//!
//! [`plan`]: crate::plan
//! [`PlanOptions::max_moves_per_node`]: crate::PlanOptions::max_moves_per_node

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::ids::ShardId;
use crate::planner::{Membership, PlanOptions, plan_inner};
use crate::table::AssignmentTable;

/// When and how far load-aware placement moves shards (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadPolicy {
    /// How many shards above ⌈S/N⌉ a node may hold so that a cold node can take a hot node's
    /// shard without giving one back. The lower bound ⌊S/N⌋ never moves.
    pub slack: u32,
    /// Act only when the busiest node is above this percentage of the reference load; 0 turns
    /// load-aware placement off.
    pub trigger_percent: u32,
    /// Once acting, stop when the busiest node is at or below this percentage of the reference.
    pub goal_percent: u32,
    /// A step must lower the busiest node's load by at least this percentage of the mean node
    /// load, so shards are not swapped for crumbs.
    pub min_gain_percent: u32,
}

impl Default for LoadPolicy {
    /// Slack 1, act above 125 %, stop at 110 %, steps of at least 1 % of the mean.
    fn default() -> Self {
        LoadPolicy {
            slack: 1,
            trigger_percent: 125,
            goal_percent: 110,
            min_gain_percent: 1,
        }
    }
}

impl LoadPolicy {
    /// The policy that never looks at loads: [`plan_with_load`] is then [`plan`](crate::plan).
    pub fn off() -> LoadPolicy {
        LoadPolicy {
            trigger_percent: 0,
            ..LoadPolicy::default()
        }
    }
}

/// [`plan`](crate::plan), then balance by `loads` (shard -> load, e.g. deliveries per second;
/// absent shards count as 0) as the module doc describes. With no loads or a policy that is off,
/// the result is exactly `plan`'s.
pub fn plan_with_load(
    current: &AssignmentTable,
    membership: &Membership,
    options: &PlanOptions,
    policy: &LoadPolicy,
    loads: &BTreeMap<ShardId, u64>,
) -> AssignmentTable {
    if policy.trigger_percent == 0 || loads.values().all(|&l| l == 0) {
        return plan_inner(current, membership, options, None);
    }
    let per_shard: Vec<u64> = (0..current.shards)
        .map(|s| loads.get(&ShardId(s)).copied().unwrap_or(0))
        .collect();
    plan_inner(
        current,
        membership,
        options,
        Some(Loads {
            policy,
            per_shard: &per_shard,
        }),
    )
}

/// The loads and policy the planner carries through one load-aware plan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loads<'a> {
    pub(crate) policy: &'a LoadPolicy,
    /// Indexed by shard.
    pub(crate) per_shard: &'a [u64],
}

impl Loads<'_> {
    pub(crate) fn of(&self, shard: u32) -> u64 {
        self.per_shard.get(shard as usize).copied().unwrap_or(0)
    }
}

/// Count targets that tolerate imbalance up to the slack: each node keeps what it has, clamped
/// to `[min(strict, ⌊S/N⌋) (never below its pins), max(strict, ⌈S/N⌉ + slack)]`, then the
/// total is brought to `shards` by trimming the largest (each trim is one shard given up) or
/// topping up the smallest (filled by shards that need an owner anyway). `strict` are the
/// planner's water-filling targets, which already account for pins.
pub(crate) fn tolerant_targets(
    have: &[u32],
    pinned: &[u32],
    strict: &[u32],
    shards: u32,
    slack: u32,
) -> Vec<u32> {
    let n = have.len().max(1) as u32;
    let (floor, ceil) = (shards / n, shards.div_ceil(n));
    let lower: Vec<u32> = strict
        .iter()
        .zip(pinned)
        .map(|(&w, &p)| w.min(floor).max(p))
        .collect();
    let upper: Vec<u32> = strict
        .iter()
        .map(|&w| w.max(ceil.saturating_add(slack)))
        .collect();
    let mut targets: Vec<u32> = (0..have.len())
        .map(|i| have[i].clamp(lower[i], upper[i]))
        .collect();
    let mut sum: u64 = targets.iter().map(|&t| u64::from(t)).sum();
    let total = u64::from(shards);
    while sum > total {
        // Sum of lower bounds <= sum of strict targets = shards, so someone is above theirs.
        let Some(i) = (0..targets.len())
            .filter(|&i| targets[i] > lower[i])
            .min_by_key(|&i| (Reverse(targets[i]), i))
        else {
            break;
        };
        targets[i] -= 1;
        sum -= 1;
    }
    while sum < total {
        let Some(i) = (0..targets.len())
            .filter(|&i| targets[i] < upper[i])
            .min_by_key(|&i| (targets[i], i))
        else {
            break;
        };
        targets[i] += 1;
        sum += 1;
    }
    targets
}

/// One shard's standing for the balance step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot {
    /// Index of the eligible owner; `None` for a shard the balance step must not touch.
    pub(crate) owner: Option<usize>,
    /// The owner holds the shard's rooms, so moving it is a hand-off (uses budget). False for a
    /// shard just placed fresh, which can be placed elsewhere for free.
    pub(crate) holds: bool,
}

/// A reassignment decided by the balance step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) shard: u32,
    pub(crate) from: usize,
    pub(crate) to: usize,
    /// Whether it needs a hand-off (a [`Move`](crate::Move) from `from`).
    pub(crate) handoff: bool,
}

/// The balance step: from the planned owners (`slots`, indexed by shard; `count` per eligible
/// node including shards it holds that cannot move), the moves that bring the busiest node
/// down, within `budget` (moves left per eligible node).
pub(crate) fn rebalance(
    slots: &mut [Slot],
    count: &mut [u32],
    budget: &mut [usize],
    loads: Loads<'_>,
    shards: u32,
    node_load: &mut [u64],
) -> Vec<Step> {
    let nodes = count.len();
    let mut steps = Vec::new();
    if nodes < 2 {
        return steps;
    }
    let policy = loads.policy;
    let n = nodes as u32;
    let (floor, cap) = (shards / n, shards.div_ceil(n).saturating_add(policy.slack));
    // Counts still catching up (the cap deferred some moves): they go first.
    if count.iter().any(|&c| c < floor) {
        return steps;
    }
    let total: u64 = node_load.iter().sum();
    // Over every shard, movable or not, so that planning again (when this plan's moves are in
    // flight and cannot move) sees the same reference.
    let hottest_shard = loads.per_shard.iter().copied().max().unwrap_or(0);
    // "load > p% of max(mean, hottest shard)", in integers.
    let above = |load: u64, percent: u32| -> bool {
        let l = u128::from(load) * 100;
        let p = u128::from(percent);
        l * u128::from(n) > p * u128::from(total) && l > p * u128::from(hottest_shard)
    };
    let mut movable: Vec<BTreeSet<(u64, u32)>> = vec![BTreeSet::new(); nodes];
    for (s, slot) in slots.iter().enumerate() {
        if let Some(o) = slot.owner {
            movable[o].insert((loads.of(s as u32), s as u32));
        }
    }
    let min_gain = u128::from(total) * u128::from(policy.min_gain_percent);
    let gains_enough = |gain: u64| u128::from(gain) * 100 * u128::from(n) >= min_gain.max(1);

    for round in 0..shards {
        let Some(hot) = (0..nodes).min_by_key(|&i| (Reverse(node_load[i]), i)) else {
            break;
        };
        let percent = if round == 0 {
            policy.trigger_percent
        } else {
            policy.goal_percent
        };
        if !above(node_load[hot], percent) {
            break;
        }
        let bounds = (floor, cap);
        let Some(step) = best_step(slots, &movable, count, budget, node_load, hot, bounds) else {
            break;
        };
        let (new_max, kind) = (step.0, step.1);
        if !gains_enough(node_load[hot] - new_max) {
            break;
        }
        for s in kind.shards() {
            let slot = slots[s.0 as usize];
            let from = slot.owner.unwrap_or(hot);
            let to = if from == hot { s.1 } else { hot };
            let load = loads.of(s.0);
            node_load[from] -= load;
            node_load[to] += load;
            count[from] -= 1;
            count[to] += 1;
            if slot.holds {
                budget[from] -= 1;
                budget[to] -= 1;
            }
            // Moved: not touched again in this plan.
            slots[s.0 as usize].owner = None;
            movable[from].remove(&(load, s.0));
            steps.push(Step {
                shard: s.0,
                from,
                to,
                handoff: slot.holds,
            });
        }
    }
    steps
}

/// How a candidate step ranks, lowest best: the new max of the pair, 0 for a move and 1 for a
/// swap (fewer hand-offs first), then the node, the shard and the other shard.
type Rank = (u64, u8, usize, u32, u32);

/// A candidate step: one shard to a node, or two shards exchanged.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Move { shard: u32, to: usize },
    Swap { shard: u32, other: u32, with: usize },
}

impl Kind {
    /// The shards that change owner, each with the node it goes to when it leaves the hot node.
    fn shards(self) -> Vec<(u32, usize)> {
        match self {
            Kind::Move { shard, to } => vec![(shard, to)],
            Kind::Swap { shard, other, with } => vec![(shard, with), (other, with)],
        }
    }
}

/// The step from `hot` that leaves the busier of the two nodes involved least loaded, if it is
/// below `hot`'s load now; moves before swaps on a tie, then by node and shard. `movable` holds
/// each node's movable shards as (load, shard); `bounds` are the count bounds (floor, cap).
fn best_step(
    slots: &[Slot],
    movable: &[BTreeSet<(u64, u32)>],
    count: &[u32],
    budget: &[usize],
    node_load: &[u64],
    hot: usize,
    (floor, cap): (u32, u32),
) -> Option<(u64, Kind)> {
    let nodes = count.len();
    let cost = |s: u32| usize::from(slots[s as usize].holds);
    let hot_load = node_load[hot];
    let mut best: Option<(Rank, Kind)> = None;
    let mut offer = |key: Rank, kind: Kind| {
        if key.0 < hot_load && best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((key, kind));
        }
    };
    for &(ls, s) in movable[hot].iter().filter(|(l, _)| *l > 0) {
        for j in (0..nodes).filter(|&j| j != hot) {
            let lj = node_load[j];
            if count[hot] > floor
                && count[j] < cap
                && budget[hot] >= cost(s)
                && budget[j] >= cost(s)
            {
                offer(
                    ((hot_load - ls).max(lj + ls), 0, j, s, s),
                    Kind::Move { shard: s, to: j },
                );
            }
            // The best partner gives back about half the gap: look either side of that load.
            let ideal = ls.saturating_sub(hot_load.saturating_sub(lj) / 2);
            let below = movable[j].range(..(ideal, 0)).next_back();
            let above = movable[j].range((ideal, 0)..).next();
            for &(lt, t) in below.into_iter().chain(above) {
                let c = cost(s) + cost(t);
                if lt >= ls || budget[hot] < c || budget[j] < c {
                    continue;
                }
                let d = ls - lt;
                offer(
                    ((hot_load - d).max(lj + d), 1, j, s, t),
                    Kind::Swap {
                        shard: s,
                        other: t,
                        with: j,
                    },
                );
            }
        }
    }
    best.map(|((max, ..), kind)| (max, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerant_targets_keep_counts_within_the_slack_and_add_up() {
        // 11 shards on 3 nodes: floor 3, ceil 4, slack 1 allows 5.
        assert_eq!(
            tolerant_targets(&[5, 3, 3], &[0, 0, 0], &[4, 4, 3], 11, 1),
            vec![5, 3, 3]
        );
        // Nobody goes below the floor, so the largest holder gives up what the others lack.
        assert_eq!(
            tolerant_targets(&[7, 3, 0], &[0, 0, 0], &[4, 4, 3], 11, 1),
            vec![5, 3, 3]
        );
        assert_eq!(
            tolerant_targets(&[6, 3, 2], &[0, 0, 0], &[4, 4, 3], 11, 1),
            vec![5, 3, 3]
        );
        // Without slack the bounds are the planner's own.
        assert_eq!(
            tolerant_targets(&[7, 4, 0], &[0, 0, 0], &[4, 4, 3], 11, 0),
            vec![4, 4, 3]
        );
        // Pins are never trimmed.
        assert_eq!(
            tolerant_targets(&[6, 0, 0], &[6, 0, 0], &[6, 3, 2], 11, 0),
            vec![6, 3, 2]
        );
    }
}
