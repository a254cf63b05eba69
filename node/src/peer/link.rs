//! One peer link's delivery state, which outlives the connections that carry it.
//!
//! Every message to a peer gets the next number of this node's stream to that peer and stays
//! in the link's outbox until the peer acknowledges it. When a connection breaks, the next one
//! starts by telling each side how far it got, and the rest is sent again; the receiver drops
//! numbers it has already seen. So a message is delivered once, in order, or — when the peer
//! restarted or left the cluster and can never take it — handed back ("bounced") so that its
//! sender can be answered with an error instead of silence.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use shard::{NodeName, RoomId};
use tokio::sync::Notify;

use super::wire::{PeerFrame, PeerMsg};

/// How many data frames a writer sends before it flushes.
const BATCH: usize = 256;
/// Rooms a gap names one by one; past this many it covers every room (bounded whatever the
/// number of rooms whose events were refused).
const MAX_GAP_ROOMS: usize = 256;
/// How often a receiver acknowledges what it got, at the latest.
const ACK_EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, Default)]
struct LinkState {
    /// The peer process we are in step with; a new one means its state is gone.
    peer_incarnation: Option<u64>,
    /// Last number received from the peer.
    received: u64,
    /// Number for the next message to the peer.
    next_seq: u64,
    /// Sent or not yet, but not acknowledged.
    unacked: VecDeque<(u64, Arc<PeerMsg>)>,
    /// Bumped by each new connection, so an old one stops writing.
    generation: u64,
    /// Bumped whenever the outbox is emptied without acknowledgement (the peer restarted or
    /// left), so a [`Sent`] mark taken before knows its messages are settled.
    resets: u64,
    /// Events the full outbox could not take, to announce once it has room.
    gap: Option<Gap>,
}

/// What a full outbox refused: the rooms of the events, or all rooms.
#[derive(Debug, Default)]
struct Gap {
    rooms: BTreeSet<RoomId>,
    all: bool,
}

impl Gap {
    fn add(&mut self, room: Option<RoomId>) {
        match room {
            Some(room) if !self.all && self.rooms.len() < MAX_GAP_ROOMS => {
                self.rooms.insert(room);
            }
            Some(room) if self.rooms.contains(&room) => {}
            _ => {
                self.all = true;
                self.rooms.clear();
            }
        }
    }

    fn into_msg(self) -> PeerMsg {
        PeerMsg::Gap {
            rooms: self.rooms.into_iter().collect(),
            all: self.all,
        }
    }
}

/// How far this node's stream to a peer had got at one moment: what [`PeerLink::delivered`]
/// waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    resets: u64,
    seq: u64,
}

/// The delivery state of the link to one peer.
#[derive(Debug)]
pub struct PeerLink {
    /// The peer at the other end.
    pub peer: NodeName,
    state: Mutex<LinkState>,
    wake: Notify,
    /// Woken when messages are acknowledged or bounced, for [`PeerLink::delivered`].
    settled: Notify,
    /// Ends the current connection (see [`PeerLink::reset`]).
    cut: Notify,
    connected: AtomicBool,
    /// Whether the outbox is full, readable without the lock.
    full: AtomicBool,
    max_unacked: usize,
}

