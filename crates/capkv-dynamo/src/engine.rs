//! The ap replica and coordinator of one node, as a deterministic state
//! machine: quorum writes and reads, read repair, hinted handoff, Merkle
//! anti-entropy and tombstone reaping.
//!
//! # Driver contract
//!
//! 1. Feed inputs: [`Dynamo::tick`] (with the node's physical time in
//!    milliseconds), [`Dynamo::handle_message`], [`Dynamo::handle_request`].
//! 2. Take [`Dynamo::take_ready`]: write its batch and, when it says so,
//!    sync it first, then send its messages and deliver its responses. A
//!    replica acknowledges a write only in messages that follow the sync,
//!    and a coordinator counts its own copy for the same reason only in
//!    answers that follow it.
//!
//! # Rules
//!
//! 1. Placement: a key's replicas are the first N distinct nodes of its
//!    preference list on the ring. A write is coordinated by one of them
//!    (dots need a replica's state); a node that holds no replica hands the
//!    write to the first replica it has heard from lately. Reads are
//!    coordinated by whichever node received them.
//! 2. A write is applied to the coordinator's copy, sent whole (the merged
//!    object, not a delta) to the other replicas, and answered after W
//!    acknowledgements. Replicas that have not acknowledged by the deadline
//!    get a hint: the object, stored durably on the coordinator and
//!    re-sent when the replica answers pings again. A replica already
//!    known to be down gets its hint at once, in the write's own batch. Hints never count
//!    toward W. A write that misses W is answered `NoQuorum` but is not
//!    undone: it stays on the replicas that took it and spreads.
//! 3. A read asks every replica and answers after R of them (and, with a
//!    session token, only once the merged answer covers the session's
//!    write). When every replica has answered, or at the deadline, the
//!    replicas whose copy differs from the merge are sent the merge (read
//!    repair).
//! 4. With R + W > N, a read's R replicas overlap every completed write's W
//!    replicas, so a read sees every write acknowledged before it began,
//!    when no replica loses data. It does not make concurrent writes
//!    ordered (siblings or lww decide), nor a failed write invisible.
//! 5. Anti-entropy: each node keeps, per ap bucket and per peer, a Merkle
//!    tree over the keys both replicate. Every `ae_interval_ms` it sends one
//!    peer a root; on a difference the peer sends its leaf hashes, and the
//!    two swap the objects of the differing leaves only, both ways.
//! 6. Tombstones: a tombstone is reaped only when a coordinator saw every
//!    replica hold the very same tombstone (all N answers with one digest),
//!    and then only `tombstone_grace_ms` later on each replica. Writes
//!    (replication and hints) older than `hint_ttl_ms` plus the drift bound
//!    are refused and hints expire at `hint_ttl_ms`, and the grace is larger
//!    than both, so no write the tombstone superseded can arrive after it
//!    is gone.
//! 7. Dots come from a node-wide counter that never goes back (persisted
//!    with every write), and lww timestamps from the node's hybrid logical
//!    clock (persisted likewise), so neither is reused after a restart.

use crate::api::{
    ApError, ApRequest, ApResponse, ApSpec, Conflict, Context, ReadLevel, Session, SessionVersion,
};
use crate::hlc::{HlcClock, Lww};
use crate::merkle::MerkleTree;
use crate::object::{merge_all, Object};
use crate::ring::Ring;
use crate::DvvSet;
use capkv_core::{NodeId, SeenIds, StableHasher};
use capkv_storage::{Keyspace, Storage, StorageError, WriteBatch};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Replica data: `[bucket len u8][bucket][key]` → object.
pub const DATA: Keyspace = Keyspace("ap_data");
/// Hints: `[target u64 BE][bucket len u8][bucket][key]` → hint.
pub const HINTS: Keyspace = Keyspace("ap_hints");
/// The dot counter and the clock.
pub const META: Keyspace = Keyspace("ap_meta");

const META_COUNTER: &[u8] = b"counter";
const META_CLOCK: &[u8] = b"clock";
/// Pairs read per scan page during restore.
const RESTORE_PAGE: usize = 4096;

/// Switches that break the protocol on purpose, so tests can show the
/// checkers catch it. Never set outside tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DynamoBugs {
    /// A read keeps one replica's values but every replica's history, and
    /// repairs the others with that: writes nobody superseded vanish.
    pub read_repair_skips_merge: bool,
    /// Hints are never stored: a replica that missed a write only gets it
    /// from anti-entropy or read repair.
    pub drop_hints: bool,
    /// A replica puts a replicated object in its batch but does not ask for
    /// a sync: its `ReplicateAck` leaves while the object is unsynced, and a
    /// crash then loses a write it said was durable.
    pub ack_before_sync: bool,
}

/// Settings of the ap engine.
#[derive(Clone, Debug)]
pub struct DynamoConfig {
    /// This node.
    pub id: NodeId,
    /// Every node of the cluster (the ring).
    pub nodes: Vec<NodeId>,
    /// Ring positions per node.
    pub vnodes_per_node: usize,
    /// A coordinator answers (or gives up) within this long.
    pub request_timeout_ms: u64,
    /// Liveness pings to every peer this often.
    pub ping_interval_ms: u64,
    /// A peer not heard from in this long counts as down.
    pub peer_down_after_ms: u64,
    /// Hints are re-sent this often while their replica is up.
    pub hint_retry_ms: u64,
    /// Hints delivered per target per retry.
    pub hint_batch: usize,
    /// Most hints held; more are dropped (anti-entropy repairs them).
    pub hints_max: usize,
    /// A hint older than this is dropped, and a replica refuses a write
    /// this much older than its clock (plus `max_drift_ms`).
    pub hint_ttl_ms: u64,
    /// Background anti-entropy: one exchange this often (0 = off).
    pub ae_interval_ms: u64,
    /// Leaves of each Merkle tree (a power of two).
    pub merkle_leaves: usize,
    /// Differing leaves repaired per exchange.
    pub ae_leaves_per_exchange: usize,
    /// Objects sent per anti-entropy message.
    pub ae_objects_max: usize,
    /// Bytes of objects sent per anti-entropy message (well under the
    /// transport's frame limit); the rest waits for the next exchange.
    pub ae_bytes_max: usize,
    /// A confirmed tombstone is removed this long after confirmation.
    /// Must exceed `hint_ttl_ms + 2 * max_drift_ms`.
    pub tombstone_grace_ms: u64,
    /// Clock drift bound for the hybrid logical clock.
    pub max_drift_ms: u64,
    /// Most coordinated requests in flight.
    pub requests_max: usize,
    /// Most confirmed tombstones waiting out their grace; more stay
    /// (harmlessly) until a later read or write confirms them again.
    pub reaps_max: usize,
    /// Most siblings a write may leave on a key.
    pub siblings_max: usize,
    /// Most encoded bytes of one key's object (under the transport's frame
    /// limit, so every object can travel whole).
    pub object_bytes_max: usize,
    /// Deliberate bugs, for checker tests.
    pub bugs: DynamoBugs,
}

