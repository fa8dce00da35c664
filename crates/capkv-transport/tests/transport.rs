//! The transport over real sockets on 127.0.0.1. Every test is bounded by
//! [`TEST_TIMEOUT`], so a lost message fails the test instead of hanging it.

// A failed unwrap here is a failed test; clippy's allow-unwrap-in-tests does
// not reach the helpers outside `#[test]` functions.
#![allow(clippy::unwrap_used)]

use capkv_core::NodeId;
use capkv_transport::frame::encode_frame;
use capkv_transport::handshake::{Hello, HANDSHAKE_ACCEPTED, HELLO_BYTES_MAX, NONCE_BYTES};
use capkv_transport::{LinkRule, Transport, TransportConfig, TransportError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout, Instant};

const TEST_TIMEOUT: Duration = Duration::from_secs(30);
const CLUSTER_ID: &str = "test-cluster";
const SECRET: &str = "test-secret";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum TestMessage {
    Ping { sequence: u64 },
    Text(String),
    Entries(Vec<u64>),
}

/// Runs a test body under the test timeout.
async fn bounded<F: Future<Output = ()>>(body: F) {
    timeout(TEST_TIMEOUT, body)
        .await
        .expect("test exceeded its time bound");
}

/// One running transport with its inbound channel and shutdown switch.
struct TestNode {
    transport: Transport<TestMessage>,
    inbound: mpsc::Receiver<(NodeId, TestMessage)>,
    shutdown: watch::Sender<bool>,
}

impl TestNode {
    async fn start(config: TransportConfig) -> TestNode {
        let (inbound_sender, inbound) = mpsc::channel(1024);
        let (shutdown, shutdown_receiver) = watch::channel(false);
        let transport = Transport::start(config, inbound_sender, shutdown_receiver)
            .await
            .unwrap();
        TestNode {
            transport,
            inbound,
            shutdown,
        }
    }

    /// Waits for the next `count` messages.
    async fn receive(&mut self, count: usize) -> Vec<(NodeId, TestMessage)> {
        let mut received = Vec::with_capacity(count);
        while received.len() < count {
            received.push(self.inbound.recv().await.expect("inbound channel closed"));
        }
        received
    }

    /// Asserts that nothing arrives for `quiet`.
    async fn assert_nothing_arrives(&mut self, quiet: Duration) {
        if let Ok(message) = timeout(quiet, self.inbound.recv()).await {
            panic!("expected silence, got {message:?}");
        }
    }
}

/// Configurations for a full mesh of `count` nodes with ids 1..=count.
fn mesh(count: u64) -> Vec<TransportConfig> {
    let addresses: BTreeMap<NodeId, SocketAddr> = (1..=count)
        .map(|id| (NodeId(id), capkv_testkit::loopback_address()))
        .collect();
    addresses
        .iter()
        .map(|(node_id, listen)| {
            let mut peers = addresses.clone();
            peers.remove(node_id);
            let mut config = TransportConfig::new(*node_id, *listen, peers, CLUSTER_ID, SECRET);
            config.reconnect_backoff_min_ms = 10;
            config.reconnect_backoff_max_ms = 100;
            config
        })
        .collect()
}

async fn start_mesh(count: u64) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for config in mesh(count) {
        nodes.push(TestNode::start(config).await);
    }
    nodes
}

/// Polls `condition` every 10 ms until it holds.
async fn eventually(mut condition: impl FnMut() -> bool) {
    while !condition() {
        sleep(Duration::from_millis(10)).await;
    }
}

fn ping(sequence: u64) -> TestMessage {
    TestMessage::Ping { sequence }
}

#[tokio::test]
async fn three_nodes_exchange_messages_in_order_on_every_link() {
    bounded(async {
        let mut nodes = start_mesh(3).await;
        let per_link = 200u64;
        for node in &nodes {
            for peer in 1..=3 {
                if NodeId(peer) == node.transport.node_id() {
                    continue;
                }
                for sequence in 0..per_link {
                    node.transport.send(NodeId(peer), ping(sequence)).unwrap();
                }
                let text = TestMessage::Text(format!("from {}", node.transport.node_id()));
                node.transport.send(NodeId(peer), text).unwrap();
                node.transport
                    .send(NodeId(peer), TestMessage::Entries(vec![1, 2, 3]))
                    .unwrap();
            }
        }
        for node in &mut nodes {
            let received = node.receive(2 * (per_link as usize + 2)).await;
            let mut by_sender: BTreeMap<NodeId, Vec<TestMessage>> = BTreeMap::new();
            for (from, message) in received {
                by_sender.entry(from).or_default().push(message);
            }
            assert_eq!(by_sender.len(), 2);
            for (from, messages) in by_sender {
                let mut expected: Vec<TestMessage> = (0..per_link).map(ping).collect();
                expected.push(TestMessage::Text(format!("from {from}")));
                expected.push(TestMessage::Entries(vec![1, 2, 3]));
                assert_eq!(
                    messages,
                    expected,
                    "link {from} -> {}",
                    node.transport.node_id()
                );
            }
        }
        let metrics = nodes[0].transport.metrics();
        let to_2 = &metrics.peers[&NodeId(2)];
        assert_eq!(to_2.messages_sent, per_link + 2);
        assert_eq!(to_2.frames_received, per_link + 2);
        assert!(to_2.connected && to_2.bytes_sent > 0);
        serde_json::to_string(&metrics).unwrap();
    })
    .await;
}

