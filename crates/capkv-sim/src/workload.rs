//! Simulated clients: each runs one operation at a time against the cluster,
//! follows leader hints, retries only what certainly did not happen, and
//! records a Jepsen-style history.

use crate::sim::Micros;
use capkv_check::{Event, EventType, OpKind};
use capkv_core::{NodeId, Rng};
use capkv_node::{
    Applied, BucketSpec, Command, Expected, ReadConsistency, Request, RequestError, Response,
};
use serde_json::Value;
use std::collections::BTreeMap;

const MS: Micros = 1_000;
/// Retries of one operation after definite refusals (no leader, busy).
const RETRIES_MAX: u32 = 30;
/// The bucket every simulated client uses.
pub const BUCKET: &str = "sim";

/// What a client wants the simulator to do next.
#[derive(Debug)]
pub enum ClientAction {
    /// Nothing until a response or an already-set timer.
    Idle,
    /// Wake me after this long.
    Sleep(Micros),
    /// Send `request` to `node`; give up after `timeout`.
    Send {
        /// Target node.
        node: NodeId,
        /// The request.
        request: Request,
        /// Deadline from now.
        timeout: Micros,
    },
}

#[derive(Clone, Debug)]
struct Operation {
    f: OpKind,
    key: String,
    /// The history value of the invoke.
    value: Value,
    request: Request,
    /// False for set-up operations (creating the bucket) that are not part
    /// of the checked history.
    recorded: bool,
}

#[derive(Debug)]
enum State {
    Idle,
    Waiting {
        request_id: u64,
        deadline: Micros,
        operation: Operation,
        retries: u32,
    },
    Backoff {
        until: Micros,
        operation: Operation,
        retries: u32,
    },
}

/// One simulated client.
pub struct Client {
    index: usize,
    /// The history process id; a new one after every unknown outcome.
    process: u64,
    clients_total: u64,
    keys: u64,
    nodes: u64,
    rng: Rng,
    state: State,
    leader_hint: Option<NodeId>,
    /// Whether this client has seen its bucket created.
    bucket_ready: bool,
    writes: u64,
    /// The last value this client saw for each key, for compare-and-set.
    last_seen: BTreeMap<String, Value>,
    /// History events recorded and not yet drained by the simulator.
    new_events: Vec<Event>,
    timeout: Micros,
}

impl Client {
    /// Client number `index` of `clients_total`, against `nodes` nodes,
    /// using `keys` keys, giving up on an operation after `timeout`.
    pub fn new(
        index: usize,
        clients_total: u64,
        keys: u64,
        nodes: u64,
        timeout: Micros,
        rng: Rng,
    ) -> Client {
        Client {
            index,
            process: index as u64,
            clients_total,
            keys,
            nodes,
            rng,
            state: State::Idle,
            leader_hint: None,
            bucket_ready: false,
            writes: 0,
            last_seen: BTreeMap::new(),
            new_events: Vec::new(),
            timeout,
        }
    }

    /// Records that request `request_id` went out with `deadline`.
    pub fn sent(&mut self, request_id: u64, deadline: Micros) {
        if let State::Waiting {
            request_id: id,
            deadline: d,
            ..
        } = &mut self.state
        {
            *id = request_id;
            *d = deadline;
        }
    }

    /// Moves the events recorded since the last call to the end of
    /// `history`, keeping this client's buffer for the next ones.
    pub fn drain_history_into(&mut self, history: &mut Vec<Event>) {
        history.append(&mut self.new_events);
    }

    fn record(&mut self, kind: EventType, operation: &Operation, value: Value) {
        if !operation.recorded {
            return;
        }
        self.new_events.push(Event {
            process: self.process,
            kind,
            f: operation.f,
            key: operation.key.clone(),
            value,
        });
    }

