//! A small deterministic in-memory cluster driver for `capkv-raft` tests.
//!
//! The cluster is a map of [`Raft`] instances, each with what its driver made
//! durable ([`Persisted`]) and what its state machine applied. A network queue
//! carries messages between them; links can be cut one direction at a time.
//! Virtual time only moves when a test ticks. [`Cluster::stabilize`] runs the
//! output contract of the crate docs for every node until nothing is left to
//! do, and panics after [`STABILIZE_ROUNDS_MAX`] rounds, so a livelock fails
//! the test instead of hanging it.
//!
//! While it runs, the harness checks the output contract (a vote, a term or an
//! entry is durable before a message reveals it; applied entries are durable,
//! contiguous and never change) and Raft's safety properties (at most one
//! leader per term, leader completeness, state machine safety).
//!
//! With [`Cluster::enable_faults`] the network drops, delays and reorders
//! messages from a seeded [`Rng`], so a failing seed replays exactly.

// Each test binary uses a different subset of the helpers.
#![allow(dead_code)]

use capkv_core::{GroupId, LogIndex, NodeId, Rng, Term};
use capkv_raft::{
    Config, Entry, EntryKind, HardState, Message, MessageBody, Raft, RaftError, ReadState, Ready,
    Role, Snapshot, SnapshotMeta,
};
use std::collections::{BTreeMap, BTreeSet};

/// The one Raft group every test cluster serves.
pub const GROUP: GroupId = GroupId(1);

/// Rounds (each: every node's `Ready`, then every due message) after which
/// `stabilize` declares a livelock.
pub const STABILIZE_ROUNDS_MAX: usize = 10_000;

/// What a node's driver has made durable (step 1 of the output contract).
#[derive(Clone, Debug, Default)]
pub struct Persisted {
    /// The last persisted hard state.
    pub hard_state: HardState,
    /// The last persisted snapshot (the default one covers nothing).
    pub snapshot: Snapshot,
    /// The persisted entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

impl Persisted {
    /// Last index held durably, counting the snapshot.
    pub fn last_index(&self) -> LogIndex {
        self.entries
            .last()
            .map_or(self.snapshot.meta.index, |entry| entry.index)
    }

    /// The durable entry at `index`, if it is held as an entry.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let first = self.snapshot.meta.index.next();
        if index < first {
            return None;
        }
        self.entries.get((index.0 - first.0) as usize)
    }
}

/// One member of the test cluster.
pub struct Node {
    /// The config it was started with, reused on restart.
    pub config: Config,
    /// The Raft instance (replaced by a fresh one on restart).
    pub raft: Raft,
    /// What survives a crash: what was written up to the last sync.
    pub persisted: Persisted,
    /// Everything written, synced or not (output contract step 1 syncs only
    /// when `Ready::must_sync` says so).
    pub written: Persisted,
    /// The state machine: every entry applied so far, index `i` at `i - 1`
    /// (a snapshot's contents included, so it always starts at index 1).
    pub applied: Vec<Entry>,
    /// Every `ReadState` handed out since the last restart.
    pub read_states: Vec<ReadState>,
    /// How many `Ready`s carried a snapshot to install.
    pub snapshots_installed: usize,
    /// How many `Ready`s carried entries to persist.
    pub readies_with_entries: usize,
    /// How many `Ready`s wrote a hard state without a sync.
    pub unsynced_hard_states: usize,
}

impl Node {
    fn start(config: Config, persisted: Persisted) -> Node {
        let raft = Raft::new(
            config.clone(),
            persisted.hard_state,
            persisted.snapshot.clone(),
            persisted.entries.clone(),
        )
        .expect("test config is valid");
        let applied = decode_entries(&persisted.snapshot.data);
        Node {
            config,
            raft,
            written: persisted.clone(),
            persisted,
            applied,
            read_states: Vec::new(),
            snapshots_installed: 0,
            readies_with_entries: 0,
            unsynced_hard_states: 0,
        }
    }

