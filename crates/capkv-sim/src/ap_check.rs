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

/// Every replica's final object for each key: (node, object). A replica
/// that reaped the key's tombstone (engine rule 6) shows that tombstone, so
/// a key that is gone without having been reaped fails checker 2.
pub type FinalState = BTreeMap<String, Vec<(NodeId, Option<Object>)>>;

/// Runs every checker; `Ok` names what was checked.
pub fn check(
    records: &[ApRecord],
    state: &FinalState,
    conflict: Conflict,
) -> Result<String, String> {
    convergence(state)?;
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

/// The records grouped by key.
fn by_key(records: &[ApRecord]) -> BTreeMap<&str, Vec<&ApRecord>> {
    let mut groups: BTreeMap<&str, Vec<&ApRecord>> = BTreeMap::new();
    for record in records {
        groups.entry(&record.key).or_default().push(record);
    }
    groups
}

/// How a write may have been superseded, as far as a reader can tell.
enum Killers {
    /// A write with an unknown dot carried a context covering it: any
    /// history may hold that write instead.
    Unknown,
    /// Per coordinator, the smallest counter among the known superseding
    /// writes: a context covers one of them when it reaches that counter.
    Known(BTreeMap<NodeId, u64>),
}

impl Killers {
    /// For every write of one key with a known dot: the writes that may
    /// have been applied and carried a context covering it. One sweep per
    /// coordinator: its writes by falling counter, adding the mutations
    /// whose context reaches each counter (O((W + M) log M) per node).
    fn by_dot(records: &[&ApRecord]) -> BTreeMap<Dot, Killers> {
        let mutations: Vec<(Option<Dot>, &Context)> = records
            .iter()
            .filter(|x| x.maybe_applied())
            .filter_map(|x| Some((x.dot(), x.sent_context.as_ref()?)))
            .collect();
        let mut dots_by_node: BTreeMap<NodeId, Vec<Dot>> = BTreeMap::new();
        for dot in records.iter().filter_map(|w| w.dot()) {
            dots_by_node.entry(dot.node).or_default().push(dot);
        }
        let mut killers = BTreeMap::new();
        for (node, mut dots) in dots_by_node {
            dots.sort_by_key(|dot| std::cmp::Reverse(dot.counter));
            let mut reaching: Vec<(u64, Option<Dot>)> = mutations
                .iter()
                .map(|(dot, context)| (context.vv.get(node), *dot))
                .filter(|(reach, _)| *reach > 0)
                .collect();
            reaching.sort_by_key(|(reach, _)| std::cmp::Reverse(*reach));
            let mut next = 0;
            let mut unknown = false;
            let mut smallest: BTreeMap<NodeId, u64> = BTreeMap::new();
            for dot in dots {
                while let Some((reach, killer)) = reaching.get(next) {
                    if *reach < dot.counter {
                        break;
                    }
                    match killer {
                        None => unknown = true,
                        Some(killer) => {
                            let entry = smallest.entry(killer.node).or_insert(killer.counter);
                            *entry = (*entry).min(killer.counter);
                        }
                    }
                    next += 1;
                }
                let entry = if unknown {
                    Killers::Unknown
                } else {
                    Killers::Known(smallest.clone())
                };
                killers.insert(dot, entry);
            }
        }
        killers
    }

    /// Whether a history with context `vv` holds one of them.
    fn any_in(&self, vv: &capkv_dynamo::VersionVector) -> bool {
        match self {
            Killers::Unknown => true,
            Killers::Known(smallest) => smallest
                .iter()
                .any(|(node, counter)| vv.get(*node) >= *counter),
        }
    }
}

/// Checker 2.
pub fn no_lost_writes(records: &[ApRecord], state: &FinalState) -> Result<(), String> {
    for (key, records) in by_key(records) {
        let mut killers = None;
        // Deletes too: a delete lost everywhere brings the value back.
        for w in records.iter().filter(|r| r.acknowledged()) {
            let Some(dot) = w.dot() else { continue };
            let Some(Object::Siblings(set)) = final_object(state, key) else {
                return Err(format!(
                    "acknowledged write {:?} of key {key} (dot {dot:?}) is gone: the key has no data",
                    w.value
                ));
            };
            let present = set.siblings().any(|(sibling, _)| sibling == dot);
            let killers = killers.get_or_insert_with(|| Killers::by_dot(&records));
            if present || killers.get(&dot).is_some_and(|k| k.any_in(set.context())) {
                continue;
            }
            return Err(format!(
                "acknowledged write {:?} of key {key} (dot {dot:?}, client {}) was lost: not a \
                 sibling and no write that saw it reached the final state",
                w.value, w.client
            ));
        }
    }
    Ok(())
}

/// Checker 3.
pub fn honest_reads(records: &[ApRecord]) -> Result<(), String> {
    by_key(records)
        .values()
        .try_for_each(|records| honest_reads_of_one_key(records))
}

fn honest_reads_of_one_key(records: &[&ApRecord]) -> Result<(), String> {
    let mut killers = Killers::by_dot(records);
    let writes: Vec<(Dot, &String, Killers)> = records
        .iter()
        .filter(|w| w.kind == ApKind::Write && w.maybe_applied())
        .filter_map(|w| {
            let (dot, value) = (w.dot()?, w.value.as_ref()?);
            Some((dot, value, killers.remove(&dot)?))
        })
        .collect();
    for read in records {
        let ApOutcome::Read { values, context } = &read.outcome else {
            continue;
        };
        for (dot, value, killers) in &writes {
            let dot = *dot;
            if !context.vv.covers(dot) || values.contains(value) || killers.any_in(&context.vv) {
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
        SessionVersion::Lww(timestamp, node) => context.lww_version() >= (timestamp, node),
    }
}

/// Checker 4. A sweep in time order: every strong read must cover every
/// strong write acknowledged before it was invoked, that is, reach the
/// largest counter per coordinator (or the largest timestamp) among them.
pub fn quorum_overlap(records: &[ApRecord]) -> Result<(), String> {
    for (key, records) in by_key(records) {
        let mut writes: Vec<(u64, SessionVersion, &ApRecord)> = records
            .iter()
            .filter(|w| w.strong && w.acknowledged())
            .filter_map(|w| Some((w.completed, w.version()?, *w)))
            .collect();
        writes.sort_by_key(|(completed, _, _)| *completed);
        let mut reads: Vec<(&ApRecord, &Context)> = records
            .iter()
            .filter(|r| r.strong)
            .filter_map(|r| match &r.outcome {
                ApOutcome::Read { context, .. } => Some((*r, context)),
                _ => None,
            })
            .collect();
        reads.sort_by_key(|(read, _)| read.invoked);
        // The newest acknowledged write per coordinator (by counter or by
        // timestamp) so far.
        let mut newest: BTreeMap<NodeId, (SessionVersion, &ApRecord)> = BTreeMap::new();
        let mut next = 0;
        for (read, context) in reads {
            while let Some((completed, version, write)) = writes.get(next) {
                if *completed >= read.invoked {
                    break;
                }
                let node = match version {
                    SessionVersion::Dot(dot) => dot.node,
                    // One chain for lww: only the largest timestamp matters.
                    SessionVersion::Lww(..) => NodeId(0),
                };
                let replace = newest
                    .get(&node)
                    .is_none_or(|(current, _)| newer(*version, *current));
                if replace {
                    newest.insert(node, (*version, write));
                }
                next += 1;
            }
            for (version, write) in newest.values() {
                if !covers(context, *version) {
                    return Err(format!(
                        "a strong read of key {key} invoked at {}µs missed write {:?} \
                         acknowledged at {}µs at quorum or all (R + W > N)",
                        read.invoked, write.value, write.completed
                    ));
                }
            }
        }
    }
    Ok(())
}

fn newer(a: SessionVersion, b: SessionVersion) -> bool {
    match (a, b) {
        (SessionVersion::Dot(a), SessionVersion::Dot(b)) => a.counter > b.counter,
        (SessionVersion::Lww(a, an), SessionVersion::Lww(b, bn)) => (a, an) > (b, bn),
        _ => false,
    }
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
        let value = register
            .value
            .as_ref()
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned());
        // The register must hold a write someone made: one with its exact
        // version, or (versions of timed-out writes are unknown) one with
        // its value and an unknown version.
        let written = records.iter().any(|w| {
            w.key == *key
                && w.maybe_applied()
                && match w.version() {
                    Some(SessionVersion::Lww(timestamp, node)) => {
                        register.version() == (timestamp, node)
                    }
                    Some(SessionVersion::Dot(_)) => false,
                    None => w.value == value,
                }
        });
        if !written {
            return Err(format!(
                "key {key}: the register holds {value:?} at {:?}, which no write made",
                register.version()
            ));
        }
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
