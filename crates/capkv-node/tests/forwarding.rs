//! Forwarding between nodes, driven by hand (no simulator).

// Test set-up helpers panic on failure like the tests themselves.
#![allow(clippy::unwrap_used)]

use capkv_core::{LogIndex, NodeId};
use capkv_node::{
    Applied, BucketSpec, Command, Node, NodeConfig, PeerMessage, ReadConsistency, Request,
    RequestError, Response,
};
use capkv_storage::{MemStorage, Storage};

/// A one-node cluster that leads itself after enough ticks.
fn single_leader() -> (Node, MemStorage) {
    let storage = MemStorage::new();
    let mut node = Node::restore(NodeConfig::new(NodeId(1), vec![NodeId(1)], 1), &storage).unwrap();
    for _ in 0..40 {
        node.tick(0);
    }
    (node, storage)
}

/// What a node's turns produced: answers and messages.
type Outputs = (Vec<(u64, Response)>, Vec<(NodeId, PeerMessage)>);

fn run(node: &mut Node, storage: &mut MemStorage) -> Outputs {
    let mut responses = Vec::new();
    let mut messages = Vec::new();
    for _ in 0..10 {
        if !node.has_ready() {
            break;
        }
        let ready = node.ready();
        storage.write(ready.batch).unwrap();
        storage.sync().unwrap();
        responses.extend(ready.responses);
        messages.extend(ready.messages);
    }
    (responses, messages)
}

/// Only voters may forward: a stranger's Forward is dropped unanswered.
#[test]
fn a_forward_from_a_stranger_is_ignored() {
    let (mut node, mut storage) = single_leader();
    run(&mut node, &mut storage);
    node.handle_request(
        1,
        Request::Write(Command::CreateBucket {
            name: "b".into(),
            spec: BucketSpec::cp(1),
        }),
    );
    run(&mut node, &mut storage);
    let last_before = node.raft().log().last_index();
    let forward = PeerMessage::Forward {
        forward_id: 7,
        request: Box::new(Request::Write(Command::Put {
            bucket: "b".into(),
            key: "k".into(),
            value: b"v".to_vec(),
        })),
    };
    // A stranger's forward is ignored: node 2 is not a voter here.
    node.handle_peer_message(NodeId(2), forward.clone());
    run(&mut node, &mut storage);
    assert_eq!(node.raft().log().last_index(), last_before);
}

/// Three nodes, with node 1 elected by ticking it alone.
struct Three {
    nodes: Vec<Node>,
    storages: Vec<MemStorage>,
}

impl Three {
    fn elect() -> (Three, NodeId) {
        let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
        let storages: Vec<MemStorage> = (0..3).map(|_| MemStorage::new()).collect();
        let nodes: Vec<Node> = voters
            .iter()
            .zip(&storages)
            .map(|(id, storage)| {
                Node::restore(NodeConfig::new(*id, voters.clone(), 9), storage).unwrap()
            })
            .collect();
        let mut three = Three { nodes, storages };
        for _ in 0..200 {
            three.nodes[0].tick(0);
            three.deliver_all();
            if let Some(leader) = three.nodes[0].raft().leader() {
                return (three, leader);
            }
        }
        panic!("no leader within 200 ticks");
    }

    fn index(id: NodeId) -> usize {
        (id.0 - 1) as usize
    }

    /// The first node that is not `leader`.
    fn follower_of(leader: NodeId) -> NodeId {
        [NodeId(1), NodeId(2), NodeId(3)]
            .into_iter()
            .find(|id| *id != leader)
            .unwrap()
    }

    /// Runs every node's turns and delivers their messages, one at a time
    /// in the order sent (so each link keeps order), until none are left.
    /// Returns the client answers each node gave, by node index.
    fn deliver_all(&mut self) -> Vec<Vec<(u64, Response)>> {
        let mut answers = vec![Vec::new(); 3];
        let mut queue = std::collections::VecDeque::new();
        for (index, answered) in answers.iter_mut().enumerate() {
            let (responses, messages) = run(&mut self.nodes[index], &mut self.storages[index]);
            answered.extend(responses);
            let from = NodeId(index as u64 + 1);
            queue.extend(messages.into_iter().map(|(to, m)| (from, to, m)));
        }
        for _ in 0..10_000 {
            let Some((from, to, message)) = queue.pop_front() else {
                return answers;
            };
            let index = Three::index(to);
            self.nodes[index].handle_peer_message(from, message);
            let (responses, messages) = run(&mut self.nodes[index], &mut self.storages[index]);
            answers[index].extend(responses);
            queue.extend(messages.into_iter().map(|(next, m)| (to, next, m)));
        }
        panic!("messages still flowing after 10,000 deliveries");
    }
}

