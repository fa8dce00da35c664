use crate::kv::{Applied, Command, KvState, Versioned};
use crate::persist;
use capkv_core::{GroupId, LogIndex, NodeId, StableHasher, Term};
use capkv_raft::{
    Config as RaftConfig, EntryKind, Message, Raft, RaftError, Role, Snapshot, SnapshotMeta,
};
use capkv_storage::{Storage, StorageError, WriteBatch};
use std::collections::BTreeMap;

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadConsistency {
    /// ReadIndex through the leader: sees every write acknowledged before the
    /// read started.
    Linearizable,
    /// This node's applied state, which may lag the leader.
    Stale,
}

/// A client request to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Replicate a command.
    Write(Command),
    /// Read one key.
    Read {
        /// The key.
        key: String,
        /// How fresh the answer must be.
        consistency: ReadConsistency,
    },
}

/// Why a request failed. Each is definite: the request did not and will not
/// take effect (uncertain outcomes are never answered; the driver's deadline
/// turns them into timeouts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// This node does not lead; `leader` is who does, if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The known leader.
        leader: Option<NodeId>,
    },
    /// The node is overloaded or transferring leadership: retry later.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// The proposal was overwritten by another leader's entry: it will never
    /// commit.
    #[error("proposal dropped by a leader change")]
    Dropped,
    /// The request is malformed.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// A write was committed and applied with this outcome.
    Applied(Applied),
    /// A read's result (`None` = absent).
    Value(Option<Versioned>),
    /// The request failed definitely.
    Failed(RequestError),
}

/// Something that happened inside the node, for timelines and invariant
/// checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// The node's role or known leader changed.
    RoleChanged {
        /// The group.
        group: GroupId,
        /// New role.
        role: Role,
        /// Term at the change.
        term: Term,
        /// Known leader.
        leader: Option<NodeId>,
    },
    /// An entry was applied to the state machine.
    Applied {
        /// The group.
        group: GroupId,
        /// Its index.
        index: LogIndex,
        /// Its term.
        term: Term,
        /// A hash of its bytes.
        data_hash: u64,
    },
    /// Entries `first..=last` were appended to the log (replacing any at
    /// those indexes).
    LogAppended {
        /// The group.
        group: GroupId,
        /// First appended index.
        first: LogIndex,
        /// Last appended index.
        last: LogIndex,
    },
    /// A snapshot from the leader was installed.
    SnapshotInstalled {
        /// The group.
        group: GroupId,
        /// Its last index.
        index: LogIndex,
    },
}

/// Settings of a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node.
    pub id: NodeId,
    /// Raft settings of its group (its `id` must match).
    pub raft: RaftConfig,
    /// Take a snapshot and compact the log after this many applied entries.
    pub snapshot_interval_entries: u64,
    /// Most key bytes accepted.
    pub key_bytes_max: usize,
    /// Most value bytes accepted.
    pub value_bytes_max: usize,
}

impl NodeConfig {
    /// Defaults for node `id` among `voters`, with Raft randomness from `seed`.
    pub fn new(id: NodeId, voters: Vec<NodeId>, seed: u64) -> NodeConfig {
        NodeConfig {
            id,
            raft: RaftConfig::new(id, GroupId(0), voters, seed),
            snapshot_interval_entries: 10_000,
            key_bytes_max: 1024,
            value_bytes_max: 1 << 20,
        }
    }
}

/// Errors that stop a node: its storage failed or holds garbage.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The storage engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] capkv_raft::ConfigError),
}

/// What one turn of the node wants done. The driver must write `batch` and
/// sync it (when `batch` is not empty) before it sends `messages` or
/// delivers `responses`.
#[derive(Debug, Default)]
pub struct NodeReady {
    /// Durable state to write and sync first.
    pub batch: WriteBatch,
    /// Messages to peers, after the sync.
    pub messages: Vec<Message>,
    /// Answers to requests, after the sync, by request id.
    pub responses: Vec<(u64, Response)>,
    /// What happened, for observers.
    pub events: Vec<NodeEvent>,
}

impl NodeReady {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
            && self.messages.is_empty()
            && self.responses.is_empty()
            && self.events.is_empty()
    }
}

/// A proposal waiting for its entry to apply.
#[derive(Clone, Copy, Debug)]
struct PendingWrite {
    request_id: u64,
    term: Term,
}

/// One capkv node: a Raft group and the key-value state it replicates.
pub struct Node {
    config: NodeConfig,
    raft: Raft,
    kv: KvState,
    /// Proposals by log index.
    pending_writes: BTreeMap<LogIndex, PendingWrite>,
    /// Linearizable reads waiting for ReadIndex confirmation, by request id.
    pending_reads: BTreeMap<u64, String>,
    /// Confirmed reads waiting for the state machine to reach their index.
    reads_awaiting_apply: Vec<(LogIndex, u64, String)>,
    /// Answers produced since the last `ready` (failures found at once).
    responses: Vec<(u64, Response)>,
    /// Index of the last snapshot taken or installed.
    snapshot_index: LogIndex,
    /// Index of the last entry applied to `kv` (Raft learns of it only at
    /// `advance`, after reads in the same turn were served).
    applied: LogIndex,
}

