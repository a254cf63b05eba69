//! A room as its owner holds it: sequence, bounded history, members; and what each request
//! does to it.
//!
//! [`Room`] is a plain state machine: a command goes in, events for edge nodes come out. The
//! actor in [`crate::rooms`] feeds it from a queue and sends the events; tests drive it
//! directly. Fan-out is per node, not per member: a message becomes one
//! [`EdgeEvent::Broadcast`] for each node that has members in the room.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use shard::{NodeName, RoomId};

use crate::edge::{ConnId, EdgeEvent, NO_CONN};
use crate::hashing::HashMap;
use crate::protocol::{self, ChatMessage, ErrorCode, PresenceEvent};
use crate::replication::Change;

/// A member of a room: one connection on one node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberKey {
    /// The edge node the connection is on.
    pub node: NodeName,
    /// The connection on that node.
    pub conn: ConnId,
}

/// A request to a room's owner; it may travel over a peer link.
#[derive(Debug, Clone)]
pub enum RoomCommand {
    /// Add a member (or re-sync one that is already in), replaying history after `since`.
    Join {
        member: MemberKey,
        user: Arc<str>,
        since: Option<u64>,
    },
    /// Remove a member; `reply` sends it a `left` (false when its connection is gone).
    Leave { member: MemberKey, reply: bool },
    /// Post a message from a member.
    Post {
        member: MemberKey,
        user: Arc<str>,
        text: String,
        cid: Option<String>,
    },
    /// Remove every member on `node`: that edge left the cluster.
    DropNode { node: NodeName },
}

impl RoomCommand {
    /// The member the command is from, to answer it with an error when it cannot be served.
    pub fn member(&self) -> Option<&MemberKey> {
        match self {
            RoomCommand::Join { member, .. }
            | RoomCommand::Leave { member, .. }
            | RoomCommand::Post { member, .. } => Some(member),
            RoomCommand::DropNode { .. } => None,
        }
    }

    /// The client's correlation id, echoed in an error.
    pub fn cid(&self) -> Option<&str> {
        match self {
            RoomCommand::Post { cid, .. } => cid.as_deref(),
            _ => None,
        }
    }
}

/// A room's whole state, as its old owner hands it to the new one.
#[derive(Debug, Clone)]
pub struct RoomSnapshot {
    /// The room.
    pub room: RoomId,
    /// Its last seq.
    pub seq: u64,
    /// Its history as `(seq, msg frame)`, oldest first.
    pub history: Vec<(u64, String)>,
    /// Its members, so they keep receiving without re-joining.
    pub members: Vec<(MemberKey, Arc<str>)>,
}

impl RoomSnapshot {
    /// A passivated room: only its seq is remembered, no history and no members.
    pub fn resting(room: RoomId, seq: u64) -> RoomSnapshot {
        RoomSnapshot {
            room,
            seq,
            history: Vec::new(),
            members: Vec::new(),
        }
    }
}

/// One event for one edge node.
pub type Outbound = (NodeName, EdgeEvent);

/// A room's state on its owner.
#[derive(Debug)]
pub struct Room {
    id: RoomId,
    seq: u64,
    history_limit: usize,
    /// The last `history_limit` messages as ready-to-send `msg` frames, oldest first.
    history: VecDeque<(u64, Utf8Bytes)>,
    members: BTreeMap<MemberKey, Arc<str>>,
    /// Connections per user, so presence fires on a user's first join and last leave.
    users: HashMap<Arc<str>, u32>,
    /// Members per edge node: the fan-out targets.
    nodes: BTreeMap<NodeName, u32>,
}

impl Room {
    /// An empty room whose next message gets `seq + 1`.
    pub fn new(id: RoomId, seq: u64, history_limit: usize) -> Room {
        Room {
            id,
            seq,
            history_limit,
            history: VecDeque::new(),
            members: BTreeMap::new(),
            users: HashMap::default(),
            nodes: BTreeMap::new(),
        }
    }

    /// A room restored from its previous owner's snapshot.
    pub fn from_snapshot(snapshot: RoomSnapshot, history_limit: usize) -> Room {
        let mut room = Room::new(snapshot.room, snapshot.seq, history_limit);
        let skip = snapshot.history.len().saturating_sub(history_limit);
        room.history = snapshot
            .history
            .into_iter()
            .skip(skip)
            .map(|(seq, frame)| (seq, Utf8Bytes::from(frame)))
            .collect();
        for (member, user) in snapshot.members {
            *room.nodes.entry(member.node.clone()).or_default() += 1;
            *room.users.entry(user.clone()).or_default() += 1;
            room.members.insert(member, user);
        }
        room
    }

