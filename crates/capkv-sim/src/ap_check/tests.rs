//! The ap checkers on hand-written histories, each one that must fail.
//!
//! Every checker gets at least one history that breaks its property and a
//! close variant that keeps it. Objects are built the way replicas build
//! them (`DvvSet::new_write`, `new_delete`, `merge_from`, `Lww::new`), so a
//! final state here is one a replica could hold; the only broken states are
//! the ones a broken engine would produce (a coordinator that ignored the
//! client's context, a replica that missed a write).

use super::*;
use capkv_dynamo::{DvvSet, Hlc, Lww, VersionVector};

// ---------------------------------------------------------------- helpers

fn n(id: u64) -> NodeId {
    NodeId(id)
}

fn dot(node: u64, counter: u64) -> Dot {
    Dot {
        node: n(node),
        counter,
    }
}

fn vv(entries: &[(u64, u64)]) -> VersionVector {
    let mut vector = VersionVector::new();
    for (node, counter) in entries {
        vector.record(dot(*node, *counter));
    }
    vector
}

/// A siblings-mode context.
fn ctx(entries: &[(u64, u64)]) -> Context {
    Context {
        vv: vv(entries),
        hlc: Hlc::default(),
        node: n(0),
    }
}

fn hlc(wall_ms: u64) -> Hlc {
    Hlc {
        wall_ms,
        logical: 0,
    }
}

/// An lww-mode context: the newest timestamp the read saw.
/// An lww read's context: the (timestamp, coordinator) of what it saw.
fn hlc_ctx(wall_ms: u64, node: u64) -> Context {
    Context {
        vv: VersionVector::new(),
        hlc: hlc(wall_ms),
        node: n(node),
    }
}

fn sv(node: u64, counter: u64) -> SessionVersion {
    SessionVersion::Dot(dot(node, counter))
}

fn lv(wall_ms: u64, node: u64) -> SessionVersion {
    SessionVersion::Lww(hlc(wall_ms), n(node))
}

const KEY: &str = "k";

/// A mutation of `KEY` by client 0 at quorum, acknowledged at `completed`.
fn mutation(kind: ApKind, value: Option<&str>, version: SessionVersion) -> ApRecord {
    ApRecord {
        client: 0,
        kind,
        key: KEY.into(),
        value: value.map(str::to_string),
        sent_context: None,
        session: None,
        strong: true,
        invoked: 0,
        completed: 10,
        outcome: ApOutcome::Written { version },
    }
}

/// An acknowledged quorum write of `value` with no context.
fn write(value: &str, version: SessionVersion) -> ApRecord {
    mutation(ApKind::Write, Some(value), version)
}

/// An acknowledged quorum delete.
fn delete(version: SessionVersion) -> ApRecord {
    mutation(ApKind::Delete, None, version)
}

/// A quorum read of `KEY` by client 1 that returned `values` and `context`.
fn read(values: &[&str], context: Context) -> ApRecord {
    ApRecord {
        client: 1,
        kind: ApKind::Read,
        key: KEY.into(),
        value: None,
        sent_context: None,
        session: None,
        strong: true,
        invoked: 100,
        completed: 110,
        outcome: ApOutcome::Read {
            values: values.iter().map(|v| v.to_string()).collect(),
            context,
        },
    }
}

fn with_context(mut record: ApRecord, context: Context) -> ApRecord {
    record.sent_context = Some(context);
    record
}

fn at(mut record: ApRecord, invoked: u64, completed: u64) -> ApRecord {
    record.invoked = invoked;
    record.completed = completed;
    record
}

fn weak(mut record: ApRecord) -> ApRecord {
    record.strong = false;
    record
}

/// The same mutation, but its outcome is unknown (timeout, no quorum).
fn unknown(mut record: ApRecord, version_known: bool) -> ApRecord {
    let version = record.version().filter(|_| version_known);
    record.outcome = ApOutcome::Unknown { version };
    record
}

