//! Probes, run as the kubelet runs them: `httpGet` (any status from 200 to 399 passes),
//! `tcpSocket` (a connection passes) and `exec` (exit 0 passes, run inside the pod's network
//! namespace), each bounded by `timeoutSeconds`.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A probe's timing, with the kubelet's defaults where the spec is silent.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `initialDelaySeconds`.
    pub initial_delay: Duration,
    /// `periodSeconds` (default 10).
    pub period: Duration,
    /// `timeoutSeconds` (default 1).
    pub timeout: Duration,
    /// `successThreshold` (default 1).
    pub success_threshold: u32,
    /// `failureThreshold` (default 3).
    pub failure_threshold: u32,
}

impl Timing {
    /// The timing of `probe`.
    #[must_use]
    pub fn of(probe: &Probe) -> Self {
        let secs = |v: Option<i32>, d: u64| {
            Duration::from_secs(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(d))
        };
        let count = |v: Option<i32>, d: u32| {
            v.and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .unwrap_or(d)
        };
        Timing {
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// Resolves a named or numbered port of `container`.
#[must_use]
pub fn port(container: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok()),
    }
}

/// Runs `probe` once against the pod at `ip` (namespace `netns`); `Ok` when it passes.
///
/// # Errors
///
/// Why it failed, as the kubelet's event would say.
pub async fn run(
    probe: &Probe,
    container: &Container,
    ip: Ipv4Addr,
    netns: &str,
) -> Result<(), String> {
    let timeout = Timing::of(probe).timeout;
    let attempt = async {
        if let Some(http) = &probe.http_get {
            let p = port(container, &http.port).ok_or("unknown probe port")?;
            let path = http.path.as_deref().unwrap_or("/");
            return http_get(ip, p, path).await;
        }
        if let Some(tcp) = &probe.tcp_socket {
            let p = port(container, &tcp.port).ok_or("unknown probe port")?;
            return TcpStream::connect((ip, p))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        if let Some(exec) = &probe.exec {
            let command = exec.command.clone().unwrap_or_default();
            let status = tokio::process::Command::new("ip")
                .args(["netns", "exec", netns])
                .args(&command)
                .kill_on_drop(true)
                .status()
                .await
                .map_err(|e| e.to_string())?;
            return if status.success() {
                Ok(())
            } else {
                Err(format!("exec probe: {status}"))
            };
        }
        if probe.grpc.is_some() {
            return Err("grpc probes do not run here".to_owned());
        }
        Err("probe has no handler".to_owned())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| format!("probe timed out after {timeout:?}"))?
}

async fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect((ip, port))
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        let n = stream
            .read(&mut head[read..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_ports_resolve_through_the_container_and_numbers_pass_through() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "ports": [{"name": "client", "containerPort": 8080}]
        }))
        .expect("container");
        assert_eq!(port(&c, &IntOrString::String("client".into())), Some(8080));
        assert_eq!(port(&c, &IntOrString::Int(7070)), Some(7070));
        assert_eq!(port(&c, &IntOrString::String("nope".into())), None);
    }

    #[test]
    fn unset_timing_fields_take_the_kubelet_defaults() {
        let t = Timing::of(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
    }
}
