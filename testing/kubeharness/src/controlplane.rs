//! The real control plane: etcd, kube-apiserver, kube-controller-manager and kube-scheduler as
//! processes of this machine, started from the binaries `testing/controlplane/build.sh` builds.
//!
//! The API server runs as a cluster's does: TLS with a certificate for its address and the
//! in-cluster names, client certificates for every component, `--authorization-mode=Node,RBAC`,
//! service-account tokens signed by its own key, and the default admission plugins. The
//! controller manager runs every default controller (StatefulSet, Deployment and ReplicaSet,
//! garbage collector, EndpointSlice, ServiceAccount and its tokens, disruption for
//! PodDisruptionBudgets, namespace, node lifecycle) with one ServiceAccount per controller, so
//! each is held to RBAC as in a real cluster.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::process::{Child, Command};

use crate::pki::{Authority, CertPair, SigningKey};
use crate::{Error, Result};

/// The Service network the API server hands ClusterIPs from. Nothing routes it (there is no
/// kube-proxy); clients reach Services through their EndpointSlices.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// Audit every request by a ServiceAccount at the Metadata level (who, verb, resource, answer).
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: [\"system:serviceaccounts\"]
  - level: None
";

/// Where to find the control-plane binaries and where to put the cluster's files.
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Directory with `etcd`, `kube-apiserver`, `kube-controller-manager`, `kube-scheduler`.
    pub bin_dir: PathBuf,
    /// The cluster's working directory (certificates, etcd data, logs, kubeconfigs).
    pub dir: PathBuf,
    /// The address the API server listens on (the host end of the pod bridge).
    pub host_ip: Ipv4Addr,
}

