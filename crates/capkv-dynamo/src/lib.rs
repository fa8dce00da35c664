//! Leaderless (Dynamo-style) replication for capkv's ap buckets, as pure data
//! structures.
//!
//! What it is: the ap coordinator and replica of a node and the building
//! blocks they are made of, each deterministic and free of I/O so the
//! simulator and the server drive the same code. Time, where it matters, is
//! passed in as milliseconds. It writes through capkv-storage's batch type
//! (the node hands the batch to its driver) and reads storage only at
//! restore.
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
//! 5. `object` — one key's replicated state (a DVV set or an lww register).
//! 6. `api` — levels, bucket settings, requests, answers, and the context
//!    and session tokens clients carry.
//! 7. `engine` — [`Dynamo`], one node's replica and coordinator: quorum
//!    writes and reads, read repair, hinted handoff, anti-entropy exchange,
//!    tombstone reaping. Its rules and driver contract are in its docs.
//!
//! What it does not do: membership changes (the ring is fixed at start),
//! Paxos compare-and-set or CRDT types, clocks or randomness of its own (the
//! driver passes physical time in). Replica data is held in memory as well
//! as on disk, so an ap data set must fit in memory. Hashing is capkv-core's
//! `StableHasher` only, so every machine computes the same ring and the same
//! Merkle roots.

#![warn(missing_docs)]

pub mod api;
pub mod dvv;
pub mod engine;
pub mod hlc;
pub mod merkle;
pub mod object;
pub mod ring;

pub use api::{
    ApError, ApRequest, ApResponse, ApSpec, Conflict, Context, ReadLevel, Session, SessionVersion,
    WriteLevel,
};
pub use engine::{Dynamo, DynamoBugs, DynamoConfig, DynamoError, DynamoMessage, DynamoStats};
pub use object::Object;

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
