//! Watches through kube's own `watcher` and raw `Api::watch`: order of events, resuming from a
//! resourceVersion, 410 Gone after compaction, bookmarks, selectors and timeouts.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestResult, start};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{
    DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use tokio::time::timeout;

fn cm(name: &str, app: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("app".to_string(), app.to_string())])),
            ..Default::default()
        },
        ..Default::default()
    }
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn kube_watcher_sees_create_modify_and_delete_in_order() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("before", "x"))
        .await?;
    let mut events = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    let mut initial = Vec::new();
    loop {
        match timeout(WAIT, events.try_next()).await?? {
            Some(Event::Init) => {}
            Some(Event::InitApply(c)) => initial.push(c.metadata.name.unwrap_or_default()),
            Some(Event::InitDone) => break,
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    assert_eq!(initial, vec!["before"]);
    api.create(&PostParams::default(), &cm("a", "x")).await?;
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await?;
    api.delete("a", &DeleteParams::default()).await?;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match timeout(WAIT, events.try_next()).await?? {
            Some(Event::Apply(c)) => seen.push(format!(
                "apply {}",
                c.data.map(|d| d.len()).unwrap_or_default()
            )),
            Some(Event::Delete(c)) => {
                seen.push(format!("delete {}", c.metadata.name.unwrap_or_default()))
            }
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    assert_eq!(seen, vec!["apply 0", "apply 1", "delete a"]);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_watch_resumes_from_a_resource_version_without_replaying_older_changes() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("old", "x")).await?;
    let list = api.list(&Default::default()).await?;
    let rv = list
        .metadata
        .resource_version
        .ok_or("list without resourceVersion")?;
    api.create(&PostParams::default(), &cm("new", "x")).await?;
    let mut stream = api.watch(&WatchParams::default(), &rv).await?.boxed();
    match timeout(WAIT, stream.try_next()).await?? {
        Some(WatchEvent::Added(c)) => assert_eq!(c.metadata.name.as_deref(), Some("new")),
        other => return Err(format!("unexpected {other:?}").into()),
    }
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_watch_from_a_compacted_resource_version_gets_410_gone() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let created = api.create(&PostParams::default(), &cm("a", "x")).await?;
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await?;
    server.store().compact();
    let rv = created
        .metadata
        .resource_version
        .ok_or("no resourceVersion")?;
    let mut stream = api.watch(&WatchParams::default(), &rv).await?.boxed();
    match timeout(WAIT, stream.try_next()).await?? {
        Some(WatchEvent::Error(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => return Err(format!("unexpected {other:?}").into()),
    }
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn kube_watcher_relists_after_its_resource_version_is_compacted_away() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &cm("a", "x")).await?;
    let config = watcher::Config::default().timeout(1).disable_bookmarks();
    let mut events = watcher::watcher(api.clone(), config).boxed();
    while !matches!(
        timeout(WAIT, events.try_next()).await??,
        Some(Event::InitDone)
    ) {}
    // A change the configmap watch does not see, then compaction past the watcher's version:
    // when the watch times out, the re-watch gets 410 Gone and the watcher lists again.
    let secrets: Api<Secret> = Api::default_namespaced(client);
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("s".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    server.store().compact();
    let mut relisted = Vec::new();
    let mut gone = false;
    loop {
        match timeout(WAIT, events.next()).await?.transpose() {
            Err(watcher::Error::WatchError(status)) if status.code == 410 => gone = true,
            Err(e) => return Err(e.into()),
            Ok(Some(Event::Init)) => {}
            Ok(Some(Event::InitApply(c))) => relisted.push(c.metadata.name.unwrap_or_default()),
            Ok(Some(Event::InitDone)) => break,
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    assert!(gone, "the watcher was told 410 Gone");
    assert_eq!(relisted, vec!["a"]);
    api.create(&PostParams::default(), &cm("b", "x")).await?;
    match timeout(WAIT, events.try_next()).await?? {
        Some(Event::Apply(c)) => assert_eq!(c.metadata.name.as_deref(), Some("b")),
        other => return Err(format!("unexpected {other:?}").into()),
    }
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn watches_send_bookmarks_and_filter_by_label() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let mut params = WatchParams::default().labels("app=web");
    params.bookmarks = true;
    let mut stream = api.watch(&params, "0").await?.boxed();
    api.create(&PostParams::default(), &cm("other", "db"))
        .await?;
    api.create(&PostParams::default(), &cm("web", "web"))
        .await?;
    match timeout(WAIT, stream.try_next()).await?? {
        Some(WatchEvent::Added(c)) => assert_eq!(c.metadata.name.as_deref(), Some("web")),
        other => return Err(format!("unexpected {other:?}").into()),
    }
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "moved"}}})),
    )
    .await?;
    match timeout(WAIT, stream.try_next()).await?? {
        Some(WatchEvent::Deleted(c)) => assert_eq!(
            c.metadata.name.as_deref(),
            Some("web"),
            "leaving the selector reads as DELETED"
        ),
        other => return Err(format!("unexpected {other:?}").into()),
    }
    match timeout(WAIT, stream.try_next()).await?? {
        Some(WatchEvent::Bookmark(b)) => assert!(!b.metadata.resource_version.is_empty()),
        other => return Err(format!("unexpected {other:?}").into()),
    }
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_watch_ends_after_its_timeout() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    let mut stream = api
        .watch(&WatchParams::default().timeout(1), "0")
        .await?
        .boxed();
    let started = tokio::time::Instant::now();
    while let Some(event) = timeout(WAIT, stream.try_next()).await?? {
        assert!(
            matches!(event, WatchEvent::Bookmark(_)),
            "only bookmarks on an idle watch"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn streaming_lists_end_their_initial_events_with_a_bookmark() -> TestResult {
    let (server, client) = start().await?;
    let api: Api<ConfigMap> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &cm("a", "x")).await?;
    let config = watcher::Config::default().streaming_lists();
    let mut events = watcher::watcher(api.clone(), config).boxed();
    let mut seen = Vec::new();
    loop {
        match timeout(WAIT, events.try_next()).await?? {
            Some(Event::Init) => seen.push("init".to_string()),
            Some(Event::InitApply(c)) => seen.push(c.metadata.name.unwrap_or_default()),
            Some(Event::InitDone) => break,
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    assert_eq!(seen, vec!["init", "a"]);
    server.shutdown().await?;
    Ok(())
}