    /// A timer fired. `accepting` is false once the load phase is over.
    pub fn on_wake(&mut self, now: Micros, accepting: bool) -> ClientAction {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Waiting {
                request_id,
                deadline,
                operation,
                retries,
            } => {
                if now < deadline {
                    self.state = State::Waiting {
                        request_id,
                        deadline,
                        operation,
                        retries,
                    };
                    return ClientAction::Idle;
                }
                self.give_up(&operation);
                self.think()
            }
            State::Backoff {
                until,
                operation,
                retries,
            } => {
                if now < until {
                    self.state = State::Backoff {
                        until,
                        operation,
                        retries,
                    };
                    return ClientAction::Idle;
                }
                self.send(operation, retries)
            }
            State::Idle => {
                if !accepting {
                    return ClientAction::Idle;
                }
                let operation = if self.bucket_ready {
                    self.next_operation()
                } else {
                    create_bucket()
                };
                self.record(EventType::Invoke, &operation, operation.value.clone());
                self.send(operation, 0)
            }
        }
    }

    /// The outcome is unknown: a mutation may still take effect, so this
    /// process is done (`info`) and the client continues as a new process.
    fn give_up(&mut self, operation: &Operation) {
        if !operation.recorded {
            // Set-up is idempotent: it is simply tried again.
        } else if operation.f == OpKind::Read {
            // A read has no effect: it simply failed.
            self.record(EventType::Fail, operation, Value::Null);
        } else {
            self.record(EventType::Info, operation, operation.value.clone());
            self.process += self.clients_total.max(1);
        }
        self.leader_hint = None;
    }

    fn think(&mut self) -> ClientAction {
        ClientAction::Sleep(self.rng.range(0, 5 * MS))
    }

    fn send(&mut self, operation: Operation, retries: u32) -> ClientAction {
        let node = match self.leader_hint {
            Some(node) => node,
            None => NodeId(1 + self.rng.range(0, self.nodes)),
        };
        let request = operation.request.clone();
        self.state = State::Waiting {
            request_id: 0,
            deadline: Micros::MAX,
            operation,
            retries,
        };
        ClientAction::Send {
            node,
            request,
            timeout: self.timeout,
        }
    }

    /// A response arrived.
    pub fn on_response(
        &mut self,
        now: Micros,
        request_id: u64,
        response: Response,
    ) -> ClientAction {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Waiting {
                request_id: waiting_for,
                operation,
                retries,
                ..
            } if waiting_for == request_id => self.on_answer(now, operation, retries, response),
            other => {
                self.state = other; // a late answer to an abandoned request
                ClientAction::Idle
            }
        }
    }

    /// The answer to the operation in flight; the state is already Idle.
    fn on_answer(
        &mut self,
        now: Micros,
        operation: Operation,
        retries: u32,
        response: Response,
    ) -> ClientAction {
        match response {
            Response::Applied(Applied::CasFailed { .. }) => {
                self.record(EventType::Fail, &operation, operation.value.clone());
                self.think()
            }
            Response::Applied(Applied::BucketReady { .. }) if !operation.recorded => {
                self.bucket_ready = true;
                self.think()
            }
            Response::Applied(_) => {
                if let Some(new) = written_value(&operation) {
                    self.last_seen.insert(operation.key.clone(), new);
                }
                self.record(EventType::Ok, &operation, operation.value.clone());
                self.think()
            }
            Response::Value(versioned) => {
                let value = versioned.map_or(Value::Null, |v| decode_value(&v.value));
                self.last_seen.insert(operation.key.clone(), value.clone());
                self.record(EventType::Ok, &operation, value);
                self.think()
            }
            Response::Failed(RequestError::NotLeader { leader }) if retries < RETRIES_MAX => {
                self.leader_hint = leader;
                let wait = if leader.is_some() { 1 } else { 20 };
                self.backoff(now, operation, retries, wait)
            }
            Response::Failed(RequestError::Busy(_)) if retries < RETRIES_MAX => {
                self.backoff(now, operation, retries, 20)
            }
            // cp clients send no ap requests; an ap answer here is a bug
            // in routing, recorded as a failure the checker will not miss.
            Response::Failed(_) | Response::Ap(_) => {
                // Definitely not applied (dropped, invalid, or out of retries).
                self.record(EventType::Fail, &operation, operation.value.clone());
                self.think()
            }
        }
    }

    fn backoff(
        &mut self,
        now: Micros,
        operation: Operation,
        retries: u32,
        wait_ms: u64,
    ) -> ClientAction {
        let delay = self.rng.range(wait_ms * MS / 2, wait_ms * MS + 1);
        self.state = State::Backoff {
            until: now + delay,
            operation,
            retries: retries + 1,
        };
        ClientAction::Sleep(delay)
    }

    fn next_operation(&mut self) -> Operation {
        let key = format!("k{}", self.rng.range(0, self.keys));
        let roll = self.rng.range(0, 100);
        if roll < 45 {
            return Operation {
                f: OpKind::Read,
                key: key.clone(),
                value: Value::Null,
                request: Request::Read {
                    bucket: BUCKET.into(),
                    key,
                    consistency: ReadConsistency::Linearizable,
                },
                recorded: true,
            };
        }
        if roll < 50 {
            return Operation {
                f: OpKind::Delete,
                key: key.clone(),
                value: Value::Null,
                request: Request::Write(Command::Delete {
                    bucket: BUCKET.into(),
                    key,
                }),
                recorded: true,
            };
        }
        self.writes += 1;
        let new = (self.index as u64 + 1) * 1_000_000 + self.writes;
        if roll < 80 {
            return Operation {
                f: OpKind::Write,
                key: key.clone(),
                value: Value::from(new),
                request: Request::Write(Command::Put {
                    bucket: BUCKET.into(),
                    key,
                    value: new.to_string().into_bytes(),
                }),
                recorded: true,
            };
        }
        let expected = self.last_seen.get(&key).cloned().unwrap_or(Value::Null);
        let expected_bytes = match &expected {
            Value::Null => None,
            other => Some(encode_value(other)),
        };
        Operation {
            f: OpKind::Cas,
            key: key.clone(),
            value: Value::Array(vec![expected, Value::from(new)]),
            request: Request::Write(Command::Cas {
                bucket: BUCKET.into(),
                key,
                expected: Expected::Value(expected_bytes),
                value: Some(new.to_string().into_bytes()),
            }),
            recorded: true,
        }
    }

    /// At the end of the run, an operation still waiting has an unknown
    /// outcome.
    pub fn close_open_operations(&mut self, history: &mut Vec<Event>) {
        let operation = match std::mem::replace(&mut self.state, State::Idle) {
            State::Waiting { operation, .. } | State::Backoff { operation, .. } => operation,
            State::Idle => return,
        };
        self.give_up(&operation);
        self.drain_history_into(history);
    }
}

