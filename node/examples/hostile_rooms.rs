//! A rerunnable measurement: how much memory a client that invents room names costs a node,
//! and whether the node gives it back.
//!
//! Starts a `roomshard-node` process (standalone), reads its resident memory, joins and leaves
//! `ROOMS` distinct room names from one connection (optionally posting one message in each),
//! waits for the rooms to passivate, and prints one JSON line: RSS before, at peak (`VmHWM`),
//! after the rooms passivated and after the client left. With `ROUNDS` > 1 the same client
//! visits new names again after each passivation, and the RSS after each round is listed: a
//! node that reuses what it freed stays flat from the second round on.
//!
//! ```text
//! cargo build --release -p node --bins --examples
//! flock /tmp/roomshard-heavy.lock target/release/examples/hostile_rooms [ROOMS] [POSTS] [ROUNDS] [-- NODE FLAGS]
//! ```

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

/// Rooms sent per burst before their answers are read.
const BURST: usize = 500;

/// A `/proc/PID/status` field in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Kills the node when the measurement ends, however it ends.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_node(extra: &[String]) -> Result<(Node, String), Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|examples| examples.parent())
        .ok_or("no target directory")?;
    let mut child = Command::new(dir.join("roomshard-node"))
        .args(["--listen", "127.0.0.1:0", "--worker-threads", "1"])
        .args(["--rate-per-sec", "1000000", "--rate-burst", "1000000"])
        .args(["--passivate-after", "1s"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let node = Node(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(|| format!("unexpected banner: {line}"))?
        .to_string();
    Ok((node, addr))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (ours, extra) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (&args[..], &[][..]),
    };
    let rooms: usize = ours.first().map_or(Ok(200_000), |s| s.parse())?;
    let posts: usize = ours.get(1).map_or(Ok(0), |s| s.parse())?;
    let rounds: usize = ours.get(2).map_or(Ok(1), |s| s.parse())?;
    let (node, addr) = start_node(extra)?;
    let pid = node.0.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = status_kib(pid, "VmRSS:");

    let (mut ws, _) = connect_async(format!("ws://{addr}/ws?user=mallory")).await?;
    let mut visiting = Duration::ZERO;
    let mut during = 0;
    let mut passivated = 0;
    let mut per_round = Vec::new();
    for round in 0..rounds.max(1) {
        let names: Vec<String> = (0..rooms).map(|i| format!("junk-{round}-{i}")).collect();
        let started = Instant::now();
        for burst in names.chunks(BURST) {
            for room in burst {
                let join = format!(r#"{{"op":"join","room":"{room}"}}"#);
                ws.feed(Message::text(join)).await?;
                for i in 0..posts {
                    let send = format!(r#"{{"op":"send","room":"{room}","text":"x","cid":"{i}"}}"#);
                    ws.feed(Message::text(send)).await?;
                }
                ws.feed(Message::text(format!(
                    r#"{{"op":"leave","room":"{room}"}}"#
                )))
                .await?;
            }
            ws.flush().await?;
            let mut left = 0;
            while left < burst.len() {
                match ws.next().await {
                    Some(Ok(Message::Text(text)))
                        if text.as_str().starts_with(r#"{"op":"left""#) =>
                    {
                        left += 1;
                    }
                    Some(Ok(_)) => {}
                    _ => return Err("the node closed the connection".into()),
                }
            }
        }
        visiting += started.elapsed();
        during = status_kib(pid, "VmRSS:");
        // Passivation takes `--passivate-after` (1 s) plus the idle timer's slack.
        tokio::time::sleep(Duration::from_secs(5)).await;
        passivated = status_kib(pid, "VmRSS:");
        per_round.push(passivated);
    }
    ws.close(None).await?;
    drop(ws);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = status_kib(pid, "VmRSS:");
    let peak = status_kib(pid, "VmHWM:");
    println!(
        "{{\"scenario\":\"hostile_rooms\",\"rooms\":{rooms},\"posts_per_room\":{posts},\"seconds\":{:.1},\"rss_kib_before\":{before},\"rss_kib_peak\":{peak},\"rss_kib_end_of_visits\":{during},\"rss_kib_passivated\":{passivated},\"rss_kib_after_client_left\":{after},\"rss_kib_after_each_round\":{per_round:?}}}",
        visiting.as_secs_f64()
    );
    drop(node);
    Ok(())
}
