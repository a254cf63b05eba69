//! One simulated user: a WebSocket connection to one node, in one room (or none, when idle),
//! sending when its room's pacer tells it to and checking everything it receives.
//!
//! What a user checks, as a receiver:
//! - order: each `msg` in its room must have `seq = last + 1`; a jump is a gap (lost messages),
//!   a `seq` at or below the last one under a new id is out of order;
//! - duplicates: an `id` seen twice;
//! - latency: the send time embedded in the text (see [`crate::wire`]) against the receive time.
//!
//! As a sender it keeps every `cid` it sent until the node answers: its own `msg` coming back
//! means accepted, an `error` with that `cid` means refused; anything left at the end was never
//! answered, which the report counts as lost.
//!
//! When the node says `reconnect` (drain, shutdown) with no wait, the user joins its room on
//! another node first and closes the old connection once in ([`successor`]: make-before-break),
//! so it never leaves the room. When the connection drops (node killed), or with
//! `--on-reconnect close`, the user connects to another node with a bounded backoff and
//! re-joins with `since` = the last seq it saw, so the replayed history fills the gap instead
//! of counting as lost. Sends the pacer asks for while the user is away wait in its bounded
//! order queue.
//! The users of one node do not all move to the same next node: each steps through the list
//! by its own stride ([`reconnect_stride`]), spreading them over the others as a Service's
//! load balancing spreads real clients.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::args::{NodeAddr, OnReconnect};
use crate::histogram::Histogram;
use crate::wire;

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

/// The latency histograms every user adds its deliveries to.
#[derive(Debug, Default, Clone)]
pub struct Latency {
    /// From when the message was due: the bench's own lateness in sending counts.
    pub from_due: Histogram,
    /// From when it was written to the sender's socket: the nodes' part (and the receiving
    /// task's wake-up).
    pub from_write: Histogram,
    /// How late the sender wrote it (write time less due time): the bench's own part.
    pub send_lag: Histogram,
}

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
    /// End-to-end latency of measured deliveries, in µs: from the due time, and from the write.
    pub latency: Mutex<Latency>,
    /// Whether rooms record their acknowledged messages (`--audit-history`).
    pub record_acknowledged: bool,
    /// How users move when their node says `reconnect`.
    pub on_reconnect: OnReconnect,
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
    /// When that pause began (µs on [`Shared::clock`]).
    pub longest_pause_from_us: u64,
    /// Frames that were not protocol v1 server frames.
    pub bad_frames: u64,
    /// Whether the user was in its room when the run stopped.
    pub up_at_end: bool,
    /// For each reconnect, µs from losing the room (the old connection ended) to the new
    /// connection's `joined`.
    pub rejoins_us: Vec<u64>,
    /// For each move made without leaving the room (make-before-break), µs from the node's
    /// `reconnect` to the switch to the new connection.
    pub handovers_us: Vec<u64>,
    /// Last seq seen, for the tail check against the room.
    pub last_seq: Option<u64>,
    /// The room, when not idle.
    pub room: Option<usize>,
}

/// Why a connection's serve loop ended.
enum Exit {
    /// The run is over.
    Stop,
    /// The node asked us to reconnect, after this long, for this reason.
    Reconnect(Duration, String),
    /// The connection failed or was closed.
    Dropped(String),
}

/// What a frame asks of the serve loop.
enum Next {
    Continue,
    /// The connection is in: its `joined` for our room (or, idle, the answer to our ping).
    Joined,
    Rejoin,
    Reconnect(Duration, String),
}

/// Which connection a frame came on, as the checks need to know it.
#[derive(Debug, Clone, Copy)]
struct Conn {
    /// Its number among the user's connections.
    id: u32,
    /// Whether it is in the room yet: a refused `join` is asked again only where it is not.
    joined: bool,
}

/// Run one user until the run stops, and say what it saw.
pub async fn run_user(
    spec: UserSpec,
    shared: Arc<Shared>,
    mut orders: mpsc::Receiver<SendOrder>,
    ready: oneshot::Sender<Ready>,
) -> UserReport {
    let nodes = shared.nodes.len();
    let mut user = User {
        report: UserReport {
            room: spec.room,
            ..UserReport::default()
        },
        node: spec.first_node % nodes.max(1),
        spec,
        shared,
        ready: Some(ready),
        joined: false,
        orders_open: true,
        unsent: None,
        next_cid: 0,
        pending: HashMap::new(),
        seen: HashMap::new(),
        conns: 0,
        conn: 0,
        overlapped: HashMap::new(),
        asked_since: HashMap::new(),
        last_delivery_us: 0,
        away_from_us: None,
        latencies: Vec::with_capacity(LATENCY_BATCH),
    };
    user.run(&mut orders).await;
    user.finish()
}

