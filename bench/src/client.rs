//! One simulated user: a WebSocket connection to one node, in one room (or none, when idle),
//! sending when its room's pacer tells it to and checking everything it receives.
//!
//! What a user checks, as a receiver:
//! - order: each `msg` in its room must have `seq = last + 1`; a jump is a gap (lost messages),
//!   a `seq` at or below the last one under a new id is out of order;
//! - duplicates: an `id` seen twice on the same connection (around a move the old and the new
//!   connection may both deliver a message: that is expected and dropped);
//! - latency: the send time embedded in the text (see [`crate::wire`]) against the receive time.
//!
//! As a sender it keeps every `cid` it sent until the node answers: its own `msg` coming back
//! means accepted, an `error` with that `cid` means refused; anything left at the end was never
//! answered, which the report counts as lost.
//!
//! When the node says `reconnect` (drain, shutdown) the user closes the told connection and
//! connects to another node, picked at random among those that have not told anyone to go
//! lately (as a Service spreads connections over its ready pods), and re-joins with `since` =
//! the last seq it saw. With `--make-before-break` it moves make-before-break instead: it keeps
//! reading (and sending on) the told connection until it has re-joined on the new one and its
//! sends on the old one are answered, then closes the old one. When the connection drops (node killed), it reconnects with a bounded
//! backoff and re-joins with `since`, so the replayed history fills the gap instead of counting
//! as lost. Sends the pacer asks for while the user has no joined connection wait in its
//! bounded order queue. Each move's steps are timed ([`crate::handover`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::args::NodeAddr;
use crate::handover::{Marks, Pause};

mod moves;
use crate::histogram::Histogram;
use crate::wire::{self, ServerFrame, WireMsg};
use moves::{OLD_LINGER, Via};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest wait for one TCP connect plus WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for our close frame to go out when the run ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// First reconnect backoff; it doubles per failed attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest reconnect backoff, so a node that comes back is found quickly.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Cap on a node's `after_ms`: a bench run is short and must stay bounded.
const MAX_RECONNECT_WAIT: Duration = Duration::from_secs(5);
/// Seconds of the measured window whose worst latency is kept.
pub const LATENCY_SECONDS: usize = 120;
/// How long a node that told a user to reconnect (or refused one) is left out of every user's
/// choice of the next node.
const GONE_FOR: Duration = Duration::from_secs(5);
/// Wait before asking again after a refused `join` (e.g. `room_unavailable`).
const REJOIN_DELAY: Duration = Duration::from_millis(250);
/// Latency samples kept locally before they are added to the shared histogram, so the lock
/// is taken once per batch rather than once per delivery.
const LATENCY_BATCH: usize = 256;
/// Client read buffer: frames are small, and tungstenite's 128 KiB default times 19,000 idle
/// connections would be the bench's memory, not the node's.
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// The cid of the `ping` an idle connection uses to learn it is served.
const UP_CID: &str = "up";

/// A room as every user in it and the run see it.
#[derive(Debug)]
pub struct RoomShared {
    /// The room's name on the wire.
    pub name: String,
    /// Users whose first `join` was answered: the receivers of each accepted message.
    pub members: AtomicU64,
    /// Highest seq any member saw, to find members that fell behind at the end.
    pub max_seq: AtomicU64,
    /// With [`Shared::record_acknowledged`]: every message of the room whose sender got its
    /// echo (its acknowledgement), as `(seq, id)`, for the history audit.
    pub acknowledged: Mutex<Vec<(u64, String)>>,
}

impl RoomShared {
    /// A room named `name`, nothing seen yet.
    pub fn new(name: String) -> RoomShared {
        RoomShared {
            name,
            members: AtomicU64::new(0),
            max_seq: AtomicU64::new(0),
            acknowledged: Mutex::new(Vec::new()),
        }
    }

    fn acknowledge(&self, seq: u64, id: &str) {
        self.acknowledged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((seq, id.to_owned()));
    }

