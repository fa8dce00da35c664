//! `capkv demo`: a local cluster in one command.
//!
//! Starts N `capkv node` child processes of this executable on 127.0.0.1,
//! each its own OS process (so `kill -9` is a real crash) with its own data
//! directory and log file, waits for a Raft leader, creates the cp bucket
//! `bank`, and prints endpoints, credentials and commands to try. Ctrl-C
//! stops every child: SIGTERM, then SIGKILL after a grace period.
//!
//! What it does not do: restart crashed nodes (it prints the command that
//! does), or keep secrets: the generated secret and token are printed,
//! because this is a demonstration on loopback.

use crate::client_commands::{format_cluster_table, NodeView};
use capkv_client::{codes, BucketMode, BucketSpec, Client, ClusterNode, ConflictMode};
use clap::Args;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Largest demo cluster.
const NODES_MAX: u16 = 9;
/// How long to wait for a leader before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(15);
/// How long to keep trying to create the demo bucket once there is a leader.
const BUCKET_WAIT: Duration = Duration::from_secs(10);
/// Pause between polls while the cluster starts.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Per-request timeout while polling: a node that is still starting must
/// not hold the loop up.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the running demo checks whether a child exited.
const SUPERVISE_INTERVAL: Duration = Duration::from_millis(500);
/// Time a child gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Lines of a child's log shown when it failed to start.
const LOG_TAIL_LINES: usize = 15;
/// The bucket the demo creates.
const DEMO_BUCKET: &str = "bank";
/// The demo's ap bucket (siblings, N = 3 or the cluster size if smaller).
const DEMO_AP_BUCKET: &str = "feed";

/// Arguments of `capkv demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of nodes (1..=9).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Where the nodes keep data and logs; a fresh directory under the
    /// system's temp directory when not given.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Node-to-node port of node 1; node N uses this + N - 1.
    #[arg(long, default_value_t = 7001)]
    pub base_peer_port: u16,
    /// HTTP port of node 1; node N uses this + N - 1.
    #[arg(long, default_value_t = 8001)]
    pub base_http_port: u16,
    /// Instead of waiting for Ctrl-C, walk through a scenario on the new
    /// cluster, narrated, with every promise checked; then stop the cluster.
    /// Exit 0 when every promise held. Known: partition (cut the cp leader
    /// off: cp refuses on its side and serves the majority, ap serves both;
    /// heal: cp converges, ap keeps both writes as siblings).
    #[arg(long)]
    pub scenario: Option<String>,
}

/// One child node process and what the demo knows about it.
struct NodeProcess {
    /// The node's id (1..).
    id: u64,
    /// Its node-to-node address.
    peer: SocketAddr,
    /// Its HTTP address.
    http: SocketAddr,
    /// Where its stdout and stderr go.
    log_path: PathBuf,
    /// The command line that restarts it (printed when it dies).
    restart_command: String,
    /// The process; `None` once it has exited and been reaped.
    child: Option<Child>,
    /// How it exited, once it has.
    exit_status: Option<ExitStatus>,
}

/// The demo's children. Dropping it kills any that still run, so an early
/// return or a panic never leaves nodes holding the ports.
struct Cluster {
    /// Every node, in id order.
    nodes: Vec<NodeProcess>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Cluster {
    /// Reaps children that exited since the last call and returns their ids.
    fn reap_exited(&mut self) -> Vec<u64> {
        let mut exited = Vec::new();
        for node in &mut self.nodes {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                node.exit_status = Some(status);
                node.child = None;
                exited.push(node.id);
            }
        }
        exited
    }

    fn running(&self) -> usize {
        self.nodes
            .iter()
            .filter(|node| node.child.is_some())
            .count()
    }

    /// SIGTERM to every running child, then SIGKILL to any still running
    /// after the grace period.
    async fn stop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                if let Err(error) = terminate(child) {
                    eprintln!("capkv demo: cannot signal node {}: {error}", node.id);
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        while self.running() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            for id in self.reap_exited() {
                println!("stopped node {id}");
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                eprintln!(
                    "capkv demo: node {} did not stop within {} s; killing it",
                    node.id,
                    STOP_GRACE.as_secs()
                );
                let _ = child.kill();
                node.exit_status = child.wait().ok();
            }
        }
    }
}

