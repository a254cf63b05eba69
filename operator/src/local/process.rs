//! One node process: spawn it, learn its addresses from its stdout, probe it, stop it.
//!
//! [`supervise`] owns the child for its whole life. It ends when the process exits (a crash or
//! `kill -9`: the reconcile loop decides about a replacement) or when its stop token is
//! cancelled (drained, a rolling restart, or the driver shuts down): then it sends SIGTERM,
//! waits for the node's exit drain, its shutdown grace and 5 s, and sends SIGKILL if the node
//! is still there.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use shard::NodeName;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::decide::Report;
use crate::{Error, http};

/// How long a node may take to print its two address lines.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one probe or status request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The start of the node's first stdout line; the client address follows.
const CLIENT_LINE: &str = "roomshard-node listening on http://";

/// The start of the node's second stdout line; the peer address follows.
const PEER_LINE: &str = "roomshard-node peer link on ";

/// A node's `/status`, parsed for decisions and kept raw for `/cluster`.
#[derive(Debug, Clone)]
pub(super) struct Status {
    pub(super) report: Report,
    pub(super) raw: serde_json::Value,
}

/// Runs pod `ordinal`'s process, incarnation `generation`, until it exits or `stop` fires.
pub(super) async fn supervise(
    shared: Arc<Shared>,
    ordinal: u32,
    name: NodeName,
    generation: u64,
    stop: CancellationToken,
) {
    let expected = match run(&shared, ordinal, &name, generation, &stop).await {
        Ok(Ended::Stopped) => {
            tracing::info!(node = %name, "node stopped");
            true
        }
        Ok(Ended::Exited(status)) => {
            tracing::warn!(node = %name, %status, "node exited unexpectedly");
            false
        }
        Err(e) => {
            tracing::error!(node = %name, error = %e, "node failed");
            false
        }
    };
    // A process that exited while being stopped was expected to.
    shared.exited(ordinal, generation, expected || stop.is_cancelled());
}

/// How a process ended.
enum Ended {
    /// It was told to stop and did.
    Stopped,
    /// It exited by itself (or was killed from outside).
    Exited(ExitStatus),
}

async fn run(
    shared: &Arc<Shared>,
    ordinal: u32,
    name: &NodeName,
    generation: u64,
    stop: &CancellationToken,
) -> Result<Ended, Error> {
    let config = &shared.config;
    let mut command = Command::new(&config.node_bin);
    command
        .arg("--name")
        .arg(name.as_str())
        // The client port a pod had before, like a pod's stable address behind its Service:
        // clients of a restarted node (the bench's, a browser tab) reconnect where they were.
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", shared.client_port(ordinal)))
        .args(["--peer-listen", "127.0.0.1:0"])
        .arg("--table-url")
        .arg(&config.table_url)
        .arg("--cluster-secret-file")
        .arg(&config.secret_file)
        .arg("--shards")
        .arg(config.shards.to_string())
        .arg("--handoff-timeout")
        .arg(humantime::format_duration(config.handoff_timeout).to_string())
        .arg("--exit-drain-timeout")
        .arg(humantime::format_duration(config.exit_drain_timeout).to_string())
        .arg("--shutdown-grace")
        .arg(humantime::format_duration(config.shutdown_grace).to_string())
        .args(&config.node_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    match &config.log_dir {
        Some(dir) => {
            let path = dir.join(format!("{name}.log"));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
            command.stderr(Stdio::from(file));
        }
        None => {
            command.stderr(Stdio::piped());
        }
    }
    let mut child = command
        .spawn()
        .map_err(|e| Error::io(format!("cannot start {}", config.node_bin.display()), e))?;
    let pid = child.id();
    shared.update_proc(ordinal, generation, |p| {
        p.pid = pid;
        false
    });
    if let Some(stderr) = child.stderr.take() {
        // Not tracked: it ends when the pipe closes, which the driver does not control.
        tokio::spawn(forward(name.clone(), stderr));
    }
    let Some(stdout) = child.stdout.take() else {
        return Err(Error::Config("the node's stdout was not captured".into()));
    };
    let mut stdout = BufReader::new(stdout);

    let announced = tokio::select! {
        biased;
        () = stop.cancelled() => {
            terminate(&mut child, pid, config.kill_after, name).await;
            return Ok(Ended::Stopped);
        }
        status = child.wait() => {
            return status
                .map(Ended::Exited)
                .map_err(|e| Error::io("cannot wait for the node", e));
        }
        addrs = tokio::time::timeout(ANNOUNCE_TIMEOUT, read_addresses(&mut stdout, name)) => addrs,
    };
    let (client, peer) = match announced {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(e)) => {
            terminate(&mut child, pid, config.kill_after, name).await;
            return Err(e);
        }
        Err(_) => {
            terminate(&mut child, pid, config.kill_after, name).await;
            return Err(Error::Timeout(format!(
                "{name} did not print its addresses within {ANNOUNCE_TIMEOUT:?}"
            )));
        }
    };
    tokio::spawn(forward(name.clone(), stdout));
    tracing::info!(
        node = %name,
        pid = pid.unwrap_or(0),
        chat = %format!("http://{client}/"),
        ws = %format!("ws://{client}/ws"),
        peer = %peer,
        "node started"
    );
    shared.announced(ordinal, generation, client, peer);

    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set once SIGTERM is sent: the node then hands its shards off, and the driver must keep
    // reading its `/status` (as the kubelet keeps probing a terminating pod) so that the moves
    // it reports done are cleared and it may exit.
    let mut kill_at: Option<tokio::time::Instant> = None;
    loop {
        let deadline = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = stop.cancelled(), if kill_at.is_none() => {
                if let Some(pid) = pid
                    && let Err(e) = signal("TERM", pid).await
                {
                    tracing::warn!(node = %name, error = %e, "cannot send SIGTERM");
                }
                kill_at = Some(tokio::time::Instant::now() + config.kill_after);
            }
            status = child.wait() => {
                if kill_at.is_some() {
                    return Ok(Ended::Stopped);
                }
                return status
                    .map(Ended::Exited)
                    .map_err(|e| Error::io("cannot wait for the node", e));
            }
            () = deadline => {
                tracing::warn!(node = %name, "still running {:?} after SIGTERM; sending SIGKILL", config.kill_after);
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Ok(Ended::Stopped);
            }
            () = async {
                tick.tick().await;
                let (ok, status) = probe(client, peer, name).await;
                shared.probed(ordinal, generation, ok, status);
            } => {}
        }
    }
}

