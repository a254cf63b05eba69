//! The StatefulSet of node pods.
//!
//! Why a StatefulSet: pods get stable names with ordinals (`chat-0`, `chat-1`, ...), which are
//! the node names in the assignment table, and scaling down removes the highest ordinals, which
//! are the ones the drain empties first. `podManagementPolicy: Parallel` starts and stops pods
//! without waiting for their neighbours: membership comes from readiness, not from start order.
//!
//! A pod's planned exit (rolling update, eviction, node drain, `kubectl delete pod`), in order:
//!
//! 1. The pod gets a `deletionTimestamp`. The operator sees it (a pod event) and marks the pod
//!    draining at once: a table moves its shards to the others, and the node hands them off
//!    (freeze, snapshot, forward) while it still serves.
//! 2. `preStop` sleeps [`PRESTOP_SLEEP_SECONDS`], so endpoints and Ingress controllers stop
//!    sending new connections to it, and the hand-off usually finishes meanwhile.
//! 3. SIGTERM: the node's exit drain waits, at most `--exit-drain-timeout` (=
//!    `spec.handoffTimeout`), until it owns nothing and no move names it; then it tells its
//!    clients `reconnect`, waits up to [`SHUTDOWN_GRACE_SECONDS`] for them to go, and gives its
//!    peer links up to 3 s to deliver what they hold.
//!
//! [`termination_grace_seconds`] covers all of that plus [`TERMINATION_MARGIN_SECONDS`] before
//! the kubelet's SIGKILL, so a hand-off that fits in `spec.handoffTimeout` always completes.
//!
//! Updates use `updateStrategy: OnDelete`, and the operator rolls the pods itself (see
//! [`crate::k8s::rollout`]): one pod at a time, highest ordinal first, each deleted (and so
//! drained, as above), and the next one only once its replacement is Ready, has its shards
//! back by hand-off and nothing else moves. The StatefulSet's own `RollingUpdate` cannot be
//! used with `podManagementPolicy: Parallel` (immutable): with the `MaxUnavailableStatefulSet`
//! feature (on by default in Kubernetes 1.37) it deletes every old pod that is not yet
//! available at once, with no budget.

use k8s_openapi::api::apps::v1::StatefulSet;
use serde_json::json;

use super::{CLIENT_PORT, Owner, PEER_PORT, PEER_SECRET_KEY, to_json, typed};
use crate::Error;
use crate::k8s::checks::Checked;
use crate::k8s::crd::ChatClusterSpec;

/// Seconds the `preStop` hook waits before the container gets SIGTERM.
pub const PRESTOP_SLEEP_SECONDS: i64 = 5;
/// Seconds a node waits for its clients to reconnect elsewhere after SIGTERM (`--shutdown-grace`).
pub const SHUTDOWN_GRACE_SECONDS: i64 = 15;
/// Seconds kept after the exit drain and the shutdown grace: 3 s of peer-link flush, the
/// process ending, and slack.
pub const TERMINATION_MARGIN_SECONDS: i64 = 10;
/// Seconds a pod must stay Ready before the StatefulSet counts it available
/// (`status.availableReplicas`). The operator's rollout does not wait on it: it waits for the
/// replacement's hand-offs themselves.
pub const MIN_READY_SECONDS: i64 = 10;

/// The node's restart marker, in the pod's `/tmp` emptyDir (see the node's
/// `--restart-marker`).
pub const RESTART_MARKER: &str = "/tmp/roomshard-started";

/// Seconds from the start of termination to SIGKILL for an exit drain of `exit_drain_seconds`:
/// `preStop`, the exit drain, the shutdown grace and the margin.
pub fn termination_grace_seconds(exit_drain_seconds: i64) -> i64 {
    PRESTOP_SLEEP_SECONDS + exit_drain_seconds + SHUTDOWN_GRACE_SECONDS + TERMINATION_MARGIN_SECONDS
}
/// Where the peer-link secret is mounted.
pub const PEER_SECRET_DIR: &str = "/etc/roomshard/peer";
/// Where the token signing key is mounted when authentication is on.
pub const AUTH_KEY_DIR: &str = "/etc/roomshard/auth";
/// The user the node runs as (the distroless `nonroot` user).
const RUN_AS_USER: i64 = 65532;

