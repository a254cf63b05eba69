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
//! When the node says `reconnect` (drain, shutdown) the user moves make-before-break: it keeps
//! reading (and sending on) the told connection while it connects to another node, picked at
//! random among those that have not told anyone to go lately (as a Service spreads connections
//! over its ready pods), and re-joins with `since` = the last seq it saw; once joined there and
//! its sends on the old connection are answered, it closes the old one. `--break-before-make`
//! closes first instead. When the connection drops (node killed), it reconnects with a bounded
//! backoff and re-joins with `since`, so the replayed history fills the gap instead of counting
//! as lost. Sends the pacer asks for while the user has no joined connection wait in its
//! bounded order queue. Each move's steps are timed ([`crate::handover`]).

use std::collections::{BTreeMap, HashMap, HashSet};
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

use crate::args::NodeAddr;
use crate::handover::{Marks, Pause};
use crate::histogram::Histogram;
use crate::wire::{self, ServerFrame, WireMsg};

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

/// Which of a user's connections a frame came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// The connection we joined (or are joining) on.
    Current,
    /// The connection told to reconnect, read until the current one has joined.
    Old,
}

/// What a socket read means for its connection.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Continue,
    Rejoin,
    /// The node asked us to reconnect, after this long, for this reason.
    Reconnect(Duration, String),
    /// The connection failed or was closed.
    Dropped(String),
}

/// A connection attempt in progress.
type Connecting = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Ws, String>> + Send>>;

/// How long the old connection waits, after the new one has joined, for the answers to the
/// sends made on it before it is closed anyway (they come back in the re-join's replay too).
const OLD_LINGER: Duration = Duration::from_secs(2);

