//! The durability check: a node never forgets what it told others.
//!
//! Step 1 of the Raft output contract makes a term, a vote and an appended
//! entry durable before any message that reveals them leaves the node. The
//! simulator notes what each node's released messages revealed, and when a
//! crashed node restarts from its disk, checks that the disk still holds it.
//! A driver that sends before its sync (or a `must_sync` missing where it
//! matters) fails here as soon as a crash lands in the gap, whether or not
//! the amnesia later costs a committed entry.
//!
//! The ap engine makes the same promise (its driver contract, step 2): a
//! replica's `ReplicateAck` says the object is merged and durable, and a
//! coordinator counts its own copy toward W only in answers that leave after
//! its sync. [`ApPromises`] notes, per key, the causal summary of what such
//! an acknowledgement promised as it leaves the node:
//!
//! - a `ReplicateAck`: the object the node then holds for the key;
//! - a `Written` answer, to its client or to a peer that forwarded the
//!   write, from a node that holds a copy of the key (only replicas do):
//!   the write itself (its dot, or its lww version).
//!
//! At restart it checks that the object restored for every noted key
//! descends from (includes or equals) what was noted:
//!
//! 1. Siblings mode: the restored set's causal context includes every
//!    counter of the noted one (each noted dot is there or superseded).
//! 2. Lww mode: the restored register's version (timestamp, coordinator)
//!    is not older than the noted one, by the lww rule: a later write may
//!    have replaced the value, never an earlier one.
//!
//! An object merged further before the crash still descends. The one thing
//! that removes an object on purpose is tombstone reaping (engine rule 6):
//! a noted key whose object the node reaped is forgotten when the reaping
//! turn is released. Hinted handoff moves no replica data (a hint lives in
//! the coordinator's own keyspace and never counts toward W), and nothing
//! else deletes an object, so an absent object is a violation.

use crate::invariants::Violation;
use capkv_core::{LogIndex, NodeId, Term};
use capkv_dynamo::{
    ApRequest, ApResponse, DynamoMessage, Hlc, Object, Session, SessionVersion, VersionVector,
};
use capkv_node::{Node, NodeReady, PeerMessage, Request, Response};
use capkv_raft::{Message, MessageBody, Raft};
use std::collections::BTreeMap;
use std::fmt;

/// What one node's messages have revealed of its durable state so far.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Promises {
    /// The highest term of a message it sent (pre-votes aside: they ask
    /// about a term the sender has not taken).
    term: Term,
    /// The last vote it granted, with its term.
    vote: Option<(Term, NodeId)>,
    /// The last entry it said it holds, by acknowledging or sending it.
    entry: Option<(LogIndex, Term)>,
}

impl Promises {
    /// Notes what `message`, sent by the node whose Raft is `raft`, reveals.
    pub(crate) fn note(&mut self, raft: &Raft, message: &Message) {
        match &message.body {
            MessageBody::PreVote { .. } | MessageBody::PreVoteResponse { .. } => return,
            MessageBody::VoteResponse { reject: false } => {
                self.vote = Some((message.term, message.to));
            }
            MessageBody::AppendResponse {
                reject: false,
                index,
                ..
            } => {
                // Entries already compacted into a snapshot are covered by it.
                if let Some(term) = raft.log().term(*index) {
                    self.entry = Some((*index, term));
                }
            }
            MessageBody::Append { entries, .. } => {
                if let Some(last) = entries.last() {
                    self.entry = Some((last.index, last.term));
                }
            }
            _ => {}
        }
        self.term = self.term.max(message.term);
    }

    /// Checks the state `raft` restarted with against what was revealed.
    pub(crate) fn check(&self, id: NodeId, raft: &Raft) -> Result<(), Violation> {
        let broken = |detail: String| {
            Err(Violation {
                property: "durability",
                detail,
            })
        };
        if raft.term() < self.term {
            return broken(format!(
                "{id} restarted in {} after sending messages of {}",
                raft.term(),
                self.term
            ));
        }
        if let Some((term, candidate)) = self.vote {
            if raft.term() == term && raft.vote() != Some(candidate) {
                return broken(format!(
                    "{id} restarted in {term} without its vote for {candidate}"
                ));
            }
        }
        if let Some((index, term)) = self.entry {
            let log = raft.log();
            if !log.matches(index, term) && index >= log.snapshot_index() {
                return broken(format!(
                    "{id} restarted without entry {index} ({term}) it had acknowledged or sent; \
                     its log ends at {} ({})",
                    log.last_index(),
                    log.last_term()
                ));
            }
        }
        Ok(())
    }
}

