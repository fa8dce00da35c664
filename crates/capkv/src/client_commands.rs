//! The client subcommands: `bucket`, `put`, `get`, `delete`, `repair`,
//! `cluster status` and `nemesis`. `put`, `get` and `delete` serve cp and ap
//! buckets: ap-only flags (`--context`, `--session`, levels one, quorum,
//! all, local) pick the ap form, cp-only ones (`--if-version`, linearizable,
//! stale) the cp form, and otherwise the bucket's mode is looked up first. Each parses its arguments, makes one or a few requests with
//! `capkv-client`, and prints the answer for a person (or JSON with `--json`
//! where a script wants it).
//!
//! Exit codes: 0 on success, 1 when the server (or the network) answered
//! with an error, 2 for arguments that are wrong before anything was sent.

use base64::Engine as _;
use capkv_client::{
    codes, ApReadOptions, ApValues, ApWriteOptions, ApWritten, BucketMode, BucketSpec, Client,
    ClientError, ClusterStatus, ConflictMode, Consistency, DeleteOptions, GetOptions, LinkRule,
    NemesisResult, NemesisRule, PutOptions,
};
use clap::{Args, Subcommand, ValueEnum};
use std::io::Write;
use std::time::Duration;

/// Exit code when the server or the network answered with an error.
pub const EXIT_SERVER_ERROR: u8 = 1;
/// Exit code for arguments that are wrong before anything was sent.
pub const EXIT_BAD_ARGUMENTS: u8 = 2;

/// How long `cluster status` waits for each node: an unreachable node is
/// marked as such instead of holding the table up.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest cluster a partition spec may name; matches `capkv sim`'s limit
/// and keeps a typo like `1|2,300000` from building a huge request.
const NODE_ID_MAX: u64 = 1_000;

/// The client subcommands, flattened into the top-level command.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Create or list buckets.
    Bucket {
        #[command(subcommand)]
        command: BucketCommand,
    },
    /// Write a value (ap buckets: prints the context and the session token).
    Put(PutArgs),
    /// Read a value (cp: the value alone, --json adds the version; ap: every
    /// sibling and the context).
    Get(GetArgs),
    /// Delete a key (ap buckets: writes a tombstone; prints the context and
    /// the session token).
    Delete(DeleteArgs),
    /// Start Merkle anti-entropy exchanges now for one ap bucket, or all of
    /// them (they finish in the background).
    Repair {
        /// The ap bucket; every ap bucket when left out.
        bucket: Option<String>,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// Cluster membership and Raft state.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Inject network faults between nodes (needs the admin token).
    Nemesis {
        #[command(subcommand)]
        command: NemesisCommand,
    },
}

/// Where to send requests.
#[derive(Args, Debug, Clone)]
pub struct EndpointArgs {
    /// A node's HTTP address. Any node answers any request.
    #[arg(long, env = "CAPKV_ENDPOINT", default_value = "http://127.0.0.1:8001")]
    pub endpoint: String,
}

/// The admin token for the nemesis endpoints.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// The admin token (`capkv demo` prints it).
    #[arg(long, env = "CAPKV_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// `capkv bucket ...`
#[derive(Subcommand, Debug)]
pub enum BucketCommand {
    /// Create a bucket (idempotent: the same settings again succeed).
    Create {
        /// The bucket's name.
        name: String,
        /// cp: Raft, linearizable; ap: Dynamo-style, always writable.
        #[arg(long, value_enum)]
        mode: ModeArg,
        /// Replication factor (cp buckets use the whole Raft group).
        #[arg(long)]
        replicas: Option<u32>,
        /// How an ap bucket resolves concurrent writes [default: siblings].
        #[arg(long, value_enum)]
        conflict: Option<ConflictArg>,
        /// An ap bucket's default read level: local, one, quorum or all
        /// [default: quorum].
        #[arg(long, value_enum)]
        read: Option<ConsistencyArg>,
        /// An ap bucket's default write level: one, quorum or all
        /// [default: quorum].
        #[arg(long, value_enum)]
        write: Option<ConsistencyArg>,
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
    /// List buckets.
    List {
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
}

/// Bucket modes as command-line values.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeArg {
    /// Raft groups: linearizable, refuses work without a majority.
    Cp,
    /// Replicas on a hash ring: always writable, eventually consistent.
    Ap,
}

impl ModeArg {
    /// The client's type.
    pub fn to_client(self) -> BucketMode {
        match self {
            ModeArg::Cp => BucketMode::Cp,
            ModeArg::Ap => BucketMode::Ap,
        }
    }
}

/// Conflict resolution as command-line values.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictArg {
    /// Last write wins.
    Lww,
    /// Keep concurrent writes as siblings.
    Siblings,
}

