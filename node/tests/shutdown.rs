//! Graceful shutdown: every client is told to reconnect, then closed; the node exits in time.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use node::connection::RECONNECT_SPREAD_PER_CONNECTION;
use support::{Client, Ending, TestNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_every_client_to_reconnect_closes_them_and_returns() {
    let node = TestNode::start(&[]).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut client = node.client(&format!("u{i}")).await;
        client.join("r").await;
        clients.push(client);
    }
    let (_, ready) = node.http_get("/readyz").await.clone();
    assert_eq!(ready, "ready");
    let took = node.shutdown().await;
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    for client in &mut clients {
        let reconnect = client.recv_op("reconnect").await;
        assert_eq!(reconnect["reason"], "node shutting down");
        assert_eq!(
            client.ending(Duration::from_secs(5)).await,
            Ending::Closed {
                code: 1001,
                reason: "node shutting down".into()
            }
        );
    }
}

/// A stopping node tells its clients over a window that grows with them (0.75 ms each here,
/// 300 clients: 225 ms), so the nodes they come back to are not hit by all at once; each one is
/// served until told, then closed as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_tells_its_clients_to_reconnect_over_a_window_not_at_once() {
    const CLIENTS: u32 = 300;
    let node = TestNode::start(&[]).await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut client = node.client(&format!("u{i}")).await;
        client.join(&format!("r{i}")).await;
        clients.push(client);
    }
    let started = Instant::now();
    let stopping = tokio::spawn(node.shutdown());
    let told: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            tokio::spawn(async move {
                // A send written as the node starts stopping is answered, told or not.
                client.say(&format!("r{i}"), "last words", "c1").await;
                let mut echoed = false;
                let mut told_at = None;
                while !(echoed && told_at.is_some()) {
                    let frame = client.recv().await;
                    match frame["op"].as_str() {
                        Some("msg") => echoed |= frame["cid"] == "c1",
                        Some("reconnect") => told_at = Some(started.elapsed()),
                        _ => panic!("client {i} got {frame}"),
                    }
                }
                let ending = client.ending(Duration::from_secs(5)).await;
                (told_at.unwrap_or_default(), ending)
            })
        })
        .collect();
    let mut times = Vec::new();
    for client in told {
        let (at, ending) = client.await.expect("client task");
        assert_eq!(
            ending,
            Ending::Closed {
                code: 1001,
                reason: "node shutting down".into()
            }
        );
        times.push(at);
    }
    stopping.await.expect("node stops");
    times.sort_unstable();
    let window = RECONNECT_SPREAD_PER_CONNECTION * CLIENTS;
    let span = times[times.len() - 1] - times[0];
    // Spread over the window (the ids hash evenly into it), not told in one burst; a busy
    // machine only stretches it.
    assert!(
        span >= window / 2,
        "told over {span:?}, expected most of {window:?}"
    );
    let first_half = times.iter().filter(|t| **t - times[0] < span / 2).count();
    assert!(
        (CLIENTS as usize / 5..CLIENTS as usize * 4 / 5).contains(&first_half),
        "{first_half} of {CLIENTS} told in the first half of {span:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_binary_drains_and_exits_cleanly_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomshard-node"))
        .args(["--listen", "127.0.0.1:0", "--name", "chat-0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start roomshard-node");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("reader")
    .expect("first line");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("address in the listening line")
        .to_owned();
    let mut client = Client::connect(&format!("ws://{addr}/ws?user=ann")).await;
    client.join("lobby").await;

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let reconnect = client.recv_op("reconnect").await;
    assert_eq!(reconnect["op"], "reconnect");
    assert!(matches!(
        client.ending(Duration::from_secs(5)).await,
        Ending::Closed { code: 1001, .. }
    ));
    let exited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .expect("waiter");
    let status = exited.expect("node exits within 15 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}
