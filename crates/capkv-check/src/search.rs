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
//!
//! Four prunings specific to a register keep high concurrency tractable,
//! each argued where it is applied: a callable read that the current value
//! satisfies is placed as the only choice of its node
//! (`Search::step_fresh`); an optional operation is placed only right before
//! a callable operation that observes its value
//! (`Search::try_place_optional`); leaving a value that an unplaced
//! operation still needs, when nothing left can write it again, is a dead
//! end (`Search::strands_an_observer`); and an operation needing a value
//! that nothing called before its return writes fails the search before it
//! starts (`Search::observer_without_writer`). Values that no operation
//! ever observes arrive merged into [`UNOBSERVED`], so orders of blind
//! writes that differ only in which unobserved value is left collapse into
//! one cached state.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// An interned register value; [`ABSENT`] is the absent key (JSON null).
pub(crate) type ValueId = u32;

/// The value of an absent key, and of JSON null.
pub(crate) const ABSENT: ValueId = 0;

/// Stands for every value that no read returns and no cas expects: such
/// values are indistinguishable to the register model.
pub(crate) const UNOBSERVED: ValueId = ValueId::MAX;

/// Bytes the memo cache may hold per search. Past it the search goes on
/// without remembering new states: still correct, possibly slower.
pub(crate) const CACHE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Bytes a cache entry costs beyond its words: its length and link words in
/// the arena, and the hash, offset and control byte of its table slot.
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
    /// Keep the order of operations placed at the deepest stuck point, to
    /// explain it. Costs a copy of the stack at each new deepest point, so
    /// it is meant for small windows.
    pub record_order: bool,
    /// Use the early dead-end check (`Search::strands_an_observer`). Without
    /// it the stuck point names the operation that could not be placed
    /// rather than the write that would have stranded it, which explains a
    /// small window better.
    pub prune_stranded_observers: bool,
}

impl SearchOptions {
    /// The options of a full check: no budget, all prunings, no order kept.
    pub(crate) const CHECK: SearchOptions = SearchOptions {
        steps_max: None,
        record_order: false,
        prune_stranded_observers: true,
    };
}

/// Where the search got stuck with the most operations placed.
#[derive(Clone, Debug)]
pub(crate) struct StuckPoint {
    /// How many operations were placed.
    pub depth: usize,
    /// Indexes into the searched ops, in the order they were placed; empty
    /// unless [`SearchOptions::record_order`].
    pub order: Vec<usize>,
    /// Index of the mandatory operation that returns first among those not
    /// placed: something must be placed before its return, and nothing could.
    pub blocking: usize,
}

/// Where a search that found no order points to, for shrinking and
/// explaining.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    /// Where the search got deepest, if it got stuck at a node with no
    /// choice left.
    pub stuck_point: Option<StuckPoint>,
    /// Indexes into the searched ops of operations the early dead-end check
    /// found stranded (for each stranding, the latest-returning observer of
    /// the value it would lose): the one returning last over all strandings,
    /// then the one of the deepest stranding. Empty if it never fired.
    pub stranded_observers: Vec<usize>,
}

/// What a search found.
#[derive(Clone, Debug)]
pub(crate) enum SearchOutcome {
    Linearizable,
    /// No order exists.
    NotLinearizable(Failure),
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
    /// Placed as the only choice of its node (see `Search::step_fresh`).
    forced: bool,
    value_before: ValueId,
    mandatory_low_before: usize,
    mandatory_high_before: usize,
}

/// Where the walk is at one depth.
#[derive(Clone, Copy)]
enum Cursor {
    /// At a node just reached, before any choice was tried.
    Fresh,
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

/// The memo cache: a set of keys of words. The keys live end to end in one
/// arena, each after its length and the offset of the previous key with
/// the same hash, so remembering a state allocates nothing of its own and
/// dropping the cache frees two blocks, not one per state.
#[derive(Default)]
struct Cache {
    arena: Vec<u64>,
    /// A key's hash to the offset of the latest key with that hash.
    latest: HashMap<u64, usize, BuildHasherDefault<WordHasher>>,
}

impl Cache {
    fn hash(key: &[u64]) -> u64 {
        let mut hasher = WordHasher::default();
        for &word in key {
            hasher.add(word);
        }
        hasher.finish()
    }