fn failed(mut record: ApRecord) -> ApRecord {
    record.outcome = ApOutcome::Failed;
    record
}

fn session(mut record: ApRecord, version: SessionVersion) -> ApRecord {
    record.session = Some(version);
    record
}

/// Every replica in `nodes` holds `object`.
fn everywhere(object: Option<Object>, nodes: &[u64]) -> FinalState {
    replicas(nodes.iter().map(|node| (*node, object.clone())).collect())
}

fn replicas(objects: Vec<(u64, Option<Object>)>) -> FinalState {
    let mut state = FinalState::new();
    state.insert(
        KEY.into(),
        objects
            .into_iter()
            .map(|(node, object)| (n(node), object))
            .collect(),
    );
    state
}

fn siblings(set: &DvvSet<Vec<u8>>) -> Option<Object> {
    Some(Object::Siblings(set.clone()))
}

fn register(value: Option<&str>, wall_ms: u64, node: u64) -> Option<Object> {
    Some(Object::Lww(Lww::new(
        value.map(|v| v.as_bytes().to_vec()),
        hlc(wall_ms),
        n(node),
    )))
}

fn bytes(value: &str) -> Vec<u8> {
    value.as_bytes().to_vec()
}

fn expect_err(result: Result<(), String>, needle: &str) {
    match result {
        Ok(()) => panic!("the checker passed a history that breaks its property"),
        Err(message) => assert!(
            message.contains(needle),
            "unexpected message (wanted {needle:?}): {message}"
        ),
    }
}

// ------------------------------------------------------ 1. convergence

#[test]
fn convergence_fails_when_replicas_hold_different_siblings() {
    let mut a = DvvSet::new();
    a.new_write(&VersionVector::new(), bytes("a"), n(1));
    let mut ab = a.clone();
    let mut b = DvvSet::new();
    b.new_write(&VersionVector::new(), bytes("b"), n(2));
    ab.merge_from(&b);
    let state = replicas(vec![
        (1, siblings(&a)),
        (2, siblings(&ab)),
        (3, siblings(&ab)),
    ]);
    expect_err(convergence(&state), "differ");
}

#[test]
fn convergence_fails_when_one_replica_has_nothing() {
    let state = replicas(vec![
        (1, register(Some("a"), 5, 1)),
        (2, None),
        (3, register(Some("a"), 5, 1)),
    ]);
    expect_err(convergence(&state), "differ");
}

#[test]
fn convergence_fails_when_lww_registers_differ() {
    let state = replicas(vec![
        (1, register(Some("a"), 5, 1)),
        (2, register(Some("b"), 6, 2)),
    ]);
    expect_err(convergence(&state), "differ");
}

#[test]
fn convergence_holds_for_equal_states_merged_in_any_order() {
    let mut a = DvvSet::new();
    a.new_write(&VersionVector::new(), bytes("a"), n(1));
    let mut b = DvvSet::new();
    b.new_write(&VersionVector::new(), bytes("b"), n(2));
    let ab = DvvSet::sync(&a, &b);
    let ba = DvvSet::sync(&b, &a);
    let state = replicas(vec![
        (1, siblings(&ab)),
        (2, siblings(&ba)),
        (3, siblings(&ab)),
    ]);
    assert_eq!(convergence(&state), Ok(()));
    // A key nobody holds has converged too.
    assert_eq!(convergence(&everywhere(None, &[1, 2, 3])), Ok(()));
}

// --------------------------------------------------- 2. no lost writes

#[test]
fn no_lost_writes_fails_when_an_acknowledged_write_is_missing_and_nobody_superseded_it() {
    // "a" was acknowledged with dot (n1, 1); the final state holds only a
    // concurrent write "b" from n2 that carried no context.
    let history = [write("a", sv(1, 1)), write("b", sv(2, 1))];
    let mut set = DvvSet::new();
    set.new_write(&VersionVector::new(), bytes("b"), n(2));
    expect_err(
        no_lost_writes(&history, &everywhere(siblings(&set), &[1, 2, 3])),
        "was lost",
    );
}