impl DynamoConfig {
    /// Defaults for node `id` of `nodes`.
    pub fn new(id: NodeId, nodes: Vec<NodeId>) -> DynamoConfig {
        DynamoConfig {
            id,
            nodes,
            vnodes_per_node: 64,
            request_timeout_ms: 1_000,
            ping_interval_ms: 200,
            peer_down_after_ms: 1_000,
            hint_retry_ms: 500,
            hint_batch: 256,
            hints_max: 100_000,
            hint_ttl_ms: 3 * 3_600_000,
            ae_interval_ms: 10_000,
            merkle_leaves: 1024,
            ae_leaves_per_exchange: 64,
            ae_objects_max: 512,
            ae_bytes_max: 4 << 20,
            tombstone_grace_ms: 7 * 3_600_000,
            max_drift_ms: 500,
            requests_max: 10_000,
            reaps_max: 100_000,
            siblings_max: 64,
            object_bytes_max: 8 << 20,
            bugs: DynamoBugs::default(),
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.tombstone_grace_ms <= self.hint_ttl_ms + 2 * self.max_drift_ms {
            return Err(format!(
                "tombstone grace ({} ms) must exceed the hint ttl ({} ms) plus twice the \
                 drift bound ({} ms), or a late hint could bring deleted data back",
                self.tombstone_grace_ms, self.hint_ttl_ms, self.max_drift_ms
            ));
        }
        if !self.nodes.contains(&self.id) {
            return Err(format!("node {} is not among {:?}", self.id, self.nodes));
        }
        Ok(())
    }
}

/// What ap nodes say to each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DynamoMessage {
    /// Merge this object; acknowledge with `req` unless it is 0.
    Replicate {
        /// The sender's id for the acknowledgement (0: none wanted).
        req: u64,
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The whole object.
        object: Object,
        /// When the write (or hint) was made, by the sender's clock.
        origin_ms: u64,
    },
    /// The object is merged and durable.
    ReplicateAck {
        /// The `req` of the `Replicate`.
        req: u64,
        /// The digest of the replica's object after the merge.
        digest: u64,
    },
    /// Send me your object for this key.
    Fetch {
        /// The sender's id for the answer.
        req: u64,
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// The answer to a `Fetch`.
    Fetched {
        /// The `req` of the `Fetch`.
        req: u64,
        /// The object, if the replica has one.
        object: Option<Object>,
    },
    /// Coordinate this write for me (I hold no replica of the key).
    Coordinate {
        /// The sender's id for the answer.
        req: u64,
        /// The write.
        request: ApRequest,
        /// The bucket's settings.
        spec: ApSpec,
    },
    /// The answer to a `Coordinate`.
    Coordinated {
        /// The `req` of the `Coordinate`.
        req: u64,
        /// The answer.
        response: ApResponse,
    },
    /// Every replica holds this tombstone: reap it after the grace.
    Reap {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The tombstone's digest.
        digest: u64,
    },
    /// Liveness probe.
    Ping,
    /// Liveness answer.
    Pong,
    /// Anti-entropy step 1: my tree root for the keys we share.
    AeRoot {
        /// The exchange.
        exchange: u64,
        /// The bucket.
        bucket: String,
        /// The root hash.
        root: u64,
    },
    /// Step 2: the roots differ; here are my leaf hashes.
    AeLeaves {
        /// The exchange.
        exchange: u64,
        /// The bucket.
        bucket: String,
        /// Every leaf hash, in leaf order.
        leaves: Vec<u64>,
    },
    /// Steps 3 and 4: my objects in these leaves (and, when `reply`, send
    /// me yours).
    AeObjects {
        /// The exchange.
        exchange: u64,
        /// The bucket.
        bucket: String,
        /// The differing leaves.
        leaves: Vec<u32>,
        /// The sender's objects in them.
        objects: Vec<(String, Object)>,
        /// Whether the receiver should answer with its own.
        reply: bool,
    },
}

impl DynamoMessage {
    /// A short name for timelines and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            DynamoMessage::Replicate { .. } => "Replicate",
            DynamoMessage::ReplicateAck { .. } => "ReplicateAck",
            DynamoMessage::Fetch { .. } => "Fetch",
            DynamoMessage::Fetched { .. } => "Fetched",
            DynamoMessage::Coordinate { .. } => "Coordinate",
            DynamoMessage::Coordinated { .. } => "Coordinated",
            DynamoMessage::Reap { .. } => "Reap",
            DynamoMessage::Ping => "Ping",
            DynamoMessage::Pong => "Pong",
            DynamoMessage::AeRoot { .. } => "AeRoot",
            DynamoMessage::AeLeaves { .. } => "AeLeaves",
            DynamoMessage::AeObjects { .. } => "AeObjects",
        }
    }
}

/// Counters for metrics and status pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DynamoStats {
    /// Writes coordinated.
    pub writes: u64,
    /// Reads coordinated.
    pub reads: u64,
    /// Requests answered `NoQuorum`.
    pub no_quorum: u64,
    /// Replicas sent a merged object by read repair.
    pub read_repairs: u64,
    /// Hints stored.
    pub hints_stored: u64,
    /// Hints delivered and acknowledged.
    pub hints_delivered: u64,
    /// Hints dropped (full, or expired).
    pub hints_dropped: u64,
    /// Hints held now.
    pub hints_pending: u64,
    /// Anti-entropy exchanges started.
    pub ae_exchanges: u64,
    /// Exchanges that found the trees equal.
    pub ae_in_sync: u64,
    /// Keys changed by anti-entropy on this node.
    pub ae_keys_repaired: u64,
    /// Tombstones removed.
    pub tombstones_reaped: u64,
    /// Writes refused because they were older than the hint ttl.
    pub stale_writes_refused: u64,
    /// Objects held.
    pub objects: u64,
}

/// Who waits for an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Requester {
    Local(u64),
    Remote { node: NodeId, req: u64 },
}

struct WriteOp {
    requester: Requester,
    bucket: String,
    key: String,
    replicas: Vec<NodeId>,
    required: usize,
    digests: BTreeMap<NodeId, u64>,
    object: Object,
    /// The digest of `object`.
    digest: u64,
    origin_ms: u64,
    answer: ApResponse,
    answered: bool,
    deadline_ms: u64,
}

struct ReadOp {
    requester: Requester,
    bucket: String,
    key: String,
    replicas: Vec<NodeId>,
    required: usize,
    responses: BTreeMap<NodeId, Option<Object>>,
    session: Option<SessionVersion>,
    answered: bool,
    deadline_ms: u64,
}