/// Consistency levels as command-line values.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsistencyArg {
    /// cp: confirmed by a quorum.
    Linearizable,
    /// cp: the answering node's state, possibly behind.
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

impl ConsistencyArg {
    /// The client's type.
    pub fn to_client(self) -> Consistency {
        match self {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Stale => Consistency::Stale,
            ConsistencyArg::Local => Consistency::Local,
            ConsistencyArg::One => Consistency::One,
            ConsistencyArg::Quorum => Consistency::Quorum,
            ConsistencyArg::All => Consistency::All,
        }
    }

    /// True for the levels of ap buckets, which apply to writes too; cp
    /// writes are always linearizable and refuse a level.
    pub fn applies_to_writes(self) -> bool {
        matches!(
            self,
            ConsistencyArg::One | ConsistencyArg::Quorum | ConsistencyArg::All
        )
    }

    /// True for the levels of ap buckets.
    pub fn is_ap(self) -> bool {
        !matches!(self, ConsistencyArg::Linearizable | ConsistencyArg::Stale)
    }
}

/// `capkv put BUCKET KEY VALUE`
#[derive(Args, Debug)]
pub struct PutArgs {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// The value (stored as these bytes).
    pub value: String,
    /// Compare-and-set: write only if the key is at this version (0: only if
    /// absent, when the server supports it).
    #[arg(long)]
    pub if_version: Option<u64>,
    /// Write consistency (ap buckets: one, quorum, all).
    #[arg(long, value_enum)]
    pub consistency: Option<ConsistencyArg>,
    /// ap buckets: the context of the read this write follows (`capkv get`
    /// prints it); the write supersedes what that read saw.
    #[arg(long)]
    pub context: Option<String>,
    /// The server's deadline for this request, in milliseconds.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
}

/// `capkv get BUCKET KEY`
#[derive(Args, Debug)]
pub struct GetArgs {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// Read consistency: linearizable or stale for cp; local, one, quorum or
    /// all for ap.
    #[arg(long, value_enum)]
    pub consistency: Option<ConsistencyArg>,
    /// ap buckets: the session token of an earlier write (`capkv put`
    /// prints it); the read sees that write or fails.
    #[arg(long)]
    pub session: Option<String>,
    /// Print the answer as JSON (cp: `{"key","value","version"}`; ap: the
    /// siblings and the context) instead of the bare value.
    #[arg(long)]
    pub json: bool,
    /// The server's deadline for this request, in milliseconds.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
}

/// `capkv delete BUCKET KEY`
#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// Compare-and-delete: delete only if the key is at this version.
    #[arg(long)]
    pub if_version: Option<u64>,
    /// Delete consistency (ap buckets: one, quorum, all).
    #[arg(long, value_enum)]
    pub consistency: Option<ConsistencyArg>,
    /// ap buckets: the context of the read this delete follows.
    #[arg(long)]
    pub context: Option<String>,
    /// The server's deadline for this request, in milliseconds.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    #[command(flatten)]
    pub endpoint: EndpointArgs,
}

/// `capkv cluster ...`
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// One row per node: its role, term, leader and log positions, asked of
    /// each node itself.
    Status {
        #[command(flatten)]
        endpoint: EndpointArgs,
    },
}

