//! The owner's half of replication: every change to a room goes to the shard's follower, and
//! what the change produced for members (the sender's echo included) is held back until the
//! follower says it holds the change. So an acknowledged message is on two nodes.
//!
//! [`Replication`] is the per-room bookkeeping a room actor keeps, a plain state machine
//! driven by the actor and tested directly: which follower the room's copy is current on,
//! the changes in flight with the events they hold, and what to do when the follower answers.
//! Changes are numbered by a node-wide counter ([`next_rid`]), so an answer to an earlier actor
//! of the same room (passivated and restarted meanwhile) can never release a newer change.
//!
//! A room with no follower in the table (replication 1, or a single node) holds nothing back.
//! A follower that never answers (it crashed) holds the room's sends until the table names
//! another follower (or none): the actor is told to sync then, sends its whole state to the
//! new follower, and that answer releases everything held. The number of changes in flight is
//! bounded ([`MAX_IN_FLIGHT`]); past it a `send` is refused before it takes a seq.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use shard::{NodeName, RoomId, ShardId};

use crate::room::{MemberKey, Outbound, RoomSnapshot};

/// Changes a room may have in flight to its follower before its sends are refused
/// (`room_unavailable`): a follower that stopped answering must not grow the owner's memory.
pub const MAX_IN_FLIGHT: usize = 1024;

static RID: AtomicU64 = AtomicU64::new(1);

/// A fresh replication id, unique on this node for its life.
pub fn next_rid() -> u64 {
    RID.fetch_add(1, Ordering::Relaxed)
}

/// One change to a room, as its follower applies it to its copy.
#[derive(Debug, Clone)]
pub enum Change {
    /// The room's whole state: the first change a new follower gets, and the answer to a
    /// follower that has no copy.
    Whole(RoomSnapshot),
    /// A message took `seq`; `frame` is its `msg` frame as members receive it.
    Message { seq: u64, frame: Utf8Bytes },
    /// A member joined.
    Joined { member: MemberKey, user: Arc<str> },
    /// A member left.
    Left { member: MemberKey },
    /// Every member on an edge node that left the cluster is gone.
    NodeLeft { node: NodeName },
    /// The room passivated on its owner at `seq`: the follower keeps only the seq.
    Rested { seq: u64 },
}

/// A change on its way to a room's follower.
#[derive(Debug, Clone)]
pub struct ChangeFor {
    /// The room's shard.
    pub shard: ShardId,
    /// The owner's table epoch (see [`FollowerRef`]).
    pub epoch: u64,
    /// The room.
    pub room: RoomId,
    /// The change's replication id, echoed in the answer.
    pub rid: u64,
    /// The change.
    pub change: Change,
}

/// A follower's answer to one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The follower applied the change (and everything before it for this room).
    Held,
    /// The follower's table says the sender does not own the shard (or the receiver does not
    /// follow it): the sender lost its role, and nothing it sends can be acknowledged.
    Fenced,
    /// The follower has no copy of the room to apply the change to: send the whole room.
    NoCopy,
}

/// What a follower does with a change, judged against its own table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it to the copy.
    Apply,
    /// The sender has no role for the shard here: refuse it for good ([`Answer::Fenced`]).
    Fenced,
    /// The sender is the shard's owner (or still handing it off), but this node does not
    /// follow the shard in its table: the two tables differ for a moment. Ask the owner to
    /// try again ([`Answer::NoCopy`]); by then one of them has the other's table.
    NotFollower,
}

/// The follower's rule (fencing): a change is applied when its sender owns the shard in this
/// node's table, or is the source of the shard's hand-off in flight and still a member (its
/// last changes before the freeze are in the snapshot the new owner installs, so they are not
/// stale; a source that left is stood in for by the follower), and this
/// node follows the shard. A sender whose table is newer than ours is taken at its word: an
/// owner that lost its role has an older table than the one that took it away, never a newer
/// one. Anyone else is fenced out.
pub fn judge(
    table: &shard::AssignmentTable,
    me: &NodeName,
    from: &NodeName,
    shard: ShardId,
    epoch: u64,
) -> Verdict {
    if epoch > table.epoch {
        return Verdict::Apply;
    }
    let owner = table.owner(shard) == Some(from);
    // A source the table no longer lists left: its follower stood in for it and sends its
    // copy to the new owner, so what the source sends now would be in no snapshot.
    let handing_off = table
        .move_of(shard)
        .is_some_and(|m| &m.from == from && table.nodes.contains_key(from));
    if !owner && !handing_off {
        Verdict::Fenced
    } else if table.follower(shard) == Some(me) {
        Verdict::Apply
    } else {
        Verdict::NotFollower
    }
}

