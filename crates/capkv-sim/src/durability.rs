//! The durability check: a node never forgets what it told others.
//!
//! Step 1 of the Raft output contract makes a term, a vote and an appended
//! entry durable before any message that reveals them leaves the node. The
//! simulator notes what each node's released messages revealed, and when a
//! crashed node restarts from its disk, checks that the disk still holds it.
//! A driver that sends before its sync (or a `must_sync` missing where it
//! matters) fails here as soon as a crash lands in the gap, whether or not
//! the amnesia later costs a committed entry.

use crate::invariants::Violation;
use capkv_core::{LogIndex, NodeId, Term};
use capkv_raft::{Message, MessageBody, Raft};

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
