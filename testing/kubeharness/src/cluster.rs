//! A whole test cluster: the pod network, the control plane and the process kubelet, started
//! together and stopped together with nothing left behind.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kube::Client;

use crate::controlplane::{ControlPlane, ControlPlaneOptions, find_binaries};
use crate::kubelet::{Kubelet, KubeletOptions, NodeSpec};
use crate::network::Network;
use crate::{Error, Result};

/// Where cluster directories go: on disk, outside `/tmp`, which pods mount over.
pub const STATE_ROOT: &str = "/var/lib/roomshard-kube";

/// How to start a [`TestCluster`].
#[derive(Debug, Clone)]
pub struct TestClusterOptions {
    /// How many Nodes the kubelet registers.
    pub nodes: usize,
    /// Zones given round-robin to the Nodes (`topology.kubernetes.io/zone`); none when empty.
    pub zones: Vec<String>,
    /// Image program name to local program (`roomshard-node` → `target/debug/roomshard-node`).
    pub images: BTreeMap<String, PathBuf>,
}

impl Default for TestClusterOptions {
    fn default() -> Self {
        TestClusterOptions {
            nodes: 3,
            zones: vec!["zone-a".into(), "zone-b".into(), "zone-c".into()],
            images: BTreeMap::new(),
        }
    }
}

/// A running cluster.
#[derive(Debug)]
pub struct TestCluster {
    /// The control plane.
    pub plane: ControlPlane,
    /// The node agent.
    pub kubelet: Kubelet,
    network: Arc<Network>,
    dir: PathBuf,
    stopped: bool,
}

impl TestCluster {
    /// Builds (or reuses) the control plane, claims a pod network, starts the control plane and
    /// the kubelet, and waits until every Node is Ready.
    ///
    /// # Errors
    ///
    /// When any part fails to start; what was started is stopped again.
    pub async fn start(options: TestClusterOptions) -> Result<Self> {
        let bin_dir = find_binaries()?;
        remove_stale_dirs();
        let network = Arc::new(Network::create()?);
        let dir = PathBuf::from(STATE_ROOT).join(format!(
            "{}-{}",
            std::process::id(),
            network.subnet().split('.').nth(1).unwrap_or("0")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(Error::io("create cluster dir"))?;
        std::fs::set_permissions(STATE_ROOT, std::fs::Permissions::from_mode(0o755))
            .map_err(Error::io("chmod state root"))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(Error::io("chmod cluster dir"))?;
        let plane = ControlPlane::start(ControlPlaneOptions {
            bin_dir,
            dir: dir.join("control-plane"),
            host_ip: network.host_ip(),
        })
        .await?;
        let images = copy_images(&dir.join("images"), &options.images)?;
        let nodes = (0..options.nodes)
            .map(|i| {
                let name = format!("node-{i}");
                let zone = (!options.zones.is_empty())
                    .then(|| options.zones[i % options.zones.len()].clone());
                let kubeconfig = plane.node_kubeconfig(&name)?;
                Ok(NodeSpec {
                    name,
                    zone,
                    kubeconfig,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let kubelet = Kubelet::start(
            KubeletOptions {
                nodes,
                images,
                dir: dir.join("kubelet"),
                api: (plane.host_ip.to_string(), plane.port),
            },
            network.clone(),
        )
        .await?;
        Ok(TestCluster {
            plane,
            kubelet,
            network,
            dir,
            stopped: false,
        })
    }

    /// The admin kubeconfig, for kubectl, helm and tests.
    #[must_use]
    pub fn kubeconfig(&self) -> &Path {
        &self.plane.admin_kubeconfig
    }

    /// An admin client.
    ///
    /// # Errors
    ///
    /// When the kubeconfig cannot be read.
    pub async fn client(&self) -> Result<Client> {
        self.plane.admin_client().await
    }

    /// The pod network's host address (where the API server listens).
    #[must_use]
    pub fn host_ip(&self) -> std::net::Ipv4Addr {
        self.network.host_ip()
    }

    /// Stops the kubelet (killing every pod's processes), then the control plane, and removes
    /// the pod network and every file the cluster wrote.
    pub async fn stop(mut self) {
        self.kubelet.stop().await;
        self.plane.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
        self.stopped = true;
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // A test that panicked: processes die with their handles (kill_on_drop) and the network
        // goes with its last reference; remove the files too.
        if !self.stopped {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes the directories of clusters whose process died without stopping them.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(STATE_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if owner.is_some_and(|pid| !crate::process::alive(pid)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Copies each image's program into the cluster, readable and runnable by every user (pods run
/// as non-root users and the build directory may not be open to them).
fn copy_images(
    dir: &Path,
    images: &BTreeMap<String, PathBuf>,
) -> Result<BTreeMap<String, PathBuf>> {
    std::fs::create_dir_all(dir).map_err(Error::io("create images dir"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(Error::io("chmod images dir"))?;
    images
        .iter()
        .map(|(name, source)| {
            let target = dir.join(name);
            std::fs::copy(source, &target)
                .map_err(Error::io(format!("copy image {}", source.display())))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                .map_err(Error::io("chmod image"))?;
            Ok((name.clone(), target))
        })
        .collect()
}
