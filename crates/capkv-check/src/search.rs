//! The Wing–Gong / Lowe just-in-time linearizability search for one register,
//! with Porcupine's memoisation and linked-list undo.
//!
//! Operations whose outcome is known (`ok`) are mandatory: each has a call
//! and a return entry in one doubly linked list ordered by history position.
//! Operations with an unknown outcome are optional: they have no return, sit
//! in a second list ordered by call, and may be placed at any point after
//! their call or never.
//!
//! The search walks the mandatory list from its head. A call entry met
//! before the first return entry is a candidate: if the register model
//! accepts it and the resulting (linearized set, register value) was never
//! seen, the operation is placed, its entries are lifted out of the list and
//! the walk restarts from the head. Reaching the first return entry means no
//! remaining mandatory candidate works; optional operations called before
//! that return are tried next, last because placing them is rarely needed.
//! When nothing works the last placement is undone (its entries are
//! re-linked, which the dancing-links order makes O(1)) and the walk resumes
//! after it. The history is linearizable as soon as every mandatory
//! operation is placed: the remaining optional ones are simply dropped.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// An interned register value; [`ABSENT`] is the absent key (JSON null).
pub(crate) type ValueId = u32;

/// The value of an absent key, and of JSON null.
pub(crate) const ABSENT: ValueId = 0;

/// Bytes the memo cache may hold per search. Past it the search goes on
/// without remembering new states: still correct, possibly slower.
pub(crate) const CACHE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Bytes a cache entry costs beyond its words: the boxed slice's pointer
/// and length in the table, and the table's control byte and spare room.
const CACHE_ENTRY_OVERHEAD_BYTES: usize = 32;

const HEAD: usize = 0;
const NIL: usize = usize::MAX;

/// An operation as the register model sees it. A delete is a write of
/// [`ABSENT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ModelOp {
    /// A read that returned `output`.
    Read { output: ValueId },
    /// A write (or delete) of `value`.
    Write { value: ValueId },
    /// A compare-and-set from `expected` to `new`.
    Cas { expected: ValueId, new: ValueId },
}

/// One operation handed to the search.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SearchOp {
    pub model_op: ModelOp,
    /// History position of the call.
    pub call_position: usize,
    /// History position of the return for a mandatory operation; `None` for
    /// an optional one (unknown outcome), which must not be a read.
    pub return_position: Option<usize>,
    /// Index of the operation in its [`crate::history::KeyHistory`].
    pub origin: usize,
}

/// The register model: the value after `op`, or `None` when `op` cannot
/// take effect on `value`. An optional cas that does not match is a no-op:
/// its result is unknown, so a cas that did not swap is allowed.
fn step(value: ValueId, op: ModelOp, mandatory: bool) -> Option<ValueId> {
    match op {
        ModelOp::Read { output } => (output == value).then_some(value),
        ModelOp::Write { value: written } => Some(written),
        ModelOp::Cas { expected, new } if expected == value => Some(new),
        ModelOp::Cas { .. } => (!mandatory).then_some(value),
    }
}

/// Bounds and options of one search.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SearchOptions {
    /// Give up after this many steps; `None` searches to the end.
    pub steps_max: Option<u64>,
    /// Remember the deepest point where the search got stuck, to explain it.
    pub record_stuck_point: bool,
}

/// Where the search got stuck with the most operations placed.
#[derive(Clone, Debug)]
pub(crate) struct StuckPoint {
    /// Indexes into the searched ops, in the order they were placed.
    pub order: Vec<usize>,
    /// The register value after them.
    pub value: ValueId,
    /// Index of the mandatory operation that returns first among those not
    /// placed: something must be placed before its return, and nothing could.
    pub blocking: usize,
}

/// What a search found.
#[derive(Clone, Debug)]
pub(crate) enum SearchOutcome {
    Linearizable,
    /// No order exists; the stuck point when it was asked for.
    NotLinearizable(Option<StuckPoint>),
    /// `steps_max` ran out first.
    BudgetExhausted,
}

