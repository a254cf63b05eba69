//! Command-line flags, and their check into a [`Plan`] the run can trust.
//!
//! The bench only ever talks to this machine: every address must be loopback
//! (127.0.0.0/8, `::1` or `localhost`), so a typo cannot point a load test at someone else.

use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;

/// Largest `--text-bytes`: the nodes' default message limit (16 KiB).
const MAX_TEXT_BYTES: usize = 16 * 1024;

/// File descriptors kept free for everything that is not a client socket (runtime, stdio,
/// `/proc` reads, metric scrapes).
const SPARE_FILES: u64 = 64;

/// Load generator for roomshard chat nodes (protocol v1, loopback only).
#[derive(Debug, Clone, Parser)]
#[command(name = "roomshard-bench", version)]
pub struct Args {
    /// Comma-separated node addresses, e.g. `ws://127.0.0.1:8080,ws://127.0.0.1:8081`;
    /// loopback hosts only. Users are spread over them round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    pub nodes: Vec<String>,
    /// Rooms to load.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Connections (users) per room; each joins exactly one room.
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    /// Messages per second per room, spread evenly over the room's users.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Length of the measured send phase (e.g. `30s`).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Sending before the measurement starts, so connection setup and cold rooms do not count.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Longest wait after the send phase for in-flight messages.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Longest wait for every connection to be up (and joined) before sending starts.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// WebSocket handshakes in progress at once while the users first connect (a connect storm
    /// is not what we measure). Reconnects are not held back.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Bytes of text per message (the send time is embedded at its start).
    #[arg(long, default_value_t = 64)]
    pub text_bytes: usize,
    /// Prefix of room and user names (letters, digits, `-`, `_`, `.`).
    #[arg(long, default_value = "bench")]
    pub room_prefix: String,
    /// Comma-separated pids of the node processes, for CPU time and resident memory.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Idle mode: open this many bare connections (no rooms), measure the nodes' memory
    /// before and after (needs `--pids`), then close them.
    #[arg(long)]
    pub idle: Option<usize>,
    /// Comma-separated `/metrics` URLs of the nodes (loopback); counters are read before and
    /// after the measurement and their increase reported as `server_metrics`.
    #[arg(long, value_delimiter = ',')]
    pub metrics_url: Vec<String>,
    /// After the run, read every room's whole history (`join` with `since: 0`) and report the
    /// rooms whose history is cut as `history` (the nodes' `--history-per-room` must exceed
    /// what a room gets).
    #[arg(long)]
    pub audit_history: bool,
    /// What a user does when its node says `reconnect`: `overlap` joins its room on the next
    /// node first and leaves the old connection once in (make-before-break); `close` closes
    /// first and re-joins after (break-before-make), for comparison.
    #[arg(long, value_enum, default_value_t = OnReconnect::Overlap)]
    pub on_reconnect: OnReconnect,
}

/// How a user moves when its node says `reconnect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnReconnect {
    /// Open the next connection and re-join there, then close the old one.
    Overlap,
    /// Close the old connection, then open the next one and re-join.
    Close,
}

/// A WebSocket node address that passed the loopback check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    /// `ws://host:port`, without a trailing slash; the bench appends `/ws?user=...`.
    pub base: String,
}

/// An HTTP URL on loopback, split for a hand-written GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// `host:port`, as dialled and as sent in the `Host` header.
    pub authority: String,
    /// The request path, starting with `/`.
    pub path: String,
}

/// What to run, checked.
#[derive(Debug, Clone)]
pub enum Plan {
    /// Rooms with users sending messages.
    Load(LoadPlan),
    /// Bare connections for a memory measurement.
    Idle(IdlePlan),
}

/// A checked load run.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Nodes to spread users over.
    pub nodes: Vec<NodeAddr>,
    /// Number of rooms.
    pub rooms: usize,
    /// Connections per room.
    pub users: usize,
    /// Messages per second per room.
    pub rate: f64,
    /// Measured send phase.
    pub duration: Duration,
    /// Unmeasured send phase before it.
    pub warmup: Duration,
    /// Longest wait for in-flight messages afterwards.
    pub drain: Duration,
    /// Longest wait for all connections to be up and joined.
    pub connect_timeout: Duration,
    /// Handshakes in progress at once.
    pub connect_concurrency: usize,
    /// Text length per message.
    pub text_bytes: usize,
    /// Prefix of room and user names.
    pub prefix: String,
    /// Node processes to measure.
    pub pids: Vec<u32>,
    /// `/metrics` endpoints to read before and after.
    pub metrics: Vec<HttpTarget>,
    /// Read every room's history afterwards.
    pub audit_history: bool,
    /// How users move when told to reconnect.
    pub on_reconnect: OnReconnect,
}

