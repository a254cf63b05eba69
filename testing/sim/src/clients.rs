//! The simulated clients: each is a real connection's logic ([`node::connection::Session`]) on
//! some node, speaking protocol v1 in JSON text frames, and records everything it sees for the
//! checker. A client that loses its node (it crashed, was paused, or is exiting) connects to
//! another ready node and re-joins its rooms with `since` = the last seq it saw, as the
//! JavaScript client does. Like that client, it sends to a room only once joined on the
//! connection, and asks again shortly when a join is refused for now (`room_unavailable`,
//! `overloaded`, `rate_limited`); it also joins again when a send is refused `not_joined`
//! (the owner forgot its member).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

use node::NodeState;
use node::connection::Session;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::rng::Rng;

/// What one client saw of one room in one connection, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A `joined` (asked for, or sent unasked when the room changed owner without a hand-off):
    /// the room's seq and the history it carried, `(seq, id)`.
    Joined { seq: u64, history: Vec<(u64, u64)> },
    /// A `msg`.
    Msg { seq: u64, id: u64 },
}

/// A send the owner acknowledged: the echo came back with the send's `cid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The room.
    pub room: String,
    /// The send's `cid`.
    pub cid: String,
    /// The seq and id it got.
    pub seq: u64,
    /// Its id.
    pub id: u64,
}

/// Everything the clients saw.
#[derive(Debug, Default)]
pub struct Observations {
    /// Acknowledged sends.
    pub acks: Vec<Ack>,
    /// Each client's sends per connection and room, in the order it sent them (cids).
    pub sends: BTreeMap<(u32, u32, String), Vec<String>>,
    /// What each (client, connection, room) saw, in order.
    pub seen: BTreeMap<(u32, u32, String), Vec<Seen>>,
    /// Error frames by code.
    pub errors: BTreeMap<String, u64>,
    /// Sends answered with an error: cid -> the error's code. An error says the message
    /// was not taken.
    pub refused: BTreeMap<String, String>,
    /// Sends that got neither an echo nor an error on a connection that stayed open.
    pub unanswered: u64,
    /// Their cids, with the node the connection was on.
    pub unanswered_cids: Vec<(String, u32)>,
    /// Reconnects to another node.
    pub reconnects: u64,
    /// A digest of everything seen, in order: two runs of one seed give the same.
    pub digest: u64,
}

impl Observations {
    fn note(&mut self, text: &str) {
        for b in text.bytes() {
            self.digest = (self.digest ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
        }
    }
}

/// Where clients find a node to connect to: the ready ones, with an ordinal and generation
/// that tell a new process of a pod from the old one.
pub trait Nodes: Send + Sync {
    /// A ready node, picked with `pick` among them.
    fn ready_node(&self, pick: u64) -> Option<(u32, u64, Arc<NodeState>)>;
    /// Whether process `generation` of pod `ordinal` is paused: its clients' frames wait in
    /// their sockets, as under SIGSTOP.
    fn paused(&self, ordinal: u32, generation: u64) -> bool;
}

/// One client's plan: its rooms and how often it sends.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The client's number.
    pub id: u32,
    /// The rooms it is in.
    pub rooms: Vec<String>,
    /// Mean time between its sends.
    pub every: Duration,
}

/// A client's connection now.
struct Connection {
    number: u32,
    /// The node said `reconnect` (it lost events for a room under overload, or it is going
    /// away): re-join elsewhere with `since`.
    told_to_reconnect: bool,
    ordinal: u32,
    generation: u64,
    node: Arc<NodeState>,
    session: Session,
    /// Sends not answered yet on this connection: cid -> room.
    waiting: BTreeMap<String, String>,
    /// Rooms joined on this connection (a `joined` came).
    joined: BTreeSet<String>,
    /// Rooms to join again, and when.
    rejoin: BTreeMap<String, tokio::time::Instant>,
}

/// Error codes that mean "try again", not "no" (the JavaScript client's list).
const TRANSIENT: [&str; 3] = ["room_unavailable", "overloaded", "rate_limited"];

/// How long a refused join waits before it is asked again (the JavaScript client waits a
/// quarter to half a second).
const REJOIN_AFTER: Duration = Duration::from_millis(375);

