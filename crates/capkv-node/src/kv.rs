use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a compare-and-set compares against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expected {
    /// The key's version (the log index that last wrote it); 0 means "absent".
    Version(u64),
    /// The key's current value; `None` means "absent".
    Value(Option<Vec<u8>>),
}

/// A command replicated through Raft and applied to [`KvState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set a key.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: String,
    },
    /// Set (or remove, with `value: None`) a key only if it matches.
    Cas {
        /// The key.
        key: String,
        /// What it must currently be.
        expected: Expected,
        /// What it becomes; `None` deletes it.
        value: Option<Vec<u8>>,
    },
}

/// A stored value and the log index that wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    /// The bytes.
    pub value: Vec<u8>,
    /// The Raft index of the command that last wrote the key.
    pub version: u64,
}

/// The result of applying one command.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

/// The replicated key-value state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvState {
    entries: BTreeMap<String, Versioned>,
}

impl KvState {
    /// An empty state.
    pub fn new() -> KvState {
        KvState::default()
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Versioned> {
        self.entries.get(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Applies `command`, committed at log index `index`.
    pub fn apply(&mut self, index: u64, command: Command) -> Applied {
        match command {
            Command::Put { key, value } => {
                self.entries.insert(
                    key,
                    Versioned {
                        value,
                        version: index,
                    },
                );
                Applied::Written { version: index }
            }
            Command::Delete { key } => Applied::Deleted {
                existed: self.entries.remove(&key).is_some(),
            },
            Command::Cas {
                key,
                expected,
                value,
            } => {
                let current = self.entries.get(&key);
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
                        self.entries.insert(
                            key,
                            Versioned {
                                value,
                                version: index,
                            },
                        );
                        Applied::Written { version: index }
                    }
                    None => Applied::Deleted {
                        existed: self.entries.remove(&key).is_some(),
                    },
                }
            }
        }
    }

    /// Serialises the whole state for a snapshot.
    pub fn to_snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(&self.entries).expect("a BTreeMap of strings and bytes serialises")
    }

    /// Restores a state from snapshot bytes.
    pub fn from_snapshot(bytes: &[u8]) -> Result<KvState, postcard::Error> {
        if bytes.is_empty() {
            return Ok(KvState::new());
        }
        Ok(KvState {
            entries: postcard::from_bytes(bytes)?,
        })
    }

    /// A hash of the whole state, to compare replicas cheaply.
    pub fn digest(&self) -> u64 {
        let mut hasher = capkv_core::StableHasher::new();
        for (key, versioned) in &self.entries {
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

    #[test]
    fn cas_on_version_and_value() {
        let mut kv = KvState::new();
        let put_if_absent = Command::Cas {
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
