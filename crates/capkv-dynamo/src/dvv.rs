//! Dotted version vector sets: sibling tracking for ap buckets in "siblings"
//! mode (Preguiça, Baquero, Almeida, Fonte, Gonçalves, "Dotted Version
//! Vectors: Logical Clocks for Optimistic Replication", 2010/2012; the
//! representation Riak uses since 2.0 as `dvvset`).
//!
//! What it is: the per-key state of one replica, [`DvvSet`]. It holds a
//! causal *context* (a [`VersionVector`]: every update this replica has seen,
//! whether or not its value survives) and the concurrent values (*siblings*),
//! each tagged with the [`Dot`] — (coordinator, counter) — of the write that
//! created it.
//!
//! Why dots: with plain version vectors keyed by server, two clients writing
//! through the same server look ordered when they are concurrent (a lost
//! update), and with vectors keyed by client the vectors grow without bound.
//! A dot names exactly one write, so a write that carries the context a
//! client read supersedes exactly the siblings that client saw, and nothing
//! else. Siblings therefore never exceed the number of truly concurrent
//! writes: no "sibling explosion".
//!
//! Rules, as the code implements them:
//!
//! 1. A coordinator's write with client context `C` removes every sibling
//!    whose dot `C` covers, takes the dot (coordinator, n + 1) where n is the
//!    larger of the replica's and `C`'s counter for the coordinator, and joins
//!    `C` and the new dot into the replica's context.
//! 2. [`DvvSet::sync`] keeps a sibling if both sides hold it or the other
//!    side's context does not cover its dot; the contexts join. This is a
//!    join-semilattice: commutative, associative and idempotent.
//! 3. A delete is a write of a tombstone; it supersedes what its context
//!    covers like any write, and a concurrent write survives it.
//! 4. Every sibling's dot is covered by the context (asserted).
//!
//! The context a reader gets is encoded by [`VersionVector::encode`] as an
//! opaque URL-safe string (base64url of a compact varint encoding) and
//! decoded with limits by [`VersionVector::decode`].
//!
//! What it does not do: no tombstone garbage collection (that needs to know
//! every replica has the tombstone), no pruning of the context, no per-client
//! session tokens.

use capkv_core::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One write's identity: the coordinator that accepted it and that
/// coordinator's counter for the key. Counters start at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The replica that coordinated the write.
    pub node: NodeId,
    /// The coordinator's per-key event counter; 1 for its first write.
    pub counter: u64,
}

/// A version vector: for each node, the highest counter of its writes that
/// have been seen. Entries are never zero (absent means zero), so two equal
/// histories always compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BTreeMap<NodeId, u64>", into = "BTreeMap<NodeId, u64>")]
pub struct VersionVector {
    /// Highest counter seen per node; no zero values.
    counters: BTreeMap<NodeId, u64>,
}

/// The largest number of entries an encoded context may carry: one per node,
/// and a ring holds at most [`crate::ring::NODES_MAX`] nodes.
pub const CONTEXT_ENTRIES_MAX: usize = crate::ring::NODES_MAX;

/// The longest encoded context accepted, in characters. Each entry takes at
/// most 20 bytes (two 10-byte varints), plus a version byte and a count.
pub const CONTEXT_ENCODED_CHARS_MAX: usize = (12 + CONTEXT_ENTRIES_MAX * 20) * 4 / 3 + 4;

/// The version byte that starts every encoded context, so the format can
/// change without old contexts being misread.
const CONTEXT_FORMAT_VERSION: u8 = 1;

/// Why an opaque context string was refused. It comes from a client, so
/// every malformed input is an error, never a panic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// Longer than [`CONTEXT_ENCODED_CHARS_MAX`].
    #[error("context is {got} characters, at most {max} are accepted")]
    TooLong {
        /// Length of the rejected string.
        got: usize,
        /// [`CONTEXT_ENCODED_CHARS_MAX`].
        max: usize,
    },
    /// Not canonical unpadded base64url.
    #[error("context is not valid base64url")]
    InvalidBase64,
    /// The first byte names a format this version does not know.
    #[error("context format {0} is not supported")]
    UnknownFormat(u8),
    /// The bytes end in the middle of a number.
    #[error("context is truncated")]
    Truncated,
    /// A number does not fit in 64 bits.
    #[error("context holds a number that overflows 64 bits")]
    Overflow,
    /// More than [`CONTEXT_ENTRIES_MAX`] entries.
    #[error("context holds {got} entries, at most {max} are accepted")]
    TooManyEntries {
        /// The entry count the context claims.
        got: u64,
        /// [`CONTEXT_ENTRIES_MAX`].
        max: usize,
    },
    /// Node ids not strictly increasing, or a zero counter.
    #[error("context is not in canonical form")]
    NotCanonical,
    /// Bytes left over after the last entry.
    #[error("context has trailing bytes")]
    TrailingBytes,
}

