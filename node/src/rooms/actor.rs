//! One room's actor: applies its commands in queue order, replicates each change to the
//! shard's follower and releases what the change produced for members only once the follower
//! holds it (see [`crate::replication`]), answers hand-off and sync requests, and passivates
//! when idle and empty.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shard::NodeName;
use tokio::sync::{Notify, mpsc, oneshot};

use super::{ActorMsg, Rooms};
use crate::edge::EdgeEvent;
use crate::protocol::{self, ErrorCode};
use crate::replication::{Answer, Change, ChangeFor, FollowerRef, Replication, Settled, next_rid};
use crate::room::{MemberKey, Outbound, Room, RoomCommand, RoomSnapshot};
use crate::snowflake::unix_ms;

/// How often a room whose change could not be queued to its follower (full outbox, link
/// down) sends its whole state again.
const RESEND: Duration = Duration::from_millis(250);

/// How long a room waits before it sends its whole state again to a follower that had no
/// copy of it (or does not follow the shard in its table yet).
const RETRY_WHOLE: Duration = Duration::from_millis(20);

/// How often a room waiting to be frozen for a hand-off looks at whether the table named
/// another follower (or none) meanwhile, and sends its whole state to it: the `Sync` that
/// would say so waits in the room's queue behind the hand-off.
const FREEZE_CHECK: Duration = Duration::from_millis(250);

/// Refusals kept for the actor at most; the follower answers each change once, so more means
/// a confused peer, and the next resend settles the room anyway.
const MAX_REFUSALS: usize = 16;

/// A follower's answers to one room's changes, waiting for the room's actor. Bounded: of the
/// acknowledgements only the highest matters (they are cumulative).
#[derive(Debug, Default)]
pub(super) struct Answers {
    inbox: Mutex<Inbox>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Inbox {
    held: Option<(NodeName, u64)>,
    refusals: Vec<(NodeName, u64, Answer)>,
}

impl Answers {
    pub(super) fn push(&self, from: &NodeName, rid: u64, answer: Answer) {
        {
            let mut inbox = crate::lock::lock(&self.inbox);
            match answer {
                Answer::Held => {
                    let higher = inbox
                        .held
                        .as_ref()
                        .is_none_or(|(node, held)| node != from || *held < rid);
                    if higher {
                        inbox.held = Some((from.clone(), rid));
                    }
                }
                _ if inbox.refusals.len() < MAX_REFUSALS => {
                    inbox.refusals.push((from.clone(), rid, answer));
                }
                _ => {}
            }
        }
        self.notify.notify_one();
    }

    fn take(&self) -> Inbox {
        std::mem::take(&mut *crate::lock::lock(&self.inbox))
    }
}

pub(super) struct RoomActor {
    /// The room's shard, for the per-shard counters and the follower.
    shard: u32,
    /// The members this actor has added to its shard's member gauge.
    counted: usize,
    room: Room,
    /// Set by a hand-off: the state went to the new owner, late commands follow it there.
    forwarding: bool,
    seq: Arc<AtomicU64>,
    rx: mpsc::Receiver<ActorMsg>,
    weak: mpsc::WeakSender<ActorMsg>,
    answers: Arc<Answers>,
    /// Set by [`Rooms::depose`] (the registry's side of it): see [`RoomActor::deposed`].
    deposed: Arc<AtomicBool>,
    replication: Replication,
    /// A change could not be queued to the follower: resend the whole room at this time.
    resend_at: Option<tokio::time::Instant>,
    /// A hand-off waiting for the follower to answer the changes in flight. Meanwhile the
    /// queue is not read: what comes after the hand-off follows the room to its new owner.
    freezing: Option<oneshot::Sender<RoomSnapshot>>,
    rooms: Arc<Rooms>,
}

impl RoomActor {
    pub(super) fn new(
        room: Room,
        seq: Arc<AtomicU64>,
        rx: mpsc::Receiver<ActorMsg>,
        weak: mpsc::WeakSender<ActorMsg>,
        answers: Arc<Answers>,
        deposed: Arc<AtomicBool>,
        rooms: Arc<Rooms>,
    ) -> RoomActor {
        RoomActor {
            shard: rooms.shard(room.id()).0,
            counted: 0,
            room,
            forwarding: false,
            seq,
            rx,
            weak,
            answers,
            deposed,
            replication: Replication::default(),
            resend_at: None,
            freezing: None,
            rooms,
        }
    }