#[tokio::test]
async fn sending_to_an_unknown_peer_is_an_error() {
    bounded(async {
        let nodes = start_mesh(2).await;
        let result = nodes[0].transport.send(NodeId(9), ping(0));
        assert!(matches!(
            result,
            Err(TransportError::UnknownPeer(NodeId(9)))
        ));
    })
    .await;
}

/// Starts node 1 with the real secret and node 2 with `mutate` applied to
/// its configuration; checks that node 2 gets nothing through.
async fn assert_refused(mutate: impl FnOnce(&mut TransportConfig), charged_to_peer: bool) {
    let mut configs = mesh(2);
    mutate(&mut configs[1]);
    let mut honest = TestNode::start(configs.remove(0)).await;
    let mut intruder = TestNode::start(configs.remove(0)).await;
    for sequence in 0..10 {
        intruder.transport.send(NodeId(1), ping(sequence)).unwrap();
        honest.transport.send(NodeId(2), ping(sequence)).unwrap();
    }
    eventually(|| honest.transport.metrics().handshake_failures >= 2).await;
    eventually(|| intruder.transport.metrics().handshake_failures >= 2).await;
    honest
        .assert_nothing_arrives(Duration::from_millis(200))
        .await;
    intruder
        .assert_nothing_arrives(Duration::from_millis(10))
        .await;
    let seen_by_honest = &honest.transport.metrics().peers[&NodeId(2)];
    assert!(!seen_by_honest.connected && !seen_by_honest.inbound_connected);
    assert_eq!(seen_by_honest.frames_received, 0);
    assert!(seen_by_honest.connect_failures >= 1);
    assert_eq!(seen_by_honest.handshake_failures >= 1, charged_to_peer);
}

#[tokio::test]
async fn a_node_with_the_wrong_secret_delivers_nothing() {
    bounded(assert_refused(
        |config| config.cluster_secret = "guessed".into(),
        true,
    ))
    .await;
}

#[tokio::test]
async fn a_node_of_another_cluster_delivers_nothing() {
    bounded(assert_refused(
        |config| config.cluster_id = "other-cluster".into(),
        false,
    ))
    .await;
}

/// Opens a raw connection, reads the nonce, sends `junk`, and expects the
/// transport to close the connection.
async fn assert_junk_is_dropped(address: SocketAddr, junk: &[u8]) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut nonce = [0; NONCE_BYTES];
    stream.read_exact(&mut nonce).await.unwrap();
    // The peer may close before reading everything; a reset is fine too.
    let _ = stream.write_all(junk).await;
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "no acceptance for junk: {rest:?}");
}

#[tokio::test]
async fn garbage_before_the_handshake_closes_only_that_connection() {
    bounded(async {
        let mut nodes = start_mesh(2).await;
        let address = nodes[0].transport.local_addr();
        assert_junk_is_dropped(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_junk_is_dropped(address, &u32::MAX.to_be_bytes()).await;
        assert_junk_is_dropped(address, &[0, 0, 0, 0]).await;
        let oversize_hello = (HELLO_BYTES_MAX as u32 + 1).to_be_bytes();
        assert_junk_is_dropped(address, &oversize_hello).await;
        // A well-framed hello that does not decode.
        let mut frame = Vec::new();
        encode_frame(&[0xFF; 40], &mut frame, HELLO_BYTES_MAX).unwrap();
        assert_junk_is_dropped(address, &frame).await;
        // A connection that says nothing times out and is closed too; it is
        // not waited for here, only left open while real traffic flows.
        let _silent = TcpStream::connect(address).await.unwrap();
        assert!(nodes[0].transport.metrics().handshake_failures >= 5);

        nodes[1].transport.send(NodeId(1), ping(1)).unwrap();
        assert_eq!(nodes[0].receive(1).await, vec![(NodeId(2), ping(1))]);
    })
    .await;
}

/// Performs a correct handshake as `node_id` over a raw socket.
async fn authenticated_raw_connection(address: SocketAddr, node_id: NodeId) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let mut nonce = [0; NONCE_BYTES];
    stream.read_exact(&mut nonce).await.unwrap();
    let hello = Hello::new(SECRET, &nonce, CLUSTER_ID, node_id);
    let mut frame = Vec::new();
    encode_frame(
        &postcard::to_allocvec(&hello).unwrap(),
        &mut frame,
        HELLO_BYTES_MAX,
    )
    .unwrap();
    stream.write_all(&frame).await.unwrap();
    let mut answer = [0; 1];
    stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], HANDSHAKE_ACCEPTED);
    stream
}

