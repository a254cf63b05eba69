//! The process kubelet: the node agent for a cluster with no container runtime.
//!
//! For each of its Nodes it registers the Node, keeps its Lease fresh, watches the pods the
//! scheduler binds to it, and runs each container as a local process, mapping the image name to
//! a program of this machine (`…/roomshard-node:tag` runs `roomshard-node`). Each pod gets its
//! own network namespace and address ([`crate::network`]) and its own mount namespace, in which
//! its volumes are bound at their `mountPath`s; service-account tokens are projected where
//! in-cluster clients look for them. Each Node talks to the API server with its own identity
//! (`system:node:NAME`), so the Node authorizer limits it as it limits a real kubelet.
//!
//! Mount points that do not exist on this machine (`/var/run/secrets/…`, `/etc/roomshard/…`) are
//! made empty and removed again when the kubelet stops.

mod container;
mod env;
mod node;
mod pod;
mod probe;
mod status;
mod volumes;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use container::image_name;

use crate::network::Network;

/// A Node the kubelet runs.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The Node's name.
    pub name: String,
    /// Its `topology.kubernetes.io/zone` label, if any.
    pub zone: Option<String>,
    /// A kubeconfig with the Node's identity.
    pub kubeconfig: PathBuf,
}

/// A pod the kubelet runs now.
#[derive(Debug, Clone)]
pub struct RunningPod {
    /// The pod's uid.
    pub uid: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The Node it runs on.
    pub node: String,
    /// The process id of each container, while it runs.
    pub pids: Vec<Option<u32>>,
}

/// What every Node of the kubelet shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) network: Arc<Network>,
    pub(crate) dir: PathBuf,
    pub(crate) images: BTreeMap<String, PathBuf>,
    pub(crate) api: (String, u16),
    pub(crate) host_ip: String,
    made: Mutex<Vec<PathBuf>>,
    running: Mutex<BTreeMap<String, RunningPod>>,
}

impl Shared {
    /// Makes `path` exist (as a directory, or an empty file for a file mount), remembering the
    /// topmost part it made so [`Kubelet::stop`] can remove it.
    pub(crate) fn ensure_mountpoint(&self, path: &Path, file: bool) -> Result<(), String> {
        if path.exists() {
            return Ok(());
        }
        let mut top = path;
        while let Some(parent) = top.parent() {
            if parent.exists() {
                break;
            }
            top = parent;
        }
        let made = if file {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(path, b"").map_err(|e| e.to_string())
        } else {
            std::fs::create_dir_all(path).map_err(|e| e.to_string())
        };
        made.map_err(|e| format!("mount point {}: {e}", path.display()))?;
        if let Ok(mut list) = self.made.lock() {
            list.push(top.to_path_buf());
        }
        Ok(())
    }

    pub(crate) fn running_insert(&self, key: String, pod: RunningPod) {
        if let Ok(mut r) = self.running.lock() {
            r.insert(key, pod);
        }
    }

    pub(crate) fn running_pid(&self, key: &str, index: usize, pid: Option<u32>) {
        if let Ok(mut r) = self.running.lock()
            && let Some(slot) = r.get_mut(key).and_then(|p| p.pids.get_mut(index))
        {
            *slot = pid;
        }
    }

    pub(crate) fn running_remove(&self, key: &str) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(key);
        }
    }
}

/// One Node as its pods see it.
pub(crate) struct NodeCtx {
    pub(crate) shared: Arc<Shared>,
    pub(crate) client: Client,
    pub(crate) name: String,
    pub(crate) index: u8,
}

impl std::fmt::Debug for NodeCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCtx")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A running process kubelet.
#[derive(Debug)]
pub struct Kubelet {
    shared: Arc<Shared>,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

/// How to start a [`Kubelet`].
#[derive(Debug, Clone)]
pub struct KubeletOptions {
    /// The Nodes to run.
    pub nodes: Vec<NodeSpec>,
    /// Image program name to local program path.
    pub images: BTreeMap<String, PathBuf>,
    /// Where pod directories go.
    pub dir: PathBuf,
    /// The API server's address and port, for `KUBERNETES_SERVICE_HOST/PORT`.
    pub api: (String, u16),
}

impl Kubelet {
    /// Registers the Nodes and starts running their pods.
    ///
    /// # Errors
    ///
    /// When a Node's kubeconfig is unusable or its registration is refused.
    pub async fn start(options: KubeletOptions, network: Arc<Network>) -> crate::Result<Self> {
        let shared = Arc::new(Shared {
            host_ip: network.host_ip().to_string(),
            network,
            dir: options.dir,
            images: options.images,
            api: options.api,
            made: Mutex::new(Vec::new()),
            running: Mutex::new(BTreeMap::new()),
        });
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        for (index, spec) in options.nodes.iter().enumerate() {
            let client = crate::controlplane::client_from(&spec.kubeconfig).await?;
            let uid = node::register(&client, &spec.name, spec.zone.as_deref()).await?;
            tasks.spawn(node::heartbeat(
                client.clone(),
                spec.name.clone(),
                uid,
                stop.clone(),
            ));
            let ctx = Arc::new(NodeCtx {
                shared: shared.clone(),
                client,
                name: spec.name.clone(),
                index: u8::try_from(index).unwrap_or(u8::MAX),
            });
            tasks.spawn(sync_pods(ctx, stop.clone()));
        }
        Ok(Kubelet {
            shared,
            stop,
            tasks,
        })
    }

    /// The pods running now, by `namespace/name`.
    #[must_use]
    pub fn running(&self) -> BTreeMap<String, RunningPod> {
        self.shared
            .running
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Stops every pod's processes at once (as a machine losing power would; pods stay in the
    /// API), removes their namespaces and the mount points the kubelet made.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        // Pod workers were spawned apart from the node tasks: wait until they all cleaned up.
        for _ in 0..100 {
            if self.running().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let made = self
            .shared
            .made
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        for path in made.iter().rev() {
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
        }
    }
}

/// Watches the pods bound to one Node and keeps one worker per pod.
async fn sync_pods(ctx: Arc<NodeCtx>, stop: CancellationToken) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.name));
    let mut stream = watcher::watcher(api, config).boxed();
    let mut workers: BTreeMap<String, watch::Sender<Pod>> = BTreeMap::new();
    let mut listed: Vec<String> = Vec::new();
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = stream.next() => event,
        };
        let Some(event) = event else { return };
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(node = %ctx.name, error = %e, "pod watch error (retrying)");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        match event {
            Event::Init => listed.clear(),
            Event::InitApply(pod) | Event::Apply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                listed.push(uid.clone());
                // A finished worker keeps its entry until the pod leaves the API, so a pod that
                // ran to completion is not started again by a later update.
                match workers.get(&uid) {
                    Some(tx) => {
                        let _ = tx.send(pod);
                    }
                    None => {
                        let (tx, rx) = watch::channel(pod);
                        workers.insert(uid, tx);
                        tokio::spawn(pod::run(ctx.clone(), rx, stop.clone()));
                    }
                }
            }
            Event::Delete(pod) => {
                // Dropping the sender tells the worker its pod is gone from the API.
                workers.remove(&pod.metadata.uid.unwrap_or_default());
            }
            Event::InitDone => workers.retain(|uid, _| listed.contains(uid)),
        }
    }
}
