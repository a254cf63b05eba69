//! Server-side apply through kube's `Patch::Apply`: create when absent, field ownership,
//! removal of fields a manager stops applying, conflicts and `force`, keyed lists.

mod common;

use common::{TestResult, api_status, start};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

fn cm(data: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": data})
}

#[tokio::test]
async fn apply_creates_then_removes_fields_the_manager_no_longer_applies() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let pp = PatchParams::apply("operator");
    let created = api
        .patch("cfg", &pp, &Patch::Apply(cm(json!({"a": "1", "b": "2"}))))
        .await?;
    assert_eq!(created.metadata.generation, Some(1));
    let fields = created.metadata.managed_fields.clone().unwrap_or_default();
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].manager.as_deref(), Some("operator"));
    assert_eq!(fields[0].operation.as_deref(), Some("Apply"));
    let fields_v1 = serde_json::to_value(&fields[0].fields_v1)?;
    assert_eq!(fields_v1, json!({"f:data": {"f:a": {}, "f:b": {}}}));

    let second = api
        .patch("cfg", &pp, &Patch::Apply(cm(json!({"a": "1"}))))
        .await?;
    assert_eq!(serde_json::to_value(&second.data)?, json!({"a": "1"}));
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_field_owned_by_another_manager_conflicts_unless_forced() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.patch(
        "cfg",
        &PatchParams::apply("one"),
        &Patch::Apply(cm(json!({"a": "1"}))),
    )
    .await?;
    let refused = api
        .patch(
            "cfg",
            &PatchParams::apply("two"),
            &Patch::Apply(cm(json!({"a": "2"}))),
        )
        .await;
    let status = api_status(refused).ok_or("expected a conflict")?;
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Apply failed with 1 conflict: - conflict with \"one\": .data.a"
    );

    let shared = api
        .patch(
            "cfg",
            &PatchParams::apply("two"),
            &Patch::Apply(cm(json!({"a": "1", "b": "2"}))),
        )
        .await?;
    assert_eq!(
        shared.metadata.managed_fields.map(|m| m.len()),
        Some(2),
        "equal values are shared, not conflicts"
    );

    let forced = api
        .patch(
            "cfg",
            &PatchParams::apply("two").force(),
            &Patch::Apply(cm(json!({"a": "3"}))),
        )
        .await?;
    assert_eq!(serde_json::to_value(&forced.data)?, json!({"a": "3"}));
    // "one" lost `a`; it owns nothing else, so it no longer appears.
    let managers: Vec<String> = forced
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, vec!["two"]);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_merge_patch_takes_ownership_so_a_later_apply_conflicts() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.patch(
        "cfg",
        &PatchParams::apply("operator"),
        &Patch::Apply(cm(json!({"a": "1"}))),
    )
    .await?;
    let edit = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    api.patch(
        "cfg",
        &edit,
        &Patch::Merge(json!({"data": {"a": "hand-edited"}})),
    )
    .await?;
    let refused = api
        .patch(
            "cfg",
            &PatchParams::apply("operator"),
            &Patch::Apply(cm(json!({"a": "1"}))),
        )
        .await;
    let status = api_status(refused).ok_or("expected a conflict")?;
    assert!(
        status.message.contains("conflict with \"kubectl-edit\""),
        "{}",
        status.message
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn keyed_lists_merge_by_name_across_managers() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<StatefulSet> = Api::default_namespaced(client);
    let sts = |containers: serde_json::Value| {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web"},
            "spec": {"serviceName": "web", "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}}}})
    };
    api.patch(
        "web",
        &PatchParams::apply("operator"),
        &Patch::Apply(sts(json!([{"name": "app", "image": "app:1"}]))),
    )
    .await?;
    let both = api
        .patch(
            "web",
            &PatchParams::apply("injector"),
            &Patch::Apply(sts(json!([{"name": "sidecar", "image": "proxy:1"}]))),
        )
        .await?;
    let names = |s: &StatefulSet| -> Vec<String> {
        s.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(names(&both), vec!["app", "sidecar"]);
    let dropped = api
        .patch(
            "web",
            &PatchParams::apply("injector"),
            &Patch::Apply(sts(json!([]))),
        )
        .await?;
    assert_eq!(
        names(&dropped),
        vec!["app"],
        "the injector's container goes, the operator's stays"
    );
    server.shutdown().await?;
    Ok(())
}
