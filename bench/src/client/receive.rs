//! What a user makes of the frames it receives: the checks listed in [`super`] (order, gaps,
//! duplicates, latency, answers to its sends) and its longest silence.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Conn, LATENCY_BATCH, MAX_RECONNECT_WAIT, Next, Ready, UP_CID, User, UserReport};
use crate::wire::{self, ServerFrame, WireMsg};

impl User {
    /// What one text frame from connection `conn` (of [`User::conn`] or a successor) asks.
    pub(super) fn on_frame(&mut self, text: &str, now_us: u64, conn: Conn) -> Next {
        let Ok(frame) = wire::parse(text) else {
            self.report.bad_frames += 1;
            return Next::Continue;
        };
        match frame {
            ServerFrame::Msg(msg) => self.on_msg(msg, now_us, conn.id),
            ServerFrame::Joined { room, seq, history } => {
                if self.on_joined(&room, seq, history, now_us, conn.id) {
                    return Next::Joined;
                }
            }
            ServerFrame::Error {
                code,
                message,
                cid,
                room,
            } => return self.on_error(code, message, cid, room, conn.joined),
            ServerFrame::Reconnect { reason, after_ms } => {
                let after = Duration::from_millis(after_ms.unwrap_or(0));
                return Next::Reconnect(after.min(MAX_RECONNECT_WAIT), reason);
            }
            ServerFrame::Pong { cid } => {
                if self.spec.room.is_none() && cid.as_deref() == Some(UP_CID) {
                    self.joined = true;
                    self.tell_ready(Ready::Up);
                    return Next::Joined;
                }
            }
            ServerFrame::Other => {}
        }
        Next::Continue
    }

    /// Whether the answer was for our room.
    fn on_joined(
        &mut self,
        room: &str,
        seq: u64,
        history: Vec<WireMsg>,
        now_us: u64,
        conn: u32,
    ) -> bool {
        let Some(index) = self.spec.room else {
            return false;
        };
        let shared = self.shared.clone();
        let slot = &shared.rooms[index];
        if room != slot.name {
            self.report.bad_frames += 1;
            return false;
        }
        let asked = self.asked_since.remove(&conn);
        if let Some(away) = self.away_from_us.take() {
            self.report.rejoins_us.push(now_us.saturating_sub(away));
        }
        match self.report.last_seq {
            // First join: the history predates the run; count from the room's current seq.
            None => {
                self.report.last_seq = Some(seq);
                slot.max_seq.fetch_max(seq, Ordering::Relaxed);
                slot.members.fetch_add(1, Ordering::Relaxed);
            }
            // The room is behind what we asked from: it lost its state. Nothing to replay or
            // compare. (Behind only the last seq seen is a successor's join answered before
            // messages the connection being left has delivered since: its replay has copies.)
            Some(last) if seq < asked.unwrap_or(last) => {
                self.report.room_resets += 1;
                self.report.last_seq = Some(seq);
                self.seen.clear();
            }
            // Resuming: the replay fills what we missed while away.
            Some(_) => {
                for msg in history {
                    // A message below the last seq we saw, never seen: one this connection
                    // missed live (an owner that failed before delivering it here), filled in
                    // by the replay. Late, not out of order; the history audit checks seqs.
                    let late = self.report.last_seq.is_some_and(|last| msg.seq <= last);
                    if late
                        && let Ok(id) = msg.id.parse::<u64>()
                        && !self.seen.contains_key(&id)
                    {
                        self.seen.insert(id, conn);
                        continue;
                    }
                    self.on_msg(msg, now_us, conn);
                }
                if let Some(last) = self.report.last_seq
                    && seq > last
                {
                    // Past what the room still holds: those messages are gone for us.
                    if now_us >= self.measure_from() {
                        self.report.gaps += seq - last;
                    }
                    self.report.last_seq = Some(seq);
                }
            }
        }
        self.joined = true;
        self.tell_ready(Ready::Up);
        true
    }

    fn on_msg(&mut self, msg: WireMsg, now_us: u64, conn: u32) {
        let Some(index) = self.spec.room else {
            return;
        };
        let shared = self.shared.clone();
        let slot = &shared.rooms[index];
        let Ok(id) = msg.id.parse::<u64>() else {
            self.report.bad_frames += 1;
            return;
        };
        if msg.room != slot.name {
            self.report.bad_frames += 1;
            return;
        }
        let measure_from = self.measure_from();
        let stamps = wire::stamps(&msg.text);
        let measured = stamps.is_some_and(|sent| sent.due_us >= measure_from);
        if let Some(first) = self.seen.get(&id).copied() {
            if measured && !is_copy(&self.overlapped, first, conn) {
                self.report.duplicates += 1;
            }
            return;
        }
        self.seen.insert(id, conn);
        if let Some(last) = self.report.last_seq {
            if msg.seq <= last {
                if measured {
                    self.report.out_of_order += 1;
                }
                return;
            }
            if msg.seq > last + 1 && now_us >= measure_from {
                self.report.gaps += msg.seq - last - 1;
            }
        }
        self.report.last_seq = Some(msg.seq);
        slot.max_seq.fetch_max(msg.seq, Ordering::Relaxed);
        if msg.user == self.spec.name
            && let Some(cid) = &msg.cid
            && let Some((was_measured, _)) = self.pending.remove(cid)
        {
            if shared.record_acknowledged {
                slot.acknowledge(msg.seq, &msg.id);
            }
            if was_measured {
                self.report.accepted += 1;
                shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                let members = slot.members.load(Ordering::Relaxed);
                shared.expected.fetch_add(members, Ordering::Relaxed);
            }
        }
        if let (true, Some(sent)) = (measured, stamps) {
            self.report.delivered += 1;
            shared.delivered.fetch_add(1, Ordering::Relaxed);
            self.latencies.push((sent, now_us));
            if self.latencies.len() >= LATENCY_BATCH {
                self.flush_latencies();
            }
        }
        self.note_delivery(now_us);
    }

