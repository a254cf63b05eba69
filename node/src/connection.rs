//! One client connection: read its messages, check them, send room operations to owners.
//!
//! Nothing ever waits on a client: owners and the edge write into its socket without
//! blocking, and what the socket cannot take waits in the connection's bounded [`Outbox`];
//! a full one closes the connection as a slow consumer. The connection's writer task only
//! finishes what the socket could not take at once, and sends the close frame.
//!
//! **Per-room route fence.** A connection's commands to one room keep their order across a
//! hand-off. Without care they could swap: a send routed to the old owner A is forwarded by A
//! to the new owner B, while the next send, routed by the new table, goes straight to B and
//! may get there first. So the connection remembers which owner it last routed each room to;
//! when the table names another owner and commands of this connection are still unanswered,
//! it waits for their answers (every routed command gets exactly one: `joined`, `left`, an
//! error, or the message's own echo) before it routes the next one. The wait is bounded by the
//! hand-off timeout; past it an earlier command may still be on its way (a link that cannot
//! deliver yet) and could be given a seq after this one, so the connection ends instead (a
//! `reconnect`, then close 1013) and the client re-joins with `since`. Reading the socket
//! pauses meanwhile, which is what keeps the order. A command goes by the table the
//! fence looked at: one read a moment later could name the new owner for a command the fence
//! let through as going to the old one.

use std::borrow::Cow;
use std::sync::Arc;
use tracing::Instrument;

use axum::extract::ws::Message;
use shard::{NodeName, RoomId};
use tokio::net::TcpStream;

use crate::edge::{CLOSE_GOING_AWAY, CloseReason, ConnControl, ConnHandle, ConnId};
use crate::hashing::{HashMap, HashSet};
use crate::outbox::Outbox;
use crate::protocol::{self, ClientOp, ErrorCode, Refusal};
use crate::rate::TokenBucket;
use crate::room::{MemberKey, RoomCommand};
use crate::rooms::RouteError;
use crate::state::NodeState;
use crate::ws::frame::{FrameError, WireFrame};
use crate::ws::{ClientStream, ReadError};

/// Serve one authenticated client on its upgraded socket (`already_read`: bytes the HTTP layer
/// read past the upgrade request) until it leaves, is closed, or the node shuts down.
pub async fn serve(tcp: Arc<TcpStream>, already_read: &[u8], node: Arc<NodeState>, user: String) {
    let limits = node.settings.limits.clone();
    let mut stream = ClientStream::new(tcp.clone(), already_read, limits.max_frame_bytes);
    let out = Arc::new(Outbox::new(tcp, limits.outgoing_queue));
    let control = Arc::new(ConnControl::default());
    let mut conn = Connection::open(node.clone(), &user, out.clone(), control.clone());
    let writer = {
        let control = control.clone();
        let close_timeout = limits.close_timeout;
        tokio::spawn(async move { out.run(&control, close_timeout).await }.in_current_span())
    };

    // Set when the node starts shutting down: when this client is told to reconnect. A node's
    // clients are told over a short window rather than all at once, so the nodes they come
    // back to take their handshakes and re-joins as a stream, not a spike; until told, a
    // connection is served as ever.
    let mut tell_at: Option<tokio::time::Instant> = None;
    // Set once told: frames the client wrote before it saw `reconnect` are still read and
    // answered until then.
    let mut closing_at: Option<tokio::time::Instant> = None;
    // Made once, not per frame: each wait on a cancellation token takes that token's lock, and
    // the shutdown token is shared by every connection of the node.
    let closed = control.closed();
    let shutdown = node.shutdown.cancelled();
    tokio::pin!(closed, shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut closed => break,
            () = &mut shutdown, if tell_at.is_none() => {
                let open = u64::try_from(node.metrics.connections.get()).unwrap_or(0);
                let delay = reconnect_delay(conn.handle.id, open, limits.reconnect_spread);
                tell_at = Some(tokio::time::Instant::now() + delay);
            }
            () = sleep_until_some(tell_at), if closing_at.is_none() => {
                conn.push(protocol::reconnect_frame("node shutting down", Some(0)));
                closing_at = Some(tokio::time::Instant::now() + RECONNECT_GRACE);
            }
            () = sleep_until_some(closing_at) => {
                control.close(CloseReason {
                    code: CLOSE_GOING_AWAY,
                    reason: "node shutting down".to_owned(),
                    flush: true,
                });
                break;
            }
            message = stream.next() => match message {
                Ok(Some(Message::Text(text))) => conn.on_text(text.as_str()).await,
                Ok(Some(Message::Binary(_))) => conn.refuse(Refusal::new(
                    ErrorCode::BadRequest,
                    "binary frames are not supported: send json text frames",
                )),
                Ok(Some(Message::Ping(payload))) => {
                    node.hub.push(&conn.handle, &WireFrame::pong(&payload), false);
                }
                Ok(Some(Message::Pong(_))) => {}
                Ok(Some(Message::Close(_)) | None) => break,
                Err(ReadError::Frame(error)) => {
                    let reason = match error {
                        FrameError::TooBig { limit } => format!("message over {limit} bytes"),
                        _ => error.to_string(),
                    };
                    tracing::debug!(%error, "client broke the framing");
                    control.close(CloseReason {
                        code: error.close_code(),
                        reason,
                        flush: false,
                    });
                    break;
                }
                Err(ReadError::Io(error)) => {
                    tracing::debug!(%error, "client read failed");
                    break;
                }
            }
        }
    }
    conn.depart().await;
    let Connection { handle, .. } = conn;
    drop(handle);
    if !control.is_closed() {
        control.close(CloseReason {
            code: 1000,
            reason: String::new(),
            flush: true,
        });
    }
    let _ = writer.await;
    node.metrics.connections.dec();
}

