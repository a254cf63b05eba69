//! Make-before-break: the connection a user opens when told to `reconnect` with no wait. It
//! joins the room on the next node while the old connection still serves, and replaces it once
//! in, so the user is never out of its room. Until then orders still go out on the old one, and
//! the messages both connections bring are copies, not duplicates.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt, TryFutureExt};
use tokio_tungstenite::tungstenite::Message;

use super::{CLOSE_TIMEOUT, Conn, Next, User, Ws, connect, reconnect_stride};
use crate::args::OnReconnect;

// Boxed: a WebSocket is a few hundred bytes, and a successor is rare.
type Connecting = Pin<Box<dyn Future<Output = Result<Box<Ws>, String>> + Send>>;

/// A connection opened to take over from the current one (see the module doc).
pub(super) struct Successor {
    node: usize,
    /// Nodes tried for this move so far, this one included.
    tries: usize,
    id: u32,
    /// When the old node said `reconnect` (µs).
    told_us: u64,
    stage: Stage,
}

impl Successor {
    /// Open and in the room (or answered, when idle): ready to take over.
    pub(super) fn is_in(&self) -> bool {
        matches!(self.stage, Stage::Open { joined: true, .. })
    }

    /// Connected, in the room or not yet.
    pub(super) fn is_open(&self) -> bool {
        matches!(self.stage, Stage::Open { .. })
    }

    /// Give it up, closing it if it is open.
    pub(super) fn close(self) {
        if let Stage::Open { ws, .. } = self.stage {
            close_behind(*ws);
        }
    }
}

enum Stage {
    Connecting(Connecting),
    Open { ws: Box<Ws>, joined: bool },
}

/// What happened to a successor.
pub(super) enum SuccessorEvent {
    Connected(Result<Box<Ws>, String>),
    Frame(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
}

/// The next event of `successor`, if any; pending forever without one.
pub(super) async fn successor_event(successor: &mut Option<Successor>) -> SuccessorEvent {
    match successor {
        Some(Successor {
            stage: Stage::Connecting(connecting),
            ..
        }) => SuccessorEvent::Connected(connecting.await),
        Some(Successor {
            stage: Stage::Open { ws, .. },
            ..
        }) => SuccessorEvent::Frame(ws.next().await),
        None => std::future::pending().await,
    }
}

/// Close `ws` politely in the background: the user has moved on.
pub(super) fn close_behind(mut ws: Ws) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(None)).await;
    });
}

impl User {
    /// Whether a `reconnect` asking for a wait of `after` is met with a successor: when this
    /// user moves that way and the node asks for no wait. With one address (a Service) the
    /// successor dials it again, and the Service routes it to a ready node.
    pub(super) fn overlaps(&self, after: Duration) -> bool {
        self.shared.on_reconnect == OnReconnect::Overlap && after.is_zero()
    }

    /// Start a successor connection to `node`, the `tries`-th node tried for this move.
    pub(super) fn successor(&mut self, node: usize, tries: usize, told_us: u64) -> Successor {
        self.conns += 1;
        let id = self.conns;
        self.overlapped.insert(id, self.conn);
        Successor {
            node,
            tries,
            id,
            told_us,
            stage: Stage::Connecting(Box::pin(
                connect(self.shared.clone(), self.url(node), false).map_ok(Box::new),
            )),
        }
    }

    /// `failed` could not take over (unreachable, refused the join, or leaving too): try the
    /// next node, as a Service would route the next attempt elsewhere, until every other node
    /// was tried; then the old connection ends and the user reconnects without overlap.
    pub(super) fn retry_successor(&mut self, failed: &Successor) -> Option<Successor> {
        let nodes = self.shared.nodes.len();
        let stride = reconnect_stride(self.spec.first_node, nodes);
        let node = next_try(failed.node, failed.tries, self.node, stride, nodes)?;
        Some(self.successor(node, failed.tries + 1, failed.told_us))
    }

    pub(super) async fn on_successor(
        &mut self,
        successor: &mut Option<Successor>,
        event: SuccessorEvent,
    ) {
        let Some(next) = successor.as_mut() else {
            return;
        };
        match event {
            SuccessorEvent::Connected(Ok(mut ws)) => {
                self.count_reconnect();
                if ws.send(Message::text(self.hello(next.id))).await.is_ok() {
                    next.stage = Stage::Open { ws, joined: false };
                    return;
                }
            }
            SuccessorEvent::Frame(Some(Ok(Message::Text(text)))) => {
                let Stage::Open { joined, .. } = &mut next.stage else {
                    return;
                };
                let here = Conn {
                    id: next.id,
                    joined: *joined,
                };
                match self.on_frame(text.as_str(), self.shared.now_us(), here) {
                    Next::Continue => return,
                    Next::Joined => {
                        *joined = true;
                        return;
                    }
                    // Refused, or that node is leaving too.
                    Next::Rejoin | Next::Reconnect(..) => {}
                }
            }
            SuccessorEvent::Frame(Some(Ok(_))) => return,
            SuccessorEvent::Connected(Err(_)) | SuccessorEvent::Frame(Some(Err(_)) | None) => {}
        }
        // This one failed: give it up (closing it if open) and try the next node.
        if let Some(failed) = successor.take() {
            *successor = self.retry_successor(&failed);
            failed.close();
        }
    }

    /// Replace the current connection `old` by `next` (which must be open), closing `old`.
    pub(super) fn take_over(&mut self, old: Ws, next: Successor) -> Ws {
        let Stage::Open { ws, .. } = next.stage else {
            return old;
        };
        close_behind(old);
        let ws = *ws;
        self.conn = next.id;
        // Joins asked on connections before this one are never answered now.
        self.asked_since.retain(|&conn, _| conn >= next.id);
        self.node = next.node;
        let now_us = self.shared.now_us();
        self.report
            .handovers_us
            .push(now_us.saturating_sub(next.told_us));
        ws
    }
}

/// The node to try after `failed` (the `tries`-th tried), stepping by `stride` and skipping
/// `current` (the node leaving), or none once every other node was tried.
fn next_try(
    failed: usize,
    tries: usize,
    current: usize,
    stride: usize,
    nodes: usize,
) -> Option<usize> {
    let mut node = (failed + stride) % nodes;
    if node == current {
        node = (node + stride) % nodes;
    }
    (tries + 1 < nodes && node != current).then_some(node)
}

#[cfg(test)]
mod tests {
    use super::next_try;

    #[test]
    fn a_failed_successor_is_followed_by_every_other_node_in_turn_then_none() {
        // Five nodes, leaving node 3, stride 1: 4 failed, then 0, 1, 2; then all were tried.
        let mut tried = vec![4];
        while let Some(node) = next_try(*tried.last().unwrap_or(&4), tried.len(), 3, 1, 5) {
            tried.push(node);
        }
        assert_eq!(tried, [4, 0, 1, 2]);
        // Stride 2 from node 1 on five nodes: 3, 0 (skipping 1), 2, 4.
        let mut tried = vec![3];
        while let Some(node) = next_try(*tried.last().unwrap_or(&3), tried.len(), 1, 2, 5) {
            tried.push(node);
        }
        assert_eq!(tried, [3, 0, 2, 4]);
        assert_eq!(
            next_try(0, 1, 1, 1, 2),
            None,
            "two nodes: the other one was the only try"
        );
    }
}
