//! How to run a local cluster: [`LocalOptions`], their validation, and where the node binary
//! is found.

use std::path::PathBuf;
use std::time::Duration;

use crate::Error;

/// The most replicas the local driver runs; loopback ports and one machine's cores run out well
/// before the node-id space does.
pub const MAX_REPLICAS: u32 = 64;

/// How to run the local cluster. `Default` is what `roomshard-operator local` uses.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Replicas to start with.
    pub nodes: u32,
    /// The cluster's shard count (fixed for its life).
    pub shards: u32,
    /// Admin and table HTTP port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// The `roomshard-node` binary; `None` looks next to the current executable, then on `PATH`.
    pub node_bin: Option<PathBuf>,
    /// Passed to nodes as `--handoff-timeout`; three times it is the default drain timeout.
    pub handoff_timeout: Duration,
    /// Passed to nodes as `--exit-drain-timeout`: how long a stopping node waits for its
    /// shards to be handed off before it lets its clients go anyway.
    pub exit_drain_timeout: Duration,
    /// Passed to nodes as `--shutdown-grace`. The driver SIGKILLs a stopping node only after
    /// the exit drain timeout, this grace and 5 s more (its `terminationGracePeriodSeconds`).
    pub shutdown_grace: Duration,
    /// How long a scale-down may take before it is reported stuck; `None` = 3 x hand-off timeout.
    pub drain_timeout: Option<Duration>,
    /// Cap on the moves one node takes part in per table (see [`shard::PlanOptions`]).
    pub max_moves_per_node: usize,
    /// Copies of every shard's rooms (`--replication`): 2 gives each shard a follower on
    /// another node, so a killed node loses no acknowledged message; 1 owners only.
    pub replication: u8,
    /// Load-aware placement by the per-shard load nodes report (see [`shard::balance`]).
    pub balance: shard::LoadPolicy,
    /// Extra arguments appended to every node's command line.
    pub node_args: Vec<String>,
    /// Write each node's stderr to `{log_dir}/{name}.log` instead of the driver's stderr.
    pub log_dir: Option<PathBuf>,
    /// Reconcile and probe period.
    pub interval: Duration,
    /// Autoscale between the policy's bounds from the nodes' loads (`--autoscale MIN:MAX`);
    /// `None` keeps the count where `nodes` and `scale` put it.
    pub autoscale: Option<crate::autoscale::Policy>,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            nodes: 3,
            shards: 256,
            port: 7700,
            node_bin: None,
            handoff_timeout: Duration::from_secs(10),
            exit_drain_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            drain_timeout: None,
            max_moves_per_node: 64,
            replication: 2,
            balance: shard::LoadPolicy::default(),
            node_args: Vec::new(),
            log_dir: None,
            interval: Duration::from_millis(250),
            autoscale: None,
        }
    }
}

impl LocalOptions {
    /// How long a stopped node may take before it is killed: the exit drain, the shutdown
    /// grace, and 5 s for the process to end.
    pub fn kill_after(&self) -> Duration {
        self.exit_drain_timeout + self.shutdown_grace + Duration::from_secs(5)
    }
}

/// Refuses options the driver cannot run with.
pub(super) fn validate(options: &LocalOptions) -> Result<(), Error> {
    if !(1..=MAX_REPLICAS).contains(&options.nodes) {
        return Err(Error::Config(format!(
            "--nodes must be between 1 and {MAX_REPLICAS}"
        )));
    }
    if !(1..=shard::format::MAX_SHARDS).contains(&options.shards) {
        return Err(Error::Config(format!(
            "--shards must be between 1 and {}",
            shard::format::MAX_SHARDS
        )));
    }
    if options.interval.is_zero() {
        return Err(Error::Config(
            "the reconcile interval must not be zero".into(),
        ));
    }
    if let Some(policy) = &options.autoscale {
        policy
            .validate()
            .map_err(|e| Error::Config(format!("--autoscale: {e}")))?;
        if policy.max > MAX_REPLICAS {
            return Err(Error::Config(format!(
                "--autoscale: the maximum must not exceed {MAX_REPLICAS}"
            )));
        }
    }
    if !(1..=2).contains(&options.replication) {
        return Err(Error::Config("--replication must be 1 or 2".into()));
    }
    if options.max_moves_per_node == 0 {
        return Err(Error::Config(
            "--max-moves-per-node must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Reads `--autoscale MIN:MAX`.
///
/// # Errors
///
/// A message when it is not two numbers separated by a colon.
pub fn parse_bounds(text: &str) -> Result<(u32, u32), String> {
    let (min, max) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not MIN:MAX"))?;
    let number = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|e| format!("{s:?} in {text:?}: {e}"))
    };
    Ok((number(min)?, number(max)?))
}

/// `roomshard-node` next to the current executable (how `cargo build` lays binaries out), then
/// on `PATH`.
pub(super) fn default_node_bin() -> Result<PathBuf, Error> {
    const NAME: &str = "roomshard-node";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(NAME)))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(NAME))
                .find(|p| p.is_file())
        })
    };
    beside.or_else(on_path).ok_or_else(|| {
        Error::NodeBinary(format!(
            "no {NAME} next to this executable or on PATH (build it with `cargo build -p node`, or pass --node-bin)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_out_of_range_are_refused() {
        let bad = [
            LocalOptions {
                nodes: 0,
                ..LocalOptions::default()
            },
            LocalOptions {
                nodes: MAX_REPLICAS + 1,
                ..LocalOptions::default()
            },
            LocalOptions {
                shards: 0,
                ..LocalOptions::default()
            },
            LocalOptions {
                max_moves_per_node: 0,
                ..LocalOptions::default()
            },
        ];
        for options in bad {
            assert!(validate(&options).is_err(), "{options:?}");
        }
        assert!(validate(&LocalOptions::default()).is_ok());
    }

    #[test]
    fn autoscale_bounds_read_as_min_colon_max_and_bad_policies_are_refused() {
        assert_eq!(parse_bounds("1:5"), Ok((1, 5)));
        assert!(parse_bounds("5").is_err());
        assert!(parse_bounds("a:5").is_err());
        let policy = |min, max, connections| {
            Some(crate::autoscale::Policy::new(
                min,
                max,
                crate::autoscale::Targets {
                    connections_per_pod: connections,
                    deliveries_per_sec_per_pod: None,
                },
            ))
        };
        for autoscale in [
            policy(0, 3, Some(10)),
            policy(3, 2, Some(10)),
            policy(1, 3, None),
            policy(1, MAX_REPLICAS + 1, Some(10)),
        ] {
            let options = LocalOptions {
                autoscale,
                ..LocalOptions::default()
            };
            assert!(validate(&options).is_err(), "{:?}", options.autoscale);
        }
        let ok = LocalOptions {
            autoscale: policy(1, 3, Some(10)),
            ..LocalOptions::default()
        };
        assert!(validate(&ok).is_ok());
    }

    #[test]
    fn a_stopping_node_is_killed_only_after_its_exit_drain_and_grace() {
        let options = LocalOptions::default();
        assert_eq!(options.kill_after(), Duration::from_secs(30 + 10 + 5));
    }
}
