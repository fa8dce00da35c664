//! A quick in-process check of the server: three nodes on loopback with real
//! sockets and real disks, driven over HTTP. The real-process tests (kill -9,
//! partitions) live in the `capkv` crate.

// Test set-up helpers panic on failure like the tests themselves.
#![allow(clippy::unwrap_used)]

use capkv_core::NodeId;
use capkv_server::{PeerAddress, ServerConfig};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_and_serve_writes_through_any_node() {
    let base = std::env::temp_dir().join(format!("capkv-in-process-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        members.insert(
            NodeId(id),
            PeerAddress {
                peer: capkv_testkit::loopback_address(),
                http: Some(capkv_testkit::loopback_address()),
            },
        );
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut handles = Vec::new();
    for (id, address) in &members {
        let mut config = ServerConfig::new(
            *id,
            base.join(format!("n{}", id.0)),
            address.peer,
            address.http.unwrap(),
            members.clone(),
            "secret".into(),
        );
        config.admin_token = Some("admin".into());
        handles.push(tokio::spawn(capkv_server::run(config, shutdown_rx.clone())));
    }
    let client = reqwest::Client::new();
    let http = |id: u64| members[&NodeId(id)].http.unwrap();
    // Every node answering and one leader, within 15 s (a node takes a
    // while to create its storage on a busy machine).
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no leader with every node up in 15 s"
        );
        let mut leaders = 0;
        let mut up = 0;
        let mut known = Vec::new();
        for id in 1..=3 {
            if client
                .get(format!("http://{}/v1/health", http(id)))
                .send()
                .await
                .is_ok()
            {
                up += 1;
            }
        }
        for id in 1..=3 {
            if let Ok(response) = client
                .get(format!("http://{}/v1/cluster", http(id)))
                .send()
                .await
            {
                let body: Value = response.json().await.unwrap();
                if body["groups"][0]["role"] == "leader" {
                    leaders += 1;
                }
                known.push(body["groups"][0]["leader"].clone());
            }
        }
        // One leader, and every node knows it (a follower that has not heard
        // from it yet refuses writes with no_quorum).
        let agreed = known.len() == 3 && known.iter().all(|l| !l.is_null() && *l == known[0]);
        if leaders == 1 && up == 3 && agreed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client retries a definite refusal (a leader change right after the
    // wait above), for at most 5 s.
    let started = Instant::now();
    loop {
        let response = client
            .put(format!("http://{}/v1/buckets/bank", http(2)))
            .body(r#"{"mode":"cp"}"#)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status == 200 {
            break;
        }
        assert!(
            status == 503 && started.elapsed() < Duration::from_secs(5),
            "{status} {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in 1..=3 {
        let response = client
            .put(format!("http://{}/v1/kv/bank/k{id}", http(id)))
            .body(format!("v{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let get_json = |url: String| {
        let client = client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            response.json::<Value>().await.unwrap()
        }
    };
    for reader in 1..=3 {
        for id in 1..=3 {
            let body = get_json(format!("http://{}/v1/kv/bank/k{id}", http(reader))).await;
            assert_eq!(
                body["value"],
                format!("v{id}"),
                "read k{id} on n{reader}: {body}"
            );
        }
    }
    // A stale read sees every write made through the same node, followers
    // included: a follower answers a write it forwarded only once it has
    // applied it, although commit news otherwise waits for the next append
    // or heartbeat.
    for id in 1..=3 {
        for i in 0..20 {
            let key = format!("http://{}/v1/kv/bank/ryw{id}-{i}", http(id));
            let response = client.put(&key).body(format!("w{i}")).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let body = get_json(format!("{key}?consistency=stale")).await;
            assert_eq!(
                body["value"],
                format!("w{i}"),
                "stale read on n{id}: {body}"
            );
        }
    }
    let missing = client
        .get(format!("http://{}/v1/kv/nope/k", http(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"], "bucket_not_found");
    shutdown_tx.send_replace(true);
    for handle in handles {
        tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("node stops within 10 s")
            .unwrap()
            .unwrap();
    }
    let _ = std::fs::remove_dir_all(&base);
}
