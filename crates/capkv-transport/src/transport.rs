use crate::acceptor::run_acceptor;
use crate::config::{LinkRule, TransportConfig};
use crate::error::TransportError;
use crate::metrics::{add, PeerCounters, TransportCounters, TransportMetrics};
use crate::writer::{run_writer, Outgoing};
use capkv_core::{NodeId, Rng};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

/// State shared by the handle and every task of one transport.
pub(crate) struct Shared {
    /// The validated configuration.
    pub(crate) config: TransportConfig,
    /// One entry per configured peer; the key set never changes.
    pub(crate) peers: BTreeMap<NodeId, PeerState>,
    /// Counters that belong to no single peer.
    pub(crate) counters: TransportCounters,
}

/// What the handle and the tasks share about one peer.
#[derive(Default)]
pub(crate) struct PeerState {
    /// The nemesis rule of this node's outgoing link to the peer.
    pub(crate) rule: Mutex<LinkRule>,
    /// Counters of the link in both directions.
    pub(crate) counters: PeerCounters,
    /// Closes the current authenticated inbound connection from the peer
    /// when a newer one arrives. A peer only reconnects after it has given
    /// up on its old connection, so the old one is dead or half-open; this
    /// keeps at most one reader per peer.
    pub(crate) inbound_superseder: Mutex<Option<oneshot::Sender<()>>>,
}

impl PeerState {
    pub(crate) fn rule(&self) -> LinkRule {
        lock(&self.rule).clone()
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked: every
/// critical section here is a single assignment or read.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Resolves when shutdown is requested, or when the shutdown sender is gone
/// (nobody could ever stop the transport otherwise).
pub(crate) async fn shutdown_requested(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A running transport. Cheap to clone: clones share everything.
pub struct Transport<M> {
    /// Shared so that clones are cheap.
    inner: Arc<Inner<M>>,
}

struct Inner<M> {
    /// Shared with the tasks.
    shared: Arc<Shared>,
    /// Each peer's writer queue. Only the handle holds the senders, so the
    /// writers also stop when every handle is dropped.
    queues: BTreeMap<NodeId, mpsc::Sender<Outgoing<M>>>,
    /// Decides the drops of `drop_probability` rules.
    rng: Mutex<Rng>,
    /// The bound address (differs from the configured one for port 0).
    local_addr: SocketAddr,
}

impl<M> Clone for Transport<M> {
    fn clone(&self) -> Self {
        Transport {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<M: Serialize + DeserializeOwned + Send + 'static> Transport<M> {
    /// Binds `listen`, spawns the accept loop and one writer task per peer.
    ///
    /// Inbound messages, authenticated and decoded, go to `inbound` as
    /// `(from, message)`; a full `inbound` channel applies back-pressure to
    /// that peer's reader. Every task ends when `shutdown` turns true.
    pub async fn start(
        config: TransportConfig,
        inbound: mpsc::Sender<(NodeId, M)>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Transport<M>, TransportError> {
        config.validate()?;
        let bind_error = |source| TransportError::Bind {
            address: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let mut rng = Rng::new(random_seed()?);
        let peers = config
            .peers
            .keys()
            .map(|peer| (*peer, PeerState::default()))
            .collect();
        let shared = Arc::new(Shared {
            config,
            peers,
            counters: TransportCounters::default(),
        });
        let mut queues = BTreeMap::new();
        for (peer, address) in &shared.config.peers {
            let (sender, receiver) = mpsc::channel(shared.config.peer_queue_messages_max);
            queues.insert(*peer, sender);
            tokio::spawn(run_writer(
                *peer,
                *address,
                Arc::clone(&shared),
                receiver,
                shutdown.clone(),
                rng.fork(),
            ));
        }
        tokio::spawn(run_acceptor(
            listener,
            Arc::clone(&shared),
            inbound,
            shutdown,
        ));
        tracing::info!(node = %shared.config.node_id, %local_addr, "transport listening");
        Ok(Transport {
            inner: Arc::new(Inner {
                shared,
                queues,
                rng: Mutex::new(rng),
                local_addr,
            }),
        })
    }

    /// Queues `message` for `to` without blocking, after applying the link
    /// rule. A message dropped by a rule or by a full queue is counted and
    /// still answers `Ok`: loss is normal on a network. A message that
    /// cannot be framed (it exceeds `frame_bytes_max`, or encodes to zero
    /// bytes, as `()` does) is dropped by the writer and counted in
    /// `messages_dropped_encode`.
    pub fn send(&self, to: NodeId, message: M) -> Result<(), TransportError> {
        let (Some(queue), Some(peer)) =
            (self.inner.queues.get(&to), self.inner.shared.peers.get(&to))
        else {
            return Err(TransportError::UnknownPeer(to));
        };
        let rule = peer.rule();
        if rule.blocked
            || (rule.drop_probability > 0.0 && lock(&self.inner.rng).chance(rule.drop_probability))
        {
            add(&peer.counters.messages_dropped_link_rule, 1);
            return Ok(());
        }
        let deliver_at =
            (rule.delay_ms > 0).then(|| Instant::now() + Duration::from_millis(rule.delay_ms));
        match queue.try_send(Outgoing {
            message,
            deliver_at,
        }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                add(&peer.counters.messages_dropped_queue_full, 1);
                Ok(())
            }
            Err(TrySendError::Closed(_)) => Err(TransportError::ShutDown),
        }
    }
}

impl<M> Transport<M> {
    /// Sets the nemesis rule of this node's outgoing link to `to`. The rule
    /// applies to messages sent from now on; a blocked link also drops the
    /// messages already queued when the writer reaches them. An unknown
    /// peer has no link, so the call is logged and ignored.
    pub fn set_link_rule(&self, to: NodeId, rule: LinkRule) {
        let Some(peer) = self.inner.shared.peers.get(&to) else {
            tracing::warn!(peer = %to, "link rule for an unknown peer ignored");
            return;
        };
        tracing::info!(peer = %to, ?rule, "link rule set");
        *lock(&peer.rule) = rule;
    }

    /// Restores every outgoing link to pass everything through at once.
    pub fn clear_link_rules(&self) {
        for peer in self.inner.shared.peers.values() {
            *lock(&peer.rule) = LinkRule::default();
        }
        tracing::info!("link rules cleared");
    }

    /// The links whose rule is not the default pass-through.
    pub fn link_rules(&self) -> BTreeMap<NodeId, LinkRule> {
        self.inner
            .shared
            .peers
            .iter()
            .map(|(node_id, peer)| (*node_id, peer.rule()))
            .filter(|(_, rule)| !rule.is_pass_through())
            .collect()
    }

    /// A snapshot of every counter.
    pub fn metrics(&self) -> TransportMetrics {
        let shared = &self.inner.shared;
        let peers = shared
            .peers
            .iter()
            .map(|(node_id, peer)| (*node_id, peer.counters.snapshot()))
            .collect();
        shared.counters.snapshot(peers)
    }

    /// The address actually bound (useful when the configuration said port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.shared.config.node_id
    }
}

/// Seeds the transport's generator (drop decisions, backoff jitter). The
/// transport is runtime, not a deterministic core, so it may draw from the
/// operating system.
fn random_seed() -> Result<u64, TransportError> {
    let mut seed = [0; 8];
    getrandom::fill(&mut seed).map_err(|error| TransportError::Entropy(error.to_string()))?;
    Ok(u64::from_le_bytes(seed))
}
