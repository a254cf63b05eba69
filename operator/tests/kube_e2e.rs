//! End to end on (in-memory) Kubernetes with the real binaries: memkube as the API server, the
//! real `kubectl` for `apply` and `patch`, the `roomshard-operator` binary as the controller, and
//! a small pod runner in this harness that plays the StatefulSet controller and the kubelet: it
//! creates and deletes the pods of the operator's StatefulSet and runs a real `roomshard-node`
//! process for each, with the env the downward API would give, the peer Secret written to a
//! directory, its own loopback IP on the template's ports, and its Ready condition from
//! `/readyz`.
//!
//! Clients connect over WebSocket, join rooms spread over the three owners and exchange
//! messages; the cluster is then scaled 3 -> 2 with `kubectl patch` while `roomshard-bench`
//! loads it. The test checks that the drain completes, that the StatefulSet shrank only after
//! the table in the ConfigMap had moved every shard off the removed pod (from the order of the
//! watch events), that the pod went away only then, and that no message was lost.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`). kubectl comes from
//! `$KUBECTL`, else `.venv-deploy/bin/kubectl` (`tests/deploy/run.sh --setup`); without either
//! the objects are applied and patched with kube's client instead, and the test says so.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use memkube::{ApiServer, Store};
use operator::k8s::crd::{ChatCluster, ChatClusterStatus};
use serde_json::{Value, json};
use shard::{AssignmentTable, RoomId};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const NS: &str = "default";
const CLUSTER: &str = "chat";
const SHARDS: u32 = 64;
/// The finalizer the pod runner puts on its pods, so a delete leaves the pod Terminating until
/// its process has stopped, as the kubelet does.
const KUBELET_FINALIZER: &str = "e2e.roomshard.dev/kubelet";

fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `$KUBECTL`, else the one `tests/deploy/run.sh --setup` installs.
fn find_kubectl() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("KUBECTL").filter(|k| !k.is_empty()) {
        return Some(PathBuf::from(k));
    }
    let venv = workspace().join(".venv-deploy/bin/kubectl");
    venv.exists().then_some(venv)
}

/// Deadline-bounded polling.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// kubectl against memkube, or kube's client when there is no kubectl.
struct Kubectl {
    bin: Option<PathBuf>,
    kubeconfig: PathBuf,
    client: Client,
}

