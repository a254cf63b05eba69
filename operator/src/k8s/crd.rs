//! The `ChatCluster` custom resource (`roomshard.dev/v1alpha1`, short name `chat`).
//!
//! The schema is generated from these types (kube's derive and schemars), so every field's doc
//! comment becomes its description in `kubectl explain chat.spec`, and bounds, formats and the
//! immutability of `shards` are enforced by the API server itself: `kubectl apply` of a bad
//! spec is refused with the field named, before the controller ever sees it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A sharded chat cluster: node pods that host chat rooms, spread over `shards` shards, with
/// graceful hand-off of rooms when it grows or shrinks.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "roomshard.dev",
    version = "v1alpha1",
    kind = "ChatCluster",
    plural = "chatclusters",
    singular = "chatcluster",
    shortname = "chat",
    namespaced,
    doc = "A sharded chat cluster: node pods hosting chat rooms, with graceful hand-off of rooms on scaling.",
    status = "ChatClusterStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyNodes"}"#,
    printcolumn = r#"{"name":"Updated","type":"integer","jsonPath":".status.updatedReplicas"}"#,
    printcolumn = r#"{"name":"Shards","type":"integer","jsonPath":".spec.shards"}"#,
    printcolumn = r#"{"name":"Epoch","type":"integer","jsonPath":".status.epoch"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChatClusterSpec {
    /// Number of node pods. Lowering it drains the highest-numbered pods first: their rooms
    /// are handed off before the pods are removed. Also set through the scale subresource
    /// (`kubectl scale chat NAME --replicas N`, a HorizontalPodAutoscaler) and, when
    /// `autoscaling` is set, by the operator itself.
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Number of shards rooms are hashed into. Fixed for the life of the cluster.
    #[serde(default = "default_shards")]
    #[schemars(range(min = 1, max = 65536))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "shards is immutable"}]))]
    pub shards: i32,
    /// Container image of the chat node.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Image pull policy of the node containers (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// CPU and memory requests and limits of each node container, replacing the defaults as a
    /// whole. Unset: requests of 250m CPU and 128Mi memory and a 512Mi memory limit (what the
    /// scheduler and an autoscaler need); `{}` asks for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Messages of history kept per room (for `join` with `since`).
    #[serde(default = "default_history")]
    #[schemars(range(min = 1, max = 100000))]
    pub history_per_room: i32,
    /// Largest message text, in bytes.
    #[serde(default = "default_max_message")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_message_bytes: i32,
    /// The client Service.
    #[serde(default)]
    pub service: ServiceSpec,
    /// An optional Ingress for WebSocket clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// How long a hand-off of one shard may take before the drain is reported stuck
    /// (a duration such as `30s` or `2m`).
    #[serde(default = "default_handoff_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub handoff_timeout: String,
    /// Copies of every shard's rooms. 2 (the default): each shard has an owner and a follower
    /// on another pod that holds every acknowledged message, so a crashed pod loses none. 1:
    /// owners only, as before replication (a crashed pod's rooms restart empty elsewhere).
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 2))]
    pub replication: i32,
    /// Client authentication.
    #[serde(default)]
    pub auth: AuthSpec,
    /// Node selector for the node pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the node pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity of the node pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Topology spread constraints of the node pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Let the operator set `replicas` from the load the nodes report. Leave it unset when a
    /// HorizontalPodAutoscaler drives the scale subresource instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
}

/// Autoscaling by the operator: it reads each ready node's load, computes the replica count
/// the targets ask for, and changes `spec.replicas` through the scale subresource, so a
/// scale-in drains like any other.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.minReplicas <= self.maxReplicas", "message": "autoscaling.minReplicas must not exceed autoscaling.maxReplicas", "fieldPath": ".maxReplicas"},
]))]
pub struct AutoscalingSpec {
    /// The fewest node pods.
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// The most node pods.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// The per-pod load to aim at; at least one target.
    pub targets: AutoscalingTargets,
    /// The count rises only to the lowest recommendation within this window (a duration
    /// such as `30s`): a short spike does not add pods.
    #[serde(default = "default_scale_up_window")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub scale_up_stabilization: String,
    /// The count falls only to the highest recommendation within this window: pods are
    /// removed only when the load has been low for this long.
    #[serde(default = "default_scale_down_window")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub scale_down_stabilization: String,
    /// The most pods added or removed in one step.
    #[serde(default = "default_max_step")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_step: i32,
}

/// Per-pod load targets; the largest replica count any of them asks for wins.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.connectionsPerPod) || has(self.deliveriesPerSecPerPod)", "message": "autoscaling.targets needs connectionsPerPod or deliveriesPerSecPerPod"},
]))]
pub struct AutoscalingTargets {
    /// Open client connections per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub connections_per_pod: Option<i64>,
    /// Chat messages delivered to clients per second per pod (averaged over each node's
    /// 10 s load window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub deliveries_per_sec_per_pod: Option<i64>,
}

