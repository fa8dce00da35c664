//! The client against a tiny axum stub on 127.0.0.1:0 that answers with
//! canned JSON. Every test is bounded by a timeout so a hang is a failure.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use capkv_client::{
    codes, ApReadOptions, ApWriteOptions, BucketMode, BucketSpec, Client, ConflictMode,
    Consistency, DeleteOptions, GetOptions, LinkRule, PutOptions,
};
use serde_json::{json, Value};
use std::future::Future;
use std::time::Duration;

const TEST_TIMEOUT: Duration = Duration::from_secs(10);

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "error": code, "message": message }))).into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        == Some("Bearer secret-token")
}

async fn put_kv(uri: Uri, body: Bytes) -> Response {
    match uri.path() {
        "/v1/kv/bank/alice" if uri.query() == Some("if_version=3") => (
            StatusCode::CONFLICT,
            Json(json!({"error":"version_mismatch","message":"alice is at version 7","current_version":7})),
        )
            .into_response(),
        "/v1/kv/bank/alice" => Json(json!({ "version": body.len() })).into_response(),
        "/v1/kv/minority/k" => error(StatusCode::SERVICE_UNAVAILABLE, "no_quorum", "group 0 has no quorum"),
        _ => echo(uri).await,
    }
}

async fn get_kv(uri: Uri) -> Response {
    match uri.path() {
        "/v1/kv/bank/text" => {
            Json(json!({"key":"text","value":"hello","version":4})).into_response()
        }
        "/v1/kv/bank/binary" => {
            Json(json!({"key":"binary","value_base64":"AAH/","version":5})).into_response()
        }
        "/v1/kv/bank/missing" => {
            error(StatusCode::NOT_FOUND, "not_found", "no key missing in bank")
        }
        "/v1/kv/feed/k" => Json(json!({"key":"k","siblings":[{"value":"a"},{"value_base64":"AAH/"}],
            "context":"ctx","responded":2,"replicas":3,"consistency":"quorum"}))
        .into_response(),
        "/v1/kv/feed/gone" => (
            StatusCode::NOT_FOUND,
            Json(json!({"error":"not_found","message":"deleted","context":"tomb","responded":3,"replicas":3})),
        )
            .into_response(),
        "/v1/kv/bank/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Json(json!({"key":"slow","value":"late","version":1})).into_response()
        }
        _ => echo(uri).await,
    }
}

/// Answers 404 with the raw path and query it received, so a test can see
/// exactly how the client encoded a request.
async fn echo(uri: Uri) -> Response {
    let raw = uri
        .path_and_query()
        .map(|value| value.as_str().to_string())
        .unwrap_or_default();
    error(StatusCode::NOT_FOUND, "echo", &raw)
}

async fn nemesis_partition(headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if !authorized(&headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin token is required",
        );
    }
    assert_eq!(body, json!({"groups": [[1], [2, 3]]}));
    Json(json!({"applied":[1,2,3],"failed":[]})).into_response()
}

async fn nemesis_links(headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if !authorized(&headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin token is required",
        );
    }
    assert_eq!(
        body,
        json!({"from":1,"to":2,"delay_ms":150,"drop_probability":0.25})
    );
    Json(json!({"applied":[1],"failed":[{"node":2,"reason":"unreachable"}],
                "rules":[{"from":1,"to":2,"blocked":false,"delay_ms":150,"drop_probability":0.25}]}))
    .into_response()
}

/// Checks that a spec sends only the fields it was given; a failed assertion
/// drops the connection, which fails the client call.
async fn create_bucket(uri: Uri, Json(body): Json<Value>) -> Response {
    let bucket = uri.path().trim_start_matches("/v1/buckets/").to_string();
    match bucket.as_str() {
        "bank" => assert_eq!(body, json!({"mode":"cp"})),
        _ => assert_eq!(
            body,
            json!({"mode":"ap","replicas":3,"conflict":"siblings"})
        ),
    }
    Json(json!({"bucket": bucket, "mode": body["mode"], "created": true})).into_response()
}

async fn start_stub() -> String {
    let router = Router::new()
        .route("/v1/health", get(|| async { Json(json!({"status":"ok","node_id":2})) }))
        .route(
            "/v1/cluster",
            get(|| async {
                Json(json!({
                    "node_id": 1,
                    "nodes": [{"id":1,"peer":"127.0.0.1:7001","http":"127.0.0.1:8001"},
                              {"id":2,"peer":"127.0.0.1:7002","http":null}],
                    "groups": [{"group":0,"role":"leader","term":5,"leader":1,"commit_index":12,"applied_index":11}],
                    "links": "ignored by this client"
                }))
            }),
        )
        .route(
            "/v1/buckets",
            get(|| async { (StatusCode::BAD_GATEWAY, "<html>bad gateway</html>") }),
        )
        .route("/v1/buckets/{bucket}", put(create_bucket))
        .route("/v1/kv/{bucket}/{key}", put(put_kv).get(get_kv).delete(echo))
        .route("/v1/nemesis/partition", post(nemesis_partition))
        .route("/v1/nemesis/links", post(nemesis_links))
        .route("/metrics", get(|| async { "capkv_up 1\n" }))
        .fallback(echo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("the stub binds a loopback port");
    let address = listener
        .local_addr()
        .expect("a bound listener has an address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}")
}

async fn bounded<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, future)
        .await
        .expect("the test took too long")
}

