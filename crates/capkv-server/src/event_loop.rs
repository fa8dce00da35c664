//! The one thread that owns a node's cores.
//!
//! Every input (ticks, peer messages, client requests) arrives on one bounded
//! channel. The loop takes the first input, drains whatever else is already
//! waiting (up to `inputs_per_turn_max`), runs the node until it is quiet,
//! writes the turn's state as one batch with one fsync (group commit; a turn
//! that only learned a commit index writes without one), and only then sends
//! the turn's messages and answers its clients.

use crate::metrics::Metrics;
use capkv_core::{LogIndex, NodeId, Term};
use capkv_node::{BucketSpec, DynamoStats, Node, NodeEvent, PeerMessage, Request, Response};
use capkv_raft::Role;
use capkv_storage::{FjallStorage, Storage, StorageError};
use capkv_transport::Transport;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};

/// Most inputs handled in one turn: bounds the latency one turn adds.
const INPUTS_PER_TURN_MAX: usize = 4096;
/// Most ready rounds in one turn (each round is one batch and one sync).
const READY_ROUNDS_MAX: usize = 8;
/// How long after its deadline a forgotten client's slot is kept.
const EXPIRY_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// What the loop is fed.
pub enum Input {
    /// One Raft tick elapsed.
    Tick,
    /// A peer's message.
    Peer(NodeId, PeerMessage),
    /// A client request and where to answer it.
    Client {
        /// The request.
        request: Request,
        /// After this, the client has gone: drop the answer.
        deadline: Instant,
        /// Where the answer goes.
        reply: oneshot::Sender<Response>,
    },
    /// Stop the loop.
    Shutdown,
}

/// What the rest of the server may know about the node, published after
/// every turn that changed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub node_id: NodeId,
    /// Raft role.
    pub role: Role,
    /// Raft term.
    pub term: Term,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit_index: LogIndex,
    /// Applied index.
    pub applied_index: LogIndex,
    /// Last log index.
    pub last_index: LogIndex,
    /// Index of the latest snapshot.
    pub snapshot_index: LogIndex,
    /// Buckets as of the applied index.
    pub buckets: BTreeMap<String, BucketSpec>,
    /// The ap engine's counters.
    pub ap: DynamoStats,
}

impl Status {
    pub(crate) fn of(node: &Node) -> Status {
        let raft = node.raft();
        Status {
            node_id: node.id(),
            role: raft.role(),
            term: raft.term(),
            leader: raft.leader(),
            commit_index: raft.commit_index(),
            applied_index: node.applied_index(),
            last_index: raft.log().last_index(),
            snapshot_index: raft.log().snapshot_index(),
            buckets: node.kv().buckets().clone(),
            ap: node.dynamo().stats(),
        }
    }
}

/// A client waiting for its answer.
struct Waiting {
    deadline: Instant,
    reply: oneshot::Sender<Response>,
}

/// Runs the loop on the current thread until `Shutdown` or until every
/// sender is gone. Returns an error when storage fails: the node must stop
/// rather than acknowledge what it could not make durable.
pub fn run(
    mut node: Node,
    mut storage: FjallStorage,
    mut inputs: mpsc::Receiver<Input>,
    transport: Transport<PeerMessage>,
    status: watch::Sender<Status>,
    metrics: Arc<Metrics>,
) -> Result<(), StorageError> {
    let mut waiting: BTreeMap<u64, Waiting> = BTreeMap::new();
    let mut deadlines: BTreeSet<(Instant, u64)> = BTreeSet::new();
    let mut next_request_id: u64 = 1;
    status.send_replace(Status::of(&node));
    while let Some(first) = inputs.blocking_recv() {
        let mut input = Some(first);
        let mut handled = 0;
        while let Some(current) = input.take() {
            match current {
                Input::Shutdown => return Ok(()),
                Input::Tick => node.tick(wall_clock_ms()),
                Input::Peer(from, message) => node.handle_peer_message(from, message),
                Input::Client {
                    request,
                    deadline,
                    reply,
                } => {
                    let request_id = next_request_id;
                    next_request_id += 1;
                    waiting.insert(request_id, Waiting { deadline, reply });
                    deadlines.insert((deadline, request_id));
                    node.handle_request(request_id, request);
                }
            }
            handled += 1;
            if handled < INPUTS_PER_TURN_MAX {
                input = inputs.try_recv().ok();
            }
        }
        metrics.observe_inputs(handled);
        for _ in 0..READY_ROUNDS_MAX {
            if !node.has_ready() {
                break;
            }
            let ready = node.ready();
            if !ready.batch.is_empty() {
                let ops = ready.batch.ops.len();
                storage.write(ready.batch)?;
                // A batch that only moves the commit index (or stores a
                // local snapshot) goes out without an fsync of its own; the
                // next synced batch carries it.
                if ready.must_sync {
                    let started = Instant::now();
                    storage.sync()?;
                    metrics.observe_sync(started.elapsed(), ops);
                }
            }
            for (to, message) in ready.messages {
                // A full queue or unknown peer drops the message; Raft
                // retries what matters.
                let _ = transport.send(to, message);
            }
            for (request_id, response) in ready.responses {
                if let Some(waiter) = waiting.remove(&request_id) {
                    deadlines.remove(&(waiter.deadline, request_id));
                    let _ = waiter.reply.send(response);
                }
            }
            for event in &ready.events {
                log_event(node.id(), event);
            }
        }
        // A grace period lets the HTTP handler's own timer answer first.
        if let Some(horizon) = Instant::now().checked_sub(EXPIRY_GRACE) {
            expire(&mut waiting, &mut deadlines, horizon);
        }
        let current = Status::of(&node);
        status.send_if_modified(|published| {
            if *published == current {
                return false;
            }
            *published = current;
            true
        });
    }
    Ok(())
}

/// Forgets clients whose deadline passed (their HTTP handler has answered
/// already), so the table stays bounded.
fn expire(
    waiting: &mut BTreeMap<u64, Waiting>,
    deadlines: &mut BTreeSet<(Instant, u64)>,
    now: Instant,
) {
    while let Some((deadline, request_id)) = deadlines.first().copied() {
        if deadline > now {
            break;
        }
        deadlines.pop_first();
        waiting.remove(&request_id);
    }
}

fn log_event(id: NodeId, event: &NodeEvent) {
    match event {
        NodeEvent::RoleChanged {
            role, term, leader, ..
        } => {
            tracing::info!(node = id.0, role = role.as_str(), term = term.0, leader = ?leader.map(|l| l.0), "role changed");
        }
        NodeEvent::SnapshotInstalled { index, .. } => {
            tracing::info!(
                node = id.0,
                index = index.0,
                "installed a snapshot from the leader"
            );
        }
        NodeEvent::LogAppended { .. } | NodeEvent::Applied { .. } => {}
    }
}

/// The machine's wall clock in milliseconds since the Unix epoch: the ap
/// engine's physical time (its hybrid logical clock keeps it monotonic).
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
