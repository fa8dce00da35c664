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

fn state_key(group: GroupId, tag: u8) -> Vec<u8> {
    let mut key = group.0.to_be_bytes().to_vec();
    key.push(tag);
    key
}

fn log_key(group: GroupId, index: LogIndex) -> Vec<u8> {
    let mut key = group.0.to_be_bytes().to_vec();
    key.extend_from_slice(&index.0.to_be_bytes());
    key
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("raft types serialise")
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
pub fn write_entries(batch: &mut WriteBatch, group: GroupId, entries: &[Entry]) {
    let Some(first) = entries.first() else {
        return;
    };
    batch.delete_range(
        LOG,
        log_key(group, first.index),
        log_key(group, LogIndex(u64::MAX)),
    );
    for entry in entries {
        batch.put(LOG, log_key(group, entry.index), encode(entry));
    }
}

/// Records the hard state.
pub fn write_hard_state(batch: &mut WriteBatch, group: GroupId, hard_state: &HardState) {
    batch.put(STATE, state_key(group, b'h'), encode(hard_state));
}

/// Records a snapshot and drops the log entries it covers. A snapshot from
/// the leader (`replaces_log`) replaces the whole log.
pub fn write_snapshot(
    batch: &mut WriteBatch,
    group: GroupId,
    snapshot: &Snapshot,
    replaces_log: bool,
) {
    batch.put(STATE, state_key(group, b's'), encode(snapshot));
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