    /// The acknowledged messages recorded, taken out.
    pub fn take_acknowledged(&self) -> Vec<(u64, String)> {
        std::mem::take(
            &mut *self
                .acknowledged
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// State shared by every user task and the run.
#[derive(Debug)]
pub struct Shared {
    /// The one clock: message send times and receive times are both microseconds since this.
    pub clock: Instant,
    /// Nodes to connect to, in reconnect order.
    pub nodes: Vec<NodeAddr>,
    /// Text length of each message.
    pub text_bytes: usize,
    /// Ends every user task (after its close frame).
    pub stop: CancellationToken,
    /// Handshakes in progress at once.
    pub handshakes: Semaphore,
    /// Close a connection told to reconnect before opening the next one.
    pub break_before_make: bool,
    /// Per node, until when (µs) users leave it out of their choice: it told a user to
    /// reconnect or refused a connection, as a terminating pod leaves a Service's endpoints.
    pub gone_until_us: Vec<AtomicU64>,
    /// Start of the measured window (µs on [`Shared::clock`]); `u64::MAX` until planned.
    pub measure_from_us: AtomicU64,
    /// End of the send phase (µs); pauses are only counted inside the window.
    pub send_until_us: AtomicU64,
    /// Measured messages delivered, at all receivers.
    pub delivered: AtomicU64,
    /// Deliveries owed for every accepted measured message (its room's members).
    pub expected: AtomicU64,
    /// Measured sends not answered yet: the drain waits for this to reach 0.
    pub in_flight: AtomicI64,
    /// Users up (joined, or answered when idle), for progress lines.
    pub up: AtomicU64,
    /// Reconnects so far, for progress lines.
    pub reconnects: AtomicU64,
    /// Every room, by index.
    pub rooms: Vec<RoomShared>,
    /// End-to-end latency of measured deliveries, in µs.
    pub latency: Mutex<Histogram>,
    /// Whether rooms record their acknowledged messages (`--audit-history`).
    pub record_acknowledged: bool,
    /// Worst latency (µs) of the deliveries received in each second of the measured window,
    /// so a slow moment shows when it happened (the first [`LATENCY_SECONDS`] seconds).
    pub worst_by_second: Vec<AtomicU64>,
}

impl Shared {
    /// Microseconds since the bench's clock started.
    pub fn now_us(&self) -> u64 {
        self.us_at(Instant::now())
    }

    /// `at` in microseconds on the bench's clock.
    pub fn us_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.clock).as_micros()).unwrap_or(u64::MAX)
    }
}

/// Who a user is.
#[derive(Debug, Clone)]
pub struct UserSpec {
    /// User name, unique in the run.
    pub name: String,
    /// Index into [`Shared::rooms`]; `None` for an idle connection.
    pub room: Option<usize>,
    /// Index into [`Shared::nodes`] of the first node to try.
    pub first_node: usize,
    /// Past this, a user that was never up gives up.
    pub up_deadline: Instant,
}

/// One message the pacer wants sent now.
#[derive(Debug, Clone, Copy)]
pub struct SendOrder {
    /// When it was due (µs): latency counts from here, so a late send is not flattering.
    pub scheduled_us: u64,
}

/// How a user's start went, reported once.
#[derive(Debug)]
pub enum Ready {
    /// Connected and joined (or answered, when idle).
    Up,
    /// Never came up before its deadline, with the last reason.
    Failed(String),
}

