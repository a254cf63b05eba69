//! A pod's status as the kubelet reports it: phase, addresses, conditions with their transition
//! times, and one status per container (state, last state, ready, restarts).

use serde_json::{Value, json};

use super::node::now_time;

/// One container's state.
#[derive(Debug, Clone)]
pub enum State {
    /// Not running yet (or between restarts), with why.
    Waiting {
        /// A CamelCase reason (`ContainerCreating`, `CrashLoopBackOff`, ...).
        reason: String,
        /// What happened.
        message: Option<String>,
    },
    /// Running since a time.
    Running {
        /// When it started.
        started_at: String,
    },
    /// Exited.
    Terminated {
        /// The exit code (128 + signal for a signal).
        exit_code: i32,
        /// `Completed` or `Error`.
        reason: String,
        /// When it started.
        started_at: String,
        /// When it exited.
        finished_at: String,
    },
}

impl State {
    fn json(&self) -> Value {
        match self {
            State::Waiting { reason, message } => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
            State::Terminated {
                exit_code,
                reason,
                started_at,
                finished_at,
            } => json!({"terminated": {"exitCode": exit_code, "reason": reason,
                "startedAt": started_at, "finishedAt": finished_at}}),
        }
    }
}

/// One container as the status shows it.
#[derive(Debug, Clone)]
pub struct ContainerView {
    /// The container's name.
    pub name: String,
    /// Its image.
    pub image: String,
    /// Its current state.
    pub state: State,
    /// The state it had before its last restart.
    pub last_state: Option<State>,
    /// Whether its readiness probe passes (or it runs and has none).
    pub ready: bool,
    /// How often it was restarted.
    pub restart_count: u32,
    /// The process id of the running process, shown as the container id.
    pub pid: Option<u32>,
}

impl ContainerView {
    /// A container not created yet.
    #[must_use]
    pub fn creating(name: String, image: String) -> Self {
        ContainerView {
            name,
            image,
            state: State::Waiting {
                reason: "ContainerCreating".to_owned(),
                message: None,
            },
            last_state: None,
            ready: false,
            restart_count: 0,
            pid: None,
        }
    }
}

/// The pod's status, kept between updates so transition times only move on a change.
#[derive(Debug)]
pub struct PodView {
    /// The pod's address.
    pub pod_ip: String,
    /// The Node's address.
    pub host_ip: String,
    /// Whether the pod is being deleted (its containers are stopping).
    pub terminating: bool,
    /// The containers.
    pub containers: Vec<ContainerView>,
    start_time: String,
    conditions: Vec<(String, bool, String)>,
}

impl PodView {
    /// A pod whose containers are all waiting to be created.
    #[must_use]
    pub fn new(pod_ip: String, host_ip: String, containers: &[(String, String)]) -> Self {
        PodView {
            pod_ip,
            host_ip,
            terminating: false,
            containers: containers
                .iter()
                .map(|(name, image)| ContainerView::creating(name.clone(), image.clone()))
                .collect(),
            start_time: now_time(),
            conditions: Vec::new(),
        }
    }

    /// The phase: `Pending` until every container started, `Running` while any runs or will
    /// restart, and `Succeeded` or `Failed` once all have exited for good.
    #[must_use]
    pub fn phase(&self, final_exit: bool) -> &'static str {
        let all_exited = self
            .containers
            .iter()
            .all(|c| matches!(c.state, State::Terminated { .. }));
        if final_exit && all_exited {
            let ok = self
                .containers
                .iter()
                .all(|c| matches!(c.state, State::Terminated { exit_code: 0, .. }));
            return if ok { "Succeeded" } else { "Failed" };
        }
        let started = self
            .containers
            .iter()
            .all(|c| !matches!(c.state, State::Waiting { .. }) || c.restart_count > 0);
        if started { "Running" } else { "Pending" }
    }

    fn condition(&mut self, kind: &str, status: bool) -> Value {
        let now = now_time();
        let entry = match self.conditions.iter_mut().find(|(k, _, _)| k == kind) {
            Some(entry) => {
                if entry.1 != status {
                    *entry = (kind.to_owned(), status, now);
                }
                entry.clone()
            }
            None => {
                self.conditions.push((kind.to_owned(), status, now));
                self.conditions.last().cloned().unwrap_or_default()
            }
        };
        let mut c = json!({"type": kind, "status": if entry.1 {"True"} else {"False"},
                           "lastTransitionTime": entry.2, "lastProbeTime": null});
        if (kind == "Ready" || kind == "ContainersReady") && !entry.1 {
            c["reason"] = json!("ContainersNotReady");
        }
        c
    }

    /// The `status` to patch onto the pod.
    pub fn status(&mut self, final_exit: bool) -> Value {
        let all_ready = !self.containers.is_empty() && self.containers.iter().all(|c| c.ready);
        let running = self
            .containers
            .iter()
            .any(|c| matches!(c.state, State::Running { .. }));
        let conditions = vec![
            self.condition("PodReadyToStartContainers", !final_exit),
            self.condition("Initialized", true),
            self.condition("ContainersReady", all_ready && running),
            self.condition("Ready", all_ready && running),
        ];
        let containers: Vec<Value> = self
            .containers
            .iter()
            .map(|c| {
                json!({
                    "name": c.name, "image": c.image, "imageID": format!("process://{}", c.image),
                    "containerID": c.pid.map(|p| format!("process://{p}")),
                    "ready": c.ready, "restartCount": c.restart_count,
                    "started": matches!(c.state, State::Running { .. }),
                    "state": c.state.json(),
                    "lastState": c.last_state.as_ref().map_or(json!({}), State::json),
                })
            })
            .collect();
        json!({
            "phase": self.phase(final_exit),
            "hostIP": self.host_ip, "hostIPs": [{"ip": self.host_ip}],
            "podIP": self.pod_ip, "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
            "conditions": conditions,
            "containerStatuses": containers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> PodView {
        PodView::new(
            "10.0.1.2".into(),
            "10.0.0.1".into(),
            &[("node".into(), "img".into())],
        )
    }

    #[test]
    fn a_pod_is_pending_until_its_container_runs_then_ready_once_its_probe_passes() {
        let mut v = view();
        assert_eq!(v.status(false)["phase"], "Pending");
        v.containers[0].state = State::Running {
            started_at: now_time(),
        };
        let s = v.status(false);
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["conditions"][3]["status"], "False");
        v.containers[0].ready = true;
        let s = v.status(false);
        assert_eq!(s["conditions"][3]["type"], "Ready");
        assert_eq!(s["conditions"][3]["status"], "True");
    }

    #[test]
    fn a_pod_whose_containers_all_exited_zero_for_good_succeeded() {
        let mut v = view();
        v.containers[0].state = State::Terminated {
            exit_code: 0,
            reason: "Completed".into(),
            started_at: now_time(),
            finished_at: now_time(),
        };
        assert_eq!(v.phase(true), "Succeeded");
        v.containers[0].state = State::Terminated {
            exit_code: 137,
            reason: "Error".into(),
            started_at: now_time(),
            finished_at: now_time(),
        };
        assert_eq!(v.phase(true), "Failed");
    }
}
