//! The storage boundary of capkv.
//!
//! What it is: one small trait, [`Storage`], that every durable byte of a node
//! goes through: an ordered key-value store split into named keyspaces, written
//! in atomic [`WriteBatch`]es, made durable only by an explicit `sync`. The
//! node core decides *what* to write (Raft hard state, log entries, snapshots);
//! the driver decides *when* to call `write` and `sync` (one batch and one sync
//! per event-loop turn: group commit).
//!
//! Layout: [`Storage`] and [`WriteBatch`] here; [`MemStorage`] in `mem.rs`, the
//! implementation the simulator uses. Its crash semantics are exact: a write
//! that was not followed by a `sync` is gone after [`MemStorage::crash`]. The
//! fjall implementation, `FjallStorage` in `disk.rs`, lives behind the cargo
//! feature `fjall` that only the server enables (issue 3), so cores and the
//! simulator never link a disk engine.
//!
//! On disk (`FjallStorage`): one fjall database per node directory holding
//! one fjall keyspace per capkv [`Keyspace`]. A [`WriteBatch`] is one fjall
//! batch, atomic across keyspaces through fjall's shared journal; `write`
//! never fsyncs and `sync` fsyncs the journal. `DeleteRange` has no native
//! op: it costs one point tombstone per live key in the range, found with a
//! bounded range scan (capped per batch). The details are in `disk.rs`.
//!
//! What it does not do: no caching, no interpretation of keys, no background
//! work. It never syncs on its own (fjall may sync its journal when it
//! rotates it or closes, which only adds durability).

#![warn(missing_docs)]

#[cfg(feature = "fjall")]
mod disk;
mod mem;

#[cfg(feature = "fjall")]
pub use disk::{FjallStorage, DELETE_RANGE_KEYS_MAX};
pub use mem::MemStorage;

/// Key-value pairs returned by a scan, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A named keyspace. The set of keyspaces is fixed at compile time so that a
/// disk engine can open them all at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Keyspace(pub &'static str);

/// Errors from a storage engine. Every one of them is an operating condition
/// the caller must handle (usually by stopping the node), never a panic.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The engine reported an I/O error.
    #[error("storage i/o error: {0}")]
    Io(String),
    /// Stored bytes could not be decoded: the disk holds something this
    /// version did not write.
    #[error("corrupt storage in keyspace {keyspace}: {reason}")]
    Corrupt {
        /// Where the bad bytes were found.
        keyspace: &'static str,
        /// What was wrong with them.
        reason: String,
    },
    /// The engine has crashed (simulator) or was closed.
    #[error("storage is unavailable")]
    Unavailable,
}

/// One change inside a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Set `key` to `value`.
    Put {
        /// Keyspace of the key.
        keyspace: Keyspace,
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove `key` (no error if absent).
    Delete {
        /// Keyspace of the key.
        keyspace: Keyspace,
        /// The key.
        key: Vec<u8>,
    },
    /// Remove every key in `start..end`.
    DeleteRange {
        /// Keyspace of the keys.
        keyspace: Keyspace,
        /// First key removed.
        start: Vec<u8>,
        /// First key kept (exclusive bound).
        end: Vec<u8>,
    },
}

/// Changes applied atomically: after a crash either all of a synced batch is
/// there or none of an unsynced one is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// The changes, applied in order.
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Makes room for `additional` more ops, so that a caller that knows how
    /// many it will add grows the batch once.
    pub fn reserve(&mut self, additional: usize) {
        self.ops.reserve(additional);
    }

    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends a put.
    pub fn put(&mut self, keyspace: Keyspace, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(WriteOp::Put {
            keyspace,
            key,
            value,
        });
    }

    /// Appends a delete.
    pub fn delete(&mut self, keyspace: Keyspace, key: Vec<u8>) {
        self.ops.push(WriteOp::Delete { keyspace, key });
    }

    /// Appends a range delete of `start..end`.
    pub fn delete_range(&mut self, keyspace: Keyspace, start: Vec<u8>, end: Vec<u8>) {
        self.ops.push(WriteOp::DeleteRange {
            keyspace,
            start,
            end,
        });
    }

    /// Moves every op of `other` to the end of this batch.
    pub fn append(&mut self, other: &mut WriteBatch) {
        self.ops.append(&mut other.ops);
    }

    /// Total bytes of keys and values in the batch (a metric, and a bound).
    pub fn payload_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value, .. } => key.len() + value.len(),
                WriteOp::Delete { key, .. } => key.len(),
                WriteOp::DeleteRange { start, end, .. } => start.len() + end.len(),
            })
            .sum()
    }
}

/// An ordered key-value store with atomic batches and explicit durability.
///
/// Contract:
/// 1. `write` applies a batch atomically; reads see it at once.
/// 2. Nothing written is durable until `sync` returns `Ok`.
/// 3. After a crash, the store holds exactly the batches written before the
///    last successful `sync`, in order, and nothing else.
pub trait Storage {
    /// The value of `key`, if any.
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Every pair with `start <= key < end`, in key order, at most `limit` of
    /// them. Callers that need more page with the last key returned.
    fn scan(
        &self,
        keyspace: Keyspace,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Pairs, StorageError>;

    /// Applies `batch` atomically (not yet durable).
    fn write(&mut self, batch: WriteBatch) -> Result<(), StorageError>;

    /// Makes every batch written so far durable.
    fn sync(&mut self) -> Result<(), StorageError>;
}
