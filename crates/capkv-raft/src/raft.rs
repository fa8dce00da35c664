use crate::config::{Config, ConfigError};
use crate::log::RaftLog;
use crate::message::{Entry, EntryKind, HardState, Message, MessageBody, Snapshot};
use crate::progress::{Progress, ProgressState};
use capkv_core::{GroupId, LogIndex, NodeId, Rng, Term};
use std::collections::{BTreeMap, VecDeque};

/// The role a node plays in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking whether it could win an election, without changing its term.
    PreCandidate,
    /// Campaigning in a new term.
    Candidate,
    /// Leads the group for its term.
    Leader,
}

impl Role {
    /// The lower-case name used on the HTTP API and in timelines.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre_candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// A linearizable read that may now be served: once the application has
/// applied `index`, reading its state is linearizable (§6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's request context, echoed.
    pub context: u64,
    /// Apply at least this far before reading.
    pub index: LogIndex,
}

/// State that is not persisted but that observers want to see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// Current role.
    pub role: Role,
    /// Known leader of the current term.
    pub leader: Option<NodeId>,
}

/// Everything Raft wants the driver to do, in the order of the output
/// contract (see the crate docs).
#[derive(Debug, Default)]
pub struct Ready {
    /// Changed hard state to persist (step 1).
    pub hard_state: Option<HardState>,
    /// A snapshot from the leader to persist and install (step 1).
    pub snapshot: Option<Snapshot>,
    /// Entries to persist (step 1). They replace any persisted entries at the
    /// same or later indexes.
    pub entries: Vec<Entry>,
    /// Messages to send after step 1 is durable (step 2).
    pub messages: Vec<Message>,
    /// Committed entries to apply, in order (step 3).
    pub committed_entries: Vec<Entry>,
    /// Reads that may be served once the application reached their index
    /// (step 4).
    pub read_states: Vec<ReadState>,
    /// Role and leader, when they changed.
    pub soft_state: Option<SoftState>,
    /// Whether step 1 must sync: true when it holds a snapshot, entries, or
    /// a new term or vote. A hard state that only moves the commit index may
    /// be written without a sync (etcd's `MustSync`): a commit index lost in
    /// a crash is learned again from the leader.
    pub must_sync: bool,
}

/// The vectors of the last `Ready` handed back through
/// [`Raft::advance_reusing`], for the next `ready` to fill instead of
/// allocating. (Overwriting the old entries in place, to reuse their `data`
/// buffers too, measured slower than cloning them afresh.)
#[derive(Debug, Default)]
struct ReadyBuffers {
    entries: Vec<Entry>,
    committed_entries: Vec<Entry>,
    read_states: Vec<ReadState>,
}

/// Why a proposal or read was not accepted. Each is an operating condition,
/// not a bug.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum RaftError {
    /// This node does not lead the group; `leader` is who does, if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The known leader.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is under way; retry shortly.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// Too many entries are waiting to commit: back-pressure.
    #[error("too many uncommitted entries")]
    Overloaded,
    /// A message for another group was delivered here.
    #[error("message for group {0} delivered to another group")]
    WrongGroup(GroupId),
    /// A message from a node that is not a voter.
    #[error("message from unknown node {0}")]
    UnknownPeer(NodeId),
}

/// A ReadIndex request waiting for its confirmation round.
#[derive(Clone, Copy, Debug)]
struct PendingRead {
    context: u64,
    index: LogIndex,
    round: u64,
}

/// One Raft instance: a deterministic state machine.
pub struct Raft {
    config: Config,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    /// Votes received in the current (pre-)campaign.
    votes: BTreeMap<NodeId, bool>,
    /// Leader only: one entry per other voter.
    progress: BTreeMap<NodeId, Progress>,
    election_elapsed_ticks: u32,
    heartbeat_elapsed_ticks: u32,
    randomized_election_timeout_ticks: u32,
    rng: Rng,
    /// Messages produced since the last `ready`.
    outbox: Vec<Message>,
    read_states: Vec<ReadState>,
    /// Leader: ReadIndex requests waiting for a quorum to confirm `round`.
    pending_reads: VecDeque<PendingRead>,
    /// Leader: reads that arrived before an entry of this term committed.
    reads_awaiting_commit: Vec<u64>,
    /// Leader: the latest ReadIndex round started.
    read_round: u64,
    /// Leader: the latest round a heartbeat went out for.
    read_round_sent: u64,
    /// Leader: highest round each follower has confirmed this term.
    read_round_acked: BTreeMap<NodeId, u64>,
    /// Leader: the node leadership is being handed to.
    transfer_target: Option<NodeId>,
    /// Leader: new entries wait to be broadcast at the next `ready`, so that
    /// many proposals in one turn travel in one message per follower.
    broadcast_pending: bool,
    /// The other voters, in configuration order.
    peers: Vec<NodeId>,
    /// Leader: `progress[peer].matched` of each peer, in `peers` order. A
    /// copy, because `maybe_commit` runs on every acknowledgement and every
    /// `advance`, and walking the progress map each time showed in profiles.
    peer_matched: Vec<LogIndex>,
    /// Leader: reused by `maybe_commit`.
    matched_scratch: Vec<LogIndex>,
    /// Leader: reused by `release_confirmed_reads`.
    rounds_scratch: Vec<u64>,
    /// Buffers of a handed-back `Ready`, reused by the next one.
    ready_buffers: ReadyBuffers,
    /// What was last handed out, to report only changes.
    last_hard_state: HardState,
    last_soft_state: SoftState,
}

