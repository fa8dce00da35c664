//! Raft as a deterministic state machine with no I/O.
//!
//! What it is: one Raft group member ([`Raft`]) that is fed inputs and hands
//! back outputs. It has no threads, sockets, files, clocks or global
//! randomness: time arrives as [`Raft::tick`], peers' messages through
//! [`Raft::step`], client commands through [`Raft::propose`] and
//! [`Raft::read_index`], and everything it wants done comes out of
//! [`Raft::ready`]. The simulator and the real server drive the same code.
//!
//! It implements leader election with randomised timeouts (§5.2) and the
//! §5.4.1 vote restriction; PreVote and CheckQuorum (thesis §9.6, §6.2);
//! replication with batching, pipelining bounded by `inflight_messages_max`,
//! and fast backtracking on conflicts, with the commit index carried by the
//! next append or heartbeat rather than a message of its own (raft-rs's
//! `skip_bcast_commit`; [`Raft::commit_news`] sends it ahead of an answer
//! that depends on it); the §5.4.2 commit rule (only entries
//! of the current term are committed by counting); snapshots, compaction and
//! InstallSnapshot (§7); ReadIndex reads without log writes (thesis §6.4);
//! and leadership transfer (thesis §3.10). Every message names its group, so
//! one node can host many groups.
//!
//! # Output contract
//!
//! The driver handles one [`Ready`] at a time and must not call `step`,
//! `tick`, `propose` or `read_index` between `ready` and `advance`:
//!
//! 1. Persist `snapshot` (if any), then `entries` (replacing any persisted
//!    entries at the same or later indexes), then `hard_state`, as one atomic
//!    batch, and sync it when `must_sync` says so. A vote, a term, and an
//!    appended entry are therefore durable before any message that reveals
//!    them leaves the node. A batch that only moves the commit index needs no
//!    sync: losing it in a crash loses nothing the node promised anyone (it
//!    learns the commit index again from the leader), but it must not be
//!    reordered after a later synced batch.
//! 2. Only then send `messages`. (A leader counts its own entries towards a
//!    quorum only after `advance`, so it too never counts an entry it could
//!    still lose.)
//! 3. Install `snapshot` into the state machine (if any), then apply
//!    `committed_entries` in order. They are committed, and step 1 made them
//!    locally durable, so applying them can never be undone.
//! 4. Serve each of `read_states` once the applied index reached its `index`.
//! 5. Call [`Raft::advance`] with the same `Ready`.
//!
//! [`Raft::ready_sending`] and [`Raft::advance_reusing`] are the same steps
//! for a driver that gathers messages in its own vector and hands the
//! `Ready`'s vectors back for reuse; they change no step's meaning.
//!
//! The simulator checks this contract: a crash drops everything not synced
//! in step 1, and when the node restarts, its durability check finds any
//! term, vote or entry that a released message revealed and the disk lost
//! (`capkv sim --bug send-before-sync` breaks step 2 to show it).
//!
//! Layout: `raft.rs` (roles, step, ready/advance), `log.rs` (in-memory log and
//! snapshot), `progress.rs` (the leader's view of each follower),
//! `message.rs` (wire types), `config.rs` (settings and deliberate bugs).
//!
//! What it does not do: membership changes, learners, lease-based reads, and
//! storage. It keeps the uncompacted log in memory; the application bounds it
//! by taking snapshots and calling [`Raft::compact`].

#![warn(missing_docs)]

mod config;
mod log;
mod message;
mod progress;
mod raft;

pub use config::{Config, ConfigError, DeliberateBugs};
pub use log::RaftLog;
pub use message::{Entry, EntryKind, HardState, Message, MessageBody, Snapshot, SnapshotMeta};
pub use progress::{Progress, ProgressState};
pub use raft::{Raft, RaftError, ReadState, Ready, Role, SoftState};
