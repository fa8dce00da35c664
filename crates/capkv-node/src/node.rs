use crate::kv::{Applied, BucketMode, Command, CommandView, KvState, Versioned};
use crate::persist;
use capkv_core::{GroupId, LogIndex, NodeId, SeenIds, StableHasher, Term};
use capkv_dynamo::{
    ApRequest, ApResponse, ApSpec, Dynamo, DynamoConfig, DynamoError, DynamoMessage,
};
use capkv_raft::{
    Config as RaftConfig, EntryKind, Message, Raft, RaftError, Role, Snapshot, SnapshotMeta,
};
use capkv_storage::{Storage, StorageError, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadConsistency {
    /// ReadIndex through the leader: sees every write acknowledged before the
    /// read started.
    Linearizable,
    /// This node's applied state, which may lag the leader.
    Stale,
}

/// A client request to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Replicate a command.
    Write(Command),
    /// Read one key.
    Read {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// How fresh the answer must be.
        consistency: ReadConsistency,
    },
    /// A request on an ap bucket, for the node's Dynamo engine.
    Ap(ApRequest),
}

/// Why a request failed. Each is definite: the request did not and will not
/// take effect (uncertain outcomes are never answered; the driver's deadline
/// turns them into timeouts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RequestError {
    /// No leader is known, or the known one is unreachable through this node.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The known leader.
        leader: Option<NodeId>,
    },
    /// The node is overloaded or transferring leadership: retry later.
    #[error("busy: {0}")]
    Busy(String),
    /// The proposal was overwritten by another leader's entry: it will never
    /// commit.
    #[error("proposal dropped by a leader change")]
    Dropped,
    /// The request is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The bucket does not exist.
    #[error("bucket not found")]
    BucketNotFound,
    /// This node stopped leading before the write committed, and knows no
    /// other leader (it cannot hear a majority). Unlike the others this is
    /// not a definite failure: the entry may still commit under a later
    /// leader that holds it, so the outcome is unknown. It is the answer the
    /// request's deadline would give, given as soon as it is known, so that
    /// a minority side refuses quickly.
    #[error("leadership lost before the write committed; its outcome is unknown")]
    LeaderLost,
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A write was committed and applied with this outcome.
    Applied(Applied),
    /// A read's result (`None` = absent).
    Value(Option<Versioned>),
    /// The request failed: definitely, except for
    /// [`RequestError::LeaderLost`], a write whose outcome is unknown.
    Failed(RequestError),
    /// The answer to an ap request (its failures included: an ap write
    /// that misses its level is not undone, so it is not a `Failed`).
    Ap(ApResponse),
}

/// What nodes say to each other.
///
/// The rarer, larger variants are boxed so that the value stays the size of
/// a Raft message: drivers move every message several times (queues, inboxes)
/// and the simulator moves millions. Boxing does not change the encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Raft traffic.
    Raft(Message),
    /// A follower hands a client request to the leader.
    Forward {
        /// The follower's id for it.
        forward_id: u64,
        /// The request.
        request: Box<Request>,
    },
    /// The leader's answer to a forwarded request.
    Forwarded {
        /// The follower's id for it.
        forward_id: u64,
        /// The answer.
        response: Response,
        /// For a write, the index of its entry (a delete's answer does not
        /// carry it): the follower answers its client only once it has
        /// applied that far itself. `LogIndex(0)` for other answers.
        applied_at: LogIndex,
    },
    /// ap traffic.
    Dynamo(Box<DynamoMessage>),
}

impl PeerMessage {
    /// A short name for timelines and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            PeerMessage::Raft(message) => message.body.name(),
            PeerMessage::Forward { .. } => "Forward",
            PeerMessage::Forwarded { .. } => "Forwarded",
            PeerMessage::Dynamo(message) => message.name(),
        }
    }
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
    /// Settings of the ap engine (its `id` must match).
    pub dynamo: DynamoConfig,
    /// Take a snapshot and compact the log after this many applied entries.
    pub snapshot_interval_entries: u64,
    /// Most key bytes accepted.
    pub key_bytes_max: usize,
    /// Most bucket-name bytes accepted.
    pub bucket_bytes_max: usize,
    /// Most value bytes accepted.
    pub value_bytes_max: usize,
    /// Most requests this node has forwarded and not yet heard back about.
    pub forwards_max: usize,
    /// A forwarded request not answered within this many ticks is forgotten
    /// (its client's deadline has long passed).
    pub forward_timeout_ticks: u64,
}

