//! Custom resources: a CRD makes its resource served; objects are defaulted and validated
//! against the schema and transition rules, with the real server's messages; the status
//! subresource and generation behave as on a cluster.

mod common;

use common::{Room, RoomStatus, TestResult, api_status, install_room_crd, room, start};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::discovery::Discovery;
use kube::{Api, CustomResourceExt};
use serde_json::json;

#[tokio::test]
async fn a_crd_serves_its_resource_with_names_and_status_in_discovery() -> TestResult {
    let (server, client) = start().await?;
    install_room_crd(&client).await?;
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get("rooms.test.memkube.dev")
        .await?;
    let established = crd
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established);
    let discovery = Discovery::new(client.clone()).run().await?;
    let (resource, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(r, _)| r.plural == "rooms")
        .ok_or("rooms not discovered")?;
    assert_eq!(
        (resource.kind.as_str(), resource.group.as_str()),
        ("Room", "test.memkube.dev")
    );
    assert!(
        caps.subresources
            .iter()
            .any(|(s, _)| s.plural == "rooms/status" || s.plural == "status")
    );
    let list: serde_json::Value = client
        .request(http::Request::get("/apis/test.memkube.dev/v1").body(Vec::new())?)
        .await?;
    assert_eq!(list["resources"][0]["shortNames"], json!(["rm"]));
    assert_eq!(list["resources"][1]["name"], json!("rooms/status"));
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn the_derived_crd_is_accepted_too() -> TestResult {
    let (server, client) = start().await?;
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &Room::crd())
        .await?;
    let rooms: Api<Room> = Api::default_namespaced(client);
    rooms.create(&PostParams::default(), &room("a", 4)).await?;
    assert_eq!(rooms.get("a").await?.spec.shards, 4);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn schema_violations_are_422_invalid_naming_the_field() -> TestResult {
    let (server, client) = start().await?;
    install_room_crd(&client).await?;
    let rooms: Api<Room> = Api::default_namespaced(client);
    let mut bad = room("bad", 4);
    bad.spec.replicas = Some(-1);
    let status =
        api_status(rooms.create(&PostParams::default(), &bad).await).ok_or("expected invalid")?;
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        status.message,
        "Room.test.memkube.dev \"bad\" is invalid: spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0"
    );
    let mut bad_mode = room("bad", 4);
    bad_mode.spec.mode = Some("slow".into());
    let status = api_status(rooms.create(&PostParams::default(), &bad_mode).await)
        .ok_or("expected invalid")?;
    assert!(
        status.message.ends_with(
            "spec.mode: Unsupported value: \"slow\": supported values: \"fast\", \"safe\""
        ),
        "{}",
        status.message
    );
    let unknown = json!({"apiVersion": "test.memkube.dev/v1", "kind": "Room", "metadata": {"name": "u"}, "spec": {"shards": 1, "typo": true}});
    let status = api_status(
        rooms
            .patch("u", &PatchParams::apply("t"), &Patch::Apply(unknown))
            .await,
    )
    .ok_or("expected invalid")?;
    assert!(
        status
            .message
            .ends_with("spec.typo: field not declared in schema"),
        "{}",
        status.message
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn defaults_are_applied_and_immutable_fields_refuse_changes() -> TestResult {
    let (server, client) = start().await?;
    install_room_crd(&client).await?;
    let rooms: Api<Room> = Api::default_namespaced(client);
    let created = rooms.create(&PostParams::default(), &room("r", 4)).await?;
    assert_eq!(created.spec.replicas, Some(3), "schema default");
    let changed = rooms
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"shards": 8}})),
        )
        .await;
    let status = api_status(changed).ok_or("expected invalid")?;
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .ends_with("spec.shards: Invalid value: \"integer\": shards is immutable"),
        "{}",
        status.message
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn status_writes_touch_only_status_and_spec_writes_bump_generation() -> TestResult {
    let (server, client) = start().await?;
    install_room_crd(&client).await?;
    let rooms: Api<Room> = Api::default_namespaced(client);
    let mut with_status = room("r", 4);
    with_status.status = Some(RoomStatus { ready: 9 });
    let created = rooms.create(&PostParams::default(), &with_status).await?;
    assert_eq!(created.status, None, "status is ignored on create");
    assert_eq!(created.metadata.generation, Some(1));

    let status_patch = json!({"apiVersion": "test.memkube.dev/v1", "kind": "Room", "status": {"ready": 2}, "spec": {"shards": 99}});
    let after_status = rooms
        .patch_status(
            "r",
            &PatchParams::apply("operator").force(),
            &Patch::Apply(status_patch),
        )
        .await?;
    assert_eq!(after_status.status, Some(RoomStatus { ready: 2 }));
    assert_eq!(
        after_status.spec.shards, 4,
        "spec in a status write is ignored"
    );
    assert_eq!(
        after_status.metadata.generation,
        Some(1),
        "status writes keep generation"
    );

    let after_spec = rooms
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}, "status": {"ready": 0}})),
        )
        .await?;
    assert_eq!(
        after_spec.status,
        Some(RoomStatus { ready: 2 }),
        "main writes keep status"
    );
    assert_eq!(after_spec.metadata.generation, Some(2));
    let labelled = rooms
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await?;
    assert_eq!(
        labelled.metadata.generation,
        Some(2),
        "metadata changes keep generation"
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_crd_stops_serving_it_and_removes_its_objects() -> TestResult {
    let (server, client) = start().await?;
    install_room_crd(&client).await?;
    let rooms: Api<Room> = Api::default_namespaced(client.clone());
    rooms.create(&PostParams::default(), &room("r", 1)).await?;
    Api::<CustomResourceDefinition>::all(client)
        .delete("rooms.test.memkube.dev", &DeleteParams::default())
        .await?;
    let gone = api_status(rooms.get("r").await).ok_or("expected not found")?;
    assert_eq!(gone.code, 404);
    assert!(
        server
            .store()
            .list("rooms.test.memkube.dev", None)
            .is_empty()
    );
    server.shutdown().await?;
    Ok(())
}
