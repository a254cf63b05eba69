//! The reconciler against an in-memory API server (memkube), one test per branch. The test
//! plays the kubelet and the StatefulSet controller (pods and their readiness) and the nodes
//! (their `/status`, through a fake reader).

mod support;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use operator::k8s::crd::ChatCluster;
use serde_json::json;
use shard::AssignmentTable;
use support::{Harness, NS, TestResult, condition, n};

/// Every child of cluster `chat`, by kubectl-style resource and name.
const CHILDREN: [(&str, &str); 9] = [
    ("statefulsets.apps", "chat"),
    ("services", "chat"),
    ("services", "chat-peers"),
    ("configmaps", "chat-assignments"),
    ("secrets", "chat-peer-key"),
    ("poddisruptionbudgets.policy", "chat"),
    ("serviceaccounts", "chat-node"),
    ("roles.rbac.authorization.k8s.io", "chat-node"),
    ("rolebindings.rbac.authorization.k8s.io", "chat-node"),
];

async fn set_spec(h: &Harness, spec: serde_json::Value) -> TestResult {
    h.clusters()
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await?;
    Ok(())
}

fn reasons(h: &Harness) -> Vec<String> {
    h.events("chat").into_iter().map(|(r, _)| r).collect()
}

#[tokio::test]
async fn a_new_cluster_gets_every_child_with_a_controller_owner_reference() -> TestResult {
    let h = Harness::start().await?;
    let cluster = h
        .create("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    h.pass("chat").await?;

    let store = h.server.store();
    let uid = cluster.metadata.uid.clone().ok_or("no uid")?;
    for (resource, name) in CHILDREN {
        let child = store
            .get(resource, NS, name)
            .ok_or(format!("no {resource} {name}"))?;
        let owner = &child["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], uid.as_str(), "{resource} {name}");
        assert_eq!(owner["kind"], "ChatCluster");
        assert_eq!(owner["controller"], true);
        assert_eq!(child["metadata"]["labels"]["roomshard.dev/cluster"], "chat");
        let managers: Vec<&str> = child["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["manager"].as_str())
            .collect();
        assert_eq!(managers, ["roomshard-operator"], "{resource} {name}");
    }
    assert!(
        store
            .get("ingresses.networking.k8s.io", NS, "chat")
            .is_none()
    );
    assert_eq!(h.replicas("chat").await, 3);
    assert_eq!(h.table("chat").await, AssignmentTable::empty(12));
    let status = h.status("chat").await;
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert_eq!(status.ready_nodes, 0);
    assert_eq!(status.observed_generation, Some(1));
    Ok(())
}

#[tokio::test]
async fn the_peer_key_is_generated_once_and_kept() -> TestResult {
    let h = Harness::start().await?;
    h.create("chat", json!({"replicas": 1})).await?;
    h.pass("chat").await?;
    let store = h.server.store();
    let first = store
        .get("secrets", NS, "chat-peer-key")
        .ok_or("no secret")?;
    assert!(
        first["data"]["cluster-secret"]
            .as_str()
            .is_some_and(|k| k.len() > 40)
    );
    h.pass("chat").await?;
    set_spec(&h, json!({"replicas": 2})).await?;
    h.pass("chat").await?;
    let after = store
        .get("secrets", NS, "chat-peer-key")
        .ok_or("no secret")?;
    assert_eq!(first["data"], after["data"]);
    assert_eq!(
        first["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );
    Ok(())
}

#[tokio::test]
async fn pods_becoming_ready_one_by_one_fill_the_table_and_the_epoch_moves_only_on_change()
-> TestResult {
    let h = Harness::start().await?;
    h.create("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    h.pass("chat").await?;
    h.kubelet("chat").await?;
    h.pass("chat").await?;
    assert_eq!(h.table("chat").await.epoch, 0, "nobody is ready");

    h.ready("chat-0", true)?;
    h.pass("chat").await?;
    let one = h.table("chat").await;
    assert_eq!(one.epoch, 1);
    assert_eq!(one.counts().values().sum::<u32>(), 12);
    assert_eq!(one.nodes[&n("chat-0")].peer_addr, "10.0.0.10:7070");
    h.pass("chat").await?;
    assert_eq!(
        h.table("chat").await,
        one,
        "nothing changed, nothing published"
    );

    h.nodes.applied(&["chat-0"], &one, false);
    h.ready("chat-1", true)?;
    h.pass("chat").await?;
    let two = h.table("chat").await;
    assert_eq!(two.epoch, 2);
    assert_eq!(two.moves.len(), 6);
    assert!(
        two.moves
            .iter()
            .all(|m| m.from == n("chat-0") && m.to == n("chat-1"))
    );
    assert_eq!(h.status("chat").await.ready_nodes, 2);

    h.nodes.applied(&["chat-0", "chat-1"], &two, true);
    h.pass("chat").await?;
    let settled = h.table("chat").await;
    assert_eq!(settled.epoch, 3);
    assert!(settled.moves.is_empty());

    h.nodes.applied(&["chat-0", "chat-1"], &settled, false);
    h.ready("chat-2", true)?;
    h.pass("chat").await?;
    let three = h.table("chat").await;
    assert_eq!(three.epoch, 4);
    assert!(three.moves.iter().all(|m| m.to == n("chat-2")));
    let counts: Vec<u32> = three.counts().into_values().collect();
    assert_eq!(counts, [4, 4, 4]);
    Ok(())
}

#[tokio::test]
async fn a_second_pass_with_nothing_changed_writes_nothing() -> TestResult {
    let h = Harness::start().await?;
    h.running("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    let status = h.status("chat").await;
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&status, "Ready").0, "True");

    let before = h.resource_version();
    h.pass("chat").await?;
    h.pass("chat").await?;
    assert_eq!(
        h.resource_version(),
        before,
        "a pass over a settled cluster wrote something"
    );
    Ok(())
}

#[tokio::test]
async fn scale_up_gives_new_pods_shards_only_once_they_are_ready() -> TestResult {
    let h = Harness::start().await?;
    let two = h
        .running("chat", json!({"replicas": 2, "shards": 12}))
        .await?;
    set_spec(&h, json!({"replicas": 3})).await?;
    h.pass("chat").await?;
    assert_eq!(h.replicas("chat").await, 3);
    assert_eq!(h.table("chat").await, two);

    h.kubelet("chat").await?;
    h.pass("chat").await?;
    assert_eq!(
        h.table("chat").await,
        two,
        "a pod that is not ready gets nothing"
    );
    assert_eq!(h.status("chat").await.phase.as_deref(), Some("Scaling"));

    h.ready("chat-2", true)?;
    h.pass("chat").await?;
    let three = h.table("chat").await;
    assert_eq!(three.epoch, two.epoch + 1);
    assert_eq!(three.moves.len(), 4);
    assert!(three.moves.iter().all(|m| m.to == n("chat-2")));
    Ok(())
}

#[tokio::test]
async fn scale_down_marks_waits_for_the_epoch_waits_for_the_moves_and_only_then_lowers_replicas()
-> TestResult {
    let h = Harness::start().await?;
    let all = ["chat-0", "chat-1", "chat-2"];
    h.running("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    set_spec(&h, json!({"replicas": 2})).await?;

    // Mark draining: chat-2 is published as draining, its shards moving away.
    h.pass("chat").await?;
    let marked = h.table("chat").await;
    assert!(marked.draining.contains(&n("chat-2")));
    assert!(marked.shards_of(&n("chat-2")).is_empty());
    assert_eq!(marked.moves.len(), 4);
    assert!(marked.moves.iter().all(|m| m.from == n("chat-2")));
    assert_eq!(h.replicas("chat").await, 3);
    let status = h.status("chat").await;
    assert_eq!(status.phase.as_deref(), Some("Draining"));
    assert_eq!(status.draining, ["chat-2"]);
    assert!(status.drain_started.is_some());
    assert_eq!(reasons(&h), ["DrainStarted"]);

    // Wait for the epoch: nodes still report the old one.
    h.pass("chat").await?;
    assert_eq!(h.table("chat").await, marked);
    assert_eq!(h.replicas("chat").await, 3);

    // Wait for the moves: every node has the table, the hand-offs are not done.
    h.nodes.applied(&all, &marked, false);
    h.pass("chat").await?;
    assert_eq!(h.table("chat").await, marked);
    assert_eq!(h.replicas("chat").await, 3);
    assert_eq!(h.status("chat").await.moves_in_flight, 4);

    // chat-2 reports its moves done: they are cleared in a new epoch, which nodes must apply.
    h.nodes.applied(&["chat-2"], &marked, true);
    h.pass("chat").await?;
    let cleared = h.table("chat").await;
    assert_eq!(cleared.epoch, marked.epoch + 1);
    assert!(cleared.moves.is_empty());
    assert_eq!(
        h.replicas("chat").await,
        3,
        "nodes have not applied the cleared table"
    );

    // Everyone is at the cleared epoch: remove.
    h.nodes.applied(&all, &cleared, false);
    h.pass("chat").await?;
    assert_eq!(h.replicas("chat").await, 2);
    let status = h.status("chat").await;
    assert!(status.draining.is_empty());
    assert!(status.drain_started.is_none());
    assert_eq!(reasons(&h), ["DrainStarted", "DrainFinished"]);

    // The StatefulSet removes chat-2; the next table forgets it.
    h.kubelet("chat").await?;
    h.pass("chat").await?;
    let after = h.table("chat").await;
    assert!(!after.nodes.contains_key(&n("chat-2")));
    assert!(after.draining.is_empty());
    assert_eq!(h.status("chat").await.phase.as_deref(), Some("Running"));
    Ok(())
}

#[tokio::test]
async fn a_removed_pod_stays_in_the_table_while_it_terminates() -> TestResult {
    let h = Harness::start().await?;
    let all = ["chat-0", "chat-1", "chat-2"];
    h.running("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    set_spec(&h, json!({"replicas": 2})).await?;
    h.pass("chat").await?;
    let marked = h.table("chat").await;
    h.nodes.applied(&all, &marked, true);
    h.pass("chat").await?;
    let cleared = h.table("chat").await;
    h.nodes.applied(&all, &cleared, false);
    h.pass("chat").await?;
    assert_eq!(h.replicas("chat").await, 2);

    // The kubelet keeps chat-2 Terminating (preStop, then SIGTERM to its clients): it stays a
    // shard-less member, so its peer links stay up for its clients' last sends.
    h.server.store().modify("pods", NS, "chat-2", |pod| {
        pod["metadata"]["finalizers"] = json!(["test/kubelet"]);
    })?;
    h.kubelet("chat").await?;
    assert!(h.server.store().get("pods", NS, "chat-2").is_some());
    h.pass("chat").await?;
    let terminating = h.table("chat").await;
    assert_eq!(terminating, cleared);
    assert_eq!(h.status("chat").await.phase.as_deref(), Some("Running"));

    // Gone: the next table forgets it.
    h.server.store().modify("pods", NS, "chat-2", |pod| {
        pod["metadata"]["finalizers"] = json!([]);
    })?;
    assert!(h.server.store().get("pods", NS, "chat-2").is_none());
    h.pass("chat").await?;
    let after = h.table("chat").await;
    assert_eq!(after.epoch, cleared.epoch + 1);
    assert!(!after.nodes.contains_key(&n("chat-2")));
    assert!(after.draining.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_drain_past_the_handoff_timeout_is_degraded_naming_the_pod_and_keeps_the_replicas()
-> TestResult {
    let h = Harness::start().await?;
    let all = ["chat-0", "chat-1", "chat-2"];
    h.running(
        "chat",
        json!({"replicas": 3, "shards": 12, "handoffTimeout": "30s"}),
    )
    .await?;
    set_spec(&h, json!({"replicas": 2})).await?;
    h.pass("chat").await?;
    let marked = h.table("chat").await;
    h.nodes.applied(&all, &marked, false);
    h.pass("chat").await?;
    assert_eq!(condition(&h.status("chat").await, "Degraded").0, "False");

    // The drain began long ago (as a restarted operator would read it from the status).
    h.server
        .store()
        .modify("chatclusters.roomshard.dev", NS, "chat", |c| {
            c["status"]["drainStarted"] = json!("2020-01-01T00:00:00Z");
        })?;
    h.pass("chat").await?;
    let status = h.status("chat").await;
    let (degraded, reason, message) = condition(&status, "Degraded");
    assert_eq!((degraded.as_str(), reason.as_str()), ("True", "DrainStuck"));
    assert!(message.contains("draining chat-2"), "{message}");
    let first = &marked.moves[0];
    assert!(
        message.contains(&format!("shard {} chat-2 -> {}", first.shard, first.to)),
        "{message}"
    );
    assert_eq!(status.phase.as_deref(), Some("Degraded"));
    assert_eq!(h.replicas("chat").await, 3, "a stuck drain removes nothing");

    h.pass("chat").await?;
    let stuck_events = reasons(&h).iter().filter(|r| *r == "DrainStuck").count();
    assert_eq!(stuck_events, 1, "events on transitions only");
    Ok(())
}

#[tokio::test]
async fn a_pod_that_turns_unready_leaves_and_its_shards_go_to_the_others() -> TestResult {
    let h = Harness::start().await?;
    let before = h
        .running("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    let lost = before.shards_of(&n("chat-1"));
    h.ready("chat-1", false)?;
    h.pass("chat").await?;
    let after = h.table("chat").await;
    assert_eq!(after.epoch, before.epoch + 1);
    assert!(!after.nodes.contains_key(&n("chat-1")));
    assert!(
        after.moves.is_empty(),
        "nobody can hand off from a gone node"
    );
    for shard in lost {
        let owner = after.owner(shard).ok_or("unowned shard")?;
        assert!(*owner == n("chat-0") || *owner == n("chat-2"));
    }
    let status = h.status("chat").await;
    assert_eq!(status.ready_nodes, 2);
    assert_eq!(condition(&status, "Ready").1, "NodesNotReady");
    assert_eq!(
        h.replicas("chat").await,
        3,
        "the pod is not removed, only out of the table"
    );
    Ok(())
}

#[tokio::test]
async fn the_api_server_refuses_specs_the_schema_forbids() -> TestResult {
    let h = Harness::start().await?;
    let api: Api<DynamicObject> = Api::namespaced_with(
        h.client.clone(),
        NS,
        &ApiResource::erase::<ChatCluster>(&()),
    );
    let object = |name: &str, spec: serde_json::Value| -> DynamicObject {
        let mut o = DynamicObject::new(name, &ApiResource::erase::<ChatCluster>(&()));
        o.data = json!({"spec": spec});
        o
    };
    for (name, spec, expected) in [
        ("negative", json!({"replicas": -1}), "spec.replicas"),
        ("unknown", json!({"replicas": 1, "replica": 2}), "replica"),
        (
            "timeout",
            json!({"replicas": 1, "handoffTimeout": "soon"}),
            "spec.handoffTimeout",
        ),
        (
            "mode",
            json!({"replicas": 1, "auth": {"mode": "Off"}}),
            "spec.auth.mode",
        ),
    ] {
        let err = api
            .create(&PostParams::default(), &object(name, spec))
            .await;
        match err {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{name}: {e:?}");
                assert!(e.message.contains(expected), "{name}: {}", e.message);
            }
            other => panic!("{name} was not refused: {other:?}"),
        }
    }

    h.create("chat", json!({"replicas": 1, "shards": 32}))
        .await?;
    let changed = h
        .clusters()
        .patch(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"shards": 64}})),
        )
        .await;
    match changed {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422);
            assert!(e.message.contains("shards is immutable"), "{}", e.message);
        }
        other => panic!("shards changed: {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn token_auth_without_a_secret_is_degraded_and_changes_no_child() -> TestResult {
    let h = Harness::start().await?;
    h.running("chat", json!({"replicas": 2, "shards": 12}))
        .await?;
    let store = h.server.store();
    let sts_before = store.get("statefulsets.apps", NS, "chat").ok_or("no sts")?;
    set_spec(&h, json!({"auth": {"mode": "Token"}})).await?;
    h.pass("chat").await?;

    let status = h.status("chat").await;
    let (degraded, reason, message) = condition(&status, "Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        message.contains("spec.auth.secretRef is missing"),
        "{message}"
    );
    assert_eq!(status.observed_generation, Some(2));
    let sts_after = store.get("statefulsets.apps", NS, "chat").ok_or("no sts")?;
    assert_eq!(
        sts_before["metadata"]["resourceVersion"],
        sts_after["metadata"]["resourceVersion"]
    );
    assert_eq!(reasons(&h), ["InvalidSpec"]);

    // Fixed: the Secret is named, the pods get the key mounted, Degraded clears.
    set_spec(
        &h,
        json!({"auth": {"mode": "Token", "secretRef": {"name": "jwt", "key": "k"}}}),
    )
    .await?;
    h.pass("chat").await?;
    assert_eq!(condition(&h.status("chat").await, "Degraded").0, "False");
    let sts = store.get("statefulsets.apps", NS, "chat").ok_or("no sts")?;
    let args = sts["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--auth-key-file"), "{args}");
    Ok(())
}

#[tokio::test]
async fn a_restarted_operator_picks_a_drain_up_from_the_status_and_the_configmap() -> TestResult {
    let mut h = Harness::start().await?;
    let all = ["chat-0", "chat-1", "chat-2"];
    h.running("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    set_spec(&h, json!({"replicas": 2})).await?;
    h.pass("chat").await?;
    let marked = h.table("chat").await;
    let started = h.status("chat").await.drain_started;
    assert!(started.is_some());

    h.restart_operator();
    h.pass("chat").await?;
    assert_eq!(
        h.table("chat").await,
        marked,
        "the new operator republishes nothing"
    );
    assert_eq!(h.status("chat").await.drain_started, started);
    h.nodes.applied(&all, &marked, true);
    h.pass("chat").await?;
    let cleared = h.table("chat").await;
    assert!(cleared.moves.is_empty());
    h.restart_operator();
    h.nodes.applied(&all, &cleared, false);
    h.pass("chat").await?;
    assert_eq!(h.replicas("chat").await, 2);
    assert_eq!(reasons(&h), ["DrainStarted", "DrainFinished"]);
    Ok(())
}

#[tokio::test]
async fn deleting_the_cluster_garbage_collects_every_child_and_pod() -> TestResult {
    let h = Harness::start().await?;
    h.running(
        "chat",
        json!({"replicas": 2, "ingress": {"enabled": true, "host": "chat.example"}}),
    )
    .await?;
    let store = h.server.store();
    assert!(
        store
            .get("ingresses.networking.k8s.io", NS, "chat")
            .is_some()
    );
    assert!(store.get("pods", NS, "chat-1").is_some());

    h.clusters()
        .delete("chat", &DeleteParams::default())
        .await?;
    for (resource, name) in CHILDREN.into_iter().chain([
        ("ingresses.networking.k8s.io", "chat"),
        ("pods", "chat-0"),
        ("pods", "chat-1"),
    ]) {
        assert!(
            store.get(resource, NS, name).is_none(),
            "{resource} {name} left behind"
        );
    }
    Ok(())
}

#[tokio::test]
async fn disabling_the_ingress_removes_it() -> TestResult {
    let h = Harness::start().await?;
    h.create(
        "chat",
        json!({"replicas": 1, "ingress": {"enabled": true, "host": "c.example"}}),
    )
    .await?;
    h.pass("chat").await?;
    let store = h.server.store();
    let ingress = store
        .get("ingresses.networking.k8s.io", NS, "chat")
        .ok_or("no ingress")?;
    assert_eq!(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"],
        "3600"
    );
    set_spec(
        &h,
        json!({"ingress": {"enabled": false, "host": "c.example"}}),
    )
    .await?;
    h.pass("chat").await?;
    assert!(
        store
            .get("ingresses.networking.k8s.io", NS, "chat")
            .is_none()
    );
    Ok(())
}

/// Gives `pod` a finalizer and deletes it: it stays, Terminating, with a `deletionTimestamp`
/// (what a rolling update, an eviction or `kubectl delete pod` does to a running pod).
fn start_terminating(h: &Harness, pod: &str) -> TestResult {
    let store = h.server.store();
    store.modify("pods", NS, pod, |p| {
        p["metadata"]["finalizers"] = json!(["test.roomshard.dev/hold"]);
    })?;
    store.delete("pods", NS, pod)?;
    let held = store.get("pods", NS, pod).ok_or("the pod is gone")?;
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    Ok(())
}

/// Lets a terminating `pod` go (its process has exited).
fn finish_terminating(h: &Harness, pod: &str) -> TestResult {
    h.server.store().modify("pods", NS, pod, |p| {
        p["metadata"]["finalizers"] = json!([]);
    })?;
    Ok(())
}

#[tokio::test]
async fn a_pod_with_a_deletion_timestamp_is_drained_at_once_and_stays_a_source_until_it_is_gone()
-> TestResult {
    let h = Harness::start().await?;
    let settled = h
        .running("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    let pods = ["chat-0", "chat-1", "chat-2"];
    h.nodes.applied(&pods, &settled, false);
    let owned = settled.shards_of(&n("chat-1"));
    assert_eq!(owned.len(), 4);

    start_terminating(&h, "chat-1")?;
    h.pass("chat").await?;
    let draining = h.table("chat").await;
    assert_eq!(draining.epoch, settled.epoch + 1);
    assert!(draining.nodes.contains_key(&n("chat-1")), "still a member");
    assert!(draining.draining.contains(&n("chat-1")));
    assert!(draining.shards_of(&n("chat-1")).is_empty());
    assert_eq!(draining.moves.len(), owned.len(), "every shard by hand-off");
    assert!(draining.moves.iter().all(|m| m.from == n("chat-1")));
    assert_eq!(h.replicas("chat").await, 3, "not a scale-down");

    // The terminating pod reports its hand-offs done (it is no longer Ready, but still read).
    h.nodes.applied(&pods, &draining, true);
    h.pass("chat").await?;
    let cleared = h.table("chat").await;
    assert!(cleared.moves.is_empty());
    assert!(
        cleared.nodes.contains_key(&n("chat-1")),
        "it stays listed, owning nothing, while its process runs"
    );
    h.nodes.applied(&pods, &cleared, false);
    h.pass("chat").await?;
    assert_eq!(h.table("chat").await, cleared, "nothing more while it runs");

    // Its process exits and the pod is gone: it leaves the table without any move.
    finish_terminating(&h, "chat-1")?;
    h.pass("chat").await?;
    let gone = h.table("chat").await;
    assert!(!gone.nodes.contains_key(&n("chat-1")));
    assert!(gone.moves.is_empty());

    // The StatefulSet creates it again; once Ready it gets its share back by hand-off.
    h.kubelet("chat").await?;
    h.nodes.applied(&["chat-0", "chat-2"], &gone, false);
    h.pass("chat").await?;
    assert_eq!(h.table("chat").await, gone, "not ready yet: nothing for it");
    h.ready("chat-1", true)?;
    h.pass("chat").await?;
    let back = h.table("chat").await;
    assert_eq!(back.moves.len(), 4, "the fewest moves");
    assert!(back.moves.iter().all(|m| m.to == n("chat-1")));
    Ok(())
}

#[tokio::test]
async fn an_evicted_pod_is_drained_like_any_planned_exit_and_the_pdb_still_allows_one_disruption()
-> TestResult {
    let h = Harness::start().await?;
    let settled = h
        .running("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    h.nodes
        .applied(&["chat-0", "chat-1", "chat-2"], &settled, false);
    // The PodDisruptionBudget is still written: at most one voluntary disruption at a time.
    let pdb = h
        .server
        .store()
        .get("poddisruptionbudgets.policy", NS, "chat")
        .ok_or("no pdb")?;
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    // An eviction ends in the same place as a delete: a deletionTimestamp.
    start_terminating(&h, "chat-2")?;
    h.pass("chat").await?;
    let table = h.table("chat").await;
    assert!(table.draining.contains(&n("chat-2")));
    assert!(table.shards_of(&n("chat-2")).is_empty());
    assert!(table.moves.iter().all(|m| m.from == n("chat-2")));
    Ok(())
}

#[tokio::test]
async fn a_rolling_update_shows_in_status_and_finishes_up_to_date() -> TestResult {
    let h = Harness::start().await?;
    h.running("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    let store = h.server.store();
    // The StatefulSet controller reports a rollout in progress after an image change.
    set_spec(&h, json!({"image": "roomshard-node:v2"})).await?;
    h.pass("chat").await?;
    let sts = store
        .get("statefulsets.apps", NS, "chat")
        .ok_or("no statefulset")?;
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "roomshard-node:v2"
    );
    let generation = sts["metadata"]["generation"].clone();
    store.set_status(
        "statefulsets.apps",
        NS,
        "chat",
        json!({"replicas": 3, "readyReplicas": 3, "observedGeneration": generation,
               "updatedReplicas": 1, "currentRevision": "chat-v1", "updateRevision": "chat-v2"}),
    )?;
    h.pass("chat").await?;
    let rolling = h.status("chat").await;
    assert_eq!(rolling.updated_replicas, Some(1));
    assert_eq!(rolling.phase.as_deref(), Some("Updating"));
    assert_eq!(
        condition(&rolling, "UpToDate"),
        (
            "False".into(),
            "RollingUpdate".into(),
            "1/3 pods updated".into()
        )
    );
    assert_eq!(condition(&rolling, "Progressing").1, "RollingUpdate");

    store.set_status(
        "statefulsets.apps",
        NS,
        "chat",
        json!({"replicas": 3, "readyReplicas": 3, "observedGeneration": generation,
               "updatedReplicas": 3, "currentRevision": "chat-v2", "updateRevision": "chat-v2"}),
    )?;
    h.pass("chat").await?;
    let done = h.status("chat").await;
    assert_eq!(done.updated_replicas, Some(3));
    assert_eq!(done.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&done, "UpToDate").0, "True");
    Ok(())
}

#[tokio::test]
async fn the_operator_deletes_one_outdated_pod_at_a_time_highest_ordinal_first() -> TestResult {
    let h = Harness::start().await?;
    h.running("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    let store = h.server.store();
    set_spec(&h, json!({"image": "roomshard-node:v2"})).await?;
    h.pass("chat").await?;
    let sts = store
        .get("statefulsets.apps", NS, "chat")
        .ok_or("no statefulset")?;
    assert_eq!(sts["spec"]["updateStrategy"], json!({"type": "OnDelete"}));
    // The StatefulSet controller: the pods are on the old revision, new ones get the new one.
    let pods: Api<DynamicObject> = Api::namespaced_with(
        h.client.clone(),
        NS,
        &ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
    );
    for pod in ["chat-0", "chat-1", "chat-2"] {
        let label = json!({"metadata": {"labels": {"controller-revision-hash": "chat-v1"}}});
        pods.patch(pod, &PatchParams::default(), &Patch::Merge(&label))
            .await?;
    }
    let status = json!({"replicas": 3, "readyReplicas": 3,
        "observedGeneration": sts["metadata"]["generation"], "updatedReplicas": 0,
        "currentRevision": "chat-v1", "updateRevision": "chat-v2"});
    store.set_status("statefulsets.apps", NS, "chat", status)?;

    h.pass("chat").await?;
    assert!(store.get("pods", NS, "chat-2").is_none(), "chat-2 deleted");
    assert!(store.get("pods", NS, "chat-1").is_some());
    assert!(
        h.events("chat-2")
            .iter()
            .any(|(reason, _)| reason == "RolloutReplacing")
    );
    // Its replacement is not Ready yet: nothing else goes.
    h.kubelet("chat").await?;
    h.pass("chat").await?;
    h.pass("chat").await?;
    assert!(store.get("pods", NS, "chat-1").is_some());
    assert!(store.get("pods", NS, "chat-0").is_some());
    Ok(())
}