/// A client connection without a socket: the per-connection logic of [`serve`] (frame
/// parsing, limits, the rooms joined, the route fence) over an outbox that only queues. The
/// cluster simulation (`testing/sim`) runs its clients as sessions, so they reach the node
/// exactly as a WebSocket client's frames do once read off the socket.
pub struct Session {
    conn: Connection,
    out: Arc<Outbox>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("conn", &self.conn.handle.id)
            .field("user", &self.conn.user)
            .finish()
    }
}

impl Session {
    /// A new connection of `user` on `node`.
    pub fn open(node: Arc<NodeState>, user: &str) -> Session {
        let limits = node.settings.limits.clone();
        let out = Arc::new(Outbox::detached(limits.outgoing_queue));
        let conn = Connection::open(node, user, out.clone(), Arc::default());
        Session { conn, out }
    }

    /// The client sent the text frame `text`.
    pub async fn text(&mut self, text: &str) {
        self.conn.on_text(text).await;
    }

    /// The frames the node delivered since the last call, in order.
    pub fn take_frames(&self) -> Vec<String> {
        self.out.take_queued()
    }

    /// Whether the node closed the connection (a slow consumer).
    pub fn is_closed(&self) -> bool {
        self.conn.handle.control.is_closed()
    }

    /// The client goes away: leave every room, as a closed socket does.
    pub async fn close(mut self) {
        self.conn.depart().await;
        self.conn.node.metrics.connections.dec();
    }
}

/// What a connection whose route fence timed out says, in the frame and the close frame.
const FENCE_REASON: &str =
    "earlier sends are still on their way to a room's old owner: reconnect and re-join with since";

/// How long a connection told to reconnect is still served: a `send` the client wrote before it
/// read `reconnect` is answered (and delivered) rather than silently dropped, and a client that
/// joins its rooms on another node before leaving (make-before-break) keeps receiving here
/// until it is in there. Measured on a 5 → 3 scale-down with one of the two cores taken by
/// other work, such a move took up to 0.98 s (p99 0.82 s): at 1 s, ten of 2,400 clients lost
/// this connection first. A client closes it as soon as it has moved, so only one that ignores
/// `reconnect` holds the node this long.
pub const RECONNECT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Spread of the `reconnect` burst per open connection: a node's clients are told over
/// `connections` × this, at most the node's `reconnect_spread` (1,200 clients: 0.9 s). Measured
/// on a 5 → 3 scale-down of 6,000 clients: at 0 the longest silence of a room was 1.09-1.14 s,
/// at 0.75 ms 0.66 s, and twice as long a window gained nothing but a longer exit.
pub const RECONNECT_SPREAD_PER_CONNECTION: std::time::Duration =
    std::time::Duration::from_micros(750);

