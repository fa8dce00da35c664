//! Shrinking a key's failing history to a small window of operations that
//! cannot be ordered on their own, and explaining it in words.
//!
//! A window is a sub-history: a set of operations, each with its own invoke
//! and completion, checked from an absent key like any history. Steps 1 and
//! 2 find a failing window; step 3 shrinks it, keeping it failing.
//!
//! 0. A shortcut: the failed search names operations it points to (the
//!    latest-returning read it found stranded, the operation it got stuck
//!    on). For each, step 2 runs on the prefix cut at its return, without
//!    first showing that prefix fails, and with suffixes up to
//!    [`HINTED_SUFFIX_OPERATIONS_MAX`] operations. Any failing suffix will
//!    do; if none is found, steps 1 and 2 follow.
//! 1. The shortest failing prefix, by search over the returns of the
//!    operations that took effect: galloping from the return of the
//!    operation the full search got stuck on, then bisecting. A prefix cut
//!    at a return keeps every operation called before it; those still
//!    running at the cut become "outcome unknown" (reads among them are
//!    dropped), which only makes the prefix easier to linearize, so
//!    failures are monotone in the cut.
//! 2. The last 4, 8, 16, ... operations of that prefix by call, plus the
//!    operation returning at the cut, plus the latest writer of every value
//!    they observe, until such a suffix fails on its own.
//! 3. Dropping operations one at a time, earliest first, while the rest
//!    still fails, repeated until nothing more can go. The only writer of a
//!    value that a remaining operation observes is kept, so a stale read is
//!    shown with the write it read rather than as a read of a value "never
//!    written".
//!
//! Every re-check is a full search on the candidate window; together they
//! are bounded by [`RECHECKS_MAX`] re-checks and by search steps: the larger
//! of [`MINIMISE_STEPS_MIN`] and [`MINIMISE_STEPS_PER_CHECK_STEP`] times the
//! steps the full search took, so that shrinking costs at most a constant
//! factor over checking. A re-check that runs out of budget counts as "not
//! shown to fail", so the window returned always fails.

use std::collections::HashMap;

use crate::event::{Event, OpKind};
use crate::history::{KeyHistory, Outcome};
use crate::search::{
    search, search_counting_steps, Failure, ModelOp, SearchOp, SearchOptions, SearchOutcome,
    StuckPoint, ValueId, ABSENT,
};

/// Most re-checks spent shrinking one window.
pub(crate) const RECHECKS_MAX: usize = 2_000;

/// Search steps that shrinking one window may always spend, over all
/// re-checks.
pub(crate) const MINIMISE_STEPS_MIN: u64 = 20_000_000;

/// Search steps that shrinking may spend per step of the full search, when
/// that is more than [`MINIMISE_STEPS_MIN`].
pub(crate) const MINIMISE_STEPS_PER_CHECK_STEP: u64 = 32;

/// Largest window explained step by step; a larger one gets a summary.
const EXPLAINED_WINDOW_OPERATIONS_MAX: usize = 256;

/// Smallest suffix tried in step 2.
const SUFFIX_OPERATIONS_MIN: usize = 4;

/// Largest suffix tried before step 1, at the return of a hinted operation:
/// a wrong hint should cost little.
const HINTED_SUFFIX_OPERATIONS_MAX: usize = 1024;

/// Operations of the longest legal order listed in an explanation.
const EXPLAINED_ORDER_OPERATIONS_MAX: usize = 8;

/// What is left of the shrinking budget.
struct Budget {
    rechecks_left: usize,
    steps_left: u64,
}

impl Budget {
    fn new(check_steps: u64) -> Self {
        Budget {
            rechecks_left: RECHECKS_MAX,
            steps_left: MINIMISE_STEPS_MIN
                .max(check_steps.saturating_mul(MINIMISE_STEPS_PER_CHECK_STEP)),
        }
    }

    fn is_spent(&self) -> bool {
        self.rechecks_left == 0 || self.steps_left == 0
    }

    /// True only when `ops` is shown not linearizable within the budget.
    fn fails(&mut self, ops: &[SearchOp]) -> bool {
        if self.is_spent() {
            return false;
        }
        self.rechecks_left -= 1;
        let options = SearchOptions {
            steps_max: Some(self.steps_left),
            ..SearchOptions::CHECK
        };
        let (outcome, steps) = search_counting_steps(ops, options);
        self.steps_left = self.steps_left.saturating_sub(steps);
        matches!(outcome, SearchOutcome::NotLinearizable(_))
    }
}

