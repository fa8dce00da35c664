//! Real-process tests of ap buckets (issue 4): `capkv node` processes on
//! loopback under partitions, kill -9, restarts and delayed links, showing
//! what the Dynamo-style engine promises: writes on both sides of a
//! partition, siblings and lww after heal, hinted handoff, Merkle
//! anti-entropy, replication lag at `local`, read-your-writes with a session
//! token, and deletes that stay deleted.
//!
//! Every key of a 3-node cluster with 3 replicas lives on every node, so
//! `consistency=local` on any node shows that node's own copy.
//! Measured timings are printed with `eprintln!` (`--nocapture`).

#![allow(clippy::unwrap_used)]

mod common;

use common::Cluster;
use serde_json::Value;
use std::time::{Duration, Instant};

/// An answer with the session header, when there is one.
struct Reply {
    status: u16,
    body: Value,
    session_header: Option<String>,
}

async fn send(builder: reqwest::RequestBuilder) -> Reply {
    match builder.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let session_header = response
                .headers()
                .get("x-capkv-session")
                .and_then(|value| value.to_str().ok())
                .map(str::to_string);
            let body = response.json().await.unwrap_or(Value::Null);
            Reply {
                status,
                body,
                session_header,
            }
        }
        Err(error) => Reply {
            status: 0,
            body: Value::from(error.to_string()),
            session_header: None,
        },
    }
}

/// `PUT /v1/kv/{bucket}/{key}?consistency=..&context=..`.
async fn put(
    cluster: &Cluster,
    id: u64,
    bucket: &str,
    key: &str,
    value: &str,
    consistency: &str,
    context: Option<&str>,
) -> Reply {
    let mut query = vec![("consistency", consistency)];
    if let Some(context) = context {
        query.push(("context", context));
    }
    send(
        cluster
            .client
            .put(cluster.url(id, &format!("/v1/kv/{bucket}/{key}")))
            .query(&query)
            .body(value.to_string()),
    )
    .await
}

/// `DELETE /v1/kv/{bucket}/{key}?consistency=..&context=..`.
async fn delete(
    cluster: &Cluster,
    id: u64,
    bucket: &str,
    key: &str,
    consistency: &str,
    context: Option<&str>,
) -> Reply {
    let mut query = vec![("consistency", consistency)];
    if let Some(context) = context {
        query.push(("context", context));
    }
    send(
        cluster
            .client
            .delete(cluster.url(id, &format!("/v1/kv/{bucket}/{key}")))
            .query(&query),
    )
    .await
}

/// `GET /v1/kv/{bucket}/{key}?consistency=..&session=..`.
async fn get(
    cluster: &Cluster,
    id: u64,
    bucket: &str,
    key: &str,
    consistency: &str,
    session: Option<&str>,
) -> Reply {
    let mut query = vec![("consistency", consistency)];
    if let Some(session) = session {
        query.push(("session", session));
    }
    send(
        cluster
            .client
            .get(cluster.url(id, &format!("/v1/kv/{bucket}/{key}")))
            .query(&query),
    )
    .await
}

