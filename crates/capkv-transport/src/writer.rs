//! One task per peer owns this node's outgoing connection to it.

use crate::frame::{encode_frame, FRAME_HEADER_BYTES};
use crate::handshake::{self, HANDSHAKE_TIMEOUT_MS};
use crate::metrics::{add, PeerCounters};
use crate::transport::{shutdown_requested, PeerState, Shared};
use capkv_core::{NodeId, Rng};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout, Instant};

/// Most messages written in one batch: bounds the time the writer spends
/// away from its shutdown and close checks.
const BATCH_MESSAGES_MAX: usize = 1024;
/// A batch stops growing once its bytes reach this; a single frame may
/// still be larger, up to `frame_bytes_max`.
const BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Doublings of the backoff before it is capped, so the shift cannot
/// overflow.
const BACKOFF_DOUBLINGS_MAX: u32 = 20;

/// A message waiting in a peer's queue.
pub(crate) struct Outgoing<M> {
    pub(crate) message: M,
    /// When a delay rule holds the message back, the earliest time to write
    /// it.
    pub(crate) deliver_at: Option<Instant>,
}

impl<M> Outgoing<M> {
    fn is_due(&self, now: Instant) -> bool {
        match self.deliver_at {
            None => true,
            Some(at) => at <= now,
        }
    }
}

/// Exponential backoff with jitter: the n-th consecutive failure waits a
/// random time in `[max(ceiling / 2, min), ceiling]`, where ceiling is
/// `min * 2^n` capped at `max`. Jitter keeps a restarted cluster's nodes from
/// reconnecting in lockstep.
pub(crate) struct Backoff {
    delay_ms_min: u64,
    delay_ms_max: u64,
    failures: u32,
    rng: Rng,
}

impl Backoff {
    pub(crate) fn new(delay_ms_min: u64, delay_ms_max: u64, rng: Rng) -> Backoff {
        assert!(
            delay_ms_min <= delay_ms_max,
            "backoff min must not exceed max"
        );
        Backoff {
            delay_ms_min,
            delay_ms_max,
            failures: 0,
            rng,
        }
    }

    /// The wait before the next attempt; each call counts one failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let doublings = self.failures.min(BACKOFF_DOUBLINGS_MAX);
        self.failures = self.failures.saturating_add(1);
        let ceiling_ms = self
            .delay_ms_min
            .saturating_mul(1 << doublings)
            .min(self.delay_ms_max);
        let floor_ms = (ceiling_ms / 2).max(self.delay_ms_min);
        let delay_ms = self.rng.range(floor_ms, ceiling_ms + 1);
        assert!((self.delay_ms_min..=self.delay_ms_max).contains(&delay_ms));
        Duration::from_millis(delay_ms)
    }

    /// Called after a successful connection: the next failure starts over.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Why a connection's pump loop ended.
enum PumpEnd {
    /// Shutdown was requested, or every transport handle is gone.
    Stop,
    /// The connection broke; reconnect.
    ConnectionLost,
}

/// Everything the writer of one peer needs.
struct Writer<M> {
    peer: NodeId,
    address: SocketAddr,
    shared: Arc<Shared>,
    queue: mpsc::Receiver<Outgoing<M>>,
    shutdown: watch::Receiver<bool>,
    /// The message at the head of the queue when it had to wait for its
    /// delay or for a connection; it keeps its place across reconnects.
    head: Option<Outgoing<M>>,
    /// The batch being written; kept to reuse its allocation.
    batch: Vec<u8>,
}

