//! The server side of the WebSocket opening handshake (RFC 6455 section 4.2), on top of
//! hyper's HTTP upgrade: check the request, answer `101 Switching Protocols`, and once hyper
//! lets go of the connection collect whatever it read past the request.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Take a WebSocket upgrade request apart: the `Sec-WebSocket-Accept` value to answer with and
/// the upgrade to await once the answer is sent.
///
/// # Errors
/// What to answer instead: 405 for a method other than GET, 400 for a request that is not a
/// version 13 WebSocket upgrade, 426 when the connection cannot be upgraded.
pub fn accept(
    method: &Method,
    headers: &HeaderMap,
    extensions: &mut axum::http::Extensions,
) -> Result<(HeaderValue, OnUpgrade), NotUpgraded> {
    if method != Method::GET {
        return Err(NotUpgraded(
            StatusCode::METHOD_NOT_ALLOWED,
            "a websocket upgrade is a GET",
        ));
    }
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(bad_request("not a websocket upgrade request"));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION) != Some(&HeaderValue::from_static("13")) {
        return Err(bad_request("websocket version 13 is required"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(bad_request("`Sec-WebSocket-Key` header missing"));
    };
    let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) else {
        return Err(bad_request("invalid `Sec-WebSocket-Key`"));
    };
    let Some(upgrade) = extensions.remove::<OnUpgrade>() else {
        return Err(NotUpgraded(
            StatusCode::UPGRADE_REQUIRED,
            "connection cannot be upgraded",
        ));
    };
    Ok((accept, upgrade))
}

/// A request that is not a WebSocket upgrade the node can accept: the status and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUpgraded(pub StatusCode, pub &'static str);

impl IntoResponse for NotUpgraded {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn bad_request(message: &'static str) -> NotUpgraded {
    NotUpgraded(StatusCode::BAD_REQUEST, message)
}

/// The `101 Switching Protocols` answer.
pub fn switching_protocols(accept: HeaderValue) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// At most this much is taken from hyper's buffer: a client has no business sending more
/// before it saw the 101 (past it, the stream reads as broken framing and is closed).
const MAX_EARLY_BYTES: usize = 64 * 1024;

/// What hyper read past the upgrade request (a client may send frames without waiting for the
/// 101), taken without waiting: the rest is read from the socket itself.
pub fn already_read(upgraded: Upgraded) -> Vec<u8> {
    let mut io = TokioIo::new(upgraded);
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    while read.len() < MAX_EARLY_BYTES
        && let Some(Ok(n @ 1..)) = io.read(&mut chunk).now_or_never()
    {
        read.extend_from_slice(&chunk[..n]);
    }
    read
}
