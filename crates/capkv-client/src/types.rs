//! Requests and answers of the HTTP API, as Rust types. Field names follow
//! the JSON of DESIGN §4 exactly; unknown fields in answers are ignored so a
//! newer server does not break an older client.

use serde::{Deserialize, Serialize};

/// `GET /v1/health`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Health {
    /// `"ok"` when the node serves requests.
    pub status: String,
    /// The id of the node that answered.
    pub node_id: u64,
}

/// `GET /v1/cluster`: one node's view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ClusterStatus {
    /// The id of the node that answered.
    pub node_id: u64,
    /// Every member, as configured on the answering node.
    pub nodes: Vec<ClusterNode>,
    /// The Raft groups this node takes part in, as this node sees them.
    pub groups: Vec<GroupStatus>,
    /// The answering node's ap engine counters (absent on servers without
    /// ap buckets).
    #[serde(default)]
    pub ap: Option<ApStats>,
}

/// The ap engine's counters on one node (`"ap"` in `GET /v1/cluster`; the
/// same figures as the `capkv_ap_*` metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ApStats {
    /// Writes coordinated.
    pub writes: u64,
    /// Reads coordinated.
    pub reads: u64,
    /// Requests answered `no_quorum`.
    pub no_quorum: u64,
    /// Replicas sent a merged object by read repair.
    pub read_repairs: u64,
    /// Hints stored for unreachable replicas.
    pub hints_stored: u64,
    /// Hints delivered and acknowledged.
    pub hints_delivered: u64,
    /// Hints dropped (full, expired, or hinted handoff off).
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
    /// Writes refused as older than the hint ttl.
    pub stale_writes_refused: u64,
    /// Objects held.
    pub objects: u64,
}

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ClusterNode {
    /// The member's id.
    pub id: u64,
    /// Its node-to-node address.
    pub peer: String,
    /// Its HTTP address (`HOST:PORT`, no scheme), when the answering node
    /// knows it.
    pub http: Option<String>,
}

/// One Raft group as seen by one node.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct GroupStatus {
    /// The group id.
    pub group: u64,
    /// `leader`, `follower`, `candidate` or `pre_candidate`. Kept as a string
    /// so that a role added later prints instead of failing to decode.
    pub role: String,
    /// This node's current term in the group.
    pub term: u64,
    /// The leader this node knows of, if any.
    pub leader: Option<u64>,
    /// Highest log index known committed.
    pub commit_index: u64,
    /// Highest log index applied to the key-value state.
    pub applied_index: u64,
}

/// How a bucket replicates its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BucketMode {
    /// Raft groups: linearizable, refuses work without a majority.
    Cp,
    /// Dynamo-style replicas: always writable, eventually consistent.
    Ap,
}

impl BucketMode {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            BucketMode::Cp => "cp",
            BucketMode::Ap => "ap",
        }
    }
}

/// How an ap bucket resolves concurrent writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictMode {
    /// Last write wins by hybrid logical clock.
    Lww,
    /// Concurrent writes are all kept as siblings.
    Siblings,
}

impl ConflictMode {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictMode::Lww => "lww",
            ConflictMode::Siblings => "siblings",
        }
    }
}

/// Body of `PUT /v1/buckets/{bucket}`. Fields left `None` are not sent, so
/// the server applies its defaults (ap: N = min(3, cluster size),
/// siblings, quorum reads and writes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BucketSpec {
    /// cp or ap.
    pub mode: BucketMode,
    /// Replication factor (ap: N, copies of each key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Conflict resolution of ap buckets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflict: Option<ConflictMode>,
    /// Default read level of ap buckets (`local`, `one`, `quorum`, `all`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<Consistency>,
    /// Default write level of ap buckets (`one`, `quorum`, `all`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write: Option<Consistency>,
}

impl BucketSpec {
    /// A bucket of the given mode with the server's defaults.
    pub fn new(mode: BucketMode) -> BucketSpec {
        BucketSpec {
            mode,
            replicas: None,
            conflict: None,
            read: None,
            write: None,
        }
    }