/// Ask to join `room` on `c`, with `since` when the client saw some of it.
async fn join(c: &mut Connection, room: &str, last: &BTreeMap<String, u64>) {
    let join = match last.get(room) {
        Some(since) => json!({"op": "join", "room": room, "since": since}),
        None => json!({"op": "join", "room": room}),
    };
    c.session
        .text(&join.to_string())
        .instrument(crate::span_of(c.node.me()))
        .await;
}

/// Runs client `plan` until `stop`, then answers what is left and returns.
pub async fn run(
    plan: Plan,
    nodes: Arc<dyn Nodes>,
    seen: Arc<Mutex<Observations>>,
    mut rng: Rng,
    stop: CancellationToken,
    quiet: CancellationToken,
) {
    let user = format!("user{}", plan.id);
    // `SIM_CLIENT=N roomshard-sim --seed S` prints what client N does and sees.
    let traced = std::env::var("SIM_CLIENT").ok() == Some(plan.id.to_string());
    let trace = move |what: &str| {
        if traced {
            eprintln!("{:>9.3} client {}: {what}", crate::seconds(), plan.id);
        }
    };
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut conn: Option<Connection> = None;
    let mut connections = 0u32;
    let mut sent = 0u64;
    loop {
        let tick = Duration::from_millis(rng.between(5, 25));
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = tokio::time::sleep(tick) => {}
        }
        // A paused node reads nothing and writes nothing: its clients wait (they cannot tell
        // it from a slow network).
        if conn
            .as_ref()
            .is_some_and(|c| nodes.paused(c.ordinal, c.generation))
        {
            continue;
        }
        // Lost its node (crashed, paused, exiting): move to a ready one.
        let lost = conn.as_ref().is_none_or(|c| {
            c.node.shutdown.is_cancelled()
                || c.node.exiting.is_cancelled()
                || c.session.is_closed()
                || c.told_to_reconnect
        });
        if lost {
            let Some((ordinal, generation, node)) = nodes.ready_node(rng.next_u64()) else {
                continue;
            };
            if let Some(mut old) = conn.take() {
                for frame in take(&mut old, plan.id, &seen, &mut last) {
                    trace(&format!("got {frame} (connection {}, left)", old.number));
                }
                lock(&seen).reconnects += 1;
                // A crashed node's sessions end with it; an exiting one's are closed here.
                if !old.node.shutdown.is_cancelled() {
                    old.session
                        .close()
                        .instrument(crate::span_of(old.node.me()))
                        .await;
                }
            }
            connections += 1;
            let mut fresh = Connection {
                number: connections,
                told_to_reconnect: false,
                ordinal,
                generation,
                node: node.clone(),
                session: Session::open(node, &user),
                waiting: BTreeMap::new(),
                joined: BTreeSet::new(),
                rejoin: BTreeMap::new(),
            };
            for room in &plan.rooms {
                join(&mut fresh, room, &last).await;
            }
            trace(&format!(
                "connected to node-{ordinal} (connection {connections})"
            ));
            conn = Some(fresh);
            continue;
        }
        let Some(c) = conn.as_mut() else { continue };
        for frame in take(c, plan.id, &seen, &mut last) {
            trace(&format!("got {frame}"));
        }
        let now = tokio::time::Instant::now();
        let due: Vec<String> = c
            .rejoin
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(room, _)| room.clone())
            .collect();
        for room in due {
            c.rejoin.remove(&room);
            trace(&format!("joins {room} again on node-{}", c.ordinal));
            join(c, &room, &last).await;
        }
        // Send now and then to a joined room, at most 8 unanswered at once.
        let every = plan.every.as_millis().max(1) as u64;
        if !quiet.is_cancelled()
            && c.waiting.len() < 8
            && rng.below(every) < tick.as_millis() as u64
        {
            let Some(room) = rng.pick(&plan.rooms).cloned() else {
                continue;
            };
            if !c.joined.contains(&room) {
                continue;
            }
            sent += 1;
            let cid = format!("c{}-{sent}", plan.id);
            lock(&seen)
                .sends
                .entry((plan.id, c.number, room.clone()))
                .or_default()
                .push(cid.clone());
            c.waiting.insert(cid.clone(), room.clone());
            let frame = json!({"op": "send", "room": room, "text": cid, "cid": cid});
            trace(&format!("sends {cid} to {room} on node-{}", c.ordinal));
            c.session
                .text(&frame.to_string())
                .instrument(crate::span_of(c.node.me()))
                .await;
        }
    }
    if let Some(mut c) = conn {
        take(&mut c, plan.id, &seen, &mut last);
        if !c.node.shutdown.is_cancelled() && !c.session.is_closed() {
            let mut obs = lock(&seen);
            obs.unanswered += c.waiting.len() as u64;
            obs.unanswered_cids
                .extend(c.waiting.keys().map(|cid| (cid.clone(), c.ordinal)));
        }
    }
}

