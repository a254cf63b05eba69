//! Chat traffic that checks itself: in each room one sender posts a message at a steady pace and
//! records every acknowledgement (its echo, with seq), and one listener follows the room,
//! resuming with `since` after every `reconnect` or dropped connection, as a client should.
//! Afterwards [`Traffic::verify`] joins each room with `since: 0` and checks that every
//! acknowledged message is in the history, once, in seq order, and that the listener saw every
//! seq.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::TestResult;

/// A WebSocket to the cluster.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How traffic reaches the cluster: given a user name, a connected socket (through a Service
/// proxy, an ingress, ...).
pub type Connect =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = TestResult<Socket>> + Send>> + Send + Sync>;

/// A plain `ws://ADDR/ws?user=USER` connector.
#[must_use]
pub fn plain(addr: std::net::SocketAddr) -> Connect {
    Arc::new(move |user: String| {
        Box::pin(async move {
            let (ws, _) = tokio::time::timeout(
                Duration::from_secs(10),
                tokio_tungstenite::connect_async(format!("ws://{addr}/ws?user={user}")),
            )
            .await??;
            Ok(ws)
        })
    })
}

type Acked = Arc<Mutex<BTreeMap<u64, String>>>;
/// A listener's room and the seqs it saw.
type Heard = TestResult<(String, Vec<u64>)>;

/// Running traffic in a set of rooms.
pub struct Traffic {
    connect: Connect,
    rooms: Vec<(String, Acked)>,
    senders: Vec<JoinHandle<TestResult<u32>>>,
    listeners: Vec<JoinHandle<Heard>>,
}

impl std::fmt::Debug for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traffic")
            .field("rooms", &self.rooms.len())
            .finish_non_exhaustive()
    }
}

/// What the traffic saw.
#[derive(Debug)]
pub struct Outcome {
    /// Acknowledged messages in all rooms.
    pub acknowledged: usize,
    /// Sends cut off by a reconnect before their answer came (neither acknowledged nor refused).
    pub cut: u32,
}

impl Traffic {
    /// Starts a sender (one message every `every`) and a listener in each of `rooms` rooms named
    /// `PREFIX-N`, for `length`; listeners keep listening 8 s longer.
    #[must_use]
    pub fn start(
        connect: Connect,
        prefix: &str,
        rooms: usize,
        every: Duration,
        length: Duration,
    ) -> Self {
        let until = Instant::now() + length;
        let mut traffic = Traffic {
            connect: connect.clone(),
            rooms: Vec::new(),
            senders: Vec::new(),
            listeners: Vec::new(),
        };
        for r in 0..rooms {
            let room = format!("{prefix}-{r}");
            let acked: Acked = Arc::default();
            traffic.rooms.push((room.clone(), acked.clone()));
            traffic.senders.push(tokio::spawn(sender(
                connect.clone(),
                room.clone(),
                acked,
                every,
                until,
            )));
            traffic.listeners.push(tokio::spawn(listener(
                connect.clone(),
                room,
                until + Duration::from_secs(8),
            )));
        }
        traffic
    }

    /// [`Traffic::verify`], then prints what it counted under `label`.
    ///
    /// # Errors
    ///
    /// As [`Traffic::verify`], and when no more than `least` messages were acknowledged: the
    /// traffic did not flow, so the check proved nothing.
    pub async fn verify_flowed(self, label: &str, least: usize) -> TestResult<Outcome> {
        let outcome = self.verify().await?;
        eprintln!(
            "{label}: {} acknowledged messages kept, {} sends cut by a reconnect before their answer",
            outcome.acknowledged, outcome.cut
        );
        if outcome.acknowledged <= least {
            return Err(format!(
                "{label}: the traffic did not flow: {} acknowledged, {least} expected at least",
                outcome.acknowledged
            )
            .into());
        }
        Ok(outcome)
    }