#[test]
fn no_lost_writes_fails_when_the_key_has_no_data() {
    let history = [write("a", sv(1, 1))];
    expect_err(
        no_lost_writes(&history, &everywhere(None, &[1, 2, 3])),
        "is gone",
    );
}

#[test]
fn no_lost_writes_fails_when_the_superseding_write_never_reached_the_final_state() {
    // "b" saw "a" (its context covers (n1, 1)) but its own outcome is
    // unknown and it is not in the final history: "a" must still be there.
    let history = [
        write("a", sv(1, 1)),
        unknown(with_context(write("b", sv(1, 2)), ctx(&[(1, 1)])), true),
        write("c", sv(2, 1)),
    ];
    let mut set = DvvSet::new();
    set.new_write(&VersionVector::new(), bytes("c"), n(2));
    expect_err(
        no_lost_writes(&history, &everywhere(siblings(&set), &[1, 2, 3])),
        "was lost",
    );
}

#[test]
fn no_lost_writes_holds_when_a_write_whose_context_covered_it_superseded_it() {
    let history = [
        write("a", sv(1, 1)),
        with_context(write("b", sv(1, 2)), ctx(&[(1, 1)])),
    ];
    let mut set = DvvSet::new();
    let first = set.new_write(&VersionVector::new(), bytes("a"), n(1));
    assert_eq!(first, dot(1, 1));
    let second = set.new_write(&vv(&[(1, 1)]), bytes("b"), n(1));
    assert_eq!(second, dot(1, 2));
    assert_eq!(set.sibling_count(), 1);
    assert_eq!(
        no_lost_writes(&history, &everywhere(siblings(&set), &[1, 2, 3])),
        Ok(())
    );
}

#[test]
fn no_lost_writes_holds_when_a_delete_whose_context_covered_it_superseded_it() {
    let history = [
        write("a", sv(1, 1)),
        with_context(delete(sv(2, 1)), ctx(&[(1, 1)])),
    ];
    let mut set = DvvSet::new();
    set.new_write(&VersionVector::new(), bytes("a"), n(1));
    let mut other = DvvSet::new();
    other.merge_from(&set);
    other.new_delete(&vv(&[(1, 1)]), n(2));
    set.merge_from(&other);
    assert!(set.is_tombstone());
    assert_eq!(
        no_lost_writes(&history, &everywhere(siblings(&set), &[1, 2, 3])),
        Ok(())
    );
}

#[test]
fn no_lost_writes_holds_when_both_concurrent_writes_stay_siblings() {
    let history = [write("a", sv(1, 1)), write("b", sv(2, 1))];
    let mut a = DvvSet::new();
    a.new_write(&VersionVector::new(), bytes("a"), n(1));
    let mut b = DvvSet::new();
    b.new_write(&VersionVector::new(), bytes("b"), n(2));
    let both = DvvSet::sync(&a, &b);
    assert_eq!(
        no_lost_writes(&history, &everywhere(siblings(&both), &[1, 2, 3])),
        Ok(())
    );
}

#[test]
fn no_lost_writes_allows_an_unknown_outcome_write_to_be_missing() {
    let history = [unknown(write("a", sv(1, 1)), true), write("b", sv(2, 1))];
    let mut set = DvvSet::new();
    set.new_write(&VersionVector::new(), bytes("b"), n(2));
    assert_eq!(
        no_lost_writes(&history, &everywhere(siblings(&set), &[1, 2, 3])),
        Ok(())
    );
}

#[test]
fn no_lost_writes_lets_a_superseder_of_unknown_dot_excuse_any_loss() {
    // A timed-out write (no dot known) carried a context covering "a": the
    // checker cannot tell whether it is in the final history, so it lets
    // "a" go. This is by design, and it is what makes the checker weak in
    // runs with many timeouts.
    let history = [
        write("a", sv(1, 1)),
        unknown(with_context(write("b", sv(1, 2)), ctx(&[(1, 1)])), false),
        write("c", sv(2, 1)),
    ];
    let mut set = DvvSet::new();
    set.new_write(&VersionVector::new(), bytes("c"), n(2));
    assert_eq!(
        no_lost_writes(&history, &everywhere(siblings(&set), &[1, 2, 3])),
        Ok(())
    );
}

