//! Client sockets the node can write to directly after the HTTP upgrade.
//!
//! HTTP (the handshake, the chat page, probes) is served by axum and hyper, which own each
//! connection's I/O object until a WebSocket upgrade hands it back wrapped. To write delivered
//! frames straight into a client's socket from whichever task delivers them, the client
//! listener yields [`ClientIo`]: the TCP stream behind an `Arc`, readable and writable through
//! a shared reference (tokio's `try_read`/`try_write` take `&self`). Every request carries a
//! second handle to it as a [`ClientSocket`] connect-info extension, which the `/ws` handler
//! keeps once the upgrade is done.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The client listener: accepted sockets get no Nagle delay (chat frames are small and
/// latency-bound) and are shared as [`ClientIo`].
#[derive(Debug)]
pub struct ClientListener(pub TcpListener);

impl Listener for ClientListener {
    type Io = ClientIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ClientIo, SocketAddr) {
        let (tcp, addr) = Listener::accept(&mut self.0).await;
        let _ = tcp.set_nodelay(true);
        (ClientIo(Arc::new(tcp)), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Listener::local_addr(&self.0)
    }
}

/// An accepted client socket, shared between hyper (until the upgrade) and the connection.
#[derive(Debug, Clone)]
pub struct ClientIo(pub Arc<TcpStream>);

/// The socket a request arrived on, as a connect-info extension of every request.
#[derive(Debug, Clone)]
pub struct ClientSocket {
    /// The TCP stream itself.
    pub tcp: Arc<TcpStream>,
    /// The client's address.
    pub peer: SocketAddr,
}

impl Connected<IncomingStream<'_, ClientListener>> for ClientSocket {
    fn connect_info(stream: IncomingStream<'_, ClientListener>) -> ClientSocket {
        ClientSocket {
            tcp: stream.io().0.clone(),
            peer: *stream.remote_addr(),
        }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(shutdown_write(&self.0))
    }
}

/// Half-close the socket (FIN) through a shared reference.
pub fn shutdown_write(tcp: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}
