//! Simulated clients: each runs one operation at a time against the cluster,
//! follows leader hints, retries only what certainly did not happen, and
//! records a Jepsen-style history.
//!
//! About one operation in ten is a stale read, served by whichever node it
//! is sent to from that node's applied state. Stale reads are not
//! linearizable, so they stay out of the history and are recorded apart as
//! [`StaleRead`]s for the stale-read checker. Most of them read back a
//! write: right after a node answered this client's write OK, the client
//! may ask that same node for the same key, which tests the promise that a
//! node holds every write made through it.

use crate::sim::Micros;
use capkv_check::{Event, EventType, OpKind};
use capkv_core::{LogIndex, NodeId, Rng, StableHasher};
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
/// Chance that a write, cas or delete answered OK is followed by a stale
/// read of its key at the node that answered it.
const READ_BACK_CHANCE: f64 = 0.18;
/// Chance that an operation is a stale read of a random key at a random
/// node (besides the read-backs).
const STALE_READ_ANY_CHANCE: f64 = 0.04;

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
    /// False for operations that are not part of the linearizability
    /// history: set-up (creating the bucket) and stale reads.
    recorded: bool,
    /// The node a stale read must be sent to; other operations follow the
    /// leader hint.
    target: Option<NodeId>,
}

impl Operation {
    fn is_stale_read(&self) -> bool {
        matches!(
            self.request,
            Request::Read {
                consistency: ReadConsistency::Stale,
                ..
            }
        )
    }
}

/// What a write acknowledged by a node did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteEffect {
    /// A put or a compare-and-set wrote the key at this log index (its new
    /// version).
    Written {
        /// The entry's index, as the answer gave it.
        version: u64,
    },
    /// A delete. Its answer does not carry its index, but the entry lies
    /// above every index committed when the request last left the client:
    /// the leader that proposed it held all of those.
    Deleted {
        /// The highest index committed when the delete was last sent.
        above: LogIndex,
    },
}

/// A client's write acknowledged OK by one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcknowledgedWrite {
    /// The life (restarts count) of the node when it answered.
    pub life: u64,
    /// What the write did.
    pub effect: WriteEffect,
}

/// One stale read and what the checker needs to judge it.
#[derive(Clone, Debug, PartialEq)]
pub struct StaleRead {
    /// The client that read.
    pub client: usize,
    /// The node that answered.
    pub node: NodeId,
    /// The life (restarts count) of the node when it answered.
    pub life: u64,
    /// The key read.
    pub key: String,
    /// What the node returned: the value and its version, or `None` for an
    /// absent key.
    pub returned: Option<(Value, u64)>,
    /// This client's last write of the key acknowledged by the same node,
    /// if any.
    pub last_write: Option<AcknowledgedWrite>,
}