/// Asks a child to stop cleanly (SIGTERM on unix).
#[cfg(unix)]
fn terminate(child: &mut Child) -> std::io::Result<()> {
    let pid = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other("the child's pid is out of range"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
    Ok(())
}

/// Elsewhere there is no SIGTERM: the child is killed.
#[cfg(not(unix))]
fn terminate(child: &mut Child) -> std::io::Result<()> {
    child.kill()
}

/// The ports node `id` uses.
fn node_addresses(args: &DemoArgs, id: u16) -> (SocketAddr, SocketAddr) {
    let loopback = std::net::Ipv4Addr::LOCALHOST;
    (
        SocketAddr::from((loopback, args.base_peer_port + id - 1)),
        SocketAddr::from((loopback, args.base_http_port + id - 1)),
    )
}

/// Refuses sizes and port ranges that cannot work, before anything starts.
fn check_args(args: &DemoArgs) -> Result<(), String> {
    if args.nodes == 0 || args.nodes > NODES_MAX {
        return Err(format!("--nodes must be 1..={NODES_MAX}"));
    }
    if let Some(name) = &args.scenario {
        crate::scenario::check_name(name)?;
        if args.nodes < crate::scenario::NODES_MIN {
            return Err(format!(
                "--scenario {name} needs at least {} nodes (a majority must remain when one is cut off)",
                crate::scenario::NODES_MIN
            ));
        }
    }
    for (flag, base) in [
        ("--base-peer-port", args.base_peer_port),
        ("--base-http-port", args.base_http_port),
    ] {
        if base == 0 || base.checked_add(args.nodes - 1).is_none() {
            return Err(format!(
                "{flag} {base} leaves no room for {} nodes",
                args.nodes
            ));
        }
    }
    let peer_ports = args.base_peer_port..args.base_peer_port + args.nodes;
    let http_ports = args.base_http_port..args.base_http_port + args.nodes;
    if peer_ports.start < http_ports.end && http_ports.start < peer_ports.end {
        return Err("the peer and HTTP port ranges overlap; move --base-http-port".into());
    }
    Ok(())
}

/// Checks that every port is free by binding it for a moment.
fn check_ports(args: &DemoArgs) -> Result<(), String> {
    for id in 1..=args.nodes {
        let (peer, http) = node_addresses(args, id);
        for (what, address, flag) in [
            ("peer", peer, "--base-peer-port"),
            ("HTTP", http, "--base-http-port"),
        ] {
            if let Err(error) = TcpListener::bind(address) {
                return Err(format!(
                    "port {} ({what} port of node {id}) is taken: {error}. Stop whatever holds it \
                     (an earlier demo?) or choose other ports with {flag}",
                    address.port()
                ));
            }
        }
    }
    Ok(())
}

/// Random bytes as hex, from the operating system.
fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer)
        .map_err(|error| format!("no OS randomness for the secrets: {error}"))?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

fn fresh_data_dir(requested: Option<&PathBuf>) -> Result<PathBuf, String> {
    let directory = match requested {
        Some(directory) => directory.clone(),
        None => std::env::temp_dir().join(format!("capkv-demo-{}", random_hex(4)?)),
    };
    std::fs::create_dir_all(&directory)
        .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    Ok(directory)
}