/// `capkv nemesis ...`: every rule is relayed to every node by the node
/// that receives it.
#[derive(Subcommand, Debug)]
pub enum NemesisCommand {
    /// Cut the network into groups, e.g. "1|2,3": nodes talk only within
    /// their group. Every member must be in exactly one group.
    Partition {
        /// Groups separated by `|`, node ids in a group by `,`.
        #[arg(value_parser = parse_partition_spec)]
        groups: PartitionSpec,
        #[command(flatten)]
        endpoint: EndpointArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove every rule: partitions, delays and losses.
    Heal {
        #[command(flatten)]
        endpoint: EndpointArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delay every message on one directed link. Sets the link's whole rule
    /// (loss too, 0 unless --probability is given).
    Delay {
        /// Sending node.
        #[arg(long)]
        from: u64,
        /// Receiving node.
        #[arg(long)]
        to: u64,
        /// Delay in milliseconds.
        #[arg(long)]
        ms: u64,
        /// Also drop this fraction of messages.
        #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
        probability: f64,
        #[command(flatten)]
        endpoint: EndpointArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Drop a fraction of messages on one directed link. Sets the link's
    /// whole rule (delay too, 0 unless --ms is given).
    Loss {
        /// Sending node.
        #[arg(long)]
        from: u64,
        /// Receiving node.
        #[arg(long)]
        to: u64,
        /// Fraction dropped, 0 to 1.
        #[arg(long, value_parser = parse_probability)]
        probability: f64,
        /// Also delay messages by this many milliseconds.
        #[arg(long, default_value_t = 0)]
        ms: u64,
        #[command(flatten)]
        endpoint: EndpointArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the rules in force.
    Show {
        #[command(flatten)]
        endpoint: EndpointArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// A parsed partition spec: at least two non-empty groups, each node once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionSpec(pub Vec<Vec<u64>>);

/// Parses `"1|2,3"` strictly: every id a number from 1, no empty group, no
/// node twice, at least two groups.
pub fn parse_partition_spec(text: &str) -> Result<PartitionSpec, String> {
    let mut groups = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (group_number, group_text) in text.split('|').enumerate() {
        let mut group = Vec::new();
        for id_text in group_text.split(',') {
            let id_text = id_text.trim();
            if id_text.is_empty() {
                return Err(format!(
                    "group {} of {text:?} has an empty node id; write groups like \"1|2,3\"",
                    group_number + 1
                ));
            }
            let id: u64 = id_text.parse().map_err(|_| {
                format!("{id_text:?} in {text:?} is not a node id (a number like 1, 2, 3)")
            })?;
            if id == 0 || id > NODE_ID_MAX {
                return Err(format!("node id {id} is out of range (1..={NODE_ID_MAX})"));
            }
            if !seen.insert(id) {
                return Err(format!("node {id} appears twice in {text:?}"));
            }
            group.push(id);
        }
        groups.push(group);
    }
    if groups.len() < 2 {
        return Err(format!(
            "{text:?} names one group; a partition needs at least two, like \"1|2,3\""
        ));
    }
    Ok(PartitionSpec(groups))
}

/// Parses a probability in 0..=1.
pub fn parse_probability(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{value} is not a probability (0 to 1)"));
    }
    Ok(value)
}

/// Runs one client subcommand and returns the process exit code.
pub fn run(command: ClientCommand) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("capkv: cannot start the async runtime: {error}");
            return EXIT_SERVER_ERROR;
        }
    };
    let (name, result) = runtime.block_on(dispatch(command));
    match result {
        Ok(code) => code,
        Err(error) => report_error(name, &error),
    }
}

/// Prints a client error as `capkv NAME: CODE: MESSAGE` and picks the exit
/// code: errors the client raised before sending are bad arguments.
pub fn report_error(command_name: &str, error: &ClientError) -> u8 {
    eprintln!("capkv {command_name}: {}: {}", error.code, error.message);
    let refused_before_sending = error.status == 0
        && (error.code == codes::INVALID_ENDPOINT || error.code == codes::INVALID_REQUEST);
    if refused_before_sending {
        EXIT_BAD_ARGUMENTS
    } else {
        EXIT_SERVER_ERROR
    }
}

type CommandResult = Result<u8, ClientError>;

async fn dispatch(command: ClientCommand) -> (&'static str, CommandResult) {
    match command {
        ClientCommand::Bucket { command } => ("bucket", bucket(command).await),
        ClientCommand::Put(args) => ("put", put(args).await),
        ClientCommand::Get(args) => ("get", get(args).await),
        ClientCommand::Delete(args) => ("delete", delete(args).await),
        ClientCommand::Repair { bucket, endpoint } => ("repair", repair(bucket, &endpoint).await),
        ClientCommand::Cluster {
            command: ClusterCommand::Status { endpoint },
        } => ("cluster status", cluster_status(&endpoint).await),
        ClientCommand::Nemesis { command } => ("nemesis", nemesis(command).await),
    }
}

async fn bucket(command: BucketCommand) -> CommandResult {
    match command {
        BucketCommand::Create {
            name,
            mode,
            replicas,
            conflict,
            read,
            write,
            endpoint,
        } => {
            check_bucket_levels(mode, read, write).map_err(bad_argument)?;
            let spec = BucketSpec {
                mode: mode.to_client(),
                replicas,
                conflict: conflict.map(|conflict| match conflict {
                    ConflictArg::Lww => ConflictMode::Lww,
                    ConflictArg::Siblings => ConflictMode::Siblings,
                }),
                read: read.map(ConsistencyArg::to_client),
                write: write.map(ConsistencyArg::to_client),
            };
            let created = Client::new(&endpoint.endpoint)?
                .create_bucket(&name, &spec)
                .await?;
            let outcome = if created.created {
                "created"
            } else {
                "already exists with these settings"
            };
            let settings = match (&created.conflict, &created.read, &created.write) {
                (Some(conflict), Some(read), Some(write)) => format!(
                    ", N={}, conflict {conflict}, read {read}, write {write}",
                    created.replicas.unwrap_or(0)
                ),
                _ => String::new(),
            };
            println!(
                "bucket {} ({}{settings}) {outcome}",
                created.bucket, created.mode
            );
            Ok(0)
        }
        BucketCommand::List { endpoint } => {
            let buckets = Client::new(&endpoint.endpoint)?.list_buckets().await?;
            if buckets.is_empty() {
                println!("no buckets yet; create one with: capkv bucket create NAME --mode cp");
                return Ok(0);
            }
            let mut rows = vec![vec![
                "BUCKET".to_string(),
                "MODE".into(),
                "REPLICAS".into(),
                "CONFLICT".into(),
                "READ".into(),
                "WRITE".into(),
            ]];
            let dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_string());
            for bucket in buckets {
                let replicas = bucket.replicas.map_or("-".to_string(), |r| r.to_string());
                rows.push(vec![
                    bucket.name,
                    bucket.mode,
                    replicas,
                    dash(bucket.conflict),
                    dash(bucket.read),
                    dash(bucket.write),
                ]);
            }
            print!("{}", format_table(&rows));
            Ok(0)
        }
    }
}

/// A client-side refusal of the arguments (exit code 2).
fn bad_argument(message: String) -> ClientError {
    ClientError::local(codes::INVALID_REQUEST, message)
}

/// An ap bucket takes read levels local..all and write levels one..all; a
/// cp bucket takes neither.
pub fn check_bucket_levels(
    mode: ModeArg,
    read: Option<ConsistencyArg>,
    write: Option<ConsistencyArg>,
) -> Result<(), String> {
    if mode == ModeArg::Cp && (read.is_some() || write.is_some()) {
        return Err("--read and --write apply to ap buckets (--mode ap)".into());
    }
    if read.is_some_and(|level| !level.is_ap()) {
        return Err("--read takes local, one, quorum or all".into());
    }
    if write.is_some_and(|level| !level.applies_to_writes()) {
        return Err("--write takes one, quorum or all".into());
    }
    Ok(())
}

/// Which API a put, get or delete uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// The flags say cp.
    Cp,
    /// The flags say ap.
    Ap,
    /// The flags do not say: ask the node for the bucket's mode.
    Ask,
}

