//! A WebSocket chat client for tests (protocol v1), connecting to a pod's or proxy's address.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::TestResult;

/// One connected user.
#[derive(Debug)]
pub struct ChatClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read while waiting for another one, in order.
    pub seen: Vec<Value>,
}

impl ChatClient {
    /// Connects to `ws://ADDR/ws?user=USER`.
    ///
    /// # Errors
    ///
    /// When the handshake fails.
    pub async fn connect(addr: &str, user: &str) -> TestResult<Self> {
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws?user={user}")),
        )
        .await??;
        Ok(ChatClient {
            ws,
            seen: Vec::new(),
        })
    }

    /// Sends one JSON frame.
    ///
    /// # Errors
    ///
    /// When the socket fails.
    pub async fn send_json(&mut self, frame: Value) -> TestResult {
        self.ws.send(Message::text(frame.to_string())).await?;
        Ok(())
    }

    /// The next frame whose `op` is `op`, within 15 s; frames before it are kept in `seen`.
    ///
    /// # Errors
    ///
    /// On timeout or a closed socket.
    pub async fn expect(&mut self, op: &str) -> TestResult<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| format!("no {op} within 15 s; saw {:?}", self.seen))?
                .ok_or("socket closed")??;
            if let Message::Text(text) = frame {
                let v: Value = serde_json::from_str(&text)?;
                if v["op"] == op {
                    return Ok(v);
                }
                self.seen.push(v);
            }
        }
    }

    /// Joins `room` (replaying after `since`) and returns the `joined` answer.
    ///
    /// # Errors
    ///
    /// When no `joined` comes.
    pub async fn join(&mut self, room: &str, since: Option<u64>) -> TestResult<Value> {
        let mut frame = json!({"op": "join", "room": room});
        if let Some(s) = since {
            frame["since"] = json!(s);
        }
        self.send_json(frame).await?;
        self.expect("joined").await
    }

    /// Sends `text` to `room` and returns its `seq` (from the sender's own echo).
    ///
    /// # Errors
    ///
    /// When the echo does not come or the send is refused.
    pub async fn say(&mut self, room: &str, text: &str) -> TestResult<u64> {
        let cid = format!("c-{text}");
        self.send_json(json!({"op": "send", "room": room, "text": text, "cid": cid}))
            .await?;
        loop {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| "no echo within 15 s")?
                .ok_or("socket closed")??;
            let Message::Text(t) = frame else { continue };
            let v: Value = serde_json::from_str(&t)?;
            if v["op"] == "error" && v["cid"] == cid.as_str() {
                return Err(format!("send refused: {v}").into());
            }
            if v["op"] == "msg" && v["cid"] == cid.as_str() {
                return v["seq"].as_u64().ok_or_else(|| "msg without seq".into());
            }
            self.seen.push(v);
        }
    }
}

/// Connects over TLS to `addr` (an ingress on loopback) as `wss://HOST/ws?token=TOKEN`,
/// trusting `ca_pem`: the client sees the Ingress's host name, as through DNS.
///
/// # Errors
///
/// When the TCP, TLS or WebSocket handshake fails.
pub async fn connect_tls(
    addr: std::net::SocketAddr,
    host: &str,
    token: &str,
    ca_pem: &str,
) -> TestResult<WebSocketStream<MaybeTlsStream<TcpStream>>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async_tls_with_config(
            format!("wss://{host}/ws?token={token}"),
            tcp,
            None,
            Some(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(
                config,
            ))),
        ),
    )
    .await??;
    Ok(ws)
}
