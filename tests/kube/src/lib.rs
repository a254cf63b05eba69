//! Shared steps of the real-cluster suite: start a cluster whose images are the workspace's
//! binaries, run `kubectl` and `helm` against it, install the operator with its chart, and talk
//! to chat pods over WebSocket.
//!
//! Needs root (network namespaces, mounts), the control plane from `testing/controlplane/build.sh`
//! (`ROOMSHARD_CONTROLPLANE_BIN`, else built on first use), the workspace's binaries
//! (`cargo build --workspace --bins`) and kubectl (`$KUBECTL`, else `.venv-deploy/bin/kubectl`,
//! which `tests/deploy/run.sh --setup` installs). `tests/kube/run.sh` sees to all of that.

pub mod bench;
pub mod chat;
pub mod history;
pub mod ingress;
pub mod traffic;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kubeharness::{TestCluster, TestClusterOptions};

/// The suite's error type: anything, with its message.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The namespace the chart installs the operator into.
pub const OPERATOR_NS: &str = "roomshard-system";

/// The repository root.
#[must_use]
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("../.."))
}

/// The directory of the workspace's built binaries (next to this test executable's `deps/`).
#[must_use]
pub fn target_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| workspace().join("target/debug"))
}

/// A built workspace binary.
///
/// # Panics
///
/// When it was not built: the suite needs `cargo build --workspace --bins` first.
#[must_use]
pub fn binary(name: &str) -> PathBuf {
    let path = target_bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Starts a cluster of `nodes` Nodes whose images are the workspace's `roomshard-node` and
/// `roomshard-operator`.
///
/// # Errors
///
/// When the harness cannot start.
pub async fn start_cluster(nodes: usize) -> TestResult<Cluster> {
    let images: BTreeMap<String, PathBuf> = ["roomshard-node", "roomshard-operator"]
        .into_iter()
        .map(|n| (n.to_owned(), binary(n)))
        .collect();
    let inner = TestCluster::start(TestClusterOptions {
        nodes,
        images,
        ..TestClusterOptions::default()
    })
    .await?;
    let helm = kubeharness::controlplane::find_binaries()?.join("helm");
    Ok(Cluster {
        inner,
        kubectl: find_kubectl()?,
        helm,
    })
}

/// Starts a cluster of `nodes` Nodes, runs `scenario` on it, prints [`Cluster::dump`] when the
/// scenario fails or panics, and always stops the cluster before returning (or re-panicking).
///
/// # Errors
///
/// The scenario's error, or the harness's.
pub async fn with_cluster<F>(nodes: usize, scenario: F) -> TestResult
where
    F: for<'a> FnOnce(
        &'a Cluster,
    ) -> std::pin::Pin<Box<dyn Future<Output = TestResult> + Send + 'a>>,
{
    use futures_util::FutureExt;
    let cluster = start_cluster(nodes).await?;
    let outcome = std::panic::AssertUnwindSafe(scenario(&cluster))
        .catch_unwind()
        .await;
    if !matches!(outcome, Ok(Ok(()))) {
        cluster.dump().await;
    }
    cluster.stop().await;
    match outcome {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// `$KUBECTL`, else the one `tests/deploy/run.sh --setup` installs.
fn find_kubectl() -> TestResult<PathBuf> {
    if let Some(k) = std::env::var_os("KUBECTL").filter(|k| !k.is_empty()) {
        return Ok(PathBuf::from(k));
    }
    let venv = workspace().join(".venv-deploy/bin/kubectl");
    if venv.exists() {
        return Ok(venv);
    }
    Err("kubectl not found: set $KUBECTL or run tests/deploy/run.sh --setup".into())
}

/// A running test cluster and the command-line tools pointed at it.
#[derive(Debug)]
pub struct Cluster {
    /// The harness.
    pub inner: TestCluster,
    kubectl: PathBuf,
    helm: PathBuf,
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Output {
    /// Exit success.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Cluster {
    async fn tool(&self, program: &Path, args: &[&str], kubeconfig: &Path) -> TestResult<Output> {
        let out = tokio::time::timeout(
            Duration::from_secs(180),
            tokio::process::Command::new(program)
                .args(args)
                .env("KUBECONFIG", kubeconfig)
                .env("HELM_CACHE_HOME", self.inner.plane.dir.join("helm/cache"))
                .env("HELM_CONFIG_HOME", self.inner.plane.dir.join("helm/config"))
                .env("HELM_DATA_HOME", self.inner.plane.dir.join("helm/data"))
                .current_dir(workspace())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| format!("{} {} timed out", program.display(), args.join(" ")))??;
        Ok(Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `kubectl ARGS` as the admin; fails unless it succeeds.
    ///
    /// # Errors
    ///
    /// With kubectl's stderr when it fails.
    pub async fn kubectl(&self, args: &[&str]) -> TestResult<String> {
        let out = self.kubectl_as(self.inner.kubeconfig(), args).await?;
        if out.ok {
            Ok(out.stdout)
        } else {
            Err(format!("kubectl {}: {}", args.join(" "), out.stderr).into())
        }
    }

    /// `kubectl ARGS` with any kubeconfig; returns the outcome whatever it is.
    ///
    /// # Errors
    ///
    /// When kubectl cannot be run.
    pub async fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> TestResult<Output> {
        self.tool(&self.kubectl.clone(), args, kubeconfig).await
    }

    /// `helm ARGS` as the admin; fails unless it succeeds.
    ///
    /// # Errors
    ///
    /// With helm's stderr when it fails.
    pub async fn helm(&self, args: &[&str]) -> TestResult<String> {
        let out = self
            .tool(&self.helm.clone(), args, self.inner.kubeconfig())
            .await?;
        if out.ok {
            Ok(out.stdout)
        } else {
            Err(format!("helm {}: {}", args.join(" "), out.stderr).into())
        }
    }

    /// The names of the operator's pods, terminating ones included.
    ///
    /// # Errors
    ///
    /// When kubectl fails.
    pub async fn operator_pods(&self) -> TestResult<Vec<String>> {
        let out = self
            .kubectl(&[
                "-n",
                OPERATOR_NS,
                "get",
                "pods",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ])
            .await?;
        Ok(out.split_whitespace().map(str::to_owned).collect())
    }

    /// The operator replica holding the leader Lease, if any.
    pub async fn lease_holder(&self) -> Option<String> {
        let out = self
            .kubectl(&[
                "-n",
                OPERATOR_NS,
                "get",
                "lease",
                "roomshard-operator",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .await
            .ok()?;
        let out = out.trim();
        (!out.is_empty()).then(|| out.to_owned())
    }

    /// `kubectl patch chat NAME --type merge -p PATCH`, as a user changes a cluster.
    ///
    /// # Errors
    ///
    /// With kubectl's stderr when it fails.
    pub async fn patch_chat(&self, name: &str, patch: &str) -> TestResult {
        self.kubectl(&["patch", "chat", name, "--type", "merge", "-p", patch])
            .await?;
        Ok(())
    }

    /// An admin client.
    ///
    /// # Errors
    ///
    /// When the kubeconfig cannot be read.
    pub async fn client(&self) -> TestResult<kube::Client> {
        Ok(self.inner.client().await?)
    }

    /// Installs `charts/roomshard-operator` with the real helm CLI (image: the workspace's
    /// `roomshard-operator`) and waits for its Deployment to be available.
    ///
    /// # Errors
    ///
    /// When helm or the rollout fails.
    pub async fn install_operator(&self, extra: &[&str]) -> TestResult {
        let mut args = vec![
            "install",
            "roomshard-operator",
            "charts/roomshard-operator",
            "--namespace",
            OPERATOR_NS,
            "--create-namespace",
            "--wait",
            "--timeout",
            "150s",
        ];
        args.extend_from_slice(extra);
        self.helm(&args).await?;
        Ok(())
    }

    /// Prints what a person debugging a failure looks at first: pods, events, and the tail of
    /// every container log and control-plane log.
    pub async fn dump(&self) {
        for args in [
            &["get", "nodes,pods", "-A", "-o", "wide"][..],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
        ] {
            match self.kubectl(args).await {
                Ok(out) => eprintln!("$ kubectl {}\n{out}", args.join(" ")),
                Err(e) => eprintln!("$ kubectl {}: {e}", args.join(" ")),
            }
        }
        let pods = self.inner.plane.dir.join("../kubelet/pods");
        let logs = self.inner.plane.dir.join("logs");
        for dir in [pods, logs] {
            let mut stack = vec![dir];
            while let Some(d) = stack.pop() {
                for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    let path = entry.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_some_and(|e| e == "log")
                        && !path.ends_with("audit.log")
                    {
                        let text = std::fs::read_to_string(&path).unwrap_or_default();
                        let tail: Vec<&str> = text.lines().rev().take(15).collect();
                        eprintln!("== {}", path.display());
                        for line in tail.iter().rev() {
                            eprintln!("{}", line.chars().take(400).collect::<String>());
                        }
                    }
                }
            }
        }
    }

    /// Installs the operator, applies `examples/minimal.yaml`, waits until its 3 pods have
    /// settled, then records its [`history::History`] (until `stop`) and proxies its client
    /// Service (once all 3 pods are its endpoints): what a test that changes `minimal` under
    /// observation starts from.
    ///
    /// # Errors
    ///
    /// When a step fails or does not happen in time.
    pub async fn run_minimal(
        &self,
        stop: &tokio_util::sync::CancellationToken,
    ) -> TestResult<(
        kube::Api<operator::k8s::crd::ChatCluster>,
        history::History,
        kubeharness::service_proxy::ServiceProxy,
    )> {
        let client = self.client().await?;
        self.install_operator(&[]).await?;
        self.kubectl(&["apply", "-f", "examples/minimal.yaml"])
            .await?;
        let chats = kube::Api::namespaced(client.clone(), "default");
        eventually("3 nodes settle", Duration::from_secs(90), || {
            settled(&chats, "minimal", 3)
        })
        .await?;
        let history = history::History::watch(&client, "default", "minimal", stop);
        let proxy =
            kubeharness::service_proxy::ServiceProxy::start(client, "default", "minimal", "client")
                .await?;
        eventually(
            "the Service has 3 endpoints",
            Duration::from_secs(30),
            || async { (proxy.endpoints().len() == 3).then_some(()) },
        )
        .await?;
        Ok((chats, history, proxy))
    }

    /// The messages of the Events with `reason` about the object `name`, space-separated
    /// (`kubectl get events`).
    ///
    /// # Errors
    ///
    /// When kubectl fails.
    pub async fn event_messages(&self, reason: &str, name: &str) -> TestResult<String> {
        let selector = format!("reason={reason},involvedObject.name={name}");
        self.kubectl(&[
            "get",
            "events",
            "--field-selector",
            &selector,
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .await
    }

    /// Stops everything.
    pub async fn stop(self) {
        self.inner.stop().await;
    }
}

/// `Some(())` once ChatCluster `name` runs `replicas` Ready pods with no move, drain or exit in
/// flight and every pod owning ⌊S/N⌋ or ⌈S/N⌉ of its shards.
pub async fn settled(
    chats: &kube::Api<operator::k8s::crd::ChatCluster>,
    name: &str,
    replicas: i32,
) -> Option<()> {
    let c = chats.get(name).await.ok()?;
    let shards = c.spec.shards;
    let s = c.status?;
    let (low, high) = (shards / replicas, (shards + replicas - 1) / replicas);
    (s.phase.as_deref() == Some("Running")
        && s.ready_nodes == replicas
        && s.moves_in_flight == 0
        && s.draining.is_empty()
        && i32::try_from(s.shards_per_node.len()).ok()? == replicas
        && s.shards_per_node.values().all(|n| (low..=high).contains(n)))
    .then_some(())
}

/// The whitespace-separated columns of line `line` of kubectl's table output (0 is the header);
/// empty when there is no such line.
#[must_use]
pub fn kubectl_row(table: &str, line: usize) -> Vec<&str> {
    table
        .lines()
        .nth(line)
        .unwrap_or_default()
        .split_whitespace()
        .collect()
}

/// Polls `f` until it gives a value, at most `within`.
///
/// # Errors
///
/// When time runs out, naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> TestResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {within:?}: {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
