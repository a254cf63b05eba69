//! The assignment table: which node owns each shard and which node follows it (keeps a copy of
//! its rooms), which hand-offs are in flight, and which nodes are draining, versioned by an epoch.
//!
//! The table is the one piece of shared truth between the operator (which writes it) and the nodes
//! (which route by it). Nodes apply tables in epoch order and ignore older ones, so the epoch grows
//! by exactly one with each change. A move `A -> B` for a shard means B already owns it in the
//! table, while A is still handing its rooms over.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ShardError;
use crate::format::MAX_SHARDS;
use crate::hash;
use crate::ids::{NodeName, RoomId, ShardId};

/// How to reach a node, as published in the table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    /// `host:port` of the node's internal listener (peer links and `/status`). Nodes dial each
    /// other here to forward room operations and hand shards off.
    pub peer_addr: String,
    /// `host:port` clients use to reach this node directly; informational (clients normally come
    /// through a Service), so it may be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    /// The failure zone the node runs in (the pod's `topology.kubernetes.io/zone` label), so the
    /// planner can put a shard's follower in another zone than its owner. `None` when unknown: such
    /// a node is treated as being in no zone in particular.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The epoch of the table that made the node a member this time (the planner sets it). A
    /// node that finds it changed between two tables it applied was out of the cluster in
    /// between (a pause, a partition from the operator) and the others forgot its members.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub member_since: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl NodeInfo {
    /// A node reachable by peers at `peer_addr`, with no client address published.
    pub fn new(peer_addr: impl Into<String>) -> NodeInfo {
        NodeInfo {
            peer_addr: peer_addr.into(),
            client_addr: None,
            zone: None,
            member_since: 0,
        }
    }

    /// The same node, published as running in `zone`.
    pub fn in_zone(self, zone: impl Into<String>) -> NodeInfo {
        NodeInfo {
            zone: Some(zone.into()),
            ..self
        }
    }
}

/// A hand-off in flight: `to` already owns `shard` in the table, `from` is still sending it the
/// shard's rooms. The operator clears it when the hand-off is reported done.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Move {
    /// The shard being handed off.
    pub shard: ShardId,
    /// The previous owner, which holds the rooms' state until the hand-off is done.
    pub from: NodeName,
    /// The new owner, which buffers the shard's messages until the state arrives.
    pub to: NodeName,
}

/// Shard -> owner and shard -> follower for every shard, plus the moves in flight and the draining
/// nodes.
///
/// A shard's *follower* keeps a live copy of the shard's rooms (replication 2), so that when the
/// owner fails the follower can take over with every acknowledged message. With replication 1
/// no shard has one.
///
/// Owners and followers are private so that the table always has exactly `shards` entries of
/// each; read them through [`owner`](Self::owner), [`follower`](Self::follower) and friends. Tables from outside are checked by
/// [`validate`](Self::validate) (which [`from_json`](Self::from_json) calls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentTable {
    /// Version of the table; grows by exactly 1 with each change so nodes can ignore stale ones.
    pub epoch: u64,
    /// The shard count S (>= 1). Fixed for the life of a cluster: changing it would move rooms.
    pub shards: u32,
    /// Index = shard; `None` when no node is eligible to own it.
    owners: Vec<Option<NodeName>>,
    /// Index = shard; `None` when the shard has no follower (replication 1, fewer than two
    /// eligible nodes, or no owner).
    followers: Vec<Option<NodeName>>,
    /// The members that appear in the table (ready ones, draining included), with their addresses.
    pub nodes: BTreeMap<NodeName, NodeInfo>,
    /// Moves in flight, sorted by shard, at most one per shard.
    pub moves: Vec<Move>,
    /// Nodes being emptied before they are stopped; they own nothing once their moves are planned.
    pub draining: BTreeSet<NodeName>,
}

impl AssignmentTable {
    /// A table at epoch 0 with `shards` shards, no owners and no nodes. The shard count is clamped
    /// to `1..=MAX_SHARDS` so the table is always usable and its size bounded.
    pub fn empty(shards: u32) -> AssignmentTable {
        let shards = shards.clamp(1, MAX_SHARDS);
        AssignmentTable {
            epoch: 0,
            shards,
            owners: vec![None; shards as usize],
            followers: vec![None; shards as usize],
            nodes: BTreeMap::new(),
            moves: Vec::new(),
            draining: BTreeSet::new(),
        }
    }

    /// A table at epoch 0 with one shard per entry of `owners`, the given `nodes`, no moves and
    /// nothing draining. Set the public fields afterwards for the rest.
    ///
    /// # Errors
    ///
    /// [`ShardError::ZeroShards`] when `owners` is empty or longer than `u32::MAX`, and
    /// [`ShardError::UnknownNode`] when an owner is not in `nodes`.
    pub fn with_owners(
        owners: Vec<Option<NodeName>>,
        nodes: BTreeMap<NodeName, NodeInfo>,
    ) -> Result<AssignmentTable, ShardError> {
        let followers = vec![None; owners.len()];
        AssignmentTable::with_roles(owners, followers, nodes)
    }