impl NodeConfig {
    /// Defaults for node `id` among `voters`, with Raft randomness from `seed`.
    pub fn new(id: NodeId, voters: Vec<NodeId>, seed: u64) -> NodeConfig {
        NodeConfig {
            id,
            dynamo: DynamoConfig::new(id, voters.clone()),
            raft: RaftConfig::new(id, GroupId(0), voters, seed),
            snapshot_interval_entries: 10_000,
            key_bytes_max: 1024,
            bucket_bytes_max: 128,
            value_bytes_max: 1 << 20,
            forwards_max: 10_000,
            forward_timeout_ticks: 3_000,
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
    /// The ap engine could not start.
    #[error(transparent)]
    Dynamo(#[from] DynamoError),
}

/// What one turn of the node wants done. The driver must write `batch` and
/// sync it (when `batch` is not empty) before it sends `messages` or
/// delivers `responses`.
#[derive(Debug, Default)]
pub struct NodeReady {
    /// Durable state to write first, and sync when `must_sync` is set.
    pub batch: WriteBatch,
    /// Whether `batch` must be synced before the messages and responses go
    /// out. A batch without it (a commit index, a local snapshot) may be
    /// written without a sync, in order with every other batch.
    pub must_sync: bool,
    /// Messages to peers (destination, message), after the sync.
    pub messages: Vec<(NodeId, PeerMessage)>,
    /// Answers to the driver's requests, after the sync, by request id.
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

/// Who is waiting for an answer: the driver's client, or a follower that
/// forwarded its client's request here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Requester {
    Local(u64),
    Remote { node: NodeId, forward_id: u64 },
}

/// A proposal waiting for its entry to apply.
#[derive(Clone, Copy, Debug)]
struct PendingWrite {
    requester: Requester,
    term: Term,
}

/// A request this node forwarded to the leader.
#[derive(Clone, Copy, Debug)]
struct Forwarded {
    request_id: u64,
    sent_tick: u64,
}

/// One capkv node: a Raft group and the key-value state it replicates.
pub struct Node {
    config: NodeConfig,
    raft: Raft,
    kv: KvState,
    dynamo: Dynamo,
    /// Proposals by log index.
    pending_writes: BTreeMap<LogIndex, PendingWrite>,
    /// Linearizable reads waiting for ReadIndex confirmation, by context.
    pending_reads: BTreeMap<u64, (Requester, String, String)>,
    /// Confirmed reads waiting for the state machine to reach their index.
    reads_awaiting_apply: Vec<(LogIndex, Requester, String, String)>,
    /// Requests forwarded to the leader, by forward id.
    forwarded: BTreeMap<u64, Forwarded>,
    /// The leader's answers to forwarded writes this node has not applied
    /// yet: (entry index, request id, answer, tick it arrived). Answering at
    /// once would let a stale read here, right after, miss the write. They
    /// count toward `forwards_max` with `forwarded`.
    answers_awaiting_apply: Vec<(LogIndex, u64, Response, u64)>,
    next_forward_id: u64,
    /// This life's boot epoch, until the first `ready` persists it (its
    /// messages, the first to carry the new ids, go out after that sync).
    boot_unsaved: Option<u64>,
    /// Forward ids already served, per origin, so that a duplicated or
    /// replayed `Forward` is never proposed twice.
    forwards_seen: BTreeMap<NodeId, SeenIds>,
    next_read_context: u64,
    ticks: u64,
    /// Answers and messages produced outside `ready` (failures found at
    /// once, forwards), handed out by the next `ready`.
    responses: Vec<(u64, Response)>,
    messages: Vec<(NodeId, PeerMessage)>,
    /// Index of the last snapshot taken or installed.
    snapshot_index: LogIndex,
    /// No entry of the log on storage (counting the batches handed out) is
    /// above this index, so entries appended past it replace nothing.
    log_persisted_last: LogIndex,
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
        // Recovery reads every stored entry after the snapshot (a gap is
        // corruption), so the last one read is the last one stored.
        let log_persisted_last = durable
            .entries
            .last()
            .map_or(snapshot_index, |entry| entry.index);
        // Request ids carry the boot epoch, so ids from this life are above
        // every id of an earlier one (a peer's duplicate filter and a late
        // answer to an earlier life's request both depend on it).
        let boot = persist::load_boot(storage)? + 1;
        let ids_from = boot << persist::BOOT_SHIFT | 1;
        let dynamo = Dynamo::restore(config.dynamo.clone(), storage, ap_buckets(&kv), ids_from)?;
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
            dynamo,
            pending_writes: BTreeMap::new(),
            pending_reads: BTreeMap::new(),
            reads_awaiting_apply: Vec::new(),
            forwarded: BTreeMap::new(),
            answers_awaiting_apply: Vec::new(),
            next_forward_id: ids_from,
            boot_unsaved: Some(boot),
            forwards_seen: BTreeMap::new(),
            next_read_context: 1,
            ticks: 0,
            responses: Vec::new(),
            messages: Vec::new(),
            snapshot_index,
            log_persisted_last,
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

    /// The ap engine (read-only), for status pages and checkers.
    pub fn dynamo(&self) -> &Dynamo {
        &self.dynamo
    }

    /// Index of the last entry applied to the key-value state.
    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }

    // ----- inputs -----

    /// One tick of time; `now_ms` is the node's physical clock (the ap
    /// engine's timestamps and deadlines use it; Raft counts ticks).
    pub fn tick(&mut self, now_ms: u64) {
        self.ticks += 1;
        self.raft.tick();
        self.dynamo.tick(now_ms);
        let horizon = self.ticks.saturating_sub(self.config.forward_timeout_ticks);
        self.forwarded
            .retain(|_, forwarded| forwarded.sent_tick >= horizon);
        self.answers_awaiting_apply
            .retain(|(_, _, _, arrived_tick)| *arrived_tick >= horizon);
    }

    /// A message from peer `from`. A peer is never trusted to be
    /// well-behaved: messages that name the wrong sender, group or request
    /// are dropped.
    pub fn handle_peer_message(&mut self, from: NodeId, message: PeerMessage) {
        match message {
            PeerMessage::Raft(message) => {
                if message.from != from || message.to != self.config.id {
                    return;
                }
                // Errors name a misdirected message; dropping it is the answer.
                let _ = self.raft.step(message);
            }
            PeerMessage::Forward {
                forward_id,
                request,
            } => self.handle_forward(from, forward_id, *request),
            PeerMessage::Forwarded {
                forward_id,
                response,
                applied_at,
            } => {
                if let Some(forwarded) = self.forwarded.remove(&forward_id) {
                    self.answer_forwarded(forwarded.request_id, response, applied_at);
                }
            }
            PeerMessage::Dynamo(message) => self.dynamo.handle_message(from, *message),
        }
    }

    /// The leader's answer to a request this node forwarded: a write's
    /// answer waits until this node has applied the write, so that the node
    /// holds every write made through it.
    fn answer_forwarded(&mut self, request_id: u64, response: Response, applied_at: LogIndex) {
        let answer_now =
            applied_at <= self.applied || self.config.raft.bugs.forward_answers_before_apply;
        if answer_now {
            self.responses.push((request_id, response));
        } else {
            self.answers_awaiting_apply
                .push((applied_at, request_id, response, self.ticks));
        }
    }

    /// Answers the forwarded writes this node has now applied.
    fn answer_applied_forwards(&mut self) {
        if self.answers_awaiting_apply.is_empty() {
            return;
        }
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.answers_awaiting_apply)
            .into_iter()
            .partition(|(index, ..)| *index <= applied);
        self.answers_awaiting_apply = waiting;
        for (_, request_id, response, _) in ready {
            self.responses.push((request_id, response));
        }
    }

    /// A follower's client request, forwarded here. Kept out of
    /// `handle_peer_message`, whose Raft path every message takes, so that
    /// path does not pay for this one's frame.
    #[inline(never)]
    fn handle_forward(&mut self, from: NodeId, forward_id: u64, request: Request) {
        if !self.raft.voters().contains(&from) || from == self.config.id {
            return;
        }
        let limit = self.config.forwards_max;
        if !self
            .forwards_seen
            .entry(from)
            .or_default()
            .insert(forward_id, limit)
        {
            return; // a duplicate: the first copy is answered
        }
        let requester = Requester::Remote {
            node: from,
            forward_id,
        };
        if self.raft.role() != Role::Leader && !is_stale_read(&request) {
            // One hop only: a forwarded request is never forwarded
            // again, so a stale leader hint cannot make a loop.
            let leader = self.raft.leader();
            self.respond(
                requester,
                Response::Failed(RequestError::NotLeader { leader }),
            );
            return;
        }
        self.serve(requester, request);
    }

    /// A client request, answered in a later `ready` under `request_id`.
    /// A follower forwards writes and linearizable reads to the leader.
    pub fn handle_request(&mut self, request_id: u64, request: Request) {
        if let Err(error) = self.validate(&request) {
            self.responses.push((request_id, Response::Failed(error)));
            return;
        }
        if let Request::Ap(request) = request {
            self.handle_ap_request(request_id, request);
            return;
        }
        let leader = self.raft.leader();
        let forward_to = match leader {
            Some(leader) if leader != self.config.id && !is_stale_read(&request) => leader,
            _ => {
                self.serve(Requester::Local(request_id), request);
                return;
            }
        };
        if self.forwarded.len() + self.answers_awaiting_apply.len() >= self.config.forwards_max {
            self.responses.push((
                request_id,
                Response::Failed(RequestError::Busy("too many forwarded requests".into())),
            ));
            return;
        }
        let forward_id = self.next_forward_id;
        self.next_forward_id += 1;
        self.forwarded.insert(
            forward_id,
            Forwarded {
                request_id,
                sent_tick: self.ticks,
            },
        );
        self.messages.push((
            forward_to,
            PeerMessage::Forward {
                forward_id,
                request: Box::new(request),
            },
        ));
    }

    /// An ap request goes to the Dynamo engine with its bucket's settings.
    fn handle_ap_request(&mut self, request_id: u64, request: ApRequest) {
        let bucket = match &request {
            ApRequest::Write { bucket, .. } | ApRequest::Read { bucket, .. } => Some(bucket),
            ApRequest::Repair { bucket } => bucket.as_ref(),
        };
        let spec = match bucket {
            None => None,
            Some(bucket) => match self.kv.bucket(bucket) {
                None => {
                    self.responses
                        .push((request_id, Response::Failed(RequestError::BucketNotFound)));
                    return;
                }
                Some(spec) => match spec.ap_spec() {
                    Some(spec) => Some(spec),
                    None => {
                        self.responses.push((
                            request_id,
                            Response::Failed(RequestError::Invalid(format!(
                                "bucket {bucket} is a cp bucket; ap requests need an ap bucket"
                            ))),
                        ));
                        return;
                    }
                },
            },
        };
        // Repair of every bucket needs no spec; any placeholder does.
        let spec = spec.unwrap_or(ApSpec {
            replicas: 1,
            conflict: Default::default(),
            read: Default::default(),
            write: Default::default(),
        });
        self.dynamo.handle_request(request_id, request, spec);
    }

    fn serve(&mut self, requester: Requester, request: Request) {
        match request {
            // Never forwarded: the node hands these to its engine first.
            Request::Ap(_) => self.respond(
                requester,
                Response::Failed(RequestError::Invalid(
                    "ap requests are not forwarded".into(),
                )),
            ),
            Request::Write(command) => self.propose(requester, command),
            Request::Read {
                bucket,
                key,
                consistency: ReadConsistency::Stale,
            } => {
                let response = self.read_now(&bucket, &key);
                self.respond(requester, response);
            }
            Request::Read {
                bucket,
                key,
                consistency: ReadConsistency::Linearizable,
            } => {
                let context = self.next_read_context;
                self.next_read_context += 1;
                match self.raft.read_index(context) {
                    Ok(()) => {
                        self.pending_reads.insert(context, (requester, bucket, key));
                    }
                    Err(error) => {
                        self.respond(requester, Response::Failed(request_error(error)));
                    }
                }
            }
        }
    }

    fn read_now(&self, bucket: &str, key: &str) -> Response {
        if self.kv.bucket(bucket).is_none() {
            return Response::Failed(RequestError::BucketNotFound);
        }
        Response::Value(self.kv.get(bucket, key).cloned())
    }

    fn respond(&mut self, requester: Requester, response: Response) {
        self.respond_applied_at(requester, response, LogIndex(0));
    }

    /// Answers `requester`; `applied_at` is the index of the write the
    /// answer reports (0 for other answers).
    fn respond_applied_at(
        &mut self,
        requester: Requester,
        response: Response,
        applied_at: LogIndex,
    ) {
        match requester {
            Requester::Local(request_id) => self.responses.push((request_id, response)),
            Requester::Remote { node, forward_id } => {
                // The forwarder holds the answer until it has applied
                // `applied_at`. It learns the commit index first (the link
                // keeps order), so that wait is usually nil.
                if let Some(news) = self.raft.commit_news(node) {
                    self.messages.push((node, PeerMessage::Raft(news)));
                }
                self.messages.push((
                    node,
                    PeerMessage::Forwarded {
                        forward_id,
                        response,
                        applied_at,
                    },
                ));
            }
        }
    }

    fn validate(&self, request: &Request) -> Result<(), RequestError> {
        let (bucket, key, value_bytes) = match request {
            Request::Write(Command::CreateBucket { name, .. }) => (name, None, 0),
            Request::Write(Command::Put { bucket, key, value }) => (bucket, Some(key), value.len()),
            Request::Write(Command::Delete { bucket, key }) => (bucket, Some(key), 0),
            Request::Write(Command::Cas {
                bucket, key, value, ..
            }) => (bucket, Some(key), value.as_ref().map_or(0, Vec::len)),
            Request::Read { bucket, key, .. } => (bucket, Some(key), 0),
            Request::Ap(ApRequest::Write {
                bucket, key, value, ..
            }) => (bucket, Some(key), value.as_ref().map_or(0, Vec::len)),
            Request::Ap(ApRequest::Read { bucket, key, .. }) => (bucket, Some(key), 0),
            Request::Ap(ApRequest::Repair { .. }) => return Ok(()),
        };
        if let Request::Write(Command::CreateBucket { spec, .. }) = request {
            let members = self.raft.voters().len();
            if spec.mode == BucketMode::Ap
                && (spec.replicas == 0 || usize::from(spec.replicas) > members)
            {
                return Err(RequestError::Invalid(format!(
                    "an ap bucket keeps 1 to {members} replicas of each key (one per node)"
                )));
            }
        }
        let cp_request = !matches!(
            request,
            Request::Ap(_) | Request::Write(Command::CreateBucket { .. })
        );
        if cp_request
            && self
                .kv
                .bucket(bucket)
                .is_some_and(|spec| spec.mode == BucketMode::Ap)
        {
            return Err(RequestError::Invalid(format!(
                "bucket {bucket} is an ap bucket; cp requests need a cp bucket"
            )));
        }
        if bucket.is_empty() || bucket.len() > self.config.bucket_bytes_max {
            return Err(RequestError::Invalid(format!(
                "bucket names are 1 to {} bytes",
                self.config.bucket_bytes_max
            )));
        }
        if let Some(key) = key {
            if key.is_empty() || key.len() > self.config.key_bytes_max {
                return Err(RequestError::Invalid(format!(
                    "keys are 1 to {} bytes",
                    self.config.key_bytes_max
                )));
            }
        }
        if value_bytes > self.config.value_bytes_max {
            return Err(RequestError::Invalid(format!(
                "values are at most {} bytes",
                self.config.value_bytes_max
            )));
        }
        Ok(())
    }

    fn propose(&mut self, requester: Requester, command: Command) {
        let data = command.encode();
        match self.raft.propose(data) {
            Ok((index, term)) => {
                self.pending_writes
                    .insert(index, PendingWrite { requester, term });
            }
            Err(error) => self.respond(requester, Response::Failed(request_error(error))),
        }
    }

    /// Asks the leader to hand leadership to `target`.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), RequestError> {
        self.raft.transfer_leader(target).map_err(request_error)
    }

