//! The `capkv` command line: parses arguments and calls library code.
//!
//! Layout, one module per group of subcommands:
//! - `sim_command`: `capkv sim`, seeds of the deterministic simulator
//!   (`capkv-sim`), one verdict line per seed, sweeps on every core;
//! - `check` (here): `capkv check`, the linearizability checker
//!   (`capkv-check`) over a JSON-lines history;
//! - `demo`: `capkv demo`, a local cluster of `capkv node` child processes,
//!   and `scenario`: `capkv demo --scenario`, a narrated walk through one
//!   behaviour on it, every promise checked;
//! - `node_command`: `capkv node`, one server (`capkv-server`) from flags,
//!   environment and a config file;
//! - `client_commands`: `bucket`, `put`, `get`, `delete`, `repair`, `cluster
//!   status` and `nemesis` over the HTTP API (`capkv-client`);
//! - `bench`: `capkv bench`, a closed-loop load generator against a cluster.
//!
//! What it does not do: no protocol logic and no storage of its own. Every
//! decision is made in the library crates, so that what the simulator
//! checks is what the server runs. Exit codes: 0 success, 1 a failed check
//! or an error answer, 2 bad input named on standard error.

mod bench;
mod client_commands;
mod demo;
mod node_command;
mod scenario;
mod sim_command;

use clap::{Parser, Subcommand};
use std::io::BufRead;
use std::process::ExitCode;

/// mimalloc: the simulator and the server allocate many small short-lived
/// buffers (messages, batches, entries); glibc malloc spent ~20% of the
/// simulator's instructions on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "capkv",
    version,
    about = "A key-value database where CAP is a setting you choose"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the deterministic cluster simulator on one seed or a range of seeds.
    Sim(sim_command::SimArgs),
    /// Check a history (JSON lines) for linearizability.
    Check {
        /// The model: only `register` (a read/write/cas/delete register per key).
        #[arg(long, default_value = "register")]
        model: String,
        /// The history file, or `-` for standard input.
        file: String,
    },
    /// Start a local cluster of node processes in one command.
    Demo(demo::DemoArgs),
    /// Run one node of a cluster until Ctrl-C or SIGTERM.
    Node(node_command::NodeArgs),
    /// Measure throughput and latency against a running cluster.
    Bench(bench::BenchArgs),
    #[command(flatten)]
    Client(client_commands::ClientCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Sim(args) => sim_command::run(&args),
        Command::Check { model, file } => check(&model, &file),
        Command::Demo(args) => demo::run(args),
        Command::Node(args) => node_command::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Client(command) => client_commands::run(command),
    };
    ExitCode::from(code)
}

