//! A crash on the real control plane: the process of one node pod is killed with SIGKILL and the
//! kubelet starts it again in the same pod at once (`restartPolicy: Always`). The operator is
//! held stopped (SIGSTOP) meanwhile, so the new process starts under the table that still names
//! its predecessor owner of its shards, as it does whenever the kubelet is quicker than the
//! operator. Chat running through the client Service all along must lose no acknowledged
//! message: the new process must not serve the rooms its predecessor owned from nothing, nor
//! overwrite the followers' copies of them, before the operator moves them to the followers.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube_e2e::traffic::{Traffic, plain};
use kube_e2e::{Cluster, OPERATOR_NS, TestResult, eventually, settled, with_cluster};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_in_its_pod_before_the_operator_sees_it_loses_nothing()
-> TestResult {
    with_cluster(3, |c| Box::pin(crash(c))).await
}

/// A pod's process as the process kubelet reports it (container `process://PID`): its pid,
/// restart count and readiness.
async fn process_of(pods: &Api<Pod>, pod: &str) -> Option<(i32, i32, bool)> {
    let status = pods.get(pod).await.ok()?.status?;
    let container = status.container_statuses?.into_iter().next()?;
    let pid = container
        .container_id?
        .strip_prefix("process://")?
        .parse()
        .ok()?;
    Some((pid, container.restart_count, container.ready))
}

/// Sends `signal` to the process of every operator pod.
async fn signal_operators(cluster: &Cluster, signal: Signal) -> TestResult {
    let pods: Api<Pod> = Api::namespaced(cluster.client().await?, OPERATOR_NS);
    for pod in cluster.operator_pods().await? {
        let (pid, _, _) = process_of(&pods, &pod)
            .await
            .ok_or(format!("operator pod {pod} runs no process"))?;
        kill(Pid::from_raw(pid), signal)?;
    }
    Ok(())
}

async fn crash(cluster: &Cluster) -> TestResult {
    let stop = CancellationToken::new();
    // The watches and the proxy end however the scenario does.
    let _stop = stop.clone().drop_guard();
    let (chats, _history, proxy) = cluster.run_minimal(&stop).await?;
    // About 80 messages per room: the whole history stays checkable.
    let traffic = Traffic::start(
        plain(proxy.addr),
        "crash",
        16,
        Duration::from_millis(500),
        Duration::from_secs(40),
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client().await?, "default");
    let (pid, restarts, _) = eventually("minimal-1 runs", Duration::from_secs(30), || async {
        process_of(&pods, "minimal-1").await.filter(|p| p.2)
    })
    .await?;
    signal_operators(cluster, Signal::SIGSTOP).await?;
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    eprintln!("crash: operator stopped, killed minimal-1's process {pid}");
    let outcome = async {
        let new_pid = eventually(
            "the kubelet starts minimal-1 again in its pod",
            Duration::from_secs(30),
            || async {
                process_of(&pods, "minimal-1")
                    .await
                    .filter(|p| p.0 != pid && p.1 > restarts)
            },
        )
        .await?
        .0;
        eprintln!("crash: minimal-1 runs again as {new_pid}, the operator still stopped");
        // The window a quick kubelet leaves: the old table is all the new process knows.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (_, _, ready) = process_of(&pods, "minimal-1")
            .await
            .ok_or("minimal-1 has no process")?;
        assert!(
            !ready,
            "the new process is not ready while the table gives it its predecessor's shards"
        );
        TestResult::Ok(())
    }
    .await;
    signal_operators(cluster, Signal::SIGCONT).await?;
    outcome?;
    eventually(
        "the cluster settled with minimal-1's new process",
        Duration::from_secs(120),
        || async {
            let (_, _, ready) = process_of(&pods, "minimal-1").await?;
            (ready && settled(&chats, "minimal", 3).await.is_some()).then_some(())
        },
    )
    .await?;
    traffic.verify_flowed("crash", 16 * 50).await?;
    Ok(())
}
