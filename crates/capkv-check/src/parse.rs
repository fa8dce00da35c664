//! Reading JSON lines into events, and the pairing rules every history must
//! follow before it can be checked.

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::rc::Rc;

use serde_json::Value;

use crate::event::{Event, EventType, InputError, Limits, OpKind};

/// Reads a history, one JSON event per line (blank lines are skipped), and
/// validates the pairing rules and the limits as it goes.
///
/// Errors name the 1-based input line. A line longer than
/// `limits.line_bytes_max` is rejected before it is buffered whole.
pub fn parse_history(mut input: impl BufRead, limits: &Limits) -> Result<Vec<Event>, InputError> {
    let mut events = Vec::new();
    let mut validator = Validator::new(limits);
    let mut line_bytes = Vec::new();
    let mut line_number = 0;
    loop {
        line_number += 1;
        line_bytes.clear();
        if !read_line_bounded(&mut input, &mut line_bytes, limits, line_number)? {
            return Ok(events);
        }
        let text = std::str::from_utf8(&line_bytes)
            .map_err(|error| InputError::new(line_number, format!("not UTF-8: {error}")))?;
        if text.trim().is_empty() {
            continue;
        }
        let event: Event = serde_json::from_str(text)
            .map_err(|error| InputError::new(line_number, format!("not a valid event: {error}")))?;
        validator.accept(&event, line_number)?;
        events.push(event);
    }
}

/// Reads one line without its ending into `line_bytes`; false at the end of
/// the input. Reads at most `line_bytes_max` + 2 bytes, so a line without an
/// end cannot grow the buffer beyond the limit.
fn read_line_bounded(
    input: &mut impl BufRead,
    line_bytes: &mut Vec<u8>,
    limits: &Limits,
    line_number: usize,
) -> Result<bool, InputError> {
    // Two more bytes than the limit leave room for the `\r\n` of a line that
    // is exactly at the limit.
    let read_bytes_max = u64::try_from(limits.line_bytes_max)
        .unwrap_or(u64::MAX)
        .saturating_add(2);
    let read = input
        .by_ref()
        .take(read_bytes_max)
        .read_until(b'\n', line_bytes)
        .map_err(|error| InputError::new(line_number, format!("cannot read input: {error}")))?;
    if read == 0 {
        return Ok(false);
    }
    if line_bytes.last() == Some(&b'\n') {
        line_bytes.pop();
        if line_bytes.last() == Some(&b'\r') {
            line_bytes.pop();
        }
    }
    if line_bytes.len() > limits.line_bytes_max {
        return Err(InputError::new(
            line_number,
            format!(
                "line longer than {} bytes (line_bytes_max)",
                limits.line_bytes_max
            ),
        ));
    }
    Ok(true)
}

/// Where a process stands in its history.
enum ProcessState {
    /// It invoked an operation that has not completed yet.
    Open {
        f: OpKind,
        key_index: usize,
        /// The operation's index among its key's operations, so a
        /// completion finds it.
        key_operation: usize,
        line: usize,
    },
    /// Its last operation ended with `info`: it may still take effect, so
    /// the process can never be reused.
    Closed { line: usize },
}

/// What the validator learned from an accepted event.
pub(crate) struct Accepted {
    /// The key's index, in order of first appearance.
    pub key_index: usize,
    /// The operation's index among its key's operations, in invoke order:
    /// an invoke opens it, a completion closes it.
    pub key_operation: usize,
}

/// The keys seen so far. A key's name is shared between the lookup table
/// and the list by index, so a completion compares its key with its
/// invoke's by text instead of hashing it again.
#[derive(Default)]
struct Keys {
    /// Key to its index, in order of first appearance.
    indexes: HashMap<Rc<str>, usize>,
    /// Key names by index.
    names: Vec<Rc<str>>,
    /// Invokes seen per key, by index.
    invokes: Vec<usize>,
}

impl Keys {
    fn index_or_insert(
        &mut self,
        key: &str,
        line: usize,
        limits: &Limits,
    ) -> Result<usize, InputError> {
        if let Some(index) = self.indexes.get(key) {
            return Ok(*index);
        }
        if self.names.len() >= limits.keys_max {
            return Err(InputError::new(
                line,
                format!("more than {} keys (keys_max)", limits.keys_max),
            ));
        }
        let index = self.names.len();
        let name: Rc<str> = Rc::from(key);
        self.indexes.insert(Rc::clone(&name), index);
        self.names.push(name);
        self.invokes.push(0);
        Ok(index)
    }
}

/// Process ids below this are looked up in a vector: histories number their
/// processes from 0 up, and a vector slot costs far less than hashing the id
/// at every event. Larger ids go to a map, so no id can make the vector big.
const DIRECT_PROCESS_IDS: u64 = 4096;

/// Where each process stands: `None` while it is idle.
#[derive(Default)]
struct Processes {
    /// By id, for ids below [`DIRECT_PROCESS_IDS`].
    direct: Vec<Option<ProcessState>>,
    /// The others; an idle one may keep its entry.
    others: HashMap<u64, Option<ProcessState>>,
}

impl Processes {
    fn state(&mut self, process: u64) -> &mut Option<ProcessState> {
        if process >= DIRECT_PROCESS_IDS {
            return self.others.entry(process).or_default();
        }
        let index = process as usize;
        if index >= self.direct.len() {
            self.direct.resize_with(index + 1, || None);
        }
        &mut self.direct[index]
    }
}

