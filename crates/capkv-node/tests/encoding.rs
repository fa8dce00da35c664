//! The byte fields of persisted and replicated types are serialized as serde
//! bytes (one copy) rather than as a sequence of `u8` (one call per byte).
//! Postcard writes both as a varint length and the raw bytes, so the change
//! must leave every encoding byte-identical: these bytes sit on disks and
//! travel between nodes of different versions. Each test compares the real
//! type with a copy of its old definition (a plain `Vec<u8>`), both ways.

use capkv_core::{LogIndex, Term};
use capkv_node::{BucketSpec, Command, Expected, KvState, Versioned};
use capkv_raft::{Entry, EntryKind, Snapshot, SnapshotMeta};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;

/// Byte strings around postcard's varint length boundaries.
fn samples() -> Vec<Vec<u8>> {
    [0usize, 1, 5, 127, 128, 255, 300, 16_383, 16_384, 70_000]
        .iter()
        .map(|&len| (0..len).map(|i| (i * 7 + len) as u8).collect())
        .collect()
}

/// Same bytes from `new` and `old`, and each decodes the other's bytes.
fn assert_same_encoding<N, O>(new: &N, old: &O)
where
    N: Serialize + DeserializeOwned + PartialEq + Debug,
    O: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let new_bytes = postcard::to_allocvec(new).expect("serialises");
    let old_bytes = postcard::to_allocvec(old).expect("serialises");
    assert_eq!(new_bytes, old_bytes, "{new:?}");
    assert_eq!(
        &postcard::from_bytes::<N>(&old_bytes).expect("decodes"),
        new
    );
    assert_eq!(
        &postcard::from_bytes::<O>(&new_bytes).expect("decodes"),
        old
    );
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct OldEntry {
    term: Term,
    index: LogIndex,
    kind: EntryKind,
    data: Vec<u8>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct OldSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum OldExpected {
    Version(u64),
    Value(Option<Vec<u8>>),
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum OldCommand {
    CreateBucket {
        name: String,
        spec: BucketSpec,
    },
    Put {
        bucket: String,
        key: String,
        value: Vec<u8>,
    },
    Delete {
        bucket: String,
        key: String,
    },
    Cas {
        bucket: String,
        key: String,
        expected: OldExpected,
        value: Option<Vec<u8>>,
    },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct OldVersioned {
    value: Vec<u8>,
    version: u64,
}

#[test]
fn entries_and_snapshots_encode_as_before() {
    for data in samples() {
        let entry = Entry {
            term: Term(3),
            index: LogIndex(300),
            kind: EntryKind::Normal,
            data: data.clone(),
        };
        let old = OldEntry {
            term: Term(3),
            index: LogIndex(300),
            kind: EntryKind::Normal,
            data: data.clone(),
        };
        assert_same_encoding(&entry, &old);
        let meta = SnapshotMeta {
            index: LogIndex(9),
            term: Term(2),
        };
        let snapshot = Snapshot {
            meta,
            data: data.clone(),
        };
        assert_same_encoding(&snapshot, &OldSnapshot { meta, data });
    }
}

#[test]
fn commands_and_values_encode_as_before() {
    let (bucket, key) = (String::from("b"), String::from("k"));
    for data in samples() {
        assert_same_encoding(
            &Command::Put {
                bucket: bucket.clone(),
                key: key.clone(),
                value: data.clone(),
            },
            &OldCommand::Put {
                bucket: bucket.clone(),
                key: key.clone(),
                value: data.clone(),
            },
        );
        for (value, expected) in [(None, Some(data.clone())), (Some(data.clone()), None)] {
            assert_same_encoding(
                &Command::Cas {
                    bucket: bucket.clone(),
                    key: key.clone(),
                    expected: Expected::Value(expected.clone()),
                    value: value.clone(),
                },
                &OldCommand::Cas {
                    bucket: bucket.clone(),
                    key: key.clone(),
                    expected: OldExpected::Value(expected),
                    value,
                },
            );
        }
        assert_same_encoding(
            &Versioned {
                value: data.clone(),
                version: 77,
            },
            &OldVersioned {
                value: data,
                version: 77,
            },
        );
    }
    assert_same_encoding(
        &Command::Cas {
            bucket: bucket.clone(),
            key: key.clone(),
            expected: Expected::Version(5),
            value: None,
        },
        &OldCommand::Cas {
            bucket: bucket.clone(),
            key: key.clone(),
            expected: OldExpected::Version(5),
            value: None,
        },
    );
    assert_same_encoding(
        &Command::Delete {
            bucket: bucket.clone(),
            key: key.clone(),
        },
        &OldCommand::Delete { bucket, key },
    );
    assert_same_encoding(
        &Command::CreateBucket {
            name: "n".into(),
            spec: BucketSpec::cp(3),
        },
        &OldCommand::CreateBucket {
            name: "n".into(),
            spec: BucketSpec::cp(3),
        },
    );
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct OldImage {
    buckets: BTreeMap<String, BucketSpec>,
    entries: BTreeMap<(String, String), OldVersioned>,
}

/// Snapshots of the key-value state keep the layout of the old image, whose
/// entries were one map keyed by (bucket, key), and decode from it.
#[test]
fn snapshots_of_the_state_encode_as_before() {
    let mut kv = KvState::new();
    let mut old = OldImage {
        buckets: BTreeMap::new(),
        entries: BTreeMap::new(),
    };
    assert_eq!(kv.to_snapshot(), postcard::to_allocvec(&old).unwrap());
    let mut index = 0;
    for bucket in ["b2", "a", "b"] {
        index += 1;
        let spec = BucketSpec::cp(3);
        kv.apply(
            index,
            Command::CreateBucket {
                name: bucket.into(),
                spec: spec.clone(),
            },
        );
        old.buckets.insert(bucket.into(), spec);
        for (key, value) in ["k2", "", "k1"].into_iter().zip(samples()) {
            index += 1;
            kv.apply(
                index,
                Command::Put {
                    bucket: bucket.into(),
                    key: key.into(),
                    value: value.clone(),
                },
            );
            old.entries.insert(
                (bucket.into(), key.into()),
                OldVersioned {
                    value,
                    version: index,
                },
            );
        }
    }
    let bytes = kv.to_snapshot();
    assert_eq!(bytes, postcard::to_allocvec(&old).unwrap());
    assert_eq!(KvState::from_snapshot(&bytes).unwrap(), kv);
    assert_eq!(
        postcard::from_bytes::<OldImage>(&bytes).expect("decodes"),
        old
    );
}
