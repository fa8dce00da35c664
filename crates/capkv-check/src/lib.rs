//! # capkv-check: a linearizability checker for key-value histories
//!
//! Given a history of operations that clients ran against a key-value store
//! (from capkv's simulator, a Jepsen-style test of a real cluster, or any
//! other system), it decides whether the history is linearizable: whether
//! every operation can be given one instant between its invoke and its
//! completion such that, in that order, every key behaves as a single
//! register that starts absent. When not, it names the key and a small
//! window of operations that cannot be ordered, with an explanation.
//!
//! ## Input
//!
//! One JSON event per line, in real-time order (blank lines are skipped):
//! `{"process": 3, "type": "invoke", "f": "write", "key": "k1", "value": 5}`.
//! `type` is `invoke`, `ok`, `fail` or `info`; `f` is `read`, `write`,
//! `cas` (value `[expected, new]`) or `delete`. Values are JSON strings,
//! numbers or null, and compare as JSON values (`"1"` is not `1`). Each
//! process has at most one open operation; its completion must match it;
//! after `info` the process may not invoke again. See [`Event`].
//!
//! ## Semantics
//!
//! - `ok` took effect. For cas it means "swapped".
//! - `fail` certainly did not take effect. Failed operations are removed
//!   before checking, as Knossos and Jepsen do: a cas that did not swap is
//!   not an observation the checker orders.
//! - `info`, or no completion by the end of the history: the outcome is
//!   unknown. The operation may take effect at any instant after its invoke,
//!   or never. Such reads constrain nothing and are removed; such writes,
//!   cas and deletes are optional in the search.
//! - An unknown-outcome write (or cas, or delete) of a value that no read
//!   ever returned and no cas ever expected is removed as well: if it took
//!   effect, every operation ordered after it up to the next overwrite would
//!   have to accept its value without observing it, so dropping it (and any
//!   unknown-outcome cas it turned into a no-op) leaves a legal order legal.
//!
//! ## Algorithm
//!
//! Keys are independent registers (P-compositionality), so the history is
//! split per key and each key is checked alone. For one key, the search is
//! Wing and Gong's, with Lowe's just-in-time refinement and Porcupine's
//! memoisation: depth-first over a linked list of call and return entries
//! ordered by history position, placing an operation only when its call
//! precedes the earliest pending return, caching (set of placed operations,
//! register value) to prune revisits, and undoing placements by re-linking
//! lifted entries. Optional operations are tried after the mandatory ones at
//! each step. The search succeeds once every `ok` operation is placed.
//!
//! Bounds: the per-key search holds the entry lists, bitsets and a stack,
//! all linear in the key's operations (at most [`Limits::ops_per_key_max`]),
//! plus the memo cache, capped at 256 MiB per key: a cache key is the
//! register value plus the placed set from its first unplaced operation on,
//! which is a few words when concurrency is low. Past the cap the search
//! goes on without memoising new states: still correct, but the worst case
//! is then exponential in the number of concurrent operations, as checking
//! linearizability is NP-complete in general. The search itself has no
//! time limit. The parsed history takes at most
//! `events_max × line_bytes_max` bytes of input.
//!
//! The window of a violation is computed by [`check_events`] in three
//! bounded steps (shortest failing prefix by binary search, then a failing
//! suffix of it, then dropping operations one at a time); at most 2,000
//! re-checks and 20 million search steps are spent on it. The window fails
//! the check on its own. See `window.rs` for the details.
//!
//! ## Layout
//!
//! - `event`: [`Event`], [`EventType`], [`OpKind`], [`Limits`], [`InputError`].
//! - `parse`: [`parse_history`] and the pairing rules.
//! - `history`: splitting per key, interning values, choosing what to search.
//! - `search`: the register model and the search.
//! - `window`: shrinking a failing key to a window, and explaining it.
//! - `check`: [`check_events`], [`Verdict`], [`Violation`].
//! - `command`: [`run_check_command`], the `capkv check` command.
//! - [`gen`]: random linearizable histories for benchmarks and tests.
//!
//! ## What it does not do
//!
//! - Models other than a register per key: no multi-key transactions, no
//!   scans, no queues or sets.
//! - Anomalies weaker than linearizability (serializability, causal
//!   consistency): it answers yes or no for linearizability only.
//! - Time limits: a pathological history with very many concurrent
//!   operations on one key can take exponential time. Cancel from outside.
//! - Reading files or clocks: input comes from a reader, the report goes to
//!   a writer, and the same input always gives the same output.

#![warn(missing_docs)]

mod check;
mod command;
mod event;
pub mod gen;
mod history;
mod parse;
mod search;
mod window;

pub use check::{check_events, Verdict, Violation};
pub use command::{run_check_command, run_check_command_with_limits};
pub use event::{Event, EventType, InputError, Limits, OpKind};
pub use parse::parse_history;

#[cfg(test)]
mod tests;
