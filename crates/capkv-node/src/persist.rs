//! How a node lays its durable state out in [`Storage`].
//!
//! Keyspace `raft_state`: `[group u64 BE][b'h']` → hard state,
//! `[group u64 BE][b's']` → latest snapshot, `b"boot"` → the node's boot
//! epoch (u64 BE), which prefixes its request ids. Keyspace `raft_log`:
//! `[group u64 BE][index u64 BE]` → entry. Big-endian keys keep entries in
//! index order, so recovery is one range scan. Values are postcard.

use capkv_core::{GroupId, LogIndex};
use capkv_raft::{Entry, HardState, Snapshot};
use capkv_storage::{Keyspace, Storage, StorageError, WriteBatch};

/// Raft hard state and snapshots.
pub const STATE: Keyspace = Keyspace("raft_state");
/// Raft log entries.
pub const LOG: Keyspace = Keyspace("raft_log");

/// Every keyspace a node writes: Raft's and the ap engine's. A disk engine
/// that fixes its keyspaces at open must open all of these.
pub const KEYSPACES: [Keyspace; 5] = [
    STATE,
    LOG,
    capkv_dynamo::engine::DATA,
    capkv_dynamo::engine::HINTS,
    capkv_dynamo::engine::META,
];

/// Entries read per scan page during recovery.
const RECOVERY_PAGE_ENTRIES: usize = 4096;

/// Built in an array so that the key costs one allocation of its exact size.
fn state_key(group: GroupId, tag: u8) -> Vec<u8> {
    let mut key = [tag; 9];
    key[..8].copy_from_slice(&group.0.to_be_bytes());
    key.to_vec()
}

/// Built in an array so that the key costs one allocation of its exact size
/// (a key is made per persisted entry).
fn log_key(group: GroupId, index: LogIndex) -> Vec<u8> {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&group.0.to_be_bytes());
    key[8..].copy_from_slice(&index.0.to_be_bytes());
    key.to_vec()
}

/// Bound on the encoded size of an entry, a hard state or a snapshot, less
/// their data bytes: three varint u64s (10 bytes each) and a tag.
const ENCODED_FIELDS_MAX: usize = 31;

/// The postcard bytes of `value`, written into a buffer allocated once with
/// room for `data_len` data bytes and the fixed fields, instead of one grown
/// step by step.
fn encode<T: serde::Serialize>(value: &T, data_len: usize) -> Vec<u8> {
    encode_with_capacity(value, data_len + ENCODED_FIELDS_MAX)
}

/// The postcard bytes of `value`, in a buffer allocated with `capacity`
/// bytes (it grows if they do not suffice).
pub(crate) fn encode_with_capacity<T: serde::Serialize>(value: &T, capacity: usize) -> Vec<u8> {
    let buffer = PresizedVec(Vec::with_capacity(capacity));
    postcard::serialize_with_flavor(value, buffer).expect("raft and node types serialise")
}

/// The longest varint postcard writes (a u64).
const VARINT_BYTES_MAX: usize = 10;

/// A postcard output appending to a `Vec` of our choosing: postcard's
/// `AllocVec` cannot be given a capacity, and its `ExtendFlavor` copies
/// through the generic `Extend`, byte by byte.
struct PresizedVec(Vec<u8>);