/// What one user saw over the run.
#[derive(Debug, Default)]
pub struct UserReport {
    /// Measured sends written to the socket.
    pub sent: u64,
    /// Measured sends that came back as a `msg`.
    pub accepted: u64,
    /// Measured messages received (duplicates excluded).
    pub delivered: u64,
    /// `error` frames by code, over the whole run.
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each error code, to show what the node said.
    pub error_examples: BTreeMap<String, String>,
    /// Messages skipped in `seq` while connected.
    pub gaps: u64,
    /// Measured sends never answered.
    pub unanswered: u64,
    /// Ids received twice.
    pub duplicates: u64,
    /// A `seq` at or below the last one, under a new id.
    pub out_of_order: u64,
    /// Connections opened after the first one.
    pub reconnects: u64,
    /// Resumes that found the room behind the last seq we saw: the room lost its state (a
    /// restarted single node), so counting starts again from its current seq.
    pub room_resets: u64,
    /// Longest time in the send phase without a delivery, in µs.
    pub longest_pause_us: u64,
    /// That pause, and the move that fell inside it.
    pub longest_pause: Pause,
    /// Every move from one connection to another, with its steps' times.
    pub moves: Vec<Marks>,
    /// Frames that were not protocol v1 server frames.
    pub bad_frames: u64,
    /// Whether the user was in its room when the run stopped.
    pub up_at_end: bool,
    /// Last seq seen, for the tail check against the room.
    pub last_seq: Option<u64>,
    /// The room, when not idle.
    pub room: Option<usize>,
}

/// What a frame asks of the serve loop.
enum Next {
    Continue,
    Rejoin,
    Reconnect(Duration, String),
}

/// Run one user until the run stops, and say what it saw.
pub async fn run_user(
    spec: UserSpec,
    shared: Arc<Shared>,
    mut orders: mpsc::Receiver<SendOrder>,
    ready: oneshot::Sender<Ready>,
) -> UserReport {
    let mut user = User {
        report: UserReport {
            room: spec.room,
            ..UserReport::default()
        },
        spec,
        shared,
        ready: Some(ready),
        joined: false,
        orders_open: true,
        unsent: None,
        next_cid: 0,
        pending: HashMap::new(),
        seen: HashMap::new(),
        conn_serial: 0,
        old_serial: 0,
        last_delivery_us: 0,
        latencies: Vec::with_capacity(LATENCY_BATCH),
        old_joined: false,
        old_cids: HashSet::new(),
        current_cids: HashSet::new(),
        linger_until: None,
        moving: None,
    };
    user.run(&mut orders).await;
    user.finish()
}

struct User {
    spec: UserSpec,
    shared: Arc<Shared>,
    report: UserReport,
    /// Told once whether this user came up.
    ready: Option<oneshot::Sender<Ready>>,
    /// In the room on the current connection: only then are orders taken.
    joined: bool,
    /// Whether the pacer may still send orders.
    orders_open: bool,
    /// An order whose write failed with the connection: sent again after the re-join.
    unsent: Option<SendOrder>,
    next_cid: u64,
    /// cid -> whether the send is measured, until the node answers.
    pending: HashMap<String, bool>,
    /// Every message id received, for duplicates.
    /// Every message id received, with the serial of the connection it first came on.
    seen: HashMap<u64, u32>,
    /// Serial of the current connection (one per connection opened).
    conn_serial: u32,
    /// Serial of the old connection, while one is read.
    old_serial: u32,
    last_delivery_us: u64,
    latencies: Vec<u64>,
    /// Whether the old connection (told to reconnect) was in the room.
    old_joined: bool,
    /// Sends made on the old connection and not answered yet.
    old_cids: HashSet<String>,
    /// Sends made on the current connection and not answered yet.
    current_cids: HashSet<String>,
    /// After the new connection joined: when the old one is closed even with sends unanswered.
    linger_until: Option<tokio::time::Instant>,
    /// The move under way (or the last one), for the account of the pauses.
    moving: Option<Marks>,
}

impl User {
    /// The first frame on a connection: `join` (with `since` when resuming), or a `ping` for
    /// an idle connection.
    fn hello(&self) -> String {
        match self.spec.room {
            Some(room) => wire::join(&self.shared.rooms[room].name, self.report.last_seq),
            None => wire::ping(UP_CID),
        }
    }

