use crate::error::TransportError;
use crate::handshake::CLUSTER_ID_BYTES_MAX;
use capkv_core::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

/// How many incoming connections may be open at once, authenticated or not.
/// A connection that has not finished its handshake holds a slot for at most
/// the handshake timeout, so junk connections cannot hold slots for long.
pub const INBOUND_CONNECTIONS_MAX: usize = 64;

/// The largest frame limit accepted: the length prefix has 32 bits.
const FRAME_BYTES_MAX_LIMIT: usize = u32::MAX as usize;

/// Everything a transport needs to know at start.
#[derive(Clone)]
pub struct TransportConfig {
    /// This node; sent in the handshake so the acceptor knows who is talking.
    pub node_id: NodeId,
    /// Where to listen for the peers' connections (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Every other node of the cluster and where it listens. Excludes this
    /// node. Messages can be sent to, and accepted from, only these nodes.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Names the cluster, so that two clusters sharing a secret by mistake
    /// still refuse each other.
    pub cluster_id: String,
    /// The shared secret that authenticates a connecting node.
    pub cluster_secret: String,
    /// Largest frame payload accepted or sent, in bytes.
    pub frame_bytes_max: usize,
    /// Bound of each peer's outgoing queue; more messages are dropped.
    pub peer_queue_messages_max: usize,
    /// First reconnect delay after a failure, before jitter.
    pub reconnect_backoff_min_ms: u64,
    /// Reconnect delays double after each failure up to this bound.
    pub reconnect_backoff_max_ms: u64,
}

impl TransportConfig {
    /// Default frame payload limit: 16 MiB.
    pub const FRAME_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
    /// Default outgoing queue bound per peer.
    pub const PEER_QUEUE_MESSAGES_MAX_DEFAULT: usize = 4096;
    /// Default first reconnect delay.
    pub const RECONNECT_BACKOFF_MIN_MS_DEFAULT: u64 = 20;
    /// Default largest reconnect delay.
    pub const RECONNECT_BACKOFF_MAX_MS_DEFAULT: u64 = 1000;

    /// A configuration with the default limits.
    pub fn new(
        node_id: NodeId,
        listen: SocketAddr,
        peers: BTreeMap<NodeId, SocketAddr>,
        cluster_id: impl Into<String>,
        cluster_secret: impl Into<String>,
    ) -> TransportConfig {
        TransportConfig {
            node_id,
            listen,
            peers,
            cluster_id: cluster_id.into(),
            cluster_secret: cluster_secret.into(),
            frame_bytes_max: Self::FRAME_BYTES_MAX_DEFAULT,
            peer_queue_messages_max: Self::PEER_QUEUE_MESSAGES_MAX_DEFAULT,
            reconnect_backoff_min_ms: Self::RECONNECT_BACKOFF_MIN_MS_DEFAULT,
            reconnect_backoff_max_ms: Self::RECONNECT_BACKOFF_MAX_MS_DEFAULT,
        }
    }

    /// Rejects settings that break a limit or contradict each other.
    pub fn validate(&self) -> Result<(), TransportError> {
        let invalid = |reason: String| Err(TransportError::InvalidConfig(reason));
        if self.node_id.0 == 0 {
            return invalid("node_id 0 means \"none\" and cannot name a node".into());
        }
        if self.peers.contains_key(&self.node_id) {
            return invalid(format!(
                "peers must not contain this node ({})",
                self.node_id
            ));
        }
        if self.peers.contains_key(&NodeId(0)) {
            return invalid("peers must not contain node 0".into());
        }
        if self.cluster_id.is_empty() || self.cluster_id.len() > CLUSTER_ID_BYTES_MAX {
            return invalid(format!(
                "cluster_id must have 1 to {CLUSTER_ID_BYTES_MAX} bytes, has {}",
                self.cluster_id.len()
            ));
        }
        if self.cluster_secret.is_empty() {
            return invalid("cluster_secret must not be empty".into());
        }
        if self.frame_bytes_max == 0 || self.frame_bytes_max > FRAME_BYTES_MAX_LIMIT {
            return invalid(format!(
                "frame_bytes_max must be 1 to {FRAME_BYTES_MAX_LIMIT}, is {}",
                self.frame_bytes_max
            ));
        }
        if self.peer_queue_messages_max == 0 {
            return invalid("peer_queue_messages_max must be at least 1".into());
        }
        if self.reconnect_backoff_min_ms == 0
            || self.reconnect_backoff_min_ms > self.reconnect_backoff_max_ms
        {
            return invalid(format!(
                "reconnect backoff needs 0 < min ({} ms) <= max ({} ms)",
                self.reconnect_backoff_min_ms, self.reconnect_backoff_max_ms
            ));
        }
        Ok(())
    }
}

/// Hand-written so that the secret never reaches a log.
impl fmt::Debug for TransportConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("TransportConfig")
            .field("node_id", &self.node_id)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("cluster_id", &self.cluster_id)
            .field("cluster_secret", &"<redacted>")
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("peer_queue_messages_max", &self.peer_queue_messages_max)
            .field("reconnect_backoff_min_ms", &self.reconnect_backoff_min_ms)
            .field("reconnect_backoff_max_ms", &self.reconnect_backoff_max_ms)
            .finish()
    }
}

/// The nemesis's rule for one outgoing link. The default rule lets every
/// message through at once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkRule {
    /// Drop every message on the link (a partition in this direction).
    pub blocked: bool,
    /// Deliver each message this long after it was sent. Order on the link
    /// is kept, so a message never overtakes an earlier, longer-delayed one.
    pub delay_ms: u64,
    /// Drop this fraction of messages (0 keeps all, 1 drops all).
    pub drop_probability: f64,
}

impl LinkRule {
    /// True when the rule changes nothing.
    pub fn is_pass_through(&self) -> bool {
        *self == LinkRule::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TransportConfig {
        let peers = BTreeMap::from([(NodeId(2), "127.0.0.1:2".parse().unwrap())]);
        TransportConfig::new(NodeId(1), "127.0.0.1:1".parse().unwrap(), peers, "c", "s")
    }

    #[test]
    fn defaults_are_valid() {
        config().validate().unwrap();
    }

    #[test]
    fn contradictions_are_rejected() {
        let mut self_peer = config();
        self_peer
            .peers
            .insert(NodeId(1), "127.0.0.1:3".parse().unwrap());
        let mut backoff = config();
        backoff.reconnect_backoff_min_ms = 2000;
        let mut empty_secret = config();
        empty_secret.cluster_secret.clear();
        let mut zero_frame = config();
        zero_frame.frame_bytes_max = 0;
        let mut zero_queue = config();
        zero_queue.peer_queue_messages_max = 0;
        let mut long_cluster = config();
        long_cluster.cluster_id = "x".repeat(CLUSTER_ID_BYTES_MAX + 1);
        for bad in [
            self_peer,
            backoff,
            empty_secret,
            zero_frame,
            zero_queue,
            long_cluster,
        ] {
            assert!(bad.validate().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn debug_redacts_the_secret() {
        let mut config = config();
        config.cluster_secret = "hunter2".into();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