/// Picks the API from the flags: ap-only and cp-only flags together are a
/// bad argument.
pub fn flavor(
    if_version: Option<u64>,
    consistency: Option<ConsistencyArg>,
    token: Option<&str>,
) -> Result<Flavor, String> {
    let ap = token.is_some() || consistency.is_some_and(ConsistencyArg::is_ap);
    let cp = if_version.is_some() || consistency.is_some_and(|level| !level.is_ap());
    match (cp, ap) {
        (true, true) => Err(
            "--if-version, linearizable and stale are for cp buckets; --context, --session and \
             local, one, quorum, all are for ap buckets: they cannot be mixed"
                .into(),
        ),
        (true, false) => Ok(Flavor::Cp),
        (false, true) => Ok(Flavor::Ap),
        (false, false) => Ok(Flavor::Ask),
    }
}

/// Writes and deletes take one, quorum or all (ap buckets); cp writes are
/// always linearizable and take no level.
pub fn check_write_level(consistency: Option<ConsistencyArg>) -> Result<(), String> {
    match consistency {
        Some(ConsistencyArg::Local) => {
            Err("writes take --consistency one, quorum or all (local is for ap reads)".into())
        }
        Some(ConsistencyArg::Linearizable | ConsistencyArg::Stale) => Err(
            "cp writes are always linearizable: --consistency one, quorum or all is for ap buckets"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// How long the CLI waits before asking a node again about a bucket it
/// does not list (one created a moment ago through another node).
const BUCKET_RELIST_WAIT: Duration = Duration::from_millis(300);

/// True when the bucket is an ap bucket, as the node lists it. A bucket the
/// node does not list is asked about once more after a short wait, then
/// counts as cp, whose answer (`bucket_not_found`) says so.
async fn is_ap(client: &Client, bucket: &str, flavor: Flavor) -> Result<bool, ClientError> {
    match flavor {
        Flavor::Cp => return Ok(false),
        Flavor::Ap => return Ok(true),
        Flavor::Ask => {}
    }
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(BUCKET_RELIST_WAIT).await;
        }
        if let Some(info) = client
            .list_buckets()
            .await?
            .into_iter()
            .find(|info| info.name == bucket)
        {
            return Ok(info.mode == "ap");
        }
    }
    Ok(false)
}

async fn put(args: PutArgs) -> CommandResult {
    let flavor =
        flavor(args.if_version, args.consistency, args.context.as_deref()).map_err(bad_argument)?;
    check_write_level(args.consistency).map_err(bad_argument)?;
    let client = Client::new(&args.endpoint.endpoint)?;
    if is_ap(&client, &args.bucket, flavor).await? {
        let options = ApWriteOptions {
            consistency: args.consistency.map(ConsistencyArg::to_client),
            context: args.context,
            timeout_ms: args.timeout_ms,
        };
        let written = client
            .ap_put(&args.bucket, &args.key, args.value.into_bytes(), &options)
            .await?;
        print_written(&written);
        return Ok(0);
    }
    let options = PutOptions {
        if_version: args.if_version,
        consistency: args.consistency.map(ConsistencyArg::to_client),
        timeout_ms: args.timeout_ms,
    };
    let written = client
        .put(&args.bucket, &args.key, args.value.into_bytes(), &options)
        .await?;
    println!("version {}", written.version);
    Ok(0)
}

/// The lines an ap write prints: the context (for a later write), the
/// session token (for a later read) and how many replicas acknowledged.
pub fn format_written(written: &ApWritten) -> String {
    format!(
        "context: {}\nsession: {}\nacks: {}/{} ({})\n",
        written.context, written.session, written.acks, written.replicas, written.consistency
    )
}

fn print_written(written: &ApWritten) {
    print!("{}", format_written(written));
}

/// The lines an ap read prints: one `value:` line per sibling (binary ones
/// as `value_base64:`), then the context and how many replicas answered.
pub fn format_values(values: &ApValues) -> String {
    let mut text = String::new();
    for sibling in &values.siblings {
        match std::str::from_utf8(sibling) {
            Ok(value) => text.push_str(&format!("value: {value}\n")),
            Err(_) => text.push_str(&format!(
                "value_base64: {}\n",
                base64::engine::general_purpose::STANDARD.encode(sibling)
            )),
        }
    }
    if values.siblings.len() > 1 {
        text.push_str(&format!(
            "siblings: {} (write with this context to resolve them)\n",
            values.siblings.len()
        ));
    }
    text.push_str(&format!(
        "context: {}\nresponded: {}/{} ({})\n",
        values.context, values.responded, values.replicas, values.consistency
    ));
    text
}

fn values_json(values: &ApValues) -> serde_json::Value {
    let siblings: Vec<serde_json::Value> = values
        .siblings
        .iter()
        .map(|sibling| match std::str::from_utf8(sibling) {
            Ok(text) => serde_json::json!({ "value": text }),
            Err(_) => serde_json::json!({
                "value_base64": base64::engine::general_purpose::STANDARD.encode(sibling)
            }),
        })
        .collect();
    serde_json::json!({
        "key": values.key,
        "siblings": siblings,
        "context": values.context,
        "responded": values.responded,
        "replicas": values.replicas,
        "consistency": values.consistency,
    })
}

async fn get(args: GetArgs) -> CommandResult {
    let flavor = flavor(None, args.consistency, args.session.as_deref()).map_err(bad_argument)?;
    let client = Client::new(&args.endpoint.endpoint)?;
    if is_ap(&client, &args.bucket, flavor).await? {
        return ap_get(&client, args).await;
    }
    let options = GetOptions {
        consistency: args.consistency.map(ConsistencyArg::to_client),
        timeout_ms: args.timeout_ms,
    };
    let read = client.get(&args.bucket, &args.key, &options).await?;
    let mut stdout = std::io::stdout().lock();
    let written = if args.json {
        let value = match read.value_text() {
            Some(text) => {
                serde_json::json!({"key": read.key, "value": text, "version": read.version})
            }
            None => serde_json::json!({
                "key": read.key,
                "value_base64": base64::engine::general_purpose::STANDARD.encode(&read.value),
                "version": read.version,
            }),
        };
        writeln!(stdout, "{value}")
    } else {
        stdout
            .write_all(&read.value)
            .and_then(|()| writeln!(stdout))
    };
    // A closed pipe (`capkv get ... | head -c1`) is not an error worth a
    // message; the value was read.
    drop(written);
    Ok(0)
}

/// An ap read: every sibling and the context. An absent or deleted key
/// prints its context (a write with it supersedes the tombstone) and exits
/// 1 like a missing cp key.
async fn ap_get(client: &Client, args: GetArgs) -> CommandResult {
    let options = ApReadOptions {
        consistency: args.consistency.map(ConsistencyArg::to_client),
        session: args.session,
        timeout_ms: args.timeout_ms,
    };
    let values = client.ap_get(&args.bucket, &args.key, &options).await?;
    let text = if args.json {
        format!("{}\n", values_json(&values))
    } else {
        format_values(&values)
    };
    // As for cp reads, a closed pipe is not worth a message.
    drop(std::io::stdout().lock().write_all(text.as_bytes()));
    if values.siblings.is_empty() {
        eprintln!(
            "capkv get: not_found: key '{}' is absent or deleted",
            args.key
        );
        return Ok(EXIT_SERVER_ERROR);
    }
    Ok(0)
}

async fn delete(args: DeleteArgs) -> CommandResult {
    let flavor =
        flavor(args.if_version, args.consistency, args.context.as_deref()).map_err(bad_argument)?;
    check_write_level(args.consistency).map_err(bad_argument)?;
    let client = Client::new(&args.endpoint.endpoint)?;
    if is_ap(&client, &args.bucket, flavor).await? {
        let options = ApWriteOptions {
            consistency: args.consistency.map(ConsistencyArg::to_client),
            context: args.context,
            timeout_ms: args.timeout_ms,
        };
        let written = client.ap_delete(&args.bucket, &args.key, &options).await?;
        print_written(&written);
        return Ok(0);
    }
    let options = DeleteOptions {
        if_version: args.if_version,
        timeout_ms: args.timeout_ms,
    };
    let deleted = client.delete(&args.bucket, &args.key, &options).await?;
    if deleted.deleted {
        println!("deleted");
    } else {
        println!("not found (nothing to delete)");
    }
    Ok(0)
}

async fn repair(bucket: Option<String>, endpoint: &EndpointArgs) -> CommandResult {
    let started = Client::new(&endpoint.endpoint)?
        .repair(bucket.as_deref())
        .await?;
    let scope = bucket.map_or("every ap bucket".to_string(), |bucket| {
        format!("bucket {bucket}")
    });
    println!(
        "started {} anti-entropy exchanges for {scope}; they finish in the background",
        started.exchanges
    );
    Ok(0)
}

/// One node's row in `cluster status`: what the node said about itself, or
/// why it could not say.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeView {
    /// The node answered.
    Answered(ClusterStatus),
    /// The node could not be asked: the client error code or a reason.
    Unreachable(String),
    /// No HTTP address is known for the node.
    NoHttpAddress,
}

