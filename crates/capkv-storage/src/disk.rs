//! [`FjallStorage`]: the [`Storage`] trait on the fjall LSM-tree engine.
//!
//! On-disk layout: one fjall database per node directory, and inside it one
//! fjall keyspace (an LSM-tree of its own, what other engines call a column
//! family) per capkv [`Keyspace`], named after it. All fjall keyspaces share
//! one write-ahead journal, which is what makes a batch atomic across them.
//!
//! Guarantees, numbered like the trait contract they implement:
//! 1. `write` turns one [`WriteBatch`] into one fjall write batch, committed
//!    with a single journal record: after a crash it is either wholly there or
//!    wholly absent, in every keyspace it touched. Reads see it at once.
//! 2. `write` never syncs: the batch goes to fjall's in-process journal buffer
//!    and its memtables. Only `sync` calls `fsync` (fjall's
//!    `PersistMode::SyncAll`), so one sync per event-loop turn is the group
//!    commit point. fjall has no background sync timer; it does flush and
//!    fsync the journal on its own when it rotates it or when the database is
//!    dropped. That is durability beyond the contract, which is harmless, and
//!    nothing here relies on it.
//! 3. A batch that is rejected (unknown keyspace, key fjall cannot store, too
//!    large a range delete) is rejected before anything is written.
//!
//! Range deletes: fjall has no range tombstone, so a `DeleteRange` reads the
//! keys of `start..end` (a bounded range iterator, never the whole keyspace)
//! and writes one point tombstone per key found, in the same batch. Its cost
//! is therefore proportional to the number of live keys in the range: one
//! iterator step to find each, its key held in memory until commit, and one
//! tombstone in the journal and the memtable. An empty range costs one seek.
//! The keys removed by range deletes in one batch are capped at
//! [`DELETE_RANGE_KEYS_MAX`]; a batch over the cap fails without being
//! applied. Tombstones are dropped by compaction later; until then a scan
//! that starts before a deleted run steps over them, which is why readers
//! should start scans at the first live key they know of.
//!
//! What it does not do, differently from [`MemStorage`](crate::MemStorage):
//! fjall cannot store an empty key or a key longer than 65535 bytes, nor a
//! value of 2^32 bytes or more, so a `Put` of one is an error (the batch is
//! not applied). A `Delete` or `get` of such a key is a no-op or `None`,
//! since it cannot exist.

use crate::{Keyspace, Pairs, Storage, StorageError, WriteBatch, WriteOp};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

/// How many keys the `DeleteRange`s of one batch may remove, in total. A
/// Raft log truncation or compaction removes at most the entries between two
/// snapshots, far below this; the cap exists so that a wrong range fails
/// loudly instead of holding millions of keys in memory.
pub const DELETE_RANGE_KEYS_MAX: usize = 1 << 20;

/// Longest key fjall accepts, in bytes.
const KEY_BYTES_MAX: usize = u16::MAX as usize;

/// Longest keyspace name fjall accepts, in bytes.
const KEYSPACE_NAME_BYTES_MAX: usize = 255;

/// [`Storage`] on disk, in a fjall database. See the module docs for the
/// layout and guarantees.
pub struct FjallStorage {
    /// The fjall database: owns the journal, the background flush and
    /// compaction workers, and the lock on the directory.
    database: ::fjall::Database,
    /// One fjall keyspace per capkv keyspace, fixed at open. An op on a name
    /// missing here is an error, never a new keyspace created on the fly.
    keyspaces: BTreeMap<&'static str, ::fjall::Keyspace>,
}

