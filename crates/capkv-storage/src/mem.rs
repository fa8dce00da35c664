use crate::{Keyspace, Pairs, Storage, StorageError, WriteBatch, WriteOp};

/// One keyspace's pairs, sorted by key in a vector. Nodes write keys mostly
/// in ascending order (log entries go at the end) and drop them from the
/// front (a snapshot compacts the log): an append costs one compare and a
/// push, where a B-tree compares the new key with every key down its right
/// edge. An insert in the middle moves the pairs after it, which is cheap
/// at the key counts of simulations and tests.
#[derive(Clone, Debug, Default)]
struct Space {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Space {
    /// Where `key` is, or where it would go.
    fn find(&self, key: &[u8]) -> Result<usize, usize> {
        match self.pairs.last() {
            Some((last, _)) if last.as_slice() < key => Err(self.pairs.len()),
            _ => self.pairs.binary_search_by(|(k, _)| k.as_slice().cmp(key)),
        }
    }

    /// The position of the first key at or after `key`.
    fn lower_bound(&self, key: &[u8]) -> usize {
        self.find(key).unwrap_or_else(|at| at)
    }

    fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.find(key).ok().map(|at| &self.pairs[at].1)
    }

    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        match self.find(&key) {
            Ok(at) => self.pairs[at].1 = value,
            Err(at) => self.pairs.insert(at, (key, value)),
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Ok(at) = self.find(key) {
            self.pairs.remove(at);
        }
    }

    /// The pairs with `start <= key < end`, in key order.
    fn range(&self, start: &[u8], end: &[u8]) -> &[(Vec<u8>, Vec<u8>)] {
        if start >= end {
            return &[];
        }
        &self.pairs[self.lower_bound(start)..self.lower_bound(end)]
    }

    /// Removes every pair with `start <= key < end`. The usual range, past
    /// the last key (an append clears what follows it), costs one compare.
    fn delete_range(&mut self, start: &[u8], end: &[u8]) {
        if start >= end {
            return;
        }
        let from = self.lower_bound(start);
        if from < self.pairs.len() {
            let to = self.lower_bound(end);
            self.pairs.drain(from..to);
        }
    }
}

/// In-memory [`Storage`] with exact crash semantics, for the simulator and
/// tests.
///
/// It keeps what has been synced, and the batches written since. A crash
/// drops the batches, which is precisely what a disk does to a process that
/// died between `write` and `fsync`. Writes are the hot path (the simulator
/// writes every turn and reads only when a node restarts), so `write` only
/// queues its batch and `sync` moves the batches' bytes into the synced maps
/// without copying them; reads lay the queued batches over the synced maps.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    /// What survives a crash: every batch written before the last sync, one
    /// map per keyspace.
    durable: Spaces,
    /// Batches written since the last sync, in order. Reads see them.
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

    /// The queued operations on `keyspace`, oldest first.
    fn unsynced_ops(&self, keyspace: Keyspace) -> impl DoubleEndedIterator<Item = &WriteOp> {
        self.unsynced
            .iter()
            .flat_map(|batch| batch.ops.iter())
            .filter(move |op| op_keyspace(op) == keyspace)
    }
}

fn op_keyspace(op: &WriteOp) -> Keyspace {
    match op {
        WriteOp::Put { keyspace, .. }
        | WriteOp::Delete { keyspace, .. }
        | WriteOp::DeleteRange { keyspace, .. } => *keyspace,
    }
}

/// One map per keyspace, in the order they were first written. A node has a
/// handful of keyspaces, and every op of a sync looks its own up: a short
/// list costs a few pointer compares where a map keyed by name costs string
/// compares.
#[derive(Clone, Debug, Default)]
struct Spaces(Vec<(Keyspace, Space)>);

impl Spaces {
    fn get(&self, keyspace: Keyspace) -> Option<&Space> {
        self.0
            .iter()
            .find(|(k, _)| same_keyspace(*k, keyspace))
            .map(|(_, space)| space)
    }

    /// The map of `keyspace`, created empty on its first write.
    fn get_or_create(&mut self, keyspace: Keyspace) -> &mut Space {
        let at = match self.0.iter().position(|(k, _)| same_keyspace(*k, keyspace)) {
            Some(at) => at,
            None => {
                self.0.push((keyspace, Space::default()));
                self.0.len() - 1
            }
        };
        &mut self.0[at].1
    }

    /// Applies `batch`, moving its keys and values in.
    fn apply_owned(&mut self, batch: WriteBatch) {
        for op in batch.ops {
            match op {
                WriteOp::Put {
                    keyspace,
                    key,
                    value,
                } => {
                    self.get_or_create(keyspace).insert(key, value);
                }
                WriteOp::Delete { keyspace, key } => {
                    self.get_or_create(keyspace).remove(&key);
                }
                WriteOp::DeleteRange {
                    keyspace,
                    start,
                    end,
                } => self.get_or_create(keyspace).delete_range(&start, &end),
            }
        }
    }
}

/// Keyspaces are constants, so the same one usually has the same address:
/// compare that first, and the names only when it differs.
fn same_keyspace(a: Keyspace, b: Keyspace) -> bool {
    std::ptr::eq(a.0, b.0) || a == b
}

