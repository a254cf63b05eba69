//! The peer handshake, both sides in one place: each side proves it holds the cluster secret
//! by signing the other's fresh nonce, and each tells the other how far it got in its stream,
//! so that a new connection resends only what the last one lost.
//!
//! ```text
//! acceptor                                   dialer
//!    Challenge { node, incarnation, nonce_a } ->
//!    <- Proof { node, incarnation, mac(nonce_a), nonce_d, last_received }
//!    Welcome { mac(nonce_d), last_received } ->
//! ```
//!
//! Every step is bounded by a timeout, a frame of another wire version ends the handshake
//! with [`Error::PeerVersion`], and the MAC covers the format version, the role, the nonce and
//! the signer's name, so a proof cannot be replayed for another node, role or version. The
//! functions run over any `Sink`/`Stream` of binary messages, which is what the tests drive
//! with in-memory channels.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use shard::NodeName;

use super::wire::{PEER_WIRE_VERSION, PeerFrame};
use crate::error::{Error, Result};

/// The MAC's role for what the dialer signs.
pub const DIALER: &str = "dialer";
/// The MAC's role for what the acceptor signs.
pub const ACCEPTOR: &str = "acceptor";

/// Who this side is.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// This node.
    pub me: &'a NodeName,
    /// This process (a peer that sees a new one knows we restarted).
    pub incarnation: u64,
    /// The cluster secret.
    pub secret: &'a [u8],
    /// How long each step may take.
    pub timeout: Duration,
}

/// What a finished handshake learned about the other side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Met {
    /// The other node, proven.
    pub peer: NodeName,
    /// Its process.
    pub incarnation: u64,
    /// How far it got in this node's stream: resending starts after it.
    pub resume_from: u64,
}

/// The dialer's side, towards `dialed`. `meet(peer, incarnation)` is called once the acceptor
/// named itself and returns how far this node got in its stream (or refuses the peer).
///
/// # Errors
/// [`Error`] for a timeout, a closed connection, another version, another node than
/// `dialed`, or an acceptor that cannot prove the secret.
pub async fn dial<W, R>(
    me: Identity<'_>,
    dialed: &NodeName,
    sink: &mut W,
    stream: &mut R,
    meet: impl FnOnce(&NodeName, u64) -> Result<u64>,
) -> Result<Met>
where
    W: Sink<Vec<u8>> + Unpin,
    R: Stream<Item = Bytes> + Unpin,
{
    let PeerFrame::Challenge {
        node,
        incarnation,
        nonce,
    } = next(stream, me.timeout).await?
    else {
        return Err(Error::HandshakeUnexpected {
            expected: "challenge",
        });
    };
    if &node != dialed {
        return Err(Error::WrongPeer {
            dialed: dialed.clone(),
            answered: node,
        });
    }
    let last_received = meet(&node, incarnation)?;
    let my_nonce = nonce_hex();
    let proof = PeerFrame::Proof {
        node: me.me.clone(),
        incarnation: me.incarnation,
        mac: sign(me.secret, DIALER, &nonce, me.me),
        nonce: my_nonce.clone(),
        last_received,
    };
    send(sink, proof, me.timeout).await?;
    let PeerFrame::Welcome { mac, last_received } = next(stream, me.timeout).await? else {
        return Err(Error::HandshakeUnexpected {
            expected: "welcome",
        });
    };
    if !verify(me.secret, ACCEPTOR, &my_nonce, &node, &mac) {
        return Err(Error::PeerSecret { peer: node });
    }
    Ok(Met {
        peer: node,
        incarnation,
        resume_from: last_received,
    })
}

/// The acceptor's side. `meet(peer, incarnation)` is called once the dialer proved itself and
/// returns how far this node got in its stream (or refuses the peer).
///
/// # Errors
/// [`Error`] for a timeout, a closed connection, another version, or a dialer that cannot
/// prove the secret; the caller closes the connection with the reason.
pub async fn accept<W, R>(
    me: Identity<'_>,
    sink: &mut W,
    stream: &mut R,
    meet: impl FnOnce(&NodeName, u64) -> Result<u64>,
) -> Result<Met>
where
    W: Sink<Vec<u8>> + Unpin,
    R: Stream<Item = Bytes> + Unpin,
{
    let nonce = nonce_hex();
    let challenge = PeerFrame::Challenge {
        node: me.me.clone(),
        incarnation: me.incarnation,
        nonce: nonce.clone(),
    };
    send(sink, challenge, me.timeout).await?;
    let PeerFrame::Proof {
        node,
        incarnation,
        mac,
        nonce: their_nonce,
        last_received: resume_from,
    } = next(stream, me.timeout).await?
    else {
        return Err(Error::HandshakeUnexpected { expected: "proof" });
    };
    if !verify(me.secret, DIALER, &nonce, &node, &mac) {
        return Err(Error::PeerSecret { peer: node });
    }
    let last_received = meet(&node, incarnation)?;
    let welcome = PeerFrame::Welcome {
        mac: sign(me.secret, ACCEPTOR, &their_nonce, me.me),
        last_received,
    };
    send(sink, welcome, me.timeout).await?;
    Ok(Met {
        peer: node,
        incarnation,
        resume_from,
    })
}

