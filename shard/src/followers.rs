//! Followers: which node keeps a copy of each shard's rooms (replication 2).
//!
//! Once the planner has chosen every shard's owner, it chooses every shard's
//! follower among the eligible nodes (ready, not draining) other than its owner. The rules it
//! keeps are the planner's F1-F7 (see [`crate::planner`]); how it keeps them:
//!
//! 1. **Targets.** Node i may follow at most `S - owned(i)` shards (it cannot follow its own).
//!    Water-filling under those caps gives every node ⌊S/N⌋ and the remainder one more each, to
//!    the nodes whose zone has the fewest roles (owned + followed) so far, then to the nodes
//!    following the most now (fewest changes), then by name. With no pins (hand-offs in flight
//!    piling shards on one node) the caps never bind below ⌈S/N⌉ except where they must (two
//!    nodes and an odd shard count: the node owning more follows fewer).
//! 2. **Keep.** A current follower stays if it is eligible, is not the shard's new owner, is not
//!    in the owner's zone, and its node is not above its target. A node above its target keeps
//!    first the shards owned by nodes that are short of followed shards themselves (those could
//!    not take them over), then the lowest shard ids, and gives up the rest.
//! 3. **Feasible.** A node's *pressure* is its shards still without a follower plus its own free
//!    places. If one node's pressure exceeds all free places, its shards could not all be placed
//!    elsewhere: one kept follower not involving that node is released (rare; one change each).
//!    The same per zone, as far as a kept follower outside the zone exists, so that followers
//!    can be placed across zones.
//! 4. **Place.** The rest is a transport problem from owners to nodes with free places, solved
//!    one shard at a time: an owner of the most pressed zone first, to a node with free places,
//!    in another zone when possible, then one that leaves no other zone short, then the shard's
//!    previous follower, then the node following the fewest of that owner's shards (an owner's
//!    shards are spread over many followers, so that when it fails many nodes each promote a
//!    few within their balance), then the node with the most pressure, then by name. Only nodes
//!    that keep every node's pressure within the places left are chosen, which guarantees the
//!    process never gets stuck. Each owner's shards then go to their receivers in shard order
//!    (previous followers first).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{NodeName, ShardId};
use crate::table::AssignmentTable;

