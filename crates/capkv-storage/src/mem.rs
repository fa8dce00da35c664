use crate::{Keyspace, Pairs, Storage, StorageError, WriteBatch, WriteOp};
use std::collections::BTreeMap;

type Map = BTreeMap<(Keyspace, Vec<u8>), Vec<u8>>;

/// In-memory [`Storage`] with exact crash semantics, for the simulator and
/// tests.
///
/// It keeps two maps: what readers see, and what has been synced. A crash
/// throws the first away and goes back to the second, which is precisely what
/// a disk does to a process that died between `write` and `fsync`.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    /// What reads see: every batch written, synced or not.
    visible: Map,
    /// What survives a crash: every batch written before the last sync.
    durable: Map,
    /// Batches written since the last sync, in order.
    unsynced: Vec<WriteBatch>,
    /// Number of successful syncs (a metric for tests and the simulator).
    syncs_total: u64,
}

impl MemStorage {
    /// An empty store.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Simulates a process crash: every write not yet synced is lost.
    pub fn crash(&mut self) {
        self.visible = self.durable.clone();
        self.unsynced.clear();
    }

    /// How many syncs have succeeded.
    pub fn syncs_total(&self) -> u64 {
        self.syncs_total
    }

    /// How many batches are written but not yet durable.
    pub fn unsynced_batches(&self) -> usize {
        self.unsynced.len()
    }
}

fn apply(map: &mut Map, batch: &WriteBatch) {
    for op in &batch.ops {
        match op {
            WriteOp::Put {
                keyspace,
                key,
                value,
            } => {
                map.insert((*keyspace, key.clone()), value.clone());
            }
            WriteOp::Delete { keyspace, key } => {
                map.remove(&(*keyspace, key.clone()));
            }
            WriteOp::DeleteRange {
                keyspace,
                start,
                end,
            } => {
                if start >= end {
                    continue;
                }
                let doomed: Vec<_> = map
                    .range((*keyspace, start.clone())..(*keyspace, end.clone()))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in doomed {
                    map.remove(&key);
                }
            }
        }
    }
}

impl Storage for MemStorage {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.visible.get(&(keyspace, key.to_vec())).cloned())
    }

    fn scan(
        &self,
        keyspace: Keyspace,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Pairs, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(self
            .visible
            .range((keyspace, start.to_vec())..(keyspace, end.to_vec()))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), StorageError> {
        apply(&mut self.visible, &batch);
        self.unsynced.push(batch);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        for batch in self.unsynced.drain(..) {
            apply(&mut self.durable, &batch);
        }
        self.syncs_total += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KS: Keyspace = Keyspace("test");

    #[test]
    fn unsynced_writes_are_lost_on_crash() {
        let mut store = MemStorage::new();
        let mut first = WriteBatch::new();
        first.put(KS, b"a".to_vec(), b"1".to_vec());
        store.write(first).unwrap();
        store.sync().unwrap();
        let mut second = WriteBatch::new();
        second.put(KS, b"b".to_vec(), b"2".to_vec());
        second.delete(KS, b"a".to_vec());
        store.write(second).unwrap();
        assert_eq!(store.get(KS, b"a").unwrap(), None);
        assert_eq!(store.get(KS, b"b").unwrap(), Some(b"2".to_vec()));
        store.crash();
        assert_eq!(store.get(KS, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.get(KS, b"b").unwrap(), None);
    }

    #[test]
    fn delete_range_and_scan() {
        let mut store = MemStorage::new();
        let mut batch = WriteBatch::new();
        for i in 0u8..10 {
            batch.put(KS, vec![i], vec![i]);
        }
        batch.delete_range(KS, vec![3], vec![7]);
        store.write(batch).unwrap();
        let keys: Vec<u8> = store
            .scan(KS, &[0], &[255], 100)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k[0])
            .collect();
        assert_eq!(keys, vec![0, 1, 2, 7, 8, 9]);
        assert_eq!(store.scan(KS, &[0], &[255], 2).unwrap().len(), 2);
        // Keyspaces do not see each other.
        assert!(store
            .scan(Keyspace("other"), &[0], &[255], 100)
            .unwrap()
            .is_empty());
    }
}
