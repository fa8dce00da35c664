//! The stale-read checker: a node holds every write made through it.
//!
//! A stale read is served from one node's applied state, which may lag the
//! leader's, so it is not linearizable and stays out of the history that
//! `capkv-check` searches. What it must still do, within one life of the
//! node that answers it:
//!
//! 1. Read your writes through a node. Once node N answered a client's
//!    write of key k OK, a stale read of k at N returns a version at least
//!    the write's index; or the key absent, if a delete of k committed at
//!    or above that index. (A delete's answer carries no index: its entry
//!    lies above what was committed when it was sent, and the first delete
//!    of k committed there is a lower bound of its index.)
//! 2. No phantoms. A value returned at version v is what the entry
//!    committed at index v wrote to k: the entry's hash, as the Raft
//!    checker saw it applied, is the hash of a client's put or cas of that
//!    value to k.
//!
//! A crash ends a life: a restarted node applies its log again from its
//! snapshot and may answer from an older state until it catches up, so rule
//! 1 does not cross a restart. Rule 2 holds in every life.
//!
//! What it does not check: that a stale read sees writes made through other
//! nodes (it need not), or that an absent answer is justified when the
//! client has no acknowledged write through that node.

use crate::invariants::RaftInvariants;
use crate::workload::{command_hash, command_of, written_value, StaleRead, WriteEffect, BUCKET};
use capkv_check::{Event, EventType};
use capkv_core::LogIndex;
use capkv_node::Command;
use serde_json::Value;
use std::collections::BTreeMap;

/// Checks every stale read of a run against the writes of `history` and
/// the commands `committed` saw applied. `Ok` describes what was checked;
/// `Err` names the first broken read and how many there were.
pub(crate) fn check(
    reads: &[StaleRead],
    history: &[Event],
    committed: &RaftInvariants,
) -> Result<String, String> {
    let facts = Facts::gather(reads, history, committed);
    let mut broken = Vec::new();
    let mut read_backs = 0u64;
    for read in reads {
        if read.last_write.is_some_and(|write| write.life == read.life) {
            read_backs += 1;
        }
        if let Err(detail) = facts.judge(read) {
            broken.push(detail);
        }
    }
    match broken.first() {
        None => Ok(format!(
            "stale reads ok ({} reads, {read_backs} after a write through the same node)",
            reads.len()
        )),
        Some(first) => Err(format!(
            "{} of {} stale reads broken; first: {first}",
            broken.len(),
            reads.len()
        )),
    }
}

/// What the checker knows of the run's writes.
struct Facts<'a> {
    committed: &'a RaftInvariants,
    /// The command hash of each client write, by key and written value.
    /// Client values are unique, so each (key, value) names one command.
    writes: BTreeMap<(String, String), u64>,
    /// The indexes at which a delete of each key read was applied, in
    /// increasing order.
    deletes: BTreeMap<String, Vec<LogIndex>>,
}

