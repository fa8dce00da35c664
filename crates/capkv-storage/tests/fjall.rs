//! `FjallStorage` against the `Storage` contract: the same answers as
//! `MemStorage`, durability across reopen, and atomic, durable batches across
//! a real `kill -9`.

#![cfg(feature = "fjall")]
// A failed unwrap here is a failed test; clippy's allow-unwrap-in-tests does
// not reach the helpers outside `#[test]` functions.
#![allow(clippy::unwrap_used)]

use capkv_storage::{FjallStorage, Keyspace, MemStorage, Storage, StorageError, WriteBatch};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ALPHA: Keyspace = Keyspace("alpha");
const BETA: Keyspace = Keyspace("beta");
const KEYSPACES: [Keyspace; 2] = [ALPHA, BETA];

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "capkv-storage-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// splitmix64: a tiny deterministic PRNG, so a failure replays from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// A short key over a small alphabet, so ops collide often. Never empty.
    fn key(&mut self) -> Vec<u8> {
        let length = 1 + self.below(3) as usize;
        (0..length).map(|_| b'a' + self.below(6) as u8).collect()
    }

    fn keyspace(&mut self) -> Keyspace {
        KEYSPACES[self.below(2) as usize]
    }
}

fn random_batch(rng: &mut Rng) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for _ in 0..1 + rng.below(8) {
        let keyspace = rng.keyspace();
        match rng.below(10) {
            0..=4 => {
                let value = rng.next().to_be_bytes()[..1 + rng.below(8) as usize].to_vec();
                batch.put(keyspace, rng.key(), value);
            }
            5..=7 => batch.delete(keyspace, rng.key()),
            // Ranges may be empty or reversed on purpose.
            _ => batch.delete_range(keyspace, rng.key(), rng.key()),
        }
    }
    batch
}

fn assert_same(seed: u64, step: usize, rng: &mut Rng, fjall: &FjallStorage, mem: &MemStorage) {
    for keyspace in KEYSPACES {
        let full_fjall = fjall.scan(keyspace, b"", &[0xff], usize::MAX).unwrap();
        let full_mem = mem.scan(keyspace, b"", &[0xff], usize::MAX).unwrap();
        assert_eq!(
            full_fjall, full_mem,
            "seed {seed} step {step}: full scan of {keyspace:?} differs"
        );
        for _ in 0..4 {
            let key = rng.key();
            assert_eq!(
                fjall.get(keyspace, &key).unwrap(),
                mem.get(keyspace, &key).unwrap(),
                "seed {seed} step {step}: get {key:?} in {keyspace:?} differs"
            );
            let (start, end) = (rng.key(), rng.key());
            let limit = rng.below(6) as usize;
            assert_eq!(
                fjall.scan(keyspace, &start, &end, limit).unwrap(),
                mem.scan(keyspace, &start, &end, limit).unwrap(),
                "seed {seed} step {step}: scan {start:?}..{end:?} limit {limit} in {keyspace:?} differs"
            );
        }
    }
}

#[test]
fn same_answers_as_mem_storage_for_random_batches() {
    for seed in [1u64, 2, 3, 0xC0FFEE] {
        let dir = TempDir::new("differential");
        let mut rng = Rng(seed);
        let mut fjall = FjallStorage::open(dir.path(), &KEYSPACES).unwrap();
        let mut mem = MemStorage::new();
        for step in 0..400 {
            let batch = random_batch(&mut rng);
            fjall.write(batch.clone()).unwrap();
            mem.write(batch).unwrap();
            if rng.below(4) == 0 {
                fjall.sync().unwrap();
                mem.sync().unwrap();
            }
            assert_same(seed, step, &mut rng, &fjall, &mem);
            // Now and then, reopen after a sync: the disk must agree too.
            if rng.below(50) == 0 {
                fjall.sync().unwrap();
                mem.sync().unwrap();
                drop(fjall);
                fjall = FjallStorage::open(dir.path(), &KEYSPACES).unwrap();
                assert_same(seed, step, &mut rng, &fjall, &mem);
            }
        }
    }
}

