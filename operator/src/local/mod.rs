//! The local cluster driver: `roomshard-node` processes on loopback, driven like pods.
//!
//! [`LocalCluster::start`] plays the parts Kubernetes plays for the real controller, with the
//! same decisions ([`crate::decide()`]):
//!
//! - **StatefulSet.** Pods are processes named `node-0`, `node-1`, ... A pod whose process
//!   exits unexpectedly is started again under the same name once the table no longer lists it
//!   (with a growing back-off if it keeps crashing). A scale-down stops the highest ordinals,
//!   but only when [`shard::drain_step`] says `Remove`.
//! - **kubelet.** Each process announces its client and peer addresses on stdout; from then on
//!   `/readyz` is probed every `interval` (250 ms): one success makes the pod ready, two failures
//!   in a row or an exited process make it not ready. `/status` (on the peer listener) is read at
//!   the same pace; it carries the table epoch the node applied and its hand-offs.
//! - **ConfigMap.** The table is served on the admin port: `GET /table` answers at once,
//!   `GET /table?after=N` long-polls until the epoch passes `N` (or ~20 s).
//! - **The controller.** A reconcile loop runs every `interval` and whenever something changes
//!   (a probe flips, a report changes, a process exits, a scale request arrives), calls
//!   [`crate::decide::decide`] and acts: publish the table if its epoch changed, start pods,
//!   SIGTERM drained pods. A scale-down past its deadline is logged as stuck, naming the node and
//!   the moves it waits for, every 10 s; nothing is killed early.
//!
//! The admin port also serves `GET /cluster` ([`ClusterView`]) and `POST /scale`
//! (`{"replicas": M}`). Node stderr goes to the driver's stderr, each line prefixed with the
//! node's name, or to `{log_dir}/{name}.log` when [`LocalOptions::log_dir`] is set.
//!
//! Shutdown ([`LocalCluster::shutdown`], Ctrl-C in the CLI) SIGTERMs every node, waits up to the
//! shutdown grace plus 5 s, SIGKILLs stragglers and removes the driver's temporary directory.
//! Every child is also spawned with `kill_on_drop`, so dropping the cluster leaves no process
//! behind either.

mod admin;
mod process;
mod view;
mod workdir;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use shard::{AssignmentTable, DrainStep, NodeInfo, NodeName, PlanOptions, ordinal_of};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Error;
use crate::decide::{
    DecideOptions, Inputs, PodView, Report, Stuck, decide, draining_in_progress, phase, pod_name,
};
pub use admin::ScaleRequest;
pub use view::{ClusterView, DrainView, NodeView};
use workdir::WorkDir;

/// The most replicas the local driver runs; loopback ports and one machine's cores run out well
/// before the node-id space does.
pub const MAX_REPLICAS: u32 = 64;

/// Pod names are `node-{ordinal}`.
pub const POD_PREFIX: &str = "node";

/// How long a new cluster waits for all its nodes to be ready before assigning shards anyway.
const INITIAL_GRACE: Duration = Duration::from_secs(10);

/// How often a stuck scale-down is logged again.
const STUCK_LOG_EVERY: Duration = Duration::from_secs(10);