struct ForwardOp {
    request_id: u64,
    coordinator: NodeId,
    replicas: usize,
    deadline_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Hint {
    object: Object,
    created_ms: u64,
}

type HintKey = (NodeId, String, String);

struct Exchange {
    bucket: String,
    peer: NodeId,
    started_ms: u64,
}

/// One node's ap engine.
pub struct Dynamo {
    config: DynamoConfig,
    ring: Ring,
    buckets: BTreeMap<String, ApSpec>,
    /// Replica data by bucket, then key: the object and its digest.
    store: BTreeMap<String, BTreeMap<String, (Object, u64)>>,
    /// Per bucket, per peer: a tree over the keys both replicate.
    trees: BTreeMap<String, BTreeMap<NodeId, MerkleTree>>,
    hints: BTreeMap<HintKey, Hint>,
    /// Hint deliveries in flight: req → (hint, digest sent).
    hint_deliveries: BTreeMap<u64, (HintKey, u64)>,
    writes: BTreeMap<u64, WriteOp>,
    reads: BTreeMap<u64, ReadOp>,
    forwards: BTreeMap<u64, ForwardOp>,
    exchanges: BTreeMap<u64, Exchange>,
    /// Tombstones to remove: (due ms, bucket, key) → digest.
    reap_queue: BTreeMap<(u64, String, String), u64>,
    last_heard: BTreeMap<NodeId, u64>,
    clock: HlcClock,
    dot_counter: u64,
    next_req: u64,
    /// `Coordinate` ids served, per origin: a duplicated message must not
    /// make a second write with a second dot.
    coordinated: BTreeMap<NodeId, SeenIds>,
    next_exchange_target: usize,
    now_ms: u64,
    /// The first tick's time.
    started_ms: Option<u64>,
    last_ping_ms: u64,
    last_hint_round_ms: u64,
    last_ae_ms: u64,
    meta_dirty: bool,
    /// Operations at the head of `batch` that may go unsynced: only the
    /// deliberate `ack_before_sync` bug puts any there.
    ops_unsynced: usize,
    /// Whether `meta_dirty` was set by writes that may go unsynced only
    /// (the deliberate bug again).
    meta_unsynced: bool,
    batch: WriteBatch,
    messages: Vec<(NodeId, DynamoMessage)>,
    responses: Vec<(u64, ApResponse)>,
    stats: DynamoStats,
}

/// Errors that stop a node.
#[derive(Debug, thiserror::Error)]
pub enum DynamoError {
    /// The storage engine failed or holds garbage.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The configuration is unusable.
    #[error("ap configuration: {0}")]
    Config(String),
}

fn ring_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + bucket.len() + key.len());
    // Bucket names are at most 255 bytes (the node enforces 128).
    bytes.push(u8::try_from(bucket.len()).unwrap_or(u8::MAX));
    bytes.extend_from_slice(bucket.as_bytes());
    bytes.extend_from_slice(key.as_bytes());
    bytes
}

fn split_ring_key(bytes: &[u8]) -> Option<(String, String)> {
    let length = usize::from(*bytes.first()?);
    let bucket = bytes.get(1..1 + length)?;
    let key = bytes.get(1 + length..)?;
    Some((
        String::from_utf8(bucket.to_vec()).ok()?,
        String::from_utf8(key.to_vec()).ok()?,
    ))
}

fn hint_storage_key(target: NodeId, bucket: &str, key: &str) -> Vec<u8> {
    let mut bytes = target.0.to_be_bytes().to_vec();
    bytes.extend_from_slice(&ring_key(bucket, key));
    bytes
}

fn corrupt(keyspace: Keyspace, reason: String) -> StorageError {
    StorageError::Corrupt {
        keyspace: keyspace.0,
        reason,
    }
}

fn scan_all(
    storage: &dyn Storage,
    keyspace: Keyspace,
    mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let mut start: Vec<u8> = Vec::new();
    let end = vec![0xff; 1100];
    loop {
        let page = storage.scan(keyspace, &start, &end, RESTORE_PAGE)?;
        for (key, value) in &page {
            visit(key, value)?;
        }
        match page.last() {
            Some((last, _)) if page.len() == RESTORE_PAGE => {
                start = last.clone();
                start.push(0);
            }
            _ => return Ok(()),
        }
    }
}

