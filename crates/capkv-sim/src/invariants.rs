//! Raft's safety properties (figure 3 of the paper), checked after every
//! step of every node.

use capkv_core::{LogIndex, NodeId, StableHasher, Term};
use capkv_raft::Raft;
use std::collections::BTreeMap;

/// A broken safety property, with what proves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which property.
    pub property: &'static str,
    /// What was seen.
    pub detail: String,
}

/// An entry as a log holds it: its term, the hash of its command, and the
/// term of the entry before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EntrySeen {
    term: Term,
    data_hash: u64,
    prev_term: Term,
}

/// Everything the checker has learned from all nodes so far.
///
/// Log indexes are dense from 1, and every node reports every index, so the
/// per-index facts live in vectors indexed by log index: these checks run
/// after every step, and a vector slot costs far less than a tree search.
#[derive(Debug, Default)]
pub struct RaftInvariants {
    /// Election safety: the one leader of each term.
    leaders: BTreeMap<Term, NodeId>,
    /// Log matching: per index, the first entry seen there in any log. Two
    /// logs that hold the same (index, term) must agree on the command and
    /// the previous term, and by induction on the whole prefix.
    entries: Vec<Option<EntrySeen>>,
    /// Log matching for the rarer entries whose (index, term) differs from
    /// the first one seen at their index (uncommitted entries that a later
    /// leader overwrote): (index, term) to (command hash, previous term).
    entries_other_terms: BTreeMap<(LogIndex, Term), (u64, Term)>,
    /// State machine safety: per index, what was applied there, anywhere.
    applied: Vec<Option<(Term, u64)>>,
    /// Highest index applied anywhere (hence committed).
    committed_max: LogIndex,
}

/// The slot of `index` in a vector indexed by log index, grown to hold it.
fn slot<T: Clone>(slots: &mut Vec<Option<T>>, index: LogIndex) -> &mut Option<T> {
    let position = index.0 as usize;
    if position >= slots.len() {
        slots.resize(position + 1, None);
    }
    &mut slots[position]
}

impl RaftInvariants {
    /// A checker that has seen nothing.
    pub fn new() -> RaftInvariants {
        RaftInvariants::default()
    }

    /// Highest index applied anywhere.
    pub fn committed_max(&self) -> LogIndex {
        self.committed_max
    }

    /// The hash of the command applied (hence committed) at `index`, if any
    /// node applied one there.
    pub fn applied_hash(&self, index: LogIndex) -> Option<u64> {
        let position = usize::try_from(index.0).ok()?;
        self.applied
            .get(position)
            .copied()
            .flatten()
            .map(|(_, hash)| hash)
    }

    /// Election safety: at most one leader per term. Leader completeness: a
    /// new leader's log holds every entry committed before its term.
    pub fn on_leader(&mut self, node: NodeId, raft: &Raft) -> Result<(), Violation> {
        let term = raft.term();
        match self.leaders.get(&term) {
            Some(other) if *other != node => {
                return Err(Violation {
                    property: "election safety",
                    detail: format!("two leaders in {term}: {other} and {node}"),
                })
            }
            _ => {
                self.leaders.insert(term, node);
            }
        }
        // The latest entry committed in an earlier term. (A delayed vote can
        // make a node leader of an old term after a later leader committed
        // entries; those it need not hold.) Terms only grow with the index,
        // so the first match from the top is the one.
        let Some((committed, committed_term)) =
            self.applied
                .iter()
                .enumerate()
                .rev()
                .find_map(|(index, applied)| match applied {
                    Some((entry_term, _)) if *entry_term < term => {
                        Some((LogIndex(index as u64), *entry_term))
                    }
                    _ => None,
                })
        else {
            return Ok(());
        };
        let log = raft.log();
        let holds = if committed <= log.snapshot_index() {
            true
        } else {
            log.term(committed) == Some(committed_term)
        };
        if !holds {
            return Err(Violation {
                property: "leader completeness",
                detail: format!(
                    "{node} became leader of {term} without committed entry {committed} ({committed_term}); its log ends at {} ({})",
                    log.last_index(),
                    log.last_term()
                ),
            });
        }
        Ok(())
    }

    /// Log matching, for entries `first..=last` just appended by `node`.
    pub fn on_append(
        &mut self,
        node: NodeId,
        raft: &Raft,
        first: LogIndex,
        last: LogIndex,
    ) -> Result<(), Violation> {
        let log = raft.log();
        let mut index = first.max(log.first_index());
        while index <= last.min(log.last_index()) {
            let Some(entry) = log.entry(index) else {
                break;
            };
            let prev_term = log.term(index.prev()).unwrap_or(Term(0));
            let data_hash = StableHasher::hash_bytes(&entry.data);
            let seen = self.entry_seen(index, entry.term, data_hash, prev_term);
            if seen != (data_hash, prev_term) {
                return Err(Violation {
                    property: "log matching",
                    detail: format!(
                        "{node} holds entry {index} of {} with command {data_hash:x} after a {prev_term} entry; another log holds command {:x} after a {} entry",
                        entry.term, seen.0, seen.1
                    ),
                });
            }
            index = index.next();
        }
        Ok(())
    }

    /// The (command hash, previous term) first seen for (`index`, `term`),
    /// recording the given ones if this is the first time.
    fn entry_seen(
        &mut self,
        index: LogIndex,
        term: Term,
        data_hash: u64,
        prev_term: Term,
    ) -> (u64, Term) {
        let first = slot(&mut self.entries, index).get_or_insert(EntrySeen {
            term,
            data_hash,
            prev_term,
        });
        if first.term == term {
            return (first.data_hash, first.prev_term);
        }
        *self
            .entries_other_terms
            .entry((index, term))
            .or_insert((data_hash, prev_term))
    }

    /// State machine safety: no two nodes apply different commands at one
    /// index.
    pub fn on_apply(
        &mut self,
        node: NodeId,
        index: LogIndex,
        term: Term,
        data_hash: u64,
    ) -> Result<(), Violation> {
        let seen = slot(&mut self.applied, index).get_or_insert((term, data_hash));
        if *seen != (term, data_hash) {
            return Err(Violation {
                property: "state machine safety",
                detail: format!(
                    "{node} applied {:x} ({term}) at {index}, another node applied {:x} ({})",
                    data_hash, seen.1, seen.0
                ),
            });
        }
        self.committed_max = self.committed_max.max(index);
        Ok(())
    }
}