    /// The room's whole state, for a hand-off.
    pub fn snapshot(&self) -> RoomSnapshot {
        RoomSnapshot {
            room: self.id.clone(),
            seq: self.seq,
            history: self
                .history
                .iter()
                .map(|(seq, frame)| (*seq, frame.to_string()))
                .collect(),
            members: self
                .members
                .iter()
                .map(|(m, u)| (m.clone(), u.clone()))
                .collect(),
        }
    }

    /// The room's name.
    pub fn id(&self) -> &RoomId {
        &self.id
    }

    /// The edge nodes with members here: where a message goes.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeName> {
        self.nodes.keys()
    }

    /// The last sequence number given out.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether nobody is in the room (a candidate for passivation).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether the room holds nothing its seq does not say: no members and no history. Such a
    /// room costs an actor for nothing and is passivated at once.
    pub fn is_bare(&self) -> bool {
        self.members.is_empty() && self.history.is_empty()
    }

    /// Number of member connections.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Apply one command; `mint` gives a fresh (id, unix ms) for a posted message.
    pub fn apply(
        &mut self,
        command: RoomCommand,
        mint: &mut dyn FnMut() -> (u64, u64),
    ) -> Vec<Outbound> {
        match command {
            RoomCommand::Join {
                member,
                user,
                since,
            } => self.join(member, user, since),
            RoomCommand::Leave { member, reply } => self.leave(member, reply),
            RoomCommand::Post {
                member,
                user,
                text,
                cid,
            } => self.post(member, user, text, cid, mint),
            RoomCommand::DropNode { node } => {
                let mut out = Vec::new();
                for member in self.members_on(&node) {
                    // Nothing is sent to the departed node itself: it is gone.
                    out.extend(
                        self.leave(member, false)
                            .into_iter()
                            .filter(|(n, _)| n != &node),
                    );
                }
                out
            }
        }
    }

    /// Whether `member` is in the room.
    pub fn has_member(&self, member: &MemberKey) -> bool {
        self.members.contains_key(member)
    }

    /// Whether a member of `node` is in the room.
    pub fn has_node(&self, node: &NodeName) -> bool {
        self.nodes.contains_key(node)
    }

    /// The members connected through `node`.
    fn members_on(&self, node: &NodeName) -> Vec<MemberKey> {
        self.members
            .keys()
            .filter(|m| &m.node == node)
            .cloned()
            .collect()
    }

    /// The `msg` frame of the last message, if history holds it.
    pub fn last_frame(&self) -> Option<&Utf8Bytes> {
        self.history.back().map(|(_, frame)| frame)
    }

    /// Apply a change its owner made, to this room as a follower's copy of it (no events: the
    /// owner tells the members).
    pub fn apply_change(&mut self, change: Change) {
        match change {
            Change::Whole(snapshot) => *self = Room::from_snapshot(snapshot, self.history_limit),
            Change::Message { seq, frame } => {
                // Changes arrive in order, so a seq at or below ours is a repeat.
                if seq > self.seq {
                    self.seq = seq;
                    self.history.push_back((seq, frame));
                    while self.history.len() > self.history_limit {
                        self.history.pop_front();
                    }
                }
            }
            Change::Joined { member, user } => {
                self.add_member(member, user);
            }
            Change::Left { member } => {
                self.remove_member(&member);
            }
            Change::NodeLeft { node } => {
                for member in self.members_on(&node) {
                    self.remove_member(&member);
                }
            }
            Change::Rested { seq } => self.seq = self.seq.max(seq),
        }
    }

    /// Forget the messages after `seq` and continue from it: a message the follower refused
    /// (this node lost the shard) was never acknowledged, so it must not stay in history.
    pub fn roll_back_to(&mut self, seq: u64) {
        while self.history.back().is_some_and(|(s, _)| *s > seq) {
            self.history.pop_back();
        }
        self.seq = self.seq.min(seq);
    }

    /// Adds a member; true when it is its user's first connection here.
    fn add_member(&mut self, member: MemberKey, user: Arc<str>) -> bool {
        if self.members.contains_key(&member) {
            return false;
        }
        *self.nodes.entry(member.node.clone()).or_default() += 1;
        self.members.insert(member, user.clone());
        let count = self.users.entry(user).or_default();
        *count += 1;
        *count == 1
    }

    /// Removes a member; its user when that was the user's last connection here.
    fn remove_member(&mut self, member: &MemberKey) -> Option<Arc<str>> {
        let user = self.members.remove(member)?;
        if let Some(count) = self.nodes.get_mut(&member.node) {
            *count -= 1;
            if *count == 0 {
                self.nodes.remove(&member.node);
            }
        }
        let count = self.users.get_mut(&user)?;
        *count -= 1;
        if *count > 0 {
            return None;
        }
        self.users.remove(&user);
        Some(user)
    }

    fn join(&mut self, member: MemberKey, user: Arc<str>, since: Option<u64>) -> Vec<Outbound> {
        let mut out = Vec::new();
        if self.add_member(member.clone(), user.clone()) {
            let frame = protocol::presence_frame(&self.id, &user, PresenceEvent::Join);
            out.extend(self.broadcast(frame.into(), Some(&member), false));
        }
        let after = since.unwrap_or(0);
        let history: Vec<&str> = self
            .history
            .iter()
            .filter(|(seq, _)| *seq > after)
            .map(|(_, frame)| frame.as_str())
            .collect();
        let mut names: Vec<&str> = self.users.keys().map(|u| &**u).collect();
        names.sort_unstable();
        let frame = protocol::joined_frame(&self.id, self.seq, &names, &history);
        out.push((
            member.node.clone(),
            EdgeEvent::Joined {
                room: self.id.clone(),
                conn: member.conn,
                frame: frame.into(),
            },
        ));
        out
    }

    fn leave(&mut self, member: MemberKey, reply: bool) -> Vec<Outbound> {
        let mut out = Vec::new();
        if let Some(user) = self.remove_member(&member) {
            // The leaver is told by its `left` answer, not by its own presence event.
            let frame = protocol::presence_frame(&self.id, &user, PresenceEvent::Leave);
            out.extend(self.broadcast(frame.into(), Some(&member), false));
        }
        // The edge removes the member whether or not the owner knew it, so both agree after.
        out.push((
            member.node.clone(),
            EdgeEvent::Left {
                room: self.id.clone(),
                conn: member.conn,
                frame: reply.then(|| protocol::left_frame(&self.id).into()),
            },
        ));
        out
    }

    fn post(
        &mut self,
        member: MemberKey,
        user: Arc<str>,
        text: String,
        cid: Option<String>,
        mint: &mut dyn FnMut() -> (u64, u64),
    ) -> Vec<Outbound> {
        if !self.members.contains_key(&member) {
            let frame = protocol::error_frame(
                ErrorCode::NotJoined,
                "join the room before sending to it",
                cid.as_deref(),
                Some(&self.id),
            );
            return vec![(
                member.node,
                EdgeEvent::ToConn {
                    conn: member.conn,
                    frame: frame.into(),
                },
            )];
        }
        let (id, ts) = mint();
        self.seq += 1;
        let message = ChatMessage {
            room: self.id.clone(),
            seq: self.seq,
            id,
            user: user.to_string(),
            text,
            ts,
            cid,
        };
        let frame: Utf8Bytes = protocol::msg_frame(&message).into();
        self.history.push_back((self.seq, frame.clone()));
        while self.history.len() > self.history_limit {
            self.history.pop_front();
        }
        self.broadcast_post(frame, &member)
    }

    /// A new message: to every node with members, and to its sender as its own answer.
    ///
    /// The sender's echo travels as a `ToConn` (and the sender is skipped in its node's
    /// broadcast), so the sender's edge can count the answers to its sends: that is what its
    /// per-room route fence waits for (see `connection`). Other nodes get `skip:
    /// Some(NO_CONN)`, which skips nobody; an edge that sees a message broadcast with `skip:
    /// None` knows it comes from an owner of an earlier version and counts it as an answer for
    /// everyone (the fence then releases early instead of waiting).
    fn broadcast_post(&self, frame: Utf8Bytes, sender: &MemberKey) -> Vec<Outbound> {
        let mut out: Vec<Outbound> = self
            .nodes
            .keys()
            .map(|node| {
                let skip = if node == &sender.node {
                    sender.conn
                } else {
                    NO_CONN
                };
                (
                    node.clone(),
                    EdgeEvent::Broadcast {
                        room: self.id.clone(),
                        frame: frame.clone(),
                        skip: Some(skip),
                        is_msg: true,
                    },
                )
            })
            .collect();
        out.push((
            sender.node.clone(),
            EdgeEvent::ToConn {
                conn: sender.conn,
                frame,
            },
        ));
        out
    }

    fn broadcast(&self, frame: Utf8Bytes, skip: Option<&MemberKey>, is_msg: bool) -> Vec<Outbound> {
        self.nodes
            .keys()
            .map(|node| {
                let skip = skip.filter(|m| &m.node == node).map(|m| m.conn);
                (
                    node.clone(),
                    EdgeEvent::Broadcast {
                        room: self.id.clone(),
                        frame: frame.clone(),
                        skip,
                        is_msg,
                    },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::wire::{PeerFrame, PeerMsg};

    fn node(name: &str) -> NodeName {
        NodeName::new(name).expect("valid node name")
    }

    fn member(n: &str, conn: u64) -> MemberKey {
        MemberKey {
            node: node(n),
            conn: ConnId(conn),
        }
    }

    fn join(room: &mut Room, m: &MemberKey, user: &str, since: Option<u64>) -> Vec<Outbound> {
        room.apply(
            RoomCommand::Join {
                member: m.clone(),
                user: user.into(),
                since,
            },
            &mut || (0, 0),
        )
    }

    fn post(room: &mut Room, m: &MemberKey, user: &str, text: &str) -> Vec<Outbound> {
        let mut next = 100;
        room.apply(
            RoomCommand::Post {
                member: m.clone(),
                user: user.into(),
                text: text.into(),
                cid: None,
            },
            &mut || {
                next += 1;
                (next, 7)
            },
        )
    }

    fn frame_json(event: &EdgeEvent) -> serde_json::Value {
        let frame = match event {
            EdgeEvent::Joined { frame, .. }
            | EdgeEvent::ToConn { frame, .. }
            | EdgeEvent::Broadcast { frame, .. } => frame.as_str(),
            EdgeEvent::Left { frame, .. } => frame.as_ref().map_or("null", |f| f.as_str()),
        };
        serde_json::from_str(frame).expect("frames are json")
    }

    fn new_room() -> Room {
        Room::new(RoomId::new("r").expect("valid room"), 0, 3)
    }

    #[test]
    fn a_message_fans_out_once_per_node_not_once_per_member() {
        let mut room = new_room();
        for (n, c) in [("a", 1), ("a", 2), ("a", 3), ("b", 4)] {
            join(&mut room, &member(n, c), &format!("u{c}"), None);
        }
        let out = post(&mut room, &member("a", 1), "u1", "hi");
        let nodes: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            nodes,
            ["a", "b", "a"],
            "one broadcast per node, then the echo"
        );
        // The sender is skipped in its node's broadcast and answered with its own echo, which
        // is what its edge's route fence counts; other nodes skip nobody.
        assert!(matches!(
            &out[0].1,
            EdgeEvent::Broadcast {
                skip: Some(ConnId(1)),
                ..
            }
        ));
        assert!(matches!(
            &out[1].1,
            EdgeEvent::Broadcast {
                skip: Some(NO_CONN),
                ..
            }
        ));
        assert!(matches!(
            &out[2].1,
            EdgeEvent::ToConn {
                conn: ConnId(1),
                ..
            }
        ));
        assert_eq!(frame_json(&out[2].1), frame_json(&out[0].1));
        let value = frame_json(&out[0].1);
        assert_eq!(
            (value["op"].as_str(), value["seq"].as_u64()),
            (Some("msg"), Some(1))
        );
    }

    #[test]
    fn seq_grows_by_one_and_history_keeps_only_the_last_messages() {
        let mut room = new_room();
        let m = member("a", 1);
        join(&mut room, &m, "ann", None);
        for i in 1..=5 {
            let out = post(&mut room, &m, "ann", &format!("t{i}"));
            assert_eq!(frame_json(&out[0].1)["seq"].as_u64(), Some(i));
        }
        let out = join(&mut room, &member("a", 2), "bob", Some(3));
        let joined = out
            .iter()
            .find(|(_, e)| matches!(e, EdgeEvent::Joined { .. }));
        let value = frame_json(&joined.expect("a joined answer").1);
        assert_eq!(value["seq"].as_u64(), Some(5));
        let seqs: Vec<u64> = value["history"]
            .as_array()
            .expect("history")
            .iter()
            .filter_map(|m| m["seq"].as_u64())
            .collect();
        assert_eq!(seqs, [4, 5]);
        let all = join(&mut room, &member("a", 3), "cy", None);
        let joined = all
            .iter()
            .find(|(_, e)| matches!(e, EdgeEvent::Joined { .. }));
        let value = frame_json(&joined.expect("a joined answer").1);
        assert_eq!(
            value["history"].as_array().map(Vec::len),
            Some(3),
            "history is capped at 3"
        );
    }

    #[test]
    fn presence_fires_on_a_users_first_join_and_last_leave_only() {
        let mut room = new_room();
        let (first, second) = (member("a", 1), member("b", 2));
        join(&mut room, &member("a", 9), "watcher", None);
        let out = join(&mut room, &first, "ann", None);
        assert!(out.iter().any(|(_, e)| frame_json(e)["op"] == "presence"));
        let out = join(&mut room, &second, "ann", None);
        assert!(!out.iter().any(|(_, e)| frame_json(e)["op"] == "presence"));
        let out = room.apply(
            RoomCommand::Leave {
                member: first,
                reply: true,
            },
            &mut || (0, 0),
        );
        assert!(!out.iter().any(|(_, e)| frame_json(e)["op"] == "presence"));
        let out = room.apply(
            RoomCommand::Leave {
                member: second,
                reply: false,
            },
            &mut || (0, 0),
        );
        let presence: Vec<_> = out
            .iter()
            .filter(|(_, e)| frame_json(e)["op"] == "presence")
            .collect();
        assert_eq!(presence.len(), 1);
        assert_eq!(frame_json(&presence[0].1)["event"], "leave");
    }

    #[test]
    fn the_joiner_does_not_get_its_own_presence_but_sees_itself_in_members() {
        let mut room = new_room();
        let out = join(&mut room, &member("a", 1), "ann", None);
        for (_, event) in &out {
            if let EdgeEvent::Broadcast { skip, .. } = event {
                assert_eq!(*skip, Some(ConnId(1)));
            }
        }
        let joined = out
            .iter()
            .find(|(_, e)| matches!(e, EdgeEvent::Joined { .. }));
        assert_eq!(frame_json(&joined.expect("joined").1)["members"][0], "ann");
    }

    #[test]
    fn posting_without_membership_is_answered_with_not_joined_and_takes_no_seq() {
        let mut room = new_room();
        let out = post(&mut room, &member("a", 1), "ann", "hi");
        assert_eq!(frame_json(&out[0].1)["code"], "not_joined");
        assert_eq!(room.seq(), 0);
    }

    #[test]
    fn a_room_restored_from_its_snapshot_keeps_seq_history_and_members() {
        let mut room = new_room();
        let (a, b) = (member("a", 1), member("b", 2));
        join(&mut room, &a, "ann", None);
        join(&mut room, &b, "bob", None);
        for i in 0..5 {
            post(&mut room, &a, "ann", &format!("t{i}"));
        }
        let snapshot = room.snapshot();
        // Across the peer link's own encoding, as a hand-off carries it.
        let msg = PeerMsg::Snapshot {
            shard: shard::ShardId(0),
            epoch: 1,
            floor: 0,
            rooms: vec![snapshot],
        };
        let wire = crate::peer::wire::encode_data(1, &msg);
        let back = match PeerFrame::decode(&wire).expect("snapshot parses") {
            PeerFrame::Data {
                msg: PeerMsg::Snapshot { mut rooms, .. },
                ..
            } => rooms.pop().expect("one room"),
            other => panic!("not a snapshot: {other:?}"),
        };
        let mut restored = Room::from_snapshot(back, 3);
        assert_eq!(restored.seq(), 5);
        assert_eq!(restored.member_count(), 2);
        let out = post(&mut restored, &b, "bob", "after");
        assert_eq!(
            out.len(),
            3,
            "still fans out to both nodes (and echoes to the sender) without re-joining"
        );
        assert_eq!(frame_json(&out[0].1)["seq"].as_u64(), Some(6));
        let joined = join(&mut restored, &member("c", 3), "cy", Some(0));
        let joined = joined
            .iter()
            .find(|(_, e)| matches!(e, EdgeEvent::Joined { .. }));
        let value = frame_json(&joined.expect("joined").1);
        assert_eq!(value["history"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn dropping_a_node_removes_its_members_and_tells_the_others() {
        let mut room = new_room();
        join(&mut room, &member("a", 1), "ann", None);
        join(&mut room, &member("gone", 2), "bob", None);
        let out = room.apply(RoomCommand::DropNode { node: node("gone") }, &mut || (0, 0));
        assert_eq!(room.member_count(), 1);
        assert!(out.iter().all(|(n, _)| n.as_str() == "a"));
        assert_eq!(frame_json(&out[0].1)["event"], "leave");
    }

    #[test]
    fn a_room_restarted_from_a_seq_continues_after_it() {
        let mut room = Room::new(RoomId::new("r").expect("valid room"), 41, 10);
        let m = member("a", 1);
        join(&mut room, &m, "ann", None);
        let out = post(&mut room, &m, "ann", "x");
        assert_eq!(frame_json(&out[0].1)["seq"].as_u64(), Some(42));
    }
}