/// The name to print in commands: `capkv` when that is what the shell
/// finds on PATH, the full path of this executable otherwise.
fn program_name(executable: &Path) -> String {
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|directory| {
            let candidate = directory.join("capkv");
            candidate.canonicalize().ok() == executable.canonicalize().ok() && candidate.is_file()
        })
    });
    if on_path {
        "capkv".into()
    } else {
        executable.display().to_string()
    }
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    let plain = word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain && !word.is_empty() {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Everything the children share.
struct Launch {
    executable: PathBuf,
    program: String,
    data_dir: PathBuf,
    secret: String,
    admin_token: String,
    peers: String,
    peer_http: String,
}

fn spawn_node(launch: &Launch, args: &DemoArgs, id: u16) -> Result<NodeProcess, String> {
    let (peer, http) = node_addresses(args, id);
    let node_dir = launch.data_dir.join(format!("node-{id}"));
    let log_path = launch.data_dir.join(format!("node-{id}.log"));
    let node_args: Vec<String> = vec![
        "node".into(),
        "--id".into(),
        id.to_string(),
        "--data-dir".into(),
        node_dir.display().to_string(),
        "--listen".into(),
        peer.to_string(),
        "--http".into(),
        http.to_string(),
        "--peers".into(),
        launch.peers.clone(),
        "--peer-http".into(),
        launch.peer_http.clone(),
    ];
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|error| format!("cannot open {}: {error}", log_path.display()))?;
    let log_for_stderr = log
        .try_clone()
        .map_err(|error| format!("cannot open {}: {error}", log_path.display()))?;
    let mut command = Command::new(&launch.executable);
    command
        .args(&node_args)
        // The secrets travel in the environment, not in argv, so `ps` does
        // not show them.
        .env("CAPKV_CLUSTER_SECRET", &launch.secret)
        .env("CAPKV_ADMIN_TOKEN", &launch.admin_token)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_for_stderr);
    // Ctrl-C in the terminal reaches only the demo, which then stops the
    // children in order, instead of every process at once.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command.spawn().map_err(|error| {
        format!(
            "cannot start node {id} ({}): {error}",
            launch.executable.display()
        )
    })?;
    let quoted: Vec<String> = node_args.iter().map(|word| shell_word(word)).collect();
    let restart_command = format!(
        "CAPKV_CLUSTER_SECRET={} CAPKV_ADMIN_TOKEN={} {} {} >> {} 2>&1 &",
        launch.secret,
        launch.admin_token,
        shell_word(&launch.program),
        quoted.join(" "),
        shell_word(&log_path.display().to_string())
    );
    Ok(NodeProcess {
        id: u64::from(id),
        peer,
        http,
        log_path,
        restart_command,
        child: Some(child),
        exit_status: None,
    })
}

/// Runs `capkv demo` and returns the exit code.
pub fn run(args: DemoArgs) -> u8 {
    if let Err(error) = check_args(&args) {
        eprintln!("capkv demo: {error}");
        return 2;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("capkv demo: cannot start the async runtime: {error}");
            return 1;
        }
    };
    match runtime.block_on(demo(args)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("capkv demo: {error}");
            1
        }
    }
}

async fn demo(args: DemoArgs) -> Result<u8, String> {
    check_ports(&args)?;
    let executable =
        std::env::current_exe().map_err(|error| format!("cannot find this executable: {error}"))?;
    let data_dir = fresh_data_dir(args.data_dir.as_ref())?;
    let addresses: Vec<(u16, SocketAddr, SocketAddr)> = (1..=args.nodes)
        .map(|id| {
            let (peer, http) = node_addresses(&args, id);
            (id, peer, http)
        })
        .collect();
    let list = |pick: fn(&(u16, SocketAddr, SocketAddr)) -> SocketAddr| {
        addresses
            .iter()
            .map(|entry| format!("{}={}", entry.0, pick(entry)))
            .collect::<Vec<_>>()
            .join(",")
    };
    let launch = Launch {
        program: program_name(&executable),
        executable,
        data_dir,
        secret: random_hex(16)?,
        admin_token: random_hex(16)?,
        peers: list(|entry| entry.1),
        peer_http: list(|entry| entry.2),
    };
    let stop = watch_stop_signals();
    let mut cluster = Cluster { nodes: Vec::new() };
    for id in 1..=args.nodes {
        let node = spawn_node(&launch, &args, id)?;
        cluster.nodes.push(node);
    }
    println!(
        "capkv demo: started {} nodes; data and logs in {}",
        args.nodes,
        launch.data_dir.display()
    );
    let probe = Client::new(&format!("http://{}", cluster.nodes[0].http))
        .map_err(|error| error.to_string())?
        .with_timeout(POLL_TIMEOUT);
    match wait_for_leader(&mut cluster, &probe, &stop).await {
        Startup::Ready => {}
        Startup::Interrupted => {
            cluster.stop().await;
            return Ok(0);
        }
        Startup::Failed(why) => {
            eprintln!("capkv demo: {why}");
            print_state(&cluster, &probe).await;
            cluster.stop().await;
            return Ok(1);
        }
    }
    let ap_replicas = u32::from(args.nodes.min(3));
    if let Err(why) = create_demo_bucket(&probe, &mut cluster, &stop, ap_replicas).await {
        eprintln!("capkv demo: {why}");
        print_state(&cluster, &probe).await;
        cluster.stop().await;
        return Ok(1);
    }
    let code = match &args.scenario {
        Some(name) => {
            let members: Vec<crate::scenario::Member> = cluster
                .nodes
                .iter()
                .map(|node| crate::scenario::Member {
                    id: node.id,
                    http: node.http,
                })
                .collect();
            crate::scenario::run(name, &members, &launch.admin_token).await
        }
        None => {
            print!("{}", banner(&cluster, &launch));
            supervise(&mut cluster, stop).await
        }
    };
    println!("capkv demo: stopping the cluster");
    cluster.stop().await;
    println!(
        "capkv demo: data and logs kept in {}",
        launch.data_dir.display()
    );
    Ok(code)
}