/// Shrinks `ops`, a key's operations that cannot be linearized, to a small
/// window that cannot be either. `check_steps` is what the full search took;
/// `hints` are indexes in `ops` of operations the search points to, best
/// first. The result is sorted by call position.
pub(crate) fn find_window(ops: &[SearchOp], check_steps: u64, hints: &[usize]) -> Vec<SearchOp> {
    let mut budget = Budget::new(check_steps);
    // A hinted operation often ends a small failing window: try suffixes of
    // the prefix it ends, unverified, before paying for step 1.
    for &hint in hints {
        let Some(cut) = ops[hint].return_position else {
            continue;
        };
        let prefix = prefix_at(ops, cut);
        if let Some(suffix) = failing_suffix(&prefix, HINTED_SUFFIX_OPERATIONS_MAX, &mut budget) {
            return drop_one_at_a_time(suffix, &mut budget);
        }
    }
    let prefix = shortest_failing_prefix(ops, hints.last().copied(), &mut budget);
    let suffix = failing_suffix(&prefix, prefix.len(), &mut budget).unwrap_or(prefix);
    drop_one_at_a_time(suffix, &mut budget)
}

/// Step 1. `ops` fails; the result fails.
fn shortest_failing_prefix(
    ops: &[SearchOp],
    blocking: Option<usize>,
    budget: &mut Budget,
) -> Vec<SearchOp> {
    let mut returns: Vec<usize> = ops.iter().filter_map(|op| op.return_position).collect();
    returns.sort_unstable();
    let Some(last) = returns.len().checked_sub(1) else {
        return ops.to_vec();
    };
    let mut fails_at = |cut_index: usize| budget.fails(&prefix_at(ops, returns[cut_index]));
    // The invariant: the cut at `returns[high]` fails (at `last`, the prefix
    // holds every operation that matters, so it is `ops` itself), and no cut
    // below `returns[low]` is known to.
    let (mut low, mut high) = (0, last);
    let start = blocking
        .and_then(|index| ops[index].return_position)
        .map_or(last, |position| {
            returns.partition_point(|&cut| cut < position)
        })
        .min(last);
    if start < last && fails_at(start) {
        high = start;
        let mut distance = 1;
        while distance <= high {
            if fails_at(high - distance) {
                high -= distance;
                distance *= 2;
            } else {
                low = high - distance + 1;
                break;
            }
        }
    } else if start < last {
        low = start + 1;
        let mut distance = 1;
        while low + distance - 1 < last {
            let probe = low + distance - 1;
            if fails_at(probe) {
                high = probe;
                break;
            }
            low = probe + 1;
            distance *= 2;
        }
    }
    while low < high {
        let middle = low + (high - low) / 2;
        if fails_at(middle) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    if high == last {
        ops.to_vec()
    } else {
        prefix_at(ops, returns[high])
    }
}

/// The operations called before `cut`, with those still running at `cut`
/// turned into operations of unknown outcome (reads among them dropped).
fn prefix_at(ops: &[SearchOp], cut: usize) -> Vec<SearchOp> {
    ops.iter()
        .filter(|op| op.call_position < cut)
        .filter_map(|op| match op.return_position {
            Some(return_position) if return_position <= cut => Some(*op),
            _ if matches!(op.model_op, ModelOp::Read { .. }) => None,
            _ => Some(SearchOp {
                return_position: None,
                ..*op
            }),
        })
        .collect()
}

/// Step 2: a proper suffix of `prefix` of at most `suffix_operations_max`
/// operations (with the writers it observes) that fails, if one is found
/// within the budget.
fn failing_suffix(
    prefix: &[SearchOp],
    suffix_operations_max: usize,
    budget: &mut Budget,
) -> Option<Vec<SearchOp>> {
    let mut by_call: Vec<usize> = (0..prefix.len()).collect();
    by_call.sort_by_key(|&index| prefix[index].call_position);
    let last_to_return = (0..prefix.len()).max_by_key(|&index| prefix[index].return_position);
    let producers = producers_by_value(prefix);
    let mut suffix_operations = SUFFIX_OPERATIONS_MIN;
    while suffix_operations < prefix.len()
        && suffix_operations <= suffix_operations_max
        && !budget.is_spent()
    {
        let mut chosen = vec![false; prefix.len()];
        for &index in &by_call[prefix.len() - suffix_operations..] {
            chosen[index] = true;
        }
        if let Some(index) = last_to_return {
            chosen[index] = true;
        }
        add_writers_of_observed_values(prefix, &producers, &mut chosen);
        let candidate = select_by_call(prefix, &by_call, &chosen);
        if candidate.len() < prefix.len() && budget.fails(&candidate) {
            return Some(candidate);
        }
        suffix_operations *= 2;
    }
    None
}

fn select_by_call(ops: &[SearchOp], by_call: &[usize], chosen: &[bool]) -> Vec<SearchOp> {
    by_call
        .iter()
        .filter(|&&index| chosen[index])
        .map(|&index| ops[index])
        .collect()
}

/// The value an operation needs to see to take effect, if any.
fn observed_value(op: &SearchOp) -> Option<ValueId> {
    match op.model_op {
        ModelOp::Read { output } => Some(output),
        ModelOp::Cas { expected, .. } => Some(expected),
        ModelOp::Write { .. } => None,
    }
}

/// The value an operation leaves in the register when it takes effect.
fn produced_value(op: &SearchOp) -> Option<ValueId> {
    match op.model_op {
        ModelOp::Write { value } => Some(value),
        ModelOp::Cas { new, .. } => Some(new),
        ModelOp::Read { .. } => None,
    }
}

/// For each value, the indexes of the operations writing it, by call.
fn producers_by_value(ops: &[SearchOp]) -> HashMap<ValueId, Vec<usize>> {
    let mut producers: HashMap<ValueId, Vec<usize>> = HashMap::new();
    for (index, op) in ops.iter().enumerate() {
        if let Some(value) = produced_value(op) {
            producers.entry(value).or_default().push(index);
        }
    }
    for indexes in producers.values_mut() {
        indexes.sort_by_key(|&index| ops[index].call_position);
    }
    producers
}

/// Adds to `chosen`, for every value a chosen operation observes and no
/// chosen operation writes, its latest writer called before the observer
/// returned. The absent value counts too: a read of it after a delete is
/// shown with the delete, though every key also starts absent.
fn add_writers_of_observed_values(
    ops: &[SearchOp],
    producers: &HashMap<ValueId, Vec<usize>>,
    chosen: &mut [bool],
) {
    let mut writers_chosen: HashMap<ValueId, usize> = HashMap::new();
    let mut pending: Vec<usize> = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        if chosen[index] {
            pending.push(index);
            if let Some(value) = produced_value(op) {
                *writers_chosen.entry(value).or_default() += 1;
            }
        }
    }
    while let Some(index) = pending.pop() {
        let Some(value) = observed_value(&ops[index]) else {
            continue;
        };
        if writers_chosen.get(&value).is_some_and(|&count| count > 0) {
            continue;
        }
        let observer_return = ops[index].return_position.unwrap_or(usize::MAX);
        let writer = producers.get(&value).and_then(|indexes| {
            indexes
                .iter()
                .rev()
                .find(|&&writer| ops[writer].call_position < observer_return)
        });
        if let Some(&writer) = writer {
            chosen[writer] = true;
            *writers_chosen.entry(value).or_default() += 1;
            pending.push(writer);
        }
    }
}