/// The longest wait before starting again a pod that keeps crashing.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How to run the local cluster. `Default` is what `roomshard-operator local` uses.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Replicas to start with.
    pub nodes: u32,
    /// The cluster's shard count (fixed for its life).
    pub shards: u32,
    /// Admin and table HTTP port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// The `roomshard-node` binary; `None` looks next to the current executable, then on `PATH`.
    pub node_bin: Option<PathBuf>,
    /// Passed to nodes as `--handoff-timeout`; three times it is the default drain timeout.
    pub handoff_timeout: Duration,
    /// Passed to nodes as `--shutdown-grace`; the driver waits this plus 5 s before SIGKILL.
    pub shutdown_grace: Duration,
    /// How long a scale-down may take before it is reported stuck; `None` = 3 x hand-off timeout.
    pub drain_timeout: Option<Duration>,
    /// Cap on the moves one node takes part in per table (see [`PlanOptions`]).
    pub max_moves_per_node: usize,
    /// Extra arguments appended to every node's command line.
    pub node_args: Vec<String>,
    /// Write each node's stderr to `{log_dir}/{name}.log` instead of the driver's stderr.
    pub log_dir: Option<PathBuf>,
    /// Reconcile and probe period.
    pub interval: Duration,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            nodes: 3,
            shards: 256,
            port: 7700,
            node_bin: None,
            handoff_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            drain_timeout: None,
            max_moves_per_node: 64,
            node_args: Vec::new(),
            log_dir: None,
            interval: Duration::from_millis(250),
        }
    }
}

/// The options after validation, plus what `start` set up.
#[derive(Debug)]
struct Config {
    node_bin: PathBuf,
    secret_file: PathBuf,
    admin_url: String,
    table_url: String,
    shards: u32,
    handoff_timeout: Duration,
    shutdown_grace: Duration,
    interval: Duration,
    node_args: Vec<String>,
    log_dir: Option<PathBuf>,
    decide: DecideOptions,
}

/// State shared by the reconcile loop, the pod supervisors and the admin server.
#[derive(Debug)]
struct Shared {
    config: Config,
    state: Mutex<State>,
    /// Wakes the reconcile loop: something it looks at changed.
    wake: Notify,
    /// The published table; long-poll waiters subscribe.
    table: watch::Sender<Arc<AssignmentTable>>,
    /// The view after the last reconcile pass; [`LocalCluster::wait_for`] subscribes.
    view: watch::Sender<Arc<ClusterView>>,
    /// Cancelled on shutdown; every pod's stop token is a child of it.
    shutdown: CancellationToken,
    /// The reconcile loop, the admin server and the pod supervisors.
    tasks: TaskTracker,
}

/// What the driver knows; guarded by a plain mutex, never held across an `await`.
#[derive(Debug)]
struct State {
    desired: u32,
    /// The pods that should exist: ordinals `0..replicas` (the StatefulSet's replicas).
    replicas: u32,
    /// Every pod with a process or a history, by ordinal; includes pods being stopped.
    pods: BTreeMap<u32, Pod>,
    step: DrainStep,
    stuck: Option<Stuck>,
    drain_since: Option<Instant>,
    stuck_logged: Option<Instant>,
    started: Instant,
}

/// One pod across its incarnations (processes).
#[derive(Debug)]
struct Pod {
    name: NodeName,
    /// Bumped at each start, so a finished supervisor cannot touch its successor's state.
    generation: u64,
    restarts: u32,
    /// Unexpected exits since the pod was last ready; drives the back-off.
    crashes_in_a_row: u32,
    not_before: Option<Instant>,
    /// The current process, while there is one.
    proc: Option<Proc>,
}

/// One process of a pod.
#[derive(Debug)]
struct Proc {
    stop: CancellationToken,
    pid: Option<u32>,
    stopping: bool,
    ready: bool,
    probe_failures: u32,
    client: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    report: Option<Report>,
    status: Option<serde_json::Value>,
}

/// A running local cluster. Drop it or call [`shutdown`](Self::shutdown) to stop every node.
#[derive(Debug)]
pub struct LocalCluster {
    shared: Arc<Shared>,
    workdir: WorkDir,
}

