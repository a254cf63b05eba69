//! Followers: which node keeps a copy of each shard's rooms (replication 2).
//!
//! Once the planner has chosen every shard's owner, it chooses every shard's
//! follower among the eligible nodes (ready, not draining) other than its owner. The rules it
//! keeps are the planner's F1-F7 (see [`crate::planner`]); how it keeps them:
//!
//! 1. **Targets.** Node i may follow at most `S - owned(i)` shards (it cannot follow its own).
//!    Water-filling under those caps gives every node ⌊S/N⌋ and the remainder one more each, to
//!    the nodes whose zone has the fewest roles (owned + followed) so far, then to the nodes
//!    following the most now (fewest changes), then to those owning the fewest shards that need
//!    a new follower (they cannot follow those themselves), then by name. With no pins
//!    (hand-offs in flight piling shards on one node) the caps never bind below ⌈S/N⌉ except
//!    where they must (two nodes and an odd shard count: the node owning more follows fewer).
//! 2. **Keep.** The current follower of a shard with a move in flight stays if it is eligible
//!    and not the shard's new owner, and its node's target rises to cover such pins. Any other
//!    current follower stays if it is eligible, is not the shard's new owner, is not
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
    if eligible.len() < 2 {
        return;
    }
    let mut ledger = Ledger::new(next, eligible);
    let previous: Vec<Option<usize>> = (0..next.shards)
        .map(|s| {
            current
                .follower(ShardId(s))
                .and_then(|f| ledger.index.get(f))
                .copied()
        })
        .collect();
    let moving: BTreeSet<u32> = next.moves.iter().map(|m| m.shard.0).collect();
    let mut kept = ledger.keep(&previous, &moving);
    ledger.make_feasible(&mut kept, &moving);
    for &(s, i) in &kept {
        next.set_follower(ShardId(s), Some(eligible[i].clone()));
    }
    let mut sent = ledger.transport(&kept, &previous);

    // Each owner's shards to its receivers: previous followers first, then in shard order.
    let n = eligible.len();
    let mut cursor = vec![0usize; ledger.groups.len()];
    for previous_first in [true, false] {
        for shard in 0..next.shards {
            let Some(g) = ledger.group_of_shard[shard as usize] else {
                continue;
            };
            if next.follower(ShardId(shard)).is_some() {
                continue;
            }
            let choice = if previous_first {
                previous[shard as usize].filter(|&i| sent.get(g, i) > 0)
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

/// The state of one follower placement: owners as groups, and for every node and zone what is
/// still to place. Nodes are indices into the eligible list, zones indices into the zones seen.
struct Ledger<'a> {
    index: BTreeMap<&'a NodeName, usize>,
    /// Owners: eligible ones and (deferred by the move cap) draining ones.
    groups: Vec<Group>,
    group_of_shard: Vec<Option<usize>>,
    /// The group of each eligible node's own shards.
    own_group: Vec<Option<usize>>,
    /// Shards owned by each eligible node.
    owned: Vec<u32>,
    /// Each eligible node's zone.
    node_zone: Vec<Option<usize>>,
    /// Places each node still has (target minus what it follows).
    free: Vec<u32>,
    /// Free places in all.
    places: u32,
    /// Per zone: its owners' shards to place plus its nodes' free places.
    zone_pressure: Vec<u32>,
}

impl<'a> Ledger<'a> {
    fn new(next: &AssignmentTable, eligible: &'a [NodeName]) -> Ledger<'a> {
        let n = eligible.len();
        let index: BTreeMap<&NodeName, usize> = eligible.iter().zip(0..).collect();
        let zone_of = |node: &NodeName| next.nodes.get(node).and_then(|i| i.zone.as_deref());
        let zone_ids: BTreeMap<&str, usize> = next
            .nodes
            .values()
            .filter_map(|i| i.zone.as_deref())
            .collect::<BTreeSet<&str>>()
            .into_iter()
            .zip(0..)
            .collect();
        let zone_id = |node: &NodeName| zone_of(node).and_then(|z| zone_ids.get(z)).copied();
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of_node: BTreeMap<&NodeName, usize> = BTreeMap::new();
        let mut group_of_shard: Vec<Option<usize>> = vec![None; next.shards as usize];
        let mut own_group: Vec<Option<usize>> = vec![None; n];
        let mut owned = vec![0u32; n];
        for (shard, owner) in next.owners().iter().enumerate() {
            let Some(owner) = owner else { continue };
            let g = *group_of_node.entry(owner).or_insert_with(|| {
                groups.push(Group {
                    node: index.get(owner).copied(),
                    zone: zone_id(owner),
                    supply: 0,
                });
                groups.len() - 1
            });
            group_of_shard[shard] = Some(g);
            if let Some(&i) = index.get(owner) {
                owned[i] += 1;
                own_group[i] = Some(g);
            }
        }
        Ledger {
            node_zone: eligible.iter().map(zone_id).collect(),
            zone_pressure: vec![0; zone_ids.len()],
            index,
            groups,
            group_of_shard,
            own_group,
            owned,
            free: vec![0; n],
            places: 0,
        }
    }

    /// Whether followers in `a` and owners in `b` share a zone (unknown zones share none).
    fn same_zone(a: Option<usize>, b: Option<usize>) -> bool {
        a.is_some() && a == b
    }

    /// Targets, then the current followers that stay (rule 2 of the module doc), as
    /// (shard, node) in shard order; sets free places and shards to place accordingly.
    fn keep(&mut self, previous: &[Option<usize>], moving: &BTreeSet<u32>) -> Vec<(u32, usize)> {
        let n = self.free.len();
        let mut candidates: Vec<Vec<u32>> = vec![Vec::new(); n];
        // Followers of moving shards: kept whatever the targets say (F4).
        let mut pinned: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut following = vec![0u32; n];
        for (shard, (&g, &i)) in self.group_of_shard.iter().zip(previous).enumerate() {
            let (Some(g), Some(i)) = (g, i) else { continue };
            if self.groups[g].node != Some(i) {
                following[i] += 1;
                if moving.contains(&(shard as u32)) {
                    pinned[i].push(shard as u32);
                } else if !Ledger::same_zone(self.node_zone[i], self.groups[g].zone) {
                    candidates[i].push(shard as u32);
                }
            }
        }
        let total = self.group_of_shard.iter().flatten().count() as u32;
        // Each node's own shards that no current follower can keep: a node owning some is a
        // poor choice for one follow more, as it cannot take them itself.
        let mut keepable = vec![false; self.group_of_shard.len()];
        for &s in candidates.iter().flatten() {
            keepable[s as usize] = true;
        }
        let mut waiting = vec![0u32; n];
        for (shard, g) in self.group_of_shard.iter().enumerate() {
            if let Some(o) = g.and_then(|g| self.groups[g].node)
                && !keepable[shard]
            {
                waiting[o] += 1;
            }
        }
        let pins: Vec<u32> = pinned.iter().map(|p| p.len() as u32).collect();
        let targets = targets(
            &self.owned,
            &following,
            &waiting,
            &self.node_zone,
            total,
            &pins,
        );
        // Keep up to the target: the shards of owners short of followed shards first.
        let needy: Vec<bool> = (0..n)
            .map(|i| candidates[i].len() < targets[i] as usize)
            .collect();
        let owner_needy = |shard: u32| {
            self.group_of_shard[shard as usize]
                .and_then(|g| self.groups[g].node)
                .is_some_and(|o| needy[o])
        };
        let mut kept: Vec<(u32, usize)> = Vec::new();
        for (i, mut list) in candidates.into_iter().enumerate() {
            list.sort_by_key(|&s| (!owner_needy(s), s));
            list.truncate((targets[i] as usize).saturating_sub(pinned[i].len()));
            kept.extend(pinned[i].iter().map(|&s| (s, i)));
            kept.extend(list.into_iter().map(|s| (s, i)));
        }
        kept.sort_unstable();

        self.free = targets;
        let mut followed = vec![false; self.group_of_shard.len()];
        for &(s, i) in &kept {
            self.free[i] -= 1;
            followed[s as usize] = true;
        }
        for (shard, g) in self.group_of_shard.iter().enumerate() {
            if let Some(g) = g.filter(|_| !followed[shard]) {
                self.groups[g].supply += 1;
            }
        }
        self.places = self.free.iter().sum();
        for group in &self.groups {
            if let Some(z) = group.zone {
                self.zone_pressure[z] += group.supply;
            }
        }
        for (i, zone) in self.node_zone.iter().enumerate() {
            if let Some(z) = zone {
                self.zone_pressure[*z] += self.free[i];
            }
        }
        kept
    }

    /// A node's shards to place plus its free places.
    fn pressure(&self, k: usize) -> u32 {
        self.own_group[k].map_or(0, |g| self.groups[g].supply) + self.free[k]
    }

    fn owner_zone(&self, shard: u32) -> Option<usize> {
        self.group_of_shard[shard as usize].and_then(|g| self.groups[g].zone)
    }

    /// Releases kept followers until every node's pressure, then as far as possible every zone's,
    /// is within the places left (rule 3 of the module doc).
    fn make_feasible(&mut self, kept: &mut Vec<(u32, usize)>, moving: &BTreeSet<u32>) {
        let n = self.free.len();
        // Followers of moving shards are released last: a shard with no follower at all is
        // worse than a moving shard whose copy changes node.
        let last = |kept: &[(u32, usize)], fits: &dyn Fn(u32, usize) -> bool| {
            kept.iter()
                .rposition(|&(s, x)| fits(s, x) && !moving.contains(&s))
                .or_else(|| kept.iter().rposition(|&(s, x)| fits(s, x)))
        };
        while let Some(o) = (0..n).find(|&k| self.pressure(k) > self.places) {
            let fits =
                |s: u32, x: usize| x != o && self.group_of_shard[s as usize] != self.own_group[o];
            let Some(at) = last(kept, &fits) else { break };
            let (s, x) = kept.remove(at);
            self.release(s, x);
        }
        while let Some(z) =
            (0..self.zone_pressure.len()).find(|&z| self.zone_pressure[z] > self.places)
        {
            // Zones are best effort while a shard moves: its follower is not released for them.
            let fits = |s: u32, x: usize| {
                self.owner_zone(s) != Some(z)
                    && self.node_zone[x] != Some(z)
                    && !moving.contains(&s)
            };
            let Some(at) = kept.iter().rposition(|&(s, x)| fits(s, x)) else {
                break;
            };
            let (s, x) = kept.remove(at);
            self.release(s, x);
        }
    }

    /// Shard `s` no longer followed by node `x`: one more shard to place and one more place.
    fn release(&mut self, s: u32, x: usize) {
        if let Some(g) = self.group_of_shard[s as usize] {
            self.groups[g].supply += 1;
            if let Some(z) = self.groups[g].zone {
                self.zone_pressure[z] += 1;
            }
        }
        self.free[x] += 1;
        if let Some(z) = self.node_zone[x] {
            self.zone_pressure[z] += 1;
        }
        self.places += 1;
    }

    /// How many shards of each owner group go to each node (rule 4 of the module doc).
    fn transport(&mut self, kept: &[(u32, usize)], previous: &[Option<usize>]) -> Matrix {
        let (n, owners) = (self.free.len(), self.groups.len());
        // Unplaced shards per (owner, previous follower).
        let mut was = Matrix::new(owners, n);
        let kept_shards: BTreeSet<u32> = kept.iter().map(|&(s, _)| s).collect();
        for (shard, (&g, &i)) in self.group_of_shard.iter().zip(previous).enumerate() {
            if let (Some(g), Some(i)) = (g, i)
                && !kept_shards.contains(&(shard as u32))
            {
                *was.at(g, i) += 1;
            }
        }
        // How many of each owner's shards each node follows, kept ones included.
        let mut spread = Matrix::new(owners, n);
        for &(s, i) in kept {
            if let Some(g) = self.group_of_shard[s as usize] {
                *spread.at(g, i) += 1;
            }
        }
        let mut sent = Matrix::new(owners, n);
        while self.places > 0 {
            // Any owner with shards left keeps the process feasible; the most pressed zone first.
            let Some(o) = (0..owners)
                .filter(|&g| self.groups[g].supply > 0)
                .max_by_key(|&g| {
                    let group = &self.groups[g];
                    let zone = group.zone.map_or(0, |z| self.zone_pressure[z]);
                    let pressure = group.supply + group.node.map_or(0, |i| self.free[i]);
                    (zone, pressure, Reverse(g))
                })
            else {
                break;
            };
            let Some(i) = self.receiver(o, &was, &spread) else {
                break;
            };
            self.groups[o].supply -= 1;
            self.free[i] -= 1;
            self.places -= 1;
            for z in [self.groups[o].zone, self.node_zone[i]]
                .into_iter()
                .flatten()
            {
                self.zone_pressure[z] -= 1;
            }
            let w = was.at(o, i);
            *w = w.saturating_sub(1);
            *sent.at(o, i) += 1;
            *spread.at(o, i) += 1;
        }
        sent
    }

    /// The node that follows one more shard of owner group `o`: one that keeps every node's
    /// pressure within the places left, preferring what rule 4 of the module doc says.
    fn receiver(&self, o: usize, was: &Matrix, spread: &Matrix) -> Option<usize> {
        let n = self.free.len();
        let owner = &self.groups[o];
        let tight: Vec<usize> = (0..n)
            .filter(|&k| self.pressure(k) >= self.places)
            .collect();
        let tight_zones: Vec<usize> = (0..self.zone_pressure.len())
            .filter(|&z| self.zone_pressure[z] >= self.places)
            .collect();
        (0..n)
            .filter(|&i| self.free[i] > 0 && owner.node != Some(i))
            .filter(|&i| tight.iter().all(|&k| k == i || owner.node == Some(k)))
            .min_by_key(|&i| {
                let zone_left_behind = tight_zones
                    .iter()
                    .any(|&z| Some(z) != self.node_zone[i] && Some(z) != owner.zone);
                (
                    Ledger::same_zone(self.node_zone[i], owner.zone),
                    zone_left_behind,
                    was.get(o, i) == 0,
                    spread.get(o, i),
                    Reverse(self.pressure(i)),
                    i,
                )
            })
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
    zone: Option<usize>,
    /// Its shards still without a follower.
    supply: u32,
}

/// How many shards each eligible node should follow: at most `total - owned[i]`, otherwise
/// ⌊total/N⌋ or one more (see the module doc for who gets the one more), and never fewer than
/// its `pins` (followers of moving shards, kept whatever the balance). `waiting` counts each
/// node's own shards that need a new follower.
fn targets(
    owned: &[u32],
    have: &[u32],
    waiting: &[u32],
    zones: &[Option<usize>],
    total: u32,
    pins: &[u32],
) -> Vec<u32> {
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
    // A node whose pins reach above the level takes them instead of its share (and no one
    // more): the others share what is left as before, so planning again gives the same.
    let mut targets: Vec<u32> = caps
        .iter()
        .zip(pins)
        .map(|(&cap, &pinned)| cap.min(level).max(pinned))
        .collect();
    let mut left_over =
        u64::from(total).saturating_sub(targets.iter().map(|&t| u64::from(t)).sum());
    // Roles already in each zone (owned + followed); nodes without a zone are apart (0).
    let mut zone_roles: BTreeMap<usize, u32> = BTreeMap::new();
    for i in 0..n {
        if let Some(z) = zones[i] {
            *zone_roles.entry(z).or_insert(0) += targets[i] + owned[i];
        }
    }
    let roles_of = |zone_roles: &BTreeMap<usize, u32>, i: usize| -> u32 {
        zones[i]
            .and_then(|z| zone_roles.get(&z))
            .copied()
            .unwrap_or(0)
    };
    while left_over > 0 {
        let Some(i) = (0..n)
            .filter(|&i| targets[i] == level && caps[i] > level && pins[i] <= level)
            .min_by_key(|&i| {
                (
                    roles_of(&zone_roles, i),
                    &zones[i],
                    Reverse(have[i]),
                    waiting[i],
                    i,
                )
            })
        else {
            break;
        };
        targets[i] += 1;
        if let Some(z) = zones[i] {
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
        let zero = [0, 0, 0];
        assert_eq!(
            targets(&[4, 3, 3], &zero, &zero, &none, 10, &zero),
            vec![4, 3, 3]
        );
        assert_eq!(
            targets(&[4, 3, 3], &[0, 5, 0], &zero, &none, 10, &zero),
            vec![3, 4, 3]
        );
    }

    #[test]
    fn with_two_nodes_the_node_owning_more_follows_fewer() {
        let none = vec![None; 2];
        assert_eq!(
            targets(&[2, 1], &[2, 0], &[0, 0], &none, 3, &[0, 0]),
            vec![1, 2]
        );
    }

    #[test]
    fn the_extra_follows_go_to_the_zone_with_fewer_roles() {
        let zones = vec![Some(0), Some(1)];
        // Zone a owns 3 of 5 shards: zone b must follow them, zone a follows the other 2.
        assert_eq!(
            targets(&[3, 2], &[0, 0], &[0, 0], &zones, 5, &[0, 0]),
            vec![2, 3]
        );
    }
}