    /// Output contract step 1: snapshot, then entries, then hard state.
    fn persist(&mut self, ready: &Ready) {
        if let Some(snapshot) = &ready.snapshot {
            // Raft dropped its whole log for the snapshot; the durable log
            // follows, so a restart sees exactly what the instance saw.
            self.written.snapshot = snapshot.clone();
            self.written.entries.clear();
        }
        if let Some(first) = ready.entries.first() {
            assert!(
                first.index > self.written.snapshot.meta.index
                    && first.index <= self.written.last_index().next(),
                "{}: Ready entries start at {} but the durable log ends at {}",
                self.config.id,
                first.index,
                self.written.last_index()
            );
            self.written
                .entries
                .retain(|entry| entry.index < first.index);
            self.written.entries.extend(ready.entries.iter().cloned());
            self.readies_with_entries += 1;
        }
        if let Some(hard_state) = ready.hard_state {
            assert!(
                hard_state.term >= self.written.hard_state.term,
                "{}: persisted term goes backwards",
                self.config.id
            );
            self.written.hard_state = hard_state;
        }
        if ready.must_sync {
            self.persisted = self.written.clone();
        } else if ready.hard_state.is_some() {
            self.unsynced_hard_states += 1;
        }
    }

    /// The contract's point: nothing a message reveals may be lost by a crash.
    fn check_messages_durable(&self, ready: &Ready) {
        let id = self.config.id;
        let durable = &self.persisted;
        for message in &ready.messages {
            let is_pre_vote = matches!(
                message.body,
                MessageBody::PreVote { .. } | MessageBody::PreVoteResponse { reject: false }
            );
            if !is_pre_vote {
                assert!(
                    durable.hard_state.term >= message.term,
                    "{id}: sent {} in term {} before persisting that term",
                    message.body.name(),
                    message.term
                );
            }
            match &message.body {
                // A durable later term also makes the vote permanent: the node
                // can never vote in the message's term again.
                MessageBody::Vote { .. } => assert!(
                    durable.hard_state.term > message.term || durable.hard_state.vote == Some(id),
                    "{id}: asked for votes in {} before persisting its own vote",
                    message.term
                ),
                MessageBody::VoteResponse { reject: false } => assert!(
                    durable.hard_state.term > message.term
                        || durable.hard_state.vote == Some(message.to),
                    "{id}: granted a vote in {} before persisting it",
                    message.term
                ),
                MessageBody::AppendResponse {
                    reject: false,
                    index,
                    ..
                } => assert!(
                    durable.last_index() >= *index,
                    "{id}: acknowledged {index} but only {} is durable",
                    durable.last_index()
                ),
                MessageBody::Append { entries, .. } => {
                    if let Some(last) = entries.last() {
                        assert!(
                            durable.last_index() >= last.index,
                            "{id}: replicated {} before persisting it",
                            last.index
                        );
                    }
                }
                _ => {}
            }
        }
    }

    /// Output contract steps 3 and 4.
    fn apply(&mut self, ready: &Ready) {
        let id = self.config.id;
        if let Some(snapshot) = &ready.snapshot {
            self.applied = decode_entries(&snapshot.data);
            assert_eq!(
                self.applied.len() as u64,
                snapshot.meta.index.0,
                "{id}: snapshot contents do not end at its index"
            );
            self.snapshots_installed += 1;
        }
        for entry in &ready.committed_entries {
            assert_eq!(
                entry.index.0,
                self.applied.len() as u64 + 1,
                "{id}: committed entries are not contiguous with what was applied"
            );
            let durable = self.persisted.entry(entry.index);
            assert_eq!(
                durable,
                Some(entry),
                "{id}: applying entry {} that is not durable",
                entry.index
            );
            self.applied.push(entry.clone());
        }
        for read in &ready.read_states {
            assert!(
                read.index <= self.raft.commit_index(),
                "{id}: read index {} beyond commit {}",
                read.index,
                self.raft.commit_index()
            );
        }
        self.read_states.extend(ready.read_states.iter().copied());
    }
}

