//! Deletion: finalizers hold an object with a deletionTimestamp until they are removed; owner
//! references cascade deletion to dependents (custom objects owning built-ins included).

mod common;

use common::{Room, TestResult, api_code, install_room_crd, room, start};
use futures_util::TryStreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

fn cm_owned_by(name: &str, owner: &Room) -> Result<ConfigMap, &'static str> {
    let owner_ref = owner.controller_owner_ref(&()).ok_or("owner without uid")?;
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: Some(vec![owner_ref]),
            ..Default::default()
        },
        ..Default::default()
    })
}

#[tokio::test]
async fn a_finalizer_holds_the_object_until_it_is_removed() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("held".into()),
            finalizers: Some(vec!["test/hold".into()]),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &cm).await?;
    let mut events = Box::pin(watcher::watcher(api.clone(), watcher::Config::default()));
    while !matches!(events.try_next().await?, Some(Event::InitDone)) {}

    api.delete("held", &DeleteParams::default()).await?;
    let marked = api.get("held").await?;
    assert!(marked.metadata.deletion_timestamp.is_some());
    match events.try_next().await? {
        Some(Event::Apply(c)) => assert!(c.metadata.deletion_timestamp.is_some()),
        other => return Err(format!("unexpected {other:?}").into()),
    }

    api.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    assert_eq!(api_code(&api.get("held").await), Some(404));
    match events.try_next().await? {
        Some(Event::Delete(c)) => assert_eq!(c.name_any(), "held"),
        other => return Err(format!("unexpected {other:?}").into()),
    }
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn deleting_an_owner_deletes_its_dependents_recursively() -> TestResult {
    let (server, client) = start().await?;
    install_room_crd(&client).await?;
    let rooms: Api<Room> = Api::default_namespaced(client.clone());
    let owner = rooms
        .create(&PostParams::default(), &room("owner", 2))
        .await?;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let child = cms
        .create(&PostParams::default(), &cm_owned_by("table", &owner)?)
        .await?;
    let grandchild_ref = child.controller_owner_ref(&()).ok_or("child without uid")?;
    let sts: Api<StatefulSet> = Api::default_namespaced(client.clone());
    let grandchild = StatefulSet {
        metadata: ObjectMeta {
            name: Some("nodes".into()),
            owner_references: Some(vec![grandchild_ref]),
            ..Default::default()
        },
        ..Default::default()
    };
    sts.create(&PostParams::default(), &grandchild).await?;
    let unrelated = cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("other".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;

    rooms.delete("owner", &DeleteParams::default()).await?;
    assert_eq!(api_code(&cms.get("table").await), Some(404));
    assert_eq!(api_code(&sts.get("nodes").await), Some(404));
    assert_eq!(cms.get("other").await?.uid(), unrelated.uid());
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_dependent_with_a_finalizer_waits_and_orphaning_keeps_dependents() -> TestResult {
    let (server, client) = start().await?;
    install_room_crd(&client).await?;
    let rooms: Api<Room> = Api::default_namespaced(client.clone());
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());

    let owner = rooms.create(&PostParams::default(), &room("a", 1)).await?;
    let mut held = cm_owned_by("held", &owner)?;
    held.metadata.finalizers = Some(vec!["test/hold".into()]);
    cms.create(&PostParams::default(), &held).await?;
    rooms.delete("a", &DeleteParams::default()).await?;
    assert!(cms.get("held").await?.metadata.deletion_timestamp.is_some());

    let owner = rooms.create(&PostParams::default(), &room("b", 1)).await?;
    cms.create(&PostParams::default(), &cm_owned_by("kept", &owner)?)
        .await?;
    rooms.delete("b", &DeleteParams::orphan()).await?;
    let kept = cms.get("kept").await?;
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_namespace_deletes_what_is_in_it() -> TestResult {
    let (server, client) = start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    cms.create(
        &PostParams::default(),
        &ConfigMap {
            metadata: ObjectMeta {
                name: Some("x".into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await?;
    assert_eq!(api_code(&cms.get("x").await), Some(404));
    assert_eq!(api_code(&namespaces.get("doomed").await), Some(404));
    server.shutdown().await?;
    Ok(())
}