    fn on_error(
        &mut self,
        code: String,
        message: String,
        cid: Option<String>,
        room: Option<String>,
        joined_here: bool,
    ) -> Next {
        let about_my_room = match (self.spec.room, &room) {
            (Some(index), Some(room)) => *room == self.shared.rooms[index].name,
            _ => false,
        };
        self.report
            .error_examples
            .entry(code.clone())
            .or_insert(message);
        *self.report.errors.entry(code).or_default() += 1;
        if let Some(cid) = cid {
            if let Some((true, _)) = self.pending.remove(&cid) {
                self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            return Next::Continue;
        }
        // A refused join leaves us outside the room: ask again shortly (bounded by the run).
        if about_my_room && !joined_here {
            return Next::Rejoin;
        }
        Next::Continue
    }

    /// Track the longest silence inside the send phase.
    fn note_delivery(&mut self, now_us: u64) {
        self.close_pause(now_us);
        self.last_delivery_us = now_us;
    }

    fn close_pause(&mut self, now_us: u64) {
        let from = self.measure_from();
        let until = self.shared.send_until_us.load(Ordering::Relaxed);
        let start = self.last_delivery_us.max(from);
        let end = now_us.min(until);
        if end > start && end - start > self.report.longest_pause_us {
            self.report.longest_pause_us = end - start;
            self.report.longest_pause_from_us = start;
        }
    }

    fn flush_latencies(&mut self) {
        if self.latencies.is_empty() {
            return;
        }
        // A poisoned lock only means another user task panicked mid-record; the counts are
        // still usable.
        let mut latency = self
            .shared
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &(sent, received_us) in &self.latencies {
            latency
                .from_due
                .record(received_us.saturating_sub(sent.due_us));
            latency
                .from_write
                .record(received_us.saturating_sub(sent.written_us));
            latency
                .send_lag
                .record(sent.written_us.saturating_sub(sent.due_us));
        }
        drop(latency);
        self.latencies.clear();
    }

    pub(super) fn tell_ready(&mut self, ready: Ready) {
        if let Some(tell) = self.ready.take() {
            if matches!(ready, Ready::Up) {
                self.shared.up.fetch_add(1, Ordering::Relaxed);
            }
            // The run stops listening after its connect timeout; then nobody needs to know.
            let _ = tell.send(ready);
        }
    }

    pub(super) fn finish(mut self) -> UserReport {
        self.flush_latencies();
        if self.ready.is_some() {
            self.tell_ready(Ready::Failed("stopped before it was up".into()));
        }
        let was_up = self.report.last_seq.is_some() || self.spec.room.is_none();
        if self.report.room.is_some() && was_up {
            // A room that went silent until the end of the send phase paused that long.
            self.close_pause(u64::MAX);
        }
        self.report.unanswered = self.pending.values().filter(|(m, _)| *m).count() as u64;
        self.report.up_at_end = self.joined;
        self.report
    }
}

/// Whether a message first brought by connection `first` and again by `conn` is a copy: the
/// two overlapped in a move (one took over from the other), so both carried it. On one
/// connection, or on two that never overlapped (a re-join's replay), it is a duplicate.
fn is_copy(overlapped: &HashMap<u32, u32>, first: u32, conn: u32) -> bool {
    first != conn && overlapped.get(&first.max(conn)) == Some(&first.min(conn))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::is_copy;

    #[test]
    fn only_connections_that_overlapped_in_a_move_bring_copies() {
        // Connection 2 took over from 1; 3 was opened after 2 closed (no overlap).
        let overlapped = HashMap::from([(2, 1)]);
        assert!(is_copy(&overlapped, 1, 2));
        assert!(
            is_copy(&overlapped, 2, 1),
            "the old one may bring it second"
        );
        assert!(!is_copy(&overlapped, 2, 2), "twice on one connection");
        assert!(!is_copy(&overlapped, 1, 1));
        assert!(!is_copy(&overlapped, 2, 3), "a replay after a reconnect");
        assert!(!is_copy(&overlapped, 1, 3));
    }
}