    /// An ap bucket with N = `replicas` and the given conflict mode, quorum
    /// levels by default.
    pub fn ap(replicas: u32, conflict: ConflictMode) -> BucketSpec {
        BucketSpec {
            replicas: Some(replicas),
            conflict: Some(conflict),
            ..BucketSpec::new(BucketMode::Ap)
        }
    }
}

/// Answer of `PUT /v1/buckets/{bucket}`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BucketCreated {
    /// The bucket's name.
    pub bucket: String,
    /// Its mode (`cp` or `ap`).
    pub mode: String,
    /// False when an identical bucket already existed (creation is
    /// idempotent).
    pub created: bool,
    /// ap: N.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// ap: `siblings` or `lww`.
    #[serde(default)]
    pub conflict: Option<String>,
    /// ap: the default read level.
    #[serde(default)]
    pub read: Option<String>,
    /// ap: the default write level.
    #[serde(default)]
    pub write: Option<String>,
}

/// One entry of `GET /v1/buckets`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BucketInfo {
    /// The bucket's name.
    pub name: String,
    /// Its mode (`cp` or `ap`).
    pub mode: String,
    /// Its replication factor, when the server reports one.
    #[serde(default)]
    pub replicas: Option<u32>,
    /// ap: `siblings` or `lww`.
    #[serde(default)]
    pub conflict: Option<String>,
    /// ap: the default read level.
    #[serde(default)]
    pub read: Option<String>,
    /// ap: the default write level.
    #[serde(default)]
    pub write: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct BucketList {
    pub(crate) buckets: Vec<BucketInfo>,
}

/// Read or write consistency, sent as `?consistency=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// cp: confirmed by a quorum before answering (the default for cp).
    Linearizable,
    /// cp: whatever the answering node has applied; may be behind.
    Stale,
    /// ap reads: the answering node's own replica, without coordination.
    Local,
    /// ap: one replica.
    One,
    /// ap: a majority of replicas.
    Quorum,
    /// ap: every replica.
    All,
}

impl Consistency {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Stale => "stale",
            Consistency::Local => "local",
            Consistency::One => "one",
            Consistency::Quorum => "quorum",
            Consistency::All => "all",
        }
    }
}

impl Serialize for Consistency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Options of [`crate::Client::put`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Compare-and-set: write only if the key's version is this one.
    pub if_version: Option<u64>,
    /// Write consistency (ap buckets).
    pub consistency: Option<Consistency>,
    /// The server's deadline for this request, in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// Options of [`crate::Client::get`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// Read consistency; the server's default when `None`.
    pub consistency: Option<Consistency>,
    /// The server's deadline for this request, in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// Options of [`crate::Client::delete`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Compare-and-delete: delete only if the key's version is this one.
    pub if_version: Option<u64>,
    /// The server's deadline for this request, in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// Answer of `PUT /v1/kv/{bucket}/{key}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct PutResult {
    /// The key's new version (the Raft index of the write in cp buckets).
    pub version: u64,
}

/// A key's value as read by `GET /v1/kv/{bucket}/{key}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value's bytes (decoded from `value_base64` when the server sent
    /// that).
    pub value: Vec<u8>,
    /// The version, usable as `if_version`.
    pub version: u64,
}

impl KeyValue {
    /// The value as text, when it is UTF-8.
    pub fn value_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }
}

/// The wire form of [`KeyValue`]: the value is text or base64.
#[derive(Deserialize)]
pub(crate) struct KeyValueWire {
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) value: Option<String>,
    #[serde(default)]
    pub(crate) value_base64: Option<String>,
    pub(crate) version: u64,
}

/// Answer of `DELETE /v1/kv/{bucket}/{key}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct DeleteResult {
    /// False when the key did not exist.
    pub deleted: bool,
}