/// Checks whether `ops` (one register, starting absent) can be linearized.
pub(crate) fn search(ops: &[SearchOp], options: SearchOptions) -> SearchOutcome {
    search_counting_steps(ops, options).0
}

/// Like [`search`], and also says how many steps it took.
pub(crate) fn search_counting_steps(
    ops: &[SearchOp],
    options: SearchOptions,
) -> (SearchOutcome, u64) {
    Search::new(ops).run(options)
}

/// Doubly linked list over nodes `1..`, with node [`HEAD`] as the sentinel.
/// A removed node keeps its own links, so restoring nodes in the reverse
/// order of their removal re-links them exactly (Knuth's dancing links).
struct Links {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl Links {
    fn chain(nodes_count: usize) -> Self {
        let next = (0..=nodes_count)
            .map(|node| if node == nodes_count { NIL } else { node + 1 })
            .collect();
        let prev = (0..=nodes_count)
            .map(|node| node.checked_sub(1).unwrap_or(NIL))
            .collect();
        Links { next, prev }
    }

    fn remove(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        if next != NIL {
            self.prev[next] = prev;
        }
    }

    fn restore(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        if next != NIL {
            self.prev[next] = node;
        }
    }
}

/// A call or return of a mandatory operation, as a node of the main list.
#[derive(Clone, Copy)]
struct Entry {
    position: usize,
    is_call: bool,
    /// Index into `Search::mandatory`.
    mandatory_index: usize,
}

/// What a step of the search placed, to undo it.
#[derive(Clone, Copy)]
enum Placed {
    Mandatory {
        mandatory_index: usize,
    },
    Optional {
        optional_index: usize,
        /// The main-list return node that bounds which optional operations
        /// may be placed at this depth.
        bound_node: usize,
    },
}

/// One placement on the search stack, with what it changed.
#[derive(Clone, Copy)]
struct Frame {
    placed: Placed,
    value_before: ValueId,
    mandatory_low_before: usize,
    mandatory_high_before: usize,
}

/// Where the walk is at one depth.
#[derive(Clone, Copy)]
enum Cursor {
    /// At a node of the main list.
    Main(usize),
    /// At a node of the optional list, below the bound of the first return.
    Optional { node: usize, bound_node: usize },
}

/// A fast hasher for cache keys, which are already well-mixed words: the
/// multiply-rotate scheme of rustc's FxHash.
#[derive(Default)]
struct WordHasher {
    hash: u64,
}

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.hash
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0_u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }
}

type Cache = HashSet<Box<[u64]>, BuildHasherDefault<WordHasher>>;

struct Search<'ops> {
    ops: &'ops [SearchOp],
    /// Indexes into `ops` of the mandatory operations, by call position.
    mandatory: Vec<usize>,
    /// Indexes into `ops` of the optional operations, by call position.
    optional: Vec<usize>,
    /// Main list nodes: `entries[node - 1]`.
    entries: Vec<Entry>,
    main: Links,
    /// Main-list node of each mandatory operation's call and return.
    call_node: Vec<usize>,
    return_node: Vec<usize>,
    /// Optional list: node `i + 1` is `optional[i]`.
    optional_links: Links,
    /// Placed mandatory operations, a bit per `mandatory` index.
    placed_mandatory: Vec<u64>,
    /// Placed optional operations, a bit per `optional` index.
    placed_optional: Vec<u64>,
    /// Every mandatory index below this is placed. Together with
    /// `mandatory_high` it frames the only bits that differ between states,
    /// so cache keys stay short however long the history is.
    mandatory_low: usize,
    /// One past the highest placed mandatory index.
    mandatory_high: usize,
    value: ValueId,
    cache: Cache,
    cache_bytes: usize,
    key_buffer: Vec<u64>,
}