impl Node {
    /// Restores a node from `storage` (empty storage means a fresh node).
    pub fn restore(config: NodeConfig, storage: &dyn Storage) -> Result<Node, NodeError> {
        let group = config.raft.group;
        let durable = persist::load(storage, group)?;
        let kv = KvState::from_snapshot(&durable.snapshot.data).map_err(|error| {
            StorageError::Corrupt {
                keyspace: persist::STATE.0,
                reason: format!("snapshot data: {error}"),
            }
        })?;
        let snapshot_index = durable.snapshot.meta.index;
        let raft = Raft::new(
            config.raft.clone(),
            durable.hard_state,
            durable.snapshot,
            durable.entries,
        )?;
        Ok(Node {
            config,
            raft,
            kv,
            pending_writes: BTreeMap::new(),
            pending_reads: BTreeMap::new(),
            reads_awaiting_apply: Vec::new(),
            responses: Vec::new(),
            snapshot_index,
            applied: snapshot_index,
        })
    }

    // ----- getters -----

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The Raft instance (read-only), for status pages and invariant checks.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The applied key-value state (read-only).
    pub fn kv(&self) -> &KvState {
        &self.kv
    }

    // ----- inputs -----

    /// One tick of time.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// A message from a peer. Messages for other groups or from strangers are
    /// dropped: a peer is never trusted to be well-behaved.
    pub fn handle_message(&mut self, message: Message) {
        // Errors name a misdirected message; dropping it is the answer.
        let _ = self.raft.step(message);
    }

    /// A client request, answered in a later `ready` under `request_id`.
    pub fn handle_request(&mut self, request_id: u64, request: Request) {
        if let Err(error) = self.validate(&request) {
            self.responses.push((request_id, Response::Failed(error)));
            return;
        }
        match request {
            Request::Write(command) => self.propose(request_id, command),
            Request::Read {
                key,
                consistency: ReadConsistency::Stale,
            } => {
                let value = self.kv.get(&key).cloned();
                self.responses.push((request_id, Response::Value(value)));
            }
            Request::Read {
                key,
                consistency: ReadConsistency::Linearizable,
            } => match self.raft.read_index(request_id) {
                Ok(()) => {
                    self.pending_reads.insert(request_id, key);
                }
                Err(error) => self
                    .responses
                    .push((request_id, Response::Failed(request_error(error)))),
            },
        }
    }

    fn validate(&self, request: &Request) -> Result<(), RequestError> {
        let (key, value_bytes) = match request {
            Request::Write(Command::Put { key, value }) => (key, value.len()),
            Request::Write(Command::Delete { key }) => (key, 0),
            Request::Write(Command::Cas { key, value, .. }) => {
                (key, value.as_ref().map_or(0, Vec::len))
            }
            Request::Read { key, .. } => (key, 0),
        };
        if key.is_empty() {
            return Err(RequestError::Invalid("empty key"));
        }
        if key.len() > self.config.key_bytes_max {
            return Err(RequestError::Invalid("key too long"));
        }
        if value_bytes > self.config.value_bytes_max {
            return Err(RequestError::Invalid("value too large"));
        }
        Ok(())
    }

    fn propose(&mut self, request_id: u64, command: Command) {
        let data = postcard::to_allocvec(&command).expect("commands serialise");
        match self.raft.propose(data) {
            Ok((index, term)) => {
                self.pending_writes
                    .insert(index, PendingWrite { request_id, term });
            }
            Err(error) => self
                .responses
                .push((request_id, Response::Failed(request_error(error)))),
        }
    }

