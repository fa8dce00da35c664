use capkv_dynamo::{ApSpec, Conflict, ReadLevel, WriteLevel};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How a bucket trades consistency for availability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BucketMode {
    /// Raft-replicated, linearizable; a minority side refuses.
    Cp,
    /// Dynamo-style, available on both sides of a partition (issue 4).
    Ap,
}

impl BucketMode {
    /// The name used on the API.
    pub fn as_str(self) -> &'static str {
        match self {
            BucketMode::Cp => "cp",
            BucketMode::Ap => "ap",
        }
    }
}

/// A bucket's settings, replicated through Raft like any command (so every
/// node agrees on an ap bucket's N, conflict mode and default levels).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSpec {
    /// cp or ap.
    pub mode: BucketMode,
    /// Copies of each key (the Raft group's size for cp buckets).
    pub replicas: u8,
    /// How concurrent writes resolve (ap only).
    pub conflict: Conflict,
    /// Default read level (ap only).
    pub read: ReadLevel,
    /// Default write level (ap only).
    pub write: WriteLevel,
}

impl BucketSpec {
    /// A cp bucket on a Raft group of `replicas` voters.
    pub fn cp(replicas: u8) -> BucketSpec {
        BucketSpec {
            mode: BucketMode::Cp,
            replicas,
            conflict: Conflict::default(),
            read: ReadLevel::default(),
            write: WriteLevel::default(),
        }
    }

    /// An ap bucket with these settings.
    pub fn ap(spec: ApSpec) -> BucketSpec {
        BucketSpec {
            mode: BucketMode::Ap,
            replicas: spec.replicas,
            conflict: spec.conflict,
            read: spec.read,
            write: spec.write,
        }
    }

    /// The ap settings (`None` for a cp bucket).
    pub fn ap_spec(&self) -> Option<ApSpec> {
        (self.mode == BucketMode::Ap).then_some(ApSpec {
            replicas: self.replicas,
            conflict: self.conflict,
            read: self.read,
            write: self.write,
        })
    }
}

/// What a compare-and-set compares against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expected {
    /// The key's version (the log index that last wrote it); 0 means "absent".
    Version(u64),
    /// The key's current value; `None` means "absent".
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
}

/// A command replicated through Raft and applied to [`KvState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create a bucket; idempotent when the spec is the same.
    CreateBucket {
        /// Its name.
        name: String,
        /// Its settings.
        spec: BucketSpec,
    },
    /// Set a key.
    Put {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The new value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Remove a key.
    Delete {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// Set (or remove, with `value: None`) a key only if it matches.
    Cas {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// What it must currently be.
        expected: Expected,
        /// What it becomes; `None` deletes it.
        #[serde(with = "serde_bytes")]
        value: Option<Vec<u8>>,
    },
}

impl Command {
    /// The bucket and key a data command touches (`None` for bucket
    /// commands).
    pub fn target(&self) -> Option<(&str, &str)> {
        match self {
            Command::CreateBucket { .. } => None,
            Command::Put { bucket, key, .. }
            | Command::Delete { bucket, key }
            | Command::Cas { bucket, key, .. } => Some((bucket, key)),
        }
    }
}

/// A stored value and the log index that wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The Raft index of the command that last wrote the key.
    pub version: u64,
}

/// The result of applying one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// The key now has this version.
    Written {
        /// The new version.
        version: u64,
    },
    /// The key was removed (or was already absent).
    Deleted {
        /// Whether it existed.
        existed: bool,
    },
    /// A compare-and-set did not match; nothing changed.
    CasFailed {
        /// The key's current version (0 when absent).
        current_version: u64,
    },
    /// The bucket exists with this spec (created now or before).
    BucketReady {
        /// True when this command created it.
        created: bool,
    },
    /// The bucket exists with another spec; nothing changed.
    BucketConflict {
        /// The spec it has.
        existing: BucketSpec,
    },
    /// The command named a bucket that does not exist; nothing changed.
    BucketNotFound,
}

/// Everything a snapshot holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Image {
    buckets: BTreeMap<String, BucketSpec>,
    entries: BTreeMap<(String, String), Versioned>,
}

/// The replicated key-value state machine: buckets and their keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvState {
    image: Image,
}

impl KvState {
    /// An empty state.
    pub fn new() -> KvState {
        KvState::default()
    }

    /// The value of `key` in `bucket`, if present.
    pub fn get(&self, bucket: &str, key: &str) -> Option<&Versioned> {
        self.image
            .entries
            .get(&(bucket.to_string(), key.to_string()))
    }

    /// A bucket's spec, if it exists.
    pub fn bucket(&self, name: &str) -> Option<&BucketSpec> {
        self.image.buckets.get(name)
    }

    /// Every bucket, by name.
    pub fn buckets(&self) -> &BTreeMap<String, BucketSpec> {
        &self.image.buckets
    }

    /// Number of keys over all buckets.
    pub fn len(&self) -> usize {
        self.image.entries.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.image.entries.is_empty()
    }

