//! Custody of a shard's rooms: what one node holds of a shard, and what a new table asks of it.
//!
//! The one rule that lets moves, drains, exits, crashes and restarts compose: **frozen rooms
//! always have a holder.** A node lets go of a shard's state only once somebody else has it:
//!
//! - **The source of a hand-off** freezes its rooms (once their follower holds every change)
//!   and keeps the frozen rooms until the target acknowledges them. When a table sends the move
//!   elsewhere (its target left), it sends the same frozen rooms there; when a table gives the
//!   shard back to it, it serves from them. It never freezes twice, so a redirected move can
//!   never carry empty rooms.
//! - **The target of a hand-off** keeps whatever it holds of the shard (a follower's copy, or
//!   frozen rooms of its own) and merges the snapshot into it room by room, the higher `seq`
//!   winning: a room's states on different nodes are all prefixes of one history, because only
//!   one node at a time gives out seqs for it (see `docs/replication.md`). It acknowledges the
//!   snapshot once installed and its own follower holds the shard, and answers a snapshot for
//!   a shard it already serves with the acknowledgement alone.
//! - **A follower** keeps its copy while it is named follower, and also while it waits to
//!   merge it into a snapshot it receives as the new owner; when it stands in for a source
//!   that left, it sends its copy and keeps it if it goes on following.
//! - **The planner** (rule 6 of [`crate::planner`]) keeps a move in flight while both its ends
//!   are ready, keeps the follower of a moving shard in place (F4), and lets that follower
//!   stand in for whichever end leaves.
//!
//! [`duty`] is that rule for one node and one shard: from what the node holds ([`Holding`]) and
//! the table it applies, what it does ([`Duty`]). It reads only the new table: everything a
//! node must remember of earlier tables is in its holding, so a node that skipped tables acts
//! exactly like one that saw every one. The node does the I/O; the composition tests run many
//! nodes' holdings through random tables, crashes and message orders and check that every
//! acknowledged message keeps a holder.

use crate::ids::{NodeName, ShardId};
use crate::table::AssignmentTable;

/// What one node holds of one shard's rooms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holding {
    /// The shard's rooms run here: the node serves it.
    pub serving: bool,
    /// The node waits for the shard's snapshot from this node (a hand-off to it that it has
    /// not installed yet), buffering the shard's commands meanwhile.
    pub receiving: Option<NodeName>,
    /// The node froze the shard's rooms for a hand-off and keeps them until they are
    /// acknowledged: the node they were last sent to.
    pub frozen_for: Option<NodeName>,
    /// The node keeps a follower's copy of the shard's rooms (live, or still catching up).
    pub copy: bool,
    /// The node's last hand-off of the shard went to this node and was acknowledged (the
    /// table may show the move until the operator has seen it done).
    pub handed_to: Option<NodeName>,
    /// The rooms it serves are from before a change of owner it took no part in: it was out
    /// of the cluster in between (paused, cut off from the operator), or the table in force
    /// here did not show the shard moving to it. Only a node that owned the shard since can be
    /// a move's source, so a move to this node means another one gave out seqs meanwhile, from
    /// this node's follower's copy: its rooms are the shard's, these are an old prefix.
    pub stale: bool,
}

impl Holding {
    /// Whether the node holds nothing of the shard's rooms.
    pub fn is_empty(&self) -> bool {
        !self.serving && self.receiving.is_none() && self.frozen_for.is_none() && !self.copy
    }
}

/// What a node does with one shard's rooms when it applies a table (see [`duty`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomsDuty {
    /// Nothing changes for the rooms.
    Keep,
    /// Wait for the shard's snapshot from `from` (a hand-off to this node, new or with a new
    /// source), buffering its commands. What the node holds of the shard stays, to be merged
    /// with the snapshot.
    Receive {
        /// The node sending the snapshot.
        from: NodeName,
    },
    /// Serve the shard from what the node holds: its frozen rooms and its copy merged room by
    /// room (the higher seq wins), or empty rooms with neither. A wait for a snapshot ends here
    /// (what it buffered goes to the rooms).
    Serve,
    /// Freeze the running rooms (once their follower holds every change) and send them to
    /// `to`, keeping them until acknowledged.
    HandOff {
        /// The new owner.
        to: NodeName,
    },
    /// Send the frozen rooms this node keeps to `to`: the move's target changed.
    Resend {
        /// The new target.
        to: NodeName,
    },
    /// Send this node's follower copy to `to`: it stands in for a source that is gone. The
    /// copy stays if the node goes on following (see [`Duty::keep_copy`]).
    SendCopy {
        /// The new owner.
        to: NodeName,
    },
    /// Send `to` an empty snapshot: this node is the move's source but holds nothing any more
    /// (its rooms were acknowledged by an earlier target that left). The target merges its own
    /// copy, which holds what that target acknowledged.
    SendEmpty {
        /// The new owner.
        to: NodeName,
    },
    /// Stop serving: the shard went to another node without a hand-off from this one (the
    /// table took this node for gone, or left the shard without an owner), and its follower's
    /// copy is what goes on. Freeze the rooms and drop them.
    Stop,
    /// Stop serving the stale rooms (see [`Holding::stale`]) as for [`Stop`](Self::Stop), and
    /// wait for the shard's snapshot from `from`, the node that owned it since, as for
    /// [`Receive`](Self::Receive).
    Reclaim {
        /// The node sending the snapshot.
        from: NodeName,
    },
    /// Stop waiting for a snapshot: the shard went elsewhere. What was buffered follows the
    /// table to the new owner.
    StopReceiving,
}

