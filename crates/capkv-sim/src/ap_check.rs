//! Checkers for ap buckets: what a Dynamo-style store promises, checked on
//! the client history and on every replica's final state.
//!
//! 1. Convergence: after heal and a quiet period, every replica of a key
//!    holds the same object.
//! 2. No lost write (siblings): every acknowledged write is still a sibling
//!    in the final state, or was superseded by a write whose client context
//!    covered it and which itself made it into the final history.
//! 3. Honest reads (siblings): a read whose context covers a write shows
//!    that write's value, or shows a history that includes a write that
//!    superseded it. A context that claims a write the read did not show
//!    is how a bad merge loses data.
//! 4. Quorum overlap: a read at quorum or all that began after a write at
//!    quorum or all was acknowledged sees it (R + W > N).
//! 5. Read-your-writes: a read that carried a session token sees that
//!    write or a later one.
//! 6. No resurrection (siblings): nothing a write or delete superseded, and
//!    that write made it into the history, is a sibling at the end.
//! 7. Lww: the final register is at or past every acknowledged write's
//!    timestamp, and holds the value of the write with that timestamp.
//!
//! Writes whose outcome is unknown (no quorum, timeout) count as "maybe
//! applied": they may supersede others, and are never required to survive.

use capkv_core::NodeId;
use capkv_dynamo::{Context, Dot, Object, SessionVersion};
use capkv_node::Conflict;
use std::collections::BTreeMap;

/// What a recorded operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApKind {
    /// Put a value.
    Write,
    /// Delete (a tombstone write).
    Delete,
    /// Read.
    Read,
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApOutcome {
    /// A write or delete reached its level.
    Written {
        /// Its dot or timestamp.
        version: SessionVersion,
    },
    /// A read's answer.
    Read {
        /// The values shown.
        values: Vec<String>,
        /// The context returned.
        context: Context,
    },
    /// A write that may or may not have been applied.
    Unknown {
        /// Its dot or timestamp, when the answer named it.
        version: Option<SessionVersion>,
    },
    /// Certainly no effect.
    Failed,
}

/// One client operation on an ap bucket.
#[derive(Clone, Debug)]
pub struct ApRecord {
    /// The client.
    pub client: usize,
    /// What it was.
    pub kind: ApKind,
    /// The key.
    pub key: String,
    /// The value written (writes only).
    pub value: Option<String>,
    /// The context the write carried.
    pub sent_context: Option<Context>,
    /// The session the read carried (a write of the same key by this
    /// client).
    pub session: Option<SessionVersion>,
    /// Whether the level was quorum or all.
    pub strong: bool,
    /// Invocation time (µs of virtual time).
    pub invoked: u64,
    /// Completion time.
    pub completed: u64,
    /// The result.
    pub outcome: ApOutcome,
}

impl ApRecord {
    fn version(&self) -> Option<SessionVersion> {
        match &self.outcome {
            ApOutcome::Written { version } => Some(*version),
            ApOutcome::Unknown { version } => *version,
            _ => None,
        }
    }

    fn dot(&self) -> Option<Dot> {
        match self.version()? {
            SessionVersion::Dot(dot) => Some(dot),
            SessionVersion::Lww(..) => None,
        }
    }

    fn is_mutation(&self) -> bool {
        self.kind != ApKind::Read
    }

    fn maybe_applied(&self) -> bool {
        self.is_mutation() && !matches!(self.outcome, ApOutcome::Failed)
    }

    fn acknowledged(&self) -> bool {
        self.is_mutation() && matches!(self.outcome, ApOutcome::Written { .. })
    }
}

/// Every replica's final object for each key: (node, object).
pub type FinalState = BTreeMap<String, Vec<(NodeId, Option<Object>)>>;