impl<'a> Facts<'a> {
    fn gather(reads: &[StaleRead], history: &[Event], committed: &'a RaftInvariants) -> Facts<'a> {
        let mut writes = BTreeMap::new();
        for event in history {
            if event.kind != EventType::Invoke {
                continue;
            }
            // A delete leaves the key absent: no value to name.
            let Some(written) = written_value(event.f, &event.value).filter(|v| !v.is_null())
            else {
                continue;
            };
            if let Some(command) = command_of(event.f, &event.key, &event.value) {
                writes.insert(
                    (event.key.clone(), written.to_string()),
                    command_hash(&command),
                );
            }
        }
        // One pass over the committed log finds the deletes of every key read.
        let mut delete_hashes: BTreeMap<u64, String> = BTreeMap::new();
        for read in reads {
            let delete = Command::Delete {
                bucket: BUCKET.into(),
                key: read.key.clone(),
            };
            delete_hashes.insert(command_hash(&delete), read.key.clone());
        }
        let mut deletes: BTreeMap<String, Vec<LogIndex>> = BTreeMap::new();
        let mut index = LogIndex(1);
        while index <= committed.committed_max() {
            if let Some(key) = committed
                .applied_hash(index)
                .and_then(|hash| delete_hashes.get(&hash))
            {
                deletes.entry(key.clone()).or_default().push(index);
            }
            index = index.next();
        }
        Facts {
            committed,
            writes,
            deletes,
        }
    }

    /// The first delete of `key` committed at or above `index`.
    fn delete_from(&self, key: &str, index: LogIndex) -> Option<LogIndex> {
        let indexes = self.deletes.get(key)?;
        let at = indexes.partition_point(|delete| *delete < index);
        indexes.get(at).copied()
    }

    fn judge(&self, read: &StaleRead) -> Result<(), String> {
        if let Some((value, version)) = &read.returned {
            self.no_phantom(read, value, *version)?;
        }
        self.read_your_writes(read)
    }

    /// Rule 2: the entry at the returned version wrote the returned value.
    fn no_phantom(&self, read: &StaleRead, value: &Value, version: u64) -> Result<(), String> {
        let (node, key) = (read.node, &read.key);
        let Some(applied) = self.committed.applied_hash(LogIndex(version)) else {
            return Err(format!(
                "phantom: {node} returned {key} = {value} at version {version}, \
                 but nothing was committed at {version}"
            ));
        };
        match self.writes.get(&(key.clone(), value.to_string())) {
            None => Err(format!(
                "phantom: {node} returned {key} = {value} at version {version}, \
                 a value no client wrote to {key}"
            )),
            Some(hash) if *hash != applied => Err(format!(
                "phantom: {node} returned {key} = {value} at version {version}, \
                 but the entry committed at {version} is not that write"
            )),
            Some(_) => Ok(()),
        }
    }

    /// Rule 1: within the node's life, the read sees the client's last
    /// write through it or a later one.
    fn read_your_writes(&self, read: &StaleRead) -> Result<(), String> {
        let Some(write) = read.last_write.filter(|write| write.life == read.life) else {
            return Ok(());
        };
        let (node, key, client) = (read.node, &read.key, read.client);
        let (index, what) = match write.effect {
            WriteEffect::Written { version } => (
                LogIndex(version),
                format!("client {client}'s write of {key} at {version}"),
            ),
            WriteEffect::Deleted { above } => {
                let index = self.delete_from(key, above.next()).unwrap_or(above.next());
                (
                    index,
                    format!(
                        "client {client}'s delete of {key} (at {} or later)",
                        index.0
                    ),
                )
            }
        };
        match &read.returned {
            Some((value, version)) if *version < index.0 => Err(format!(
                "read-your-writes: {node} (life {}) acknowledged {what}, then answered \
                 its stale read of {key} with the older {value} at version {version}",
                read.life
            )),
            None if self.delete_from(key, index).is_none() => Err(format!(
                "read-your-writes: {node} (life {}) acknowledged {what}, then answered \
                 its stale read of {key} with absent, and no delete of {key} committed \
                 at {} or later",
                read.life, index.0
            )),
            _ => Ok(()),
        }
    }
}

/// The value a write or cas invoke writes.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::AcknowledgedWrite;
    use capkv_check::OpKind;
    use capkv_core::{NodeId, Term};

    /// The history invoke of client `process`'s put of `value` to `key`.
    fn put(key: &str, value: u64) -> Event {
        Event {
            process: 0,
            kind: EventType::Invoke,
            f: OpKind::Write,
            key: key.into(),
            value: Value::from(value),
        }
    }

    fn hash_of(f: OpKind, key: &str, value: Value) -> u64 {
        let command = command_of(f, key, &value).expect("a write");
        command_hash(&command)
    }

