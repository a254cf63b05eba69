//! The shape roomshard's operator has: a kube `Controller` that owns a StatefulSet per custom
//! object, writes children by server-side apply and status through the status subresource, and
//! reconciles again when a child changes. It runs unchanged against memkube.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Room, RoomStatus, TestResult, install_room_crd, room, start};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::time::timeout;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ReconcileError(#[from] kube::Error);

async fn reconcile(room: Arc<Room>, client: Arc<Client>) -> Result<Action, ReconcileError> {
    let ns = room.namespace().unwrap_or_default();
    let owner = room
        .controller_owner_ref(&())
        .into_iter()
        .collect::<Vec<_>>();
    let sts = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": room.name_any(), "ownerReferences": owner},
        "spec": {"replicas": room.spec.replicas.unwrap_or(1), "serviceName": room.name_any(),
            "selector": {"matchLabels": {"room": room.name_any()}},
            "template": {"metadata": {"labels": {"room": room.name_any()}},
                "spec": {"containers": [{"name": "node", "image": "roomshard/node:dev"}]}}}
    });
    let pp = PatchParams::apply("room-operator").force();
    let children: Api<StatefulSet> = Api::namespaced((*client).clone(), &ns);
    let applied = children
        .patch(&room.name_any(), &pp, &Patch::Apply(sts))
        .await?;
    let ready = applied.status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let status =
        json!({"apiVersion": "test.memkube.dev/v1", "kind": "Room", "status": {"ready": ready}});
    Api::<Room>::namespaced((*client).clone(), &ns)
        .patch_status(&room.name_any(), &pp, &Patch::Apply(status))
        .await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn error_policy(_: Arc<Room>, _: &ReconcileError, _: Arc<Client>) -> Action {
    Action::requeue(Duration::from_millis(100))
}

#[tokio::test]
async fn a_kube_controller_reconciles_children_and_status_against_memkube() -> TestResult {
    let (server, client) = start().await?;
    install_room_crd(&client).await?;
    let rooms: Api<Room> = Api::default_namespaced(client.clone());
    let children: Api<StatefulSet> = Api::default_namespaced(client.clone());
    let controller = Controller::new(rooms.clone(), watcher::Config::default())
        .owns(children.clone(), watcher::Config::default())
        .run(reconcile, error_policy, Arc::new(client.clone()))
        .for_each(|_| async {});
    let running = tokio::spawn(controller);

    rooms
        .create(&PostParams::default(), &room("lobby", 4))
        .await?;
    // The kubelet's part: the StatefulSet's pods become ready.
    let mut changes = watcher::watcher(children.clone(), watcher::Config::default()).boxed();
    loop {
        match timeout(Duration::from_secs(10), changes.next())
            .await?
            .ok_or("watch ended")??
        {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) if s.name_any() == "lobby" => {
                break;
            }
            _ => {}
        }
    }
    server.store().set_status(
        "statefulsets.apps",
        "default",
        "lobby",
        json!({"replicas": 3, "readyReplicas": 3}),
    )?;
    let mut statuses = watcher::watcher(rooms.clone(), watcher::Config::default()).boxed();
    loop {
        let event = timeout(Duration::from_secs(10), statuses.next())
            .await?
            .ok_or("watch ended")??;
        if let watcher::Event::Apply(r) | watcher::Event::InitApply(r) = event
            && r.status == Some(RoomStatus { ready: 3 })
        {
            break;
        }
    }
    let sts = children.get("lobby").await?;
    assert_eq!(
        sts.owner_references().first().map(|o| o.kind.as_str()),
        Some("Room")
    );

    rooms.delete("lobby", &DeleteParams::default()).await?;
    assert!(
        children.get_opt("lobby").await?.is_none(),
        "the StatefulSet is garbage-collected with its Room"
    );
    running.abort();
    server.shutdown().await?;
    Ok(())
}
