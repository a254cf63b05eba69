//! The WebSocket layer of client connections, below `connection`: the HTTP upgrade
//! ([`upgrade`]), the sockets shared between hyper and the node ([`socket`]), framing both ways
//! ([`frame`]), and [`ClientStream`], which reads a client's messages straight off its socket.
//!
//! The node speaks WebSocket itself rather than through a WebSocket library so that a frame
//! delivered to a room is encoded once and written into each member's socket by the task
//! that delivers it (see `outbox`), with no task wake-up per delivery.

pub mod frame;
pub mod socket;
pub mod upgrade;

use std::io;
use std::sync::Arc;

use axum::extract::ws::Message;
use tokio::net::TcpStream;

use frame::{FrameError, FrameReader};

/// How much is read from a socket at a time (more when a larger frame is on its way).
const READ_CHUNK: usize = 2048;

/// Why a client's messages stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The client broke the framing rules (or the size limit).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket failed.
    #[error("socket read failed: {0}")]
    Io(#[from] io::Error),
}

/// A client's incoming messages, read off its socket. It holds no read buffer while the
/// connection is idle, which is most of the time for most connections.
#[derive(Debug)]
pub struct ClientStream {
    tcp: Arc<TcpStream>,
    frames: FrameReader,
}

impl ClientStream {
    /// Messages from `tcp`, after `already_read` (what the HTTP layer read past the upgrade
    /// request), refusing messages over `max_message` bytes.
    pub fn new(tcp: Arc<TcpStream>, already_read: &[u8], max_message: usize) -> ClientStream {
        let mut frames = FrameReader::new(max_message);
        frames.buffer().extend_from_slice(already_read);
        ClientStream { tcp, frames }
    }

    /// The next message; `Ok(None)` once the client closed the TCP stream. Cancel-safe: what
    /// was read stays buffered for the next call.
    ///
    /// # Errors
    /// [`ReadError`] when the bytes are not valid client framing or the socket fails.
    pub async fn next(&mut self) -> Result<Option<Message>, ReadError> {
        loop {
            if let Some(message) = self.frames.next_message()? {
                return Ok(Some(message));
            }
            if self.frames.is_idle() {
                self.frames.release();
                self.tcp.readable().await?;
            }
            let buffer = self.frames.buffer();
            if buffer.capacity() - buffer.len() < READ_CHUNK / 2 {
                buffer.reserve(READ_CHUNK);
            }
            match self.tcp.try_read_buf(buffer) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.tcp.readable().await?,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Write all of `bytes` to `tcp`, waiting for room as needed (used where nothing else can be
/// writing to the socket: a refused handshake's close frame).
///
/// # Errors
/// The socket's write error.
pub async fn write_all(tcp: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