/// The writer task: connect, pump the queue, and on failure reconnect with
/// backoff, until shutdown.
pub(crate) async fn run_writer<M: Serialize>(
    peer: NodeId,
    address: SocketAddr,
    shared: Arc<Shared>,
    queue: mpsc::Receiver<Outgoing<M>>,
    mut shutdown: watch::Receiver<bool>,
    rng: Rng,
) {
    let config = &shared.config;
    let mut backoff = Backoff::new(
        config.reconnect_backoff_min_ms,
        config.reconnect_backoff_max_ms,
        rng,
    );
    let mut writer = Writer {
        peer,
        address,
        shared: Arc::clone(&shared),
        queue,
        shutdown: shutdown.clone(),
        head: None,
        batch: Vec::new(),
    };
    loop {
        let connection = tokio::select! {
            _ = shutdown_requested(&mut shutdown) => return,
            connection = connect(peer, address, &shared) => connection,
        };
        if let Some(stream) = connection {
            backoff.reset();
            let end = writer.pump(stream).await;
            writer.counters().connected.store(false, Ordering::Relaxed);
            if let PumpEnd::Stop = end {
                return;
            }
        }
        tokio::select! {
            _ = shutdown_requested(&mut shutdown) => return,
            _ = sleep(backoff.next_delay()) => {}
        }
    }
}

impl<M: Serialize> Writer<M> {
    fn peer_state(&self) -> &PeerState {
        self.shared
            .peers
            .get(&self.peer)
            .expect("a writer exists only for a configured peer")
    }

    fn counters(&self) -> &PeerCounters {
        &self.peer_state().counters
    }

    /// Writes queued messages until the connection breaks or the transport
    /// stops. The read half is watched only to notice that the acceptor
    /// closed the connection: it never sends anything after the handshake.
    async fn pump(&mut self, stream: TcpStream) -> PumpEnd {
        let (mut read_half, mut write_half) = stream.into_split();
        let mut shutdown = self.shutdown.clone();
        loop {
            let head = match self.head.take() {
                Some(head) => head,
                None => tokio::select! {
                    _ = shutdown_requested(&mut shutdown) => return PumpEnd::Stop,
                    _ = wait_closed(&mut read_half) => return self.lost("closed by peer"),
                    next = self.queue.recv() => match next {
                        Some(next) => next,
                        None => return PumpEnd::Stop,
                    },
                },
            };
            if let Some(deliver_at) = head.deliver_at.filter(|at| *at > Instant::now()) {
                self.head = Some(head);
                tokio::select! {
                    _ = shutdown_requested(&mut shutdown) => return PumpEnd::Stop,
                    _ = wait_closed(&mut read_half) => return self.lost("closed by peer"),
                    _ = sleep_until(deliver_at) => continue,
                }
            }
            let messages = self.fill_batch(head);
            if self.batch.is_empty() {
                continue;
            }
            tokio::select! {
                _ = shutdown_requested(&mut shutdown) => return PumpEnd::Stop,
                written = write_batch(&mut write_half, &self.batch) => {
                    if let Err(error) = written {
                        return self.lost(&error.to_string());
                    }
                }
            }
            let counters = self.counters();
            add(&counters.messages_sent, messages);
            add(&counters.bytes_sent, self.batch.len() as u64);
        }
    }

    /// Encodes `head` and every queued message that is already due into
    /// `self.batch`, up to the batch bounds. A message that is not yet due
    /// becomes the new head, so order is kept. Returns the number of frames.
    fn fill_batch(&mut self, head: Outgoing<M>) -> u64 {
        self.batch.clear();
        let now = Instant::now();
        // Re-read the rule per batch: a link blocked after these messages
        // were queued must not let them through.
        let blocked = self.peer_state().rule().blocked;
        let mut frames = 0;
        let mut dropped_by_rule = 0;
        let mut next = Some(head);
        while let Some(outgoing) = next.take() {
            if blocked {
                dropped_by_rule += 1;
            } else if self.encode(&outgoing.message) {
                frames += 1;
            }
            if frames >= BATCH_MESSAGES_MAX as u64 || self.batch.len() >= BATCH_BYTES_MAX {
                break;
            }
            match self.queue.try_recv() {
                Ok(queued) if queued.is_due(now) => next = Some(queued),
                Ok(queued) => self.head = Some(queued),
                Err(_) => {}
            }
        }
        add(&self.counters().messages_dropped_link_rule, dropped_by_rule);
        frames
    }

