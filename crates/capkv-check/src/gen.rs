//! Random linearizable histories, for benchmarks and tests.
//!
//! The generator simulates atomic registers shared by concurrent processes.
//! Each operation goes through three steps, each taken when the scheduler
//! picks its process: the invoke is recorded; then the operation takes
//! effect on the register at once (its linearization point) and its outcome
//! is decided; then the completion is recorded. Since every effect happens
//! between the invoke and the completion, the history is linearizable by
//! construction. The same seed gives the same history.

use serde_json::Value;

use crate::event::{Event, EventType, OpKind};

/// One in this many operations ends with `fail` and no effect.
const FAIL_ONE_IN: u64 = 40;
/// One in this many operations ends with `info`; it takes effect or not,
/// at even odds, and its process is replaced by a new one.
const INFO_ONE_IN: u64 = 200;
/// One in this many operations still running when the history ends never
/// completes at all.
const LEFT_OPEN_ONE_IN: u64 = 4;

/// The splitmix64 generator: small, fast, and good enough to drive a
/// simulation; written here so that no seed depends on another crate.
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    /// A number in `0..bound`; `bound` must not be zero.
    fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "a random choice needs at least one option");
        self.next_u64() % bound
    }

    fn index_below(&mut self, bound: usize) -> usize {
        usize::try_from(self.below(bound as u64)).expect("below a usize bound")
    }

    fn one_in(&mut self, odds: u64) -> bool {
        self.below(odds) == 0
    }
}

/// Where an in-flight operation stands.
enum Phase {
    /// Invoked; it has not taken effect yet.
    Invoked,
    /// Took effect (or decided not to); the completion is still to be sent.
    Decided { kind: EventType, value: Value },
}

/// An operation a process has in flight.
struct InFlight {
    f: OpKind,
    key_index: usize,
    /// The invoke's value: the write's value, or cas's `[expected, new]`.
    input: Value,
    phase: Phase,
}

struct Process {
    id: u64,
    in_flight: Option<InFlight>,
}

struct Simulation {
    rng: SplitMix64,
    registers: Vec<Value>,
    processes: Vec<Process>,
    next_process_id: u64,
    /// Every value ever written gets a new number, so most values are unique.
    next_value: u64,
    events: Vec<Event>,
}

impl Simulation {
    fn key(key_index: usize) -> String {
        format!("k{key_index}")
    }

    fn fresh_value(&mut self) -> Value {
        self.next_value += 1;
        // A mix of strings and numbers, as real histories have.
        if self.next_value.is_multiple_of(3) {
            Value::String(format!("v{}", self.next_value))
        } else {
            Value::from(self.next_value)
        }
    }

    fn push_event(
        &mut self,
        process: u64,
        kind: EventType,
        f: OpKind,
        key_index: usize,
        value: Value,
    ) {
        self.events.push(Event {
            process,
            kind,
            f,
            key: Self::key(key_index),
            value,
        });
    }

    fn invoke(&mut self, slot: usize) {
        let key_index = self.rng.index_below(self.registers.len());
        let (f, input) = match self.rng.below(10) {
            0..=3 => (OpKind::Read, Value::Null),
            4..=6 => (OpKind::Write, self.fresh_value()),
            7..=8 => {
                // Mostly the current value, so that many swaps succeed.
                let expected = if self.rng.one_in(3) {
                    Value::from(self.rng.below(self.next_value + 1))
                } else {
                    self.registers[key_index].clone()
                };
                (
                    OpKind::Cas,
                    Value::Array(vec![expected, self.fresh_value()]),
                )
            }
            _ => (OpKind::Delete, Value::Null),
        };
        let process = self.processes[slot].id;
        self.push_event(process, EventType::Invoke, f, key_index, input.clone());
        self.processes[slot].in_flight = Some(InFlight {
            f,
            key_index,
            input,
            phase: Phase::Invoked,
        });
    }

    /// The linearization point: the operation takes effect now, or never.
    fn take_effect(&mut self, slot: usize) {
        let Some(in_flight) = self.processes[slot].in_flight.as_ref() else {
            return;
        };
        let (f, key_index, input) = (in_flight.f, in_flight.key_index, in_flight.input.clone());
        let (kind, value) = if self.rng.one_in(FAIL_ONE_IN) {
            (EventType::Fail, completion_input(f, &input))
        } else if self.rng.one_in(INFO_ONE_IN) {
            if self.rng.one_in(2) {
                self.apply(f, key_index, &input);
            }
            (EventType::Info, completion_input(f, &input))
        } else {
            self.apply(f, key_index, &input)
        };
        if let Some(in_flight) = self.processes[slot].in_flight.as_mut() {
            in_flight.phase = Phase::Decided { kind, value };
        }
    }