#[tokio::test]
async fn a_bad_frame_from_an_authenticated_peer_closes_only_that_connection() {
    bounded(async {
        // Node 3 is configured but never started, so the raw socket can act
        // as node 3 without a real node 3 superseding its connection.
        let mut configs = mesh(3);
        configs.pop();
        let mut nodes = start_mesh_from(configs).await;
        let address = nodes[0].transport.local_addr();

        let mut stream = authenticated_raw_connection(address, NodeId(3)).await;
        let mut frames = Vec::new();
        encode_frame(&postcard::to_allocvec(&ping(5)).unwrap(), &mut frames, 64).unwrap();
        // A variant index no TestMessage has.
        encode_frame(&[200, 1], &mut frames, 64).unwrap();
        stream.write_all(&frames).await.unwrap();
        assert_eq!(nodes[0].receive(1).await, vec![(NodeId(3), ping(5))]);
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;

        let mut stream = authenticated_raw_connection(address, NodeId(3)).await;
        stream
            .write_all(&(32 * 1024 * 1024u32).to_be_bytes())
            .await
            .unwrap();
        let _ = stream.read_to_end(&mut rest).await;

        let mut stream = authenticated_raw_connection(address, NodeId(3)).await;
        stream.write_all(&[0, 0, 0, 0]).await.unwrap();
        let _ = stream.read_to_end(&mut rest).await;

        let seen = &nodes[0].transport.metrics().peers[&NodeId(3)];
        assert_eq!(seen.decode_failures, 3);
        assert_eq!(seen.frames_received, 1);

        nodes[1].transport.send(NodeId(1), ping(6)).unwrap();
        assert_eq!(nodes[0].receive(1).await, vec![(NodeId(2), ping(6))]);
    })
    .await;
}

#[tokio::test]
async fn a_down_peer_queues_to_the_bound_then_receives_after_it_starts() {
    bounded(async {
        let mut configs = mesh(2);
        let queue_bound = 8u64;
        configs[0].peer_queue_messages_max = queue_bound as usize;
        let later_config = configs.pop().unwrap();
        let node_1 = TestNode::start(configs.pop().unwrap()).await;
        for sequence in 0..20 {
            node_1.transport.send(NodeId(2), ping(sequence)).unwrap();
        }
        eventually(|| node_1.transport.metrics().peers[&NodeId(2)].connect_failures >= 3).await;
        let before = node_1.transport.metrics().peers[&NodeId(2)].clone();
        assert!(!before.connected);
        assert_eq!(before.messages_dropped_queue_full, 20 - queue_bound);

        let mut node_2 = TestNode::start(later_config).await;
        let queued: Vec<_> = (0..queue_bound)
            .map(|sequence| (NodeId(1), ping(sequence)))
            .collect();
        assert_eq!(node_2.receive(queue_bound as usize).await, queued);
        node_1.transport.send(NodeId(2), ping(100)).unwrap();
        assert_eq!(node_2.receive(1).await, vec![(NodeId(1), ping(100))]);
        assert!(node_1.transport.metrics().peers[&NodeId(2)].connected);
    })
    .await;
}

#[tokio::test]
async fn a_restarted_peer_is_reconnected() {
    bounded(async {
        let configs = mesh(2);
        let mut nodes = start_mesh_from(configs.clone()).await;
        nodes[0].transport.send(NodeId(2), ping(1)).unwrap();
        assert_eq!(nodes[1].receive(1).await, vec![(NodeId(1), ping(1))]);

        let node_2 = nodes.pop().unwrap();
        node_2.shutdown.send(true).unwrap();
        let node_1 = &nodes[0];
        eventually(|| !node_1.transport.metrics().peers[&NodeId(2)].connected).await;
        // The old node's socket closes asynchronously; retry the bind.
        let mut node_2 = loop {
            let (sender, inbound) = mpsc::channel(64);
            let (shutdown, receiver) = watch::channel(false);
            match Transport::start(configs[1].clone(), sender, receiver).await {
                Ok(transport) => {
                    break TestNode {
                        transport,
                        inbound,
                        shutdown,
                    }
                }
                Err(_) => sleep(Duration::from_millis(20)).await,
            }
        };
        eventually(|| node_1.transport.metrics().peers[&NodeId(2)].connected).await;
        node_1.transport.send(NodeId(2), ping(2)).unwrap();
        assert_eq!(node_2.receive(1).await, vec![(NodeId(1), ping(2))]);
        assert!(node_1.transport.metrics().peers[&NodeId(2)].connects >= 2);
    })
    .await;
}

