//! The edge: this node's local client connections and the rooms they are in.
//!
//! Room owners (local actors now, remote owners over peer links later) send one [`EdgeEvent`]
//! per node, never one per member; the edge fans it out to its own members. A broadcast's
//! WebSocket frame is encoded once and written into each member's socket right here, without
//! waking a task per member (see `outbox`). Delivery never waits: what a socket cannot take
//! waits in the connection's bounded queue, and a connection whose queue is full is
//! disconnected as a slow consumer, so one client that stops reading cannot slow anybody else.
//!
//! Events for one room arrive in the owner's order and are applied in that order under a lock,
//! so a member sees its `joined` before any message after it, and messages in `seq` order.
//! Across a hand-off too: the old owner sends its snapshot only once the edges have handled
//! its last events for the shard's rooms (see `state::outgoing`), so the new owner's first
//! ones come after them.

use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use shard::RoomId;

use crate::hashing::HashMap;
use crate::lock::lock;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Pushed};
use crate::ws::frame::WireFrame;

mod control;
mod order;

pub use control::{
    CLOSE_GOING_AWAY, CLOSE_NOT_UTF8, CLOSE_POLICY, CLOSE_PROTOCOL_ERROR, CLOSE_SLOW_CONSUMER,
    CLOSE_TOO_BIG, CloseReason, ConnControl,
};

/// A connection's id, unique within its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A `skip` that skips nobody: what an owner puts in a message's broadcast to the nodes where
/// its sender is not (see `Room`'s `broadcast_post`).
pub const NO_CONN: ConnId = ConnId(u64::MAX);

/// What the edge keeps for a connection: where to queue its frames.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// The connection's id.
    pub id: ConnId,
    /// The user it authenticated as (needed to re-join it when a room's owner is replaced).
    pub user: Arc<str>,
    /// Its way out: direct writes, and a bounded queue for what the socket cannot take yet.
    pub out: Arc<Outbox>,
    /// Its close switch.
    pub control: Arc<ConnControl>,
}

/// Something an owner tells the edge about a room. It travels over peer links, so frames are
/// carried as the exact text every client receives: serialized once, on the owner (the link's
/// encoding is `peer::wire`'s).
#[derive(Debug, Clone)]
pub enum EdgeEvent {
    /// `conn` is now a member of `room`; `frame` is its `joined` answer.
    Joined {
        room: RoomId,
        conn: ConnId,
        frame: Utf8Bytes,
    },
    /// `conn` is no longer a member; `frame` (the `left` answer) when it asked to leave.
    Left {
        room: RoomId,
        conn: ConnId,
        frame: Option<Utf8Bytes>,
    },
    /// A frame for one connection only (an `error` answer).
    ToConn { conn: ConnId, frame: Utf8Bytes },
    /// A frame for every local member of `room` but `skip`.
    Broadcast {
        room: RoomId,
        frame: Utf8Bytes,
        skip: Option<ConnId>,
        is_msg: bool,
    },
}

impl EdgeEvent {
    /// The room the event is about; `None` for a frame to one connection.
    pub fn room(&self) -> Option<&RoomId> {
        match self {
            EdgeEvent::Joined { room, .. }
            | EdgeEvent::Left { room, .. }
            | EdgeEvent::Broadcast { room, .. } => Some(room),
            EdgeEvent::ToConn { .. } => None,
        }
    }

    /// The room the event is about, for a frame to one connection too: the `room` its JSON
    /// names (an answer to a request about a room).
    pub fn room_named(&self) -> Option<RoomId> {
        #[derive(serde::Deserialize)]
        struct Named<'a> {
            #[serde(borrow)]
            room: Option<std::borrow::Cow<'a, str>>,
        }
        match self {
            EdgeEvent::ToConn { frame, .. } => {
                let named: Named<'_> = serde_json::from_str(frame.as_str()).ok()?;
                RoomId::new(named.room?.into_owned()).ok()
            }
            _ => self.room().cloned(),
        }
    }
}

/// What a connection that missed messages of a room is told, in the frame and the close frame.
pub const MISSED_REASON: &str = "events for a room were lost on their way here: re-join with since";

/// What a connection is told when a request of it may have died with a node.
pub const MISSED_REQUEST_REASON: &str =
    "a node that held one of your requests failed: re-join with since";

/// Rooms and connections are spread over stripes so that owners delivering to different rooms
/// rarely contend for one lock.
const STRIPES: usize = 64;

#[derive(Debug, Default)]
struct Stripe {
    rooms: HashMap<RoomId, HashMap<ConnId, Member>>,
    conns: HashMap<ConnId, ConnHandle>,
}

/// A local member of a room.
#[derive(Debug, Clone)]
struct Member {
    handle: ConnHandle,
    /// The last seq it was given of the room (see [`order`]); `None` when its `joined`
    /// carried none.
    seen: Option<u64>,
}