fn lock(seen: &Mutex<Observations>) -> std::sync::MutexGuard<'_, Observations> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read what the node delivered to the connection.
fn take(
    c: &mut Connection,
    client: u32,
    seen: &Mutex<Observations>,
    last: &mut BTreeMap<String, u64>,
) -> Vec<String> {
    let frames = c.session.take_frames();
    let mut obs = lock(seen);
    for text in &frames {
        let text = text.as_str();
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        // The digest leaves out ids and timestamps: they come from the wall clock.
        obs.note(&format!(
            "{client}:{}:{}:{}:{}:{}",
            frame["op"], frame["room"], frame["seq"], frame["cid"], frame["code"]
        ));
        let room = frame["room"].as_str().unwrap_or_default().to_owned();
        match frame["op"].as_str() {
            Some("joined") => {
                let seq = frame["seq"].as_u64().unwrap_or(0);
                let history: Vec<(u64, u64)> = frame["history"]
                    .as_array()
                    .map(|h| h.iter().filter_map(seq_and_id).collect())
                    .unwrap_or_default();
                let top = history.last().map_or(seq, |(s, _)| (*s).max(seq));
                last.insert(room.clone(), top);
                c.joined.insert(room.clone());
                c.rejoin.remove(&room);
                obs.seen
                    .entry((client, c.number, room))
                    .or_default()
                    .push(Seen::Joined { seq, history });
            }
            Some("msg") => {
                let Some((seq, id)) = seq_and_id(&frame) else {
                    continue;
                };
                let newest = last.entry(room.clone()).or_insert(0);
                *newest = (*newest).max(seq);
                if let Some(cid) = frame["cid"].as_str()
                    && cid.starts_with(&format!("c{client}-"))
                {
                    obs.acks.push(Ack {
                        room: room.clone(),
                        cid: cid.to_owned(),
                        seq,
                        id,
                    });
                    c.waiting.remove(cid);
                }
                obs.seen
                    .entry((client, c.number, room))
                    .or_default()
                    .push(Seen::Msg { seq, id });
            }
            Some("reconnect") => c.told_to_reconnect = true,
            Some("error") => {
                let code = frame["code"].as_str().unwrap_or("?").to_owned();
                let cid = frame["cid"].as_str();
                if let Some(cid) = cid {
                    c.waiting.remove(cid);
                    obs.refused.insert(cid.to_owned(), code.clone());
                }
                // A refused join (no cid) for now, or a send to a room the owner does not
                // know this member of: join again shortly.
                let refused_join = cid.is_none() && TRANSIENT.contains(&code.as_str());
                if !room.is_empty() && (refused_join || code == "not_joined") {
                    c.joined.remove(&room);
                    c.rejoin
                        .entry(room.clone())
                        .or_insert_with(|| tokio::time::Instant::now() + REJOIN_AFTER);
                }
                *obs.errors.entry(code).or_insert(0) += 1;
            }
            _ => {}
        }
    }
    frames
}

/// The `(seq, id)` of a `msg` frame.
pub(crate) fn seq_and_id(frame: &Value) -> Option<(u64, u64)> {
    let seq = frame["seq"].as_u64()?;
    let id = match &frame["id"] {
        Value::String(s) => s.parse().ok()?,
        Value::Number(n) => n.as_u64()?,
        _ => return None,
    };
    Some((seq, id))
}