/// A checked idle run.
#[derive(Debug, Clone)]
pub struct IdlePlan {
    /// Nodes to spread connections over.
    pub nodes: Vec<NodeAddr>,
    /// Connections to open.
    pub connections: usize,
    /// Longest wait for all of them to be up.
    pub connect_timeout: Duration,
    /// Handshakes in progress at once.
    pub connect_concurrency: usize,
    /// Prefix of user names.
    pub prefix: String,
    /// Node processes to measure.
    pub pids: Vec<u32>,
}

impl Args {
    /// Check the flags.
    ///
    /// # Errors
    /// A message naming the flag that is wrong and why.
    pub fn validate(&self) -> Result<Plan, String> {
        if self.nodes.is_empty() {
            return Err("--nodes needs at least one address".into());
        }
        let nodes = self
            .nodes
            .iter()
            .map(|n| parse_node(n))
            .collect::<Result<Vec<_>, _>>()?;
        let metrics = self
            .metrics_url
            .iter()
            .map(|u| parse_http(u))
            .collect::<Result<Vec<_>, _>>()?;
        check_prefix(&self.room_prefix)?;
        if self.connect_concurrency == 0 {
            return Err("--connect-concurrency must be at least 1".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("--connect-timeout must be more than 0s".into());
        }
        let connections = match self.idle {
            Some(n) => n,
            None => self.rooms.saturating_mul(self.users),
        };
        check_file_limit(connections)?;
        if let Some(connections) = self.idle {
            if connections == 0 {
                return Err("--idle must be at least 1".into());
            }
            return Ok(Plan::Idle(IdlePlan {
                nodes,
                connections,
                connect_timeout: self.connect_timeout,
                connect_concurrency: self.connect_concurrency,
                prefix: self.room_prefix.clone(),
                pids: self.pids.clone(),
            }));
        }
        if self.rooms == 0 || self.users == 0 {
            return Err("--rooms and --users must be at least 1".into());
        }
        if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 100_000.0) {
            return Err("--rate must be a number of messages per second in (0, 100000]".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be more than 0s".into());
        }
        if self.text_bytes > MAX_TEXT_BYTES {
            return Err(format!(
                "--text-bytes must be at most {MAX_TEXT_BYTES} (the nodes' default limit)"
            ));
        }
        Ok(Plan::Load(LoadPlan {
            nodes,
            rooms: self.rooms,
            users: self.users,
            rate: self.rate,
            duration: self.duration,
            warmup: self.warmup,
            drain: self.drain,
            connect_timeout: self.connect_timeout,
            connect_concurrency: self.connect_concurrency,
            text_bytes: self.text_bytes,
            prefix: self.room_prefix.clone(),
            pids: self.pids.clone(),
            metrics,
            audit_history: self.audit_history,
            on_reconnect: self.on_reconnect,
        }))
    }
}

/// Names go into URLs and JSON unescaped, so only characters that need no escaping anywhere.
fn check_prefix(prefix: &str) -> Result<(), String> {
    let ok = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--room-prefix `{prefix}` must be 1 to 64 letters, digits, `-`, `_` or `.`"
        ))
    }
}

/// One socket per connection: refuse up front rather than fail half-way with EMFILE.
fn check_file_limit(connections: usize) -> Result<(), String> {
    let Some(limit) = crate::procfs::open_files_limit() else {
        return Ok(());
    };
    let needed = connections as u64 + SPARE_FILES;
    if needed > limit {
        return Err(format!(
            "{connections} connections need about {needed} open files but this process may open \
             {limit}: raise it with `ulimit -n` or run several bench processes"
        ));
    }
    Ok(())
}