async fn next<R>(stream: &mut R, timeout: Duration) -> Result<PeerFrame>
where
    R: Stream<Item = Bytes> + Unpin,
{
    let bytes = tokio::time::timeout(timeout, stream.next())
        .await
        .map_err(|_| Error::HandshakeTimeout)?
        .ok_or(Error::HandshakeClosed)?;
    Ok(PeerFrame::decode_shared(&bytes)?)
}

async fn send<W>(sink: &mut W, frame: PeerFrame, timeout: Duration) -> Result<()>
where
    W: Sink<Vec<u8>> + Unpin,
{
    match tokio::time::timeout(timeout, sink.send(frame.encode())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Error::HandshakeClosed),
        Err(_) => Err(Error::HandshakeTimeout),
    }
}

/// The MAC over what a handshake proves: protocol version, role, the other side's nonce, and
/// the signer's name (so a proof cannot be replayed for another node or role).
fn handshake_mac(secret: &[u8], role: &str, nonce: &str, node: &NodeName) -> Option<Hmac<Sha256>> {
    // HMAC accepts keys of any length, so this only fails on an impossible key.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    for part in [
        b"roomshard-peer".as_slice(),
        &[PEER_WIRE_VERSION],
        role.as_bytes(),
        nonce.as_bytes(),
        node.as_str().as_bytes(),
    ] {
        mac.update(part);
        mac.update(b"|");
    }
    Some(mac)
}

/// Sign `nonce` for `node` in `role` with the cluster secret (HMAC-SHA256, hex).
pub fn sign(secret: &[u8], role: &str, nonce: &str, node: &NodeName) -> String {
    handshake_mac(secret, role, nonce, node)
        .map(|mac| hex::encode(mac.finalize().into_bytes()))
        .unwrap_or_default()
}

/// Check a signature from [`sign`] in constant time.
pub fn verify(secret: &[u8], role: &str, nonce: &str, node: &NodeName, mac_hex: &str) -> bool {
    let Ok(expected) = hex::decode(mac_hex) else {
        return false;
    };
    handshake_mac(secret, role, nonce, node).is_some_and(|mac| mac.verify_slice(&expected).is_ok())
}

