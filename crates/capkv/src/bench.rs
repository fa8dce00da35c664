//! `capkv bench`: a closed-loop load generator. N tasks each send one request
//! at a time for a fixed duration, over keys chosen uniformly; latencies of
//! successful requests go into HDR histograms (one per operation kind),
//! errors are counted by their stable code.
//!
//! `--workload ap-write|ap-read` measures an ap bucket at the level given by
//! `--consistency`; `--compare` runs cp writes and reads and ap writes and
//! reads at one, quorum and all back to back against the same cluster and
//! prints one table (throughput, p50, p99 per row).
//!
//! Bounded: no request starts after the deadline, each request has the
//! client's timeout, and the whole run is abandoned if tasks are still busy
//! a grace period after the deadline.

use crate::client_commands::{ConsistencyArg, ModeArg, EXIT_BAD_ARGUMENTS, EXIT_SERVER_ERROR};
use capkv_client::{
    ApReadOptions, ApWriteOptions, BucketMode, BucketSpec, Client, ClientError, ConflictMode,
    Consistency, GetOptions, PutOptions,
};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most concurrent clients; each is a tokio task with its own connection.
const CLIENTS_MAX: u32 = 4_096;
/// Largest value the bench writes (the server's own limit may be lower).
const VALUE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Longest run.
const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);
/// Highest latency the histograms record, in microseconds; slower requests
/// are recorded as this value. The client's timeout is far below it.
const LATENCY_MICROS_MAX: u64 = 600_000_000;
/// Time the run waits after the deadline for in-flight requests.
const FINISH_GRACE: Duration = Duration::from_secs(2);

/// The mix of operations.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Only writes.
    Write,
    /// Only reads (keys are written once before the timed run).
    Read,
    /// Half reads, half writes.
    Mixed,
    /// Only writes to an ap bucket, at `--consistency` (one, quorum, all).
    ApWrite,
    /// Only reads of an ap bucket, at `--consistency` (local, one, quorum,
    /// all); keys are written once before the timed run.
    ApRead,
}

/// Arguments of `capkv bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A node's HTTP address; repeat it to spread clients over nodes.
    #[arg(
        long = "endpoint",
        env = "CAPKV_ENDPOINT",
        default_value = "http://127.0.0.1:8001",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    /// The bucket to use.
    #[arg(long, default_value = "bench")]
    pub bucket: String,
    /// write, read or mixed (50% reads).
    #[arg(long, value_enum, default_value = "write")]
    pub workload: Workload,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    /// How long to run, like 10s, 500ms, 2m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Bytes per written value.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Number of distinct keys, chosen uniformly.
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// Read consistency; one, quorum and all apply to writes too.
    #[arg(long, value_enum)]
    pub consistency: Option<ConsistencyArg>,
    /// Create the bucket with this mode first (no error if it exists).
    #[arg(long, value_enum)]
    pub create_bucket: Option<ModeArg>,
    /// Client-side timeout of one request, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    pub request_timeout_ms: u64,
    /// Run the comparison instead of one workload: cp writes and
    /// linearizable reads, then ap writes and reads at one, quorum and all,
    /// each for --duration, on buckets BUCKET-cp and BUCKET-ap (created as
    /// needed; the ap one with lww so blind writes do not pile up
    /// siblings).
    #[arg(long)]
    pub compare: bool,
}

/// Parses `10s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 10s, 500ms or 2m"))?;
    let milliseconds_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s, m or h"
            ))
        }
    };
    let milliseconds = value
        .checked_mul(milliseconds_per_unit)
        .ok_or_else(|| format!("{text:?} is too long"))?;
    Ok(Duration::from_millis(milliseconds))
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Write => "write",
            Workload::Read => "read",
            Workload::Mixed => "mixed (50% reads)",
            Workload::ApWrite => "ap write",
            Workload::ApRead => "ap read",
        }
    }

    fn is_ap(self) -> bool {
        matches!(self, Workload::ApWrite | Workload::ApRead)
    }
}

/// The kinds of operation, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// A read.
    Read,
    /// A write.
    Write,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
        }
    }
}

/// What the run measured.
pub struct Summary {
    /// Time from the start of the run to the last task finishing.
    pub elapsed: Duration,
    /// Latency in microseconds of successful requests, per kind.
    pub latencies: BTreeMap<Operation, Histogram<u64>>,
    /// Failed requests per error code.
    pub errors: BTreeMap<String, u64>,
}

