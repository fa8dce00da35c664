//! A benchmark, not a timed test: the time from kill -9 of the leader to
//! the next successful write, over several kills. Run it with
//! `cargo test --release -p capkv --test failover -- --ignored --nocapture`.

mod common;

use common::Cluster;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run it on purpose, on a quiet machine"]
async fn failover_time_from_kill_9_of_the_leader_to_the_next_write() {
    let mut cluster = Cluster::start("failover", 3, &[]).await;
    assert_eq!(cluster.create_bucket(1, "bank").await.0, 200);
    let mut samples = Vec::new();
    for round in 0..10 {
        let leader = cluster.wait_for_leader(None, Duration::from_secs(10)).await;
        let writer = (1..=3).find(|id| *id != leader).unwrap();
        cluster.put_eventually(writer, "bank", "k", "warm").await;
        cluster.kill(leader);
        let killed = Instant::now();
        loop {
            // Short deadlines, so one write stuck on the dead leader does
            // not hide the moment the new one takes over.
            let (status, _) = cluster
                .request(
                    cluster
                        .client
                        .put(cluster.url(writer, "/v1/kv/bank/k?timeout_ms=50"))
                        .body(format!("r{round}")),
                )
                .await;
            if status == 200 {
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(10), "no failover");
        }
        let failover = killed.elapsed();
        samples.push(failover);
        println!("round {round}: leader n{leader} killed, write accepted after {failover:?}");
        cluster.spawn(leader, common::SECRET);
        cluster.wait_for_leader(None, Duration::from_secs(10)).await;
    }
    samples.sort();
    println!(
        "failover over {} kills: min {:?}, median {:?}, max {:?}",
        samples.len(),
        samples[0],
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );
}
