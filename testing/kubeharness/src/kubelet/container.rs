//! One container's life under the process kubelet: started as a process in the pod's network
//! and mount namespaces, probed, restarted as `restartPolicy` says (with the kubelet's back-off),
//! and stopped as the kubelet stops one: `preStop`, SIGTERM, the rest of the grace period, then
//! SIGKILL.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, Probe};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use super::NodeCtx;
use super::env::{PodFacts, environment};
use super::node::now_time;
use super::probe::{self, Timing};
use super::status::{ContainerView, State};

/// What a container tells its pod.
#[derive(Debug)]
pub enum Event {
    /// Its status changed.
    View(usize, Box<ContainerView>),
    /// It will not run again.
    Done,
}

/// Where a container's processes live: the pod's namespace, address and volume mounts.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The pod's network namespace.
    pub netns: String,
    /// The pod's address.
    pub facts: PodFacts,
    /// The pod's address as an IP.
    pub ip: std::net::Ipv4Addr,
    /// Volume name to host directory.
    pub volumes: Vec<(String, PathBuf)>,
    /// The pod's directory (logs).
    pub dir: PathBuf,
}

/// Runs container `index` of `pod` until the pod ends. `stop` carries the deadline by which it
/// must be gone once the pod is deleted.
pub async fn supervise(
    ctx: Arc<NodeCtx>,
    pod: Pod,
    index: usize,
    sandbox: Sandbox,
    events: mpsc::Sender<Event>,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    let Some(container) = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.get(index))
        .cloned()
    else {
        return;
    };
    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".to_owned());
    let mut view = ContainerView::creating(
        container.name.clone(),
        container.image.clone().unwrap_or_default(),
    );
    let mut backoff = Duration::ZERO;
    loop {
        if stop.borrow().is_some() {
            break;
        }
        let spawned = spawn(&ctx, &pod, &container, &sandbox).await;
        let mut child = match spawned {
            Ok(child) => child,
            Err((reason, message)) => {
                view.state = State::Waiting {
                    reason,
                    message: Some(message),
                };
                let _ = events
                    .send(Event::View(index, Box::new(view.clone())))
                    .await;
                // Missing config or image: try again, as the kubelet does, until deleted.
                tokio::select! {
                    _ = stop.changed() => break,
                    () = tokio::time::sleep(Duration::from_secs(2)) => continue,
                }
            }
        };
        let started_at = now_time();
        let ran_since = Instant::now();
        view.pid = child.id();
        view.state = State::Running {
            started_at: started_at.clone(),
        };
        view.ready = container.readiness_probe.is_none() && container.startup_probe.is_none();
        let _ = events
            .send(Event::View(index, Box::new(view.clone())))
            .await;

        let (status, deleted) = watch_running(
            &ctx, &pod, &container, &sandbox, &mut child, index, &mut view, &events, &mut stop,
        )
        .await;
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(9));
        view.ready = false;
        view.pid = None;
        view.state = State::Terminated {
            exit_code: code,
            reason: if code == 0 { "Completed" } else { "Error" }.to_owned(),
            started_at,
            finished_at: now_time(),
        };
        let restart = !deleted
            && match policy.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => true,
            };
        if !restart {
            break;
        }
        let _ = events
            .send(Event::View(index, Box::new(view.clone())))
            .await;
        // The kubelet's back-off: the first restart at once, then 10 s doubling to 5 min, reset
        // after 10 minutes of running.
        if ran_since.elapsed() > Duration::from_secs(600) {
            backoff = Duration::ZERO;
        }
        if !backoff.is_zero() {
            view.last_state = Some(view.state.clone());
            view.state = State::Waiting {
                reason: "CrashLoopBackOff".to_owned(),
                message: Some(format!("back-off {backoff:?} restarting failed container")),
            };
            let _ = events
                .send(Event::View(index, Box::new(view.clone())))
                .await;
            tokio::select! {
                _ = stop.changed() => break,
                () = tokio::time::sleep(backoff) => {}
            }
        }
        backoff = (backoff * 2).clamp(Duration::from_secs(10), Duration::from_secs(300));
        view.last_state = Some(view.state.clone());
        view.restart_count += 1;
    }
    let _ = events.send(Event::View(index, Box::new(view))).await;
    let _ = events.send(Event::Done).await;
}

