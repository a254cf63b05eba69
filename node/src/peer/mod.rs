//! Peer links: one long-lived, authenticated WebSocket between each pair of nodes.
//!
//! The node whose name sorts first dials (`ws://PEER/peer`), the other accepts, and the one
//! connection carries both directions. Both ends prove they hold the cluster secret (an HMAC
//! over the other's nonce) before anything else crosses; a connection without it is closed
//! with 1008. A dialer that loses its connection dials again with backoff; delivery state
//! lives in [`link::PeerLink`], so nothing in flight is lost across a reconnect.

mod flush;
pub mod handshake;
pub mod link;
#[cfg(test)]
mod registry_tests;
pub mod transport;
pub mod wire;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;
use tracing::Instrument;

use axum::extract::ws::{CloseFrame, Message as AxumMessage, WebSocket};
use futures_util::future::ready;
use futures_util::{SinkExt, StreamExt};
use shard::{AssignmentTable, NodeName};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::hashing::HashMap;
use crate::lock::lock;
pub use flush::Flush;
use handshake::{Identity, Met};
use link::{PeerLink, RoomMark};
pub use transport::{Dialer, FrameSink, FrameStream, WebSocketDialer};
use wire::PeerMsg;

/// Read buffer of a peer link's WebSocket. tungstenite zero-fills its read buffer's free space
/// before every read: at its 128 KiB default that was a 128 KiB `memset` per peer frame read,
/// about 3% of a node's CPU under load. Larger frames are still read, in several steps.
pub const READ_BUFFER: usize = 8 * 1024;

/// How long each step of a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Links of departed peers whose numbering is remembered (see [`Peers::retire`]).
const RETIRED_LINKS: usize = 1024;
/// Dial backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the node does with what arrives over links.
pub trait PeerHandler: Send + Sync + 'static {
    /// A message from `from`, in the order `from` sent it.
    fn on_message(&self, from: &NodeName, msg: PeerMsg);
    /// A message that can never reach `to` (it left or restarted): answer its sender.
    fn on_bounce(&self, to: &NodeName, msg: &PeerMsg);
    /// `peer` is a new process under the same name (after what it never acknowledged was
    /// bounced): it remembers nothing the old one held.
    fn on_restart(&self, peer: &NodeName);
}

/// Settings of the peer layer.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    /// This node.
    pub me: NodeName,
    /// The shared cluster secret.
    pub secret: Arc<[u8]>,
    /// Messages that may wait for acknowledgement per peer.
    pub max_unacked: usize,
}

