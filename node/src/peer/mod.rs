//! Peer links: one long-lived, authenticated WebSocket between each pair of nodes.
//!
//! The node whose name sorts first dials (`ws://PEER/peer`), the other accepts, and the one
//! connection carries both directions. Both ends prove they hold the cluster secret (an HMAC
//! over the other's nonce) before anything else crosses; a connection without it is closed
//! with 1008. A dialer that loses its connection dials again with backoff; delivery state
//! lives in [`link::PeerLink`], so nothing in flight is lost across a reconnect.

pub mod link;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as AxumMessage, WebSocket};
use futures_util::{SinkExt, StreamExt};
use shard::{AssignmentTable, NodeName};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as TungMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use link::{PeerLink, Sent};
use wire::{PeerFrame, PeerMsg};

/// Read buffer of a peer link's WebSocket. tungstenite zero-fills its read buffer's free space
/// before every read: at its 128 KiB default that was a 128 KiB `memset` per peer frame read,
/// about 3% of a node's CPU under load. Larger frames are still read, in several steps.
pub const READ_BUFFER: usize = 8 * 1024;

/// How long each step of a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Dial backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the node does with what arrives over links.
pub trait PeerHandler: Send + Sync + 'static {
    /// A message from `from`, in the order `from` sent it.
    fn on_message(&self, from: &NodeName, msg: PeerMsg);
    /// A message that can never reach `to` (it left or restarted): answer its sender.
    fn on_bounce(&self, to: &NodeName, msg: &PeerMsg);
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
    /// This process; a peer that sees a new one knows we restarted.
    incarnation: u64,
    links: Mutex<HashMap<NodeName, Arc<PeerLink>>>,
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Peers {
    /// The peer layer of a node; nothing is dialed until [`Peers::update`].
    pub fn new(settings: PeerSettings) -> Arc<Peers> {
        Arc::new(Peers {
            settings,
            incarnation: rand::random::<u64>() | 1,
            links: Mutex::default(),
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

    fn link(&self, peer: &NodeName) -> Arc<PeerLink> {
        lock(&self.links)
            .entry(peer.clone())
            .or_insert_with(|| Arc::new(PeerLink::new(peer.clone(), self.settings.max_unacked)))
            .clone()
    }

    /// Queue a message for `to`.
    ///
    /// # Errors
    /// The message back when `to`'s outbox is full.
    pub fn send(&self, to: &NodeName, msg: PeerMsg) -> Result<(), PeerMsg> {
        self.link(to).push(msg)
    }

    /// What is queued so far for each of `peers` (those this node has a link to), to wait
    /// until they have all handled it: a hand-off's old owner waits so that nothing the new
    /// owner sends them can overtake what it sent them itself.
    pub fn sent_to<'a>(&self, peers: impl IntoIterator<Item = &'a NodeName>) -> Flush {
        let links = lock(&self.links);
        Flush(
            peers
                .into_iter()
                .filter_map(|peer| links.get(peer))
                .map(|link| (link.clone(), link.sent()))
                .collect(),
        )
    }

    /// Drop the connection to `peer` (it comes back by itself); see [`PeerLink::reset`].
    pub fn reset(&self, peer: &NodeName) {
        if let Some(link) = lock(&self.links).get(peer) {
            link.reset();
        }
    }

    /// Peer connections established since start (a reconnect counts again).
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Number of peers with a live connection.
    pub fn connected(&self) -> usize {
        lock(&self.links)
            .values()
            .filter(|l| l.is_connected())
            .count()
    }

    /// Messages waiting for acknowledgement, over all links.
    pub fn pending(&self) -> usize {
        lock(&self.links).values().map(|l| l.pending()).sum()
    }

    /// Follow the table's membership: dial the peers this node dials, and drop the links of
    /// nodes that left (what was queued for them is bounced).
    pub fn update(self: &Arc<Self>, table: &AssignmentTable) {
        let me = &self.settings.me;
        let gone: Vec<NodeName> = lock(&self.links)
            .keys()
            .filter(|name| !table.nodes.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            let link = lock(&self.links).remove(&name);
            if let Some((_, dialer)) = lock(&self.dialers).remove(&name) {
                dialer.abort();
            }
            if let (Some(link), Some(handler)) = (link, self.handler()) {
                for msg in link.take_all() {
                    handler.on_bounce(&name, &msg);
                }
            }
        }
        for (name, info) in &table.nodes {
            if name == me {
                continue;
            }
            self.link(name);
            if me < name {
                let mut dialers = lock(&self.dialers);
                let current = dialers.get(name).map(|(addr, _)| addr.clone());
                if current.as_deref() != Some(info.peer_addr.as_str()) {
                    if let Some((_, old)) = dialers.remove(name) {
                        old.abort();
                    }
                    let task =
                        tokio::spawn(self.clone().dial_loop(name.clone(), info.peer_addr.clone()));
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
                Err(e) => tracing::debug!(%peer, %addr, error = %e, "peer dial failed"),
            }
            let jitter = Duration::from_millis(rand::random::<u64>() % 25);
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                () = tokio::time::sleep(backoff + jitter) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Dial, authenticate both ways, then carry the link until the connection ends.
    async fn dial_once(self: &Arc<Self>, peer: &NodeName, addr: &str) -> Result<(), String> {
        let url = format!("ws://{addr}/peer");
        let (ws, _) = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_tungstenite::connect_async_with_config(
                &url,
                Some(WebSocketConfig::default().read_buffer_size(READ_BUFFER)),
                true,
            ),
        )
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        let (mut sink, stream) = ws.split();
        let mut stream = Box::pin(stream.filter_map(|m| async move {
            match m {
                Ok(TungMessage::Binary(bytes)) => Some(bytes.to_vec()),
                _ => None,
            }
        }));
        let secret = &self.settings.secret;
        let challenge = next_frame(&mut stream).await?;
        let PeerFrame::Challenge {
            node,
            incarnation,
            nonce,
        } = challenge
        else {
            return Err("expected a challenge".into());
        };
        if &node != peer {
            return Err(format!("dialed {peer} at {addr} but {node} answered"));
        }
        let link = self.link(peer);
        self.bounce(peer, link.meet(incarnation));
        let my_nonce = wire::nonce();
        let proof = PeerFrame::Proof {
            node: self.settings.me.clone(),
            incarnation: self.incarnation,
            mac: wire::sign(secret, "dialer", &nonce, &self.settings.me),
            nonce: my_nonce.clone(),
            last_received: link.received(),
        };
        sink.send(TungMessage::Binary(proof.encode().into()))
            .await
            .map_err(|e| e.to_string())?;
        let PeerFrame::Welcome { mac, last_received } = next_frame(&mut stream).await? else {
            return Err("expected a welcome".into());
        };
        if !wire::verify(secret, "acceptor", &my_nonce, peer, &mac) {
            return Err(format!(
                "{peer} could not prove it holds the cluster secret"
            ));
        }
        tracing::info!(%peer, %addr, "peer link up (dialed)");
        self.sessions.fetch_add(1, Ordering::Relaxed);
        let sink = sink.with(|bytes: Vec<u8>| async move {
            Ok::<_, tokio_tungstenite::tungstenite::Error>(TungMessage::Binary(bytes.into()))
        });
        let handler = self.handler();
        let from = peer.clone();
        let deliver = move |msg: PeerMsg| {
            if let Some(handler) = &handler {
                handler.on_message(&from, msg);
            }
        };
        link.run(Box::pin(sink), stream, last_received, &deliver)
            .await;
        tracing::info!(%peer, "peer link down");
        Ok(())
    }

    /// Serve a connection that arrived at `/peer`: authenticate it, then carry its link.
    pub async fn accept(self: Arc<Self>, socket: WebSocket) {
        let (mut sink, stream) = socket.split();
        let mut stream = Box::pin(stream.filter_map(|m| async move {
            match m {
                Ok(AxumMessage::Binary(bytes)) => Some(bytes.to_vec()),
                _ => None,
            }
        }));
        let nonce = wire::nonce();
        let challenge = PeerFrame::Challenge {
            node: self.settings.me.clone(),
            incarnation: self.incarnation,
            nonce: nonce.clone(),
        };
        if sink
            .send(AxumMessage::Binary(challenge.encode().into()))
            .await
            .is_err()
        {
            return;
        }
        let proof = next_frame(&mut stream).await;
        let Ok(PeerFrame::Proof {
            node,
            incarnation,
            mac,
            nonce: their_nonce,
            last_received,
        }) = proof
        else {
            refuse(&mut sink, "peer handshake expected a proof").await;
            return;
        };
        if !wire::verify(&self.settings.secret, "dialer", &nonce, &node, &mac) {
            tracing::warn!(%node, "refused a peer connection without the cluster secret");
            refuse(&mut sink, "peer authentication failed").await;
            return;
        }
        let link = self.link(&node);
        self.bounce(&node, link.meet(incarnation));
        let welcome = PeerFrame::Welcome {
            mac: wire::sign(
                &self.settings.secret,
                "acceptor",
                &their_nonce,
                &self.settings.me,
            ),
            last_received: link.received(),
        };
        if sink
            .send(AxumMessage::Binary(welcome.encode().into()))
            .await
            .is_err()
        {
            return;
        }
        tracing::info!(peer = %node, "peer link up (accepted)");
        self.sessions.fetch_add(1, Ordering::Relaxed);
        let sink = sink.with(|bytes: Vec<u8>| async move {
            Ok::<_, axum::Error>(AxumMessage::Binary(bytes.into()))
        });
        let handler = self.handler();
        let from = node.clone();
        let deliver = move |msg: PeerMsg| {
            if let Some(handler) = &handler {
                handler.on_message(&from, msg);
            }
        };
        tokio::select! {
            () = link.run(Box::pin(sink), stream, last_received, &deliver) => {}
            () = self.shutdown.cancelled() => {}
        }
        tracing::info!(peer = %node, "peer link down");
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
        self.link(peer).outbox()
    }

    /// `peer` acknowledges everything queued for it so far.
    pub(crate) fn ack_all(&self, peer: &NodeName) {
        self.link(peer).ack_all();
    }
}

/// Messages queued for several peers up to one moment; see [`Peers::sent_to`].
#[derive(Debug)]
pub struct Flush(Vec<(Arc<PeerLink>, Sent)>);

impl Flush {
    /// Resolves once every peer has handled (or bounced) its part. A peer that stays
    /// unreachable keeps it waiting: callers bound the wait.
    pub async fn delivered(&self) {
        for (link, mark) in &self.0 {
            link.delivered(*mark).await;
        }
    }

    /// The peers that have not handled their part yet.
    pub fn waiting(&self) -> Vec<NodeName> {
        self.0
            .iter()
            .filter(|(link, mark)| !link.is_delivered(*mark))
            .map(|(link, _)| link.peer.clone())
            .collect()
    }
}

async fn next_frame<S>(stream: &mut S) -> Result<PeerFrame, String>
where
    S: futures_util::Stream<Item = Vec<u8>> + Unpin,
{
    let bytes = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.next())
        .await
        .map_err(|_| "peer handshake timed out".to_owned())?
        .ok_or_else(|| "peer closed during the handshake".to_owned())?;
    PeerFrame::decode(&bytes).map_err(|e| format!("malformed handshake frame: {e}"))
}

async fn refuse<S>(sink: &mut S, reason: &str)
where
    S: futures_util::Sink<AxumMessage> + Unpin,
{
    let frame = CloseFrame {
        code: crate::edge::CLOSE_POLICY,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        sink.send(AxumMessage::Close(Some(frame))),
    )
    .await;
}
