//! The simulated network between the nodes' peer layers.
//!
//! A node dials another's peer address through [`SimDialer`]; the network looks the address
//! up, and when both ends are up and not cut off from each other, makes a connection of two
//! pipes. Each pipe carries frames in order (as TCP does) with a delay drawn per frame from
//! the run's seed, longer for a node made slow. A fault cuts connections: what was on the wire
//! is lost, and the peer links reconnect and resend what was not acknowledged, as they do over
//! TCP. Faults:
//!
//! - **partition** of two nodes (both directions, or one): their connections are cut and dials
//!   between them refused until it heals;
//! - **isolation** of a node (a crash, or a pause): every connection of it is cut and every dial
//!   to or from it refused;
//! - **slowness** of a node: its frames wait longer (a slow follower);
//! - **cut** of one connection: a reset.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

use bytes::Bytes;
use futures_channel::mpsc;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use node::peer::{Dialer, FrameSink, FrameStream, Peers};
use shard::NodeName;
use tokio_util::sync::CancellationToken;

use crate::rng::Rng;

/// What travels: the frames of the peer links, in order per direction.
#[derive(Clone, Debug)]
pub struct Network {
    inner: Arc<Mutex<Net>>,
}

#[derive(Debug)]
struct Net {
    /// Peer address -> the node listening there now.
    listeners: BTreeMap<String, Listener>,
    /// Directed pairs that cannot reach each other: (from, to).
    cut_off: BTreeSet<(NodeName, NodeName)>,
    /// Nodes that reach nobody and that nobody reaches.
    isolated: BTreeSet<NodeName>,
    /// Extra delay per frame to or from a node.
    slow: BTreeMap<NodeName, Duration>,
    /// Open connections, to cut them.
    connections: Vec<Connection>,
    rng: Rng,
    /// Frames carried, for the run's report.
    frames: u64,
}

#[derive(Debug, Clone)]
struct Listener {
    name: NodeName,
    peers: Arc<Peers>,
}

#[derive(Debug, Clone)]
struct Connection {
    a: NodeName,
    b: NodeName,
    cut: CancellationToken,
}

impl Network {
    /// A network with no nodes yet; frame delays come from `rng`.
    pub fn new(rng: Rng) -> Network {
        Network {
            inner: Arc::new(Mutex::new(Net {
                listeners: BTreeMap::new(),
                cut_off: BTreeSet::new(),
                isolated: BTreeSet::new(),
                slow: BTreeMap::new(),
                connections: Vec::new(),
                rng,
                frames: 0,
            })),
        }
    }

    fn net(&self) -> std::sync::MutexGuard<'_, Net> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `name`'s peer layer listens at `addr` from now on (a new process of a pod replaces the
    /// old one's).
    pub fn listen(&self, addr: &str, name: &NodeName, peers: Arc<Peers>) {
        let mut net = self.net();
        net.listeners.insert(
            addr.to_owned(),
            Listener {
                name: name.clone(),
                peers,
            },
        );
        net.isolated.remove(name);
    }

    /// The node at `addr` is gone (crashed or exited): nothing listens there, and its
    /// connections are cut.
    pub fn unlisten(&self, addr: &str, name: &NodeName) {
        let mut net = self.net();
        net.listeners.remove(addr);
        net.isolated.insert(name.clone());
        net.cut_where(|c| c.a == *name || c.b == *name);
    }

    /// Cut `name` off from everyone (`true`) or let it reach them again.
    pub fn isolate(&self, name: &NodeName, isolated: bool) {
        let mut net = self.net();
        if isolated {
            net.isolated.insert(name.clone());
            net.cut_where(|c| c.a == *name || c.b == *name);
        } else {
            net.isolated.remove(name);
        }
    }

    /// Cut `a` and `b` off from each other (both directions), or heal that.
    pub fn partition(&self, a: &NodeName, b: &NodeName, cut: bool) {
        let mut net = self.net();
        for pair in [(a.clone(), b.clone()), (b.clone(), a.clone())] {
            if cut {
                net.cut_off.insert(pair);
            } else {
                net.cut_off.remove(&pair);
            }
        }
        if cut {
            net.cut_where(|c| (c.a == *a && c.b == *b) || (c.a == *b && c.b == *a));
        }
    }

    /// Let nothing from `from` reach `to` (one direction), or heal that. A connection needs
    /// both directions, so theirs are cut.
    pub fn one_way(&self, from: &NodeName, to: &NodeName, cut: bool) {
        let mut net = self.net();
        if cut {
            net.cut_off.insert((from.clone(), to.clone()));
            net.cut_where(|c| (c.a == *from && c.b == *to) || (c.a == *to && c.b == *from));
        } else {
            net.cut_off.remove(&(from.clone(), to.clone()));
        }
    }

    /// Frames to and from `name` wait `extra` longer (zero: back to normal).
    pub fn slow(&self, name: &NodeName, extra: Duration) {
        let mut net = self.net();
        if extra.is_zero() {
            net.slow.remove(name);
        } else {
            net.slow.insert(name.clone(), extra);
        }
    }

    /// Cut one open connection at random (the links reconnect and resend).
    pub fn reset_one(&self) {
        let mut net = self.net();
        net.connections.retain(|c| !c.cut.is_cancelled());
        if net.connections.is_empty() {
            return;
        }
        let count = net.connections.len() as u64;
        let i = net.rng.below(count) as usize;
        let connection = net.connections.remove(i);
        connection.cut.cancel();
    }

    /// Frames carried so far.
    pub fn frames(&self) -> u64 {
        self.net().frames
    }

    /// The dialer of node `from`.
    pub fn dialer(&self, from: &NodeName) -> Arc<SimDialer> {
        Arc::new(SimDialer {
            network: self.clone(),
            from: from.clone(),
        })
    }

    /// Open a connection from `from` to `addr`: the dialer's half, or why not.
    fn connect(&self, from: &NodeName, addr: &str) -> Result<(FrameSink, FrameStream), String> {
        let mut net = self.net();
        let listener = net
            .listeners
            .get(addr)
            .cloned()
            .ok_or_else(|| format!("nothing listens at {addr}"))?;
        let to = listener.name.clone();
        if net.isolated.contains(from) || net.isolated.contains(&to) {
            return Err(format!("{from} and {to} cannot reach each other"));
        }
        if net.cut_off.contains(&(from.clone(), to.clone()))
            || net.cut_off.contains(&(to.clone(), from.clone()))
        {
            return Err(format!("{from} and {to} are partitioned"));
        }
        let cut = CancellationToken::new();
        net.connections.push(Connection {
            a: from.clone(),
            b: to.clone(),
            cut: cut.clone(),
        });
        let ends = (from.clone(), to.clone());
        let (out_a, in_b) = pipe(self.clone(), net.rng.fork(), ends.clone(), cut.clone());
        let (out_b, in_a) = pipe(self.clone(), net.rng.fork(), ends, cut.clone());
        drop(net);
        tokio::spawn(
            listener
                .peers
                .accept_frames(out_b, in_b)
                .instrument(crate::span_of(&listener.name)),
        );
        Ok((out_a, in_a))
    }
}

impl Net {
    /// The extra delay a frame between `a` and `b` takes now: the slower end's.
    fn extra(&self, a: &NodeName, b: &NodeName) -> Duration {
        let slow = |n: &NodeName| self.slow.get(n).copied().unwrap_or_default();
        slow(a).max(slow(b))
    }