impl LocalCluster {
    /// Binds the admin port, starts the reconcile loop and, through it, the nodes. Returns
    /// without waiting for the nodes: use [`wait_for`](Self::wait_for).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for out-of-range options, [`Error::NodeBinary`] when the node binary
    /// is missing, [`Error::Io`] when the admin port or the temporary directory cannot be had.
    pub async fn start(options: LocalOptions) -> Result<LocalCluster, Error> {
        validate(&options)?;
        let node_bin = match &options.node_bin {
            Some(path) if path.is_file() => path.clone(),
            Some(path) => {
                return Err(Error::NodeBinary(format!(
                    "{} is not a file",
                    path.display()
                )));
            }
            None => default_node_bin()?,
        };
        if let Some(dir) = &options.log_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        }
        let workdir = WorkDir::create()?;
        let secret_file = workdir.write_secret()?;
        let listener = TcpListener::bind(("127.0.0.1", options.port))
            .await
            .map_err(|e| Error::io(format!("cannot listen on 127.0.0.1:{}", options.port), e))?;
        let admin_addr = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the admin address", e))?;
        let admin_url = format!("http://{admin_addr}");
        let config = Config {
            node_bin,
            secret_file,
            table_url: format!("{admin_url}/table"),
            admin_url,
            shards: options.shards,
            handoff_timeout: options.handoff_timeout,
            shutdown_grace: options.shutdown_grace,
            interval: options.interval,
            node_args: options.node_args.clone(),
            log_dir: options.log_dir.clone(),
            decide: DecideOptions {
                plan: PlanOptions {
                    max_moves_per_node: options.max_moves_per_node,
                },
                drain_timeout: options
                    .drain_timeout
                    .unwrap_or(options.handoff_timeout.saturating_mul(3)),
                pod_prefix: POD_PREFIX.into(),
                initial_grace: INITIAL_GRACE,
            },
        };
        let table = Arc::new(AssignmentTable::empty(options.shards));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                desired: options.nodes,
                replicas: 0,
                pods: BTreeMap::new(),
                step: DrainStep::Steady,
                stuck: None,
                drain_since: None,
                stuck_logged: None,
                started: Instant::now(),
            }),
            view: watch::Sender::new(Arc::new(ClusterView::default())),
            table: watch::Sender::new(table),
            wake: Notify::new(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            config,
        });
        tracing::info!(
            admin = %shared.config.admin_url,
            node_bin = %shared.config.node_bin.display(),
            nodes = options.nodes,
            shards = options.shards,
            "local cluster starting"
        );
        shared.tasks.spawn(admin::serve(shared.clone(), listener));
        shared.tasks.spawn(reconcile_loop(shared.clone()));
        shared.reconcile();
        Ok(LocalCluster { shared, workdir })
    }

    /// The admin base URL, e.g. `http://127.0.0.1:7700`.
    pub fn admin_url(&self) -> &str {
        &self.shared.config.admin_url
    }

    /// Where nodes follow the table, e.g. `http://127.0.0.1:7700/table`.
    pub fn table_url(&self) -> &str {
        &self.shared.config.table_url
    }

    /// The driver's temporary directory (cluster secret); removed on shutdown.
    pub fn workdir(&self) -> &Path {
        self.workdir.path()
    }

    /// The cluster as of now (what `GET /cluster` answers).
    pub fn view(&self) -> ClusterView {
        self.shared.view_now()
    }

    /// Every node process the driver knows, by ordinal.
    pub fn nodes(&self) -> Vec<NodeView> {
        self.view().nodes
    }

    /// The published table.
    pub fn table(&self) -> Arc<AssignmentTable> {
        self.shared.table.borrow().clone()
    }

    /// Follows the published table: the receiver sees the latest one after each change.
    pub fn subscribe_table(&self) -> watch::Receiver<Arc<AssignmentTable>> {
        self.shared.table.subscribe()
    }

    /// Asks for `replicas` nodes; the reconcile loop gets there (see the module doc).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] unless `1 <= replicas <= MAX_REPLICAS`.
    pub fn scale(&self, replicas: u32) -> Result<(), Error> {
        self.shared.scale(replicas)
    }

    /// Waits until `done` holds for the view after a reconcile pass, and returns that view.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] with a summary of the last view when `timeout` passes first.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&ClusterView) -> bool,
    ) -> Result<ClusterView, Error> {
        let mut views = self.shared.view.subscribe();
        let waited = tokio::time::timeout(timeout, views.wait_for(|v| done(v))).await;
        match waited {
            Ok(Ok(view)) => Ok(ClusterView::clone(&view)),
            Ok(Err(_)) => Err(Error::Timeout("the cluster is shutting down".into())),
            Err(_) => Err(Error::Timeout(format!(
                "condition not met within {timeout:?}; last seen:\n{}",
                self.view().summary()
            ))),
        }
    }

    /// Kills node `name` with SIGKILL, as `kill -9` would, and returns the pid killed. The
    /// driver notices like it would notice any crash.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when no process runs for `name`, [`Error::Io`] when `kill` fails.
    pub async fn kill9(&self, name: &str) -> Result<u32, Error> {
        let pid = self
            .nodes()
            .into_iter()
            .find(|n| n.name == name)
            .and_then(|n| n.pid)
            .ok_or_else(|| Error::Config(format!("no process runs for {name}")))?;
        process::signal("KILL", pid).await?;
        Ok(pid)
    }

    /// Stops every node (SIGTERM, then SIGKILL after the grace period), the reconcile loop and
    /// the admin server, and removes the temporary directory.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if the tasks did not finish, [`Error::Io`] if the directory could not
    /// be removed.
    pub async fn shutdown(self) -> Result<(), Error> {
        tracing::info!("stopping every node");
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        let bound = self.shared.config.shutdown_grace + Duration::from_secs(10);
        let finished = tokio::time::timeout(bound, self.shared.tasks.wait()).await;
        self.workdir.remove()?;
        match finished {
            Ok(()) => {
                tracing::info!("local cluster stopped");
                Ok(())
            }
            Err(_) => Err(Error::Timeout(format!(
                "tasks still running {bound:?} after shutdown; remaining processes are killed on drop"
            ))),
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Supervisors SIGTERM their nodes if the runtime still runs; `kill_on_drop` covers the
        // rest.
        self.shared.shutdown.cancel();
    }
}

