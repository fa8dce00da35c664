use capkv_core::NodeId;
use std::net::SocketAddr;

/// What can go wrong when starting or using a [`crate::Transport`].
///
/// Trouble on one connection (a bad frame, a failed handshake, a lost peer)
/// is not an error of the transport: it is logged, counted in the metrics,
/// and the connection is closed or retried.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The configuration contradicts itself or breaks a limit.
    #[error("invalid transport configuration: {0}")]
    InvalidConfig(String),
    /// The listening socket could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address from the configuration.
        address: SocketAddr,
        /// Why the operating system refused.
        #[source]
        source: std::io::Error,
    },
    /// The destination is not in the configured peer set.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// The transport has shut down and accepts no more messages.
    #[error("the transport has shut down")]
    ShutDown,
    /// The operating system's random source failed.
    #[error("no randomness from the operating system: {0}")]
    Entropy(String),
}