impl Summary {
    fn successful_ops(&self) -> u64 {
        self.latencies.values().map(Histogram::len).sum()
    }
}

/// Microseconds as milliseconds with three decimals.
pub fn format_ms(micros: u64) -> String {
    format!("{}.{:03}", micros / 1_000, micros % 1_000)
}

/// The final report: totals, errors by code, and percentiles per kind.
pub fn format_report(summary: &Summary) -> String {
    let ops = summary.successful_ops();
    let seconds = summary.elapsed.as_secs_f64().max(f64::EPSILON);
    let error_total: u64 = summary.errors.values().sum();
    let mut text = format!(
        "ops        {ops}\nops/s      {:.1}\nerrors     {error_total}",
        ops as f64 / seconds
    );
    if error_total > 0 {
        let by_code: Vec<String> = summary
            .errors
            .iter()
            .map(|(code, count)| format!("{code} {count}"))
            .collect();
        text.push_str(&format!(" ({})", by_code.join(", ")));
    }
    text.push('\n');
    let mut rows = vec![["latency ms", "count", "p50", "p99", "p99.9", "max"]
        .map(String::from)
        .to_vec()];
    for (operation, histogram) in &summary.latencies {
        if histogram.is_empty() {
            continue;
        }
        rows.push(vec![
            operation.name().to_string(),
            histogram.len().to_string(),
            format_ms(histogram.value_at_quantile(0.5)),
            format_ms(histogram.value_at_quantile(0.99)),
            format_ms(histogram.value_at_quantile(0.999)),
            format_ms(histogram.max()),
        ]);
    }
    if rows.len() > 1 {
        text.push_str(&crate::client_commands::format_table(&rows));
    }
    text
}

fn new_histogram() -> Histogram<u64> {
    // Three significant digits: 0.1% resolution, as latency reports need.
    Histogram::new_with_bounds(1, LATENCY_MICROS_MAX, 3)
        .expect("the histogram bounds are valid constants")
}

/// Counters the progress line reads while the tasks run.
#[derive(Default)]
struct Progress {
    /// Successful requests so far.
    ops: AtomicU64,
    /// Failed requests so far.
    errors: AtomicU64,
    /// Set on Ctrl-C: tasks stop before their next request.
    stop: AtomicBool,
}

/// What one task measured.
struct TaskResult {
    latencies: BTreeMap<Operation, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
}

/// Everything a task needs, shared.
struct Plan {
    bucket: String,
    workload: Workload,
    keys: u64,
    value: Vec<u8>,
    get_options: GetOptions,
    put_options: PutOptions,
    ap_read_options: ApReadOptions,
    ap_write_options: ApWriteOptions,
    deadline: Instant,
}

/// One run of the comparison: a workload at a level.
struct Step {
    workload: Workload,
    consistency: Option<ConsistencyArg>,
}

/// Runs `capkv bench` and returns the exit code.
pub fn run(args: BenchArgs) -> u8 {
    if let Err(error) = check_args(&args) {
        eprintln!("capkv bench: {error}");
        return EXIT_BAD_ARGUMENTS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("capkv bench: cannot start the async runtime: {error}");
            return EXIT_SERVER_ERROR;
        }
    };
    match runtime.block_on(bench(args)) {
        Ok(code) => code,
        Err(error) => crate::client_commands::report_error("bench", &error),
    }
}

fn check_args(args: &BenchArgs) -> Result<(), String> {
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        return Err(format!("--clients must be 1..={CLIENTS_MAX}"));
    }
    if args.duration.is_zero() || args.duration > DURATION_MAX {
        return Err("--duration must be more than 0 and at most 24h".into());
    }
    if args.value_bytes > VALUE_BYTES_MAX {
        return Err(format!("--value-bytes must be at most {VALUE_BYTES_MAX}"));
    }
    if args.keys == 0 {
        return Err("--keys must be at least 1".into());
    }
    if args.request_timeout_ms == 0 {
        return Err("--request-timeout-ms must be at least 1".into());
    }
    if args.compare {
        return Ok(());
    }
    check_level(args.workload, args.consistency)
}

