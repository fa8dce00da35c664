use capkv_core::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where to reach one member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddress {
    /// Node-to-node (Raft) address.
    pub peer: SocketAddr,
    /// HTTP API address, when known (needed to relay nemesis rules and for
    /// `GET /v1/cluster`).
    pub http: Option<SocketAddr>,
}

/// Everything `capkv node` needs to run one node.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// This node's id (1..).
    pub id: NodeId,
    /// Where the node keeps its fjall database.
    pub data_dir: PathBuf,
    /// Node-to-node listen address.
    pub listen: SocketAddr,
    /// HTTP API listen address.
    pub http: SocketAddr,
    /// Every member, this node included.
    pub members: BTreeMap<NodeId, PeerAddress>,
    /// Shared secret every peer connection must prove.
    pub cluster_secret: String,
    /// Names the cluster; peers of another cluster are refused.
    pub cluster_id: String,
    /// Bearer token for nemesis and admin endpoints; `None` disables them.
    pub admin_token: Option<String>,
    /// Milliseconds per Raft tick.
    pub tick_ms: u64,
    /// Raft election timeout in ticks.
    pub election_timeout_ticks: u32,
    /// Raft heartbeat interval in ticks.
    pub heartbeat_interval_ticks: u32,
    /// Default request deadline in milliseconds (`?timeout_ms=` overrides).
    pub request_timeout_ms: u64,
    /// Snapshot after this many applied entries.
    pub snapshot_interval_entries: u64,
    /// Background anti-entropy: one Merkle exchange this often (0 = off).
    pub ae_interval_ms: u64,
    /// Most hints held for unreachable replicas (0 = hinted handoff off:
    /// every hint is dropped and anti-entropy repairs instead).
    pub hints_max: usize,
    /// The ap coordinator answers (or gives up) within this long. `None`
    /// is half of `request_timeout_ms`, so the engine's own answer (with
    /// how many replicas responded) arrives before the HTTP deadline.
    pub ap_request_timeout_ms: Option<u64>,
}

impl ServerConfig {
    /// A config with the defaults of `capkv node` for the given addresses.
    pub fn new(
        id: NodeId,
        data_dir: PathBuf,
        listen: SocketAddr,
        http: SocketAddr,
        members: BTreeMap<NodeId, PeerAddress>,
        cluster_secret: String,
    ) -> ServerConfig {
        ServerConfig {
            id,
            data_dir,
            listen,
            http,
            members,
            cluster_secret,
            cluster_id: "capkv".to_string(),
            admin_token: None,
            tick_ms: 10,
            election_timeout_ticks: 15,
            heartbeat_interval_ticks: 3,
            request_timeout_ms: 2_000,
            snapshot_interval_entries: 10_000,
            ae_interval_ms: 10_000,
            hints_max: 100_000,
            ap_request_timeout_ms: None,
        }
    }

    /// The ap engine's request timeout: the setting, or half of the HTTP
    /// request deadline.
    pub fn ap_request_timeout_ms(&self) -> u64 {
        self.ap_request_timeout_ms
            .unwrap_or((self.request_timeout_ms / 2).max(1))
    }

    /// Rejects settings that cannot work, with a sentence saying why.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.0 == 0 {
            return Err("--id must be at least 1".into());
        }
        if !self.members.contains_key(&self.id) {
            return Err(format!("--peers must include this node ({})", self.id.0));
        }
        if self.cluster_secret.is_empty() {
            return Err(
                "a cluster secret is required (--cluster-secret or CAPKV_CLUSTER_SECRET)".into(),
            );
        }
        if self.tick_ms == 0 || self.tick_ms > 1_000 {
            return Err("tick must be 1..=1000 ms".into());
        }
        if self.request_timeout_ms == 0 || self.request_timeout_ms > 60_000 {
            return Err("request timeout must be 1..=60000 ms".into());
        }
        let ap_timeout_ms = self.ap_request_timeout_ms();
        if ap_timeout_ms == 0 || ap_timeout_ms >= self.request_timeout_ms {
            return Err(format!(
                "the ap request timeout ({ap_timeout_ms} ms) must be at least 1 ms and below the \
                 request timeout ({} ms), so the ap engine answers before the HTTP deadline",
                self.request_timeout_ms
            ));
        }
        Ok(())
    }
}
