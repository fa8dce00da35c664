//! The handshake that authenticates a connecting node (DESIGN §6, §9).
//!
//! 1. The acceptor sends [`NONCE_BYTES`] random bytes, fresh for every
//!    connection, so a recorded hello cannot be replayed.
//! 2. The connector answers with one frame holding a postcard [`Hello`] of at
//!    most [`HELLO_BYTES_MAX`] bytes. Its `mac` is
//!    HMAC-SHA256(cluster_secret, nonce || cluster_id || node_id as 8
//!    big-endian bytes); the node id has a fixed width, so the concatenation
//!    is unambiguous.
//! 3. The acceptor checks, in this order, the protocol version, the cluster
//!    id, that the node id is a known peer, and the MAC (compared in constant
//!    time). On success it sends the single byte [`HANDSHAKE_ACCEPTED`], so
//!    the connector knows its link is up; on any failure it logs the reason
//!    and closes the connection without saying why.
//!
//! The whole exchange must finish within [`HANDSHAKE_TIMEOUT_MS`].

use crate::frame::{encode_frame, FrameReader, ReadFrameError};
use capkv_core::NodeId;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fmt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this build speaks. A change to any message's
/// encoding bumps it, so that nodes of different builds refuse each other at
/// the handshake instead of misreading frames. 2: `Forwarded` carries the
/// index of the write it answers.
pub const PROTOCOL_VERSION: u32 = 2;
/// Length of the acceptor's challenge.
pub const NONCE_BYTES: usize = 32;
/// Length of an HMAC-SHA256 tag.
pub const MAC_BYTES: usize = 32;
/// Largest hello frame payload accepted: a cluster id of
/// [`CLUSTER_ID_BYTES_MAX`] bytes plus small fixed fields fit with room.
pub const HELLO_BYTES_MAX: usize = 512;
/// Longest cluster id, in bytes.
pub const CLUSTER_ID_BYTES_MAX: usize = 256;
/// Bound on the whole handshake, from TCP connect to acceptance.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 2000;
/// The acceptor's one-byte answer to a valid hello.
pub const HANDSHAKE_ACCEPTED: u8 = 1;

/// A random challenge from the acceptor.
pub type Nonce = [u8; NONCE_BYTES];

/// The connector's answer to the nonce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Must equal [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// Must equal the acceptor's cluster id.
    pub cluster_id: String,
    /// The connecting node; must be one of the acceptor's peers.
    pub node_id: NodeId,
    /// Proves knowledge of the cluster secret; see [`hello_mac`].
    pub mac: [u8; MAC_BYTES],
}

impl Hello {
    /// The hello a node with this identity sends in answer to `nonce`.
    pub fn new(cluster_secret: &str, nonce: &Nonce, cluster_id: &str, node_id: NodeId) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: cluster_id.to_owned(),
            node_id,
            mac: hello_mac(cluster_secret, nonce, cluster_id, node_id),
        }
    }
}

/// HMAC-SHA256(cluster_secret, nonce || cluster_id || node_id big-endian).
pub fn hello_mac(
    cluster_secret: &str,
    nonce: &Nonce,
    cluster_id: &str,
    node_id: NodeId,
) -> [u8; MAC_BYTES] {
    mac_state(cluster_secret, nonce, cluster_id, node_id)
        .finalize()
        .into_bytes()
        .into()
}

fn mac_state(
    cluster_secret: &str,
    nonce: &Nonce,
    cluster_id: &str,
    node_id: NodeId,
) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cluster_secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(nonce);
    mac.update(cluster_id.as_bytes());
    mac.update(&node_id.0.to_be_bytes());
    mac
}

/// Why an acceptor refused a connection, or a connector gave up on one.
#[derive(Debug)]
pub(crate) enum HandshakeFailure {
    /// The hello named another protocol version.
    BadVersion { received: u32 },
    /// The hello named another cluster.
    WrongCluster { received: String },
    /// The hello named a node that is not a configured peer.
    UnknownNode(NodeId),
    /// The MAC did not match: the connector does not know the secret.
    WrongSecret(NodeId),
    /// The hello frame was missing, too large, or did not decode.
    MalformedHello(String),
    /// The acceptor closed the connection or answered something other than
    /// [`HANDSHAKE_ACCEPTED`].
    RejectedByAcceptor,
    /// The operating system gave no random nonce.
    Entropy(String),
    /// The socket failed.
    Io(std::io::Error),
}