impl Storage for MemStorage {
    fn get(&self, keyspace: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        // The newest queued operation that touches `key` decides.
        for op in self.unsynced_ops(keyspace).rev() {
            match op {
                WriteOp::Put { key: k, value, .. } if k.as_slice() == key => {
                    return Ok(Some(value.clone()))
                }
                WriteOp::Delete { key: k, .. } if k.as_slice() == key => return Ok(None),
                WriteOp::DeleteRange { start, end, .. }
                    if start.as_slice() <= key && key < end.as_slice() =>
                {
                    return Ok(None)
                }
                _ => {}
            }
        }
        Ok(self
            .durable
            .get(keyspace)
            .and_then(|space| space.get(key))
            .cloned())
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
        let Some(space) = self.durable.get(keyspace) else {
            return Ok(self.scan_unsynced_over(&Space::default(), keyspace, start, end, limit));
        };
        if self.unsynced_ops(keyspace).next().is_none() {
            return Ok(space
                .range(start, end)
                .iter()
                .take(limit)
                .cloned()
                .collect());
        }
        Ok(self.scan_unsynced_over(space, keyspace, start, end, limit))
    }

    fn write(&mut self, batch: WriteBatch) -> Result<(), StorageError> {
        self.unsynced.push(batch);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        for batch in self.unsynced.drain(..) {
            self.durable.apply_owned(batch);
        }
        self.syncs_total += 1;
        Ok(())
    }
}

impl MemStorage {
    /// A scan while batches are queued: the range of `space` with the
    /// queued operations laid over it. Costs the size of the range, which is
    /// fine for recovery and tests, the only readers.
    fn scan_unsynced_over(
        &self,
        space: &Space,
        keyspace: Keyspace,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Pairs {
        let mut view = Space {
            pairs: space.range(start, end).to_vec(),
        };
        let inside = |key: &[u8]| start <= key && key < end;
        for op in self.unsynced_ops(keyspace) {
            match op {
                WriteOp::Put { key, value, .. } if inside(key) => {
                    view.insert(key.clone(), value.clone());
                }
                WriteOp::Delete { key, .. } => {
                    view.remove(key);
                }
                WriteOp::DeleteRange {
                    start: from,
                    end: to,
                    ..
                } => view.delete_range(from, to),
                _ => {}
            }
        }
        let mut pairs = view.pairs;
        pairs.truncate(limit);
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

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

    /// The obvious implementation: every batch applied to what readers see
    /// at once, and to what survives a crash at the sync.
    #[derive(Default)]
    struct Reference {
        visible: BTreeMap<(Keyspace, Vec<u8>), Vec<u8>>,
        durable: BTreeMap<(Keyspace, Vec<u8>), Vec<u8>>,
        unsynced: Vec<WriteBatch>,
    }

    fn reference_apply(map: &mut BTreeMap<(Keyspace, Vec<u8>), Vec<u8>>, batch: &WriteBatch) {
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
                    map.retain(|(k, key), _| !(k == keyspace && start <= key && key < end));
                }
            }
        }
    }

    /// The same answers as the obvious implementation after any sequence of
    /// writes, syncs and crashes, reads included.
    #[test]
    fn same_answers_as_the_obvious_implementation() {
        let spaces = [KS, Keyspace("other")];
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        let mut store = MemStorage::new();
        let mut reference = Reference::default();
        for step in 0..3_000 {
            let mut batch = WriteBatch::new();
            for _ in 0..next(4) {
                let keyspace = spaces[next(2) as usize];
                match next(10) {
                    0..=5 => batch.put(keyspace, vec![next(16) as u8], vec![next(256) as u8]),
                    6..=8 => batch.delete(keyspace, vec![next(16) as u8]),
                    _ => batch.delete_range(keyspace, vec![next(16) as u8], vec![next(16) as u8]),
                }
            }
            reference_apply(&mut reference.visible, &batch);
            reference.unsynced.push(batch.clone());
            store.write(batch).unwrap();
            match next(8) {
                0 | 1 => {
                    for batch in reference.unsynced.drain(..) {
                        reference_apply(&mut reference.durable, &batch);
                    }
                    store.sync().unwrap();
                }
                2 => {
                    reference.visible = reference.durable.clone();
                    reference.unsynced.clear();
                    store.crash();
                }
                _ => {}
            }
            assert_eq!(store.unsynced_batches(), reference.unsynced.len());
            for keyspace in spaces {
                let key = [next(16) as u8];
                assert_eq!(
                    store.get(keyspace, &key).unwrap(),
                    reference.visible.get(&(keyspace, key.to_vec())).cloned(),
                    "step {step}: get {key:?}"
                );
                let (start, end, limit) = (next(17) as u8, next(17) as u8, next(20) as usize);
                let expected: Pairs = reference
                    .visible
                    .iter()
                    .filter(|((k, key), _)| {
                        *k == keyspace
                            && key.as_slice() >= [start].as_slice()
                            && key.as_slice() < [end].as_slice()
                    })
                    .take(limit)
                    .map(|((_, key), value)| (key.clone(), value.clone()))
                    .collect();
                assert_eq!(
                    store.scan(keyspace, &[start], &[end], limit).unwrap(),
                    expected,
                    "step {step}: scan {start}..{end} limit {limit}"
                );
            }
        }
    }
}