impl Kubectl {
    async fn run(&self, args: &[&str]) -> TestResult {
        let bin = self.bin.as_ref().expect("kubectl");
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            Command::new(bin)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args)
                .kill_on_drop(true)
                .output(),
        )
        .await??;
        eprintln!(
            "kubectl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if !out.status.success() {
            return Err(format!("kubectl {args:?} failed: {}", out.status).into());
        }
        Ok(())
    }

    async fn apply_crd(&self) -> TestResult {
        let path = workspace().join("crds/chatcluster.yaml");
        if self.bin.is_some() {
            return self.run(&["apply", "-f", &path.to_string_lossy()]).await;
        }
        let crd: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
        Api::<CustomResourceDefinition>::all(self.client.clone())
            .create(&PostParams::default(), &crd)
            .await?;
        Ok(())
    }

    async fn apply_cluster(&self, dir: &Path, doc: &Value) -> TestResult {
        if self.bin.is_some() {
            let path = dir.join("chatcluster.yaml");
            std::fs::write(&path, serde_yaml::to_string(doc)?)?;
            return self.run(&["apply", "-f", &path.to_string_lossy()]).await;
        }
        let cluster: ChatCluster = serde_json::from_value(doc.clone())?;
        Api::<ChatCluster>::namespaced(self.client.clone(), NS)
            .create(&PostParams::default(), &cluster)
            .await?;
        Ok(())
    }

    async fn scale(&self, replicas: u32) -> TestResult {
        let patch = json!({"spec": {"replicas": replicas}});
        if self.bin.is_some() {
            return self
                .run(&[
                    "patch",
                    "chat",
                    CLUSTER,
                    "--type",
                    "merge",
                    "-p",
                    &patch.to_string(),
                ])
                .await;
        }
        Api::<ChatCluster>::namespaced(self.client.clone(), NS)
            .patch(CLUSTER, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The pod runner: StatefulSet controller + kubelet.
// ---------------------------------------------------------------------------------------------

/// A running node process of one pod.
struct PodProc {
    child: Option<Child>,
    ready: bool,
    terminating: Option<tokio::task::JoinHandle<()>>,
}

struct PodRunner {
    store: Store,
    node_bin: PathBuf,
    kubeconfig: PathBuf,
    dir: PathBuf,
    /// `127.X.0.` — the pod of ordinal `o` gets `{prefix}{o + 2}`.
    ip_prefix: String,
    procs: BTreeMap<u32, PodProc>,
}

fn ordinal(pod: &str) -> Option<u32> {
    pod.strip_prefix(&format!("{CLUSTER}-"))?.parse().ok()
}

impl PodRunner {
    fn ip(&self, ordinal: u32) -> String {
        format!("{}{}", self.ip_prefix, ordinal + 2)
    }

    async fn run(mut self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            if let Err(e) = self.step().await {
                eprintln!("pod runner: {e}");
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(300)) => {}
            }
        }
        self.shutdown().await;
    }

    async fn step(&mut self) -> TestResult {
        let Some(sts) = self.store.get_typed::<StatefulSet>(NS, CLUSTER) else {
            return Ok(());
        };
        let spec = sts.spec.clone().ok_or("statefulset without spec")?;
        let replicas = u32::try_from(spec.replicas.unwrap_or(1))?;
        let labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();

        // The StatefulSet controller: pods 0..replicas exist, the others are deleted.
        for o in 0..replicas {
            let name = format!("{CLUSTER}-{o}");
            if self.store.get("pods", NS, &name).is_none() && !self.procs.contains_key(&o) {
                let ip = self.ip(o);
                self.store.create(json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "namespace": NS, "labels": labels,
                        "finalizers": [KUBELET_FINALIZER],
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                            "name": CLUSTER, "uid": sts.uid(), "controller": true,
                            "blockOwnerDeletion": true}]},
                    "spec": spec.template.spec,
                    "status": {"phase": "Pending", "podIP": ip, "podIPs": [{"ip": ip}]},
                }))?;
            }
        }
        for pod in self.store.list("pods", Some(NS)) {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            if ordinal(name).is_some_and(|o| o >= replicas)
                && pod["metadata"].get("deletionTimestamp").is_none()
            {
                eprintln!("pod runner: statefulset has {replicas} replicas: deleting {name}");
                self.store.delete("pods", NS, name)?;
            }
        }

        // The kubelet.
        for o in 0..replicas.max(8) {
            let name = format!("{CLUSTER}-{o}");
            let pod = self.store.get_typed::<Pod>(NS, &name);
            match (pod, self.procs.contains_key(&o)) {
                (None, true) => {
                    // Gone: the termination task has finished and removed the finalizer.
                    if let Some(p) = self.procs.remove(&o)
                        && let Some(t) = p.terminating
                    {
                        let _ = t.await;
                    }
                }
                (Some(pod), false) if pod.metadata.deletion_timestamp.is_none() => {
                    self.start(o, &pod)?;
                }
                (Some(pod), false) => {
                    // Terminating with nothing running: let it go.
                    self.remove_finalizer(&pod.name_any());
                }
                (Some(pod), true) if pod.metadata.deletion_timestamp.is_some() => {
                    self.terminate(o, &pod);
                }
                (Some(_), true) => self.probe(o).await?,
                (None, false) => {}
            }
        }
        Ok(())
    }

    /// Starts the node of pod `o` with the container's args and env.
    fn start(&mut self, o: u32, pod: &Pod) -> TestResult {
        let name = pod.name_any();
        let ip = self.ip(o);
        let spec = pod.spec.clone().ok_or("pod without spec")?;
        let container = spec.containers.first().ok_or("pod without container")?;
        let pod_dir = self.dir.join("pods").join(&name);
        // Volumes: secrets written out, emptyDirs created; mount paths rewritten in the args.
        let mut mounts = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let volume = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .ok_or("mount of an unknown volume")?;
            let local = pod_dir.join("volumes").join(&volume.name);
            std::fs::create_dir_all(&local)?;
            if let Some(source) = &volume.secret {
                let secret_name = source.secret_name.clone().unwrap_or_default();
                let Some(secret) = self.store.get_typed::<Secret>(NS, &secret_name) else {
                    eprintln!("pod runner: {name} waits for Secret {secret_name}");
                    return Ok(());
                };
                let data = secret.data.unwrap_or_default();
                let items: Vec<(String, String)> = match &source.items {
                    Some(items) => items
                        .iter()
                        .map(|i| (i.key.clone(), i.path.clone()))
                        .collect(),
                    None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
                };
                for (key, path) in items {
                    let value = data.get(&key).ok_or("secret key missing")?;
                    std::fs::write(local.join(path), &value.0)?;
                }
            }
            mounts.push((mount.mount_path.clone(), local));
        }
        let args: Vec<String> = container
            .args
            .iter()
            .flatten()
            .map(|arg| {
                let arg = arg.replace("=0.0.0.0:", &format!("={ip}:"));
                // A flag's value under a mount path points into the local directory instead.
                let Some((flag, value)) = arg.split_once('=') else {
                    return arg;
                };
                let mount = mounts
                    .iter()
                    .filter(|(path, _)| value.starts_with(&format!("{path}/")))
                    .max_by_key(|(path, _)| path.len());
                match mount {
                    Some((path, local)) => {
                        format!("{flag}={}{}", local.display(), &value[path.len()..])
                    }
                    None => arg,
                }
            })
            .collect();
        let mut command = Command::new(&self.node_bin);
        command.args(&args);
        for env in container.env.iter().flatten() {
            let value = match (&env.value, &env.value_from) {
                (Some(v), _) => v.clone(),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.name") => name.clone(),
                        Some("metadata.namespace") => NS.to_owned(),
                        Some("status.podIP") => ip.clone(),
                        other => return Err(format!("unsupported env source {other:?}").into()),
                    }
                }
                (None, None) => String::new(),
            };
            command.env(&env.name, value);
        }
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = command
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        eprintln!("pod runner: started {name} on {ip}: {args:?}");
        self.procs.insert(
            o,
            PodProc {
                child: Some(child),
                ready: false,
                terminating: None,
            },
        );
        Ok(())
    }

    /// The readiness probe: `/readyz` on the client port sets the Ready condition.
    async fn probe(&mut self, o: u32) -> TestResult {
        let name = format!("{CLUSTER}-{o}");
        let authority = format!("{}:8080", self.ip(o));
        let Some(p) = self.procs.get_mut(&o) else {
            return Ok(());
        };
        let exited = match p.child.as_mut() {
            Some(c) => c.try_wait()?.is_some(),
            None => true,
        };
        let ready = !exited
            && operator::http::get(&authority, "/readyz", Duration::from_secs(1))
                .await
                .is_ok_and(|r| r.is_success());
        if exited && p.ready {
            eprintln!("pod runner: the node of {name} exited");
        }
        if ready != p.ready {
            p.ready = ready;
            eprintln!("pod runner: {name} ready={ready}");
            self.store.set_pod_ready(NS, &name, ready)?;
        }
        Ok(())
    }

    /// A pod being deleted: preStop, SIGTERM, wait up to the grace period, SIGKILL, then the
    /// pod object goes (the finalizer is removed).
    fn terminate(&mut self, o: u32, pod: &Pod) {
        let Some(p) = self.procs.get_mut(&o) else {
            return;
        };
        if p.terminating.is_some() {
            return;
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let pre_stop = spec
            .containers
            .first()
            .and_then(|c| c.lifecycle.as_ref()?.pre_stop.as_ref()?.sleep.as_ref())
            .map_or(0, |s| s.seconds);
        let grace = spec.termination_grace_period_seconds.unwrap_or(30);
        let mut child = p.child.take();
        let store = self.store.clone();
        let name = pod.name_any();
        eprintln!("pod runner: terminating {name} (preStop {pre_stop}s, grace {grace}s)");
        p.terminating = Some(tokio::spawn(async move {
            let started = Instant::now();
            tokio::time::sleep(Duration::from_secs(u64::try_from(pre_stop).unwrap_or(0))).await;
            if let Some(child) = child.as_mut() {
                if let Some(pid) = child.id() {
                    let _ = Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .status()
                        .await;
                }
                let left = Duration::from_secs(u64::try_from(grace).unwrap_or(30))
                    .saturating_sub(started.elapsed());
                if tokio::time::timeout(left, child.wait()).await.is_err() {
                    eprintln!("pod runner: {name} still running after the grace period: SIGKILL");
                    let _ = child.kill().await;
                }
            }
            eprintln!("pod runner: {name} stopped after {:?}", started.elapsed());
            let _ = store.modify("pods", NS, &name, |pod| {
                pod["metadata"]["finalizers"] = json!([]);
            });
        }));
    }

    fn remove_finalizer(&self, name: &str) {
        let _ = self.store.modify("pods", NS, name, |pod| {
            pod["metadata"]["finalizers"] = json!([]);
        });
    }

    /// Stops every node: SIGKILL, as the end of the test needs nothing graceful.
    async fn shutdown(&mut self) {
        for (_, mut p) in std::mem::take(&mut self.procs) {
            if let Some(t) = p.terminating.take() {
                t.abort();
            }
            if let Some(mut child) = p.child.take() {
                let _ = child.kill().await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What happened, in resourceVersion order: the StatefulSet, the ConfigMap and the pods.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Seen {
    Replicas(i32),
    Table(Box<AssignmentTable>),
    PodTerminating(String),
    PodDeleted(String),
}

type History = Arc<Mutex<Vec<(u64, Seen)>>>;

fn rv(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn record(history: &History, at: u64, seen: Seen) {
    history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((at, seen));
}

fn watch_history(client: &Client, history: &History, stop: &CancellationToken) {
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let h = history.clone();
    let s = stop.clone();
    tokio::spawn(async move {
        let mut events = watcher(sts, watcher::Config::default()).boxed();
        loop {
            let event = tokio::select! { () = s.cancelled() => break, e = events.next() => e };
            let Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) = event else {
                continue;
            };
            let replicas = o.spec.as_ref().and_then(|s| s.replicas).unwrap_or(-1);
            record(&h, rv(&o.metadata), Seen::Replicas(replicas));
        }
    });
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let h = history.clone();
    let s = stop.clone();
    tokio::spawn(async move {
        let mut events = watcher(cms, watcher::Config::default()).boxed();
        loop {
            let event = tokio::select! { () = s.cancelled() => break, e = events.next() => e };
            let Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))) = event else {
                continue;
            };
            if o.name_any() != format!("{CLUSTER}-assignments") {
                continue;
            }
            if let Some(t) = o.data.as_ref().and_then(|d| d.get("table.json"))
                && let Ok(table) = AssignmentTable::from_json(t)
            {
                record(&h, rv(&o.metadata), Seen::Table(Box::new(table)));
            }
        }
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let h = history.clone();
    let s = stop.clone();
    tokio::spawn(async move {
        let mut events = watcher(pods, watcher::Config::default()).boxed();
        loop {
            let event = tokio::select! { () = s.cancelled() => break, e = events.next() => e };
            match event {
                Some(Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)))
                    if o.metadata.deletion_timestamp.is_some() =>
                {
                    record(&h, rv(&o.metadata), Seen::PodTerminating(o.name_any()));
                }
                Some(Ok(watcher::Event::Delete(o))) => {
                    record(&h, rv(&o.metadata), Seen::PodDeleted(o.name_any()));
                }
                _ => {}
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// A WebSocket client.
// ---------------------------------------------------------------------------------------------

struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    room: String,
    last_seq: u64,
    seqs: Vec<u64>,
    ids: HashSet<String>,
}

impl WsClient {
    async fn connect(ip: &str, user: &str, room: &str) -> WsClient {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(format!("ws://{ip}:8080/ws?user={user}")),
        )
        .await
        .expect("connect in time")
        .expect("handshake");
        WsClient {
            ws,
            room: room.to_owned(),
            last_seq: 0,
            seqs: Vec::new(),
            ids: HashSet::new(),
        }
    }

    async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .expect("send");
    }

    async fn recv(&mut self, within: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(within, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    return serde_json::from_str(text.as_str()).ok();
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => return None,
            }
        }
    }

    /// Joins the room (with `since` after a reconnect) and returns the `joined` frame.
    async fn join(&mut self, since: Option<u64>) -> Value {
        let mut frame = json!({"op": "join", "room": self.room});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        self.send(frame).await;
        loop {
            let frame = self
                .recv(Duration::from_secs(15))
                .await
                .expect("`joined` in time");
            assert_ne!(frame["op"], "error", "join refused: {frame}");
            if frame["op"] == "joined" {
                for m in frame["history"].as_array().into_iter().flatten() {
                    self.note(m);
                }
                return frame;
            }
        }
    }

    fn note(&mut self, msg: &Value) {
        let seq = msg["seq"].as_u64().expect("seq");
        if seq <= self.last_seq {
            return;
        }
        assert_eq!(msg["room"], self.room.as_str());
        assert!(
            self.ids.insert(msg["id"].as_str().expect("id").to_owned()),
            "duplicate message {msg}"
        );
        self.seqs.push(seq);
        self.last_seq = seq;
    }

    /// Reads until `n` messages in all have arrived; any `error` fails the test.
    async fn receive_up_to(&mut self, n: usize) {
        while self.seqs.len() < n {
            let frame = self
                .recv(Duration::from_secs(15))
                .await
                .unwrap_or_else(|| panic!("message {} of {} in time", self.seqs.len() + 1, n));
            assert_ne!(frame["op"], "error", "error frame: {frame}");
            if frame["op"] == "msg" {
                self.note(&frame);
            }
        }
    }

    /// Waits for the node's `reconnect` (skipping messages, which are noted).
    async fn await_reconnect(&mut self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self
                .recv(left)
                .await
                .unwrap_or_else(|| panic!("no `reconnect` within {within:?}"));
            match frame["op"].as_str() {
                Some("reconnect") => return frame,
                Some("msg") => self.note(&frame),
                Some("error") => panic!("error frame: {frame}"),
                _ => {}
            }
        }
    }
}

async fn cluster_status(client: &Client) -> ChatClusterStatus {
    Api::<ChatCluster>::namespaced(client.clone(), NS)
        .get(CLUSTER)
        .await
        .ok()
        .and_then(|c| c.status)
        .unwrap_or_default()
}

async fn table(client: &Client) -> Option<AssignmentTable> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get_opt(&format!("{CLUSTER}-assignments"))
        .await
        .ok()??;
    AssignmentTable::from_json(cm.data?.get("table.json")?).ok()
}

