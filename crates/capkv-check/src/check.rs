//! Checking a whole history: key by key, stopping at the first key that
//! cannot be linearized.

use crate::event::{Event, InputError, Limits};
use crate::history::split_by_key;
use crate::search::{search_counting_steps, SearchOptions, SearchOutcome};
use crate::window::{explain, find_window, window_events};

/// The result of checking a history.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Every key's history has a legal order.
    Linearizable {
        /// Distinct keys in the history.
        keys: usize,
        /// Operations (invokes) in the history, including those that failed
        /// or whose outcome is unknown.
        operations: usize,
    },
    /// A key's history has no legal order; the first such key, in order of
    /// first appearance.
    NotLinearizable(Violation),
}

/// Why a key's history is not linearizable.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    /// The key whose history cannot be ordered.
    pub key: String,
    /// A small set of that key's operations that cannot be ordered even on
    /// their own, as their invoke and completion events in history order.
    /// Fed back to [`check_events`], it fails too.
    pub window: Vec<Event>,
    /// The window's story in words: the longest legal order found and the
    /// operation that could not come next.
    pub explanation: String,
}

/// Checks a history of events against the register model, one register per
/// key. Validates the pairing rules and `limits` first, so a simulator can
/// call it directly; errors then name the 1-based position of the event.
pub fn check_events(events: &[Event], limits: &Limits) -> Result<Verdict, InputError> {
    let split = split_by_key(events, limits)?;
    for history in &split.keys {
        let ops = history.search_ops();
        match search_counting_steps(&ops, SearchOptions::CHECK) {
            (SearchOutcome::Linearizable, _) => {}
            (SearchOutcome::NotLinearizable(failure), steps) => {
                // Where to look first: the observer an early dead-end check
                // found stranded, then the operation the search got stuck on.
                let blocking = failure.stuck_point.map(|stuck_point| stuck_point.blocking);
                let mut hints = failure.stranded_observers;
                hints.extend(blocking);
                let window = find_window(&ops, steps, &hints);
                return Ok(Verdict::NotLinearizable(Violation {
                    key: history.key.clone(),
                    window: window_events(history, &window, events),
                    explanation: explain(history, &window),
                }));
            }
            (SearchOutcome::BudgetExhausted, _) => {
                unreachable!("a search without a step budget runs to its end")
            }
        }
    }
    Ok(Verdict::Linearizable {
        keys: split.keys.len(),
        operations: split.operations_count,
    })
}
