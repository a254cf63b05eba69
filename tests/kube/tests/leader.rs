//! The operator's leader election on the real control plane: the chart's two replicas share one
//! Lease; deleting the leader's pod (graceful, as `kubectl delete pod` does) hands leadership to
//! another live replica within the lease duration, and the new leader reconciles.

use std::time::{Duration, Instant};

use kube::Api;
use kube_e2e::{Cluster, OPERATOR_NS, TestResult, eventually, with_cluster};
use operator::k8s::crd::ChatCluster;

/// The operator's lease duration (operator/src/k8s/lease.rs).
const LEASE_DURATION: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_leader_pod_hands_the_lease_to_a_live_replica_which_then_reconciles()
-> TestResult {
    with_cluster(2, |c| Box::pin(failover(c))).await
}

async fn failover(cluster: &Cluster) -> TestResult {
    cluster.install_operator(&[]).await?;
    let leader = eventually("a leader", Duration::from_secs(30), || {
        cluster.lease_holder()
    })
    .await?;
    let before = cluster.operator_pods().await?;
    eprintln!(
        "{}",
        cluster
            .kubectl(&["-n", OPERATOR_NS, "get", "pods", "-o", "wide"])
            .await?
    );
    assert!(
        before.contains(&leader),
        "the leader {leader} is one of {before:?}"
    );

    let deleted_at = Instant::now();
    cluster
        .kubectl(&["-n", OPERATOR_NS, "delete", "pod", &leader, "--wait=false"])
        .await?;
    let new_leader = eventually(
        "the standby takes the Lease",
        LEASE_DURATION * 2,
        || async { cluster.lease_holder().await.filter(|h| *h != leader) },
    )
    .await?;
    let took = deleted_at.elapsed();
    eprintln!("leadership moved from {leader} to {new_leader} in {took:?}");
    // The released Lease goes to whichever live candidate asks first: the standby (it retries
    // every 2 s) or the Deployment's replacement pod (it asks as soon as it starts).
    let live = cluster
        .kubectl(&[
            "-n",
            OPERATOR_NS,
            "get",
            "pod",
            &new_leader,
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ])
        .await?;
    assert!(
        live.trim().is_empty(),
        "the new leader {new_leader} is not terminating"
    );
    eprintln!(
        "the new leader was {}",
        if before.contains(&new_leader) {
            "the standby"
        } else {
            "the replacement pod"
        }
    );
    assert!(
        took < LEASE_DURATION,
        "handed over within the lease duration: {took:?}"
    );

    // The new leader does the work: a ChatCluster applied now becomes Running.
    cluster
        .kubectl(&["apply", "-f", "examples/minimal.yaml"])
        .await?;
    let chats: Api<ChatCluster> = Api::namespaced(cluster.client().await?, "default");
    eventually(
        "minimal runs under the new leader",
        Duration::from_secs(90),
        || async {
            let s = chats.get("minimal").await.ok()?.status?;
            (s.phase.as_deref() == Some("Running") && s.ready_nodes == 3).then_some(())
        },
    )
    .await?;
    // The Deployment replaced the deleted replica: two operator pods again, the old one gone.
    eventually(
        "the Deployment has two replicas again",
        Duration::from_secs(60),
        || async {
            let names = cluster.operator_pods().await.ok()?;
            (names.len() == 2 && !names.contains(&leader)).then_some(())
        },
    )
    .await?;
    Ok(())
}
