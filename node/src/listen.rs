//! The node's listening sockets, with an accept queue deep enough for a reconnect burst.
//!
//! When a node is drained and exits, its clients are told `reconnect` and come back on the
//! remaining nodes at once, together with the clients of other drained nodes. With the usual
//! queue of 1,024 pending connections (tokio's default), a burst of a few thousand overflows
//! it: the kernel drops the SYNs it cannot queue, and those clients send theirs again only after
//! TCP's initial retransmission timeout of one second, a room's longest pause in a scale-down
//! (see docs/data-path.md).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Pending connections the kernel may queue on a listener before the node accepts them. The
/// kernel caps it at `net.core.somaxconn` (4,096 on current Linux).
pub const ACCEPT_BACKLOG: u32 = 4096;

/// Bind and listen on `addr` with an accept queue of [`ACCEPT_BACKLOG`].
///
/// # Errors
/// The socket cannot be created or bound (address in use, no permission).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted node can take its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_bound_here_accepts_connections() {
        let listener = bind("127.0.0.1:0".parse().expect("a literal address")).expect("bind");
        let addr = listener.local_addr().expect("bound address");
        let client = tokio::net::TcpStream::connect(addr);
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        assert!(accepted.is_ok() && connected.is_ok());
    }
}