/// Random network misbehaviour, all drawn from one seeded generator.
struct Faults {
    rng: Rng,
    drop_probability: f64,
    delay_probability: f64,
    delay_ticks_max: u64,
    duplicate_probability: f64,
}

/// A message on the wire.
struct InFlight {
    deliver_at_tick: u64,
    message: Message,
}

/// A deterministic in-memory cluster.
pub struct Cluster {
    /// Every member, by id.
    pub nodes: BTreeMap<NodeId, Node>,
    /// Messages sent and not yet delivered or dropped, oldest first.
    network: Vec<InFlight>,
    /// Directed links `(from, to)` that drop everything.
    cut_links: BTreeSet<(NodeId, NodeId)>,
    /// Virtual time: how many times `tick_all` ran.
    pub now_ticks: u64,
    /// Every message delivered, in order, for tests that count messages.
    pub delivered: Vec<Message>,
    /// Every message handed to the network, in order (cut or not).
    pub sent: Vec<Message>,
    /// How many messages were dropped (cut links or faults).
    pub dropped_count: usize,
    faults: Option<Faults>,
    /// The leader seen for each term: at most one (§5.2 Election Safety).
    pub leader_by_term: BTreeMap<Term, NodeId>,
    /// Every entry any node applied, by index (§5.4.3 State Machine Safety:
    /// no node ever applies a different entry at the same index).
    pub applied_by_index: BTreeMap<LogIndex, Entry>,
    /// For each read asked of a node, by `(node, context)`: the highest
    /// commit index any node knew when it was asked. A linearizable read
    /// index is at least that (thesis §6.4).
    read_index_min: BTreeMap<(NodeId, u64), LogIndex>,
}

/// Entries `1..` with the given terms, for restoring logs directly.
pub fn entries_with_terms(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(offset, term)| Entry {
            term: Term(*term),
            index: LogIndex(offset as u64 + 1),
            kind: EntryKind::Normal,
            data: format!("t{term}").into_bytes(),
        })
        .collect()
}

/// Node ids `1..=count`.
pub fn node_ids(count: u64) -> Vec<NodeId> {
    (1..=count).map(NodeId).collect()
}

impl Cluster {
    /// `count` fresh nodes; `configure` adjusts every node's config.
    pub fn new(count: u64, configure: impl Fn(&mut Config)) -> Cluster {
        let logs = (0..count)
            .map(|_| (HardState::default(), Vec::new()))
            .collect();
        Cluster::restore(logs, configure)
    }

    /// Nodes `1..=logs.len()` restarted from the given durable hard states and
    /// entries, as if they had crashed with exactly that on disk.
    pub fn restore(logs: Vec<(HardState, Vec<Entry>)>, configure: impl Fn(&mut Config)) -> Cluster {
        let voters = node_ids(logs.len() as u64);
        let mut nodes = BTreeMap::new();
        for (id, (hard_state, entries)) in voters.iter().zip(logs) {
            let mut config = Config::new(*id, GROUP, voters.clone(), 7);
            configure(&mut config);
            let persisted = Persisted {
                hard_state,
                snapshot: Snapshot::default(),
                entries,
            };
            nodes.insert(*id, Node::start(config, persisted));
        }
        Cluster {
            nodes,
            network: Vec::new(),
            cut_links: BTreeSet::new(),
            now_ticks: 0,
            delivered: Vec::new(),
            sent: Vec::new(),
            dropped_count: 0,
            faults: None,
            leader_by_term: BTreeMap::new(),
            applied_by_index: BTreeMap::new(),
            read_index_min: BTreeMap::new(),
        }
    }

    // ----- getters -----