/// All links of this node.
pub struct Peers {
    settings: PeerSettings,
    /// How connections to peers are opened (TCP, or the simulation's network).
    dialer: Arc<dyn Dialer>,
    /// The dialers' jitter, from a seed in a simulation (so a run replays).
    jitter: Mutex<u64>,
    /// This process; a peer that sees a new one knows we restarted.
    incarnation: u64,
    /// Read on every message (to find a link), written only when a table is applied.
    links: RwLock<HashMap<NodeName, Arc<PeerLink>>>,
    /// Where the links of peers that left the table stood, so that a link made again when
    /// one comes back goes on from there (the peer, the same process, remembers; see
    /// [`PeerLink::resumed`]). Bounded: the oldest are forgotten first.
    retired: Mutex<VecDeque<(NodeName, link::Numbering)>>,
    dialers: Mutex<HashMap<NodeName, (String, JoinHandle<()>)>>,
    handler: OnceLock<Weak<dyn PeerHandler>>,
    shutdown: CancellationToken,
    /// Connections established (both directions), for `/metrics` and tests.
    sessions: AtomicU64,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("me", &self.settings.me)
            .field("connected", &self.connected())
            .finish()
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Peers {
    /// The peer layer of a node, dialing over TCP; nothing is dialed until [`Peers::admit`].
    pub fn new(settings: PeerSettings) -> Arc<Peers> {
        Peers::with_transport(settings, Arc::new(WebSocketDialer), None)
    }

    /// The peer layer of a node that opens connections with `dialer`, and draws its process
    /// incarnation and dial jitter from `seed` (at random without one): what the cluster
    /// simulation runs nodes with, so that a seed replays the same run.
    pub fn with_transport(
        settings: PeerSettings,
        dialer: Arc<dyn Dialer>,
        seed: Option<u64>,
    ) -> Arc<Peers> {
        let seed = seed.unwrap_or_else(rand::random::<u64>) | 1;
        Arc::new(Peers {
            settings,
            dialer,
            jitter: Mutex::new(seed),
            incarnation: seed,
            links: RwLock::default(),
            retired: Mutex::default(),
            dialers: Mutex::default(),
            handler: OnceLock::new(),
            shutdown: CancellationToken::new(),
            sessions: AtomicU64::new(0),
        })
    }

    /// Who handles what arrives (set once, right after the node is built).
    pub fn set_handler(&self, handler: Weak<dyn PeerHandler>) {
        let _ = self.handler.set(handler);
    }

    fn handler(&self) -> Option<Arc<dyn PeerHandler>> {
        self.handler.get().and_then(Weak::upgrade)
    }

    /// The link to `peer`, when the table in force names it. Links are made and dropped only
    /// by [`Peers::admit`] and [`Peers::retire`], so the registry holds the table's other nodes
    /// (and, while a table is applied, those of the one before): a name that arrives in a
    /// message (a member's node, a forged or departed one) cannot add one.
    fn link(&self, peer: &NodeName) -> Option<Arc<PeerLink>> {
        read(&self.links).get(peer).cloned()
    }

    /// Queue a message for `to`.
    ///
    /// # Errors
    /// The message back when `to`'s outbox is full, or when the table in force does not name
    /// `to` (it left, or never was a member).
    pub fn send(&self, to: &NodeName, msg: PeerMsg) -> Result<(), PeerMsg> {
        match self.link(to) {
            Some(link) => link.push(msg),
            None => Err(msg),
        }
    }

    /// Whether each of `peers`' outboxes has room for another message (true for a node
    /// without a link). One registry read for all of them: room owners ask for every message.
    pub fn can_take(&self, peers: &mut dyn Iterator<Item = &NodeName>) -> bool {
        let links = read(&self.links);
        for to in peers {
            if links.get(to).is_some_and(|link| link.is_full()) {
                return false;
            }
        }
        true
    }

    /// Note that an event for `room` could not be queued for `to`; see [`PeerLink::mark_gap`].
    /// Returns true when this starts a gap. For a node that left the table, the event is noted
    /// with its link's numbering: if the same process comes back, it hears of the gap first
    /// (its members of those rooms may still be there, waiting for the node to rejoin).
    pub fn mark_gap(&self, to: &NodeName, room: Option<shard::RoomId>) -> bool {
        if let Some(link) = self.link(to) {
            return link.mark_gap(room);
        }
        if let Some((_, numbering)) = lock(&self.retired).iter_mut().find(|(p, _)| p == to) {
            numbering.lose(room);
        }
        false
    }

    /// Queue a message the caller keeps a handle to, to send it again later without copying.
    ///
    /// # Errors
    /// The message back when `to`'s outbox is full or the table does not name `to`.
    pub fn send_shared(&self, to: &NodeName, msg: Arc<PeerMsg>) -> Result<(), Arc<PeerMsg>> {
        match self.link(to) {
            Some(link) => link.push_shared(msg),
            None => Err(msg),
        }
    }

    /// What is queued so far for each of `peers` (those this node has a link to), to wait
    /// until they have all handled it: a hand-off's old owner waits so that nothing the new
    /// owner sends them can overtake what it sent them itself.
    pub fn sent_to<'a>(&self, peers: impl IntoIterator<Item = &'a NodeName>) -> Flush {
        let links = read(&self.links);
        Flush(
            peers
                .into_iter()
                .filter_map(|peer| links.get(peer))
                .map(|link| (link.clone(), link.sent()))
                .collect(),
        )
    }