fn validate(options: &LocalOptions) -> Result<(), Error> {
    if !(1..=MAX_REPLICAS).contains(&options.nodes) {
        return Err(Error::Config(format!(
            "--nodes must be between 1 and {MAX_REPLICAS}"
        )));
    }
    if !(1..=shard::format::MAX_SHARDS).contains(&options.shards) {
        return Err(Error::Config(format!(
            "--shards must be between 1 and {}",
            shard::format::MAX_SHARDS
        )));
    }
    if options.interval.is_zero() {
        return Err(Error::Config(
            "the reconcile interval must not be zero".into(),
        ));
    }
    if options.max_moves_per_node == 0 {
        return Err(Error::Config(
            "--max-moves-per-node must be at least 1".into(),
        ));
    }
    Ok(())
}

/// `roomshard-node` next to the current executable (how `cargo build` lays binaries out), then
/// on `PATH`.
fn default_node_bin() -> Result<PathBuf, Error> {
    const NAME: &str = "roomshard-node";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(NAME)))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(NAME))
                .find(|p| p.is_file())
        })
    };
    beside.or_else(on_path).ok_or_else(|| {
        Error::NodeBinary(format!(
            "no {NAME} next to this executable or on PATH (build it with `cargo build -p node`, or pass --node-bin)"
        ))
    })
}

/// How long to wait before starting a pod again after its `n`th crash in a row: at once the
/// first time, then 0.5 s, 1 s, 2 s, ... up to [`MAX_BACKOFF`].
fn backoff(n: u32) -> Duration {
    if n <= 1 {
        return Duration::ZERO;
    }
    let exp = (n - 2).min(16);
    Duration::from_millis(500u64.saturating_mul(1 << exp)).min(MAX_BACKOFF)
}