async fn cluster_status(endpoint: &EndpointArgs) -> CommandResult {
    let entry = Client::new(&endpoint.endpoint)?.with_timeout(STATUS_TIMEOUT);
    let membership = entry.cluster().await?;
    let mut queries = tokio::task::JoinSet::new();
    for node in &membership.nodes {
        let id = node.id;
        let Some(http) = node.http.clone() else {
            continue;
        };
        let client = entry.at(&http);
        queries.spawn(async move {
            let view = match client {
                Ok(client) => match client.cluster().await {
                    Ok(status) => NodeView::Answered(status),
                    Err(error) => NodeView::Unreachable(error.code),
                },
                Err(error) => NodeView::Unreachable(error.code),
            };
            (id, view)
        });
    }
    let mut views = std::collections::BTreeMap::new();
    while let Some(joined) = queries.join_next().await {
        if let Ok((id, view)) = joined {
            views.insert(id, view);
        }
    }
    let rows: Vec<(capkv_client::ClusterNode, NodeView)> = membership
        .nodes
        .iter()
        .map(|node| {
            let view = views.remove(&node.id).unwrap_or(NodeView::NoHttpAddress);
            (node.clone(), view)
        })
        .collect();
    print!("{}", format_cluster_table(&rows));
    Ok(0)
}

