//! `capkv sim`: runs seeds and prints one verdict line per seed.

use capkv_raft::DeliberateBugs;
use capkv_sim::{DynamoBugs, Fault, SimConfig, Workload};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Condvar, Mutex, PoisonError};

/// Prints a line; a closed pipe (`capkv sim ... | head`) ends the program
/// quietly instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    };
}

/// Arguments of `capkv sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// The seed to run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A range of seeds to sweep, `FIRST..LAST` (inclusive); overrides --seed.
    #[arg(long)]
    seeds: Option<String>,
    /// Cluster size (1..=9).
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    /// Faults: comma-separated from partition, crash, pause, loss, dup,
    /// reorder, skew, churn (new leaders killed), transfer (leadership
    /// transfer the old leader may never hear the end of), figure8 (the Raft
    /// paper's figure-8 schedule of partitions), or all, none.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Simulated load time, like 60s, 500ms or 2m (a quiet period follows).
    #[arg(long, default_value = "20s")]
    duration: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 5)]
    clients: u64,
    /// Keys the clients use.
    #[arg(long, default_value_t = 5)]
    keys: u64,
    /// Print a human-readable timeline of elections, faults and snapshots.
    #[arg(long)]
    timeline: bool,
    /// Write the client history (JSON lines, `capkv check` format) to FILE.
    /// With --seeds, the seed is appended to the file name.
    #[arg(long)]
    history: Option<String>,
    /// Break Raft, the ap engine or the driver on purpose to see a checker fail: vote-ignores-log, commit-counts-old-terms, read-skips-quorum, forward-answers-before-apply (a forwarder answers a write before it has applied it), read-repair-skips-merge, drop-hints, ack-before-sync (an ap replica acknowledges before its fsync), send-before-sync (outputs leave before the fsync).
    #[arg(long)]
    bug: Vec<String>,
    /// What the clients do: cp (linearizable register ops), ap (ap bucket with siblings) or ap-lww.
    #[arg(long, default_value = "cp")]
    workload: String,
    /// Turn background anti-entropy off (ap workloads).
    #[arg(long)]
    no_anti_entropy: bool,
    /// Threads a sweep runs seeds on (default: one per core). Each seed
    /// runs alone on one thread and the output is printed in seed order, so
    /// it is the same for any number of threads.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: Option<u16>,
}

fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(split) => text.split_at(split),
        None => (text, "s"),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("bad duration '{text}': expected e.g. 60s, 500ms, 2m"))?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        _ => return Err(format!("bad duration unit in '{text}': use ms, s or m")),
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("duration '{text}' is too long"))
}

fn parse_seeds(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("bad --seeds '{text}': expected FIRST..LAST, e.g. 1..500");
    let (first, last) = text.split_once("..").ok_or_else(bad)?;
    let first: u64 = first.trim().parse().map_err(|_| bad())?;
    let last: u64 = last
        .trim()
        .trim_start_matches('=')
        .parse()
        .map_err(|_| bad())?;
    if last < first {
        return Err(bad());
    }
    if last - first >= 1_000_000 {
        return Err("at most 1,000,000 seeds in one sweep".into());
    }
    Ok((first, last))
}

/// The deliberate bugs `--bug` switched on.
#[derive(Default)]
struct Bugs {
    raft: DeliberateBugs,
    ap: DynamoBugs,
    send_before_sync: bool,
}

/// Turns one deliberate bug on.
type BugSwitch = fn(&mut Bugs);