/// ap workloads take ap levels (writes: one, quorum, all; reads: local too);
/// cp workloads take cp read levels.
fn check_level(workload: Workload, consistency: Option<ConsistencyArg>) -> Result<(), String> {
    let Some(level) = consistency else {
        return Ok(());
    };
    match workload {
        Workload::ApWrite if !level.applies_to_writes() => {
            Err("--workload ap-write takes --consistency one, quorum or all".into())
        }
        Workload::ApRead if !level.is_ap() => {
            Err("--workload ap-read takes --consistency local, one, quorum or all".into())
        }
        Workload::Write | Workload::Read | Workload::Mixed if level.is_ap() => Err(format!(
            "{} is an ap level: use --workload ap-write or ap-read (cp workloads take \
             linearizable or stale)",
            level.to_client().as_str()
        )),
        _ => Ok(()),
    }
}

async fn bench(args: BenchArgs) -> Result<u8, ClientError> {
    let template = Client::new(&args.endpoints[0])?
        .with_timeout(Duration::from_millis(args.request_timeout_ms));
    let clients: Vec<Client> = args
        .endpoints
        .iter()
        .map(|endpoint| template.at(endpoint))
        .collect::<Result<_, _>>()?;
    if args.compare {
        return compare(&template, &clients, &args).await;
    }
    if let Some(mode) = args.create_bucket {
        create_bucket(&template, &args.bucket, mode.to_client()).await?;
    }
    let summary = run_workload(
        &clients,
        &args,
        &args.bucket,
        args.workload,
        args.consistency,
    )
    .await?;
    print!("{}", format_report(&summary));
    Ok(0)
}

/// Creates a bench bucket (an ap one with lww: blind writes in siblings
/// mode would pile up siblings until the object is too large).
async fn create_bucket(client: &Client, bucket: &str, mode: BucketMode) -> Result<(), ClientError> {
    let spec = match mode {
        BucketMode::Cp => BucketSpec::new(BucketMode::Cp),
        BucketMode::Ap => BucketSpec {
            conflict: Some(ConflictMode::Lww),
            ..BucketSpec::new(BucketMode::Ap)
        },
    };
    let created = client.create_bucket(bucket, &spec).await?;
    println!(
        "bucket {} ({}{}) {}",
        created.bucket,
        created.mode,
        created
            .conflict
            .map_or(String::new(), |conflict| format!(", {conflict}")),
        if created.created { "created" } else { "exists" }
    );
    Ok(())
}

/// The comparison: every step for `--duration` against the same cluster,
/// then one table.
async fn compare(
    template: &Client,
    clients: &[Client],
    args: &BenchArgs,
) -> Result<u8, ClientError> {
    let cp_bucket = format!("{}-cp", args.bucket);
    let ap_bucket = format!("{}-ap", args.bucket);
    create_bucket(template, &cp_bucket, BucketMode::Cp).await?;
    create_bucket(template, &ap_bucket, BucketMode::Ap).await?;
    let mut steps = vec![
        Step {
            workload: Workload::Write,
            consistency: None,
        },
        Step {
            workload: Workload::Read,
            consistency: Some(ConsistencyArg::Linearizable),
        },
    ];
    for workload in [Workload::ApWrite, Workload::ApRead] {
        for level in [
            ConsistencyArg::One,
            ConsistencyArg::Quorum,
            ConsistencyArg::All,
        ] {
            steps.push(Step {
                workload,
                consistency: Some(level),
            });
        }
    }
    let mut rows = vec![["workload", "level", "ops/s", "p50 ms", "p99 ms", "errors"]
        .map(String::from)
        .to_vec()];
    for step in &steps {
        let bucket = if step.workload.is_ap() {
            &ap_bucket
        } else {
            &cp_bucket
        };
        let summary = run_workload(clients, args, bucket, step.workload, step.consistency).await?;
        print!("{}", format_report(&summary));
        rows.push(comparison_row(step, &summary));
    }
    println!(
        "\ncomparison: {} clients, {}-byte values, {} keys, {:.1} s per row, against {}",
        args.clients,
        args.value_bytes,
        args.keys,
        args.duration.as_secs_f64(),
        args.endpoints.join(", ")
    );
    print!("{}", crate::client_commands::format_table(&rows));
    Ok(0)
}

