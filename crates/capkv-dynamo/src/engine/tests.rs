//! The engine's rules, one test each, on a small in-memory cluster with a
//! hand-driven network.

use super::*;
use crate::api::WriteLevel;
use capkv_storage::MemStorage;

const SPEC_SIBLINGS: ApSpec = ApSpec {
    replicas: 3,
    conflict: Conflict::Siblings,
    read: ReadLevel::Quorum,
    write: WriteLevel::Quorum,
};
const SPEC_LWW: ApSpec = ApSpec {
    conflict: Conflict::Lww,
    ..SPEC_SIBLINGS
};

struct Cluster {
    nodes: BTreeMap<NodeId, Dynamo>,
    storage: BTreeMap<NodeId, MemStorage>,
    /// Links that drop messages: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    down: BTreeSet<NodeId>,
    /// How far each node's clock runs behind.
    behind_ms: BTreeMap<NodeId, u64>,
    now_ms: u64,
    answers: BTreeMap<(NodeId, u64), ApResponse>,
    next_request: u64,
    bugs: DynamoBugs,
}

fn config(id: u64, bugs: DynamoBugs) -> DynamoConfig {
    let mut config = DynamoConfig::new(NodeId(id), vec![NodeId(1), NodeId(2), NodeId(3)]);
    config.ae_interval_ms = 0;
    config.hint_ttl_ms = 60_000;
    config.tombstone_grace_ms = 120_000;
    config.merkle_leaves = 64;
    config.bugs = bugs;
    config
}

fn buckets() -> BTreeMap<String, ApSpec> {
    [
        ("s".to_string(), SPEC_SIBLINGS),
        ("l".to_string(), SPEC_LWW),
    ]
    .into_iter()
    .collect()
}