impl<'ops> Search<'ops> {
    fn new(ops: &'ops [SearchOp]) -> Self {
        let mut mandatory: Vec<usize> = (0..ops.len())
            .filter(|&index| ops[index].return_position.is_some())
            .collect();
        mandatory.sort_by_key(|&index| ops[index].call_position);
        let mut optional: Vec<usize> = (0..ops.len())
            .filter(|&index| ops[index].return_position.is_none())
            .collect();
        optional.sort_by_key(|&index| ops[index].call_position);
        for &index in &optional {
            assert!(
                !matches!(ops[index].model_op, ModelOp::Read { .. }),
                "reads with an unknown outcome are dropped before the search"
            );
        }

        let mut entries = Vec::with_capacity(2 * mandatory.len());
        for (mandatory_index, &index) in mandatory.iter().enumerate() {
            let op = &ops[index];
            let return_position = op.return_position.expect("mandatory ops have a return");
            assert!(
                op.call_position < return_position,
                "an operation returns after its call"
            );
            entries.push(Entry {
                position: op.call_position,
                is_call: true,
                mandatory_index,
            });
            entries.push(Entry {
                position: return_position,
                is_call: false,
                mandatory_index,
            });
        }
        entries.sort_by_key(|entry| entry.position);
        let mut call_node = vec![NIL; mandatory.len()];
        let mut return_node = vec![NIL; mandatory.len()];
        for (offset, entry) in entries.iter().enumerate() {
            let node = offset + 1;
            if entry.is_call {
                call_node[entry.mandatory_index] = node;
            } else {
                return_node[entry.mandatory_index] = node;
            }
        }

        Search {
            ops,
            main: Links::chain(entries.len()),
            optional_links: Links::chain(optional.len()),
            placed_mandatory: vec![0; mandatory.len().div_ceil(64)],
            placed_optional: vec![0; optional.len().div_ceil(64)],
            mandatory,
            optional,
            entries,
            call_node,
            return_node,
            mandatory_low: 0,
            mandatory_high: 0,
            value: ABSENT,
            cache: Cache::default(),
            cache_bytes: 0,
            key_buffer: Vec::new(),
        }
    }

    fn entry(&self, node: usize) -> Entry {
        self.entries[node - 1]
    }

    fn run(mut self, options: SearchOptions) -> (SearchOutcome, u64) {
        let mut stack: Vec<Frame> = Vec::with_capacity(self.ops.len());
        let mut stuck_point: Option<StuckPoint> = None;
        let mut steps: u64 = 0;
        let mut cursor = Cursor::Main(self.main.next[HEAD]);
        loop {
            if self.main.next[HEAD] == NIL {
                return (SearchOutcome::Linearizable, steps);
            }
            steps += 1;
            if options.steps_max.is_some_and(|steps_max| steps > steps_max) {
                return (SearchOutcome::BudgetExhausted, steps);
            }
            cursor = match cursor {
                Cursor::Main(node) => {
                    // The list is not empty, and every call's return follows
                    // it, so the walk meets a return before the end.
                    assert!(node != NIL, "the main list ends with a return entry");
                    let entry = self.entry(node);
                    if !entry.is_call {
                        Cursor::Optional {
                            node: self.optional_links.next[HEAD],
                            bound_node: node,
                        }
                    } else if let Some(frame) = self.try_place_mandatory(entry.mandatory_index) {
                        stack.push(frame);
                        Cursor::Main(self.main.next[HEAD])
                    } else {
                        Cursor::Main(self.main.next[node])
                    }
                }
                Cursor::Optional { node, bound_node } => {
                    let bound = self.entry(bound_node).position;
                    let callable =
                        node != NIL && self.ops[self.optional[node - 1]].call_position < bound;
                    if !callable {
                        if options.record_stuck_point {
                            self.record_stuck_point(&stack, bound_node, &mut stuck_point);
                        }
                        let Some(frame) = stack.pop() else {
                            return (SearchOutcome::NotLinearizable(stuck_point), steps);
                        };
                        self.undo(frame)
                    } else if let Some(frame) = self.try_place_optional(node - 1, bound_node) {
                        stack.push(frame);
                        Cursor::Main(self.main.next[HEAD])
                    } else {
                        Cursor::Optional {
                            node: self.optional_links.next[node],
                            bound_node,
                        }
                    }
                }
            };
        }
    }