fn settled(status: &ChatClusterStatus, replicas: i32) -> bool {
    status.phase.as_deref() == Some("Running")
        && status.ready_nodes == replicas
        && status.draining.is_empty()
        && status.moves_in_flight == 0
        && status.shards_per_node.len() == usize::try_from(replicas).unwrap_or(0)
        && status.shards_per_node.values().sum::<i32>() == i32::try_from(SHARDS).unwrap_or(0)
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Every listed node's `/status` reports the table's epoch.
async fn nodes_applied(ips: &[String], epoch: u64) -> bool {
    for ip in ips {
        let ok = operator::http::get(&format!("{ip}:7070"), "/status", Duration::from_secs(2))
            .await
            .ok()
            .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
            .is_some_and(|s| s["epoch"].as_u64() == Some(epoch));
        if !ok {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubectl_scale_down_drains_the_pod_before_removing_it_and_loses_nothing() -> TestResult {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("roomshard-kube-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    eprintln!("logs in {}", dir.display());
    // One loopback /24 per test process, so two runs at once do not share addresses.
    let ip_prefix = format!("127.{}.0.", 100 + std::process::id() % 150);
    let ips: Vec<String> = (0..3).map(|o| format!("{ip_prefix}{}", o + 2)).collect();

    // 1. The API server, the CRD and a ChatCluster.
    let server = ApiServer::start("127.0.0.1:0".parse()?).await?;
    let client = server.client()?;
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;
    let kubectl = Kubectl {
        bin: find_kubectl(),
        kubeconfig: kubeconfig.clone(),
        client: client.clone(),
    };
    match &kubectl.bin {
        Some(bin) => eprintln!("using kubectl {}", bin.display()),
        None => eprintln!(
            "kubectl not found (set KUBECTL or run tests/deploy/run.sh --setup): \
             applying and patching with kube's client instead"
        ),
    }
    let history: History = Arc::default();
    let stop = CancellationToken::new();
    watch_history(&client, &history, &stop);
    kubectl.apply_crd().await?;
    kubectl
        .apply_cluster(
            &dir,
            &json!({
                "apiVersion": "roomshard.dev/v1alpha1", "kind": "ChatCluster",
                "metadata": {"name": CLUSTER, "namespace": NS},
                "spec": {"replicas": 3, "shards": SHARDS, "image": "roomshard-node:e2e",
                         "handoffTimeout": "20s"},
            }),
        )
        .await?;

    // 2. The operator.
    let operator_log = std::fs::File::create(dir.join("operator.log"))?;
    let mut operator = Command::new(binary("roomshard-operator"))
        .args([
            "run",
            "--metrics-listen",
            "127.0.0.1:0",
            "--watch-namespace",
            NS,
            "--initial-grace",
            "3s",
            "--requeue-after",
            "10s",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAME", "roomshard-operator-e2e")
        .env("POD_NAMESPACE", NS)
        .stdin(Stdio::null())
        .stdout(operator_log.try_clone()?)
        .stderr(operator_log)
        .kill_on_drop(true)
        .spawn()?;

    // 3. The pod runner.
    let runner = PodRunner {
        store: server.store(),
        node_bin: binary("roomshard-node"),
        kubeconfig: kubeconfig.clone(),
        dir: dir.clone(),
        ip_prefix,
        procs: BTreeMap::new(),
    };
    let runner = tokio::spawn(runner.run(stop.clone()));

    let outcome = scenario(&client, &kubectl, &ips, &history).await;

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), runner).await;
    if let Some(pid) = operator.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(10), operator.wait())
        .await
        .is_err()
    {
        let _ = operator.kill().await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await;
    eprintln!("kube e2e took {:?}", started.elapsed());
    if outcome.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("logs kept in {}", dir.display());
    }
    outcome
}

async fn scenario(
    client: &Client,
    kubectl: &Kubectl,
    ips: &[String],
    history: &History,
) -> TestResult {
    // The cluster comes up: three ready nodes own every shard and run the table.
    let status = eventually("3 nodes settle", Duration::from_secs(120), || async {
        let s = cluster_status(client).await;
        settled(&s, 3).then_some(s)
    })
    .await;
    let before = eventually("the table is settled", Duration::from_secs(30), || async {
        table(client)
            .await
            .filter(|t| t.moves.is_empty() && t.draining.is_empty())
    })
    .await;
    eventually(
        "nodes applied the table",
        Duration::from_secs(30),
        || async { nodes_applied(ips, before.epoch).await.then_some(()) },
    )
    .await;
    eprintln!(
        "running: epoch {}, shards per node {:?}",
        status.epoch, status.shards_per_node
    );

    // 4. Two rooms per owner; in each a member on every node; all send, all receive.
    let mut rooms = Vec::new();
    for owner in ["chat-0", "chat-1", "chat-2"] {
        let mine = (0..1000)
            .map(|i| format!("kube-e2e-{i}"))
            .filter(|r| {
                before
                    .owner_of_room(&RoomId::new(r.as_str()).expect("room"))
                    .is_some_and(|o| o.as_str() == owner)
            })
            .take(2);
        rooms.extend(mine);
    }
    assert_eq!(rooms.len(), 6, "rooms on every owner");
    // (node ordinal, client)
    let mut clients: Vec<(usize, WsClient)> = Vec::new();
    for room in &rooms {
        for (o, ip) in ips.iter().enumerate() {
            let mut c = WsClient::connect(ip, &format!("{room}-u{o}"), room).await;
            c.join(None).await;
            clients.push((o, c));
        }
    }
    for (_, c) in clients.iter_mut() {
        for n in 0..2 {
            let room = c.room.clone();
            c.send(
                json!({"op": "send", "room": room, "text": format!("m{n}"), "cid": n.to_string()}),
            )
            .await;
        }
    }
    for (_, c) in clients.iter_mut() {
        c.receive_up_to(6).await;
        assert_eq!(c.seqs, (1..=6).collect::<Vec<_>>(), "room {}", c.room);
    }
    eprintln!(
        "{} clients on 3 nodes received every message",
        clients.len()
    );

    // 5. Load, then `kubectl patch` to 2 replicas.
    let nodes: Vec<String> = ips.iter().map(|ip| format!("ws://{ip}:8080")).collect();
    let mut bench = Command::new(binary("roomshard-bench"))
        .args([
            "--nodes",
            &nodes.join(","),
            "--rooms",
            "40",
            "--users",
            "3",
            "--rate",
            "5",
            "--duration",
            "35s",
            "--warmup",
            "1s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let patched_at = Instant::now();
    kubectl.scale(2).await?;

    // Clients on chat-2 are told to reconnect when it is stopped; they rejoin on chat-0 with
    // `since` and must miss nothing.
    for (o, c) in clients.iter_mut().filter(|(o, _)| *o == 2) {
        let frame = c.await_reconnect(Duration::from_secs(90)).await;
        eprintln!("client of chat-2 in {}: {frame}", c.room);
        let room = c.room.clone();
        let mut fresh = WsClient::connect(&ips[0], &format!("{room}-u2-again"), &room).await;
        fresh.last_seq = c.last_seq;
        fresh.seqs = std::mem::take(&mut c.seqs);
        fresh.ids = std::mem::take(&mut c.ids);
        let joined = fresh.join(Some(c.last_seq)).await;
        assert_eq!(
            joined["seq"], 6,
            "room state moved with the shard: {joined}"
        );
        *c = fresh;
        *o = 0;
    }
    let after = eventually(
        "2 nodes settle after the drain",
        Duration::from_secs(90),
        || async {
            let s = cluster_status(client).await;
            settled(&s, 2).then_some(s)
        },
    )
    .await;
    eprintln!(
        "drained in {:?}: epoch {}, shards per node {:?}",
        patched_at.elapsed(),
        after.epoch,
        after.shards_per_node
    );
    assert!(
        u64::try_from(after.epoch)? > before.epoch,
        "the epoch moved"
    );
    assert!(!after.shards_per_node.contains_key("chat-2"));
    eventually("chat-2 is gone", Duration::from_secs(60), || async {
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        pods.get_opt("chat-2").await.ok()?.is_none().then_some(())
    })
    .await;

    // Everyone sends once more after the scale-down; seqs stay contiguous everywhere.
    let final_table = table(client).await.ok_or("table")?;
    let live: Vec<String> = ips[..2].to_vec();
    eventually(
        "live nodes applied the final table",
        Duration::from_secs(30),
        || async { nodes_applied(&live, final_table.epoch).await.then_some(()) },
    )
    .await;
    for (_, c) in clients.iter_mut() {
        let room = c.room.clone();
        c.send(json!({"op": "send", "room": room, "text": "after", "cid": "after"}))
            .await;
    }
    for (_, c) in clients.iter_mut() {
        c.receive_up_to(9).await;
        assert_eq!(c.seqs, (1..=9).collect::<Vec<_>>(), "room {}", c.room);
    }

    // The load saw nothing lost or repeated.
    let output = tokio::time::timeout(Duration::from_secs(120), async {
        let mut stdout = bench.stdout.take().expect("stdout");
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stdout, &mut text)
            .await
            .expect("read bench output");
        let _ = bench.wait().await;
        text
    })
    .await?;
    let report: Value = serde_json::from_str(output.lines().last().ok_or("no bench output")?)?;
    eprintln!("bench across the scale-down: {report}");
    assert!(
        report["delivered"].as_u64().unwrap_or(0) > 1000,
        "traffic flowed: {report}"
    );
    assert_eq!(report["lost"], 0, "no message lost: {report}");
    assert_eq!(report["duplicates"], 0, "no message repeated: {report}");
    let errors = report["errors"]
        .as_object()
        .map(|e| e.values().filter_map(Value::as_u64).sum::<u64>())
        .unwrap_or(0);
    assert_eq!(errors, 0, "no errors during the drain: {report}");
    assert!(
        report["reconnects"].as_u64().unwrap_or(0) > 0,
        "clients of the drained pod reconnected: {report}"
    );

    // The order of events: the StatefulSet went to 2 replicas only after the table in the
    // ConfigMap had moved every shard off chat-2, and chat-2 was deleted only after that.
    let mut events = history.lock().unwrap_or_else(|e| e.into_inner()).clone();
    events.sort_by_key(|(rv, _)| *rv);
    let shrunk = events
        .iter()
        .find(|(_, s)| matches!(s, Seen::Replicas(2)))
        .map(|(rv, _)| *rv)
        .ok_or("no StatefulSet event with 2 replicas")?;
    let table_then = events
        .iter()
        .filter(|(rv, _)| *rv < shrunk)
        .filter_map(|(_, s)| match s {
            Seen::Table(t) => Some(t.clone()),
            _ => None,
        })
        .next_back()
        .ok_or("no table before the StatefulSet shrank")?;
    let chat2 = shard::NodeName::new("chat-2")?;
    assert!(
        table_then.shards_of(&chat2).is_empty(),
        "chat-2 owned shards when the StatefulSet shrank: epoch {} {:?}",
        table_then.epoch,
        table_then.counts()
    );
    assert!(
        table_then
            .moves
            .iter()
            .all(|m| m.from != chat2 && m.to != chat2),
        "moves involving chat-2 were pending when the StatefulSet shrank: {:?}",
        table_then.moves
    );
    assert!(table_then.epoch > before.epoch);
    let tables_with_chat2_draining = events
        .iter()
        .any(|(rv, s)| *rv < shrunk && matches!(s, Seen::Table(t) if t.draining.contains(&chat2)));
    assert!(
        tables_with_chat2_draining,
        "the drain was published before the StatefulSet shrank"
    );
    let terminating = events
        .iter()
        .find(|(_, s)| matches!(s, Seen::PodTerminating(p) if p == "chat-2"))
        .map(|(rv, _)| *rv)
        .ok_or("chat-2 was never terminating")?;
    let deleted = events
        .iter()
        .find(|(_, s)| matches!(s, Seen::PodDeleted(p) if p == "chat-2"))
        .map(|(rv, _)| *rv)
        .ok_or("chat-2 was never deleted")?;
    assert!(
        shrunk < terminating && terminating < deleted,
        "table (< {shrunk}), then StatefulSet at {shrunk}, chat-2 terminating at {terminating}, gone at {deleted}"
    );
    // chat-2 stayed a (shard-less) member of the table, with its peer links, until its pod was
    // gone: its clients' last sends were forwarded, not dropped.
    let unlisted = events
        .iter()
        .find(|(_, s)| matches!(s, Seen::Table(t) if t.epoch > before.epoch && !t.nodes.contains_key(&chat2)))
        .map(|(rv, _)| *rv)
        .ok_or("no table without chat-2")?;
    assert!(
        deleted < unlisted,
        "chat-2 left the table at {unlisted}, before its pod was gone at {deleted}"
    );
    for (_, s) in &events {
        if let Seen::Replicas(r) = s {
            assert!(*r == 3 || *r == 2, "replicas only ever 3 or 2, saw {r}");
        }
    }
    Ok(())
}
