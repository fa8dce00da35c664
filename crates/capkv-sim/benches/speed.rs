//! The simulator's own speed: simulated seconds per wall second for a
//! loaded 5-node cluster (5 clients, 5 keys, 10 s of load and 5 s of quiet).
//!
//! Run with `cargo bench -p capkv-sim`. Criterion's throughput line counts
//! simulated milliseconds as elements, so `thrpt: 400 Kelem/s` reads as 400
//! simulated seconds per wall second (400x real time). The aim is 1000x.

use capkv_sim::{Fault, SimConfig};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;

/// The allocator the `capkv` binary runs with, so that this measures what
/// `capkv sim` does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn loaded_config(seed: u64, faults: &[Fault]) -> SimConfig {
    let mut config = SimConfig::new(seed, 5);
    config.faults = faults.to_vec();
    config.duration_ms = 10_000;
    config.quiet_ms = 5_000;
    config
}

fn five_loaded_nodes(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("simulate_5_nodes_loaded");
    group.sample_size(10);
    for (name, faults) in [("no_faults", &[][..]), ("every_fault", &Fault::ALL[..])] {
        for seed in [1u64, 2] {
            // A run is deterministic: its simulated length is known up front.
            let simulated_ms = capkv_sim::run(loaded_config(seed, faults)).simulated_ms;
            group.throughput(Throughput::Elements(simulated_ms));
            group.bench_with_input(BenchmarkId::new(name, seed), &seed, |bencher, seed| {
                bencher.iter(|| {
                    let report = capkv_sim::run(loaded_config(*seed, faults));
                    assert!(report.passed(), "seed {seed} must pass");
                    black_box(report.events)
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, five_loaded_nodes);
criterion_main!(benches);
