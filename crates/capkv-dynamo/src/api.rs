//! What a client asks of an ap bucket and what it gets back: consistency
//! levels, bucket settings, requests, answers and the opaque tokens
//! (causal context, session) that travel through clients.

use crate::dvv::{ContextError, Dot, VersionVector};
use crate::hlc::Hlc;
use capkv_core::NodeId;
use serde::{Deserialize, Serialize};

/// How an ap bucket resolves concurrent writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Conflict {
    /// Dotted version vectors: concurrent writes are all kept (siblings)
    /// until a write that carries their context resolves them.
    #[default]
    Siblings,
    /// Last write wins by (hybrid logical timestamp, coordinator id).
    /// Concurrent writes lose all but one by design (the lost update).
    Lww,
}

impl Conflict {
    /// The name used on the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Conflict::Siblings => "siblings",
            Conflict::Lww => "lww",
        }
    }

    /// Parses an API name.
    pub fn parse(text: &str) -> Option<Conflict> {
        match text {
            "siblings" => Some(Conflict::Siblings),
            "lww" => Some(Conflict::Lww),
            _ => None,
        }
    }
}

/// How many replicas must acknowledge a write before it is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteLevel {
    /// One replica (the coordinator's own, when it is one).
    One,
    /// A majority of the key's N replicas.
    #[default]
    Quorum,
    /// All N replicas.
    All,
}

/// How many replicas a read hears from before it answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadLevel {
    /// The receiving node's own replica, without coordination: shows
    /// replication lag as it is.
    Local,
    /// One replica.
    One,
    /// A majority of the key's N replicas.
    #[default]
    Quorum,
    /// All N replicas.
    All,
}

impl WriteLevel {
    /// The name used on the API.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteLevel::One => "one",
            WriteLevel::Quorum => "quorum",
            WriteLevel::All => "all",
        }
    }

    /// Parses an API name.
    pub fn parse(text: &str) -> Option<WriteLevel> {
        match text {
            "one" => Some(WriteLevel::One),
            "quorum" => Some(WriteLevel::Quorum),
            "all" => Some(WriteLevel::All),
            _ => None,
        }
    }

    /// Acknowledgements needed out of `replicas`.
    pub fn required(self, replicas: usize) -> usize {
        match self {
            WriteLevel::One => 1.min(replicas),
            WriteLevel::Quorum => replicas / 2 + 1,
            WriteLevel::All => replicas,
        }
    }
}

impl ReadLevel {
    /// The name used on the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadLevel::Local => "local",
            ReadLevel::One => "one",
            ReadLevel::Quorum => "quorum",
            ReadLevel::All => "all",
        }
    }

    /// Parses an API name.
    pub fn parse(text: &str) -> Option<ReadLevel> {
        match text {
            "local" => Some(ReadLevel::Local),
            "one" => Some(ReadLevel::One),
            "quorum" => Some(ReadLevel::Quorum),
            "all" => Some(ReadLevel::All),
            _ => None,
        }
    }

    /// Answers needed out of `replicas`.
    pub fn required(self, replicas: usize) -> usize {
        match self {
            ReadLevel::Local | ReadLevel::One => 1.min(replicas),
            ReadLevel::Quorum => replicas / 2 + 1,
            ReadLevel::All => replicas,
        }
    }
}

/// The settings of an ap bucket that the coordinator needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApSpec {
    /// N: copies of each key.
    pub replicas: u8,
    /// How concurrent writes resolve.
    pub conflict: Conflict,
    /// Default read level.
    pub read: ReadLevel,
    /// Default write level.
    pub write: WriteLevel,
}

/// A client request on an ap bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApRequest {
    /// Write `value` (or a tombstone, `None`) with the context of the read
    /// it follows, if any.
    Write {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The value; `None` deletes.
        value: Option<Vec<u8>>,
        /// The causal context from a read (opaque, as returned).
        context: Option<String>,
        /// The level; the bucket's default when `None`.
        level: Option<WriteLevel>,
    },
    /// Read a key.
    Read {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The level; the bucket's default when `None`.
        level: Option<ReadLevel>,
        /// A session token from an earlier write: the read must see it.
        session: Option<String>,
    },
    /// Start an anti-entropy exchange with every peer now, for one bucket
    /// or all of them.
    Repair {
        /// The bucket, or every ap bucket.
        bucket: Option<String>,
    },
}