/// An acknowledged delete is a write of a tombstone, and it can be lost
/// like any write: here the delete at (n2, 1), whose context covered "a",
/// never reached any replica, and "a" is back. (This was a blind spot:
/// `no_lost_writes` looked only at writes; it now checks deletes too.)
#[test]
fn no_lost_writes_fails_when_an_acknowledged_delete_is_lost() {
    let history = [
        write("a", sv(1, 1)),
        with_context(delete(sv(2, 1)), ctx(&[(1, 1)])),
    ];
    let mut set = DvvSet::new();
    set.new_write(&VersionVector::new(), bytes("a"), n(1));
    let state = everywhere(siblings(&set), &[1, 2, 3]);
    assert!(check(&history, &state, Conflict::Siblings).is_err());
}

// ---------------------------------------------------- 3. honest reads

#[test]
fn honest_reads_fails_when_a_context_claims_a_write_the_read_did_not_show() {
    // The read's context covers "a" (n1, 1), but it shows only "b", a write
    // from n2 that never saw "a": that context, sent back, would delete "a".
    let history = [
        write("a", sv(1, 1)),
        write("b", sv(2, 1)),
        read(&["b"], ctx(&[(1, 1), (2, 1)])),
    ];
    expect_err(honest_reads(&history), "neither that value");
}

#[test]
fn honest_reads_fails_when_an_empty_answer_claims_a_write() {
    let history = [write("a", sv(1, 1)), read(&[], ctx(&[(1, 1)]))];
    expect_err(honest_reads(&history), "neither that value");
}

#[test]
fn honest_reads_fails_when_the_only_superseder_is_not_in_the_reads_context() {
    // "b" superseded "a", but the read's context covers "a" and not "b".
    let history = [
        write("a", sv(1, 1)),
        with_context(write("b", sv(2, 1)), ctx(&[(1, 1)])),
        read(&[], ctx(&[(1, 1)])),
    ];
    expect_err(honest_reads(&history), "neither that value");
}

#[test]
fn honest_reads_holds_when_the_read_shows_the_write_or_its_superseder() {
    let history = [
        write("a", sv(1, 1)),
        read(&["a"], ctx(&[(1, 1)])),
        with_context(write("b", sv(1, 2)), ctx(&[(1, 1)])),
        read(&["b"], ctx(&[(1, 2)])),
        // Both concurrent writes shown: both claimed, both there.
        write("c", sv(2, 1)),
        read(&["b", "c"], ctx(&[(1, 2), (2, 1)])),
    ];
    assert_eq!(honest_reads(&history), Ok(()));
}

#[test]
fn honest_reads_holds_when_a_delete_superseded_the_write() {
    let history = [
        write("a", sv(1, 1)),
        with_context(delete(sv(2, 1)), ctx(&[(1, 1)])),
        read(&[], ctx(&[(1, 1), (2, 1)])),
    ];
    assert_eq!(honest_reads(&history), Ok(()));
}

#[test]
fn honest_reads_allows_a_stale_read_whose_context_does_not_claim_the_write() {
    let history = [
        write("a", sv(1, 1)),
        weak(read(&[], ctx(&[]))),
        weak(read(&["x"], ctx(&[(2, 1)]))),
        write("x", sv(2, 1)),
    ];
    assert_eq!(honest_reads(&history), Ok(()));
}

// -------------------------------------------------- 4. quorum overlap

#[test]
fn quorum_overlap_fails_when_a_quorum_read_after_an_acknowledged_quorum_write_misses_it() {
    let history = [
        at(write("a", sv(1, 1)), 0, 10),
        at(read(&[], ctx(&[])), 20, 30),
    ];
    expect_err(quorum_overlap(&history), "missed write");
}

