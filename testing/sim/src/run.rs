//! One seeded run: a cluster of real nodes and the operator's decision step under a simulated
//! network and clock, clients chatting through it, faults composed at random, then the
//! checker.
//!
//! The run happens on a single-threaded tokio runtime whose clock is paused (it jumps to the
//! next timer when every task waits), so a minute of cluster life takes well under a second,
//! and the seed decides everything: the schedule of faults, the clients' rooms and sends, every
//! frame's delay, when each node sees each table. Within the promise (one failure at a time:
//! a crash, a restart in place or a pause of a node only while the operator reports every
//! shard replicated), every promise of `checker` must hold; partitions, slow nodes, resets of
//! connections, scale-ups and downs, SIGTERMs and load shifts come at any time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use node::NodeState;
use node::connection::Session;
use serde_json::json;
use shard::NodeName;
use tokio_util::sync::CancellationToken;

use crate::checker::{Verdict, check};
use crate::clients::{self, Nodes, Observations, Plan};
use crate::cluster::{Cluster, OPERATOR_INTERVAL};
use crate::rng::Rng;

/// How a run is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes to start with.
    pub nodes: u32,
    /// Clients chatting.
    pub clients: u32,
    /// Rooms they share.
    pub rooms: u32,
    /// Simulated time with faults.
    pub faults_for: Duration,
    /// Faults stay within what two copies survive (one failure at a time).
    pub within_promise: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            clients: 10,
            rooms: 8,
            faults_for: Duration::from_secs(30),
            within_promise: true,
        }
    }
}

/// What a run did and found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The checker's verdict.
    pub verdict: Verdict,
    /// The faults injected, in order, with the simulated time.
    pub events: Vec<String>,
    /// Error frames the clients got, by code.
    pub errors: BTreeMap<String, u64>,
    /// Reconnects of clients to another node.
    pub reconnects: u64,
    /// Frames the network carried.
    pub frames: u64,
    /// The cluster settled after the faults (every pod ready, no move, replicated).
    pub settled: bool,
    /// A digest of everything the clients saw: the same seed gives the same digest.
    pub digest: u64,
}

impl Report {
    /// Whether every promise held.
    pub fn passed(&self) -> bool {
        self.settled && self.verdict.violations.is_empty()
    }
}

/// Run seed `seed` with `options`.
pub fn run(seed: u64, options: &Options) -> Report {
    node::hashing::fix_iteration_order();
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().start_paused(true);
    // `select!` draws from the runtime's generator: seeded, a run replays.
    #[cfg(tokio_unstable)]
    builder.rng_seed(tokio::runtime::RngSeed::from_bytes(&seed.to_le_bytes()));
    let runtime = builder.build().expect("a runtime");
    runtime.block_on(world(seed, options.clone()))
}

/// What [`run_many`] found over a range of seeds.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Seeds run.
    pub runs: u64,
    /// Acknowledged messages checked, over every run.
    pub acknowledged: u64,
    /// The seeds that broke a promise, with whether they settled and what they broke.
    pub failed: Vec<(u64, bool, Vec<String>)>,
}

/// Run every seed of `seeds` on every core, and sum up what the runs found. `each` sees
/// each report as it comes (to print a failure at once).
pub fn run_many(
    seeds: std::ops::Range<u64>,
    options: &Options,
    each: &(dyn Fn(&Report) + Sync),
) -> Summary {
    let next = std::sync::atomic::AtomicU64::new(seeds.start);
    let summary = Mutex::new(Summary::default());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= seeds.end {
                        break;
                    }
                    let report = run(seed, options);
                    each(&report);
                    let mut summary = summary.lock().unwrap_or_else(|p| p.into_inner());
                    summary.runs += 1;
                    summary.acknowledged += report.verdict.acknowledged;
                    if !report.passed() {
                        summary
                            .failed
                            .push((seed, report.settled, report.verdict.violations));
                    }
                }
            });
        }
    });
    let mut summary = summary.into_inner().unwrap_or_else(|p| p.into_inner());
    summary.failed.sort_by_key(|(seed, _, _)| *seed);
    summary
}

/// The shared cluster, behind a lock the operator, the fault schedule and the clients take
/// in turns (one thread: never contended, only borrowed across awaits safely).
type Shared = Arc<Mutex<Cluster>>;