    pub(super) async fn run(mut self) {
        let rooms = self.rooms.clone();
        self.count_members(self.room.member_count());
        // One timer for the actor's life, moved only when it fires early: a command costs a
        // clock read, not a new timer.
        let idle = tokio::time::sleep(self.idle_after());
        tokio::pin!(idle);
        let mut last = tokio::time::Instant::now();
        let answers = self.answers.clone();
        loop {
            let resend_at = self.resend_at;
            tokio::select! {
                message = self.rx.recv(), if self.freezing.is_none() => {
                    last = tokio::time::Instant::now();
                    match message {
                        Some(ActorMsg::Command(command, _)) if self.forwarding => {
                            rooms.fanout.forward(self.room.id().clone(), command);
                        }
                        Some(ActorMsg::Command(command, received)) => self.handle(command, received),
                        Some(ActorMsg::HandOff { reply, deposed }) => {
                            if !self.forwarding {
                                if deposed {
                                    self.depose();
                                }
                                self.freezing = Some(reply);
                            }
                        }
                        Some(ActorMsg::Sync { again, reply }) => {
                            if !self.forwarding {
                                if again {
                                    self.replication.unsynced();
                                }
                                self.sync();
                            }
                            let _ = reply.send(());
                        }
                        None => break,
                    }
                }
                () = answers.notify.notified() => self.on_answers(),
                () = tokio::time::sleep_until(resend_at.unwrap_or_else(tokio::time::Instant::now)), if resend_at.is_some() => {
                    self.resend_at = None;
                    self.sync();
                }
                () = &mut idle, if self.forwarding || (self.room.is_empty() && self.replication.in_flight() == 0 && self.freezing.is_none()) => {
                    let now = tokio::time::Instant::now();
                    let due = last + self.idle_after();
                    if now < due {
                        idle.as_mut().reset(due);
                        continue;
                    }
                    if rooms.try_passivate(self.room.id(), &self.weak, !self.rx.is_empty()) {
                        if !self.forwarding {
                            rooms.metrics.rooms_passivated.inc();
                            let seq = self.room.seq();
                            self.replicate(Change::Rested { seq });
                        }
                        tracing::debug!(room = %self.room.id(), seq = self.room.seq(), "room actor stopped");
                        break;
                    }
                    idle.as_mut().reset(now + self.idle_after());
                }
            }
            if self.freezing.is_some() {
                self.hand_off();
                if self.freezing.is_some() && self.resend_at.is_none() {
                    self.resend_at = Some(tokio::time::Instant::now() + FREEZE_CHECK);
                }
                if self.forwarding {
                    // A forwarding actor lingers briefly: bring the timer forward.
                    idle.as_mut().reset(last + self.idle_after());
                }
            }
        }
        self.count_members(0);
        rooms.metrics.rooms_active.dec();
    }

    /// A hand-off freezes the room only once the follower holds every change in flight, so
    /// that every acknowledged message is on two nodes while the snapshot travels (custody,
    /// see `shard::custody`): the snapshot goes when nothing is in flight, or when the table
    /// names no follower but this node (nobody else can answer; the table then says the shard
    /// is on one node until the target holds it, see `single_copy_shards`). A follower that
    /// stops answering is replaced by the operator, and the room sends itself whole to the
    /// new one (`FREEZE_CHECK`). Then the actor only forwards.
    fn hand_off(&mut self) {
        let answerable = self
            .rooms
            .fanout
            .follower(shard::ShardId(self.shard))
            .is_some();
        if answerable && self.replication.in_flight() > 0 {
            return;
        }
        let Some(reply) = self.freezing.take() else {
            return;
        };
        let _ = reply.send(self.room.snapshot());
        self.forwarding = true;
        // Held back for nothing any more (nothing in flight), or for no follower: it goes out
        // with the state on its way to the new owner.
        let held = self.replication.no_follower();
        self.send_out(held);
        self.resend_at = None;
        // The members went with the state.
        self.count_members(0);
    }

    /// How long the room waits idle before it passivates: briefly once it only forwards, and
    /// at once when it is bare (joined and left, nothing said): it has nothing to keep, so
    /// joining and leaving room names costs no memory past the visit.
    fn idle_after(&self) -> Duration {
        let passivate_after = self.rooms.settings.passivate_after;
        if self.forwarding {
            Duration::from_millis(200).min(passivate_after)
        } else if self.room.is_bare() {
            // A millisecond, not zero: a sender holding a permit makes passivation wait, and
            // the actor must not spin meanwhile.
            Duration::from_millis(1).min(passivate_after)
        } else {
            passivate_after
        }
    }

