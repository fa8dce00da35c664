use capkv_core::{GroupId, NodeId};

/// Everything a Raft instance is told at start-up.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node.
    pub id: NodeId,
    /// The group this instance serves.
    pub group: GroupId,
    /// Every voter of the group, this node included.
    pub voters: Vec<NodeId>,
    /// Ticks without hearing a leader before a follower campaigns. The actual
    /// timeout is drawn uniformly from `[min, 2 * min)` each time (§5.2).
    pub election_timeout_ticks: u32,
    /// Ticks between leader heartbeats.
    pub heartbeat_interval_ticks: u32,
    /// PreVote (thesis §9.6): a node that cannot win does not disturb the
    /// cluster by bumping terms.
    pub pre_vote: bool,
    /// CheckQuorum (thesis §6.2): a leader that has not heard from a majority
    /// for an election timeout steps down, and followers that heard from a
    /// leader within the timeout refuse votes (the leader lease).
    pub check_quorum: bool,
    /// Most unacknowledged appends in flight to one follower.
    pub inflight_messages_max: usize,
    /// Most entries in one append.
    pub append_entries_max: usize,
    /// Soft limit on the bytes of entries in one append.
    pub append_bytes_max: usize,
    /// Most committed entries handed out in one `Ready`.
    pub apply_entries_max: usize,
    /// Most entries appended but not yet committed; further proposals are
    /// refused (back-pressure instead of an unbounded log).
    pub uncommitted_entries_max: usize,
    /// Most ReadIndex requests waiting at once.
    pub pending_reads_max: usize,
    /// Seed of this instance's election-timeout randomness.
    pub seed: u64,
    /// Deliberate protocol bugs, for proving that the simulator's checkers
    /// catch them. Never set outside tests.
    pub bugs: DeliberateBugs,
}

/// Switches that break Raft on purpose. Each one removes one rule of the
/// paper; the simulator's tests turn them on and assert that a checker fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliberateBugs {
    /// Grant votes without the §5.4.1 check that the candidate's log is at
    /// least as up to date as the voter's.
    pub vote_ignores_log: bool,
    /// Commit entries of earlier terms by counting replicas, the mistake
    /// §5.4.2 and figure 8 warn about.
    pub commit_counts_old_terms: bool,
    /// Serve ReadIndex reads at once, without the heartbeat round that
    /// proves the leader is still the leader (thesis §6.4 step 3).
    pub read_skips_quorum: bool,
    /// Send no commit news ahead of a forwarded request's answer
    /// ([`crate::Raft::commit_news`] returns `None`), and let the node that
    /// forwarded a write answer its client as soon as the leader's answer
    /// arrives, before it has applied the write itself: a stale read there
    /// right after misses the write.
    pub forward_answers_before_apply: bool,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Why it cannot work.
    #[error("invalid raft config: {0}")]
    Invalid(&'static str),
}

impl Config {
    /// Sensible defaults for a node `id` among `voters`.
    pub fn new(id: NodeId, group: GroupId, voters: Vec<NodeId>, seed: u64) -> Config {
        Config {
            id,
            group,
            voters,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            inflight_messages_max: 64,
            append_entries_max: 256,
            append_bytes_max: 1 << 20,
            apply_entries_max: 1024,
            uncommitted_entries_max: 8192,
            pending_reads_max: 4096,
            seed,
            bugs: DeliberateBugs::default(),
        }
    }

    /// Rejects settings that contradict each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id.0 == 0 {
            return Err(ConfigError::Invalid("node id 0 is reserved for 'none'"));
        }
        if !self.voters.contains(&self.id) {
            return Err(ConfigError::Invalid("voters must include this node"));
        }
        let mut sorted = self.voters.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.voters.len() {
            return Err(ConfigError::Invalid("voters must be distinct"));
        }
        if self.heartbeat_interval_ticks == 0 {
            return Err(ConfigError::Invalid(
                "heartbeat interval must be at least 1 tick",
            ));
        }
        if self.election_timeout_ticks < 3 * self.heartbeat_interval_ticks {
            return Err(ConfigError::Invalid(
                "election timeout must be at least 3 heartbeat intervals",
            ));
        }
        if self.inflight_messages_max == 0
            || self.append_entries_max == 0
            || self.apply_entries_max == 0
            || self.uncommitted_entries_max == 0
            || self.pending_reads_max == 0
        {
            return Err(ConfigError::Invalid("every bound must be at least 1"));
        }
        Ok(())
    }
}