/// A watch that turns true on Ctrl-C or SIGTERM.
fn watch_stop_signals() -> watch::Receiver<bool> {
    let (sender, receiver) = watch::channel(false);
    tokio::spawn(async move {
        capkv_server::wait_for_signal().await;
        sender.send_replace(true);
    });
    receiver
}

enum Startup {
    Ready,
    Interrupted,
    Failed(String),
}

/// Sleeps for `duration` unless a stop is requested first; true on stop.
async fn sleep_or_stop(duration: Duration, stop: &watch::Receiver<bool>) -> bool {
    let mut stop = stop.clone();
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        changed = stop.changed() => changed.is_ok(),
    }
}

/// Polls every node's `/v1/cluster` until one of them leads, a child dies,
/// the user interrupts, or [`LEADER_WAIT`] passes.
async fn wait_for_leader(
    cluster: &mut Cluster,
    probe: &Client,
    stop: &watch::Receiver<bool>,
) -> Startup {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        if let Some(failure) = describe_exits(cluster) {
            return Startup::Failed(failure);
        }
        for node in &cluster.nodes {
            let Ok(client) = probe.at(&node.http.to_string()) else {
                continue;
            };
            if let Ok(status) = client.cluster().await {
                if status.groups.iter().any(|group| group.role == "leader") {
                    return Startup::Ready;
                }
            }
        }
        if Instant::now() >= deadline {
            return Startup::Failed(format!("no leader after {} s", LEADER_WAIT.as_secs()));
        }
        if sleep_or_stop(POLL_INTERVAL, stop).await {
            return Startup::Interrupted;
        }
    }
}

/// Names the children that exited while starting, with the end of their
/// logs.
fn describe_exits(cluster: &mut Cluster) -> Option<String> {
    let exited = cluster.reap_exited();
    if exited.is_empty() {
        return None;
    }
    let mut text = String::new();
    for node in cluster
        .nodes
        .iter()
        .filter(|node| exited.contains(&node.id))
    {
        let status = node
            .exit_status
            .map_or("unknown status".into(), |status| status.to_string());
        text.push_str(&format!(
            "node {} exited while starting ({status}); the end of {}:\n{}",
            node.id,
            node.log_path.display(),
            log_tail(&node.log_path)
        ));
    }
    Some(text)
}

fn log_tail(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return "  (no log)\n".into();
    };
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..]
        .iter()
        .map(|line| format!("  | {line}\n"))
        .collect()
}

/// Creates the demo buckets (`bank`, cp; `feed`, ap with siblings),
/// retrying while the new leader settles in.
async fn create_demo_bucket(
    probe: &Client,
    cluster: &mut Cluster,
    stop: &watch::Receiver<bool>,
    ap_replicas: u32,
) -> Result<(), String> {
    let deadline = Instant::now() + BUCKET_WAIT;
    let client = probe.clone().with_timeout(Duration::from_secs(3));
    let mut pending = vec![
        (DEMO_BUCKET, BucketSpec::new(BucketMode::Cp)),
        (
            DEMO_AP_BUCKET,
            BucketSpec::ap(ap_replicas, ConflictMode::Siblings),
        ),
    ];
    loop {
        if let Some(failure) = describe_exits(cluster) {
            return Err(failure);
        }
        let Some((bucket, spec)) = pending.first() else {
            return Ok(());
        };
        let bucket = *bucket;
        let error = match client.create_bucket(bucket, spec).await {
            Ok(_) => {
                pending.remove(0);
                continue;
            }
            Err(error) => error,
        };
        let transient = error.status == 0
            || [codes::NO_QUORUM, codes::TIMEOUT, codes::OVERLOADED].contains(&error.code.as_str())
            || error.code == "not_leader";
        if !transient || Instant::now() >= deadline {
            return Err(format!("cannot create the bucket {bucket}: {error}"));
        }
        if sleep_or_stop(POLL_INTERVAL, stop).await {
            return Err("interrupted".into());
        }
    }
}