/// Who a room's changes go to: the follower and the table epoch that named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerRef {
    /// The follower node.
    pub node: NodeName,
    /// The epoch of the owner's table that names it (a follower with an older table takes
    /// the owner's word for it, see `docs/replication.md`).
    pub epoch: u64,
}

/// A change waiting for its follower's answer, with what it holds back.
#[derive(Debug)]
struct InFlight {
    rid: u64,
    /// The room's seq before the change: what the room goes back to if it is fenced.
    seq_before: u64,
    /// Events for members, sent once the follower holds the change.
    out: Vec<Outbound>,
    /// The sender of a message, answered `room_unavailable` if the change is fenced.
    sender: Option<(MemberKey, Option<String>)>,
}

/// What the actor must do after an answer.
#[derive(Debug, Default)]
pub struct Settled {
    /// Events released, in order.
    pub release: Vec<Outbound>,
    /// Messages that can never be acknowledged (fenced): answer their senders, and put the
    /// room back to `rollback_to`.
    pub refused: Vec<(MemberKey, Option<String>)>,
    /// The seq the room goes back to after a fence (its last acknowledged one).
    pub rollback_to: Option<u64>,
    /// The follower has no copy: send the whole room, as a new change.
    pub resend_whole: bool,
}

/// A room's replication state on its owner.
#[derive(Debug, Default)]
pub struct Replication {
    /// The follower the room's copy is current on (`None`: none yet, or after a fence).
    synced_to: Option<FollowerRef>,
    /// The change that carried the whole room to it: a "no copy" for an earlier change was
    /// answered by that one already.
    whole_rid: u64,
    in_flight: VecDeque<InFlight>,
}

impl Replication {
    /// Whether the room's copy must be (re)sent whole before changes go to `follower`.
    pub fn needs_whole(&self, follower: &FollowerRef) -> bool {
        self.synced_to.as_ref().map(|f| &f.node) != Some(&follower.node)
    }

    /// The copy is now on `follower`: its whole state was just sent as change `rid`.
    pub fn synced(&mut self, follower: FollowerRef, rid: u64) {
        self.synced_to = Some(follower);
        self.whole_rid = rid;
    }

    /// The copy can no longer be trusted (a change to it was lost): the next change sends
    /// the whole room.
    pub fn unsynced(&mut self) {
        self.synced_to = None;
    }

    /// The table names no follower: whatever was held goes out now (nobody else will hold it).
    pub fn no_follower(&mut self) -> Vec<Outbound> {
        self.synced_to = None;
        self.in_flight.drain(..).flat_map(|f| f.out).collect()
    }

    /// Whether another change may go in flight (see [`MAX_IN_FLIGHT`]).
    pub fn has_room(&self) -> bool {
        self.in_flight.len() < MAX_IN_FLIGHT
    }

    /// Changes waiting for an answer.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Hold `out` until the follower holds change `rid`. `seq_before` is the room's seq before
    /// it; `sender` the member whose message it is, if any.
    pub fn hold(
        &mut self,
        rid: u64,
        seq_before: u64,
        out: Vec<Outbound>,
        sender: Option<(MemberKey, Option<String>)>,
    ) {
        self.in_flight.push_back(InFlight {
            rid,
            seq_before,
            out,
            sender,
        });
    }

    /// Events produced without a change (an error answer, a re-sync) go out now, or after the
    /// changes in flight, so that one member's answers stay in order.
    pub fn after_in_flight(&mut self, out: Vec<Outbound>) -> Vec<Outbound> {
        match self.in_flight.back_mut() {
            Some(last) => {
                last.out.extend(out);
                Vec::new()
            }
            None => out,
        }
    }

    /// This node lost the room's shard without handing it off (the operator gave it to the
    /// follower while this node was paused or cut off): nothing in flight can be acknowledged
    /// any more, since the new owner started from a copy that may lack it. Settled as a fence.
    pub fn deposed(&mut self) -> Settled {
        self.synced_to = None;
        let mut settled = Settled {
            rollback_to: self.in_flight.front().map(|f| f.seq_before),
            ..Settled::default()
        };
        for fenced in self.in_flight.drain(..) {
            settled.refused.extend(fenced.sender);
        }
        settled
    }