/// A running control plane. Dropping it kills every process it started.
#[derive(Debug)]
pub struct ControlPlane {
    processes: Vec<(&'static str, Child)>,
    /// The cluster's working directory.
    pub dir: PathBuf,
    /// `https://IP:PORT` of the API server.
    pub server: String,
    /// The API server's address.
    pub host_ip: Ipv4Addr,
    /// The API server's port.
    pub port: u16,
    /// A kubeconfig for `system:masters` (what `kubectl` and `helm` use in tests).
    pub admin_kubeconfig: PathBuf,
    /// The CA certificate file.
    pub ca_file: PathBuf,
    authority: Authority,
}

/// Finds the control-plane binaries: `$ROOMSHARD_CONTROLPLANE_BIN`, else what
/// `testing/controlplane/build.sh` prints (building them on the first run).
///
/// # Errors
///
/// When the build fails or the binaries are missing.
pub fn find_binaries() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("ROOMSHARD_CONTROLPLANE_BIN").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    // Tests of one binary run on parallel threads: one of them builds, the others wait for it
    // and reuse its answer (two builds at once would share, and wreck, one partial directory).
    static BUILT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(dir) = built.as_ref() {
        return Ok(dir.clone());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../controlplane/build.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(Error::io(format!("run {}", script.display())))?;
    if !out.status.success() {
        return Err(Error::Command(format!(
            "{} failed ({})",
            script.display(),
            out.status
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .last()
        .ok_or_else(|| Error::Command("build.sh printed no directory".to_owned()))?;
    let dir = PathBuf::from(dir.trim());
    *built = Some(dir.clone());
    Ok(dir)
}

/// A port nobody listens on right now.
pub(crate) fn free_port(ip: IpAddr) -> Result<u16> {
    let listener = TcpListener::bind((ip, 0)).map_err(Error::io("find a free port"))?;
    let port = listener
        .local_addr()
        .map_err(Error::io("find a free port"))?
        .port();
    Ok(port)
}

fn write(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(Error::io(format!("write {}", path.display())))
}

impl ControlPlane {
    /// Starts etcd, the API server, the controller manager and the scheduler, and waits until the
    /// API server is ready.
    ///
    /// # Errors
    ///
    /// When a process cannot start or the API server is not ready within a minute.
    pub async fn start(options: ControlPlaneOptions) -> Result<Self> {
        let ControlPlaneOptions {
            bin_dir,
            dir,
            host_ip,
        } = options;
        for sub in ["pki", "logs", "etcd"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(Error::io("create cluster dir"))?;
        }
        let pki = dir.join("pki");
        let authority = Authority::new()?;
        let ca_file = pki.join("ca.crt");
        write(&ca_file, &authority.cert_pem)?;
        let service_ip = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1));
        let serving = authority.server(
            "kube-apiserver",
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &[
                IpAddr::V4(host_ip),
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                service_ip,
            ],
        )?;
        write_pair(&pki, "apiserver", &serving)?;
        let signing = SigningKey::new()?;
        write(&pki.join("sa.key"), &signing.private_pem)?;
        write(&pki.join("sa.pub"), &signing.public_pem)?;
        // Every request a ServiceAccount makes is audited, so tests can compare what the
        // operator and the nodes really asked for with the RBAC rules they ship.
        let audit_policy = dir.join("audit-policy.yaml");
        write(&audit_policy, AUDIT_POLICY)?;

        let port = free_port(IpAddr::V4(host_ip))?;
        let server = format!("https://{host_ip}:{port}");
        let admin = authority.client("kubernetes-admin", &["system:masters"])?;
        let admin_kubeconfig = write_kubeconfig(&dir, "admin", &server, &ca_file, &admin)?;
        let kcm = authority.client("system:kube-controller-manager", &[])?;
        let kcm_kubeconfig = write_kubeconfig(&dir, "controller-manager", &server, &ca_file, &kcm)?;
        let sched = authority.client("system:kube-scheduler", &[])?;
        let sched_kubeconfig = write_kubeconfig(&dir, "scheduler", &server, &ca_file, &sched)?;

        let mut plane = ControlPlane {
            processes: Vec::new(),
            dir: dir.clone(),
            server,
            host_ip,
            port,
            admin_kubeconfig,
            ca_file,
            authority,
        };

        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let etcd_client = free_port(localhost)?;
        let etcd_peer = free_port(localhost)?;
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        plane.spawn(
            "etcd",
            &bin_dir.join("etcd"),
            &[
                "--name=default".to_owned(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                "--log-level=warn".to_owned(),
                // Test data: an fsync per write buys nothing here and costs seconds per test.
                "--unsafe-no-fsync=true".to_owned(),
            ],
        )?;

        let p = |name: &str| pki.join(name).display().to_string();
        plane.spawn(
            "kube-apiserver",
            &bin_dir.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                format!("--bind-address={host_ip}"),
                format!("--advertise-address={host_ip}"),
                format!("--secure-port={port}"),
                format!("--tls-cert-file={}", p("apiserver.crt")),
                format!("--tls-private-key-file={}", p("apiserver.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
                "--authorization-mode=Node,RBAC".to_owned(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--allow-privileged=true".to_owned(),
                format!("--cert-dir={}", p("generated")),
                "--profiling=false".to_owned(),
                format!("--audit-policy-file={}", audit_policy.display()),
                format!("--audit-log-path={}", dir.join("logs/audit.log").display()),
                "--audit-log-format=json".to_owned(),
                "--v=1".to_owned(),
            ],
        )?;
        let client = plane.admin_client().await?;
        wait_ready(&client, Duration::from_secs(90)).await?;

        plane.spawn(
            "kube-controller-manager",
            &bin_dir.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={}", kcm_kubeconfig.display()),
                "--leader-elect=false".to_owned(),
                "--use-service-account-credentials=true".to_owned(),
                format!("--service-account-private-key-file={}", p("sa.key")),
                format!("--root-ca-file={}", p("ca.crt")),
                "--controllers=*".to_owned(),
                "--bind-address=127.0.0.1".to_owned(),
                "--secure-port=0".to_owned(),
                "--v=1".to_owned(),
            ],
        )?;
        plane.spawn(
            "kube-scheduler",
            &bin_dir.join("kube-scheduler"),
            &[
                format!("--kubeconfig={}", sched_kubeconfig.display()),
                "--leader-elect=false".to_owned(),
                "--bind-address=127.0.0.1".to_owned(),
                "--secure-port=0".to_owned(),
                "--v=1".to_owned(),
            ],
        )?;
        Ok(plane)
    }

    fn spawn(&mut self, name: &'static str, bin: &Path, args: &[String]) -> Result<()> {
        let log_path = self.dir.join("logs").join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).map_err(Error::io("create log"))?;
        let err = log.try_clone().map_err(Error::io("clone log"))?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(Error::io(format!("start {}", bin.display())))?;
        self.processes.push((name, child));
        Ok(())
    }

    /// A client with the admin's identity.
    ///
    /// # Errors
    ///
    /// When the kubeconfig cannot be read.
    pub async fn admin_client(&self) -> Result<Client> {
        client_from(&self.admin_kubeconfig).await
    }

    /// A kubeconfig for a Node's kubelet: user `system:node:NAME` in group `system:nodes`, the
    /// identity the Node authorizer grants a kubelet's rights to.
    ///
    /// # Errors
    ///
    /// When the certificate or file cannot be made.
    pub fn node_kubeconfig(&self, node: &str) -> Result<PathBuf> {
        let pair = self
            .authority
            .client(&format!("system:node:{node}"), &["system:nodes"])?;
        write_kubeconfig(
            &self.dir,
            &format!("node-{node}"),
            &self.server,
            &self.ca_file,
            &pair,
        )
    }

    /// A kubeconfig for any user and groups (to check what RBAC allows someone).
    ///
    /// # Errors
    ///
    /// When the certificate or file cannot be made.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let pair = self.authority.client(user, groups)?;
        let file = user.replace([':', '/'], "-");
        write_kubeconfig(
            &self.dir,
            &format!("user-{file}"),
            &self.server,
            &self.ca_file,
            &pair,
        )
    }

    /// The log file of a control-plane process.
    #[must_use]
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// The API server's audit log (JSON lines): every request made by a ServiceAccount.
    #[must_use]
    pub fn audit_log(&self) -> PathBuf {
        self.log("audit")
    }

    /// Names of control-plane processes that have exited (they should all run until stopped).
    pub fn exited(&mut self) -> Vec<&'static str> {
        self.processes
            .iter_mut()
            .filter_map(|(n, c)| matches!(c.try_wait(), Ok(Some(_))).then_some(*n))
            .collect()
    }

    /// Stops the processes in reverse order of start: SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(&mut self) {
        while let Some((_, mut child)) = self.processes.pop() {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

fn write_pair(dir: &Path, name: &str, pair: &CertPair) -> Result<()> {
    write(&dir.join(format!("{name}.crt")), &pair.cert_pem)?;
    write(&dir.join(format!("{name}.key")), &pair.key_pem)
}

fn write_kubeconfig(
    dir: &Path,
    name: &str,
    server: &str,
    ca: &Path,
    pair: &CertPair,
) -> Result<PathBuf> {
    let pki = dir.join("pki");
    write_pair(&pki, name, pair)?;
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "roomshard-test", "cluster": {
            "server": server, "certificate-authority": ca}}],
        "users": [{"name": name, "user": {
            "client-certificate": pki.join(format!("{name}.crt")),
            "client-key": pki.join(format!("{name}.key"))}}],
        "contexts": [{"name": name, "context": {"cluster": "roomshard-test", "user": name}}],
        "current-context": name,
    });
    let path = dir.join(format!("{name}.kubeconfig"));
    let yaml = serde_yaml::to_string(&config).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    write(&path, &yaml)?;
    Ok(path)
}

/// A client from a kubeconfig file.
///
/// # Errors
///
/// When the file cannot be read or names no usable cluster.
pub async fn client_from(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| Error::Kubeconfig(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))?;
    Client::try_from(config).map_err(Error::Kube)
}

/// Waits until `/readyz` answers `ok`.
async fn wait_ready(client: &Client, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| Error::Command(e.to_string()))?;
        match client.request_text(req).await {
            Ok(body) if body.trim() == "ok" => return Ok(()),
            _ if Instant::now() > deadline => {
                return Err(Error::Timeout("kube-apiserver /readyz".to_owned()));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