    fn cut_where(&mut self, hit: impl Fn(&Connection) -> bool) {
        for c in self.connections.iter().filter(|c| hit(c)) {
            c.cut.cancel();
        }
        self.connections.retain(|c| !c.cut.is_cancelled());
    }
}

/// One direction of a connection between `ends`: frames go in at the sink and come out of the
/// stream in the same order, each after its delay counted from when it was sent (with the
/// slowness of either end at that moment), until the connection is cut.
fn pipe(
    network: Network,
    mut rng: Rng,
    ends: (NodeName, NodeName),
    cut: CancellationToken,
) -> (FrameSink, FrameStream) {
    let (sink_tx, mut sink_rx) = mpsc::unbounded::<(tokio::time::Instant, Vec<u8>)>();
    let (out_tx, out_rx) = mpsc::unbounded::<Bytes>();
    let forward_cut = cut.clone();
    tokio::spawn(async move {
        let mut last = tokio::time::Instant::now();
        loop {
            let (sent, frame) = tokio::select! {
                biased;
                () = forward_cut.cancelled() => break,
                frame = sink_rx.next() => match frame {
                    Some(frame) => frame,
                    None => break,
                },
            };
            let extra = network.net().extra(&ends.0, &ends.1);
            // At least 50 µs, mostly under a millisecond, now and then a few: frames queue
            // behind each other, so the order holds.
            let delay = Duration::from_micros(match rng.below(100) {
                0..=89 => rng.between(50, 800),
                90..=98 => rng.between(800, 5_000),
                _ => rng.between(5_000, 40_000),
            }) + extra;
            let at = (sent + delay).max(last);
            last = at;
            tokio::select! {
                biased;
                () = forward_cut.cancelled() => break,
                () = tokio::time::sleep_until(at) => {}
            }
            network.net().frames += 1;
            if out_tx.unbounded_send(Bytes::from(frame)).is_err() {
                break;
            }
        }
        forward_cut.cancel();
    });
    let sink_cut = cut.clone();
    let sink = sink_tx
        .with(|frame: Vec<u8>| {
            futures_util::future::ready(Ok::<_, mpsc::SendError>((
                tokio::time::Instant::now(),
                frame,
            )))
        })
        .sink_map_err(move |_| {
            sink_cut.cancel();
            std::io::Error::other("connection cut")
        });
    let stream = out_rx.take_until(cut.cancelled_owned());
    (Box::pin(sink), Box::pin(stream))
}

/// Node `from`'s way into the network.
#[derive(Debug)]
pub struct SimDialer {
    network: Network,
    from: NodeName,
}

impl Dialer for SimDialer {
    fn dial<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, node::Result<(FrameSink, FrameStream)>> {
        Box::pin(async move {
            self.network
                .connect(&self.from, addr)
                .map_err(|why| node::Error::PeerUnreachable {
                    addr: addr.to_owned(),
                    why,
                })
        })
    }
}