impl TryFrom<BTreeMap<NodeId, u64>> for VersionVector {
    type Error = ContextError;

    fn try_from(counters: BTreeMap<NodeId, u64>) -> Result<Self, Self::Error> {
        if counters.values().any(|counter| *counter == 0) {
            return Err(ContextError::NotCanonical);
        }
        Ok(VersionVector { counters })
    }
}

impl From<VersionVector> for BTreeMap<NodeId, u64> {
    fn from(vector: VersionVector) -> Self {
        vector.counters
    }
}

impl VersionVector {
    /// The empty vector: has seen nothing. A write with this context
    /// supersedes nothing.
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// The highest counter of `node` seen; 0 if none.
    pub fn get(&self, node: NodeId) -> u64 {
        self.counters.get(&node).copied().unwrap_or(0)
    }

    /// Whether the write `dot` is part of this history.
    pub fn covers(&self, dot: Dot) -> bool {
        dot.counter <= self.get(dot.node)
    }

    /// Whether this history includes all of `other` (pointwise ≥). Every
    /// vector descends from itself.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other
            .counters
            .iter()
            .all(|(node, counter)| self.get(*node) >= *counter)
    }

    /// Whether this history strictly includes `other`: descends and differs.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        self != other && self.descends(other)
    }

    /// Whether neither history includes the other.
    pub fn concurrent_with(&self, other: &VersionVector) -> bool {
        !self.descends(other) && !other.descends(self)
    }

    /// Joins `other` into this vector (pointwise maximum).
    pub fn merge(&mut self, other: &VersionVector) {
        for (node, counter) in &other.counters {
            self.record(Dot {
                node: *node,
                counter: *counter,
            });
        }
    }

    /// Adds one write to the history (raises its node's counter to it).
    pub fn record(&mut self, dot: Dot) {
        if dot.counter == 0 {
            return;
        }
        let entry = self.counters.entry(dot.node).or_insert(0);
        *entry = (*entry).max(dot.counter);
    }

    /// The (node, counter) entries in node order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.counters
            .iter()
            .map(|(node, counter)| (*node, *counter))
    }

    /// How many nodes have an entry.
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// Whether this vector has seen nothing.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// The opaque, URL-safe form handed to clients: base64url (no padding)
    /// of a version byte, an entry count and (node, counter) varint pairs.
    pub fn encode(&self) -> String {
        let mut bytes = vec![CONTEXT_FORMAT_VERSION];
        write_varint(&mut bytes, self.counters.len() as u64);
        for (node, counter) in &self.counters {
            write_varint(&mut bytes, node.0);
            write_varint(&mut bytes, *counter);
        }
        base64url::encode(&bytes)
    }

    /// Parses what [`VersionVector::encode`] produced. Accepts only the
    /// canonical form, within the limits above.
    pub fn decode(text: &str) -> Result<VersionVector, ContextError> {
        if text.len() > CONTEXT_ENCODED_CHARS_MAX {
            return Err(ContextError::TooLong {
                got: text.len(),
                max: CONTEXT_ENCODED_CHARS_MAX,
            });
        }
        let bytes = base64url::decode(text).ok_or(ContextError::InvalidBase64)?;
        let mut reader = bytes.as_slice();
        let version = *reader.first().ok_or(ContextError::Truncated)?;
        if version != CONTEXT_FORMAT_VERSION {
            return Err(ContextError::UnknownFormat(version));
        }
        reader = &reader[1..];
        let count = read_varint(&mut reader)?;
        if count > CONTEXT_ENTRIES_MAX as u64 {
            return Err(ContextError::TooManyEntries {
                got: count,
                max: CONTEXT_ENTRIES_MAX,
            });
        }
        let mut counters = BTreeMap::new();
        let mut previous_node: Option<u64> = None;
        for _ in 0..count {
            let node = read_varint(&mut reader)?;
            let counter = read_varint(&mut reader)?;
            if counter == 0 || previous_node.is_some_and(|previous| previous >= node) {
                return Err(ContextError::NotCanonical);
            }
            previous_node = Some(node);
            counters.insert(NodeId(node), counter);
        }
        if !reader.is_empty() {
            return Err(ContextError::TrailingBytes);
        }
        Ok(VersionVector { counters })
    }
}