/// Step 3. `window` fails; the result fails.
fn drop_one_at_a_time(mut window: Vec<SearchOp>, budget: &mut Budget) -> Vec<SearchOp> {
    loop {
        let mut dropped_any = false;
        let mut index = 0;
        while index < window.len() {
            if budget.is_spent() {
                return window;
            }
            if !is_only_writer_of_an_observed_value(&window, index) {
                let mut candidate = window.clone();
                candidate.remove(index);
                if budget.fails(&candidate) {
                    window = candidate;
                    dropped_any = true;
                    continue;
                }
            }
            index += 1;
        }
        if !dropped_any {
            return window;
        }
    }
}

fn is_only_writer_of_an_observed_value(window: &[SearchOp], index: usize) -> bool {
    let Some(value) = produced_value(&window[index]) else {
        return false;
    };
    let others = || {
        window
            .iter()
            .enumerate()
            .filter(move |(other, _)| *other != index)
            .map(|(_, op)| op)
    };
    let written_elsewhere = others().any(|op| produced_value(op) == Some(value));
    let observed = others().any(|op| observed_value(op) == Some(value));
    observed && !written_elsewhere
}

/// The window's events, invoke and completion of each operation, in history order.
pub(crate) fn window_events(
    history: &KeyHistory,
    window: &[SearchOp],
    events: &[Event],
) -> Vec<Event> {
    let mut positions: Vec<usize> = Vec::with_capacity(2 * window.len());
    for op in window {
        let operation = &history.operations[op.origin];
        positions.push(operation.invoke_position);
        positions.extend(operation.completion_position);
    }
    positions.sort_unstable();
    positions
        .into_iter()
        .map(|position| events[position].clone())
        .collect()
}

