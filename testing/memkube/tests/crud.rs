//! Basic verbs through kube's typed `Api`: create, get, list with selectors, replace with
//! optimistic concurrency, merge and JSON patches, delete, and the Status errors kube parses.

mod common;

use std::collections::BTreeMap;

use common::{TestResult, api_code, api_status, start};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    }
}

#[tokio::test]
async fn created_objects_get_server_metadata_and_can_be_read_back() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "team");
    let created = api.create(&PostParams::default(), &cm("a", &[])).await?;
    let meta = &created.metadata;
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    assert_eq!(meta.namespace.as_deref(), Some("team"));
    let rv: u64 = meta
        .resource_version
        .as_deref()
        .unwrap_or_default()
        .parse()?;
    assert!(rv > 0);
    let fetched = api.get("a").await?;
    assert_eq!(fetched.data, created.data);
    assert!(
        server.store().get("namespaces", "", "team").is_some(),
        "namespaces are created implicitly"
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn creating_a_taken_name_is_already_exists_and_a_missing_object_is_not_found() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("a", &[])).await?;
    let again = api_status(api.create(&PostParams::default(), &cm("a", &[])).await)
        .ok_or("expected an api error")?;
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(again.message, "configmaps \"a\" already exists");
    let missing = api_status(api.get("nope").await).ok_or("expected an api error")?;
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, "configmaps \"nope\" not found");
    assert_eq!(
        api_code(&api.delete("nope", &DeleteParams::default()).await),
        Some(404)
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn replacing_with_a_stale_resource_version_is_a_conflict() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let first = api.create(&PostParams::default(), &cm("a", &[])).await?;
    let mut fresh = first.clone();
    fresh.data = Some(BTreeMap::from([("k".to_string(), "new".to_string())]));
    let updated = api.replace("a", &PostParams::default(), &fresh).await?;
    assert_ne!(
        updated.metadata.resource_version,
        first.metadata.resource_version
    );
    let stale = api.replace("a", &PostParams::default(), &first).await;
    let status = api_status(stale).ok_or("expected a conflict")?;
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert!(status.message.contains("the object has been modified"));
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    api.create(
        &PostParams::default(),
        &cm("web", &[("app", "web"), ("tier", "front")]),
    )
    .await?;
    api.create(&PostParams::default(), &cm("db", &[("app", "db")]))
        .await?;
    api.create(&PostParams::default(), &cm("bare", &[])).await?;
    let names = |list: kube::core::ObjectList<ConfigMap>| {
        list.items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect::<Vec<_>>()
    };
    let cases = [
        ("app=web", vec!["web"]),
        ("app==db", vec!["db"]),
        ("app!=web", vec!["bare", "db"]),
        ("app in (web,db)", vec!["db", "web"]),
        ("app notin (web)", vec!["bare", "db"]),
        ("tier", vec!["web"]),
        ("!app", vec!["bare"]),
    ];
    for (selector, want) in cases {
        assert_eq!(
            names(api.list(&ListParams::default().labels(selector)).await?),
            want,
            "{selector}"
        );
    }
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.name=db"))
                .await?
        ),
        vec!["db"]
    );
    let everywhere: Api<ConfigMap> = Api::all(client);
    assert_eq!(
        names(
            everywhere
                .list(&ListParams::default().fields("metadata.namespace=default"))
                .await?
        )
        .len(),
        3
    );
    assert_eq!(
        names(
            everywhere
                .list(&ListParams::default().fields("metadata.namespace=other"))
                .await?
        )
        .len(),
        0
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn lists_page_with_limit_and_continue() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    for name in ["a", "b", "c"] {
        api.create(&PostParams::default(), &cm(name, &[])).await?;
    }
    let first = api.list(&ListParams::default().limit(2)).await?;
    assert_eq!(first.items.len(), 2);
    let token = first
        .metadata
        .continue_
        .clone()
        .ok_or("expected a continue token")?;
    let second = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await?;
    assert_eq!(
        second
            .items
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect::<Vec<_>>(),
        vec!["c"]
    );
    assert!(second.metadata.continue_.is_none());
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn merge_and_json_patches_change_only_what_they_name() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("a", &[("app", "web")]))
        .await?;
    let pp = PatchParams::default();
    let merged = api
        .patch(
            "a",
            &pp,
            &Patch::Merge(json!({"data": {"extra": "1"}, "metadata": {"labels": {"app": null}}})),
        )
        .await?;
    assert_eq!(merged.data.as_ref().map(|d| d.len()), Some(2));
    assert_eq!(merged.metadata.labels.as_ref().map(|l| l.len()), Some(0));
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "replace", "path": "/data/k", "value": "patched"}]))?;
    let patched = api.patch("a", &pp, &Patch::<()>::Json(ops)).await?;
    assert_eq!(
        patched.data.and_then(|d| d.get("k").cloned()).as_deref(),
        Some("patched")
    );
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/k", "value": "other"}]))?;
    assert_eq!(
        api_code(&api.patch("a", &pp, &Patch::<()>::Json(failing)).await),
        Some(422)
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_unchanged_write_keeps_its_resource_version() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let created = api.create(&PostParams::default(), &cm("a", &[])).await?;
    let same = api
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "v"}})),
        )
        .await?;
    assert_eq!(
        same.metadata.resource_version,
        created.metadata.resource_version
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn delete_removes_the_object_and_deletecollection_honours_selectors() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("a", &[("app", "x")]))
        .await?;
    api.create(&PostParams::default(), &cm("b", &[("app", "x")]))
        .await?;
    api.create(&PostParams::default(), &cm("c", &[])).await?;
    api.delete("c", &DeleteParams::default()).await?;
    assert_eq!(api_code(&api.get("c").await), Some(404));
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("app=x"),
    )
    .await?;
    assert!(api.list(&ListParams::default()).await?.items.is_empty());
    server.shutdown().await?;
    Ok(())
}
