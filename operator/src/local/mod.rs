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
//! - **The controller** ([`reconcile`]). A reconcile loop runs every `interval` and whenever
//!   something changes (a probe flips, a report changes, a process exits, a scale request
//!   arrives), calls [`crate::decide::decide`] and acts: publish the table if its epoch changed,
//!   start pods, SIGTERM drained pods. A scale-down past its deadline is logged as stuck, naming
//!   the node and the moves it waits for, every 10 s; nothing is killed early.
//! - **Planned exits.** A pod the driver stops, or whose node says `terminating` after a
//!   SIGTERM sent by hand, is a draining member: its shards are planned off it at once and the
//!   node hands them off before it exits. Its exit is not a crash: it is started again at once
//!   (a new process under the same name) and gets shards again once ready, by hand-off.
//! - **Rolling restart** ([`rollout`], `POST /restart`, `roomshard-operator restart`): every
//!   node gets a new process, highest ordinal first, one at a time, as a StatefulSet rolls.
//! - **Autoscaling** ([`autoscaler`], `--autoscale MIN:MAX` with targets): each pass reads the
//!   nodes' loads from their `/status` and may change the desired count, as `POST /scale` would.
//!
//! The admin port also serves `GET /cluster` ([`ClusterView`]), `POST /scale`
//! (`{"replicas": M}`) and `POST /restart`. Node stderr goes to the driver's stderr, each line prefixed with the
//! node's name, or to `{log_dir}/{name}.log` when [`LocalOptions::log_dir`] is set.
//!
//! Shutdown ([`LocalCluster::shutdown`], Ctrl-C in the CLI) SIGTERMs every node, waits up to
//! [`LocalOptions::kill_after`], SIGKILLs stragglers and removes the driver's temporary directory.
//! Every child is also spawned with `kill_on_drop`, so dropping the cluster leaves no process
//! behind either.
//!
//! The parts, one concept per file: [`options`] (what to run), [`pods`] (what the driver knows
//! of each pod and process), [`process`] (one process: spawn, announce, probe, stop),
//! [`reconcile`] (the loop: observe, decide, act), [`rollout`] (rolling restart steps),
//! [`view`] (`GET /cluster`), [`map`] (`GET /map.json`), [`admin`] (the HTTP port),
//! [`workdir`] (the secret's directory).

mod admin;
mod autoscaler;
mod map;
mod options;
mod pods;
mod process;
mod reconcile;
mod rollout;
mod view;
mod workdir;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use shard::{AssignmentTable, PlanOptions};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Error;
use crate::decide::DecideOptions;
pub use admin::{RestartAnswer, ScaleRequest};
pub use autoscaler::AutoscalingView;
pub use options::{LocalOptions, MAX_REPLICAS, parse_bounds};
use pods::State;
use rollout::Rollout;
pub use view::{ClusterView, DrainView, NodeView, ReplicationView, RolloutView};
use workdir::WorkDir;

/// Pod names are `node-{ordinal}`.
pub const POD_PREFIX: &str = "node";

/// How long a new cluster waits for all its nodes to be ready before assigning shards anyway.
const INITIAL_GRACE: Duration = Duration::from_secs(10);

/// The options after validation, plus what `start` set up.
#[derive(Debug)]
struct Config {
    node_bin: PathBuf,
    secret_file: PathBuf,
    admin_url: String,
    table_url: String,
    shards: u32,
    handoff_timeout: Duration,
    exit_drain_timeout: Duration,
    shutdown_grace: Duration,
    /// How long a stopped node may take before SIGKILL ([`LocalOptions::kill_after`]).
    kill_after: Duration,
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
    /// Set when the whole cluster stops: no more planning (see [`LocalCluster::shutdown`]).
    releasing: std::sync::atomic::AtomicBool,
    /// The published table; long-poll waiters subscribe.
    table: watch::Sender<Arc<AssignmentTable>>,
    /// The view after the last reconcile pass; [`LocalCluster::wait_for`] subscribes.
    view: watch::Sender<Arc<ClusterView>>,
    /// Cancelled on shutdown; every pod's stop token is a child of it.
    shutdown: CancellationToken,
    /// The reconcile loop, the admin server and the pod supervisors.
    tasks: TaskTracker,
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
        options::validate(&options)?;
        let node_bin = match &options.node_bin {
            Some(path) if path.is_file() => path.clone(),
            Some(path) => {
                return Err(Error::NodeBinary(format!(
                    "{} is not a file",
                    path.display()
                )));
            }
            None => options::default_node_bin()?,
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
            exit_drain_timeout: options.exit_drain_timeout,
            shutdown_grace: options.shutdown_grace,
            kill_after: options.kill_after(),
            interval: options.interval,
            node_args: options.node_args.clone(),
            log_dir: options.log_dir.clone(),
            decide: DecideOptions {
                plan: PlanOptions {
                    max_moves_per_node: options.max_moves_per_node,
                    replication: options.replication,
                },
                balance: options.balance.clone(),
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
                autoscaler: options.autoscale.clone().map(autoscaler::Autoscaler::new),
                ..State::new(options.nodes)
            }),
            view: watch::Sender::new(Arc::new(ClusterView::default())),
            table: watch::Sender::new(table),
            wake: Notify::new(),
            releasing: std::sync::atomic::AtomicBool::new(false),
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
        shared.tasks.spawn(reconcile::run(shared.clone()));
        reconcile::pass(&shared);
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

    /// Starts a rolling restart: every node gets a new process, one at a time, each drained
    /// first (see [`rollout`]). Returns how many nodes it will roll.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a rolling restart is already under way.
    pub fn restart(&self) -> Result<u32, Error> {
        self.shared.restart()
    }