    /// Applies `command`, committed at log index `index`.
    pub fn apply(&mut self, index: u64, command: Command) -> Applied {
        if let Command::CreateBucket { name, spec } = command {
            return match self.image.buckets.get(&name) {
                Some(existing) if *existing == spec => Applied::BucketReady { created: false },
                Some(existing) => Applied::BucketConflict {
                    existing: existing.clone(),
                },
                None => {
                    self.image.buckets.insert(name, spec);
                    Applied::BucketReady { created: true }
                }
            };
        }
        let bucket_exists = command
            .target()
            .is_some_and(|(bucket, _)| self.image.buckets.contains_key(bucket));
        if !bucket_exists {
            return Applied::BucketNotFound;
        }
        // The command's own strings become the entry's key: no copies.
        match command {
            Command::CreateBucket { .. } => Applied::BucketNotFound,
            Command::Put { bucket, key, value } => {
                self.image.entries.insert(
                    (bucket, key),
                    Versioned {
                        value,
                        version: index,
                    },
                );
                Applied::Written { version: index }
            }
            Command::Delete { bucket, key } => Applied::Deleted {
                existed: self.image.entries.remove(&(bucket, key)).is_some(),
            },
            Command::Cas {
                bucket,
                key,
                expected,
                value,
            } => {
                let slot = (bucket, key);
                let current = self.image.entries.get(&slot);
                let matches = match (&expected, current) {
                    (Expected::Version(0), None) => true,
                    (Expected::Version(v), Some(c)) => c.version == *v,
                    (Expected::Version(_), None) => false,
                    (Expected::Value(None), None) => true,
                    (Expected::Value(Some(v)), Some(c)) => c.value == *v,
                    (Expected::Value(_), _) => false,
                };
                if !matches {
                    return Applied::CasFailed {
                        current_version: current.map_or(0, |c| c.version),
                    };
                }
                match value {
                    Some(value) => {
                        self.image.entries.insert(
                            slot,
                            Versioned {
                                value,
                                version: index,
                            },
                        );
                        Applied::Written { version: index }
                    }
                    None => Applied::Deleted {
                        existed: self.image.entries.remove(&slot).is_some(),
                    },
                }
            }
        }
    }

    /// Serialises the whole state for a snapshot.
    pub fn to_snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.image).expect("maps of strings and bytes serialise")
    }

    /// Restores a state from snapshot bytes.
    pub fn from_snapshot(bytes: &[u8]) -> Result<KvState, postcard::Error> {
        if bytes.is_empty() {
            return Ok(KvState::new());
        }
        Ok(KvState {
            image: postcard::from_bytes(bytes)?,
        })
    }

    /// A hash of the whole state, to compare replicas cheaply.
    pub fn digest(&self) -> u64 {
        let mut hasher = capkv_core::StableHasher::new();
        for (name, spec) in &self.image.buckets {
            hasher.write(name.as_bytes());
            hasher.write(spec.mode.as_str().as_bytes());
            hasher.write_u64(u64::from(spec.replicas));
        }
        for ((bucket, key), versioned) in &self.image.entries {
            hasher.write(bucket.as_bytes());
            hasher.write(key.as_bytes());
            hasher.write_u64(versioned.version);
            hasher.write(&versioned.value);
        }
        hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp() -> BucketSpec {
        BucketSpec::cp(3)
    }

    #[test]
    fn buckets_are_created_once_and_guard_their_keys() {
        let mut kv = KvState::new();
        let put = Command::Put {
            bucket: "b".into(),
            key: "k".into(),
            value: b"v".to_vec(),
        };
        assert_eq!(kv.apply(1, put.clone()), Applied::BucketNotFound);
        let create = Command::CreateBucket {
            name: "b".into(),
            spec: cp(),
        };
        assert_eq!(
            kv.apply(2, create.clone()),
            Applied::BucketReady { created: true }
        );
        assert_eq!(kv.apply(3, create), Applied::BucketReady { created: false });
        let other = Command::CreateBucket {
            name: "b".into(),
            spec: BucketSpec::ap(ApSpec {
                replicas: 3,
                conflict: Conflict::Lww,
                read: ReadLevel::One,
                write: WriteLevel::One,
            }),
        };
        assert_eq!(
            kv.apply(4, other),
            Applied::BucketConflict { existing: cp() }
        );
        assert_eq!(kv.apply(5, put), Applied::Written { version: 5 });
    }

    #[test]
    fn cas_on_version_and_value() {
        let mut kv = KvState::new();
        kv.apply(
            1,
            Command::CreateBucket {
                name: "b".into(),
                spec: cp(),
            },
        );
        let put_if_absent = Command::Cas {
            bucket: "b".into(),
            key: "k".into(),
            expected: Expected::Version(0),
            value: Some(b"a".to_vec()),
        };
        assert_eq!(
            kv.apply(5, put_if_absent.clone()),
            Applied::Written { version: 5 }
        );
        assert_eq!(
            kv.apply(6, put_if_absent),
            Applied::CasFailed { current_version: 5 }
        );
        let swap = Command::Cas {
            bucket: "b".into(),
            key: "k".into(),
            expected: Expected::Value(Some(b"a".to_vec())),
            value: Some(b"b".to_vec()),
        };
        assert_eq!(kv.apply(7, swap), Applied::Written { version: 7 });
        let restored = KvState::from_snapshot(&kv.to_snapshot()).unwrap();
        assert_eq!(restored, kv);
        assert_eq!(restored.digest(), kv.digest());
    }
}
