//! `capkv demo --scenario partition` as a user runs it: a real cluster of
//! child processes on loopback, the nemesis cutting the cp leader off, and
//! every promise of the narration checked. Bounded: the scenario's own waits
//! are bounded, and the test kills the demo (whose children die with their
//! `Cluster`) if it runs past its limit.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longer than the scenario's worst case (four settle waits of 20 s and a
/// few 2 s deadlines, plus start-up).
const LIMIT: Duration = Duration::from_secs(150);

/// `count` consecutive free loopback ports, as `capkv demo` takes a base
/// port and counts up from it.
fn consecutive_ports(count: u16) -> u16 {
    loop {
        let ports: Vec<SocketAddr> = (0..count)
            .map(|_| capkv_testkit::loopback_address())
            .collect();
        let first = ports[0].port();
        if ports
            .iter()
            .enumerate()
            .all(|(offset, address)| usize::from(address.port() - first) == offset)
        {
            return first;
        }
    }
}

#[test]
fn the_partition_scenario_keeps_every_promise_on_a_real_cluster() {
    let peer = consecutive_ports(3);
    let http = consecutive_ports(3);
    let data = std::env::temp_dir().join(format!("capkv-it-scenario-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let mut child = Command::new(env!("CARGO_BIN_EXE_capkv"))
        .args([
            "demo",
            "--scenario",
            "partition",
            "--base-peer-port",
            &peer.to_string(),
            "--base-http-port",
            &http.to_string(),
            "--data-dir",
            &data.display().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("capkv demo starts");
    let started = Instant::now();
    while child
        .try_wait()
        .expect("the demo can be waited for")
        .is_none()
    {
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output().expect("the demo's output");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(
        out.contains("scenario partition: 9 of 9 promises held"),
        "{out}"
    );
    assert_eq!(out.matches("promise held").count(), 9, "{out}");
    assert!(!out.contains("BROKEN"), "{out}");
    for node in 1..=3 {
        assert!(out.contains(&format!("stopped node {node}")), "{out}");
    }
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn a_scenario_is_refused_before_anything_starts_when_it_cannot_run() {
    for (args, expected) in [
        (
            vec!["demo", "--scenario", "nope"],
            "unknown --scenario 'nope' (known: partition)",
        ),
        (
            vec!["demo", "--scenario", "partition", "--nodes", "2"],
            "needs at least 3 nodes",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_capkv"))
            .args(&args)
            .output()
            .expect("capkv runs");
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}
