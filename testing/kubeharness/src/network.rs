//! Pod networking without a container runtime: a Linux bridge per cluster and a network
//! namespace per pod.
//!
//! Each cluster claims a slot `N` and the subnet `10.(200+N).0.0/16`. The host end of the bridge,
//! `10.(200+N).0.1`, is where the API server listens: it is the one address both the host (tests,
//! kubectl, helm) and every pod can reach, as a real cluster's API endpoint is. Each pod gets a
//! namespace with its own `eth0` on the bridge and its own address, so two pods listen on the same
//! port as they would in a cluster, and pods reach each other directly over the bridge. Nothing is
//! routed off the machine: the subnet exists only on this bridge.
//!
//! A slot is claimed by a pid file under `/run/roomshard-kube/`; a slot whose owner died is
//! cleaned (bridge and namespaces) and reused, so a crashed test leaves nothing behind for long.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::process::{alive, run};
use crate::{Error, Result};

const SLOTS: u8 = 50;
const STATE_DIR: &str = "/run/roomshard-kube";

/// One cluster's bridge and the pod namespaces made on it.
#[derive(Debug)]
pub struct Network {
    slot: u8,
    claim: PathBuf,
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
            let claim = PathBuf::from(format!("{STATE_DIR}/slot-{slot}.pid"));
            if let Ok(owner) = std::fs::read_to_string(&claim) {
                match owner.trim().parse::<u32>() {
                    Ok(pid) if !alive(pid) => {
                        // Its owner died without cleaning up: clean the slot and free it.
                        clean_slot(slot);
                        let _ = std::fs::remove_file(&claim);
                    }
                    // Alive, or being claimed this instant (created, pid not yet written).
                    _ => continue,
                }
            }
            let mine = std::process::id().to_string();
            // create_new: two harnesses racing for the same slot cannot both win it. The loser
            // moves on and leaves the winner's claim alone: removing it would let a third
            // harness take the slot and delete the bridge under the winner's running cluster.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&claim);
            let Ok(mut file) = file else {
                continue;
            };
            std::io::Write::write_all(&mut file, mine.as_bytes())
                .map_err(Error::io("write slot claim"))?;
            let network = Network {
                slot,
                claim,
                next: AtomicU32::new(0),
            };
            let bridge = network.bridge();
            let _ = run("ip", &["link", "del", &bridge]);
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
        format!("rsk{}", self.slot)
    }

    /// The host's address on the bridge: where the API server listens.
    #[must_use]
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 200 + self.slot, 0, 1)
    }

    /// The pod subnet, in CIDR form.
    #[must_use]
    pub fn subnet(&self) -> String {
        format!("10.{}.0.0/16", 200 + self.slot)
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
        let ip = Ipv4Addr::new(10, 200 + self.slot, node.saturating_add(1), host_part);
        let pod = PodNetwork {
            netns: format!("rsk{}p{n}", self.slot),
            ip,
            host_veth: format!("rsk{}v{n}", self.slot),
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
        clean_slot(self.slot);
        let _ = std::fs::remove_file(&self.claim);
    }
}

/// Removes a slot's bridge and every pod namespace it had.
fn clean_slot(slot: u8) {
    let prefix = format!("rsk{slot}p");
    if let Ok(list) = run("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if name.starts_with(&prefix) {
                let _ = run("ip", &["netns", "del", name]);
            }
        }
    }
    let _ = run("ip", &["link", "del", &format!("rsk{slot}")]);
    let _ = std::fs::remove_file(format!("{STATE_DIR}/slot-{slot}.pid"));
}