    /// The last events queued for `rooms` to each of `peers` that has not handled them yet
    /// (see [`PeerLink::sent_for_rooms`]): a hand-off's old owner waits for these, so that
    /// nothing the new owner sends those peers for the rooms overtakes what it sent itself,
    /// without waiting behind the rest of each link's traffic.
    pub fn sent_for_rooms<'a>(
        &self,
        peers: impl IntoIterator<Item = &'a NodeName>,
        rooms: &[RoomMark],
    ) -> Flush {
        let links = read(&self.links);
        Flush(
            peers
                .into_iter()
                .filter_map(|peer| links.get(peer))
                .filter_map(|link| {
                    Some((link.clone(), link.sent_for_rooms(rooms.iter().copied())?))
                })
                .collect(),
        )
    }

    /// Drop the connection to `peer` (it comes back by itself); see [`PeerLink::reset`].
    pub fn reset(&self, peer: &NodeName) {
        if let Some(link) = read(&self.links).get(peer) {
            link.reset();
        }
    }

    /// Peer connections established since start (a reconnect counts again).
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Number of peers with a live connection.
    pub fn connected(&self) -> usize {
        read(&self.links)
            .values()
            .filter(|l| l.is_connected())
            .count()
    }

    /// Messages waiting for acknowledgement, over all links.
    pub fn pending(&self) -> usize {
        read(&self.links).values().map(|l| l.pending()).sum()
    }

    /// Withdraw the queued messages `unwanted` picks from every link (see
    /// [`PeerLink::withdraw`]); returns how many.
    pub fn withdraw(&self, unwanted: &dyn Fn(&PeerMsg) -> bool) -> usize {
        read(&self.links)
            .values()
            .map(|link| link.withdraw(unwanted))
            .sum()
    }

    /// Drop the links of nodes `table` does not name (what was queued for them is bounced).
    /// With [`Peers::admit`], this is how links follow the table's membership.
    pub fn retire(&self, table: &AssignmentTable) {
        let gone: Vec<NodeName> = read(&self.links)
            .keys()
            .filter(|name| !table.nodes.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            let link = write(&self.links).remove(&name);
            if let Some((_, dialer)) = lock(&self.dialers).remove(&name) {
                dialer.abort();
            }
            if let Some(link) = link {
                // An accepted connection from the departed node ends too.
                let (numbering, bounced) = link.retire();
                let mut retired = lock(&self.retired);
                retired.retain(|(peer, _)| *peer != name);
                if retired.len() >= RETIRED_LINKS {
                    retired.pop_front();
                }
                retired.push_back((name.clone(), numbering));
                drop(retired);
                if let Some(handler) = self.handler() {
                    for msg in bounced {
                        handler.on_bounce(&name, &msg);
                    }
                }
            }
        }
    }

    /// Make a link (and, where this node dials, start dialing) for every other node `table`
    /// names; drop none. A node calls this before the table comes into force and
    /// [`Peers::retire`] after: a command routed by the new table to a node it adds then always
    /// finds that node's link (an outbox, while it connects) rather than none, which would
    /// answer the sender `room_unavailable`.
    pub fn admit(self: &Arc<Self>, table: &AssignmentTable) {
        let me = &self.settings.me;
        for (name, info) in &table.nodes {
            if name == me {
                continue;
            }
            write(&self.links).entry(name.clone()).or_insert_with(|| {
                let mut retired = lock(&self.retired);
                let earlier = retired.iter().position(|(peer, _)| peer == name);
                let link = match earlier.and_then(|i| retired.remove(i)) {
                    Some((_, numbering)) => {
                        PeerLink::resumed(name.clone(), self.settings.max_unacked, numbering)
                    }
                    None => PeerLink::new(name.clone(), self.settings.max_unacked),
                };
                Arc::new(link)
            });
            if me < name {
                let mut dialers = lock(&self.dialers);
                let current = dialers.get(name).map(|(addr, _)| addr.clone());
                if current.as_deref() != Some(info.peer_addr.as_str()) {
                    if let Some((_, old)) = dialers.remove(name) {
                        old.abort();
                    }
                    let task = tokio::spawn(
                        self.clone()
                            .dial_loop(name.clone(), info.peer_addr.clone())
                            .in_current_span(),
                    );
                    dialers.insert(name.clone(), (info.peer_addr.clone(), task));
                }
            }
        }
    }

    /// Stop dialing and close every link (node shutdown).
    pub fn close(&self) {
        self.shutdown.cancel();
        for (_, (_, task)) in lock(&self.dialers).drain() {
            task.abort();
        }
    }

    async fn dial_loop(self: Arc<Self>, peer: NodeName, addr: String) {
        let mut backoff = BACKOFF_MIN;
        while !self.shutdown.is_cancelled() {
            match self.dial_once(&peer, &addr).await {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(e) if e.is_misconfiguration() => {
                    tracing::warn!(%peer, %addr, error = %e, "peer refused");
                }
                Err(e) => tracing::debug!(%peer, %addr, error = %e, "peer dial failed"),
            }
            let jitter = Duration::from_millis(self.next_jitter() % 25);
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff + jitter) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// A number for the dialers' jitter (xorshift over the seed).
    fn next_jitter(&self) -> u64 {
        let mut state = lock(&self.jitter);
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    /// Dial, authenticate both ways, then carry the link until the connection ends.
    async fn dial_once(self: &Arc<Self>, peer: &NodeName, addr: &str) -> Result<()> {
        let (mut sink, mut stream) = self.dialer.dial(addr).await?;
        let met = handshake::dial(
            self.identity(),
            peer,
            &mut sink,
            &mut stream,
            |peer, incarnation| self.meet(peer, incarnation),
        )
        .await?;
        tracing::info!(me = %self.settings.me, %peer, %addr, "peer link up (dialed)");
        self.carry(met, sink, stream).await;
        Ok(())
    }

    /// Serve a connection that arrived over the simulation's network (or any transport that
    /// is not `/peer`): authenticate it, then carry its link until the connection ends. A
    /// connection that fails the handshake is dropped.
    pub async fn accept_frames(self: Arc<Self>, mut sink: FrameSink, mut stream: FrameStream) {
        if let Err(e) = self.accept_on(&mut sink, &mut stream).await {
            tracing::debug!(error = %e, "peer handshake failed");
        }
    }

    /// The accepting side of a connection: the handshake, then the link until it ends (or
    /// the node shuts down). The handshake's error is returned for the caller to answer.
    async fn accept_on<S, R>(self: &Arc<Self>, sink: &mut S, stream: &mut R) -> Result<()>
    where
        S: futures_util::Sink<Vec<u8>> + Unpin + Send,
        R: futures_util::Stream<Item = bytes::Bytes> + Unpin + Send,
    {
        let met = handshake::accept(self.identity(), sink, stream, |peer, incarnation| {
            self.meet(peer, incarnation)
        })
        .await?;
        tracing::info!(me = %self.settings.me, peer = %met.peer, "peer link up (accepted)");
        tokio::select! {
            () = self.carry(met, sink, stream) => {}
            () = self.shutdown.cancelled() => {}
        }
        Ok(())
    }

    /// Serve a connection that arrived at `/peer`: authenticate it, then carry its link. A
    /// connection that fails the handshake is closed with 1008 and the reason.
    pub async fn accept(self: Arc<Self>, socket: WebSocket) {
        let (mut raw_sink, stream) = socket.split();
        let mut stream = stream.filter_map(|m| {
            ready(match m {
                Ok(AxumMessage::Binary(bytes)) => Some(bytes),
                _ => None,
            })
        });
        let mut sink = (&mut raw_sink)
            .with(|bytes: Vec<u8>| ready(Ok::<_, axum::Error>(AxumMessage::Binary(bytes.into()))));
        if let Err(e) = self.accept_on(&mut sink, &mut stream).await {
            if e.is_misconfiguration() {
                tracing::warn!(error = %e, "refused a peer connection");
            } else {
                tracing::debug!(error = %e, "peer handshake failed");
            }
            drop(sink);
            refuse(&mut raw_sink, &e.to_string()).await;
        }
    }

    fn identity(&self) -> Identity<'_> {
        Identity {
            me: &self.settings.me,
            incarnation: self.incarnation,
            secret: &self.settings.secret,
            timeout: HANDSHAKE_TIMEOUT,
        }
    }

    /// A handshake named the peer's process: bounce what a restarted one will never
    /// acknowledge and tell the node it restarted, and say how far this node got in its
    /// stream.
    ///
    /// # Errors
    /// [`Error::UnknownPeer`] when the table in force does not name `peer` (it left, or this
    /// node has not applied the table that adds it yet: the dialer tries again).
    /// This process's incarnation: drawn once at start, different in every process.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn meet(&self, peer: &NodeName, incarnation: u64) -> Result<u64> {
        let link = self
            .link(peer)
            .ok_or_else(|| Error::UnknownPeer { peer: peer.clone() })?;
        if let Some(bounced) = link.meet(incarnation) {
            self.bounce(peer, bounced);
            if let Some(handler) = self.handler() {
                handler.on_restart(peer);
            }
        }
        Ok(link.received())
    }

    /// Carry the link to the peer a handshake met until the connection ends.
    async fn carry<W, R>(&self, met: Met, sink: W, stream: R)
    where
        W: futures_util::Sink<Vec<u8>> + Unpin + Send,
        R: futures_util::Stream<Item = bytes::Bytes> + Unpin + Send,
    {
        let Some(link) = self.link(&met.peer) else {
            return; // the peer left the table during the handshake
        };
        self.sessions.fetch_add(1, Ordering::Relaxed);
        let handler = self.handler();
        let from = met.peer.clone();
        let deliver = move |msg: PeerMsg| {
            if let Some(handler) = &handler {
                handler.on_message(&from, msg);
            }
        };
        link.run(sink, stream, met.resume_from, &deliver).await;
        tracing::info!(me = %self.settings.me, peer = %met.peer, "peer link down");
    }

    fn bounce(&self, to: &NodeName, msgs: Vec<Arc<PeerMsg>>) {
        if msgs.is_empty() {
            return;
        }
        tracing::warn!(peer = %to, count = msgs.len(), "peer restarted; answering what it never acknowledged");
        if let Some(handler) = self.handler() {
            for msg in msgs {
                handler.on_bounce(to, &msg);
            }
        }
    }
}