fn create_bucket() -> Operation {
    Operation {
        f: OpKind::Write,
        key: String::new(),
        value: Value::Null,
        request: Request::Write(Command::CreateBucket {
            name: BUCKET.into(),
            spec: BucketSpec::cp(3),
        }),
        recorded: false,
    }
}

fn written_value(operation: &Operation) -> Option<Value> {
    match operation.f {
        OpKind::Write => Some(operation.value.clone()),
        OpKind::Cas => match &operation.value {
            Value::Array(pair) => pair.get(1).cloned(),
            _ => None,
        },
        OpKind::Delete => Some(Value::Null),
        OpKind::Read => None,
    }
}

fn encode_value(value: &Value) -> Vec<u8> {
    match value {
        Value::String(text) => text.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

fn decode_value(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    match text.parse::<u64>() {
        Ok(number) => Value::from(number),
        Err(_) => Value::String(text.into_owned()),
    }
}

/// Counts completed operations by outcome: (ok, fail, info).
pub fn count_outcomes(history: &[Event]) -> (u64, u64, u64) {
    let mut counts = (0, 0, 0);
    for event in history {
        match event.kind {
            EventType::Ok => counts.0 += 1,
            EventType::Fail => counts.1 += 1,
            EventType::Info => counts.2 += 1,
            EventType::Invoke => {}
        }
    }
    counts
}