    /// Brings the shard's member gauge to `members` for this room.
    fn count_members(&mut self, members: usize) {
        if members != self.counted {
            let delta = members as i64 - self.counted as i64;
            self.rooms.counters.members_changed(self.shard, delta);
            self.counted = members;
        }
    }

    fn refuse(&self, member: &MemberKey, cid: Option<&str>, code: ErrorCode, why: &str) {
        let frame = protocol::error_frame(code, why, cid, Some(self.room.id()));
        let answer = EdgeEvent::ToConn {
            conn: member.conn,
            frame: frame.into(),
        };
        self.rooms.fanout.deliver(&member.node, answer);
    }

    fn handle(&mut self, command: RoomCommand, received: Instant) {
        let shard = shard::ShardId(self.shard);
        if self.deposed(shard) {
            // The table gave the shard away while this node was paused or cut off, and the
            // freeze has not reached this actor yet: what waits for the follower is refused
            // (the new owner started from a copy that may lack it), and the command goes to
            // the new owner, as it would after the freeze.
            self.depose();
            self.rooms.fanout.forward(self.room.id().clone(), command);
            return;
        }
        let follower = self.rooms.fanout.follower(shard);
        if let RoomCommand::Post { member, cid, .. } = &command {
            if !self.rooms.fanout.can_take(&mut self.room.nodes()) {
                // Refused before it takes a seq: a message some members could not be sent.
                self.rooms.metrics.sends_refused_overloaded.inc();
                return self.refuse(
                    member,
                    cid.as_deref(),
                    ErrorCode::Overloaded,
                    "a node with members in this room cannot take more messages now; retry later",
                );
            }
            if follower.is_some() && !self.replication.has_room() {
                return self.refuse(
                    member,
                    cid.as_deref(),
                    ErrorCode::RoomUnavailable,
                    "the room's follower is not answering; retry later",
                );
            }
        }
        let membership = self.membership_change(&command);
        let sender = match &command {
            RoomCommand::Post { member, cid, .. } => Some((member.clone(), cid.clone())),
            _ => None,
        };
        let before = self.room.seq();
        let ids = &self.rooms.ids;
        let out = self.room.apply(command, &mut || {
            let ts = unix_ms();
            (ids.next(ts), ts)
        });
        let accepted = self.room.seq() != before;
        if accepted {
            self.seq.store(self.room.seq(), Ordering::Release);
            self.rooms.metrics.messages_in.inc();
            // Every member gets it, the sender's echo included.
            self.rooms
                .counters
                .delivered(self.shard, self.room.member_count());
        }
        if !self.forwarding {
            self.count_members(self.room.member_count());
        }
        let change = match (accepted, self.room.last_frame()) {
            (true, Some(frame)) => Some(Change::Message {
                seq: self.room.seq(),
                frame: frame.clone(),
            }),
            // No history kept (a limit of 0): the whole room carries the new seq.
            (true, None) => Some(Change::Whole(self.room.snapshot())),
            _ => membership,
        };
        match (follower, change) {
            (None, _) => {
                // Anything held for a follower the table no longer names goes first.
                let held = self.replication.no_follower();
                self.send_out(held);
                self.send_out(out);
            }
            (Some(_), None) => {
                let out = self.replication.after_in_flight(out);
                self.send_out(out);
            }
            (Some(follower), Some(change)) => {
                let sender = sender.filter(|_| accepted);
                self.replicate_holding(follower, change, before, out, sender);
            }
        }
        if accepted {
            self.rooms.metrics.send_fanned_out(received.elapsed());
        }
    }

    /// What `command` changes in the room's membership, judged before it is applied.
    fn membership_change(&self, command: &RoomCommand) -> Option<Change> {
        match command {
            RoomCommand::Join { member, user, .. } => {
                (!self.room.has_member(member)).then(|| Change::Joined {
                    member: member.clone(),
                    user: user.clone(),
                })
            }
            RoomCommand::Leave { member, .. } => {
                self.room.has_member(member).then(|| Change::Left {
                    member: member.clone(),
                })
            }
            RoomCommand::DropNode { node } => self
                .room
                .has_node(node)
                .then(|| Change::NodeLeft { node: node.clone() }),
            RoomCommand::Post { .. } => None,
        }
    }