    /// Whether `key`, whose hash is `hash`, is in the cache.
    fn contains(&self, hash: u64, key: &[u64]) -> bool {
        let mut offset = self.latest.get(&hash).copied().unwrap_or(NIL);
        while offset != NIL {
            if self.key_at(offset) == key {
                return true;
            }
            offset = self.arena[offset + 1] as usize;
        }
        false
    }

    /// Adds `key`, whose hash is `hash` and which is not in the cache yet.
    fn insert(&mut self, hash: u64, key: &[u64]) {
        let offset = self.arena.len();
        let previous = std::mem::replace(self.latest.entry(hash).or_insert(NIL), offset);
        self.arena.push(key.len() as u64);
        self.arena.push(previous as u64);
        self.arena.extend_from_slice(key);
    }

    /// The key stored at `offset`.
    fn key_at(&self, offset: usize) -> &[u64] {
        let start = offset + 2;
        &self.arena[start..start + self.arena[offset] as usize]
    }

    /// Every key, in the order they were added.
    #[cfg(test)]
    fn keys(&self) -> impl Iterator<Item = &[u64]> {
        let mut offset = 0;
        std::iter::from_fn(move || {
            (offset < self.arena.len()).then(|| {
                let key = self.key_at(offset);
                offset += 2 + key.len();
                key
            })
        })
    }
}

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
    /// Per value: unplaced mandatory operations that need the register to
    /// hold it (reads of it, cas expecting it).
    observers_left: Vec<u32>,
    /// Per value: unplaced operations that can leave it in the register.
    writers_left: Vec<u32>,
    /// Whether `strands_an_observer` prunes.
    prune_stranded_observers: bool,
    /// Per value: index into `ops` of its mandatory observer that returns
    /// last, or [`NIL`].
    last_observer: Vec<usize>,
    /// Operations placed now.
    depth: usize,
    /// Depth and last observer of the deepest stranding found so far.
    stranded_deepest: Option<(usize, usize)>,
    /// The latest-returning last observer over all strandings so far.
    stranded_latest: Option<usize>,
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

        let entries = entries_by_position(ops, &mandatory);
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

        let values_count = ops
            .iter()
            .flat_map(|op| [observed_by(op.model_op), produced_by(op.model_op)])
            .flatten()
            .filter_map(value_slot)
            .max()
            .map_or(1, |slot| slot + 1);
        let mut observers_left = vec![0; values_count];
        let mut writers_left = vec![0; values_count];
        let mut last_observer = vec![NIL; values_count];
        for (index, op) in ops.iter().enumerate() {
            if let Some(slot) = produced_by(op.model_op).and_then(value_slot) {
                writers_left[slot] += 1;
            }
            let Some(return_position) = op.return_position else {
                continue;
            };
            if let Some(slot) = observed_by(op.model_op).and_then(value_slot) {
                observers_left[slot] += 1;
                let last = last_observer[slot];
                if last == NIL || ops[last].return_position < Some(return_position) {
                    last_observer[slot] = index;
                }
            }
        }