impl Cluster {
    fn new(bugs: DynamoBugs) -> Cluster {
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            storage: BTreeMap::new(),
            cut: BTreeSet::new(),
            down: BTreeSet::new(),
            behind_ms: BTreeMap::new(),
            now_ms: 100_000,
            answers: BTreeMap::new(),
            next_request: 1,
            bugs,
        };
        for id in 1..=3 {
            let storage = MemStorage::new();
            let dynamo = Dynamo::restore(config(id, bugs), &storage, buckets(), 1).unwrap();
            cluster.nodes.insert(NodeId(id), dynamo);
            cluster.storage.insert(NodeId(id), storage);
        }
        cluster.advance(50);
        cluster
    }

    fn partition(&mut self, left: &[u64], right: &[u64]) {
        for a in left {
            for b in right {
                self.cut.insert((NodeId(*a), NodeId(*b)));
                self.cut.insert((NodeId(*b), NodeId(*a)));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Kills a node: its unsynced state and memory are gone.
    fn crash(&mut self, id: u64) {
        self.down.insert(NodeId(id));
        self.nodes.remove(&NodeId(id));
        if let Some(storage) = self.storage.get_mut(&NodeId(id)) {
            storage.crash();
        }
    }

    fn restart(&mut self, id: u64) {
        let storage = &self.storage[&NodeId(id)];
        let mut dynamo =
            Dynamo::restore(config(id, self.bugs), storage, buckets(), self.now_ms << 20).unwrap();
        dynamo.tick(self.now_ms);
        self.nodes.insert(NodeId(id), dynamo);
        self.down.remove(&NodeId(id));
    }

    /// Delivers everything until the network is quiet.
    fn settle(&mut self) {
        for _ in 0..100 {
            let mut moved = false;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                let mut batch = WriteBatch::new();
                let mut messages = Vec::new();
                let mut responses = Vec::new();
                let node = self.nodes.get_mut(&id).unwrap();
                let must_sync = node.take_ready(&mut batch, &mut messages, &mut responses);
                let storage = self.storage.get_mut(&id).unwrap();
                if !batch.is_empty() {
                    storage.write(batch).unwrap();
                }
                if must_sync {
                    storage.sync().unwrap();
                }
                for (request, response) in responses {
                    self.answers.insert((id, request), response);
                }
                for (to, message) in messages {
                    moved = true;
                    if self.cut.contains(&(id, to)) || self.down.contains(&to) {
                        continue;
                    }
                    if let Some(target) = self.nodes.get_mut(&to) {
                        target.handle_message(id, message);
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the network did not settle");
    }

    /// Advances every clock by `ms`, in steps of 50 ms.
    fn advance(&mut self, ms: u64) {
        let target = self.now_ms + ms;
        while self.now_ms < target {
            self.now_ms += 50;
            for (id, node) in &mut self.nodes {
                let behind = self.behind_ms.get(id).copied().unwrap_or(0);
                node.tick(self.now_ms - behind);
            }
            self.settle();
        }
    }

    fn request(&mut self, node: u64, request: ApRequest, spec: ApSpec) -> ApResponse {
        let id = self.next_request;
        self.next_request += 1;
        self.nodes
            .get_mut(&NodeId(node))
            .unwrap()
            .handle_request(id, request, spec);
        self.settle();
        for _ in 0..100 {
            if let Some(answer) = self.answers.remove(&(NodeId(node), id)) {
                return answer;
            }
            self.advance(50);
        }
        panic!("no answer within 5 s");
    }

    fn write(
        &mut self,
        node: u64,
        bucket: &str,
        value: Option<&str>,
        context: Option<String>,
        level: WriteLevel,
    ) -> ApResponse {
        let spec = if bucket == "l" {
            SPEC_LWW
        } else {
            SPEC_SIBLINGS
        };
        self.request(
            node,
            ApRequest::Write {
                bucket: bucket.into(),
                key: "k".into(),
                value: value.map(|value| value.as_bytes().to_vec()),
                context,
                level: Some(level),
            },
            spec,
        )
    }

    fn read(
        &mut self,
        node: u64,
        bucket: &str,
        level: ReadLevel,
        session: Option<String>,
    ) -> ApResponse {
        let spec = if bucket == "l" {
            SPEC_LWW
        } else {
            SPEC_SIBLINGS
        };
        self.request(
            node,
            ApRequest::Read {
                bucket: bucket.into(),
                key: "k".into(),
                level: Some(level),
                session,
            },
            spec,
        )
    }

    fn local_values(&self, node: u64, bucket: &str) -> Vec<String> {
        self.nodes[&NodeId(node)]
            .object(bucket, "k")
            .map(Object::values)
            .unwrap_or_default()
            .into_iter()
            .map(|value| String::from_utf8(value).unwrap())
            .collect()
    }
}

fn values(answer: &ApResponse) -> (Vec<String>, String) {
    match answer {
        ApResponse::Values {
            values, context, ..
        } => (
            values
                .iter()
                .map(|value| String::from_utf8(value.clone()).unwrap())
                .collect(),
            context.clone(),
        ),
        other => panic!("expected values, got {other:?}"),
    }
}

fn session(answer: &ApResponse) -> String {
    match answer {
        ApResponse::Written { session, .. } => session.clone(),
        other => panic!("expected a write, got {other:?}"),
    }
}

#[test]
fn rule_4_quorum_read_sees_the_latest_acknowledged_quorum_write() {
    let mut cluster = Cluster::new(DynamoBugs::default());
    let answer = cluster.write(1, "s", Some("a"), None, WriteLevel::Quorum);
    assert!(matches!(answer, ApResponse::Written { acks, replicas: 3, .. } if acks >= 2));
    let (read, context) = values(&cluster.read(3, "s", ReadLevel::Quorum, None));
    assert_eq!(read, ["a"]);
    cluster.write(2, "s", Some("b"), Some(context), WriteLevel::Quorum);
    let (read, _) = values(&cluster.read(1, "s", ReadLevel::Quorum, None));
    assert_eq!(read, ["b"], "a write with the read's context supersedes it");
}

#[test]
fn partition_keeps_both_sides_writable_and_siblings_resolve_with_the_context() {
    let mut cluster = Cluster::new(DynamoBugs::default());
    cluster.partition(&[1], &[2, 3]);
    let answer = cluster.write(1, "s", Some("left"), None, WriteLevel::One);
    assert!(
        matches!(answer, ApResponse::Written { acks: 1, .. }),
        "{answer:?}"
    );
    let answer = cluster.write(1, "s", Some("left2"), None, WriteLevel::Quorum);
    assert!(
        matches!(
            answer,
            ApResponse::Failed(ApError::NoQuorum {
                required: 2,
                responded: 1,
                replicas: 3
            })
        ),
        "{answer:?}"
    );
    let answer = cluster.write(2, "s", Some("right"), None, WriteLevel::Quorum);
    assert!(matches!(answer, ApResponse::Written { .. }), "{answer:?}");
    cluster.heal();
    let (mut read, context) = values(&cluster.read(3, "s", ReadLevel::All, None));
    read.sort();
    assert_eq!(
        read,
        ["left", "left2", "right"],
        "every concurrent write is a sibling"
    );
    cluster.write(3, "s", Some("merged"), Some(context), WriteLevel::All);
    for node in 1..=3 {
        assert_eq!(cluster.local_values(node, "s"), ["merged"]);
    }
}

#[test]
fn a_client_rewriting_with_its_context_does_not_grow_siblings() {
    let mut cluster = Cluster::new(DynamoBugs::default());
    let mut context = None;
    for round in 0..20 {
        let answer = cluster.write(1 + round % 3, "s", Some("v"), context, WriteLevel::Quorum);
        let ApResponse::Written { context: next, .. } = answer else {
            panic!("{answer:?}");
        };
        context = Some(next);
    }
    let (read, _) = values(&cluster.read(2, "s", ReadLevel::All, None));
    assert_eq!(read.len(), 1);
}

#[test]
fn lww_converges_and_a_slow_clock_that_read_the_newer_write_still_wins() {
    let mut cluster = Cluster::new(DynamoBugs::default());
    // Node 3's clock runs 10 s behind everyone else's.
    cluster.behind_ms.insert(NodeId(3), 10_000);
    cluster.advance(50);
    cluster.partition(&[1], &[2, 3]);
    cluster.write(1, "l", Some("left"), None, WriteLevel::One);
    cluster.advance(100);
    cluster.write(2, "l", Some("right"), None, WriteLevel::One);
    cluster.heal();
    let (read, context) = values(&cluster.read(1, "l", ReadLevel::All, None));
    assert_eq!(
        read,
        ["right"],
        "the later timestamp wins (the lost update)"
    );
    for node in 1..=3 {
        assert_eq!(cluster.local_values(node, "l"), ["right"]);
    }
    // Node 3 read "right" (stamped by a clock 10 s ahead of its own) and
    // writes after it: its write must win.
    let answer = cluster.write(3, "l", Some("after"), Some(context), WriteLevel::All);
    assert!(matches!(answer, ApResponse::Written { .. }));
    let (read, _) = values(&cluster.read(2, "l", ReadLevel::All, None));
    assert_eq!(read, ["after"]);
}

#[test]
fn hinted_handoff_delivers_writes_to_a_restarted_replica() {
    for drop_hints in [false, true] {
        let mut cluster = Cluster::new(DynamoBugs {
            drop_hints,
            ..DynamoBugs::default()
        });
        cluster.crash(3);
        cluster.advance(2_000); // node 3 counts as down
        let answer = cluster.write(1, "s", Some("while-down"), None, WriteLevel::Quorum);
        assert!(
            matches!(answer, ApResponse::Written { acks: 2, .. }),
            "{answer:?}"
        );
        cluster.advance(1_500); // the write's deadline passes: hint stored
        assert_eq!(
            cluster.nodes[&NodeId(1)].hints_for(NodeId(3)),
            usize::from(!drop_hints)
        );
        cluster.restart(3);
        cluster.advance(2_000);
        let expected: Vec<String> = if drop_hints {
            Vec::new()
        } else {
            vec!["while-down".into()]
        };
        assert_eq!(
            cluster.local_values(3, "s"),
            expected,
            "drop_hints={drop_hints}"
        );
        assert_eq!(cluster.nodes[&NodeId(1)].hints_for(NodeId(3)), 0);
    }
}

#[test]
fn anti_entropy_repairs_only_what_differs_without_reads() {
    let mut cluster = Cluster::new(DynamoBugs {
        drop_hints: true,
        ..DynamoBugs::default()
    });
    cluster.partition(&[3], &[1, 2]);
    for value in ["a", "b", "c"] {
        cluster.write(1, "s", Some(value), None, WriteLevel::Quorum);
    }
    cluster.heal();
    cluster.advance(2_000);
    assert!(
        cluster.local_values(3, "s").is_empty(),
        "no hints, no reads: still missing"
    );
    let answer = cluster.request(3, ApRequest::Repair { bucket: None }, SPEC_SIBLINGS);
    assert!(
        matches!(answer, ApResponse::RepairStarted { exchanges: 4 }),
        "{answer:?}"
    );
    cluster.advance(100);
    assert_eq!(cluster.local_values(3, "s"), cluster.local_values(1, "s"));
    assert!(!cluster.local_values(3, "s").is_empty());
    let stats = cluster.nodes[&NodeId(3)].stats();
    assert_eq!(stats.ae_keys_repaired, 1);
    // Now equal: the next exchange stops at the root.
    let before = cluster.nodes[&NodeId(3)].stats().ae_in_sync;
    cluster.request(3, ApRequest::Repair { bucket: None }, SPEC_SIBLINGS);
    cluster.advance(100);
    assert_eq!(cluster.nodes[&NodeId(3)].stats().ae_keys_repaired, 1);
    assert_eq!(cluster.nodes[&NodeId(3)].stats().ae_in_sync, before);
}

#[test]
fn read_your_writes_through_a_lagging_local_replica() {
    let mut cluster = Cluster::new(DynamoBugs::default());
    cluster.write(1, "s", Some("old"), None, WriteLevel::All);
    // Node 3 stops hearing node 1's replication.
    cluster.cut.insert((NodeId(1), NodeId(3)));
    let token = session(&cluster.write(1, "s", Some("new"), None, WriteLevel::Quorum));
    cluster.cut.clear();
    let (lagging, _) = values(&cluster.read(3, "s", ReadLevel::Local, None));
    assert_eq!(lagging, ["old"], "local shows the lag");
    let (read, _) = values(&cluster.read(3, "s", ReadLevel::Local, Some(token.clone())));
    assert!(read.contains(&"new".to_string()), "{read:?}");
    // With node 3 cut off from both others, the session cannot be met.
    let mut cluster2 = Cluster::new(DynamoBugs::default());
    cluster2.write(1, "s", Some("x"), None, WriteLevel::All);
    cluster2.cut.insert((NodeId(1), NodeId(3)));
    let token = session(&cluster2.write(1, "s", Some("y"), None, WriteLevel::Quorum));
    cluster2.partition(&[3], &[1, 2]);
    let answer = cluster2.read(3, "s", ReadLevel::One, Some(token));
    assert!(
        matches!(
            answer,
            ApResponse::Failed(ApError::SessionNotSatisfied { .. })
        ),
        "{answer:?}"
    );
}

#[test]
fn tombstones_are_reaped_only_after_every_replica_holds_them_and_stay_deleted() {
    let mut cluster = Cluster::new(DynamoBugs::default());
    cluster.write(1, "s", Some("doomed"), None, WriteLevel::All);
    let (_, context) = values(&cluster.read(2, "s", ReadLevel::All, None));
    cluster.partition(&[3], &[1, 2]);
    cluster.write(2, "s", None, Some(context), WriteLevel::Quorum);
    let (read, _) = values(&cluster.read(1, "s", ReadLevel::Quorum, None));
    assert!(read.is_empty());
    cluster.advance(30_000);
    assert_eq!(
        cluster.nodes[&NodeId(1)].stats().tombstones_reaped,
        0,
        "3 never had it"
    );
    cluster.heal();
    cluster.advance(2_000); // the hint reaches node 3
    let (read, _) = values(&cluster.read(3, "s", ReadLevel::All, None));
    assert!(read.is_empty(), "deleted data does not come back: {read:?}");
    cluster.advance(121_000);
    for node in 1..=3 {
        assert!(cluster.nodes[&NodeId(node)].object("s", "k").is_none());
        assert_eq!(cluster.nodes[&NodeId(node)].stats().tombstones_reaped, 1);
    }
    // A write the tombstone superseded, replayed now, is refused as stale.
    let old = Object::Siblings({
        let mut set = DvvSet::new();
        set.new_write(&Default::default(), b"doomed".to_vec(), NodeId(1));
        set
    });
    cluster.nodes.get_mut(&NodeId(3)).unwrap().handle_message(
        NodeId(1),
        DynamoMessage::Replicate {
            req: 9,
            bucket: "s".into(),
            key: "k".into(),
            object: old,
            origin_ms: 1_000,
        },
    );
    assert!(cluster.nodes[&NodeId(3)].object("s", "k").is_none());
    assert_eq!(cluster.nodes[&NodeId(3)].stats().stale_writes_refused, 1);
}

#[test]
fn the_read_repair_bug_loses_an_acknowledged_sibling_and_the_fix_keeps_it() {
    for bug in [false, true] {
        let mut cluster = Cluster::new(DynamoBugs {
            read_repair_skips_merge: bug,
            drop_hints: true,
            ..DynamoBugs::default()
        });
        cluster.partition(&[1], &[2, 3]);
        cluster.write(1, "s", Some("left"), None, WriteLevel::One);
        cluster.write(2, "s", Some("right"), None, WriteLevel::All);
        cluster.heal();
        cluster.read(1, "s", ReadLevel::All, None);
        cluster.advance(200);
        let mut kept = cluster.local_values(1, "s");
        kept.sort();
        if bug {
            assert_ne!(kept, ["left", "right"], "the bug must lose a sibling");
        } else {
            assert_eq!(kept, ["left", "right"]);
        }
    }
}

/// Driver contract 2: a replica's `ReplicateAck` follows the sync of the
/// object it acknowledges, so a crash right after it keeps the write. With
/// the `ack_before_sync` bug `take_ready` asks for no sync, and the same
/// crash takes the acknowledged write away.
#[test]
fn contract_2_a_replica_acknowledges_only_what_a_crash_cannot_take() {
    for bug in [false, true] {
        let mut cluster = Cluster::new(DynamoBugs {
            ack_before_sync: bug,
            ..DynamoBugs::default()
        });
        let answer = cluster.write(1, "s", Some("a"), None, WriteLevel::All);
        assert!(
            matches!(answer, ApResponse::Written { acks: 3, .. }),
            "{answer:?}"
        );
        cluster.crash(2);
        cluster.restart(2);
        let kept = cluster.local_values(2, "s");
        if bug {
            assert!(kept.is_empty(), "the bug must lose the write: {kept:?}");
        } else {
            assert_eq!(kept, ["a"]);
        }
    }
}

#[test]
fn bad_tokens_are_refused_with_a_clear_error() {
    let mut cluster = Cluster::new(DynamoBugs::default());
    let answer = cluster.write(1, "s", Some("v"), Some("!!".into()), WriteLevel::One);
    assert!(
        matches!(answer, ApResponse::Failed(ApError::BadToken { .. })),
        "{answer:?}"
    );
    let answer = cluster.read(1, "s", ReadLevel::One, Some("nonsense".into()));
    assert!(
        matches!(answer, ApResponse::Failed(ApError::BadToken { .. })),
        "{answer:?}"
    );
}

#[test]
fn a_restarted_coordinator_never_reuses_a_dot() {
    let mut cluster = Cluster::new(DynamoBugs::default());
    let first = session(&cluster.write(1, "s", Some("a"), None, WriteLevel::All));
    cluster.crash(1);
    cluster.restart(1);
    let second = session(&cluster.write(1, "s", Some("b"), None, WriteLevel::All));
    assert_ne!(first, second);
    let config = config(1, DynamoBugs::default());
    assert!(config.check().is_ok());
    let mut bad = config;
    bad.tombstone_grace_ms = bad.hint_ttl_ms;
    assert!(bad.check().is_err());
}

#[test]
fn a_duplicated_coordinate_message_makes_one_write() {
    let nodes: Vec<NodeId> = (1..=4).map(NodeId).collect();
    let spec = ApSpec {
        replicas: 1,
        ..SPEC_SIBLINGS
    };
    let buckets: BTreeMap<String, ApSpec> = [("s".to_string(), spec)].into_iter().collect();
    let engine = |id: u64| {
        let mut config = DynamoConfig::new(NodeId(id), nodes.clone());
        config.ae_interval_ms = 0;
        let mut dynamo = Dynamo::restore(config, &MemStorage::new(), buckets.clone(), 1).unwrap();
        dynamo.tick(1_000);
        dynamo
    };
    let mut origin = engine(1);
    let key = (0..100)
        .map(|n| format!("k{n}"))
        .find(|key| origin.replicas("s", key, 1) != [NodeId(1)])
        .unwrap();
    let replica = origin.replicas("s", &key, 1)[0];
    origin.handle_request(
        1,
        ApRequest::Write {
            bucket: "s".into(),
            key: key.clone(),
            value: Some(b"v".to_vec()),
            context: None,
            level: None,
        },
        spec,
    );
    let (mut batch, mut messages, mut responses) = (WriteBatch::new(), Vec::new(), Vec::new());
    let _ = origin.take_ready(&mut batch, &mut messages, &mut responses);
    let coordinate = messages
        .into_iter()
        .find(|(to, message)| *to == replica && matches!(message, DynamoMessage::Coordinate { .. }))
        .unwrap()
        .1;
    let mut target = engine(replica.0);
    target.handle_message(NodeId(1), coordinate.clone());
    target.handle_message(NodeId(1), coordinate);
    assert_eq!(target.stats().writes, 1);
    let Some(Object::Siblings(set)) = target.object("s", &key) else {
        panic!("the write is stored");
    };
    assert_eq!(set.sibling_count(), 1, "one write, one dot");
}

#[test]
fn a_write_that_would_grow_siblings_past_the_bound_is_refused() {
    let mut cluster = Cluster::new(DynamoBugs::default());
    for node in cluster.nodes.values_mut() {
        node.config.siblings_max = 3;
    }
    for value in ["a", "b", "c"] {
        let answer = cluster.write(1, "s", Some(value), None, WriteLevel::All);
        assert!(matches!(answer, ApResponse::Written { .. }), "{answer:?}");
    }
    let answer = cluster.write(1, "s", Some("d"), None, WriteLevel::All);
    assert!(
        matches!(answer, ApResponse::Failed(ApError::TooLarge(_))),
        "{answer:?}"
    );
    let (read, context) = values(&cluster.read(2, "s", ReadLevel::All, None));
    assert_eq!(read.len(), 3, "the refused write left nothing");
    let answer = cluster.write(1, "s", Some("d"), Some(context), WriteLevel::All);
    assert!(
        matches!(answer, ApResponse::Written { .. }),
        "resolving is always allowed"
    );
}