/// The sibling values of a read, sorted.
fn values(body: &Value) -> Vec<String> {
    let mut values: Vec<String> = body["siblings"]
        .as_array()
        .map(|siblings| {
            siblings
                .iter()
                .map(|sibling| {
                    sibling["value"]
                        .as_str()
                        .unwrap_or("<not text>")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    values.sort();
    values
}

/// What a read shows: `Some(values)` on 200, `None` on 404, `Err` otherwise.
fn shown(reply: &Reply) -> Result<Option<Vec<String>>, String> {
    match reply.status {
        200 => Ok(Some(values(&reply.body))),
        404 if reply.body["error"] == "not_found" => Ok(None),
        status => Err(format!("{status} {}", reply.body)),
    }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| value.to_string()).collect()
}

/// Polls `consistency=local` reads of `key` on node `id` until they show
/// `want` (`None`: not found) and returns how long it took.
async fn wait_local(
    cluster: &Cluster,
    id: u64,
    bucket: &str,
    key: &str,
    want: Option<&[&str]>,
    within: Duration,
) -> Duration {
    let want = want.map(strings);
    let started = Instant::now();
    loop {
        let reply = get(cluster, id, bucket, key, "local", None).await;
        let now = shown(&reply);
        if now.as_ref() == Ok(&want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "n{id} never showed {want:?} for {bucket}/{key} locally within {within:?}; \
             last: {now:?}; logs in {}",
            cluster.base.display()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Reads `key` at `consistency` through node `id`, retrying while the
/// cluster settles (503 or no answer), and returns what it shows.
async fn read_settled(
    cluster: &Cluster,
    id: u64,
    bucket: &str,
    key: &str,
    consistency: &str,
) -> Reply {
    let started = Instant::now();
    loop {
        let reply = get(cluster, id, bucket, key, consistency, None).await;
        if reply.status != 503 && reply.status != 0 {
            return reply;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{bucket}/{key} at {consistency} through n{id} kept failing: {} {}; logs in {}",
            reply.status,
            reply.body,
            cluster.base.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn partition(cluster: &Cluster, via: u64, groups: &str) {
    let (status, body) = cluster
        .admin(
            via,
            "/v1/nemesis/partition",
            &format!(r#"{{"groups":{groups}}}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"].as_array().unwrap().len(), 3, "{body}");
}

async fn heal(cluster: &Cluster, via: u64) {
    let (status, body) = cluster.admin(via, "/v1/nemesis/heal", "").await;
    assert_eq!(status, 200, "{body}");
}

/// Sets a nemesis rule (`fields`, like `"delay_ms":1500`) on the directed
/// link `from` -> `to`.
async fn link_rule(cluster: &Cluster, from: u64, to: u64, fields: &str) {
    let (status, body) = cluster
        .admin(
            from,
            "/v1/nemesis/links",
            &format!(r#"{{"from":{from},"to":{to},{fields}}}"#),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Delays every message on the directed link `from` -> `to`.
async fn delay_link(cluster: &Cluster, from: u64, to: u64, delay_ms: u64) {
    link_rule(cluster, from, to, &format!(r#""delay_ms":{delay_ms}"#)).await;
}

/// kill -9 of node `id`, after cutting every link into it. The transport
/// keeps what a node sends to an unreachable peer in its queue (up to 4096
/// messages) and delivers it once the peer is back, so without the cut a
/// restarted node would get the writes it missed from the original
/// replication messages. With it, only hints, anti-entropy or read repair
/// can bring them.
async fn cut_and_kill(cluster: &mut Cluster, id: u64) {
    for from in (1..=3).filter(|from| *from != id) {
        link_rule(cluster, from, id, r#""blocked":true"#).await;
    }
    cluster.kill(id);
}

/// Heals every link (node `id` is down and misses the relay; it starts
/// with no rules), then restarts node `id`; returns when it was started.
async fn heal_and_restart(cluster: &mut Cluster, id: u64) -> Instant {
    let via = if id == 1 { 2 } else { 1 };
    heal(cluster, via).await;
    cluster.spawn(id, common::SECRET);
    Instant::now()
}

async fn create(cluster: &Cluster, bucket: &str, conflict: &str) {
    let (status, body) = cluster.create_ap_bucket(1, bucket, conflict).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mode"], "ap", "{body}");
}

fn ms(duration: Duration) -> u128 {
    duration.as_millis()
}

/// Partition {1} | {2,3}: `one` writes succeed on both sides, a `quorum`
/// write on the minority side is refused with 503 no_quorum within the
/// deadline; after heal the siblings bucket shows both concurrent values
/// under one context and a write with that context resolves them, and the
/// lww bucket converges to one value on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_sides_both_write_then_siblings_resolve_and_lww_converges() {
    let cluster = Cluster::start("ap-partition", 3, &[]).await;
    // Buckets go through Raft: create them while a majority is reachable.
    create(&cluster, "sib", "siblings").await;
    create(&cluster, "lww", "lww").await;
    partition(&cluster, 2, "[[1],[2,3]]").await;

    for (id, value) in [(1, "left"), (2, "right")] {
        let reply = put(&cluster, id, "sib", "k", value, "one", None).await;
        assert_eq!(reply.status, 200, "sib/k on n{id}: {}", reply.body);
        assert_eq!(reply.body["consistency"], "one", "{}", reply.body);
        assert!(reply.body["acks"].as_u64().unwrap() >= 1, "{}", reply.body);
        assert_eq!(reply.body["replicas"], 3, "{}", reply.body);
        assert!(reply.body["context"].is_string(), "{}", reply.body);
        assert!(reply.body["session"].is_string(), "{}", reply.body);
        assert_eq!(
            reply.session_header.as_deref(),
            reply.body["session"].as_str(),
            "the X-Capkv-Session header carries the body's session"
        );
        let reply = put(
            &cluster,
            id,
            "lww",
            "k",
            &format!("lww-{value}"),
            "one",
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "lww/k on n{id}: {}", reply.body);
    }

    // The minority side cannot gather W = 2.
    let started = Instant::now();
    let reply = put(&cluster, 1, "sib", "q", "minority", "quorum", None).await;
    let elapsed = started.elapsed();
    eprintln!(
        "[partition] quorum write on the minority side: {} after {} ms: {}",
        reply.status,
        ms(elapsed),
        reply.body
    );
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.body["error"], "no_quorum", "{}", reply.body);
    assert_eq!(reply.body["required"], 2, "{}", reply.body);
    assert_eq!(reply.body["responded"], 1, "{}", reply.body);
    assert_eq!(reply.body["replicas"], 3, "{}", reply.body);
    assert_eq!(reply.body["outcome"], "stored_on_some", "{}", reply.body);
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    let started = Instant::now();
    let reply = get(&cluster, 1, "sib", "k", "quorum", None).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.body["error"], "no_quorum", "{}", reply.body);
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    // Each side reads its own write.
    let reply = get(&cluster, 1, "sib", "k", "one", None).await;
    assert_eq!(shown(&reply), Ok(Some(strings(&["left"]))));
    let reply = get(&cluster, 3, "sib", "k", "quorum", None).await;
    assert_eq!(shown(&reply), Ok(Some(strings(&["right"]))));

    heal(&cluster, 1).await;
    let healed = Instant::now();

    // lww: one value everywhere, without any client read but local ones.
    let winner = loop {
        let mut seen = Vec::new();
        for id in 1..=3 {
            seen.push(shown(&get(&cluster, id, "lww", "k", "local", None).await));
        }
        if let Ok(Some(first)) = &seen[0] {
            if first.len() == 1 && seen.iter().all(|other| other == &seen[0]) {
                break first[0].clone();
            }
        }
        assert!(
            healed.elapsed() < Duration::from_secs(15),
            "lww/k did not converge: {seen:?}; logs in {}",
            cluster.base.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        winner == "lww-left" || winner == "lww-right",
        "lww kept {winner}"
    );
    eprintln!(
        "[partition] lww converged on every node to {winner:?} {} ms after heal (local reads only)",
        ms(healed.elapsed())
    );

    // The write refused with no_quorum was not undone: it spreads.
    for id in [2, 3] {
        wait_local(
            &cluster,
            id,
            "sib",
            "q",
            Some(&["minority"]),
            Duration::from_secs(10),
        )
        .await;
        eprintln!(
            "[partition] the no_quorum write reached n{id} {} ms after heal",
            ms(healed.elapsed())
        );
    }

    // Siblings: both concurrent values, one context.
    let reply = read_settled(&cluster, 1, "sib", "k", "all").await;
    assert_eq!(
        shown(&reply),
        Ok(Some(strings(&["left", "right"]))),
        "both sides' writes survive as siblings"
    );
    assert_eq!(reply.body["responded"], 3, "{}", reply.body);
    let context = reply.body["context"].as_str().unwrap().to_string();
    let reply = put(
        &cluster,
        2,
        "sib",
        "k",
        "resolved",
        "quorum",
        Some(&context),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    for id in 1..=3 {
        let reply = read_settled(&cluster, id, "sib", "k", "all").await;
        assert_eq!(
            shown(&reply),
            Ok(Some(strings(&["resolved"]))),
            "through n{id}"
        );
    }
    for id in 1..=3 {
        wait_local(
            &cluster,
            id,
            "sib",
            "k",
            Some(&["resolved"]),
            Duration::from_secs(5),
        )
        .await;
    }
}

/// Hinted handoff: node 3 is down while node 1 coordinates quorum writes;
/// node 1 keeps hints and delivers them when node 3 is back (anti-entropy
/// off, and no client read but `local` probes on node 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hinted_handoff_delivers_writes_a_dead_replica_missed() {
    const KEYS: usize = 20;
    let mut cluster = Cluster::start("ap-hints", 3, &["--ae-interval-ms", "0"]).await;
    create(&cluster, "h", "siblings").await;
    // n3 knows the bucket before it dies.
    wait_local(&cluster, 3, "h", "absent", None, Duration::from_secs(5)).await;
    cut_and_kill(&mut cluster, 3).await;
    for i in 0..KEYS {
        let reply = put(
            &cluster,
            1,
            "h",
            &format!("k{i}"),
            &format!("v{i}"),
            "quorum",
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "k{i}: {}", reply.body);
        assert_eq!(reply.body["acks"], 2, "{}", reply.body);
    }
    // Hints are made at each write's deadline (about 1 s).
    let started = Instant::now();
    loop {
        let pending = cluster
            .metric(1, "capkv_ap_hints_pending")
            .await
            .unwrap_or(0.0);
        if pending >= KEYS as f64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "n1 holds {pending} hints, expected {KEYS}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "[hints] n1 holds {KEYS} hints for n3 {} ms after the last write",
        ms(started.elapsed())
    );

    let restarted = heal_and_restart(&mut cluster, 3).await;
    for i in 0..KEYS {
        let value = format!("v{i}");
        wait_local(
            &cluster,
            3,
            "h",
            &format!("k{i}"),
            Some(&[value.as_str()]),
            Duration::from_secs(15),
        )
        .await;
    }
    let took = restarted.elapsed();
    eprintln!(
        "[hints] n3 held all {KEYS} keys locally {} ms after its restart (process start included)",
        ms(took)
    );
    // The acknowledgements of the deliveries follow the data.
    let started = Instant::now();
    loop {
        let delivered = cluster.metric(1, "capkv_ap_hints_delivered_total").await;
        let pending = cluster.metric(1, "capkv_ap_hints_pending").await;
        if delivered >= Some(KEYS as f64) && pending == Some(0.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "n1 delivered {delivered:?} hints and holds {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        cluster.metric(3, "capkv_ap_ae_keys_repaired_total").await,
        Some(0.0),
        "anti-entropy is off: the hints did the work"
    );
}

/// Anti-entropy: with hinted handoff off, a replica that missed writes while
/// it was down gets them from Merkle exchanges alone (no client read but
/// `local` probes on it, which do no read repair).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_repairs_a_replica_that_missed_writes() {
    const KEYS: usize = 20;
    let mut cluster =
        Cluster::start("ap-ae", 3, &["--hints-max", "0", "--ae-interval-ms", "500"]).await;
    create(&cluster, "ae", "siblings").await;
    wait_local(&cluster, 3, "ae", "absent", None, Duration::from_secs(5)).await;
    cut_and_kill(&mut cluster, 3).await;
    for i in 0..KEYS {
        let reply = put(
            &cluster,
            1,
            "ae",
            &format!("k{i}"),
            &format!("v{i}"),
            "quorum",
            None,
        )
        .await;
        assert_eq!(reply.status, 200, "k{i}: {}", reply.body);
    }
    // Wait past the writes' deadline: the hints they would have made are
    // dropped.
    let started = Instant::now();
    while cluster
        .metric(1, "capkv_ap_hints_dropped_total")
        .await
        .unwrap_or(0.0)
        < KEYS as f64
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "n1 did not drop its hints"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cluster.metric(1, "capkv_ap_hints_pending").await, Some(0.0));

    let restarted = heal_and_restart(&mut cluster, 3).await;
    for i in 0..KEYS {
        let value = format!("v{i}");
        wait_local(
            &cluster,
            3,
            "ae",
            &format!("k{i}"),
            Some(&[value.as_str()]),
            Duration::from_secs(15),
        )
        .await;
    }
    let took = restarted.elapsed();
    eprintln!(
        "[anti-entropy] n3 held all {KEYS} keys locally {} ms after its restart \
         (ae every 500 ms, hints off, process start included)",
        ms(took)
    );
    let repaired = cluster
        .metric(3, "capkv_ap_ae_keys_repaired_total")
        .await
        .unwrap();
    let exchanges: f64 = {
        let mut total = 0.0;
        for id in 1..=3 {
            total += cluster
                .metric(id, "capkv_ap_ae_exchanges_total")
                .await
                .unwrap();
        }
        total
    };
    let (_, view) = cluster
        .request(cluster.client.get(cluster.url(3, "/v1/cluster")))
        .await;
    eprintln!(
        "[anti-entropy] n3 repaired {repaired} keys; {exchanges} exchanges in the cluster; \
         n3 /v1/cluster ap: {}",
        view["ap"]
    );
    assert!(
        repaired >= KEYS as f64,
        "n3 says anti-entropy repaired {repaired} keys"
    );
    assert_eq!(view["ap"]["ae_keys_repaired"], repaired as u64);
    assert_eq!(
        cluster.metric(3, "capkv_ap_read_repairs_total").await,
        Some(0.0)
    );
}

/// Replication lag at `local`: with node 3's incoming links delayed by
/// 1.5 s, a quorum write through node 1 is acknowledged at once, node 3
/// still shows the old value locally, and shows the new one after the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_reads_show_replication_lag() {
    const DELAY_MS: u64 = 1_500;
    let cluster = Cluster::start("ap-lag", 3, &[]).await;
    create(&cluster, "lag", "siblings").await;
    let reply = put(&cluster, 1, "lag", "k", "old", "all", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    wait_local(
        &cluster,
        3,
        "lag",
        "k",
        Some(&["old"]),
        Duration::from_secs(5),
    )
    .await;
    let context = reply.body["context"].as_str().unwrap().to_string();
    delay_link(&cluster, 1, 3, DELAY_MS).await;
    delay_link(&cluster, 2, 3, DELAY_MS).await;

    let t0 = Instant::now();
    let reply = put(&cluster, 1, "lag", "k", "new", "quorum", Some(&context)).await;
    let acked = t0.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["acks"], 2, "{}", reply.body);
    let reply = get(&cluster, 3, "lag", "k", "local", None).await;
    let first_local = t0.elapsed();
    let first = shown(&reply);
    let reply = get(&cluster, 1, "lag", "k", "local", None).await;
    assert_eq!(
        shown(&reply),
        Ok(Some(strings(&["new"]))),
        "n1 has its write"
    );
    let lag = wait_local(
        &cluster,
        3,
        "lag",
        "k",
        Some(&["new"]),
        Duration::from_secs(10),
    )
    .await;
    let seen_new = t0.elapsed();
    eprintln!("[lag] timeline (links 1->3 and 2->3 delayed {DELAY_MS} ms):");
    eprintln!("[lag]   t=0 ms      PUT k=new consistency=quorum through n1");
    eprintln!("[lag]   t={:<5} ms  acknowledged (acks=2)", ms(acked));
    eprintln!(
        "[lag]   t={:<5} ms  GET consistency=local on n3 -> {first:?}",
        ms(first_local)
    );
    eprintln!(
        "[lag]   t={:<5} ms  n3 shows new locally ({} ms of polling)",
        ms(seen_new),
        ms(lag)
    );
    assert_eq!(
        first,
        Ok(Some(strings(&["old"]))),
        "n3 still has the old value"
    );
    assert!(
        acked < Duration::from_millis(DELAY_MS),
        "ack took {acked:?}"
    );
    assert!(
        seen_new >= Duration::from_millis(DELAY_MS - 200),
        "n3 saw the write after {seen_new:?}, before the delay"
    );
}

/// Read-your-writes: node 1's replication to node 3 is delayed; a write
/// through node 1 returns a session token, and a read on node 3 with the
/// token returns the write (at `local` and at `one`) while a `local` read
/// without it still shows the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_token_gives_read_your_writes_on_a_lagging_replica() {
    let cluster = Cluster::start("ap-session", 3, &[]).await;
    create(&cluster, "s", "siblings").await;
    let reply = put(&cluster, 1, "s", "k", "old", "all", None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let context = reply.body["context"].as_str().unwrap().to_string();
    wait_local(
        &cluster,
        3,
        "s",
        "k",
        Some(&["old"]),
        Duration::from_secs(5),
    )
    .await;
    // Only the replication path n1 -> n3 lags; n2 answers n3 at once.
    delay_link(&cluster, 1, 3, 3_000).await;

    let reply = put(&cluster, 1, "s", "k", "new", "quorum", Some(&context)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let session = reply.body["session"].as_str().unwrap().to_string();
    assert_eq!(reply.session_header.as_deref(), Some(session.as_str()));

    let reply = get(&cluster, 3, "s", "k", "local", None).await;
    assert_eq!(
        shown(&reply),
        Ok(Some(strings(&["old"]))),
        "without the session, n3's own copy is still the old one"
    );
    let started = Instant::now();
    let reply = get(&cluster, 3, "s", "k", "local", Some(&session)).await;
    let took = started.elapsed();
    assert_eq!(
        shown(&reply),
        Ok(Some(strings(&["new"]))),
        "a local read with the session sees the write"
    );
    let with_header = send(
        cluster
            .client
            .get(cluster.url(3, "/v1/kv/s/k?consistency=one"))
            .header("x-capkv-session", &session),
    )
    .await;
    assert_eq!(
        shown(&with_header),
        Ok(Some(strings(&["new"]))),
        "a read at one with the session header sees the write"
    );
    eprintln!(
        "[session] n3: local without session -> old; local with session -> new in {} ms",
        ms(took)
    );
}

/// Deletes stay deleted: through partition and heal, kill -9 and restart,
/// hints and anti-entropy, every node reads 404 at `all`; a replica that
/// was down during the delete does not bring the value back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_stay_deleted_through_faults_hints_and_anti_entropy() {
    let mut cluster = Cluster::start("ap-delete", 3, &["--ae-interval-ms", "500"]).await;
    create(&cluster, "d", "siblings").await;
    for key in ["gone", "missed"] {
        let reply = put(&cluster, 1, "d", key, "alive", "all", None).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let reply = get(&cluster, 2, "d", "gone", "all", None).await;
    assert_eq!(shown(&reply), Ok(Some(strings(&["alive"]))));
    let context = reply.body["context"].as_str().unwrap().to_string();
    let reply = delete(&cluster, 2, "d", "gone", "quorum", Some(&context)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body["context"].is_string(), "{}", reply.body);
    assert!(reply.body["session"].is_string(), "{}", reply.body);

    // n3 is down while "missed" is deleted.
    cut_and_kill(&mut cluster, 3).await;
    let reply = get(&cluster, 1, "d", "missed", "quorum", None).await;
    assert_eq!(shown(&reply), Ok(Some(strings(&["alive"]))));
    let context = reply.body["context"].as_str().unwrap().to_string();
    let reply = delete(&cluster, 1, "d", "missed", "quorum", Some(&context)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    heal_and_restart(&mut cluster, 3).await;
    // n3 comes back with the live value and learns the delete from hints or
    // anti-entropy, with no client read to repair it.
    let took = wait_local(&cluster, 3, "d", "missed", None, Duration::from_secs(15)).await;
    eprintln!(
        "[delete] n3 (down during the delete) holds the tombstone {} ms after its restart \
         (n3 keys repaired by anti-entropy: {:?}; hints delivered by n1: {:?})",
        ms(took),
        cluster.metric(3, "capkv_ap_ae_keys_repaired_total").await,
        cluster.metric(1, "capkv_ap_hints_delivered_total").await,
    );

    async fn all_deleted(cluster: &Cluster, step: &str) {
        for key in ["gone", "missed"] {
            for id in 1..=3 {
                let reply = read_settled(cluster, id, "d", key, "all").await;
                assert_eq!(
                    (reply.status, &reply.body["error"]),
                    (404, &Value::from("not_found")),
                    "{step}: d/{key} through n{id} came back: {}",
                    reply.body
                );
            }
        }
        eprintln!("[delete] {step}: 404 at all on every node");
    }
    all_deleted(&cluster, "after the deletes").await;

    partition(&cluster, 1, "[[1],[2,3]]").await;
    let reply = get(&cluster, 1, "d", "gone", "one", None).await;
    assert_eq!(shown(&reply), Ok(None), "the minority side still reads 404");
    heal(&cluster, 1).await;
    all_deleted(&cluster, "after partition and heal").await;

    cluster.kill(2);
    cluster.spawn(2, common::SECRET);
    all_deleted(&cluster, "after kill -9 and restart of n2").await;

    // Hints and anti-entropy (every 500 ms) run a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in 1..=3 {
        for key in ["gone", "missed"] {
            let reply = get(&cluster, id, "d", key, "local", None).await;
            assert_eq!(shown(&reply), Ok(None), "n{id} holds d/{key} locally");
        }
    }
    all_deleted(&cluster, "after 2 s of hints and anti-entropy").await;
}