impl postcard::ser_flavors::Flavor for PresizedVec {
    type Output = Vec<u8>;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        // Most calls carry a varint of a few bytes, which a call to memcpy
        // copies more slowly than pushing them one by one.
        if bytes.len() <= VARINT_BYTES_MAX {
            for &byte in bytes {
                self.0.push(byte);
            }
        } else {
            self.0.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<u8>> {
        Ok(self.0)
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    keyspace: Keyspace,
    bytes: &[u8],
) -> Result<T, StorageError> {
    postcard::from_bytes(bytes).map_err(|error| StorageError::Corrupt {
        keyspace: keyspace.0,
        reason: error.to_string(),
    })
}

/// Appends `entries` to the batch, first removing any persisted entries at
/// or after the first one (a follower's log may have been truncated).
/// `persisted_last` bounds the persisted entries from above: an append past
/// it, the usual case, has nothing to remove and writes no range delete.
pub fn write_entries(
    batch: &mut WriteBatch,
    group: GroupId,
    entries: &[Entry],
    persisted_last: LogIndex,
) {
    let Some(first) = entries.first() else {
        return;
    };
    let replaces = first.index <= persisted_last;
    batch.reserve(entries.len() + usize::from(replaces));
    if replaces {
        batch.delete_range(
            LOG,
            log_key(group, first.index),
            log_key(group, LogIndex(u64::MAX)),
        );
    }
    for entry in entries {
        batch.put(
            LOG,
            log_key(group, entry.index),
            encode(entry, entry.data.len()),
        );
    }
}

/// Records the hard state.
pub fn write_hard_state(batch: &mut WriteBatch, group: GroupId, hard_state: &HardState) {
    batch.put(STATE, state_key(group, b'h'), encode(hard_state, 0));
}

/// Records a snapshot and drops the log entries it covers. A snapshot from
/// the leader (`replaces_log`) replaces the whole log.
pub fn write_snapshot(
    batch: &mut WriteBatch,
    group: GroupId,
    snapshot: &Snapshot,
    replaces_log: bool,
) {
    batch.put(
        STATE,
        state_key(group, b's'),
        encode(snapshot, snapshot.data.len()),
    );
    let end = if replaces_log {
        LogIndex(u64::MAX)
    } else {
        snapshot.meta.index.next()
    };
    batch.delete_range(LOG, log_key(group, LogIndex(0)), log_key(group, end));
}

/// The boot epoch sits above this many bits of a request id.
pub const BOOT_SHIFT: u32 = 40;
const BOOT_KEY: &[u8] = b"boot";

/// The boot epoch of the node's last life (0 for a fresh node).
pub fn load_boot(storage: &dyn Storage) -> Result<u64, StorageError> {
    match storage.get(STATE, BOOT_KEY)? {
        None => Ok(0),
        Some(bytes) => {
            let boot = bytes
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StorageError::Corrupt {
                    keyspace: STATE.0,
                    reason: "boot epoch is not 8 bytes".into(),
                })?;
            if boot >= 1 << (64 - BOOT_SHIFT) {
                return Err(StorageError::Corrupt {
                    keyspace: STATE.0,
                    reason: format!("boot epoch {boot} out of range"),
                });
            }
            Ok(boot)
        }
    }
}

/// Records this life's boot epoch.
pub fn write_boot(batch: &mut WriteBatch, boot: u64) {
    batch.put(STATE, BOOT_KEY.to_vec(), boot.to_be_bytes().to_vec());
}

/// What a node finds on its storage at start-up.
pub struct Durable {
    /// Term, vote and commit.
    pub hard_state: HardState,
    /// Latest snapshot (empty at index 0 when none).
    pub snapshot: Snapshot,
    /// Entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

/// Reads a group's durable state.
pub fn load(storage: &dyn Storage, group: GroupId) -> Result<Durable, StorageError> {
    let hard_state = match storage.get(STATE, &state_key(group, b'h'))? {
        Some(bytes) => decode(STATE, &bytes)?,
        None => HardState::default(),
    };
    let snapshot: Snapshot = match storage.get(STATE, &state_key(group, b's'))? {
        Some(bytes) => decode(STATE, &bytes)?,
        None => Snapshot::default(),
    };
    let mut entries: Vec<Entry> = Vec::new();
    let mut next = snapshot.meta.index.next();
    let end = log_key(group, LogIndex(u64::MAX));
    loop {
        let page = storage.scan(LOG, &log_key(group, next), &end, RECOVERY_PAGE_ENTRIES)?;
        let page_len = page.len();
        for (_, bytes) in page {
            let entry: Entry = decode(LOG, &bytes)?;
            if entry.index != next {
                return Err(StorageError::Corrupt {
                    keyspace: LOG.0,
                    reason: format!("log gap: expected index {next}, found {}", entry.index),
                });
            }
            next = next.next();
            entries.push(entry);
        }
        if page_len < RECOVERY_PAGE_ENTRIES {
            break;
        }
    }
    Ok(Durable {
        hard_state,
        snapshot,
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use capkv_core::Term;
    use capkv_raft::EntryKind;

    /// The keys on disk keep their layout: the group, then the index or the
    /// tag, big-endian.
    #[test]
    fn keys_are_the_group_then_the_index_or_tag_big_endian() {
        let group = GroupId(0x0102_0304_0506_0708);
        let index = LogIndex(0x1112_1314_1516_1718);
        let mut expected = group.0.to_be_bytes().to_vec();
        expected.extend_from_slice(&index.0.to_be_bytes());
        assert_eq!(log_key(group, index), expected);
        let mut expected = group.0.to_be_bytes().to_vec();
        expected.push(b'h');
        assert_eq!(state_key(group, b'h'), expected);
    }

    fn entries(indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        indexes
            .map(|index| Entry {
                term: Term(1),
                index: LogIndex(index),
                kind: EntryKind::Normal,
                data: vec![index as u8],
            })
            .collect()
    }

    fn range_deletes(batch: &WriteBatch) -> usize {
        batch
            .ops
            .iter()
            .filter(|op| matches!(op, capkv_storage::WriteOp::DeleteRange { .. }))
            .count()
    }

    /// An append past the last persisted entry writes no range delete, an
    /// overwrite of persisted entries removes them and everything after:
    /// either way the stored log ends up the same.
    #[test]
    fn only_an_overwrite_removes_persisted_entries() {
        let group = GroupId(0);
        let mut storage = capkv_storage::MemStorage::new();
        let mut batch = WriteBatch::new();
        write_entries(&mut batch, group, &entries(1..=5), LogIndex(0));
        assert_eq!(range_deletes(&batch), 0);
        storage.write(batch).unwrap();
        let mut batch = WriteBatch::new();
        write_entries(&mut batch, group, &entries(6..=7), LogIndex(5));
        assert_eq!(range_deletes(&batch), 0);
        storage.write(batch).unwrap();
        let mut batch = WriteBatch::new();
        write_entries(&mut batch, group, &entries(3..=4), LogIndex(7));
        assert_eq!(range_deletes(&batch), 1);
        storage.write(batch).unwrap();
        storage.sync().unwrap();
        assert_eq!(load(&storage, group).unwrap().entries, entries(1..=4));
    }

    /// Values are plain postcard, whatever the buffer was sized for, and the
    /// bound holds for the largest fields.
    #[test]
    fn values_are_postcard() {
        let entry = Entry {
            term: Term(u64::MAX),
            index: LogIndex(u64::MAX),
            kind: EntryKind::Normal,
            data: vec![7; 300],
        };
        let bytes = encode(&entry, entry.data.len());
        assert_eq!(bytes, postcard::to_allocvec(&entry).unwrap());
        assert!(bytes.len() <= entry.data.len() + ENCODED_FIELDS_MAX);
        let hard_state = HardState {
            term: Term(u64::MAX),
            vote: Some(capkv_core::NodeId(u64::MAX)),
            commit: LogIndex(u64::MAX),
        };
        let bytes = encode(&hard_state, 0);
        assert_eq!(bytes, postcard::to_allocvec(&hard_state).unwrap());
        assert!(bytes.len() <= ENCODED_FIELDS_MAX);
    }
}