    /// The follower answered change `rid`. Answers from another follower, or for changes no
    /// longer in flight, are ignored.
    pub fn answered(&mut self, from: &NodeName, rid: u64, answer: Answer) -> Settled {
        let mut settled = Settled::default();
        if self.synced_to.as_ref().map(|f| &f.node) != Some(from) {
            return settled;
        }
        if !self.in_flight.iter().any(|f| f.rid == rid) && answer != Answer::Held {
            return settled;
        }
        match answer {
            Answer::Held => {
                // The link is ordered: holding `rid` means holding every earlier change too.
                while self.in_flight.front().is_some_and(|f| f.rid <= rid) {
                    if let Some(done) = self.in_flight.pop_front() {
                        settled.release.extend(done.out);
                    }
                }
            }
            Answer::NoCopy if rid < self.whole_rid => {}
            Answer::NoCopy => {
                self.synced_to = None;
                settled.resend_whole = true;
            }
            Answer::Fenced => settled = self.deposed(),
        }
        settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::{ConnId, EdgeEvent};

    fn node(name: &str) -> NodeName {
        NodeName::new(name).expect("valid node name")
    }

    fn follower(name: &str) -> FollowerRef {
        FollowerRef {
            node: node(name),
            epoch: 3,
        }
    }

    fn event(conn: u64) -> Outbound {
        (
            node("edge"),
            EdgeEvent::ToConn {
                conn: ConnId(conn),
                frame: Utf8Bytes::from_static("{}"),
            },
        )
    }

    fn conns(out: &[Outbound]) -> Vec<u64> {
        out.iter()
            .map(|(_, e)| match e {
                EdgeEvent::ToConn { conn, .. } => conn.0,
                _ => 0,
            })
            .collect()
    }

    fn sender(conn: u64) -> Option<(MemberKey, Option<String>)> {
        Some((
            MemberKey {
                node: node("edge"),
                conn: ConnId(conn),
            },
            Some(format!("c{conn}")),
        ))
    }

    #[test]
    fn a_new_follower_needs_the_whole_room_once() {
        let mut r = Replication::default();
        assert!(r.needs_whole(&follower("b")));
        r.synced(follower("b"), 1);
        assert!(!r.needs_whole(&follower("b")));
        assert!(r.needs_whole(&follower("c")), "another follower");
    }

    #[test]
    fn events_wait_for_their_change_and_an_answer_releases_everything_up_to_it() {
        let mut r = Replication::default();
        r.synced(follower("b"), 1);
        r.hold(10, 0, vec![event(1)], sender(1));
        r.hold(11, 1, vec![event(2)], sender(2));
        r.hold(12, 2, vec![event(3)], sender(3));
        let settled = r.answered(&node("b"), 11, Answer::Held);
        assert_eq!(conns(&settled.release), [1, 2]);
        assert_eq!(r.in_flight(), 1);
        let settled = r.answered(&node("b"), 12, Answer::Held);
        assert_eq!(conns(&settled.release), [3]);
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn events_without_a_change_keep_their_place_behind_the_changes_in_flight() {
        let mut r = Replication::default();
        r.synced(follower("b"), 1);
        assert_eq!(
            conns(&r.after_in_flight(vec![event(9)])),
            [9],
            "nothing held"
        );
        r.hold(10, 0, vec![event(1)], sender(1));
        assert!(r.after_in_flight(vec![event(9)]).is_empty());
        let settled = r.answered(&node("b"), 10, Answer::Held);
        assert_eq!(conns(&settled.release), [1, 9]);
    }

    #[test]
    fn an_answer_from_another_node_or_an_old_change_releases_nothing() {
        let mut r = Replication::default();
        r.synced(follower("b"), 1);
        r.hold(10, 0, vec![event(1)], sender(1));
        assert!(r.answered(&node("c"), 10, Answer::Held).release.is_empty());
        assert!(r.answered(&node("b"), 9, Answer::Held).release.is_empty());
        assert!(
            r.answered(&node("b"), 9, Answer::Fenced).refused.is_empty(),
            "a fence for a change not in flight is stale"
        );
        assert_eq!(r.in_flight(), 1);
    }

    #[test]
    fn a_fence_refuses_every_message_in_flight_and_rolls_the_room_back() {
        let mut r = Replication::default();
        r.synced(follower("b"), 1);
        r.hold(10, 4, vec![event(1)], sender(1));
        r.hold(11, 5, vec![event(2)], None);
        r.hold(12, 5, vec![event(3)], sender(3));
        let settled = r.answered(&node("b"), 11, Answer::Fenced);
        assert!(settled.release.is_empty(), "nothing fenced is delivered");
        assert_eq!(settled.rollback_to, Some(4));
        let refused: Vec<u64> = settled.refused.iter().map(|(m, _)| m.conn.0).collect();
        assert_eq!(refused, [1, 3]);
        assert_eq!(r.in_flight(), 0);
        assert!(
            r.needs_whole(&follower("b")),
            "a fenced copy is not trusted"
        );
    }

    #[test]
    fn a_deposed_owner_refuses_what_is_in_flight_and_a_late_answer_releases_nothing() {
        let mut r = Replication::default();
        r.synced(follower("b"), 1);
        r.hold(10, 7, vec![event(1)], sender(1));
        r.hold(11, 8, vec![event(2)], None);
        let settled = r.deposed();
        assert!(settled.release.is_empty(), "nothing in flight is delivered");
        assert_eq!(settled.rollback_to, Some(7));
        let refused: Vec<u64> = settled.refused.iter().map(|(m, _)| m.conn.0).collect();
        assert_eq!(refused, [1]);
        // The old follower's answer arrives after the deposition (it was on the wire).
        let late = r.answered(&node("b"), 11, Answer::Held);
        assert!(
            late.release.is_empty(),
            "a late answer acknowledges nothing"
        );
    }

    #[test]
    fn a_follower_without_a_copy_gets_the_whole_room_and_its_answer_releases_all() {
        let mut r = Replication::default();
        r.synced(follower("b"), 1);
        r.hold(10, 0, vec![event(1)], sender(1));
        let settled = r.answered(&node("b"), 10, Answer::NoCopy);
        assert!(settled.resend_whole);
        assert!(settled.release.is_empty());
        r.hold(11, 1, vec![event(2)], sender(2));
        r.synced(follower("b"), 20);
        r.hold(20, 2, Vec::new(), None);
        let late = r.answered(&node("b"), 11, Answer::NoCopy);
        assert!(!late.resend_whole, "the whole room is already on its way");
        assert_eq!(
            conns(&r.answered(&node("b"), 20, Answer::Held).release),
            [1, 2]
        );
    }

    #[test]
    fn with_no_follower_everything_held_goes_out_at_once() {
        let mut r = Replication::default();
        r.synced(follower("b"), 1);
        r.hold(10, 0, vec![event(1)], sender(1));
        r.hold(11, 1, vec![event(2)], sender(2));
        assert_eq!(conns(&r.no_follower()), [1, 2]);
        assert_eq!(r.in_flight(), 0);
    }

    fn table(
        epoch: u64,
        owner: &str,
        follower: &str,
        moving_from: Option<&str>,
    ) -> shard::AssignmentTable {
        let nodes = ["a", "b", "c", "d"]
            .into_iter()
            .map(|n| (node(n), shard::NodeInfo::new("127.0.0.1:9")))
            .collect();
        let mut t = shard::AssignmentTable::with_roles(
            vec![Some(node(owner))],
            vec![Some(node(follower))],
            nodes,
        )
        .expect("valid table");
        t.epoch = epoch;
        if let Some(from) = moving_from {
            t.moves.push(shard::Move {
                shard: ShardId(0),
                from: node(from),
                to: node(owner),
            });
        }
        t
    }

    #[test]
    fn a_follower_applies_its_owners_changes_and_fences_anyone_else() {
        let t = table(5, "a", "b", None);
        let me = node("b");
        assert_eq!(judge(&t, &me, &node("a"), ShardId(0), 5), Verdict::Apply);
        assert_eq!(judge(&t, &me, &node("a"), ShardId(0), 4), Verdict::Apply);
        assert_eq!(
            judge(&t, &me, &node("c"), ShardId(0), 5),
            Verdict::Fenced,
            "an old owner at an older or equal table is fenced"
        );
        assert_eq!(
            judge(&t, &me, &node("c"), ShardId(0), 6),
            Verdict::Apply,
            "a sender with a newer table is taken at its word"
        );
    }

    #[test]
    fn a_hand_off_source_is_not_fenced_while_its_move_is_in_flight() {
        let t = table(5, "a", "b", Some("c"));
        assert_eq!(
            judge(&t, &node("b"), &node("c"), ShardId(0), 4),
            Verdict::Apply
        );
        let done = table(6, "a", "b", None);
        assert_eq!(
            judge(&done, &node("b"), &node("c"), ShardId(0), 5),
            Verdict::Fenced
        );
    }

    #[test]
    fn changes_from_a_hand_off_source_that_left_are_fenced() {
        let mut t = table(13, "a", "b", Some("c"));
        assert_eq!(
            judge(&t, &node("b"), &node("c"), ShardId(0), 12),
            Verdict::Apply
        );
        t.nodes.remove(&node("c"));
        assert_eq!(
            judge(&t, &node("b"), &node("c"), ShardId(0), 12),
            Verdict::Fenced,
            "a source that left is stood in for by the follower"
        );
    }

    #[test]
    fn the_owner_is_asked_to_retry_by_a_node_that_no_longer_follows_the_shard() {
        let t = table(5, "a", "d", None);
        assert_eq!(
            judge(&t, &node("b"), &node("a"), ShardId(0), 5),
            Verdict::NotFollower
        );
    }

    #[test]
    fn changes_in_flight_are_bounded() {
        let mut r = Replication::default();
        r.synced(follower("b"), 1);
        for rid in 0..MAX_IN_FLIGHT as u64 {
            assert!(r.has_room());
            r.hold(rid, rid, Vec::new(), None);
        }
        assert!(!r.has_room());
    }
}
