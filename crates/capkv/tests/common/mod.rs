//! A real cluster for integration tests: `capkv node` processes on loopback,
//! each with its own data directory, killed for real.
//!
//! Everything is bounded in time, and `Drop` kills every process the test
//! started, so a failing test leaves nothing behind.

#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "integration-secret";
pub const ADMIN: &str = "integration-admin";

pub struct Member {
    pub id: u64,
    pub peer: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub child: Option<Child>,
}

pub struct Cluster {
    pub members: Vec<Member>,
    pub base: PathBuf,
    pub client: reqwest::Client,
    pub extra_args: Vec<String>,
}

impl Cluster {
    /// Starts `n` nodes and waits until they agree on a leader.
    pub async fn start(name: &str, n: u64, extra_args: &[&str]) -> Cluster {
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let serial = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base =
            std::env::temp_dir().join(format!("capkv-it-{name}-{}-{serial}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let members = (1..=n)
            .map(|id| Member {
                id,
                peer: capkv_testkit::loopback_address(),
                http: capkv_testkit::loopback_address(),
                data_dir: base.join(format!("n{id}")),
                child: None,
            })
            .collect();
        let mut cluster = Cluster {
            members,
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        for id in 1..=n {
            cluster.spawn(id, SECRET);
        }
        cluster.wait_for_leader(None, Duration::from_secs(15)).await;
        cluster
    }

    pub fn member(&self, id: u64) -> &Member {
        &self.members[(id - 1) as usize]
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        format!("http://{}{}", self.member(id).http, path)
    }

    /// Starts node `id` (again), with `secret`.
    pub fn spawn(&mut self, id: u64, secret: &str) {
        let peers: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.id, m.peer))
            .collect();
        let peer_http: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.id, m.http))
            .collect();
        let member = &self.members[(id - 1) as usize];
        std::fs::create_dir_all(&member.data_dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.join(format!("n{id}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_capkv"))
            .arg("node")
            .args(["--id", &id.to_string()])
            .args(["--data-dir", member.data_dir.to_str().unwrap()])
            .args(["--listen", &member.peer.to_string()])
            .args(["--http", &member.http.to_string()])
            .args(["--peers", &peers.join(",")])
            .args(["--peer-http", &peer_http.join(",")])
            .args(["--cluster-secret", secret])
            .args(["--admin-token", ADMIN])
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.members[(id - 1) as usize].child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.members[(id - 1) as usize].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The node's view of group 0, if it answers.
    pub async fn group(&self, id: u64) -> Option<Value> {
        let response = self
            .client
            .get(self.url(id, "/v1/cluster"))
            .timeout(Duration::from_millis(500))
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        Some(body["groups"][0].clone())
    }

    /// The last lines each of `ids` logged, for a failure message: a node
    /// that does not answer has usually said why before it stopped.
    pub fn log_tails(&self, ids: &[u64]) -> String {
        let mut tails = String::new();
        for id in ids {
            let log = std::fs::read_to_string(self.base.join(format!("n{id}.log")))
                .unwrap_or_else(|error| format!("(no log: {error})"));
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(12);
            tails.push_str(&format!("\n--- n{id}.log, last lines ---\n"));
            tails.push_str(&lines[from..].join("\n"));
        }
        tails
    }

    /// Waits until every live node except `except` names the same leader,
    /// and returns it.
    pub async fn wait_for_leader(&self, except: Option<u64>, within: Duration) -> u64 {
        let started = Instant::now();
        loop {
            let mut leaders = Vec::new();
            let mut silent = Vec::new();
            for member in &self.members {
                if Some(member.id) == except || member.child.is_none() {
                    continue;
                }
                match self.group(member.id).await {
                    Some(group) => leaders.push(group["leader"].as_u64()),
                    None => silent.push(member.id),
                }
            }
            if silent.is_empty() && !leaders.is_empty() {
                if let Some(Some(leader)) = leaders.first() {
                    if Some(*leader) != except && leaders.iter().all(|l| *l == Some(*leader)) {
                        return *leader;
                    }
                }
            }
            assert!(
                started.elapsed() < within,
                "no agreed leader within {within:?}; views: {leaders:?}; silent: {silent:?}; \
                 logs in {}{}",
                self.base.display(),
                self.log_tails(&silent)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn put(&self, id: u64, bucket: &str, key: &str, value: &str) -> (u16, Value) {
        self.request(
            self.client
                .put(self.url(id, &format!("/v1/kv/{bucket}/{key}")))
                .body(value.to_string()),
        )
        .await
    }

    pub async fn get(&self, id: u64, bucket: &str, key: &str, consistency: &str) -> (u16, Value) {
        self.request(self.client.get(self.url(
            id,
            &format!("/v1/kv/{bucket}/{key}?consistency={consistency}"),
        )))
        .await
    }

    pub async fn create_bucket(&self, id: u64, bucket: &str) -> (u16, Value) {
        self.request(
            self.client
                .put(self.url(id, &format!("/v1/buckets/{bucket}")))
                .body(r#"{"mode":"cp"}"#),
        )
        .await
    }

    /// Creates an ap bucket (3 replicas, quorum levels) with `conflict`
    /// (`siblings` or `lww`).
    pub async fn create_ap_bucket(&self, id: u64, bucket: &str, conflict: &str) -> (u16, Value) {
        let body = format!(
            r#"{{"mode":"ap","replicas":3,"conflict":"{conflict}","read":"quorum","write":"quorum"}}"#
        );
        self.request(
            self.client
                .put(self.url(id, &format!("/v1/buckets/{bucket}")))
                .body(body),
        )
        .await
    }

    /// One sample of node `id`'s `/metrics` (the line `name{...} value`),
    /// if the node answers and has it.
    pub async fn metric(&self, id: u64, name: &str) -> Option<f64> {
        let text = self
            .client
            .get(self.url(id, "/metrics"))
            .timeout(Duration::from_millis(1_000))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .find(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
    }

    pub async fn admin(&self, id: u64, path: &str, body: &str) -> (u16, Value) {
        self.request(
            self.client
                .post(self.url(id, path))
                .bearer_auth(ADMIN)
                .body(body.to_string()),
        )
        .await
    }

    pub async fn request(&self, builder: reqwest::RequestBuilder) -> (u16, Value) {
        match builder.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.json().await.unwrap_or(Value::Null);
                (status, body)
            }
            Err(error) => (0, Value::from(error.to_string())),
        }
    }

    /// Retries a write until it succeeds (leader elections take a moment).
    pub async fn put_eventually(&self, id: u64, bucket: &str, key: &str, value: &str) -> Value {
        let started = Instant::now();
        loop {
            let (status, body) = self.put(id, bucket, key, value).await;
            if status == 200 {
                return body;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "write {key} never succeeded: {status} {body}; logs in {}",
                self.base.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stop_all(&mut self) {
        for id in 1..=self.members.len() as u64 {
            self.kill(id);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}