/// The next read of `ws`, or never when there is none.
async fn next_frame(
    ws: &mut Option<Ws>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match ws.as_mut() {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Open a connection for user `name` to node `node`; `throttled` waits for a handshake slot.
async fn connect(
    shared: Arc<Shared>,
    name: String,
    node: usize,
    throttled: bool,
) -> Result<Ws, String> {
    let addr = &shared.nodes[node];
    let url = format!("{}/ws?user={name}", addr.base);
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
            Ok(Err(e)) => Err(format!("{}: {e}", addr.base)),
            Err(_) => Err(format!("{}: handshake timed out", addr.base)),
        }
    };
    tokio::select! {
        () = stop.cancelled() => Err("stopping".to_owned()),
        result = attempt => result,
    }
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
    /// The user's connections over the run. A `reconnect` from the node is make-before-break:
    /// the told connection stays open and is still read (the node keeps serving it) while the
    /// next node's connection opens and re-joins with `since`; sends keep going out on the old
    /// one until then. Once the new one has joined and every send made on the old one is
    /// answered, the old one is closed. Repeats from the overlap are dropped by message id.
    async fn run(&mut self, orders: &mut mpsc::Receiver<SendOrder>) {
        let stop = self.shared.stop.clone();
        let nodes = self.shared.nodes.len();
        let mut node = self.spec.first_node % nodes;
        let mut failures: u32 = 0;
        let mut ever_connected = false;
        let mut last_error = String::from("not tried");
        // The connection we join and (once the old one is gone) send on.
        let mut current: Option<Ws> = None;
        // The connection told to reconnect, still read until `current` has joined.
        let mut old: Option<Ws> = None;
        let mut connecting: Option<Connecting> = None;
        let mut connect_at = Some(tokio::time::Instant::now());
        let mut rejoin_at: Option<tokio::time::Instant> = None;
        loop {
            if self.ready.is_some() && Instant::now() >= self.spec.up_deadline {
                self.tell_ready(Ready::Failed(last_error));
                return;
            }
            if connecting.is_none()
                && current.is_none()
                && connect_at.is_some_and(|at| at <= tokio::time::Instant::now())
            {
                connect_at = None;
                if let Some(marks) = &mut self.moving {
                    marks.attempts += 1;
                }
                connecting = Some(Box::pin(connect(
                    self.shared.clone(),
                    self.spec.name.clone(),
                    node,
                    !ever_connected,
                )));
            }
            // The old connection goes once the new one has joined and its sends are answered.
            if self.joined
                && old.is_some()
                && (self.old_cids.is_empty() || self.linger_over())
                && let Some(ws) = old.take()
            {
                self.old_gone();
                tokio::spawn(async move {
                    let mut ws = ws;
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
                });
            }
            if let Some(ws) = current.as_mut()
                && self.joined
                && old.is_none()
                && let Some(order) = self.unsent.take()
                && let Err(e) = self.send(ws, order, false).await
            {
                last_error = e;
                current = None;
                self.lost_current(old.is_some(), &mut connect_at, &mut node);
                continue;
            }
            // Orders go to the joined connection; while a move is under way, to the old one
            // until the new one has joined.
            let send_on_old = !self.joined && old.is_some() && self.old_joined;
            let take_orders = self.orders_open && ((self.joined && old.is_none()) || send_on_old);
            let rejoin = sleep_until_some(rejoin_at);
            let connect_wait = sleep_until_some(if connecting.is_none() && current.is_none() {
                connect_at
            } else {
                None
            });
            let linger = sleep_until_some(if self.joined && old.is_some() {
                self.linger_until
            } else {
                None
            });
            let connected = async {
                match connecting.as_mut() {
                    Some(attempt) => attempt.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => {
                    for mut ws in [current.take(), old.take()].into_iter().flatten() {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
                    }
                    return;
                }
                frame = next_frame(&mut old) => {
                    if self.on_socket(frame, Via::Old) != Step::Continue {
                        old = None;
                        self.old_gone();
                    }
                }
                frame = next_frame(&mut current) => match self.on_socket(frame, Via::Current) {
                    Step::Continue => {}
                    Step::Rejoin => {
                        rejoin_at = Some(tokio::time::Instant::now() + REJOIN_DELAY);
                    }
                    Step::Reconnect(after, reason) => {
                        last_error = format!("node {node} asked to reconnect: {reason}");
                        let told = current.take();
                        if old.is_none() && self.joined && !self.shared.break_before_make {
                            // Make-before-break: keep reading it while the next one comes up.
                            old = told;
                            self.old_serial = self.conn_serial;
                            self.old_joined = true;
                            self.old_cids = std::mem::take(&mut self.current_cids);
                            self.begin_move(true);
                        } else if let Some(mut ws) = told {
                            if old.is_none() {
                                self.begin_move(false);
                            }
                            tokio::spawn(async move {
                                let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
                            });
                        }
                        self.joined = false;
                        node = self.next_node(node);
                        connect_at = Some(tokio::time::Instant::now() + after);
                    }
                    Step::Dropped(reason) => {
                        last_error = reason;
                        current = None;
                        self.lost_current(old.is_some(), &mut connect_at, &mut node);
                    }
                },
                result = connected => {
                    connecting = None;
                    match result {
                        Ok(mut ws) => {
                            if ever_connected {
                                self.report.reconnects += 1;
                                self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                            }
                            ever_connected = true;
                            failures = 0;
                            if let Some(marks) = &mut self.moving {
                                marks.open_us = Some(self.shared.now_us());
                            }
                            match ws.send(Message::text(self.hello())).await {
                                Ok(()) => {
                                    self.conn_serial = self.conn_serial.wrapping_add(1);
                                    current = Some(ws);
                                }
                                Err(e) => {
                                    last_error = e.to_string();
                                    self.lost_current(old.is_some(), &mut connect_at, &mut node);
                                }
                            }
                        }
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            last_error = e;
                            node = self.next_node(node);
                            // While the old connection still serves us, the next node is tried
                            // at once; otherwise back off.
                            let wait = if old.is_some() {
                                Duration::ZERO
                            } else {
                                FIRST_BACKOFF
                                    .saturating_mul(1 << failures.min(5).saturating_sub(1))
                                    .min(MAX_BACKOFF)
                            };
                            connect_at = Some(tokio::time::Instant::now() + wait);
                        }
                    }
                }
                () = connect_wait => {}
                () = linger => {}
                () = rejoin => {
                    rejoin_at = None;
                    if let Some(ws) = current.as_mut()
                        && let Err(e) = ws.send(Message::text(self.hello())).await
                    {
                        last_error = e.to_string();
                        current = None;
                        self.lost_current(old.is_some(), &mut connect_at, &mut node);
                    }
                }
                order = orders.recv(), if take_orders => match order {
                    Some(order) => {
                        let ws = if send_on_old { old.as_mut() } else { current.as_mut() };
                        if send_on_old && let Some(marks) = &mut self.moving {
                            marks.old_sends += 1;
                        }
                        if let Some(ws) = ws
                            && let Err(e) = self.send(ws, order, send_on_old).await
                        {
                            last_error = e;
                            if send_on_old {
                                old = None;
                                self.old_gone();
                            } else {
                                current = None;
                                self.lost_current(old.is_some(), &mut connect_at, &mut node);
                            }
                        }
                    }
                    None => self.orders_open = false,
                },
            }
        }
    }

    /// The current connection is gone without a `reconnect`: try the next node, at once while
    /// an old connection still serves us, after the first backoff otherwise.
    fn lost_current(
        &mut self,
        old_alive: bool,
        connect_at: &mut Option<tokio::time::Instant>,
        node: &mut usize,
    ) {
        self.joined = false;
        if self.moving.is_none() {
            self.begin_move(old_alive);
        }
        // Sends made on it are answered through the re-join's replay, or never.
        self.current_cids.clear();
        *node = self.next_node(*node);
        let wait = if old_alive {
            Duration::ZERO
        } else {
            FIRST_BACKOFF
        };
        *connect_at = Some(tokio::time::Instant::now() + wait);
    }

    /// The node to try after `from` failed us (told us to reconnect, refused or dropped us):
    /// `from` is left out for [`GONE_FOR`] by every user, and the next one is picked at random
    /// among the others that are not, as a Service spreads new connections over its ready pods.
    fn next_node(&self, from: usize) -> usize {
        let shared = &self.shared;
        let now = shared.now_us();
        let gone_for = u64::try_from(GONE_FOR.as_micros()).unwrap_or(u64::MAX);
        if let Some(until) = shared.gone_until_us.get(from) {
            until.fetch_max(now.saturating_add(gone_for), Ordering::Relaxed);
        }
        let nodes = shared.nodes.len();
        let up: Vec<usize> = (0..nodes)
            .filter(|&n| n != from && shared.gone_until_us[n].load(Ordering::Relaxed) <= now)
            .collect();
        let others: Vec<usize> = (0..nodes).filter(|&n| n != from).collect();
        let pool = if !up.is_empty() {
            up
        } else if !others.is_empty() {
            others
        } else {
            return from;
        };
        let pick = std::hash::BuildHasher::hash_one(
            &std::hash::RandomState::new(),
            (&self.spec.name, now),
        );
        pool[usize::try_from(pick % pool.len() as u64).unwrap_or(0)]
    }

    /// A move starts: remember when, for the account of the pauses.
    fn begin_move(&mut self, overlapped: bool) {
        if let Some(done) = self.moving.take() {
            self.report.moves.push(done);
        }
        self.moving = Some(Marks {
            told_us: self.shared.now_us(),
            overlapped,
            ..Marks::default()
        });
        self.linger_until = None;
    }

    /// The old connection is closed (by us or the node).
    fn old_gone(&mut self) {
        self.old_joined = false;
        self.old_cids.clear();
        self.linger_until = None;
        if let Some(marks) = &mut self.moving {
            marks.old_closed_us = Some(self.shared.now_us());
        }
    }

    /// Whether the old connection has waited long enough for its last answers.
    fn linger_over(&self) -> bool {
        self.linger_until
            .is_some_and(|at| at <= tokio::time::Instant::now())
    }

    /// What one socket read means for the connection it came on.
    fn on_socket(
        &mut self,
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
        via: Via,
    ) -> Step {
        match frame {
            Some(Ok(Message::Text(text))) => {
                let now_us = self.shared.now_us();
                match self.on_frame(text.as_str(), now_us, via) {
                    Next::Continue => Step::Continue,
                    Next::Rejoin if via == Via::Current => Step::Rejoin,
                    Next::Rejoin => Step::Continue,
                    Next::Reconnect(after, reason) if via == Via::Current => {
                        Step::Reconnect(after, reason)
                    }
                    // The old connection repeating itself: we are already moving.
                    Next::Reconnect(..) => Step::Continue,
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let why = frame.map(|f| format!("{} {}", f.code, f.reason));
                Step::Dropped(format!(
                    "closed by the node ({})",
                    why.unwrap_or_else(|| "no reason".into())
                ))
            }
            Some(Ok(_)) => Step::Continue,
            Some(Err(e)) => Step::Dropped(e.to_string()),
            None => Step::Dropped("connection ended".into()),
        }
    }

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
            && was_measured
        {
            self.report.accepted += 1;
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
            let members = slot.members.load(Ordering::Relaxed);
            shared.expected.fetch_add(members, Ordering::Relaxed);
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
