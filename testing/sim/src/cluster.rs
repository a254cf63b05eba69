//! The simulated cluster: pods whose processes are real [`NodeState`]s with real peer layers
//! (over the simulated network), fed tables by the real `table_source::follow`, and an
//! operator that runs the real decision step ([`operator::decide()`]) every 250 ms, as the
//! local driver does: it publishes tables, starts pods and stops the ones a scale-down removes.
//!
//! What happens to a process is the run's to choose: a SIGTERM (the node's own exit drain
//! runs, then it stops), a crash (it is cut off from everything at once and forgotten), a
//! restart in place (a crash, then a new process in the same pod at once, finding its restart
//! marker), or a pause (cut off for a while, then back, as after SIGSTOP and SIGCONT).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use node::auth::Authenticator;
use node::peer::{PeerSettings, Peers};
use node::rooms::RoomSettings;
use node::state::{ConnectionLimits, HandoffSettings};
use node::table_source::{BoxedTable, TableSource};
use node::{NodeSettings, NodeState};
use operator::decide::{DecideOptions, Inputs, PodView, Report, decide, keep_lingering};
use shard::{AssignmentTable, CopyReport, LoadPolicy, NodeInfo, NodeName, PlanOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::network::Network;
use crate::rng::Rng;

/// The shard count of a simulated cluster: small, so that shards move often.
pub const SHARDS: u32 = 16;

/// How often the operator decides.
pub const OPERATOR_INTERVAL: Duration = Duration::from_millis(250);

/// How long a stopping node may hand off before it exits anyway.
const EXIT_DRAIN: Duration = Duration::from_secs(20);

/// One pod: its name and address stay, processes come and go.
#[derive(Debug)]
pub struct Pod {
    /// `node-N`.
    pub name: NodeName,
    /// Its peer address (the same for every process of the pod).
    pub addr: String,
    /// The process running now.
    pub proc: Option<Proc>,
    /// Processes started so far.
    pub generation: u64,
}

/// A running process of a pod.
#[derive(Debug)]
pub struct Proc {
    /// The node.
    pub node: Arc<NodeState>,
    /// Its peer layer.
    pub peers: Arc<Peers>,
    /// Its table follower.
    follow: JoinHandle<()>,
    /// SIGTERM was sent: it is draining, then it stops.
    pub stopping: bool,
    /// Paused (cut off, no tables, no status), as under SIGSTOP.
    pub paused: watch::Sender<bool>,
}

/// The cluster and its operator.
#[derive(Debug)]
pub struct Cluster {
    /// The network the nodes talk over.
    pub network: Network,
    /// The table the operator published last; table sources follow it.
    pub published: watch::Sender<Arc<AssignmentTable>>,
    /// Pods by ordinal.
    pub pods: BTreeMap<u32, Pod>,
    /// The replica count asked for.
    pub desired: u32,
    /// The pods that exist (above `desired` while a scale-down drains).
    pub replicas: u32,
    /// Replicated as the operator sees it after its last pass.
    pub replicated: bool,
    /// The last decision's moves in flight, drain step and exits, for the run's log.
    pub last_moves: usize,
    rng: Rng,
    options: DecideOptions,
    started: Instant,
    drain_since: Option<Instant>,
    /// Processes that are exiting (their drain running), by ordinal and generation.
    exits: Vec<(u32, u64, JoinHandle<()>)>,
}

impl Cluster {
    /// A cluster of `nodes` pods (not started yet: the first pass starts them).
    pub fn new(nodes: u32, rng: &mut Rng) -> Cluster {
        let network = Network::new(rng.fork());
        let (published, _) = watch::channel(Arc::new(AssignmentTable::empty(SHARDS)));
        Cluster {
            network,
            published,
            pods: BTreeMap::new(),
            desired: nodes,
            replicas: nodes,
            replicated: false,
            last_moves: 0,
            rng: rng.fork(),
            options: DecideOptions {
                plan: PlanOptions {
                    max_moves_per_node: 64,
                    replication: 2,
                },
                balance: LoadPolicy::default(),
                drain_timeout: Duration::from_secs(30),
                pod_prefix: "node".to_owned(),
                initial_grace: Duration::from_secs(10),
            },
            started: Instant::now(),
            drain_since: None,
            exits: Vec::new(),
        }
    }

    /// The pods whose process runs and is not paused, by ordinal.
    pub fn running(&self) -> Vec<u32> {
        self.pods
            .iter()
            .filter(|(_, p)| p.proc.as_ref().is_some_and(|proc| !*proc.paused.borrow()))
            .map(|(&o, _)| o)
            .collect()
    }

    /// The node of pod `ordinal`, if its process runs.
    pub fn node(&self, ordinal: u32) -> Option<Arc<NodeState>> {
        self.pods
            .get(&ordinal)?
            .proc
            .as_ref()
            .map(|p| p.node.clone())
    }

    /// Whether pod `ordinal`'s process is paused.
    pub fn is_paused(&self, ordinal: u32) -> bool {
        self.pods
            .get(&ordinal)
            .and_then(|p| p.proc.as_ref())
            .is_some_and(|proc| *proc.paused.borrow())
    }

    /// Whether pod `ordinal` would pass its readiness probe.
    pub fn ready(&self, ordinal: u32) -> bool {
        self.pods
            .get(&ordinal)
            .and_then(|p| p.proc.as_ref())
            .is_some_and(|proc| !*proc.paused.borrow() && ready(&proc.node))
    }

    /// One operator pass: observe the pods, decide, act.
    pub fn pass(&mut self) {
        let now = Instant::now();
        let published = self.published.borrow().clone();
        let pods: Vec<PodView> = (0..self
            .replicas
            .max(self.pods.keys().max().map_or(0, |m| m + 1)))
            .filter_map(|o| self.pods.get(&o))
            .map(pod_view)
            .collect();
        let inputs = Inputs {
            desired_replicas: self.desired,
            pods: &pods,
            table: &published,
            drain_elapsed: self.drain_since.map_or(Duration::ZERO, |t| now - t),
            age: now - self.started,
        };
        let decision = match decide(inputs, &self.options) {
            Ok(decision) => decision,
            Err(e) => {
                tracing::debug!(error = %e, "the operator decided nothing this pass");
                return;
            }
        };
        let lingering: Vec<NodeName> = self
            .pods
            .iter()
            .filter(|(o, p)| **o >= decision.replicas && p.proc.is_some())
            .map(|(_, p)| p.name.clone())
            .filter(|n| published.nodes.contains_key(n))
            .collect();
        let next = keep_lingering(&published, &decision.table, &lingering);
        if !decision.publish {
            tracing::trace!(step = ?decision.step, "the operator holds the table");
        }
        if decision.publish && next.epoch != published.epoch {
            tracing::debug!(epoch = next.epoch, moves = next.moves.len(), "published");
            self.published.send_replace(Arc::new(next));
        }
        if operator::decide::draining_in_progress(&decision.step) {
            self.drain_since.get_or_insert(now);
        } else {
            self.drain_since = None;
        }
        self.replicated = operator::replication::condition(&decision.followers).0 == "True";
        self.last_moves = decision.table.moves.len();
        for name in &decision.stop {
            if let Some(o) = shard::ordinal_of(name) {
                self.sigterm(o);
            }
        }
        self.replicas = decision.replicas;
        let replicas = self.replicas;
        self.pods.retain(|&o, p| o < replicas || p.proc.is_some());
        for name in &decision.start {
            if let Some(o) = shard::ordinal_of(name) {
                self.start(o, false);
            }
        }
    }

    /// Start a process for pod `ordinal` (unless one runs); `in_place`: the pod's previous
    /// process died a moment ago and the kubelet restarts it, marker and all.
    pub fn start(&mut self, ordinal: u32, in_place: bool) {
        let name = NodeName::new(format!("node-{ordinal}")).expect("valid name");
        let pod = self.pods.entry(ordinal).or_insert_with(|| Pod {
            addr: format!("{name}.sim:7001"),
            name: name.clone(),
            proc: None,
            generation: 0,
        });
        if pod.proc.is_some() {
            return;
        }
        pod.generation += 1;
        let mut rng = self.rng.fork();
        let peers = Peers::with_transport(
            PeerSettings {
                me: name.clone(),
                secret: Arc::from(&b"sim secret"[..]),
                max_unacked: 4096,
            },
            self.network.dialer(&name),
            Some(rng.next_u64()),
        );
        let state = NodeState::clustered(
            settings(&name, ordinal, &pod.addr),
            Authenticator::open(),
            peers.clone(),
        );
        if in_place {
            state.restarted_in_place();
        }
        self.network.listen(&pod.addr, &name, peers.clone());
        let (paused, paused_rx) = watch::channel(false);
        let source: Arc<dyn TableSource> = Arc::new(SimSource {
            tables: self.published.subscribe(),
            paused: paused_rx,
            delay: std::sync::Mutex::new(rng.fork()),
        });
        let follow = tokio::spawn(
            node::table_source::follow(source, state.clone()).instrument(crate::span_of(&name)),
        );
        pod.proc = Some(Proc {
            node: state,
            peers,
            follow,
            stopping: false,
            paused,
        });
    }

    /// Kill pod `ordinal`'s process at once (SIGKILL, OOM, a lost machine): cut off, forgotten.
    pub fn crash(&mut self, ordinal: u32) {
        let Some(pod) = self.pods.get_mut(&ordinal) else {
            return;
        };
        let Some(proc) = pod.proc.take() else {
            return;
        };
        self.network.unlisten(&pod.addr, &pod.name);
        proc.follow.abort();
        proc.peers.close();
        proc.node.shutdown.cancel();
        self.exits.retain(|(o, g, task)| {
            let mine = *o == ordinal && *g == pod.generation;
            if mine {
                task.abort();
            }
            !mine
        });
    }

    /// SIGTERM pod `ordinal`'s process: it drains (the node's own exit drain), then stops.
    pub fn sigterm(&mut self, ordinal: u32) {
        let Some(pod) = self.pods.get_mut(&ordinal) else {
            return;
        };
        let generation = pod.generation;
        let span = crate::span_of(&pod.name);
        let Some(proc) = pod.proc.as_mut().filter(|p| !p.stopping) else {
            return;
        };
        proc.stopping = true;
        let node = proc.node.clone();
        let statuses = self.statuses();
        let task = tokio::spawn(
            async move {
                node::exit::drain_before_exit_reading(&node, EXIT_DRAIN, |table, followers| {
                    let reports = copy_reports(&statuses, table, followers);
                    async move { reports }
                })
                .await;
                node.shutdown.cancel();
            }
            .instrument(span),
        );
        self.exits.push((ordinal, generation, task));
    }

    /// Processes in their exit drain (SIGTERMed, not stopped yet).
    pub fn exits_in_progress(&self) -> usize {
        self.exits.len()
    }

    /// Processes whose exit drain has finished: they stop now.
    pub fn reap(&mut self) {
        let done: Vec<(u32, u64)> = self
            .exits
            .iter()
            .filter(|(_, _, task)| task.is_finished())
            .map(|(o, g, _)| (*o, *g))
            .collect();
        self.exits.retain(|(_, _, task)| !task.is_finished());
        for (ordinal, generation) in done {
            if self
                .pods
                .get(&ordinal)
                .is_some_and(|p| p.generation == generation)
            {
                self.crash(ordinal);
            }
        }
    }

    /// Pause pod `ordinal` (`true`) or let it go on: while paused it is cut off, reads no
    /// table and answers no probe.
    pub fn pause(&mut self, ordinal: u32, paused: bool) {
        let Some(pod) = self.pods.get(&ordinal) else {
            return;
        };
        if let Some(proc) = &pod.proc {
            proc.paused.send_replace(paused);
            self.network.isolate(&pod.name, paused);
        }
    }

    /// A way to read the running nodes' statuses for an exit drain (a leaving node reads its
    /// new followers' `/status`).
    fn statuses(&self) -> Statuses {
        Statuses {
            nodes: self
                .pods
                .values()
                .filter_map(|p| {
                    let proc = p.proc.as_ref()?;
                    Some((p.name.clone(), (proc.node.clone(), proc.paused.subscribe())))
                })
                .collect(),
        }
    }
}

/// The nodes a leaving node can read the `/status` of (those running when it was told to
/// stop; a node that crashed since reads as not caught up, as an unreachable one does).
#[derive(Debug, Clone)]
struct Statuses {
    nodes: BTreeMap<NodeName, (Arc<NodeState>, watch::Receiver<bool>)>,
}

fn copy_reports(
    statuses: &Statuses,
    _table: &AssignmentTable,
    followers: &BTreeSet<NodeName>,
) -> BTreeMap<NodeName, CopyReport> {
    followers
        .iter()
        .filter_map(|name| {
            let (node, paused) = statuses.nodes.get(name)?;
            if *paused.borrow() || node.shutdown.is_cancelled() {
                return None;
            }
            let status = node.status();
            Some((
                name.clone(),
                CopyReport {
                    epoch_applied: status.epoch,
                    catching_up: status.catching_up,
                },
            ))
        })
        .collect()
}

/// `/readyz`, as the node's server answers it.
fn ready(node: &NodeState) -> bool {
    !node.shutdown.is_cancelled() && !node.exiting.is_cancelled() && node.inheritance_settled()
}

/// What the operator observes of a pod.
fn pod_view(pod: &Pod) -> PodView {
    let proc = pod.proc.as_ref();
    let paused = proc.is_some_and(|p| *p.paused.borrow());
    let report = proc.filter(|_| !paused).map(|p| {
        let s = p.node.status();
        Report {
            epoch: s.epoch,
            moves_in_flight: s.moves_in_flight,
            moves_done: s.moves_done,
            terminating: s.terminating,
            following: s.following,
            catching_up: s.catching_up,
            connections: s.connections,
            load: s.load,
        }
    });
    PodView {
        name: pod.name.clone(),
        running: proc.is_some(),
        ready: proc.is_some_and(|p| !paused && ready(&p.node)),
        info: Some(NodeInfo::new(pod.addr.clone())),
        report,
        terminating: proc.is_some_and(|p| p.stopping),
    }
}

/// A simulated node's settings: small queues and timeouts so that runs move fast.
fn settings(name: &NodeName, ordinal: u32, addr: &str) -> NodeSettings {
    NodeSettings {
        name: name.clone(),
        node_id: u16::try_from(ordinal % 1000).unwrap_or(0),
        shards: SHARDS,
        peer_addr: addr.to_owned(),
        rooms: RoomSettings {
            history_limit: 100_000,
            queue: 256,
            passivate_after: Duration::from_secs(60),
            send_timeout: Duration::from_secs(1),
            remembered: 10_000,
        },
        limits: ConnectionLimits {
            max_text_bytes: 1024,
            max_frame_bytes: 8192,
            max_rooms: 16,
            rate_per_sec: 1000,
            rate_burst: 1000,
            outgoing_queue: 100_000,
            close_timeout: Duration::from_secs(1),
            reconnect_spread: Duration::ZERO,
        },
        handoff: HandoffSettings {
            timeout: Duration::from_secs(10),
            buffer: 10_000,
            exit_drain: EXIT_DRAIN,
        },
    }
}

/// A node's table source: the operator's published table, seen late (a few milliseconds, now
/// and then much more) and skipping epochs when several come close together, as the HTTP long
/// poll does; nothing while the node is paused.
struct SimSource {
    tables: watch::Receiver<Arc<AssignmentTable>>,
    paused: watch::Receiver<bool>,
    delay: std::sync::Mutex<Rng>,
}

impl SimSource {
    fn delay(&self) -> Duration {
        let mut rng = self.delay.lock().unwrap_or_else(|p| p.into_inner());
        Duration::from_micros(match rng.below(20) {
            0..=16 => rng.between(200, 5_000),
            _ => rng.between(5_000, 300_000),
        })
    }

    async fn unpaused(&self) {
        let mut paused = self.paused.clone();
        let _ = paused.wait_for(|p| !*p).await;
    }
}

impl TableSource for SimSource {
    fn next(&self, after: u64) -> BoxedTable<'_> {
        Box::pin(async move {
            let mut tables = self.tables.clone();
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                tables.wait_for(|t| t.epoch > after),
            )
            .await;
            tokio::time::sleep(self.delay()).await;
            self.unpaused().await;
            Ok(AssignmentTable::clone(&self.tables.borrow()))
        })
    }

    fn current(&self) -> BoxedTable<'_> {
        Box::pin(async move {
            self.unpaused().await;
            Ok(AssignmentTable::clone(&self.tables.borrow()))
        })
    }
}
