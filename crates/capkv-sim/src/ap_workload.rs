//! Simulated clients of an ap bucket: writes with and without the context
//! of their last read, deletes with context, reads at every level (some
//! with the session token of their own last write), each recorded with what
//! the checkers in `ap_check` need.

use crate::ap_check::{ApKind, ApOutcome, ApRecord};
use crate::sim::Micros;
use crate::workload::ClientAction;
use capkv_core::{NodeId, Rng};
use capkv_dynamo::{Context, Session};
use capkv_node::{
    ApError, ApRequest, ApResponse, ApSpec, Applied, BucketSpec, Command, Conflict, ReadLevel,
    Request, Response, WriteLevel,
};
use std::collections::BTreeMap;

const MS: Micros = 1_000;
/// The ap bucket every simulated ap client uses.
pub const AP_BUCKET: &str = "feed";
/// Replicas of each key.
pub const AP_REPLICAS: u8 = 3;

/// The name of ap key number `index`.
pub fn key_name(index: u64) -> String {
    format!("a{index}")
}

#[derive(Debug)]
enum State {
    Idle,
    Waiting {
        request_id: u64,
        deadline: Micros,
        pending: Option<Box<ApRecord>>,
    },
}

/// One simulated ap client.
pub struct ApClient {
    index: usize,
    keys: u64,
    nodes: u64,
    conflict: Conflict,
    rng: Rng,
    state: State,
    bucket_ready: bool,
    writes: u64,
    /// The context of this client's last answer per key.
    contexts: BTreeMap<String, String>,
    /// The session token of this client's last write per key.
    sessions: BTreeMap<String, String>,
    records: Vec<ApRecord>,
    timeout: Micros,
}

fn spec(conflict: Conflict) -> ApSpec {
    ApSpec {
        replicas: AP_REPLICAS,
        conflict,
        read: ReadLevel::Quorum,
        write: WriteLevel::Quorum,
    }
}