/// Parse `ws://host:port` (a bare `host:port` means `ws://`), loopback hosts only.
///
/// # Errors
/// A message for another scheme, a path, a missing port or a host that is not loopback.
pub fn parse_node(text: &str) -> Result<NodeAddr, String> {
    let text = text.trim();
    let rest = match text.split_once("://") {
        Some(("ws", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "node address `{text}`: scheme `{scheme}` is not supported, use ws://"
            ));
        }
        None => text,
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') || authority.contains('?') {
        return Err(format!(
            "node address `{text}`: give the node's base address (ws://host:port), the bench adds /ws"
        ));
    }
    check_loopback_authority(text, authority)?;
    Ok(NodeAddr {
        base: format!("ws://{authority}"),
    })
}

/// Parse `http://host:port/path`, loopback hosts only.
///
/// # Errors
/// A message for another scheme, a missing port or a host that is not loopback.
pub fn parse_http(text: &str) -> Result<HttpTarget, String> {
    let text = text.trim();
    let Some(rest) = text.strip_prefix("http://") else {
        return Err(format!("metrics url `{text}`: only http:// is supported"));
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/metrics"),
    };
    check_loopback_authority(text, authority)?;
    Ok(HttpTarget {
        authority: authority.to_owned(),
        path: path.to_owned(),
    })
}

fn check_loopback_authority(text: &str, authority: &str) -> Result<(), String> {
    let (host, port) = split_host_port(authority)
        .ok_or_else(|| format!("address `{text}`: expected host:port"))?;
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return Err(format!("address `{text}`: `{port}` is not a port")),
    }
    if !is_loopback_host(host) {
        return Err(format!(
            "address `{text}`: host `{host}` is not loopback; the bench only loads this machine \
             (127.0.0.0/8, ::1 or localhost)"
        ));
    }
    Ok(())
}

/// Split `host:port` or `[v6]:port`; the host comes back without brackets.
fn split_host_port(authority: &str) -> Option<(&str, &str)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        return Some((host, port));
    }
    let (host, port) = authority.rsplit_once(':')?;
    // A bare IPv6 address without brackets is ambiguous.
    if host.contains(':') || host.is_empty() {
        return None;
    }
    Some((host, port))
}

fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_node_addresses_are_accepted() {
        for (text, base) in [
            ("ws://127.0.0.1:8080", "ws://127.0.0.1:8080"),
            ("ws://127.1.2.3:8080/", "ws://127.1.2.3:8080"),
            ("ws://localhost:1", "ws://localhost:1"),
            ("ws://[::1]:9000", "ws://[::1]:9000"),
            ("127.0.0.1:80", "ws://127.0.0.1:80"),
        ] {
            assert_eq!(
                parse_node(text).map(|n| n.base),
                Ok(base.to_owned()),
                "{text}"
            );
        }
    }

    #[test]
    fn other_hosts_schemes_and_paths_are_refused_with_a_reason() {
        for (text, reason) in [
            ("ws://10.0.0.1:8080", "not loopback"),
            ("ws://example.com:80", "not loopback"),
            ("ws://[::2]:80", "not loopback"),
            ("wss://127.0.0.1:443", "scheme"),
            ("ws://127.0.0.1:8080/ws", "base address"),
            ("ws://127.0.0.1", "host:port"),
            ("ws://127.0.0.1:0", "not a port"),
            ("ws://::1:80", "host:port"),
        ] {
            match parse_node(text) {
                Err(e) => assert!(e.contains(reason), "{text}: {e}"),
                Ok(n) => panic!("{text} accepted as {n:?}"),
            }
        }
    }

    #[test]
    fn metrics_urls_default_to_the_metrics_path_and_must_be_loopback() {
        assert_eq!(
            parse_http("http://127.0.0.1:9/"),
            Ok(HttpTarget {
                authority: "127.0.0.1:9".into(),
                path: "/".into()
            })
        );
        assert_eq!(
            parse_http("http://localhost:9").map(|t| t.path),
            Ok("/metrics".into())
        );
        assert!(parse_http("http://192.168.1.1:9/metrics").is_err());
        assert!(parse_http("https://127.0.0.1:9/metrics").is_err());
    }

    #[test]
    fn prefixes_that_would_need_escaping_are_refused() {
        assert!(check_prefix("bench-1_a.b").is_ok());
        for bad in ["", "a b", "a/b", "a\"b", "ü"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