/// The `cluster status` table: one row per node (per group when a node
/// reports more than one), with unreachable nodes marked.
pub fn format_cluster_table(nodes: &[(capkv_client::ClusterNode, NodeView)]) -> String {
    let many_groups = nodes.iter().any(|(_, view)| match view {
        NodeView::Answered(status) => status.groups.len() > 1,
        _ => false,
    });
    let mut header = vec!["NODE", "PEER", "HTTP"];
    if many_groups {
        header.push("GROUP");
    }
    header.extend(["ROLE", "TERM", "LEADER", "COMMIT", "APPLIED"]);
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for (node, view) in nodes {
        let address = [
            node.id.to_string(),
            node.peer.clone(),
            node.http.clone().unwrap_or_else(|| "-".into()),
        ];
        let mut blank_row = |role: String| {
            let mut row = address.to_vec();
            if many_groups {
                row.push("-".into());
            }
            row.push(role);
            row.extend(["-", "-", "-", "-"].map(String::from));
            rows.push(row);
        };
        match view {
            NodeView::Unreachable(code) => blank_row(format!("UNREACHABLE ({code})")),
            NodeView::NoHttpAddress => blank_row("? (no http address)".into()),
            NodeView::Answered(status) if status.groups.is_empty() => {
                blank_row("(no groups)".into())
            }
            NodeView::Answered(status) => {
                for group in &status.groups {
                    let mut row = address.to_vec();
                    if many_groups {
                        row.push(group.group.to_string());
                    }
                    row.extend([
                        group.role.clone(),
                        group.term.to_string(),
                        group.leader.map_or("-".into(), |leader| leader.to_string()),
                        group.commit_index.to_string(),
                        group.applied_index.to_string(),
                    ]);
                    rows.push(row);
                }
            }
        }
    }
    format_table(&rows)
}

/// Left-aligned columns separated by two spaces; the first row is the
/// header.
pub fn format_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == row.len() {
                line.push_str(cell);
            } else {
                let padding = widths[column] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(padding + 2));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

