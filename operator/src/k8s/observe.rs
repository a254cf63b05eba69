//! What the reconciler observes about the node pods: membership from each pod's Ready
//! condition, its address from `status.podIP`, and its progress from its `/status`.
//!
//! [`StatusReader`] is the one outside call the reconciler makes that is not the Kubernetes
//! API, so it is a trait: [`HttpStatusReader`] asks the node, tests substitute a fake that says
//! what nodes would.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use shard::{NodeInfo, NodeName};

use super::children::{CLIENT_PORT, PEER_PORT};
use crate::decide::{PodView, Report, pod_name};
use crate::{Error, http};

/// A boxed future, as trait objects need.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Reads a node's `/status`.
pub trait StatusReader: Send + Sync + fmt::Debug {
    /// The report of the node `pod` at pod IP `ip`; an error says why there is none.
    fn read<'a>(&'a self, pod: &'a NodeName, ip: &'a str) -> BoxFuture<'a, Result<Report, String>>;
}

/// Reads `http://{podIP}:7070/status` within a short timeout.
#[derive(Debug, Clone)]
pub struct HttpStatusReader {
    /// How long one read may take; a slow node is treated as having no report this pass.
    pub timeout: Duration,
    /// The peer port; [`PEER_PORT`] in a cluster, other values in tests.
    pub port: u16,
}

impl Default for HttpStatusReader {
    fn default() -> Self {
        HttpStatusReader {
            timeout: Duration::from_secs(2),
            port: PEER_PORT,
        }
    }
}

impl StatusReader for HttpStatusReader {
    fn read<'a>(&'a self, pod: &'a NodeName, ip: &'a str) -> BoxFuture<'a, Result<Report, String>> {
        Box::pin(async move {
            let authority = format!("{ip}:{}", self.port);
            let response = http::get(&authority, "/status", self.timeout)
                .await
                .map_err(|e| e.to_string())?;
            if !response.is_success() {
                return Err(format!("{authority}/status answered {}", response.status));
            }
            parse_status(pod, &response.body)
        })
    }
}

/// Parses a `/status` body, refusing one from another node (a pod IP reused by a new pod).
///
/// # Errors
///
/// A message when the body is not a status or names another node.
pub fn parse_status(pod: &NodeName, body: &str) -> Result<Report, String> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("invalid /status from {pod}: {e}"))?;
    Report::from_status(pod.as_str(), &value)
}

