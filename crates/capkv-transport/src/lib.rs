//! Node-to-node TCP transport of capkv, generic over the message type.
//!
//! What it is: the runtime piece that carries serde messages between the
//! nodes of one cluster (DESIGN §6). Every node opens one outgoing TCP
//! connection to each peer and only writes on it; every incoming connection
//! is only read. A message travels as one length-delimited frame: a 4-byte
//! big-endian payload length, then the postcard encoding of the message.
//!
//! Contracts, in the order a message meets them:
//!
//! 1. [`Transport::send`] never blocks. It applies the link rule of the
//!    outgoing link (blocked, drop probability, delay), then queues the
//!    message for that peer's writer task. A full queue drops the message and
//!    counts it: Raft tolerates loss, and a slow peer must not stall the node.
//! 2. A writer task owns its peer's connection. It connects with exponential
//!    backoff and jitter, authenticates (see [`handshake`]), and then writes
//!    every queued message that is due as one batch with a single write, so a
//!    burst costs one system call per peer.
//! 3. Messages on one link arrive in the order they were sent, or not at all.
//!    A delayed message holds back the messages queued behind it.
//! 4. The acceptor reads only from connections whose handshake proved
//!    knowledge of the cluster secret (DESIGN §9). A frame that is too large,
//!    empty, or does not decode closes that one connection, is logged and is
//!    counted; it never stops the node and never panics.
//! 5. Decoded messages go to the `inbound` channel. A full channel stops the
//!    reader of that connection, which pushes back on the sending peer
//!    through TCP flow control.
//! 6. When the shutdown signal turns true (or its sender is dropped) every
//!    task ends and every socket closes.
//!
//! Layout: `config` (settings and link rules), `frame` (pure frame parsing
//! and the buffered frame reader), `handshake` (hello and its MAC), `writer`
//! (one task per peer), `acceptor` (accept loop and readers), `metrics`
//! (counters), `transport` (the handle).
//!
//! What it deliberately does not do: it does not encrypt (the secret
//! authenticates the connector to the acceptor, it does not hide traffic);
//! it does not authenticate the acceptor to the connector; it does not
//! retransmit, deduplicate or acknowledge messages (the protocols above it
//! own retries); it does not discover peers (the peer set is fixed at start).

#![warn(missing_docs)]

mod acceptor;
mod config;
mod error;
pub mod frame;
pub mod handshake;
mod metrics;
mod transport;
mod writer;

pub use config::{LinkRule, TransportConfig, INBOUND_CONNECTIONS_MAX};
pub use error::TransportError;
pub use metrics::{PeerMetrics, TransportMetrics};
pub use transport::Transport;