fn lock(cluster: &Shared) -> std::sync::MutexGuard<'_, Cluster> {
    cluster.lock().unwrap_or_else(|p| p.into_inner())
}

struct ReadyNodes(Shared);

impl Nodes for ReadyNodes {
    fn ready_node(&self, pick: u64) -> Option<(u32, u64, Arc<NodeState>)> {
        let cluster = lock(&self.0);
        let ready: Vec<u32> = cluster
            .running()
            .into_iter()
            .filter(|&o| cluster.ready(o))
            .collect();
        let o = *ready.get((pick % ready.len().max(1) as u64) as usize)?;
        let generation = cluster.pods.get(&o)?.generation;
        Some((o, generation, cluster.node(o)?))
    }

    fn paused(&self, ordinal: u32, generation: u64) -> bool {
        let cluster = lock(&self.0);
        cluster
            .pods
            .get(&ordinal)
            .is_some_and(|p| p.generation == generation && cluster.is_paused(ordinal))
    }
}

async fn world(seed: u64, options: Options) -> Report {
    crate::start_clock();
    let mut rng = Rng::new(seed);
    let cluster: Shared = Arc::new(Mutex::new(Cluster::new(options.nodes, &mut rng)));
    let started = tokio::time::Instant::now();
    let mut events: Vec<String> = Vec::new();
    let log = |events: &mut Vec<String>, what: String| {
        let at = started.elapsed().as_millis();
        tracing::info!("sim: {what}");
        events.push(format!("{at:>6} ms  {what}"));
    };

    // The operator: a pass every 250 ms, as the local driver runs.
    let stop_operator = CancellationToken::new();
    let operator = {
        let cluster = cluster.clone();
        let stop = stop_operator.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(OPERATOR_INTERVAL);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let mut c = lock(&cluster);
                c.reap();
                c.pass();
            }
        })
    };

    // The cluster forms.
    let formed = wait(&cluster, Duration::from_secs(60), |c| {
        c.replicated && c.running().iter().all(|&o| c.ready(o))
    })
    .await;
    log(&mut events, format!("cluster formed: {formed}"));

    // Clients: each in one to three rooms, a few busier rooms.
    let seen = Arc::new(Mutex::new(Observations::default()));
    let stop_clients = CancellationToken::new();
    let quiet = CancellationToken::new();
    let rooms: Vec<String> = (0..options.rooms).map(|r| format!("room-{r}")).collect();
    for room in &rooms {
        if let Ok(id) = shard::RoomId::new(room.clone()) {
            tracing::debug!(
                "sim: {room} is in shard {}",
                shard::shard_of(&id, crate::cluster::SHARDS).0
            );
        }
    }
    let mut clients = Vec::new();
    for id in 0..options.clients {
        let count = rng.between(1, 3) as usize;
        let mut mine: Vec<String> = Vec::new();
        while mine.len() < count.min(rooms.len()) {
            // The first rooms are picked more often: they are the hot ones.
            let upto = rng.between(1, rooms.len() as u64);
            let r = rng.below(upto) as usize;
            if !mine.contains(&rooms[r]) {
                mine.push(rooms[r].clone());
            }
        }
        let plan = Plan {
            id,
            rooms: mine,
            every: Duration::from_millis(rng.between(100, 800)),
        };
        clients.push(tokio::spawn(clients::run(
            plan,
            Arc::new(ReadyNodes(cluster.clone())),
            seen.clone(),
            rng.fork(),
            stop_clients.clone(),
            quiet.clone(),
        )));
    }

    // Faults, composed at random until `faults_for` has passed.
    let mut partitions: Vec<(NodeName, NodeName, Duration)> = Vec::new();
    while started.elapsed() < options.faults_for {
        tokio::time::sleep(Duration::from_millis(rng.between(300, 3_000))).await;
        let fault = rng.below(100);
        let mut c = lock(&cluster);
        let running = c.running();
        let Some(&victim) = rng.pick(&running) else {
            continue;
        };
        let within = !options.within_promise || c.replicated;
        let name = NodeName::new(format!("node-{victim}")).expect("valid name");
        match fault {
            0..=11 if within => {
                c.crash(victim);
                log(&mut events, format!("kill -9 node-{victim}"));
            }
            12..=19 if within => {
                c.crash(victim);
                c.start(victim, true);
                log(&mut events, format!("node-{victim} restarted in its pod"));
            }
            // A planned exit at a time, as a rolling restart does: with every node leaving at
            // once there is nowhere to hand the rooms, and the last copies leave with the
            // processes when their exit drains run out (seed 2908 sent three in 7 s).
            20..=29 if c.exits_in_progress() == 0 => {
                c.sigterm(victim);
                log(&mut events, format!("kill -TERM node-{victim}"));
            }
            30..=37 if c.desired < 5 => {
                c.desired += 1;
                log(&mut events, format!("scale to {}", c.desired));
            }
            38..=45 if c.desired > 2 => {
                c.desired -= 1;
                log(&mut events, format!("scale to {}", c.desired));
            }
            46..=55 if partitions.is_empty() => {
                let others: Vec<u32> = running.iter().copied().filter(|&o| o != victim).collect();
                if let Some(&other) = rng.pick(&others) {
                    let other = NodeName::new(format!("node-{other}")).expect("valid name");
                    let heal = Duration::from_millis(rng.between(200, 6_000));
                    if rng.chance(300) {
                        c.network.one_way(&name, &other, true);
                        log(
                            &mut events,
                            format!("{name} cannot reach {other} for {heal:?}"),
                        );
                    } else {
                        c.network.partition(&name, &other, true);
                        log(
                            &mut events,
                            format!("{name} and {other} partitioned for {heal:?}"),
                        );
                    }
                    partitions.push((name.clone(), other, started.elapsed() + heal));
                }
            }
            56..=61 if within => {
                let how_long = Duration::from_millis(rng.between(2_000, 12_000));
                c.pause(victim, true);
                log(
                    &mut events,
                    format!("node-{victim} paused for {how_long:?}"),
                );
                let cluster = cluster.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(how_long).await;
                    lock(&cluster).pause(victim, false);
                });
            }
            62..=69 => {
                let extra = Duration::from_millis(rng.between(20, 400));
                let how_long = Duration::from_millis(rng.between(1_000, 8_000));
                c.network.slow(&name, extra);
                log(
                    &mut events,
                    format!("{name} slow by {extra:?} for {how_long:?}"),
                );
                let network = c.network.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(how_long).await;
                    network.slow(&name, Duration::ZERO);
                });
            }
            70..=84 => {
                c.network.reset_one();
            }
            _ => {}
        }
        drop(c);
        let now = started.elapsed();
        for (a, b, _) in partitions.iter().filter(|(_, _, until)| *until <= now) {
            let c = lock(&cluster);
            c.network.partition(a, b, false);
            c.network.one_way(a, b, false);
            c.network.one_way(b, a, false);
        }
        partitions.retain(|(_, _, until)| *until > now);
    }

    // Heal (paused nodes go on too), stop sending, let the cluster settle.
    {
        let mut c = lock(&cluster);
        let pods: Vec<u32> = c.pods.keys().copied().collect();
        for o in pods {
            c.pause(o, false);
        }
        for (a, b, _) in &partitions {
            c.network.partition(a, b, false);
            c.network.one_way(a, b, false);
            c.network.one_way(b, a, false);
        }
    }
    log(&mut events, "faults over: healing".to_owned());
    quiet.cancel();
    // Settled means it stays so over a few operator passes: a node let go on a moment ago
    // still looks as it did before its pause until the operator has seen it again.
    let settled = wait_steady(&cluster, Duration::from_secs(120), |c| {
        c.replicated
            && c.last_moves == 0
            && c.pods.len() as u32 == c.desired
            && c.pods.keys().all(|&o| c.ready(o))
    })
    .await;
    log(&mut events, format!("settled: {settled}"));
    if !settled {
        let c = lock(&cluster);
        let table = c.published.borrow().clone();
        log(
            &mut events,
            format!(
                "  desired {} replicas {} replicated {} table epoch {} moves {:?} draining {:?} owners {:?}",
                c.desired,
                c.replicas,
                c.replicated,
                table.epoch,
                table.moves,
                table.draining,
                table.counts()
            ),
        );
        for (o, pod) in &c.pods {
            let status = pod.proc.as_ref().map(|p| p.node.status());
            log(
                &mut events,
                format!(
                    "  node-{o} gen {} running {} ready {} status {:?}",
                    pod.generation,
                    pod.proc.is_some(),
                    c.ready(*o),
                    status.map(|s| (
                        s.epoch,
                        s.shards_owned,
                        s.following,
                        s.catching_up,
                        s.moves_in_flight,
                        s.terminating
                    ))
                ),
            );
        }
    }
    // Let the clients read what is still on its way, then stop them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_clients.cancel();
    for client in clients {
        let _ = client.await;
    }

    // Every room, read from seq 0 on a ready node.
    let audit = audit(&cluster, &rooms).await;
    stop_operator.cancel();
    let _ = operator.await;
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
    let mut verdict = check(&seen, &audit);
    for room in rooms.iter().filter(|r| !audit.contains_key(*r)) {
        verdict
            .violations
            .push(format!("room {room} could not be read at the end"));
    }
    if !within_unanswered(&seen) {
        verdict.violations.push(format!(
            "{} sends got neither an echo nor an error on a connection that stayed open: {:?}",
            seen.unanswered,
            seen.unanswered_cids.iter().take(5).collect::<Vec<_>>()
        ));
    }
    let frames = lock(&cluster).network.frames();
    // Stop every node: their tasks end with the runtime.
    {
        let mut c = lock(&cluster);
        let ordinals: Vec<u32> = c.pods.keys().copied().collect();
        for o in ordinals {
            c.crash(o);
        }
    }
    Report {
        seed,
        verdict,
        events,
        errors: seen.errors.clone(),
        reconnects: seen.reconnects,
        frames,
        settled,
        digest: seen.digest,
    }
}