impl ApClient {
    /// Client number `index`, against `nodes` nodes, over `keys` keys.
    pub fn new(
        index: usize,
        keys: u64,
        nodes: u64,
        conflict: Conflict,
        timeout: Micros,
        rng: Rng,
    ) -> ApClient {
        ApClient {
            index,
            keys,
            nodes,
            conflict,
            rng,
            state: State::Idle,
            bucket_ready: false,
            writes: 0,
            contexts: BTreeMap::new(),
            sessions: BTreeMap::new(),
            records: Vec::new(),
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

    /// Records completed since the last call.
    pub fn take_records(&mut self) -> Vec<ApRecord> {
        std::mem::take(&mut self.records)
    }

    /// A timer fired.
    pub fn on_wake(&mut self, now: Micros, accepting: bool) -> ClientAction {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Waiting {
                request_id,
                deadline,
                pending,
            } => {
                if now < deadline {
                    self.state = State::Waiting {
                        request_id,
                        deadline,
                        pending,
                    };
                    return ClientAction::Idle;
                }
                if let Some(pending) = pending {
                    // No answer: a write may be on some replicas.
                    self.finish(*pending, now, ApOutcome::Unknown { version: None });
                }
                self.think()
            }
            State::Idle => {
                if !accepting {
                    return ClientAction::Idle;
                }
                if !self.bucket_ready {
                    let request = Request::Write(Command::CreateBucket {
                        name: AP_BUCKET.into(),
                        spec: BucketSpec::ap(spec(self.conflict)),
                    });
                    return self.send(None, request);
                }
                let (record, request) = self.next_operation(now);
                self.send(Some(Box::new(record)), request)
            }
        }
    }

    fn send(&mut self, pending: Option<Box<ApRecord>>, request: Request) -> ClientAction {
        let node = NodeId(1 + self.rng.range(0, self.nodes));
        self.state = State::Waiting {
            request_id: 0,
            deadline: Micros::MAX,
            pending,
        };
        ClientAction::Send {
            node,
            request,
            timeout: self.timeout,
        }
    }

    fn think(&mut self) -> ClientAction {
        ClientAction::Sleep(self.rng.range(0, 5 * MS))
    }

    fn next_operation(&mut self, now: Micros) -> (ApRecord, Request) {
        let key = key_name(self.rng.range(0, self.keys));
        let roll = self.rng.range(0, 100);
        let context = self
            .contexts
            .get(&key)
            .filter(|_| self.rng.range(0, 100) < 70)
            .cloned();
        let (kind, value) = match roll {
            0..=39 => {
                self.writes += 1;
                (
                    ApKind::Write,
                    Some(format!("c{}-{}", self.index, self.writes)),
                )
            }
            40..=49 if context.is_some() => (ApKind::Delete, None),
            _ => (ApKind::Read, None),
        };
        let mut record = ApRecord {
            client: self.index,
            kind,
            key: key.clone(),
            value: value.clone(),
            sent_context: None,
            session: None,
            strong: false,
            invoked: now,
            completed: now,
            outcome: ApOutcome::Failed,
        };
        let request = if kind == ApKind::Read {
            let level = match self.rng.range(0, 100) {
                0..=14 => ReadLevel::Local,
                15..=39 => ReadLevel::One,
                40..=79 => ReadLevel::Quorum,
                _ => ReadLevel::All,
            };
            record.strong = matches!(level, ReadLevel::Quorum | ReadLevel::All);
            let session = self
                .sessions
                .get(&key)
                .filter(|_| self.rng.range(0, 100) < 50)
                .cloned();
            record.session = session
                .as_deref()
                .and_then(|token| Session::decode(token).ok())
                .map(|session| session.version);
            Request::Ap(ApRequest::Read {
                bucket: AP_BUCKET.into(),
                key,
                level: Some(level),
                session,
            })
        } else {
            let level = match self.rng.range(0, 100) {
                0..=29 => WriteLevel::One,
                30..=79 => WriteLevel::Quorum,
                _ => WriteLevel::All,
            };
            record.strong = level != WriteLevel::One;
            let context = if kind == ApKind::Delete {
                context
            } else {
                context.filter(|_| self.rng.range(0, 100) < 80)
            };
            record.sent_context = context
                .as_deref()
                .and_then(|text| Context::decode(text).ok());
            Request::Ap(ApRequest::Write {
                bucket: AP_BUCKET.into(),
                key,
                value: value.map(String::into_bytes),
                context,
                level: Some(level),
            })
        };
        (record, request)
    }

    /// A response arrived.
    pub fn on_response(
        &mut self,
        now: Micros,
        request_id: u64,
        response: Response,
    ) -> ClientAction {
        let State::Waiting {
            request_id: waiting_for,
            ..
        } = &self.state
        else {
            return ClientAction::Idle;
        };
        if *waiting_for != request_id {
            return ClientAction::Idle;
        }
        let State::Waiting { pending, .. } = std::mem::replace(&mut self.state, State::Idle) else {
            return ClientAction::Idle;
        };
        let Some(pending) = pending else {
            // Bucket creation.
            if let Response::Applied(Applied::BucketReady { .. }) = response {
                self.bucket_ready = true;
            }
            return ClientAction::Sleep(self.rng.range(MS, 20 * MS));
        };
        let key = pending.key.clone();
        let outcome = match response {
            Response::Ap(ApResponse::Written {
                context, session, ..
            }) => {
                let version = Session::decode(&session).ok().map(|s| s.version);
                self.contexts.insert(key.clone(), context);
                self.sessions.insert(key, session);
                match version {
                    Some(version) => ApOutcome::Written { version },
                    None => ApOutcome::Unknown { version: None },
                }
            }
            Response::Ap(ApResponse::Values {
                values, context, ..
            }) => {
                let decoded = Context::decode(&context).unwrap_or_default();
                self.contexts.insert(key, context);
                ApOutcome::Read {
                    values: values
                        .into_iter()
                        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                        .collect(),
                    context: decoded,
                }
            }
            // A write that missed its level is not undone: it may be on
            // some replicas.
            Response::Ap(ApResponse::Failed(
                ApError::NoQuorum { .. } | ApError::CoordinatorTimeout { .. },
            )) => ApOutcome::Unknown { version: None },
            // Bad tokens, busy, not a replica, session not met, bucket not
            // yet known here: nothing was written.
            _ => ApOutcome::Failed,
        };
        self.finish(*pending, now, outcome);
        self.think()
    }

    fn finish(&mut self, mut record: ApRecord, now: Micros, outcome: ApOutcome) {
        record.completed = now;
        // A read has no effect, whatever became of it.
        record.outcome = match (record.kind, outcome) {
            (ApKind::Read, ApOutcome::Unknown { .. }) => ApOutcome::Failed,
            (_, outcome) => outcome,
        };
        self.records.push(record);
    }

    /// At the end of the run, an operation still waiting has an unknown
    /// outcome.
    pub fn close_open_operations(&mut self, now: Micros) {
        if let State::Waiting {
            pending: Some(pending),
            ..
        } = std::mem::replace(&mut self.state, State::Idle)
        {
            self.finish(*pending, now, ApOutcome::Unknown { version: None });
        }
    }
}