#[test]
fn a_range_delete_removes_keys_put_earlier_in_the_same_batch() {
    let dir = TempDir::new("same-batch");
    let mut store = FjallStorage::open(dir.path(), &KEYSPACES).unwrap();
    let mut first = WriteBatch::new();
    first.put(ALPHA, b"b".to_vec(), b"old".to_vec());
    store.write(first).unwrap();
    let mut second = WriteBatch::new();
    second.put(ALPHA, b"c".to_vec(), b"new".to_vec());
    second.delete_range(ALPHA, b"a".to_vec(), b"z".to_vec());
    second.put(ALPHA, b"d".to_vec(), b"after".to_vec());
    store.write(second).unwrap();
    assert_eq!(
        store.scan(ALPHA, b"a", b"z", 10).unwrap(),
        vec![(b"d".to_vec(), b"after".to_vec())]
    );
}

#[test]
fn synced_data_survives_reopen_and_keyspaces_are_independent() {
    let dir = TempDir::new("reopen");
    {
        let mut store = FjallStorage::open(dir.path(), &KEYSPACES).unwrap();
        let mut batch = WriteBatch::new();
        for i in 0u8..10 {
            batch.put(ALPHA, vec![b'k', i], vec![b'a', i]);
            batch.put(BETA, vec![b'k', i], vec![b'b', i]);
        }
        store.write(batch).unwrap();
        let mut batch = WriteBatch::new();
        batch.delete_range(ALPHA, vec![b'k', 2], vec![b'k', 8]);
        batch.delete(BETA, vec![b'k', 0]);
        store.write(batch).unwrap();
        store.sync().unwrap();
    }
    let store = FjallStorage::open(dir.path(), &KEYSPACES).unwrap();
    let alpha: Vec<_> = store.scan(ALPHA, b"", b"z", 100).unwrap();
    let expected_alpha: Vec<_> = [0u8, 1, 8, 9]
        .iter()
        .map(|&i| (vec![b'k', i], vec![b'a', i]))
        .collect();
    assert_eq!(alpha, expected_alpha);
    let beta = store.scan(BETA, b"", b"z", 100).unwrap();
    let expected_beta: Vec<_> = (1u8..10).map(|i| (vec![b'k', i], vec![b'b', i])).collect();
    assert_eq!(beta, expected_beta);
    // A keyspace opened later, with the same key, starts empty.
    drop(store);
    let wider = FjallStorage::open(dir.path(), &[ALPHA, BETA, Keyspace("gamma")]).unwrap();
    assert_eq!(wider.get(Keyspace("gamma"), &[b'k', 1]).unwrap(), None);
    assert_eq!(wider.get(BETA, &[b'k', 1]).unwrap(), Some(vec![b'b', 1]));
}

fn assert_io_error<T: std::fmt::Debug>(result: Result<T, StorageError>, needle: &str) {
    match result {
        Err(StorageError::Io(text)) => {
            assert!(text.contains(needle), "error {text:?} lacks {needle:?}")
        }
        other => panic!("expected an Io error containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn bad_input_is_an_error_or_empty_never_a_panic() {
    let dir = TempDir::new("bad-input");
    let mut store = FjallStorage::open(dir.path(), &KEYSPACES).unwrap();
    let mut batch = WriteBatch::new();
    batch.put(ALPHA, b"m".to_vec(), b"1".to_vec());
    store.write(batch).unwrap();

    // Empty or reversed scan ranges and a zero limit return nothing.
    assert!(store.scan(ALPHA, b"m", b"m", 10).unwrap().is_empty());
    assert!(store.scan(ALPHA, b"z", b"a", 10).unwrap().is_empty());
    assert!(store.scan(ALPHA, b"a", b"z", 0).unwrap().is_empty());

    let unknown = Keyspace("unknown");
    assert_io_error(store.get(unknown, b"m"), "unknown keyspace");
    assert_io_error(store.scan(unknown, b"a", b"z", 10), "unknown keyspace");

    // A batch with one bad op is rejected whole: the good op before it is
    // not applied either.
    let mut batch = WriteBatch::new();
    batch.put(ALPHA, b"n".to_vec(), b"2".to_vec());
    batch.delete(unknown, b"m".to_vec());
    assert_io_error(store.write(batch), "unknown keyspace");
    let mut batch = WriteBatch::new();
    batch.put(ALPHA, b"n".to_vec(), b"2".to_vec());
    batch.put(ALPHA, Vec::new(), b"empty key".to_vec());
    assert_io_error(store.write(batch), "cannot store a key");
    let mut batch = WriteBatch::new();
    batch.put(ALPHA, b"n".to_vec(), b"2".to_vec());
    batch.put(ALPHA, vec![b'x'; 70_000], b"long key".to_vec());
    assert_io_error(store.write(batch), "cannot store a key");
    assert_eq!(store.get(ALPHA, b"n").unwrap(), None);

    // Keys that cannot be stored cannot exist: get is None, delete a no-op.
    assert_eq!(store.get(ALPHA, b"").unwrap(), None);
    assert_eq!(store.get(ALPHA, &vec![b'x'; 70_000]).unwrap(), None);
    let mut batch = WriteBatch::new();
    batch.delete(ALPHA, Vec::new());
    batch.delete_range(ALPHA, b"z".to_vec(), b"a".to_vec());
    store.write(batch).unwrap();
    store.write(WriteBatch::new()).unwrap();
    assert_eq!(store.get(ALPHA, b"m").unwrap(), Some(b"1".to_vec()));

    // Bad keyspace names, a second opener and a file as directory fail cleanly.
    assert_io_error(
        FjallStorage::open(dir.path(), &[Keyspace("")]),
        "invalid keyspace",
    );
    assert!(matches!(
        FjallStorage::open(dir.path(), &KEYSPACES),
        Err(StorageError::Io(_))
    ));
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        FjallStorage::open(&file, &KEYSPACES),
        Err(StorageError::Io(_))
    ));
}