#[test]
fn quorum_overlap_fails_when_the_read_misses_only_the_newest_write_of_a_coordinator() {
    let history = [
        at(write("a", sv(1, 1)), 0, 10),
        at(write("b", sv(1, 2)), 11, 20),
        at(read(&["a"], ctx(&[(1, 1)])), 30, 40),
    ];
    expect_err(quorum_overlap(&history), "missed write");
}

#[test]
fn quorum_overlap_fails_for_a_stale_lww_read() {
    let history = [
        at(write("a", lv(100, 1)), 0, 10),
        at(read(&["old"], hlc_ctx(50, 1)), 20, 30),
    ];
    expect_err(quorum_overlap(&history), "missed write");
}

#[test]
fn quorum_overlap_holds_when_the_read_covers_the_write_or_a_later_one() {
    let history = [
        at(write("a", sv(1, 1)), 0, 10),
        at(read(&["a"], ctx(&[(1, 1)])), 20, 30),
        at(read(&["b"], ctx(&[(1, 2)])), 20, 30),
    ];
    assert_eq!(quorum_overlap(&history), Ok(()));
    let lww = [
        at(write("l", lv(100, 1)), 0, 10),
        at(read(&["l"], hlc_ctx(100, 1)), 20, 30),
        at(read(&["m"], hlc_ctx(200, 3)), 20, 30),
    ];
    assert_eq!(quorum_overlap(&lww), Ok(()));
}

/// `quorum_overlap` in lww mode: the read returns the write that lost the
/// timestamp tie, after the winner was acknowledged at quorum.
#[test]
fn quorum_overlap_fails_when_an_lww_read_returns_the_tie_losing_write() {
    let history = [
        at(weak(write("old", lv(100, 1))), 0, 5),
        at(write("new", lv(100, 2)), 0, 10),
        at(read(&["old"], hlc_ctx(100, 1)), 20, 30),
    ];
    expect_err(quorum_overlap(&history), "missed write");
}

#[test]
fn quorum_overlap_allows_a_stale_read_at_one() {
    let history = [
        at(write("a", sv(1, 1)), 0, 10),
        weak(at(read(&[], ctx(&[])), 20, 30)),
    ];
    assert_eq!(quorum_overlap(&history), Ok(()));
}

#[test]
fn quorum_overlap_allows_a_stale_read_after_a_write_at_one() {
    let history = [
        weak(at(write("a", sv(1, 1)), 0, 10)),
        at(read(&[], ctx(&[])), 20, 30),
    ];
    assert_eq!(quorum_overlap(&history), Ok(()));
}

#[test]
fn quorum_overlap_allows_a_read_concurrent_with_the_write() {
    // Invoked before (or exactly when) the write was acknowledged.
    let history = [
        at(write("a", sv(1, 1)), 0, 10),
        at(read(&[], ctx(&[])), 5, 30),
        at(read(&[], ctx(&[])), 10, 30),
    ];
    assert_eq!(quorum_overlap(&history), Ok(()));
}

#[test]
fn quorum_overlap_allows_missing_an_unknown_outcome_write() {
    let history = [
        unknown(at(write("a", sv(1, 1)), 0, 10), true),
        at(read(&[], ctx(&[])), 20, 30),
    ];
    assert_eq!(quorum_overlap(&history), Ok(()));
}

#[test]
fn quorum_overlap_looks_only_at_the_same_key() {
    let mut other = at(read(&[], ctx(&[])), 20, 30);
    other.key = "other".into();
    let history = [at(write("a", sv(1, 1)), 0, 10), other];
    assert_eq!(quorum_overlap(&history), Ok(()));
}

// ---------------------------------------------------------- 5. sessions

#[test]
fn sessions_fails_when_a_read_with_a_token_returns_older_data() {
    let history = [session(weak(read(&["old"], ctx(&[(1, 2)]))), sv(1, 3))];
    expect_err(sessions(&history), "returned older data");
}

