use super::*;
use capkv_core::Rng;
use std::collections::BTreeSet;

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);
const C: NodeId = NodeId(3);

fn dot(node: NodeId, counter: u64) -> Dot {
    Dot { node, counter }
}

fn vector(entries: &[(NodeId, u64)]) -> VersionVector {
    let mut vector = VersionVector::new();
    for (node, counter) in entries {
        vector.record(dot(*node, *counter));
    }
    vector
}

fn sorted_values(set: &DvvSet<&'static str>) -> Vec<&'static str> {
    let mut values: Vec<_> = set.values().into_iter().copied().collect();
    values.sort_unstable();
    values
}

#[test]
fn version_vector_order() {
    let ab = vector(&[(A, 2), (B, 1)]);
    let a = vector(&[(A, 1)]);
    let b2 = vector(&[(B, 2)]);
    assert!(ab.descends(&a) && ab.dominates(&a));
    assert!(ab.descends(&ab) && !ab.dominates(&ab));
    assert!(!a.descends(&ab));
    assert!(ab.concurrent_with(&b2));
    let mut merged = ab.clone();
    merged.merge(&b2);
    assert_eq!(merged, vector(&[(A, 2), (B, 2)]));
    assert!(merged.covers(dot(B, 2)) && !merged.covers(dot(C, 1)));
    assert!(VersionVector::new().descends(&VersionVector::new()));
}

#[test]
fn two_concurrent_writes_without_context_are_two_siblings() {
    let mut set = DvvSet::new();
    set.new_write(&VersionVector::new(), "x", A);
    set.new_write(&VersionVector::new(), "y", A);
    assert_eq!(sorted_values(&set), ["x", "y"]);
}

#[test]
fn a_write_with_the_context_of_both_siblings_leaves_one_value() {
    let mut set = DvvSet::new();
    set.new_write(&VersionVector::new(), "x", A);
    set.new_write(&VersionVector::new(), "y", B);
    let context = set.context().clone();
    set.new_write(&context, "merged", A);
    assert_eq!(sorted_values(&set), ["merged"]);
}

#[test]
fn a_write_with_a_stale_context_keeps_what_it_did_not_see() {
    // Client 1 reads "x", client 2 overwrites "x" with "y", then client 1
    // writes with its stale context: "y" was not seen, so it survives.
    let mut set = DvvSet::new();
    set.new_write(&VersionVector::new(), "x", A);
    let stale = set.context().clone();
    set.new_write(&stale, "y", A);
    set.new_write(&stale, "z", A);
    assert_eq!(sorted_values(&set), ["y", "z"]);
}

#[test]
fn a_client_rewriting_with_its_own_context_never_grows_siblings() {
    let mut set = DvvSet::new();
    for round in 0..100u64 {
        let context = set.context().clone();
        set.new_write(&context, round, A);
        assert_eq!(set.sibling_count(), 1);
    }
    assert_eq!(set.values(), [&99]);
    // Through a different coordinator each time, too.
    for round in 0..100u64 {
        let context = set.context().clone();
        set.new_write(&context, round, NodeId(round % 3 + 1));
        assert_eq!(set.sibling_count(), 1);
    }
}

#[test]
fn sibling_explosion_does_not_happen() {
    // N clients interleave read-modify-write cycles on one replica, each
    // writing with the context of its own (often stale) read. Each write
    // supersedes what its writer read, so at most one sibling per client
    // can be live: the number of truly concurrent writers.
    let clients = 8;
    let mut rng = Rng::new(42);
    let mut set: DvvSet<u64> = DvvSet::new();
    let mut contexts: Vec<Option<VersionVector>> = vec![None; clients];
    for step in 0..10_000u64 {
        let client = rng.range(0, clients as u64) as usize;
        match contexts[client].take() {
            None => contexts[client] = Some(set.context().clone()),
            Some(context) => {
                set.new_write(&context, step, A);
                assert!(
                    set.sibling_count() <= clients,
                    "{} siblings",
                    set.sibling_count()
                );
            }
        }
    }
    assert!(set.sibling_count() >= 1);
}

#[test]
fn a_delete_is_a_tombstone_and_a_concurrent_write_survives_it() {
    let mut set = DvvSet::new();
    set.new_write(&VersionVector::new(), "x", A);
    let read = set.context().clone();
    set.new_delete(&read, A);
    assert!(set.is_tombstone());
    assert!(set.values().is_empty());

    // A write concurrent with the delete (same stale context) survives.
    set.new_write(&read, "y", B);
    assert!(!set.is_tombstone());
    assert_eq!(sorted_values(&set), ["y"]);
    assert_eq!(set.sibling_count(), 2);

    // A write that saw both ends the conflict.
    let context = set.context().clone();
    set.new_write(&context, "z", A);
    assert_eq!(sorted_values(&set), ["z"]);
    assert_eq!(set.sibling_count(), 1);
}

#[test]
fn replicas_that_diverged_in_a_partition_sync_to_both_siblings() {
    let mut left = DvvSet::new();
    left.new_write(&VersionVector::new(), "base", A);
    let mut right = left.clone();
    let base = left.context().clone();
    left.new_write(&base, "left", A);
    right.new_write(&base, "right", B);
    let joined = DvvSet::sync(&left, &right);
    assert_eq!(sorted_values(&joined), ["left", "right"]);
    assert_eq!(joined, DvvSet::sync(&right, &left));
    // The replica that had "left" already does not resurrect "base".
    assert!(!joined.values().contains(&&"base"));
}

/// A reference model of the causal history: each write's ancestors, and per
/// replica the set of writes it knows. The live siblings must be exactly the
/// known writes no other known write has in its history.
struct Model {
    /// Ancestors of each write (by write id), closed transitively.
    history: BTreeMap<u64, BTreeSet<u64>>,
    /// Per replica, every write it knows.
    known: Vec<BTreeSet<u64>>,
}

impl Model {
    fn live(&self, replica: usize) -> BTreeSet<u64> {
        let known = &self.known[replica];
        let superseded: BTreeSet<u64> = known
            .iter()
            .flat_map(|write| self.history[write].iter().copied())
            .collect();
        known.difference(&superseded).copied().collect()
    }
}

/// Runs a random schedule of reads, writes, deletes and syncs over three
/// replicas and four clients; checks the DVV against the model after every
/// step and returns every state seen, for the lattice-law test.
fn random_schedule(seed: u64, steps: usize) -> Vec<DvvSet<u64>> {
    let replica_count = 3;
    let client_count = 4;
    let mut rng = Rng::new(seed);
    let mut replicas: Vec<DvvSet<u64>> = vec![DvvSet::new(); replica_count];
    let mut model = Model {
        history: BTreeMap::new(),
        known: vec![BTreeSet::new(); replica_count],
    };
    let mut dots: BTreeMap<Dot, u64> = BTreeMap::new();
    let mut reads: Vec<(VersionVector, BTreeSet<u64>)> =
        vec![(VersionVector::new(), BTreeSet::new()); client_count];
    let mut states = Vec::new();
    for write_id in 0..steps as u64 {
        let client = rng.range(0, client_count as u64) as usize;
        let replica = rng.range(0, replica_count as u64) as usize;
        match rng.range(0, 4) {
            0 => {
                reads[client] = (
                    replicas[replica].context().clone(),
                    model.known[replica].clone(),
                );
            }
            1 => {
                let (context, seen) = reads[client].clone();
                let coordinator = NodeId(replica as u64 + 1);
                let new_dot = if rng.chance(0.2) {
                    replicas[replica].new_delete(&context, coordinator)
                } else {
                    replicas[replica].new_write(&context, write_id, coordinator)
                };
                dots.insert(new_dot, write_id);
                model.known[replica].extend(seen.iter().copied());
                model.known[replica].insert(write_id);
                model.history.insert(write_id, seen);
            }
            _ => {
                let other = rng.range(0, replica_count as u64) as usize;
                let joined = DvvSet::sync(&replicas[replica], &replicas[other]);
                replicas[other] = joined;
                let known = model.known[replica].clone();
                model.known[other].extend(known);
            }
        }
        for (index, state) in replicas.iter().enumerate() {
            let live: BTreeSet<u64> = state.siblings().map(|(dot, _)| dots[&dot]).collect();
            assert_eq!(live, model.live(index), "seed {seed}, replica {index}");
        }
        states.push(replicas[replica].clone());
    }
    states
}

#[test]
fn siblings_are_exactly_the_causally_concurrent_writes() {
    let mut sibling_count_max = 0;
    for seed in 0..50 {
        let states = random_schedule(seed, 300);
        let most = states.iter().map(DvvSet::sibling_count).max();
        sibling_count_max = sibling_count_max.max(most.unwrap_or(0));
    }
    // The schedules must actually produce conflicts for the check to mean
    // anything.
    assert!(sibling_count_max >= 3, "only {sibling_count_max} siblings");
}

#[test]
fn sync_is_commutative_associative_and_idempotent() {
    let mut rng = Rng::new(7);
    for seed in 0..20 {
        let states = random_schedule(seed, 200);
        for _ in 0..200 {
            let pick = |rng: &mut Rng| &states[rng.range(0, states.len() as u64) as usize];
            let (a, b, c) = (pick(&mut rng), pick(&mut rng), pick(&mut rng));
            assert_eq!(DvvSet::sync(a, b), DvvSet::sync(b, a), "commutative");
            assert_eq!(
                DvvSet::sync(&DvvSet::sync(a, b), c),
                DvvSet::sync(a, &DvvSet::sync(b, c)),
                "associative"
            );
            assert_eq!(DvvSet::sync(a, a), *a, "idempotent");
            let ab = DvvSet::sync(a, b);
            assert_eq!(DvvSet::sync(&ab, b), ab, "absorbs what it already has");
        }
    }
}

#[test]
fn base64url_matches_rfc_4648_vectors() {
    let cases = [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ];
    for (plain, encoded) in cases {
        assert_eq!(base64url::encode(plain.as_bytes()), encoded);
        assert_eq!(base64url::decode(encoded).unwrap(), plain.as_bytes());
    }
    assert_eq!(base64url::encode(&[0xfb, 0xff]), "-_8");
    assert!(base64url::decode("Zh").is_none(), "non-zero trailing bits");
    assert!(base64url::decode("Z").is_none(), "impossible length");
    assert!(base64url::decode("Zm9v+").is_none(), "standard alphabet");
    assert!(base64url::decode("Zg==").is_none(), "padding");
}

#[test]
fn context_round_trips_through_its_opaque_encoding() {
    let mut rng = Rng::new(3);
    for _ in 0..1_000 {
        let mut vector = VersionVector::new();
        for _ in 0..rng.range(0, 8) {
            let bits = rng.range(1, 64);
            let node = NodeId(rng.range(1, 1 << bits));
            vector.record(dot(node, rng.range(1, u64::MAX)));
        }
        let text = vector.encode();
        assert!(text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'));
        assert_eq!(VersionVector::decode(&text), Ok(vector));
    }
    let max = vector(&[(NodeId(u64::MAX), u64::MAX)]);
    assert_eq!(VersionVector::decode(&max.encode()), Ok(max));
}

#[test]
fn malformed_contexts_are_errors() {
    let encode = |bytes: &[u8]| base64url::encode(bytes);
    assert_eq!(
        VersionVector::decode("!!"),
        Err(ContextError::InvalidBase64)
    );
    assert_eq!(VersionVector::decode(""), Err(ContextError::Truncated));
    assert_eq!(
        VersionVector::decode(&encode(&[9])),
        Err(ContextError::UnknownFormat(9))
    );
    assert_eq!(
        VersionVector::decode(&encode(&[1, 1, 5])),
        Err(ContextError::Truncated)
    );
    assert_eq!(
        VersionVector::decode(&encode(&[1, 1, 5, 0])),
        Err(ContextError::NotCanonical),
        "zero counter"
    );
    assert_eq!(
        VersionVector::decode(&encode(&[1, 2, 5, 1, 5, 1])),
        Err(ContextError::NotCanonical),
        "repeated node"
    );
    assert_eq!(
        VersionVector::decode(&encode(&[1, 0, 0])),
        Err(ContextError::TrailingBytes)
    );
    assert_eq!(
        VersionVector::decode(&encode(&[1, 0x80, 0x80, 0x01])),
        Err(ContextError::TooManyEntries {
            got: 1 << 14,
            max: CONTEXT_ENTRIES_MAX
        })
    );
    assert_eq!(
        VersionVector::decode(&encode(&[
            1, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 1
        ])),
        Err(ContextError::Overflow)
    );
    assert_eq!(
        VersionVector::decode(&encode(&[1, 1, 0x85, 0x00, 1])),
        Err(ContextError::NotCanonical),
        "padded varint"
    );
    let long = "A".repeat(CONTEXT_ENCODED_CHARS_MAX + 1);
    assert!(matches!(
        VersionVector::decode(&long),
        Err(ContextError::TooLong { .. })
    ));
}

#[test]
fn merge_reports_a_change_exactly_when_the_state_changes() {
    let mut a: DvvSet<Vec<u8>> = DvvSet::new();
    a.new_write(&VersionVector::new(), b"x".to_vec(), NodeId(1));
    let mut b = a.clone();
    b.new_write(a.context(), b"y".to_vec(), NodeId(2));
    let mut c: DvvSet<Vec<u8>> = DvvSet::new();
    c.new_write(&VersionVector::new(), b"z".to_vec(), NodeId(3));
    for (left, right) in [(&a, &a), (&a, &b), (&b, &a), (&a, &c), (&b, &b), (&b, &c)] {
        let mut merged = left.clone();
        let changed = merged.merge_from(right);
        assert_eq!(changed, merged != *left, "{left:?} + {right:?}");
    }
}