/// Body of `POST /v1/nemesis/links`: the rule for one directed link.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LinkRule {
    /// Sending node.
    pub from: u64,
    /// Receiving node.
    pub to: u64,
    /// Extra delay on every message, in milliseconds.
    pub delay_ms: u64,
    /// Fraction of messages dropped, 0 to 1.
    pub drop_probability: f64,
}

/// Answer of the nemesis endpoints that change rules: which nodes took the
/// change, and the rules now in force on the answering node.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct NemesisResult {
    /// Nodes that applied the change.
    pub applied: Vec<u64>,
    /// Nodes that could not be reached or refused, in whatever form the
    /// server reports them (an id or an object with the reason).
    #[serde(default)]
    pub failed: Vec<serde_json::Value>,
    /// The rules in force afterwards, when the server reports them.
    #[serde(default)]
    pub rules: Vec<NemesisRule>,
}

/// One directed link's nemesis rule, as `GET /v1/nemesis` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct NemesisRule {
    /// Sending node.
    pub from: u64,
    /// Receiving node.
    pub to: u64,
    /// Every message on the link is dropped (a cut link).
    #[serde(default)]
    pub blocked: bool,
    /// Extra delay on every message, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
    /// Fraction of messages dropped.
    #[serde(default)]
    pub drop_probability: f64,
}

#[derive(Deserialize)]
pub(crate) struct NemesisRules {
    pub(crate) rules: Vec<NemesisRule>,
}

/// Options of [`crate::Client::ap_put`] and [`crate::Client::ap_delete`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApWriteOptions {
    /// `One`, `Quorum` or `All`; the bucket's default when `None`.
    pub consistency: Option<Consistency>,
    /// The causal context of the read this write follows: the write
    /// supersedes what that read saw (siblings included).
    pub context: Option<String>,
    /// The server's deadline for this request, in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// Options of [`crate::Client::ap_get`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApReadOptions {
    /// `Local`, `One`, `Quorum` or `All`; the bucket's default when `None`.
    pub consistency: Option<Consistency>,
    /// A session token from an earlier write: the read sees that write or
    /// answers `session_not_satisfied`.
    pub session: Option<String>,
    /// The server's deadline for this request, in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// Answer of an ap `PUT` or `DELETE`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ApWritten {
    /// The causal context after the write (covers it).
    pub context: String,
    /// The read-your-writes token of this write.
    pub session: String,
    /// Replicas that acknowledged before the answer.
    pub acks: u64,
    /// N.
    pub replicas: u64,
    /// The level the write was made at.
    pub consistency: String,
}

/// Answer of an ap `GET`: every sibling and the context to write back.
/// `siblings` is empty when the key is absent or deleted (the server's
/// `404 not_found`, which still carries a context).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApValues {
    /// The key.
    pub key: String,
    /// The concurrent values, in the server's order (one when there is no
    /// conflict).
    pub siblings: Vec<Vec<u8>>,
    /// The causal context: send it with the next write to supersede these.
    pub context: String,
    /// Replicas that answered.
    pub responded: u64,
    /// N.
    pub replicas: u64,
    /// The level the read was made at.
    pub consistency: String,
}

/// The wire form of [`ApValues`].
#[derive(Deserialize)]
pub(crate) struct ApValuesWire {
    pub(crate) key: String,
    pub(crate) siblings: Vec<SiblingWire>,
    pub(crate) context: String,
    pub(crate) responded: u64,
    pub(crate) replicas: u64,
    pub(crate) consistency: String,
}

/// One sibling on the wire: text or base64.
#[derive(Deserialize)]
pub(crate) struct SiblingWire {
    #[serde(default)]
    pub(crate) value: Option<String>,
    #[serde(default)]
    pub(crate) value_base64: Option<String>,
}

/// Answer of `POST /v1/repair`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct RepairStarted {
    /// Anti-entropy exchanges started (they finish in the background).
    pub exchanges: u64,
}