async fn start_mesh_from(configs: Vec<TransportConfig>) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for config in configs {
        nodes.push(TestNode::start(config).await);
    }
    nodes
}

#[tokio::test]
async fn a_blocked_link_drops_and_clearing_restores_it() {
    bounded(async {
        let mut nodes = start_mesh(2).await;
        let blocked = LinkRule {
            blocked: true,
            ..LinkRule::default()
        };
        nodes[0].transport.set_link_rule(NodeId(2), blocked.clone());
        assert_eq!(
            nodes[0].transport.link_rules(),
            BTreeMap::from([(NodeId(2), blocked)])
        );
        for sequence in 0..5 {
            nodes[0].transport.send(NodeId(2), ping(sequence)).unwrap();
        }
        nodes[1]
            .assert_nothing_arrives(Duration::from_millis(300))
            .await;
        assert_eq!(
            nodes[0].transport.metrics().peers[&NodeId(2)].messages_dropped_link_rule,
            5
        );

        // The rule is per direction: 2 -> 1 still works.
        nodes[1].transport.send(NodeId(1), ping(7)).unwrap();
        assert_eq!(nodes[0].receive(1).await, vec![(NodeId(2), ping(7))]);

        nodes[0].transport.clear_link_rules();
        assert!(nodes[0].transport.link_rules().is_empty());
        nodes[0].transport.send(NodeId(2), ping(9)).unwrap();
        assert_eq!(nodes[1].receive(1).await, vec![(NodeId(1), ping(9))]);
    })
    .await;
}

#[tokio::test]
async fn a_delayed_link_delivers_late_and_in_order() {
    bounded(async {
        let mut nodes = start_mesh(2).await;
        // Warm the connection up so the delay is the only wait.
        nodes[0].transport.send(NodeId(2), ping(0)).unwrap();
        nodes[1].receive(1).await;

        let delay = Duration::from_millis(300);
        let rule = LinkRule {
            delay_ms: delay.as_millis() as u64,
            ..LinkRule::default()
        };
        nodes[0].transport.set_link_rule(NodeId(2), rule);
        let sent_at = Instant::now();
        for sequence in 1..=20 {
            nodes[0].transport.send(NodeId(2), ping(sequence)).unwrap();
        }
        let received = nodes[1].receive(20).await;
        assert!(
            sent_at.elapsed() >= delay,
            "arrived after {:?}",
            sent_at.elapsed()
        );
        let expected: Vec<_> = (1..=20)
            .map(|sequence| (NodeId(1), ping(sequence)))
            .collect();
        assert_eq!(received, expected);

        nodes[0].transport.clear_link_rules();
        let sent_at = Instant::now();
        nodes[0].transport.send(NodeId(2), ping(21)).unwrap();
        nodes[1].receive(1).await;
        assert!(sent_at.elapsed() < delay, "cleared rule still delays");
    })
    .await;
}

#[tokio::test]
async fn a_lossy_link_drops_about_its_fraction() {
    bounded(async {
        let mut nodes = start_mesh(2).await;
        let rule = LinkRule {
            drop_probability: 0.5,
            ..LinkRule::default()
        };
        nodes[0].transport.set_link_rule(NodeId(2), rule);
        let sent = 1000u64;
        for sequence in 0..sent {
            nodes[0].transport.send(NodeId(2), ping(sequence)).unwrap();
        }
        let dropped = nodes[0].transport.metrics().peers[&NodeId(2)].messages_dropped_link_rule;
        assert!((300..700).contains(&dropped), "dropped {dropped} of {sent}");
        let received = nodes[1].receive((sent - dropped) as usize).await;
        let sequences: Vec<u64> = received
            .iter()
            .map(|(_, message)| match message {
                TestMessage::Ping { sequence } => *sequence,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert!(
            sequences.windows(2).all(|pair| pair[0] < pair[1]),
            "order kept"
        );
    })
    .await;
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_stops_sending() {
    bounded(async {
        let nodes = start_mesh(2).await;
        let address = nodes[0].transport.local_addr();
        nodes[0].shutdown.send(true).unwrap();
        // Wait for the accept loop to drop the listener.
        while TcpStream::connect(address).await.is_ok() {
            sleep(Duration::from_millis(10)).await;
        }
        // The writers have ended, so their queues are closed.
        loop {
            match nodes[0].transport.send(NodeId(2), ping(0)) {
                Err(TransportError::ShutDown) => break,
                Ok(()) => sleep(Duration::from_millis(10)).await,
                Err(other) => panic!("unexpected {other}"),
            }
        }
    })
    .await;
}