/// Sets `next`'s followers for its (already planned) owners, from `current`'s followers.
/// `eligible` is sorted by name; with fewer than two eligible nodes nothing is set.
pub(crate) fn fill_followers(
    current: &AssignmentTable,
    next: &mut AssignmentTable,
    eligible: &[NodeName],
) {
    let n = eligible.len();
    if n < 2 {
        return;
    }
    let index: BTreeMap<&NodeName, usize> = eligible.iter().zip(0..).collect();
    let zone_of = |node: &NodeName| -> Option<String> {
        next.nodes.get(node).and_then(|info| info.zone.clone())
    };
    let zones: Vec<Option<String>> = eligible.iter().map(zone_of).collect();
    let same_zone = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
    let shards = next.shards;

    // Owners, as groups: eligible owners and (deferred by the move cap) draining ones.
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of_node: BTreeMap<NodeName, usize> = BTreeMap::new();
    let mut group_of_shard: Vec<Option<usize>> = vec![None; shards as usize];
    let mut owned = vec![0u32; n];
    for shard in 0..shards {
        let Some(owner) = next.owner(ShardId(shard)) else {
            continue;
        };
        let g = *group_of_node.entry(owner.clone()).or_insert_with(|| {
            groups.push(Group {
                node: index.get(owner).copied(),
                zone: zone_of(owner),
                supply: 0,
            });
            groups.len() - 1
        });
        group_of_shard[shard as usize] = Some(g);
        if let Some(&i) = index.get(owner) {
            owned[i] += 1;
        }
    }
    let total: u32 = group_of_shard.iter().flatten().count() as u32;
    let mut own_group: Vec<Option<usize>> = vec![None; n];
    for (g, group) in groups.iter().enumerate() {
        if let Some(i) = group.node {
            own_group[i] = Some(g);
        }
    }

    // Keep candidates: current followers still allowed.
    let mut candidates: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut following = vec![0u32; n];
    for shard in 0..shards {
        let Some(g) = group_of_shard[shard as usize] else {
            continue;
        };
        let Some(&i) = current.follower(ShardId(shard)).and_then(|f| index.get(f)) else {
            continue;
        };
        if groups[g].node != Some(i) {
            following[i] += 1;
            if !same_zone(&zones[i], &groups[g].zone) {
                candidates[i].push(shard);
            }
        }
    }
    let have: Vec<u32> = candidates.iter().map(|c| c.len() as u32).collect();
    let targets = targets(&owned, &following, &zones, total);

    // Keep up to the target: the shards of owners that need followers themselves first.
    let needy: Vec<bool> = (0..n).map(|i| have[i] < targets[i]).collect();
    let owner_needy = |shard: u32| {
        group_of_shard[shard as usize]
            .and_then(|g| groups[g].node)
            .is_some_and(|o| needy[o])
    };
    let mut kept: Vec<(u32, usize)> = Vec::new();
    for (i, mut list) in candidates.into_iter().enumerate() {
        list.sort_by_key(|&s| (!owner_needy(s), s));
        list.truncate(targets[i] as usize);
        kept.extend(list.into_iter().map(|s| (s, i)));
    }
    kept.sort_unstable();

    // Free places and shards to place; release kept followers until placing is feasible.
    let mut free: Vec<u32> = targets.clone();
    for &(_, i) in &kept {
        free[i] -= 1;
    }
    let mut followed = vec![false; shards as usize];
    for &(s, _) in &kept {
        followed[s as usize] = true;
    }
    for shard in 0..shards {
        if let Some(g) = group_of_shard[shard as usize].filter(|_| !followed[shard as usize]) {
            groups[g].supply += 1;
        }
    }
    let mut places: u32 = free.iter().sum();
    let pressure = |groups: &[Group], free: &[u32], k: usize| -> u32 {
        own_group[k].map_or(0, |g| groups[g].supply) + free[k]
    };
    while let Some(o) = (0..n).find(|&k| pressure(&groups, &free, k) > places) {
        let victim = kept
            .iter()
            .rposition(|&(s, x)| x != o && group_of_shard[s as usize] != own_group[o]);
        let Some(at) = victim else { break };
        let (s, x) = kept.remove(at);
        if let Some(g) = group_of_shard[s as usize] {
            groups[g].supply += 1;
        }
        free[x] += 1;
        places += 1;
    }
    // The same per zone, as far as it goes: a zone whose shards to place and free places
    // exceed all places left would have to follow some of its own shards.
    let zone_names: BTreeSet<&str> = zones
        .iter()
        .chain(groups.iter().map(|g| &g.zone))
        .flatten()
        .map(String::as_str)
        .collect();
    let zone_ids: BTreeMap<&str, usize> = zone_names.into_iter().zip(0..).collect();
    let zone_id = |z: &Option<String>| z.as_deref().and_then(|z| zone_ids.get(z)).copied();
    let node_zone: Vec<Option<usize>> = zones.iter().map(zone_id).collect();
    let group_zone: Vec<Option<usize>> = groups.iter().map(|g| zone_id(&g.zone)).collect();
    let mut zone_pressure = vec![0u32; zone_ids.len()];
    for (g, group) in groups.iter().enumerate() {
        if let Some(z) = group_zone[g] {
            zone_pressure[z] += group.supply;
        }
    }
    for i in 0..n {
        if let Some(z) = node_zone[i] {
            zone_pressure[z] += free[i];
        }
    }
    while let Some(z) = (0..zone_pressure.len()).find(|&z| zone_pressure[z] > places) {
        let victim = kept.iter().rposition(|&(s, x)| {
            let owner_zone = group_of_shard[s as usize].and_then(|g| group_zone[g]);
            owner_zone != Some(z) && node_zone[x] != Some(z)
        });
        let Some(at) = victim else { break };
        let (s, x) = kept.remove(at);
        if let Some(g) = group_of_shard[s as usize] {
            groups[g].supply += 1;
            if let Some(z) = group_zone[g] {
                zone_pressure[z] += 1;
            }
        }
        free[x] += 1;
        if let Some(z) = node_zone[x] {
            zone_pressure[z] += 1;
        }
        places += 1;
    }
    for &(s, i) in &kept {
        next.set_follower(ShardId(s), Some(eligible[i].clone()));
    }

    // Place the rest, one shard at a time, keeping every node's pressure within the places left.
    let mut previous = Matrix::new(groups.len(), n);
    for shard in 0..shards {
        let (Some(g), Some(&i)) = (
            group_of_shard[shard as usize],
            current.follower(ShardId(shard)).and_then(|f| index.get(f)),
        ) else {
            continue;
        };
        if next.follower(ShardId(shard)).is_none() {
            *previous.at(g, i) += 1;
        }
    }
    let mut sent = Matrix::new(groups.len(), n);
    // How many of each owner's shards each node follows, kept ones included: an owner's shards
    // are spread over many followers, so that when it fails each promotes a few.
    let mut spread = Matrix::new(groups.len(), n);
    for &(s, i) in &kept {
        if let Some(g) = group_of_shard[s as usize] {
            *spread.at(g, i) += 1;
        }
    }
    while places > 0 {
        // Any owner with shards left keeps the process feasible; the most pressed zone first.
        let Some(o) = (0..groups.len())
            .filter(|&g| groups[g].supply > 0)
            .max_by_key(|&g| {
                let zone = group_zone[g].map_or(0, |z| zone_pressure[z]);
                let pressure = groups[g].supply + groups[g].node.map_or(0, |i| free[i]);
                (zone, pressure, Reverse(g))
            })
        else {
            break;
        };
        let tight: Vec<usize> = (0..n)
            .filter(|&k| pressure(&groups, &free, k) >= places)
            .collect();
        let tight_zones: Vec<usize> = (0..zone_pressure.len())
            .filter(|&z| zone_pressure[z] >= places)
            .collect();
        let receiver = (0..n)
            .filter(|&i| free[i] > 0 && groups[o].node != Some(i))
            .filter(|&i| tight.iter().all(|&k| k == i || groups[o].node == Some(k)))
            .min_by_key(|&i| {
                let zone_left_behind = tight_zones
                    .iter()
                    .any(|&z| Some(z) != node_zone[i] && Some(z) != group_zone[o]);
                (
                    same_zone(&zones[i], &groups[o].zone),
                    zone_left_behind,
                    previous.get(o, i) == 0,
                    spread.get(o, i),
                    Reverse(pressure(&groups, &free, i)),
                    i,
                )
            });
        let Some(i) = receiver else { break };
        groups[o].supply -= 1;
        free[i] -= 1;
        places -= 1;
        for z in [group_zone[o], node_zone[i]].into_iter().flatten() {
            zone_pressure[z] -= 1;
        }
        let p = previous.at(o, i);
        *p = p.saturating_sub(1);
        *sent.at(o, i) += 1;
        *spread.at(o, i) += 1;
    }

    // Each owner's shards to its receivers: previous followers first, then in shard order.
    let mut cursor = vec![0usize; groups.len()];
    for pass in [true, false] {
        for shard in 0..shards {
            let Some(g) = group_of_shard[shard as usize] else {
                continue;
            };
            if next.follower(ShardId(shard)).is_some() {
                continue;
            }
            let choice = if pass {
                current
                    .follower(ShardId(shard))
                    .and_then(|f| index.get(f))
                    .copied()
                    .filter(|&i| sent.get(g, i) > 0)
            } else {
                while cursor[g] < n && sent.get(g, cursor[g]) == 0 {
                    cursor[g] += 1;
                }
                Some(cursor[g]).filter(|&i| i < n)
            };
            if let Some(i) = choice {
                *sent.at(g, i) -= 1;
                next.set_follower(ShardId(shard), Some(eligible[i].clone()));
            }
        }
    }
}