/// Appends `value` as an LEB128 varint.
fn write_varint(bytes: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        bytes.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
}

/// Reads one canonical LEB128 varint from the front of `reader`.
fn read_varint(reader: &mut &[u8]) -> Result<u64, ContextError> {
    let mut value: u64 = 0;
    // Ten bytes carry 70 bits, enough for any u64; a longer run is garbage.
    for index in 0..10 {
        let (&byte, rest) = reader.split_first().ok_or(ContextError::Truncated)?;
        *reader = rest;
        let low = u64::from(byte & 0x7f);
        let shift = 7 * index;
        if shift == 63 && low > 1 {
            return Err(ContextError::Overflow);
        }
        value |= low << shift;
        if byte & 0x80 == 0 {
            // A zero final byte after others is a padded, non-canonical form.
            if index > 0 && byte == 0 {
                return Err(ContextError::NotCanonical);
            }
            return Ok(value);
        }
    }
    Err(ContextError::Overflow)
}

/// Base64url without padding (RFC 4648 §5), written out so the crate needs
/// no dependency for twenty lines.
mod base64url {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    /// Encodes `bytes` without padding.
    pub fn encode(bytes: &[u8]) -> String {
        let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let group = chunk.iter().enumerate().fold(0u32, |group, (index, byte)| {
                group | u32::from(*byte) << (16 - 8 * index)
            });
            // n bytes carry 8n bits, which need n + 1 six-bit characters.
            for index in 0..=chunk.len() {
                let sextet = (group >> (18 - 6 * index)) & 0x3f;
                text.push(char::from(ALPHABET[sextet as usize]));
            }
        }
        text
    }

    /// Decodes canonical unpadded base64url; `None` on any other input
    /// (bad characters, impossible length, non-zero trailing bits).
    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let chars = text.as_bytes();
        if chars.len() % 4 == 1 {
            return None;
        }
        let mut bytes = Vec::with_capacity(chars.len() / 4 * 3 + 2);
        for chunk in chars.chunks(4) {
            let mut group = 0u32;
            for (index, char) in chunk.iter().enumerate() {
                let sextet = ALPHABET.iter().position(|letter| letter == char)?;
                group |= (sextet as u32) << (18 - 6 * index);
            }
            let byte_count = chunk.len() - 1;
            let group_bytes = group.to_be_bytes();
            // The bits below the last whole byte must be zero, or two
            // strings would decode to the same bytes.
            if group_bytes[1 + byte_count..].iter().any(|byte| *byte != 0) {
                return None;
            }
            bytes.extend_from_slice(&group_bytes[1..1 + byte_count]);
        }
        Some(bytes)
    }
}

/// One replica's state for one key in siblings mode: the causal context and
/// the concurrent values, each with the dot of the write that made it.
/// `None` is a tombstone (a delete).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DvvSet<V> {
    /// Every write this replica has seen for the key, surviving or not.
    context: VersionVector,
    /// The concurrent writes not yet superseded, by dot; `None` is a delete.
    siblings: BTreeMap<Dot, Option<V>>,
}

impl<V> Default for DvvSet<V> {
    fn default() -> Self {
        DvvSet {
            context: VersionVector::new(),
            siblings: BTreeMap::new(),
        }
    }
}

impl<V: Clone> DvvSet<V> {
    /// A key no replica has written.
    pub fn new() -> DvvSet<V> {
        DvvSet::default()
    }

    /// The opaque causal context a reader gets: everything this replica has
    /// seen. A write carrying it supersedes every sibling read with it.
    pub fn context(&self) -> &VersionVector {
        &self.context
    }

    /// The live (non-tombstone) sibling values, in dot order.
    pub fn values(&self) -> Vec<&V> {
        self.siblings.values().flatten().collect()
    }