/// True when the pod's Ready condition is True and it is not being deleted.
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// True when the pod is on a planned exit: it has a `deletionTimestamp` (rolling update,
/// eviction, node drain, `kubectl delete pod`) and runs through its grace period.
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// True while the pod's containers may still run: it exists and has not finished
/// (`Succeeded` or `Failed`). A terminating pod counts: it is handing its shards off.
pub fn is_running(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The pod's IP, once it has one.
pub fn pod_ip(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()?
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
}

/// The table entry of a node at `ip`: peers dial `{ip}:7070`, clients `{ip}:8080`.
pub fn node_info(ip: &str) -> NodeInfo {
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    NodeInfo {
        peer_addr: format!("{host}:{PEER_PORT}"),
        client_addr: Some(format!("{host}:{CLIENT_PORT}")),
        zone: None,
        member_since: 0,
    }
}

/// The label holding a pod's failure zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The pod's zone, from its own `topology.kubernetes.io/zone` label: Kubernetes copies the
/// node's topology labels onto the pod when it binds it (the `PodTopologyLabelsAdmission`
/// feature), and a label set by hand counts too. Reading it from the Node instead would need
/// cluster-wide `get` on nodes, which the operator's namespaced RBAC does not have.
pub fn pod_zone(pod: &Pod) -> Option<String> {
    pod.labels()
        .get(ZONE_LABEL)
        .filter(|z| !z.is_empty())
        .cloned()
}

/// The views of pods `0..replicas` of the StatefulSet `prefix`, with the reports of the ready
/// ones read concurrently through `reader`. A pod that does not exist (yet) is a view that is
/// neither running nor ready; pods at or above `replicas` (still terminating after a removal)
/// are left out, as [`crate::decide()`] expects.
///
/// # Errors
///
/// [`Error::Shard`] when `prefix` does not make valid pod names.
pub async fn pod_views(
    prefix: &str,
    replicas: u32,
    pods: &[Pod],
    reader: &dyn StatusReader,
) -> Result<Vec<PodView>, Error> {
    let by_name: BTreeMap<String, &Pod> = pods.iter().map(|p| (p.name_any(), p)).collect();
    let mut views = Vec::new();
    for ordinal in 0..replicas {
        let name = pod_name(prefix, ordinal)?;
        let pod = by_name.get(name.as_str()).copied();
        let ip = pod.and_then(pod_ip);
        views.push(PodView {
            running: pod.is_some_and(is_running),
            ready: pod.is_some_and(is_ready) && ip.is_some(),
            info: ip.map(|ip| NodeInfo {
                zone: pod.and_then(pod_zone),
                ..node_info(ip)
            }),
            report: None,
            terminating: pod.is_some_and(is_terminating),
            name,
        });
    }
    let by_name = &by_name;
    let reads = views.iter().map(|view| async move {
        let ip = by_name.get(view.name.as_str()).and_then(|p| pod_ip(p));
        match ip {
            // A terminating pod is no longer Ready, but it still hands its shards off and
            // reports how far it got.
            Some(ip) if view.ready || (view.terminating && view.running) => {
                match reader.read(&view.name, ip).await {
                    Ok(report) => Some(report),
                    Err(e) => {
                        tracing::debug!(pod = %view.name, error = %e, "no /status this pass");
                        None
                    }
                }
            }
            _ => None,
        }
    });
    let reports = join_all(reads).await;
    for (view, report) in views.iter_mut().zip(reports) {
        view.report = report;
    }
    Ok(views)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> NodeName {
        NodeName::new(s).expect("valid name")
    }

    #[test]
    fn a_status_body_becomes_a_report() {
        let body = r#"{"node":"chat-1","epoch":7,"shardsOwned":3,"movesInFlight":2,
            "movesDone":[{"shard":4,"from":"chat-1","to":"chat-0"}],"rooms":1,
            "connections":0,"peersConnected":1,"ready":true}"#;
        let report = parse_status(&name("chat-1"), body).expect("report");
        assert_eq!(report.epoch, 7);
        assert_eq!(report.moves_in_flight, 2);
        assert_eq!(report.moves_done.len(), 1);
        assert_eq!(report.moves_done[0].from, name("chat-1"));
    }

    #[test]
    fn a_status_from_another_node_at_the_same_ip_is_refused() {
        let err = parse_status(&name("chat-1"), r#"{"node":"chat-7","epoch":1}"#)
            .expect_err("wrong node");
        assert!(err.contains("answers as chat-7"));
    }

    #[test]
    fn a_pods_zone_comes_from_its_zone_label_and_an_empty_one_is_no_zone() {
        let mut pod = Pod::default();
        assert_eq!(pod_zone(&pod), None);
        pod.labels_mut()
            .insert(ZONE_LABEL.to_owned(), "eu-west-1a".to_owned());
        assert_eq!(pod_zone(&pod).as_deref(), Some("eu-west-1a"));
        pod.labels_mut()
            .insert(ZONE_LABEL.to_owned(), String::new());
        assert_eq!(pod_zone(&pod), None);
    }

    #[test]
    fn table_addresses_use_the_pod_ip_and_fixed_ports() {
        let info = node_info("10.0.0.5");
        assert_eq!(info.peer_addr, "10.0.0.5:7070");
        assert_eq!(info.client_addr.as_deref(), Some("10.0.0.5:8080"));
        assert_eq!(node_info("fd00::5").peer_addr, "[fd00::5]:7070");
    }
}
