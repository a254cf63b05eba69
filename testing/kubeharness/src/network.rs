//! Pod networking without a container runtime: a Linux bridge per cluster and a network
//! namespace per pod.
//!
//! Each cluster claims a slot `N` and the subnet `10.(100+N).0.0/16`. The host end of the bridge,
//! `10.(100+N).0.1`, is where the API server listens: it is the one address both the host (tests,
//! kubectl, helm) and every pod can reach, as a real cluster's API endpoint is. Each pod gets a
//! namespace with its own `eth0` on the bridge and its own address, so two pods listen on the same
//! port as they would in a cluster, and pods reach each other directly over the bridge. Nothing is
//! routed off the machine: the subnet exists only on this bridge.
//!
//! A slot is claimed by an exclusive lock on a file under `/run/roomshard-kube/`; the kernel
//! releases it when its holder exits, so a slot whose owner died is cleaned (bridge and
//! namespaces) and reused by the next cluster, and a crashed test leaves nothing behind for long.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::fcntl::{Flock, FlockArg};

use crate::process::run;
use crate::{Error, Result};

const SLOTS: u8 = 50;
/// Slot N uses the subnet `10.(SUBNET_BASE+N).0.0/16`.
const SUBNET_BASE: u8 = 100;
const STATE_DIR: &str = "/run/roomshard-kube";

/// One cluster's bridge and the pod namespaces made on it.
#[derive(Debug)]
pub struct Network {
    slot: u8,
    _claim: Flock<std::fs::File>,
    next: AtomicU32,
}

/// One pod's network namespace and address.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    /// The namespace's name, for `ip netns exec`.
    pub netns: String,
    /// The pod's address on the bridge.
    pub ip: Ipv4Addr,
    host_veth: String,
}

impl Network {
    /// Claims a free slot and brings its bridge up.
    ///
    /// # Errors
    ///
    /// When no slot is free or the bridge cannot be made (the harness needs root).
    pub fn create() -> Result<Self> {
        std::fs::create_dir_all(STATE_DIR).map_err(Error::io(STATE_DIR))?;
        for slot in 0..SLOTS {
            let path = PathBuf::from(format!("{STATE_DIR}/slot-{slot}.lock"));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(Error::io(format!("open {}", path.display())))?;
            // The lock is the claim: the kernel drops it when its holder exits, however it
            // exits, so a slot whose lock we get has no living owner and may be cleaned.
            let Ok(claim) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            clean_slot(slot);
            let network = Network {
                slot,
                _claim: claim,
                next: AtomicU32::new(0),
            };
            let bridge = network.bridge();
            run("ip", &["link", "add", &bridge, "type", "bridge"])?;
            run(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{}/16", network.host_ip()),
                    "dev",
                    &bridge,
                ],
            )?;
            run("ip", &["link", "set", &bridge, "up"])?;
            return Ok(network);
        }
        Err(Error::Command(format!(
            "no free network slot among {SLOTS} (see {STATE_DIR})"
        )))
    }

    fn bridge(&self) -> String {
        format!("rsb{}", self.slot)
    }

    /// The host's address on the bridge: where the API server listens.
    #[must_use]
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, SUBNET_BASE + self.slot, 0, 1)
    }

    /// The pod subnet, in CIDR form.
    #[must_use]
    pub fn subnet(&self) -> String {
        format!("10.{}.0.0/16", SUBNET_BASE + self.slot)
    }

    /// A new namespace for a pod on Node number `node`, with its address and a default route
    /// through the host.
    ///
    /// # Errors
    ///
    /// When `ip` refuses a step; what was made is removed again.
    pub fn add_pod(&self, node: u8) -> Result<PodNetwork> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // 253 addresses per Node, reused round-robin: a pod's address is free again once it is
        // gone, and tests never run that many pods on one Node at once.
        let host_part = u8::try_from(n % 253 + 2).unwrap_or(2);
        let ip = Ipv4Addr::new(
            10,
            SUBNET_BASE + self.slot,
            node.saturating_add(1),
            host_part,
        );
        let pod = PodNetwork {
            netns: format!("rsb{}p{n}", self.slot),
            ip,
            host_veth: format!("rsb{}v{n}", self.slot),
        };
        if let Err(e) = self.plumb(&pod) {
            pod.remove();
            return Err(e);
        }
        Ok(pod)
    }

    fn plumb(&self, pod: &PodNetwork) -> Result<()> {
        let ns = pod.netns.as_str();
        run("ip", &["netns", "add", ns])?;
        run(
            "ip",
            &[
                "link",
                "add",
                &pod.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ],
        )?;
        run(
            "ip",
            &[
                "link",
                "set",
                &pod.host_veth,
                "master",
                &self.bridge(),
                "up",
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/16", pod.ip),
                "dev",
                "eth0",
            ],
        )?;
        run("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &self.host_ip().to_string(),
            ],
        )?;
        Ok(())
    }
}

impl PodNetwork {
    /// Removes the namespace (and with it both ends of its veth pair).
    pub fn remove(&self) {
        let _ = run("ip", &["netns", "del", &self.netns]);
        let _ = run("ip", &["link", "del", &self.host_veth]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Cleaned while the lock is still held; the lock goes with the file afterwards.
        clean_slot(self.slot);
    }
}

/// Removes a slot's bridge and every pod namespace it had.
fn clean_slot(slot: u8) {
    let prefix = format!("rsb{slot}p");
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.starts_with(&prefix) {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
    }
    let _ = run("ip", &["link", "del", &format!("rsb{slot}")]);
}
