//! Delivery state of one link: outbox bounds, resends, restarts, settled marks and gaps.

use std::sync::Mutex;
use std::time::Duration;

use super::gap::MAX_GAP_ROOMS;
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
fn what_is_unsent_is_the_batch_after_the_last_number_written() {
    let link = Arc::new(PeerLink::new(
        NodeName::new("peer").expect("valid"),
        4 * BATCH,
    ));
    for n in 0..(3 * BATCH as u64) {
        link.push(msg(n)).expect("room");
    }
    let generation = link.state().generation;
    let seqs = |after| -> Vec<u64> {
        link.unsent(after, generation)
            .expect("same connection")
            .iter()
            .map(|(seq, _)| *seq)
            .collect()
    };
    let from_start = seqs(0);
    assert_eq!(from_start.len(), BATCH, "one batch at a time");
    assert_eq!(from_start.first(), Some(&1));
    let last = *from_start.last().expect("a batch");
    assert_eq!(
        seqs(last).first(),
        Some(&(last + 1)),
        "the next batch follows on"
    );
    assert_eq!(seqs(3 * BATCH as u64 - 10).len(), 10, "the tail");
    assert!(seqs(3 * BATCH as u64).is_empty(), "all written");
    link.ack(2 * BATCH as u64);
    assert_eq!(
        seqs(0).first(),
        Some(&(2 * BATCH as u64 + 1)),
        "acknowledged ones are gone"
    );
    assert!(
        link.unsent(0, generation + 1).is_none(),
        "another connection's"
    );
}

/// Seed 2412 of the simulation: changes of deposed rooms still queued for a follower are
/// withdrawn; each leaves a no-op under its number, so the stream the peer sees stays whole.
#[test]
fn withdrawn_messages_leave_a_no_op_under_their_number() {
    let link = link();
    for n in 1..=4 {
        link.push(msg(n)).expect("room");
    }
    assert_eq!(link.withdraw(&|m| conn_of(m).is_multiple_of(2)), 2);
    let queued: Vec<(u64, u64, bool)> = link
        .state()
        .unacked
        .iter()
        .map(|(seq, m)| (*seq, conn_of(m), matches!(**m, PeerMsg::AckNow)))
        .collect();
    assert_eq!(
        queued,
        vec![(1, 1, false), (2, 0, true), (3, 3, false), (4, 0, true)]
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
    assert!(link.meet(7).is_none());
    link.push(msg(1)).expect("room");
    link.push(msg(2)).expect("room");
    link.accept(5);
    assert!(link.meet(7).is_none(), "same process: nothing changes");
    let bounced = link.meet(8).expect("a restart");
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
    // Taking a mark asks the peer to acknowledge at once: 1, then that request (2).
    let first = link.sent();
    link.push(msg(2)).expect("room");
    let second = link.sent();
    assert_eq!(link.outbox().len(), 4, "two messages and two requests");
    assert!(matches!(*link.outbox()[1], PeerMsg::AckNow));
    assert!(!link.is_delivered(first));
    link.ack(1);
    assert!(
        !link.is_delivered(first),
        "the request is not acknowledged yet"
    );
    link.ack(2);
    link.delivered(first).await;
    assert!(!link.is_delivered(second), "3 is not acknowledged yet");
    let waiter = {
        let link = link.clone();
        tokio::spawn(async move { link.delivered(second).await })
    };
    let _ = link.retire();
    waiter
        .await
        .expect("a bounced message settles the mark too");
    link.push(msg(3)).expect("room");
    assert!(
        link.is_delivered(second),
        "later messages do not hold an earlier mark"
    );
}

#[test]
fn a_peer_that_comes_back_as_a_new_process_gets_what_was_queued_for_it_since() {
    let link = link();
    assert!(link.meet(7).is_none());
    link.push(event_in(&room("lobby"))).expect("room");
    link.accept(5);
    let (numbering, bounced) = link.retire();
    assert_eq!(bounced.len(), 1);
    // Back in the table: a snapshot and a command are queued before any handshake.
    let back = PeerLink::resumed(link.peer.clone(), 8, numbering);
    back.push(msg(1)).expect("room");
    back.push(msg(2)).expect("room");
    // The handshake names another process: nothing is bounced, and what was queued goes to
    // it under the numbers it was given (the announcement of the old process's lost events
    // too: saying too much costs a re-join, never a message).
    assert!(back.meet(8).is_none(), "nothing bounced for a new process");
    assert_eq!(
        back.received(),
        0,
        "a new process's stream starts at the beginning"
    );
    let unsent = back.unsent(0, 0).expect("a fresh link");
    let seqs: Vec<u64> = unsent.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        [2, 3, 4],
        "the gap, then both, numbered on from the old link"
    );
    // A later restart of that process bounces as ever.
    back.push(msg(3)).expect("room");
    let bounced = back.meet(9).expect("a restart");
    assert_eq!(bounced.len(), 4);
}

