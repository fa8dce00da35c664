//! The history's vocabulary: events, their kinds, the input limits and the
//! input error.

use serde::{Deserialize, Serialize};

/// What an event says about its operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The client sent the operation; it is open until its completion.
    Invoke,
    /// The operation took effect, and the event carries its result.
    Ok,
    /// The operation certainly did not take effect.
    Fail,
    /// The outcome is unknown: the operation may take effect at any time after
    /// its invoke, or never. The process is closed for good afterwards.
    Info,
}

/// The operation an event belongs to, in the input's `f` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Read the key: `ok` carries the value read, `null` when the key is absent.
    Read,
    /// Write the value carried by the invoke.
    Write,
    /// Compare-and-set, with the value `[expected, new]`: `ok` means it swapped.
    Cas,
    /// Delete the key: it becomes absent (`null`).
    Delete,
}

impl OpKind {
    /// The name used in the input's `f` field.
    pub(crate) fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Cas => "cas",
            OpKind::Delete => "delete",
        }
    }
}

/// One line of a history: a process invoking or completing an operation on a key.
///
/// The position of an event in the history is its real-time order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The client process; it has at most one operation open at a time.
    pub process: u64,
    /// Invoke or one of the three completions.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The operation.
    pub f: OpKind,
    /// The key the operation is on: every key is an independent register.
    pub key: String,
    /// A JSON string, number or null; `[expected, new]` for cas. A missing
    /// value reads as null.
    #[serde(default)]
    pub value: serde_json::Value,
}

/// Bounds on the input, so that a hostile or runaway history is rejected with
/// an error instead of exhausting memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most events in one history.
    pub events_max: usize,
    /// Most distinct keys in one history.
    pub keys_max: usize,
    /// Most operations (invokes) on one key; the search's memory grows with it.
    pub ops_per_key_max: usize,
    /// Longest input line in bytes, without its line ending.
    pub line_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            events_max: 2_000_000,
            keys_max: 100_000,
            ops_per_key_max: 200_000,
            line_bytes_max: 64 * 1024,
        }
    }
}

/// A history that cannot be checked: malformed, breaking the pairing rules,
/// or beyond a limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct InputError {
    /// The 1-based input line (for [`crate::check_events`], the 1-based
    /// position of the event); 0 when the error is not tied to a line.
    pub line: usize,
    /// What is wrong, in words.
    pub reason: String,
}

impl InputError {
    pub(crate) fn new(line: usize, reason: impl Into<String>) -> Self {
        InputError {
            line,
            reason: reason.into(),
        }
    }
}