/// The causal summary of one replica's object: what every later state of
/// that object on the same replica includes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Summary {
    /// Siblings mode: every write the replica had seen (the set's context).
    History(VersionVector),
    /// Lww mode: the register's version, (timestamp, coordinator).
    Version(Hlc, NodeId),
}

impl Summary {
    fn of(object: &Object) -> Summary {
        match object {
            Object::Siblings(set) => Summary::History(set.context().clone()),
            Object::Lww(register) => Summary::Version(register.timestamp, register.node),
        }
    }

    /// What a copy that holds the write `version` includes at least.
    fn of_write(version: SessionVersion) -> Summary {
        match version {
            SessionVersion::Dot(dot) => {
                let mut history = VersionVector::new();
                history.record(dot);
                Summary::History(history)
            }
            SessionVersion::Lww(timestamp, node) => Summary::Version(timestamp, node),
        }
    }

    /// Whether a state summarised by `later` descends from this one
    /// (includes it or equals it).
    fn is_included_in(&self, later: &Summary) -> bool {
        match (self, later) {
            (Summary::History(mine), Summary::History(theirs)) => theirs.descends(mine),
            (Summary::Version(timestamp, node), Summary::Version(later_timestamp, later_node)) => {
                (timestamp, node) <= (later_timestamp, later_node)
            }
            // A bucket's mode never changes: the other kind includes nothing.
            _ => false,
        }
    }

    /// Joins `other` in: both were promised, so a later state includes both.
    fn join(&mut self, other: Summary) {
        match (&mut *self, other) {
            (Summary::History(mine), Summary::History(theirs)) => mine.merge(&theirs),
            (Summary::Version(timestamp, node), Summary::Version(later_timestamp, later_node)) => {
                if (later_timestamp, later_node) > (*timestamp, *node) {
                    (*timestamp, *node) = (later_timestamp, later_node);
                }
            }
            (_, other) => *self = other,
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Summary::History(history) => {
                let counters: Vec<String> = history
                    .iter()
                    .map(|(node, counter)| format!("{node}:{counter}"))
                    .collect();
                write!(f, "history {{{}}}", counters.join(", "))
            }
            Summary::Version(timestamp, node) => write!(
                f,
                "version {}.{} by {node}",
                timestamp.wall_ms, timestamp.logical
            ),
        }
    }
}

/// Who waits for the answer to a write a node coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Asker {
    /// Its own client, by request id.
    Client(u64),
    /// A node that holds no replica of the key and forwarded its client's
    /// write (`Coordinate`), by that node's `req`.
    Peer(NodeId, u64),
}

/// What a node's acknowledgements of a key promised.
#[derive(Clone, Debug)]
struct Acknowledged {
    summary: Summary,
    /// Who heard the last of them: a peer, or (`None`) the node's client.
    to: Option<NodeId>,
}

/// Most writes a node has taken in and not answered that are remembered by
/// key; the engine bounds its requests in flight, and a forwarded write
/// whose duplicate is never answered must not grow this for the whole run.
const WRITES_TRACKED_MAX: usize = 10_000;

/// What one node's ap acknowledgements have promised about its objects.
///
/// A `ReplicateAck` and a `Written` answer name only a request id, so the
/// keys of the requests the node takes in are remembered until they are
/// answered: a `Replicate` is acknowledged in the turn that takes it in, a
/// coordinated write later. Only the latest summary per key is kept (joined
/// with the earlier ones), so memory grows with the keys, not the run.
#[derive(Debug, Default)]
pub(crate) struct ApPromises {
    /// Per bucket and key, what the node promised to hold.
    acknowledged: BTreeMap<String, BTreeMap<String, Acknowledged>>,
    /// The `Replicate`s (sender, req, bucket, key) of the turn being run.
    turn_replicates: Vec<(NodeId, u64, String, String)>,
    /// The (bucket, key) of each write the node coordinates, until answered.
    writes: BTreeMap<Asker, (String, String)>,
    /// Keys whose tombstone the engine reaped in the turn being run (the
    /// simulator reports each one), forgotten when the turn is released.
    reaped: Vec<(String, String)>,
}

impl ApPromises {
    /// A turn begins: the previous turn's `Replicate`s were answered in its
    /// release (or died with the process).
    pub(crate) fn turn_starts(&mut self) {
        self.turn_replicates.clear();
    }