// --- Crash durability with a real kill -9 -----------------------------------

/// Set in the child process: the database directory it writes to.
const CHILD_ENV: &str = "CAPKV_STORAGE_CHILD";
/// Keys every crash batch overwrites with its number, across both keyspaces.
const SLOTS: u8 = 6;
/// Bound on the child's loop, in case the parent never kills it.
const CHILD_BATCHES_MAX: u64 = 1_000_000;
const CHILD_RUNTIME_MAX: Duration = Duration::from_secs(60);

fn number_key(number: u64) -> Vec<u8> {
    let mut key = b"batch/".to_vec();
    key.extend_from_slice(&number.to_be_bytes());
    key
}

/// Batch `number`: overwrites every slot with the number, adds its own key,
/// and replaces the previous `tmp/` key with its own through a range delete.
fn crash_batch(number: u64) -> WriteBatch {
    let value = |slot: u8| {
        let mut value = number.to_be_bytes().to_vec();
        value.resize(512, slot);
        value
    };
    let mut batch = WriteBatch::new();
    for slot in 0..SLOTS {
        let keyspace = KEYSPACES[usize::from(slot % 2)];
        batch.put(keyspace, vec![b's', slot], value(slot));
    }
    batch.put(ALPHA, number_key(number), value(0));
    batch.delete_range(BETA, b"tmp/".to_vec(), b"tmp0".to_vec());
    let mut tmp_key = b"tmp/".to_vec();
    tmp_key.extend_from_slice(&number.to_be_bytes());
    batch.put(BETA, tmp_key, value(1));
    batch
}

fn value_number(value: &[u8]) -> u64 {
    u64::from_be_bytes(value[..8].try_into().unwrap())
}

/// The number of the last batch in the store, checking that every batch up
/// to it is fully present and none is half applied.
fn recovered_batch_number(store: &FjallStorage) -> u64 {
    let slot_numbers: Vec<u64> = (0..SLOTS)
        .map(|slot| {
            let keyspace = KEYSPACES[usize::from(slot % 2)];
            store
                .get(keyspace, &[b's', slot])
                .unwrap()
                .map_or(0, |value| value_number(&value))
        })
        .collect();
    let last = slot_numbers[0];
    assert!(
        slot_numbers.iter().all(|&number| number == last),
        "a batch is half applied: slots hold {slot_numbers:?}"
    );
    let numbered = store.scan(ALPHA, b"batch/", b"batch0", usize::MAX).unwrap();
    let expected: Vec<Vec<u8>> = (1..=last).map(number_key).collect();
    let found: Vec<Vec<u8>> = numbered.into_iter().map(|(key, _)| key).collect();
    assert_eq!(
        found, expected,
        "batches 1..={last} must all be present, no more"
    );
    let tmp = store.scan(BETA, b"tmp/", b"tmp0", usize::MAX).unwrap();
    let tmp_numbers: Vec<u64> = tmp.iter().map(|(_, value)| value_number(value)).collect();
    let expected_tmp: Vec<u64> = if last == 0 { vec![] } else { vec![last] };
    assert_eq!(
        tmp_numbers, expected_tmp,
        "the range delete of batch {last} is torn"
    );
    last
}

