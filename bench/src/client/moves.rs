//! A user's connections over the run, and its moves between them: make-before-break on a
//! `reconnect` (the told connection is still read, and sent on, until the next one has
//! re-joined), a bounded backoff after a dropped one, and the choice of the next node.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{
    CLOSE_TIMEOUT, FIRST_BACKOFF, GONE_FOR, HANDSHAKE_TIMEOUT, MAX_BACKOFF, Next,
    READ_BUFFER_BYTES, REJOIN_DELAY, Ready, SendOrder, Shared, User, Ws,
};
use crate::handover::Marks;

/// Which of a user's connections a frame came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
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
pub(super) const OLD_LINGER: Duration = Duration::from_secs(2);

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

impl User {
    /// The user's connections over the run. A `reconnect` from the node is make-before-break:
    /// the told connection stays open and is still read (the node keeps serving it) while the
    /// next node's connection opens and re-joins with `since`; sends keep going out on the old
    /// one until then. Once the new one has joined and every send made on the old one is
    /// answered, the old one is closed. Repeats from the overlap are dropped by message id.
    pub(super) async fn run(&mut self, orders: &mut mpsc::Receiver<SendOrder>) {
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
}
