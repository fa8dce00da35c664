//! One replica's state for one key of an ap bucket: a dotted version vector
//! set (siblings mode) or a last-write-wins register (lww mode). `None`
//! values are tombstones.

use crate::api::{Context, SessionVersion};
use crate::dvv::DvvSet;
use crate::hlc::{Hlc, Lww};
use capkv_core::StableHasher;
use serde::{Deserialize, Serialize};

/// A key's replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Object {
    /// Siblings mode.
    Siblings(DvvSet<Vec<u8>>),
    /// Lww mode; `value: None` is a tombstone.
    Lww(Lww<Option<Vec<u8>>>),
}

impl Object {
    /// Joins `other` into this state; returns whether anything changed.
    /// Commutative, associative and idempotent for objects of one kind. An
    /// object of the other kind (a bucket's mode never changes, so only a
    /// faulty peer sends one) is ignored.
    pub fn merge_from(&mut self, other: &Object) -> bool {
        match (self, other) {
            (Object::Siblings(mine), Object::Siblings(theirs)) => mine.merge_from(theirs),
            (Object::Lww(mine), Object::Lww(theirs)) => {
                if mine.version() == theirs.version() {
                    // One coordinator never issues a timestamp twice, so
                    // equal versions are one write; a peer that says
                    // otherwise is faulty and the larger bytes win, the same
                    // way on every replica.
                    if theirs.value > mine.value {
                        mine.value = theirs.value.clone();
                        return true;
                    }
                    return false;
                }
                mine.merge(theirs.clone())
            }
            _ => false,
        }
    }

    /// Whether a peer's object obeys the rules (siblings covered by their
    /// context); others are dropped unmerged.
    pub fn is_well_formed(&self) -> bool {
        match self {
            Object::Siblings(set) => set.is_well_formed(),
            Object::Lww(_) => true,
        }
    }

    /// The live values, in a fixed order (dot order, or the one lww value).
    pub fn values(&self) -> Vec<Vec<u8>> {
        match self {
            Object::Siblings(set) => set.values().into_iter().cloned().collect(),
            Object::Lww(register) => register.value.iter().cloned().collect(),
        }
    }

    /// Whether the key reads as deleted (only tombstones).
    pub fn is_tombstone(&self) -> bool {
        match self {
            Object::Siblings(set) => set.is_tombstone(),
            Object::Lww(register) => register.value.is_none(),
        }
    }

    /// The causal context a reader of this state gets.
    pub fn context(&self) -> Context {
        match self {
            Object::Siblings(set) => Context {
                vv: set.context().clone(),
                hlc: Hlc::default(),
                node: capkv_core::NodeId(0),
            },
            Object::Lww(register) => Context {
                vv: Default::default(),
                hlc: register.timestamp,
                node: register.node,
            },
        }
    }

    /// Whether this state includes the write `version` names, or a write
    /// that came after it.
    pub fn covers(&self, version: SessionVersion) -> bool {
        match (self, version) {
            (Object::Siblings(set), SessionVersion::Dot(dot)) => set.context().covers(dot),
            (Object::Lww(register), SessionVersion::Lww(timestamp, node)) => {
                register.version() >= (timestamp, node)
            }
            _ => false,
        }
    }

    /// The lww timestamp, if any (a clock moves past it on receipt).
    pub fn timestamp(&self) -> Option<Hlc> {
        match self {
            Object::Siblings(_) => None,
            Object::Lww(register) => Some(register.timestamp),
        }
    }

    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("objects serialise")
    }

    /// The size of [`Object::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(usize::MAX)
    }

    /// A stable digest of the state, equal on two replicas that hold equal
    /// states (every part is canonical: sorted maps, canonical vectors).
    pub fn digest(&self) -> u64 {
        StableHasher::hash_bytes(&self.encode())
    }
}

/// Joins a list of replica answers (`None` = the replica has nothing).
pub fn merge_all<'a>(objects: impl IntoIterator<Item = &'a Object>) -> Option<Object> {
    let mut merged: Option<Object> = None;
    for object in objects {
        match &mut merged {
            None => merged = Some(object.clone()),
            Some(merged) => {
                merged.merge_from(object);
            }
        }
    }
    merged
}