/// Every `--bug` name and the switch it turns on: one table for parsing
/// and for the error that lists them.
const BUG_SWITCHES: [(&str, BugSwitch); 8] = [
    ("vote-ignores-log", |bugs| bugs.raft.vote_ignores_log = true),
    ("commit-counts-old-terms", |bugs| {
        bugs.raft.commit_counts_old_terms = true;
    }),
    ("read-skips-quorum", |bugs| {
        bugs.raft.read_skips_quorum = true
    }),
    ("forward-answers-before-apply", |bugs| {
        bugs.raft.forward_answers_before_apply = true;
    }),
    ("read-repair-skips-merge", |bugs| {
        bugs.ap.read_repair_skips_merge = true;
    }),
    ("drop-hints", |bugs| bugs.ap.drop_hints = true),
    ("ack-before-sync", |bugs| bugs.ap.ack_before_sync = true),
    ("send-before-sync", |bugs| bugs.send_before_sync = true),
];

fn parse_bugs(names: &[String]) -> Result<Bugs, String> {
    let mut bugs = Bugs::default();
    for name in names {
        let Some((_, switch_on)) = BUG_SWITCHES.iter().find(|(known, _)| known == name) else {
            let known: Vec<&str> = BUG_SWITCHES.iter().map(|(known, _)| *known).collect();
            return Err(format!(
                "unknown --bug '{name}' (known: {})",
                known.join(", ")
            ));
        };
        switch_on(&mut bugs);
    }
    Ok(bugs)
}

fn build_configs(args: &SimArgs) -> Result<Vec<SimConfig>, String> {
    let (first, last) = match &args.seeds {
        Some(range) => parse_seeds(range)?,
        None => (args.seed, args.seed),
    };
    let faults = Fault::parse_list(&args.faults)?;
    let duration_ms = parse_duration_ms(&args.duration)?;
    let bugs = parse_bugs(&args.bug)?;
    let workload = Workload::parse(&args.workload)?;
    let mut configs = Vec::new();
    for seed in first..=last {
        let mut config = SimConfig::new(seed, args.nodes);
        config.faults = faults.clone();
        config.duration_ms = duration_ms;
        config.clients = args.clients;
        config.keys = args.keys;
        config.timeline = args.timeline;
        config.bugs = bugs.raft;
        config.ap_bugs = bugs.ap;
        config.send_before_sync = bugs.send_before_sync;
        config.workload = workload;
        config.anti_entropy = !args.no_anti_entropy;
        config.validate()?;
        configs.push(config);
    }
    Ok(configs)
}

/// What one seed's run leaves for the sweep to print.
struct SeedOutcome {
    /// The timeline (when asked for) and the verdict lines, in order.
    lines: Vec<String>,
    passed: bool,
    simulated_ms: u64,
    /// Client operations that completed (ok, fail or info): the load the
    /// simulated time held.
    operations: u64,
    /// Tombstones the ap engines reaped (0 for cp runs).
    tombstones_reaped: u64,
    /// The history file could not be written: the sweep stops, exit 2.
    history_error: Option<String>,
}