async fn nemesis(command: NemesisCommand) -> CommandResult {
    match command {
        NemesisCommand::Partition {
            groups,
            endpoint,
            admin,
        } => {
            let result = admin_client(&endpoint, &admin)?
                .nemesis_partition(&groups.0)
                .await?;
            Ok(report_nemesis(&result))
        }
        NemesisCommand::Heal { endpoint, admin } => {
            let result = admin_client(&endpoint, &admin)?.nemesis_heal().await?;
            Ok(report_nemesis(&result))
        }
        NemesisCommand::Delay {
            from,
            to,
            ms,
            probability,
            endpoint,
            admin,
        }
        | NemesisCommand::Loss {
            from,
            to,
            ms,
            probability,
            endpoint,
            admin,
        } => {
            let rule = LinkRule {
                from,
                to,
                delay_ms: ms,
                drop_probability: probability,
            };
            let result = admin_client(&endpoint, &admin)?.nemesis_link(&rule).await?;
            Ok(report_nemesis(&result))
        }
        NemesisCommand::Show { endpoint, admin } => {
            let rules = admin_client(&endpoint, &admin)?.nemesis_rules().await?;
            print!("{}", format_rules(&rules));
            Ok(0)
        }
    }
}

fn admin_client(endpoint: &EndpointArgs, admin: &AdminArgs) -> Result<Client, ClientError> {
    let client = Client::new(&endpoint.endpoint)?;
    Ok(match &admin.admin_token {
        Some(token) => client.with_admin_token(token.clone()),
        None => client,
    })
}

/// Prints which nodes took a nemesis change; a change that did not reach
/// every node is an error (exit 1), because the network is then not in the
/// state the user asked for.
fn report_nemesis(result: &NemesisResult) -> u8 {
    let applied: Vec<String> = result.applied.iter().map(u64::to_string).collect();
    println!(
        "applied on nodes: {}",
        if applied.is_empty() {
            "none".into()
        } else {
            applied.join(", ")
        }
    );
    print!("{}", format_rules(&result.rules));
    if result.failed.is_empty() {
        return 0;
    }
    for failure in &result.failed {
        eprintln!("capkv nemesis: not applied: {failure}");
    }
    EXIT_SERVER_ERROR
}

