//! A deterministic simulator of a whole capkv cluster.
//!
//! What it is: virtual time, a virtual network (latency, jitter, loss,
//! duplication, reordering, partitions of every shape), virtual disks with
//! exact crash semantics ([`capkv_storage::MemStorage`]), process pauses and
//! clock drift, all drawn from one seed, driving the very [`capkv_node::Node`]
//! the real server runs. Besides random faults, targeted nemeses watch the
//! cluster and strike at its weak moments: leader churn, a leadership
//! transfer the old leader never hears the end of, and the Raft paper's
//! figure 8 played as a schedule of partitions ([`Fault`]). Clients run a read/write/cas/delete workload and
//! record a history; checkers run on every step (Raft's safety properties)
//! and at the end (linearizability with `capkv-check`, convergence after the
//! faults heal). The same seed gives the same run, event for event, and the
//! trace hash proves it.
//!
//! Layout: `config.rs` (what a run depends on), `sim.rs` (event loop, nodes,
//! network, nemesis), `workload.rs` (clients and their history),
//! `invariants.rs` (election safety, log matching, leader completeness, state
//! machine safety).
//!
//! What it does not do: no threads, no real time, no real I/O; it does not
//! model byte-level disk corruption or torn writes (a synced batch is whole,
//! an unsynced one is gone).

#![warn(missing_docs)]

mod config;
mod invariants;
mod sim;
mod workload;

pub use config::{Fault, SimConfig};
pub use invariants::{RaftInvariants, Violation};
pub use sim::{Micros, SimReport, Simulation};

/// Runs one seed to the end.
pub fn run(config: SimConfig) -> SimReport {
    Simulation::new(config).run()
}