/// Runs one seed and formats what it printed. A panic inside the simulation
/// (an invariant assertion) is caught and reported as a failed seed with its
/// replay command, so a sweep names every failing seed instead of dying at
/// the first.
fn run_seed(config: SimConfig, history: Option<&str>, sweep: bool) -> SeedOutcome {
    let seed = config.seed;
    let replay = config.replay_command();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| capkv_sim::run(config)));
    let report = match run {
        Ok(report) => report,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            return SeedOutcome {
                lines: vec![
                    format!("seed {seed}: PANICKED: {message}"),
                    format!("  replay: {replay}"),
                ],
                passed: false,
                simulated_ms: 0,
                operations: 0,
                tombstones_reaped: 0,
                history_error: None,
            };
        }
    };
    let mut lines = report.timeline.clone();
    // The invariants checked at every step and every restart: Raft's
    // safety properties and durability (of Raft state and ap objects).
    let invariants = match &report.raft_violation {
        None => "ok".to_string(),
        Some(v) => format!("VIOLATED ({}): {}", v.property, v.detail),
    };
    let convergence = match &report.convergence {
        Ok(()) => "ok".to_string(),
        Err(text) => format!("FAILED {text}"),
    };
    let checkers = match (report.config.workload, &report.ap) {
        (Workload::Cp, _) => {
            let linear = match &report.linearizability {
                Ok(text) => text.clone(),
                Err(text) => format!("FAILED {text}"),
            };
            match &report.stale_reads {
                None => linear,
                Some(Ok(text)) => format!("{linear}, {text}"),
                Some(Err(text)) => format!("{linear}, stale reads FAILED {text}"),
            }
        }
        (Workload::Ap(_), Some(Ok(text))) => text.clone(),
        (Workload::Ap(_), Some(Err(text))) => format!("ap checkers FAILED {text}"),
        (Workload::Ap(_), None) => "ap checkers not run: the run stopped at the violation".into(),
    };
    lines.push(format!(
        "seed {seed}: simulated {:.1}s ({} events), ops ok {} fail {} info {}, invariants {invariants}, {checkers}, convergence {convergence}, trace {:016x}",
        report.simulated_ms as f64 / 1000.0,
        report.events,
        report.ops_ok,
        report.ops_fail,
        report.ops_info,
        report.trace_hash
    ));
    let passed = report.passed();
    if !passed {
        lines.push(format!("  replay: {replay}"));
    }
    let mut history_error = None;
    if let Some(path) = history {
        let path = if sweep {
            format!("{path}.{seed}")
        } else {
            path.to_string()
        };
        if let Err(error) = write_history(&path, &report.history) {
            history_error = Some(format!("cannot write history to {path}: {error}"));
        }
    }
    SeedOutcome {
        lines,
        passed,
        simulated_ms: report.simulated_ms,
        operations: report.ops_ok + report.ops_fail + report.ops_info + report.ops_stale,
        tombstones_reaped: report.tombstones_reaped,
        history_error,
    }
}

/// The work list of a parallel sweep, shared by its threads.
struct Sweep {
    /// The next seed (by position) not yet taken by a thread.
    next: usize,
    /// The next seed (by position) to print.
    printing: usize,
    /// Outcomes waiting for their turn to be printed.
    finished: BTreeMap<usize, SeedOutcome>,
    /// Set when printing stopped early (a history file failed).
    stopped: bool,
}

/// Runs every config on `jobs` threads and hands the outcomes to `print` in
/// seed order, so the output is the same as a sequential sweep's. Threads
/// run at most `window` seeds ahead of the printer, which bounds the
/// outcomes held in memory. `print` returns false to stop the sweep.
fn run_parallel(
    configs: &[SimConfig],
    jobs: usize,
    history: Option<&str>,
    mut print: impl FnMut(SeedOutcome) -> bool,
) {
    let total = configs.len();
    let window = 4 * jobs;
    let state = Mutex::new(Sweep {
        next: 0,
        printing: 0,
        finished: BTreeMap::new(),
        stopped: false,
    });
    let changed = Condvar::new();
    let lock = || state.lock().unwrap_or_else(PoisonError::into_inner);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let index = {
                    let mut sweep = lock();
                    while !sweep.stopped
                        && sweep.next < total
                        && sweep.next >= sweep.printing + window
                    {
                        sweep = changed.wait(sweep).unwrap_or_else(PoisonError::into_inner);
                    }
                    if sweep.stopped || sweep.next >= total {
                        return;
                    }
                    sweep.next += 1;
                    sweep.next - 1
                };
                let outcome = run_seed(configs[index].clone(), history, true);
                lock().finished.insert(index, outcome);
                changed.notify_all();
            });
        }
        while lock().printing < total {
            let outcome = {
                let mut sweep = lock();
                loop {
                    let printing = sweep.printing;
                    if let Some(outcome) = sweep.finished.remove(&printing) {
                        break outcome;
                    }
                    sweep = changed.wait(sweep).unwrap_or_else(PoisonError::into_inner);
                }
            };
            let go_on = print(outcome);
            let mut sweep = lock();
            sweep.printing += 1;
            if !go_on {
                sweep.stopped = true;
                sweep.printing = total;
            }
            drop(sweep);
            changed.notify_all();
        }
    });
}

