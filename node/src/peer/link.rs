//! One peer link's delivery state, which outlives the connections that carry it.
//!
//! Every message to a peer gets the next number of this node's stream to that peer and stays
//! in the link's outbox until the peer acknowledges it. When a connection breaks, the next one
//! starts by telling each side how far it got, and the rest is sent again; the receiver drops
//! numbers it has already seen. So a message is delivered once, in order, or — when the peer
//! restarted or left the cluster and can never take it — handed back ("bounced") so that its
//! sender can be answered with an error instead of silence.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use shard::{NodeName, RoomId};
use tokio::sync::Notify;

use super::wire::{PeerFrame, PeerMsg};

mod gap;
mod room_marks;

use gap::Gap;
pub use room_marks::RoomMark;
use room_marks::RoomMarks;

/// How many data frames a writer sends before it flushes.
const BATCH: usize = 256;
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
    /// Where each room's last event went.
    room_marks: RoomMarks,
    /// Made again for a peer that had left ([`PeerLink::resumed`]) and not met since: all it
    /// holds was queued for whichever process the table now names, so a new process gets it
    /// rather than having it bounced.
    unmet: bool,
}

impl LinkState {
    /// The mark of message `seq` in the current numbering.
    fn mark(&self, seq: u64) -> Sent {
        Sent {
            resets: self.resets,
            seq,
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

/// Where a departed peer's link stood (see [`PeerLink::retire`]): what a link made again for
/// the same peer starts from.
#[derive(Debug)]
pub struct Numbering {
    /// The peer process the link was in step with.
    pub peer_incarnation: Option<u64>,
    /// Last number received from the peer.
    pub received: u64,
    /// Number for the next message to the peer.
    pub next_seq: u64,
    /// The rooms of the events the peer never got: announced first if it comes back.
    lost: Option<Gap>,
}

impl Numbering {
    /// An event for `room` the peer never got, to announce if it comes back.
    pub fn lose(&mut self, room: Option<RoomId>) {
        self.lost.get_or_insert_default().add(room);
    }
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

    /// Queue a message that the caller keeps a handle to (to send it again later). An event
    /// for a room is remembered as that room's last one, for [`PeerLink::sent_for_rooms`].
    ///
    /// # Errors
    /// The message back when the outbox is full.
    pub fn push_shared(&self, msg: Arc<PeerMsg>) -> Result<(), Arc<PeerMsg>> {
        // Hashed before the lock is taken.
        let mark = match &*msg {
            PeerMsg::Event(event) => event.room().map(RoomMark::of),
            _ => None,
        };
        let mut state = self.state();
        Self::announce_gap(&mut state, self.max_unacked);
        if state.unacked.len() >= self.max_unacked {
            self.note_fill(&state);
            return Err(msg);
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        state.unacked.push_back((seq, msg));
        if let Some(mark) = mark {
            let sent = state.mark(seq);
            state.room_marks.mark([mark], sent);
        }
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
        // The announcement stands for the refused events: a hand-off of their rooms waits for
        // it as it would have for them.
        let sent = state.mark(seq);
        if gap.all {
            state.room_marks.mark(RoomMark::all(), sent);
        } else {
            state
                .room_marks
                .mark(gap.rooms.iter().map(RoomMark::of), sent);
        }
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
        // With something unacknowledged, ask the peer to acknowledge at once rather than on
        // its next tick (20 ms at most): whoever takes this mark waits for that. A full outbox
        // skips the request; the tick still comes.
        if !self.state().unacked.is_empty() {
            let _ = self.push(PeerMsg::AckNow);
        }
        let state = self.state();
        state.mark(state.next_seq - 1)
    }

    /// A mark of the last event queued for any of `rooms`, to wait for with
    /// [`PeerLink::delivered`]; `None` when those are all settled already (or none was sent).
    /// Like [`PeerLink::sent`], it asks the peer to acknowledge at once when there is a wait.
    pub fn sent_for_rooms(&self, rooms: impl IntoIterator<Item = RoomMark>) -> Option<Sent> {
        let state = self.state();
        let last = state.room_marks.last(rooms, state.resets)?;
        // Acknowledged, or older than everything waiting: nothing to wait for.
        if state.unacked.front().is_none_or(|(seq, _)| *seq > last) {
            return None;
        }
        let mark = state.mark(last);
        drop(state);
        let _ = self.push(PeerMsg::AckNow);
        Some(mark)
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
    /// returned (`Some`), to be answered with errors. `None`: the same process, or the first.
    pub fn meet(&self, incarnation: u64) -> Option<Vec<Arc<PeerMsg>>> {
        let mut state = self.state();
        let unmet = std::mem::take(&mut state.unmet);
        match state.peer_incarnation {
            Some(known) if known != incarnation && unmet => {
                // The peer left as one process and came back as another: nothing here was
                // queued for the old one (that went when the link was retired). The new
                // process's own stream starts again; ours goes on with its numbers (a peer
                // takes any number past the last it handled), so the marks of what was queued
                // still hold. A gap not yet announced was about the old process's members.
                state.peer_incarnation = Some(incarnation);
                state.received = 0;
                state.gap = None;
                None
            }
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
                Some(bounced)
            }
            _ => {
                state.peer_incarnation = Some(incarnation);
                None
            }
        }
    }

    /// The peer left the cluster: everything still queued is removed and returned (to be
    /// answered), with where the link's two streams stand. The peer remembers both if it is
    /// still the same process when it comes back, so a link made again for it goes on from
    /// there ([`PeerLink::resumed`]) and first announces the events it will never get as a
    /// gap: its members of those rooms re-join rather than see a seq jump.
    pub fn retire(&self) -> (Numbering, Vec<Arc<PeerMsg>>) {
        let mut state = self.state();
        state.generation += 1;
        state.resets += 1;
        let mut lost = state.gap.take();
        let taken: Vec<Arc<PeerMsg>> = state.unacked.drain(..).map(|(_, m)| m).collect();
        for msg in &taken {
            if let PeerMsg::Event(event) = &**msg {
                lost.get_or_insert_default().add(event.room_named());
            }
        }
        let numbering = Numbering {
            peer_incarnation: state.peer_incarnation,
            received: state.received,
            next_seq: state.next_seq,
            lost,
        };
        self.note_fill(&state);
        drop(state);
        self.settled.notify_waiters();
        self.reset();
        (numbering, taken)
    }

    /// A link with no connection yet that goes on from `numbering` (see [`Self::retire`]):
    /// the peer, if it is the same process, kept its side of both streams, and a fresh start
    /// from 1 would have it take our first messages for ones it already saw (and us take its
    /// word that it got them).
    pub fn resumed(peer: NodeName, max_unacked: usize, numbering: Numbering) -> PeerLink {
        let link = PeerLink::new(peer, max_unacked);
        {
            let mut state = link.state();
            state.peer_incarnation = numbering.peer_incarnation;
            state.received = numbering.received;
            state.next_seq = numbering.next_seq.max(1);
            state.gap = numbering.lost;
            state.unmet = true;
            Self::announce_gap(&mut state, link.max_unacked);
        }
        link
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
        // Numbers grow along the queue: find the first one past `after` by halving, not by
        // walking a backlog that a slow peer may have let grow to the outbox's bound.
        let first = state.unacked.partition_point(|(seq, _)| *seq <= after);
        Some(
            state
                .unacked
                .range(first..)
                .take(BATCH)
                .map(|(seq, m)| (*seq, m.clone()))
                .collect(),
        )
    }

    /// Replace every queued message `unwanted` picks with an [`PeerMsg::AckNow`] (so the
    /// numbering the peer sees stays whole); returns how many. For changes of rooms that were
    /// deposed: their owner refused them, and a late one must not reach a copy.
    pub fn withdraw(&self, unwanted: &dyn Fn(&PeerMsg) -> bool) -> usize {
        let mut state = self.state();
        let mut withdrawn = 0;
        for (_, msg) in &mut state.unacked {
            if unwanted(msg) {
                *msg = Arc::new(PeerMsg::AckNow);
                withdrawn += 1;
            }
        }
        withdrawn
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
                        if !self.accept(seq) {
                            continue;
                        }
                        if matches!(msg, PeerMsg::AckNow) {
                            // Everything before it was handled (delivery is synchronous):
                            // the writer acknowledges it now rather than on its next tick.
                            self.wake.notify_one();
                        } else {
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
                // Frames fed since the last flush.
                let mut unflushed = 0;
                loop {
                    let Some(batch) = self.unsent(sent, generation) else {
                        return; // a newer connection took over
                    };
                    if batch.is_empty() {
                        break;
                    }
                    unflushed += batch.len();
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
                    // A batch's worth is written out at once, however it came (one full batch,
                    // or several small ones while other threads kept queueing). Less waits for
                    // the acknowledgement below, so both leave in one write: a system call
                    // saved on nearly every wake of a busy link.
                    if unflushed >= BATCH {
                        if sink.flush().await.is_err() {
                            return;
                        }
                        unflushed = 0;
                    }
                }
                let received = self.received();
                if received > acked {
                    if sink
                        .feed(PeerFrame::Ack { seq: received }.encode())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    acked = received;
                    unflushed += 1;
                }
                if unflushed > 0 && sink.flush().await.is_err() {
                    return;
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
mod tests;
