//! Clients through a real reverse proxy: Debian's nginx configured as `examples/ingress-auth.yaml`
//! asks (TLS for the host, WebSocket upgrade, hour-long proxy timeouts), in front of the client
//! Service's endpoints, with signed tokens. Rooms chat through it while the cluster is scaled
//! 3 → 2; every acknowledged message is in its room's history afterwards, once, in seq order,
//! and listeners that resumed with `since` saw every one.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use kube::Api;
use kube_e2e::chat::connect_tls;
use kube_e2e::ingress::IngressNginx;
use kube_e2e::{Cluster, TestResult, eventually, start_cluster};
use kubeharness::pki::Authority;
use operator::k8s::crd::ChatCluster;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

/// The key `examples/ingress-auth.yaml` ships as its placeholder.
const SIGNING_KEY: &str = "REPLACE-ME-with-the-output-of-openssl-rand-base64-48";
const ROOMS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_a_drain_through_nginx_with_tls_and_tokens_lose_nothing() -> TestResult {
    let cluster = start_cluster(3).await?;
    let outcome = through_nginx(&cluster).await;
    if outcome.is_err() {
        cluster.dump().await;
    }
    cluster.stop().await;
    outcome
}

fn token(user: &str) -> TestResult<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SIGNING_KEY.as_bytes()),
    )?)
}

/// What one room's sender had acknowledged: seq to text.
type Acked = Arc<Mutex<BTreeMap<u64, String>>>;

async fn through_nginx(cluster: &Cluster) -> TestResult {
    let client = cluster.client().await?;
    cluster.install_operator(&[]).await?;
    // The TLS Secret a user (or cert-manager) provides for the host.
    let ca = Authority::new()?;
    let cert = ca.server("chat.example.com", &["chat.example.com"], &[])?;
    let dir = cluster.inner.plane.dir.join("ingress");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("host.crt"), &cert.cert_pem)?;
    std::fs::write(dir.join("host.key"), &cert.key_pem)?;
    let (crt, key) = (
        dir.join("host.crt").display().to_string(),
        dir.join("host.key").display().to_string(),
    );
    cluster
        .kubectl(&[
            "create",
            "secret",
            "tls",
            "chat-example-com-tls",
            "--cert",
            &crt,
            "--key",
            &key,
        ])
        .await?;
    cluster
        .kubectl(&["apply", "-f", "examples/ingress-auth.yaml"])
        .await?;
    let chats: Api<ChatCluster> = Api::namespaced(client.clone(), "default");
    eventually(
        "ingress-auth runs 3 pods",
        Duration::from_secs(90),
        || async {
            let s = chats.get("ingress-auth").await.ok()?.status?;
            (s.phase.as_deref() == Some("Running") && s.ready_nodes == 3).then_some(())
        },
    )
    .await?;
    let nginx = IngressNginx::start(
        client.clone(),
        "default",
        "ingress-auth",
        &dir.join("nginx"),
    )
    .await?;

    // A refused token never reaches a room.
    let bad = connect_tls(nginx.addr, &nginx.host, "not-a-token", &ca.cert_pem).await;
    if let Ok(mut ws) = bad {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next()).await?;
        assert!(
            matches!(frame, Some(Ok(Message::Close(Some(ref c)))) if u16::from(c.code) == 1008),
            "a bad token is closed with 1008: {frame:?}"
        );
    }

    let stop_at = Instant::now() + Duration::from_secs(30);
    let mut tasks = Vec::new();
    let mut acked_by_room = Vec::new();
    let mut listeners = Vec::new();
    for r in 0..ROOMS {
        let room = format!("tls-room-{r}");
        let acked: Acked = Arc::default();
        acked_by_room.push((room.clone(), acked.clone()));
        tasks.push(tokio::spawn(sender(
            nginx.addr,
            nginx.host.clone(),
            ca.cert_pem.clone(),
            room.clone(),
            acked,
            stop_at,
        )));
        listeners.push(tokio::spawn(listener(
            nginx.addr,
            nginx.host.clone(),
            ca.cert_pem.clone(),
            room,
            stop_at + Duration::from_secs(8),
        )));
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster
        .kubectl(&[
            "patch",
            "chat",
            "ingress-auth",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"replicas":2}}"#,
        ])
        .await?;
    let mut ambiguous = 0;
    for t in tasks {
        ambiguous += t.await??;
    }
    eventually(
        "ingress-auth settles on 2 pods",
        Duration::from_secs(120),
        || async {
            let s = chats.get("ingress-auth").await.ok()?.status?;
            (s.phase.as_deref() == Some("Running") && s.ready_nodes == 2 && s.draining.is_empty())
                .then_some(())
        },
    )
    .await?;
    let mut heard = BTreeMap::new();
    for l in listeners {
        let (room, seqs) = l.await??;
        heard.insert(room, seqs);
    }

    // Every acknowledged message is in its room's history, once, with its seq; seqs are 1..=n.
    let mut total = 0;
    for (room, acked) in &acked_by_room {
        let acked = acked.lock().await.clone();
        let mut ws = connect_tls(nginx.addr, &nginx.host, &token("auditor")?, &ca.cert_pem).await?;
        ws.send(Message::text(
            json!({"op": "join", "room": room, "since": 0}).to_string(),
        ))
        .await?;
        let joined = loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await?
                .ok_or("closed")??;
            if let Message::Text(t) = frame {
                let v: Value = serde_json::from_str(&t)?;
                if v["op"] == "joined" {
                    break v;
                }
            }
        };
        let history: Vec<(u64, String)> = joined["history"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["seq"].as_u64().unwrap_or(0),
                    m["text"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let seqs: Vec<u64> = history.iter().map(|(s, _)| *s).collect();
        let last = joined["seq"].as_u64().unwrap_or(0);
        assert_eq!(
            seqs,
            (1..=last).collect::<Vec<_>>(),
            "{room}: history is every seq once, in order"
        );
        for (seq, text) in &acked {
            assert!(
                history.contains(&(*seq, text.clone())),
                "{room}: acknowledged #{seq} {text:?} is in the history"
            );
        }
        let listened = heard.get(room).cloned().unwrap_or_default();
        assert_eq!(
            listened,
            (1..=last).collect::<Vec<_>>(),
            "{room}: the listener saw every message once, resuming with since"
        );
        total += acked.len();
    }
    eprintln!(
        "{total} acknowledged messages in {ROOMS} rooms through nginx, {ambiguous} sends cut by a reconnect before their answer"
    );
    assert!(total > ROOMS * 40, "traffic flowed through nginx: {total}");
    nginx.stop().await;
    Ok(())
}

