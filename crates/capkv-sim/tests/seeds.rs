//! Simulation tests: many seeds under every fault, every checker on.
//!
//! A failing seed prints the one-line command that replays it.

use capkv_raft::DeliberateBugs;
use capkv_sim::{Fault, SimConfig, SimReport};

fn config(seed: u64, nodes: u64) -> SimConfig {
    let mut config = SimConfig::new(seed, nodes);
    config.faults = Fault::ALL.to_vec();
    config.duration_ms = 10_000;
    config.quiet_ms = 5_000;
    config
}

fn describe(report: &SimReport) -> String {
    format!(
        "seed {}: raft {:?}, linearizability {:?}, convergence {:?}\n  replay: {}",
        report.config.seed,
        report.raft_violation,
        report.linearizability,
        report.convergence,
        report.config.replay_command()
    )
}

/// Runs seeds `first..=last`, alternating 5- and 3-node clusters, and fails
/// with every failing seed's replay command.
fn sweep(first: u64, last: u64) {
    let mut failures = Vec::new();
    let mut ops_ok = 0;
    for seed in first..=last {
        let nodes = if seed % 2 == 0 { 3 } else { 5 };
        let report = capkv_sim::run(config(seed, nodes));
        ops_ok += report.ops_ok;
        if !report.passed() {
            failures.push(describe(&report));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The workload must have done real work, or the checkers proved nothing.
    assert!(
        ops_ok > (last - first + 1) * 1_000,
        "only {ops_ok} operations succeeded"
    );
}

// 200 seeds in four tests, so that the test runner spreads them over cores.
#[test]
fn seeds_001_to_050_pass_every_checker_under_every_fault() {
    sweep(1, 50);
}

#[test]
fn seeds_051_to_100_pass_every_checker_under_every_fault() {
    sweep(51, 100);
}

#[test]
fn seeds_101_to_150_pass_every_checker_under_every_fault() {
    sweep(101, 150);
}

#[test]
fn seeds_151_to_200_pass_every_checker_under_every_fault() {
    sweep(151, 200);
}

/// Pinned: seed 4 (5 nodes, 20 s, before forwarding existed) once ended with a follower stuck behind
/// forever: its leader had filled the follower's in-flight window while the
/// follower was crashed and never sent again. Heartbeat responses now open
/// the window.
#[test]
fn pinned_seed_4_full_inflight_window_recovers_after_follower_crash() {
    let mut config = SimConfig::new(4, 5);
    config.duration_ms = 20_000;
    config.faults.retain(|fault| *fault != Fault::Churn);
    let report = capkv_sim::run(config);
    assert!(report.passed(), "{}", describe(&report));
}

/// Pinned: seeds 4, 10 and 14 (5 nodes, 20 s) once failed linearizability:
/// a duplicated `Forward` message made the leader propose one client write
/// twice, and the second copy landed after the client had been told the
/// write failed. The leader now refuses forward ids it has already served
/// (and `capkv-node`'s unit test pins the mechanism itself, since a seed's
/// schedule shifts whenever the simulator changes).
#[test]
fn pinned_seeds_4_10_14_duplicated_forward_is_proposed_once() {
    for seed in [4, 10, 14] {
        let mut config = SimConfig::new(seed, 5);
        config.duration_ms = 20_000;
        // The fault set they were found with (before leader churn existed).
        config.faults.retain(|fault| *fault != Fault::Churn);
        let report = capkv_sim::run(config);
        assert!(report.passed(), "{}", describe(&report));
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let first = capkv_sim::run(config(7, 5));
    let second = capkv_sim::run(config(7, 5));
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.events, second.events);
    assert_eq!(first.history, second.history);
    let other = capkv_sim::run(config(8, 5));
    assert_ne!(first.trace_hash, other.trace_hash);
}

/// Finds the first seed in `1..=seeds_max` on which `bugs` is caught, under
/// the faults that change leaders most: crashes, leader churn, partitions.
fn first_seed_catching(bugs: DeliberateBugs, seeds_max: u64) -> Option<(u64, SimReport)> {
    (1..=seeds_max).find_map(|seed| {
        let mut config = config(seed, 5);
        config.duration_ms = 20_000;
        config.faults = vec![Fault::Partition, Fault::Crash, Fault::Churn];
        config.bugs = bugs;
        let report = capkv_sim::run(config);
        (!report.passed()).then_some((seed, report))
    })
}

/// §5.4.1 removed: a candidate with a stale log can win and overwrite
/// committed entries. The simulator must notice within 30 seeds.
#[test]
fn simulator_catches_votes_granted_without_the_log_check() {
    let bugs = DeliberateBugs {
        vote_ignores_log: true,
        ..DeliberateBugs::default()
    };
    let Some((seed, report)) = first_seed_catching(bugs, 30) else {
        panic!("no seed in 1..=30 caught a Raft that ignores §5.4.1");
    };
    eprintln!("caught on {}", describe(&report));
    assert!(seed <= 30);
}

#[test]
fn bad_configs_are_refused_with_a_reason() {
    assert!(SimConfig::new(1, 0).validate().is_err());
    assert!(SimConfig::new(1, 10).validate().is_err());
    let mut config = SimConfig::new(1, 3);
    config.clients = 0;
    assert!(config.validate().is_err());
    assert!(Fault::parse_list("partition,bogus").is_err());
    assert_eq!(Fault::parse_list("all").map(|f| f.len()), Ok(8));
    assert_eq!(Fault::parse_list("none"), Ok(vec![]));
}
