//! How a peer link's frames travel: the one seam between the link layer and the network.
//!
//! A link ([`super::link::PeerLink`]) and its handshake only ever see a sink of frames out and
//! a stream of frames in. In a running node those are a WebSocket over TCP
//! ([`WebSocketDialer`], and `/peer` on the accepting side); the cluster simulation
//! (`testing/sim`) passes in-memory ones with the delays, losses and partitions it chooses,
//! through [`Dialer`] and [`super::Peers::accept_frames`].

use std::pin::Pin;

use bytes::Bytes;
use futures_util::future::{BoxFuture, ready};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite::Message as TungMessage;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{HANDSHAKE_TIMEOUT, READ_BUFFER};
use crate::error::{Error, Result};

/// Frames a link sends. A failed send ends the connection (the link reconnects and resends).
pub type FrameSink = Pin<Box<dyn Sink<Vec<u8>, Error = std::io::Error> + Send>>;

/// Frames a link receives; the stream ends with the connection.
pub type FrameStream = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// How this node opens a connection to a peer's internal listener.
pub trait Dialer: Send + Sync + 'static {
    /// A connection to the peer listening at `addr` (its `peer_addr` in the table).
    ///
    /// # Errors
    /// [`Error::PeerConnect`] or [`Error::HandshakeTimeout`] when it cannot be opened.
    fn dial<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<(FrameSink, FrameStream)>>;
}

/// A WebSocket to `ws://ADDR/peer`: what a node uses.
#[derive(Debug, Default)]
pub struct WebSocketDialer;

impl Dialer for WebSocketDialer {
    fn dial<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<(FrameSink, FrameStream)>> {
        Box::pin(async move {
            let url = format!("ws://{addr}/peer");
            let (ws, _) = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                tokio_tungstenite::connect_async_with_config(
                    &url,
                    Some(WebSocketConfig::default().read_buffer_size(READ_BUFFER)),
                    true,
                ),
            )
            .await
            .map_err(|_| Error::HandshakeTimeout)?
            .map_err(|e| Error::PeerConnect {
                addr: addr.to_owned(),
                source: Box::new(e),
            })?;
            let (sink, stream) = ws.split();
            let stream = stream.filter_map(|m| {
                ready(match m {
                    Ok(TungMessage::Binary(bytes)) => Some(bytes),
                    _ => None,
                })
            });
            let sink = sink
                .sink_map_err(std::io::Error::other)
                .with(|bytes: Vec<u8>| ready(Ok(TungMessage::Binary(bytes.into()))));
            let sink: FrameSink = Box::pin(sink);
            let stream: FrameStream = Box::pin(stream);
            Ok((sink, stream))
        })
    }
}
