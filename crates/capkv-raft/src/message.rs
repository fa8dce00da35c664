use capkv_core::{GroupId, LogIndex, NodeId, Term};
use serde::{Deserialize, Serialize};

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// An application command.
    Normal,
    /// The empty entry a new leader appends so that it can commit entries of
    /// earlier terms (§5.4.2) and serve ReadIndex reads (§6.4).
    Noop,
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Term of the leader that created the entry.
    pub term: Term,
    /// Position in the log.
    pub index: LogIndex,
    /// Command or no-op.
    pub kind: EntryKind,
    /// The command bytes; empty for a no-op. Opaque to Raft. Serialized as
    /// bytes: the same postcard encoding as a sequence, written in one copy.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Entry {
    /// Bytes this entry costs in a message (a bound, not an exact size).
    pub fn size_bytes(&self) -> usize {
        self.data.len() + 24
    }
}

/// Where a snapshot sits in the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last index the snapshot covers.
    pub index: LogIndex,
    /// The term of that entry.
    pub term: Term,
}

/// A point-in-time image of the application state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Position in the log.
    pub meta: SnapshotMeta,
    /// Application bytes, opaque to Raft (serialized as bytes, like
    /// [`Entry::data`]).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// The state that must be durable before the messages that depend on it are
/// sent (§5.1 figure 2: "updated on stable storage before responding").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// Current term.
    pub term: Term,
    /// Who this node voted for in `term`, if anyone.
    pub vote: Option<NodeId>,
    /// Highest index known committed. Not needed for safety, kept so that a
    /// restart can re-apply without waiting for the leader.
    pub commit: LogIndex,
}

/// A Raft message between two members of one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The Raft group this message belongs to.
    pub group: GroupId,
    /// Sender.
    pub from: NodeId,
    /// Receiver.
    pub to: NodeId,
    /// The sender's term (for PreVote: the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

/// The kinds of Raft message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// PreVote (§9.6): "would you vote for me in `term`?" Changes no state.
    PreVote {
        /// Last index of the sender's log.
        last_index: LogIndex,
        /// Term of that entry.
        last_term: Term,
    },
    /// Answer to a PreVote.
    PreVoteResponse {
        /// True when the vote is refused.
        reject: bool,
    },
    /// RequestVote (§5.2).
    Vote {
        /// Last index of the candidate's log.
        last_index: LogIndex,
        /// Term of that entry.
        last_term: Term,
        /// Set when the election was asked for by a leadership transfer, so
        /// voters ignore their leader lease.
        transfer: bool,
    },
    /// Answer to a RequestVote.
    VoteResponse {
        /// True when the vote is refused.
        reject: bool,
    },
    /// AppendEntries (§5.3).
    Append {
        /// Index of the entry just before `entries`.
        prev_index: LogIndex,
        /// Term of that entry.
        prev_term: Term,
        /// Entries to append; may be empty.
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: LogIndex,
    },
    /// Answer to AppendEntries or InstallSnapshot.
    AppendResponse {
        /// True when `prev_index`/`prev_term` did not match.
        reject: bool,
        /// On success, the last index known to match the leader. On reject,
        /// the `prev_index` that was refused.
        index: LogIndex,
        /// On reject: the first index of the conflicting term, or the
        /// follower's last index + 1 when its log is too short (fast
        /// backtracking, §5.3 and the thesis §5.3 optimisation).
        hint_index: LogIndex,
        /// On reject: the term of the follower's entry at `prev_index`, if it
        /// has one.
        hint_term: Option<Term>,
    },
    /// Leader heartbeat: keeps followers from campaigning, carries the commit
    /// index, and confirms leadership for ReadIndex.
    Heartbeat {
        /// `min(commit, follower's match)`: never beyond what the follower has.
        commit: LogIndex,
        /// ReadIndex round this heartbeat confirms (0 = none).
        read_round: u64,
    },
    /// Answer to a heartbeat.
    HeartbeatResponse {
        /// Echo of the heartbeat's `read_round`.
        read_round: u64,
    },
    /// InstallSnapshot (§7): the follower's next entry was compacted away.
    InstallSnapshot {
        /// The snapshot.
        snapshot: Snapshot,
    },
    /// Leadership transfer (§3.10): "campaign now".
    TimeoutNow,
}

impl MessageBody {
    /// A short name for logs and timelines.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
            MessageBody::Vote { .. } => "Vote",
            MessageBody::VoteResponse { .. } => "VoteResponse",
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResponse { .. } => "AppendResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::TimeoutNow => "TimeoutNow",
        }
    }
}