#[test]
fn a_peer_that_comes_back_first_hears_of_the_events_it_missed_while_it_was_out() {
    let link = link();
    assert!(link.meet(7).is_none());
    link.push(msg(1)).expect("room");
    link.push(event_in(&room("lobby"))).expect("room");
    link.accept(5);
    // It leaves the table with those two unacknowledged.
    let (numbering, bounced) = link.retire();
    assert_eq!(bounced.len(), 2, "what was queued goes back to be answered");
    let back = PeerLink::resumed(link.peer.clone(), 4, numbering);
    assert_eq!(back.received(), 5, "the peer's stream goes on where it was");
    let outbox = back.outbox();
    let [first] = outbox.as_slice() else {
        panic!("one announcement, got {outbox:?}");
    };
    match &**first {
        // The frame to one connection names no room: every room's members re-join.
        PeerMsg::Gap { all, .. } => assert!(*all),
        other => panic!("a gap first, got {other:?}"),
    }
    assert_eq!(
        back.unsent(0, 0).expect("a fresh link")[0].0,
        3,
        "numbering goes on from the old link's"
    );

    // Only room events lost: the gap names their rooms.
    let link = PeerLink::new(NodeName::new("peer").expect("valid"), 4);
    link.push(event_in(&room("lobby"))).expect("room");
    let (numbering, _) = link.retire();
    let back = PeerLink::resumed(link.peer.clone(), 4, numbering);
    match &*back.outbox()[0] {
        PeerMsg::Gap { rooms, all } => {
            assert!(!*all);
            assert_eq!(rooms, &[room("lobby")]);
        }
        other => panic!("a gap first, got {other:?}"),
    }

    // Nothing lost: nothing announced.
    let link = PeerLink::new(NodeName::new("peer").expect("valid"), 4);
    let (numbering, _) = link.retire();
    assert!(
        PeerLink::resumed(link.peer.clone(), 4, numbering)
            .outbox()
            .is_empty()
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

/// What a writer did to its connection: frames fed, and writes (flushes).
#[derive(Debug, Clone, PartialEq)]
enum Wrote {
    Data(u64),
    Ack(u64),
    Flush,
}

/// A connection that records what the writer feeds and when it flushes.
struct Recording(Arc<Mutex<Vec<Wrote>>>);

impl Sink<Vec<u8>> for Recording {
    type Error = std::convert::Infallible;

    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn start_send(self: std::pin::Pin<&mut Self>, frame: Vec<u8>) -> Result<(), Self::Error> {
        let wrote = match PeerFrame::decode(&frame) {
            Ok(PeerFrame::Data { seq, .. }) => Wrote::Data(seq),
            Ok(PeerFrame::Ack { seq }) => Wrote::Ack(seq),
            other => panic!("the writer sent {other:?}"),
        };
        self.0.lock().expect("not poisoned").push(wrote);
        Ok(())
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.lock().expect("not poisoned").push(Wrote::Flush);
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Run `link`'s writer over a recording connection (the peer sends nothing) until it has
/// flushed `flushes` times; what it wrote up to then.
async fn writes_until(link: &Arc<PeerLink>, flushes: usize) -> Vec<Wrote> {
    let wrote = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (link, wrote) = (link.clone(), wrote.clone());
        let incoming = futures_util::stream::pending::<Bytes>();
        tokio::spawn(async move { link.run(Recording(wrote), incoming, 0, &|_| {}).await })
    };
    let writes = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let so_far = wrote.lock().expect("not poisoned").clone();
            let mut ends = so_far
                .iter()
                .enumerate()
                .filter(|(_, w)| **w == Wrote::Flush);
            if let Some((end, _)) = ends.nth(flushes - 1) {
                return so_far[..=end].to_vec();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the writer wrote within 5 s");
    writer.abort();
    writes
}

#[tokio::test]
async fn queued_messages_and_the_acknowledgement_leave_in_one_write() {
    let link = link();
    for n in 1..=3 {
        link.push(msg(n)).expect("room");
    }
    // The peer's messages 1 and 2 arrived: the next wake acknowledges them.
    assert!(link.accept(1) && link.accept(2));
    assert_eq!(
        writes_until(&link, 1).await,
        [
            Wrote::Data(1),
            Wrote::Data(2),
            Wrote::Data(3),
            Wrote::Ack(2),
            Wrote::Flush
        ]
    );
}

#[tokio::test]
async fn a_full_batch_is_written_before_the_next_one_is_read() {
    let link = Arc::new(PeerLink::new(
        NodeName::new("peer").expect("valid"),
        BATCH + 10,
    ));
    for n in 1..=(BATCH as u64 + 1) {
        link.push(msg(n)).expect("room");
    }
    let writes = writes_until(&link, 2).await;
    let first_flush = writes.iter().position(|w| *w == Wrote::Flush);
    assert_eq!(
        first_flush,
        Some(BATCH),
        "a flush right after the full batch"
    );
    assert_eq!(writes[BATCH + 1], Wrote::Data(BATCH as u64 + 1));
    assert_eq!(writes[BATCH + 2], Wrote::Flush);
}

/// Run `link` with the peer sending `frames` (data frames numbered from 1) 1 ms in, for 5 ms
/// of a paused clock (the acknowledgement tick comes every 20 ms); what it wrote by then.
async fn writes_within_5_ms_of(link: &Arc<PeerLink>, frames: Vec<PeerMsg>) -> Vec<Wrote> {
    let wrote = Arc::new(Mutex::new(Vec::new()));
    let incoming: Vec<Bytes> = frames
        .iter()
        .zip(1..)
        .map(|(msg, seq)| Bytes::from(super::super::wire::encode_data(seq, msg)))
        .collect();
    // They arrive 1 ms in, after the writer's first tick (an interval's first is at once).
    let incoming = futures_util::stream::once(async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        futures_util::stream::iter(incoming)
    })
    .flatten()
    .chain(futures_util::stream::pending())
    .boxed();
    let delivered = Arc::new(Mutex::new(0usize));
    let writer = {
        let (link, wrote, delivered) = (link.clone(), wrote.clone(), delivered.clone());
        tokio::spawn(async move {
            let count = move |_: PeerMsg| *delivered.lock().expect("not poisoned") += 1;
            link.run(Recording(wrote), incoming, 0, &count).await
        })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    writer.abort();
    assert_eq!(
        *delivered.lock().expect("not poisoned"),
        frames
            .iter()
            .filter(|m| !matches!(m, PeerMsg::AckNow))
            .count(),
        "everything but the request is passed on"
    );
    wrote.lock().expect("not poisoned").clone()
}

#[tokio::test(start_paused = true)]
async fn asked_to_acknowledge_at_once_a_link_does_not_wait_for_its_tick() {
    let quiet = writes_within_5_ms_of(&link(), vec![msg(1)]).await;
    assert!(
        !quiet.contains(&Wrote::Ack(1)),
        "an acknowledgement waits for the tick: {quiet:?}"
    );
    let asked = writes_within_5_ms_of(&link(), vec![msg(1), PeerMsg::AckNow]).await;
    assert!(
        asked.contains(&Wrote::Ack(2)),
        "the request and everything before it acknowledged at once: {asked:?}"
    );
}

fn room(name: &str) -> RoomId {
    RoomId::new(name).expect("room")
}

/// Two rooms in different buckets (found, not assumed).
fn two_rooms() -> (RoomId, RoomId) {
    let a = room("a");
    let b = (0..)
        .map(|n| room(&format!("b{n}")))
        .find(|b| RoomMark::of(b) != RoomMark::of(&a))
        .expect("another bucket");
    (a, b)
}

/// A chat message for the members of `room`.
fn event_in(room: &RoomId) -> PeerMsg {
    PeerMsg::Event(EdgeEvent::Broadcast {
        room: room.clone(),
        frame: "x".into(),
        skip: None,
        is_msg: true,
    })
}

#[tokio::test]
async fn a_rooms_mark_waits_for_that_rooms_last_event_only() {
    let link = Arc::new(PeerLink::new(NodeName::new("peer").expect("valid"), 16));
    let (room_a, room_b) = two_rooms();
    let (a, b) = (RoomMark::of(&room_a), RoomMark::of(&room_b));
    assert_eq!(link.sent_for_rooms([a]), None, "nothing sent for the room");
    link.push(event_in(&room_a)).expect("room");
    link.push(event_in(&room_b)).expect("room");
    link.push(msg(3)).expect("room");
    let mark = link.sent_for_rooms([a]).expect("1 is not acknowledged");
    assert!(
        matches!(*link.outbox()[3], PeerMsg::AckNow),
        "a wait asks the peer to acknowledge at once"
    );
    assert!(!link.is_delivered(mark));
    link.ack(1);
    assert!(
        link.is_delivered(mark),
        "room a's event is handled; what came after it for others does not hold the mark"
    );
    assert_eq!(link.sent_for_rooms([a]), None, "settled already: no wait");
    let both = link.sent_for_rooms([a, b]).expect("2 is not acknowledged");
    link.ack(2);
    link.delivered(both).await;
}

#[test]
fn a_rooms_mark_from_before_a_peer_restart_is_settled() {
    let link = link();
    let (room_a, _) = two_rooms();
    let a = RoomMark::of(&room_a);
    link.meet(1);
    link.push(event_in(&room_a)).expect("room");
    assert!(link.sent_for_rooms([a]).is_some());
    // A new process of the peer: its outbox is bounced and numbering starts over.
    assert_eq!(
        link.meet(2).map(|b| b.len()),
        Some(2),
        "the event and the request bounced"
    );
    link.push(msg(2)).expect("room");
    assert_eq!(
        link.sent_for_rooms([a]),
        None,
        "the old number must not be waited for in the new numbering"
    );
}

#[test]
fn a_gap_announced_for_a_room_is_what_its_mark_waits_for() {
    let link = link();
    let (room_a, room_b) = two_rooms();
    let (a, b) = (RoomMark::of(&room_a), RoomMark::of(&room_b));
    for n in 0..4 {
        link.push(msg(n)).expect("room");
    }
    // Room a's event is refused by the full outbox; nothing was queued for it.
    assert_eq!(link.sent_for_rooms([a]), None);
    link.mark_gap(Some(room_a));
    link.ack(4);
    // The announcement (5) went out with the room freed: it stands for a's refused event.
    assert_eq!(gaps(&link), [(1, false)]);
    let mark = link
        .sent_for_rooms([a])
        .expect("the gap is not acknowledged");
    assert_eq!(link.sent_for_rooms([b]), None, "other rooms are not held");
    link.ack(5);
    assert!(link.is_delivered(mark));
}
