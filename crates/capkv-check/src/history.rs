//! Splitting a validated history into one register history per key, with
//! values interned to small integers, and preparing it for the search.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use serde_json::{Number, Value};

use crate::event::{Event, EventType, InputError, Limits, OpKind};
use crate::parse::Validator;
use crate::search::{ModelOp, SearchOp, ValueId, ABSENT, UNOBSERVED};

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Took effect, with the result carried by its completion.
    Ok,
    /// Certainly did not take effect.
    Fail,
    /// Completed with `info`, or never completed: it may or may not have
    /// taken effect, at any time after its invoke.
    Unknown,
}

/// One operation on one key, paired from its invoke and completion.
#[derive(Clone, Debug)]
pub(crate) struct KeyOperation {
    pub f: OpKind,
    pub process: u64,
    /// The operation as the register model sees it; a read's output is
    /// filled in by its `ok`.
    pub model_op: ModelOp,
    pub outcome: Outcome,
    /// Position of the invoke in the history: its real-time call point.
    pub invoke_position: usize,
    /// Position of the completion, if any (`info` included).
    pub completion_position: Option<usize>,
}

/// The history of one key: an independent register.
pub(crate) struct KeyHistory {
    pub key: String,
    pub operations: Vec<KeyOperation>,
    /// Interned values: `values[id]` is the JSON value of `id`; id 0 is null.
    pub values: Vec<Value>,
    /// Interned strings, to their ids: looked up by `&str`, so a value seen
    /// before costs no allocation.
    string_ids: HashMap<String, ValueId>,
    /// Interned numbers, to their ids.
    number_ids: HashMap<NumberKey, ValueId>,
}

/// A JSON number as the interning table tells numbers apart: exactly when
/// their canonical JSON text differs. An integer is never equal to a float
/// (`1` is not `1.0`, whose text differs), and floats, which are finite in
/// JSON, have distinct shortest texts exactly when their bits differ (so
/// `0.0` is not `-0.0`). This relies on serde_json without its
/// `arbitrary_precision` feature, where a number is one of these three.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NumberKey {
    Unsigned(u64),
    Negative(i64),
    Float(u64),
}

/// Hashes the payload alone, one word: numbers of different kinds whose
/// words agree merely share a bucket, and equality tells them apart.
impl Hash for NumberKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let word = match *self {
            NumberKey::Unsigned(unsigned) => unsigned,
            NumberKey::Negative(negative) => negative as u64,
            NumberKey::Float(bits) => bits,
        };
        state.write_u64(word);
    }
}

impl NumberKey {
    fn of(number: &Number) -> Self {
        if let Some(unsigned) = number.as_u64() {
            NumberKey::Unsigned(unsigned)
        } else if let Some(negative) = number.as_i64() {
            NumberKey::Negative(negative)
        } else {
            NumberKey::Float(number.as_f64().map_or(0, f64::to_bits))
        }
    }
}

impl KeyHistory {
    fn new(key: String) -> Self {
        KeyHistory {
            key,
            operations: Vec::new(),
            values: vec![Value::Null],
            string_ids: HashMap::new(),
            number_ids: HashMap::new(),
        }
    }

    /// Values compare as JSON values: the string "1" and the number 1 are
    /// different, and so are 1 and 1.0, as their canonical JSON texts are.
    /// Strings and numbers have a table each, keyed without formatting.
    fn intern(&mut self, value: &Value) -> ValueId {
        match value {
            Value::String(text) => {
                if let Some(id) = self.string_ids.get(text.as_str()) {
                    return *id;
                }
                let id = push_value(&mut self.values, value);
                self.string_ids.insert(text.clone(), id);
                id
            }
            Value::Number(number) => match self.number_ids.entry(NumberKey::of(number)) {
                Entry::Occupied(known) => *known.get(),
                Entry::Vacant(new) => *new.insert(push_value(&mut self.values, value)),
            },
            _ => {
                assert!(value.is_null(), "validated: values are scalars");
                ABSENT
            }
        }
    }

    fn model_op_at_invoke(&mut self, event: &Event) -> ModelOp {
        match event.f {
            OpKind::Read => ModelOp::Read { output: ABSENT },
            OpKind::Write => ModelOp::Write {
                value: self.intern(&event.value),
            },
            OpKind::Delete => ModelOp::Write { value: ABSENT },
            OpKind::Cas => {
                let pair = event
                    .value
                    .as_array()
                    .expect("validated: a cas invoke carries [expected, new]");
                ModelOp::Cas {
                    expected: self.intern(&pair[0]),
                    new: self.intern(&pair[1]),
                }
            }
        }
    }