/// Reads stdout until both address lines have been seen; other lines are passed on.
async fn read_addresses<R: AsyncRead + Unpin>(
    stdout: &mut BufReader<R>,
    name: &NodeName,
) -> Result<(SocketAddr, SocketAddr), Error> {
    let (mut client, mut peer) = (None, None);
    let mut line = Vec::new();
    while client.is_none() || peer.is_none() {
        line.clear();
        let n = stdout
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| Error::io(format!("cannot read {name}'s stdout"), e))?;
        if n == 0 {
            return Err(Error::Config(format!(
                "{name} closed its stdout before printing its addresses"
            )));
        }
        let text = String::from_utf8_lossy(&line);
        match parse_announcement(&text) {
            Some(Announcement::Client(addr)) => client = Some(addr),
            Some(Announcement::Peer(addr)) => peer = Some(addr),
            None => print_line(name, &text),
        }
    }
    match (client, peer) {
        (Some(client), Some(peer)) => Ok((client, peer)),
        _ => Err(Error::Config(format!("{name} did not print its addresses"))),
    }
}

/// One of the two lines a node prints on start.
#[derive(Debug, PartialEq, Eq)]
enum Announcement {
    Client(SocketAddr),
    Peer(SocketAddr),
}

/// Recognises `roomshard-node listening on http://ADDR (chat page: ...)` and
/// `roomshard-node peer link on ADDR`.
fn parse_announcement(line: &str) -> Option<Announcement> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix(CLIENT_LINE) {
        let addr = rest.split_whitespace().next()?.trim_end_matches('/');
        return addr.parse().ok().map(Announcement::Client);
    }
    let rest = line.strip_prefix(PEER_LINE)?;
    let addr = rest.split_whitespace().next()?;
    addr.parse().ok().map(Announcement::Peer)
}

/// One probe: `/readyz` on the client port (as the kubelet would), `/status` on the peer port
/// (where the operator reads it in Kubernetes).
async fn probe(client: SocketAddr, peer: SocketAddr, name: &NodeName) -> (bool, Option<Status>) {
    let ready = http::get(&client.to_string(), "/readyz", PROBE_TIMEOUT)
        .await
        .is_ok_and(|r| r.status == 200);
    let status = match http::get(&peer.to_string(), "/status", PROBE_TIMEOUT).await {
        Ok(r) if r.is_success() => parse_status(&r.body, name),
        _ => None,
    };
    (ready, status)
}