    /// Asks the leader to hand leadership to `target`.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), RequestError> {
        self.raft.transfer_leader(target).map_err(request_error)
    }

    // ----- outputs -----

    /// True when `ready` would hand out something.
    pub fn has_ready(&self) -> bool {
        !self.responses.is_empty() || self.raft.has_ready()
    }

    /// Runs the node's cores until they are quiet and returns what the
    /// driver must do: write and sync `batch`, then send and answer.
    pub fn ready(&mut self) -> NodeReady {
        let mut out = NodeReady::default();
        // A leader's own append becomes countable in `advance`, which may
        // commit and produce more work; a few rounds reach a fixed point.
        for _ in 0..4 {
            if !self.raft.has_ready() {
                break;
            }
            self.ready_round(&mut out);
        }
        self.maybe_snapshot(&mut out.batch);
        out.responses.append(&mut self.responses);
        out
    }

    fn ready_round(&mut self, out: &mut NodeReady) {
        let group = self.raft.group();
        let ready = self.raft.ready();
        // Step 1: durable state, in one batch.
        if let Some(snapshot) = &ready.snapshot {
            persist::write_snapshot(&mut out.batch, group, snapshot, true);
        }
        persist::write_entries(&mut out.batch, group, &ready.entries);
        if let (Some(first), Some(last)) = (ready.entries.first(), ready.entries.last()) {
            out.events.push(NodeEvent::LogAppended {
                group,
                first: first.index,
                last: last.index,
            });
        }
        if let Some(hard_state) = &ready.hard_state {
            persist::write_hard_state(&mut out.batch, group, hard_state);
        }
        // Step 2: messages (the driver sends them after the sync).
        out.messages.extend(ready.messages.iter().cloned());
        if let Some(soft) = ready.soft_state {
            out.events.push(NodeEvent::RoleChanged {
                group,
                role: soft.role,
                term: self.raft.term(),
                leader: soft.leader,
            });
            if soft.role != Role::Leader {
                self.fail_pending_reads(soft.leader);
            }
        }
        // Step 3: install and apply.
        if let Some(snapshot) = &ready.snapshot {
            self.install_snapshot(snapshot, out);
        }
        for entry in &ready.committed_entries {
            self.apply_entry(entry, out);
        }
        // Step 4: reads.
        for read in &ready.read_states {
            if let Some(key) = self.pending_reads.remove(&read.context) {
                self.reads_awaiting_apply
                    .push((read.index, read.context, key));
            }
        }
        self.serve_reads(out);
        self.raft.advance(&ready);
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot, out: &mut NodeReady) {
        match KvState::from_snapshot(&snapshot.data) {
            Ok(kv) => self.kv = kv,
            Err(error) => panic!(
                "node {}: snapshot from the leader does not decode ({error}); \
                 a leader only sends snapshots this version wrote",
                self.config.id
            ),
        }
        self.snapshot_index = snapshot.meta.index;
        self.applied = snapshot.meta.index;
        // Proposals at or below the snapshot are settled but we cannot tell
        // how: they stay unanswered and time out at the driver.
        self.pending_writes = self.pending_writes.split_off(&snapshot.meta.index.next());
        out.events.push(NodeEvent::SnapshotInstalled {
            group: self.raft.group(),
            index: snapshot.meta.index,
        });
    }

    fn apply_entry(&mut self, entry: &capkv_raft::Entry, out: &mut NodeReady) {
        assert_eq!(
            entry.index,
            self.applied.next(),
            "node {}: entries must be applied in order without gaps",
            self.config.id
        );
        self.applied = entry.index;
        out.events.push(NodeEvent::Applied {
            group: self.raft.group(),
            index: entry.index,
            term: entry.term,
            data_hash: StableHasher::hash_bytes(&entry.data),
        });
        let result = match entry.kind {
            EntryKind::Noop => None,
            EntryKind::Normal => match postcard::from_bytes::<Command>(&entry.data) {
                Ok(command) => Some(self.kv.apply(entry.index.0, command)),
                // Every node applies the same bytes, so every node skips
                // the same undecodable entry and replicas stay equal.
                Err(_) => None,
            },
        };
        let Some(pending) = self.pending_writes.remove(&entry.index) else {
            return;
        };
        let response = match result {
            Some(applied) if pending.term == entry.term => Response::Applied(applied),
            _ => Response::Failed(RequestError::Dropped),
        };
        out.responses.push((pending.request_id, response));
        // Proposals below an applied index can no longer commit.
        let stale: Vec<LogIndex> = self
            .pending_writes
            .range(..entry.index)
            .map(|(index, _)| *index)
            .collect();
        for index in stale {
            if let Some(pending) = self.pending_writes.remove(&index) {
                out.responses
                    .push((pending.request_id, Response::Failed(RequestError::Dropped)));
            }
        }
    }

    fn serve_reads(&mut self, out: &mut NodeReady) {
        let applied = self.applied;
        let kv = &self.kv;
        self.reads_awaiting_apply
            .retain(|(index, request_id, key)| {
                if *index > applied {
                    return true;
                }
                out.responses
                    .push((*request_id, Response::Value(kv.get(key).cloned())));
                false
            });
    }

    fn fail_pending_reads(&mut self, leader: Option<NodeId>) {
        for (request_id, _) in std::mem::take(&mut self.pending_reads) {
            self.responses.push((
                request_id,
                Response::Failed(RequestError::NotLeader { leader }),
            ));
        }
        for (_, request_id, _) in std::mem::take(&mut self.reads_awaiting_apply) {
            self.responses.push((
                request_id,
                Response::Failed(RequestError::NotLeader { leader }),
            ));
        }
    }

    fn maybe_snapshot(&mut self, batch: &mut WriteBatch) {
        let applied = self.raft.applied_index();
        if applied.0 < self.snapshot_index.0 + self.config.snapshot_interval_entries {
            return;
        }
        let Some(term) = self.raft.log().term(applied) else {
            return;
        };
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index: applied,
                term,
            },
            data: self.kv.to_snapshot(),
        };
        persist::write_snapshot(batch, self.raft.group(), &snapshot, false);
        self.raft.compact(snapshot);
        self.snapshot_index = applied;
    }
}

fn request_error(error: RaftError) -> RequestError {
    match error {
        RaftError::NotLeader { leader } => RequestError::NotLeader { leader },
        RaftError::TransferInProgress => RequestError::Busy("leadership transfer in progress"),
        RaftError::Overloaded => RequestError::Busy("too many requests in flight"),
        RaftError::WrongGroup(_) | RaftError::UnknownPeer(_) => {
            RequestError::Invalid("unknown group or peer")
        }
    }
}