/// CPU each node pod requests when `spec.resources` is unset. In the throughput benchmark
/// (README, "Benchmarks") a node cost 16.8 CPU-seconds per million deliveries, so the
/// benchmark's 10,000 deliveries/s per node took about 170m; 250m covers that with room for
/// the hand-off bursts of a scale or a rollout.
pub const DEFAULT_CPU_REQUEST: &str = "250m";
/// Memory each node pod requests when `spec.resources` is unset: an idle connection measured
/// 7,241 bytes (RSS), so 10,000 connections take about 70 MiB, plus the history of the rooms
/// (100 messages per room by default) and the runtime.
pub const DEFAULT_MEMORY_REQUEST: &str = "128Mi";
/// The memory limit when `spec.resources` is unset: four times the request, so a node that
/// grows without bound (a leak, a flood of rooms) is restarted and its shards handed to the
/// others before it takes the Kubernetes node's memory from its neighbours. There is no CPU
/// limit on purpose: CFS throttling stalls every room of the pod at once, and message latency
/// is what the cluster is measured by.
pub const DEFAULT_MEMORY_LIMIT: &str = "512Mi";

/// The node container's resources: `spec.resources` as written (`{}` asks for none), or
/// [`DEFAULT_CPU_REQUEST`], [`DEFAULT_MEMORY_REQUEST`] and [`DEFAULT_MEMORY_LIMIT`]. Requests
/// are what the scheduler packs pods by and what a HorizontalPodAutoscaler's utilisation is a
/// share of, so a pod without them is placed blindly and cannot be autoscaled on CPU.
///
/// # Errors
///
/// [`Error::Invalid`] when `spec.resources` cannot be serialized (a bug).
pub fn node_resources(spec: &ChatClusterSpec) -> Result<serde_json::Value, Error> {
    match &spec.resources {
        Some(resources) => to_json(resources),
        None => Ok(json!({
            "requests": {"cpu": DEFAULT_CPU_REQUEST, "memory": DEFAULT_MEMORY_REQUEST},
            "limits": {"memory": DEFAULT_MEMORY_LIMIT},
        })),
    }
}

