//! The commands that talk to a running cluster's admin port (`scale`, `restart`, `status`):
//! the `roomshard-operator` binary's, not the library's.

use std::time::Duration;

use operator::local::{RestartAnswer, ScaleRequest};
use operator::{ClusterView, Error, http};

use crate::ADMIN_TIMEOUT;

pub async fn scale(admin: &str, replicas: u32) -> Result<(), Error> {
    let (authority, base) = http::split_url(admin)?;
    let body = serde_json::to_string(&ScaleRequest { replicas })
        .map_err(|e| Error::Http(e.to_string()))?;
    let response =
        http::post_json(&authority, &format!("{base}/scale"), &body, ADMIN_TIMEOUT).await?;
    if !response.is_success() {
        return Err(Error::Http(format!(
            "{admin}/scale answered {}: {}",
            response.status, response.body
        )));
    }
    println!(
        "desired replicas set to {replicas}; follow it with: roomshard-operator status --admin {admin}"
    );
    Ok(())
}

/// How often `restart` looks at the cluster while it waits.
const RESTART_POLL: Duration = Duration::from_millis(500);

pub async fn restart(admin: &str, timeout: Duration) -> Result<(), Error> {
    let (authority, base) = http::split_url(admin)?;
    let before = cluster_view(admin).await?.rollout.completed;
    let response =
        http::post_json(&authority, &format!("{base}/restart"), "{}", ADMIN_TIMEOUT).await?;
    if !response.is_success() {
        return Err(Error::Http(format!(
            "{admin}/restart answered {}: {}",
            response.status, response.body
        )));
    }
    let answer: RestartAnswer = serde_json::from_str(&response.body)
        .map_err(|e| Error::Http(format!("cannot read {admin}/restart: {e}")))?;
    println!("rolling restart of {} nodes started", answer.nodes);
    let started = std::time::Instant::now();
    let mut last = None;
    loop {
        let view = cluster_view(admin).await?;
        if view.rollout.completed > before {
            println!(
                "rolling restart done in {:.1}s: {} nodes, table epoch {}",
                started.elapsed().as_secs_f64(),
                answer.nodes,
                view.epoch
            );
            return Ok(());
        }
        let now = (view.rollout.updated, view.rollout.current.clone());
        if last.as_ref() != Some(&now) {
            println!(
                "  {}/{} updated, now {}",
                now.0,
                answer.nodes,
                now.1.as_deref().unwrap_or("-")
            );
            last = Some(now);
        }
        if started.elapsed() > timeout {
            return Err(Error::Timeout(format!(
                "rolling restart not done after {timeout:?}; it goes on: roomshard-operator status --admin {admin}"
            )));
        }
        tokio::time::sleep(RESTART_POLL).await;
    }
}

async fn cluster_view(admin: &str) -> Result<ClusterView, Error> {
    read_view(admin, &cluster_json(admin).await?)
}

/// The cluster's view as the admin port serves it (`GET /cluster`), as JSON text.
async fn cluster_json(admin: &str) -> Result<String, Error> {
    let (authority, base) = http::split_url(admin)?;
    let response = http::get(&authority, &format!("{base}/cluster"), ADMIN_TIMEOUT).await?;
    if !response.is_success() {
        return Err(Error::Http(format!(
            "{admin}/cluster answered {}",
            response.status
        )));
    }
    Ok(response.body)
}

fn read_view(admin: &str, body: &str) -> Result<ClusterView, Error> {
    serde_json::from_str(body).map_err(|e| Error::Http(format!("cannot read {admin}/cluster: {e}")))
}

pub async fn status(admin: &str, json: bool) -> Result<(), Error> {
    let body = cluster_json(admin).await?;
    if json {
        println!("{body}");
        return Ok(());
    }
    print!("{}", read_view(admin, &body)?.summary());
    Ok(())
}