/// Runs every checker; `Ok` names what was checked. Records are checked
/// key by key (the checkers never relate two keys).
pub fn check(
    records: &[ApRecord],
    state: &FinalState,
    conflict: Conflict,
) -> Result<String, String> {
    convergence(state)?;
    let mut by_key: BTreeMap<&str, Vec<ApRecord>> = BTreeMap::new();
    for record in records {
        by_key.entry(&record.key).or_default().push(record.clone());
    }
    for records in by_key.values() {
        quorum_overlap(records)?;
        sessions(records)?;
        match conflict {
            Conflict::Siblings => {
                honest_reads(records)?;
                no_lost_writes(records, state)?;
                no_resurrection(records, state)?;
            }
            Conflict::Lww => lww_winner(records, state)?,
        }
    }
    let acknowledged = records.iter().filter(|r| r.acknowledged()).count();
    let reads = records
        .iter()
        .filter(|r| matches!(r.outcome, ApOutcome::Read { .. }))
        .count();
    Ok(format!(
        "ap ok ({acknowledged} acknowledged writes, {reads} reads, {} keys converged)",
        state.len()
    ))
}

fn final_object(state: &FinalState, key: &str) -> Option<Object> {
    state
        .get(key)?
        .iter()
        .find_map(|(_, object)| object.clone())
}

/// Checker 1.
pub fn convergence(state: &FinalState) -> Result<(), String> {
    for (key, replicas) in state {
        let digests: Vec<(NodeId, Option<u64>)> = replicas
            .iter()
            .map(|(node, object)| (*node, object.as_ref().map(Object::digest)))
            .collect();
        if digests.windows(2).any(|pair| pair[0].1 != pair[1].1) {
            return Err(format!(
                "ap replicas of key {key} differ after the quiet period: {:?}",
                replicas
                    .iter()
                    .map(|(node, object)| format!("{node}: {:?}", object.as_ref().map(shown)))
                    .collect::<Vec<_>>()
            ));
        }
    }
    Ok(())
}

fn shown(object: &Object) -> Vec<String> {
    object
        .values()
        .iter()
        .map(|value| String::from_utf8_lossy(value).into_owned())
        .collect()
}

/// Whether some write that may have been applied, and whose own dot
/// satisfies `in_history` (or is unknown), carried a context covering `dot`.
fn superseded(records: &[ApRecord], key: &str, dot: Dot, in_history: impl Fn(Dot) -> bool) -> bool {
    records.iter().any(|x| {
        x.key == key
            && x.maybe_applied()
            && x.dot() != Some(dot)
            && x.sent_context
                .as_ref()
                .is_some_and(|context| context.vv.covers(dot))
            && x.dot().is_none_or(&in_history)
    })
}

/// Checker 2.
pub fn no_lost_writes(records: &[ApRecord], state: &FinalState) -> Result<(), String> {
    for w in records
        .iter()
        .filter(|r| r.acknowledged() && r.kind == ApKind::Write)
    {
        let Some(dot) = w.dot() else { continue };
        let Some(Object::Siblings(set)) = final_object(state, &w.key) else {
            return Err(format!(
                "acknowledged write {:?} of key {} (dot {dot:?}) is gone: the key has no data",
                w.value, w.key
            ));
        };
        let present = set.siblings().any(|(sibling, _)| sibling == dot);
        if present || superseded(records, &w.key, dot, |x| set.context().covers(x)) {
            continue;
        }
        return Err(format!(
            "acknowledged write {:?} of key {} (dot {dot:?}, client {}) was lost: not a sibling \
             and no write that saw it reached the final state",
            w.value, w.key, w.client
        ));
    }
    Ok(())
}

/// Checker 3.
pub fn honest_reads(records: &[ApRecord]) -> Result<(), String> {
    // For each write with a known dot: the dots (None = unknown) of the
    // writes that superseded it.
    let writes: Vec<(Dot, &String, Vec<Option<Dot>>)> = records
        .iter()
        .filter(|w| w.kind == ApKind::Write && w.maybe_applied())
        .filter_map(|w| {
            let (dot, value) = (w.dot()?, w.value.as_ref()?);
            let killers = records
                .iter()
                .filter(|x| {
                    x.key == w.key
                        && x.maybe_applied()
                        && x.dot() != Some(dot)
                        && x.sent_context.as_ref().is_some_and(|c| c.vv.covers(dot))
                })
                .map(ApRecord::dot)
                .collect();
            Some((dot, value, killers))
        })
        .collect();
    for read in records {
        let ApOutcome::Read { values, context } = &read.outcome else {
            continue;
        };
        for (dot, value, killers) in &writes {
            let dot = *dot;
            if !context.vv.covers(dot)
                || values.contains(value)
                || killers
                    .iter()
                    .any(|killer| killer.is_none_or(|x| context.vv.covers(x)))
            {
                continue;
            }
            return Err(format!(
                "a read of key {} by client {} at {}µs returned a context covering write {value:?} \
                 (dot {dot:?}) but neither that value nor a write that superseded it: {values:?}",
                read.key, read.client, read.completed
            ));
        }
    }
    Ok(())
}