fn comparison_row(step: &Step, summary: &Summary) -> Vec<String> {
    let histogram = summary
        .latencies
        .values()
        .find(|histogram| !histogram.is_empty());
    let percentile = |quantile: f64| {
        histogram.map_or("-".to_string(), |histogram| {
            format_ms(histogram.value_at_quantile(quantile))
        })
    };
    let (workload, default_level) = match step.workload {
        Workload::Write => ("cp write", "linearizable"),
        Workload::Read => ("cp read", "linearizable"),
        Workload::Mixed => ("cp mixed", "linearizable"),
        Workload::ApWrite => ("ap write", "quorum"),
        Workload::ApRead => ("ap read", "quorum"),
    };
    let level = step
        .consistency
        .map_or(default_level, |level| level.to_client().as_str());
    let seconds = summary.elapsed.as_secs_f64().max(f64::EPSILON);
    vec![
        workload.to_string(),
        level.to_string(),
        format!("{:.1}", summary.successful_ops() as f64 / seconds),
        percentile(0.5),
        percentile(0.99),
        summary.errors.values().sum::<u64>().to_string(),
    ]
}

/// One timed run of `workload` at `consistency` on `bucket`.
async fn run_workload(
    clients: &[Client],
    args: &BenchArgs,
    bucket: &str,
    workload: Workload,
    consistency: Option<ConsistencyArg>,
) -> Result<Summary, ClientError> {
    let write_consistency = consistency.filter(|level| level.applies_to_writes());
    let value = bench_value(args.value_bytes);
    if matches!(
        workload,
        Workload::Read | Workload::Mixed | Workload::ApRead
    ) {
        prepopulate(
            clients,
            args,
            bucket,
            workload.is_ap(),
            &value,
            write_consistency.map(ConsistencyArg::to_client),
        )
        .await?;
    }
    println!(
        "bench: {} workload{}, {} clients, {} keys, {}-byte values, {:.1} s, against {}",
        workload.name(),
        consistency.map_or(String::new(), |level| format!(
            " at {}",
            level.to_client().as_str()
        )),
        args.clients,
        args.keys,
        args.value_bytes,
        args.duration.as_secs_f64(),
        args.endpoints.join(", ")
    );
    let started = Instant::now();
    let plan = Arc::new(Plan {
        bucket: bucket.to_string(),
        workload,
        keys: args.keys,
        value,
        get_options: GetOptions {
            consistency: consistency.map(ConsistencyArg::to_client),
            timeout_ms: None,
        },
        put_options: PutOptions {
            consistency: write_consistency.map(ConsistencyArg::to_client),
            ..PutOptions::default()
        },
        ap_read_options: ApReadOptions {
            consistency: consistency.map(ConsistencyArg::to_client),
            ..ApReadOptions::default()
        },
        ap_write_options: ApWriteOptions {
            consistency: write_consistency.map(ConsistencyArg::to_client),
            ..ApWriteOptions::default()
        },
        deadline: started + args.duration,
    });
    let progress = Arc::new(Progress::default());
    let seed = random_seed();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.clients {
        let client = clients[index as usize % clients.len()].clone();
        let rng = capkv_core::Rng::new(seed ^ u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        tasks.spawn(client_loop(
            client,
            Arc::clone(&plan),
            Arc::clone(&progress),
            rng,
        ));
    }
    let reporter = tokio::spawn(report_progress(
        Arc::clone(&progress),
        started,
        plan.deadline,
    ));
    let stopper = tokio::spawn(stop_on_ctrl_c(Arc::clone(&progress)));
    let hard_deadline =
        plan.deadline + Duration::from_millis(args.request_timeout_ms) + FINISH_GRACE;
    let mut summary = Summary {
        elapsed: Duration::ZERO,
        latencies: BTreeMap::new(),
        errors: BTreeMap::new(),
    };
    loop {
        match tokio::time::timeout_at(hard_deadline.into(), tasks.join_next()).await {
            Ok(Some(Ok(result))) => merge(&mut summary, result),
            Ok(Some(Err(error))) => eprintln!("capkv bench: a client task failed: {error}"),
            Ok(None) => break,
            Err(_) => {
                eprintln!(
                    "capkv bench: {} clients still busy after the deadline; abandoning them",
                    tasks.len()
                );
                tasks.abort_all();
                break;
            }
        }
    }
    summary.elapsed = started.elapsed();
    reporter.abort();
    stopper.abort();
    Ok(summary)
}

fn merge(summary: &mut Summary, result: TaskResult) {
    for (operation, histogram) in result.latencies {
        let total = summary
            .latencies
            .entry(operation)
            .or_insert_with(new_histogram);
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = total.add(&histogram);
    }
    for (code, count) in result.errors {
        *summary.errors.entry(code).or_insert(0) += count;
    }
}

async fn client_loop(
    client: Client,
    plan: Arc<Plan>,
    progress: Arc<Progress>,
    mut rng: capkv_core::Rng,
) -> TaskResult {
    let mut result = TaskResult {
        latencies: BTreeMap::new(),
        errors: BTreeMap::new(),
    };
    while Instant::now() < plan.deadline && !progress.stop.load(Ordering::Relaxed) {
        let key = format!("key-{}", rng.range(0, plan.keys));
        let operation = match plan.workload {
            Workload::Write | Workload::ApWrite => Operation::Write,
            Workload::Read | Workload::ApRead => Operation::Read,
            Workload::Mixed if rng.chance(0.5) => Operation::Read,
            Workload::Mixed => Operation::Write,
        };
        let sent = Instant::now();
        let outcome = match (operation, plan.workload.is_ap()) {
            (Operation::Read, true) => client
                .ap_get(&plan.bucket, &key, &plan.ap_read_options)
                .await
                .map(|_| ()),
            (Operation::Write, true) => client
                .ap_put(
                    &plan.bucket,
                    &key,
                    plan.value.clone(),
                    &plan.ap_write_options,
                )
                .await
                .map(|_| ()),
            (Operation::Read, false) => client
                .get(&plan.bucket, &key, &plan.get_options)
                .await
                .map(|_| ()),
            (Operation::Write, false) => client
                .put(&plan.bucket, &key, plan.value.clone(), &plan.put_options)
                .await
                .map(|_| ()),
        };
        match outcome {
            Ok(()) => {
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                result
                    .latencies
                    .entry(operation)
                    .or_insert_with(new_histogram)
                    .saturating_record(micros.max(1));
                progress.ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                *result.errors.entry(error.code).or_insert(0) += 1;
                progress.errors.fetch_add(1, Ordering::Relaxed);
                // A refused connection fails at once; pausing keeps a dead
                // endpoint from turning the bench into a busy loop.
                if error.status == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    result
}

/// Prints one progress line per second until aborted.
async fn report_progress(progress: Arc<Progress>, started: Instant, deadline: Instant) {
    let mut ticker = tokio::time::interval_at(
        (started + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    let mut previous_ops = 0;
    while Instant::now() < deadline + Duration::from_millis(500) {
        ticker.tick().await;
        let ops = progress.ops.load(Ordering::Relaxed);
        let errors = progress.errors.load(Ordering::Relaxed);
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "  {seconds:5.1}s  ops {ops:>9}  ops/s {:>9.1}  last 1s {:>7}  errors {errors}",
            ops as f64 / seconds,
            ops - previous_ops
        );
        previous_ops = ops;
    }
}

async fn stop_on_ctrl_c(progress: Arc<Progress>) {
    if tokio::signal::ctrl_c().await.is_ok() {
        eprintln!("capkv bench: interrupted; finishing in-flight requests");
        progress.stop.store(true, Ordering::Relaxed);
    }
}

/// Writes every key once so reads find values. Not timed. Fails on the
/// first error, since a read benchmark over missing keys measures nothing.
async fn prepopulate(
    clients: &[Client],
    args: &BenchArgs,
    bucket: &str,
    ap: bool,
    value: &[u8],
    consistency: Option<Consistency>,
) -> Result<(), ClientError> {
    let started = Instant::now();
    let workers = u64::from(args.clients).min(args.keys);
    eprintln!("bench: writing {} keys before the timed run", args.keys);
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        let client = clients[worker as usize % clients.len()].clone();
        let (bucket, value, keys) = (bucket.to_string(), value.to_vec(), args.keys);
        let options = PutOptions {
            consistency: consistency.filter(|_| !ap),
            ..PutOptions::default()
        };
        let ap_options = ApWriteOptions {
            // Every replica holds every key before reads at any level.
            consistency: Some(Consistency::All),
            ..ApWriteOptions::default()
        };
        tasks.spawn(async move {
            let mut key_index = worker;
            while key_index < keys {
                let key = format!("key-{key_index}");
                if ap {
                    client
                        .ap_put(&bucket, &key, value.clone(), &ap_options)
                        .await?;
                } else {
                    client.put(&bucket, &key, value.clone(), &options).await?;
                }
                key_index += workers;
            }
            Ok::<(), ClientError>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok(Err(error)) = joined {
            tasks.abort_all();
            return Err(ClientError {
                message: format!(
                    "while writing the keys before a read benchmark: {}",
                    error.message
                ),
                ..error
            });
        }
    }
    eprintln!(
        "bench: keys written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A printable value of the requested size (UTF-8, so reads come back as
/// text).
fn bench_value(bytes: usize) -> Vec<u8> {
    (0..bytes).map(|index| b'a' + (index % 26) as u8).collect()
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    // Without OS randomness the key sequence is merely predictable, which a
    // benchmark tolerates.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        for bad in [
            "",
            "s",
            "10x",
            "1.5s",
            "-1s",
            "99999999999999999999h",
            "10 s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn milliseconds_print_with_three_decimals() {
        assert_eq!(format_ms(0), "0.000");
        assert_eq!(format_ms(7), "0.007");
        assert_eq!(format_ms(1_234), "1.234");
        assert_eq!(format_ms(15_300_000), "15300.000");
    }

    #[test]
    fn the_report_shows_percentiles_per_kind_and_errors_by_code() {
        let mut writes = new_histogram();
        for micros in 1..=1_000u64 {
            writes.record(micros * 10).unwrap();
        }
        let mut summary = Summary {
            elapsed: Duration::from_secs(2),
            latencies: BTreeMap::from([
                (Operation::Write, writes),
                (Operation::Read, new_histogram()),
            ]),
            errors: BTreeMap::new(),
        };
        summary.errors.insert("no_quorum".into(), 3);
        summary.errors.insert("client_timeout".into(), 1);
        let report = format_report(&summary);
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(lines[0], "ops        1000");
        assert_eq!(lines[1], "ops/s      500.0");
        assert_eq!(lines[2], "errors     4 (client_timeout 1, no_quorum 3)");
        assert_eq!(lines[3], "latency ms  count  p50    p99    p99.9  max");
        // HDR rounds to its 3-significant-digit buckets: 5 ms, 9.9 ms, 9.99 ms, 10 ms.
        assert_eq!(lines[4], "write       1000   5.003  9.903  9.991  10.007");
        assert_eq!(lines.len(), 5, "an empty histogram gets no row:\n{report}");
    }

    #[test]
    fn ap_workloads_take_ap_levels() {
        assert!(check_level(Workload::ApWrite, Some(ConsistencyArg::All)).is_ok());
        assert!(check_level(Workload::ApWrite, Some(ConsistencyArg::Local)).is_err());
        assert!(check_level(Workload::ApWrite, Some(ConsistencyArg::Stale)).is_err());
        assert!(check_level(Workload::ApRead, Some(ConsistencyArg::Local)).is_ok());
        assert!(check_level(Workload::ApRead, Some(ConsistencyArg::Linearizable)).is_err());
        assert!(check_level(Workload::Read, Some(ConsistencyArg::Local)).is_err());
        assert!(check_level(Workload::Read, Some(ConsistencyArg::Stale)).is_ok());
        assert!(check_level(Workload::Write, Some(ConsistencyArg::Quorum)).is_err());
    }

    #[test]
    fn comparison_rows_name_the_workload_and_level() {
        let mut writes = new_histogram();
        for micros in [1_000u64, 2_000, 3_000] {
            writes.record(micros).unwrap();
        }
        let summary = Summary {
            elapsed: Duration::from_secs(1),
            latencies: BTreeMap::from([(Operation::Write, writes)]),
            errors: BTreeMap::from([("no_quorum".to_string(), 2)]),
        };
        let step = Step {
            workload: Workload::ApWrite,
            consistency: Some(ConsistencyArg::All),
        };
        assert_eq!(
            comparison_row(&step, &summary),
            ["ap write", "all", "3.0", "2.000", "3.001", "2"]
        );
    }

    #[test]
    fn values_have_the_requested_size() {
        assert_eq!(bench_value(0).len(), 0);
        assert_eq!(bench_value(300).len(), 300);
        assert!(std::str::from_utf8(&bench_value(300)).is_ok());
    }
}
