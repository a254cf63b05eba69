//! Leader election against the real API server: one holder at a time, takeover on expiry or
//! release, and a leader that loses its Lease stops working.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use operator::k8s::lease::{Elector, LeaseConfig, lead};
use serde_json::json;
use support::{TestResult, control_plane, until};
use tokio_util::sync::CancellationToken;

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(50),
        ..LeaseConfig::new("default", "roomshard-operator", identity)
    }
}

async fn holder(client: &kube::Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    leases
        .get_opt("roomshard-operator")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

/// Waits (on a watch) until `identity` holds the Lease.
async fn until_held_by(client: &kube::Client, identity: &str) -> TestResult {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    until(
        &leases,
        "roomshard-operator",
        &format!("{identity} leads"),
        |l: Option<&Lease>| {
            l.and_then(|l| l.spec.as_ref()?.holder_identity.as_deref()) == Some(identity)
        },
    )
    .await
}

/// Polls `check` every 20 ms for up to five seconds (the work counter has no signal).
async fn eventually<F>(what: &str, check: F) -> TestResult
where
    F: Fn() -> bool,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn one_candidate_holds_the_lease_until_it_steps_down() -> TestResult {
    let cluster = control_plane().await?;
    let client = cluster.client().await?;
    let a = Elector::new(client.clone(), config("a"));
    let b = Elector::new(client.clone(), config("b"));
    assert!(a.try_acquire_or_renew().await?);
    assert!(!b.try_acquire_or_renew().await?, "b took a held lease");
    assert!(a.try_acquire_or_renew().await?, "a could not renew");
    assert_eq!(holder(&client).await.as_deref(), Some("a"));

    b.step_down().await?;
    assert_eq!(
        holder(&client).await.as_deref(),
        Some("a"),
        "b released a's lease"
    );
    a.step_down().await?;
    assert!(
        b.try_acquire_or_renew().await?,
        "b could not take a released lease"
    );
    assert_eq!(holder(&client).await.as_deref(), Some("b"));
    Ok(())
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_counts_a_transition() -> TestResult {
    let cluster = control_plane().await?;
    let client = cluster.client().await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    leases
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "roomshard-operator", "namespace": "default"},
                "spec": {"holderIdentity": "gone", "leaseDurationSeconds": 15,
                         "renewTime": "2020-01-01T00:00:00.000000Z", "leaseTransitions": 3},
            }))?,
        )
        .await?;
    let b = Elector::new(client.clone(), config("b"));
    assert!(b.try_acquire_or_renew().await?);
    let spec = leases
        .get("roomshard-operator")
        .await?
        .spec
        .ok_or("no spec")?;
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(4));
    Ok(())
}

#[tokio::test]
async fn only_the_leader_works_and_a_standby_takes_over_when_it_shuts_down() -> TestResult {
    let cluster = control_plane().await?;
    let client = cluster.client().await?;
    let working = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let work = |who: &'static str| {
        let working = working.clone();
        let most = most.clone();
        move |stop: CancellationToken| {
            let working = working.clone();
            let most = most.clone();
            async move {
                let now = working.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tracing::info!(who, "working");
                stop.cancelled().await;
                working.fetch_sub(1, Ordering::SeqCst);
            }
        }
    };
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    let a = tokio::spawn(lead(
        Elector::new(client.clone(), config("a")),
        stop_a.clone(),
        work("a"),
    ));
    until_held_by(&client, "a").await?;
    let b = tokio::spawn(lead(
        Elector::new(client.clone(), config("b")),
        stop_b.clone(),
        work("b"),
    ));
    eventually("a works", || working.load(Ordering::SeqCst) == 1).await?;

    stop_a.cancel();
    a.await?;
    assert_ne!(
        holder(&client).await.as_deref(),
        Some("a"),
        "a released the lease when it shut down"
    );
    until_held_by(&client, "b").await?;
    eventually("b works", || working.load(Ordering::SeqCst) == 1).await?;
    stop_b.cancel();
    b.await?;
    assert_eq!(working.load(Ordering::SeqCst), 0);
    assert_eq!(most.load(Ordering::SeqCst), 1, "two leaders worked at once");
    Ok(())
}

#[tokio::test]
async fn a_leader_whose_lease_is_taken_stops_working() -> TestResult {
    let cluster = control_plane().await?;
    let client = cluster.client().await?;
    let stopped = CancellationToken::new();
    let seen = stopped.clone();
    let shutdown = CancellationToken::new();
    let leading = tokio::spawn(lead(
        Elector::new(client.clone(), config("a")),
        shutdown.clone(),
        move |stop: CancellationToken| {
            let seen = seen.clone();
            async move {
                stop.cancelled().await;
                seen.cancel();
            }
        },
    ));
    until_held_by(&client, "a").await?;
    // Another replica (with a clock far ahead, say) writes itself in as the holder.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    leases
        .patch(
            "roomshard-operator",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "thief",
                "renewTime": "2999-01-01T00:00:00.000000Z"}})),
        )
        .await?;
    tokio::time::timeout(Duration::from_secs(5), stopped.cancelled()).await?;
    shutdown.cancel();
    leading.await?;
    assert_eq!(
        holder(&client).await.as_deref(),
        Some("thief"),
        "a released the thief's lease"
    );
    Ok(())
}

#[tokio::test]
async fn a_replica_that_is_already_shutting_down_never_takes_the_lease() -> TestResult {
    let cluster = control_plane().await?;
    let client = cluster.client().await?;
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let worked = Arc::new(AtomicUsize::new(0));
    let counter = worked.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        lead(
            Elector::new(client.clone(), config("late")),
            shutdown,
            move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
                async {}
            },
        ),
    )
    .await?;
    assert_eq!(worked.load(Ordering::SeqCst), 0, "no work started");
    assert_eq!(holder(&client).await, None, "the lease was not taken");
    cluster.stop().await;
    Ok(())
}
