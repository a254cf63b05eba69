//! Shared test fixtures: a running server, a kube client, and a small custom resource (`Room`)
//! with a status subresource, whose CRD carries the schema features memkube validates.

#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PostParams;
use kube::{Api, Client, CustomResource};
use memkube::{ApiServer, RunningServer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Errors in tests are boxed: any failure fails the test with its message.
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Starts a server on a free port with fast bookmarks, and a client for it.
pub async fn start() -> TestResult<(RunningServer, Client)> {
    let server = ApiServer::new()
        .bookmark_interval(Duration::from_millis(200))
        .serve("127.0.0.1:0".parse()?)
        .await?;
    let client = server.client()?;
    Ok((server, client))
}

/// A chat room, the custom resource the tests use.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "test.memkube.dev",
    version = "v1",
    kind = "Room",
    namespaced,
    status = "RoomStatus",
    shortname = "rm"
)]
pub struct RoomSpec {
    /// Immutable once set.
    pub shards: i32,
    /// At least zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// One of fast, safe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// What the operator reports.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct RoomStatus {
    /// Ready replicas.
    pub ready: i32,
}

/// The Room CRD, written by hand so that it carries validation rules and defaults.
pub fn room_crd() -> TestResult<CustomResourceDefinition> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "rooms.test.memkube.dev"},
        "spec": {
            "group": "test.memkube.dev",
            "scope": "Namespaced",
            "names": {"plural": "rooms", "singular": "room", "kind": "Room", "shortNames": ["rm"]},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [{"name": "Shards", "type": "integer", "jsonPath": ".spec.shards"}],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "required": ["shards"], "properties": {
                            "shards": {"type": "integer", "minimum": 1,
                                "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "shards is immutable"}]},
                            "replicas": {"type": "integer", "minimum": 0, "default": 3},
                            "mode": {"type": "string", "enum": ["fast", "safe"]}
                        }},
                        "status": {"type": "object", "properties": {"ready": {"type": "integer"}}}
                    }
                }}
            }]
        }
    }))?)
}

/// Creates the Room CRD.
pub async fn install_room_crd(client: &Client) -> TestResult {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &room_crd()?).await?;
    Ok(())
}

/// A Room with `shards` shards.
pub fn room(name: &str, shards: i32) -> Room {
    Room::new(
        name,
        RoomSpec {
            shards,
            replicas: None,
            mode: None,
        },
    )
}

/// The `kube::Error::Api` status code of a result, if it is one.
pub fn api_code<T>(r: &Result<T, kube::Error>) -> Option<u16> {
    match r {
        Err(kube::Error::Api(s)) => Some(s.code),
        _ => None,
    }
}

/// The `kube::Error::Api` status of a result, if it is one.
pub fn api_status<T>(r: Result<T, kube::Error>) -> Option<Box<kube::core::Status>> {
    match r {
        Err(kube::Error::Api(s)) => Some(s),
        _ => None,
    }
}
