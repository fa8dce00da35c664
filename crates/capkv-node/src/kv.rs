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
    /// The command's postcard bytes, the data of its log entry, written
    /// into a buffer allocated once instead of one grown step by step.
    /// Public for observers that name an entry's command by the hash of its
    /// bytes (the simulator's stale-read checker).
    pub fn encode(&self) -> Vec<u8> {
        crate::persist::encode_with_capacity(self, self.data_bytes() + COMMAND_FIELDS_BYTES_MAX)
    }

    /// The bytes of the command's strings and byte fields.
    fn data_bytes(&self) -> usize {
        match self {
            Command::CreateBucket { name, .. } => name.len(),
            Command::Put { bucket, key, value } => bucket.len() + key.len() + value.len(),
            Command::Delete { bucket, key } => bucket.len() + key.len(),
            Command::Cas {
                bucket,
                key,
                expected,
                value,
            } => {
                let expected_bytes = match expected {
                    Expected::Version(_) => 0,
                    Expected::Value(value) => value.as_ref().map_or(0, Vec::len),
                };
                bucket.len() + key.len() + expected_bytes + value.as_ref().map_or(0, Vec::len)
            }
        }
    }

    /// The command as a view borrowing its strings and bytes.
    fn view(&self) -> CommandView<'_> {
        match self {
            Command::CreateBucket { name, spec } => CommandView::CreateBucket {
                name,
                spec: spec.clone(),
            },
            Command::Put { bucket, key, value } => CommandView::Put { bucket, key, value },
            Command::Delete { bucket, key } => CommandView::Delete { bucket, key },
            Command::Cas {
                bucket,
                key,
                expected,
                value,
            } => CommandView::Cas {
                bucket,
                key,
                expected: match expected {
                    Expected::Version(version) => ExpectedView::Version(*version),
                    Expected::Value(value) => ExpectedView::Value(value.as_deref()),
                },
                value: value.as_deref(),
            },
        }
    }
}

/// Bound on the encoded size of a command less its strings and byte
/// fields: a variant tag, at most four varint lengths or numbers (10 bytes
/// each) and a few option and enum tags.
const COMMAND_FIELDS_BYTES_MAX: usize = 64;

/// A [`Command`] decoded in place: its strings and bytes borrow the entry
/// they were read from, so applying an entry copies only what the state
/// keeps (an overwrite of an existing key copies just the value, into the
/// old value's buffer). Its variants and fields are `Command`'s in the same
/// order and postcard reads `&str` and `&[u8]` with the same calls as
/// `String` and `Vec<u8>`, so it accepts and refuses exactly the bytes
/// `Command` does: every node still skips the same undecodable entries.
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub(crate) enum CommandView<'a> {
    /// See [`Command::CreateBucket`].
    CreateBucket { name: &'a str, spec: BucketSpec },
    /// See [`Command::Put`].
    Put {
        bucket: &'a str,
        key: &'a str,
        value: &'a [u8],
    },
    /// See [`Command::Delete`].
    Delete { bucket: &'a str, key: &'a str },
    /// See [`Command::Cas`].
    Cas {
        bucket: &'a str,
        key: &'a str,
        #[serde(borrow)]
        expected: ExpectedView<'a>,
        #[serde(borrow)]
        value: Option<&'a [u8]>,
    },
}

/// An [`Expected`] borrowing its bytes, for [`CommandView`].
#[derive(Debug, PartialEq, Eq, Deserialize)]
pub(crate) enum ExpectedView<'a> {
    /// See [`Expected::Version`].
    Version(u64),
    /// See [`Expected::Value`].
    Value(#[serde(borrow)] Option<&'a [u8]>),
}

impl ExpectedView<'_> {
    /// Whether a key whose current state is `current` passes the check.
    fn matches(&self, current: Option<&Versioned>) -> bool {
        match (self, current) {
            (ExpectedView::Version(0), None) => true,
            (ExpectedView::Version(version), Some(current)) => current.version == *version,
            (ExpectedView::Version(_), None) => false,
            (ExpectedView::Value(None), None) => true,
            (ExpectedView::Value(Some(value)), Some(current)) => current.value == *value,
            (ExpectedView::Value(_), _) => false,
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Image {
    buckets: BTreeMap<String, BucketSpec>,
    /// The keys of each bucket that has any, so that a lookup borrows its
    /// bucket and key (a map keyed by `(String, String)` can only be
    /// searched with owned strings). A bucket whose last key goes is
    /// removed, so equal states are equal maps.
    entries: BTreeMap<String, BTreeMap<String, Versioned>>,
}

/// How an [`Image`] is encoded: as it was when `entries` was one map keyed
/// by `(bucket, key)`. Snapshots sit on disks and travel between nodes, so
/// the bytes must not change with the layout in memory.
#[derive(Serialize)]
#[serde(rename = "Image")]
struct ImageEncoding<'a> {
    buckets: &'a BTreeMap<String, BucketSpec>,
    entries: FlatEntries<'a>,
}

/// The nested entries, encoded as one map keyed by `(bucket, key)`, in the
/// same order (by bucket, then key).
struct FlatEntries<'a>(&'a BTreeMap<String, BTreeMap<String, Versioned>>);