/// Watches a running process: probes it, restarts it on a failed liveness probe, stops it when
/// the pod is deleted. Returns its exit status and whether the pod is being deleted.
#[allow(clippy::too_many_arguments)]
async fn watch_running(
    ctx: &NodeCtx,
    pod: &Pod,
    container: &Container,
    sandbox: &Sandbox,
    child: &mut Child,
    index: usize,
    view: &mut ContainerView,
    events: &mpsc::Sender<Event>,
    stop: &mut watch::Receiver<Option<Instant>>,
) -> (std::process::ExitStatus, bool) {
    let mut startup = container.startup_probe.as_ref().map(Prober::new);
    let mut readiness = container.readiness_probe.as_ref().map(Prober::new);
    let mut liveness = container.liveness_probe.as_ref().map(Prober::new);
    let mut started = startup.is_none();
    loop {
        let next = [&startup, &readiness, &liveness]
            .into_iter()
            .flatten()
            .map(|p| p.next)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            status = child.wait() => {
                let status = status.unwrap_or_else(|_| std::process::ExitStatus::from_raw(9));
                return (status, stop.borrow().is_some());
            }
            changed = stop.changed() => {
                let deadline = match changed {
                    Ok(()) => stop.borrow().unwrap_or_else(Instant::now),
                    Err(_) => Instant::now(),
                };
                let status = terminate(ctx, container, sandbox, child, deadline).await;
                return (status, true);
            }
            () = tokio::time::sleep_until(next.into()) => {}
        }
        let now = Instant::now();
        if let Some(p) = startup.as_mut().filter(|p| !started && p.next <= now) {
            match p.probe(container, sandbox).await {
                Some(true) => started = true,
                Some(false) => {
                    let status =
                        terminate(ctx, container, sandbox, child, grace_deadline(pod)).await;
                    return (status, false);
                }
                None => {}
            }
            if !started {
                continue;
            }
            if readiness.is_none() {
                view.ready = true;
                let _ = events
                    .send(Event::View(index, Box::new(view.clone())))
                    .await;
            }
        }
        if !started {
            continue;
        }
        if let Some(p) = readiness.as_mut().filter(|p| p.next <= now)
            && let Some(ready) = p.probe(container, sandbox).await
            && ready != view.ready
        {
            view.ready = ready;
            let _ = events
                .send(Event::View(index, Box::new(view.clone())))
                .await;
        }
        if let Some(p) = liveness.as_mut().filter(|p| p.next <= now)
            && p.probe(container, sandbox).await == Some(false)
        {
            tracing::info!(container = %container.name, "liveness probe failed, restarting");
            let status = terminate(ctx, container, sandbox, child, grace_deadline(pod)).await;
            return (status, false);
        }
    }
}

fn grace_deadline(pod: &Pod) -> Instant {
    let secs = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30);
    Instant::now() + Duration::from_secs(u64::try_from(secs).unwrap_or(30))
}

/// One probe's schedule and counters.
struct Prober {
    probe: Probe,
    timing: Timing,
    next: Instant,
    successes: u32,
    failures: u32,
}

impl Prober {
    fn new(probe: &Probe) -> Self {
        let timing = Timing::of(probe);
        Prober {
            probe: probe.clone(),
            timing,
            next: Instant::now() + timing.initial_delay,
            successes: 0,
            failures: 0,
        }
    }

    /// Runs the probe; `Some(result)` once a threshold is crossed.
    async fn probe(&mut self, container: &Container, sandbox: &Sandbox) -> Option<bool> {
        self.next = Instant::now() + self.timing.period;
        match probe::run(&self.probe, container, sandbox.ip, &sandbox.netns).await {
            Ok(()) => {
                self.failures = 0;
                self.successes += 1;
                (self.successes >= self.timing.success_threshold).then_some(true)
            }
            Err(why) => {
                tracing::debug!(container = %container.name, %why, "probe failed");
                self.successes = 0;
                self.failures += 1;
                (self.failures >= self.timing.failure_threshold).then_some(false)
            }
        }
    }
}

/// Stops a container as the kubelet does: the `preStop` hook, then SIGTERM, then SIGKILL at the
/// deadline (at least 2 s after SIGTERM, as the kubelet grants when `preStop` used the grace).
async fn terminate(
    _ctx: &NodeCtx,
    container: &Container,
    sandbox: &Sandbox,
    child: &mut Child,
    deadline: Instant,
) -> std::process::ExitStatus {
    if let Some(hook) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    {
        let until = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            () = pre_stop(hook, container, sandbox) => {}
            () = tokio::time::sleep(until) => {}
            status = child.wait() => {
                return status.unwrap_or_else(|_| std::process::ExitStatus::from_raw(9));
            }
        }
    }
    if let Some(pid) = child.id() {
        let _ = kill(
            Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
            Signal::SIGTERM,
        );
    }
    let deadline = deadline.max(Instant::now() + Duration::from_secs(2));
    match tokio::time::timeout_at(deadline.into(), child.wait()).await {
        Ok(status) => status.unwrap_or_else(|_| std::process::ExitStatus::from_raw(9)),
        Err(_) => {
            let _ = child.start_kill();
            child
                .wait()
                .await
                .unwrap_or_else(|_| std::process::ExitStatus::from_raw(9))
        }
    }
}

async fn pre_stop(hook: &LifecycleHandler, container: &Container, sandbox: &Sandbox) {
    if let Some(sleep) = &hook.sleep {
        tokio::time::sleep(Duration::from_secs(
            u64::try_from(sleep.seconds).unwrap_or(0),
        ))
        .await;
    } else if let Some(exec) = &hook.exec {
        let _ = Command::new("ip")
            .args(["netns", "exec", &sandbox.netns])
            .args(exec.command.iter().flatten())
            .kill_on_drop(true)
            .status()
            .await;
    } else if let Some(http) = &hook.http_get {
        let probe = Probe {
            http_get: Some(http.clone()),
            timeout_seconds: Some(30),
            ..Probe::default()
        };
        let _ = probe::run(&probe, container, sandbox.ip, &sandbox.netns).await;
    }
}