impl PeerLink {
    /// A link with no connection yet; at most `max_unacked` messages wait for acknowledgement.
    pub fn new(peer: NodeName, max_unacked: usize) -> PeerLink {
        PeerLink {
            peer,
            state: Mutex::new(LinkState {
                next_seq: 1,
                ..LinkState::default()
            }),
            wake: Notify::new(),
            settled: Notify::new(),
            cut: Notify::new(),
            connected: AtomicBool::new(false),
            full: AtomicBool::new(false),
            max_unacked: max_unacked.max(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, LinkState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queue a message for the peer.
    ///
    /// # Errors
    /// The message back when the outbox is full (the peer has been unreachable for long).
    pub fn push(&self, msg: PeerMsg) -> Result<(), PeerMsg> {
        // The message is the only handle to itself here: handing it back does not copy it.
        self.push_shared(Arc::new(msg))
            .map_err(Arc::unwrap_or_clone)
    }

    /// Queue a message that the caller keeps a handle to (to send it again later).
    ///
    /// # Errors
    /// The message back when the outbox is full.
    pub fn push_shared(&self, msg: Arc<PeerMsg>) -> Result<(), Arc<PeerMsg>> {
        let mut state = self.state();
        Self::announce_gap(&mut state, self.max_unacked);
        if state.unacked.len() >= self.max_unacked {
            self.note_fill(&state);
            return Err(msg);
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.unacked.push_back((seq, msg));
        self.note_fill(&state);
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    /// Note that an event for `room` (`None`: for a room not known) could not be queued. The
    /// gap is announced to the peer as soon as the outbox has room, ahead of anything newer;
    /// see [`PeerMsg::Gap`]. Returns true when this starts a gap (none was pending).
    pub fn mark_gap(&self, room: Option<RoomId>) -> bool {
        let mut state = self.state();
        let started = state.gap.is_none();
        state.gap.get_or_insert_default().add(room);
        started
    }

    /// Queue the pending gap announcement if there is one and room for it; true if queued.
    fn announce_gap(state: &mut LinkState, max_unacked: usize) -> bool {
        if state.unacked.len() >= max_unacked {
            return false;
        }
        let Some(gap) = state.gap.take() else {
            return false;
        };
        let seq = state.next_seq;
        state.next_seq += 1;
        state.unacked.push_back((seq, Arc::new(gap.into_msg())));
        true
    }

    /// Whether the outbox is full (a push now would fail). Lock-free: room owners ask it for
    /// every message.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Keep [`PeerLink::is_full`] in step with the outbox (called with the state locked).
    fn note_fill(&self, state: &LinkState) {
        self.full
            .store(state.unacked.len() >= self.max_unacked, Ordering::Relaxed);
    }

    /// A mark of everything queued for the peer so far.
    pub fn sent(&self) -> Sent {
        let state = self.state();
        Sent {
            resets: state.resets,
            seq: state.next_seq - 1,
        }
    }

    /// Whether everything queued up to `mark` is settled: the peer acknowledged it, so it has
    /// handled it (a peer acknowledges a message only after handling it), or it was bounced.
    pub fn is_delivered(&self, mark: Sent) -> bool {
        let state = self.state();
        state.resets != mark.resets || state.unacked.front().is_none_or(|(seq, _)| *seq > mark.seq)
    }

    /// Resolves once everything queued up to `mark` is settled (see [`PeerLink::is_delivered`]).
    /// A peer that stays unreachable keeps it waiting: callers bound the wait.
    pub async fn delivered(&self, mark: Sent) {
        loop {
            let next = self.settled.notified();
            tokio::pin!(next);
            next.as_mut().enable();
            if self.is_delivered(mark) {
                return;
            }
            next.await;
        }
    }

    /// Drop the current connection (if any); the dialer reconnects and the link resends what
    /// was not acknowledged. For operators and tests: what a network blip does.
    pub fn reset(&self) {
        self.cut.notify_waiters();
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Messages waiting for acknowledgement.
    pub fn pending(&self) -> usize {
        self.state().unacked.len()
    }

    /// How far this node got in the peer's stream, to tell a new connection.
    pub fn received(&self) -> u64 {
        self.state().received
    }

    /// Note which process the peer is. A different one than before restarted with no memory
    /// of this link: numbering starts over both ways and what it never acknowledged is
    /// returned, to be answered with errors.
    pub fn meet(&self, incarnation: u64) -> Vec<Arc<PeerMsg>> {
        let mut state = self.state();
        match state.peer_incarnation {
            Some(known) if known != incarnation => {
                state.peer_incarnation = Some(incarnation);
                state.received = 0;
                state.next_seq = 1;
                state.resets += 1;
                // Its clients reconnected to a new process anyway.
                state.gap = None;
                let bounced = state.unacked.drain(..).map(|(_, m)| m).collect();
                self.note_fill(&state);
                drop(state);
                self.settled.notify_waiters();
                bounced
            }
            _ => {
                state.peer_incarnation = Some(incarnation);
                Vec::new()
            }
        }
    }

    /// Everything still queued, removed (the peer left the cluster for good).
    pub fn take_all(&self) -> Vec<Arc<PeerMsg>> {
        let mut state = self.state();
        state.generation += 1;
        state.resets += 1;
        state.gap = None;
        let taken = state.unacked.drain(..).map(|(_, m)| m).collect();
        self.note_fill(&state);
        drop(state);
        self.settled.notify_waiters();
        taken
    }

    fn ack(&self, upto: u64) {
        let mut state = self.state();
        while state.unacked.front().is_some_and(|(seq, _)| *seq <= upto) {
            state.unacked.pop_front();
        }
        let announced = Self::announce_gap(&mut state, self.max_unacked);
        self.note_fill(&state);
        drop(state);
        self.settled.notify_waiters();
        if announced {
            self.wake.notify_one();
        }
    }

    /// Whether a gap waits to be announced.
    pub fn has_gap(&self) -> bool {
        self.state().gap.is_some()
    }

    /// True when `seq` is new (the next one); false for a repeat after a resend.
    fn accept(&self, seq: u64) -> bool {
        let mut state = self.state();
        if seq <= state.received {
            return false;
        }
        state.received = seq;
        true
    }

    fn unsent(&self, after: u64, generation: u64) -> Option<Vec<(u64, Arc<PeerMsg>)>> {
        let state = self.state();
        if state.generation != generation {
            return None;
        }
        Some(
            state
                .unacked
                .iter()
                .filter(|(seq, _)| *seq > after)
                .take(BATCH)
                .map(|(seq, m)| (*seq, m.clone()))
                .collect(),
        )
    }

    /// Carry the link over one established connection until it breaks. `resume_from` is how far
    /// the peer got in our stream; `deliver` gets every new message from the peer, in order.
    pub async fn run<W, R>(
        self: &Arc<Self>,
        mut sink: W,
        mut stream: R,
        resume_from: u64,
        deliver: &(dyn Fn(PeerMsg) + Send + Sync),
    ) where
        W: Sink<Vec<u8>> + Unpin + Send,
        R: Stream<Item = Bytes> + Unpin + Send,
    {
        self.ack(resume_from);
        let generation = {
            let mut state = self.state();
            state.generation += 1;
            state.generation
        };
        self.connected.store(true, Ordering::Relaxed);
        let reader = async {
            while let Some(bytes) = stream.next().await {
                match PeerFrame::decode_shared(&bytes) {
                    Ok(PeerFrame::Data { seq, msg }) => {
                        if self.accept(seq) {
                            deliver(msg);
                        }
                    }
                    Ok(PeerFrame::Ack { seq }) => self.ack(seq),
                    Ok(other) => {
                        tracing::warn!(peer = %self.peer, frame = ?other, "unexpected peer frame");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(peer = %self.peer, error = %e, bytes = %hex::encode(&bytes[..bytes.len().min(400)]), len = bytes.len(), "malformed peer frame");
                        return;
                    }
                }
            }
        };
        let writer = async {
            let mut sent = resume_from;
            let mut acked = 0;
            let mut tick = tokio::time::interval(ACK_EVERY);
            loop {
                tokio::select! {
                    () = self.wake.notified() => {}
                    _ = tick.tick() => {}
                }
                loop {
                    let Some(batch) = self.unsent(sent, generation) else {
                        return; // a newer connection took over
                    };
                    if batch.is_empty() {
                        break;
                    }
                    for (seq, msg) in batch {
                        if sink
                            .feed(super::wire::encode_data(seq, &msg))
                            .await
                            .is_err()
                        {
                            return;
                        }
                        sent = seq;
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
                let received = self.received();
                if received > acked {
                    if sink
                        .send(PeerFrame::Ack { seq: received }.encode())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    acked = received;
                }
            }
        };
        tokio::select! {
            () = reader => {}
            () = writer => {}
            () = self.cut.notified() => tracing::info!(peer = %self.peer, "peer connection reset"),
        }
        if self.state().generation == generation {
            self.connected.store(false, Ordering::Relaxed);
        }
    }
}

/// What unit tests elsewhere in the crate play the peer with.
#[cfg(test)]
impl PeerLink {
    /// What waits for acknowledgement, oldest first.
    pub(crate) fn outbox(&self) -> Vec<Arc<PeerMsg>> {
        self.state()
            .unacked
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// The peer acknowledges everything queued so far.
    pub(crate) fn ack_all(&self) {
        let upto = self.state().next_seq - 1;
        self.ack(upto);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::{ConnId, EdgeEvent};

    fn msg(n: u64) -> PeerMsg {
        PeerMsg::Event(EdgeEvent::ToConn {
            conn: ConnId(n),
            frame: "x".into(),
        })
    }

    fn conn_of(msg: &PeerMsg) -> u64 {
        match msg {
            PeerMsg::Event(EdgeEvent::ToConn { conn, .. }) => conn.0,
            _ => 0,
        }
    }

    fn link() -> Arc<PeerLink> {
        Arc::new(PeerLink::new(NodeName::new("peer").expect("valid"), 4))
    }

    #[test]
    fn a_full_outbox_hands_the_message_back() {
        let link = link();
        for n in 0..4 {
            assert!(link.push(msg(n)).is_ok());
        }
        assert!(link.is_full());
        let bounced = link.push(msg(9)).expect_err("outbox full");
        assert_eq!(conn_of(&bounced), 9);
        link.ack(2);
        assert!(!link.is_full());
        assert!(
            link.push(msg(10)).is_ok(),
            "acknowledged messages free room"
        );
    }

    #[test]
    fn repeats_after_a_resend_are_dropped() {
        let link = link();
        assert!(link.accept(1));
        assert!(link.accept(2));
        assert!(!link.accept(2));
        assert!(!link.accept(1));
        assert!(link.accept(3));
    }

    #[test]
    fn a_restarted_peer_gets_its_unacknowledged_messages_bounced_and_numbering_restarts() {
        let link = link();
        assert!(link.meet(7).is_empty());
        link.push(msg(1)).expect("room");
        link.push(msg(2)).expect("room");
        link.accept(5);
        assert!(link.meet(7).is_empty(), "same process: nothing changes");
        let bounced = link.meet(8);
        assert_eq!(
            bounced.iter().map(|m| conn_of(m)).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(link.received(), 0);
        link.push(msg(3)).expect("room");
        assert_eq!(link.unsent(0, 0).expect("same generation")[0].0, 1);
    }

    #[tokio::test]
    async fn messages_lost_with_a_broken_connection_are_resent_on_the_next_one() {
        use tokio::sync::mpsc;
        use tokio_util::sync::PollSender;
        let sender = Arc::new(PeerLink::new(NodeName::new("peer").expect("valid"), 16));
        for n in 1..=5 {
            sender.push(msg(n)).expect("room");
        }
        // First connection: the peer reads frames but the connection breaks before any ack.
        let (tx, mut wire) = mpsc::channel::<Vec<u8>>(64);
        let incoming = futures_util::stream::pending::<Bytes>();
        let first = {
            let sender = sender.clone();
            tokio::spawn(async move { sender.run(PollSender::new(tx), incoming, 0, &|_| {}).await })
        };
        let mut seen = Vec::new();
        while seen.len() < 5 {
            if let Some(bytes) = wire.recv().await
                && let Ok(PeerFrame::Data { seq, .. }) = PeerFrame::decode(&bytes)
            {
                seen.push(seq);
            }
        }
        first.abort();
        assert_eq!(seen, [1, 2, 3, 4, 5]);
        // Second connection: the peer says it got up to 3, so 4 and 5 come again, then 6.
        sender.push(msg(6)).expect("room");
        let (tx, mut wire) = mpsc::channel::<Vec<u8>>(64);
        let incoming = futures_util::stream::pending::<Bytes>();
        let second = {
            let sender = sender.clone();
            tokio::spawn(async move { sender.run(PollSender::new(tx), incoming, 3, &|_| {}).await })
        };
        let mut again = Vec::new();
        while again.len() < 3 {
            if let Some(bytes) = wire.recv().await
                && let Ok(PeerFrame::Data { seq, .. }) = PeerFrame::decode(&bytes)
            {
                again.push(seq);
            }
        }
        second.abort();
        assert_eq!(again, [4, 5, 6]);
        assert_eq!(
            sender.pending(),
            3,
            "4, 5 and 6 wait for their acknowledgement"
        );
    }

    #[tokio::test]
    async fn a_sent_mark_is_delivered_once_acknowledged_or_bounced() {
        let link = link();
        link.push(msg(1)).expect("room");
        let first = link.sent();
        link.push(msg(2)).expect("room");
        let second = link.sent();
        assert!(!link.is_delivered(first));
        link.ack(1);
        link.delivered(first).await;
        assert!(!link.is_delivered(second), "2 is not acknowledged yet");
        let waiter = {
            let link = link.clone();
            tokio::spawn(async move { link.delivered(second).await })
        };
        link.take_all();
        waiter
            .await
            .expect("a bounced message settles the mark too");
        link.push(msg(3)).expect("room");
        assert!(
            link.is_delivered(second),
            "later messages do not hold an earlier mark"
        );
    }

    fn gaps(link: &PeerLink) -> Vec<(usize, bool)> {
        link.outbox()
            .iter()
            .filter_map(|m| match &**m {
                PeerMsg::Gap { rooms, all } => Some((rooms.len(), *all)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_gap_is_announced_once_the_outbox_has_room_and_stays_bounded() {
        let link = link();
        for n in 0..4 {
            link.push(msg(n)).expect("room");
        }
        for n in 0..MAX_GAP_ROOMS {
            assert_eq!(
                link.mark_gap(Some(RoomId::new(format!("r{n}")).expect("room"))),
                n == 0,
                "only the first refusal opens the gap"
            );
        }
        assert!(link.has_gap());
        link.ack(2);
        assert_eq!(gaps(&link), [(MAX_GAP_ROOMS, false)]);
        assert!(!link.has_gap());
        // One room past the bound widens the next gap to every room.
        link.push(msg(5)).expect("room");
        for n in 0..=MAX_GAP_ROOMS {
            link.mark_gap(Some(RoomId::new(format!("s{n}")).expect("room")));
        }
        link.ack_all();
        assert_eq!(gaps(&link), [(0, true)]);
    }
}