        Search {
            ops,
            observers_left,
            writers_left,
            prune_stranded_observers: true,
            last_observer,
            depth: 0,
            stranded_deepest: None,
            stranded_latest: None,
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
        self.prune_stranded_observers = options.prune_stranded_observers;
        if let Some(observer) = self.observer_without_writer() {
            let failure = Failure {
                stuck_point: Some(StuckPoint {
                    depth: 0,
                    order: Vec::new(),
                    blocking: observer,
                }),
                stranded_observers: vec![observer],
            };
            return (SearchOutcome::NotLinearizable(failure), 0);
        }
        let mut stack: Vec<Frame> = Vec::with_capacity(self.ops.len());
        let mut stuck_point: Option<StuckPoint> = None;
        let mut steps: u64 = 0;
        let mut cursor = Cursor::Fresh;
        loop {
            if self.main.next[HEAD] == NIL {
                return (SearchOutcome::Linearizable, steps);
            }
            steps += 1;
            if options.steps_max.is_some_and(|steps_max| steps > steps_max) {
                return (SearchOutcome::BudgetExhausted, steps);
            }
            let next = match cursor {
                Cursor::Fresh => self.step_fresh(&mut stack),
                Cursor::Main(node) => self.step_main(node, &mut stack),
                Cursor::Optional { node, bound_node } => {
                    let next = self.step_optional(node, bound_node, &mut stack);
                    if next.is_none() {
                        let record_order = options.record_order;
                        self.record_stuck_point(&stack, bound_node, record_order, &mut stuck_point);
                    }
                    next
                }
            };
            cursor = match next {
                Some(next) => next,
                None => match self.backtrack(&mut stack) {
                    Some(resumed) => resumed,
                    None => {
                        let mut stranded_observers: Vec<usize> =
                            self.stranded_latest.into_iter().collect();
                        if let Some((_, index)) = self.stranded_deepest {
                            if !stranded_observers.contains(&index) {
                                stranded_observers.push(index);
                            }
                        }
                        let failure = Failure {
                            stuck_point,
                            stranded_observers,
                        };
                        return (SearchOutcome::NotLinearizable(failure), steps);
                    }
                },
            };
        }
    }

    /// The earliest-returning mandatory operation that needs a value (other
    /// than absent, which every key starts with) that no operation called
    /// before its return writes: no order can satisfy it. Checking this
    /// first turns a read "from the future" into an immediate answer instead
    /// of an exhaustive search of everything before it.
    fn observer_without_writer(&self) -> Option<usize> {
        let mut earliest_writer_call = vec![usize::MAX; self.writers_left.len()];
        for op in self.ops {
            if let Some(slot) = produced_by(op.model_op).and_then(value_slot) {
                let earliest = &mut earliest_writer_call[slot];
                *earliest = (*earliest).min(op.call_position);
            }
        }
        (0..self.ops.len())
            .filter(|&index| {
                let op = &self.ops[index];
                let needed = observed_by(op.model_op).filter(|&value| value != ABSENT);
                match (needed.and_then(value_slot), op.return_position) {
                    (Some(slot), Some(return_position)) => {
                        earliest_writer_call[slot] > return_position
                    }
                    _ => false,
                }
            })
            .min_by_key(|&index| self.ops[index].return_position)
    }

    /// At a node just reached: a read that the register's value satisfies
    /// is placed at once, as the only choice. That is safe: in any order
    /// from here, moving that read to the front keeps the order legal (a
    /// read changes nothing, and it is callable here, so nothing pending
    /// must precede it). `None` means this node is a dead end.
    fn step_fresh(&mut self, stack: &mut Vec<Frame>) -> Option<Cursor> {
        let Some(mandatory_index) = self.satisfied_read() else {
            return Some(Cursor::Main(self.main.next[HEAD]));
        };
        let mut frame = self.try_place_mandatory(mandatory_index)?;
        frame.forced = true;
        stack.push(frame);
        Some(Cursor::Fresh)
    }

    /// Tries the mandatory call entry at `node`, or moves on to the optional
    /// operations at the first return entry.
    fn step_main(&mut self, node: usize, stack: &mut Vec<Frame>) -> Option<Cursor> {
        // The list is not empty, and every call's return follows it, so the
        // walk meets a return before the end.
        assert!(node != NIL, "the main list ends with a return entry");
        let entry = self.entry(node);
        if !entry.is_call {
            return Some(Cursor::Optional {
                node: self.optional_links.next[HEAD],
                bound_node: node,
            });
        }
        match self.try_place_mandatory(entry.mandatory_index) {
            Some(frame) => {
                stack.push(frame);
                Some(Cursor::Fresh)
            }
            None => Some(Cursor::Main(self.main.next[node])),
        }
    }