impl std::fmt::Debug for FjallStorage {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FjallStorage")
            .field("keyspaces", &self.keyspaces.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The final effect of a batch on one key: `Some(value)` to put, `None` to
/// delete. Keyed by keyspace name and key.
type Overlay = BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>;

fn io_error(context: &str, error: ::fjall::Error) -> StorageError {
    StorageError::Io(format!("fjall {context}: {error}"))
}

fn key_is_storable(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= KEY_BYTES_MAX
}

impl FjallStorage {
    /// Opens the database at `path`, creating it if needed, and opens (or
    /// creates) one fjall keyspace for each of `keyspaces`. Keyspaces on disk
    /// that are not listed stay untouched and unreachable.
    pub fn open(path: &Path, keyspaces: &[Keyspace]) -> Result<FjallStorage, StorageError> {
        // fjall asserts on bad names; check them first so bad input is an error.
        if let Some(bad) = keyspaces
            .iter()
            .find(|keyspace| keyspace.0.is_empty() || keyspace.0.len() > KEYSPACE_NAME_BYTES_MAX)
        {
            return Err(StorageError::Io(format!(
                "invalid keyspace name {:?}: must be 1..={KEYSPACE_NAME_BYTES_MAX} bytes",
                bad.0
            )));
        }
        // Batches are committed with no persist at all (see `write`); this
        // only keeps fjall's single-key helpers, which we do not use, from
        // flushing on their own.
        let database = ::fjall::Database::builder(path)
            .manual_journal_persist(true)
            .open()
            .map_err(|error| io_error(&format!("open {}", path.display()), error))?;
        let mut handles = BTreeMap::new();
        for keyspace in keyspaces {
            let handle = database
                .keyspace(keyspace.0, ::fjall::KeyspaceCreateOptions::default)
                .map_err(|error| io_error(&format!("open keyspace {}", keyspace.0), error))?;
            handles.insert(keyspace.0, handle);
        }
        Ok(FjallStorage {
            database,
            keyspaces: handles,
        })
    }

    fn handle(&self, keyspace: Keyspace) -> Result<&::fjall::Keyspace, StorageError> {
        self.keyspaces
            .get(keyspace.0)
            .ok_or_else(|| StorageError::Io(format!("unknown keyspace {:?}", keyspace.0)))
    }

    /// Folds the ops of `batch`, in order, into the final effect on each key.
    /// Reads the committed state only for range deletes.
    fn overlay(&self, batch: WriteBatch) -> Result<Overlay, StorageError> {
        let mut overlay = Overlay::new();
        let mut range_deleted_keys = 0usize;
        for op in batch.ops {
            match op {
                WriteOp::Put {
                    keyspace,
                    key,
                    value,
                } => {
                    self.handle(keyspace)?;
                    if !key_is_storable(&key) {
                        return Err(StorageError::Io(format!(
                            "fjall cannot store a key of {} bytes in keyspace {:?}: keys are 1..={KEY_BYTES_MAX} bytes",
                            key.len(),
                            keyspace.0
                        )));
                    }
                    if u32::try_from(value.len()).is_err() {
                        return Err(StorageError::Io(format!(
                            "fjall cannot store a value of {} bytes",
                            value.len()
                        )));
                    }
                    overlay.insert((keyspace.0, key), Some(value));
                }
                WriteOp::Delete { keyspace, key } => {
                    self.handle(keyspace)?;
                    // A key fjall cannot store cannot exist: nothing to delete.
                    if key_is_storable(&key) {
                        overlay.insert((keyspace.0, key), None);
                    }
                }
                WriteOp::DeleteRange {
                    keyspace,
                    start,
                    end,
                } => {
                    let handle = self.handle(keyspace)?;
                    if start >= end {
                        continue;
                    }
                    range_deleted_keys +=
                        delete_committed_range(&mut overlay, keyspace, handle, &start, &end)?;
                    if range_deleted_keys > DELETE_RANGE_KEYS_MAX {
                        return Err(StorageError::Io(format!(
                            "range deletes of one batch exceed {DELETE_RANGE_KEYS_MAX} keys (keyspace {:?})",
                            keyspace.0
                        )));
                    }
                    // Keys put earlier in this same batch are not on disk yet.
                    let pending = (
                        Bound::Included((keyspace.0, start)),
                        Bound::Excluded((keyspace.0, end)),
                    );
                    for (_, effect) in overlay.range_mut(pending) {
                        *effect = None;
                    }
                }
            }
        }
        Ok(overlay)
    }
}

/// Marks every committed key of `start..end` deleted in `overlay`, reading at
/// most `DELETE_RANGE_KEYS_MAX + 1` keys. Returns how many it read.
fn delete_committed_range(
    overlay: &mut Overlay,
    keyspace: Keyspace,
    handle: &::fjall::Keyspace,
    start: &[u8],
    end: &[u8],
) -> Result<usize, StorageError> {
    let mut found = 0usize;
    for guard in handle.range(start..end).take(DELETE_RANGE_KEYS_MAX + 1) {
        let key = guard
            .key()
            .map_err(|error| io_error(&format!("range delete in {}", keyspace.0), error))?;
        overlay.insert((keyspace.0, key.to_vec()), None);
        found += 1;
    }
    Ok(found)
}

impl Storage for FjallStorage {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let handle = self.handle(keyspace)?;
        if !key_is_storable(key) {
            return Ok(None);
        }
        let value = handle
            .get(key)
            .map_err(|error| io_error(&format!("get in {}", keyspace.0), error))?;
        Ok(value.map(|value| value.to_vec()))
    }

    fn scan(
        &self,
        keyspace: Keyspace,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Pairs, StorageError> {
        let handle = self.handle(keyspace)?;
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let mut pairs = Vec::new();
        for guard in handle.range(start..end).take(limit) {
            let (key, value) = guard
                .into_inner()
                .map_err(|error| io_error(&format!("scan in {}", keyspace.0), error))?;
            pairs.push((key.to_vec(), value.to_vec()));
        }
        Ok(pairs)
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), StorageError> {
        let overlay = self.overlay(batch)?;
        if overlay.is_empty() {
            return Ok(());
        }
        // No durability mode: the batch is appended to the journal buffer and
        // applied to the memtables, and only `sync` makes it durable.
        let mut fjall_batch = self.database.batch().durability(None);
        for ((name, key), effect) in overlay {
            let handle = self
                .keyspaces
                .get(name)
                .ok_or_else(|| StorageError::Io(format!("unknown keyspace {name:?}")))?;
            match effect {
                Some(value) => fjall_batch.insert(handle, key, value),
                None => fjall_batch.remove(handle, key),
            }
        }
        fjall_batch
            .commit()
            .map_err(|error| io_error("commit batch", error))
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.database
            .persist(::fjall::PersistMode::SyncAll)
            .map_err(|error| io_error("sync", error))
    }
}