    /// Appends one frame to the batch; a message that cannot be framed is
    /// dropped, counted and logged (it is this node's bug, not the peer's).
    fn encode(&mut self, message: &M) -> bool {
        let frame_bytes_max = self.shared.config.frame_bytes_max;
        let framed = postcard::to_allocvec(message)
            .map_err(|error| error.to_string())
            .and_then(|payload| {
                self.batch.reserve(FRAME_HEADER_BYTES + payload.len());
                encode_frame(&payload, &mut self.batch, frame_bytes_max)
                    .map_err(|error| error.to_string())
            });
        if let Err(reason) = framed {
            add(&self.counters().messages_dropped_encode, 1);
            tracing::warn!(peer = %self.peer, %reason, "message dropped: cannot frame it");
            return false;
        }
        true
    }

    fn lost(&self, reason: &str) -> PumpEnd {
        tracing::warn!(peer = %self.peer, address = %self.address, %reason, "connection to peer lost");
        PumpEnd::ConnectionLost
    }
}

/// One connection attempt, bounded by the handshake timeout. Failures
/// are counted and logged; the caller backs off.
async fn connect(peer: NodeId, address: SocketAddr, shared: &Shared) -> Option<TcpStream> {
    let attempt = async {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(handshake::HandshakeFailure::Io)?;
        stream.set_nodelay(true)?;
        let config = &shared.config;
        handshake::connect(
            &mut stream,
            &config.cluster_secret,
            &config.cluster_id,
            config.node_id,
        )
        .await?;
        Ok::<_, handshake::HandshakeFailure>(stream)
    };
    let counters = &shared
        .peers
        .get(&peer)
        .expect("a writer exists only for a configured peer")
        .counters;
    match timeout(Duration::from_millis(HANDSHAKE_TIMEOUT_MS), attempt).await {
        Ok(Ok(stream)) => {
            add(&counters.connects, 1);
            counters.connected.store(true, Ordering::Relaxed);
            tracing::info!(peer = %peer, address = %address, "connected to peer");
            Some(stream)
        }
        Ok(Err(failure)) => {
            add(&counters.connect_failures, 1);
            if let handshake::HandshakeFailure::RejectedByAcceptor = failure {
                // Refusal means a configuration mismatch an operator must fix.
                tracing::warn!(peer = %peer, address = %address, "peer refused our handshake");
            } else {
                tracing::debug!(peer = %peer, address = %address, %failure, "cannot connect to peer");
            }
            None
        }
        Err(_) => {
            add(&counters.connect_failures, 1);
            tracing::debug!(peer = %peer, address = %address, "connection attempt timed out");
            None
        }
    }
}

/// One write for the whole batch: the socket has TCP_NODELAY, so this is
/// what keeps a burst in few packets.
async fn write_batch(write_half: &mut OwnedWriteHalf, batch: &[u8]) -> std::io::Result<()> {
    write_half.write_all(batch).await?;
    write_half.flush().await
}

/// Resolves when the acceptor closes the connection (or, against the
/// protocol, sends a byte: that too ends the connection).
async fn wait_closed(read_half: &mut OwnedReadHalf) {
    let mut probe = [0; 1];
    let _ = read_half.read(&mut probe).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_stays_within_bounds() {
        let mut backoff = Backoff::new(20, 1000, Rng::new(1));
        let delays: Vec<u64> = (0..30)
            .map(|_| backoff.next_delay().as_millis() as u64)
            .collect();
        assert!(delays.iter().all(|delay| (20..=1000).contains(delay)));
        assert!(delays[0] <= 20, "the first wait is the minimum");
        assert!(delays[29] >= 500, "late waits sit near the cap");
        backoff.reset();
        assert_eq!(backoff.next_delay().as_millis(), 20);
    }

    #[test]
    fn backoff_jitters() {
        let mut backoff = Backoff::new(100, 100_000, Rng::new(7));
        let delays: std::collections::BTreeSet<u128> = (0..8)
            .map(|_| {
                backoff.reset();
                for _ in 0..5 {
                    backoff.next_delay();
                }
                backoff.next_delay().as_millis()
            })
            .collect();
        assert!(delays.len() > 1, "equal waits mean no jitter");
    }
}