/// Image pull policy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Pull on every start.
    Always,
    /// Pull when the node lacks the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

/// The client Service.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port clients connect to (WebSocket at `/ws`).
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Annotations for the Service (load balancer settings, for instance).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ServiceSpec {
    fn default() -> ServiceSpec {
        ServiceSpec {
            type_: ServiceType::default(),
            port: default_service_port(),
            annotations: BTreeMap::new(),
        }
    }
}

/// Service types.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster (use an Ingress from outside).
    #[default]
    ClusterIP,
    /// A port on every Kubernetes node.
    NodePort,
    /// A cloud load balancer.
    LoadBalancer,
}

/// An Ingress for the client Service, with what WebSocket traffic needs.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressSpec {
    /// Create the Ingress.
    #[serde(default)]
    pub enabled: bool,
    /// IngressClass to use (e.g. `nginx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Host name clients use.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Secret with the TLS certificate for `host`; without it the Ingress serves plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Extra annotations (long read/send timeouts for WebSockets are added for ingress-nginx).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Client authentication.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthSpec {
    /// `Disabled`: clients name themselves with `?user=` (development only). `Token`: clients
    /// pass `?token=`, a JWT signed with HS256 by the key in `secretRef`.
    #[serde(default)]
    pub mode: AuthMode,
    /// The Secret key holding the token signing key (required when mode is Token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

/// Authentication modes.
///
/// Not `Off`/`On`: YAML 1.1 parsers (kubectl's among them) read an unquoted `Off` as the
/// boolean `false`, so `mode: Off` would be refused as a wrong type.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AuthMode {
    /// No authentication.
    #[default]
    Disabled,
    /// Signed tokens.
    Token,
}

/// A key in a Secret of the cluster's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// What the controller observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatClusterStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Running, Scaling, Draining or Degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Node pods that are Ready (cluster members).
    #[serde(default)]
    pub ready_nodes: i32,
    /// Node pods that run the current pod template (the StatefulSet's `updatedReplicas`);
    /// below the replica count while a rolling update goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,
    /// Epoch of the assignment table in the ConfigMap.
    #[serde(default)]
    pub epoch: i64,
    /// Shards owned by each node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shards_per_node: BTreeMap<String, i32>,
    /// Hand-offs in flight.
    #[serde(default)]
    pub moves_in_flight: i32,
    /// Shards whose follower reports a live copy of their rooms (0 with `replication: 1`);
    /// the `Replicated` condition says how many have none.
    #[serde(default)]
    pub shards_with_follower: i32,
    /// Pods being drained before a scale-down.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<String>,
    /// When the current drain started (RFC 3339), to detect a stuck drain across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_started: Option<String>,
    /// Ready, Progressing, Degraded, UpToDate and Replicated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Node pods that exist (ready or not, draining included): the scale subresource's
    /// `status.replicas`.
    #[serde(default)]
    pub replicas: i32,
    /// The label selector of the node pods, as a string: what the scale subresource reports,
    /// so a HorizontalPodAutoscaler finds the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// What the operator's autoscaler did last (only with `spec.autoscaling`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
}

/// The autoscaler's last change of `spec.replicas`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// The replica count the autoscaler set last.
    #[serde(default)]
    pub desired_replicas: i32,
    /// The replica count before that change.
    #[serde(default)]
    pub previous_replicas: i32,
    /// When it set it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Why, in words: the load per pod against its target, or a bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn default_shards() -> i32 {
    256
}

fn default_image() -> String {
    format!(
        "ghcr.io/roomshard/roomshard-node:{}",
        env!("CARGO_PKG_VERSION")
    )
}

fn default_history() -> i32 {
    100
}

fn default_max_message() -> i32 {
    16 * 1024
}

fn default_service_port() -> i32 {
    80
}

fn default_handoff_timeout() -> String {
    "30s".to_owned()
}

fn default_replication() -> i32 {
    2
}

fn default_scale_up_window() -> String {
    "0s".to_owned()
}

fn default_scale_down_window() -> String {
    "5m".to_owned()
}

fn default_max_step() -> i32 {
    4
}

/// The `CustomResourceDefinition` of [`ChatCluster`] as YAML: what `roomshard-operator crd`
/// prints and `crds/chatcluster.yaml` holds.
///
/// # Errors
///
/// When the generated CRD cannot be serialized (a bug in the types, never outside input).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let yaml = serde_yaml::to_string(&ChatCluster::crd())?;
    Ok(format!(
        "# Generated by `roomshard-operator crd` from operator/src/k8s/crd.rs; do not edit.\n{yaml}"
    ))
}

#[cfg(test)]
mod tests;
