//! A stand-in for ingress-nginx: the real nginx, configured from an Ingress object as the
//! ingress-nginx controller would configure it: the Ingress's host and TLS Secret, the
//! annotations roomshard relies on (`proxy-read-timeout`, `proxy-send-timeout`,
//! `proxy-http-version`), the WebSocket upgrade headers ingress-nginx always sets, and an upstream
//! of the backend Service's ready endpoints, reloaded when they change.
//!
//! It listens on loopback only; clients connect to it with the Ingress's host name (SNI and
//! `Host`), as they would through DNS.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::TestResult;

/// A running nginx in front of one Ingress.
#[derive(Debug)]
pub struct IngressNginx {
    /// Where clients connect (`127.0.0.1:PORT`, TLS).
    pub addr: SocketAddr,
    /// The Ingress's host.
    pub host: String,
    child: Child,
    stop: CancellationToken,
}

/// The nginx binary (Debian's package).
fn nginx() -> PathBuf {
    std::env::var_os("NGINX").map_or_else(|| PathBuf::from("/usr/sbin/nginx"), PathBuf::from)
}

struct Rendered {
    host: String,
    timeouts: (String, String),
    http_version: String,
    service: String,
    port_name_or_number: String,
}

impl IngressNginx {
    /// Configures and starts nginx for `namespace/name`, working in `dir`.
    ///
    /// # Errors
    ///
    /// When the Ingress, its TLS Secret or its backend is missing, or nginx refuses the config.
    pub async fn start(
        client: Client,
        namespace: &str,
        name: &str,
        dir: &Path,
    ) -> TestResult<Self> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let ingress = Api::<Ingress>::namespaced(client.clone(), namespace)
            .get(name)
            .await?;
        let spec = ingress.spec.clone().ok_or("ingress has no spec")?;
        let rule = spec
            .rules
            .iter()
            .flatten()
            .next()
            .ok_or("ingress has no rule")?;
        let host = rule.host.clone().ok_or("ingress rule has no host")?;
        let backend = rule
            .http
            .as_ref()
            .and_then(|h| h.paths.first())
            .and_then(|p| p.backend.service.clone())
            .ok_or("ingress has no service backend")?;
        let annotations = ingress.metadata.annotations.clone().unwrap_or_default();
        let get = |k: &str, d: &str| {
            annotations
                .get(&format!("nginx.ingress.kubernetes.io/{k}"))
                .cloned()
                .unwrap_or_else(|| d.to_owned())
        };
        let tls_secret = spec
            .tls
            .iter()
            .flatten()
            .find(|t| t.hosts.iter().flatten().any(|h| *h == host))
            .and_then(|t| t.secret_name.clone())
            .ok_or("ingress has no TLS for its host")?;
        let secret = Api::<Secret>::namespaced(client.clone(), namespace)
            .get(&tls_secret)
            .await?;
        let data = secret.data.unwrap_or_default();
        std::fs::write(
            dir.join("tls.crt"),
            &data.get("tls.crt").ok_or("no tls.crt")?.0,
        )?;
        std::fs::write(
            dir.join("tls.key"),
            &data.get("tls.key").ok_or("no tls.key")?.0,
        )?;
        let rendered = Rendered {
            host: host.clone(),
            // ingress-nginx's defaults are 60 s.
            timeouts: (
                get("proxy-read-timeout", "60"),
                get("proxy-send-timeout", "60"),
            ),
            http_version: get("proxy-http-version", "1.1"),
            service: backend.name.clone(),
            port_name_or_number: backend
                .port
                .as_ref()
                .and_then(|p| p.name.clone().or_else(|| p.number.map(|n| n.to_string())))
                .unwrap_or_default(),
        };
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        drop(listener);
        let endpoints = ready_endpoints(&client, namespace, &rendered.service).await?;
        write_config(dir, addr, &rendered, &endpoints)?;
        let conf = dir.join("nginx.conf");
        let check = Command::new(nginx())
            .arg("-t")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .output()
            .await?;
        if !check.status.success() {
            return Err(format!("nginx -t: {}", String::from_utf8_lossy(&check.stderr)).into());
        }
        let child = Command::new(nginx())
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            // Its own process group, so stopping it stops its worker processes too.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()?;
        let stop = CancellationToken::new();
        tokio::spawn(follow(
            client,
            namespace.to_owned(),
            dir.to_path_buf(),
            addr,
            rendered,
            endpoints,
            stop.clone(),
        ));
        Ok(IngressNginx {
            addr,
            host,
            child,
            stop,
        })
    }

    /// Stops nginx, master and workers.
    pub async fn stop(mut self) {
        self.kill_group();
        let _ = self.child.wait().await;
    }

    fn kill_group(&mut self) {
        self.stop.cancel();
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

impl Drop for IngressNginx {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// Ready, non-terminating `IP:port` of the Service's endpoints, sorted.
async fn ready_endpoints(
    client: &Client,
    namespace: &str,
    service: &str,
) -> TestResult<Vec<String>> {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await?;
    let mut out = Vec::new();
    for slice in slices.items {
        let Some(port) = slice.ports.iter().flatten().find_map(|p| p.port) else {
            continue;
        };
        for e in &slice.endpoints {
            let c = e.conditions.as_ref();
            if c.and_then(|c| c.ready).unwrap_or(true)
                && !c.and_then(|c| c.terminating).unwrap_or(false)
            {
                out.extend(e.addresses.iter().map(|a| format!("{a}:{port}")));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Rewrites the upstream and reloads nginx whenever the ready endpoints change, as the
/// controller does.
async fn follow(
    client: Client,
    namespace: String,
    dir: PathBuf,
    addr: SocketAddr,
    rendered: Rendered,
    mut current: Vec<String>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        let Ok(now) = ready_endpoints(&client, &namespace, &rendered.service).await else {
            continue;
        };
        if now == current || now.is_empty() {
            continue;
        }
        current = now;
        if write_config(&dir, addr, &rendered, &current).is_ok() {
            let _ = Command::new(nginx())
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .args(["-s", "reload"])
                .status()
                .await;
        }
    }
}

fn write_config(dir: &Path, addr: SocketAddr, r: &Rendered, endpoints: &[String]) -> TestResult {
    let servers: String = endpoints
        .iter()
        .map(|e| format!("    server {e};\n"))
        .collect();
    let d = dir.display();
    let _ = &r.port_name_or_number;
    let conf = format!(
        "worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log {d}/logs/access.log;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream backend {{
{servers}  }}
  server {{
    listen {addr} ssl;
    server_name {host};
    ssl_certificate {d}/tls.crt;
    ssl_certificate_key {d}/tls.key;
    location / {{
      proxy_pass http://backend;
      proxy_http_version {version};
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_read_timeout {read}s;
      proxy_send_timeout {send}s;
      proxy_next_upstream error timeout;
    }}
  }}
}}
",
        host = r.host,
        version = r.http_version,
        read = r.timeouts.0,
        send = r.timeouts.1,
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    Ok(())
}