impl Raft {
    /// Restores an instance from its durable state. `snapshot` and `entries`
    /// are what was persisted; the caller installs the snapshot's data into
    /// its state machine itself before applying later entries.
    pub fn new(
        config: Config,
        hard_state: HardState,
        snapshot: Snapshot,
        entries: Vec<Entry>,
    ) -> Result<Raft, ConfigError> {
        config.validate()?;
        let mut rng = Rng::new(config.seed ^ config.id.0.wrapping_mul(0x9E37_79B9));
        let randomized = config.election_timeout_ticks
            + rng.range(0, u64::from(config.election_timeout_ticks)) as u32;
        let log = RaftLog::restore(snapshot, entries, hard_state.commit);
        let soft = SoftState {
            role: Role::Follower,
            leader: None,
        };
        Ok(Raft {
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            last_hard_state: HardState {
                commit: log.committed,
                ..hard_state
            },
            log,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            election_elapsed_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            randomized_election_timeout_ticks: randomized,
            rng,
            outbox: Vec::new(),
            read_states: Vec::new(),
            pending_reads: VecDeque::new(),
            reads_awaiting_commit: Vec::new(),
            read_round: 0,
            read_round_sent: 0,
            read_round_acked: BTreeMap::new(),
            transfer_target: None,
            broadcast_pending: false,
            peers: config
                .voters
                .iter()
                .copied()
                .filter(|id| *id != config.id)
                .collect(),
            peer_matched: Vec::new(),
            matched_scratch: Vec::new(),
            rounds_scratch: Vec::new(),
            ready_buffers: ReadyBuffers::default(),
            last_soft_state: soft,
            config,
        })
    }

    // ----- getters -----

