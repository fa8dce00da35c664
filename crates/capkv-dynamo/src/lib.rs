//! Leaderless (Dynamo-style) replication for capkv's ap buckets, as pure data
//! structures.
//!
//! What it is: the building blocks an ap coordinator and replica are made of,
//! each deterministic and free of I/O so the simulator and the server drive
//! the same code. Time, where it matters, is passed in as milliseconds.
//!
//! Layout:
//!
//! 1. `ring` — consistent hashing with virtual nodes and preference lists
//!    (Dynamo, DeCandia et al., SOSP 2007, §4.2–4.3).
//! 2. `dvv` — dotted version vector sets for sibling tracking without
//!    sibling explosion (Preguiça et al. 2012; Riak's `dvvset`), plus an
//!    opaque URL-safe encoding of the causal context handed to clients.
//! 3. `hlc` — hybrid logical clocks (Kulkarni et al. 2014) and a
//!    last-write-wins register ordered by (timestamp, node id).
//! 4. `merkle` — a fixed-shape Merkle tree over key-hash ranges with O(1)
//!    incremental updates per key, for anti-entropy (Dynamo §4.7).
//!
//! What it does not do (yet): no quorum coordinator, read repair, hinted
//! handoff or message types; no storage; no clocks or randomness of its own.
//! Hashing is capkv-core's `StableHasher` only, so every machine computes the
//! same ring and the same Merkle roots.

#![warn(missing_docs)]

pub mod dvv;
pub mod hlc;
pub mod merkle;
pub mod ring;

pub use dvv::{ContextError, Dot, DvvSet, VersionVector};
pub use hlc::{Hlc, HlcClock, HlcError, Lww};
pub use merkle::{MerkleError, MerkleTree};
pub use ring::{Ring, RingError};

/// A fixed 64-bit finaliser (SplitMix64's) applied on top of
/// [`capkv_core::StableHasher`]. FNV-1a mixes its last input bytes weakly into
/// the low bits, and ring positions and Merkle leaves are read from the high
/// bits of well-spread values, so every position goes through this step. It
/// is fixed forever, like the hash itself.
pub(crate) fn mix64(value: u64) -> u64 {
    let mut z = value;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