/// Counts per (owner group, eligible node), dense: both are bounded by the membership.
struct Matrix {
    cols: usize,
    cells: Vec<u32>,
}

impl Matrix {
    fn new(rows: usize, cols: usize) -> Matrix {
        Matrix {
            cols,
            cells: vec![0; rows * cols],
        }
    }

    fn get(&self, row: usize, col: usize) -> u32 {
        self.cells[row * self.cols + col]
    }

    fn at(&mut self, row: usize, col: usize) -> &mut u32 {
        &mut self.cells[row * self.cols + col]
    }
}

/// The nodes owning shards, as sources of shards to follow.
struct Group {
    /// The owner's index among the eligible nodes; `None` for a draining owner (the move cap
    /// left it a shard), which any eligible node may follow.
    node: Option<usize>,
    zone: Option<String>,
    /// Its shards still without a follower.
    supply: u32,
}

/// How many shards each eligible node should follow: at most `total - owned[i]`, otherwise
/// ⌊total/N⌋ or one more (see the module doc for who gets the one more).
fn targets(owned: &[u32], have: &[u32], zones: &[Option<String>], total: u32) -> Vec<u32> {
    let n = owned.len();
    let caps: Vec<u32> = owned.iter().map(|&o| total.saturating_sub(o)).collect();
    let filled = |c: u32| -> u64 { caps.iter().map(|&cap| u64::from(cap.min(c))).sum() };
    let (mut lo, mut hi) = (0u32, total);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if filled(mid) <= u64::from(total) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let level = lo;
    let mut targets: Vec<u32> = caps.iter().map(|&cap| cap.min(level)).collect();
    let mut left_over = u64::from(total).saturating_sub(filled(level));
    // Roles already in each zone (owned + followed); nodes without a zone are apart (0).
    let mut zone_roles: BTreeMap<&str, u32> = BTreeMap::new();
    for i in 0..n {
        if let Some(z) = zones[i].as_deref() {
            *zone_roles.entry(z).or_insert(0) += targets[i] + owned[i];
        }
    }
    let roles_of = |zone_roles: &BTreeMap<&str, u32>, i: usize| -> u32 {
        zones[i]
            .as_deref()
            .and_then(|z| zone_roles.get(z))
            .copied()
            .unwrap_or(0)
    };
    while left_over > 0 {
        let Some(i) = (0..n)
            .filter(|&i| targets[i] == level && caps[i] > level)
            .min_by_key(|&i| (roles_of(&zone_roles, i), &zones[i], Reverse(have[i]), i))
        else {
            break;
        };
        targets[i] += 1;
        if let Some(z) = zones[i].as_deref() {
            *zone_roles.entry(z).or_insert(0) += 1;
        }
        left_over -= 1;
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_floor_or_ceil_and_go_to_the_nodes_following_most() {
        let none = vec![None; 3];
        assert_eq!(targets(&[4, 3, 3], &[0, 0, 0], &none, 10), vec![4, 3, 3]);
        assert_eq!(targets(&[4, 3, 3], &[0, 5, 0], &none, 10), vec![3, 4, 3]);
    }

    #[test]
    fn with_two_nodes_the_node_owning_more_follows_fewer() {
        let none = vec![None; 2];
        assert_eq!(targets(&[2, 1], &[2, 0], &none, 3), vec![1, 2]);
    }

    #[test]
    fn the_extra_follows_go_to_the_zone_with_fewer_roles() {
        let zones = vec![Some("a".to_string()), Some("b".to_string())];
        // Zone a owns 3 of 5 shards: zone b must follow them, zone a follows the other 2.
        assert_eq!(targets(&[3, 2], &[0, 0], &zones, 5), vec![2, 3]);
    }
}