    /// Send `change` (or the whole room, to a follower new to it) and hold `out` until the
    /// follower holds it.
    fn replicate_holding(
        &mut self,
        follower: FollowerRef,
        change: Change,
        seq_before: u64,
        out: Vec<Outbound>,
        sender: Option<(MemberKey, Option<String>)>,
    ) {
        let rid = next_rid();
        let change = if self.replication.needs_whole(&follower) {
            self.replication.synced(follower.clone(), rid);
            self.rooms.metrics.rooms_sent_whole.inc();
            Change::Whole(self.room.snapshot())
        } else {
            change
        };
        self.replication.hold(rid, seq_before, out, sender);
        self.send_change(&follower, rid, change);
    }

    /// Queue one change to the follower; when it cannot be queued the copy is no longer
    /// trusted and the whole room goes again shortly.
    fn send_change(&mut self, follower: &FollowerRef, rid: u64, change: Change) {
        let sent = self.rooms.fanout.replicate(
            &follower.node,
            ChangeFor {
                shard: shard::ShardId(self.shard),
                epoch: follower.epoch,
                room: self.room.id().clone(),
                rid,
                change,
            },
        );
        if !sent {
            self.replication.unsynced();
            self.resend_at = Some(tokio::time::Instant::now() + RESEND);
        }
    }

    /// A change that holds nothing back (the room passivated): sent if there is a follower.
    fn replicate(&mut self, change: Change) {
        if let Some(follower) = self.rooms.fanout.follower(shard::ShardId(self.shard))
            && !self.replication.needs_whole(&follower)
        {
            self.send_change(&follower, next_rid(), change);
        }
    }

    /// Bring the follower's copy up to date: the whole room to a follower new to it, and with
    /// no follower in the table, everything held goes out.
    /// Whether this room no longer gives out seqs here: the table gave its shard to another
    /// node without a hand-off from this one, or the node deposed its rooms (their table may
    /// name this node the owner again, waiting for the newer rooms of the node that owned the
    /// shard meanwhile).
    fn deposed(&self, shard: shard::ShardId) -> bool {
        self.deposed.load(Ordering::Acquire) || self.rooms.fanout.deposed(shard)
    }

    /// Refuse what waits for the follower: see [`Replication::deposed`].
    fn depose(&mut self) {
        if self.replication.in_flight() > 0 {
            let settled = self.replication.deposed();
            self.settle(settled);
        }
    }

    fn sync(&mut self) {
        let shard = shard::ShardId(self.shard);
        if self.deposed(shard) {
            return self.depose();
        }
        match self.rooms.fanout.follower(shard) {
            None => {
                let held = self.replication.no_follower();
                self.send_out(held);
            }
            Some(follower) if self.replication.needs_whole(&follower) => {
                let rid = next_rid();
                self.replication.synced(follower.clone(), rid);
                self.replication
                    .hold(rid, self.room.seq(), Vec::new(), None);
                self.rooms.metrics.rooms_sent_whole.inc();
                self.send_change(&follower, rid, Change::Whole(self.room.snapshot()));
            }
            Some(_) => {}
        }
    }

    fn on_answers(&mut self) {
        let inbox = self.answers.take();
        if self.deposed.load(Ordering::Acquire) {
            // Deposed while waiting (a hand-off's source back from an absence): a follower
            // that holds the changes now may hold them under a table that gave the shard
            // back to this node, and its `Held` would release seqs the owner of the shard
            // meanwhile gave to others. What waits is refused first.
            self.depose();
        }
        for (from, rid, answer) in inbox.refusals {
            let settled = self.replication.answered(&from, rid, answer);
            self.settle(settled);
        }
        if let Some((from, rid)) = inbox.held {
            let settled = self.replication.answered(&from, rid, Answer::Held);
            self.settle(settled);
        }
    }

    fn settle(&mut self, settled: Settled) {
        self.send_out(settled.release);
        if let Some(seq) = settled.rollback_to {
            tracing::warn!(room = %self.room.id(), seq, "the follower refused this node as the room's owner: messages it did not hold are withdrawn");
            self.room.roll_back_to(seq);
            self.seq.store(self.room.seq(), Ordering::Release);
        }
        for (member, cid) in &settled.refused {
            self.refuse(
                member,
                cid.as_deref(),
                ErrorCode::RoomUnavailable,
                "this node no longer owns the room; retry",
            );
        }
        if settled.resend_whole {
            // Not at once: a node that does not follow the shard (yet) in its table answers
            // the same way, and needs a moment for the tables to agree.
            self.resend_at = Some(tokio::time::Instant::now() + RETRY_WHOLE);
        }
    }

    fn send_out(&self, out: Vec<Outbound>) {
        for (node, event) in out {
            self.rooms.fanout.deliver(&node, event);
        }
    }
}
