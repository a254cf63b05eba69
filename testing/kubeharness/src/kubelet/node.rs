//! A Node as the kubelet keeps it: registered with its capacity, zone and Ready condition, its
//! Lease in `kube-node-lease` renewed every 10 s (what the node lifecycle controller watches),
//! and its status posted again every minute.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// CPU each Node offers (pods run as processes sharing the machine, so this only feeds the
/// scheduler's arithmetic).
pub const CPU: &str = "8";
/// Memory each Node offers, in bytes.
pub const MEMORY_BYTES: u64 = 16 << 30;
/// The kubelet version the Nodes report.
pub const KUBELET_VERSION: &str = "v1.37.2";
const FIELD_MANAGER: &str = "roomshard-process-kubelet";
const LEASE_SECONDS: i32 = 40;

/// RFC 3339 with seconds, as `metav1.Time` is written.
pub(crate) fn now_time() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// RFC 3339 with microseconds, as `metav1.MicroTime` is written.
pub(crate) fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// Registers the Node (or takes over an existing one of that name) and posts its status.
///
/// # Errors
///
/// When the API server refuses.
pub async fn register(
    client: &Client,
    name: &str,
    zone: Option<&str>,
) -> Result<String, kube::Error> {
    let nodes = Api::<Node>::all(client.clone());
    let mut labels = json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
    });
    if let Some(zone) = zone {
        labels["topology.kubernetes.io/zone"] = json!(zone);
    }
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = nodes.patch(name, &params, &Patch::Apply(&node)).await?;
    post_status(client, name).await?;
    Ok(applied.metadata.uid.unwrap_or_default())
}

/// Writes the Node's status: capacity, addresses, versions and a Ready condition.
async fn post_status(client: &Client, name: &str) -> Result<(), kube::Error> {
    let now = now_time();
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let capacity = json!({"cpu": CPU, "memory": MEMORY_BYTES.to_string(), "pods": "110",
                          "ephemeral-storage": "100Gi"});
    let status = json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
        "status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "roomshard process kubelet is posting ready status"),
            ],
            "addresses": [{"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "machineID": name, "systemUUID": name, "bootID": name,
                "kernelVersion": "process", "osImage": "roomshard process kubelet",
                "containerRuntimeVersion": "process://1", "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": std::env::consts::ARCH.replace("x86_64", "amd64"),
            },
        },
    });
    Api::<Node>::all(client.clone())
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await?;
    Ok(())
}

/// Renews the Node's Lease every 10 s and posts its status every minute, until `stop`.
pub async fn heartbeat(client: Client, name: String, uid: String, stop: CancellationToken) {
    let leases = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
    let mut beats: u32 = 0;
    loop {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}]},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS,
                     "renewTime": now_micro()},
        });
        if let Err(e) = leases
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await
        {
            tracing::warn!(node = %name, error = %e, "lease renewal failed");
        }
        if beats % 6 == 5
            && let Err(e) = post_status(&client, &name).await
        {
            tracing::warn!(node = %name, error = %e, "node status update failed");
        }
        beats = beats.wrapping_add(1);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}