impl HandshakeFailure {
    /// The peer this failure can be charged to, when the hello named one of
    /// the configured peers.
    pub(crate) fn claimed_peer(&self) -> Option<NodeId> {
        match self {
            HandshakeFailure::WrongSecret(node_id) => Some(*node_id),
            _ => None,
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeFailure::BadVersion { received } => write!(
                formatter,
                "bad version: protocol version {received}, expected {PROTOCOL_VERSION}"
            ),
            HandshakeFailure::WrongCluster { received } => {
                write!(formatter, "wrong cluster: cluster id {received:?}")
            }
            HandshakeFailure::UnknownNode(node_id) => {
                write!(formatter, "unknown node: {node_id} is not a peer")
            }
            HandshakeFailure::WrongSecret(node_id) => {
                write!(formatter, "wrong secret: bad MAC from {node_id}")
            }
            HandshakeFailure::MalformedHello(reason) => {
                write!(formatter, "malformed hello: {reason}")
            }
            HandshakeFailure::RejectedByAcceptor => {
                write!(formatter, "the acceptor refused the hello")
            }
            HandshakeFailure::Entropy(reason) => write!(formatter, "no random nonce: {reason}"),
            HandshakeFailure::Io(error) => write!(formatter, "i/o: {error}"),
        }
    }
}

impl From<std::io::Error> for HandshakeFailure {
    fn from(error: std::io::Error) -> Self {
        HandshakeFailure::Io(error)
    }
}

/// What the acceptor knows about its cluster, to check a hello against.
pub(crate) struct Expected<'a> {
    pub(crate) cluster_id: &'a str,
    pub(crate) cluster_secret: &'a str,
    pub(crate) peers: &'a BTreeMap<NodeId, std::net::SocketAddr>,
}

/// Checks a hello; returns the authenticated peer. Pure, so every refusal
/// reason is unit tested.
pub(crate) fn verify_hello(
    hello: &Hello,
    nonce: &Nonce,
    expected: &Expected<'_>,
) -> Result<NodeId, HandshakeFailure> {
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(HandshakeFailure::BadVersion {
            received: hello.protocol_version,
        });
    }
    if hello.cluster_id != expected.cluster_id {
        return Err(HandshakeFailure::WrongCluster {
            received: hello.cluster_id.clone(),
        });
    }
    if !expected.peers.contains_key(&hello.node_id) {
        return Err(HandshakeFailure::UnknownNode(hello.node_id));
    }
    mac_state(
        expected.cluster_secret,
        nonce,
        expected.cluster_id,
        hello.node_id,
    )
    .verify_slice(&hello.mac)
    .map_err(|_| HandshakeFailure::WrongSecret(hello.node_id))?;
    Ok(hello.node_id)
}

/// A fresh random nonce from the operating system.
pub(crate) fn random_nonce() -> Result<Nonce, HandshakeFailure> {
    let mut nonce = [0; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|error| HandshakeFailure::Entropy(error.to_string()))?;
    Ok(nonce)
}

/// The acceptor's side. On success the reader is positioned after the
/// handshake, ready for message frames. The caller bounds the time.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut FrameReader<S>,
    expected: &Expected<'_>,
) -> Result<NodeId, HandshakeFailure> {
    let nonce = random_nonce()?;
    reader.get_mut().write_all(&nonce).await?;
    let payload = match reader.read_frame(HELLO_BYTES_MAX).await {
        Ok(Some(payload)) => payload,
        Ok(None) => {
            return Err(HandshakeFailure::MalformedHello(
                "closed before hello".into(),
            ))
        }
        Err(ReadFrameError::Io(error)) => return Err(HandshakeFailure::Io(error)),
        Err(error) => return Err(HandshakeFailure::MalformedHello(error.to_string())),
    };
    let hello = decode_exact::<Hello>(&payload).map_err(HandshakeFailure::MalformedHello)?;
    let peer = verify_hello(&hello, &nonce, expected)?;
    reader.get_mut().write_all(&[HANDSHAKE_ACCEPTED]).await?;
    Ok(peer)
}

/// The connector's side. The caller bounds the time.
pub(crate) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    cluster_secret: &str,
    cluster_id: &str,
    node_id: NodeId,
) -> Result<(), HandshakeFailure> {
    let mut nonce = [0; NONCE_BYTES];
    stream.read_exact(&mut nonce).await?;
    let hello = Hello::new(cluster_secret, &nonce, cluster_id, node_id);
    let payload = postcard::to_allocvec(&hello)
        .map_err(|error| HandshakeFailure::MalformedHello(error.to_string()))?;
    let mut frame = Vec::with_capacity(payload.len() + crate::frame::FRAME_HEADER_BYTES);
    encode_frame(&payload, &mut frame, HELLO_BYTES_MAX)
        .map_err(|error| HandshakeFailure::MalformedHello(error.to_string()))?;
    stream.write_all(&frame).await?;
    let mut answer = [0; 1];
    match stream.read(&mut answer).await? {
        1 if answer[0] == HANDSHAKE_ACCEPTED => Ok(()),
        _ => Err(HandshakeFailure::RejectedByAcceptor),
    }
}