    /// Applies an operation to its register; returns its completion.
    fn apply(&mut self, f: OpKind, key_index: usize, input: &Value) -> (EventType, Value) {
        let register = &mut self.registers[key_index];
        match f {
            OpKind::Read => (EventType::Ok, register.clone()),
            OpKind::Write => {
                *register = input.clone();
                (EventType::Ok, input.clone())
            }
            OpKind::Delete => {
                *register = Value::Null;
                (EventType::Ok, Value::Null)
            }
            OpKind::Cas => {
                let (expected, new) = match input.as_array().map(Vec::as_slice) {
                    Some([expected, new]) => (expected, new),
                    _ => unreachable!("the generator invokes cas with [expected, new]"),
                };
                if register == expected {
                    *register = new.clone();
                    (EventType::Ok, input.clone())
                } else {
                    (EventType::Fail, input.clone())
                }
            }
        }
    }

    fn complete(&mut self, slot: usize) {
        let Some(in_flight) = self.processes[slot].in_flight.take() else {
            return;
        };
        let Phase::Decided { kind, value } = in_flight.phase else {
            unreachable!("an operation completes only after it took effect");
        };
        let process = self.processes[slot].id;
        self.push_event(process, kind, in_flight.f, in_flight.key_index, value);
        if kind == EventType::Info {
            // Its operation may still take effect, so the process is retired.
            self.processes[slot].id = self.next_process_id;
            self.next_process_id += 1;
        }
    }

    /// Takes the next step of the process in `slot`.
    fn advance(&mut self, slot: usize) {
        match self.processes[slot]
            .in_flight
            .as_ref()
            .map(|in_flight| &in_flight.phase)
        {
            None => self.invoke(slot),
            Some(Phase::Invoked) => self.take_effect(slot),
            Some(Phase::Decided { .. }) => self.complete(slot),
        }
    }

    /// Finishes what is in flight at the end; a few operations never complete.
    fn drain(&mut self) {
        for slot in 0..self.processes.len() {
            let invoked = matches!(
                self.processes[slot]
                    .in_flight
                    .as_ref()
                    .map(|in_flight| &in_flight.phase),
                Some(Phase::Invoked)
            );
            if invoked && self.rng.one_in(LEFT_OPEN_ONE_IN) {
                // It may still take effect after the end; or may not.
                let in_flight = self.processes[slot].in_flight.take();
                if let Some(in_flight) = in_flight.filter(|_| self.rng.one_in(2)) {
                    self.apply(in_flight.f, in_flight.key_index, &in_flight.input);
                }
                continue;
            }
            while self.processes[slot].in_flight.is_some() {
                self.advance(slot);
            }
        }
    }
}

/// The value a `fail` or `info` completion carries: the invoke's.
fn completion_input(f: OpKind, input: &Value) -> Value {
    match f {
        OpKind::Read | OpKind::Delete => Value::Null,
        OpKind::Write | OpKind::Cas => input.clone(),
    }
}

/// Generates a random linearizable history of `operations` invokes on
/// `keys` keys (`k0`, `k1`, ...) by `processes` concurrent processes, from
/// `seed`.
///
/// Reads, writes, cas and deletes are mixed about 4:3:2:1; about one in 40
/// operations fails, one in 200 ends with `info` (taking effect or not) and
/// retires its process for a new id, and a few still running at the end
/// never complete. Written values are mostly unique, half strings half
/// numbers. `keys` and `processes` of 0 count as 1.
pub fn generate_register_history(
    seed: u64,
    operations: usize,
    keys: usize,
    processes: usize,
) -> Vec<Event> {
    let processes = processes.max(1);
    let mut simulation = Simulation {
        rng: SplitMix64::new(seed),
        registers: vec![Value::Null; keys.max(1)],
        processes: (0..processes as u64)
            .map(|id| Process {
                id,
                in_flight: None,
            })
            .collect(),
        next_process_id: processes as u64,
        next_value: 0,
        events: Vec::with_capacity(2 * operations),
    };
    let mut invoked = 0;
    while invoked < operations {
        let slot = simulation.rng.index_below(processes);
        if simulation.processes[slot].in_flight.is_none() {
            invoked += 1;
        }
        simulation.advance(slot);
    }
    simulation.drain();
    simulation.events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_history() {
        assert_eq!(
            generate_register_history(7, 500, 3, 5),
            generate_register_history(7, 500, 3, 5)
        );
        assert_ne!(
            generate_register_history(7, 500, 3, 5),
            generate_register_history(8, 500, 3, 5)
        );
    }

    #[test]
    fn it_makes_the_operations_asked_for() {
        let events = generate_register_history(1, 1_000, 4, 6);
        let invokes = events
            .iter()
            .filter(|event| event.kind == EventType::Invoke)
            .count();
        assert_eq!(invokes, 1_000);
        for kind in [EventType::Ok, EventType::Fail, EventType::Info] {
            assert!(events.iter().any(|event| event.kind == kind), "{kind:?}");
        }
    }
}