struct User {
    spec: UserSpec,
    shared: Arc<Shared>,
    report: UserReport,
    /// The node of the current connection, an index into [`Shared::nodes`].
    node: usize,
    /// Told once whether this user came up.
    ready: Option<oneshot::Sender<Ready>>,
    /// In the room on the current connection: only then are orders taken.
    joined: bool,
    /// Whether the pacer may still send orders.
    orders_open: bool,
    /// An order whose write failed with the connection: sent again after the re-join.
    unsent: Option<SendOrder>,
    next_cid: u64,
    /// cid -> (whether the send is measured, the connection it went out on), until answered.
    pending: HashMap<String, (bool, u32)>,
    /// Every message id received, with the connection that first brought it.
    seen: HashMap<u64, u32>,
    /// Connections opened so far; each is numbered by the count at its opening.
    conns: u32,
    /// The number of the current connection.
    conn: u32,
    /// Successor connection -> the connection it overlapped: a message both bring is a copy.
    overlapped: HashMap<u32, u32>,
    /// Connection -> the `since` its last `join` asked with, until answered. A room that
    /// answers below it lost its state; one that answers below the last seq seen since (on
    /// the connection being left) is only behind it.
    asked_since: HashMap<u32, u64>,
    last_delivery_us: u64,
    /// When the last connection in the room ended, until the next `joined`.
    away_from_us: Option<u64>,
    /// The embedded stamps and the receive time of measured deliveries, in µs.
    latencies: Vec<(wire::Stamps, u64)>,
}

/// How far along the node list a user moves when it reconnects: 1 to `nodes - 1`, by user, so
/// that the users of one node spread over all the others (user `i` starts on node `i % nodes`;
/// the next `nodes` users of that node take each stride in turn).
fn reconnect_stride(user: usize, nodes: usize) -> usize {
    if nodes < 2 {
        return 0;
    }
    1 + (user / nodes) % (nodes - 1)
}

