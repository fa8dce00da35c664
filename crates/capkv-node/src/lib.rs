//! One capkv node as a deterministic state machine.
//!
//! What it is: the piece between the protocol cores and a driver. A [`Node`]
//! hosts a Raft group, turns client [`Request`]s into proposals and ReadIndex
//! reads, applies committed [`Command`]s to its [`KvState`] (bucket creation,
//! put, delete, compare-and-set on version or value, every value carrying the
//! log index that last wrote it), takes snapshots to bound the log, and answers
//! requests. It does no I/O: the simulator and the tokio server both drive it.
//!
//! # Driver contract
//!
//! 1. Feed inputs: [`Node::tick`], [`Node::handle_message`],
//!    [`Node::handle_request`].
//! 2. Take [`Node::ready`]. Write its `batch` to storage and sync it.
//! 3. Only after the sync: send `messages`, deliver `responses`.
//!
//! A crash between 2 and 3 loses the node's memory and the unsynced batch
//! together, so nothing anyone saw is lost. Requests whose outcome is
//! uncertain (a leader lost its role before its entry committed) are never
//! answered with a guess: they stay open until their entry applies or is
//! overwritten, or the driver's deadline answers them with a timeout.
//!
//! Layout: `node.rs` (the node), `kv.rs` (commands and the state machine),
//! `persist.rs` (the key layout of durable state).
//!
//! Followers forward writes and linearizable reads to the leader they know
//! ([`PeerMessage::Forward`], one hop, bounded by `forwards_max`); stale reads
//! are served from local state. Buckets are created by a replicated command,
//! so a write and the bucket it needs are ordered by the log.
//!
//! ap buckets: requests on them ([`Request::Ap`]) go to the node's
//! [`capkv_dynamo::Dynamo`] engine with the bucket's Raft-replicated
//! settings; its messages travel as [`PeerMessage::Dynamo`], its durable
//! state goes into the same batch as Raft's (keyspaces `ap_data`,
//! `ap_hints`, `ap_meta`), and [`Node::tick`] passes it physical time.
//! cp requests on ap buckets, and ap requests on cp buckets, are refused.
//!
//! What it does not do: transactions (a later issue).

#![warn(missing_docs)]

mod kv;
mod node;
pub mod persist;

pub use capkv_dynamo::{
    ApError, ApRequest, ApResponse, ApSpec, Conflict, DynamoBugs, DynamoConfig, DynamoMessage,
    DynamoStats, ReadLevel, WriteLevel,
};
pub use kv::{Applied, BucketMode, BucketSpec, Command, Expected, KvState, Versioned};
pub use node::{
    Node, NodeConfig, NodeError, NodeEvent, NodeReady, PeerMessage, ReadConsistency, Request,
    RequestError, Response,
};
