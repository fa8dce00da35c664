//! Shared vocabulary of capkv.
//!
//! What it is: the small types every other crate speaks in. Identifiers are
//! newtypes (`NodeId`, `GroupId`, `Term`, `LogIndex`) so that a term can never
//! be passed where an index is expected. It also holds the two pieces of
//! determinism the protocol cores need from outside: a seeded random number
//! generator ([`Rng`]) and a stable, platform-independent hash ([`StableHasher`]).
//!
//! Layout: `ids` (newtypes), `rng` (SplitMix64/xoshiro256**), `hash` (FNV-1a 64).
//!
//! What it does not do: no I/O, no clocks, no global state. Nothing in here
//! may ever read the wall clock or an operating-system random source.

#![warn(missing_docs)]

mod hash;
mod ids;
mod rng;
mod seen;

pub use hash::StableHasher;
pub use ids::{GroupId, LogIndex, NodeId, Term};
pub use rng::Rng;
pub use seen::SeenIds;