#[tokio::test]
async fn typed_answers_decode() {
    bounded(async {
        let client = Client::new(&start_stub().await).unwrap();
        assert_eq!(client.health().await.unwrap().node_id, 2);
        let cluster = client.cluster().await.unwrap();
        assert_eq!(cluster.nodes.len(), 2);
        assert_eq!(cluster.nodes[1].http, None);
        assert_eq!(cluster.groups[0].role, "leader");
        assert_eq!(cluster.groups[0].leader, Some(1));
        assert_eq!(cluster.groups[0].applied_index, 11);
        let put = client
            .put("bank", "alice", "12345", &PutOptions::default())
            .await
            .unwrap();
        assert_eq!(put.version, 5);
        let text = client
            .get("bank", "text", &GetOptions::default())
            .await
            .unwrap();
        assert_eq!(text.value_text(), Some("hello"));
        assert_eq!(text.version, 4);
        let binary = client
            .get("bank", "binary", &GetOptions::default())
            .await
            .unwrap();
        assert_eq!(binary.value, vec![0, 1, 255]);
        assert_eq!(client.metrics().await.unwrap(), "capkv_up 1\n");
    })
    .await;
}

#[tokio::test]
async fn bucket_specs_send_only_the_fields_given() {
    bounded(async {
        let client = Client::new(&start_stub().await).unwrap();
        let created = client
            .create_bucket("bank", &BucketSpec::new(BucketMode::Cp))
            .await
            .unwrap();
        assert_eq!(created.bucket, "bank");
        assert_eq!(created.mode, "cp");
        assert!(created.created);
        let spec = BucketSpec::ap(3, ConflictMode::Siblings);
        let created = client.create_bucket("carts", &spec).await.unwrap();
        assert_eq!(created.mode, "ap");
    })
    .await;
}

#[tokio::test]
async fn server_errors_keep_their_code_message_and_details() {
    bounded(async {
        let client = Client::new(&start_stub().await).unwrap();
        let missing = client
            .get("bank", "missing", &GetOptions::default())
            .await
            .unwrap_err();
        assert_eq!(
            (missing.status, missing.code.as_str()),
            (404, codes::NOT_FOUND)
        );
        assert_eq!(missing.message, "no key missing in bank");
        assert!(missing.is_not_found());
        let options = PutOptions {
            if_version: Some(3),
            ..PutOptions::default()
        };
        let mismatch = client
            .put("bank", "alice", "x", &options)
            .await
            .unwrap_err();
        assert_eq!(
            (mismatch.status, mismatch.code.as_str()),
            (409, codes::VERSION_MISMATCH)
        );
        assert_eq!(mismatch.current_version, Some(7));
        let minority = client
            .put("minority", "k", "x", &PutOptions::default())
            .await
            .unwrap_err();
        assert_eq!(
            (minority.status, minority.code.as_str()),
            (503, codes::NO_QUORUM)
        );
        let not_json = client.list_buckets().await.unwrap_err();
        assert_eq!(
            (not_json.status, not_json.code.as_str()),
            (502, codes::BAD_RESPONSE)
        );
        assert!(
            not_json.message.contains("bad gateway"),
            "{}",
            not_json.message
        );
    })
    .await;
}

#[tokio::test]
async fn keys_and_buckets_are_percent_encoded_and_queries_sent() {
    bounded(async {
        let client = Client::new(&start_stub().await).unwrap();
        let options = GetOptions {
            consistency: Some(Consistency::Stale),
            timeout_ms: None,
        };
        let echoed = client
            .get("my bucket", "a/b?c#d%e", &options)
            .await
            .unwrap_err();
        assert_eq!(echoed.code, "echo");
        assert_eq!(
            echoed.message,
            "/v1/kv/my%20bucket/a%2Fb%3Fc%23d%25e?consistency=stale"
        );
        let options = PutOptions {
            if_version: Some(9),
            consistency: Some(Consistency::Quorum),
            timeout_ms: Some(250),
        };
        let echoed = client.put("b", "k", "v", &options).await.unwrap_err();
        assert_eq!(
            echoed.message,
            "/v1/kv/b/k?if_version=9&consistency=quorum&timeout_ms=250"
        );
        let options = DeleteOptions {
            if_version: Some(4),
            timeout_ms: Some(100),
        };
        let echoed = client.delete("b", "k", &options).await.unwrap_err();
        assert_eq!(echoed.message, "/v1/kv/b/k?if_version=4&timeout_ms=100");
        let refused = client
            .delete("b", "..", &DeleteOptions::default())
            .await
            .unwrap_err();
        assert_eq!(
            (refused.status, refused.code.as_str()),
            (0, codes::INVALID_REQUEST)
        );
    })
    .await;
}