    /// Remembers the key of an ap request `message` from `from` carries.
    pub(crate) fn on_message(&mut self, from: NodeId, message: &PeerMessage) {
        let PeerMessage::Dynamo(message) = message else {
            return;
        };
        match message.as_ref() {
            DynamoMessage::Replicate {
                req, bucket, key, ..
            } if *req != 0 => {
                self.turn_replicates
                    .push((from, *req, bucket.clone(), key.clone()));
            }
            DynamoMessage::Coordinate {
                req,
                request: ApRequest::Write { bucket, key, .. },
                ..
            } => self.track_write(Asker::Peer(from, *req), bucket, key),
            _ => {}
        }
    }

    /// Remembers the key of a client's ap write.
    pub(crate) fn on_request(&mut self, request_id: u64, request: &Request) {
        if let Request::Ap(ApRequest::Write { bucket, key, .. }) = request {
            self.track_write(Asker::Client(request_id), bucket, key);
        }
    }

    fn track_write(&mut self, asker: Asker, bucket: &str, key: &str) {
        if self.writes.len() < WRITES_TRACKED_MAX {
            self.writes
                .insert(asker, (bucket.to_string(), key.to_string()));
        }
    }

    /// Notes what the acknowledgements among `ready`'s messages and answers
    /// promise, as they leave `node`.
    pub(crate) fn note(&mut self, node: &Node, ready: &NodeReady) {
        for (bucket, key) in self.reaped.drain(..) {
            if let Some(keys) = self.acknowledged.get_mut(&bucket) {
                keys.remove(&key);
            }
        }
        for (to, message) in &ready.messages {
            let PeerMessage::Dynamo(message) = message else {
                continue;
            };
            match message.as_ref() {
                DynamoMessage::ReplicateAck { req, .. } => {
                    let Some(position) = self
                        .turn_replicates
                        .iter()
                        .position(|(from, sent, _, _)| from == to && sent == req)
                    else {
                        continue;
                    };
                    let (_, _, bucket, key) = self.turn_replicates.swap_remove(position);
                    if let Some(object) = node.dynamo().object(&bucket, &key) {
                        let summary = Summary::of(object);
                        self.promise(bucket, key, summary, Some(*to));
                    }
                }
                DynamoMessage::Coordinated { req, response } => {
                    if let Some(key) = self.writes.remove(&Asker::Peer(*to, *req)) {
                        self.answered(node, key, response, Some(*to));
                    }
                }
                _ => {}
            }
        }
        if self.writes.is_empty() {
            return;
        }
        for (request_id, response) in &ready.responses {
            // A write refused before the engine saw it (an unknown bucket)
            // is answered too, with a node error.
            let Some(key) = self.writes.remove(&Asker::Client(*request_id)) else {
                continue;
            };
            if let Response::Ap(response) = response {
                self.answered(node, key, response, None);
            }
        }
    }

    /// A write to `key` was answered: a `Written` answer counted the
    /// coordinator's own copy of the write, when it holds one. (A node holds
    /// a copy only of the keys it replicates; one that holds none forwarded
    /// the write and relays the answer.)
    fn answered(
        &mut self,
        node: &Node,
        (bucket, key): (String, String),
        response: &ApResponse,
        to: Option<NodeId>,
    ) {
        let ApResponse::Written { session, .. } = response else {
            return;
        };
        let Ok(session) = Session::decode(session) else {
            return;
        };
        if node.dynamo().object(&bucket, &key).is_some() {
            self.promise(bucket, key, Summary::of_write(session.version), to);
        }
    }

    fn promise(&mut self, bucket: String, key: String, summary: Summary, to: Option<NodeId>) {
        let keys = self.acknowledged.entry(bucket).or_default();
        match keys.get_mut(&key) {
            Some(acknowledged) => {
                acknowledged.summary.join(summary);
                acknowledged.to = to;
            }
            None => {
                keys.insert(key, Acknowledged { summary, to });
            }
        }
    }

    /// The engine reaped `key`'s tombstone in the turn being run: a
    /// tombstone confirmed on every replica is removed on purpose, so the
    /// key is forgotten when the turn is released.
    pub(crate) fn reaped(&mut self, bucket: &str, key: &str) {
        self.reaped.push((bucket.to_string(), key.to_string()));
    }

    /// The process died: requests in flight died with it, and so did the
    /// reaps of a turn it never released (they were not synced).
    pub(crate) fn crashed(&mut self) {
        self.turn_replicates.clear();
        self.writes.clear();
        self.reaped.clear();
    }