impl Serialize for FlatEntries<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let entries_total = self.0.values().map(BTreeMap::len).sum();
        let mut map = serializer.serialize_map(Some(entries_total))?;
        for (bucket, keys) in self.0 {
            for (key, versioned) in keys {
                map.serialize_entry(&(bucket, key), versioned)?;
            }
        }
        map.end()
    }
}

/// How an [`Image`] is decoded (see [`ImageEncoding`]).
#[derive(Deserialize)]
#[serde(rename = "Image")]
struct ImageDecoding {
    buckets: BTreeMap<String, BucketSpec>,
    entries: BTreeMap<(String, String), Versioned>,
}

impl Serialize for Image {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        ImageEncoding {
            buckets: &self.buckets,
            entries: FlatEntries(&self.entries),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Image {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Image, D::Error> {
        let decoded = ImageDecoding::deserialize(deserializer)?;
        let mut entries: BTreeMap<String, BTreeMap<String, Versioned>> = BTreeMap::new();
        for ((bucket, key), versioned) in decoded.entries {
            entries.entry(bucket).or_default().insert(key, versioned);
        }
        Ok(Image {
            buckets: decoded.buckets,
            entries,
        })
    }
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
        self.image.entries.get(bucket)?.get(key)
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
        self.image.entries.values().map(BTreeMap::len).sum()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies `command`, committed at log index `index`.
    pub fn apply(&mut self, index: u64, command: Command) -> Applied {
        self.apply_view(index, &command.view())
    }

    /// Applies a command decoded in place, committed at log index `index`.
    pub(crate) fn apply_view(&mut self, index: u64, command: &CommandView<'_>) -> Applied {
        match *command {
            CommandView::CreateBucket { name, ref spec } => self.create_bucket(name, spec),
            CommandView::Put { bucket, key, value } => {
                self.change(index, bucket, key, None, Some(value))
            }
            CommandView::Delete { bucket, key } => self.change(index, bucket, key, None, None),
            CommandView::Cas {
                bucket,
                key,
                ref expected,
                value,
            } => self.change(index, bucket, key, Some(expected), value),
        }
    }

    fn create_bucket(&mut self, name: &str, spec: &BucketSpec) -> Applied {
        match self.image.buckets.get(name) {
            Some(existing) if existing == spec => Applied::BucketReady { created: false },
            Some(existing) => Applied::BucketConflict {
                existing: existing.clone(),
            },
            None => {
                self.image.buckets.insert(name.to_owned(), spec.clone());
                Applied::BucketReady { created: true }
            }
        }
    }

    /// Sets (`value: Some`) or removes a key, if `expected` (when given)
    /// matches it.
    fn change(
        &mut self,
        index: u64,
        bucket: &str,
        key: &str,
        expected: Option<&ExpectedView<'_>>,
        value: Option<&[u8]>,
    ) -> Applied {
        if !self.image.buckets.contains_key(bucket) {
            return Applied::BucketNotFound;
        }
        // One search finds the key for the check and for the change.
        let current = self
            .image
            .entries
            .get_mut(bucket)
            .and_then(|keys| keys.get_mut(key));
        if let Some(expected) = expected {
            if !expected.matches(current.as_deref()) {
                return Applied::CasFailed {
                    current_version: current.map_or(0, |current| current.version),
                };
            }
        }
        match (value, current) {
            (Some(value), Some(current)) => {
                overwrite(&mut current.value, value);
                current.version = index;
                Applied::Written { version: index }
            }
            (Some(value), None) => {
                self.insert(bucket, key, value, index);
                Applied::Written { version: index }
            }
            (None, Some(_)) => Applied::Deleted {
                existed: self.remove(bucket, key),
            },
            (None, None) => Applied::Deleted { existed: false },
        }
    }

    /// Adds a key that is absent.
    fn insert(&mut self, bucket: &str, key: &str, value: &[u8], version: u64) {
        let versioned = Versioned {
            value: value.to_vec(),
            version,
        };
        match self.image.entries.get_mut(bucket) {
            Some(keys) => {
                keys.insert(key.to_owned(), versioned);
            }
            None => {
                let keys = BTreeMap::from([(key.to_owned(), versioned)]);
                self.image.entries.insert(bucket.to_owned(), keys);
            }
        }
    }

    /// Removes a key; true when it existed.
    fn remove(&mut self, bucket: &str, key: &str) -> bool {
        let Some(keys) = self.image.entries.get_mut(bucket) else {
            return false;
        };
        let existed = keys.remove(key).is_some();
        if keys.is_empty() {
            self.image.entries.remove(bucket);
        }
        existed
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
        for (bucket, keys) in &self.image.entries {
            for (key, versioned) in keys {
                hasher.write(bucket.as_bytes());
                hasher.write(key.as_bytes());
                hasher.write_u64(versioned.version);
                hasher.write(&versioned.value);
            }
        }
        hasher.finish()
    }
}

/// Replaces the bytes of `buffer` with `value`, in the buffer's own
/// allocation when it fits and is not more than twice too large (a key that
/// once held a large value should not keep its memory).
fn overwrite(buffer: &mut Vec<u8>, value: &[u8]) {
    if buffer.capacity() >= value.len() && buffer.capacity() / 2 <= value.len() {
        buffer.clear();
        buffer.extend_from_slice(value);
    } else {
        *buffer = value.to_vec();
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

    /// Commands of every kind, with byte strings of several lengths.
    fn sample_commands() -> Vec<Command> {
        let mut commands = vec![
            Command::CreateBucket {
                name: "b".into(),
                spec: cp(),
            },
            Command::Delete {
                bucket: "b".into(),
                key: "k\u{e9}".into(),
            },
        ];
        for len in [0usize, 1, 127, 128, 300] {
            let value: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            commands.push(Command::Put {
                bucket: "bucket".into(),
                key: "k".repeat(len),
                value: value.clone(),
            });
            for (expected, new) in [
                (Expected::Version(len as u64), None),
                (Expected::Value(None), Some(value.clone())),
                (Expected::Value(Some(value.clone())), None),
            ] {
                commands.push(Command::Cas {
                    bucket: "b".into(),
                    key: "k".into(),
                    expected,
                    value: new,
                });
            }
        }
        commands
    }

    /// A view decodes what a `Command` encodes into the same command, and
    /// refuses exactly the byte strings `Command` refuses (every prefix,
    /// and bad UTF-8): nodes must skip the same undecodable entries.
    #[test]
    fn views_decode_the_bytes_commands_decode() {
        for command in sample_commands() {
            let bytes = postcard::to_allocvec(&command).unwrap();
            let view: CommandView = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(view, command.view());
            for end in 0..bytes.len() {
                let prefix = &bytes[..end];
                assert_eq!(
                    postcard::from_bytes::<CommandView>(prefix).is_ok(),
                    postcard::from_bytes::<Command>(prefix).is_ok(),
                    "{command:?} cut at {end}"
                );
            }
        }
        let bad_utf8 = [1u8, 1, 0xff, 1, b'k', 0];
        assert!(postcard::from_bytes::<Command>(&bad_utf8).is_err());
        assert!(postcard::from_bytes::<CommandView>(&bad_utf8).is_err());
    }

    /// Commands encode to plain postcard, within their bound.
    #[test]
    fn commands_encode_as_postcard_within_the_bound() {
        let mut commands = sample_commands();
        commands.push(Command::Cas {
            bucket: "b".into(),
            key: "k".into(),
            expected: Expected::Version(u64::MAX),
            value: Some(vec![1; 200]),
        });
        commands.push(Command::CreateBucket {
            name: "b".repeat(200),
            spec: BucketSpec::ap(ApSpec {
                replicas: u8::MAX,
                conflict: Conflict::Lww,
                read: ReadLevel::All,
                write: WriteLevel::All,
            }),
        });
        for command in commands {
            let bytes = command.encode();
            assert_eq!(bytes, postcard::to_allocvec(&command).unwrap());
            assert!(bytes.len() <= command.data_bytes() + COMMAND_FIELDS_BYTES_MAX);
        }
    }

    /// The same commands leave the same state through either path, and an
    /// overwrite reusing the old value's buffer leaves just the new bytes.
    #[test]
    fn overwrites_keep_only_the_new_bytes() {
        let mut kv = KvState::new();
        kv.apply(
            1,
            Command::CreateBucket {
                name: "b".into(),
                spec: cp(),
            },
        );
        for (index, len) in [(2, 10), (3, 6), (4, 1), (5, 0), (6, 40)] {
            let value = vec![index as u8; len];
            let put = Command::Put {
                bucket: "b".into(),
                key: "k".into(),
                value: value.clone(),
            };
            assert_eq!(kv.apply(index, put), Applied::Written { version: index });
            assert_eq!(
                kv.get("b", "k"),
                Some(&Versioned {
                    value,
                    version: index
                })
            );
        }
        let delete = Command::Delete {
            bucket: "b".into(),
            key: "k".into(),
        };
        assert_eq!(kv.apply(7, delete), Applied::Deleted { existed: true });
        assert!(kv.is_empty());
        assert_eq!(kv, KvState::from_snapshot(&kv.to_snapshot()).unwrap());
    }
}
