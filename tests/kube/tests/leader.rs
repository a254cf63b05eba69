//! The operator's leader election on the real control plane: the chart's two replicas share one
//! Lease; deleting the leader's pod (graceful, as `kubectl delete pod` does) hands leadership to
//! the other replica within the lease duration, and the new leader reconciles.

use std::time::{Duration, Instant};

use kube::Api;
use kube_e2e::{Cluster, OPERATOR_NS, TestResult, eventually, start_cluster};
use operator::k8s::crd::ChatCluster;

/// The operator's lease duration (operator/src/k8s/lease.rs).
const LEASE_DURATION: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_leader_pod_hands_the_lease_to_the_standby_which_then_reconciles() -> TestResult
{
    let cluster = start_cluster(2).await?;
    let outcome = failover(&cluster).await;
    if outcome.is_err() {
        cluster.dump().await;
    }
    cluster.stop().await;
    outcome
}

async fn holder(cluster: &Cluster) -> Option<String> {
    let out = cluster
        .kubectl(&[
            "-n",
            OPERATOR_NS,
            "get",
            "lease",
            "roomshard-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .await
        .ok()?;
    (!out.trim().is_empty()).then(|| out.trim().to_owned())
}

async fn failover(cluster: &Cluster) -> TestResult {
    cluster.install_operator(&[]).await?;
    let leader = eventually("a leader", Duration::from_secs(30), || holder(cluster)).await?;
    let pods = cluster
        .kubectl(&[
            "-n",
            OPERATOR_NS,
            "get",
            "pods",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .await?;
    let standby = pods
        .split_whitespace()
        .find(|p| *p != leader)
        .ok_or("no standby replica")?
        .to_owned();

    let deleted_at = Instant::now();
    cluster
        .kubectl(&["-n", OPERATOR_NS, "delete", "pod", &leader, "--wait=false"])
        .await?;
    let new_leader = eventually(
        "the standby takes the Lease",
        LEASE_DURATION * 2,
        || async { holder(cluster).await.filter(|h| *h != leader) },
    )
    .await?;
    let took = deleted_at.elapsed();
    eprintln!("leadership moved from {leader} to {new_leader} in {took:?}");
    assert_eq!(new_leader, standby, "the standby replica leads");
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
            let out = cluster
                .kubectl(&[
                    "-n",
                    OPERATOR_NS,
                    "get",
                    "pods",
                    "-o",
                    "jsonpath={.items[*].metadata.name}",
                ])
                .await
                .ok()?;
            let names: Vec<&str> = out.split_whitespace().collect();
            (names.len() == 2 && !names.contains(&leader.as_str())).then_some(())
        },
    )
    .await?;
    Ok(())
}