/// Decodes a whole payload; trailing bytes mean the peer and this node
/// disagree about the format, so they are refused too.
pub(crate) fn decode_exact<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    let (value, rest) = postcard::take_from_bytes::<T>(payload).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes after the message", rest.len()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: Nonce = [7; NONCE_BYTES];

    fn peers() -> BTreeMap<NodeId, std::net::SocketAddr> {
        BTreeMap::from([(NodeId(2), "127.0.0.1:2".parse().unwrap())])
    }

    fn check(hello: &Hello) -> Result<NodeId, HandshakeFailure> {
        let peers = peers();
        let expected = Expected {
            cluster_id: "cluster",
            cluster_secret: "secret",
            peers: &peers,
        };
        verify_hello(hello, &NONCE, &expected)
    }

    #[test]
    fn a_correct_hello_names_the_peer() {
        let hello = Hello::new("secret", &NONCE, "cluster", NodeId(2));
        assert_eq!(check(&hello).unwrap(), NodeId(2));
    }

    #[test]
    fn a_wrong_secret_is_refused() {
        let hello = Hello::new("guess", &NONCE, "cluster", NodeId(2));
        assert!(matches!(
            check(&hello),
            Err(HandshakeFailure::WrongSecret(NodeId(2)))
        ));
    }

    #[test]
    fn a_mac_for_another_nonce_is_refused() {
        let hello = Hello::new("secret", &[8; NONCE_BYTES], "cluster", NodeId(2));
        assert!(matches!(
            check(&hello),
            Err(HandshakeFailure::WrongSecret(_))
        ));
    }

    #[test]
    fn a_wrong_cluster_is_refused() {
        let hello = Hello::new("secret", &NONCE, "other", NodeId(2));
        assert!(matches!(
            check(&hello),
            Err(HandshakeFailure::WrongCluster { .. })
        ));
    }

    #[test]
    fn an_unknown_node_is_refused() {
        let hello = Hello::new("secret", &NONCE, "cluster", NodeId(9));
        assert!(matches!(
            check(&hello),
            Err(HandshakeFailure::UnknownNode(NodeId(9)))
        ));
    }

    #[test]
    fn a_bad_version_is_refused() {
        // A newer build, and an older one.
        for version in [PROTOCOL_VERSION + 1, PROTOCOL_VERSION - 1] {
            let mut hello = Hello::new("secret", &NONCE, "cluster", NodeId(2));
            hello.protocol_version = version;
            assert!(matches!(
                check(&hello),
                Err(HandshakeFailure::BadVersion { received }) if received == version
            ));
        }
    }

    #[test]
    fn a_mac_stolen_for_another_node_is_refused() {
        let mut hello = Hello::new("secret", &NONCE, "cluster", NodeId(3));
        hello.node_id = NodeId(2);
        assert!(matches!(
            check(&hello),
            Err(HandshakeFailure::WrongSecret(_))
        ));
    }

    #[test]
    fn the_largest_hello_fits_its_frame_limit() {
        let cluster_id = "c".repeat(CLUSTER_ID_BYTES_MAX);
        let hello = Hello::new("secret", &NONCE, &cluster_id, NodeId(u64::MAX));
        let bytes = postcard::to_allocvec(&hello).unwrap();
        assert!(bytes.len() <= HELLO_BYTES_MAX, "{} bytes", bytes.len());
    }

    #[test]
    fn trailing_bytes_do_not_decode() {
        let mut bytes = postcard::to_allocvec(&5u32).unwrap();
        assert_eq!(decode_exact::<u32>(&bytes), Ok(5));
        bytes.push(0);
        assert!(decode_exact::<u32>(&bytes).is_err());
    }

    #[tokio::test]
    async fn the_two_sides_agree_over_a_pipe() {
        let (acceptor_end, mut connector_end) = tokio::io::duplex(1024);
        let peers = peers();
        let acceptor = async {
            let mut reader = FrameReader::new(acceptor_end);
            let expected = Expected {
                cluster_id: "cluster",
                cluster_secret: "secret",
                peers: &peers,
            };
            accept(&mut reader, &expected).await
        };
        let connector = connect(&mut connector_end, "secret", "cluster", NodeId(2));
        let (accepted, connected) = tokio::join!(acceptor, connector);
        assert_eq!(accepted.unwrap(), NodeId(2));
        connected.unwrap();
    }

    #[tokio::test]
    async fn the_connector_learns_of_a_refusal() {
        let (acceptor_end, mut connector_end) = tokio::io::duplex(1024);
        let peers = peers();
        let acceptor = async {
            let mut reader = FrameReader::new(acceptor_end);
            let expected = Expected {
                cluster_id: "cluster",
                cluster_secret: "secret",
                peers: &peers,
            };
            let result = accept(&mut reader, &expected).await;
            drop(reader);
            result
        };
        let connector = connect(&mut connector_end, "wrong", "cluster", NodeId(2));
        let (accepted, connected) = tokio::join!(acceptor, connector);
        assert!(matches!(accepted, Err(HandshakeFailure::WrongSecret(_))));
        assert!(matches!(
            connected,
            Err(HandshakeFailure::RejectedByAcceptor)
        ));
    }
}