/// The answer to an [`ApRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApResponse {
    /// A write reached its level.
    Written {
        /// The context after the write (covers it).
        context: String,
        /// The read-your-writes token for this write.
        session: String,
        /// Replicas that acknowledged before the answer.
        acks: usize,
        /// N.
        replicas: usize,
    },
    /// A read's result. `values` is empty when the key is absent or
    /// deleted; more than one value means concurrent siblings.
    Values {
        /// The live values, in a fixed order.
        values: Vec<Vec<u8>>,
        /// The context to send back with a write that resolves them.
        context: String,
        /// Replicas that answered before the answer.
        responded: usize,
        /// N.
        replicas: usize,
    },
    /// Anti-entropy exchanges started.
    RepairStarted {
        /// How many (bucket, peer) exchanges.
        exchanges: usize,
    },
    /// The request failed.
    Failed(ApError),
}

/// Why an ap request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApError {
    /// Too few replicas answered within the deadline. For a write, the
    /// value is stored on `responded` replicas (when more than zero) and
    /// will spread when the others return: the outcome is not a rollback.
    #[error("{responded} of {replicas} replicas answered, {required} needed")]
    NoQuorum {
        /// Answers needed.
        required: usize,
        /// Answers received.
        responded: usize,
        /// N.
        replicas: usize,
    },
    /// This node holds no replica of the key and handed the write to one
    /// that did not answer in time. The write may or may not have been
    /// applied (the hand-off may still arrive): the outcome is unknown.
    #[error("replica {coordinator} did not answer in time; the write's outcome is unknown")]
    CoordinatorTimeout {
        /// The replica the write was handed to.
        coordinator: NodeId,
        /// N.
        replicas: usize,
    },
    /// A read with a session token could not find that write (or a later
    /// one) on any replica that answered; it refuses to return older data.
    #[error("no replica that answered ({responded} of {replicas}) has seen the session's write")]
    SessionNotSatisfied {
        /// Answers received.
        responded: usize,
        /// N.
        replicas: usize,
    },
    /// A context or session token does not decode.
    #[error("invalid {what}: {reason}")]
    BadToken {
        /// "context" or "session".
        what: String,
        /// Why.
        reason: String,
    },
    /// A `local` read on a node that holds no replica of the key.
    #[error("node {node} holds no replica of this key (replicas: {replicas:?})")]
    NotAReplica {
        /// This node.
        node: NodeId,
        /// The key's replicas.
        replicas: Vec<NodeId>,
    },
    /// Too much work in flight.
    #[error("busy: {0}")]
    Busy(String),
    /// The write would make the key's object too large (too many siblings
    /// or too many bytes): resolve the siblings by writing with the
    /// context of a read first.
    #[error("too large: {0}")]
    TooLarge(String),
}

/// The causal context a reader gets and a writer sends back. In siblings
/// mode it is the version vector of what was read; in lww mode it is the
/// timestamp of what was read, which the coordinator's clock moves past
/// before stamping the write (so a write made after reading another is
/// ordered after it even by a node whose clock runs behind).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// What a siblings-mode reader saw.
    pub vv: VersionVector,
    /// The newest timestamp the reader saw (lww mode).
    pub hlc: Hlc,
    /// The coordinator that issued `hlc` (lww mode): with it, the context
    /// names one write exactly, ties between coordinators included.
    pub node: NodeId,
}

/// Longest context or session string accepted.
pub const TOKEN_CHARS_MAX: usize = 8192;

impl Context {
    /// The opaque form: `<vv>` in siblings mode, `t<wall>.<logical>.<node>`
    /// in lww mode.
    pub fn encode(&self) -> String {
        if self.hlc == Hlc::default() {
            self.vv.encode()
        } else {
            format!("t{}.{}.{}", self.hlc.wall_ms, self.hlc.logical, self.node.0)
        }
    }

    /// The lww version the context names: (timestamp, coordinator).
    pub fn lww_version(&self) -> (Hlc, NodeId) {
        (self.hlc, self.node)
    }

    /// Parses [`Context::encode`]'s output.
    pub fn decode(text: &str) -> Result<Context, ApError> {
        let bad = |reason: String| ApError::BadToken {
            what: "context".into(),
            reason,
        };
        if let Some(rest) = text.strip_prefix('t') {
            let (hlc, node) = rest
                .rsplit_once('.')
                .and_then(|(hlc, node)| Some((parse_hlc(hlc)?, node.parse().ok()?)))
                .ok_or_else(|| bad("malformed timestamp".into()))?;
            return Ok(Context {
                vv: VersionVector::new(),
                hlc,
                node: NodeId(node),
            });
        }
        let vv =
            VersionVector::decode(text).map_err(|error: ContextError| bad(error.to_string()))?;
        Ok(Context {
            vv,
            hlc: Hlc::default(),
            node: NodeId(0),
        })
    }
}