async fn reconcile_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => break,
            () = shared.wake.notified() => {}
            _ = tick.tick() => {}
        }
        shared.reconcile();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn scale(&self, replicas: u32) -> Result<(), Error> {
        if !(1..=MAX_REPLICAS).contains(&replicas) {
            return Err(Error::Config(format!(
                "replicas must be between 1 and {MAX_REPLICAS}"
            )));
        }
        let previous = std::mem::replace(&mut self.lock().desired, replicas);
        if previous != replicas {
            tracing::info!(from = previous, to = replicas, "scaling");
        }
        self.wake.notify_one();
        Ok(())
    }

    /// One reconcile pass: observe, [`decide`], act (see the module doc).
    fn reconcile(self: &Arc<Self>) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let now = Instant::now();
        let published = self.table.borrow().clone();
        let mut st = self.lock();
        let pods: Vec<PodView> = (0..st.replicas)
            .filter_map(|ordinal| pod_view(&st, ordinal))
            .collect();
        let inputs = Inputs {
            desired_replicas: st.desired,
            pods: &pods,
            table: &published,
            drain_elapsed: st.drain_since.map_or(Duration::ZERO, |t| now - t),
            age: now - st.started,
        };
        let decision = match decide(inputs, &self.config.decide) {
            Ok(decision) => decision,
            Err(e) => {
                tracing::error!(error = %e, "cannot decide");
                return;
            }
        };

        // Pods removed by the drain whose processes still run (telling their clients to
        // reconnect) stay in the table until they exit: see `keep_lingering`.
        let lingering: Vec<NodeName> = st
            .pods
            .iter()
            .filter(|(ordinal, pod)| **ordinal >= decision.replicas && pod.proc.is_some())
            .map(|(_, pod)| pod.name.clone())
            .filter(|name| published.nodes.contains_key(name))
            .collect();
        let next = crate::decide::keep_lingering(&published, &decision.table, &lingering);
        if decision.publish && next.epoch != published.epoch {
            let table = &next;
            let owners: Vec<String> = table
                .counts()
                .iter()
                .map(|(n, k)| format!("{n}={k}"))
                .collect();
            tracing::info!(
                epoch = table.epoch,
                owners = %owners.join(" "),
                moves = table.moves.len(),
                draining = table.draining.len(),
                "published table"
            );
            self.table.send_replace(Arc::new(next.clone()));
        }

        if phase(&decision.step) != phase(&st.step) {
            tracing::info!(phase = phase(&decision.step), "scale-down step");
        }
        if draining_in_progress(&decision.step) {
            st.drain_since.get_or_insert(now);
        } else {
            st.drain_since = None;
        }
        match &decision.stuck {
            Some(stuck) => {
                if st
                    .stuck_logged
                    .is_none_or(|t| now.duration_since(t) >= STUCK_LOG_EVERY)
                {
                    tracing::error!(
                        "{stuck}; not stopping anything, still retrying (Kubernetes: Degraded)"
                    );
                    st.stuck_logged = Some(now);
                }
            }
            None => {
                if st.stuck.is_some() {
                    tracing::info!("scale-down no longer stuck");
                }
                st.stuck_logged = None;
            }
        }
        st.step = decision.step.clone();
        st.stuck = decision.stuck.clone();

        for name in &decision.stop {
            let proc = ordinal_of(name)
                .and_then(|o| st.pods.get_mut(&o))
                .and_then(|p| p.proc.as_mut());
            if let Some(proc) = proc
                && !proc.stopping
            {
                tracing::info!(node = %name, "drained; stopping it (SIGTERM)");
                proc.stopping = true;
                proc.stop.cancel();
            }
        }
        st.replicas = decision.replicas;
        let replicas = st.replicas;
        st.pods
            .retain(|&ordinal, pod| ordinal < replicas || pod.proc.is_some());

        for name in &decision.start {
            let Some(ordinal) = ordinal_of(name) else {
                continue;
            };
            let pod = st.pods.entry(ordinal).or_insert_with(|| Pod {
                name: name.clone(),
                generation: 0,
                restarts: 0,
                crashes_in_a_row: 0,
                not_before: None,
                proc: None,
            });
            if pod.proc.is_some() || pod.not_before.is_some_and(|t| now < t) {
                continue;
            }
            pod.generation += 1;
            let stop = self.shutdown.child_token();
            pod.proc = Some(Proc {
                stop: stop.clone(),
                pid: None,
                stopping: false,
                ready: false,
                probe_failures: 0,
                client: None,
                peer: None,
                report: None,
                status: None,
            });
            self.tasks.spawn(process::supervise(
                self.clone(),
                ordinal,
                name.clone(),
                pod.generation,
                stop,
            ));
        }

        let view = build_view(&st, &self.table.borrow(), &self.config);
        drop(st);
        self.view.send_replace(Arc::new(view));
    }

    /// The view as of now (not waiting for a reconcile pass).
    fn view_now(&self) -> ClusterView {
        let table = self.table.borrow().clone();
        build_view(&self.lock(), &table, &self.config)
    }

    /// Runs `update` on the current process of pod `ordinal` if it is still incarnation
    /// `generation`; wakes the reconcile loop when `update` says something changed.
    fn update_proc(&self, ordinal: u32, generation: u64, update: impl FnOnce(&mut Proc) -> bool) {
        let changed = {
            let mut st = self.lock();
            match st
                .pods
                .get_mut(&ordinal)
                .filter(|p| p.generation == generation)
                .and_then(|p| p.proc.as_mut())
            {
                Some(proc) => update(proc),
                None => false,
            }
        };
        if changed {
            self.wake.notify_one();
        }
    }

    /// Records a probe result: ready after one success, not ready after two failures in a row.
    fn probed(&self, ordinal: u32, generation: u64, ok: bool, status: Option<process::Status>) {
        let mut became_ready = false;
        self.update_proc(ordinal, generation, |proc| {
            let was_ready = proc.ready;
            if ok {
                proc.probe_failures = 0;
                proc.ready = true;
            } else {
                proc.probe_failures = proc.probe_failures.saturating_add(1);
                if proc.probe_failures >= 2 {
                    proc.ready = false;
                }
            }
            became_ready = proc.ready && !was_ready;
            let report = status.as_ref().map(|s| s.report.clone());
            let report_changed = report.is_some() && report != proc.report;
            if let Some(s) = status {
                proc.report = Some(s.report);
                proc.status = Some(s.raw);
            }
            was_ready != proc.ready || report_changed
        });
        if became_ready {
            let mut st = self.lock();
            if let Some(pod) = st.pods.get_mut(&ordinal) {
                pod.crashes_in_a_row = 0;
                pod.not_before = None;
            }
        }
    }

    /// The process of pod `ordinal`, incarnation `generation`, is gone.
    fn exited(&self, ordinal: u32, generation: u64, expected: bool) {
        {
            let mut st = self.lock();
            let replicas = st.replicas;
            let Some(pod) = st
                .pods
                .get_mut(&ordinal)
                .filter(|p| p.generation == generation)
            else {
                return;
            };
            pod.proc = None;
            if !expected {
                pod.restarts += 1;
                pod.crashes_in_a_row += 1;
                pod.not_before = Some(Instant::now() + backoff(pod.crashes_in_a_row));
            }
            if ordinal >= replicas {
                st.pods.remove(&ordinal);
            }
        }
        self.wake.notify_one();
    }
}