    fn record_stuck_point(
        &self,
        stack: &[Frame],
        bound_node: usize,
        stuck_point: &mut Option<StuckPoint>,
    ) {
        if stuck_point
            .as_ref()
            .is_some_and(|deepest| deepest.order.len() >= stack.len())
        {
            return;
        }
        let order = stack
            .iter()
            .map(|frame| match frame.placed {
                Placed::Mandatory { mandatory_index } => self.mandatory[mandatory_index],
                Placed::Optional { optional_index, .. } => self.optional[optional_index],
            })
            .collect();
        *stuck_point = Some(StuckPoint {
            order,
            value: self.value,
            blocking: self.mandatory[self.entry(bound_node).mandatory_index],
        });
    }

    fn try_place_mandatory(&mut self, mandatory_index: usize) -> Option<Frame> {
        let op = self.ops[self.mandatory[mandatory_index]];
        let value_after = step(self.value, op.model_op, true)?;
        let frame = Frame {
            placed: Placed::Mandatory { mandatory_index },
            value_before: self.value,
            mandatory_low_before: self.mandatory_low,
            mandatory_high_before: self.mandatory_high,
        };
        set_bit(&mut self.placed_mandatory, mandatory_index);
        self.mandatory_high = self.mandatory_high.max(mandatory_index + 1);
        while self.mandatory_low < self.mandatory.len()
            && bit(&self.placed_mandatory, self.mandatory_low)
        {
            self.mandatory_low += 1;
        }
        if !self.remember(value_after) {
            clear_bit(&mut self.placed_mandatory, mandatory_index);
            self.mandatory_low = frame.mandatory_low_before;
            self.mandatory_high = frame.mandatory_high_before;
            return None;
        }
        self.main.remove(self.call_node[mandatory_index]);
        self.main.remove(self.return_node[mandatory_index]);
        self.value = value_after;
        Some(frame)
    }

    fn try_place_optional(&mut self, optional_index: usize, bound_node: usize) -> Option<Frame> {
        let op = self.ops[self.optional[optional_index]];
        let value_after = step(self.value, op.model_op, false)?;
        // Placing an operation that changes nothing is never needed: leaving
        // it out keeps it available for later, which is at least as good.
        if value_after == self.value {
            return None;
        }
        set_bit(&mut self.placed_optional, optional_index);
        if !self.remember(value_after) {
            clear_bit(&mut self.placed_optional, optional_index);
            return None;
        }
        self.optional_links.remove(optional_index + 1);
        let frame = Frame {
            placed: Placed::Optional {
                optional_index,
                bound_node,
            },
            value_before: self.value,
            mandatory_low_before: self.mandatory_low,
            mandatory_high_before: self.mandatory_high,
        };
        self.value = value_after;
        Some(frame)
    }

    /// Undoes the placement in `frame` and says where the walk resumes: just
    /// after the undone operation's entry, at the same depth.
    fn undo(&mut self, frame: Frame) -> Cursor {
        self.value = frame.value_before;
        self.mandatory_low = frame.mandatory_low_before;
        self.mandatory_high = frame.mandatory_high_before;
        match frame.placed {
            Placed::Mandatory { mandatory_index } => {
                // Reverse order of removal, as dancing links require.
                self.main.restore(self.return_node[mandatory_index]);
                self.main.restore(self.call_node[mandatory_index]);
                clear_bit(&mut self.placed_mandatory, mandatory_index);
                Cursor::Main(self.main.next[self.call_node[mandatory_index]])
            }
            Placed::Optional {
                optional_index,
                bound_node,
            } => {
                self.optional_links.restore(optional_index + 1);
                clear_bit(&mut self.placed_optional, optional_index);
                Cursor::Optional {
                    node: self.optional_links.next[optional_index + 1],
                    bound_node,
                }
            }
        }
    }

