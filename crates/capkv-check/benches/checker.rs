//! How fast the checker decides generated linearizable histories.
//!
//! Run with `cargo bench -p capkv-check -- --sample-size 10`. The target is
//! 100,000 operations over 10 keys with 20 processes in under 10 s.

use std::hint::black_box;

use capkv_check::gen::generate_register_history;
use capkv_check::{check_events, run_check_command, Limits, Verdict};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn check_generated_histories(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("check_register_history");
    for operations in [10_000, 100_000] {
        let events = generate_register_history(42, operations, 10, 20);
        group.bench_with_input(
            BenchmarkId::new("keys_10_processes_20", operations),
            &events,
            |bencher, events| {
                bencher.iter(|| {
                    let verdict = check_events(black_box(events), &Limits::default())
                        .expect("generated histories are well formed");
                    assert!(
                        matches!(verdict, Verdict::Linearizable { .. }),
                        "generated histories are linearizable"
                    );
                });
            },
        );
    }
    group.finish();
}

/// The `capkv check` command end to end, from JSON lines in memory.
fn parse_and_check_command(criterion: &mut Criterion) {
    let events = generate_register_history(42, 100_000, 10, 20);
    let mut input = String::new();
    for event in &events {
        input.push_str(&serde_json::to_string(event).expect("events serialize"));
        input.push('\n');
    }
    criterion.bench_function(
        "check_command/operations_100000_keys_10_processes_20",
        |bencher| {
            bencher.iter(|| {
                let mut report = Vec::new();
                let code = run_check_command(black_box(input.as_bytes()), &mut report, "register");
                assert_eq!(code, 0, "generated histories are linearizable");
            });
        },
    );
}

criterion_group!(benches, check_generated_histories, parse_and_check_command);
criterion_main!(benches);