#[test]
fn sessions_fails_when_an_lww_read_with_a_token_returns_an_older_timestamp() {
    let history = [session(weak(read(&["old"], hlc_ctx(99, 3))), lv(100, 2))];
    expect_err(sessions(&history), "returned older data");
}

#[test]
fn sessions_holds_when_the_read_sees_the_write_or_a_later_one_at_any_level() {
    let history = [
        session(weak(read(&["mine"], ctx(&[(1, 3)]))), sv(1, 3)),
        session(weak(read(&["later"], ctx(&[(1, 5), (2, 1)]))), sv(1, 3)),
        session(read(&["mine"], ctx(&[(1, 3)])), sv(1, 3)),
        session(weak(read(&["mine"], hlc_ctx(100, 2))), lv(100, 2)),
        session(weak(read(&["later"], hlc_ctx(101, 1))), lv(100, 2)),
    ];
    assert_eq!(sessions(&history), Ok(()));
}

#[test]
fn sessions_ignores_reads_without_a_token_and_refused_reads() {
    let history = [
        weak(read(&[], ctx(&[]))),
        failed(session(read(&[], ctx(&[])), sv(1, 3))),
    ];
    assert_eq!(sessions(&history), Ok(()));
}

/// Two coordinators can issue the same timestamp; the write by the higher
/// id wins. A read that returns the losing (older) write after the client
/// wrote the winning one must fail. (This was a blind spot while the lww
/// context carried the timestamp only; it now carries the coordinator id
/// too and the checkers compare (timestamp, node).)
#[test]
fn sessions_fails_when_an_lww_read_returns_the_tie_losing_write() {
    let history = [
        weak(write("old", lv(100, 1))),
        weak(write("mine", lv(100, 2))),
        // Client 1's own write was "mine" at (100, n2); the read returns
        // "old", written at (100, n1), which "mine" beats.
        session(weak(read(&["old"], hlc_ctx(100, 1))), lv(100, 2)),
    ];
    expect_err(sessions(&history), "returned older data");
}

// --------------------------------------------------- 6. no resurrection

/// The final state a coordinator that ignored the client's context builds:
/// "a" at (n1, 1), then "b" at (n2, 1) written as if concurrent.
fn a_and_b_siblings() -> DvvSet<Vec<u8>> {
    let mut a = DvvSet::new();
    a.new_write(&VersionVector::new(), bytes("a"), n(1));
    let mut b = DvvSet::new();
    b.new_write(&VersionVector::new(), bytes("b"), n(2));
    DvvSet::sync(&a, &b)
}

#[test]
fn no_resurrection_fails_when_a_superseded_sibling_survives_its_superseder() {
    // "b" carried a context covering "a" and made it into the final history,
    // yet "a" is still a sibling.
    let history = [
        write("a", sv(1, 1)),
        with_context(write("b", sv(2, 1)), ctx(&[(1, 1)])),
    ];
    let state = everywhere(siblings(&a_and_b_siblings()), &[1, 2, 3]);
    expect_err(no_resurrection(&history, &state), "survives");
}

#[test]
fn no_resurrection_fails_when_a_deleted_value_comes_back() {
    let history = [
        write("a", sv(1, 1)),
        with_context(delete(sv(2, 1)), ctx(&[(1, 1)])),
    ];
    let mut a = DvvSet::new();
    a.new_write(&VersionVector::new(), bytes("a"), n(1));
    let mut tombstone = DvvSet::new();
    tombstone.new_delete(&VersionVector::new(), n(2));
    let state = everywhere(siblings(&DvvSet::sync(&a, &tombstone)), &[1, 2, 3]);
    expect_err(no_resurrection(&history, &state), "survives");
}