    /// Every node id, in order.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// One node.
    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes.get(&id).expect("no such node")
    }

    /// One node's Raft instance.
    pub fn raft(&self, id: NodeId) -> &Raft {
        &self.node(id).raft
    }

    /// One node's Raft instance, for stepping hand-made messages.
    pub fn raft_mut(&mut self, id: NodeId) -> &mut Raft {
        &mut self.nodes.get_mut(&id).expect("no such node").raft
    }

    /// The nodes currently in the leader role, with their terms.
    pub fn leaders(&self) -> Vec<(NodeId, Term)> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.raft.role() == Role::Leader)
            .map(|(id, node)| (*id, node.raft.term()))
            .collect()
    }

    /// The leader of the highest term among current leaders.
    pub fn leader(&self) -> Option<NodeId> {
        self.leaders()
            .into_iter()
            .max_by_key(|(_, term)| *term)
            .map(|(id, _)| id)
    }

    /// `Some((leader, term))` when exactly one node of `members` leads and every
    /// one of `members` is in its term and knows it as leader.
    pub fn agreed_leader_among(&self, members: &[NodeId]) -> Option<(NodeId, Term)> {
        let leaders: Vec<NodeId> = members
            .iter()
            .copied()
            .filter(|id| self.raft(*id).role() == Role::Leader)
            .collect();
        let [leader] = leaders[..] else {
            return None;
        };
        let term = self.raft(leader).term();
        members
            .iter()
            .all(|id| self.raft(*id).term() == term && self.raft(*id).leader() == Some(leader))
            .then_some((leader, term))
    }

    /// [`Cluster::agreed_leader_among`] over the whole cluster.
    pub fn agreed_leader(&self) -> Option<(NodeId, Term)> {
        self.agreed_leader_among(&self.ids())
    }

    /// The data of the applied normal entries of `id`, in order.
    pub fn applied_data(&self, id: NodeId) -> Vec<Vec<u8>> {
        self.node(id)
            .applied
            .iter()
            .filter(|entry| entry.kind == EntryKind::Normal)
            .map(|entry| entry.data.clone())
            .collect()
    }

    /// Takes the delivered-message history.
    pub fn take_delivered(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.delivered)
    }

    /// Messages on the wire, oldest first.
    pub fn in_flight(&self) -> impl Iterator<Item = &Message> {
        self.network.iter().map(|in_flight| &in_flight.message)
    }

    // ----- links and faults -----

    /// Drops everything `from` sends to `to`, including what is on the wire.
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        self.cut_links.insert((from, to));
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&mut self, a: NodeId, b: NodeId) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Restores the link `from -> to`.
    pub fn heal(&mut self, from: NodeId, to: NodeId) {
        self.cut_links.remove(&(from, to));
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&mut self, id: NodeId) {
        for other in self.ids() {
            if other != id {
                self.cut_both(id, other);
            }
        }
    }

    /// Restores every link.
    pub fn heal_all(&mut self) {
        self.cut_links.clear();
    }

    /// True when `from -> to` drops messages.
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cut_links.contains(&(from, to))
    }

    /// From now on the network drops each message with `drop_probability`,
    /// delays it by up to `delay_ticks_max` ticks with `delay_probability`,
    /// also delivers a delayed copy with `duplicate_probability`, and
    /// delivers each round's messages in a random order.
    pub fn enable_faults(
        &mut self,
        seed: u64,
        drop_probability: f64,
        delay_probability: f64,
        delay_ticks_max: u64,
        duplicate_probability: f64,
    ) {
        self.faults = Some(Faults {
            rng: Rng::new(seed),
            drop_probability,
            delay_probability,
            delay_ticks_max,
            duplicate_probability,
        });
    }

    /// Back to a reliable FIFO network (messages already delayed stay so).
    pub fn disable_faults(&mut self) {
        self.faults = None;
    }

    // ----- client operations -----

    /// Proposes `data` on `id`.
    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> Result<(LogIndex, Term), RaftError> {
        self.raft_mut(id).propose(data.to_vec())
    }

    /// Asks `id` for a ReadIndex read tagged `context`.
    pub fn read_index(&mut self, id: NodeId, context: u64) -> Result<(), RaftError> {
        let commit_known = self
            .nodes
            .values()
            .map(|node| node.raft.commit_index())
            .max()
            .unwrap_or_default();
        self.read_index_min.insert((id, context), commit_known);
        self.raft_mut(id).read_index(context)
    }

    /// Asks leader `id` to hand leadership to `target`.
    pub fn transfer_leader(&mut self, id: NodeId, target: NodeId) -> Result<(), RaftError> {
        self.raft_mut(id).transfer_leader(target)
    }

    /// The application of `id` snapshots its state machine at `index` (which
    /// it applied) and compacts the log: the snapshot replaces the durable
    /// entries it covers.
    pub fn compact(&mut self, id: NodeId, index: LogIndex) -> Snapshot {
        let node = self.nodes.get_mut(&id).expect("no such node");
        assert!(
            index.0 >= 1 && index.0 <= node.applied.len() as u64,
            "compact at {index} but {id} applied {}",
            node.applied.len()
        );
        let covered = &node.applied[..index.0 as usize];
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index,
                term: covered[covered.len() - 1].term,
            },
            data: encode_entries(covered),
        };
        node.raft.compact(snapshot.clone());
        node.persisted.snapshot = snapshot.clone();
        node.persisted.entries.retain(|entry| entry.index > index);
        snapshot
    }

    /// Crashes `id` and restarts it from its durable state only: everything
    /// in memory (role, leader, progress, pending reads, the state machine
    /// beyond its snapshot) is lost. Messages on the wire still arrive.
    pub fn crash_restart(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("no such node");
        let restarted = Node::start(node.config, node.persisted);
        self.nodes.insert(id, restarted);
    }

    // ----- time -----

    /// Ticks `id` once without running the cluster.
    pub fn tick_node(&mut self, id: NodeId) {
        self.raft_mut(id).tick();
    }

    /// `count` times: tick every node once, then stabilize.
    pub fn tick_all(&mut self, count: u64) {
        for _ in 0..count {
            self.now_ticks += 1;
            for id in self.ids() {
                self.tick_node(id);
            }
            self.stabilize();
        }
    }

    /// Ticks every node (stabilizing after each tick) until `predicate`
    /// holds; returns the ticks it took, or `None` after `ticks_max`.
    pub fn tick_until(
        &mut self,
        ticks_max: u64,
        mut predicate: impl FnMut(&Cluster) -> bool,
    ) -> Option<u64> {
        for ticks in 0..=ticks_max {
            if predicate(self) {
                return Some(ticks);
            }
            if ticks < ticks_max {
                self.tick_all(1);
            }
        }
        None
    }

    /// Ticks until the whole cluster agrees on one leader; panics after
    /// `ticks_max`.
    pub fn elect(&mut self, ticks_max: u64) -> (NodeId, Term) {
        self.tick_until(ticks_max, |cluster| cluster.agreed_leader().is_some())
            .unwrap_or_else(|| panic!("no agreed leader within {ticks_max} ticks"));
        self.agreed_leader().expect("just agreed")
    }

    /// Ticks only `id` until it starts a (pre-)campaign, without running the
    /// cluster: the others never time out, so `id` is the only candidate.
    pub fn start_campaign(&mut self, id: NodeId) {
        let ticks_max = 2 * u64::from(self.node(id).config.election_timeout_ticks);
        for _ in 0..ticks_max {
            self.tick_node(id);
            if self.raft(id).role() != Role::Follower {
                return;
            }
        }
        panic!("{id} did not campaign within {ticks_max} ticks");
    }

    /// [`Cluster::start_campaign`], then stabilize.
    pub fn campaign(&mut self, id: NodeId) {
        self.start_campaign(id);
        self.stabilize();
    }

    /// Ticks only `id` (stabilizing after each tick) until `predicate`
    /// holds; returns the ticks it took, or `None` after `ticks_max`.
    pub fn tick_one_until(
        &mut self,
        id: NodeId,
        ticks_max: u64,
        mut predicate: impl FnMut(&Cluster) -> bool,
    ) -> Option<u64> {
        for ticks in 0..=ticks_max {
            if predicate(self) {
                return Some(ticks);
            }
            if ticks < ticks_max {
                self.tick_node(id);
                self.stabilize();
            }
        }
        None
    }

    // ----- running -----

    /// Runs the output contract for every node and delivers every due
    /// message, until nothing is left. Panics on a livelock.
    pub fn stabilize(&mut self) {
        self.stabilize_until(|_| false);
    }

    /// Like [`Cluster::stabilize`] but stops as soon as `predicate` holds
    /// (checked after every `Ready` and every delivery). Returns whether it did.
    pub fn stabilize_until(&mut self, mut predicate: impl FnMut(&Cluster) -> bool) -> bool {
        if predicate(self) {
            return true;
        }
        for _ in 0..STABILIZE_ROUNDS_MAX {
            let mut busy = false;
            for id in self.ids() {
                if self.handle_ready(id) {
                    busy = true;
                    if predicate(self) {
                        return true;
                    }
                }
            }
            for message in self.take_due_messages() {
                busy = true;
                self.deliver(message);
                if predicate(self) {
                    return true;
                }
            }
            if !busy {
                self.check_applied_prefixes();
                return false;
            }
        }
        panic!(
            "livelock: the cluster did not settle within {STABILIZE_ROUNDS_MAX} rounds at tick {}",
            self.now_ticks
        );
    }

    /// Handles one `Ready` of `id`, if it has one, in the order of the output
    /// contract. Returns whether there was one.
    pub fn handle_ready(&mut self, id: NodeId) -> bool {
        let node = self.nodes.get_mut(&id).expect("no such node");
        if !node.raft.has_ready() {
            return false;
        }
        let ready = node.raft.ready();
        node.persist(&ready);
        node.check_messages_durable(&ready);
        node.apply(&ready);
        node.raft.advance(&ready);
        for entry in &ready.committed_entries {
            self.record_applied(id, entry);
        }
        if ready.snapshot.is_some() {
            for entry in self.node(id).applied.clone() {
                self.record_applied(id, &entry);
            }
        }
        for read in &ready.read_states {
            self.check_read_linearizable(id, read);
        }
        let now = self.now_ticks;
        for message in ready.messages {
            assert_eq!(message.from, id, "{id} sent a message as someone else");
            self.sent.push(message.clone());
            self.network.push(InFlight {
                deliver_at_tick: now,
                message,
            });
        }
        self.observe_leader(id);
        true
    }

    fn take_due_messages(&mut self) -> Vec<Message> {
        let now = self.now_ticks;
        let (due, later): (Vec<InFlight>, Vec<InFlight>) = std::mem::take(&mut self.network)
            .into_iter()
            .partition(|in_flight| in_flight.deliver_at_tick <= now);
        self.network = later;
        let Some(faults) = self.faults.as_mut() else {
            return due.into_iter().map(|in_flight| in_flight.message).collect();
        };
        let mut out = Vec::new();
        for in_flight in due {
            if faults.rng.chance(faults.duplicate_probability) {
                let delay = faults.rng.range(0, faults.delay_ticks_max + 1);
                self.network.push(InFlight {
                    deliver_at_tick: now + delay,
                    message: in_flight.message.clone(),
                });
            }
            if faults.rng.chance(faults.drop_probability) {
                self.dropped_count += 1;
            } else if faults.rng.chance(faults.delay_probability) {
                let delay = faults.rng.range(1, faults.delay_ticks_max + 1);
                self.network.push(InFlight {
                    deliver_at_tick: now + delay,
                    message: in_flight.message,
                });
            } else {
                out.push(in_flight.message);
            }
        }
        // Fisher-Yates: the surviving messages arrive in any order.
        for i in (1..out.len()).rev() {
            let j = faults.rng.range(0, i as u64 + 1) as usize;
            out.swap(i, j);
        }
        out
    }

    fn deliver(&mut self, message: Message) {
        if self.is_cut(message.from, message.to) {
            self.dropped_count += 1;
            return;
        }
        let to = message.to;
        self.delivered.push(message.clone());
        let result = self.raft_mut(to).step(message);
        assert_eq!(result, Ok(()), "{to} refused a message of its own group");
        self.observe_leader(to);
    }

    // ----- safety checks -----

    /// §5.2 Election Safety and §5.4 Leader Completeness, checked whenever a
    /// node might have become leader.
    fn observe_leader(&mut self, id: NodeId) {
        let raft = &self.node(id).raft;
        if raft.role() != Role::Leader {
            return;
        }
        let term = raft.term();
        match self.leader_by_term.get(&term) {
            Some(leader) => assert_eq!(
                *leader, id,
                "two leaders in term {term}: {leader} and {id} (§5.2 Election Safety)"
            ),
            None => {
                self.leader_by_term.insert(term, id);
                self.check_leader_completeness(id);
            }
        }
    }

    fn check_leader_completeness(&self, id: NodeId) {
        let log = self.node(id).raft.log();
        for (index, entry) in self.applied_by_index.range(log.first_index()..) {
            assert_eq!(
                log.entry(*index),
                Some(entry),
                "new leader {id} of term {} lacks committed entry {index} (§5.4 Leader Completeness)",
                self.node(id).raft.term()
            );
        }
    }

    /// Thesis §6.4: a read served at `read.index` sees every write committed
    /// before it was asked; a read index below a commit index some node
    /// already knew then would return stale data.
    fn check_read_linearizable(&self, id: NodeId, read: &ReadState) {
        let Some(minimum) = self.read_index_min.get(&(id, read.context)) else {
            panic!("{id} released read {} that nobody asked for", read.context);
        };
        assert!(
            read.index >= *minimum,
            "{id} released read {} at {} but {} was already committed when it was asked \
             (thesis §6.4 linearizable reads)",
            read.context,
            read.index,
            minimum
        );
    }

    fn record_applied(&mut self, id: NodeId, entry: &Entry) {
        let known = self
            .applied_by_index
            .entry(entry.index)
            .or_insert_with(|| entry.clone());
        assert_eq!(
            known, entry,
            "{id} applied a different entry at {} than another node (§5.4.3 State Machine Safety)",
            entry.index
        );
    }

    /// §5.4.3: every node's applied sequence is a prefix of every other's.
    pub fn check_applied_prefixes(&self) {
        let mut longest: &[Entry] = &[];
        for node in self.nodes.values() {
            if node.applied.len() > longest.len() {
                longest = &node.applied;
            }
        }
        for (id, node) in &self.nodes {
            assert!(
                longest.starts_with(&node.applied),
                "{id}'s applied entries are not a prefix of the longest applied sequence"
            );
        }
    }
}

