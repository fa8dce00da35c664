use capkv_core::LogIndex;
use std::collections::VecDeque;

/// How the leader is currently talking to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The leader does not know where the follower's log ends: one append at a
    /// time, waiting for the answer (or a heartbeat response) before the next.
    Probe,
    /// The follower is known to match up to `matched`: appends are pipelined,
    /// up to `inflight_messages_max` unacknowledged at once.
    Replicate,
    /// The follower needs entries that were compacted away: a snapshot is on
    /// its way and nothing else is sent until it is acknowledged.
    Snapshot {
        /// Index of the snapshot that was sent.
        index: LogIndex,
    },
}

/// The leader's view of one follower (etcd raft's `Progress`).
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be replicated on the follower.
    pub matched: LogIndex,
    /// Next index to send.
    pub next: LogIndex,
    /// Sending mode.
    pub state: ProgressState,
    /// In Probe: an append is outstanding, so wait.
    pub probe_sent: bool,
    /// Last index of each unacknowledged append, oldest first (Replicate).
    pub inflight: VecDeque<LogIndex>,
    /// Whether the follower answered anything since the last CheckQuorum.
    pub recent_active: bool,
    /// Ticks since a snapshot was sent (Snapshot), to retry a lost one.
    pub snapshot_elapsed_ticks: u32,
    /// The commit index last sent in an append, so that a probe without
    /// entries goes out only with a commit index not sent before.
    pub commit_sent: LogIndex,
    /// Leader ticks the follower has been behind without `matched` moving.
    /// A follower behind for a heartbeat interval without an acknowledgement
    /// has most likely lost an append (an answer takes a round trip and an
    /// fsync, far less).
    pub ticks_without_ack: u32,
}

impl Progress {
    /// A follower of a new leader whose log ends at `last_index`.
    pub fn new(last_index: LogIndex) -> Progress {
        Progress {
            matched: LogIndex(0),
            next: last_index.next(),
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            snapshot_elapsed_ticks: 0,
            commit_sent: LogIndex(0),
            ticks_without_ack: 0,
        }
    }

    /// True when no append should be sent now.
    pub fn is_paused(&self, inflight_messages_max: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflight.len() >= inflight_messages_max,
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Back to probing from `matched + 1`.
    pub fn become_probe(&mut self) {
        if let ProgressState::Snapshot { index } = self.state {
            // The snapshot may have arrived: probe from after it, and let the
            // follower's answer correct us if it did not.
            self.next = self.matched.next().max(index.next());
        } else {
            self.next = self.matched.next();
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Starts pipelining after `matched`.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next = self.matched.next();
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Waits for a snapshot at `index` to be acknowledged.
    pub fn become_snapshot(&mut self, index: LogIndex) {
        self.state = ProgressState::Snapshot { index };
        self.probe_sent = false;
        self.inflight.clear();
        self.snapshot_elapsed_ticks = 0;
    }

    /// The follower acknowledged up to `index`. Returns true when that is news.
    pub fn maybe_update(&mut self, index: LogIndex) -> bool {
        let updated = index > self.matched;
        if updated {
            self.matched = index;
            self.probe_sent = false;
            self.ticks_without_ack = 0;
        }
        if self.next <= index {
            self.next = index.next();
        }
        while self.inflight.front().is_some_and(|last| *last <= index) {
            self.inflight.pop_front();
        }
        updated
    }

    /// The follower refused an append at `rejected`; `next_hint` is where the
    /// leader's search says to try next. Returns false for a stale refusal.
    pub fn maybe_decrease_to(&mut self, rejected: LogIndex, next_hint: LogIndex) -> bool {
        if self.state == ProgressState::Replicate {
            // In Replicate every refusal of an index at or below `matched`
            // answers an old message.
            if rejected <= self.matched {
                return false;
            }
            self.next = next_hint.max(self.matched.next());
            self.become_probe_keep_next();
            return true;
        }
        // In Probe only the answer to the one outstanding append counts.
        if self.next.prev() != rejected {
            return false;
        }
        self.next = next_hint
            .max(self.matched.next())
            .min(rejected)
            .max(LogIndex(1));
        self.probe_sent = false;
        true
    }

    fn become_probe_keep_next(&mut self) {
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
    }
}