/// What a session token promises: a read of `key_hash`'s key sees this
/// write or a later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionVersion {
    /// A siblings-mode write: its dot.
    Dot(Dot),
    /// An lww write: its (timestamp, coordinator).
    Lww(Hlc, NodeId),
}

/// A read-your-writes token: which key and which write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// A stable hash of (bucket, key): a token for another key is ignored.
    pub key_hash: u64,
    /// The write.
    pub version: SessionVersion,
}

impl Session {
    /// `d<key_hash>.<node>.<counter>` or `l<key_hash>.<wall>.<logical>.<node>`.
    pub fn encode(&self) -> String {
        match self.version {
            SessionVersion::Dot(dot) => {
                format!("d{:x}.{}.{}", self.key_hash, dot.node.0, dot.counter)
            }
            SessionVersion::Lww(hlc, node) => format!(
                "l{:x}.{}.{}.{}",
                self.key_hash, hlc.wall_ms, hlc.logical, node.0
            ),
        }
    }

    /// Parses [`Session::encode`]'s output.
    pub fn decode(text: &str) -> Result<Session, ApError> {
        let bad = || ApError::BadToken {
            what: "session".into(),
            reason: "not a session token this cluster issued".into(),
        };
        if text.len() > TOKEN_CHARS_MAX || text.is_empty() {
            return Err(bad());
        }
        let (kind, rest) = text.split_at(1);
        let parts: Vec<&str> = rest.split('.').collect();
        let key_hash = parts
            .first()
            .and_then(|part| u64::from_str_radix(part, 16).ok())
            .ok_or_else(bad)?;
        let number = |index: usize| -> Result<u64, ApError> {
            parts
                .get(index)
                .and_then(|part| part.parse::<u64>().ok())
                .ok_or_else(bad)
        };
        let version = match (kind, parts.len()) {
            ("d", 3) => {
                let counter = number(2)?;
                if counter == 0 {
                    return Err(bad());
                }
                SessionVersion::Dot(Dot {
                    node: NodeId(number(1)?),
                    counter,
                })
            }
            ("l", 4) => {
                let logical = u32::try_from(number(2)?).map_err(|_| bad())?;
                SessionVersion::Lww(
                    Hlc {
                        wall_ms: number(1)?,
                        logical,
                    },
                    NodeId(number(3)?),
                )
            }
            _ => return Err(bad()),
        };
        Ok(Session { key_hash, version })
    }
}

fn parse_hlc(text: &str) -> Option<Hlc> {
    let (wall, logical) = text.split_once('.')?;
    Some(Hlc {
        wall_ms: wall.parse().ok()?,
        logical: logical.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_count_replicas() {
        assert_eq!(WriteLevel::Quorum.required(3), 2);
        assert_eq!(WriteLevel::All.required(3), 3);
        assert_eq!(WriteLevel::One.required(3), 1);
        assert_eq!(ReadLevel::Quorum.required(5), 3);
        assert_eq!(ReadLevel::Local.required(3), 1);
    }

    #[test]
    fn tokens_round_trip_and_refuse_garbage() {
        let mut vv = VersionVector::new();
        vv.record(Dot {
            node: NodeId(2),
            counter: 7,
        });
        for context in [
            Context {
                vv,
                hlc: Hlc::default(),
                node: NodeId(0),
            },
            Context {
                vv: VersionVector::new(),
                hlc: Hlc {
                    wall_ms: 99,
                    logical: 3,
                },
                node: NodeId(2),
            },
        ] {
            assert_eq!(Context::decode(&context.encode()), Ok(context));
        }
        for session in [
            Session {
                key_hash: 0xabc,
                version: SessionVersion::Dot(Dot {
                    node: NodeId(1),
                    counter: 5,
                }),
            },
            Session {
                key_hash: 7,
                version: SessionVersion::Lww(
                    Hlc {
                        wall_ms: 10,
                        logical: 2,
                    },
                    NodeId(3),
                ),
            },
        ] {
            assert_eq!(Session::decode(&session.encode()), Ok(session));
        }
        for garbage in ["", "x", "d", "dzz.1.2", "d1.1.0", "l1.2.3", "t1", "t1.x"] {
            assert!(
                Session::decode(garbage).is_err() || Context::decode(garbage).is_err(),
                "{garbage}"
            );
        }
        assert!(Context::decode("t1").is_err());
        assert!(Context::decode("t1.2").is_err());
        assert!(Context::decode("t1.2.x").is_err());
        assert!(Session::decode("d1.1.0").is_err());
    }
}