/// The StatefulSet for `spec` with `replicas` pods (the count the reconcile decided, which may
/// be above `spec.replicas` while a drain is under way).
///
/// # Errors
///
/// [`Error::Invalid`] when a spec value does not fit the object (a bug in this builder).
pub fn statefulset(
    owner: &Owner,
    spec: &ChatClusterSpec,
    checked: &Checked,
    replicas: u32,
) -> Result<StatefulSet, Error> {
    let names = &owner.names;
    // Whole seconds, rounded up: the exit drain must not be shorter than the hand-off timeout.
    let exit_drain_seconds = i64::try_from(checked.handoff_timeout.as_millis().div_ceil(1000))
        .unwrap_or(i64::MAX / 4)
        .max(1);
    let mut args = vec![
        format!("--listen=0.0.0.0:{CLIENT_PORT}"),
        format!("--peer-listen=0.0.0.0:{PEER_PORT}"),
        format!("--table-configmap={}", names.configmap),
        format!("--cluster-secret-file={PEER_SECRET_DIR}/{PEER_SECRET_KEY}"),
        format!("--shards={}", checked.shards),
        format!("--history-per-room={}", spec.history_per_room),
        format!("--max-message-bytes={}", spec.max_message_bytes),
        format!("--handoff-timeout={}", spec.handoff_timeout),
        format!("--exit-drain-timeout={exit_drain_seconds}s"),
        format!("--shutdown-grace={SHUTDOWN_GRACE_SECONDS}s"),
        "--log-format=json".to_owned(),
    ];
    let mut volumes = vec![
        json!({"name": "peer-key", "secret": {
            "secretName": names.secret, "defaultMode": 0o440,
            "items": [{"key": PEER_SECRET_KEY, "path": PEER_SECRET_KEY}]}}),
        // A writable /tmp under a read-only root file system.
        json!({"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}}),
    ];
    let mut mounts = vec![
        json!({"name": "peer-key", "mountPath": PEER_SECRET_DIR, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    if let Some(key) = &checked.auth_key {
        args.push(format!("--auth-key-file={AUTH_KEY_DIR}/auth-key"));
        volumes.push(json!({"name": "auth-key", "secret": {
            "secretName": key.name, "defaultMode": 0o440,
            "items": [{"key": key.key, "path": "auth-key"}]}}));
        mounts.push(json!({"name": "auth-key", "mountPath": AUTH_KEY_DIR, "readOnly": true}));
    }

    let mut container = json!({
        "name": "node",
        "image": spec.image,
        "args": args,
        "env": [
            {"name": "ROOMSHARD_NODE_NAME",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "ROOMSHARD_NAMESPACE",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            // In the pod's emptyDir: a process the kubelet restarts in the pod finds it, and
            // leaves the shards the table still gives its node to their followers.
            {"name": "ROOMSHARD_RESTART_MARKER", "value": RESTART_MARKER},
        ],
        "ports": [
            {"name": "client", "containerPort": CLIENT_PORT, "protocol": "TCP"},
            {"name": "peer", "containerPort": PEER_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "client"},
            "periodSeconds": 2, "failureThreshold": 2, "timeoutSeconds": 1,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "client"},
            "initialDelaySeconds": 5, "periodSeconds": 10, "failureThreshold": 3,
            "timeoutSeconds": 2,
        },
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
        "resources": node_resources(spec)?,
    });
    if let Some(policy) = spec.image_pull_policy {
        container["imagePullPolicy"] = to_json(&policy)?;
    }

    let mut pod_spec = json!({
        "serviceAccountName": names.node_access,
        "terminationGracePeriodSeconds": termination_grace_seconds(exit_drain_seconds),
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    });
    if let Some(selector) = &spec.node_selector {
        pod_spec["nodeSelector"] = to_json(selector)?;
    }
    if let Some(tolerations) = &spec.tolerations {
        pod_spec["tolerations"] = to_json(tolerations)?;
    }
    if let Some(affinity) = &spec.affinity {
        pod_spec["affinity"] = to_json(affinity)?;
    }
    if let Some(spread) = &spec.topology_spread_constraints {
        pod_spec["topologySpreadConstraints"] = to_json(spread)?;
    }

    let doc = json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": to_json(&owner.meta(&names.statefulset))?,
        "spec": {
            "replicas": replicas,
            "serviceName": names.peers_service,
            "podManagementPolicy": "Parallel",
            // The operator deletes one pod at a time, each drained by its deletionTimestamp
            // (see the module doc and `k8s::rollout`).
            "updateStrategy": {"type": "OnDelete"},
            "minReadySeconds": MIN_READY_SECONDS,
            "selector": {"matchLabels": owner.selector()},
            "template": {
                "metadata": {"labels": owner.labels()},
                "spec": pod_spec,
            },
        },
    });
    typed(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::checks::check;
    use crate::k8s::children::tests::{assert_owned, cluster};
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde_json::json;

    fn build(spec: serde_json::Value, replicas: u32) -> StatefulSet {
        let cluster = cluster(spec);
        let owner = Owner::of(&cluster).expect("owner");
        let checked = check(&cluster.spec).expect("valid spec");
        statefulset(&owner, &cluster.spec, &checked, replicas).expect("statefulset")
    }

    fn pod(sts: &StatefulSet) -> PodSpec {
        sts.spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .expect("pod spec")
    }

    fn node(sts: &StatefulSet) -> Container {
        pod(sts).containers[0].clone()
    }

    fn has_arg(c: &Container, arg: &str) -> bool {
        c.args.iter().flatten().any(|a| a == arg)
    }

    #[test]
    fn the_statefulset_runs_replicas_parallel_pods_selected_by_the_common_labels() {
        let sts = build(json!({"replicas": 3}), 4);
        assert_owned(&sts.metadata, "chat");
        let spec = sts.spec.clone().expect("spec");
        assert_eq!(spec.replicas, Some(4));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(spec.service_name.as_deref(), Some("chat-peers"));
        let selector = spec.selector.match_labels.expect("match labels");
        let pod_labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .expect("labels");
        for (k, v) in &selector {
            assert_eq!(pod_labels.get(k), Some(v));
        }
    }

    #[test]
    fn the_restart_marker_is_in_the_pods_empty_dir() {
        let sts = build(json!({"replicas": 1}), 1);
        let env = node(&sts).env.expect("env");
        let marker = env
            .iter()
            .find(|e| e.name == "ROOMSHARD_RESTART_MARKER")
            .and_then(|e| e.value.clone())
            .expect("a restart marker");
        let mount = node(&sts)
            .volume_mounts
            .unwrap_or_default()
            .into_iter()
            .find(|m| marker.starts_with(&format!("{}/", m.mount_path)))
            .expect("the marker is on a mounted volume");
        let volume = pod(&sts)
            .volumes
            .unwrap_or_default()
            .into_iter()
            .find(|v| v.name == mount.name)
            .expect("the mount's volume");
        assert!(
            volume.empty_dir.is_some(),
            "an emptyDir outlives the container, not the pod"
        );
    }

    #[test]
    fn the_node_gets_its_name_and_namespace_from_the_downward_api() {
        let env = node(&build(json!({"replicas": 1}), 1)).env.expect("env");
        let field = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value_from.clone())
                .and_then(|v| v.field_ref)
                .map(|f| f.field_path)
        };
        assert_eq!(
            field("ROOMSHARD_NODE_NAME").as_deref(),
            Some("metadata.name")
        );
        assert_eq!(
            field("ROOMSHARD_NAMESPACE").as_deref(),
            Some("metadata.namespace")
        );
    }

    #[test]
    fn the_node_listens_on_fixed_ports_and_follows_the_configmap() {
        let c = node(&build(
            json!({"replicas": 1, "shards": 64, "handoffTimeout": "20s"}),
            1,
        ));
        for arg in [
            "--listen=0.0.0.0:8080",
            "--peer-listen=0.0.0.0:7070",
            "--table-configmap=chat-assignments",
            "--cluster-secret-file=/etc/roomshard/peer/cluster-secret",
            "--shards=64",
            "--handoff-timeout=20s",
        ] {
            assert!(has_arg(&c, arg), "missing {arg} in {:?}", c.args);
        }
        assert!(
            !c.args
                .iter()
                .flatten()
                .any(|a| a.starts_with("--auth-key-file"))
        );
    }

    #[test]
    fn probes_check_readyz_and_healthz_on_the_client_port() {
        let c = node(&build(json!({"replicas": 1}), 1));
        let readiness = c
            .readiness_probe
            .and_then(|p| p.http_get)
            .expect("readiness");
        assert_eq!(readiness.path.as_deref(), Some("/readyz"));
        assert_eq!(readiness.port, IntOrString::String("client".into()));
        let liveness = c.liveness_probe.and_then(|p| p.http_get).expect("liveness");
        assert_eq!(liveness.path.as_deref(), Some("/healthz"));
    }

    #[test]
    fn a_terminating_pod_has_time_to_tell_its_clients_to_reconnect() {
        let sts = build(json!({"replicas": 1}), 1);
        let c = node(&sts);
        let sleep = c
            .lifecycle
            .clone()
            .and_then(|l| l.pre_stop)
            .and_then(|h| h.sleep)
            .expect("preStop sleep");
        assert_eq!(sleep.seconds, PRESTOP_SLEEP_SECONDS);
        assert!(has_arg(
            &c,
            &format!("--shutdown-grace={SHUTDOWN_GRACE_SECONDS}s")
        ));
        let grace = pod(&sts).termination_grace_period_seconds.expect("grace");
        assert!(grace > PRESTOP_SLEEP_SECONDS + SHUTDOWN_GRACE_SECONDS);
    }

    #[test]
    fn the_grace_period_fits_prestop_the_whole_hand_off_timeout_and_the_reconnects() {
        // The default hand-off timeout is 30 s.
        let sts = build(json!({"replicas": 3}), 3);
        let c = node(&sts);
        assert!(has_arg(&c, "--exit-drain-timeout=30s"));
        let grace = pod(&sts).termination_grace_period_seconds.expect("grace");
        assert_eq!(
            grace,
            PRESTOP_SLEEP_SECONDS + 30 + SHUTDOWN_GRACE_SECONDS + TERMINATION_MARGIN_SECONDS
        );

        // A longer hand-off timeout gets a longer grace period; part seconds round up.
        let slow = build(json!({"replicas": 3, "handoffTimeout": "90500ms"}), 3);
        assert!(has_arg(&node(&slow), "--exit-drain-timeout=91s"));
        assert_eq!(
            pod(&slow).termination_grace_period_seconds,
            Some(termination_grace_seconds(91))
        );
    }

    #[test]
    fn updates_replace_no_pod_by_themselves_the_operator_deletes_them_one_at_a_time() {
        let spec = build(json!({"replicas": 3}), 3).spec.expect("spec");
        let strategy = spec.update_strategy.expect("update strategy");
        assert_eq!(strategy.type_.as_deref(), Some("OnDelete"));
        assert!(
            strategy.rolling_update.is_none(),
            "rollingUpdate is refused with OnDelete"
        );
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(spec.min_ready_seconds, Some(MIN_READY_SECONDS as i32));
    }

    #[test]
    fn pods_run_as_non_root_on_a_read_only_root_file_system() {
        let sts = build(json!({"replicas": 1}), 1);
        let pod_sc = pod(&sts).security_context.expect("pod security context");
        assert_eq!(pod_sc.run_as_non_root, Some(true));
        let sc = node(&sts)
            .security_context
            .expect("container security context");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
    }

    #[test]
    fn the_peer_secret_is_mounted_and_the_auth_key_only_with_token_auth() {
        let plain = pod(&build(json!({"replicas": 1}), 1));
        let volumes: Vec<String> = plain
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.clone())
            .collect();
        assert!(volumes.contains(&"peer-key".to_owned()));
        assert!(!volumes.contains(&"auth-key".to_owned()));
        let peer = plain
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "peer-key");
        let secret = peer.and_then(|v| v.secret.clone()).expect("secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("chat-peer-key"));

        let sts = build(
            json!({"replicas": 1, "auth": {"mode": "Token",
                   "secretRef": {"name": "jwt", "key": "hs256"}}}),
            1,
        );
        assert!(has_arg(
            &node(&sts),
            "--auth-key-file=/etc/roomshard/auth/auth-key"
        ));
        let auth = pod(&sts)
            .volumes
            .into_iter()
            .flatten()
            .find(|v| v.name == "auth-key");
        let secret = auth.and_then(|v| v.secret).expect("auth secret volume");
        assert_eq!(secret.secret_name.as_deref(), Some("jwt"));
        assert_eq!(secret.items.expect("items")[0].key, "hs256");
    }

    #[test]
    fn scheduling_fields_and_resources_are_passed_through() {
        let sts = build(
            json!({"replicas": 1,
                "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "chat", "operator": "Exists", "effect": "NoSchedule"}],
                "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]}},
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                    "whenUnsatisfiable": "ScheduleAnyway"}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                "imagePullPolicy": "IfNotPresent"}),
            1,
        );
        let pod = pod(&sts);
        assert_eq!(
            pod.node_selector
                .expect("selector")
                .get("disk")
                .map(String::as_str),
            Some("ssd")
        );
        assert_eq!(
            pod.tolerations.expect("tolerations")[0].key.as_deref(),
            Some("chat")
        );
        assert!(pod.affinity.and_then(|a| a.pod_anti_affinity).is_some());
        assert_eq!(
            pod.topology_spread_constraints.expect("spread")[0].max_skew,
            1
        );
        let c = pod.containers[0].clone();
        assert!(
            c.resources
                .and_then(|r| r.requests)
                .is_some_and(|r| r.contains_key("cpu"))
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    }

    fn resources(sts: &StatefulSet) -> serde_json::Value {
        serde_json::to_value(node(sts).resources).expect("resources serialize")
    }

    #[test]
    fn without_spec_resources_the_node_requests_the_measured_defaults_and_a_memory_limit() {
        let sts = build(json!({"replicas": 3}), 3);
        assert_eq!(
            resources(&sts),
            json!({
                "requests": {"cpu": DEFAULT_CPU_REQUEST, "memory": DEFAULT_MEMORY_REQUEST},
                "limits": {"memory": DEFAULT_MEMORY_LIMIT},
            })
        );
        assert_eq!(
            (
                DEFAULT_CPU_REQUEST,
                DEFAULT_MEMORY_REQUEST,
                DEFAULT_MEMORY_LIMIT
            ),
            ("250m", "128Mi", "512Mi")
        );
    }

    #[test]
    fn spec_resources_replace_the_defaults_as_a_whole() {
        let sts = build(
            json!({"replicas": 1,
                "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "4", "memory": "1Gi"}}}),
            1,
        );
        assert_eq!(
            resources(&sts),
            json!({"requests": {"cpu": "2"}, "limits": {"cpu": "4", "memory": "1Gi"}}),
            "no default is merged into what the spec says"
        );
    }

    #[test]
    fn empty_spec_resources_ask_for_no_requests_or_limits() {
        let sts = build(json!({"replicas": 1, "resources": {}}), 1);
        assert_eq!(resources(&sts), json!({}));
    }
}