    /// A log where index 1 puts 7 to k, index 2 puts 8 to k, index 3 deletes
    /// k, and a history that holds both puts.
    fn committed_log() -> (RaftInvariants, Vec<Event>) {
        let mut committed = RaftInvariants::new();
        let entries = [
            hash_of(OpKind::Write, "k", Value::from(7)),
            hash_of(OpKind::Write, "k", Value::from(8)),
            hash_of(OpKind::Delete, "k", Value::Null),
        ];
        for (index, hash) in entries.iter().enumerate() {
            let index = LogIndex(index as u64 + 1);
            committed
                .on_apply(NodeId(1), index, Term(1), *hash)
                .expect("one command per index");
        }
        (committed, vec![put("k", 7), put("k", 8)])
    }

    fn read(returned: Option<(u64, u64)>, effect: WriteEffect, write_life: u64) -> StaleRead {
        StaleRead {
            client: 0,
            node: NodeId(2),
            life: 0,
            key: "k".into(),
            returned: returned.map(|(value, version)| (Value::from(value), version)),
            last_write: Some(AcknowledgedWrite {
                life: write_life,
                effect,
            }),
        }
    }

    const WROTE_8: WriteEffect = WriteEffect::Written { version: 2 };

    #[test]
    fn a_read_back_that_sees_the_write_or_a_later_one_passes() {
        let (committed, history) = committed_log();
        let reads = [
            read(Some((8, 2)), WROTE_8, 0),
            // Absent, justified by the delete at 3.
            read(None, WROTE_8, 0),
            // The client's own delete, sent when 2 was committed.
            read(None, WriteEffect::Deleted { above: LogIndex(2) }, 0),
            // An older version after a restart: the promise ended with
            // the life that acknowledged the write.
            read(Some((7, 1)), WROTE_8, 1),
        ];
        let verdict = check(&reads, &history, &committed);
        assert!(verdict.is_ok(), "{verdict:?}");
    }

    #[test]
    fn a_read_back_that_returns_an_older_version_is_rejected() {
        let (committed, history) = committed_log();
        let reads = [read(Some((7, 1)), WROTE_8, 0)];
        let verdict = check(&reads, &history, &committed);
        let Err(detail) = verdict else {
            panic!("a node answered older than a write it acknowledged: {verdict:?}");
        };
        assert!(detail.contains("read-your-writes"), "{detail}");
    }

    #[test]
    fn a_read_back_that_misses_a_delete_is_rejected() {
        let (committed, history) = committed_log();
        let deleted = WriteEffect::Deleted { above: LogIndex(2) };
        let reads = [read(Some((8, 2)), deleted, 0)];
        let verdict = check(&reads, &history, &committed);
        assert!(verdict.is_err(), "{verdict:?}");
    }

    #[test]
    fn an_absent_answer_with_no_delete_after_the_write_is_rejected() {
        let (mut committed, history) = committed_log();
        // A later put at 4: the write read back is at 4, no delete follows.
        committed
            .on_apply(
                NodeId(1),
                LogIndex(4),
                Term(1),
                hash_of(OpKind::Write, "k", Value::from(9)),
            )
            .expect("one command per index");
        let reads = [read(None, WriteEffect::Written { version: 4 }, 0)];
        let verdict = check(&reads, &history, &committed);
        assert!(verdict.is_err(), "{verdict:?}");
    }

    #[test]
    fn a_phantom_version_is_rejected() {
        let (committed, history) = committed_log();
        // 8 was written at 2, not at 1; nothing was committed at 9; and no
        // client ever wrote 5.
        for phantom in [(8, 1), (8, 9), (5, 2)] {
            let mut reading = read(Some(phantom), WROTE_8, 1);
            reading.last_write = None;
            let verdict = check(&[reading], &history, &committed);
            let Err(detail) = verdict else {
                panic!("phantom {phantom:?} passed: {verdict:?}");
            };
            assert!(detail.contains("phantom"), "{detail}");
        }
    }
}