    /// Every sibling with its dot; `None` marks a tombstone.
    pub fn siblings(&self) -> impl Iterator<Item = (Dot, Option<&V>)> + '_ {
        self.siblings
            .iter()
            .map(|(dot, value)| (*dot, value.as_ref()))
    }

    /// How many siblings, tombstones included.
    pub fn sibling_count(&self) -> usize {
        self.siblings.len()
    }

    /// Whether the key reads as deleted: it has siblings and all of them are
    /// tombstones. A delete concurrent with a write leaves the write live.
    pub fn is_tombstone(&self) -> bool {
        !self.siblings.is_empty() && self.siblings.values().all(Option::is_none)
    }

    /// Whether no write was ever seen.
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty() && self.context.is_empty()
    }

    /// Rule 1: the coordinator's write of `value` with the client's
    /// `context`. Returns the new write's dot.
    pub fn new_write(&mut self, context: &VersionVector, value: V, coordinator: NodeId) -> Dot {
        self.apply_write(context, Some(value), coordinator)
    }

    /// Rule 3: the coordinator's delete with the client's `context`: a
    /// write of a tombstone. Returns the tombstone's dot.
    pub fn new_delete(&mut self, context: &VersionVector, coordinator: NodeId) -> Dot {
        self.apply_write(context, None, coordinator)
    }

    fn apply_write(
        &mut self,
        context: &VersionVector,
        value: Option<V>,
        coordinator: NodeId,
    ) -> Dot {
        self.write_after(context, value, coordinator, 0)
    }

    /// Rules 1 and 3 with a floor: the new dot's counter is also above
    /// `floor`. A coordinator passes a node-wide counter that never goes
    /// back, so a dot is never issued twice even for a key whose state was
    /// removed (a reaped tombstone) and written again.
    pub fn write_after(
        &mut self,
        context: &VersionVector,
        value: Option<V>,
        coordinator: NodeId,
        floor: u64,
    ) -> Dot {
        self.siblings.retain(|dot, _| !context.covers(*dot));
        // The larger of the counters: the client may have read from a
        // replica that saw newer writes of this coordinator than this copy
        // holds (after a restore from an older copy, say), and reusing a dot
        // would make two different writes indistinguishable.
        let counter = self
            .context
            .get(coordinator)
            .max(context.get(coordinator))
            .max(floor)
            + 1;
        let dot = Dot {
            node: coordinator,
            counter,
        };
        self.context.merge(context);
        self.context.record(dot);
        let previous = self.siblings.insert(dot, value);
        assert!(previous.is_none(), "dvv: dot {dot:?} issued twice");
        self.assert_invariants();
        dot
    }

    /// Rule 2: the join of two replicas' states for the same key.
    #[must_use]
    pub fn sync(a: &DvvSet<V>, b: &DvvSet<V>) -> DvvSet<V> {
        let mut joined = a.clone();
        joined.merge_from(b);
        joined
    }

    /// Rule 2 in place: joins `other` into this state. Returns whether
    /// anything changed (a sibling dropped or taken in, or the context grew).
    pub fn merge_from(&mut self, other: &DvvSet<V>) -> bool {
        let other_context = &other.context;
        let context_grows = !self.context.descends(other_context);
        let before = self.siblings.len();
        self.siblings
            .retain(|dot, _| other.siblings.contains_key(dot) || !other_context.covers(*dot));
        let mut changed = context_grows || self.siblings.len() != before;
        for (dot, value) in &other.siblings {
            // Rule 4: a sibling is covered by its own context, so a dot this
            // context does not cover is never already here.
            if !self.context.covers(*dot) {
                self.siblings.insert(*dot, value.clone());
                changed = true;
            }
        }
        self.context.merge(other_context);
        self.assert_invariants();
        changed
    }

    /// Whether every sibling's dot is covered by the context (rule 4). A
    /// set decoded from a peer is checked with this before it is merged.
    pub fn is_well_formed(&self) -> bool {
        self.siblings.keys().all(|dot| self.context.covers(*dot))
    }

    /// Joins `context` into this set's context without taking any of the
    /// siblings it came with. Only the deliberate read-repair bug uses it: a
    /// "merge" that keeps one side's values but everyone's history, so a
    /// replica that syncs with it drops writes nobody superseded.
    pub(crate) fn absorb_context(&mut self, context: &VersionVector) {
        self.context.merge(context);
    }

    fn assert_invariants(&self) {
        for dot in self.siblings.keys() {
            assert!(
                self.context.covers(*dot),
                "dvv: sibling {dot:?} not covered by its own context"
            );
        }
    }
}

#[cfg(test)]
mod tests;