/// Threads for a sweep of `seeds` seeds: `--jobs`, or one per core.
fn sweep_jobs(args: &SimArgs, seeds: usize) -> usize {
    let jobs = match args.jobs {
        Some(jobs) => usize::from(jobs),
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    jobs.clamp(1, seeds.max(1))
}

/// Runs `capkv sim`; returns the exit code (0 all passed, 1 a checker
/// failed, 2 bad arguments or an unwritable history file).
pub fn run(args: &SimArgs) -> u8 {
    let configs = match build_configs(args) {
        Ok(configs) => configs,
        Err(message) => {
            eprintln!("capkv sim: {message}");
            return 2;
        }
    };
    let sweep = configs.len() > 1;
    let ap = configs
        .iter()
        .any(|config| matches!(config.workload, Workload::Ap(_)));
    let jobs = sweep_jobs(args, configs.len());
    let mut failed = 0u64;
    let mut history_failed = false;
    let started = std::time::Instant::now();
    let mut simulated_ms_total = 0u64;
    let mut operations_total = 0u64;
    let mut tombstones_reaped_total = 0u64;
    let mut print = |outcome: SeedOutcome| {
        for line in &outcome.lines {
            say!("{line}");
        }
        simulated_ms_total += outcome.simulated_ms;
        operations_total += outcome.operations;
        tombstones_reaped_total += outcome.tombstones_reaped;
        failed += u64::from(!outcome.passed);
        if let Some(error) = outcome.history_error {
            eprintln!("capkv sim: {error}");
            history_failed = true;
            return false;
        }
        true
    };
    let history = args.history.as_deref();
    if jobs == 1 {
        for config in configs {
            if !print(run_seed(config, history, sweep)) {
                break;
            }
        }
    } else {
        run_parallel(&configs, jobs, history, print);
    }
    if history_failed {
        return 2;
    }
    let wall = started.elapsed().as_secs_f64();
    if sweep {
        let threads = if jobs == 1 { "thread" } else { "threads" };
        let simulated = simulated_ms_total as f64 / 1000.0;
        // The load: how much work a simulated second held, so that speeds
        // measured under different loads can be told apart.
        say!(
            "{failed} failed; simulated {simulated:.0}s in {wall:.1}s wall ({:.0}x real time, {jobs} {threads}); load {:.0} client operations per simulated second, {:.0} per wall second",
            simulated / wall.max(1e-9),
            operations_total as f64 / simulated.max(1e-9),
            operations_total as f64 / wall.max(1e-9)
        );
        if ap {
            // Shows the sweep exercised tombstone reaping (engine rule 6).
            say!("{tombstones_reaped_total} tombstones reaped in all");
        }
    }
    u8::from(failed > 0)
}

fn write_history(path: &str, history: &[capkv_check::Event]) -> std::io::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for event in history {
        serde_json::to_writer(&mut file, event)?;
        file.write_all(b"\n")?;
    }
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_seed_ranges_parse() {
        assert_eq!(parse_duration_ms("60s"), Ok(60_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert!(parse_duration_ms("fast").is_err());
        assert!(parse_duration_ms("5h").is_err());
        assert_eq!(parse_seeds("1..500"), Ok((1, 500)));
        assert!(parse_seeds("5..1").is_err());
        assert!(parse_seeds("x").is_err());
        assert!(parse_bugs(&["nope".into()]).is_err());
        let bugs = parse_bugs(&["ack-before-sync".into()]).map(|bugs| bugs.ap);
        assert!(bugs.is_ok_and(|ap| ap.ack_before_sync && !ap.drop_hints));
        let known = parse_bugs(&["forward-answers-before-apply".into()]);
        assert!(known.is_ok_and(|bugs| bugs.raft.forward_answers_before_apply));
    }
}