/// The image's program: the last path segment of the image name, without tag or digest.
#[must_use]
pub fn image_name(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

/// Starts the container's process, or says why it cannot (reason, message).
async fn spawn(
    ctx: &NodeCtx,
    pod: &Pod,
    container: &Container,
    sandbox: &Sandbox,
) -> Result<Child, (String, String)> {
    let image = container.image.clone().unwrap_or_default();
    let name = image_name(&image);
    let program = ctx.shared.images.get(name).ok_or_else(|| {
        (
            "ErrImageNeverPull".to_owned(),
            format!(
                "image {image:?} is not one this kubelet runs (it maps images to local programs)"
            ),
        )
    })?;
    let vars = environment(
        &ctx.client,
        pod,
        container,
        &sandbox.facts,
        (&ctx.shared.api.0, ctx.shared.api.1),
    )
    .await
    .map_err(|m| ("CreateContainerConfigError".to_owned(), m))?;
    let expand = |s: &String| super::env::expand(s, &vars);
    // `command` replaces the image's entrypoint: its first word must name the image's program.
    let mut argv: Vec<String> = Vec::new();
    if let Some([first, rest @ ..]) = container.command.as_deref() {
        let first = expand(first);
        if Path::new(&first).file_name().and_then(|f| f.to_str()) != Some(name) {
            return Err((
                "CreateContainerError".to_owned(),
                format!("command {first:?} is not the image's program {name:?}"),
            ));
        }
        argv.extend(rest.iter().map(expand));
    }
    argv.extend(container.args.iter().flatten().map(expand));

    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let Some((_, dir)) = sandbox.volumes.iter().find(|(n, _)| *n == m.name) else {
            return Err((
                "CreateContainerConfigError".to_owned(),
                format!("volume {:?} not found", m.name),
            ));
        };
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => dir.join(sub),
            None => dir.clone(),
        };
        ctx.shared
            .ensure_mountpoint(Path::new(&m.mount_path), source.is_file())
            .map_err(|e| ("CreateContainerError".to_owned(), e))?;
        mounts.push((source, m.mount_path.clone(), m.read_only.unwrap_or(false)));
    }
    // Parents before children, so a mount inside another volume lands on top of it.
    mounts.sort_by_key(|(_, target, _)| target.len());
    let mut script = String::from("set -e\n");
    for (source, target, read_only) in &mounts {
        script.push_str(&format!("mount --bind '{}' '{target}'\n", source.display()));
        if *read_only {
            script.push_str(&format!("mount -o remount,bind,ro '{target}'\n"));
        }
    }
    let security =
        |f: fn(&k8s_openapi::api::core::v1::SecurityContext) -> Option<i64>,
         p: fn(&k8s_openapi::api::core::v1::PodSecurityContext) -> Option<i64>| {
            container
                .security_context
                .as_ref()
                .and_then(f)
                .or_else(|| pod.spec.as_ref()?.security_context.as_ref().and_then(p))
        };
    let user = security(|s| s.run_as_user, |s| s.run_as_user);
    let group = security(|s| s.run_as_group, |s| s.run_as_group);
    let fs_group = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.fs_group);
    match user.filter(|u| *u != 0) {
        Some(uid) => {
            let gid = group.unwrap_or(uid);
            let groups = fs_group.map_or("--clear-groups".to_owned(), |g| format!("--groups={g}"));
            script.push_str(&format!(
                "exec setpriv --reuid={uid} --regid={gid} {groups} --no-new-privs -- \"$@\"\n"
            ));
        }
        None => script.push_str("exec \"$@\"\n"),
    }

    let logs = sandbox.dir.join("logs");
    std::fs::create_dir_all(&logs)
        .map_err(|e| ("CreateContainerError".to_owned(), e.to_string()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{}.log", container.name)))
        .map_err(|e| ("CreateContainerError".to_owned(), e.to_string()))?;
    let err = log
        .try_clone()
        .map_err(|e| ("CreateContainerError".to_owned(), e.to_string()))?;
    let env: BTreeMap<String, String> = vars;
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &sandbox.netns,
            "sh",
            "-c",
            &script,
            "container",
        ])
        .arg(program)
        .args(&argv)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(&env)
        .current_dir(
            container
                .working_dir
                .as_deref()
                .filter(|d| Path::new(d).is_dir())
                .unwrap_or("/"),
        )
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| ("StartError".to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_reference_names_its_program_without_registry_tag_or_digest() {
        assert_eq!(
            image_name("ghcr.io/x/roomshard-node:0.1.0"),
            "roomshard-node"
        );
        assert_eq!(image_name("roomshard-operator"), "roomshard-operator");
        assert_eq!(
            image_name("reg:5000/a/roomshard-node@sha256:abc"),
            "roomshard-node"
        );
    }
}
