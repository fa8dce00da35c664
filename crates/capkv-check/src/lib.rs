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
//! Four register-specific prunings, each argued in `search.rs` and checked
//! against a brute-force checker on thousands of small random histories,
//! keep busy keys fast:
//!
//! 1. A callable read that the current value satisfies is placed as the
//!    only choice at its node (a read changes nothing, so it can move first).
//! 2. An optional operation is placed only right before a callable
//!    operation that observes the value it writes.
//! 3. Placing an operation that moves the register away from value `v` is a
//!    dead end when an unplaced operation still needs `v` and nothing left
//!    can write `v` again (a stale read is found where it is caused, not
//!    after every order of what lies between).
//! 4. An operation needing a value that no operation called before its
//!    return writes fails the key before the search starts (a read "from
//!    the future").
//!
//! Values that nothing observes are merged into one, so orders of blind
//! writes that differ only in which unobserved value is left collapse into
//! one cached state.
//!
//! Bounds: the per-key search holds the entry lists, bitsets, per-value
//! counts and a stack, all linear in the key's operations (at most
//! [`Limits::ops_per_key_max`]), plus the memo cache, capped at 256 MiB per
//! key: a cache key is the register value plus the placed set from its
//! first unplaced operation on, which is a few words when concurrency is
//! low. Past the cap the search goes on without memoising new states: still
//! correct, but the worst case is then exponential in the number of
//! concurrent operations, as checking linearizability is NP-complete in
//! general. The check itself has no time limit. The parsed history takes at
//! most `events_max × line_bytes_max` bytes of input.
//!
//! ## The window of a violation
//!
//! A window is a set of the failing key's operations that cannot be ordered
//! even on their own, reported as their invoke and completion events. It is
//! found in steps, each re-checking candidate sub-histories with the same
//! search: first small suffixes ending at the operations the failed search
//! points to (a stranded read, the operation it got stuck on); failing
//! that, the shortest failing prefix (galloping, then bisecting over
//! returns) and a failing suffix of it; then operations are dropped one at a
//! time while the rest still fails, never dropping the only writer of a
//! value a remaining operation observes, so a stale read comes with the
//! writes that make it stale. It costs at most 2,000 re-checks and the
//! larger of 20 million search steps and 32 times the steps of the failed
//! check; a re-check out of budget counts as "not shown to fail", so the
//! window always fails. Details in `window.rs`.
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
//! - Time limits on the check: a pathological history with very many
//!   concurrent operations on one key can take exponential time; only the
//!   shrinking of a window is budgeted. Cancel from outside.
//! - Guarantee a minimum window: it is small, and fails on its own, but
//!   another smaller one may exist.
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
