//! ap seeds on which the simulator found bugs, kept forever. (A seed's
//! schedule drifts when the simulator changes, so each bug also has a direct
//! test of its mechanism beside the code.)

use capkv_sim::{Conflict, SimConfig, Workload};

fn run(seed: u64, nodes: u64) -> capkv_sim::SimReport {
    let mut config = SimConfig::new(seed, nodes);
    config.duration_ms = 10_000;
    config.workload = Workload::Ap(Conflict::Siblings);
    capkv_sim::run(config)
}

/// Seed 21: a duplicated `Coordinate` message made the replica coordinate
/// one client write twice, with two dots; a read saw the first copy's
/// effect under a dot no client knew (ap checker "honest reads").
/// Direct test: capkv-dynamo `a_duplicated_coordinate_message_makes_one_write`.
#[test]
fn seed_21_duplicated_coordinate() {
    let report = run(21, 5);
    assert!(report.passed(), "{:?}", report.ap);
}