/// The child's body: a no-op unless the parent set `CHILD_ENV`. Writes and
/// syncs numbered batches, continuing from what it recovers, and reports each
/// synced number on stdout until killed.
#[test]
fn crash_child_process() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut store = FjallStorage::open(Path::new(&dir), &KEYSPACES).unwrap();
    let first = recovered_batch_number(&store) + 1;
    let started = Instant::now();
    for number in first..first + CHILD_BATCHES_MAX {
        if started.elapsed() > CHILD_RUNTIME_MAX {
            break;
        }
        store.write(crash_batch(number)).unwrap();
        store.sync().unwrap();
        println!("synced {number}");
    }
}

/// Runs the child on `dir`, kills it with SIGKILL after it has reported
/// `reports_before_kill` syncs, and returns the last number it reported.
fn run_child_and_kill(dir: &Path, reports_before_kill: usize) -> Option<u64> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel::<u64>();
    // The reader runs until the pipe closes, which the kill guarantees.
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(number) = line.strip_prefix("synced ") {
                if sender.send(number.parse().unwrap()).is_err() {
                    break;
                }
            }
        }
    });
    let mut last_reported = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    for _ in 0..reports_before_kill {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(remaining) {
            Ok(number) => last_reported = Some(number),
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child reported no sync in time: {error}");
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix: no destructor, no fjall close.
    child.wait().unwrap();
    reader.join().unwrap();
    // Lines the child printed before dying that we had not read yet.
    last_reported = receiver.try_iter().last().or(last_reported);
    last_reported
}

#[test]
fn every_batch_reported_synced_survives_kill_9_and_none_is_half_applied() {
    let dir = TempDir::new("kill9");
    let mut last_recovered = 0;
    for (round, reports_before_kill) in [5usize, 40, 1, 200].into_iter().enumerate() {
        let last_reported = run_child_and_kill(dir.path(), reports_before_kill)
            .expect("the child reported at least one sync");
        let store = FjallStorage::open(dir.path(), &KEYSPACES).unwrap();
        let recovered = recovered_batch_number(&store);
        // The batch after the last report may have been synced before the
        // kill landed, but never one beyond it: it is written after the
        // report.
        assert!(
            recovered == last_reported || recovered == last_reported + 1,
            "round {round}: reported {last_reported} synced, recovered {recovered}"
        );
        assert!(recovered > last_recovered, "round {round}: no progress");
        last_recovered = recovered;
    }
}

// --- A measured figure --------------------------------------------------------

/// Write + sync of 1000 batches of 10 values of 256 bytes each. Run with
/// `cargo test -p capkv-storage --features fjall --release --test fjall --
/// --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn measure_write_and_sync_latency() {
    const BATCHES: u64 = 1000;
    const VALUES_PER_BATCH: u64 = 10;
    const VALUE_BYTES: usize = 256;
    let dir = TempDir::new("measure");
    let mut store = FjallStorage::open(dir.path(), &KEYSPACES).unwrap();
    let mut write_and_sync_us: Vec<u128> = Vec::new();
    let mut sync_us: Vec<u128> = Vec::new();
    let started = Instant::now();
    for number in 0..BATCHES {
        let mut batch = WriteBatch::new();
        for index in 0..VALUES_PER_BATCH {
            let mut key = number.to_be_bytes().to_vec();
            key.extend_from_slice(&index.to_be_bytes());
            batch.put(ALPHA, key, vec![number as u8; VALUE_BYTES]);
        }
        let batch_started = Instant::now();
        store.write(batch).unwrap();
        let sync_started = Instant::now();
        store.sync().unwrap();
        sync_us.push(sync_started.elapsed().as_micros());
        write_and_sync_us.push(batch_started.elapsed().as_micros());
    }
    let total = started.elapsed();
    write_and_sync_us.sort_unstable();
    sync_us.sort_unstable();
    let percentile = |sorted: &[u128], p: usize| sorted[(sorted.len() - 1) * p / 100];
    println!(
        "{BATCHES} batches x {VALUES_PER_BATCH} x {VALUE_BYTES} B: total {:?}, {:.0} batches/s; \
         write+sync us p50 {} p99 {} max {}; sync alone us p50 {} p99 {} mean {}",
        total,
        BATCHES as f64 / total.as_secs_f64(),
        percentile(&write_and_sync_us, 50),
        percentile(&write_and_sync_us, 99),
        write_and_sync_us[write_and_sync_us.len() - 1],
        percentile(&sync_us, 50),
        percentile(&sync_us, 99),
        sync_us.iter().sum::<u128>() / sync_us.len() as u128,
    );
}
