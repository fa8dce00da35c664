//! Test support shared by the integration tests of capkv's crates.
//!
//! Tests that start servers must name every address before anything binds,
//! because peers are configured with each other's addresses. The usual trick
//! (bind port 0, read the port, drop the listener) has two races:
//!
//! - the kernel may hand the same port to the next bind to port 0, since the
//!   first was released: a CI run failed when node 1's peer port and node 2's
//!   HTTP port came out equal, and node 1 exited with "address in use";
//! - the port comes from the ephemeral range, which every outgoing connection
//!   also draws from (a node's connection to a peer, the test's HTTP client),
//!   so one of them can take it before the server binds it.
//!
//! Either way a server exits at start and the test fails far from the cause.
//!
//! [`loopback_address`] hands out ports *below* the ephemeral range, which
//! outgoing connections never use, checks each one by binding it, and never
//! hands the same port out twice in one process.
//!
//! What it does not do: it does not start servers or hold ports for the
//! caller. Between the check and the server's bind another process could
//! still take a port; below the ephemeral range only a process that asks
//! for that very port can, which the tests of this workspace do not. It is a
//! dev-dependency only: no shipped crate links it.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out. Below it sit well-known and registered services.
const FIRST: u32 = 20_000;

/// Where Linux's default ephemeral range starts (`ip_local_port_range`).
/// Used when the range cannot be read.
const DEFAULT_EPHEMERAL_START: u32 = 32_768;

/// Ports handed out so far in this process; also spreads concurrent test
/// processes apart through the process id.
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// A loopback address with a port that was free a moment ago and that no
/// outgoing connection will take meanwhile.
///
/// # Panics
///
/// When every port of the range is taken: a test cannot run without one.
pub fn loopback_address() -> SocketAddr {
    let end = ephemeral_start().max(FIRST + 1_000);
    let span = end - FIRST;
    // The first call in a process starts at an offset drawn from the process
    // id, so test binaries running side by side start far apart.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(97)) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let address = SocketAddr::from(([127, 0, 0, 1], (FIRST + offset) as u16));
        if TcpListener::bind(address).is_ok() {
            return address;
        }
    }
    panic!("no free loopback port in {FIRST}..{end}");
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .filter(|start: &u32| *start > FIRST && *start <= u32::from(u16::MAX))
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, not two: both draw from the process-wide sequence, and a
    /// test holding "the next port" while another binds its handed-out
    /// ports would race with it.
    #[test]
    fn ports_are_distinct_bindable_below_the_ephemeral_range_and_skip_taken_ones() {
        let start = ephemeral_start();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let address = loopback_address();
            assert!(address.ip().is_loopback());
            assert!(u32::from(address.port()) >= FIRST);
            assert!(u32::from(address.port()) < start.max(FIRST + 1_000));
            assert!(seen.insert(address.port()), "{address} handed out twice");
            TcpListener::bind(address).expect("a handed-out port binds");
        }
        // Hold the next port in the sequence, then ask again.
        let first = loopback_address();
        let next = SocketAddr::from(([127, 0, 0, 1], first.port() + 1));
        let holder = TcpListener::bind(next);
        let second = loopback_address();
        if holder.is_ok() {
            assert_ne!(second, next, "a held port was handed out");
        }
    }
}