    /// Tries the optional operation at `node`; `None` when no optional
    /// operation is left to try, which makes this node a dead end.
    fn step_optional(
        &mut self,
        node: usize,
        bound_node: usize,
        stack: &mut Vec<Frame>,
    ) -> Option<Cursor> {
        let bound = self.entry(bound_node).position;
        if node == NIL || self.ops[self.optional[node - 1]].call_position >= bound {
            return None;
        }
        match self.try_place_optional(node - 1, bound_node) {
            Some(frame) => {
                stack.push(frame);
                Some(Cursor::Fresh)
            }
            None => Some(Cursor::Optional {
                node: self.optional_links.next[node],
                bound_node,
            }),
        }
    }

    /// Undoes placements until one whose node has choices left; `None` when
    /// the stack runs out, which means no order exists.
    fn backtrack(&mut self, stack: &mut Vec<Frame>) -> Option<Cursor> {
        while let Some(frame) = stack.pop() {
            let resumed = self.undo(frame);
            // A forced read was the only choice of its node.
            if !frame.forced {
                return Some(resumed);
            }
        }
        None
    }

    /// A callable mandatory read that returned the register's current value.
    fn satisfied_read(&self) -> Option<usize> {
        let mut node = self.main.next[HEAD];
        while node != NIL {
            let entry = self.entry(node);
            if !entry.is_call {
                return None;
            }
            let op = self.ops[self.mandatory[entry.mandatory_index]];
            if op.model_op == (ModelOp::Read { output: self.value }) {
                return Some(entry.mandatory_index);
            }
            node = self.main.next[node];
        }
        None
    }

    /// Whether an operation callable before `bound`, other than the
    /// optional `except_optional`, needs the register to hold `value`.
    fn callable_observer_of(&self, value: ValueId, except_optional: usize, bound: usize) -> bool {
        let observes = |op: ModelOp| match op {
            ModelOp::Read { output } => output == value,
            ModelOp::Cas { expected, .. } => expected == value,
            ModelOp::Write { .. } => false,
        };
        let mut node = self.main.next[HEAD];
        while node != NIL && self.entry(node).is_call {
            let op = self.ops[self.mandatory[self.entry(node).mandatory_index]];
            if observes(op.model_op) {
                return true;
            }
            node = self.main.next[node];
        }
        let mut node = self.optional_links.next[HEAD];
        while node != NIL {
            let op = self.ops[self.optional[node - 1]];
            if op.call_position >= bound {
                break;
            }
            if node - 1 != except_optional && observes(op.model_op) {
                return true;
            }
            node = self.optional_links.next[node];
        }
        false
    }

    fn record_stuck_point(
        &self,
        stack: &[Frame],
        bound_node: usize,
        record_order: bool,
        stuck_point: &mut Option<StuckPoint>,
    ) {
        if stuck_point
            .as_ref()
            .is_some_and(|deepest| deepest.depth >= stack.len())
        {
            return;
        }
        let order = if record_order {
            stack
                .iter()
                .map(|frame| match frame.placed {
                    Placed::Mandatory { mandatory_index } => self.mandatory[mandatory_index],
                    Placed::Optional { optional_index, .. } => self.optional[optional_index],
                })
                .collect()
        } else {
            Vec::new()
        };
        *stuck_point = Some(StuckPoint {
            depth: stack.len(),
            order,
            blocking: self.mandatory[self.entry(bound_node).mandatory_index],
        });
    }