#[test]
fn no_resurrection_fails_even_when_the_superseder_timed_out_but_was_applied() {
    // An unknown outcome with a known dot that the final context covers was
    // applied: what it superseded must be gone.
    let history = [
        write("a", sv(1, 1)),
        unknown(with_context(write("b", sv(2, 1)), ctx(&[(1, 1)])), true),
    ];
    let state = everywhere(siblings(&a_and_b_siblings()), &[1, 2, 3]);
    expect_err(no_resurrection(&history, &state), "survives");
}

#[test]
fn no_resurrection_holds_for_concurrent_writes() {
    let history = [write("a", sv(1, 1)), write("b", sv(2, 1))];
    let state = everywhere(siblings(&a_and_b_siblings()), &[1, 2, 3]);
    assert_eq!(no_resurrection(&history, &state), Ok(()));
}

#[test]
fn no_resurrection_holds_when_the_superseder_never_reached_the_final_state() {
    // "b" saw "a" but timed out and was lost: "a" survives legitimately.
    let history = [
        write("a", sv(1, 1)),
        unknown(with_context(write("b", sv(2, 1)), ctx(&[(1, 1)])), true),
    ];
    let mut a = DvvSet::new();
    a.new_write(&VersionVector::new(), bytes("a"), n(1));
    let state = everywhere(siblings(&a), &[1, 2, 3]);
    assert_eq!(no_resurrection(&history, &state), Ok(()));
}

#[test]
fn no_resurrection_holds_when_the_superseder_removed_it() {
    let history = [
        write("a", sv(1, 1)),
        with_context(write("b", sv(1, 2)), ctx(&[(1, 1)])),
        write("c", sv(2, 1)),
    ];
    let mut set = DvvSet::new();
    set.new_write(&VersionVector::new(), bytes("a"), n(1));
    set.new_write(&vv(&[(1, 1)]), bytes("b"), n(1));
    let mut c = DvvSet::new();
    c.new_write(&VersionVector::new(), bytes("c"), n(2));
    set.merge_from(&c);
    assert_eq!(set.sibling_count(), 2);
    assert_eq!(
        no_resurrection(&history, &everywhere(siblings(&set), &[1, 2, 3])),
        Ok(())
    );
}

// ------------------------------------------------------- 7. lww winner

#[test]
fn lww_winner_fails_when_the_register_is_older_than_an_acknowledged_write() {
    let history = [write("a", lv(100, 1)), write("b", lv(200, 2))];
    let state = everywhere(register(Some("a"), 100, 1), &[1, 2, 3]);
    expect_err(lww_winner(&history, &state), "older than acknowledged");
}

#[test]
fn lww_winner_fails_when_the_register_loses_a_tie_it_should_win() {
    // Same timestamp, higher node id wins.
    let history = [write("a", lv(100, 1)), write("b", lv(100, 2))];
    let state = everywhere(register(Some("a"), 100, 1), &[1, 2, 3]);
    expect_err(lww_winner(&history, &state), "older than acknowledged");
}

#[test]
fn lww_winner_fails_when_the_register_holds_the_wrong_value_at_a_writes_version() {
    let history = [write("a", lv(100, 1)), write("b", lv(200, 2))];
    let state = everywhere(register(Some("a"), 200, 2), &[1, 2, 3]);
    expect_err(lww_winner(&history, &state), "holds");
}

#[test]
fn lww_winner_fails_when_a_delete_is_shown_as_a_value() {
    let history = [write("a", lv(100, 1)), delete(lv(200, 2))];
    let state = everywhere(register(Some("a"), 200, 2), &[1, 2, 3]);
    expect_err(lww_winner(&history, &state), "holds");
}

#[test]
fn lww_winner_fails_when_an_unknown_outcome_write_is_there_with_the_wrong_value() {
    let history = [
        write("a", lv(100, 1)),
        unknown(write("b", lv(200, 2)), true),
    ];
    let state = everywhere(register(Some("zzz"), 200, 2), &[1, 2, 3]);
    expect_err(lww_winner(&history, &state), "holds");
}