    /// Records the current placed set with `value`; false when it was seen
    /// before, which means everything reachable from it was already tried.
    fn remember(&mut self, value: ValueId) -> bool {
        self.key_buffer.clear();
        self.key_buffer.push(u64::from(value));
        self.key_buffer.push(self.mandatory_low as u64);
        self.key_buffer.extend_from_slice(&self.placed_optional);
        // Bits below `mandatory_low` are all set and bits from
        // `mandatory_high` on are all clear, so the words in between (whole
        // words, which is canonical given `mandatory_low`) identify the set.
        // The optional part has a fixed length, so the key is unambiguous.
        if self.mandatory_high > self.mandatory_low {
            let first_word = self.mandatory_low / 64;
            let end_word = self.mandatory_high.div_ceil(64);
            self.key_buffer
                .extend_from_slice(&self.placed_mandatory[first_word..end_word]);
        }
        if self.cache.contains(self.key_buffer.as_slice()) {
            return false;
        }
        let entry_bytes = self.key_buffer.len() * 8 + CACHE_ENTRY_OVERHEAD_BYTES;
        if self.cache_bytes + entry_bytes <= CACHE_BYTES_MAX {
            self.cache
                .insert(self.key_buffer.clone().into_boxed_slice());
            self.cache_bytes += entry_bytes;
        }
        true
    }
}

fn bit(words: &[u64], index: usize) -> bool {
    words[index / 64] & (1 << (index % 64)) != 0
}

fn set_bit(words: &mut [u64], index: usize) {
    words[index / 64] |= 1 << (index % 64);
}

fn clear_bit(words: &mut [u64], index: usize) {
    words[index / 64] &= !(1 << (index % 64));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mandatory(model_op: ModelOp, call_position: usize, return_position: usize) -> SearchOp {
        SearchOp {
            model_op,
            call_position,
            return_position: Some(return_position),
            origin: 0,
        }
    }

    const OPTIONS: SearchOptions = SearchOptions {
        steps_max: None,
        record_stuck_point: true,
    };

    #[test]
    fn an_empty_history_is_linearizable() {
        assert!(matches!(search(&[], OPTIONS), SearchOutcome::Linearizable));
    }

    #[test]
    fn concurrent_writes_may_be_ordered_either_way() {
        // write 1 spans write 2, so write 2 may take effect first.
        let ops = [
            mandatory(ModelOp::Write { value: 1 }, 0, 3),
            mandatory(ModelOp::Write { value: 2 }, 1, 2),
            mandatory(ModelOp::Read { output: 1 }, 4, 5),
        ];
        assert!(matches!(search(&ops, OPTIONS), SearchOutcome::Linearizable));
    }

    #[test]
    fn the_stuck_point_names_the_blocking_read() {
        let ops = [
            mandatory(ModelOp::Write { value: 1 }, 0, 1),
            mandatory(ModelOp::Read { output: 2 }, 2, 3),
        ];
        let SearchOutcome::NotLinearizable(Some(stuck)) = search(&ops, OPTIONS) else {
            panic!("a read of a value never written cannot be linearized");
        };
        assert_eq!(stuck.order, vec![0]);
        assert_eq!(stuck.value, 1);
        assert_eq!(stuck.blocking, 1);
    }

    #[test]
    fn the_step_budget_stops_the_search() {
        let ops: Vec<SearchOp> = (0..100)
            .map(|index| mandatory(ModelOp::Write { value: 1 }, 2 * index, 2 * index + 1))
            .collect();
        let options = SearchOptions {
            steps_max: Some(10),
            record_stuck_point: false,
        };
        assert!(matches!(
            search(&ops, options),
            SearchOutcome::BudgetExhausted
        ));
    }

    #[test]
    fn cache_keys_stay_short_on_a_long_sequential_history() {
        let ops: Vec<SearchOp> = (0..10_000)
            .map(|index| mandatory(ModelOp::Write { value: 1 }, 2 * index, 2 * index + 1))
            .collect();
        let mut search_state = Search::new(&ops);
        for mandatory_index in 0..ops.len() {
            assert!(search_state.try_place_mandatory(mandatory_index).is_some());
        }
        // Value, low mark, and no optional or window words.
        assert!(search_state.cache.iter().all(|key| key.len() <= 3));
    }
}