/// Says in words why `window` cannot be ordered: the longest legal order the
/// search found, and the operation that could not come next.
pub(crate) fn explain(history: &KeyHistory, window: &[SearchOp]) -> String {
    let headline = if window.len() == 1 {
        "this operation cannot be ordered as one register that starts absent".to_owned()
    } else {
        format!(
            "these {} operations cannot be ordered as one register that starts absent",
            window.len()
        )
    };
    if window.len() > EXPLAINED_WINDOW_OPERATIONS_MAX {
        return format!("{headline}; shrinking them further ran out of its budget.");
    }
    let options = SearchOptions {
        steps_max: Some(MINIMISE_STEPS_MIN),
        record_order: true,
        prune_stranded_observers: false,
    };
    match search(window, options) {
        SearchOutcome::NotLinearizable(Failure {
            stuck_point: Some(stuck),
            ..
        }) => {
            format!(
                "{headline}. {}",
                describe_stuck_point(history, window, &stuck)
            )
        }
        SearchOutcome::NotLinearizable(_)
        | SearchOutcome::BudgetExhausted
        | SearchOutcome::Linearizable => format!("{headline}."),
    }
}

fn describe_stuck_point(history: &KeyHistory, window: &[SearchOp], stuck: &StuckPoint) -> String {
    let describe = |index: usize| describe_operation(history, &window[index]);
    // The search merges values nobody observes, so the value is replayed
    // from the operations as they were written.
    let value = stuck.order.iter().fold(ABSENT, |value, &index| {
        match history.operations[window[index].origin].model_op {
            ModelOp::Write { value: written } => written,
            ModelOp::Cas { expected, new } if expected == value => new,
            ModelOp::Cas { .. } | ModelOp::Read { .. } => value,
        }
    });
    let state = describe_state(history, value);
    let placed = if stuck.order.is_empty() {
        format!("No operation can come first: the key {state}")
    } else {
        let skipped = stuck
            .order
            .len()
            .saturating_sub(EXPLAINED_ORDER_OPERATIONS_MAX);
        let mut listed: Vec<String> = stuck.order[skipped..]
            .iter()
            .map(|&index| describe(index))
            .collect();
        if skipped > 0 {
            listed.insert(0, format!("{skipped} earlier operations"));
        }
        format!(
            "The longest legal order found places {} of them: {}; the key then {state}",
            stuck.order.len(),
            listed.join(", then ")
        )
    };
    let written_in_window = |needed: ValueId| {
        needed == ABSENT
            || window
                .iter()
                .any(|op| match history.operations[op.origin].model_op {
                    ModelOp::Write { value } => value == needed,
                    ModelOp::Cas { new, .. } => new == needed,
                    ModelOp::Read { .. } => false,
                })
    };
    let reason = match history.operations[window[stuck.blocking].origin].model_op {
        ModelOp::Read { output } if output != value => {
            format!("it cannot: it read {}", describe_value(history, output))
        }
        ModelOp::Cas { expected, .. } if expected != value => {
            format!(
                "it cannot: it swapped expecting {}",
                describe_value(history, expected)
            )
        }
        _ => "every choice from there leads to a dead end".to_owned(),
    };
    let needed = observed_value(&SearchOp {
        model_op: history.operations[window[stuck.blocking].origin].model_op,
        ..window[stuck.blocking]
    });
    let reason = match needed {
        Some(needed) if !written_in_window(needed) => {
            format!("{reason}, a value no operation called before it returned writes")
        }
        _ => reason,
    };
    format!(
        "{placed}. Next, {} must take effect before it returns, and {reason}.",
        describe(stuck.blocking)
    )
}

fn describe_value(history: &KeyHistory, value: ValueId) -> String {
    history.values[value as usize].to_string()
}

fn describe_state(history: &KeyHistory, value: ValueId) -> String {
    if value == ABSENT {
        "is absent".to_owned()
    } else {
        format!("holds {}", describe_value(history, value))
    }
}

fn describe_operation(history: &KeyHistory, op: &SearchOp) -> String {
    let operation = &history.operations[op.origin];
    let what = match (operation.f, operation.model_op) {
        (OpKind::Read, ModelOp::Read { output }) => {
            format!("read -> {}", describe_value(history, output))
        }
        (OpKind::Cas, ModelOp::Cas { expected, new }) => format!(
            "cas {} -> {}",
            describe_value(history, expected),
            describe_value(history, new)
        ),
        (OpKind::Delete, _) => "delete".to_owned(),
        (_, ModelOp::Write { value }) => format!("write {}", describe_value(history, value)),
        (f, _) => f.name().to_owned(),
    };
    let unknown = if operation.outcome == Outcome::Unknown {
        ", outcome unknown"
    } else {
        ""
    };
    format!("{what} (process {}{unknown})", operation.process)
}