/// The simulator found this (seeds 4, 10, 14): a duplicated Forward was
/// proposed twice. A leader that gets the same Forward twice from a voter
/// appends one entry.
#[test]
fn a_leader_appends_one_entry_for_a_forward_delivered_twice() {
    let (mut three, leader) = Three::elect();
    let leader_index = Three::index(leader);
    let from = Three::follower_of(leader);
    let forward = PeerMessage::Forward {
        forward_id: 42,
        request: Box::new(Request::Write(Command::CreateBucket {
            name: "b".into(),
            spec: BucketSpec::cp(3),
        })),
    };
    let nodes = &mut three.nodes;
    let before = nodes[leader_index].raft().log().last_index();
    nodes[leader_index].handle_peer_message(from, forward.clone());
    nodes[leader_index].handle_peer_message(from, forward);
    run(&mut nodes[leader_index], &mut three.storages[leader_index]);
    assert_eq!(
        nodes[leader_index].raft().log().last_index().0,
        before.0 + 1
    );
}

/// Commit news rides on appends and heartbeats, so without more a follower
/// that forwarded a write could answer before it applied it. The leader
/// sends the forwarder the commit index just ahead of the answer: with no
/// tick in between, a stale read at the forwarder right after its answer
/// sees the write, and so does a write to the bucket it just created.
#[test]
fn a_follower_has_applied_the_write_it_forwarded_when_it_answers() {
    let (mut three, leader) = Three::elect();
    let follower = Three::follower_of(leader);
    let at = Three::index(follower);
    let create = Request::Write(Command::CreateBucket {
        name: "b".into(),
        spec: BucketSpec::cp(3),
    });
    let put = Request::Write(Command::Put {
        bucket: "b".into(),
        key: "k".into(),
        value: b"v".to_vec(),
    });
    let stale_read = Request::Read {
        bucket: "b".into(),
        key: "k".into(),
        consistency: ReadConsistency::Stale,
    };
    for (id, request) in [(1, create), (2, put)] {
        three.nodes[at].handle_request(id, request);
        let answers = three.deliver_all();
        assert!(
            matches!(answers[at].as_slice(), [(answered, Response::Applied(_))] if *answered == id),
            "request {id} at {follower}: {:?}",
            answers[at]
        );
    }
    three.nodes[at].handle_request(3, stale_read);
    let (answers, _) = run(&mut three.nodes[at], &mut three.storages[at]);
    match answers.as_slice() {
        [(3, Response::Value(Some(versioned)))] => assert_eq!(versioned.value, b"v".to_vec()),
        other => panic!("stale read at {follower} after its forwarded write: {other:?}"),
    }
}

/// The commit news ahead of a forwarded answer is not enough on its own:
/// it is not sent to a follower in probe or with a full window, nor by a
/// leader that lost its role before applying, and a broken connection can
/// lose it while the answer gets through (the simulator's stale-read
/// checker found all of these). So the forwarder holds a write's answer
/// until it has applied the write's index itself.
#[test]
fn a_follower_holds_a_forwarded_answer_until_it_has_applied_the_write() {
    let (mut three, leader) = Three::elect();
    let follower = Three::follower_of(leader);
    let at = Three::index(follower);
    three.nodes[at].handle_request(
        1,
        Request::Write(Command::CreateBucket {
            name: "b".into(),
            spec: BucketSpec::cp(3),
        }),
    );
    three.deliver_all();
    three.nodes[at].handle_request(
        2,
        Request::Write(Command::Put {
            bucket: "b".into(),
            key: "k".into(),
            value: b"v".to_vec(),
        }),
    );
    let (_, messages) = run(&mut three.nodes[at], &mut three.storages[at]);
    let (forward_id, forward) = messages
        .into_iter()
        .find_map(|(_, message)| match message {
            PeerMessage::Forward { forward_id, .. } => Some((forward_id, message)),
            _ => None,
        })
        .unwrap();
    // The put's entry comes next; an answer naming it arrives before the
    // follower has it, as if its commit news were lost.
    let put_index = LogIndex(three.nodes[at].applied_index().0 + 1);
    let early = PeerMessage::Forwarded {
        forward_id,
        response: Response::Applied(Applied::Written {
            version: put_index.0,
        }),
        applied_at: put_index,
    };
    three.nodes[at].handle_peer_message(leader, early);
    let (answers, _) = run(&mut three.nodes[at], &mut three.storages[at]);
    assert!(answers.is_empty(), "answered before applying: {answers:?}");
    let leader_index = Three::index(leader);
    three.nodes[leader_index].handle_peer_message(follower, forward);
    let answers = three.deliver_all();
    assert_eq!(three.nodes[at].applied_index(), put_index);
    assert!(
        matches!(answers[at].as_slice(), [(2, Response::Applied(_))]),
        "the held answer once applied: {:?}",
        answers[at]
    );
}

