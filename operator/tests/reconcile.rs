//! The reconciler against the real control plane, one test per branch. The real StatefulSet
//! controller makes the pods and the real garbage collector removes them; the test plays the
//! kubelet (the pods' readiness and addresses) and the nodes (their `/status`, through a fake
//! reader).

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, EvictParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use operator::k8s::crd::ChatCluster;
use serde_json::json;
use shard::AssignmentTable;
use support::{Harness, NS, TestResult, children, condition, n, until};

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

async fn reasons(h: &Harness) -> TestResult<Vec<String>> {
    Ok(h.events("chat")
        .await?
        .into_iter()
        .map(|(r, _)| r)
        .collect())
}

#[tokio::test]
async fn a_new_cluster_gets_every_child_with_a_controller_owner_reference() -> TestResult {
    let h = Harness::start().await?;
    let cluster = h
        .create("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    h.pass("chat").await?;

    let uid = cluster.metadata.uid.clone().ok_or("no uid")?;
    for (resource, name) in children("chat") {
        let child = h
            .object(resource, &name)
            .await?
            .ok_or(format!("no {resource} {name}"))?;
        let owner = &child["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], uid.as_str(), "{resource} {name}");
        assert_eq!(owner["kind"], "ChatCluster");
        assert_eq!(owner["controller"], true);
        assert_eq!(child["metadata"]["labels"]["roomshard.dev/cluster"], "chat");
        // Everything but the status is the operator's alone; the real StatefulSet and
        // disruption controllers write the status of theirs.
        let managers: Vec<&str> = child["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["subresource"] != "status")
            .filter_map(|m| m["manager"].as_str())
            .collect();
        assert_eq!(managers, ["roomshard-operator"], "{resource} {name}");
    }
    assert!(
        h.object("ingresses.networking.k8s.io", "chat")
            .await?
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
    let first = h
        .object("secrets", "chat-peer-key")
        .await?
        .ok_or("no secret")?;
    assert!(
        first["data"]["cluster-secret"]
            .as_str()
            .is_some_and(|k| k.len() > 40)
    );
    h.pass("chat").await?;
    set_spec(&h, json!({"replicas": 2})).await?;
    h.pass("chat").await?;
    let after = h
        .object("secrets", "chat-peer-key")
        .await?
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
    h.statefulset_pods("chat").await?;
    h.pass("chat").await?;
    assert_eq!(h.table("chat").await.epoch, 0, "nobody is ready");

    h.ready("chat-0", true).await?;
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
    h.ready("chat-1", true).await?;
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
    h.ready("chat-2", true).await?;
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

    let before = h.written("chat").await?;
    h.pass("chat").await?;
    h.pass("chat").await?;
    assert_eq!(
        h.written("chat").await?,
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

    h.statefulset_pods("chat").await?;
    h.pass("chat").await?;
    assert_eq!(
        h.table("chat").await,
        two,
        "a pod that is not ready gets nothing"
    );
    assert_eq!(h.status("chat").await.phase.as_deref(), Some("Scaling"));

    h.ready("chat-2", true).await?;
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
    assert_eq!(reasons(&h).await?, ["DrainStarted"]);

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
    assert_eq!(reasons(&h).await?, ["DrainStarted", "DrainFinished"]);
    // The drain was timed once, from its start to the replicas lowered; every shard has an owner.
    let metrics = h.ctx.metrics.render();
    for line in [
        "roomshard_cluster_drain_duration_seconds_count{namespace=\"default\",cluster=\"chat\"} 1\n",
        "roomshard_cluster_unowned_shards{namespace=\"default\",cluster=\"chat\"} 0\n",
        "roomshard_cluster_drain_stuck{namespace=\"default\",cluster=\"chat\"} 0\n",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }

    // The StatefulSet removes chat-2; the next table forgets it.
    h.statefulset_pods("chat").await?;
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
    // The kubelet will keep chat-2 Terminating (preStop, then SIGTERM to its clients): a
    // finalizer holds it (the pod has no Node, so the API server would otherwise delete it at
    // once), put on before the StatefulSet controller can delete it.
    let finalizers = |f: serde_json::Value| Patch::Merge(json!({"metadata": {"finalizers": f}}));
    h.pods()
        .patch(
            "chat-2",
            &PatchParams::default(),
            &finalizers(json!(["test.roomshard.dev/kubelet"])),
        )
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

    // chat-2 is Terminating: it stays a shard-less member, so its peer links stay up for its
    // clients' last sends.
    h.until_pods("the StatefulSet controller deletes chat-2", |pods| {
        pods.get("chat-2")
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some())
    })
    .await?;
    h.pass("chat").await?;
    let terminating = h.table("chat").await;
    assert_eq!(terminating, cleared);
    assert_eq!(h.status("chat").await.phase.as_deref(), Some("Running"));

    // Gone: the next table forgets it.
    h.pods()
        .patch("chat-2", &PatchParams::default(), &finalizers(json!(null)))
        .await?;
    h.until_gone("pods", "chat-2").await?;
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
    h.clusters()
        .patch_status(
            "chat",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"drainStarted": "2020-01-01T00:00:00Z"}})),
        )
        .await?;
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
    let metrics = h.ctx.metrics.render();
    assert!(
        metrics
            .contains("roomshard_cluster_drain_stuck{namespace=\"default\",cluster=\"chat\"} 1\n"),
        "{metrics}"
    );
    assert!(!metrics.contains("roomshard_cluster_drain_duration_seconds_count"));

    h.pass("chat").await?;
    let stuck_events = reasons(&h)
        .await?
        .iter()
        .filter(|r| *r == "DrainStuck")
        .count();
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
    h.ready("chat-1", false).await?;
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
    // (name, spec, HTTP status, what the message names). An unknown field fails decoding
    // (400 BadRequest), before the schema is checked (422 Invalid).
    for (name, spec, code, expected) in [
        ("negative", json!({"replicas": -1}), 422, "spec.replicas"),
        (
            "unknown",
            json!({"replicas": 1, "replica": 2}),
            400,
            "unknown field \"spec.replica\"",
        ),
        (
            "timeout",
            json!({"replicas": 1, "handoffTimeout": "soon"}),
            422,
            "spec.handoffTimeout",
        ),
        (
            "mode",
            json!({"replicas": 1, "auth": {"mode": "Off"}}),
            422,
            "spec.auth.mode",
        ),
        (
            "three-copies",
            json!({"replicas": 1, "replication": 3}),
            422,
            "spec.replication",
        ),
        (
            "no-copies",
            json!({"replicas": 1, "replication": 0}),
            422,
            "spec.replication",
        ),
    ] {
        // Created as kubectl creates, with `fieldValidation=Strict`: a client that does not
        // ask gets unknown fields dropped with a warning by the real API server.
        let mut request = kube::core::Request::new(api.resource_url()).create(
            &PostParams::default(),
            serde_json::to_vec(&object(name, spec))?,
        )?;
        let uri = request.uri().to_string();
        let sep = if uri.ends_with('?') { "" } else { "&" };
        *request.uri_mut() = format!("{uri}{sep}fieldValidation=Strict").parse()?;
        let err = h.client.request::<DynamicObject>(request).await;
        match err {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, code, "{name}: {e:?}");
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
    let sts_before = h
        .object("statefulsets.apps", "chat")
        .await?
        .ok_or("no sts")?;
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
    let sts_after = h
        .object("statefulsets.apps", "chat")
        .await?
        .ok_or("no sts")?;
    assert_eq!(
        sts_before["metadata"]["resourceVersion"],
        sts_after["metadata"]["resourceVersion"]
    );
    assert_eq!(reasons(&h).await?, ["InvalidSpec"]);

    // Fixed: the Secret is named, the pods get the key mounted, Degraded clears.
    set_spec(
        &h,
        json!({"auth": {"mode": "Token", "secretRef": {"name": "jwt", "key": "k"}}}),
    )
    .await?;
    h.pass("chat").await?;
    assert_eq!(condition(&h.status("chat").await, "Degraded").0, "False");
    let sts = h
        .object("statefulsets.apps", "chat")
        .await?
        .ok_or("no sts")?;
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
    assert_eq!(reasons(&h).await?, ["DrainStarted", "DrainFinished"]);
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
    assert!(
        h.object("ingresses.networking.k8s.io", "chat")
            .await?
            .is_some()
    );
    assert!(h.object("pods", "chat-1").await?.is_some());

    h.clusters()
        .delete("chat", &DeleteParams::default())
        .await?;
    // The real garbage collector works in the background: each child goes in its own time.
    for (resource, name) in children("chat").into_iter().chain([
        ("ingresses.networking.k8s.io", "chat".to_owned()),
        ("pods", "chat-0".to_owned()),
        ("pods", "chat-1".to_owned()),
    ]) {
        h.until_gone(resource, &name).await?;
        assert!(
            h.object(resource, &name).await?.is_none(),
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
    let ingress = h
        .object("ingresses.networking.k8s.io", "chat")
        .await?
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
        h.object("ingresses.networking.k8s.io", "chat")
            .await?
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn node_pods_get_default_requests_until_spec_resources_replaces_them_as_a_whole() -> TestResult
{
    let h = Harness::start().await?;
    h.create("chat", json!({"replicas": 1})).await?;
    h.pass("chat").await?;
    let resources = |sts: Option<serde_json::Value>| -> TestResult<serde_json::Value> {
        let sts = sts.ok_or("no statefulset")?;
        Ok(sts["spec"]["template"]["spec"]["containers"][0]["resources"].clone())
    };
    let stored = resources(h.object("statefulsets.apps", "chat").await?)?;
    assert_eq!(
        stored,
        json!({"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}})
    );

    set_spec(&h, json!({"resources": {"requests": {"cpu": "2"}}})).await?;
    h.pass("chat").await?;
    let stored = resources(h.object("statefulsets.apps", "chat").await?)?;
    // Server-side apply drops the defaults the operator no longer writes.
    assert_eq!(stored, json!({"requests": {"cpu": "2"}}));
    Ok(())
}

/// Gives `pod` a finalizer and deletes it: it stays, Terminating, with a `deletionTimestamp`
/// (what a rolling update, an eviction or `kubectl delete pod` does to a running pod; the
/// finalizer stands for the kubelet, which keeps a running pod until its process exits).
async fn start_terminating(h: &Harness, pod: &str) -> TestResult {
    hold(h, pod).await?;
    h.pods().delete(pod, &DeleteParams::default()).await?;
    let held = h.object("pods", pod).await?.ok_or("the pod is gone")?;
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    Ok(())
}

/// Puts the finalizer that keeps `pod` Terminating once deleted.
async fn hold(h: &Harness, pod: &str) -> TestResult {
    h.pods()
        .patch(
            pod,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["test.roomshard.dev/hold"]}})),
        )
        .await?;
    Ok(())
}

/// Lets a terminating `pod` go (its process has exited) and waits until it is gone.
async fn finish_terminating(h: &Harness, pod: &str) -> TestResult {
    // The uid before the finalizer goes: once it has, the StatefulSet controller may make a
    // new pod of the same name before the wait below reads it.
    let uid = h.pods().get(pod).await?.uid().unwrap_or_default();
    h.pods()
        .patch(
            pod,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await?;
    h.until_deleted("pods", pod, &uid).await
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

    start_terminating(&h, "chat-1").await?;
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

    // Its process exits and the pod is gone: it leaves the table without any move. (The real
    // StatefulSet controller may have made a new chat-1 already; it is not ready.)
    finish_terminating(&h, "chat-1").await?;
    h.pass("chat").await?;
    let gone = h.table("chat").await;
    assert!(!gone.nodes.contains_key(&n("chat-1")));
    assert!(gone.moves.is_empty());

    // The StatefulSet creates it again; once Ready it gets its share back by hand-off.
    h.statefulset_pods("chat").await?;
    h.nodes.applied(&["chat-0", "chat-2"], &gone, false);
    h.pass("chat").await?;
    assert_eq!(h.table("chat").await, gone, "not ready yet: nothing for it");
    h.ready("chat-1", true).await?;
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
        .object("poddisruptionbudgets.policy", "chat")
        .await?
        .ok_or("no pdb")?;
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    // A real eviction, admitted by the real disruption controller's count of healthy pods.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(h.client.clone(), NS);
    until(
        &pdbs,
        "chat",
        "the disruption controller allows one disruption",
        |p: Option<&PodDisruptionBudget>| {
            p.and_then(|p| p.status.as_ref())
                .is_some_and(|s| s.disruptions_allowed == 1 && s.current_healthy == 3)
        },
    )
    .await?;
    hold(&h, "chat-2").await?;
    h.pods().evict("chat-2", &EvictParams::default()).await?;
    let evicted = h.object("pods", "chat-2").await?.ok_or("the pod is gone")?;
    assert!(evicted["metadata"]["deletionTimestamp"].is_string());

    // Passed at once: the pod garbage collector marks a terminating pod that no Node runs
    // Failed within its 20 s period, and a Failed pod hands nothing off.
    h.pass("chat").await?;
    let table = h.table("chat").await;
    assert!(table.draining.contains(&n("chat-2")));
    assert!(table.shards_of(&n("chat-2")).is_empty());
    assert!(table.moves.iter().all(|m| m.from == n("chat-2")));

    // A second voluntary disruption is refused while the first one lasts. (kube's client
    // retries a 429 for minutes by default; this one must see it.)
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(h.cluster.kubeconfig())?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    config.default_retry = false;
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(kube::Client::try_from(config)?, NS);
    match pods.evict("chat-1", &EvictParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 429, "{e:?}"),
        other => panic!("a second eviction was not refused: {other:?}"),
    }
    Ok(())
}

/// Pod name to uid in [`NS`]: a pod replaced under the same name has a new uid.
async fn pod_uids(h: &Harness) -> TestResult<BTreeMap<String, Option<String>>> {
    Ok(h.pods()
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .map(|p| (p.name_any(), p.uid()))
        .collect())
}

/// The StatefulSet controller counts `n` pods on the update revision.
fn updated(n: i32) -> impl Fn(Option<&StatefulSet>) -> bool {
    move |s| {
        s.and_then(|s| s.status.as_ref())
            .is_some_and(|st| st.updated_replicas == Some(n))
    }
}

#[tokio::test]
async fn a_rolling_update_replaces_one_settled_outdated_pod_at_a_time_highest_ordinal_first()
-> TestResult {
    let h = Harness::start().await?;
    h.running("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    set_spec(&h, json!({"image": "roomshard-node:v2"})).await?;
    h.pass("chat").await?;
    let sts = h
        .object("statefulsets.apps", "chat")
        .await?
        .ok_or("no statefulset")?;
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "roomshard-node:v2"
    );
    // OnDelete: the real StatefulSet controller replaces no pod by itself (with Parallel pods it
    // would delete every not-yet-available pod at once); the operator does, one at a time.
    assert_eq!(sts["spec"]["updateStrategy"], json!({"type": "OnDelete"}));
    let statefulsets: Api<StatefulSet> = Api::namespaced(h.client.clone(), NS);
    until(
        &statefulsets,
        "chat",
        "the StatefulSet controller sees the new template",
        |s: Option<&StatefulSet>| {
            s.is_some_and(|s| {
                let st = s.status.as_ref();
                st.and_then(|st| st.observed_generation) == s.metadata.generation
                    && st.is_some_and(|st| st.update_revision != st.current_revision)
            })
        },
    )
    .await?;

    let all = ["chat-0", "chat-1", "chat-2"];
    for (step, pod) in ["chat-2", "chat-1", "chat-0"].into_iter().enumerate() {
        let before = pod_uids(&h).await?;
        // Settled passes until the operator deletes the next outdated pod; the StatefulSet
        // controller makes its replacement on the new revision.
        for _ in 0..8 {
            h.pass("chat").await?;
            let table = h.table("chat").await;
            h.nodes.applied(&all, &table, true);
            let now = h.pods().get_opt(pod).await?;
            if now.is_none_or(|p| Some(&p.uid()) != before.get(pod)) {
                break;
            }
        }
        h.until_pods(&format!("{pod} is replaced"), |pods| {
            let now: BTreeMap<_, _> = pods.iter().map(|(n, p)| (n.clone(), p.uid())).collect();
            now.len() == 3 && now.get(pod) != before.get(pod)
        })
        .await?;
        let now = pod_uids(&h).await?;
        for other in all.iter().filter(|o| **o != pod) {
            assert_eq!(
                now.get(*other),
                before.get(*other),
                "step {step}: only {pod} was replaced"
            );
        }
        // Its replacement is not Ready yet: no other pod goes.
        h.pass("chat").await?;
        h.pass("chat").await?;
        let still = pod_uids(&h).await?;
        assert_eq!(
            still, now,
            "step {step}: nothing else goes while {pod} is not Ready"
        );
        h.ready(pod, true).await?;
        if step == 0 {
            until(
                &statefulsets,
                "chat",
                "the controller counts one updated pod",
                updated(1),
            )
            .await?;
            h.pass("chat").await?;
            let rolling = h.status("chat").await;
            assert_eq!(rolling.updated_replicas, Some(1));
            assert_eq!(rolling.phase.as_deref(), Some("Updating"));
            let up_to_date = condition(&rolling, "UpToDate");
            assert_eq!(
                (up_to_date.0.as_str(), up_to_date.2.as_str()),
                ("False", "1/3 pods updated")
            );
        }
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(h.client.clone(), NS);
    let replaced: Vec<String> = events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RolloutReplacing"))
        .filter_map(|e| e.regarding.and_then(|r| r.name))
        .collect();
    for pod in all {
        assert!(
            replaced.iter().any(|r| r == pod),
            "an event names {pod} replaced: {replaced:?}"
        );
    }

    // The returning pods get their shards back; then the cluster is Running and up to date.
    until(&statefulsets, "chat", "every pod is updated", updated(3)).await?;
    for _ in 0..8 {
        h.pass("chat").await?;
        let table = h.table("chat").await;
        h.nodes.applied(&all, &table, true);
        if h.status("chat").await.phase.as_deref() == Some("Running") {
            break;
        }
    }
    let done = h.status("chat").await;
    assert_eq!(done.updated_replicas, Some(3));
    assert_eq!(done.phase.as_deref(), Some("Running"));
    assert_eq!(condition(&done, "UpToDate").0, "True");
    Ok(())
}

#[tokio::test]
async fn a_statefulset_made_by_the_previous_release_with_rolling_update_is_switched_to_on_delete()
-> TestResult {
    let h = Harness::start().await?;
    h.running("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    // What the previous operator wrote: the StatefulSet controller's own RollingUpdate, which
    // the API server completes with `maxUnavailable: 1`.
    let statefulsets: Api<StatefulSet> = Api::namespaced(h.client.clone(), NS);
    let old = json!({"spec": {"updateStrategy": {"type": "RollingUpdate",
        "rollingUpdate": {"partition": 0}}}});
    statefulsets
        .patch("chat", &PatchParams::default(), &Patch::Merge(&old))
        .await?;
    let before = h
        .object("statefulsets.apps", "chat")
        .await?
        .ok_or("no statefulset")?;
    assert_eq!(before["spec"]["updateStrategy"]["type"], "RollingUpdate");

    h.pass("chat").await?;
    let after = h
        .object("statefulsets.apps", "chat")
        .await?
        .ok_or("no statefulset")?;
    assert_eq!(after["spec"]["updateStrategy"], json!({"type": "OnDelete"}));
    // And the next pass is a plain apply again: nothing left to switch, nothing refused.
    h.pass("chat").await?;
    Ok(())
}

/// The map the context holds for cluster `chat`.
fn map_of(h: &Harness) -> operator::map::ClusterMap {
    h.ctx
        .map
        .snapshot()
        .clusters
        .into_iter()
        .find(|m| m.namespace == NS && m.name == "chat")
        .expect("the pass published a map of chat")
}

#[tokio::test]
async fn the_shard_map_follows_a_scale_down_pass_by_pass_and_is_served_next_to_the_metrics()
-> TestResult {
    let h = Harness::start().await?;
    let all = ["chat-0", "chat-1", "chat-2"];
    h.running("chat", json!({"replicas": 3, "shards": 12}))
        .await?;
    let settled = map_of(&h);
    let counts: Vec<(String, u32)> = settled
        .pods
        .iter()
        .map(|p| (p.name.clone(), p.shard_count))
        .collect();
    assert_eq!(
        counts,
        [
            ("chat-0".into(), 4),
            ("chat-1".into(), 4),
            ("chat-2".into(), 4)
        ]
    );
    assert!(settled.pods.iter().all(|p| p.ready && p.in_table));
    assert_eq!((settled.unowned, settled.moves_total), (0, 0));
    assert_eq!(settled.drain.phase, "Steady");

    // Served by the metrics server: the JSON and the page.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(operator::k8s::controller::serve_metrics(
        listener,
        h.ctx.metrics.clone(),
        h.ctx.map.clone(),
        stop.clone(),
    ));
    let timeout = std::time::Duration::from_secs(5);
    let served = operator::http::get(&addr, "/map.json", timeout).await?;
    let served: operator::map::ShardMap = serde_json::from_str(&served.body)?;
    assert_eq!(served.clusters, vec![settled.clone()]);
    let page = operator::http::get(&addr, "/map", timeout).await?;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("map.json"));
    stop.cancel();
    server.await??;

    // The drain: chat-2 is marked, owns nothing, and its 4 shards are on their way.
    set_spec(&h, json!({"replicas": 2})).await?;
    h.pass("chat").await?;
    let draining = map_of(&h);
    let chat2 = &draining.pods[2];
    assert_eq!(chat2.name, "chat-2");
    assert!(chat2.draining && chat2.shards.is_empty());
    assert_eq!(draining.moves_total, 4);
    assert!(draining.moves.iter().all(|m| m.from == n("chat-2")));
    assert_eq!(draining.drain.draining, ["chat-2"]);
    assert_eq!(draining.drain.shards_left, 4);
    assert_ne!(draining.drain.phase, "Steady");
    assert_eq!(draining.desired_replicas, 2);

    // Moves done, everyone at the cleared epoch, chat-2 removed and gone.
    let marked = h.table("chat").await;
    h.nodes.applied(&all, &marked, false);
    h.nodes.applied(&["chat-2"], &marked, true);
    h.pass("chat").await?;
    let cleared = h.table("chat").await;
    h.nodes.applied(&all, &cleared, false);
    h.pass("chat").await?;
    h.statefulset_pods("chat").await?;
    h.pass("chat").await?;
    let done = map_of(&h);
    let names: Vec<&str> = done.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["chat-0", "chat-1"]);
    assert_eq!(done.pods.iter().map(|p| p.shard_count).sum::<u32>(), 12);
    assert_eq!((done.unowned, done.moves_total), (0, 0));
    assert_eq!(done.drain.phase, "Steady");
    assert!(done.drain.draining.is_empty());
    Ok(())
}