impl Stripe {
    /// Take `conn` out of `room`, dropping the room's entry when it empties and giving back
    /// the memory of maps that did (room names come from clients: see [`crate::shrink`]).
    fn remove_member(&mut self, room: &RoomId, conn: ConnId) -> Option<ConnHandle> {
        let members = self.rooms.get_mut(room)?;
        let removed = members.remove(&conn).map(|m| m.handle);
        if members.is_empty() {
            self.rooms.remove(room);
            crate::shrink::map_if_sparse(&mut self.rooms);
        } else {
            crate::shrink::map_if_sparse(members);
        }
        removed
    }
}

/// How many entries the hub's maps hold, for tests: back to the baseline once clients left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HubSizes {
    /// Rooms with at least one local member.
    pub rooms: usize,
    /// Connections registered.
    pub conns: usize,
}

/// The local delivery hub of a node.
#[derive(Debug)]
pub struct EdgeHub {
    stripes: Vec<Mutex<Stripe>>,
    metrics: Arc<Metrics>,
}

impl EdgeHub {
    /// An empty hub.
    pub fn new(metrics: Arc<Metrics>) -> EdgeHub {
        EdgeHub {
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
            metrics,
        }
    }

    fn room_stripe(&self, room: &RoomId) -> MutexGuard<'_, Stripe> {
        let index = (shard::room_hash(room.as_str()) % STRIPES as u64) as usize;
        lock(&self.stripes[index])
    }

    fn conn_stripe(&self, conn: ConnId) -> MutexGuard<'_, Stripe> {
        lock(&self.stripes[(conn.0 % STRIPES as u64) as usize])
    }

    /// Make a connection reachable for [`EdgeEvent::Joined`] and [`EdgeEvent::ToConn`].
    pub fn register(&self, handle: ConnHandle) {
        self.conn_stripe(handle.id).conns.insert(handle.id, handle);
    }

    /// Forget a connection: it stops receiving from `rooms` and from owners' replies.
    pub fn unregister(&self, conn: ConnId, rooms: impl IntoIterator<Item = RoomId>) {
        for room in rooms {
            self.room_stripe(&room).remove_member(&room, conn);
        }
        let mut stripe = self.conn_stripe(conn);
        stripe.conns.remove(&conn);
        crate::shrink::map_if_sparse(&mut stripe.conns);
    }

    /// How many entries the hub's maps hold (see [`HubSizes`]).
    pub fn sizes(&self) -> HubSizes {
        self.stripes
            .iter()
            .fold(HubSizes::default(), |sizes, stripe| {
                let stripe = lock(stripe);
                HubSizes {
                    rooms: sizes.rooms + stripe.rooms.len(),
                    conns: sizes.conns + stripe.conns.len(),
                }
            })
    }

    /// Every local connection.
    pub fn connections(&self) -> Vec<ConnHandle> {
        let mut all = Vec::new();
        for stripe in &self.stripes {
            all.extend(lock(stripe).conns.values().cloned());
        }
        all
    }

    /// Every room with local members, with those members (for re-joining them elsewhere).
    pub fn rooms_with_members(&self) -> Vec<(RoomId, Vec<ConnHandle>)> {
        let mut all = Vec::new();
        for stripe in &self.stripes {
            let stripe = lock(stripe);
            for (room, members) in &stripe.rooms {
                all.push((
                    room.clone(),
                    members.values().map(|m| m.handle.clone()).collect(),
                ));
            }
        }
        all
    }

    /// Number of local members of `room`.
    pub fn local_members(&self, room: &RoomId) -> usize {
        self.room_stripe(room)
            .rooms
            .get(room)
            .map_or(0, HashMap::len)
    }

    /// Apply one event from a room's owner.
    pub fn deliver(&self, event: EdgeEvent) {
        match event {
            EdgeEvent::Joined { room, conn, frame } => {
                let Some(handle) = self.conn_stripe(conn).conns.get(&conn).cloned() else {
                    return; // the connection went away meanwhile; its leave is on its way
                };
                let mut stripe = self.room_stripe(&room);
                // Queue the answer while holding the room's lock, so that no broadcast for the
                // room can slip in ahead of `joined`.
                self.push(&handle, &WireFrame::text(&frame), false);
                handle.control.answer();
                let seen = order::frame_seq(&frame);
                stripe
                    .rooms
                    .entry(room)
                    .or_default()
                    .insert(conn, Member { handle, seen });
            }
            EdgeEvent::Left { room, conn, frame } => {
                let removed = self.room_stripe(&room).remove_member(&room, conn);
                let handle = removed.or_else(|| self.conn_stripe(conn).conns.get(&conn).cloned());
                if let (Some(handle), Some(frame)) = (handle, frame) {
                    self.push(&handle, &WireFrame::text(&frame), false);
                    handle.control.answer();
                }
            }
            EdgeEvent::ToConn { conn, frame } => {
                let handle = self.conn_stripe(conn).conns.get(&conn).cloned();
                let Some(handle) = handle else {
                    return;
                };
                // An error, or the connection's own message (its echo), which counts in the
                // room's order for it like any other message.
                let Some((room, seq)) = order::echo_of(&frame) else {
                    if frame.starts_with(r#"{"op":"reconnect""#) {
                        // An owner that passed a request of this connection on to a node
                        // that then failed: the connection goes, as for a gap.
                        self.send_away(&handle, MISSED_REQUEST_REASON);
                        return;
                    }
                    self.push(&handle, &WireFrame::text(&frame), false);
                    handle.control.answer();
                    return;
                };
                let mut stripe = self.room_stripe(&room);
                let step = match stripe.rooms.get_mut(&room).and_then(|m| m.get_mut(&conn)) {
                    Some(member) => {
                        let step = order::step(member.seen, seq);
                        member.seen = Some(member.seen.map_or(seq, |seen| seen.max(seq)));
                        step
                    }
                    // Not a member (any more): it was sent away after a gap, or left. A
                    // connection that is closing owes no answer; one that stays open gets it.
                    None if handle.control.is_closed() => return,
                    None => order::Step::Deliver,
                };
                if step == order::Step::Gap {
                    stripe.remove_member(&room, conn);
                    drop(stripe);
                    self.send_away(&handle, MISSED_REASON);
                    return;
                }
                // A repeat is delivered too: it is the answer to the connection's send.
                self.push(&handle, &WireFrame::text(&frame), true);
                handle.control.answer();
            }
            EdgeEvent::Broadcast {
                room,
                frame,
                skip,
                is_msg,
            } => {
                let seq = if is_msg {
                    order::frame_seq(&frame)
                } else {
                    None
                };
                let mut stripe = self.room_stripe(&room);
                let Some(members) = stripe.rooms.get_mut(&room) else {
                    return;
                };
                // Encoded once, written to every member as is (server frames are unmasked).
                let wire = WireFrame::text(&frame);
                // A message with no skip at all comes from an owner of an earlier version,
                // which echoes to the sender in the broadcast: it may answer anyone here.
                let from_older_owner = is_msg && skip.is_none();
                let mut missed = Vec::new();
                for member in members.values_mut() {
                    if Some(member.handle.id) == skip {
                        continue;
                    }
                    if let Some(seq) = seq {
                        match order::step(member.seen, seq) {
                            order::Step::Deliver => member.seen = Some(seq),
                            order::Step::Repeat if !from_older_owner => continue,
                            order::Step::Repeat => {}
                            order::Step::Gap => {
                                missed.push(member.handle.clone());
                                continue;
                            }
                        }
                    }
                    self.push(&member.handle, &wire, is_msg);
                    if from_older_owner {
                        member.handle.control.answer();
                    }
                }
                for handle in &missed {
                    stripe.remove_member(&room, handle.id);
                }
                drop(stripe);
                for handle in &missed {
                    self.send_away(handle, MISSED_REASON);
                }
            }
        }
    }

    /// Members of `room` here that `which` picks are sent away to re-join (see [`order`]):
    /// nothing more of the room reaches them on this connection. Returns how many.
    pub fn send_away_from(
        &self,
        room: &RoomId,
        which: impl Fn(&ConnHandle) -> bool,
        reason: &str,
    ) -> u64 {
        let picked: Vec<ConnHandle> = {
            let mut stripe = self.room_stripe(room);
            let picked: Vec<ConnHandle> = stripe
                .rooms
                .get(room)
                .map(|members| {
                    members
                        .values()
                        .filter(|m| which(&m.handle))
                        .map(|m| m.handle.clone())
                        .collect()
                })
                .unwrap_or_default();
            for handle in &picked {
                stripe.remove_member(room, handle.id);
            }
            picked
        };
        for handle in &picked {
            self.send_away(handle, reason);
        }
        picked.len() as u64
    }

    /// Tell one connection that it missed something (messages, or the answer to a request): a
    /// `reconnect` frame, then close 1013. Its client re-joins with `since`, which replays what
    /// it missed. Counted in `roomshard_gap_reconnects_total`.
    pub fn send_away(&self, handle: &ConnHandle, reason: &str) {
        if handle.control.is_closed() {
            return;
        }
        self.metrics.gap_reconnects.inc();
        let frame = crate::protocol::reconnect_frame(reason, Some(0));
        self.push(handle, &WireFrame::text(&frame), false);
        handle.control.close(CloseReason {
            code: CLOSE_SLOW_CONSUMER,
            reason: reason.to_owned(),
            flush: true,
        });
    }

    /// Write (or queue) a frame for one connection without waiting; a full queue disconnects it.
    pub fn push(&self, handle: &ConnHandle, frame: &WireFrame, is_msg: bool) -> bool {
        match handle.out.push(frame) {
            Pushed::Written | Pushed::Queued => {
                self.metrics.frames_delivered.inc();
                if is_msg {
                    self.metrics.messages_delivered.inc();
                }
                true
            }
            Pushed::Full => {
                self.metrics.queue_drops.inc();
                if !handle.control.is_closed() {
                    self.metrics.slow_consumers.inc();
                    tracing::info!(conn = handle.id.0, "disconnecting slow consumer");
                }
                handle.control.close(CloseReason {
                    code: CLOSE_SLOW_CONSUMER,
                    reason: "slow consumer: outgoing queue full".to_owned(),
                    flush: false,
                });
                false
            }
            Pushed::Closed => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomId {
        RoomId::new(name).expect("valid room")
    }

    /// A connection whose frames stay queued for the test to read, in `capacity` slots.
    fn conn(hub: &EdgeHub, id: u64, capacity: usize) -> (ConnHandle, Arc<Outbox>) {
        let out = Arc::new(Outbox::detached(capacity));
        let handle = ConnHandle {
            id: ConnId(id),
            user: "u".into(),
            out: out.clone(),
            control: Arc::default(),
        };
        hub.register(handle.clone());
        (handle, out)
    }

    fn broadcast(room_name: &str, text: &str, skip: Option<ConnId>) -> EdgeEvent {
        EdgeEvent::Broadcast {
            room: room(room_name),
            frame: text.into(),
            skip,
            is_msg: true,
        }
    }

    #[test]
    fn a_member_gets_joined_first_then_broadcasts_and_non_members_get_nothing() {
        let hub = EdgeHub::new(Arc::default());
        let (_a, a_out) = conn(&hub, 1, 8);
        let (_b, b_out) = conn(&hub, 2, 8);
        hub.deliver(broadcast("r", "before", None));
        hub.deliver(EdgeEvent::Joined {
            room: room("r"),
            conn: ConnId(1),
            frame: "joined".into(),
        });
        hub.deliver(broadcast("r", "m1", None));
        assert_eq!(a_out.take_queued(), ["joined", "m1"]);
        assert!(b_out.take_queued().is_empty());
    }

    #[test]
    fn broadcast_skips_the_named_connection() {
        let hub = EdgeHub::new(Arc::default());
        let (_a, a_out) = conn(&hub, 1, 8);
        let (_b, b_out) = conn(&hub, 2, 8);
        for id in [1, 2] {
            hub.deliver(EdgeEvent::Joined {
                room: room("r"),
                conn: ConnId(id),
                frame: "j".into(),
            });
        }
        hub.deliver(broadcast("r", "presence", Some(ConnId(1))));
        assert_eq!(a_out.take_queued(), ["j"]);
        assert_eq!(b_out.take_queued(), ["j", "presence"]);
    }

    #[test]
    fn a_full_queue_disconnects_only_that_slow_consumer() {
        let metrics = Arc::new(Metrics::default());
        let hub = EdgeHub::new(metrics.clone());
        let (slow, _slow_out) = conn(&hub, 1, 2);
        let (fast, fast_out) = conn(&hub, 2, 64);
        for id in [1, 2] {
            hub.deliver(EdgeEvent::Joined {
                room: room("r"),
                conn: ConnId(id),
                frame: "j".into(),
            });
        }
        for i in 0..10 {
            hub.deliver(broadcast("r", &format!("m{i}"), None));
        }
        assert!(slow.control.is_closed());
        assert_eq!(
            slow.control.reason().map(|r| r.code),
            Some(CLOSE_SLOW_CONSUMER)
        );
        assert!(!fast.control.is_closed());
        assert_eq!(fast_out.take_queued().len(), 11);
        assert_eq!(metrics.slow_consumers.get(), 1);
        assert_eq!(metrics.queue_drops.get(), 9);
    }

    #[test]
    fn leaving_and_unregistering_stop_delivery() {
        let hub = EdgeHub::new(Arc::default());
        let (_a, a_out) = conn(&hub, 1, 8);
        hub.deliver(EdgeEvent::Joined {
            room: room("r"),
            conn: ConnId(1),
            frame: "j".into(),
        });
        hub.deliver(EdgeEvent::Left {
            room: room("r"),
            conn: ConnId(1),
            frame: Some("left".into()),
        });
        hub.deliver(broadcast("r", "after", None));
        assert_eq!(a_out.take_queued(), ["j", "left"]);
        assert_eq!(hub.local_members(&room("r")), 0);
        hub.unregister(ConnId(1), []);
        hub.deliver(EdgeEvent::ToConn {
            conn: ConnId(1),
            frame: "err".into(),
        });
        assert!(a_out.take_queued().is_empty());
    }
}
