//! Splitting a validated history into one register history per key, with
//! values interned to small integers, and preparing it for the search.

use std::collections::HashMap;

use serde_json::Value;

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
    /// Canonical JSON text of each interned value, to its id.
    value_ids: HashMap<String, ValueId>,
}

impl KeyHistory {
    fn new(key: String) -> Self {
        KeyHistory {
            key,
            operations: Vec::new(),
            values: vec![Value::Null],
            value_ids: HashMap::new(),
        }
    }

    /// Values compare as JSON values: the string "1" and the number 1 are
    /// different, and so are 1 and 1.0, exactly as `serde_json::Value`'s
    /// equality says. Its serialisation is canonical for scalars, so it keys
    /// the table.
    fn intern(&mut self, value: &Value) -> ValueId {
        if value.is_null() {
            return ABSENT;
        }
        let text = value.to_string();
        if let Some(id) = self.value_ids.get(&text) {
            return *id;
        }
        let id = ValueId::try_from(self.values.len())
            .ok()
            .filter(|&id| id != UNOBSERVED)
            .expect("a key has fewer distinct values than u32::MAX: events_max keeps it so");
        self.values.push(value.clone());
        self.value_ids.insert(text, id);
        id
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
    // The operation each invoke opened, by the invoke's position.
    let mut operation_at_invoke: HashMap<usize, usize> = HashMap::new();
    let mut operations_count = 0;
    for (position, event) in events.iter().enumerate() {
        let accepted = validator.accept(event, position + 1, position)?;
        if accepted.key_index == keys.len() {
            keys.push(KeyHistory::new(event.key.clone()));
        }
        assert!(
            accepted.key_index < keys.len(),
            "key indexes are handed out in order of first appearance"
        );
        let history = &mut keys[accepted.key_index];
        match accepted.invoke_position {
            None => {
                operations_count += 1;
                let model_op = history.model_op_at_invoke(event);
                operation_at_invoke.insert(position, history.operations.len());
                history.operations.push(KeyOperation {
                    f: event.f,
                    process: event.process,
                    model_op,
                    outcome: Outcome::Unknown,
                    invoke_position: position,
                    completion_position: None,
                });
            }
            Some(invoke_position) => {
                let operation_index = operation_at_invoke
                    .remove(&invoke_position)
                    .expect("validated: a completion matches an open invoke");
                let output = match (event.kind, event.f) {
                    (EventType::Ok, OpKind::Read) => Some(history.intern(&event.value)),
                    _ => None,
                };
                let operation = &mut history.operations[operation_index];
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
    }
    assert_eq!(validator.keys_count(), keys.len(), "one history per key");
    Ok(SplitHistory {
        keys,
        operations_count,
    })
}
