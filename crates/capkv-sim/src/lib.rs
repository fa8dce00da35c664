//! A deterministic simulator of a whole capkv cluster.
//!
//! What it is: virtual time, a virtual network (latency and jitter with each
//! directed link in order, like the TCP connection it stands for; loss,
//! duplication, reordering and partitions of every shape as faults), virtual disks with
//! exact crash semantics ([`capkv_storage::MemStorage`]), process pauses and
//! clock drift, all drawn from one seed, driving the very [`capkv_node::Node`]
//! the real server runs. Besides random faults, targeted nemeses watch the
//! cluster and strike at its weak moments: leader churn, a leadership
//! transfer the old leader never hears the end of, and the Raft paper's
//! figure 8 played as a schedule of partitions ([`Fault`]). Clients run a read/write/cas/delete workload and
//! record a history; checkers run on every step (Raft's safety properties),
//! at every restart (durability: a node's disk still holds every term, vote
//! and entry its messages revealed, and every ap object it acknowledged) and at the end (linearizability with `capkv-check`, convergence after the
//! faults heal, and stale reads: a node holds every write made through it). The same seed gives the same run, event for event, and the
//! trace hash proves it.
//!
//! Layout: `config.rs` (what a run depends on), `sim.rs` (event loop, nodes,
//! network, nemesis), `workload.rs` (cp clients and their history),
//! `invariants.rs` (election safety, log matching, leader completeness, state
//! machine safety), `durability.rs` (what a restarted node must remember),
//! `stale_check.rs` (what a stale read must see), `ap_workload.rs` (ap clients: put/get/delete at every
//! level, with contexts and sessions) and `ap_check.rs` (the ap checkers).
//!
//! What it does not do: no threads, no real time, no real I/O; it does not
//! model byte-level disk corruption or torn writes (a synced batch is whole,
//! an unsynced one is gone).

#![warn(missing_docs)]

pub mod ap_check;
mod ap_workload;
mod config;
mod durability;
mod invariants;
mod sim;
mod stale_check;
mod workload;

pub use capkv_node::{Conflict, DynamoBugs};
pub use config::{Fault, SimConfig, Workload};
pub use invariants::{RaftInvariants, Violation};
pub use sim::{Micros, SimReport, Simulation};

/// Runs one seed to the end.
pub fn run(config: SimConfig) -> SimReport {
    Simulation::new(config).run()
}