/// What unit tests elsewhere in the crate play a peer with.
#[cfg(test)]
impl Peers {
    /// What waits for `peer`'s acknowledgement, oldest first.
    pub(crate) fn outbox(&self, peer: &NodeName) -> Vec<Arc<PeerMsg>> {
        self.link(peer)
            .map(|link| link.outbox())
            .unwrap_or_default()
    }

    /// A handshake with `peer`'s process `incarnation` (a new one after another is a
    /// restart): noted as a real handshake notes it.
    pub(crate) fn met(&self, peer: &NodeName, incarnation: u64) {
        self.meet(peer, incarnation)
            .expect("the table names the peer");
    }

    /// `peer` acknowledges everything queued for it so far.
    pub(crate) fn ack_all(&self, peer: &NodeName) {
        if let Some(link) = self.link(peer) {
            link.ack_all();
        }
    }

    /// Links in the registry.
    pub(crate) fn link_count(&self) -> usize {
        read(&self.links).len()
    }

    /// Whether the registry has a link to `peer`.
    pub(crate) fn has_link(&self, peer: &NodeName) -> bool {
        self.link(peer).is_some()
    }
}

/// Close a connection that failed the handshake with 1008 and the reason (cut to the 123
/// bytes a close frame holds: a claimed node name alone may be longer).
async fn refuse<S>(sink: &mut S, reason: &str)
where
    S: futures_util::Sink<AxumMessage> + Unpin,
{
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code: crate::edge::CLOSE_POLICY,
        reason: reason[..end].into(),
    };
    let _ = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        sink.send(AxumMessage::Close(Some(frame))),
    )
    .await;
}