    async fn send(&mut self, ws: &mut Ws, order: SendOrder, on_old: bool) -> Result<(), String> {
        let Some(room) = self.spec.room else {
            return Ok(());
        };
        self.next_cid += 1;
        let cid = self.next_cid.to_string();
        let text = wire::message_text(order.scheduled_us, self.shared.text_bytes);
        let frame = wire::send(&self.shared.rooms[room].name, &text, &cid);
        if let Err(e) = ws.send(Message::text(frame)).await {
            // The client knows this one failed: it is sent again after the re-join.
            self.unsent = Some(order);
            return Err(e.to_string());
        }
        let measured = order.scheduled_us >= self.measure_from();
        if measured {
            self.report.sent += 1;
            self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        if on_old {
            self.old_cids.insert(cid.clone());
        } else {
            self.current_cids.insert(cid.clone());
        }
        self.pending.insert(cid, measured);
        Ok(())
    }

    fn measure_from(&self) -> u64 {
        self.shared.measure_from_us.load(Ordering::Relaxed)
    }

    fn on_frame(&mut self, text: &str, now_us: u64, via: Via) -> Next {
        let Ok(frame) = wire::parse(text) else {
            self.report.bad_frames += 1;
            return Next::Continue;
        };
        match frame {
            ServerFrame::Msg(msg) => {
                if via == Via::Old
                    && let Some(marks) = &mut self.moving
                {
                    marks.old_last_msg_us = Some(now_us);
                }
                let serial = match via {
                    Via::Current => self.conn_serial,
                    Via::Old => self.old_serial,
                };
                self.on_msg(msg, now_us, serial);
            }
            ServerFrame::Joined { room, seq, history } => {
                self.on_joined(&room, seq, history, now_us, via);
            }
            ServerFrame::Error {
                code,
                message,
                cid,
                room,
            } => return self.on_error(code, message, cid, room),
            ServerFrame::Reconnect { reason, after_ms } => {
                let after = Duration::from_millis(after_ms.unwrap_or(0));
                return Next::Reconnect(after.min(MAX_RECONNECT_WAIT), reason);
            }
            ServerFrame::Pong { cid } => {
                if self.spec.room.is_none() && cid.as_deref() == Some(UP_CID) && via == Via::Current
                {
                    self.now_joined(now_us);
                }
            }
            ServerFrame::Other => {}
        }
        Next::Continue
    }

    /// The current connection is in the room (or answered, when idle).
    fn now_joined(&mut self, now_us: u64) {
        self.joined = true;
        if let Some(marks) = &mut self.moving
            && marks.joined_us.is_none()
        {
            marks.joined_us = Some(now_us);
            self.linger_until = Some(tokio::time::Instant::now() + OLD_LINGER);
        }
        self.tell_ready(Ready::Up);
    }

    fn on_joined(&mut self, room: &str, seq: u64, history: Vec<WireMsg>, now_us: u64, via: Via) {
        let Some(index) = self.spec.room else {
            return;
        };
        if via == Via::Old {
            return;
        }
        let shared = self.shared.clone();
        let slot = &shared.rooms[index];
        if room != slot.name {
            self.report.bad_frames += 1;
            return;
        }
        match self.report.last_seq {
            // First join: the history predates the run; count from the room's current seq.
            None => {
                self.report.last_seq = Some(seq);
                slot.max_seq.fetch_max(seq, Ordering::Relaxed);
                slot.members.fetch_add(1, Ordering::Relaxed);
            }
            // The room is behind what we saw: it lost its state. Nothing to replay or compare.
            // Not while the old connection is still read: it may simply have delivered past
            // the point at which the owner answered our re-join.
            Some(last) if seq < last && !self.old_joined => {
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
                        self.seen.insert(id, self.conn_serial);
                        continue;
                    }
                    self.on_msg(msg, now_us, self.conn_serial);
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
        self.now_joined(now_us);
    }

    fn on_msg(&mut self, msg: WireMsg, now_us: u64, serial: u32) {
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
        let sent_us = wire::sent_at(&msg.text);
        let measured = sent_us.is_some_and(|sent| sent >= measure_from);
        if msg.user == self.spec.name
            && let Some(cid) = &msg.cid
        {
            self.old_cids.remove(cid);
            self.current_cids.remove(cid);
        }
        if let Some(&first_on) = self.seen.get(&id) {
            // Around a move, the old and the new connection both deliver some of the same
            // messages: expected. The same connection delivering one twice is not.
            if measured && first_on == serial {
                self.report.duplicates += 1;
            }
            return;
        }
        self.seen.insert(id, serial);
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
            && let Some(was_measured) = self.pending.remove(cid)
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
        if let (true, Some(sent)) = (measured, sent_us) {
            self.report.delivered += 1;
            shared.delivered.fetch_add(1, Ordering::Relaxed);
            self.latencies.push(now_us.saturating_sub(sent));
            let second = now_us.saturating_sub(measure_from) / 1_000_000;
            if let Some(worst) = usize::try_from(second)
                .ok()
                .and_then(|s| shared.worst_by_second.get(s))
            {
                worst.fetch_max(now_us.saturating_sub(sent), Ordering::Relaxed);
            }
            if self.latencies.len() >= LATENCY_BATCH {
                self.flush_latencies();
            }
        }
        self.note_delivery(now_us, sent_us, msg.user == self.spec.name);
    }

    fn on_error(
        &mut self,
        code: String,
        message: String,
        cid: Option<String>,
        room: Option<String>,
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
            self.old_cids.remove(&cid);
            self.current_cids.remove(&cid);
            if let Some(true) = self.pending.remove(&cid) {
                self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            return Next::Continue;
        }
        // A refused join leaves us outside the room: ask again shortly (bounded by the run).
        if about_my_room && !self.joined {
            return Next::Rejoin;
        }
        Next::Continue
    }

    /// Track the longest silence inside the send phase.
    fn note_delivery(&mut self, now_us: u64, sent_us: Option<u64>, own: bool) {
        self.close_pause(now_us);
        if self.report.longest_pause.until_us
            == now_us.min(self.shared.send_until_us.load(Ordering::Relaxed))
        {
            self.report.longest_pause.ended_by = sent_us.map(|sent| (sent, own));
        }
        self.last_delivery_us = now_us;
    }

    fn close_pause(&mut self, now_us: u64) {
        let from = self.measure_from();
        let until = self.shared.send_until_us.load(Ordering::Relaxed);
        let start = self.last_delivery_us.max(from);
        let end = now_us.min(until);
        if end > start && end - start > self.report.longest_pause_us {
            self.report.longest_pause_us = end - start;
            let marks = self
                .moving
                .filter(|m| m.told_us <= end && m.joined_us.is_none_or(|j| j >= start));
            self.report.longest_pause = Pause {
                from_us: start,
                until_us: end,
                marks,
                ended_by: None,
            };
        }
    }

    fn flush_latencies(&mut self) {
        if self.latencies.is_empty() {
            return;
        }
        // A poisoned lock only means another user task panicked mid-record; the counts are
        // still usable.
        let mut histogram = self
            .shared
            .latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &latency in &self.latencies {
            histogram.record(latency);
        }
        drop(histogram);
        self.latencies.clear();
    }

    fn tell_ready(&mut self, ready: Ready) {
        if let Some(tell) = self.ready.take() {
            if matches!(ready, Ready::Up) {
                self.shared.up.fetch_add(1, Ordering::Relaxed);
            }
            // The run stops listening after its connect timeout; then nobody needs to know.
            let _ = tell.send(ready);
        }
    }

    fn finish(mut self) -> UserReport {
        self.flush_latencies();
        if self.ready.is_some() {
            self.tell_ready(Ready::Failed("stopped before it was up".into()));
        }
        let was_up = self.report.last_seq.is_some() || self.spec.room.is_none();
        if self.report.room.is_some() && was_up {
            // A room that went silent until the end of the send phase paused that long.
            self.close_pause(u64::MAX);
        }
        self.report.unanswered = self.pending.values().filter(|&&m| m).count() as u64;
        if let Some(done) = self.moving.take() {
            self.report.moves.push(done);
        }
        self.report.up_at_end = self.joined;
        self.report
    }
}