    /// The operations the search must order. `fail` operations are left
    /// out: they did not take effect, and their observation (a cas that did
    /// not swap) is not required to be ordered, as in Knossos and Jepsen.
    /// Reads with an unknown outcome constrain nothing and are left out too.
    /// Writes with an unknown outcome whose value nobody ever observes are
    /// left out as well: see [`crate`]'s docs for why that is sound. Other
    /// values nobody observes become [`UNOBSERVED`].
    pub(crate) fn search_ops(&self) -> Vec<SearchOp> {
        let observed = self.observed_values();
        let merge_unobserved = |value: ValueId| {
            if value == ABSENT || observed[value as usize] {
                value
            } else {
                UNOBSERVED
            }
        };
        let mut search_ops = Vec::with_capacity(self.operations.len());
        for (origin, operation) in self.operations.iter().enumerate() {
            let keep = match operation.outcome {
                Outcome::Fail => false,
                Outcome::Ok => true,
                Outcome::Unknown => match operation.model_op {
                    ModelOp::Read { .. } => false,
                    ModelOp::Write { value } => observed[value as usize],
                    ModelOp::Cas { new, .. } => observed[new as usize],
                },
            };
            if keep {
                let model_op = match operation.model_op {
                    ModelOp::Write { value } => ModelOp::Write {
                        value: merge_unobserved(value),
                    },
                    ModelOp::Cas { expected, new } => ModelOp::Cas {
                        expected,
                        new: merge_unobserved(new),
                    },
                    read @ ModelOp::Read { .. } => read,
                };
                search_ops.push(SearchOp {
                    model_op,
                    call_position: operation.invoke_position,
                    return_position: match operation.outcome {
                        Outcome::Ok => operation.completion_position,
                        Outcome::Fail | Outcome::Unknown => None,
                    },
                    origin,
                });
            }
        }
        search_ops
    }

    /// Which values some operation depends on seeing: the output of a read
    /// that took effect, and the expected value of any cas that may have.
    fn observed_values(&self) -> Vec<bool> {
        let mut observed = vec![false; self.values.len()];
        for operation in &self.operations {
            match (operation.outcome, operation.model_op) {
                (Outcome::Ok, ModelOp::Read { output }) => observed[output as usize] = true,
                (Outcome::Ok | Outcome::Unknown, ModelOp::Cas { expected, .. }) => {
                    observed[expected as usize] = true;
                }
                _ => {}
            }
        }
        observed
    }
}

/// Gives `value` the next id in `values`.
fn push_value(values: &mut Vec<Value>, value: &Value) -> ValueId {
    let id = ValueId::try_from(values.len())
        .ok()
        .filter(|&id| id != UNOBSERVED)
        .expect("a key has fewer distinct values than u32::MAX: events_max keeps it so");
    values.push(value.clone());
    id
}

/// A validated history, split per key.
pub(crate) struct SplitHistory {
    /// Key histories in order of the key's first appearance.
    pub keys: Vec<KeyHistory>,
    /// Invokes in the whole history.
    pub operations_count: usize,
}

/// Validates `events` and splits them per key in one pass.
pub(crate) fn split_by_key(events: &[Event], limits: &Limits) -> Result<SplitHistory, InputError> {
    let mut validator = Validator::new(limits);
    let mut keys: Vec<KeyHistory> = Vec::new();
    let mut operations_count = 0;
    for (position, event) in events.iter().enumerate() {
        let accepted = validator.accept(event, position + 1)?;
        if accepted.key_index == keys.len() {
            keys.push(KeyHistory::new(event.key.clone()));
        }
        assert!(
            accepted.key_index < keys.len(),
            "key indexes are handed out in order of first appearance"
        );
        let history = &mut keys[accepted.key_index];
        if event.kind == EventType::Invoke {
            operations_count += 1;
            history.open(event, position, accepted.key_operation);
        } else {
            history.complete(event, position, accepted.key_operation);
        }
    }
    assert_eq!(validator.keys_count(), keys.len(), "one history per key");
    Ok(SplitHistory {
        keys,
        operations_count,
    })
}

impl KeyHistory {
    /// Adds the operation that the invoke `event` at `position` opens, as
    /// the key's operation number `key_operation`.
    fn open(&mut self, event: &Event, position: usize, key_operation: usize) {
        assert_eq!(
            key_operation,
            self.operations.len(),
            "a key's operations are numbered in invoke order"
        );
        let model_op = self.model_op_at_invoke(event);
        self.operations.push(KeyOperation {
            f: event.f,
            process: event.process,
            model_op,
            outcome: Outcome::Unknown,
            invoke_position: position,
            completion_position: None,
        });
    }

    /// Records how operation `key_operation` ended, from its completion
    /// `event` at `position`.
    fn complete(&mut self, event: &Event, position: usize, key_operation: usize) {
        let output = match (event.kind, event.f) {
            (EventType::Ok, OpKind::Read) => Some(self.intern(&event.value)),
            _ => None,
        };
        let operation = &mut self.operations[key_operation];
        operation.completion_position = Some(position);
        operation.outcome = match event.kind {
            EventType::Ok => Outcome::Ok,
            EventType::Fail => Outcome::Fail,
            EventType::Info | EventType::Invoke => Outcome::Unknown,
        };
        if let (Some(output), ModelOp::Read { .. }) = (output, operation.model_op) {
            operation.model_op = ModelOp::Read { output };
        }
    }
}
