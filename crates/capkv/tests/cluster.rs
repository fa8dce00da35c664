//! Real-process tests of a cp cluster: `capkv node` processes on loopback,
//! kill -9, restarts, nemesis partitions, bad input.

mod common;

use common::Cluster;
use std::time::{Duration, Instant};

/// Writes through any node are readable through every node, linearizably,
/// and survive a full restart of the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_are_read_everywhere_and_survive_a_full_restart() {
    let mut cluster = Cluster::start("restart", 3, &[]).await;
    let (status, body) = cluster.create_bucket(2, "bank").await;
    assert_eq!(status, 200, "{body}");
    for writer in 1..=3 {
        for i in 0..5 {
            let key = format!("k{writer}-{i}");
            let (status, body) = cluster
                .put(writer, "bank", &key, &format!("v{writer}-{i}"))
                .await;
            assert_eq!(status, 200, "put {key} through n{writer}: {body}");
            assert!(body["version"].as_u64().unwrap() > 0);
        }
    }
    for reader in 1..=3 {
        for writer in 1..=3 {
            for i in 0..5 {
                let key = format!("k{writer}-{i}");
                let (status, body) = cluster.get(reader, "bank", &key, "linearizable").await;
                assert_eq!(status, 200, "get {key} through n{reader}: {body}");
                assert_eq!(body["value"], format!("v{writer}-{i}"));
            }
        }
    }
    // Every process dies at once, then comes back from its disk alone.
    cluster.stop_all();
    for id in 1..=3 {
        cluster.spawn(id, common::SECRET);
    }
    cluster.wait_for_leader(None, Duration::from_secs(15)).await;
    for reader in 1..=3 {
        for writer in 1..=3 {
            for i in 0..5 {
                let key = format!("k{writer}-{i}");
                let (status, body) = cluster.get(reader, "bank", &key, "linearizable").await;
                assert_eq!(
                    status, 200,
                    "after restart, get {key} through n{reader}: {body}"
                );
                assert_eq!(body["value"], format!("v{writer}-{i}"));
            }
        }
    }
}