#[tokio::test]
async fn ap_reads_decode_siblings_and_tombstones_and_writes_send_tokens() {
    bounded(async {
        let client = Client::new(&start_stub().await).unwrap();
        let values = client
            .ap_get("feed", "k", &ApReadOptions::default())
            .await
            .unwrap();
        assert_eq!(values.siblings, vec![b"a".to_vec(), vec![0, 1, 255]]);
        assert_eq!(values.context, "ctx");
        let gone = client
            .ap_get("feed", "gone", &ApReadOptions::default())
            .await
            .unwrap();
        assert!(gone.siblings.is_empty());
        assert_eq!((gone.context.as_str(), gone.responded), ("tomb", 3));
        let options = ApReadOptions {
            consistency: Some(Consistency::Local),
            session: Some("d1.2.3".into()),
            timeout_ms: None,
        };
        let echoed = client.ap_get("feed", "x", &options).await.unwrap_err();
        assert_eq!(
            echoed.code, "echo",
            "a 404 without a context stays an error"
        );
        assert_eq!(
            echoed.message,
            "/v1/kv/feed/x?consistency=local&session=d1.2.3"
        );
        let options = ApWriteOptions {
            consistency: Some(Consistency::All),
            context: Some("a+b=".into()),
            timeout_ms: Some(300),
        };
        let echoed = client.ap_put("feed", "x", "v", &options).await.unwrap_err();
        assert_eq!(
            echoed.message,
            "/v1/kv/feed/x?consistency=all&context=a%2Bb%3D&timeout_ms=300"
        );
        let echoed = client.ap_delete("feed", "x", &options).await.unwrap_err();
        assert_eq!(echoed.code, "echo");
    })
    .await;
}

#[tokio::test]
async fn nemesis_requests_carry_the_admin_token() {
    bounded(async {
        let endpoint = start_stub().await;
        let anonymous = Client::new(&endpoint).unwrap();
        let refused = anonymous
            .nemesis_partition(&[vec![1], vec![2, 3]])
            .await
            .unwrap_err();
        assert_eq!(
            (refused.status, refused.code.as_str()),
            (401, codes::UNAUTHORIZED)
        );
        let admin = anonymous.with_admin_token("secret-token");
        let applied = admin
            .nemesis_partition(&[vec![1], vec![2, 3]])
            .await
            .unwrap();
        assert_eq!(applied.applied, vec![1, 2, 3]);
        assert!(applied.failed.is_empty());
        let rule = LinkRule {
            from: 1,
            to: 2,
            delay_ms: 150,
            drop_probability: 0.25,
        };
        let partial = admin.nemesis_link(&rule).await.unwrap();
        assert_eq!(partial.applied, vec![1]);
        assert_eq!(partial.failed.len(), 1);
        assert_eq!(partial.rules[0].delay_ms, 150);
    })
    .await;
}

#[tokio::test]
async fn a_closed_port_is_unreachable() {
    bounded(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let client = Client::new(&format!("http://{address}")).unwrap();
        let error = client.health().await.unwrap_err();
        assert_eq!((error.status, error.code.as_str()), (0, codes::UNREACHABLE));
        assert!(error.is_transport());
    })
    .await;
}

#[tokio::test]
async fn a_slow_answer_hits_the_client_timeout() {
    bounded(async {
        let client = Client::new(&start_stub().await)
            .unwrap()
            .with_timeout(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let error = client
            .get("bank", "slow", &GetOptions::default())
            .await
            .unwrap_err();
        assert_eq!(
            (error.status, error.code.as_str()),
            (0, codes::CLIENT_TIMEOUT)
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    })
    .await;
}

#[tokio::test]
async fn at_points_a_clone_at_another_node() {
    bounded(async {
        let first = Client::new("http://127.0.0.1:1").unwrap();
        let second = first.at(&start_stub().await).unwrap();
        assert_eq!(second.health().await.unwrap().status, "ok");
        assert_eq!(first.endpoint(), "http://127.0.0.1:1");
    })
    .await;
}