    /// [`with_owners`](Self::with_owners), with a follower per shard as well (`followers` is
    /// indexed by shard like `owners`).
    ///
    /// # Errors
    ///
    /// As [`with_owners`](Self::with_owners), plus whatever [`validate`](Self::validate) finds
    /// wrong with the followers (a different length than `owners`, a follower that is its shard's
    /// owner, is not in `nodes`, or follows an unowned shard).
    pub fn with_roles(
        owners: Vec<Option<NodeName>>,
        followers: Vec<Option<NodeName>>,
        nodes: BTreeMap<NodeName, NodeInfo>,
    ) -> Result<AssignmentTable, ShardError> {
        let shards = u32::try_from(owners.len()).map_err(|_| ShardError::ZeroShards)?;
        let table = AssignmentTable {
            epoch: 0,
            shards,
            owners,
            followers,
            nodes,
            moves: Vec::new(),
            draining: BTreeSet::new(),
        };
        table.validate()?;
        Ok(table)
    }

    /// The owner of `shard`, or `None` when it is unassigned or out of range.
    pub fn owner(&self, shard: ShardId) -> Option<&NodeName> {
        self.owners.get(shard.0 as usize).and_then(Option::as_ref)
    }

    /// Every shard's owner, indexed by shard.
    pub fn owners(&self) -> &[Option<NodeName>] {
        &self.owners
    }

    /// The follower of `shard` (the node keeping a copy of its rooms), or `None` when it has
    /// none or is out of range.
    pub fn follower(&self, shard: ShardId) -> Option<&NodeName> {
        self.followers
            .get(shard.0 as usize)
            .and_then(Option::as_ref)
    }

    /// Every shard's follower, indexed by shard.
    pub fn followers(&self) -> &[Option<NodeName>] {
        &self.followers
    }

    /// The shards `node` follows, ascending.
    pub fn followed_by(&self, node: &NodeName) -> Vec<ShardId> {
        self.followers
            .iter()
            .enumerate()
            .filter(|(_, follower)| follower.as_ref() == Some(node))
            .map(|(shard, _)| ShardId(shard as u32))
            .collect()
    }

    /// Owned shards whose rooms this table keeps on one node only: those without a follower,
    /// and those whose follower is also the source of their hand-off in flight (until the
    /// target has installed the rooms, that node holds both the frozen rooms and the copy).
    /// A `Replicated` cluster has none.
    pub fn single_copy_shards(&self) -> Vec<ShardId> {
        (0..self.shards)
            .map(ShardId)
            .filter(|&s| self.owner(s).is_some())
            .filter(|&s| match self.follower(s) {
                None => true,
                Some(f) => self.move_of(s).is_some_and(|m| m.from == *f),
            })
            .collect()
    }