    /// This node.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.config.group
    }

    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// Who this node voted for in the current term.
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Known leader of the current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The log (read-only).
    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    /// Highest committed index.
    pub fn commit_index(&self) -> LogIndex {
        self.log.committed
    }

    /// Highest index handed out for applying.
    pub fn applied_index(&self) -> LogIndex {
        self.log.applied
    }

    /// The voters of the group.
    pub fn voters(&self) -> &[NodeId] {
        &self.config.voters
    }

    /// Leader only: the progress of each follower.
    pub fn progress(&self) -> &BTreeMap<NodeId, Progress> {
        &self.progress
    }

    fn quorum(&self) -> usize {
        self.config.voters.len() / 2 + 1
    }

    fn in_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader.is_some()
            && self.election_elapsed_ticks < self.config.election_timeout_ticks
    }

    // ----- inputs -----

    /// One unit of time passed.
    pub fn tick(&mut self) {
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed_ticks += 1;
        if self.election_elapsed_ticks >= self.randomized_election_timeout_ticks {
            self.election_elapsed_ticks = 0;
            self.campaign(false);
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        let last_index = self.log.last_index();
        for progress in self.progress.values_mut() {
            if matches!(progress.state, ProgressState::Snapshot { .. }) {
                progress.snapshot_elapsed_ticks += 1;
            }
            progress.ticks_without_ack = if progress.matched < last_index {
                progress.ticks_without_ack.saturating_add(1)
            } else {
                0
            };
        }
        if self.election_elapsed_ticks >= self.config.election_timeout_ticks {
            self.election_elapsed_ticks = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                // Thesis §6.2: a leader cut off from a majority steps down so
                // that the minority side refuses clients instead of hanging.
                self.become_follower(self.term, None);
                return;
            }
            // A transfer that did not finish within an election timeout is
            // abandoned, and proposals are accepted again.
            self.transfer_target = None;
        }
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed_ticks = 0;
            self.broadcast_heartbeat();
        }
    }

    fn quorum_recently_active(&mut self) -> bool {
        let mut active = 1; // the leader itself
        for progress in self.progress.values_mut() {
            if progress.recent_active {
                active += 1;
            }
            progress.recent_active = false;
        }
        active >= self.quorum()
    }

    /// Proposes a command. On success returns the index and term it was
    /// appended at; the command is committed when an entry with that index and
    /// term is applied.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(LogIndex, Term), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer_target.is_some() {
            return Err(RaftError::TransferInProgress);
        }
        let uncommitted = self.log.last_index().0 - self.log.committed.0;
        if uncommitted >= self.config.uncommitted_entries_max as u64 {
            return Err(RaftError::Overloaded);
        }
        let index = self.append_own(EntryKind::Normal, data);
        Ok((index, self.term))
    }

    fn append_own(&mut self, kind: EntryKind, data: Vec<u8>) -> LogIndex {
        let index = self.log.last_index().next();
        self.log.push(Entry {
            term: self.term,
            index,
            kind,
            data,
        });
        self.broadcast_pending = true;
        index
    }

    /// Asks for a linearizable read (ReadIndex, §6.4). A [`ReadState`] with
    /// the same `context` comes out of a later `ready` once leadership was
    /// confirmed by a quorum.
    pub fn read_index(&mut self, context: u64) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if self.pending_reads.len() + self.reads_awaiting_commit.len()
            >= self.config.pending_reads_max
        {
            return Err(RaftError::Overloaded);
        }
        if !self.committed_in_current_term() {
            // §6.4 step 1: the leader's commit index is only known to be
            // current once an entry of its own term committed.
            self.reads_awaiting_commit.push(context);
            return Ok(());
        }
        self.start_read(context);
        Ok(())
    }

    fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed) == Some(self.term)
    }

    fn start_read(&mut self, context: u64) {
        let index = self.log.committed;
        if self.config.voters.len() == 1 || self.config.bugs.read_skips_quorum {
            self.read_states.push(ReadState { context, index });
            return;
        }
        // All reads that arrive before the next heartbeat share one round.
        if self.read_round == self.read_round_sent {
            self.read_round += 1;
        }
        self.pending_reads.push_back(PendingRead {
            context,
            index,
            round: self.read_round,
        });
    }

    /// An append that brings follower `to` the leader's commit index, for a
    /// driver to send just before an answer that depends on it. Commit news
    /// otherwise waits for the next append or heartbeat, so a follower that
    /// forwarded a write could answer its client before it applied that
    /// write, and a read there right after would miss it. `None` when this
    /// node is not the leader, `to` was already sent this commit index, or
    /// `to` is not in Replicate (its probe or snapshot carries the commit).
    ///
    /// Unlike `step`, this may be called between `ready` and `advance`: it
    /// only reads the log and notes the commit index as sent. The message
    /// belongs to step 2 of the output contract like any other.
    pub fn commit_news(&mut self, to: NodeId) -> Option<Message> {
        if self.role != Role::Leader || self.config.bugs.forward_answers_before_apply {
            return None;
        }
        let commit = self.log.committed;
        let progress = self.progress.get_mut(&to)?;
        if progress.state != ProgressState::Replicate || progress.commit_sent >= commit {
            return None;
        }
        let prev_index = progress.next.prev();
        let prev_term = self.log.term(prev_index)?;
        progress.commit_sent = commit;
        let body = MessageBody::Append {
            prev_index,
            prev_term,
            entries: Vec::new(),
            commit,
        };
        Some(self.message(to, self.term, body))
    }

    /// Asks the leader to hand leadership to `target` (thesis §3.10).
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if target == self.config.id || self.transfer_target == Some(target) {
            return Ok(());
        }
        if !self.progress.contains_key(&target) {
            return Err(RaftError::UnknownPeer(target));
        }
        self.transfer_target = Some(target);
        self.election_elapsed_ticks = 0;
        let caught_up = self
            .progress
            .get(&target)
            .is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send(target, MessageBody::TimeoutNow);
        } else {
            self.send_append(target, true);
        }
        Ok(())
    }

    /// Feeds a message from a peer.
    pub fn step(&mut self, message: Message) -> Result<(), RaftError> {
        if message.group != self.config.group {
            return Err(RaftError::WrongGroup(message.group));
        }
        if message.from == self.config.id || !self.config.voters.contains(&message.from) {
            return Err(RaftError::UnknownPeer(message.from));
        }
        if message.term > self.term {
            if !self.step_higher_term(&message) {
                return Ok(());
            }
        } else if message.term < self.term {
            self.step_lower_term(&message);
            return Ok(());
        }
        match &message.body {
            MessageBody::PreVote {
                last_index,
                last_term,
            } => {
                self.handle_pre_vote(&message, *last_index, *last_term);
                return Ok(());
            }
            MessageBody::Vote {
                last_index,
                last_term,
                ..
            } => {
                self.handle_vote(&message, *last_index, *last_term);
                return Ok(());
            }
            _ => {}
        }
        match self.role {
            Role::Leader => self.step_leader(message),
            Role::PreCandidate | Role::Candidate => self.step_candidate(message),
            Role::Follower => self.step_follower(message),
        }
        Ok(())
    }

    /// A message from a later term. Returns false when it must be dropped.
    fn step_higher_term(&mut self, message: &Message) -> bool {
        match message.body {
            MessageBody::PreVote { .. }
            | MessageBody::Vote {
                transfer: false, ..
            } if self.in_lease() => {
                // Thesis §4.2.3: a node that hears from a leader ignores
                // disruptive candidates until the leader times out.
                false
            }
            // A pre-vote asks about a term nobody has entered yet: it changes
            // nothing here. A granted pre-vote answer carries the term we
            // would campaign in: nothing to step down for either.
            MessageBody::PreVote { .. } => true,
            MessageBody::PreVoteResponse { reject: false } => true,
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                self.become_follower(message.term, Some(message.from));
                true
            }
            _ => {
                self.become_follower(message.term, None);
                true
            }
        }
    }

    fn step_lower_term(&mut self, message: &Message) {
        match message.body {
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                if self.config.check_quorum || self.config.pre_vote =>
            {
                // A stale leader would otherwise never learn of our term: with
                // PreVote it is not disrupted by our campaigns either. Tell it.
                self.send(
                    message.from,
                    MessageBody::HeartbeatResponse { read_round: 0 },
                );
            }
            MessageBody::PreVote { .. } => {
                self.send(message.from, MessageBody::PreVoteResponse { reject: true });
            }
            _ => {}
        }
    }

    fn handle_pre_vote(&mut self, message: &Message, last_index: LogIndex, last_term: Term) {
        // A pre-vote is granted to a future term whenever the log rule holds
        // and we are not in a leader's lease (checked above).
        let grant = message.term > self.term && self.log_allows_vote(last_index, last_term);
        let term = if grant { message.term } else { self.term };
        self.send_with_term(
            message.from,
            term,
            MessageBody::PreVoteResponse { reject: !grant },
        );
    }

    fn handle_vote(&mut self, message: &Message, last_index: LogIndex, last_term: Term) {
        let can_vote =
            self.vote == Some(message.from) || (self.vote.is_none() && self.leader.is_none());
        let grant = can_vote && self.log_allows_vote(last_index, last_term);
        if grant {
            self.vote = Some(message.from);
            self.election_elapsed_ticks = 0;
        }
        self.send(message.from, MessageBody::VoteResponse { reject: !grant });
    }

    /// §5.4.1: refuse a candidate whose log is behind ours.
    fn log_allows_vote(&self, last_index: LogIndex, last_term: Term) -> bool {
        self.config.bugs.vote_ignores_log || self.log.is_up_to_date(last_index, last_term)
    }

    fn step_leader(&mut self, message: Message) {
        let from = message.from;
        match message.body {
            MessageBody::AppendResponse {
                reject,
                index,
                hint_index,
                hint_term,
            } => {
                if reject {
                    self.handle_append_rejected(from, index, hint_index, hint_term);
                } else {
                    self.handle_append_accepted(from, index);
                }
            }
            MessageBody::HeartbeatResponse { read_round } => {
                let behind = match self.progress.get_mut(&from) {
                    Some(progress) => {
                        progress.recent_active = true;
                        match progress.state {
                            ProgressState::Probe => progress.probe_sent = false,
                            ProgressState::Replicate
                                if progress.inflight.len() >= self.config.inflight_messages_max =>
                            {
                                // The follower is alive but acknowledged none
                                // of a full window: appends were lost. Let one
                                // more through; its answer resets the window.
                                progress.inflight.pop_front();
                            }
                            _ => {}
                        }
                        let snapshot_lost =
                            matches!(progress.state, ProgressState::Snapshot { .. })
                                && progress.snapshot_elapsed_ticks
                                    >= self.config.election_timeout_ticks;
                        if snapshot_lost {
                            progress.become_probe();
                        }
                        let behind = progress.matched < self.log.last_index();
                        // A follower behind that acknowledged nothing for a
                        // heartbeat interval gets an append even with nothing
                        // new to send: if appends were lost, its refusal puts
                        // it back in Probe.
                        let stalled =
                            progress.ticks_without_ack >= self.config.heartbeat_interval_ticks;
                        behind.then_some(stalled)
                    }
                    None => None,
                };
                if let Some(force) = behind {
                    self.send_append(from, force);
                }
                if read_round > 0 {
                    let acked = self.read_round_acked.entry(from).or_insert(0);
                    *acked = (*acked).max(read_round);
                    self.release_confirmed_reads();
                }
            }
            _ => {}
        }
    }

    fn handle_append_accepted(&mut self, from: NodeId, index: LogIndex) {
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        // Any answer shows the follower is alive (CheckQuorum).
        progress.recent_active = true;
        if !progress.maybe_update(index) {
            // A duplicate or stale acknowledgement: nothing learned.
            return;
        }
        match progress.state {
            ProgressState::Probe => progress.become_replicate(),
            ProgressState::Snapshot {
                index: snapshot_index,
            } if progress.matched >= snapshot_index => {
                progress.become_probe();
                progress.become_replicate();
            }
            _ => {}
        }
        let matched = progress.matched;
        self.set_peer_matched(from, matched);
        let caught_up = matched == last_index;
        if self.maybe_commit() {
            self.broadcast_append();
        } else {
            // The follower may have room for more now.
            self.send_appends(from);
        }
        if caught_up && self.transfer_target == Some(from) {
            self.send(from, MessageBody::TimeoutNow);
        }
    }

    /// Keeps `peer_matched` in step with the progress map.
    fn set_peer_matched(&mut self, peer: NodeId, matched: LogIndex) {
        let slot = self.peers.iter().position(|id| *id == peer);
        if let Some(copy) = slot.and_then(|slot| self.peer_matched.get_mut(slot)) {
            *copy = matched;
        }
    }

    fn handle_append_rejected(
        &mut self,
        from: NodeId,
        rejected: LogIndex,
        hint_index: LogIndex,
        hint_term: Option<Term>,
    ) {
        let next_hint = self.next_after_conflict(rejected, hint_index, hint_term);
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        if progress.maybe_decrease_to(rejected, next_hint) {
            self.send_append(from, false);
        }
    }

    /// Fast backtracking: if our log has entries of the follower's conflicting
    /// term, resume after our last one; otherwise skip the follower's whole
    /// conflicting term.
    fn next_after_conflict(
        &self,
        rejected: LogIndex,
        hint_index: LogIndex,
        hint_term: Option<Term>,
    ) -> LogIndex {
        let Some(conflict_term) = hint_term else {
            return hint_index;
        };
        // Terms only grow along a log, so the scan stops at the first entry
        // of a lower term.
        let mut index = rejected.min(self.log.last_index());
        while index >= self.log.first_index() {
            match self.log.term(index) {
                Some(term) if term == conflict_term => return index.next(),
                Some(term) if term < conflict_term => break,
                _ => {}
            }
            index = index.prev();
        }
        hint_index
    }

    fn step_candidate(&mut self, message: Message) {
        match message.body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                // A leader exists in our term: follow it (§5.2).
                self.become_follower(self.term, Some(message.from));
                self.step_follower(message);
            }
            MessageBody::PreVoteResponse { reject } if self.role == Role::PreCandidate => {
                self.record_vote(message.from, !reject);
            }
            MessageBody::VoteResponse { reject } if self.role == Role::Candidate => {
                self.record_vote(message.from, !reject);
            }
            _ => {}
        }
    }

    fn record_vote(&mut self, from: NodeId, granted: bool) {
        self.votes.entry(from).or_insert(granted);
        let granted_count = self.votes.values().filter(|granted| **granted).count();
        let rejected_count = self.votes.len() - granted_count;
        if granted_count >= self.quorum() {
            if self.role == Role::PreCandidate {
                self.campaign_for_real(false);
            } else {
                self.become_leader();
            }
        } else if rejected_count >= self.quorum() {
            self.become_follower(self.term, None);
        }
    }

    fn step_follower(&mut self, message: Message) {
        let from = message.from;
        match message.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.hear_from_leader(from);
                self.handle_append(from, prev_index, prev_term, entries, commit);
            }
            MessageBody::Heartbeat { commit, read_round } => {
                self.hear_from_leader(from);
                // The leader sends at most our match index, so this is safe.
                if commit <= self.log.last_index() {
                    self.log.commit_to(commit);
                }
                self.send(from, MessageBody::HeartbeatResponse { read_round });
            }
            MessageBody::InstallSnapshot { snapshot } => {
                self.hear_from_leader(from);
                self.handle_snapshot(from, snapshot);
            }
            MessageBody::TimeoutNow => {
                // Leadership transfer: campaign at once, skipping PreVote,
                // and tell voters to ignore their lease.
                self.campaign_for_real(true);
            }
            _ => {}
        }
    }

    fn hear_from_leader(&mut self, from: NodeId) {
        self.election_elapsed_ticks = 0;
        if self.leader != Some(from) {
            self.leader = Some(from);
        }
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: LogIndex,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: LogIndex,
    ) {
        if prev_index < self.log.committed {
            // Everything up to our commit index is known to match.
            let index = self.log.committed;
            self.send_append_response(from, false, index, LogIndex(0), None);
            return;
        }
        if self.log.matches(prev_index, prev_term) {
            let last_new = self.log.append_after(prev_index, entries);
            self.log.commit_to(commit.min(last_new));
            self.send_append_response(from, false, last_new, LogIndex(0), None);
            return;
        }
        let (hint_index, hint_term) = self.conflict_hint(prev_index);
        self.send_append_response(from, true, prev_index, hint_index, hint_term);
    }

    /// Where the leader should look next after we refused `prev_index`.
    fn conflict_hint(&self, prev_index: LogIndex) -> (LogIndex, Option<Term>) {
        if prev_index > self.log.last_index() {
            return (self.log.last_index().next(), None);
        }
        let Some(conflict_term) = self.log.term(prev_index) else {
            return (self.log.committed.next(), None);
        };
        let mut first = prev_index;
        while first > self.log.first_index()
            && first.prev() > self.log.committed
            && self.log.term(first.prev()) == Some(conflict_term)
        {
            first = first.prev();
        }
        (first, Some(conflict_term))
    }

    fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        let meta = snapshot.meta;
        if meta.index <= self.log.committed {
            let index = self.log.committed;
            self.send_append_response(from, false, index, LogIndex(0), None);
            return;
        }
        if self.log.matches(meta.index, meta.term) {
            // We already hold the entries: just learn that they committed.
            self.log.commit_to(meta.index);
        } else {
            self.log.install_snapshot(snapshot);
        }
        self.send_append_response(from, false, meta.index, LogIndex(0), None);
    }

    // ----- role changes -----

    fn reset(&mut self, term: Term) {
        if self.term != term {
            self.term = term;
            self.vote = None;
        }
        self.leader = None;
        self.votes.clear();
        self.progress.clear();
        self.peer_matched.clear();
        self.election_elapsed_ticks = 0;
        self.heartbeat_elapsed_ticks = 0;
        self.randomized_election_timeout_ticks = self.config.election_timeout_ticks
            + self
                .rng
                .range(0, u64::from(self.config.election_timeout_ticks)) as u32;
        self.transfer_target = None;
        self.pending_reads.clear();
        self.reads_awaiting_commit.clear();
        self.read_round = 0;
        self.read_round_sent = 0;
        self.read_round_acked.clear();
        self.broadcast_pending = false;
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.reset(term);
        self.role = Role::Follower;
        self.leader = leader;
    }

    fn campaign(&mut self, transfer: bool) {
        if self.config.pre_vote && !transfer {
            self.become_pre_candidate();
        } else {
            self.campaign_for_real(transfer);
        }
    }

    fn become_pre_candidate(&mut self) {
        // PreVote changes neither term nor vote: a node that cannot win
        // leaves no trace on the cluster.
        let term = self.term;
        let vote = self.vote;
        self.reset(term);
        self.vote = vote;
        self.role = Role::PreCandidate;
        self.votes.insert(self.config.id, true);
        if self.votes.len() >= self.quorum() {
            self.campaign_for_real(false);
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for peer_index in 0..self.peers.len() {
            let peer = self.peers[peer_index];
            self.send_with_term(
                peer,
                term.next(),
                MessageBody::PreVote {
                    last_index,
                    last_term,
                },
            );
        }
    }

    fn campaign_for_real(&mut self, transfer: bool) {
        self.reset(self.term.next());
        self.role = Role::Candidate;
        self.vote = Some(self.config.id);
        self.votes.insert(self.config.id, true);
        if self.votes.len() >= self.quorum() {
            self.become_leader();
            return;
        }
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for peer_index in 0..self.peers.len() {
            let peer = self.peers[peer_index];
            self.send(
                peer,
                MessageBody::Vote {
                    last_index,
                    last_term,
                    transfer,
                },
            );
        }
    }

    fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "raft: only a candidate becomes leader"
        );
        let term = self.term;
        self.reset(term);
        self.role = Role::Leader;
        self.leader = Some(self.config.id);
        let last_index = self.log.last_index();
        for peer_index in 0..self.peers.len() {
            let peer = self.peers[peer_index];
            let mut progress = Progress::new(last_index);
            // Count every follower active at the start of the term, so the
            // first CheckQuorum looks at a whole election timeout.
            progress.recent_active = true;
            self.peer_matched.push(progress.matched);
            self.progress.insert(peer, progress);
        }
        // §5.4.2 / §6.4: an entry of our own term, so that earlier entries
        // and reads can be committed.
        self.append_own(EntryKind::Noop, Vec::new());
        self.maybe_commit();
    }

    // ----- replication -----

    /// Commits the highest index a quorum has made durable, provided it is of
    /// the current term (§5.4.2). Returns true when the commit index moved.
    fn maybe_commit(&mut self) -> bool {
        if !self.quorum_beyond_commit() {
            return false;
        }
        // A scratch vector kept between calls: this runs on every
        // acknowledgement, and allocating each time showed in profiles.
        let mut matched = std::mem::take(&mut self.matched_scratch);
        matched.clear();
        matched.extend_from_slice(&self.peer_matched);
        // The leader counts only what it has itself made durable.
        matched.push(self.log.stable);
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matched[self.quorum() - 1];
        self.matched_scratch = matched;
        if candidate <= self.log.committed {
            return false;
        }
        let of_current_term = self.log.term(candidate) == Some(self.term);
        if !of_current_term && !self.config.bugs.commit_counts_old_terms {
            return false;
        }
        self.log.commit_to(candidate);
        if self.committed_in_current_term() {
            for context in std::mem::take(&mut self.reads_awaiting_commit) {
                self.start_read(context);
            }
        }
        true
    }

    /// True when a quorum has made durable some index past the commit index:
    /// only then can the quorum's highest such index pass it. Most calls
    /// (every `advance`, every acknowledgement after the quorum's) end
    /// here, without sorting.
    fn quorum_beyond_commit(&self) -> bool {
        let committed = self.log.committed;
        let followers = self.peer_matched.iter().filter(|m| **m > committed);
        // The leader counts only what it has itself made durable.
        let leader = usize::from(self.log.stable > committed);
        followers.count() + leader >= self.quorum()
    }

    fn broadcast_append(&mut self) {
        for peer_index in 0..self.peers.len() {
            let peer = self.peers[peer_index];
            self.send_appends(peer);
        }
    }

    /// Sends `to` appends until its window is full or it has every entry, so
    /// that a backlog longer than one append travels `inflight_messages_max`
    /// appends per round trip instead of one (§5.3 pipelining).
    fn send_appends(&mut self, to: NodeId) {
        for _ in 0..self.config.inflight_messages_max {
            if !self.send_append(to, false) {
                break;
            }
        }
    }

    fn broadcast_heartbeat(&mut self) {
        self.read_round_sent = self.read_round;
        let round = self.read_round;
        for peer_index in 0..self.peers.len() {
            let peer = self.peers[peer_index];
            let matched = self.progress.get(&peer).map_or(LogIndex(0), |p| p.matched);
            self.send(
                peer,
                MessageBody::Heartbeat {
                    commit: self.log.committed.min(matched),
                    read_round: round,
                },
            );
        }
    }

    fn release_confirmed_reads(&mut self) {
        // Reused between calls, like `matched_scratch`: this runs on every
        // heartbeat answer that carries a read round.
        let mut rounds = std::mem::take(&mut self.rounds_scratch);
        rounds.clear();
        rounds.extend(
            self.peers
                .iter()
                .map(|peer| self.read_round_acked.get(peer).copied().unwrap_or(0)),
        );
        rounds.push(self.read_round); // the leader confirms itself
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = rounds[self.quorum() - 1];
        self.rounds_scratch = rounds;
        while let Some(read) = self.pending_reads.front() {
            if read.round > confirmed {
                break;
            }
            self.read_states.push(ReadState {
                context: read.context,
                index: read.index,
            });
            self.pending_reads.pop_front();
        }
    }

    /// Sends `to` the entries it needs, unless its progress says to wait.
    /// `force` sends even an empty append (leadership transfer, and the
    /// recovery append to a follower that a heartbeat answer shows stalled).
    /// Returns true when it pipelined entries, so another append may follow.
    fn send_append(&mut self, to: NodeId, force: bool) -> bool {
        // One map lookup serves the whole function: this runs for every
        // append to every follower.
        let Some(progress) = self.progress.get_mut(&to) else {
            return false;
        };
        if progress.is_paused(self.config.inflight_messages_max) {
            return false;
        }
        let next = progress.next;
        let prev_index = next.prev();
        let prev_term = self.log.term(prev_index);
        let entries = self.log.slice(
            next,
            self.config.append_entries_max,
            self.config.append_bytes_max,
        );
        let (Some(prev_term), Some(entries)) = (prev_term, entries) else {
            self.send_snapshot(to);
            return false;
        };
        let commit = self.log.committed;
        if entries.is_empty() && !force {
            let news = match progress.state {
                // A probe also finds out where the follower's log ends.
                ProgressState::Probe => {
                    progress.matched != prev_index || progress.commit_sent < commit
                }
                // Every entry is on its way, and a new commit index alone is
                // not worth a message: it rides on the next append or
                // heartbeat (raft-rs's `skip_bcast_commit`). A lost append is
                // found by the recovery append on a heartbeat answer.
                ProgressState::Replicate => false,
                ProgressState::Snapshot { .. } => false,
            };
            if !news {
                return false;
            }
        }
        let pipelined = progress.state == ProgressState::Replicate && !entries.is_empty();
        let last = entries.last().map_or(prev_index, |entry| entry.index);
        progress.commit_sent = commit;
        match progress.state {
            ProgressState::Replicate => {
                if !entries.is_empty() {
                    progress.next = last.next();
                    progress.inflight.push_back(last);
                }
            }
            ProgressState::Probe => progress.probe_sent = true,
            ProgressState::Snapshot { .. } => {}
        }
        self.send(
            to,
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            },
        );
        pipelined
    }

    fn send_snapshot(&mut self, to: NodeId) {
        let snapshot = self.log.snapshot().clone();
        let index = snapshot.meta.index;
        if let Some(progress) = self.progress.get_mut(&to) {
            progress.become_snapshot(index);
        }
        self.send(to, MessageBody::InstallSnapshot { snapshot });
    }

    fn send_append_response(
        &mut self,
        to: NodeId,
        reject: bool,
        index: LogIndex,
        hint_index: LogIndex,
        hint_term: Option<Term>,
    ) {
        self.send(
            to,
            MessageBody::AppendResponse {
                reject,
                index,
                hint_index,
                hint_term,
            },
        );
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        let term = self.term;
        self.send_with_term(to, term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        let message = self.message(to, term, body);
        self.outbox.push(message);
    }

    /// A message of this group from this node.
    fn message(&self, to: NodeId, term: Term, body: MessageBody) -> Message {
        Message {
            group: self.config.group,
            from: self.config.id,
            to,
            term,
            body,
        }
    }

    // ----- outputs -----

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
        }
    }

    /// True when `ready` has something to hand out.
    pub fn has_ready(&self) -> bool {
        !self.outbox.is_empty()
            || self.broadcast_pending
            || (self.role == Role::Leader && self.read_round > self.read_round_sent)
            || !self.read_states.is_empty()
            || self.log.pending_snapshot
            || self.log.stable < self.log.last_index()
            || self.log.applied < self.log.committed
            || self.hard_state() != self.last_hard_state
            || self.soft_state() != self.last_soft_state
    }

    /// Everything to do now. The driver must carry it out in the order of the
    /// output contract and then call [`Raft::advance`] before stepping again.
    #[must_use]
    pub fn ready(&mut self) -> Ready {
        let mut ready = self.ready_without_messages();
        ready.messages = self.take_messages();
        ready
    }

    /// Like [`Raft::ready`], but hands each message to `send`, in order,
    /// instead of putting it in [`Ready::messages`], which stays empty. The
    /// messages still belong to step 2 of the output contract: `send` must
    /// only queue them. A driver that gathers messages in a vector of its own
    /// allocates none per round this way.
    #[must_use]
    pub fn ready_sending(&mut self, send: impl FnMut(Message)) -> Ready {
        let ready = self.ready_without_messages();
        self.outbox.drain(..).for_each(send);
        ready
    }

    /// Everything of [`Raft::ready`] but the messages, which stay in the
    /// outbox for the caller to take.
    fn ready_without_messages(&mut self) -> Ready {
        if self.broadcast_pending {
            self.broadcast_pending = false;
            self.broadcast_append();
        }
        if self.role == Role::Leader && self.read_round > self.read_round_sent {
            // Reads are confirmed by a heartbeat round of their own, without
            // waiting for the heartbeat interval.
            self.heartbeat_elapsed_ticks = 0;
            self.broadcast_heartbeat();
        }
        let hard_state = self.hard_state();
        let soft_state = self.soft_state();
        let snapshot = self
            .log
            .pending_snapshot
            .then(|| self.log.snapshot().clone());
        let apply_to = LogIndex(
            self.log
                .committed
                .0
                .min(self.log.applied.0 + self.config.apply_entries_max as u64),
        );
        let mut entries = std::mem::take(&mut self.ready_buffers.entries);
        self.log.clone_unstable_entries_into(&mut entries);
        let mut committed_entries = std::mem::take(&mut self.ready_buffers.committed_entries);
        self.log
            .clone_range_into(self.log.applied.next(), apply_to, &mut committed_entries);
        // The reads move out, and the handed-back (empty) vector takes their
        // place.
        let read_states = std::mem::replace(
            &mut self.read_states,
            std::mem::take(&mut self.ready_buffers.read_states),
        );
        let must_sync = snapshot.is_some()
            || !entries.is_empty()
            || hard_state.term != self.last_hard_state.term
            || hard_state.vote != self.last_hard_state.vote;
        Ready {
            hard_state: (hard_state != self.last_hard_state).then_some(hard_state),
            snapshot,
            entries,
            messages: Vec::new(),
            committed_entries,
            read_states,
            soft_state: (soft_state != self.last_soft_state).then_some(soft_state),
            must_sync,
        }
    }

    /// Moves the outbox's messages into a vector of their own, sized exactly.
    /// The outbox keeps its buffer: handing the buffer itself out made every
    /// turn grow a fresh vector message by message, which showed in profiles.
    fn take_messages(&mut self) -> Vec<Message> {
        let mut messages = Vec::with_capacity(self.outbox.len());
        messages.append(&mut self.outbox);
        messages
    }

    /// The driver has carried out `ready`: its state is durable, its
    /// messages sent and its entries applied.
    pub fn advance(&mut self, ready: &Ready) {
        if let Some(hard_state) = ready.hard_state {
            self.last_hard_state = hard_state;
        }
        if let Some(soft_state) = ready.soft_state {
            self.last_soft_state = soft_state;
        }
        if ready.snapshot.is_some() {
            self.log.pending_snapshot = false;
        }
        if let Some(last) = ready.entries.last() {
            // Only what is still in the log at the same term became stable;
            // a truncation since `ready` would have lowered `stable` already.
            if self.log.matches(last.index, last.term) {
                self.log.stable = self.log.stable.max(last.index);
            }
        }
        if let Some(last) = ready.committed_entries.last() {
            assert!(
                last.index > self.log.applied,
                "raft: applied index goes backwards"
            );
            self.log.applied = last.index;
        }
        if self.role == Role::Leader && self.maybe_commit() {
            self.broadcast_append();
        }
    }

    /// Like [`Raft::advance`], then takes the vectors of `ready`, which it
    /// leaves empty, so that the next `ready` fills them instead of
    /// allocating new ones.
    pub fn advance_reusing(&mut self, ready: &mut Ready) {
        self.advance(ready);
        let buffers = &mut self.ready_buffers;
        std::mem::swap(&mut buffers.entries, &mut ready.entries);
        std::mem::swap(&mut buffers.committed_entries, &mut ready.committed_entries);
        ready.read_states.clear();
        std::mem::swap(&mut buffers.read_states, &mut ready.read_states);
    }

    /// The application took a snapshot at `snapshot.meta.index` (which it has
    /// applied): drop the log entries it covers.
    pub fn compact(&mut self, snapshot: Snapshot) {
        self.log.compact(snapshot);
    }
}