#[derive(Debug)]
enum State {
    Idle,
    Waiting {
        request_id: u64,
        deadline: Micros,
        operation: Operation,
        retries: u32,
        /// Where the request went.
        node: NodeId,
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
    /// This client's last write of each key acknowledged by each node (at
    /// most nodes times keys entries).
    acknowledged: BTreeMap<(NodeId, String), AcknowledgedWrite>,
    /// The stale read-back to do next: the node that just acknowledged a
    /// write, and its key.
    read_back: Option<(NodeId, String)>,
    /// The highest index committed anywhere when the last request left,
    /// as the simulator reported it.
    committed_at_send: LogIndex,
    /// Stale reads recorded and not yet drained by the simulator.
    new_stale_reads: Vec<StaleRead>,
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
            acknowledged: BTreeMap::new(),
            read_back: None,
            committed_at_send: LogIndex(0),
            new_stale_reads: Vec::new(),
        }
    }

    /// Records that request `request_id` went out with `deadline`, when the
    /// highest index committed anywhere was `committed`.
    pub fn sent(&mut self, request_id: u64, deadline: Micros, committed: LogIndex) {
        if let State::Waiting {
            request_id: id,
            deadline: d,
            ..
        } = &mut self.state
        {
            *id = request_id;
            *d = deadline;
        }
        self.committed_at_send = committed;
    }

    /// Moves the stale reads recorded since the last call to the end of
    /// `reads`.
    pub fn drain_stale_reads_into(&mut self, reads: &mut Vec<StaleRead>) {
        reads.append(&mut self.new_stale_reads);
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
                node,
            } => {
                if now < deadline {
                    self.state = State::Waiting {
                        request_id,
                        deadline,
                        operation,
                        retries,
                        node,
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
            // Set-up is idempotent: it is simply tried again. A stale read
            // has no effect and is not in the history.
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
        let node = match operation.target.or(self.leader_hint) {
            Some(node) => node,
            None => self.any_node(),
        };
        let request = operation.request.clone();
        self.state = State::Waiting {
            request_id: 0,
            deadline: Micros::MAX,
            operation,
            retries,
            node,
        };
        ClientAction::Send {
            node,
            request,
            timeout: self.timeout,
        }
    }

    fn any_node(&mut self) -> NodeId {
        NodeId(1 + self.rng.range(0, self.nodes))
    }

    fn any_key(&mut self) -> String {
        format!("k{}", self.rng.range(0, self.keys))
    }

    /// A response arrived from a node in its life `life` (restarts count).
    pub fn on_response(
        &mut self,
        now: Micros,
        request_id: u64,
        response: Response,
        life: u64,
    ) -> ClientAction {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Waiting {
                request_id: waiting_for,
                operation,
                retries,
                node,
                ..
            } if waiting_for == request_id => {
                let answered_by = Answerer { node, life };
                if operation.is_stale_read() {
                    self.on_stale_answer(operation, answered_by, response)
                } else {
                    self.on_answer(now, operation, retries, answered_by, response)
                }
            }
            other => {
                self.state = other; // a late answer to an abandoned request
                ClientAction::Idle
            }
        }
    }

    /// The answer to a stale read; the state is already Idle. Only a value
    /// is recorded: a failure (the node has not seen the bucket yet) says
    /// nothing, and a stale read is not retried.
    fn on_stale_answer(
        &mut self,
        operation: Operation,
        answered_by: Answerer,
        response: Response,
    ) -> ClientAction {
        if let Response::Value(versioned) = response {
            let returned = versioned.map(|v| (decode_value(&v.value), v.version));
            let last_write = self
                .acknowledged
                .get(&(answered_by.node, operation.key.clone()))
                .copied();
            self.new_stale_reads.push(StaleRead {
                client: self.index,
                node: answered_by.node,
                life: answered_by.life,
                key: operation.key,
                returned,
                last_write,
            });
        }
        self.think()
    }

    /// Notes a write, cas or delete `answered_by` acknowledged with
    /// `applied`, and maybe plans to read it back there.
    fn acknowledged(&mut self, key: &str, answered_by: Answerer, applied: &Applied) {
        let effect = match applied {
            Applied::Written { version } => WriteEffect::Written { version: *version },
            Applied::Deleted { .. } => WriteEffect::Deleted {
                above: self.committed_at_send,
            },
            _ => return,
        };
        self.acknowledged.insert(
            (answered_by.node, key.to_string()),
            AcknowledgedWrite {
                life: answered_by.life,
                effect,
            },
        );
        if self.rng.chance(READ_BACK_CHANCE) {
            self.read_back = Some((answered_by.node, key.to_string()));
        }
    }

    /// The answer to the operation in flight; the state is already Idle.
    fn on_answer(
        &mut self,
        now: Micros,
        operation: Operation,
        retries: u32,
        answered_by: Answerer,
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
            Response::Applied(applied) => {
                if let Some(new) = written_value(operation.f, &operation.value) {
                    self.last_seen.insert(operation.key.clone(), new.clone());
                }
                self.acknowledged(&operation.key, answered_by, &applied);
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
            Response::Failed(RequestError::LeaderLost) => {
                // The write may still take effect: as after a deadline.
                self.give_up(&operation);
                self.think()
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
        if let Some((node, key)) = self.read_back.take() {
            return read(key, ReadConsistency::Stale, Some(node));
        }
        if self.rng.chance(STALE_READ_ANY_CHANCE) {
            let key = self.any_key();
            let node = self.any_node();
            return read(key, ReadConsistency::Stale, Some(node));
        }
        let key = self.any_key();
        let roll = self.rng.range(0, 100);
        if roll < 45 {
            return read(key, ReadConsistency::Linearizable, None);
        }
        if roll < 50 {
            return recorded_write(OpKind::Delete, key, Value::Null);
        }
        self.writes += 1;
        let new = (self.index as u64 + 1) * 1_000_000 + self.writes;
        if roll < 80 {
            return recorded_write(OpKind::Write, key, Value::from(new));
        }
        let expected = self.last_seen.get(&key).cloned().unwrap_or(Value::Null);
        recorded_write(
            OpKind::Cas,
            key,
            Value::Array(vec![expected, Value::from(new)]),
        )
    }

    /// At the end of the run, an operation still waiting has an unknown
    /// outcome.
    pub fn close_open_operations(&mut self, history: &mut Vec<Event>) {
        self.read_back = None;
        let operation = match std::mem::replace(&mut self.state, State::Idle) {
            State::Waiting { operation, .. } | State::Backoff { operation, .. } => operation,
            State::Idle => return,
        };
        self.give_up(&operation);
        self.drain_history_into(history);
    }
}

/// The node that answered a request, and its life then.
#[derive(Clone, Copy, Debug)]
struct Answerer {
    node: NodeId,
    life: u64,
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
        target: None,
    }
}

/// A read of `key`: a linearizable one goes into the checked history and
/// follows the leader hint; a stale one stays out of it and goes to `target`.
fn read(key: String, consistency: ReadConsistency, target: Option<NodeId>) -> Operation {
    Operation {
        f: OpKind::Read,
        key: key.clone(),
        value: Value::Null,
        request: Request::Read {
            bucket: BUCKET.into(),
            key,
            consistency,
        },
        recorded: consistency == ReadConsistency::Linearizable,
        target,
    }
}

/// A write, cas or delete of the history, with `value` its history value.
fn recorded_write(f: OpKind, key: String, value: Value) -> Operation {
    let command =
        command_of(f, &key, &value).expect("the workload only makes writes command_of can express");
    Operation {
        f,
        key,
        value,
        request: Request::Write(command),
        recorded: true,
        target: None,
    }
}

/// The command a history operation sends: one function for the client
/// and the stale-read checker, so that the checker hashes the very bytes
/// the entry holds. `None` for reads and malformed values.
pub(crate) fn command_of(f: OpKind, key: &str, value: &Value) -> Option<Command> {
    let bucket = BUCKET.to_string();
    let key = key.to_string();
    match f {
        OpKind::Read => None,
        OpKind::Delete => Some(Command::Delete { bucket, key }),
        OpKind::Write => Some(Command::Put {
            bucket,
            key,
            value: encode_value(value),
        }),
        OpKind::Cas => {
            let Value::Array(pair) = value else {
                return None;
            };
            let [expected, new] = pair.as_slice() else {
                return None;
            };
            let expected_bytes = match expected {
                Value::Null => None,
                other => Some(encode_value(other)),
            };
            Some(Command::Cas {
                bucket,
                key,
                expected: Expected::Value(expected_bytes),
                value: Some(encode_value(new)),
            })
        }
    }
}

/// The hash by which the Raft checker knows the entry of `command`.
pub(crate) fn command_hash(command: &Command) -> u64 {
    StableHasher::hash_bytes(&command.encode())
}

/// The value a history operation `f` with history value `value` leaves
/// on its key when it takes effect: a put's value, a cas's new one, null
/// (absent) for a delete; `None` for a read or a malformed cas.
pub(crate) fn written_value(f: OpKind, value: &Value) -> Option<&Value> {
    static ABSENT: Value = Value::Null;
    match (f, value) {
        (OpKind::Write, value) => Some(value),
        (OpKind::Cas, Value::Array(pair)) => pair.get(1),
        (OpKind::Delete, _) => Some(&ABSENT),
        _ => None,
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