    /// Sends SIGTERM to node `name`, as `kill -TERM` by hand would, and returns the pid. The
    /// node hands its shards off before it exits, and the driver starts it again.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when no process runs for `name`, [`Error::Io`] when `kill` fails.
    pub async fn sigterm(&self, name: &str) -> Result<u32, Error> {
        let pid = self.pid_of(name)?;
        process::signal("TERM", pid).await?;
        Ok(pid)
    }

    fn pid_of(&self, name: &str) -> Result<u32, Error> {
        self.nodes()
            .into_iter()
            .find(|n| n.name == name)
            .and_then(|n| n.pid)
            .ok_or_else(|| Error::Config(format!("no process runs for {name}")))
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
        let pid = self.pid_of(name)?;
        process::signal("KILL", pid).await?;
        Ok(pid)
    }

    /// Stops every node (SIGTERM, then SIGKILL after the grace period), the reconcile loop and
    /// the admin server, and removes the temporary directory.
    ///
    /// The whole cluster stops, so there is nobody to hand rooms to: first the driver publishes
    /// a table in which nobody owns anything (and stops planning), so that every node's exit
    /// drain finds nothing to hand off and each exits at once instead of waiting out its exit
    /// drain timeout.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if the tasks did not finish, [`Error::Io`] if the directory could not
    /// be removed.
    pub async fn shutdown(self) -> Result<(), Error> {
        tracing::info!("stopping every node");
        self.shared.release_all().await;
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        let bound = self.shared.config.kill_after + Duration::from_secs(5);
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

    fn restart(&self) -> Result<u32, Error> {
        let mut st = self.lock();
        if let Some(rollout) = &st.rollout {
            return Err(Error::Config(format!(
                "a rolling restart is already under way ({} of {} nodes done)",
                rollout.updated, rollout.total
            )));
        }
        let replicas = st.replicas;
        st.rollout = Some(Rollout::new(replicas));
        drop(st);
        tracing::info!(nodes = replicas, "rolling restart requested");
        self.wake.notify_one();
        Ok(replicas)
    }

    /// Publishes a table in which nobody owns anything and waits (briefly) until every running
    /// node reports it: the cluster is stopping as a whole.
    async fn release_all(&self) {
        /// How long stopping nodes get to read the last table.
        const RELEASE_WAIT: Duration = Duration::from_secs(3);
        self.releasing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let current = self.table.borrow().clone();
        let mut last = AssignmentTable::empty(current.shards);
        last.nodes = current.nodes.clone();
        last.epoch = current.epoch + 1;
        let epoch = last.epoch;
        self.table.send_replace(Arc::new(last));
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        let mut tick = tokio::time::interval(self.config.interval.min(Duration::from_millis(50)));
        while tokio::time::Instant::now() < deadline {
            let caught_up = self.lock().pods.values().all(|pod| {
                pod.proc
                    .as_ref()
                    .is_none_or(|p| p.report.as_ref().is_some_and(|r| r.epoch >= epoch))
            });
            if caught_up {
                return;
            }
            tick.tick().await;
        }
    }

    /// The view as of now (not waiting for a reconcile pass).
    fn view_now(&self) -> ClusterView {
        let table = self.table.borrow().clone();
        view::build(&self.lock(), &table, &self.config)
    }

    /// Runs `update` on the current process of pod `ordinal` if it is still incarnation
    /// `generation`; wakes the reconcile loop when `update` says something changed.
    fn update_proc(
        &self,
        ordinal: u32,
        generation: u64,
        update: impl FnOnce(&mut pods::Proc) -> bool,
    ) {
        let changed = self
            .lock()
            .proc_mut(ordinal, generation)
            .is_some_and(update);
        if changed {
            self.wake.notify_one();
        }
    }

    /// The process of pod `ordinal`, incarnation `generation`, announced its addresses.
    fn announced(
        &self,
        ordinal: u32,
        generation: u64,
        client: std::net::SocketAddr,
        peer: std::net::SocketAddr,
    ) {
        let mut st = self.lock();
        let Some(pod) = st
            .pods
            .get_mut(&ordinal)
            .filter(|p| p.generation == generation)
        else {
            return;
        };
        pod.client_port = Some(client.port());
        if let Some(proc) = pod.proc.as_mut() {
            proc.client = Some(client);
            proc.peer = Some(peer);
        }
        drop(st);
        self.wake.notify_one();
    }

    /// The client port pod `ordinal` listens on: the one it had before, or 0 (any) the first
    /// time.
    fn client_port(&self, ordinal: u32) -> u16 {
        self.lock()
            .pods
            .get(&ordinal)
            .and_then(|p| p.client_port)
            .unwrap_or(0)
    }

    /// Records a probe result (see [`pods::Proc::probed`]).
    fn probed(&self, ordinal: u32, generation: u64, ok: bool, status: Option<process::Status>) {
        let mut became_ready = false;
        self.update_proc(ordinal, generation, |proc| {
            let was_ready = proc.ready;
            let report = status.as_ref().map(|s| s.report.clone());
            let changed = proc.probed(ok, report);
            if let Some(s) = status {
                proc.status = Some(s.raw);
            }
            became_ready = proc.ready && !was_ready;
            changed
        });
        if became_ready {
            let mut st = self.lock();
            if let Some(pod) = st.pods.get_mut(&ordinal) {
                pod.crashes_in_a_row = 0;
                pod.not_before = None;
            }
        }
    }

    /// The process of pod `ordinal`, incarnation `generation`, is gone (see
    /// [`State::exited`]).
    fn exited(&self, ordinal: u32, generation: u64, stopped: bool) {
        let changed = self
            .lock()
            .exited(ordinal, generation, stopped, Instant::now());
        if changed {
            self.wake.notify_one();
        }
    }
}