/// Every send on a connection that stayed open was answered.
fn within_unanswered(seen: &Observations) -> bool {
    seen.unanswered == 0
}

/// Wait until `done` holds for the cluster, at most `bound` of simulated time.
async fn wait(cluster: &Shared, bound: Duration, done: impl Fn(&Cluster) -> bool) -> bool {
    let until = tokio::time::Instant::now() + bound;
    while tokio::time::Instant::now() < until {
        if done(&lock(cluster)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Waits until `done` has held for four operator passes in a row.
async fn wait_steady(cluster: &Shared, bound: Duration, done: impl Fn(&Cluster) -> bool) -> bool {
    let until = tokio::time::Instant::now() + bound;
    let mut since: Option<tokio::time::Instant> = None;
    while tokio::time::Instant::now() < until {
        let now = tokio::time::Instant::now();
        if done(&lock(cluster)) {
            let from = *since.get_or_insert(now);
            if now.duration_since(from) >= OPERATOR_INTERVAL * 4 {
                return true;
            }
        } else {
            since = None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Each room's whole history: a fresh connection joins it with `since: 0` (asking again while
/// the room answers with an error, up to 10 s). A room that cannot be read is left out: the
/// caller reports it.
async fn audit(cluster: &Shared, rooms: &[String]) -> BTreeMap<String, Vec<(u64, u64)>> {
    let mut histories = BTreeMap::new();
    let node = {
        let c = lock(cluster);
        let ready: Vec<u32> = c.running().into_iter().filter(|&o| c.ready(o)).collect();
        ready.first().and_then(|&o| c.node(o))
    };
    let Some(node) = node else {
        return histories;
    };
    let mut session = Session::open(node, "auditor");
    for room in rooms {
        let join = json!({"op": "join", "room": room, "since": 0});
        session.text(&join.to_string()).await;
        let mut found = None;
        for _ in 0..500 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            for text in session.take_frames() {
                tracing::debug!("audit: got {text}");
                let Ok(frame) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                if frame["op"] == "joined" && frame["room"] == room.as_str() {
                    let history: Vec<(u64, u64)> = frame["history"]
                        .as_array()
                        .map(|h| h.iter().filter_map(clients::seq_and_id).collect())
                        .unwrap_or_default();
                    found = Some(history);
                } else if frame["op"] == "error" && frame["room"] == room.as_str() {
                    session.text(&join.to_string()).await;
                }
            }
            if found.is_some() {
                break;
            }
        }
        if let Some(history) = found {
            histories.insert(room.clone(), history);
        }
    }
    session.close().await;
    histories
}