/// How long after shutdown starts connection `id` is told to reconnect, with `open` connections
/// on the node: spread evenly (by a hash of its id) over the window, bounded by `max`.
pub fn reconnect_delay(id: ConnId, open: u64, max: std::time::Duration) -> std::time::Duration {
    let window = RECONNECT_SPREAD_PER_CONNECTION
        .saturating_mul(u32::try_from(open).unwrap_or(u32::MAX))
        .min(max);
    // Fibonacci hashing: consecutive ids land far apart in [0, 1).
    let place = (id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    window.mul_f64(place)
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A close frame's reason may hold at most 123 bytes.
pub fn truncate_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

struct Connection {
    node: Arc<NodeState>,
    handle: ConnHandle,
    user: Arc<str>,
    /// Rooms this connection asked to join and has not left: checked here, at the edge, so a
    /// `send` to a room it is not in never travels to the owner.
    joined: HashSet<RoomId>,
    bucket: TokenBucket,
    /// The owner each room's last command was routed to (see the route fence above).
    routes: HashMap<RoomId, NodeName>,
    /// Commands routed so far; compared with the answers delivered.
    routed: u64,
}

impl Connection {
    /// A new connection of `user` whose frames go out through `out`, registered with the
    /// node's edge under an id of its own.
    fn open(
        node: Arc<NodeState>,
        user: &str,
        out: Arc<Outbox>,
        control: Arc<ConnControl>,
    ) -> Connection {
        let limits = &node.settings.limits;
        let user: Arc<str> = user.into();
        let handle = ConnHandle {
            id: node.next_conn_id(),
            user: user.clone(),
            out,
            control,
        };
        node.hub.register(handle.clone());
        node.metrics.connections.inc();
        node.metrics.connections_total.inc();
        let bucket = TokenBucket::new(
            limits.rate_per_sec,
            limits.rate_burst,
            tokio::time::Instant::now().into_std(),
        );
        Connection {
            node,
            handle,
            user,
            joined: HashSet::default(),
            bucket,
            routes: HashMap::default(),
            routed: 0,
        }
    }

    fn member(&self) -> MemberKey {
        MemberKey {
            node: self.node.settings.name.clone(),
            conn: self.handle.id,
        }
    }

    fn id(&self) -> ConnId {
        self.handle.id
    }

    fn push(&self, frame: String) {
        self.node
            .hub
            .push(&self.handle, &WireFrame::text(&frame), false);
    }

    fn refuse(&self, refusal: Refusal) {
        self.node.metrics.error(refusal.code);
        self.push(refusal.to_frame());
    }

    async fn on_text(&mut self, text: &str) {
        self.node.metrics.frames_in.inc();
        let max_text = self.node.settings.limits.max_text_bytes;
        let op = match protocol::parse_client_frame(text, max_text) {
            Ok(op) => op,
            Err(refusal) => return self.refuse(refusal),
        };
        if !self.bucket.try_take(tokio::time::Instant::now().into_std()) {
            let wait = self.bucket.retry_after().as_millis();
            return self.refuse(refusal_for(
                &op,
                ErrorCode::RateLimited,
                format!("too many frames: retry in {wait} ms"),
            ));
        }
        match op {
            ClientOp::Ping { cid } => self.push(protocol::pong_frame(cid.as_deref())),
            ClientOp::Join { room, since } => {
                let max_rooms = self.node.settings.limits.max_rooms;
                if !self.joined.contains(&room) && self.joined.len() >= max_rooms {
                    let message =
                        format!("too many rooms: a connection may join at most {max_rooms}");
                    return self.refuse(Refusal {
                        code: ErrorCode::Forbidden,
                        message,
                        cid: None,
                        room: Some(room),
                    });
                }
                let fresh = self.joined.insert(room.clone());
                let command = RoomCommand::Join {
                    member: self.member(),
                    user: self.user.clone(),
                    since,
                };
                if let Err(e) = self.route(&room, command).await {
                    if fresh {
                        // `routes` stays bounded by the rooms joined.
                        self.joined.remove(&room);
                        self.routes.remove(&room);
                    }
                    self.refuse_route(e, Some(room), None);
                }
            }
            ClientOp::Leave { room } => {
                if !self.joined.remove(&room) {
                    return self.refuse(not_joined(room, None));
                }
                let command = RoomCommand::Leave {
                    member: self.member(),
                    reply: true,
                };
                let routed = self.route(&room, command).await;
                self.routes.remove(&room);
                if let Err(e) = routed {
                    self.refuse_route(e, Some(room), None);
                }
            }
            ClientOp::Send { room, text, cid } => {
                if !self.joined.contains(&room) {
                    return self.refuse(not_joined(room, cid.map(Cow::into_owned)));
                }
                let cid = cid.map(Cow::into_owned);
                let command = RoomCommand::Post {
                    member: self.member(),
                    user: self.user.clone(),
                    text: text.into_owned(),
                    cid: cid.clone(),
                };
                if let Err(e) = self.route(&room, command).await {
                    self.refuse_route(e, Some(room), cid);
                }
            }
        }
    }

    /// Route `command` to `room`'s owner behind the route fence (see the module doc).
    async fn route(&mut self, room: &RoomId, command: RoomCommand) -> Result<(), RouteError> {
        // The command goes by the very table the fence let it through with (see
        // `NodeState::route_by`): after a wait the table is read again, and nothing is awaited
        // between the last look and the routing.
        let table = loop {
            let table = self.node.table();
            let Some(owner) = table.owner_of_room(room) else {
                break table;
            };
            let moved = self.routes.get(room).is_some_and(|last| last != owner);
            let control = &self.handle.control;
            // Answers can outnumber commands (a `joined` after an owner failed, messages from
            // an owner of an earlier version): then nothing is known to be in flight.
            self.routed = self.routed.max(control.answers());
            if !moved || control.answers() >= self.routed {
                self.routes.insert(room.clone(), owner.clone());
                break table;
            }
            let bound = self.node.settings.handoff.timeout;
            let waited = tokio::time::timeout(bound, control.answered(self.routed)).await;
            if waited.is_err() {
                // What is still unanswered was lost with a node, or is still on its way (a
                // link that cannot deliver yet): sent on now, this command could get a seq
                // before it. The connection cannot keep its order any more, so it ends: the
                // client reconnects and re-joins with `since`, which shows what was delivered.
                tracing::debug!(%room, "route fence timed out: the connection ends");
                self.push(protocol::reconnect_frame(FENCE_REASON, Some(0)));
                control.close(CloseReason {
                    code: crate::edge::CLOSE_SLOW_CONSUMER,
                    reason: FENCE_REASON.to_owned(),
                    flush: true,
                });
                return Err(RouteError::Unavailable);
            }
        };
        self.node.route_by(&table, room, command).await?;
        self.routed += 1;
        if let Some(owner) = table.owner_of_room(room) {
            self.handle.control.routed_to(owner, self.routed);
        }
        Ok(())
    }

    fn refuse_route(&self, error: RouteError, room: Option<RoomId>, cid: Option<String>) {
        let code = match error {
            RouteError::Overloaded => ErrorCode::Overloaded,
            RouteError::Unavailable | RouteError::Moved => ErrorCode::RoomUnavailable,
        };
        self.refuse(Refusal {
            code,
            message: error.to_string(),
            cid,
            room,
        });
    }

    /// Leave every room (without `left` answers: nobody is listening) and stop deliveries.
    async fn depart(&mut self) {
        let rooms: Vec<RoomId> = self.joined.drain().collect();
        self.node.hub.unregister(self.id(), rooms.iter().cloned());
        for room in rooms {
            let command = RoomCommand::Leave {
                member: self.member(),
                reply: false,
            };
            if let Err(e) = self.node.route(&room, command).await {
                tracing::warn!(%room, error = %e, "could not tell the owner a member left");
            }
        }
    }
}

fn refusal_for(op: &ClientOp, code: ErrorCode, message: String) -> Refusal {
    Refusal {
        code,
        message,
        cid: op.cid().map(str::to_owned),
        room: op.room().cloned(),
    }
}

fn not_joined(room: RoomId, cid: Option<String>) -> Refusal {
    Refusal {
        code: ErrorCode::NotJoined,
        message: format!("not a member of room `{room}`: join it first"),
        cid,
        room: Some(room),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn reconnects_are_spread_over_a_window_that_grows_with_the_connections_up_to_its_bound() {
        let max = Duration::from_secs(2);
        // 1,000 connections: a 750 ms window, and the ids fill it rather than bunching up.
        let delays: Vec<Duration> = (0..1000)
            .map(|id| reconnect_delay(ConnId(id), 1000, max))
            .collect();
        assert!(delays.iter().all(|d| *d < Duration::from_millis(750)));
        let early = delays
            .iter()
            .filter(|d| **d < Duration::from_millis(375))
            .count();
        assert!(
            (400..600).contains(&early),
            "{early} of 1000 in the first half"
        );
        // Many connections: never past the bound; one connection: told within its 0.75 ms.
        assert!(reconnect_delay(ConnId(7), 1_000_000, max) < max);
        assert!(reconnect_delay(ConnId(7), 1, max) < Duration::from_micros(750));
        assert_eq!(
            reconnect_delay(ConnId(7), 1000, Duration::ZERO),
            Duration::ZERO
        );
    }
}
