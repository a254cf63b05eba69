//! One pod's life on a Node: its network namespace and volumes, its containers, status written
//! back, and graceful deletion ending with the kubelet's own final delete.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::container::{self, Event, Sandbox};
use super::env::PodFacts;
use super::status::PodView;
use super::{NodeCtx, RunningPod, volumes};

/// Runs `pod` until it is deleted (then deletes it for good), it is removed from the API, or
/// the kubelet stops.
pub async fn run(ctx: Arc<NodeCtx>, mut updates: watch::Receiver<Pod>, stop: CancellationToken) {
    let pod = updates.borrow().clone();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let key = format!("{ns}/{name}");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if pod.metadata.deletion_timestamp.is_some() {
        finish(&api, &name, &uid).await;
        return;
    }
    // No network, no pod: keep trying (and say why on the pod) until it works or the pod goes.
    let network = loop {
        match ctx.shared.network.add_pod(ctx.index) {
            Ok(n) => break n,
            Err(e) => {
                tracing::error!(pod = %key, error = %e, "no network for pod");
                let status = json!({"phase": "Pending", "conditions": [{"type": "PodReadyToStartContainers",
                    "status": "False", "reason": "NetworkNotReady", "message": e.to_string()}]});
                patch_status(&api, &name, status).await;
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = updates.changed() => {
                        if changed.is_err() || updates.borrow().metadata.deletion_timestamp.is_some() {
                            finish(&api, &name, &uid).await;
                            return;
                        }
                    }
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    let facts = PodFacts {
        pod_ip: network.ip.to_string(),
        host_ip: ctx.shared.host_ip.clone(),
        node_name: ctx.name.clone(),
    };
    let dir = ctx.shared.dir.join("pods").join(&uid);
    let containers: Vec<(String, String)> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .collect();
    let mut view = PodView::new(facts.pod_ip.clone(), facts.host_ip.clone(), &containers);
    patch_status(&api, &name, view.status(false)).await;
    ctx.shared.running_insert(
        key.clone(),
        RunningPod {
            uid: uid.clone(),
            ip: network.ip,
            node: ctx.name.clone(),
            pids: vec![None; containers.len()],
        },
    );

    // Volumes first: a missing Secret keeps the pod waiting, as FailedMount does.
    let prepared = loop {
        match volumes::prepare(&ctx.client, &pod, &facts, &dir.join("volumes")).await {
            Ok(p) => break Some(p),
            Err(message) => {
                for c in &mut view.containers {
                    c.state = super::status::State::Waiting {
                        reason: "ContainerCreating".to_owned(),
                        message: Some(message.clone()),
                    };
                }
                patch_status(&api, &name, view.status(false)).await;
                tokio::select! {
                    () = stop.cancelled() => break None,
                    changed = updates.changed() => {
                        if changed.is_err() || updates.borrow().metadata.deletion_timestamp.is_some() {
                            break None;
                        }
                    }
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    let Some(mut prepared) = prepared else {
        cleanup(&ctx, &key, &network, &dir);
        if !stop.is_cancelled() {
            finish(&api, &name, &uid).await;
        }
        return;
    };

    // Init containers are not run by this kubelet (nothing roomshard ships uses them): say so
    // on the pod rather than start its containers without them.
    if pod
        .spec
        .as_ref()
        .is_some_and(|s| s.init_containers.as_ref().is_some_and(|i| !i.is_empty()))
    {
        for c in &mut view.containers {
            c.state = super::status::State::Waiting {
                reason: "InitContainersUnsupported".to_owned(),
                message: Some("the process kubelet does not run init containers".to_owned()),
            };
        }
        patch_status(&api, &name, view.status(false)).await;
        tokio::select! {
            () = stop.cancelled() => {}
            _ = async { while updates.changed().await.is_ok() && updates.borrow().metadata.deletion_timestamp.is_none() {} } => {}
        }
        cleanup(&ctx, &key, &network, &dir);
        if !stop.is_cancelled() {
            finish(&api, &name, &uid).await;
        }
        return;
    }
    let sandbox = Sandbox {
        netns: network.netns.clone(),
        facts: facts.clone(),
        ip: network.ip,
        volumes: prepared.dirs.clone(),
        dir: dir.clone(),
    };
    let (events_tx, mut events) = mpsc::channel(64);
    let (deadline_tx, deadline_rx) = watch::channel(None::<Instant>);
    for index in 0..containers.len() {
        tokio::spawn(container::supervise(
            ctx.clone(),
            pod.clone(),
            index,
            sandbox.clone(),
            events_tx.clone(),
            deadline_rx.clone(),
        ));
    }
    drop(events_tx);
    let mut done = 0;
    let mut removed = false;
    let mut renew = prepared.renew_after.map(|d| Instant::now() + d);
    while done < containers.len() {
        let renew_at = renew.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::View(i, c)) => {
                    ctx.shared.running_pid(&key, i, c.pid);
                    if let Some(slot) = view.containers.get_mut(i) {
                        *slot = *c;
                    }
                    if !removed {
                        patch_status(&api, &name, view.status(false)).await;
                    }
                }
                Some(Event::Done) => done += 1,
                None => break,
            },
            changed = updates.changed(), if !removed && deadline_tx.borrow().is_none() => {
                if changed.is_err() {
                    // Gone from the API without a graceful delete (a force delete): stop now.
                    removed = true;
                    let _ = deadline_tx.send(Some(Instant::now()));
                    continue;
                }
                let latest = updates.borrow().clone();
                if latest.metadata.deletion_timestamp.is_some() {
                    let grace = latest
                        .metadata
                        .deletion_grace_period_seconds
                        .or_else(|| latest.spec.as_ref()?.termination_grace_period_seconds)
                        .unwrap_or(30);
                    let grace = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
                    tracing::info!(pod = %key, ?grace, "pod deleted: stopping its containers");
                    view.terminating = true;
                    let _ = deadline_tx.send(Some(Instant::now() + grace));
                }
            }
            () = stop.cancelled(), if deadline_tx.borrow().is_none() => {
                removed = true;
                let _ = deadline_tx.send(Some(Instant::now()));
            }
            () = tokio::time::sleep_until(renew_at.into()) => {
                match volumes::prepare(&ctx.client, &pod, &facts, &dir.join("volumes")).await {
                    Ok(p) => { prepared = p; renew = prepared.renew_after.map(|d| Instant::now() + d); }
                    Err(e) => {
                        tracing::warn!(pod = %key, error = %e, "token renewal failed");
                        renew = Some(Instant::now() + Duration::from_secs(10));
                    }
                }
            }
        }
    }
    if !removed {
        patch_status(&api, &name, view.status(true)).await;
    }
    cleanup(&ctx, &key, &network, &dir);
    if !removed && !stop.is_cancelled() && view.terminating {
        finish(&api, &name, &uid).await;
    }
}

fn cleanup(ctx: &NodeCtx, key: &str, network: &crate::network::PodNetwork, dir: &std::path::Path) {
    ctx.shared.running_remove(key);
    network.remove();
    let _ = std::fs::remove_dir_all(dir);
}

async fn patch_status(api: &Api<Pod>, name: &str, status: serde_json::Value) {
    let patch = json!({"status": status});
    if let Err(e) = api
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        tracing::debug!(pod = %name, error = %e, "pod status update failed");
    }
}

/// The kubelet's last word on a stopped pod: delete it with no grace, for this uid only.
async fn finish(api: &Api<Pod>, name: &str, uid: &str) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    if let Err(e) = api.delete(name, &params).await {
        tracing::debug!(pod = %name, error = %e, "final pod delete failed");
    }
}