fn covers(context: &Context, version: SessionVersion) -> bool {
    match version {
        SessionVersion::Dot(dot) => context.vv.covers(dot),
        SessionVersion::Lww(timestamp, _) => context.hlc >= timestamp,
    }
}

/// Checker 4.
pub fn quorum_overlap(records: &[ApRecord]) -> Result<(), String> {
    for read in records.iter().filter(|r| r.strong) {
        let ApOutcome::Read { context, .. } = &read.outcome else {
            continue;
        };
        for w in records.iter().filter(|w| {
            w.key == read.key && w.strong && w.acknowledged() && w.completed < read.invoked
        }) {
            let Some(version) = w.version() else { continue };
            if !covers(context, version) {
                return Err(format!(
                    "a {} read of key {} invoked at {}µs missed write {:?} acknowledged at \
                     {}µs at quorum or all (R + W > N)",
                    "strong", read.key, read.invoked, w.value, w.completed
                ));
            }
        }
    }
    Ok(())
}

/// Checker 5.
pub fn sessions(records: &[ApRecord]) -> Result<(), String> {
    for read in records {
        let (ApOutcome::Read { context, values }, Some(version)) = (&read.outcome, read.session)
        else {
            continue;
        };
        if !covers(context, version) {
            return Err(format!(
                "a read of key {} by client {} with a session token for {version:?} returned \
                 older data: {values:?}",
                read.key, read.client
            ));
        }
    }
    Ok(())
}

/// Checker 6.
pub fn no_resurrection(records: &[ApRecord], state: &FinalState) -> Result<(), String> {
    for key in state.keys() {
        let Some(Object::Siblings(set)) = final_object(state, key) else {
            continue;
        };
        for (dot, _) in set.siblings() {
            let killer = records.iter().find(|x| {
                x.key == *key
                    && x.maybe_applied()
                    && x.dot()
                        .is_some_and(|own| own != dot && set.context().covers(own))
                    && x.sent_context
                        .as_ref()
                        .is_some_and(|context| context.vv.covers(dot))
            });
            if let Some(killer) = killer {
                return Err(format!(
                    "key {key}: sibling {dot:?} survives although {:?} {:?} (dot {:?}) superseded it",
                    killer.kind,
                    killer.value,
                    killer.dot()
                ));
            }
        }
    }
    Ok(())
}

/// Checker 7.
pub fn lww_winner(records: &[ApRecord], state: &FinalState) -> Result<(), String> {
    for key in state.keys() {
        let Some(Object::Lww(register)) = final_object(state, key) else {
            continue;
        };
        for w in records
            .iter()
            .filter(|w| w.key == *key && w.maybe_applied())
        {
            let Some(SessionVersion::Lww(timestamp, node)) = w.version() else {
                continue;
            };
            let version = (timestamp, node);
            if w.acknowledged() && register.version() < version {
                return Err(format!(
                    "key {key}: final timestamp {:?} is older than acknowledged write {:?} at {version:?}",
                    register.version(),
                    w.value
                ));
            }
            if register.version() == version {
                let value = register
                    .value
                    .as_ref()
                    .map(|bytes| String::from_utf8_lossy(bytes).into_owned());
                if value != w.value {
                    return Err(format!(
                        "key {key}: the register holds {value:?} at {version:?}, written as {:?}",
                        w.value
                    ));
                }
            }
        }
    }
    Ok(())
}

/// (ok, definitely failed, unknown) counts, like the cp history's.
pub fn count_outcomes(records: &[ApRecord]) -> (u64, u64, u64) {
    let mut counts = (0, 0, 0);
    for record in records {
        match record.outcome {
            ApOutcome::Written { .. } | ApOutcome::Read { .. } => counts.0 += 1,
            ApOutcome::Failed => counts.1 += 1,
            ApOutcome::Unknown { .. } => counts.2 += 1,
        }
    }
    counts
}

#[cfg(test)]
mod tests;
