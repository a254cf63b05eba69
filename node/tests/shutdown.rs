//! Graceful shutdown: every client is told to reconnect, then closed; the node exits in time.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

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
