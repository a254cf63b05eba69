//! Command-line flags of `roomshard-node`; every one can also come from an environment
//! variable, which is how a pod passes them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use shard::NodeName;

use crate::rooms::RoomSettings;
use crate::snowflake::MAX_NODE_ID;
use crate::state::{ConnectionLimits, HandoffSettings, NodeSettings};

/// Longest window over which a shutting-down node tells its clients `reconnect`.
pub const MAX_RECONNECT_SPREAD: Duration = Duration::from_secs(2);

/// A roomshard chat node.
#[derive(Debug, Clone, Parser)]
#[command(name = "roomshard-node", version, about)]
pub struct NodeConfig {
    /// Address to serve clients (`/ws`, the chat page) and probes on.
    #[arg(long, env = "ROOMSHARD_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Address for peer links (`/peer`) and the controller (`/status`); only in a cluster.
    #[arg(long, env = "ROOMSHARD_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// URL of the assignment table (long-polled); without it (and without a Kubernetes
    /// source) the node runs alone and owns every shard.
    #[arg(long, env = "ROOMSHARD_TABLE_URL", conflicts_with = "table_configmap")]
    pub table_url: Option<String>,
    /// Name of the ConfigMap that holds the assignment table (in Kubernetes; the node watches
    /// it with the pod's service account, or `KUBECONFIG` outside a pod).
    #[arg(long, env = "ROOMSHARD_TABLE_CONFIGMAP")]
    pub table_configmap: Option<String>,
    /// Namespace of `--table-configmap`; in a pod, from the downward API.
    #[arg(long, env = "ROOMSHARD_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// File holding the cluster secret that authenticates peer links.
    #[arg(long, env = "ROOMSHARD_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// How long a new owner waits for a shard's snapshot before answering `room_unavailable`.
    #[arg(long, env = "ROOMSHARD_HANDOFF_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handoff_timeout: Duration,
    /// Commands buffered per shard while it is handed over.
    #[arg(long, env = "ROOMSHARD_HANDOFF_BUFFER", default_value_t = 10_000)]
    pub handoff_buffer: usize,
    /// Messages per peer that may wait for acknowledgement (a link down for long fills it).
    #[arg(long, env = "ROOMSHARD_PEER_OUTBOX", default_value_t = 200_000)]
    pub peer_outbox: usize,
    /// This node's name; in Kubernetes the pod name, from the downward API.
    #[arg(long, env = "ROOMSHARD_NODE_NAME", default_value = "node-0")]
    pub name: String,
    /// Node id in message ids (0..=1023); defaults to the ordinal at the end of the name.
    #[arg(long, env = "ROOMSHARD_NODE_ID")]
    pub node_id: Option<u16>,
    /// Number of shards rooms are spread over (the cluster's `spec.shards`).
    #[arg(long, env = "ROOMSHARD_SHARDS", default_value_t = 256)]
    pub shards: u32,
    /// Messages of history kept per room.
    #[arg(long, env = "ROOMSHARD_HISTORY_PER_ROOM", default_value_t = 100)]
    pub history_per_room: usize,
    /// Largest message text, in bytes.
    #[arg(long, env = "ROOMSHARD_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024)]
    pub max_message_bytes: usize,
    /// Rooms one connection may be in at once.
    #[arg(
        long,
        env = "ROOMSHARD_MAX_ROOMS_PER_CONNECTION",
        default_value_t = 100
    )]
    pub max_rooms_per_connection: usize,
    /// Frames per second a connection may send on average.
    #[arg(long, env = "ROOMSHARD_RATE_PER_SEC", default_value_t = 50)]
    pub rate_per_sec: u32,
    /// Frames a connection may send in a burst.
    #[arg(long, env = "ROOMSHARD_RATE_BURST", default_value_t = 100)]
    pub rate_burst: u32,
    /// Frames queued per connection before it counts as a slow consumer and is closed.
    #[arg(long, env = "ROOMSHARD_OUTGOING_QUEUE", default_value_t = 1024)]
    pub outgoing_queue: usize,
    /// Commands queued per room before senders wait (and then get `overloaded`).
    #[arg(long, env = "ROOMSHARD_ROOM_QUEUE", default_value_t = 4096)]
    pub room_queue: usize,
    /// Passivated rooms whose last seq a node remembers exactly; past it the oldest are
    /// forgotten and their shard's rooms restart above the highest seq forgotten (a gap, never
    /// a repeat). Bounds what clients inventing room names can cost (see `docs/limits.md`).
    #[arg(long, env = "ROOMSHARD_REMEMBERED_ROOMS", default_value_t = 20_000)]
    pub remembered_rooms: usize,
    /// How long an empty room stays in memory after its last activity (e.g. `5m`, `30s`).
    #[arg(long, env = "ROOMSHARD_PASSIVATE_AFTER", default_value = "5m", value_parser = humantime::parse_duration)]
    pub passivate_after: Duration,
    /// On SIGTERM, how long the node waits for the operator to move its shards away and for its
    /// hand-offs to finish before it tells clients to reconnect anyway.
    #[arg(long, env = "ROOMSHARD_EXIT_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub exit_drain_timeout: Duration,
    /// How long shutdown waits for connections to close after telling them to reconnect.
    #[arg(long, env = "ROOMSHARD_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// A file in storage that outlives the process but not its pod (the operator points it into
    /// the pod's `emptyDir`). Found at start, it means the kubelet restarted this process in
    /// its pod, and the shards the table still gives this node were the old process's: they are
    /// left to their followers (see `docs/replication.md`). Unset: never treated so.
    #[arg(long, env = "ROOMSHARD_RESTART_MARKER")]
    pub restart_marker: Option<PathBuf>,
    /// File holding the HS256 key that signs client tokens; when set, `?token=` is required.
    #[arg(long, env = "ROOMSHARD_AUTH_KEY_FILE")]
    pub auth_key_file: Option<PathBuf>,
    /// Runtime worker threads (default: one per core).
    #[arg(long, env = "ROOMSHARD_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long, env = "ROOMSHARD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The node name is not a valid pod name.
    #[error("invalid node name: {0}")]
    Name(#[from] shard::ShardError),
    /// A numeric setting is out of range.
    #[error("{0}")]
    Range(String),
    /// The auth key file could not be read.
    #[error("cannot read auth key file {path}: {source}")]
    AuthKey {
        /// The file named by `--auth-key-file`.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
}

impl NodeConfig {
    /// Validate the flags into node settings; `peer_addr` is the bound address.
    ///
    /// # Errors
    /// [`ConfigError`] for an invalid name or an out-of-range setting.
    pub fn settings(&self, peer_addr: SocketAddr) -> Result<NodeSettings, ConfigError> {
        let name = NodeName::new(self.name.clone())?;
        let node_id = match self.node_id {
            Some(id) => id,
            None => {
                shard::ordinal_of(&name).map_or(0, |o| (o % (u32::from(MAX_NODE_ID) + 1)) as u16)
            }
        };
        if node_id > MAX_NODE_ID {
            return Err(ConfigError::Range(format!(
                "--node-id must be at most {MAX_NODE_ID}"
            )));
        }
        if self.shards == 0 {
            return Err(ConfigError::Range("--shards must be at least 1".into()));
        }
        if self.max_message_bytes == 0 || self.history_per_room == 0 {
            return Err(ConfigError::Range(
                "--max-message-bytes and --history-per-room must be at least 1".into(),
            ));
        }
        // A frame carries the text plus JSON framing and escaping (up to 6 bytes per byte
        // for control characters); frames past this are closed with 1009.
        let max_frame_bytes = self
            .max_message_bytes
            .saturating_mul(6)
            .saturating_add(4096);
        Ok(NodeSettings {
            name,
            node_id,
            shards: self.shards,
            peer_addr: peer_addr.to_string(),
            rooms: RoomSettings {
                history_limit: self.history_per_room,
                queue: self.room_queue.max(1),
                passivate_after: self.passivate_after,
                send_timeout: Duration::from_secs(2),
                remembered: self.remembered_rooms,
            },
            limits: ConnectionLimits {
                max_text_bytes: self.max_message_bytes,
                max_frame_bytes,
                max_rooms: self.max_rooms_per_connection,
                rate_per_sec: self.rate_per_sec,
                rate_burst: self.rate_burst.max(1),
                outgoing_queue: self.outgoing_queue.max(1),
                close_timeout: Duration::from_secs(5),
                // A quarter of the shutdown grace: told, served a moment longer, closed and
                // flushed, all within the grace.
                reconnect_spread: (self.shutdown_grace / 4).min(MAX_RECONNECT_SPREAD),
            },
            handoff: HandoffSettings {
                timeout: self.handoff_timeout,
                buffer: self.handoff_buffer.max(1),
                exit_drain: self.exit_drain_timeout,
            },
        })
    }

    /// The cluster secret for peer links.
    ///
    /// # Errors
    /// [`ConfigError`] when the file is missing, unreadable or empty.
    pub fn cluster_secret(&self) -> Result<Vec<u8>, ConfigError> {
        let path = self.cluster_secret_file.as_ref().ok_or_else(|| {
            ConfigError::Range("a cluster needs --cluster-secret-file for its peer links".into())
        })?;
        read_key(path)
    }

    /// The token signing key, if authentication is on.
    ///
    /// # Errors
    /// [`ConfigError::AuthKey`] when the file cannot be read.
    pub fn auth_key(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        self.auth_key_file.as_deref().map(read_key).transpose()
    }
}

/// Read a key file; keys mounted from Secrets often end with a newline that is not the key's.
fn read_key(path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    let key = std::fs::read(path).map_err(|source| ConfigError::AuthKey {
        path: path.to_path_buf(),
        source,
    })?;
    let trimmed = key.trim_ascii_end().to_vec();
    if trimmed.is_empty() {
        return Err(ConfigError::Range(format!(
            "key file {} is empty",
            path.display()
        )));
    }
    Ok(trimmed)
}
