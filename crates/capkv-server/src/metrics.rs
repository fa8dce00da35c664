//! Counters and gauges for `GET /metrics`, in Prometheus text format.

use crate::event_loop::Status;
use capkv_node::DynamoStats;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the fsync latency histogram, in seconds.
const SYNC_BUCKETS_SECONDS: [f64; 10] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0];

/// Everything the server counts. Updated from the loop thread and the HTTP
/// tasks; read by `/metrics`.
#[derive(Default)]
pub struct Metrics {
    /// HTTP responses by (route, status code, error code).
    requests: Mutex<BTreeMap<(String, u16, String), u64>>,
    sync_count: AtomicU64,
    sync_micros_total: AtomicU64,
    sync_buckets: [AtomicU64; 10],
    batch_ops_total: AtomicU64,
    turns_total: AtomicU64,
    inputs_total: AtomicU64,
}

impl Metrics {
    /// Counts one HTTP response.
    pub fn observe_request(&self, route: &str, status: u16, code: &str) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests
                .entry((route.to_string(), status, code.to_string()))
                .or_insert(0) += 1;
        }
    }

    /// Counts one fsync of a batch with `ops` operations.
    pub fn observe_sync(&self, elapsed: Duration, ops: usize) {
        self.sync_count.fetch_add(1, Ordering::Relaxed);
        self.sync_micros_total
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.batch_ops_total
            .fetch_add(ops as u64, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in SYNC_BUCKETS_SECONDS.iter().zip(&self.sync_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts one loop turn that handled `inputs` inputs.
    pub fn observe_inputs(&self, inputs: usize) {
        self.turns_total.fetch_add(1, Ordering::Relaxed);
        self.inputs_total
            .fetch_add(inputs as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, status: &Status) -> String {
        let mut out = String::new();
        let node = status.node_id.0;
        let _ = writeln!(
            out,
            "# HELP capkv_http_requests_total HTTP responses by route, status and error code."
        );
        let _ = writeln!(out, "# TYPE capkv_http_requests_total counter");
        if let Ok(requests) = self.requests.lock() {
            for ((route, status_code, code), count) in requests.iter() {
                let _ = writeln!(
                    out,
                    "capkv_http_requests_total{{node=\"{node}\",route=\"{route}\",status=\"{status_code}\",code=\"{code}\"}} {count}"
                );
            }
        }
        let gauge = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name}{{node=\"{node}\",group=\"0\"}} {value}");
        };
        gauge(
            &mut out,
            "capkv_raft_term",
            "Current Raft term.",
            status.term.0,
        );
        gauge(
            &mut out,
            "capkv_raft_commit_index",
            "Raft commit index.",
            status.commit_index.0,
        );
        gauge(
            &mut out,
            "capkv_raft_applied_index",
            "Index applied to the key-value state.",
            status.applied_index.0,
        );
        gauge(
            &mut out,
            "capkv_raft_last_index",
            "Last index of the Raft log.",
            status.last_index.0,
        );
        gauge(
            &mut out,
            "capkv_raft_snapshot_index",
            "Index of the latest snapshot.",
            status.snapshot_index.0,
        );
        let _ = writeln!(
            out,
            "# HELP capkv_raft_role 1 for the role this node plays now."
        );
        let _ = writeln!(out, "# TYPE capkv_raft_role gauge");
        for role in ["follower", "pre_candidate", "candidate", "leader"] {
            let value = u8::from(status.role.as_str() == role);
            let _ = writeln!(
                out,
                "capkv_raft_role{{node=\"{node}\",group=\"0\",role=\"{role}\"}} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP capkv_fsync_seconds Latency of the one fsync of each loop turn."
        );
        let _ = writeln!(out, "# TYPE capkv_fsync_seconds histogram");
        for (bound, bucket) in SYNC_BUCKETS_SECONDS.iter().zip(&self.sync_buckets) {
            let _ = writeln!(
                out,
                "capkv_fsync_seconds_bucket{{node=\"{node}\",le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.sync_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "capkv_fsync_seconds_bucket{{node=\"{node}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "capkv_fsync_seconds_sum{{node=\"{node}\"}} {}",
            self.sync_micros_total.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "capkv_fsync_seconds_count{{node=\"{node}\"}} {count}");
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name}{{node=\"{node}\"}} {value}");
        };
        counter(&mut out, "capkv_batch_ops_total", "Storage operations written in synced batches (batch size = this / capkv_fsync_seconds_count).", self.batch_ops_total.load(Ordering::Relaxed));
        counter(
            &mut out,
            "capkv_loop_turns_total",
            "Event-loop turns.",
            self.turns_total.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "capkv_loop_inputs_total",
            "Inputs handled by the event loop (inputs per turn = this / turns).",
            self.inputs_total.load(Ordering::Relaxed),
        );
        render_ap(&mut out, node, &status.ap);
        out
    }
}

/// The ap engine's counters (`capkv_ap_*_total`) and gauges.
fn render_ap(out: &mut String, node: u64, stats: &DynamoStats) {
    let counters: [(&str, &str, u64); 12] = [
        (
            "writes",
            "ap writes coordinated by this node.",
            stats.writes,
        ),
        ("reads", "ap reads coordinated by this node.", stats.reads),
        (
            "no_quorum",
            "ap requests answered no_quorum.",
            stats.no_quorum,
        ),
        (
            "read_repairs",
            "Replicas sent a merged object by read repair.",
            stats.read_repairs,
        ),
        (
            "hints_stored",
            "Hints stored for unreachable replicas.",
            stats.hints_stored,
        ),
        (
            "hints_delivered",
            "Hints delivered and acknowledged.",
            stats.hints_delivered,
        ),
        (
            "hints_dropped",
            "Hints dropped (full, expired or hinted handoff off).",
            stats.hints_dropped,
        ),
        (
            "ae_exchanges",
            "Anti-entropy exchanges started.",
            stats.ae_exchanges,
        ),
        (
            "ae_in_sync",
            "Anti-entropy exchanges that found the trees equal.",
            stats.ae_in_sync,
        ),
        (
            "ae_keys_repaired",
            "Keys changed by anti-entropy on this node.",
            stats.ae_keys_repaired,
        ),
        (
            "tombstones_reaped",
            "Tombstones removed after their grace period.",
            stats.tombstones_reaped,
        ),
        (
            "stale_writes_refused",
            "Writes refused for being older than the hint ttl.",
            stats.stale_writes_refused,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP capkv_ap_{name}_total {help}");
        let _ = writeln!(out, "# TYPE capkv_ap_{name}_total counter");
        let _ = writeln!(out, "capkv_ap_{name}_total{{node=\"{node}\"}} {value}");
    }
    let gauges: [(&str, &str, u64); 2] = [
        ("hints_pending", "Hints held now.", stats.hints_pending),
        (
            "objects",
            "ap objects (keys, tombstones included) held by this node.",
            stats.objects,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP capkv_ap_{name} {help}");
        let _ = writeln!(out, "# TYPE capkv_ap_{name} gauge");
        let _ = writeln!(out, "capkv_ap_{name}{{node=\"{node}\"}} {value}");
    }
}