impl User {
    async fn run(&mut self, orders: &mut mpsc::Receiver<SendOrder>) {
        let stop = self.shared.stop.clone();
        let mut failures: u32 = 0;
        let mut ever_connected = false;
        let mut last_error = String::from("not tried");
        while !stop.is_cancelled() {
            if self.ready.is_some() && Instant::now() >= self.spec.up_deadline {
                self.tell_ready(Ready::Failed(last_error));
                return;
            }
            // Only the first connect waits its turn: clients that were told to reconnect are
            // independent and come back at once, as real ones would.
            let connecting = connect(self.shared.clone(), self.url(self.node), !ever_connected);
            let wait = match connecting.await {
                Ok(ws) => {
                    if ever_connected {
                        self.count_reconnect();
                    }
                    ever_connected = true;
                    failures = 0;
                    self.conns += 1;
                    self.conn = self.conns;
                    let exit = self.serve(ws, orders).await;
                    if !matches!(exit, Exit::Stop) {
                        if self.joined {
                            self.away_from_us = Some(self.shared.now_us());
                        }
                        self.joined = false;
                    }
                    match exit {
                        // `joined` is left as it was: the report says whether we were in.
                        Exit::Stop => return,
                        // The next node in the list: never the one that told us to go.
                        Exit::Reconnect(after, reason) => {
                            last_error = format!("node {} asked to reconnect: {reason}", self.node);
                            after
                        }
                        Exit::Dropped(reason) => {
                            last_error = reason;
                            FIRST_BACKOFF
                        }
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    last_error = e;
                    FIRST_BACKOFF
                        .saturating_mul(1 << failures.min(5).saturating_sub(1))
                        .min(MAX_BACKOFF)
                }
            };
            self.node = self.next_node();
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn next_node(&self) -> usize {
        let nodes = self.shared.nodes.len();
        (self.node + reconnect_stride(self.spec.first_node, nodes)) % nodes
    }

    fn url(&self, node: usize) -> String {
        format!(
            "{}/ws?user={}",
            self.shared.nodes[node].base, self.spec.name
        )
    }

    fn count_reconnect(&mut self) {
        self.report.reconnects += 1;
        self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Serve one connection: join (or resume), then read, send orders, until it ends. Told to
    /// reconnect with no wait, open a [`Successor`] and carry on with it once it is in.
    async fn serve(&mut self, mut ws: Ws, orders: &mut mpsc::Receiver<SendOrder>) -> Exit {
        let stop = self.shared.stop.clone();
        if let Err(e) = ws.send(Message::text(self.hello(self.conn))).await {
            return Exit::Dropped(e.to_string());
        }
        let mut rejoin_at: Option<tokio::time::Instant> = None;
        let mut successor: Option<Successor> = None;
        loop {
            if self.joined
                && let Some(order) = self.unsent.take()
                && let Err(e) = self.send(&mut ws, order).await
            {
                return Exit::Dropped(e);
            }
            if successor.as_ref().is_some_and(Successor::is_in)
                && !self.pending.values().any(|&(_, conn)| conn == self.conn)
                && let Some(next) = successor.take()
            {
                // The new connection is in and nothing sent on the old one is unanswered:
                // switch, so this user's sends stay in order.
                ws = self.take_over(ws, next);
                rejoin_at = None;
            }
            // While a successor is in, orders wait for the switch (the old one's last answers).
            let switching = successor.as_ref().is_some_and(Successor::is_in);
            let take_orders = self.joined && self.orders_open && !switching;
            let rejoin = async move {
                match rejoin_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let here = Conn {
                id: self.conn,
                joined: self.joined,
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
                    if let Some(next) = successor {
                        next.close();
                    }
                    return Exit::Stop;
                }
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        let now_us = self.shared.now_us();
                        match self.on_frame(text.as_str(), now_us, here) {
                            Next::Continue | Next::Joined => {}
                            Next::Rejoin => {
                                rejoin_at = Some(tokio::time::Instant::now() + REJOIN_DELAY);
                            }
                            Next::Reconnect(after, reason) => {
                                if successor.is_none() && self.overlaps(after) {
                                    successor = Some(self.successor(self.next_node(), 1, now_us));
                                    continue;
                                }
                                if successor.is_some() {
                                    continue;
                                }
                                let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
                                return Exit::Reconnect(after, reason);
                            }
                        }
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None
                        if successor.as_ref().is_some_and(Successor::is_open) =>
                    {
                        // The old node closed before the successor took over: carry on with it
                        // now; if it is not in yet, the user is out of its room until it is.
                        if let Some(next) = successor.take() {
                            let in_already = next.is_in();
                            if !in_already && self.joined {
                                self.away_from_us = Some(self.shared.now_us());
                                self.joined = false;
                            }
                            ws = self.take_over(ws, next);
                            self.joined = in_already;
                            rejoin_at = None;
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map(|f| format!("{} {}", f.code, f.reason));
                        return Exit::Dropped(format!(
                            "closed by the node ({})",
                            why.unwrap_or_else(|| "no reason".into())
                        ));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Exit::Dropped(e.to_string()),
                    None => return Exit::Dropped("connection ended".into()),
                },
                event = successor_event(&mut successor) => {
                    self.on_successor(&mut successor, event).await;
                }
                () = rejoin => {
                    rejoin_at = None;
                    if let Err(e) = ws.send(Message::text(self.hello(self.conn))).await {
                        return Exit::Dropped(e.to_string());
                    }
                }
                order = orders.recv(), if take_orders => match order {
                    Some(order) => {
                        if let Err(e) = self.send(&mut ws, order).await {
                            return Exit::Dropped(e);
                        }
                    }
                    None => self.orders_open = false,
                },
            }
        }
    }

    /// The first frame on connection `conn`: `join` (with `since` when resuming), or a `ping`
    /// for an idle connection.
    fn hello(&mut self, conn: u32) -> String {
        match self.spec.room {
            Some(room) => {
                if let Some(since) = self.report.last_seq {
                    self.asked_since.insert(conn, since);
                }
                wire::join(&self.shared.rooms[room].name, self.report.last_seq)
            }
            None => wire::ping(UP_CID),
        }
    }

    async fn send(&mut self, ws: &mut Ws, order: SendOrder) -> Result<(), String> {
        let Some(room) = self.spec.room else {
            return Ok(());
        };
        self.next_cid += 1;
        let cid = self.next_cid.to_string();
        let stamps = wire::Stamps {
            due_us: order.scheduled_us,
            written_us: self.shared.now_us(),
        };
        let text = wire::message_text(stamps, self.shared.text_bytes);
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
        self.pending.insert(cid, (measured, self.conn));
        Ok(())
    }

    fn measure_from(&self) -> u64 {
        self.shared.measure_from_us.load(Ordering::Relaxed)
    }
}

/// Open a WebSocket to `url`; `throttled` waits for a handshake slot first.
async fn connect(shared: Arc<Shared>, url: String, throttled: bool) -> Result<Ws, String> {
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let stop = shared.stop.clone();
    let attempt = async {
        let _permit = if throttled {
            Some(
                shared
                    .handshakes
                    .acquire()
                    .await
                    .map_err(|_| "stopping".to_owned())?,
            )
        } else {
            None
        };
        // Nagle off: a paced stream of small frames must not wait for ACKs.
        let connecting =
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
            Ok(Ok((ws, _response))) => Ok(ws),
            Ok(Err(e)) => Err(format!("{url}: {e}")),
            Err(_) => Err(format!("{url}: handshake timed out")),
        }
    };
    tokio::select! {
        () = stop.cancelled() => Err("stopping".to_owned()),
        result = attempt => result,
    }
}

mod receive;
mod successor;

use successor::{Successor, successor_event};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_of_one_node_reconnect_to_every_other_node_in_turn() {
        let nodes = 5;
        // The users starting on node 3: 3, 8, 13, 18, ...
        let next: Vec<usize> = (0..8)
            .map(|k| 3 + k * nodes)
            .map(|user| (3 + reconnect_stride(user, nodes)) % nodes)
            .collect();
        assert_eq!(next, [4, 0, 1, 2, 4, 0, 1, 2]);
        assert_eq!(reconnect_stride(7, 1), 0, "alone, it stays");
        assert!((0..100).all(|u| reconnect_stride(u, 2) == 1));
    }
}