/// Snapshot data: the applied entries, so that installing a snapshot rebuilds
/// the harness's state machine exactly.
pub fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        out.extend_from_slice(&entry.index.0.to_le_bytes());
        out.extend_from_slice(&entry.term.0.to_le_bytes());
        out.push(u8::from(entry.kind == EntryKind::Noop));
        out.extend_from_slice(&(entry.data.len() as u64).to_le_bytes());
        out.extend_from_slice(&entry.data);
    }
    out
}

/// Inverse of [`encode_entries`].
pub fn decode_entries(mut bytes: &[u8]) -> Vec<Entry> {
    fn take_u64(bytes: &mut &[u8]) -> u64 {
        let (head, tail) = bytes.split_at(8);
        *bytes = tail;
        u64::from_le_bytes(head.try_into().expect("8 bytes"))
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let index = LogIndex(take_u64(&mut bytes));
        let term = Term(take_u64(&mut bytes));
        let kind = if bytes[0] == 1 {
            EntryKind::Noop
        } else {
            EntryKind::Normal
        };
        bytes = &bytes[1..];
        let len = take_u64(&mut bytes) as usize;
        let (data, tail) = bytes.split_at(len);
        bytes = tail;
        out.push(Entry {
            term,
            index,
            kind,
            data: data.to_vec(),
        });
    }
    out
}
