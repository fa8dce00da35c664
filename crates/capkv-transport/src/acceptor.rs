//! The accept loop and the readers of incoming connections.

use crate::config::INBOUND_CONNECTIONS_MAX;
use crate::frame::{FrameReader, ReadFrameError};
use crate::handshake::{self, decode_exact, Expected, HandshakeFailure, HANDSHAKE_TIMEOUT_MS};
use crate::metrics::add;
use crate::transport::{lock, shutdown_requested, PeerState, Shared};
use capkv_core::NodeId;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep, timeout};

/// Pause after a failed `accept` (typically out of file descriptors), so the
/// loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// Accepts connections until shutdown. At most [`INBOUND_CONNECTIONS_MAX`]
/// are open at once; beyond that, new ones wait in the listen backlog.
pub(crate) async fn run_acceptor<M: DeserializeOwned + Send + 'static>(
    listener: TcpListener,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<(NodeId, M)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(INBOUND_CONNECTIONS_MAX));
    loop {
        let slot = tokio::select! {
            _ = shutdown_requested(&mut shutdown) => return,
            slot = Arc::clone(&slots).acquire_owned() => slot,
        };
        let Ok(slot) = slot else {
            return; // The semaphore is never closed; nothing left to accept for.
        };
        let accepted = tokio::select! {
            _ = shutdown_requested(&mut shutdown) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                add(&shared.counters.connections_accepted, 1);
                let connection = Connection {
                    remote,
                    shared: Arc::clone(&shared),
                    inbound: inbound.clone(),
                    shutdown: shutdown.clone(),
                    _slot: slot,
                };
                tokio::spawn(connection.serve(stream));
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::select! {
                    _ = shutdown_requested(&mut shutdown) => return,
                    _ = sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)) => {}
                }
            }
        }
    }
}

/// One incoming connection: handshake, then read-only.
struct Connection<M> {
    remote: SocketAddr,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<(NodeId, M)>,
    shutdown: watch::Receiver<bool>,
    /// Held for the connection's life; dropping it frees the slot.
    _slot: OwnedSemaphorePermit,
}

/// Counts an authenticated inbound connection for as long as it lives.
struct InboundGauge<'a>(&'a PeerState);

impl Drop for InboundGauge<'_> {
    fn drop(&mut self) {
        self.0
            .counters
            .inbound_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl<M: DeserializeOwned + Send + 'static> Connection<M> {
    async fn serve(mut self, stream: TcpStream) {
        // Harmless on a read-only socket and keeps the handshake replies
        // prompt.
        let _ = stream.set_nodelay(true);
        let mut reader = FrameReader::new(stream);
        let mut shutdown = self.shutdown.clone();
        let authenticated = tokio::select! {
            _ = shutdown_requested(&mut shutdown) => return,
            result = timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), self.handshake(&mut reader)) => result,
        };
        let peer = match authenticated {
            Ok(Ok(peer)) => peer,
            Ok(Err(failure)) => return self.refuse(&failure.to_string(), failure.claimed_peer()),
            Err(_) => return self.refuse("handshake timed out", None),
        };
        tracing::info!(%peer, remote = %self.remote, "peer connected");
        let shared = Arc::clone(&self.shared);
        let state = shared
            .peers
            .get(&peer)
            .expect("the handshake accepts only configured peers");
        let superseded = supersede(state);
        state
            .counters
            .inbound_connections
            .fetch_add(1, Ordering::Relaxed);
        let _gauge = InboundGauge(state);
        self.read_messages(peer, state, reader, superseded).await;
    }

    async fn handshake(
        &self,
        reader: &mut FrameReader<TcpStream>,
    ) -> Result<NodeId, HandshakeFailure> {
        let config = &self.shared.config;
        let expected = Expected {
            cluster_id: &config.cluster_id,
            cluster_secret: &config.cluster_secret,
            peers: &config.peers,
        };
        handshake::accept(reader, &expected).await
    }

    fn refuse(&self, reason: &str, claimed_peer: Option<NodeId>) {
        tracing::warn!(remote = %self.remote, %reason, "handshake refused; closing connection");
        add(&self.shared.counters.handshake_failures, 1);
        if let Some(state) = claimed_peer.and_then(|peer| self.shared.peers.get(&peer)) {
            add(&state.counters.handshake_failures, 1);
        }
    }

    /// Reads frames until the connection ends, a frame is bad, a newer
    /// connection from the same peer supersedes this one, or shutdown.
    async fn read_messages(
        &mut self,
        peer: NodeId,
        state: &PeerState,
        mut reader: FrameReader<TcpStream>,
        mut superseded: oneshot::Receiver<()>,
    ) {
        let frame_bytes_max = self.shared.config.frame_bytes_max;
        let mut shutdown = self.shutdown.clone();
        loop {
            let frame = tokio::select! {
                _ = shutdown_requested(&mut shutdown) => return,
                _ = &mut superseded => return self.end(peer, "superseded by a newer connection"),
                frame = reader.read_frame(frame_bytes_max) => frame,
            };
            let payload = match frame {
                Ok(Some(payload)) => payload,
                Ok(None) => return self.end(peer, "closed by peer"),
                Err(ReadFrameError::Frame(error)) => {
                    return self.bad_frame(peer, state, &error.to_string())
                }
                Err(error) => return self.end(peer, &error.to_string()),
            };
            let message = match decode_exact::<M>(&payload) {
                Ok(message) => message,
                Err(reason) => return self.bad_frame(peer, state, &reason),
            };
            add(&state.counters.frames_received, 1);
            // Waiting here is the back-pressure: this connection is not read
            // again until the node has room for the message.
            tokio::select! {
                _ = shutdown_requested(&mut shutdown) => return,
                _ = &mut superseded => return self.end(peer, "superseded by a newer connection"),
                sent = self.inbound.send((peer, message)) => {
                    if sent.is_err() {
                        return self.end(peer, "the node stopped receiving");
                    }
                }
            }
        }
    }

    fn bad_frame(&self, peer: NodeId, state: &PeerState, reason: &str) {
        add(&state.counters.decode_failures, 1);
        tracing::warn!(%peer, remote = %self.remote, %reason, "bad frame; closing connection");
    }

    fn end(&self, peer: NodeId, reason: &str) {
        tracing::debug!(%peer, remote = %self.remote, %reason, "inbound connection ended");
    }
}

/// Registers a new authenticated connection from the peer and closes the
/// previous one; returns the signal that will close this one in turn.
fn supersede(state: &PeerState) -> oneshot::Receiver<()> {
    let (sender, receiver) = oneshot::channel();
    // Dropping the old sender wakes the old reader.
    drop(lock(&state.inbound_superseder).replace(sender));
    receiver
}