/// Sends a message every 400 ms until `until`, one at a time, reconnecting through nginx when
/// told to; returns how many sends were cut off before their answer came.
async fn sender(
    addr: std::net::SocketAddr,
    host: String,
    ca: String,
    room: String,
    acked: Acked,
    until: Instant,
) -> TestResult<u32> {
    let mut n = 0u32;
    let mut cut = 0;
    let user = format!("{room}-sender");
    'connect: while Instant::now() < until {
        let Ok(mut ws) = connect_tls(addr, &host, &token(&user)?, &ca).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        ws.send(Message::text(
            json!({"op": "join", "room": room}).to_string(),
        ))
        .await?;
        while Instant::now() < until {
            n += 1;
            let text = format!("m{n}");
            let cid = format!("c{n}");
            if ws
                .send(Message::text(
                    json!({"op": "send", "room": room, "text": text, "cid": cid}).to_string(),
                ))
                .await
                .is_err()
            {
                cut += 1;
                continue 'connect;
            }
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
                let Ok(Some(Ok(Message::Text(t)))) = frame else {
                    if matches!(frame, Ok(Some(Ok(_)))) {
                        continue;
                    }
                    cut += 1;
                    continue 'connect;
                };
                let v: Value = serde_json::from_str(&t)?;
                if v["op"] == "msg" && v["cid"] == cid.as_str() {
                    acked
                        .lock()
                        .await
                        .insert(v["seq"].as_u64().unwrap_or(0), text.clone());
                    break;
                }
                if v["op"] == "error" && v["cid"] == cid.as_str() {
                    break; // answered: refused, not lost
                }
                if v["op"] == "reconnect" {
                    cut += 1;
                    continue 'connect;
                }
            }
            // About 70 messages in 30 s: fewer than the room's history of 100, so the history
            // holds every one and can be checked whole.
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    Ok(cut)
}

/// Listens to `room` until `until`, resuming with `since` after every reconnect; returns the seqs
/// it saw.
async fn listener(
    addr: std::net::SocketAddr,
    host: String,
    ca: String,
    room: String,
    until: Instant,
) -> TestResult<(String, Vec<u64>)> {
    let mut seen: Vec<u64> = Vec::new();
    let user = format!("{room}-listener");
    'connect: while Instant::now() < until {
        let Ok(mut ws) = connect_tls(addr, &host, &token(&user)?, &ca).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let since = seen.last().copied().unwrap_or(0);
        ws.send(Message::text(
            json!({"op": "join", "room": room, "since": since}).to_string(),
        ))
        .await?;
        while Instant::now() < until {
            let frame = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
            let Ok(frame) = frame else { continue };
            let Some(Ok(Message::Text(t))) = frame else {
                if matches!(frame, Some(Ok(_))) {
                    continue;
                }
                continue 'connect;
            };
            let v: Value = serde_json::from_str(&t)?;
            let mut take = |m: &Value| {
                if let Some(s) = m["seq"].as_u64()
                    && seen.last().is_none_or(|l| s > *l)
                {
                    seen.push(s);
                }
            };
            match v["op"].as_str() {
                Some("joined") => v["history"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .for_each(&mut take),
                Some("msg") => take(&v),
                Some("reconnect") => continue 'connect,
                _ => {}
            }
        }
    }
    Ok((room, seen))
}