/// A fresh random nonce.
fn nonce_hex() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::wire::kind;
    use futures_util::stream::BoxStream;
    use tokio::sync::mpsc;
    use tokio_util::sync::PollSender;

    const STEP: Duration = Duration::from_secs(5);

    fn name(n: &str) -> NodeName {
        NodeName::new(n).expect("valid node name")
    }

    /// One direction of an in-memory connection.
    fn pipe() -> (PollSender<Vec<u8>>, BoxStream<'static, Bytes>) {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|bytes| (Bytes::from(bytes), rx))
        });
        (PollSender::new(tx), Box::pin(stream))
    }

    fn identity<'a>(me: &'a NodeName, secret: &'a [u8]) -> Identity<'a> {
        Identity {
            me,
            incarnation: 11,
            secret,
            timeout: STEP,
        }
    }

    /// Runs both sides against each other: (dialer's result, acceptor's result).
    async fn shake(dialer_secret: &[u8], acceptor_secret: &[u8]) -> (Result<Met>, Result<Met>) {
        let (d, a) = (name("node-a"), name("node-b"));
        let (mut to_acceptor, mut from_dialer) = pipe();
        let (mut to_dialer, mut from_acceptor) = pipe();
        let dialer = dial(
            Identity {
                incarnation: 7,
                ..identity(&d, dialer_secret)
            },
            &a,
            &mut to_acceptor,
            &mut from_acceptor,
            |_, _| Ok(3),
        );
        let acceptor = async {
            let met = accept(
                identity(&a, acceptor_secret),
                &mut to_dialer,
                &mut from_dialer,
                |_, _| Ok(5),
            )
            .await;
            // A refusing acceptor drops the connection: the dialer sees it close.
            drop(to_dialer);
            met
        };
        tokio::join!(dialer, acceptor)
    }

    #[tokio::test]
    async fn both_sides_with_the_secret_meet_and_learn_where_to_resume() {
        let (dialer, acceptor) = shake(b"s3cret", b"s3cret").await;
        assert_eq!(
            dialer.expect("dialer meets"),
            Met {
                peer: name("node-b"),
                incarnation: 11,
                resume_from: 5
            }
        );
        assert_eq!(
            acceptor.expect("acceptor meets"),
            Met {
                peer: name("node-a"),
                incarnation: 7,
                resume_from: 3
            }
        );
    }

    #[tokio::test]
    async fn a_dialer_without_the_secret_is_refused_by_name() {
        let (dialer, acceptor) = shake(b"wrong", b"s3cret").await;
        assert!(
            matches!(acceptor, Err(Error::PeerSecret { ref peer }) if peer.as_str() == "node-a"),
            "{acceptor:?}"
        );
        assert!(matches!(dialer, Err(Error::HandshakeClosed)), "{dialer:?}");
    }

    #[tokio::test]
    async fn a_dialer_frame_of_another_version_is_refused_naming_it() {
        let me = name("node-b");
        let (mut sink, _challenge) = pipe();
        let (mut to_acceptor, mut stream) = pipe();
        let mut proof = PeerFrame::Ack { seq: 1 }.encode();
        proof[0] = 1;
        to_acceptor.send(proof).await.expect("queued");
        let met = accept(identity(&me, b"s"), &mut sink, &mut stream, |_, _| Ok(0)).await;
        let err = met.expect_err("refused");
        assert!(matches!(err, Error::PeerVersion { found: 1 }));
        assert_eq!(
            err.to_string(),
            "peer speaks wire format version 1, this node speaks 2: refused"
        );
    }

    #[tokio::test]
    async fn an_acceptor_of_another_version_is_refused_by_the_dialer() {
        let me = name("node-a");
        let (mut sink, _proof) = pipe();
        let (mut to_dialer, mut stream) = pipe();
        to_dialer
            .send(vec![3, kind::CHALLENGE, 0])
            .await
            .expect("queued");
        let met = dial(
            identity(&me, b"s"),
            &name("node-b"),
            &mut sink,
            &mut stream,
            |_, _| Ok(0),
        )
        .await;
        assert!(
            matches!(met, Err(Error::PeerVersion { found: 3 })),
            "{met:?}"
        );
    }

    #[tokio::test]
    async fn a_dialer_that_reaches_another_node_gives_up() {
        let me = name("node-a");
        let (mut sink, _proof) = pipe();
        let (mut to_dialer, mut stream) = pipe();
        let challenge = PeerFrame::Challenge {
            node: name("node-z"),
            incarnation: 1,
            nonce: "n".into(),
        };
        to_dialer.send(challenge.encode()).await.expect("queued");
        let met = dial(
            identity(&me, b"s"),
            &name("node-b"),
            &mut sink,
            &mut stream,
            |_, _| Ok(0),
        )
        .await;
        assert!(matches!(met, Err(Error::WrongPeer { .. })), "{met:?}");
    }

    #[tokio::test]
    async fn a_proven_peer_that_meet_refuses_is_not_met() {
        let (d, a) = (name("node-a"), name("node-b"));
        let (mut to_acceptor, mut from_dialer) = pipe();
        let (mut to_dialer, mut from_acceptor) = pipe();
        let dialer = dial(
            identity(&d, b"s"),
            &a,
            &mut to_acceptor,
            &mut from_acceptor,
            |_, _| Ok(0),
        );
        let acceptor = async {
            let met = accept(
                identity(&a, b"s"),
                &mut to_dialer,
                &mut from_dialer,
                |peer, _| Err(Error::UnknownPeer { peer: peer.clone() }),
            )
            .await;
            drop(to_dialer);
            met
        };
        let (dialer, acceptor) = tokio::join!(dialer, acceptor);
        assert!(
            matches!(acceptor, Err(Error::UnknownPeer { .. })),
            "{acceptor:?}"
        );
        assert!(dialer.is_err(), "the dialer is not welcomed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stalls_times_the_handshake_out() {
        let me = name("node-b");
        let (mut sink, _challenge) = pipe();
        let mut silent = futures_util::stream::pending::<Bytes>();
        let met = accept(identity(&me, b"s"), &mut sink, &mut silent, |_, _| Ok(0)).await;
        assert!(matches!(met, Err(Error::HandshakeTimeout)), "{met:?}");
        let mut silent = futures_util::stream::pending::<Bytes>();
        let met = dial(
            identity(&me, b"s"),
            &name("node-c"),
            &mut sink,
            &mut silent,
            |_, _| Ok(0),
        )
        .await;
        assert!(matches!(met, Err(Error::HandshakeTimeout)), "{met:?}");
    }

    #[test]
    fn a_signature_verifies_only_with_the_same_secret_nonce_role_and_node() {
        let node = name("node-1");
        let other = name("node-2");
        let mac = sign(b"s3cret", "dialer", "abc", &node);
        assert!(verify(b"s3cret", "dialer", "abc", &node, &mac));
        assert!(!verify(b"other", "dialer", "abc", &node, &mac));
        assert!(!verify(b"s3cret", "acceptor", "abc", &node, &mac));
        assert!(!verify(b"s3cret", "dialer", "abd", &node, &mac));
        assert!(!verify(b"s3cret", "dialer", "abc", &other, &mac));
        assert!(!verify(b"s3cret", "dialer", "abc", &node, "not hex"));
    }
}
