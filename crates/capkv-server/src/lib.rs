//! The capkv runtime: real time, real sockets, a real disk.
//!
//! What it is: the thin shell around the sans-IO cores. One thread owns a
//! node's [`capkv_node::Node`] and its [`capkv_storage::FjallStorage`] and runs
//! the event loop (`event_loop.rs`): ticks, peer messages and client requests
//! in; one batch and one fsync per turn; then the turn's messages and
//! answers out. Around it, tokio runs the TCP transport
//! ([`capkv_transport`]), a ticker, and the axum HTTP API (`http.rs`) with
//! metrics (`metrics.rs`) and the nemesis (`nemesis.rs`).
//!
//! What it does not do: no protocol logic. Every decision (who leads, what
//! commits, what a read may see) is made by the cores the simulator tests.

#![warn(missing_docs)]

mod config;
mod event_loop;
pub mod http;
mod metrics;
pub mod nemesis;

pub use config::{PeerAddress, ServerConfig};
pub use event_loop::{Input, Status};
pub use metrics::Metrics;

use anyhow::Context;
use capkv_core::NodeId;
use capkv_node::{persist, Node, NodeConfig, PeerMessage};
use capkv_storage::FjallStorage;
use capkv_transport::{Transport, TransportConfig};
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Bound of the event loop's input channel: more client requests get
/// `503 overloaded`; peers wait.
const LOOP_INPUTS_MAX: usize = 16_384;
/// Bound of the channel from the transport to the loop.
const PEER_INBOUND_MAX: usize = 4_096;

/// Runs one node until `shutdown` becomes true. Returns an error when the node
/// cannot start (bad config, ports taken, unreadable storage) or its storage
/// fails while running.
pub async fn run(config: ServerConfig, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let storage = FjallStorage::open(&config.data_dir.join("db"), &persist::KEYSPACES)
        .with_context(|| format!("cannot open storage in {}", config.data_dir.display()))?;
    let voters: Vec<NodeId> = config.members.keys().copied().collect();
    // The server may draw real randomness for election timeouts: only the
    // cores must be deterministic, and they take the seed from here.
    let seed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let mut node_config = NodeConfig::new(config.id, voters, seed);
    node_config.raft.election_timeout_ticks = config.election_timeout_ticks;
    node_config.raft.heartbeat_interval_ticks = config.heartbeat_interval_ticks;
    node_config.snapshot_interval_entries = config.snapshot_interval_entries;
    node_config.value_bytes_max = http::VALUE_BYTES_MAX;
    node_config.dynamo.request_timeout_ms = config.ap_request_timeout_ms();
    node_config.dynamo.ae_interval_ms = config.ae_interval_ms;
    node_config.dynamo.hints_max = config.hints_max;
    node_config.raft.validate().map_err(anyhow::Error::msg)?;
    let node = Node::restore(node_config, &storage).context("cannot recover the node's state")?;
    tracing::info!(
        node = config.id.0,
        term = node.raft().term().0,
        commit = node.raft().commit_index().0,
        last_index = node.raft().log().last_index().0,
        "recovered from disk"
    );

    let peers: BTreeMap<NodeId, std::net::SocketAddr> = config
        .members
        .iter()
        .filter(|(id, _)| **id != config.id)
        .map(|(id, address)| (*id, address.peer))
        .collect();
    let (inbound_tx, mut inbound_rx) = mpsc::channel(PEER_INBOUND_MAX);
    let transport: Transport<PeerMessage> = Transport::start(
        TransportConfig::new(
            config.id,
            config.listen,
            peers,
            config.cluster_id.clone(),
            config.cluster_secret.clone(),
        ),
        inbound_tx,
        shutdown.clone(),
    )
    .await
    .with_context(|| format!("cannot listen for peers on {}", config.listen))?;
    let http_listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http))?;

    let (inputs_tx, inputs_rx) = mpsc::channel(LOOP_INPUTS_MAX);
    let (status_tx, status_rx) = watch::channel(Status::of(&node));
    let metrics = Arc::new(Metrics::default());
    let (stop_tx, _) = watch::channel(false);
    let loop_thread = {
        let transport = transport.clone();
        let metrics = metrics.clone();
        let stop_tx = stop_tx.clone();
        std::thread::Builder::new()
            .name(format!("capkv-node-{}", config.id.0))
            .spawn(move || {
                let result =
                    event_loop::run(node, storage, inputs_rx, transport, status_tx, metrics);
                if let Err(error) = &result {
                    tracing::error!(%error, "storage failed: stopping the node");
                    stop_tx.send_replace(true);
                }
                result
            })
            .context("cannot start the event loop thread")?
    };

    // Peer messages into the loop (waits when the loop is busy: back-pressure).
    {
        let inputs = inputs_tx.clone();
        tokio::spawn(async move {
            while let Some((from, message)) = inbound_rx.recv().await {
                if inputs.send(Input::Peer(from, message)).await.is_err() {
                    break;
                }
            }
        });
    }
    // The clock: a tick every `tick_ms`; a missed tick is skipped, not
    // bunched, and a full loop drops it.
    {
        let inputs = inputs_tx.clone();
        let tick = Duration::from_millis(config.tick_ms);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = interval.tick() => { let _ = inputs.try_send(Input::Tick); }
                    _ = shutdown.changed() => break,
                }
            }
        });
    }

    let config = Arc::new(config);
    let state = http::AppState {
        inputs: inputs_tx.clone(),
        status: status_rx,
        config: config.clone(),
        metrics,
        nemesis: Arc::new(nemesis::Nemesis::new()),
        transport,
    };
    tracing::info!(node = config.id.0, http = %config.http, peer = %config.listen, "serving");
    let mut stop_rx = stop_tx.subscribe();
    axum::serve(http_listener, http::router(state))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => {}
                _ = stop_rx.wait_for(|stop| *stop) => {}
            }
        })
        .await
        .context("HTTP server failed")?;
    let _ = inputs_tx.send(Input::Shutdown).await;
    let joined = tokio::task::spawn_blocking(move || loop_thread.join())
        .await
        .context("cannot join the event loop")?;
    match joined {
        Ok(result) => result.context("the event loop stopped on a storage error")?,
        Err(_) => anyhow::bail!("the event loop panicked"),
    }
    tracing::info!(node = config.id.0, "stopped");
    Ok(())
}

/// Runs a node in its own tokio runtime until Ctrl-C or SIGTERM.
pub fn run_node(config: ServerConfig) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("stopping");
            shutdown_tx.send_replace(true);
        });
        run(config, shutdown_rx).await
    })
}

/// Returns when the process gets Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