    /// Waits for the traffic to end and checks every room's history against what was
    /// acknowledged and what the listener saw.
    ///
    /// # Errors
    ///
    /// When a task failed or a room's history is wrong (the message names the room).
    pub async fn verify(self) -> TestResult<Outcome> {
        let mut cut = 0;
        for s in self.senders {
            cut += s.await??;
        }
        let mut heard = BTreeMap::new();
        for l in self.listeners {
            let (room, seqs) = l.await??;
            heard.insert(room, seqs);
        }
        let mut acknowledged = 0;
        for (room, acked) in &self.rooms {
            let acked = acked.lock().await.clone();
            let mut ws = (self.connect)(format!("{room}-auditor")).await?;
            ws.send(Message::text(
                json!({"op": "join", "room": room, "since": 0}).to_string(),
            ))
            .await?;
            let joined = loop {
                let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
                    .await?
                    .ok_or("closed")??;
                if let Message::Text(t) = frame {
                    let v: Value = serde_json::from_str(&t)?;
                    if v["op"] == "joined" {
                        break v;
                    }
                }
            };
            let history: Vec<(u64, String)> = joined["history"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    (
                        m["seq"].as_u64().unwrap_or(0),
                        m["text"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            let seqs: Vec<u64> = history.iter().map(|(s, _)| *s).collect();
            let last = joined["seq"].as_u64().unwrap_or(0);
            if seqs != (1..=last).collect::<Vec<_>>() {
                return Err(
                    format!("{room}: history is not every seq 1..={last} once: {seqs:?}").into(),
                );
            }
            for (seq, text) in &acked {
                if !history.contains(&(*seq, text.clone())) {
                    return Err(format!(
                        "{room}: acknowledged #{seq} {text:?} is missing from the history"
                    )
                    .into());
                }
            }
            let listened = heard.get(room).cloned().unwrap_or_default();
            if listened != (1..=last).collect::<Vec<_>>() {
                return Err(format!(
                    "{room}: the listener missed messages: saw {listened:?} of 1..={last}"
                )
                .into());
            }
            acknowledged += acked.len();
        }
        Ok(Outcome { acknowledged, cut })
    }
}

/// Posts one message at a time every `every` until `until`, reconnecting when told to; returns
/// how many sends were cut off before their answer.
async fn sender(
    connect: Connect,
    room: String,
    acked: Acked,
    every: Duration,
    until: Instant,
) -> TestResult<u32> {
    let mut n = 0u32;
    let mut cut = 0;
    'connect: while Instant::now() < until {
        let Ok(mut ws) = connect(format!("{room}-sender")).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if !joined(&mut ws, &room).await {
            continue;
        }
        while Instant::now() < until {
            n += 1;
            let text = format!("m{n}");
            let cid = format!("c{n}");
            let frame = json!({"op": "send", "room": room, "text": text, "cid": cid});
            if ws.send(Message::text(frame.to_string())).await.is_err() {
                cut += 1;
                continue 'connect;
            }
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
                let Ok(Some(Ok(frame))) = frame else {
                    cut += 1;
                    continue 'connect;
                };
                let Message::Text(t) = frame else { continue };
                let v: Value = serde_json::from_str(&t)?;
                if v["op"] == "msg" && v["cid"] == cid.as_str() {
                    acked
                        .lock()
                        .await
                        .insert(v["seq"].as_u64().unwrap_or(0), text.clone());
                    break;
                }
                if v["op"] == "error" && v["cid"] == cid.as_str() {
                    break; // answered: refused, not lost
                }
                if v["op"] == "reconnect" {
                    cut += 1;
                    continue 'connect;
                }
            }
            tokio::time::sleep(every).await;
        }
    }
    Ok(cut)
}

/// How long a client waits before it asks again for a room that refused its join.
const JOIN_RETRY: Duration = Duration::from_millis(300);

/// Joins `room` on `ws` and waits for the answer: false when the join was refused (after
/// [`JOIN_RETRY`], so the caller reconnects and asks again, as a client does), not answered in
/// time, or the connection failed.
async fn joined(ws: &mut Socket, room: &str) -> bool {
    let join = json!({"op": "join", "room": room});
    if ws.send(Message::text(join.to_string())).await.is_err() {
        return false;
    }
    loop {
        let Ok(Some(Ok(frame))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await
        else {
            return false;
        };
        let Message::Text(t) = frame else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&t) else {
            return false;
        };
        match v["op"].as_str() {
            Some("joined") if v["room"] == room => return true,
            Some("error") if v["room"] == room => {
                tokio::time::sleep(JOIN_RETRY).await;
                return false;
            }
            _ => {}
        }
    }
}

/// Follows `room` until `until`, resuming with `since` after every reconnect; returns the seqs
/// it saw, each once.
async fn listener(
    connect: Connect,
    room: String,
    until: Instant,
) -> TestResult<(String, Vec<u64>)> {
    let mut seen: Vec<u64> = Vec::new();
    'connect: while Instant::now() < until {
        let Ok(mut ws) = connect(format!("{room}-listener")).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let since = seen.last().copied().unwrap_or(0);
        let join = json!({"op": "join", "room": room, "since": since});
        if ws.send(Message::text(join.to_string())).await.is_err() {
            continue;
        }
        while Instant::now() < until {
            let Ok(frame) = tokio::time::timeout(Duration::from_secs(1), ws.next()).await else {
                continue;
            };
            let Some(Ok(frame)) = frame else {
                continue 'connect;
            };
            let Message::Text(t) = frame else { continue };
            let v: Value = serde_json::from_str(&t)?;
            let mut take = |m: &Value| {
                if let Some(s) = m["seq"].as_u64()
                    && seen.last().is_none_or(|l| s > *l)
                {
                    seen.push(s);
                }
            };
            match v["op"].as_str() {
                Some("joined") => v["history"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .for_each(&mut take),
                Some("msg") => take(&v),
                Some("reconnect") => continue 'connect,
                // The join was refused (the room is between owners): ask again shortly, as a
                // client does.
                Some("error") if v["room"] == room.as_str() => {
                    tokio::time::sleep(JOIN_RETRY).await;
                    continue 'connect;
                }
                _ => {}
            }
        }
    }
    Ok((room, seen))
}