    /// Checks the objects `node` restarted with against what it promised.
    pub(crate) fn check(&self, id: NodeId, node: &Node) -> Result<(), Violation> {
        for (bucket, keys) in &self.acknowledged {
            for (key, acknowledged) in keys {
                let restored = node.dynamo().object(bucket, key).map(Summary::of);
                if restored
                    .as_ref()
                    .is_some_and(|restored| acknowledged.summary.is_included_in(restored))
                {
                    continue;
                }
                let restored =
                    restored.map_or("nothing".to_string(), |summary| summary.to_string());
                let to = acknowledged
                    .to
                    .map_or("its client".to_string(), |peer| peer.to_string());
                return Err(Violation {
                    property: "durability",
                    detail: format!(
                        "{id} restarted with {restored} for ap key {bucket}/{key}, which does \
                         not descend from the {} it had acknowledged (last to {to})",
                        acknowledged.summary
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capkv_dynamo::{Dot, DvvSet, Lww};

    fn siblings(writes: &[(u64, &str)]) -> Object {
        let mut set = DvvSet::new();
        for (node, value) in writes {
            // Each write read nothing: concurrent siblings.
            set.new_write(
                &VersionVector::new(),
                value.as_bytes().to_vec(),
                NodeId(*node),
            );
        }
        Object::Siblings(set)
    }

    fn lww(wall_ms: u64, node: u64, value: Option<&str>) -> Object {
        let timestamp = Hlc {
            wall_ms,
            logical: 0,
        };
        let value = value.map(|value| value.as_bytes().to_vec());
        Object::Lww(Lww::new(value, timestamp, NodeId(node)))
    }

    #[test]
    fn a_siblings_object_merged_further_descends_and_one_missing_a_write_does_not() {
        let acknowledged = Summary::of(&siblings(&[(1, "a"), (2, "b")]));
        let mut merged = siblings(&[(1, "a"), (2, "b")]);
        merged.merge_from(&siblings(&[(3, "c")]));
        assert!(acknowledged.is_included_in(&Summary::of(&merged)));
        assert!(acknowledged.is_included_in(&acknowledged.clone()));
        let older = Summary::of(&siblings(&[(1, "a")]));
        assert!(!acknowledged.is_included_in(&older));
    }

    #[test]
    fn a_write_is_included_in_a_copy_whose_context_covers_its_dot_only() {
        let dot = Dot {
            node: NodeId(2),
            counter: 1,
        };
        let written = Summary::of_write(SessionVersion::Dot(dot));
        assert!(written.is_included_in(&Summary::of(&siblings(&[(2, "b")]))));
        assert!(!written.is_included_in(&Summary::of(&siblings(&[(1, "a")]))));
    }

    #[test]
    fn an_lww_register_descends_by_the_lww_rule_only() {
        let acknowledged = Summary::of(&lww(100, 2, Some("a")));
        // A later write (a delete too) replaced it: it descends.
        assert!(acknowledged.is_included_in(&Summary::of(&lww(101, 1, None))));
        // Same timestamp, larger coordinator: the later version.
        assert!(acknowledged.is_included_in(&Summary::of(&lww(100, 3, Some("b")))));
        assert!(!acknowledged.is_included_in(&Summary::of(&lww(100, 1, Some("a")))));
        assert!(!acknowledged.is_included_in(&Summary::of(&lww(99, 9, Some("a")))));
        // The other mode's state includes nothing.
        assert!(!acknowledged.is_included_in(&Summary::of(&siblings(&[(1, "a")]))));
    }

    #[test]
    fn joined_summaries_ask_for_both_promises() {
        let mut joined = Summary::of(&siblings(&[(1, "a")]));
        joined.join(Summary::of(&siblings(&[(2, "b")])));
        assert!(!joined.is_included_in(&Summary::of(&siblings(&[(1, "a")]))));
        assert!(joined.is_included_in(&Summary::of(&siblings(&[(1, "a"), (2, "b")]))));
        let mut newest = Summary::of(&lww(100, 1, Some("a")));
        newest.join(Summary::of(&lww(50, 1, Some("old"))));
        assert_eq!(newest, Summary::of(&lww(100, 1, Some("a"))));
        newest.join(Summary::of(&lww(200, 1, Some("new"))));
        assert_eq!(newest, Summary::of(&lww(200, 1, Some("new"))));
    }
}