    /// Followed shards per node, for status summaries. Nodes following nothing are absent.
    pub fn follower_counts(&self) -> BTreeMap<NodeName, u32> {
        let mut counts = BTreeMap::new();
        for follower in self.followers.iter().flatten() {
            *counts.entry(follower.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// The shard `room` lives in under this table's shard count.
    pub fn shard_of(&self, room: &RoomId) -> ShardId {
        hash::shard_of(room, self.shards)
    }

    /// The node that owns `room`'s shard, which is where the room's actor runs.
    pub fn owner_of_room(&self, room: &RoomId) -> Option<&NodeName> {
        self.owner(self.shard_of(room))
    }

    /// The shards `node` owns, ascending.
    pub fn shards_of(&self, node: &NodeName) -> Vec<ShardId> {
        self.owners
            .iter()
            .enumerate()
            .filter(|(_, owner)| owner.as_ref() == Some(node))
            .map(|(shard, _)| ShardId(shard as u32))
            .collect()
    }

    /// Shards per owning node, for status summaries. Nodes owning nothing are absent.
    pub fn counts(&self) -> BTreeMap<NodeName, u32> {
        let mut counts = BTreeMap::new();
        for owner in self.owners.iter().flatten() {
            *counts.entry(owner.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// The move in flight for `shard`, if any.
    pub fn move_of(&self, shard: ShardId) -> Option<&Move> {
        self.moves
            .binary_search_by_key(&shard, |m| m.shard)
            .ok()
            .and_then(|i| self.moves.get(i))
    }

    /// This table as a node reads it that must not hold `shards`: each of them that `node`
    /// owns is left with no owner, no follower and no move, so the node routes its rooms
    /// nowhere (`room_unavailable`) rather than serving them, and a move of one of them from
    /// `node` is left out, so the node sends nothing for it. A node restarted in place uses it
    /// for the shards its predecessor owned or was handing off (their rooms died with it; the
    /// followers hold the copies).
    #[must_use]
    pub fn disowned(&self, node: &NodeName, shards: &BTreeSet<ShardId>) -> AssignmentTable {
        let mut table = self.clone();
        for &shard in shards {
            if table.owner(shard) == Some(node) {
                table.set_owner(shard, None);
                table.set_follower(shard, None);
                table.moves.retain(|m| m.shard != shard);
            } else {
                table.moves.retain(|m| m.shard != shard || m.from != *node);
            }
        }
        table
    }

    /// Sets the owner of `shard` (ignored when out of range). Crate-internal: the planner is the
    /// only writer, and it keeps the table consistent.
    pub(crate) fn set_owner(&mut self, shard: ShardId, owner: Option<NodeName>) {
        if let Some(slot) = self.owners.get_mut(shard.0 as usize) {
            *slot = owner;
        }
    }

    /// Sets the follower of `shard` (ignored when out of range). Crate-internal like
    /// [`set_owner`](Self::set_owner).
    pub(crate) fn set_follower(&mut self, shard: ShardId, follower: Option<NodeName>) {
        if let Some(slot) = self.followers.get_mut(shard.0 as usize) {
            *slot = follower;
        }
    }

    /// Checks the invariants every table must satisfy: at least one shard, one owner slot and
    /// one follower slot per shard, owners and move endpoints and draining nodes listed in
    /// `nodes`, moves sorted by shard with at most one per shard, each going to the shard's owner
    /// from another node; a follower only for an owned shard, never its owner, listed in `nodes`
    /// and not draining.
    ///
    /// # Errors
    ///
    /// The first violation found, as a [`ShardError`] naming the shard or node.
    pub fn validate(&self) -> Result<(), ShardError> {
        if self.shards == 0 {
            return Err(ShardError::ZeroShards);
        }
        if self.shards > MAX_SHARDS {
            return Err(ShardError::Inconsistent(format!(
                "the shard count {} is above the maximum of {MAX_SHARDS}",
                self.shards
            )));
        }
        if self.owners.len() != self.shards as usize {
            return Err(ShardError::Inconsistent(format!(
                "the table has {} owner slots for {} shards",
                self.owners.len(),
                self.shards
            )));
        }
        for owner in self.owners.iter().flatten() {
            self.require_node("owner", owner)?;
        }
        self.validate_followers()?;
        for node in &self.draining {
            self.require_node("draining node", node)?;
        }
        let mut previous: Option<ShardId> = None;
        for m in &self.moves {
            if m.shard.0 >= self.shards {
                return Err(ShardError::ShardOutOfRange {
                    shard: u64::from(m.shard.0),
                    shards: self.shards,
                });
            }
            if previous.is_some_and(|p| p >= m.shard) {
                return Err(ShardError::Inconsistent(format!(
                    "moves are not sorted by shard or shard {} has more than one move",
                    m.shard
                )));
            }
            previous = Some(m.shard);
            self.require_node("move source", &m.from)?;
            self.require_node("move target", &m.to)?;
            if m.from == m.to {
                return Err(ShardError::Inconsistent(format!(
                    "shard {} moves from {} to itself",
                    m.shard, m.from
                )));
            }
            if self.owner(m.shard) != Some(&m.to) {
                return Err(ShardError::Inconsistent(format!(
                    "shard {} moves to {} but is owned by {}",
                    m.shard,
                    m.to,
                    self.owner(m.shard).map_or("nobody", NodeName::as_str)
                )));
            }
        }
        Ok(())
    }

    fn validate_followers(&self) -> Result<(), ShardError> {
        if self.followers.len() != self.owners.len() {
            return Err(ShardError::Inconsistent(format!(
                "the table has {} follower slots for {} shards",
                self.followers.len(),
                self.shards
            )));
        }
        for (shard, (follower, owner)) in self.followers.iter().zip(&self.owners).enumerate() {
            let Some(follower) = follower else { continue };
            self.require_node("follower", follower)?;
            match owner {
                None => {
                    return Err(ShardError::Inconsistent(format!(
                        "shard {shard} has follower {follower} but no owner"
                    )));
                }
                Some(owner) if owner == follower => {
                    return Err(ShardError::Inconsistent(format!(
                        "shard {shard} is followed by its own owner {owner}"
                    )));
                }
                Some(_) => {}
            }
            if self.draining.contains(follower) {
                return Err(ShardError::Inconsistent(format!(
                    "shard {shard} is followed by {follower}, which is draining"
                )));
            }
        }
        Ok(())
    }

    fn require_node(&self, role: &'static str, node: &NodeName) -> Result<(), ShardError> {
        if self.nodes.contains_key(node) {
            Ok(())
        } else {
            Err(ShardError::UnknownNode {
                role,
                node: node.to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Result<NodeName, ShardError> {
        NodeName::new(name)
    }

    #[test]
    fn an_empty_table_has_no_owners_and_at_least_one_shard() {
        let table = AssignmentTable::empty(0);
        assert_eq!(table.shards, 1);
        assert_eq!(table.owner(ShardId(0)), None);
        assert_eq!(table.owner(ShardId(5)), None);
        assert!(table.counts().is_empty());
        assert!(table.validate().is_ok());
    }

    #[test]
    fn a_disowned_shard_has_no_owner_follower_or_move_and_others_keep_theirs()
    -> Result<(), ShardError> {
        let (a, b, c) = (node("a")?, node("b")?, node("c")?);
        let nodes = [&a, &b, &c]
            .into_iter()
            .map(|n| (n.clone(), NodeInfo::new("h:1")))
            .collect();
        let mut table = AssignmentTable::with_roles(
            vec![
                Some(a.clone()),
                Some(a.clone()),
                Some(b.clone()),
                Some(a.clone()),
            ],
            vec![
                Some(b.clone()),
                Some(c.clone()),
                Some(a.clone()),
                Some(b.clone()),
            ],
            nodes,
        )?;
        table.epoch = 7;
        table.moves = vec![Move {
            shard: ShardId(1),
            from: c.clone(),
            to: a.clone(),
        }];
        let shards: BTreeSet<ShardId> = [ShardId(1), ShardId(2), ShardId(3)].into();
        let seen = table.disowned(&a, &shards);
        assert!(seen.validate().is_ok());
        assert_eq!(seen.epoch, 7);
        // Shards 1 and 3 were a's: nobody's now. Shard 2 is b's and stays so; shard 0 was not
        // asked for.
        assert_eq!(
            seen.owners(),
            [Some(a.clone()), None, Some(b.clone()), None]
        );
        assert_eq!(
            seen.followers(),
            [Some(b.clone()), None, Some(a.clone()), None]
        );
        assert!(seen.moves.is_empty(), "the move into a went with it");
        let from_c = table.disowned(&c, &shards);
        assert!(from_c.moves.is_empty(), "c sends none of them");
        assert_eq!(from_c.owners(), table.owners(), "c owns none of them");
        let not_b: BTreeSet<ShardId> = [ShardId(1), ShardId(3)].into();
        assert_eq!(
            table.disowned(&b, &not_b),
            table,
            "b neither owns nor sends them"
        );
        Ok(())
    }

    #[test]
    fn accessors_read_the_owners() -> Result<(), ShardError> {
        let (a, b) = (node("a")?, node("b")?);
        let nodes = [
            (a.clone(), NodeInfo::new("a:1")),
            (b.clone(), NodeInfo::new("b:1")),
        ];
        let table = AssignmentTable::with_owners(
            vec![Some(a.clone()), Some(b.clone()), Some(a.clone()), None],
            nodes.into_iter().collect(),
        )?;
        assert_eq!(table.shards_of(&a), vec![ShardId(0), ShardId(2)]);
        assert_eq!(table.shards_of(&b), vec![ShardId(1)]);
        assert_eq!(table.counts().get(&a), Some(&2));
        assert_eq!(table.counts().get(&b), Some(&1));
        let room = RoomId::new("lobby")?;
        assert_eq!(
            table.owner_of_room(&room),
            table.owner(table.shard_of(&room))
        );
        Ok(())
    }

    #[test]
    fn owners_must_be_listed_in_nodes() -> Result<(), ShardError> {
        let err = AssignmentTable::with_owners(vec![Some(node("ghost")?)], BTreeMap::new());
        assert_eq!(
            err.err().map(|e| e.to_string()).as_deref(),
            Some("owner ghost is not listed in nodes")
        );
        Ok(())
    }

    #[test]
    fn a_move_must_go_to_the_shards_owner() -> Result<(), ShardError> {
        let (a, b) = (node("a")?, node("b")?);
        let nodes = [
            (a.clone(), NodeInfo::new("a:1")),
            (b.clone(), NodeInfo::new("b:1")),
        ];
        let mut table =
            AssignmentTable::with_owners(vec![Some(a.clone())], nodes.into_iter().collect())?;
        table.moves.push(Move {
            shard: ShardId(0),
            from: a.clone(),
            to: b.clone(),
        });
        assert_eq!(
            table.validate().err().map(|e| e.to_string()).as_deref(),
            Some("inconsistent assignment table: shard 0 moves to b but is owned by a")
        );
        table.set_owner(ShardId(0), Some(b.clone()));
        assert!(table.validate().is_ok());
        assert_eq!(table.move_of(ShardId(0)).map(|m| &m.from), Some(&a));
        Ok(())
    }
}