/// The first forward id a node sends: it forwards one write to the leader
/// it is told about.
fn first_forward_id(storage: &mut MemStorage) -> u64 {
    let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
    let mut node = Node::restore(NodeConfig::new(NodeId(2), voters, 3), storage).unwrap();
    run(&mut node, storage);
    // Node 2 learns of leader 1 from a heartbeat-like append at term 1.
    let term = capkv_core::Term(node.raft().term().0 + 1);
    node.handle_peer_message(
        NodeId(1),
        PeerMessage::Raft(capkv_raft::Message {
            group: capkv_core::GroupId(0),
            from: NodeId(1),
            to: NodeId(2),
            term,
            body: capkv_raft::MessageBody::Heartbeat {
                commit: capkv_core::LogIndex(0),
                read_round: 0,
            },
        }),
    );
    node.handle_request(
        7,
        Request::Write(Command::CreateBucket {
            name: "b".into(),
            spec: BucketSpec::cp(3),
        }),
    );
    let (_, messages) = run(&mut node, storage);
    messages
        .into_iter()
        .find_map(|(_, message)| match message {
            PeerMessage::Forward { forward_id, .. } => Some(forward_id),
            _ => None,
        })
        .expect("the follower forwards the write")
}

/// A restarted follower's forward ids are above its earlier life's, so the
/// leader's duplicate filter does not swallow its new requests (it did:
/// ids restarted at 1 and were refused as replays until they caught up).
#[test]
fn forward_ids_grow_across_restarts() {
    let mut storage = MemStorage::new();
    let first = first_forward_id(&mut storage);
    let second = first_forward_id(&mut storage);
    assert!(second > first, "{second} after {first}");
}

/// A leader cut off from every follower steps down (CheckQuorum) knowing no
/// leader. The write it proposed and could not commit is answered then, as
/// of unknown outcome, and not only at the client's deadline: the minority
/// side of a partition refuses quickly.
#[test]
fn a_leader_cut_off_answers_its_uncommitted_write_when_it_steps_down() {
    let (mut three, leader) = Three::elect();
    let at = Three::index(leader);
    let create = Request::Write(Command::CreateBucket {
        name: "b".into(),
        spec: BucketSpec::cp(3),
    });
    three.nodes[at].handle_request(1, create);
    let answers = three.deliver_all();
    assert!(matches!(
        answers[at].as_slice(),
        [(1, Response::Applied(_))]
    ));
    // From here on the leader's messages are lost.
    three.nodes[at].handle_request(
        2,
        Request::Write(Command::Put {
            bucket: "b".into(),
            key: "k".into(),
            value: b"v".to_vec(),
        }),
    );
    let mut answers = Vec::new();
    for ticks in 0..200 {
        let (answered, _lost) = run(&mut three.nodes[at], &mut three.storages[at]);
        answers.extend(answered);
        if !answers.is_empty() {
            assert!(ticks > 0, "answered before it could have lost its role");
            break;
        }
        three.nodes[at].tick(0);
    }
    assert_eq!(
        answers,
        vec![(2, Response::Failed(RequestError::LeaderLost))],
        "the write's answer after the leader lost its majority"
    );
    assert_ne!(three.nodes[at].raft().role(), capkv_raft::Role::Leader);
    assert_eq!(three.nodes[at].raft().leader(), None);
}