    // ----- outputs -----

    /// True when `ready` would hand out something.
    pub fn has_ready(&self) -> bool {
        !self.responses.is_empty()
            || self.boot_unsaved.is_some()
            || !self.messages.is_empty()
            || self.raft.has_ready()
            || self.dynamo.has_ready()
    }

    /// Runs the node's cores until they are quiet and returns what the
    /// driver must do: write and sync `batch`, then send and answer.
    pub fn ready(&mut self) -> NodeReady {
        let mut out = NodeReady::default();
        self.ready_into(&mut out);
        out
    }

    /// Like [`Node::ready`], appending to `out` (and setting its
    /// `must_sync`, never clearing it): a driver that hands back the emptied
    /// vectors of its last turn, with `must_sync` cleared, allocates nothing
    /// per turn.
    pub fn ready_into(&mut self, out: &mut NodeReady) {
        if let Some(boot) = self.boot_unsaved.take() {
            // Forward ids grow from the boot epoch: a lost epoch would let
            // the next life reuse ids its leader already served.
            persist::write_boot(&mut out.batch, boot);
            out.must_sync = true;
        }
        // A leader's own append becomes countable in `advance`, which may
        // commit and produce more work; a few rounds reach a fixed point.
        for _ in 0..4 {
            if !self.raft.has_ready() {
                break;
            }
            self.ready_round(out);
        }
        self.maybe_snapshot(&mut out.batch);
        let mut ap_messages = Vec::new();
        let mut ap_responses = Vec::new();
        // An ap replica acknowledges what it stored: durable first.
        out.must_sync |=
            self.dynamo
                .take_ready(&mut out.batch, &mut ap_messages, &mut ap_responses);
        // Most turns have no answers and no ap traffic: moving empty
        // vectors costs more than asking whether they are empty.
        if !self.responses.is_empty() {
            out.responses.append(&mut self.responses);
        }
        if !ap_responses.is_empty() {
            out.responses.extend(
                ap_responses
                    .into_iter()
                    .map(|(id, response)| (id, Response::Ap(response))),
            );
        }
        if !self.messages.is_empty() {
            out.messages.append(&mut self.messages);
        }
        if !ap_messages.is_empty() {
            out.messages.extend(
                ap_messages
                    .into_iter()
                    .map(|(to, message)| (to, PeerMessage::Dynamo(Box::new(message)))),
            );
        }
    }