fn check(model: &str, file: &str) -> u8 {
    let mut stdout = std::io::stdout().lock();
    let input: Box<dyn BufRead> = if file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        match std::fs::File::open(file) {
            Ok(handle) => Box::new(std::io::BufReader::new(handle)),
            Err(error) => {
                eprintln!("capkv check: cannot open {file}: {error}");
                return 2;
            }
        }
    };
    let code = capkv_check::run_check_command(input, &mut stdout, model);
    u8::try_from(code).unwrap_or(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(words: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("capkv").chain(words.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn client_commands_parse() {
        let cli = parse(&[
            "put",
            "bank",
            "alice",
            "100",
            "--if-version",
            "3",
            "--endpoint",
            "http://127.0.0.1:8002",
        ])
        .unwrap();
        let Command::Client(client_commands::ClientCommand::Put(put)) = cli.command else {
            panic!("not a put");
        };
        assert_eq!(
            (put.bucket.as_str(), put.key.as_str(), put.value.as_str()),
            ("bank", "alice", "100")
        );
        assert_eq!(put.if_version, Some(3));
        assert_eq!(put.endpoint.endpoint, "http://127.0.0.1:8002");
        assert!(parse(&["get", "bank", "alice", "--consistency", "stale"]).is_ok());
        assert!(parse(&["get", "bank", "alice", "--consistency", "eventual"]).is_err());
        assert!(parse(&[
            "bucket",
            "create",
            "bank",
            "--mode",
            "cp",
            "--replicas",
            "3",
            "--conflict",
            "lww"
        ])
        .is_ok());
        assert!(
            parse(&["bucket", "create", "bank"]).is_err(),
            "--mode is required"
        );
        assert!(parse(&["delete", "bank", "alice"]).is_ok());
        assert!(parse(&["cluster", "status"]).is_ok());
        assert!(parse(&[
            "bucket",
            "create",
            "feed",
            "--mode",
            "ap",
            "--replicas",
            "3",
            "--conflict",
            "siblings",
            "--read",
            "local",
            "--write",
            "all"
        ])
        .is_ok());
        assert!(parse(&["bucket", "create", "feed", "--mode", "ap", "--read", "most"]).is_err());
        let cli = parse(&[
            "put",
            "feed",
            "k",
            "v",
            "--consistency",
            "one",
            "--context",
            "CTX",
        ])
        .unwrap();
        let Command::Client(client_commands::ClientCommand::Put(put)) = cli.command else {
            panic!("not a put");
        };
        assert_eq!(put.context.as_deref(), Some("CTX"));
        assert!(parse(&[
            "get",
            "feed",
            "k",
            "--consistency",
            "local",
            "--session",
            "S"
        ])
        .is_ok());
        assert!(parse(&[
            "delete",
            "feed",
            "k",
            "--consistency",
            "all",
            "--context",
            "C"
        ])
        .is_ok());
        assert!(parse(&["repair"]).is_ok());
        assert!(parse(&["repair", "feed", "--endpoint", "http://127.0.0.1:8002"]).is_ok());
        assert!(parse(&["repair", "a", "b"]).is_err());
    }

    #[test]
    fn nemesis_commands_parse_strictly() {
        let cli = parse(&["nemesis", "partition", "1|2,3", "--admin-token", "t"]).unwrap();
        let Command::Client(client_commands::ClientCommand::Nemesis {
            command: client_commands::NemesisCommand::Partition { groups, admin, .. },
        }) = cli.command
        else {
            panic!("not a partition");
        };
        assert_eq!(groups.0, vec![vec![1], vec![2, 3]]);
        assert_eq!(admin.admin_token.as_deref(), Some("t"));
        let error = parse(&["nemesis", "partition", "1|2,b"]).err().unwrap();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("is not a node id"), "{error}");
        assert!(parse(&["nemesis", "heal"]).is_ok());
        assert!(parse(&["nemesis", "delay", "--from", "1", "--to", "2", "--ms", "150"]).is_ok());
        assert!(parse(&[
            "nemesis",
            "loss",
            "--from",
            "1",
            "--to",
            "2",
            "--probability",
            "0.3"
        ])
        .is_ok());
        assert!(parse(&[
            "nemesis",
            "loss",
            "--from",
            "1",
            "--to",
            "2",
            "--probability",
            "3"
        ])
        .is_err());
        assert!(parse(&["nemesis", "show"]).is_ok());
    }

    #[test]
    fn node_demo_and_bench_parse() {
        let cli = parse(&[
            "node",
            "--id",
            "1",
            "--data-dir",
            "/tmp/n1",
            "--listen",
            "127.0.0.1:7001",
            "--http",
            "127.0.0.1:8001",
            "--peers",
            "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003",
            "--peer-http",
            "1=127.0.0.1:8001",
            "--tick-ms",
            "10",
        ])
        .unwrap();
        let Command::Node(node) = cli.command else {
            panic!("not a node");
        };
        assert_eq!(node.peers.unwrap().0.len(), 3);
        assert!(parse(&["node", "--peers", "1=127.0.0.1:7001,x=127.0.0.1:7002"]).is_err());
        assert!(parse(&["demo", "--nodes", "5", "--base-peer-port", "9001"]).is_ok());
        let cli = parse(&[
            "bench",
            "--endpoint",
            "http://127.0.0.1:8001",
            "--endpoint",
            "http://127.0.0.1:8002",
            "--bucket",
            "b",
            "--workload",
            "mixed",
            "--duration",
            "500ms",
            "--create-bucket",
            "cp",
        ])
        .unwrap();
        let Command::Bench(bench) = cli.command else {
            panic!("not a bench");
        };
        assert_eq!(bench.endpoints.len(), 2);
        assert_eq!(bench.duration, std::time::Duration::from_millis(500));
        assert!(parse(&["bench", "--duration", "10 parsecs"]).is_err());
        assert!(parse(&["bench", "--workload", "ap-write", "--consistency", "all"]).is_ok());
        assert!(parse(&["bench", "--compare", "--duration", "3s", "--clients", "16"]).is_ok());
    }
}