impl Dynamo {
    /// Restores the engine from `storage` (empty storage: a fresh node).
    /// Request ids start at `ids_from`, which must be above every id an
    /// earlier life of this node used (the node prefixes a boot epoch): a
    /// late answer to an earlier life's request must not count for a new
    /// one, and peers refuse ids they have seen.
    pub fn restore(
        config: DynamoConfig,
        storage: &dyn Storage,
        buckets: BTreeMap<String, ApSpec>,
        ids_from: u64,
    ) -> Result<Dynamo, DynamoError> {
        config.check().map_err(DynamoError::Config)?;
        let ring = Ring::new(&config.nodes, config.vnodes_per_node)
            .map_err(|error| DynamoError::Config(error.to_string()))?;
        let dot_counter = match storage.get(META, META_COUNTER)? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt(META, "dot counter is not 8 bytes".into()))?,
            ),
            None => 0,
        };
        let clock = match storage.get(META, META_CLOCK)? {
            Some(bytes) => HlcClock::starting_after(
                postcard::from_bytes(&bytes).map_err(|error| corrupt(META, error.to_string()))?,
                config.max_drift_ms,
            ),
            None => HlcClock::new(config.max_drift_ms),
        };
        let mut store: BTreeMap<String, BTreeMap<String, (Object, u64)>> = BTreeMap::new();
        scan_all(storage, DATA, |key, value| {
            let (bucket, key) =
                split_ring_key(key).ok_or_else(|| corrupt(DATA, "malformed key".into()))?;
            let object: Object =
                postcard::from_bytes(value).map_err(|error| corrupt(DATA, error.to_string()))?;
            let digest = object.digest();
            store
                .entry(bucket)
                .or_default()
                .insert(key, (object, digest));
            Ok(())
        })?;
        let mut hints = BTreeMap::new();
        scan_all(storage, HINTS, |key, value| {
            let target = key
                .get(..8)
                .and_then(|bytes| bytes.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt(HINTS, "malformed key".into()))?;
            let (bucket, key) = key
                .get(8..)
                .and_then(split_ring_key)
                .ok_or_else(|| corrupt(HINTS, "malformed key".into()))?;
            let hint: Hint =
                postcard::from_bytes(value).map_err(|error| corrupt(HINTS, error.to_string()))?;
            hints.insert((NodeId(target), bucket, key), hint);
            Ok(())
        })?;
        let mut dynamo = Dynamo {
            config,
            ring,
            buckets: BTreeMap::new(),
            store,
            trees: BTreeMap::new(),
            hints,
            hint_deliveries: BTreeMap::new(),
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            forwards: BTreeMap::new(),
            exchanges: BTreeMap::new(),
            reap_queue: BTreeMap::new(),
            last_heard: BTreeMap::new(),
            clock,
            dot_counter,
            next_req: ids_from.max(1),
            coordinated: BTreeMap::new(),
            next_exchange_target: 0,
            now_ms: 0,
            started_ms: None,
            last_ping_ms: 0,
            last_hint_round_ms: 0,
            last_ae_ms: 0,
            meta_dirty: false,
            ops_unsynced: 0,
            meta_unsynced: false,
            batch: WriteBatch::new(),
            messages: Vec::new(),
            responses: Vec::new(),
            stats: DynamoStats::default(),
        };
        for (name, spec) in buckets {
            dynamo.add_bucket(name, spec);
        }
        Ok(dynamo)
    }

    // ----- getters -----

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Counters, and the gauges as of now.
    pub fn stats(&self) -> DynamoStats {
        DynamoStats {
            hints_pending: self.hints.len() as u64,
            objects: self.store.values().map(|keys| keys.len() as u64).sum(),
            ..self.stats
        }
    }

    /// The key's replicas (its preference list cut at N).
    pub fn replicas(&self, bucket: &str, key: &str, n: u8) -> Vec<NodeId> {
        self.ring
            .preference_list(&ring_key(bucket, key), usize::from(n))
    }

    /// This node's object for a key, for checkers and `local` reads.
    pub fn object(&self, bucket: &str, key: &str) -> Option<&Object> {
        self.store.get(bucket)?.get(key).map(|(object, _)| object)
    }

    /// Every (bucket, key, object) this node holds, in order.
    pub fn objects(&self) -> impl Iterator<Item = (&str, &str, &Object)> + '_ {
        self.store.iter().flat_map(|(bucket, keys)| {
            keys.iter()
                .map(move |(key, (object, _))| (bucket.as_str(), key.as_str(), object))
        })
    }

    /// Hints held for `target`.
    pub fn hints_for(&self, target: NodeId) -> usize {
        self.hints
            .keys()
            .filter(|(node, _, _)| *node == target)
            .count()
    }

    /// Whether the engine has output waiting.
    pub fn has_ready(&self) -> bool {
        !self.batch.is_empty()
            || !self.messages.is_empty()
            || !self.responses.is_empty()
            || self.meta_dirty
    }

    // ----- inputs -----

    /// Makes `name` known as an ap bucket (on creation and on restore).
    pub fn add_bucket(&mut self, name: String, spec: ApSpec) {
        if self.buckets.get(&name) == Some(&spec) {
            return;
        }
        let mut trees = BTreeMap::new();
        for peer in self.ring.nodes().filter(|node| *node != self.config.id) {
            if let Ok(tree) = MerkleTree::new(self.config.merkle_leaves) {
                trees.insert(peer, tree);
            }
        }
        if let Some(keys) = self.store.get(&name) {
            for (key, (_, digest)) in keys {
                let ring_key = ring_key(&name, key);
                let replicas = self
                    .ring
                    .preference_list(&ring_key, usize::from(spec.replicas));
                if !replicas.contains(&self.config.id) {
                    continue;
                }
                for peer in &replicas {
                    if let Some(tree) = trees.get_mut(peer) {
                        tree.update(&ring_key, None, Some(*digest));
                    }
                }
            }
        }
        self.trees.insert(name.clone(), trees);
        self.buckets.insert(name, spec);
    }

    /// The node's physical time moved on.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.started_ms.get_or_insert(now_ms);
        let now = self.now_ms;
        if self.buckets.is_empty() && self.hints.is_empty() {
            // A cluster without ap buckets pays nothing for them.
            return;
        }
        if now >= self.last_ping_ms + self.config.ping_interval_ms {
            self.last_ping_ms = now;
            for peer in self.peers() {
                self.messages.push((peer, DynamoMessage::Ping));
            }
        }
        self.expire_requests();
        if now >= self.last_hint_round_ms + self.config.hint_retry_ms {
            self.last_hint_round_ms = now;
            self.hint_round();
        }
        if self.config.ae_interval_ms > 0 && now >= self.last_ae_ms + self.config.ae_interval_ms {
            self.last_ae_ms = now;
            self.start_next_exchange();
        }
        self.reap_due();
    }

    /// A message from peer `from`.
    pub fn handle_message(&mut self, from: NodeId, message: DynamoMessage) {
        if from == self.config.id || !self.config.nodes.contains(&from) {
            return;
        }
        self.last_heard.insert(from, self.now_ms);
        match message {
            DynamoMessage::Ping => self.messages.push((from, DynamoMessage::Pong)),
            DynamoMessage::Pong => {}
            DynamoMessage::Replicate {
                req,
                bucket,
                key,
                object,
                origin_ms,
            } => {
                let oldest = self
                    .now_ms
                    .saturating_sub(self.config.hint_ttl_ms + self.config.max_drift_ms);
                if origin_ms < oldest {
                    self.stats.stale_writes_refused += 1;
                    return;
                }
                if !object.is_well_formed() {
                    return;
                }
                let (ops_before, meta_before) = (self.batch.ops.len(), self.meta_dirty);
                let digest = self.merge_object(&bucket, &key, &object);
                if self.config.bugs.ack_before_sync && self.ops_unsynced == ops_before {
                    // The deliberate bug: what the merge wrote asks for no
                    // sync (unless something before it in the batch did).
                    self.ops_unsynced = self.batch.ops.len();
                    self.meta_unsynced |= !meta_before && self.meta_dirty;
                }
                if req != 0 {
                    self.messages
                        .push((from, DynamoMessage::ReplicateAck { req, digest }));
                }
            }
            DynamoMessage::ReplicateAck { req, digest } => self.on_ack(from, req, digest),
            DynamoMessage::Fetch { req, bucket, key } => {
                let object = self.object(&bucket, &key).cloned();
                self.messages
                    .push((from, DynamoMessage::Fetched { req, object }));
            }
            DynamoMessage::Fetched { req, object } => {
                if object
                    .as_ref()
                    .is_some_and(|object| !object.is_well_formed())
                {
                    return;
                }
                if let Some(timestamp) = object.as_ref().and_then(Object::timestamp) {
                    let _ = self.clock.update(timestamp, self.now_ms);
                }
                self.on_fetched(from, req, object);
            }
            DynamoMessage::Coordinate { req, request, spec } => {
                let limit = self.config.requests_max;
                if !self.coordinated.entry(from).or_default().insert(req, limit) {
                    return; // a duplicate: the first copy is being answered
                }
                let requester = Requester::Remote { node: from, req };
                self.coordinate_write(requester, request, spec);
            }
            DynamoMessage::Coordinated { req, response } => {
                if let Some(forward) = self.forwards.remove(&req) {
                    self.responses.push((forward.request_id, response));
                }
            }
            DynamoMessage::Reap {
                bucket,
                key,
                digest,
            } => self.schedule_reap(bucket, key, digest),
            DynamoMessage::AeRoot {
                exchange,
                bucket,
                root,
            } => {
                let Some(tree) = self.tree(&bucket, from) else {
                    return;
                };
                if tree.root() == root {
                    return;
                }
                let leaves = (0..tree.leaf_count())
                    .map(|leaf| tree.leaf_hash(leaf).unwrap_or(0))
                    .collect();
                self.messages.push((
                    from,
                    DynamoMessage::AeLeaves {
                        exchange,
                        bucket,
                        leaves,
                    },
                ));
            }
            DynamoMessage::AeLeaves {
                exchange,
                bucket,
                leaves,
            } => self.on_ae_leaves(from, exchange, bucket, &leaves),
            DynamoMessage::AeObjects {
                exchange,
                bucket,
                leaves,
                objects,
                reply,
            } => self.on_ae_objects(from, exchange, bucket, leaves, objects, reply),
        }
    }

    /// A client request, answered in a later `take_ready` under
    /// `request_id`. `spec` is the bucket's settings (the node checked the
    /// bucket exists and is ap).
    pub fn handle_request(&mut self, request_id: u64, request: ApRequest, spec: ApSpec) {
        let requester = Requester::Local(request_id);
        if self.writes.len() + self.reads.len() + self.forwards.len() >= self.config.requests_max {
            self.respond(
                requester,
                ApResponse::Failed(ApError::Busy("too many ap requests in flight".into())),
            );
            return;
        }
        match request {
            ApRequest::Write { .. } => self.coordinate_write(requester, request, spec),
            ApRequest::Read {
                bucket,
                key,
                level,
                session,
            } => self.coordinate_read(requester, bucket, key, level, session, spec),
            ApRequest::Repair { bucket } => {
                let targets: Vec<(String, NodeId)> = self
                    .exchange_targets()
                    .into_iter()
                    .filter(|(name, _)| bucket.as_ref().is_none_or(|wanted| wanted == name))
                    .collect();
                for (name, peer) in &targets {
                    self.start_exchange(name.clone(), *peer);
                }
                self.respond(
                    requester,
                    ApResponse::RepairStarted {
                        exchanges: targets.len(),
                    },
                );
            }
        }
    }

    // ----- outputs -----

    /// Hands out what the driver must do: write the batch, sync it when
    /// this returns true (whenever the batch is not empty, but for the
    /// deliberate `ack_before_sync` bug), then send the messages and deliver
    /// the responses.
    #[must_use = "the batch must be synced before the messages leave when this is true"]
    pub fn take_ready(
        &mut self,
        batch: &mut WriteBatch,
        messages: &mut Vec<(NodeId, DynamoMessage)>,
        responses: &mut Vec<(u64, ApResponse)>,
    ) -> bool {
        if !self.has_ready() {
            // Every turn asks, and a cp-only node never has anything.
            return false;
        }
        let must_sync =
            self.batch.ops.len() > self.ops_unsynced || (self.meta_dirty && !self.meta_unsynced);
        self.ops_unsynced = 0;
        self.meta_unsynced = false;
        if self.meta_dirty {
            self.meta_dirty = false;
            self.batch.put(
                META,
                META_COUNTER.to_vec(),
                self.dot_counter.to_be_bytes().to_vec(),
            );
            self.batch.put(
                META,
                META_CLOCK.to_vec(),
                postcard::to_allocvec(&self.clock.last()).expect("timestamps serialise"),
            );
        }
        batch.append(&mut self.batch);
        messages.append(&mut self.messages);
        responses.append(&mut self.responses);
        must_sync
    }

    // ----- coordinator: writes -----

    fn coordinate_write(&mut self, requester: Requester, request: ApRequest, spec: ApSpec) {
        let ApRequest::Write {
            bucket,
            key,
            value,
            context,
            level,
        } = request
        else {
            return;
        };
        let replicas = self.replicas(&bucket, &key, spec.replicas);
        if !replicas.contains(&self.config.id) {
            // Rule 1: hand the write to a replica.
            let Requester::Local(request_id) = requester else {
                // One hop only: a forwarded write is never forwarded again.
                self.respond(
                    requester,
                    ApResponse::Failed(ApError::NotAReplica {
                        node: self.config.id,
                        replicas,
                    }),
                );
                return;
            };
            let target = replicas
                .iter()
                .copied()
                .find(|node| self.is_up(*node))
                .or_else(|| replicas.first().copied());
            let Some(target) = target else {
                self.respond(
                    requester,
                    ApResponse::Failed(ApError::NoQuorum {
                        required: 1,
                        responded: 0,
                        replicas: 0,
                    }),
                );
                return;
            };
            let req = self.next_req();
            // A little longer than the coordinator's own deadline, so that
            // its answer (even a "no quorum") normally arrives first.
            let timeout = self.config.request_timeout_ms + self.config.request_timeout_ms / 4;
            self.forwards.insert(
                req,
                ForwardOp {
                    request_id,
                    coordinator: target,
                    replicas: replicas.len(),
                    deadline_ms: self.now_ms + timeout,
                },
            );
            self.messages.push((
                target,
                DynamoMessage::Coordinate {
                    req,
                    request: ApRequest::Write {
                        bucket,
                        key,
                        value,
                        context,
                        level,
                    },
                    spec,
                },
            ));
            return;
        }
        let context = match context.as_deref().map(Context::decode).transpose() {
            Ok(context) => context.unwrap_or_default(),
            Err(error) => {
                self.respond(requester, ApResponse::Failed(error));
                return;
            }
        };
        self.stats.writes += 1;
        let current = self.object(&bucket, &key).cloned();
        let (object, version) = match spec.conflict {
            Conflict::Siblings => {
                let mut set = match current {
                    Some(Object::Siblings(set)) => set,
                    _ => DvvSet::new(),
                };
                let dot = set.write_after(&context.vv, value, self.config.id, self.dot_counter);
                self.dot_counter = self.dot_counter.max(dot.counter);
                (Object::Siblings(set), SessionVersion::Dot(dot))
            }
            Conflict::Lww => {
                // A write made after reading a value is stamped after it,
                // and after this replica's copy, even when this node's clock
                // runs behind the clock that stamped them (by more than the
                // drift bound, the clock itself refuses to jump, but the
                // write is still stamped past what it supersedes).
                let _ = self.clock.update(context.hlc, self.now_ms);
                let seen = current
                    .as_ref()
                    .and_then(Object::timestamp)
                    .unwrap_or_default()
                    .max(context.hlc);
                let timestamp = self.clock.now(self.now_ms).max(seen.successor());
                let register = Object::Lww(Lww::new(value, timestamp, self.config.id));
                (register, SessionVersion::Lww(timestamp, self.config.id))
            }
        };
        if let Err(reason) = self.check_size(&object) {
            // Nothing was stored; the dot counter only moves forward.
            self.respond(requester, ApResponse::Failed(ApError::TooLarge(reason)));
            return;
        }
        self.meta_dirty = true;
        let digest = self.store_object(&bucket, &key, object.clone());
        let session = Session {
            key_hash: StableHasher::hash_bytes(&ring_key(&bucket, &key)),
            version,
        };
        let answer_template = ApResponse::Written {
            context: object.context().encode(),
            session: session.encode(),
            acks: 0,
            replicas: replicas.len(),
        };
        let level = level.unwrap_or(spec.write);
        let required = level.required(replicas.len());
        let req = self.next_req();
        let origin_ms = self.clock.last().wall_ms.max(self.now_ms);
        for replica in replicas.iter().filter(|node| **node != self.config.id) {
            self.messages.push((
                *replica,
                DynamoMessage::Replicate {
                    req,
                    bucket: bucket.clone(),
                    key: key.clone(),
                    object: object.clone(),
                    origin_ms,
                },
            ));
        }
        // A replica already known to be down gets its hint now, in the
        // same batch as the write: if this coordinator crashes before the
        // deadline, the hint survives it.
        let down: Vec<NodeId> = replicas
            .iter()
            .copied()
            .filter(|node| self.is_known_down(*node))
            .collect();
        for replica in down {
            self.store_hint(replica, &bucket, &key, &object, origin_ms);
        }
        let mut digests = BTreeMap::new();
        digests.insert(self.config.id, digest);
        self.writes.insert(
            req,
            WriteOp {
                requester,
                bucket,
                key,
                replicas,
                required,
                digests,
                object,
                digest,
                origin_ms,
                answer: answer_template,
                answered: false,
                deadline_ms: self.now_ms + self.config.request_timeout_ms,
            },
        );
        self.progress_write(req);
    }

    fn check_size(&self, object: &Object) -> Result<(), String> {
        if let Object::Siblings(set) = object {
            if set.sibling_count() > self.config.siblings_max {
                return Err(format!(
                    "the key would have {} siblings (at most {}); read it and write with the \
                     context to resolve them",
                    set.sibling_count(),
                    self.config.siblings_max
                ));
            }
        }
        let bytes = object.encoded_len();
        if bytes > self.config.object_bytes_max {
            return Err(format!(
                "the key's object would be {bytes} bytes (at most {}); resolve its siblings \
                 by writing with the context of a read",
                self.config.object_bytes_max
            ));
        }
        Ok(())
    }

    fn on_ack(&mut self, from: NodeId, req: u64, digest: u64) {
        if let Some((hint_key, sent_digest)) = self.hint_deliveries.remove(&req) {
            if hint_key.0 == from
                && self
                    .hints
                    .get(&hint_key)
                    .is_some_and(|hint| hint.object.digest() == sent_digest)
            {
                self.hints.remove(&hint_key);
                self.batch.delete(
                    HINTS,
                    hint_storage_key(hint_key.0, &hint_key.1, &hint_key.2),
                );
                self.stats.hints_delivered += 1;
            }
            return;
        }
        let Some(op) = self.writes.get_mut(&req) else {
            return;
        };
        if !op.replicas.contains(&from) {
            return;
        }
        op.digests.insert(from, digest);
        // A hint made at once for a replica thought down is moot now that
        // it has the write (unless the hint has since taken more writes).
        let hint_key = (from, op.bucket.clone(), op.key.clone());
        let sent = op.digest;
        if self
            .hints
            .get(&hint_key)
            .is_some_and(|hint| hint.object.digest() == sent)
        {
            self.hints.remove(&hint_key);
            self.batch.delete(
                HINTS,
                hint_storage_key(hint_key.0, &hint_key.1, &hint_key.2),
            );
        }
        self.progress_write(req);
    }

    fn progress_write(&mut self, req: u64) {
        let Some(op) = self.writes.get_mut(&req) else {
            return;
        };
        let acks = op.digests.len();
        if !op.answered && acks >= op.required {
            op.answered = true;
            let mut answer = op.answer.clone();
            if let ApResponse::Written { acks: count, .. } = &mut answer {
                *count = acks;
            }
            let requester = op.requester;
            self.respond(requester, answer);
        }
        let Some(op) = self.writes.get(&req) else {
            return;
        };
        if op.digests.len() == op.replicas.len() {
            let confirmed =
                op.object.is_tombstone() && op.digests.values().collect::<BTreeSet<_>>().len() == 1;
            let (bucket, key, replicas) = (op.bucket.clone(), op.key.clone(), op.replicas.clone());
            let digest = op.digests.values().next().copied().unwrap_or(0);
            self.writes.remove(&req);
            if confirmed {
                self.confirm_tombstone(&bucket, &key, &replicas, digest);
            }
        }
    }

    fn expire_requests(&mut self) {
        let now = self.now_ms;
        let expired = past_deadline(&self.writes, now, |op| op.deadline_ms);
        for req in expired {
            let Some(op) = self.writes.remove(&req) else {
                continue;
            };
            if !op.answered {
                self.stats.no_quorum += 1;
                self.respond(
                    op.requester,
                    ApResponse::Failed(ApError::NoQuorum {
                        required: op.required,
                        responded: op.digests.len(),
                        replicas: op.replicas.len(),
                    }),
                );
            }
            // Rule 2: a hint for every replica that did not acknowledge.
            for replica in op
                .replicas
                .iter()
                .filter(|node| !op.digests.contains_key(node))
            {
                self.store_hint(*replica, &op.bucket, &op.key, &op.object, op.origin_ms);
            }
        }
        let expired = past_deadline(&self.reads, now, |op| op.deadline_ms);
        for req in expired {
            self.finish_read(req);
        }
        let expired = past_deadline(&self.forwards, now, |op| op.deadline_ms);
        for req in expired {
            if let Some(forward) = self.forwards.remove(&req) {
                self.stats.no_quorum += 1;
                self.responses.push((
                    forward.request_id,
                    ApResponse::Failed(ApError::CoordinatorTimeout {
                        coordinator: forward.coordinator,
                        replicas: forward.replicas,
                    }),
                ));
            }
        }
        let horizon = now.saturating_sub(4 * self.config.request_timeout_ms);
        self.exchanges
            .retain(|_, exchange| exchange.started_ms >= horizon);
    }

    // ----- coordinator: reads -----

    fn coordinate_read(
        &mut self,
        requester: Requester,
        bucket: String,
        key: String,
        level: Option<ReadLevel>,
        session: Option<String>,
        spec: ApSpec,
    ) {
        let session = match session.as_deref().map(Session::decode).transpose() {
            Ok(session) => session,
            Err(error) => {
                self.respond(requester, ApResponse::Failed(error));
                return;
            }
        };
        // A token for another key promises nothing about this one.
        let key_hash = StableHasher::hash_bytes(&ring_key(&bucket, &key));
        let session = session
            .filter(|session| session.key_hash == key_hash)
            .map(|session| session.version);
        let replicas = self.replicas(&bucket, &key, spec.replicas);
        let level = level.unwrap_or(spec.read);
        self.stats.reads += 1;
        if level == ReadLevel::Local {
            if !replicas.contains(&self.config.id) {
                self.respond(
                    requester,
                    ApResponse::Failed(ApError::NotAReplica {
                        node: self.config.id,
                        replicas,
                    }),
                );
                return;
            }
            let local = self.object(&bucket, &key).cloned();
            let satisfied = match session {
                None => true,
                Some(version) => local.as_ref().is_some_and(|object| object.covers(version)),
            };
            if satisfied {
                let answer = values_answer(local.as_ref(), 1, replicas.len());
                self.respond(requester, answer);
                return;
            }
            // The session's write is not here yet: ask the other replicas
            // rather than answer with older data.
        }
        let required = level.required(replicas.len());
        let req = self.next_req();
        for replica in replicas.iter().filter(|node| **node != self.config.id) {
            self.messages.push((
                *replica,
                DynamoMessage::Fetch {
                    req,
                    bucket: bucket.clone(),
                    key: key.clone(),
                },
            ));
        }
        let mut responses = BTreeMap::new();
        if replicas.contains(&self.config.id) {
            responses.insert(self.config.id, self.object(&bucket, &key).cloned());
        }
        self.reads.insert(
            req,
            ReadOp {
                requester,
                bucket,
                key,
                replicas,
                required,
                responses,
                session,
                answered: false,
                deadline_ms: self.now_ms + self.config.request_timeout_ms,
            },
        );
        self.progress_read(req);
    }

    fn on_fetched(&mut self, from: NodeId, req: u64, object: Option<Object>) {
        let Some(op) = self.reads.get_mut(&req) else {
            return;
        };
        if !op.replicas.contains(&from) {
            return;
        }
        op.responses.insert(from, object);
        self.progress_read(req);
    }

    fn merged(&self, op: &ReadOp) -> Option<Object> {
        let objects = op.responses.values().flatten();
        if !self.config.bugs.read_repair_skips_merge {
            return merge_all(objects);
        }
        // The deliberate bug: one replica's values, everyone's history.
        let mut objects: Vec<&Object> = objects.collect();
        let first = objects.first().map(|object| (*object).clone());
        first.map(|mut kept| {
            if let Object::Siblings(set) = &mut kept {
                for other in objects.drain(..) {
                    if let Object::Siblings(other) = other {
                        set.absorb_context(other.context());
                    }
                }
            }
            kept
        })
    }

    fn progress_read(&mut self, req: u64) {
        let Some(op) = self.reads.get(&req) else {
            return;
        };
        let all_answered = op.responses.len() == op.replicas.len();
        if !op.answered && op.responses.len() >= op.required {
            let merged = self.merged(op);
            let satisfied = match op.session {
                None => true,
                Some(version) => merged.as_ref().is_some_and(|object| object.covers(version)),
            };
            if satisfied {
                let answer = values_answer(merged.as_ref(), op.responses.len(), op.replicas.len());
                let requester = op.requester;
                if let Some(op) = self.reads.get_mut(&req) {
                    op.answered = true;
                }
                self.respond(requester, answer);
            }
        }
        if all_answered {
            self.finish_read(req);
        }
    }

    /// Answers a read that has not been answered, then repairs (rule 3).
    fn finish_read(&mut self, req: u64) {
        let Some(op) = self.reads.remove(&req) else {
            return;
        };
        if !op.answered {
            let failure = if op.responses.len() < op.required {
                self.stats.no_quorum += 1;
                ApError::NoQuorum {
                    required: op.required,
                    responded: op.responses.len(),
                    replicas: op.replicas.len(),
                }
            } else {
                ApError::SessionNotSatisfied {
                    responded: op.responses.len(),
                    replicas: op.replicas.len(),
                }
            };
            self.respond(op.requester, ApResponse::Failed(failure));
        }
        let Some(merged) = self.merged(&op) else {
            return;
        };
        let merged_digest = merged.digest();
        let mut stale = Vec::new();
        for (node, object) in &op.responses {
            if object.as_ref().map(Object::digest) != Some(merged_digest) {
                stale.push(*node);
            }
        }
        for node in &stale {
            self.stats.read_repairs += 1;
            if *node == self.config.id {
                self.merge_object(&op.bucket, &op.key, &merged);
            } else {
                self.messages.push((
                    *node,
                    DynamoMessage::Replicate {
                        req: 0,
                        bucket: op.bucket.clone(),
                        key: op.key.clone(),
                        object: merged.clone(),
                        origin_ms: self.now_ms,
                    },
                ));
            }
        }
        if stale.is_empty() && op.responses.len() == op.replicas.len() && merged.is_tombstone() {
            self.confirm_tombstone(&op.bucket, &op.key, &op.replicas, merged_digest);
        }
    }

    // ----- replica -----

    /// Merges `incoming` into this node's copy, in place; returns the new
    /// digest. Nothing is written when the merge changes nothing.
    fn merge_object(&mut self, bucket: &str, key: &str, incoming: &Object) -> u64 {
        if let Some(timestamp) = incoming.timestamp() {
            let _ = self.clock.update(timestamp, self.now_ms);
            self.meta_dirty = true;
        }
        let Some((current, digest)) = self
            .store
            .get_mut(bucket)
            .and_then(|keys| keys.get_mut(key))
        else {
            return self.store_object(bucket, key, incoming.clone());
        };
        if !current.merge_from(incoming) {
            return *digest;
        }
        let old = *digest;
        let bytes = current.encode();
        *digest = StableHasher::hash_bytes(&bytes);
        let new = *digest;
        self.persist_object(bucket, key, bytes, Some(old), new);
        new
    }

    /// Replaces this node's copy (already merged) and persists it.
    fn store_object(&mut self, bucket: &str, key: &str, object: Object) -> u64 {
        let bytes = object.encode();
        // The same digest as `Object::digest`, without encoding twice.
        let digest = StableHasher::hash_bytes(&bytes);
        let old = self
            .store
            .entry(bucket.to_string())
            .or_default()
            .insert(key.to_string(), (object, digest))
            .map(|(_, digest)| digest);
        self.persist_object(bucket, key, bytes, old, digest);
        digest
    }

    /// Writes a changed object and moves the Merkle trees from `old` to `new`.
    fn persist_object(
        &mut self,
        bucket: &str,
        key: &str,
        bytes: Vec<u8>,
        old: Option<u64>,
        new: u64,
    ) {
        let ring_key = ring_key(bucket, key);
        self.batch.put(DATA, ring_key.clone(), bytes);
        self.update_trees(bucket, &ring_key, old, Some(new));
    }

    fn update_trees(&mut self, bucket: &str, ring_key: &[u8], old: Option<u64>, new: Option<u64>) {
        let Some(spec) = self.buckets.get(bucket) else {
            return;
        };
        let replicas = self
            .ring
            .preference_list(ring_key, usize::from(spec.replicas));
        if !replicas.contains(&self.config.id) {
            return;
        }
        let Some(trees) = self.trees.get_mut(bucket) else {
            return;
        };
        for peer in replicas {
            if let Some(tree) = trees.get_mut(&peer) {
                tree.update(ring_key, old, new);
            }
        }
    }

    // ----- hinted handoff -----

    fn store_hint(
        &mut self,
        target: NodeId,
        bucket: &str,
        key: &str,
        object: &Object,
        origin_ms: u64,
    ) {
        if self.config.bugs.drop_hints {
            return;
        }
        let hint_key = (target, bucket.to_string(), key.to_string());
        let hint = match self.hints.get(&hint_key) {
            Some(existing) => {
                let mut merged = existing.object.clone();
                if !merged.merge_from(object) {
                    return; // the hint already carries this write
                }
                Hint {
                    object: merged,
                    created_ms: existing.created_ms.min(origin_ms),
                }
            }
            None => {
                if self.hints.len() >= self.config.hints_max {
                    self.stats.hints_dropped += 1;
                    return;
                }
                Hint {
                    object: object.clone(),
                    created_ms: origin_ms,
                }
            }
        };
        self.batch.put(
            HINTS,
            hint_storage_key(target, bucket, key),
            postcard::to_allocvec(&hint).expect("hints serialise"),
        );
        self.hints.insert(hint_key, hint);
        self.stats.hints_stored += 1;
    }

    fn hint_round(&mut self) {
        let oldest = self.now_ms.saturating_sub(self.config.hint_ttl_ms);
        let expired: Vec<HintKey> = self
            .hints
            .iter()
            .filter(|(_, hint)| hint.created_ms < oldest)
            .map(|(key, _)| key.clone())
            .collect();
        for hint_key in expired {
            self.hints.remove(&hint_key);
            self.batch.delete(
                HINTS,
                hint_storage_key(hint_key.0, &hint_key.1, &hint_key.2),
            );
            self.stats.hints_dropped += 1;
        }
        // Deliveries not acknowledged by the next round are sent again.
        self.hint_deliveries.clear();
        let mut per_target: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut sends = Vec::new();
        for (hint_key, hint) in &self.hints {
            if !self.is_up(hint_key.0) {
                continue;
            }
            let count = per_target.entry(hint_key.0).or_insert(0);
            if *count >= self.config.hint_batch {
                continue;
            }
            *count += 1;
            sends.push((hint_key.clone(), hint.object.clone(), hint.created_ms));
        }
        for (hint_key, object, created_ms) in sends {
            let req = self.next_req();
            self.hint_deliveries
                .insert(req, (hint_key.clone(), object.digest()));
            let (target, bucket, key) = hint_key;
            self.messages.push((
                target,
                DynamoMessage::Replicate {
                    req,
                    bucket,
                    key,
                    object,
                    origin_ms: created_ms,
                },
            ));
        }
    }

    // ----- tombstones -----

    fn confirm_tombstone(&mut self, bucket: &str, key: &str, replicas: &[NodeId], digest: u64) {
        for replica in replicas {
            if *replica == self.config.id {
                self.schedule_reap(bucket.to_string(), key.to_string(), digest);
            } else {
                self.messages.push((
                    *replica,
                    DynamoMessage::Reap {
                        bucket: bucket.to_string(),
                        key: key.to_string(),
                        digest,
                    },
                ));
            }
        }
    }

    fn schedule_reap(&mut self, bucket: String, key: String, digest: u64) {
        let holds_it = self
            .store
            .get(&bucket)
            .and_then(|keys| keys.get(&key))
            .is_some_and(|(object, current)| *current == digest && object.is_tombstone());
        if !holds_it || self.reap_queue.len() >= self.config.reaps_max {
            return;
        }
        let due = self.now_ms + self.config.tombstone_grace_ms;
        self.reap_queue.insert((due, bucket, key), digest);
    }

    fn reap_due(&mut self) {
        while let Some(entry) = self.reap_queue.first_entry() {
            if entry.key().0 > self.now_ms {
                return;
            }
            let ((_, bucket, key), digest) = entry.remove_entry();
            let still_same = self
                .store
                .get(&bucket)
                .and_then(|keys| keys.get(&key))
                .is_some_and(|(object, current)| *current == digest && object.is_tombstone());
            if !still_same {
                continue;
            }
            if let Some(keys) = self.store.get_mut(&bucket) {
                keys.remove(&key);
            }
            let ring_key = ring_key(&bucket, &key);
            self.batch.delete(DATA, ring_key.clone());
            self.update_trees(&bucket, &ring_key, Some(digest), None);
            self.stats.tombstones_reaped += 1;
        }
    }

    // ----- anti-entropy -----

    fn tree(&self, bucket: &str, peer: NodeId) -> Option<&MerkleTree> {
        self.trees.get(bucket)?.get(&peer)
    }

    /// Every (bucket, peer) pair that shares keys, in a fixed order.
    fn exchange_targets(&self) -> Vec<(String, NodeId)> {
        self.trees
            .iter()
            .flat_map(|(bucket, trees)| trees.keys().map(move |peer| (bucket.clone(), *peer)))
            .collect()
    }

    fn start_next_exchange(&mut self) {
        let targets = self.exchange_targets();
        if targets.is_empty() {
            return;
        }
        let (bucket, peer) = targets[self.next_exchange_target % targets.len()].clone();
        self.next_exchange_target = self.next_exchange_target.wrapping_add(1);
        self.start_exchange(bucket, peer);
    }

    fn start_exchange(&mut self, bucket: String, peer: NodeId) {
        let Some(root) = self.tree(&bucket, peer).map(MerkleTree::root) else {
            return;
        };
        if self.exchanges.len() >= self.config.requests_max {
            return;
        }
        let exchange = self.next_req();
        self.exchanges.insert(
            exchange,
            Exchange {
                bucket: bucket.clone(),
                peer,
                started_ms: self.now_ms,
            },
        );
        self.stats.ae_exchanges += 1;
        self.messages.push((
            peer,
            DynamoMessage::AeRoot {
                exchange,
                bucket,
                root,
            },
        ));
    }

    fn on_ae_leaves(&mut self, from: NodeId, exchange: u64, bucket: String, leaves: &[u64]) {
        let Some(started) = self.exchanges.get(&exchange) else {
            return;
        };
        if started.peer != from || started.bucket != bucket {
            return;
        }
        let Some(tree) = self.tree(&bucket, from) else {
            return;
        };
        if leaves.len() != tree.leaf_count() {
            return;
        }
        let differing: Vec<u32> = (0..tree.leaf_count())
            .filter(|leaf| tree.leaf_hash(*leaf) != leaves.get(*leaf).copied())
            .take(self.config.ae_leaves_per_exchange)
            .filter_map(|leaf| u32::try_from(leaf).ok())
            .collect();
        if differing.is_empty() {
            self.stats.ae_in_sync += 1;
            self.exchanges.remove(&exchange);
            return;
        }
        let objects = self.shared_objects(&bucket, from, &differing);
        self.messages.push((
            from,
            DynamoMessage::AeObjects {
                exchange,
                bucket,
                leaves: differing,
                objects,
                reply: true,
            },
        ));
    }

    fn on_ae_objects(
        &mut self,
        from: NodeId,
        exchange: u64,
        bucket: String,
        leaves: Vec<u32>,
        objects: Vec<(String, Object)>,
        reply: bool,
    ) {
        if !self.buckets.contains_key(&bucket) || objects.len() > self.config.ae_objects_max {
            return;
        }
        if !reply && self.exchanges.remove(&exchange).is_none() {
            return;
        }
        let mut theirs = BTreeMap::new();
        for (key, object) in objects {
            if !object.is_well_formed() || !self.shares(&bucket, &key, from) {
                continue;
            }
            let before = self.object(&bucket, &key).map(Object::digest);
            let after = self.merge_object(&bucket, &key, &object);
            if before != Some(after) {
                self.stats.ae_keys_repaired += 1;
            }
            theirs.insert(key, object.digest());
        }
        if reply {
            let leaves: Vec<u32> = leaves
                .into_iter()
                .take(self.config.ae_leaves_per_exchange)
                .collect();
            let objects = self
                .shared_objects(&bucket, from, &leaves)
                .into_iter()
                .filter(|(key, object)| theirs.get(key) != Some(&object.digest()))
                .collect();
            self.messages.push((
                from,
                DynamoMessage::AeObjects {
                    exchange,
                    bucket,
                    leaves,
                    objects,
                    reply: false,
                },
            ));
        }
    }

    fn shares(&self, bucket: &str, key: &str, peer: NodeId) -> bool {
        let Some(spec) = self.buckets.get(bucket) else {
            return false;
        };
        let replicas = self.replicas(bucket, key, spec.replicas);
        replicas.contains(&self.config.id) && replicas.contains(&peer)
    }

    /// This node's objects in `leaves` that `peer` also replicates, at most
    /// `ae_objects_max` of them and about `ae_bytes_max` bytes (always at
    /// least one, so a large object still moves).
    fn shared_objects(&self, bucket: &str, peer: NodeId, leaves: &[u32]) -> Vec<(String, Object)> {
        let (Some(keys), Some(tree)) = (self.store.get(bucket), self.tree(bucket, peer)) else {
            return Vec::new();
        };
        let wanted: BTreeSet<usize> = leaves.iter().map(|leaf| *leaf as usize).collect();
        keys.iter()
            .filter(|(key, _)| {
                wanted.contains(&tree.leaf_of(&ring_key(bucket, key)))
                    && self.shares(bucket, key, peer)
            })
            .take(self.config.ae_objects_max)
            .scan(0usize, |bytes, (key, (object, _))| {
                if *bytes >= self.config.ae_bytes_max {
                    return None;
                }
                *bytes += key.len() + object.encoded_len();
                Some((key.clone(), object.clone()))
            })
            .collect()
    }

    // ----- helpers -----

    fn peers(&self) -> Vec<NodeId> {
        self.config
            .nodes
            .iter()
            .copied()
            .filter(|node| *node != self.config.id)
            .collect()
    }

    /// Down for long enough to be sure: not heard from within the window,
    /// and this node has run for a whole window (so a peer that simply has
    /// not pinged a freshly started node yet does not count).
    fn is_known_down(&self, node: NodeId) -> bool {
        !self.is_up(node)
            && self
                .started_ms
                .is_some_and(|started| started + self.config.peer_down_after_ms <= self.now_ms)
    }

    fn is_up(&self, node: NodeId) -> bool {
        node == self.config.id
            || self
                .last_heard
                .get(&node)
                .is_some_and(|heard| heard + self.config.peer_down_after_ms >= self.now_ms)
    }

    fn next_req(&mut self) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        req
    }

    fn respond(&mut self, requester: Requester, response: ApResponse) {
        match requester {
            Requester::Local(request_id) => self.responses.push((request_id, response)),
            Requester::Remote { node, req } => self
                .messages
                .push((node, DynamoMessage::Coordinated { req, response })),
        }
    }
}

/// The ids of the entries whose deadline is at or before `now`.
fn past_deadline<T>(ops: &BTreeMap<u64, T>, now: u64, deadline: impl Fn(&T) -> u64) -> Vec<u64> {
    ops.iter()
        .filter(|(_, op)| deadline(op) <= now)
        .map(|(req, _)| *req)
        .collect()
}

fn values_answer(object: Option<&Object>, responded: usize, replicas: usize) -> ApResponse {
    ApResponse::Values {
        values: object.map(Object::values).unwrap_or_default(),
        context: object
            .map(|object| object.context().encode())
            .unwrap_or_else(|| Context::default().encode()),
        responded,
        replicas,
    }
}

#[cfg(test)]
mod tests;