    fn ready_round(&mut self, out: &mut NodeReady) {
        let group = self.raft.group();
        // Step 2's messages go straight into `out` (the driver sends them
        // after the sync), without a vector of their own per round.
        let messages = &mut out.messages;
        let mut ready = self
            .raft
            .ready_sending(|message| messages.push((message.to, PeerMessage::Raft(message))));
        out.must_sync |= ready.must_sync;
        // Step 1: durable state, in one batch.
        if let Some(snapshot) = &ready.snapshot {
            persist::write_snapshot(&mut out.batch, group, snapshot, true);
            self.log_persisted_last = LogIndex(0);
        }
        persist::write_entries(
            &mut out.batch,
            group,
            &ready.entries,
            self.log_persisted_last,
        );
        if let (Some(first), Some(last)) = (ready.entries.first(), ready.entries.last()) {
            self.log_persisted_last = last.index;
            out.events.push(NodeEvent::LogAppended {
                group,
                first: first.index,
                last: last.index,
            });
        }
        if let Some(hard_state) = &ready.hard_state {
            persist::write_hard_state(&mut out.batch, group, hard_state);
        }
        if let Some(soft) = ready.soft_state {
            out.events.push(NodeEvent::RoleChanged {
                group,
                role: soft.role,
                term: self.raft.term(),
                leader: soft.leader,
            });
            if soft.role != Role::Leader {
                self.fail_pending_reads(soft.leader);
                if soft.leader.is_none() {
                    self.abandon_pending_writes();
                }
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
            if let Some((requester, bucket, key)) = self.pending_reads.remove(&read.context) {
                self.reads_awaiting_apply
                    .push((read.index, requester, bucket, key));
            }
        }
        self.serve_reads();
        self.answer_applied_forwards();
        self.raft.advance_reusing(&mut ready);
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot, out: &mut NodeReady) {
        match KvState::from_snapshot(&snapshot.data) {
            Ok(kv) => {
                for (name, spec) in ap_buckets(&kv) {
                    self.dynamo.add_bucket(name, spec);
                }
                self.kv = kv;
            }
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
            // Decoded in place: the state copies only what it keeps.
            EntryKind::Normal => match postcard::from_bytes::<CommandView>(&entry.data) {
                Ok(command) => {
                    let applied = self.kv.apply_view(entry.index.0, &command);
                    if let (CommandView::CreateBucket { name, spec }, Applied::BucketReady { .. }) =
                        (&command, &applied)
                    {
                        if let Some(spec) = spec.ap_spec() {
                            self.dynamo.add_bucket((*name).to_owned(), spec);
                        }
                    }
                    Some(applied)
                }
                // Every node applies the same bytes, so every node skips
                // the same undecodable entry and replicas stay equal.
                Err(_) => None,
            },
        };
        // Proposals below an applied index can no longer commit. Entries
        // apply in order, so those and this entry's are the first ones.
        while let Some(stale) = self.pending_writes.first_entry() {
            if *stale.key() >= entry.index {
                break;
            }
            let stale = stale.remove();
            self.respond(stale.requester, Response::Failed(RequestError::Dropped));
        }
        let Some(pending) = self
            .pending_writes
            .first_entry()
            .filter(|pending| *pending.key() == entry.index)
            .map(|pending| pending.remove())
        else {
            return;
        };
        let response = match result {
            Some(applied) if pending.term == entry.term => match applied {
                Applied::BucketNotFound => Response::Failed(RequestError::BucketNotFound),
                applied => Response::Applied(applied),
            },
            _ => Response::Failed(RequestError::Dropped),
        };
        let applied_at = match response {
            Response::Applied(_) => entry.index,
            _ => LogIndex(0),
        };
        self.respond_applied_at(pending.requester, response, applied_at);
    }

    /// Answers, in order, the confirmed reads the state machine has caught
    /// up with. They leave the queue by value: a read's strings are not
    /// copied to serve it.
    fn serve_reads(&mut self) {
        let mut at = 0;
        while at < self.reads_awaiting_apply.len() {
            if self.reads_awaiting_apply[at].0 > self.applied {
                at += 1;
                continue;
            }
            let (_, requester, bucket, key) = self.reads_awaiting_apply.remove(at);
            let response = self.read_now(&bucket, &key);
            self.respond(requester, response);
        }
    }

    /// Answers every write this node proposed as leader and has not seen
    /// commit: it no longer leads and knows no leader, so it could only wait
    /// for the requests' deadlines. With a new leader known, the writes stay:
    /// applying the entries at their indexes soon tells how each ended.
    fn abandon_pending_writes(&mut self) {
        for pending in std::mem::take(&mut self.pending_writes).into_values() {
            self.respond(
                pending.requester,
                Response::Failed(RequestError::LeaderLost),
            );
        }
    }

    fn fail_pending_reads(&mut self, leader: Option<NodeId>) {
        let failure = Response::Failed(RequestError::NotLeader { leader });
        let waiting: Vec<Requester> = std::mem::take(&mut self.pending_reads)
            .into_values()
            .map(|(requester, _, _)| requester)
            .chain(
                std::mem::take(&mut self.reads_awaiting_apply)
                    .into_iter()
                    .map(|(_, requester, _, _)| requester),
            )
            .collect();
        for requester in waiting {
            self.respond(requester, failure.clone());
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

/// The ap buckets of a state machine and their settings.
fn ap_buckets(kv: &KvState) -> BTreeMap<String, ApSpec> {
    kv.buckets()
        .iter()
        .filter_map(|(name, spec)| spec.ap_spec().map(|spec| (name.clone(), spec)))
        .collect()
}

fn is_stale_read(request: &Request) -> bool {
    matches!(
        request,
        Request::Read {
            consistency: ReadConsistency::Stale,
            ..
        }
    )
}

fn request_error(error: RaftError) -> RequestError {
    match error {
        RaftError::NotLeader { leader } => RequestError::NotLeader { leader },
        RaftError::TransferInProgress => {
            RequestError::Busy("leadership transfer in progress".into())
        }
        RaftError::Overloaded => RequestError::Busy("too many requests in flight".into()),
        RaftError::WrongGroup(_) | RaftError::UnknownPeer(_) => {
            RequestError::Invalid("unknown group or peer".into())
        }
    }
}