/// Prints each child's process state and the cluster table, for a start
/// that failed.
async fn print_state(cluster: &Cluster, probe: &Client) {
    let mut rows = Vec::new();
    for node in &cluster.nodes {
        let process = match (&node.child, node.exit_status) {
            (Some(child), _) => format!("running (pid {})", child.id()),
            (None, Some(status)) => format!("exited ({status})"),
            (None, None) => "exited".into(),
        };
        eprintln!(
            "  node {}: {process}; log {}",
            node.id,
            node.log_path.display()
        );
        let view = match probe.at(&node.http.to_string()) {
            Ok(client) => match client.cluster().await {
                Ok(status) => NodeView::Answered(status),
                Err(error) => NodeView::Unreachable(error.code),
            },
            Err(error) => NodeView::Unreachable(error.code),
        };
        let address = ClusterNode {
            id: node.id,
            peer: node.peer.to_string(),
            http: Some(node.http.to_string()),
        };
        rows.push((address, view));
    }
    eprint!("{}", format_cluster_table(&rows));
}

fn banner(cluster: &Cluster, launch: &Launch) -> String {
    let mut rows = vec![["NODE", "PID", "PEER", "HTTP", "LOG"]
        .map(String::from)
        .to_vec()];
    for node in &cluster.nodes {
        let pid = node
            .child
            .as_ref()
            .map_or("-".into(), |child| child.id().to_string());
        rows.push(vec![
            node.id.to_string(),
            pid,
            node.peer.to_string(),
            format!("http://{}", node.http),
            node.log_path.display().to_string(),
        ]);
    }
    let first = &cluster.nodes[0];
    let program = shell_word(&launch.program);
    let mut text = format!(
        "\ncapkv demo: {} nodes are up, with a leader; buckets '{DEMO_BUCKET}' (cp) and \
         '{DEMO_AP_BUCKET}' (ap, siblings) are ready.\n\n{}\n",
        cluster.nodes.len(),
        crate::client_commands::format_table(&rows)
    );
    text.push_str(&format!("data directory:  {}\n", launch.data_dir.display()));
    text.push_str(&format!("cluster secret:  {}\n", launch.secret));
    text.push_str(&format!("admin token:     {}\n\n", launch.admin_token));
    text.push_str("Try, in another terminal:\n\n");
    text.push_str(&format!(
        "  export CAPKV_ENDPOINT=http://{} CAPKV_ADMIN_TOKEN={}\n",
        first.http, launch.admin_token
    ));
    text.push_str(&format!("  {program} put {DEMO_BUCKET} alice 100\n"));
    text.push_str(&format!("  {program} get {DEMO_BUCKET} alice --json\n"));
    text.push_str(&format!(
        "  {program} put {DEMO_AP_BUCKET} post1 hello     # ap: prints the context and a session token\n"
    ));
    text.push_str(&format!(
        "  {program} get {DEMO_AP_BUCKET} post1 --consistency all     # every sibling and the context\n"
    ));
    text.push_str(&format!("  {program} cluster status\n"));
    if let Some(last) = cluster.nodes.last().filter(|last| last.id > 1) {
        let others: Vec<String> = cluster.nodes[1..]
            .iter()
            .map(|node| node.id.to_string())
            .collect();
        text.push_str(&format!(
            "  {program} nemesis partition \"1|{}\"     # cut node 1 off from the rest\n",
            others.join(",")
        ));
        text.push_str(&format!(
            "  {program} put {DEMO_BUCKET} alice 50     # through node 1: no_quorum if it is in the minority\n"
        ));
        text.push_str(&format!(
            "  {program} put {DEMO_BUCKET} alice 50 --endpoint http://{}     # the majority side still works\n",
            last.http
        ));
        text.push_str(&format!(
            "  {program} put {DEMO_AP_BUCKET} post1 minority --consistency one     # ap: node 1 still takes writes\n"
        ));
        text.push_str(&format!(
            "  {program} put {DEMO_AP_BUCKET} post1 majority --endpoint http://{}     # and so does the other side\n",
            last.http
        ));
        text.push_str(&format!("  {program} nemesis heal\n"));
        text.push_str(&format!(
            "  {program} repair {DEMO_AP_BUCKET} && {program} get {DEMO_AP_BUCKET} post1     # both writes, as siblings\n"
        ));
        let victim = &cluster.nodes[1];
        if let Some(child) = &victim.child {
            text.push_str(&format!(
                "  kill -9 {}     # crash node {} (a real process crash)\n",
                child.id(),
                victim.id
            ));
        }
    }
    text.push_str(&format!(
        "  {program} bench --endpoint http://{} --bucket {DEMO_BUCKET} --workload mixed --clients 16 --duration 5s\n\n",
        first.http
    ));
    text.push_str("Press Ctrl-C to stop the cluster.\n");
    text
}