/// kill -9 of the leader: a new leader is elected, every acknowledged write
/// is still there, and the killed node catches up after restart, through a
/// snapshot because its log position was compacted away meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_is_replaced_and_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::start("kill", 3, &["--snapshot-interval", "50"]).await;
    assert_eq!(cluster.create_bucket(1, "bank").await.0, 200);
    let mut acknowledged = Vec::new();
    for i in 0..40 {
        let key = format!("a{i}");
        cluster
            .put_eventually(1, "bank", &key, &format!("v{i}"))
            .await;
        acknowledged.push(key);
    }
    let old_leader = cluster.wait_for_leader(None, Duration::from_secs(5)).await;
    cluster.kill(old_leader);
    let survivor = (1..=3).find(|id| *id != old_leader).unwrap();
    let new_leader = cluster
        .wait_for_leader(Some(old_leader), Duration::from_secs(10))
        .await;
    assert_ne!(new_leader, old_leader);
    for key in &acknowledged {
        let (status, body) = cluster.get(survivor, "bank", key, "linearizable").await;
        assert_eq!(status, 200, "{key} lost after the leader died: {body}");
    }
    // Enough writes that every survivor compacts past the dead node's log.
    for i in 0..200 {
        cluster
            .put_eventually(survivor, "bank", &format!("b{i}"), &format!("w{i}"))
            .await;
    }
    let leader_group = cluster.group(new_leader).await.unwrap();
    assert!(
        leader_group["snapshot_index"].as_u64().unwrap() > 100,
        "the leader should have compacted: {leader_group}"
    );
    cluster.spawn(old_leader, common::SECRET);
    let started = Instant::now();
    loop {
        let leader = cluster.group(new_leader).await.unwrap();
        if let Some(back) = cluster.group(old_leader).await {
            if back["applied_index"] == leader["commit_index"]
                && back["snapshot_index"].as_u64().unwrap_or(0) > 0
            {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "n{old_leader} did not catch up; logs in {}",
            cluster.base.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its own state (a stale read serves it) now holds everything.
    for i in (0..200).step_by(37) {
        let (status, body) = cluster
            .get(old_leader, "bank", &format!("b{i}"), "stale")
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["value"], format!("w{i}"));
    }
    let log = std::fs::read_to_string(cluster.base.join(format!("n{old_leader}.log"))).unwrap();
    assert!(
        log.contains("installed a snapshot"),
        "n{old_leader} caught up without a snapshot"
    );
}

/// Partition {leader} | {others}: the old leader refuses with 503 no_quorum
/// within the deadline, the majority elects a leader and takes writes, and
/// after heal the old leader serves the new values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_refuses_and_majority_carries_on() {
    let cluster = Cluster::start("partition", 3, &[]).await;
    assert_eq!(cluster.create_bucket(1, "bank").await.0, 200);
    cluster.put_eventually(1, "bank", "x", "before").await;
    let old_leader = cluster.wait_for_leader(None, Duration::from_secs(5)).await;
    let others: Vec<u64> = (1..=3).filter(|id| *id != old_leader).collect();
    let groups = format!(
        r#"{{"groups":[[{old_leader}],[{},{}]]}}"#,
        others[0], others[1]
    );
    let (status, body) = cluster
        .admin(others[0], "/v1/nemesis/partition", &groups)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"].as_array().unwrap().len(), 3, "{body}");

    let started = Instant::now();
    let (status, body) = cluster.put(old_leader, "bank", "x", "lost").await;
    let elapsed = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "no_quorum", "{body}");
    assert!(elapsed < Duration::from_millis(2_500), "took {elapsed:?}");
    let (status, body) = cluster.get(old_leader, "bank", "x", "linearizable").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "no_quorum", "{body}");

    cluster
        .put_eventually(others[0], "bank", "x", "after")
        .await;
    let (status, body) = cluster.get(others[1], "bank", "x", "linearizable").await;
    assert_eq!(
        (status, body["value"].clone()),
        (200, "after".into()),
        "{body}"
    );

    let (status, body) = cluster.admin(old_leader, "/v1/nemesis/heal", "").await;
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    loop {
        let (status, body) = cluster.get(old_leader, "bank", "x", "linearizable").await;
        if status == 200 {
            assert_eq!(
                body["value"], "after",
                "the old leader serves the new value"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every node converges on one applied state.
    let started = Instant::now();
    loop {
        let mut applied = Vec::new();
        for id in 1..=3 {
            applied.push(cluster.group(id).await.unwrap()["applied_index"].clone());
        }
        if applied.iter().all(|a| *a == applied[0]) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{applied:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bad input gets a clear error with a stable code, and nothing acknowledged
/// is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_loses_nothing() {
    let mut cluster = Cluster::start("bad-input", 3, &[]).await;
    assert_eq!(cluster.create_bucket(1, "bank").await.0, 200);
    cluster.put_eventually(1, "bank", "keep", "safe").await;

    let malformed = cluster
        .request(
            cluster
                .client
                .put(cluster.url(1, "/v1/buckets/b2"))
                .body("{mode:"),
        )
        .await;
    assert_eq!(
        (malformed.0, malformed.1["error"].clone()),
        (400, "invalid_request".into())
    );
    let unknown_mode = cluster
        .request(
            cluster
                .client
                .put(cluster.url(1, "/v1/buckets/b2"))
                .body(r#"{"mode":"xy"}"#),
        )
        .await;
    assert_eq!(unknown_mode.0, 400);
    let conflict = cluster
        .request(
            cluster
                .client
                .put(cluster.url(1, "/v1/buckets/bank"))
                .body(r#"{"mode":"ap"}"#),
        )
        .await;
    assert_eq!(
        (conflict.0, conflict.1["error"].as_str()),
        (409, Some("bucket_conflict")),
        "a bucket keeps its mode: {}",
        conflict.1
    );

    let (status, body) = cluster.get(1, "nope", "k", "linearizable").await;
    assert_eq!(
        (status, body["error"].clone()),
        (404, "bucket_not_found".into())
    );
    let (status, body) = cluster.put(1, "nope", "k", "v").await;
    assert_eq!(
        (status, body["error"].clone()),
        (404, "bucket_not_found".into())
    );
    let (status, body) = cluster.get(1, "bank", "absent", "linearizable").await;
    assert_eq!((status, body["error"].clone()), (404, "not_found".into()));

    let long_key = "k".repeat(1025);
    let (status, body) = cluster.put(1, "bank", &long_key, "v").await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, "invalid_request".into()),
        "{body}"
    );
    let big = "v".repeat((1 << 20) + 1);
    let (status, body) = cluster.put(1, "bank", "big", &big).await;
    assert_eq!(
        (status, body["error"].clone()),
        (413, "too_large".into()),
        "{body}"
    );
    let (status, body) = cluster.get(1, "bank", "keep", "sometimes").await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, "invalid_request".into()),
        "{body}"
    );
    let (status, body) = cluster
        .request(
            cluster
                .client
                .put(cluster.url(1, "/v1/kv/bank/keep?if_version=abc"))
                .body("v"),
        )
        .await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, "invalid_request".into()),
        "{body}"
    );

    let (status, body) = cluster
        .request(
            cluster
                .client
                .post(cluster.url(1, "/v1/nemesis/heal"))
                .bearer_auth("wrong"),
        )
        .await;
    assert_eq!(
        (status, body["error"].clone()),
        (401, "unauthorized".into())
    );
    let (status, _) = cluster
        .request(cluster.client.post(cluster.url(1, "/v1/nemesis/heal")))
        .await;
    assert_eq!(status, 401);
    let (status, body) = cluster
        .admin(1, "/v1/nemesis/partition", r#"{"groups":[[1],[2]]}"#)
        .await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, "invalid_request".into()),
        "{body}"
    );

    // A node with the wrong cluster secret is refused by its peers: it never
    // learns of a leader, and the others carry on.
    cluster.kill(3);
    cluster.spawn(3, "not-the-secret");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let rogue = cluster.group(3).await.expect("the rogue node answers HTTP");
    assert!(
        rogue["leader"].is_null(),
        "a node with the wrong secret joined: {rogue}"
    );
    cluster.put_eventually(1, "bank", "during", "rogue").await;
    let log = std::fs::read_to_string(cluster.base.join("n1.log")).unwrap();
    assert!(
        log.to_lowercase().contains("secret") || log.to_lowercase().contains("mac"),
        "the refusal is logged"
    );
    cluster.kill(3);
    cluster.spawn(3, common::SECRET);
    cluster.wait_for_leader(None, Duration::from_secs(10)).await;
    for key in ["keep", "during"] {
        let (status, body) = cluster.get(3, "bank", key, "linearizable").await;
        assert_eq!(status, 200, "{key}: {body}");
    }
    let (status, body) = cluster.put(1, "bank", "keep", "updated").await;
    assert_eq!(status, 200, "{body}");
    let version = body["version"].as_u64().unwrap();
    let (status, body) = cluster
        .request(
            cluster
                .client
                .put(cluster.url(2, &format!("/v1/kv/bank/keep?if_version={}", version - 1)))
                .body("cas"),
        )
        .await;
    assert_eq!(
        (status, body["error"].clone()),
        (409, "version_mismatch".into()),
        "{body}"
    );
    assert_eq!(body["current_version"], version);
}
