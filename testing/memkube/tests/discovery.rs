//! Discovery as clients read it: `/version`, `/api`, `/apis`, resource lists with status
//! subresources, the OpenAPI v3 index kubectl checks, and 404 Status answers for unknown paths.

mod common;

use common::{TestResult, api_status, start};
use kube::Client;
use serde_json::Value;

async fn get(client: &Client, path: &str) -> Result<Value, kube::Error> {
    client
        .request(
            http::Request::get(path)
                .body(Vec::new())
                .map_err(kube::Error::HttpError)?,
        )
        .await
}

#[tokio::test]
async fn discovery_lists_built_in_groups_resources_and_subresources() -> TestResult {
    let (server, client) = start().await?;
    let version = client.apiserver_version().await?;
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "33")
    );
    let core = get(&client, "/api/v1").await?;
    let names: Vec<&str> = core["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["name"].as_str())
        .collect();
    for wanted in [
        "pods",
        "pods/status",
        "services",
        "configmaps",
        "secrets",
        "serviceaccounts",
        "events",
        "namespaces",
        "endpoints",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from /api/v1");
    }
    let groups = get(&client, "/apis").await?;
    let group_names: Vec<&str> = groups["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["name"].as_str())
        .collect();
    for wanted in [
        "apps",
        "policy",
        "networking.k8s.io",
        "coordination.k8s.io",
        "events.k8s.io",
        "rbac.authorization.k8s.io",
        "apiextensions.k8s.io",
    ] {
        assert!(group_names.contains(&wanted), "{wanted} missing from /apis");
    }
    let apps = get(&client, "/apis/apps/v1").await?;
    let sts = apps["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"] == "statefulsets")
        .ok_or("no statefulsets")?;
    assert_eq!(sts["shortNames"], serde_json::json!(["sts"]));
    assert_eq!(sts["namespaced"], Value::Bool(true));
    let openapi = get(&client, "/openapi/v3").await?;
    assert!(openapi["paths"]["apis/apps/v1"]["serverRelativeURL"].is_string());
    let missing =
        api_status(get(&client, "/apis/nope.example.com/v1/things").await).ok_or("expected 404")?;
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    server.shutdown().await?;
    Ok(())
}