/// Watches the children until Ctrl-C or SIGTERM; reports each one that
/// exits with the command that restarts it. Returns the exit code.
async fn supervise(cluster: &mut Cluster, stop: watch::Receiver<bool>) -> u8 {
    loop {
        if sleep_or_stop(SUPERVISE_INTERVAL, &stop).await {
            return 0;
        }
        for id in cluster.reap_exited() {
            let Some(node) = cluster.nodes.iter().find(|node| node.id == id) else {
                continue;
            };
            let status = node
                .exit_status
                .map_or("unknown status".into(), |status| status.to_string());
            println!(
                "\nnode {id} exited ({status}); its log is {}.\nTo restart it (it will then run outside this demo; stop it with kill):\n  {}\n",
                node.log_path.display(),
                node.restart_command
            );
        }
        if cluster.running() == 0 {
            eprintln!("capkv demo: every node has exited");
            return 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(nodes: u16, peer: u16, http: u16) -> DemoArgs {
        DemoArgs {
            nodes,
            data_dir: None,
            base_peer_port: peer,
            base_http_port: http,
            scenario: None,
        }
    }

    #[test]
    fn sizes_and_port_ranges_are_checked() {
        assert!(check_args(&args(3, 7001, 8001)).is_ok());
        assert!(check_args(&args(0, 7001, 8001))
            .unwrap_err()
            .contains("--nodes"));
        assert!(check_args(&args(10, 7001, 8001))
            .unwrap_err()
            .contains("--nodes"));
        assert!(check_args(&args(3, 65534, 8001))
            .unwrap_err()
            .contains("no room"));
        assert!(check_args(&args(3, 7001, 7003))
            .unwrap_err()
            .contains("overlap"));
        assert!(check_args(&args(3, 7001, 7004)).is_ok());
    }

    #[test]
    fn node_n_uses_base_plus_n_minus_one() {
        let (peer, http) = node_addresses(&args(3, 7001, 8001), 3);
        assert_eq!(peer.to_string(), "127.0.0.1:7003");
        assert_eq!(http.to_string(), "127.0.0.1:8003");
    }

    #[test]
    fn a_taken_port_is_named() {
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        // Put node 1's HTTP port on the held port; the peer range elsewhere.
        let peer_base = if port > 30_000 {
            port - 20_000
        } else {
            port + 20_000
        };
        let error = check_ports(&args(1, peer_base, port)).unwrap_err();
        assert!(
            error.contains(&format!("port {port} (HTTP port of node 1) is taken")),
            "{error}"
        );
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(
            shell_word("1=127.0.0.1:7001,2=127.0.0.1:7002"),
            "1=127.0.0.1:7001,2=127.0.0.1:7002"
        );
        assert_eq!(shell_word("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn random_hex_has_two_digits_per_byte() {
        let secret = random_hex(16).unwrap();
        assert_eq!(secret.len(), 32);
        assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(secret, random_hex(16).unwrap());
    }
}