    fn try_place_mandatory(&mut self, mandatory_index: usize) -> Option<Frame> {
        let op = self.ops[self.mandatory[mandatory_index]];
        let value_after = step(self.value, op.model_op, true)?;
        if self.strands_an_observer(op.model_op, true, value_after) {
            return None;
        }
        let frame = Frame {
            placed: Placed::Mandatory { mandatory_index },
            forced: false,
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
        self.count_placement(op, true);
        self.value = value_after;
        Some(frame)
    }

    fn try_place_optional(&mut self, optional_index: usize, bound_node: usize) -> Option<Frame> {
        let op = self.ops[self.optional[optional_index]];
        let value_after = step(self.value, op.model_op, false)?;
        // An optional operation is placed only when it changes the value and
        // some callable operation needs the new value. That loses nothing: in
        // any legal order, an optional operation that changes nothing, or
        // whose value is overwritten before anyone observes it, can be left
        // out; so one exists where each optional operation is directly
        // followed by an observer of its value, callable here.
        let bound = self.entry(bound_node).position;
        if value_after == self.value
            || !self.callable_observer_of(value_after, optional_index, bound)
            || self.strands_an_observer(op.model_op, false, value_after)
        {
            return None;
        }
        set_bit(&mut self.placed_optional, optional_index);
        if !self.remember(value_after) {
            clear_bit(&mut self.placed_optional, optional_index);
            return None;
        }
        self.optional_links.remove(optional_index + 1);
        self.count_placement(op, true);
        let frame = Frame {
            placed: Placed::Optional {
                optional_index,
                bound_node,
            },
            forced: false,
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
                self.count_placement(self.ops[self.mandatory[mandatory_index]], false);
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
                self.count_placement(self.ops[self.optional[optional_index]], false);
                self.optional_links.restore(optional_index + 1);
                clear_bit(&mut self.placed_optional, optional_index);
                Cursor::Optional {
                    node: self.optional_links.next[optional_index + 1],
                    bound_node,
                }
            }
        }
    }

    /// Whether `op`, by moving the register away from its current value,
    /// would leave an unplaced operation that needs that value with no
    /// operation left that could write it again: a dead end, found now
    /// rather than after trying every order of what comes between.
    fn strands_an_observer(&mut self, op: ModelOp, mandatory: bool, value_after: ValueId) -> bool {
        if !self.prune_stranded_observers || value_after == self.value {
            return false;
        }
        let Some(slot) = value_slot(self.value) else {
            return false;
        };
        let mut observers = self.observers_left[slot];
        if mandatory && observed_by(op) == Some(self.value) {
            observers -= 1;
        }
        let stranding = observers > 0 && self.writers_left[slot] == 0;
        if stranding {
            self.note_stranding(self.last_observer[slot]);
        }
        stranding
    }

    /// Remembers a stranded observer as a hint for shrinking the history.
    fn note_stranding(&mut self, observer: usize) {
        let deeper = !matches!(self.stranded_deepest, Some((depth, _)) if self.depth < depth);
        if deeper {
            self.stranded_deepest = Some((self.depth, observer));
        }
        let returns_later = match self.stranded_latest {
            None => true,
            Some(latest) => self.ops[latest].return_position < self.ops[observer].return_position,
        };
        if returns_later {
            self.stranded_latest = Some(observer);
        }
    }

