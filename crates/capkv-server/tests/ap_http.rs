//! The ap HTTP paths in process: three nodes on loopback with real sockets
//! and disks; an ap bucket is created, written, read (siblings, contexts,
//! sessions), deleted and repaired over HTTP, and the refusals carry their
//! stable codes.

// Test set-up helpers panic on failure like the tests themselves.
#![allow(clippy::unwrap_used)]

use capkv_core::NodeId;
use capkv_server::{PeerAddress, ServerConfig};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::watch;

struct Cluster {
    members: BTreeMap<NodeId, PeerAddress>,
    client: reqwest::Client,
}

impl Cluster {
    fn url(&self, id: u64, path: &str) -> String {
        format!("http://{}{path}", self.members[&NodeId(id)].http.unwrap())
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> (u16, Value, Option<String>) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let session = response
            .headers()
            .get("x-capkv-session")
            .map(|value| value.to_str().unwrap().to_string());
        let body: Value = response.json().await.unwrap();
        (status, body, session)
    }

    async fn get(&self, id: u64, path: &str) -> (u16, Value) {
        let (status, body, _) = self.json(self.client.get(self.url(id, path))).await;
        (status, body)
    }

    async fn put(&self, id: u64, path: &str, body: &str) -> (u16, Value, Option<String>) {
        self.json(self.client.put(self.url(id, path)).body(body.to_string()))
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ap_buckets_serve_siblings_contexts_sessions_and_stable_errors() {
    let base = std::env::temp_dir().join(format!("capkv-ap-http-{}", std::process::id()));
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
        let config = ServerConfig::new(
            *id,
            base.join(format!("n{}", id.0)),
            address.peer,
            address.http.unwrap(),
            members.clone(),
            "secret".into(),
        );
        handles.push(tokio::spawn(capkv_server::run(config, shutdown_rx.clone())));
    }
    let cluster = Cluster {
        members,
        client: reqwest::Client::new(),
    };
    // Every node answers, then bucket creation (through Raft) succeeds once
    // a leader exists.
    let started = Instant::now();
    for id in 1..=3 {
        while cluster
            .client
            .get(cluster.url(id, "/v1/health"))
            .send()
            .await
            .is_err()
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "node {id} does not answer"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let created = loop {
        assert!(started.elapsed() < Duration::from_secs(10), "no leader");
        let (status, body, _) = cluster
            .put(
                1,
                "/v1/buckets/feed",
                r#"{"mode":"ap","conflict":"siblings"}"#,
            )
            .await;
        if status == 200 {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(created["mode"], "ap");
    assert_eq!(created["replicas"], 3);
    assert_eq!(created["conflict"], "siblings");
    assert_eq!(created["read"], "quorum");
    assert_eq!(created["write"], "quorum");
    let (status, body, _) = cluster
        .put(2, "/v1/buckets/bad", r#"{"mode":"ap","replicas":4}"#)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body, _) = cluster
        .put(2, "/v1/buckets/bad", r#"{"mode":"ap","read":"most"}"#)
        .await;
    assert_eq!(status, 400, "{body}");

    // A write through node 2 (which may apply the bucket a moment later).
    let (status, written, session) = cluster.put(2, "/v1/kv/feed/k", "v1").await;
    assert_eq!(status, 200, "{written}");
    assert_eq!(written["consistency"], "quorum");
    assert_eq!(written["replicas"], 3);
    assert!(written["acks"].as_u64().unwrap() >= 2);
    assert_eq!(session.as_deref(), written["session"].as_str());
    let session = written["session"].as_str().unwrap().to_string();
    let (status, read) = cluster
        .get(
            3,
            &format!("/v1/kv/feed/k?consistency=all&session={session}"),
        )
        .await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["siblings"], serde_json::json!([{"value": "v1"}]));
    assert_eq!(read["consistency"], "all");
    assert_eq!(read["responded"], 3);
    let context = read["context"].as_str().unwrap().to_string();

    // Two writes with the same context are concurrent: siblings.
    for value in ["a", "b"] {
        let (status, body, _) = cluster
            .json(
                cluster
                    .client
                    .put(cluster.url(1, "/v1/kv/feed/k"))
                    .header("x-capkv-context", &context)
                    .body(value),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, read) = cluster.get(1, "/v1/kv/feed/k?consistency=all").await;
    let mut values: Vec<&str> = read["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sibling| sibling["value"].as_str().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, ["a", "b"], "{read}");
    // A write with that read's context resolves them.
    let context = read["context"].as_str().unwrap();
    let (status, _, _) = cluster
        .put(3, &format!("/v1/kv/feed/k?context={context}"), "\u{00e9}")
        .await;
    assert_eq!(status, 200);
    let (_, read) = cluster.get(2, "/v1/kv/feed/k").await;
    assert_eq!(read["siblings"], serde_json::json!([{"value": "\u{00e9}"}]));

    // Bytes that are not UTF-8 come back as base64.
    let response = cluster
        .client
        .put(cluster.url(1, "/v1/kv/feed/bin"))
        .body(vec![0xff_u8, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, read) = cluster.get(1, "/v1/kv/feed/bin").await;
    assert_eq!(
        read["siblings"],
        serde_json::json!([{"value_base64": "/wA="}])
    );

    // Delete: the answer carries a session; a read is 404 with a context.
    let context = read["context"].as_str().unwrap();
    let (status, deleted, session) = cluster
        .json(cluster.client.delete(cluster.url(
            2,
            &format!("/v1/kv/feed/bin?consistency=all&context={context}"),
        )))
        .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["acks"], 3);
    assert!(session.is_some());
    let (status, missing) = cluster.get(3, "/v1/kv/feed/bin").await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"], "not_found");
    assert!(missing["context"].is_string(), "{missing}");

    // Parameters of the other mode, and bad tokens, are refused clearly.
    for (path, needle) in [
        ("/v1/kv/feed/k?consistency=linearizable", "cp buckets"),
        ("/v1/kv/feed/k?session=garbage", "session"),
    ] {
        let (status, body) = cluster.get(1, path).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{path}: {body}"
        );
        assert!(body["message"].as_str().unwrap().contains(needle), "{body}");
    }
    for (path, needle) in [
        ("/v1/kv/feed/k?if_version=3", "if_version"),
        ("/v1/kv/feed/k?consistency=local", "local"),
        ("/v1/kv/feed/k?context=zz", "context"),
    ] {
        let (status, body, _) = cluster.put(1, path, "x").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{path}: {body}"
        );
        assert!(body["message"].as_str().unwrap().contains(needle), "{body}");
    }
    let started = Instant::now();
    loop {
        let (status, _, _) = cluster.put(1, "/v1/buckets/bank", r#"{"mode":"cp"}"#).await;
        if status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for path in [
        "/v1/kv/bank/k?consistency=quorum",
        "/v1/kv/bank/k?context=abc",
        "/v1/kv/bank/k?session=abc",
    ] {
        let (status, body) = cluster.get(1, path).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{path}: {body}"
        );
    }

    // Buckets list both modes; repair starts exchanges; metrics count.
    let (_, buckets) = cluster.get(3, "/v1/buckets").await;
    let feed = buckets["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|bucket| bucket["name"] == "feed")
        .unwrap()
        .clone();
    assert_eq!(feed["conflict"], "siblings");
    let (status, repair, _) = cluster
        .json(cluster.client.post(cluster.url(1, "/v1/repair")).body("{}"))
        .await;
    assert_eq!(status, 200, "{repair}");
    assert!(repair["exchanges"].as_u64().unwrap() >= 1, "{repair}");
    let (status, repair, _) = cluster
        .json(
            cluster
                .client
                .post(cluster.url(1, "/v1/repair"))
                .body(r#"{"bucket":"nope"}"#),
        )
        .await;
    assert_eq!(
        (status, repair["error"].as_str()),
        (404, Some("bucket_not_found"))
    );
    let metrics = cluster
        .client
        .get(cluster.url(1, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("capkv_ap_writes_total{node=\"1\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("capkv_ap_objects{node=\"1\"}"));
    let (_, status_body) = cluster.get(1, "/v1/cluster").await;
    assert!(
        status_body["ap"]["writes"].as_u64().unwrap() >= 1,
        "{status_body}"
    );

    // With N=1, two of the three nodes hold no copy: `local` there is
    // refused with the key's replicas.
    let (status, body, _) = cluster
        .put(1, "/v1/buckets/single", r#"{"mode":"ap","replicas":1}"#)
        .await;
    assert_eq!(status, 200, "{body}");
    let mut refusals = 0;
    for id in 1..=3 {
        let (status, body) = cluster.get(id, "/v1/kv/single/k?consistency=local").await;
        if status == 400 {
            assert_eq!(body["error"], "not_a_replica", "{body}");
            assert_eq!(body["replicas"].as_array().unwrap().len(), 1);
            refusals += 1;
        } else {
            assert_eq!(status, 404, "{body}");
        }
    }
    assert_eq!(refusals, 2);

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