/// Everything a node does about one shard when it applies a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duty {
    /// What becomes of the rooms.
    pub rooms: RoomsDuty,
    /// Whether the frozen rooms (if any) are still kept afterwards; otherwise they were
    /// served from, or nobody needs them any more.
    pub keep_frozen: bool,
    /// Whether the follower copy (if any) is still kept afterwards.
    pub keep_copy: bool,
    /// Whether to start a copy: the node is newly named the shard's follower.
    pub start_copy: bool,
}

/// What `me`, holding `held` of `shard`, does when it applies `table` (see the module doc).
///
/// | `me` in `table` | holds | rooms duty |
/// |---|---|---|
/// | owner, move to it | serves (not stale), or waits for that source | keep |
/// | owner, move to it | serves stale rooms | drop them, receive from the move's source |
/// | owner, move to it | anything else | receive from the move's source |
/// | owner, no move | serves | keep |
/// | owner, no move | anything else | serve from what it holds |
/// | move's source | serves | hand off (keeping the frozen rooms) |
/// | move's source | handed it to that target already | keep |
/// | move's source | frozen rooms | keep (same target) or resend |
/// | move's source | a copy | send the copy |
/// | move's source | nothing | send an empty snapshot |
/// | neither | serves | stop |
/// | neither | waits for a snapshot | stop receiving |
///
/// Frozen rooms are kept while `me` is the move's source or receives the shard; a copy while
/// `me` follows the shard or receives it; both are consumed by serving.
pub fn duty(table: &AssignmentTable, me: &NodeName, shard: ShardId, held: &Holding) -> Duty {
    let owner = table.owner(shard) == Some(me);
    let the_move = table.move_of(shard);
    let follows = table.follower(shard) == Some(me);
    let source = the_move.filter(|m| m.from == *me);
    let rooms = if owner {
        match the_move {
            Some(m) if held.serving && held.stale => RoomsDuty::Reclaim {
                from: m.from.clone(),
            },
            Some(m) if held.serving || held.receiving.as_ref() == Some(&m.from) => RoomsDuty::Keep,
            Some(m) => RoomsDuty::Receive {
                from: m.from.clone(),
            },
            None if held.serving => RoomsDuty::Keep,
            None => RoomsDuty::Serve,
        }
    } else if let Some(m) = source {
        let to = m.to.clone();
        if held.serving {
            RoomsDuty::HandOff { to }
        } else if held.handed_to.as_ref() == Some(&to) && held.frozen_for.is_none() {
            RoomsDuty::Keep
        } else if let Some(sent_to) = &held.frozen_for {
            if *sent_to == to {
                RoomsDuty::Keep
            } else {
                RoomsDuty::Resend { to }
            }
        } else if held.copy {
            RoomsDuty::SendCopy { to }
        } else {
            RoomsDuty::SendEmpty { to }
        }
    } else if held.serving {
        RoomsDuty::Stop
    } else if held.receiving.is_some() {
        RoomsDuty::StopReceiving
    } else {
        RoomsDuty::Keep
    };
    let receives = owner && (!held.serving || held.stale) && the_move.is_some();
    let served = matches!(rooms, RoomsDuty::Serve);
    Duty {
        // A source keeps what it sends (the frozen rooms it has, or makes now) until it is
        // acknowledged.
        keep_frozen: !served && (source.is_some() || (receives && held.frozen_for.is_some())),
        keep_copy: held.copy && !served && (follows || receives),
        start_copy: follows && !held.copy,
        rooms,
    }
}

/// The shards `me` must look at when it applies `table` while holding something of `held`:
/// those and the shards the table gives it any role in, ascending. Every other shard's duty is
/// to keep nothing and do nothing.
pub fn shards_to_visit(
    table: &AssignmentTable,
    me: &NodeName,
    held: impl IntoIterator<Item = ShardId>,
) -> Vec<ShardId> {
    let mut all: Vec<ShardId> = (0..table.shards)
        .map(ShardId)
        .filter(|&s| {
            table.owner(s) == Some(me)
                || table.follower(s) == Some(me)
                || table.move_of(s).is_some_and(|m| m.from == *me)
        })
        .chain(held)
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}
