//! Clients through a real reverse proxy: Debian's nginx configured as `examples/ingress-auth.yaml`
//! asks (TLS for the host, WebSocket upgrade, hour-long proxy timeouts), in front of the client
//! Service's endpoints, with signed tokens. Rooms chat through it while the cluster is scaled
//! 3 → 2; every acknowledged message is in its room's history afterwards, once, in seq order,
//! and listeners that resumed with `since` saw every one.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::Api;
use kube_e2e::chat::connect_tls;
use kube_e2e::ingress::IngressNginx;
use kube_e2e::traffic::{Connect, Traffic};
use kube_e2e::{Cluster, TestResult, eventually, with_cluster};
use kubeharness::pki::Authority;
use operator::k8s::crd::ChatCluster;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// The key `examples/ingress-auth.yaml` ships as its placeholder.
const SIGNING_KEY: &str = "REPLACE-ME-with-the-output-of-openssl-rand-base64-48";
const ROOMS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_a_drain_through_nginx_with_tls_and_tokens_lose_nothing() -> TestResult {
    with_cluster(3, |c| Box::pin(through_nginx(c))).await
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

    let (addr, host, ca_pem) = (nginx.addr, nginx.host.clone(), ca.cert_pem.clone());
    let connect: Connect = Arc::new(move |user: String| {
        let (host, ca_pem) = (host.clone(), ca_pem.clone());
        Box::pin(async move { connect_tls(addr, &host, &token(&user)?, &ca_pem).await })
    });
    // About 70 messages per room in 30 s: fewer than a room's history of 100, so the history
    // holds every one and is checked whole.
    let traffic = Traffic::start(
        connect,
        "tls-room",
        ROOMS,
        Duration::from_millis(400),
        Duration::from_secs(30),
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster
        .patch_chat("ingress-auth", r#"{"spec":{"replicas":2}}"#)
        .await?;
    traffic
        .verify_flowed("chat through nginx", ROOMS * 40)
        .await?;
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
    nginx.stop().await;
    Ok(())
}
