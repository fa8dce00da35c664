//! `capkv node`: builds a [`ServerConfig`] from flags, environment and an
//! optional config file, then hands it to [`capkv_server::run_node`], which
//! runs until Ctrl-C or SIGTERM.
//!
//! Precedence: a flag (or its environment variable) wins over the config
//! file, which wins over the defaults of [`ServerConfig::new`].

use capkv_core::NodeId;
use capkv_server::{PeerAddress, ServerConfig};
use clap::Args;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// Largest config file read; a config is a few hundred bytes.
const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Arguments of `capkv node`.
#[derive(Args, Debug, Default)]
pub struct NodeArgs {
    /// This node's id (1..).
    #[arg(long)]
    pub id: Option<u64>,
    /// Where the node keeps its data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Node-to-node listen address, HOST:PORT.
    #[arg(long, value_parser = parse_address)]
    pub listen: Option<SocketAddr>,
    /// HTTP API listen address, HOST:PORT.
    #[arg(long, value_parser = parse_address)]
    pub http: Option<SocketAddr>,
    /// Every member's node-to-node address, this node included:
    /// 1=HOST:PORT,2=HOST:PORT,3=HOST:PORT.
    #[arg(long, value_parser = parse_address_list)]
    pub peers: Option<AddressList>,
    /// Every member's HTTP address (for `cluster status` and the nemesis
    /// relay): 1=HOST:PORT,2=HOST:PORT,...
    #[arg(long, value_parser = parse_address_list)]
    pub peer_http: Option<AddressList>,
    /// The secret every node of the cluster shares.
    #[arg(long, env = "CAPKV_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Token for the nemesis and admin endpoints; without one they are off.
    #[arg(long, env = "CAPKV_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Names the cluster; peers of another cluster are refused.
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// Milliseconds per Raft tick [default: 10].
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// Raft election timeout in ticks [default: 15].
    #[arg(long)]
    pub election_timeout_ticks: Option<u32>,
    /// Raft heartbeat interval in ticks [default: 3].
    #[arg(long)]
    pub heartbeat_interval_ticks: Option<u32>,
    /// Default request deadline in milliseconds [default: 2000].
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// Snapshot after this many applied entries [default: 10000].
    #[arg(long, visible_alias = "snapshot-interval")]
    pub snapshot_interval_entries: Option<u64>,
    /// Background anti-entropy (Merkle exchange) period of ap buckets in
    /// milliseconds; 0 turns it off [default: 10000].
    #[arg(long)]
    pub ae_interval_ms: Option<u64>,
    /// Most hints held for unreachable ap replicas; 0 turns hinted handoff
    /// off (every hint is dropped) [default: 100000].
    #[arg(long)]
    pub hints_max: Option<usize>,
    /// The ap coordinator's request timeout in milliseconds; below
    /// --request-timeout-ms [default: half of it].
    #[arg(long)]
    pub ap_request_timeout_ms: Option<u64>,
    /// A TOML or JSON file with the same keys as the flags (`data-dir` or
    /// `data_dir`; `peers` as "1=HOST:PORT,..." or a table). Flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Member ids with addresses, as parsed from `1=HOST:PORT,2=HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressList(pub BTreeMap<u64, SocketAddr>);

/// Resolves `HOST:PORT` (an IP or a name such as `localhost`) to the first
/// address it names.
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    text.to_socket_addrs()
        .map_err(|error| format!("{text:?} is not a HOST:PORT address: {error}"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

/// Parses `1=HOST:PORT,2=HOST:PORT` strictly: ids are numbers from 1, each
/// once.
pub fn parse_address_list(text: &str) -> Result<AddressList, String> {
    let mut members = BTreeMap::new();
    for entry in text.split(',') {
        let entry = entry.trim();
        let Some((id_text, address_text)) = entry.split_once('=') else {
            return Err(format!(
                "{entry:?} is not ID=HOST:PORT; write members like 1=127.0.0.1:7001,2=127.0.0.1:7002"
            ));
        };
        let id: u64 = id_text
            .trim()
            .parse()
            .map_err(|_| format!("{id_text:?} in {entry:?} is not a node id (a number from 1)"))?;
        if id == 0 {
            return Err(format!("node ids start at 1 ({entry:?})"));
        }
        let address = parse_address(address_text)?;
        if members.insert(id, address).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    Ok(AddressList(members))
}

/// The config file: every key optional, the same names as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct NodeFile {
    id: Option<u64>,
    #[serde(alias = "data_dir")]
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    http: Option<String>,
    peers: Option<FileAddressList>,
    #[serde(alias = "peer_http")]
    peer_http: Option<FileAddressList>,
    #[serde(alias = "cluster_secret")]
    cluster_secret: Option<String>,
    #[serde(alias = "admin_token")]
    admin_token: Option<String>,
    #[serde(alias = "cluster_id")]
    cluster_id: Option<String>,
    #[serde(alias = "tick_ms")]
    tick_ms: Option<u64>,
    #[serde(alias = "election_timeout_ticks")]
    election_timeout_ticks: Option<u32>,
    #[serde(alias = "heartbeat_interval_ticks")]
    heartbeat_interval_ticks: Option<u32>,
    #[serde(alias = "request_timeout_ms")]
    request_timeout_ms: Option<u64>,
    #[serde(alias = "snapshot_interval_entries")]
    snapshot_interval_entries: Option<u64>,
    #[serde(alias = "ae_interval_ms")]
    ae_interval_ms: Option<u64>,
    #[serde(alias = "hints_max")]
    hints_max: Option<usize>,
    #[serde(alias = "ap_request_timeout_ms")]
    ap_request_timeout_ms: Option<u64>,
}

/// `peers` in a file: the flag's text, or a table from id to address.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileAddressList {
    Text(String),
    Table(BTreeMap<String, String>),
}

impl FileAddressList {
    fn parse(&self) -> Result<AddressList, String> {
        match self {
            FileAddressList::Text(text) => parse_address_list(text),
            FileAddressList::Table(table) => {
                let text: Vec<String> = table
                    .iter()
                    .map(|(id, address)| format!("{id}={address}"))
                    .collect();
                parse_address_list(&text.join(","))
            }
        }
    }
}

fn read_config_file(path: &Path) -> Result<NodeFile, String> {
    let metadata = std::fs::metadata(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    if metadata.len() > CONFIG_FILE_BYTES_MAX {
        return Err(format!(
            "{} is larger than {CONFIG_FILE_BYTES_MAX} bytes",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    parse_config_text(
        &text,
        path.extension().and_then(|extension| extension.to_str()),
    )
    .map_err(|error| format!("{}: {error}", path.display()))
}

/// Parses a config file's text: JSON when the extension says so or the text
/// starts with `{`, TOML otherwise.
fn parse_config_text(text: &str, extension: Option<&str>) -> Result<NodeFile, String> {
    let is_json = match extension {
        Some("json") => true,
        Some("toml") => false,
        _ => text.trim_start().starts_with('{'),
    };
    if is_json {
        serde_json::from_str(text).map_err(|error| format!("invalid JSON config: {error}"))
    } else {
        toml::from_str(text).map_err(|error| format!("invalid TOML config: {error}"))
    }
}

fn file_address(text: Option<&String>, key: &str) -> Result<Option<SocketAddr>, String> {
    text.map(|text| {
        parse_address(text).map_err(|error| format!("`{key}` in the config file: {error}"))
    })
    .transpose()
}

fn missing(flag: &str) -> String {
    format!("--{flag} is required (or `{flag}` in the --config file)")
}

/// Merges flags over the config file and builds a validated config.
pub fn build_config(args: NodeArgs) -> Result<ServerConfig, String> {
    let file = match &args.config {
        Some(path) => read_config_file(path)?,
        None => NodeFile::default(),
    };
    let id = args.id.or(file.id).ok_or_else(|| missing("id"))?;
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .ok_or_else(|| missing("data-dir"))?;
    let listen = match args.listen {
        Some(address) => address,
        None => file_address(file.listen.as_ref(), "listen")?.ok_or_else(|| missing("listen"))?,
    };
    let http = match args.http {
        Some(address) => address,
        None => file_address(file.http.as_ref(), "http")?.ok_or_else(|| missing("http"))?,
    };
    let peers = match args.peers {
        Some(peers) => peers,
        None => file
            .peers
            .as_ref()
            .ok_or_else(|| missing("peers"))?
            .parse()?,
    };
    let peer_http = match (args.peer_http, &file.peer_http) {
        (Some(list), _) => list,
        (None, Some(list)) => list.parse()?,
        (None, None) => AddressList(BTreeMap::new()),
    };
    let members = members(id, http, &peers, &peer_http)?;
    let secret = args
        .cluster_secret
        .or(file.cluster_secret)
        .unwrap_or_default();
    let mut config = ServerConfig::new(NodeId(id), data_dir, listen, http, members, secret);
    if let Some(token) = args.admin_token.or(file.admin_token) {
        config.admin_token = Some(token);
    }
    if let Some(cluster_id) = args.cluster_id.or(file.cluster_id) {
        config.cluster_id = cluster_id;
    }
    if let Some(value) = args.tick_ms.or(file.tick_ms) {
        config.tick_ms = value;
    }
    if let Some(value) = args.election_timeout_ticks.or(file.election_timeout_ticks) {
        config.election_timeout_ticks = value;
    }
    if let Some(value) = args
        .heartbeat_interval_ticks
        .or(file.heartbeat_interval_ticks)
    {
        config.heartbeat_interval_ticks = value;
    }
    if let Some(value) = args.request_timeout_ms.or(file.request_timeout_ms) {
        config.request_timeout_ms = value;
    }
    if let Some(value) = args
        .snapshot_interval_entries
        .or(file.snapshot_interval_entries)
    {
        config.snapshot_interval_entries = value;
    }
    if let Some(value) = args.ae_interval_ms.or(file.ae_interval_ms) {
        config.ae_interval_ms = value;
    }
    if let Some(value) = args.hints_max.or(file.hints_max) {
        config.hints_max = value;
    }
    if let Some(value) = args.ap_request_timeout_ms.or(file.ap_request_timeout_ms) {
        config.ap_request_timeout_ms = Some(value);
    }
    config.validate()?;
    Ok(config)
}

/// Joins `--peers` and `--peer-http` into the member table. This node's
/// HTTP address is `--http` unless `--peer-http` names it.
fn members(
    id: u64,
    http: SocketAddr,
    peers: &AddressList,
    peer_http: &AddressList,
) -> Result<BTreeMap<NodeId, PeerAddress>, String> {
    if let Some(unknown) = peer_http
        .0
        .keys()
        .find(|member| !peers.0.contains_key(member))
    {
        return Err(format!(
            "--peer-http names node {unknown}, which --peers does not list"
        ));
    }
    Ok(peers
        .0
        .iter()
        .map(|(&member, &peer)| {
            let member_http = peer_http
                .0
                .get(&member)
                .copied()
                .or_else(|| (member == id).then_some(http));
            (
                NodeId(member),
                PeerAddress {
                    peer,
                    http: member_http,
                },
            )
        })
        .collect())
}

/// Runs `capkv node` and returns the exit code: 2 for a configuration that
/// cannot work, 1 when the node stopped on an error.
pub fn run(args: NodeArgs) -> u8 {
    let config = match build_config(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("capkv node: {error}");
            return 2;
        }
    };
    match capkv_server::run_node(config) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("capkv node: {error:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn peer_lists_parse_ids_and_addresses() {
        let list = parse_address_list("1=127.0.0.1:7001, 2=127.0.0.1:7002,3=[::1]:7003").unwrap();
        assert_eq!(list.0.len(), 3);
        assert_eq!(list.0[&2], address("127.0.0.1:7002"));
        assert_eq!(list.0[&3], address("[::1]:7003"));
        let named = parse_address_list("1=localhost:7001").unwrap();
        assert!(named.0[&1].ip().is_loopback());
    }

    #[test]
    fn peer_lists_are_strict() {
        for (text, expected) in [
            ("127.0.0.1:7001", "is not ID=HOST:PORT"),
            ("one=127.0.0.1:7001", "is not a node id"),
            ("0=127.0.0.1:7001", "start at 1"),
            ("1=127.0.0.1:7001,1=127.0.0.1:7002", "listed twice"),
            ("1=127.0.0.1", "is not a HOST:PORT"),
            ("1=127.0.0.1:7001,", "is not ID=HOST:PORT"),
        ] {
            let error = parse_address_list(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    fn flags() -> NodeArgs {
        NodeArgs {
            id: Some(2),
            data_dir: Some("/tmp/n2".into()),
            listen: Some(address("127.0.0.1:7002")),
            http: Some(address("127.0.0.1:8002")),
            peers: Some(
                parse_address_list("1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003").unwrap(),
            ),
            cluster_secret: Some("s".into()),
            ..NodeArgs::default()
        }
    }

    #[test]
    fn flags_build_a_config_with_this_nodes_http_address() {
        let config = build_config(flags()).unwrap();
        assert_eq!(config.id, NodeId(2));
        assert_eq!(config.members.len(), 3);
        assert_eq!(
            config.members[&NodeId(2)].http,
            Some(address("127.0.0.1:8002"))
        );
        assert_eq!(config.members[&NodeId(1)].http, None);
        assert_eq!(config.tick_ms, 10);
        assert_eq!(config.admin_token, None);
    }

    #[test]
    fn peer_http_fills_every_member() {
        let mut args = flags();
        args.peer_http = Some(parse_address_list("1=127.0.0.1:8001,3=127.0.0.1:8003").unwrap());
        let config = build_config(args).unwrap();
        assert_eq!(
            config.members[&NodeId(1)].http,
            Some(address("127.0.0.1:8001"))
        );
        assert_eq!(
            config.members[&NodeId(3)].http,
            Some(address("127.0.0.1:8003"))
        );
        let mut stranger = flags();
        stranger.peer_http = Some(parse_address_list("9=127.0.0.1:8009").unwrap());
        assert!(build_config(stranger).unwrap_err().contains("node 9"));
    }

    #[test]
    fn missing_and_invalid_settings_are_named() {
        let mut no_peers = flags();
        no_peers.peers = None;
        assert!(build_config(no_peers)
            .unwrap_err()
            .contains("--peers is required"));
        let mut not_member = flags();
        not_member.id = Some(4);
        assert!(build_config(not_member)
            .unwrap_err()
            .contains("must include this node"));
        let mut no_secret = flags();
        no_secret.cluster_secret = None;
        assert!(build_config(no_secret)
            .unwrap_err()
            .contains("cluster secret"));
    }

    #[test]
    fn toml_and_json_files_use_the_flag_names() {
        let toml_text = r#"
            id = 1
            data-dir = "/var/lib/capkv"
            listen = "127.0.0.1:7001"
            http = "127.0.0.1:8001"
            peers = "1=127.0.0.1:7001,2=127.0.0.1:7002"
            tick_ms = 20
            [peer-http]
            1 = "127.0.0.1:8001"
            2 = "127.0.0.1:8002"
        "#;
        let file = parse_config_text(toml_text, Some("toml")).unwrap();
        assert_eq!(file.id, Some(1));
        assert_eq!(file.tick_ms, Some(20));
        assert_eq!(file.peer_http.unwrap().parse().unwrap().0.len(), 2);
        let json_text =
            r#"{"id": 3, "data_dir": "/d", "peers": {"3": "127.0.0.1:7003"}, "admin-token": "t"}"#;
        let file = parse_config_text(json_text, None).unwrap();
        assert_eq!(file.id, Some(3));
        assert_eq!(file.admin_token.as_deref(), Some("t"));
        assert!(parse_config_text(r#"{"idd": 3}"#, None)
            .unwrap_err()
            .contains("unknown field"));
    }

    #[test]
    fn flags_override_the_config_file() {
        let directory =
            std::env::temp_dir().join(format!("capkv-node-config-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("node.json");
        std::fs::write(
            &path,
            r#"{"id": 1, "data-dir": "/from-file", "listen": "127.0.0.1:7001", "http": "127.0.0.1:8001",
                "peers": "1=127.0.0.1:7001", "cluster-secret": "file-secret", "tick-ms": 25}"#,
        )
        .unwrap();
        let args = NodeArgs {
            config: Some(path),
            tick_ms: Some(5),
            data_dir: Some("/from-flag".into()),
            ..NodeArgs::default()
        };
        let config = build_config(args).unwrap();
        std::fs::remove_dir_all(&directory).unwrap();
        assert_eq!(config.tick_ms, 5);
        assert_eq!(config.data_dir, PathBuf::from("/from-flag"));
        assert_eq!(config.cluster_secret, "file-secret");
        assert_eq!(config.members.len(), 1);
    }

    #[test]
    fn ap_settings_come_from_flags_or_the_file() {
        let config = build_config(flags()).unwrap();
        assert_eq!((config.ae_interval_ms, config.hints_max), (10_000, 100_000));
        assert_eq!(
            config.ap_request_timeout_ms(),
            config.request_timeout_ms / 2
        );
        let mut args = flags();
        args.ae_interval_ms = Some(0);
        args.hints_max = Some(0);
        args.ap_request_timeout_ms = Some(700);
        let config = build_config(args).unwrap();
        assert_eq!((config.ae_interval_ms, config.hints_max), (0, 0));
        assert_eq!(config.ap_request_timeout_ms(), 700);
        let mut too_long = flags();
        too_long.ap_request_timeout_ms = Some(5_000);
        assert!(build_config(too_long)
            .unwrap_err()
            .contains("ap request timeout"));
        let file = parse_config_text(
            "ae-interval-ms = 500\nhints_max = 10\nap-request-timeout-ms = 300",
            Some("toml"),
        )
        .unwrap();
        assert_eq!(
            (
                file.ae_interval_ms,
                file.hints_max,
                file.ap_request_timeout_ms
            ),
            (Some(500), Some(10), Some(300))
        );
    }
}
