//! The `capkv` command line: parses arguments and calls library code.

mod sim_command;

use clap::{Parser, Subcommand};
use std::io::BufRead;
use std::process::ExitCode;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Sim(args) => sim_command::run(&args),
        Command::Check { model, file } => check(&model, &file),
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