/// What [`decide`] sees of pod `ordinal`.
fn pod_view(st: &State, ordinal: u32) -> Option<PodView> {
    let Some(pod) = st.pods.get(&ordinal) else {
        // Not started yet: a pod that should exist but has no process.
        return pod_name(POD_PREFIX, ordinal).ok().map(|name| PodView {
            name,
            running: false,
            ready: false,
            info: None,
            report: None,
            terminating: false,
        });
    };
    let proc = pod.proc.as_ref();
    let info = proc.and_then(|p| {
        Some(NodeInfo {
            peer_addr: p.peer?.to_string(),
            client_addr: p.client.map(|a| a.to_string()),
        })
    });
    Some(PodView {
        name: pod.name.clone(),
        running: proc.is_some(),
        ready: proc.is_some_and(|p| p.ready),
        info,
        report: proc.and_then(|p| p.report.clone()),
        // A stop the driver sent is this pod's `deletionTimestamp`.
        terminating: proc.is_some_and(|p| p.stopping),
    })
}

fn build_view(st: &State, table: &AssignmentTable, config: &Config) -> ClusterView {
    let counts = table.counts();
    let nodes = st
        .pods
        .values()
        .map(|pod| {
            let proc = pod.proc.as_ref();
            let client = proc.and_then(|p| p.client);
            NodeView {
                name: pod.name.to_string(),
                pid: proc.and_then(|p| p.pid),
                client_url: client.map(|a| format!("http://{a}")),
                ws_url: client.map(|a| format!("ws://{a}/ws")),
                peer_addr: proc.and_then(|p| p.peer).map(|a| a.to_string()),
                running: proc.is_some(),
                ready: proc.is_some_and(|p| p.ready),
                draining: table.draining.contains(&pod.name),
                stopping: proc.is_some_and(|p| p.stopping),
                restarts: pod.restarts,
                shards: counts.get(&pod.name).copied().unwrap_or(0),
                status: proc.and_then(|p| p.status.clone()),
            }
        })
        .collect();
    let names = |set: &std::collections::BTreeSet<NodeName>| -> Vec<String> {
        set.iter().map(ToString::to_string).collect()
    };
    let (draining, lagging, pending) = match &st.step {
        DrainStep::MarkDraining(set) | DrainStep::Remove(set) => (names(set), vec![], vec![]),
        DrainStep::WaitForEpoch { lagging, .. } => (
            names(&table.draining),
            lagging.iter().map(ToString::to_string).collect(),
            vec![],
        ),
        DrainStep::WaitForMoves { pending } => (names(&table.draining), vec![], pending.clone()),
        DrainStep::Steady => (vec![], vec![], vec![]),
    };
    ClusterView {
        admin_url: config.admin_url.clone(),
        table_url: config.table_url.clone(),
        desired_replicas: st.desired,
        replicas: st.replicas,
        epoch: table.epoch,
        shards: table.shards,
        nodes,
        shards_per_node: counts
            .into_iter()
            .map(|(n, k)| (n.to_string(), k))
            .collect(),
        moves_in_flight: table.moves.clone(),
        drain: DrainView {
            phase: phase(&st.step).to_string(),
            draining,
            lagging,
            pending,
            elapsed_secs: st.drain_since.map_or(0, |t| t.elapsed().as_secs()),
            stuck: st.stuck.as_ref().map(ToString::to_string),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crashing_pod_is_started_again_at_once_then_ever_more_slowly() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(5), Duration::from_secs(4));
        assert_eq!(backoff(6), Duration::from_secs(8));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(1000), MAX_BACKOFF);
    }

    #[test]
    fn options_out_of_range_are_refused() {
        let bad = [
            LocalOptions {
                nodes: 0,
                ..LocalOptions::default()
            },
            LocalOptions {
                nodes: MAX_REPLICAS + 1,
                ..LocalOptions::default()
            },
            LocalOptions {
                shards: 0,
                ..LocalOptions::default()
            },
            LocalOptions {
                max_moves_per_node: 0,
                ..LocalOptions::default()
            },
        ];
        for options in bad {
            assert!(validate(&options).is_err(), "{options:?}");
        }
        assert!(validate(&LocalOptions::default()).is_ok());
    }
}