/// The rules table of `nemesis show`, or a sentence when there are none.
pub fn format_rules(rules: &[NemesisRule]) -> String {
    if rules.is_empty() {
        return "no rules in force: every link delivers normally\n".into();
    }
    let mut rows = vec![["FROM", "TO", "RULE"].map(String::from).to_vec()];
    for rule in rules {
        let mut effects = Vec::new();
        if rule.blocked {
            effects.push("cut".to_string());
        }
        if rule.delay_ms > 0 {
            effects.push(format!("delay {} ms", rule.delay_ms));
        }
        if rule.drop_probability > 0.0 {
            effects.push(format!("drop {}%", rule.drop_probability * 100.0));
        }
        if effects.is_empty() {
            effects.push("pass".into());
        }
        rows.push(vec![
            rule.from.to_string(),
            rule.to.to_string(),
            effects.join(", "),
        ]);
    }
    format_table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capkv_client::{ClusterNode, GroupStatus};

    #[test]
    fn partition_specs_parse_into_groups() {
        assert_eq!(
            parse_partition_spec("1|2,3").unwrap().0,
            vec![vec![1], vec![2, 3]]
        );
        assert_eq!(
            parse_partition_spec(" 1 , 2 | 3 | 4,5 ").unwrap().0,
            vec![vec![1, 2], vec![3], vec![4, 5]]
        );
    }

    #[test]
    fn partition_specs_are_strict() {
        for (spec, expected) in [
            ("1|2,x", "\"x\" in \"1|2,x\" is not a node id"),
            ("1|2,,3", "empty node id"),
            ("1||2", "empty node id"),
            ("|1", "empty node id"),
            ("1,2,3", "needs at least two"),
            ("1|2,1", "node 1 appears twice"),
            ("0|1", "out of range"),
            ("1|-2", "is not a node id"),
            ("1|2.5", "is not a node id"),
            ("", "empty node id"),
        ] {
            let error = parse_partition_spec(spec).unwrap_err();
            assert!(error.contains(expected), "{spec:?}: {error}");
        }
    }

    #[test]
    fn ap_and_cp_flags_pick_the_api_and_cannot_mix() {
        assert_eq!(flavor(None, None, None).unwrap(), Flavor::Ask);
        assert_eq!(flavor(Some(3), None, None).unwrap(), Flavor::Cp);
        assert_eq!(
            flavor(None, Some(ConsistencyArg::Stale), None).unwrap(),
            Flavor::Cp
        );
        assert_eq!(
            flavor(None, Some(ConsistencyArg::Local), None).unwrap(),
            Flavor::Ap
        );
        assert_eq!(flavor(None, None, Some("ctx")).unwrap(), Flavor::Ap);
        assert!(flavor(Some(3), None, Some("ctx")).is_err());
        assert!(flavor(None, Some(ConsistencyArg::Linearizable), Some("s")).is_err());
        assert!(check_write_level(Some(ConsistencyArg::Local)).is_err());
        assert!(check_write_level(Some(ConsistencyArg::Stale)).is_err());
        assert!(check_write_level(Some(ConsistencyArg::All)).is_ok());
        assert!(check_bucket_levels(ModeArg::Cp, Some(ConsistencyArg::One), None).is_err());
        assert!(check_bucket_levels(ModeArg::Ap, None, Some(ConsistencyArg::Local)).is_err());
        assert!(check_bucket_levels(ModeArg::Ap, Some(ConsistencyArg::Stale), None).is_err());
        assert!(check_bucket_levels(
            ModeArg::Ap,
            Some(ConsistencyArg::Local),
            Some(ConsistencyArg::All)
        )
        .is_ok());
    }

    #[test]
    fn ap_answers_print_every_sibling_the_context_and_the_session() {
        let values = ApValues {
            key: "k".into(),
            siblings: vec![b"a".to_vec(), vec![0xff]],
            context: "CTX".into(),
            responded: 2,
            replicas: 3,
            consistency: "quorum".into(),
        };
        assert_eq!(
            format_values(&values),
            "value: a\nvalue_base64: /w==\nsiblings: 2 (write with this context to resolve them)\n\
             context: CTX\nresponded: 2/3 (quorum)\n"
        );
        let written = ApWritten {
            context: "C".into(),
            session: "S".into(),
            acks: 3,
            replicas: 3,
            consistency: "all".into(),
        };
        assert_eq!(
            format_written(&written),
            "context: C\nsession: S\nacks: 3/3 (all)\n"
        );
    }

    #[test]
    fn probabilities_are_bounded() {
        assert_eq!(parse_probability("0.3").unwrap(), 0.3);
        assert_eq!(parse_probability("1").unwrap(), 1.0);
        assert!(parse_probability("1.5").is_err());
        assert!(parse_probability("-0.1").is_err());
        assert!(parse_probability("lots").is_err());
    }

    fn node(id: u64, http: Option<&str>) -> ClusterNode {
        ClusterNode {
            id,
            peer: format!("127.0.0.1:700{id}"),
            http: http.map(String::from),
        }
    }

    #[test]
    fn the_cluster_table_has_one_row_per_node_and_marks_unreachable_ones() {
        let answered = ClusterStatus {
            node_id: 1,
            nodes: vec![],
            groups: vec![GroupStatus {
                group: 0,
                role: "leader".into(),
                term: 5,
                leader: Some(1),
                commit_index: 12,
                applied_index: 11,
            }],
            ap: None,
        };
        let table = format_cluster_table(&[
            (
                node(1, Some("127.0.0.1:8001")),
                NodeView::Answered(answered),
            ),
            (
                node(2, Some("127.0.0.1:8002")),
                NodeView::Unreachable("unreachable".into()),
            ),
            (node(3, None), NodeView::NoHttpAddress),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert_eq!(
            lines[0],
            "NODE  PEER            HTTP            ROLE                       TERM  LEADER  COMMIT  APPLIED"
        );
        assert_eq!(
            lines[1],
            "1     127.0.0.1:7001  127.0.0.1:8001  leader                     5     1       12      11"
        );
        assert!(lines[2].contains("UNREACHABLE (unreachable)"), "{table}");
        assert!(lines[3].starts_with("3     127.0.0.1:7003  -"), "{table}");
    }

    #[test]
    fn rules_print_as_a_table() {
        assert!(format_rules(&[]).starts_with("no rules"));
        let table = format_rules(&[NemesisRule {
            from: 1,
            to: 2,
            blocked: true,
            delay_ms: 150,
            drop_probability: 0.25,
        }]);
        assert_eq!(
            table.lines().nth(1),
            Some("1     2   cut, delay 150 ms, drop 25%")
        );
    }

    #[test]
    fn errors_raised_before_sending_are_bad_arguments() {
        let local = ClientError::local(codes::INVALID_ENDPOINT, "bad");
        assert_eq!(report_error("test", &local), EXIT_BAD_ARGUMENTS);
        let server = ClientError {
            status: 400,
            ..ClientError::local(codes::INVALID_REQUEST, "bad")
        };
        assert_eq!(report_error("test", &server), EXIT_SERVER_ERROR);
        let down = ClientError::local(codes::UNREACHABLE, "refused");
        assert_eq!(report_error("test", &down), EXIT_SERVER_ERROR);
    }
}