    /// Keeps `observers_left` and `writers_left` in step with placing
    /// (`placed` true) or unplacing `op`.
    fn count_placement(&mut self, op: SearchOp, placed: bool) {
        if placed {
            self.depth += 1;
        } else {
            self.depth -= 1;
        }
        let apply = |count: &mut u32| {
            if placed {
                *count -= 1;
            } else {
                *count += 1;
            }
        };
        if let Some(slot) = produced_by(op.model_op).and_then(value_slot) {
            apply(&mut self.writers_left[slot]);
        }
        if op.return_position.is_some() {
            if let Some(slot) = observed_by(op.model_op).and_then(value_slot) {
                apply(&mut self.observers_left[slot]);
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
        let hash = Cache::hash(&self.key_buffer);
        if self.cache.contains(hash, &self.key_buffer) {
            return false;
        }
        let entry_bytes = self.key_buffer.len() * 8 + CACHE_ENTRY_OVERHEAD_BYTES;
        if self.cache_bytes + entry_bytes <= CACHE_BYTES_MAX {
            self.cache.insert(hash, &self.key_buffer);
            self.cache_bytes += entry_bytes;
        }
        true
    }
}

/// The call and return entries of the `mandatory` operations (indexes into
/// `ops`, by call position), by position. Calls come in order already, so
/// each return is merged in from a heap of the returns still to come, just
/// before the first call after it: a cost in the log of the concurrency,
/// not of the history. Every entry is a distinct event of the history, so
/// no two positions are equal.
fn entries_by_position(ops: &[SearchOp], mandatory: &[usize]) -> Vec<Entry> {
    let mut entries = Vec::with_capacity(2 * mandatory.len());
    let mut returns = BinaryHeap::new();
    for (mandatory_index, &index) in mandatory.iter().enumerate() {
        let op = &ops[index];
        let return_position = op.return_position.expect("mandatory ops have a return");
        assert!(
            op.call_position < return_position,
            "an operation returns after its call"
        );
        while let Some(Reverse((position, returning))) = returns.peek().copied() {
            if position > op.call_position {
                break;
            }
            returns.pop();
            entries.push(Entry {
                position,
                is_call: false,
                mandatory_index: returning,
            });
        }
        entries.push(Entry {
            position: op.call_position,
            is_call: true,
            mandatory_index,
        });
        returns.push(Reverse((return_position, mandatory_index)));
    }
    while let Some(Reverse((position, returning))) = returns.pop() {
        entries.push(Entry {
            position,
            is_call: false,
            mandatory_index: returning,
        });
    }
    entries
}

/// The value an operation needs the register to hold, if any.
fn observed_by(op: ModelOp) -> Option<ValueId> {
    match op {
        ModelOp::Read { output } => Some(output),
        ModelOp::Cas { expected, .. } => Some(expected),
        ModelOp::Write { .. } => None,
    }
}

/// The value an operation leaves in the register, if it changes it.
fn produced_by(op: ModelOp) -> Option<ValueId> {
    match op {
        ModelOp::Write { value } => Some(value),
        ModelOp::Cas { new, .. } => Some(new),
        ModelOp::Read { .. } => None,
    }
}

/// Index of a value in the per-value counts; none for [`UNOBSERVED`],
/// which nothing observes.
fn value_slot(value: ValueId) -> Option<usize> {
    (value != UNOBSERVED).then_some(value as usize)
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
        record_order: true,
        prune_stranded_observers: false,
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
            mandatory(ModelOp::Write { value: 2 }, 2, 3),
            mandatory(ModelOp::Read { output: 1 }, 4, 5),
        ];
        let SearchOutcome::NotLinearizable(Failure {
            stuck_point: Some(stuck),
            ..
        }) = search(&ops, OPTIONS)
        else {
            panic!("a stale read cannot be linearized");
        };
        assert_eq!(stuck.order, vec![0, 1]);
        assert_eq!(stuck.blocking, 2);
    }

    #[test]
    fn a_read_of_a_value_written_only_later_fails_without_searching() {
        let ops = [
            mandatory(ModelOp::Read { output: 1 }, 0, 1),
            mandatory(ModelOp::Write { value: 1 }, 2, 3),
        ];
        let (outcome, steps) = search_counting_steps(&ops, SearchOptions::CHECK);
        let SearchOutcome::NotLinearizable(failure) = outcome else {
            panic!("a read from the future cannot be linearized");
        };
        assert_eq!(steps, 0);
        assert_eq!(failure.stranded_observers, vec![0]);
    }

    #[test]
    fn a_write_that_strands_a_later_read_is_pruned_at_once() {
        // Without the check, every order of the 20 concurrent writes in the
        // middle would be tried before the stale read is reached.
        let mut ops = vec![mandatory(ModelOp::Write { value: 1 }, 0, 1)];
        for index in 0..20 {
            ops.push(mandatory(
                ModelOp::Write { value: 2 + index },
                2 + index as usize,
                100,
            ));
        }
        ops.push(mandatory(ModelOp::Read { output: 1 }, 101, 102));
        let (outcome, steps) = search_counting_steps(&ops, SearchOptions::CHECK);
        assert!(matches!(outcome, SearchOutcome::NotLinearizable(_)));
        assert!(steps < 1_000, "{steps} steps");
    }

    #[test]
    fn the_step_budget_stops_the_search() {
        let ops: Vec<SearchOp> = (0..100)
            .map(|index| mandatory(ModelOp::Write { value: 1 }, 2 * index, 2 * index + 1))
            .collect();
        let options = SearchOptions {
            steps_max: Some(10),
            ..SearchOptions::CHECK
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
        assert_eq!(search_state.cache.keys().count(), ops.len());
        assert!(search_state.cache.keys().all(|key| key.len() <= 3));
    }
}
