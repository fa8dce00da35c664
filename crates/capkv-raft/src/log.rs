use crate::message::{Entry, Snapshot, SnapshotMeta};
use capkv_core::{LogIndex, Term};

/// The in-memory Raft log: a snapshot followed by the entries after it.
///
/// The log is held whole in memory between compactions; the driver persists
/// what [`crate::Ready`] hands it and compacts by taking snapshots, which
/// bounds the memory this takes.
#[derive(Clone, Debug)]
pub struct RaftLog {
    /// The latest snapshot: everything up to `snapshot.meta.index` is in it.
    snapshot: Snapshot,
    /// Entries `snapshot.meta.index + 1 ..= last_index()`, in order.
    entries: Vec<Entry>,
    /// Highest index known to be committed.
    pub(crate) committed: LogIndex,
    /// Highest index handed to the application to apply.
    pub(crate) applied: LogIndex,
    /// Highest index the driver has made durable (entries after it are
    /// "unstable" and will be in the next `Ready`).
    pub(crate) stable: LogIndex,
    /// A snapshot received from the leader that the driver has not yet
    /// persisted and installed.
    pub(crate) pending_snapshot: bool,
}

impl RaftLog {
    /// A log restored from durable state: `snapshot` plus the entries after it.
    pub fn restore(snapshot: Snapshot, entries: Vec<Entry>, committed: LogIndex) -> RaftLog {
        let first = snapshot.meta.index.next();
        for (offset, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index.0,
                first.0 + offset as u64,
                "restored log is not contiguous after the snapshot"
            );
        }
        let last = LogIndex(snapshot.meta.index.0 + entries.len() as u64);
        let applied = snapshot.meta.index;
        RaftLog {
            snapshot,
            entries,
            committed: committed.min(last).max(applied),
            applied,
            stable: last,
            pending_snapshot: false,
        }
    }

    /// Index of the snapshot (0 when there is none).
    pub fn snapshot_index(&self) -> LogIndex {
        self.snapshot.meta.index
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// First index still held as an entry.
    pub fn first_index(&self) -> LogIndex {
        self.snapshot.meta.index.next()
    }

    /// Last index of the log (the snapshot's when there are no entries).
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.snapshot.meta.index.0 + self.entries.len() as u64)
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> Term {
        self.entries
            .last()
            .map_or(self.snapshot.meta.term, |entry| entry.term)
    }

    /// Term of the entry at `index`: `None` when it was compacted away or is
    /// beyond the end. Index 0 has term 0.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot.meta.index {
            return Some(self.snapshot.meta.term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.snapshot.meta.index {
            return None;
        }
        let offset = (index.0 - self.snapshot.meta.index.0 - 1) as usize;
        self.entries.get(offset)
    }

    /// True when the log holds an entry at `index` with `term`.
    pub fn matches(&self, index: LogIndex, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// §5.4.1: a log is at least as up to date as ours when its last term is
    /// higher, or equal with an index at least as high.
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Entries `from..` with at most `count_max` entries and about
    /// `bytes_max` bytes (always at least one entry when any is available).
    /// `None` when `from` was compacted away.
    pub fn slice(&self, from: LogIndex, count_max: usize, bytes_max: usize) -> Option<Vec<Entry>> {
        if from < self.first_index() {
            return None;
        }
        let start = (from.0 - self.first_index().0) as usize;
        let available = self.entries.get(start..).unwrap_or_default();
        // Counting first lets the copy allocate once, at the exact size: this
        // runs for every append to every follower.
        let mut count = 0;
        let mut bytes = 0;
        for entry in available.iter().take(count_max) {
            bytes += entry.size_bytes();
            if count > 0 && bytes > bytes_max {
                break;
            }
            count += 1;
        }
        Some(available[..count].to_vec())
    }

    /// Entries `from..=to` (both must be held).
    pub fn range(&self, from: LogIndex, to: LogIndex) -> Vec<Entry> {
        let mut entries = Vec::new();
        self.clone_range_into(from, to, &mut entries);
        entries
    }

    /// Copies entries `from..=to` (both must be held) into `out`, replacing
    /// what it held. `Raft::ready` fills the vectors of the previous `Ready`
    /// this way instead of allocating new ones each round.
    pub(crate) fn clone_range_into(&self, from: LogIndex, to: LogIndex, out: &mut Vec<Entry>) {
        if to < from {
            out.clear();
            return;
        }
        assert!(
            from >= self.first_index() && to <= self.last_index(),
            "log range {from}..={to} outside {}..={}",
            self.first_index(),
            self.last_index()
        );
        let start = (from.0 - self.first_index().0) as usize;
        let end = (to.0 - self.first_index().0) as usize;
        let source = &self.entries[start..=end];
        out.clear();
        out.extend_from_slice(source);
    }

    /// Appends a leader's own new entry.
    pub fn push(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index().next(), "leader log gap");
        self.entries.push(entry);
    }

    /// Follower append after `prev_index` matched: skips entries it already
    /// has, truncates at the first conflict (§5.3 step 3) and appends the rest.
    /// Returns the index of the last entry of `entries`.
    pub fn append_after(&mut self, prev_index: LogIndex, entries: Vec<Entry>) -> LogIndex {
        let last_new = LogIndex(prev_index.0 + entries.len() as u64);
        for entry in entries {
            if entry.index <= self.snapshot.meta.index {
                // Already covered by our snapshot, hence committed and equal.
                continue;
            }
            match self.term(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    assert!(
                        entry.index > self.committed,
                        "raft: conflict at committed index {} (committed {})",
                        entry.index,
                        self.committed
                    );
                    self.truncate_from(entry.index);
                    self.entries.push(entry);
                }
                None => {
                    assert_eq!(entry.index, self.last_index().next(), "append gap");
                    self.entries.push(entry);
                }
            }
        }
        last_new
    }

    fn truncate_from(&mut self, index: LogIndex) {
        let keep = (index.0 - self.first_index().0) as usize;
        self.entries.truncate(keep);
        self.stable = self.stable.min(index.prev());
    }

    /// Marks everything up to `index` committed. Commit never goes backwards.
    pub fn commit_to(&mut self, index: LogIndex) -> bool {
        if index <= self.committed {
            return false;
        }
        assert!(
            index <= self.last_index(),
            "raft: commit {index} beyond last index {}",
            self.last_index()
        );
        self.committed = index;
        true
    }

    /// Replaces the whole log with a snapshot from the leader.
    pub fn install_snapshot(&mut self, snapshot: Snapshot) {
        let meta = snapshot.meta;
        self.snapshot = snapshot;
        self.entries.clear();
        self.committed = meta.index;
        self.applied = meta.index;
        self.stable = meta.index;
        self.pending_snapshot = true;
    }

    /// Compacts the log up to a snapshot the application took at an index it
    /// has applied. Entries after it stay.
    pub fn compact(&mut self, snapshot: Snapshot) {
        let meta: SnapshotMeta = snapshot.meta;
        assert!(
            meta.index <= self.applied,
            "raft: snapshot at {} beyond applied {}",
            meta.index,
            self.applied
        );
        if meta.index <= self.snapshot.meta.index {
            return;
        }
        assert_eq!(
            self.term(meta.index),
            Some(meta.term),
            "raft: snapshot term does not match the log"
        );
        let drop = (meta.index.0 - self.snapshot.meta.index.0) as usize;
        self.entries.drain(..drop);
        self.snapshot = snapshot;
    }

    /// Copies the entries not yet handed to the driver for persistence into
    /// `out`, replacing what it held (see [`RaftLog::clone_range_into`]).
    pub(crate) fn clone_unstable_entries_into(&self, out: &mut Vec<Entry>) {
        if self.stable >= self.last_index() {
            out.clear();
            return;
        }
        self.clone_range_into(self.stable.next(), self.last_index(), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::EntryKind;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            kind: EntryKind::Normal,
            data: vec![index as u8],
        }
    }

    #[test]
    fn append_truncates_at_first_conflict_only() {
        let mut log = RaftLog::restore(
            Snapshot::default(),
            vec![entry(1, 1), entry(2, 1), entry(3, 1)],
            LogIndex(1),
        );
        // A stale duplicate of entry 2 changes nothing (§5.3: "if an existing
        // entry conflicts ... delete it and all that follow", no conflict here).
        log.append_after(LogIndex(1), vec![entry(2, 1)]);
        assert_eq!(log.last_index(), LogIndex(3));
        log.append_after(LogIndex(1), vec![entry(2, 2)]);
        assert_eq!(log.last_index(), LogIndex(2));
        assert_eq!(log.term(LogIndex(2)), Some(Term(2)));
        assert_eq!(log.stable, LogIndex(1));
    }

    #[test]
    fn compaction_keeps_later_entries() {
        let mut log = RaftLog::restore(
            Snapshot::default(),
            vec![entry(1, 1), entry(2, 1), entry(3, 2)],
            LogIndex(3),
        );
        log.applied = LogIndex(2);
        log.compact(Snapshot {
            meta: SnapshotMeta {
                index: LogIndex(2),
                term: Term(1),
            },
            data: vec![],
        });
        assert_eq!(log.first_index(), LogIndex(3));
        assert_eq!(log.term(LogIndex(2)), Some(Term(1)));
        assert_eq!(log.term(LogIndex(1)), None);
        assert!(log.slice(LogIndex(1), 10, 1000).is_none());
        assert_eq!(log.slice(LogIndex(3), 10, 1000).map(|v| v.len()), Some(1));
    }

    #[test]
    fn up_to_date_rule() {
        let log = RaftLog::restore(
            Snapshot::default(),
            vec![entry(1, 1), entry(2, 3)],
            LogIndex(0),
        );
        assert!(log.is_up_to_date(LogIndex(1), Term(4)));
        assert!(log.is_up_to_date(LogIndex(2), Term(3)));
        assert!(!log.is_up_to_date(LogIndex(5), Term(2)));
        assert!(!log.is_up_to_date(LogIndex(1), Term(3)));
    }
}