/// Checks the pairing rules and the limits, one event at a time, in history
/// order. Shared by [`parse_history`] and [`crate::check_events`], so a
/// simulator that builds events itself gets the same checks.
pub(crate) struct Validator<'limits> {
    limits: &'limits Limits,
    events_count: usize,
    processes: Processes,
    keys: Keys,
}

impl<'limits> Validator<'limits> {
    pub(crate) fn new(limits: &'limits Limits) -> Self {
        Validator {
            limits,
            events_count: 0,
            processes: Processes::default(),
            keys: Keys::default(),
        }
    }

    /// The number of distinct keys accepted so far.
    pub(crate) fn keys_count(&self) -> usize {
        self.keys.names.len()
    }

    /// Accepts the next event of the history (reported as `line`), or says
    /// which rule it breaks.
    pub(crate) fn accept(&mut self, event: &Event, line: usize) -> Result<Accepted, InputError> {
        self.events_count += 1;
        if self.events_count > self.limits.events_max {
            return Err(InputError::new(
                line,
                format!("more than {} events (events_max)", self.limits.events_max),
            ));
        }
        check_value_shape(event).map_err(|reason| InputError::new(line, reason))?;
        match event.kind {
            EventType::Invoke => self.accept_invoke(event, line),
            EventType::Ok | EventType::Fail | EventType::Info => {
                self.accept_completion(event, line)
            }
        }
    }

    /// Looks the process up once (this runs for every event of every
    /// simulated history) and opens the operation in the slot it found.
    fn accept_invoke(&mut self, event: &Event, line: usize) -> Result<Accepted, InputError> {
        let state = self.processes.state(event.process);
        if let Some(busy) = state {
            return Err(invoke_while_busy(event, line, busy));
        }
        let key_index = self.keys.index_or_insert(&event.key, line, self.limits)?;
        let invokes = &mut self.keys.invokes[key_index];
        let key_operation = *invokes;
        *invokes += 1;
        if *invokes > self.limits.ops_per_key_max {
            return Err(InputError::new(
                line,
                format!(
                    "more than {} operations on key {:?} (ops_per_key_max)",
                    self.limits.ops_per_key_max, event.key
                ),
            ));
        }
        *state = Some(ProcessState::Open {
            f: event.f,
            key_index,
            key_operation,
            line,
        });
        Ok(Accepted {
            key_index,
            key_operation,
        })
    }

    fn accept_completion(&mut self, event: &Event, line: usize) -> Result<Accepted, InputError> {
        let type_name = type_name(event.kind);
        let state = self.processes.state(event.process);
        let Some(ProcessState::Open {
            f,
            key_index,
            key_operation,
            line: invoke_line,
        }) = *state
        else {
            return Err(no_open_invoke(event, line));
        };
        if f != event.f || *self.keys.names[key_index] != *event.key {
            return Err(InputError::new(
                line,
                format!(
                    "{type_name} of {} on key {:?} does not match the open {} of process {} \
                     from line {invoke_line}",
                    event.f.name(),
                    event.key,
                    f.name(),
                    event.process
                ),
            ));
        }
        *state = (event.kind == EventType::Info).then_some(ProcessState::Closed { line });
        Ok(Accepted {
            key_index,
            key_operation,
        })
    }
}

/// The error for an invoke from a process that is open or closed.
fn invoke_while_busy(event: &Event, line: usize, state: &ProcessState) -> InputError {
    match state {
        ProcessState::Open {
            f, line: open_line, ..
        } => InputError::new(
            line,
            format!(
                "process {} invokes {} while its {} from line {open_line} is still open",
                event.process,
                event.f.name(),
                f.name()
            ),
        ),
        ProcessState::Closed { line: info_line } => InputError::new(
            line,
            format!(
                "process {} invokes again after its operation ended with info on line \
                 {info_line}; an operation with an unknown outcome stays open, so use \
                 a new process id",
                event.process
            ),
        ),
    }
}

/// The error for a completion from a process with nothing open.
fn no_open_invoke(event: &Event, line: usize) -> InputError {
    InputError::new(
        line,
        format!(
            "{} from process {} has no open invoke to complete",
            type_name(event.kind),
            event.process
        ),
    )
}

fn type_name(kind: EventType) -> &'static str {
    match kind {
        EventType::Invoke => "invoke",
        EventType::Ok => "ok",
        EventType::Fail => "fail",
        EventType::Info => "info",
    }
}

fn is_scalar(value: &Value) -> bool {
    matches!(value, Value::Null | Value::String(_) | Value::Number(_))
}

fn is_cas_pair(value: &Value) -> bool {
    matches!(value, Value::Array(pair) if pair.len() == 2 && pair.iter().all(is_scalar))
}

/// The value must be a string, number or null; for cas, `[expected, new]` on
/// the invoke, and null or such a pair on a completion (the invoke's pair is
/// the one that counts).
fn check_value_shape(event: &Event) -> Result<(), String> {
    let cas_completion = event.f == OpKind::Cas && event.kind != EventType::Invoke;
    let well_formed = match event.f {
        OpKind::Cas if cas_completion => event.value.is_null() || is_cas_pair(&event.value),
        OpKind::Cas => is_cas_pair(&event.value),
        OpKind::Read | OpKind::Write | OpKind::Delete => is_scalar(&event.value),
    };
    if well_formed {
        return Ok(());
    }
    let expected = match event.f {
        OpKind::Cas => "[expected, new] with each a string, number or null",
        _ => "a string, number or null",
    };
    Err(format!(
        "the value of a {} {} must be {expected}, found {}",
        event.f.name(),
        type_name(event.kind),
        event.value
    ))
}
