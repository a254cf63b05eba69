//! The node's error type: what can go wrong starting a node, fetching its assignment table,
//! authenticating a client and setting up a peer link. One enum for the crate, so callers match
//! on what happened rather than on message text; the messages are lowercase and name what
//! failed, for logs and close frames.

use std::net::SocketAddr;

use shard::NodeName;

use crate::config::ConfigError;
use crate::peer::wire::{PEER_WIRE_VERSION, WireError};

/// A node error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Start-up: the flags do not make a runnable node.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Start-up: a listener could not bind.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Listen {
        /// Clients or peers.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// Why the bind failed.
        source: std::io::Error,
    },
    /// Start-up: `--table-configmap` needs the Kubernetes API.
    #[cfg(feature = "kubernetes")]
    #[error("cannot reach the Kubernetes API for --table-configmap: {0}")]
    Kube(#[source] kube::Error),
    /// A listener failed while serving.
    #[error("serving failed: {0}")]
    Serve(#[from] std::io::Error),

    /// The table source's URL is not a URI.
    #[error("invalid table source url: {0}")]
    TableUrl(#[from] hyper::http::uri::InvalidUri),
    /// The table source could not be reached.
    #[error("table source unreachable: {0}")]
    TableRequest(#[source] hyper_util::client::legacy::Error),
    /// The table source did not answer in time.
    #[error("table source did not answer in time")]
    TableTimeout,
    /// The table source answered with an error status.
    #[error("table source answered with status {0}")]
    TableStatus(hyper::StatusCode),
    /// The table source's answer broke off.
    #[error("table source answer broke off: {0}")]
    TableBody(#[source] hyper::Error),
    /// The table source's answer is not UTF-8.
    #[error("table source answer is not UTF-8: {0}")]
    TableNotUtf8(#[from] std::str::Utf8Error),
    /// The table source has no table (yet), or its watch ended.
    #[error("no assignment table: {0}")]
    NoTable(&'static str),
    /// What the table source gave is not a valid table.
    #[error("invalid table from source: {0}")]
    InvalidTable(#[from] shard::ShardError),

    /// A client gave no usable identity (the reason goes in its 1008 close frame).
    #[error("authentication required: pass ?token=")]
    TokenRequired,
    /// A client's token is not valid.
    #[error("invalid token: {0}")]
    InvalidToken(#[source] jsonwebtoken::errors::Error),
    /// A client gave no user name.
    #[error("missing identity: pass ?user=")]
    UserRequired,
    /// A client's user name is empty or too long.
    #[error("user name must be 1 to {max} bytes", max = crate::auth::MAX_USER_BYTES)]
    UserLength,
    /// A client's user name has control characters (names are echoed to every member).
    #[error("user name must not contain control characters")]
    UserControl,

    /// A peer could not be dialed.
    #[error("cannot connect to peer at {addr}: {source}")]
    PeerConnect {
        /// The peer address dialed.
        addr: String,
        /// Why.
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// A peer could not be reached over another transport than TCP (the simulation's
    /// network refused the connection).
    #[error("cannot reach peer at {addr}: {why}")]
    PeerUnreachable {
        /// The peer address dialed.
        addr: String,
        /// Why.
        why: String,
    },
    /// A handshake step took too long (the peer stalls or the network does).
    #[error("peer handshake timed out")]
    HandshakeTimeout,
    /// The other side closed the connection during the handshake.
    #[error("peer closed the connection during the handshake")]
    HandshakeClosed,
    /// The other side sent a frame out of the handshake's order.
    #[error("peer handshake expected a {expected} frame")]
    HandshakeUnexpected {
        /// The frame the handshake waited for.
        expected: &'static str,
    },
    /// The other side speaks another version of the peer wire format: the cluster runs mixed
    /// versions, which this node refuses rather than misread.
    #[error(
        "peer speaks wire format version {found}, this node speaks {PEER_WIRE_VERSION}: refused"
    )]
    PeerVersion {
        /// The version the peer announced.
        found: u8,
    },
    /// A frame that is not one this version defines.
    #[error("malformed peer frame: {0}")]
    PeerFrame(WireError),
    /// The node that answered is not the one dialed (a stale address).
    #[error("dialed {dialed} but {answered} answered")]
    WrongPeer {
        /// The node the table names at that address.
        dialed: NodeName,
        /// The node that answered.
        answered: NodeName,
    },
    /// An authenticated peer that the table in force does not name: it left the cluster, or
    /// this node has not applied the table that adds it yet (the dialer tries again).
    #[error("{peer} is not in this node's assignment table")]
    UnknownPeer {
        /// The node it proved to be.
        peer: NodeName,
    },
    /// The other side could not prove it holds the cluster secret.
    #[error("peer authentication failed: {peer} could not prove it holds the cluster secret")]
    PeerSecret {
        /// Who it claimed to be.
        peer: NodeName,
    },
}

impl From<WireError> for Error {
    fn from(e: WireError) -> Error {
        match e {
            WireError::UnsupportedVersion { found } => Error::PeerVersion { found },
            e => Error::PeerFrame(e),
        }
    }
}

impl Error {
    /// Whether the error says the cluster is misconfigured (another secret or version) rather
    /// than that the network failed or a table is still on its way (a stale address, a peer not
    /// in the table yet): worth a warning each time, not a debug line.
    pub fn is_misconfiguration(&self) -> bool {
        matches!(self, Error::PeerVersion { .. } | Error::PeerSecret { .. })
    }
}

/// A node result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