fn parse_status(body: &str, name: &NodeName) -> Option<Status> {
    let raw: serde_json::Value = match serde_json::from_str(body) {
        Ok(raw) => raw,
        Err(e) => {
            tracing::debug!(node = %name, error = %e, "/status is not json");
            return None;
        }
    };
    let report = match Report::from_status(name.as_str(), &raw) {
        Ok(report) => report,
        Err(e) => {
            tracing::warn!(node = %name, error = %e, "/status ignored");
            return None;
        }
    };
    Some(Status { report, raw })
}

/// SIGTERM, wait up to `bound` (the exit drain, the shutdown grace and 5 s), then SIGKILL.
async fn terminate(child: &mut Child, pid: Option<u32>, bound: Duration, name: &NodeName) {
    if let Some(pid) = pid
        && let Err(e) = signal("TERM", pid).await
    {
        tracing::warn!(node = %name, error = %e, "cannot send SIGTERM");
    }
    if tokio::time::timeout(bound, child.wait()).await.is_err() {
        tracing::warn!(node = %name, "still running {bound:?} after SIGTERM; sending SIGKILL");
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// Sends `SIG{signal}` to `pid` with `kill(1)` (this crate forbids `unsafe`, so no libc).
pub(super) async fn signal(signal: &str, pid: u32) -> Result<(), Error> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map_err(|e| Error::io("cannot run kill", e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::io(
            format!("kill -{signal} {pid}"),
            std::io::Error::other(format!("kill exited with {status}")),
        ))
    }
}

/// Passes a node's output lines on to our stderr, prefixed with its name, until it closes.
async fn forward<R: AsyncRead + Unpin>(name: NodeName, output: R) {
    let mut output = BufReader::new(output);
    let mut line = Vec::new();
    loop {
        line.clear();
        match output.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => print_line(&name, &String::from_utf8_lossy(&line)),
        }
    }
}

fn print_line(name: &NodeName, line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{name} | {}", line.trim_end());
}

#[cfg(test)]
mod tests {
    use super::*;
    use shard::Move;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("valid address")
    }

    #[test]
    fn both_announcement_lines_are_recognised() {
        assert_eq!(
            parse_announcement(
                "roomshard-node listening on http://127.0.0.1:41000 (chat page: http://127.0.0.1:41000/)\n"
            ),
            Some(Announcement::Client(addr("127.0.0.1:41000")))
        );
        assert_eq!(
            parse_announcement("roomshard-node peer link on 127.0.0.1:41001\n"),
            Some(Announcement::Peer(addr("127.0.0.1:41001")))
        );
        assert_eq!(
            parse_announcement("roomshard-node listening on http://[::1]:80/"),
            Some(Announcement::Client(addr("[::1]:80")))
        );
    }

    #[test]
    fn other_lines_are_not_announcements() {
        for line in [
            "",
            "hello",
            "roomshard-node listening on http://nowhere (chat page)",
            "roomshard-node peer link on",
        ] {
            assert_eq!(parse_announcement(line), None, "{line:?}");
        }
    }

    #[test]
    fn a_status_is_read_when_it_names_this_node() -> Result<(), shard::ShardError> {
        let me = NodeName::new("node-1")?;
        let body = r#"{"node":"node-1","epoch":7,"shardsOwned":85,"movesInFlight":2,
            "movesDone":[{"shard":3,"from":"node-1","to":"node-3"}],"rooms":120,
            "connections":1000,"peersConnected":2,"ready":true}"#;
        let status = parse_status(body, &me).expect("a valid status");
        assert_eq!(status.report.epoch, 7);
        assert_eq!(status.report.moves_in_flight, 2);
        assert_eq!(
            status.report.moves_done,
            vec![Move {
                shard: shard::ShardId(3),
                from: me.clone(),
                to: NodeName::new("node-3")?,
            }]
        );
        assert_eq!(status.raw["rooms"], 120);

        let minimal = parse_status(r#"{"node":"node-1","epoch":0}"#, &me).expect("minimal");
        assert_eq!(minimal.report, Report::default());

        assert!(parse_status(r#"{"node":"node-2","epoch":7}"#, &me).is_none());
        assert!(parse_status("not json", &me).is_none());
        Ok(())
    }
}