#[test]
fn lww_winner_holds_for_the_newest_write_or_a_newer_unknown_one() {
    let history = [write("a", lv(100, 1)), write("b", lv(200, 2))];
    let state = everywhere(register(Some("b"), 200, 2), &[1, 2, 3]);
    assert_eq!(lww_winner(&history, &state), Ok(()));

    // A timed-out write may win, and a timed-out write may be missing.
    let history = [
        write("a", lv(100, 1)),
        unknown(write("c", lv(300, 3)), true),
        unknown(write("d", lv(400, 1)), true),
    ];
    let state = everywhere(register(Some("c"), 300, 3), &[1, 2, 3]);
    assert_eq!(lww_winner(&history, &state), Ok(()));
}

#[test]
fn lww_winner_holds_for_a_delete_that_won() {
    let history = [write("a", lv(100, 1)), delete(lv(200, 2))];
    let state = everywhere(register(None, 200, 2), &[1, 2, 3]);
    assert_eq!(lww_winner(&history, &state), Ok(()));
}

/// A register value no write made (a ghost) must fail `lww_winner`. (This
/// was a blind spot; the checker now asks that the final version is some
/// write's, or, for timed-out writes whose version is unknown, that the
/// value is one a write that may have been applied wrote.)
#[test]
fn lww_winner_fails_when_the_register_holds_a_value_nobody_wrote() {
    let history = [write("a", lv(100, 1))];
    let state = everywhere(register(Some("ghost"), 500, 3), &[1, 2, 3]);
    expect_err(lww_winner(&history, &state), "ghost");
}

// ----------------------------------------------------- check, counting

#[test]
fn check_runs_the_siblings_checkers_in_siblings_mode() {
    let mut set = DvvSet::new();
    set.new_write(&VersionVector::new(), bytes("b"), n(2));
    let state = everywhere(siblings(&set), &[1, 2, 3]);
    let history = [write("a", sv(1, 1)), write("b", sv(2, 1))];
    assert!(check(&history, &state, Conflict::Siblings)
        .unwrap_err()
        .contains("was lost"));
    // The lww checker ignores a siblings object, so lww mode passes it.
    assert!(check(&history, &state, Conflict::Lww).is_ok());
}

#[test]
fn check_runs_convergence_and_overlap_in_both_modes() {
    let diverged = replicas(vec![
        (1, register(Some("a"), 100, 1)),
        (2, register(Some("b"), 200, 2)),
    ]);
    for conflict in [Conflict::Siblings, Conflict::Lww] {
        assert!(check(&[], &diverged, conflict)
            .unwrap_err()
            .contains("differ"));
    }
    let stale = [
        at(write("a", lv(100, 1)), 0, 10),
        at(read(&[], hlc_ctx(0, 0)), 20, 30),
    ];
    let state = everywhere(register(Some("a"), 100, 1), &[1, 2, 3]);
    assert!(check(&stale, &state, Conflict::Lww)
        .unwrap_err()
        .contains("missed write"));
}

#[test]
fn check_reports_what_it_checked() {
    let mut set = DvvSet::new();
    set.new_write(&VersionVector::new(), bytes("a"), n(1));
    let history = [
        write("a", sv(1, 1)),
        at(read(&["a"], ctx(&[(1, 1)])), 20, 30),
        failed(write("x", sv(1, 9))),
    ];
    let state = everywhere(siblings(&set), &[1, 2, 3]);
    assert_eq!(
        check(&history, &state, Conflict::Siblings),
        Ok("ap ok (1 acknowledged writes, 1 reads, 1 keys converged)".into())
    );
}

#[test]
fn count_outcomes_counts_ok_failed_and_unknown() {
    let history = [
        write("a", sv(1, 1)),
        read(&["a"], ctx(&[(1, 1)])),
        failed(write("b", sv(1, 2))),
        unknown(write("c", sv(1, 3)), false),
        unknown(delete(sv(1, 4)), true),
    ];
    assert_eq!(count_outcomes(&history), (2, 1, 2));
}
