use capkv_core::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// A snapshot of one peer's counters. Counters only grow; the two booleans
/// say what is up right now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerMetrics {
    /// This node's outgoing connection to the peer is authenticated and open.
    pub connected: bool,
    /// An authenticated connection from the peer is open.
    pub inbound_connected: bool,
    /// Messages written to the peer's socket.
    pub messages_sent: u64,
    /// Messages dropped because the peer's outgoing queue was full.
    pub messages_dropped_queue_full: u64,
    /// Messages dropped by a link rule (blocked or drop probability).
    pub messages_dropped_link_rule: u64,
    /// Messages dropped because they did not encode or exceeded the frame
    /// limit.
    pub messages_dropped_encode: u64,
    /// Frame bytes written to the peer's socket, headers included.
    pub bytes_sent: u64,
    /// Frames received from the peer and decoded.
    pub frames_received: u64,
    /// Incoming handshakes that claimed to be this peer but carried a wrong
    /// MAC. Refusals that name no peer count only in
    /// [`TransportMetrics::handshake_failures`].
    pub handshake_failures: u64,
    /// Bad frames on authenticated connections from the peer (too large,
    /// empty, or undecodable); each closed its connection.
    pub decode_failures: u64,
    /// Outgoing connections that completed their handshake.
    pub connects: u64,
    /// Outgoing connection attempts that failed (refused, timed out, or
    /// rejected by the peer).
    pub connect_failures: u64,
}

/// A snapshot of the whole transport's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportMetrics {
    /// One entry per configured peer.
    pub peers: BTreeMap<NodeId, PeerMetrics>,
    /// Every refused incoming handshake, whoever it claimed to be.
    pub handshake_failures: u64,
    /// Incoming TCP connections accepted (before their handshake).
    pub connections_accepted: u64,
}

/// The live counters behind [`PeerMetrics`], updated without locks.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub(crate) connected: AtomicBool,
    pub(crate) inbound_connections: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) messages_dropped_queue_full: AtomicU64,
    pub(crate) messages_dropped_link_rule: AtomicU64,
    pub(crate) messages_dropped_encode: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) frames_received: AtomicU64,
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) decode_failures: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
}

/// Adds to a counter. Relaxed: counters order nothing else.
pub(crate) fn add(counter: &AtomicU64, amount: u64) {
    counter.fetch_add(amount, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl PeerCounters {
    pub(crate) fn snapshot(&self) -> PeerMetrics {
        PeerMetrics {
            connected: self.connected.load(Ordering::Relaxed),
            inbound_connected: get(&self.inbound_connections) > 0,
            messages_sent: get(&self.messages_sent),
            messages_dropped_queue_full: get(&self.messages_dropped_queue_full),
            messages_dropped_link_rule: get(&self.messages_dropped_link_rule),
            messages_dropped_encode: get(&self.messages_dropped_encode),
            bytes_sent: get(&self.bytes_sent),
            frames_received: get(&self.frames_received),
            handshake_failures: get(&self.handshake_failures),
            decode_failures: get(&self.decode_failures),
            connects: get(&self.connects),
            connect_failures: get(&self.connect_failures),
        }
    }
}

/// The live counters behind the transport-wide fields of
/// [`TransportMetrics`].
#[derive(Debug, Default)]
pub(crate) struct TransportCounters {
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
}

impl TransportCounters {
    pub(crate) fn snapshot(&self, peers: BTreeMap<NodeId, PeerMetrics>) -> TransportMetrics {
        TransportMetrics {
            peers,
            handshake_failures: get(&self.handshake_failures),
            connections_accepted: get(&self.connections_accepted),
        }
    }
}
