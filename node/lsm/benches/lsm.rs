//! Storage engine benchmark: cairn's LSM engine against fjall, run in
//! alternation with the same settings (lz4, 4 KiB blocks, 10 bits/key
//! bloom filters, 64 MiB block cache, 64 MiB memtables).
//!
//! ```sh
//! cargo bench -p cairn-lsm --bench lsm
//! LSM_BENCH_KEYS=200000 LSM_BENCH_ROUNDS=1 cargo bench -p cairn-lsm --bench lsm
//! ```
//!
//! Environment: `LSM_BENCH_KEYS` (default 1,000,000), `LSM_BENCH_ROUNDS`
//! (default 3; medians are reported), `LSM_BENCH_DURABLE_OPS` (default
//! 2,000 per durable workload), `LSM_BENCH_RSS_KEYS` (default 10,000,000;
//! 0 skips the memory check), `LSM_BENCH_DIR` (default: a temp dir),
//! `LSM_BENCH_ONLY` (`cairn` or `fjall`: run one engine, for profiling),
//! `LSM_BENCH_VERBOSE` (set: print cairn's engine stats once the memtable
//! is flushed, before the reads).
//!
//! Prints a table and one JSON line per engine and workload:
//! `{"engine","workload","ops_per_sec","p50_us","p99_us"}`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cairn_lsm::{Compression, Db, Options, SyncMode};
use fjall::config::{
    BlockSizePolicy, BloomConstructionPolicy, CompressionPolicy, FilterPolicy, FilterPolicyEntry,
};
use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use hdrhistogram::Histogram;

const KEY_BYTES: usize = 16;
const VALUE_BYTES: usize = 100;
const CACHE_BYTES: usize = 64 << 20;
const MEMTABLE_BYTES: usize = 64 << 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A small, fast, seeded PRNG (xorshift64*), so both engines see the same
/// keys in the same order.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `i` as 16 zero-padded decimal digits, without the allocation and
/// formatting machinery of `format!`, so the loop times the engines rather
/// than the formatter.
fn key(i: u64) -> [u8; KEY_BYTES] {
    let mut k = [b'0'; KEY_BYTES];
    let mut rest = i;
    for d in k.iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    k
}

/// 100 bytes, about half compressible: 50 random bytes then 50 repeated.
fn value(rng: &mut Rng) -> [u8; VALUE_BYTES] {
    let mut v = [b'v'; VALUE_BYTES];
    for chunk in v[..VALUE_BYTES / 2].chunks_mut(8) {
        let r = rng.next().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    v
}

fn permutation(n: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let mut rng = Rng(seed | 1);
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

trait Engine: Send + Sync {
    fn put(&self, k: &[u8], v: &[u8]);
    fn get(&self, k: &[u8]) -> bool;
    /// Reads up to `n` entries from `start`; returns how many.
    fn scan(&self, start: &[u8], n: usize) -> usize;
    fn scan_all(&self) -> usize;
    /// Flushes the memtable so reads see a settled tree.
    fn settle(&self);
}

/// Reads every pair (so the work is not optimised away); returns the count.
fn consume<K: AsRef<[u8]>, V: AsRef<[u8]>>(it: impl Iterator<Item = (K, V)>) -> usize {
    let mut n = 0;
    for (k, v) in it {
        std::hint::black_box((k.as_ref(), v.as_ref()));
        n += 1;
    }
    n
}

struct Cairn(Db);

impl Engine for Cairn {
    fn put(&self, k: &[u8], v: &[u8]) {
        self.0.put(k, v).unwrap();
    }
    fn get(&self, k: &[u8]) -> bool {
        self.0.get(k).unwrap().is_some()
    }
    fn scan(&self, start: &[u8], n: usize) -> usize {
        consume(self.0.scan(start..).unwrap().take(n).map(Result::unwrap))
    }
    fn scan_all(&self) -> usize {
        consume(self.0.scan::<&[u8]>(..).unwrap().map(Result::unwrap))
    }
    fn settle(&self) {
        self.0.flush().unwrap();
        if std::env::var_os("LSM_BENCH_VERBOSE").is_some() {
            eprintln!("cairn after settle: {:?}", self.0.stats());
        }
    }
}

struct Fjall {
    db: Database,
    ks: Keyspace,
    durable: bool,
}

impl Engine for Fjall {
    fn put(&self, k: &[u8], v: &[u8]) {
        self.ks.insert(k, v).unwrap();
        if self.durable {
            self.db.persist(PersistMode::SyncData).unwrap();
        }
    }
    fn get(&self, k: &[u8]) -> bool {
        self.ks.get(k).unwrap().is_some()
    }
    fn scan(&self, start: &[u8], n: usize) -> usize {
        consume(
            self.ks
                .range(start..)
                .take(n)
                .map(|g| g.into_inner().unwrap()),
        )
    }
    fn scan_all(&self) -> usize {
        consume(self.ks.iter().map(|g| g.into_inner().unwrap()))
    }
    fn settle(&self) {
        self.ks.rotate_memtable_and_wait().unwrap();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cairn,
    Fjall,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Cairn => "cairn",
            Kind::Fjall => "fjall",
        }
    }

    fn open(self, dir: &Path, durable: bool) -> Arc<dyn Engine> {
        match self {
            Kind::Cairn => {
                let opts = Options {
                    sync: if durable {
                        SyncMode::Always
                    } else {
                        SyncMode::None
                    },
                    memtable_bytes: MEMTABLE_BYTES,
                    block_cache_bytes: CACHE_BYTES,
                    block_bytes: 4096,
                    bloom_bits_per_key: 10,
                    compression: Compression::Lz4,
                    ..Options::default()
                };
                Arc::new(Cairn(Db::open(dir, opts).unwrap()))
            }
            Kind::Fjall => {
                let db = Database::builder(dir)
                    .cache_size(CACHE_BYTES as u64)
                    .open()
                    .unwrap();
                let ks = db
                    .keyspace("bench", || {
                        KeyspaceCreateOptions::default()
                            .max_memtable_size(MEMTABLE_BYTES as u64)
                            .data_block_size_policy(BlockSizePolicy::all(4096))
                            .filter_policy(FilterPolicy::all(FilterPolicyEntry::Bloom(
                                BloomConstructionPolicy::BitsPerKey(10.0),
                            )))
                            .data_block_compression_policy(CompressionPolicy::all(
                                CompressionType::Lz4,
                            ))
                    })
                    .unwrap();
                Arc::new(Fjall { db, ks, durable })
            }
        }
    }
}

/// One measured run of a workload.
struct Sample {
    ops: u64,
    secs: f64,
    hist: Histogram<u64>,
}

impl Sample {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
}

/// Times `ops` calls of `f(i)`, one latency sample each.
fn timed(ops: u64, mut f: impl FnMut(u64)) -> Sample {
    let mut h = hist();
    let start = Instant::now();
    for i in 0..ops {
        let t = Instant::now();
        f(i);
        h.record(t.elapsed().as_nanos().max(1) as u64).unwrap();
    }
    Sample {
        ops,
        secs: start.elapsed().as_secs_f64(),
        hist: h,
    }
}

fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const WORKLOADS: [&str; 10] = [
    "fillseq",
    "fillrandom",
    "overwrite",
    "readrandom-hit",
    "readrandom-miss",
    "readseq",
    "scan100",
    "durable-1",
    "durable-16",
    "readmem",
];

/// Keys of the `readmem` workload: they fit one memtable (about 26 MB of
/// keys and values), so its reads never reach a table file.
const MEM_KEYS: u64 = 100_000;

/// Runs every workload once on `kind`; returns samples in WORKLOADS order.
fn round(kind: Kind, base: &Path, n: u64, durable_ops: u64, seed: u64) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut vrng = Rng(seed ^ 0xA5A5);

    // fillseq: sequential keys into an empty database.
    {
        let dir = fresh_dir(base, &format!("{}-seq", kind.name()));
        let e = kind.open(&dir, false);
        out.push(timed(n, |i| e.put(&key(i), &value(&mut vrng))));
        drop(e);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // fillrandom: the same keys in random order; the database stays for
    // the following workloads.
    let dir = fresh_dir(base, &format!("{}-rand", kind.name()));
    let e = kind.open(&dir, false);
    let order = permutation(n, seed);
    out.push(timed(n, |i| {
        e.put(&key(order[i as usize]), &value(&mut vrng))
    }));

    // overwrite: random existing keys.
    let mut rng = Rng(seed ^ 0x55);
    out.push(timed(n, |_| e.put(&key(rng.below(n)), &value(&mut vrng))));
    e.settle();

    // readrandom: hits, then misses (keys past the loaded range).
    let mut rng = Rng(seed ^ 0x77);
    out.push(timed(n / 2, |_| {
        assert!(e.get(&key(rng.below(n))), "missing key");
    }));
    out.push(timed(n / 4, |_| {
        assert!(!e.get(&key(n + rng.below(n))), "phantom key");
    }));

    // readseq: one full scan, every entry an op.
    {
        let start = Instant::now();
        let count = e.scan_all() as u64;
        assert_eq!(count, n, "scan saw {count} of {n} keys");
        let secs = start.elapsed().as_secs_f64();
        let mut h = hist();
        h.record(((secs * 1e9) as u64 / count.max(1)).max(1))
            .unwrap();
        out.push(Sample {
            ops: count,
            secs,
            hist: h,
        });
    }

    // scan100: seek to a random key, read 100 entries.
    out.push(timed((n / 100).max(100), |_| {
        let k = key(rng.below(n.saturating_sub(100).max(1)));
        assert_eq!(e.scan(&k, 100), 100);
    }));
    drop(e);
    std::fs::remove_dir_all(&dir).unwrap();

    // durable writes: every write fsynced, 1 writer then 16.
    for threads in [1u64, 16] {
        let dir = fresh_dir(base, &format!("{}-durable", kind.name()));
        let e = kind.open(&dir, true);
        let per_thread = (durable_ops / threads).max(1);
        let start = Instant::now();
        let hists: Vec<Histogram<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let e = e.clone();
                    s.spawn(move || {
                        let mut vr = Rng(seed ^ (t + 1));
                        timed(per_thread, |i| e.put(&key(t << 32 | i), &value(&mut vr))).hist
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let secs = start.elapsed().as_secs_f64();
        let mut h = hist();
        for x in &hists {
            h.add(x).unwrap();
        }
        out.push(Sample {
            ops: per_thread * threads,
            secs,
            hist: h,
        });
        drop(e);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // readmem: random hits among keys still in the memtable (written in
    // random order, never flushed).
    {
        let dir = fresh_dir(base, &format!("{}-mem", kind.name()));
        let e = kind.open(&dir, false);
        let m = MEM_KEYS.min(n);
        for i in permutation(m, seed ^ 0x99) {
            e.put(&key(i), &value(&mut vrng));
        }
        let mut rng = Rng(seed ^ 0x33);
        out.push(timed(n / 2, |_| {
            assert!(e.get(&key(rng.below(m))), "missing key");
        }));
        drop(e);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A `/proc/self/status` field in bytes (`VmRSS`, `VmHWM`, ...).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Loads `n` keys in random order into cairn and tracks the peak RSS.
fn memory_check(base: &Path, n: u64) {
    let dir = fresh_dir(base, "cairn-rss");
    let opts = Options {
        sync: SyncMode::None,
        memtable_bytes: MEMTABLE_BYTES,
        block_cache_bytes: CACHE_BYTES,
        ..Options::default()
    };
    let budget = (opts.memtable_bytes * (1 + opts.max_immutable_memtables) + opts.block_cache_bytes)
        as u64
        + (64 << 20);
    let baseline = status_bytes("VmRSS:");
    let db = Db::open(&dir, opts).unwrap();
    let order = permutation(n, 42);
    let mut vrng = Rng(7);
    let mut peak = 0u64;
    let start = Instant::now();
    for (i, k) in order.iter().enumerate() {
        db.put(key(*k), value(&mut vrng)).unwrap();
        if i % 50_000 == 0 {
            peak = peak.max(status_bytes("VmRSS:"));
        }
    }
    db.flush().unwrap();
    // The kernel's high-water mark catches peaks between samples.
    peak = peak.max(status_bytes("VmRSS:")).max(status_bytes("VmHWM:"));
    let secs = start.elapsed().as_secs_f64();
    let s = db.stats();
    let growth = peak.saturating_sub(baseline);
    println!(
        "memory: loaded {n} keys in {secs:.1}s ({:.0} ops/s); peak RSS {} MiB above a {} MiB \
         baseline; budget (memtables {} MiB + cache {} MiB + 64 MiB) {} MiB; {}; tables {} MiB \
         in {} files, index+filter resident {} MiB",
        n as f64 / secs,
        growth >> 20,
        baseline >> 20,
        (MEMTABLE_BYTES * 3) >> 20,
        CACHE_BYTES >> 20,
        budget >> 20,
        if growth <= budget {
            "within budget"
        } else {
            "OVER BUDGET"
        },
        s.total_table_bytes() >> 20,
        s.live_files,
        s.table_resident_bytes >> 20,
    );
    println!(
        "{{\"engine\":\"cairn\",\"workload\":\"load-rss\",\"keys\":{n},\"peak_rss_mib\":{},\"budget_mib\":{}}}",
        growth >> 20,
        budget >> 20
    );
    drop(db);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us with
    // no such flag and expects a quick exit.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n = env_usize("LSM_BENCH_KEYS", 1_000_000) as u64;
    let rounds = env_usize("LSM_BENCH_ROUNDS", 3).max(1);
    let durable_ops = env_usize("LSM_BENCH_DURABLE_OPS", 2_000) as u64;
    let rss_keys = env_usize("LSM_BENCH_RSS_KEYS", 10_000_000) as u64;
    let only = std::env::var("LSM_BENCH_ONLY").ok();
    let tmp = tempfile::Builder::new()
        .prefix("cairn-bench")
        .tempdir()
        .unwrap();
    let base = std::env::var("LSM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    std::fs::create_dir_all(&base).unwrap();
    println!(
        "lsm bench: {n} keys of {KEY_BYTES} B, values {VALUE_BYTES} B (half compressible), \
         {rounds} round(s), {durable_ops} durable ops, dir {}",
        base.display()
    );

    if rss_keys > 0 {
        memory_check(&base, rss_keys);
    }

    // samples[engine][workload] = one Sample per round.
    let kinds = [Kind::Cairn, Kind::Fjall];
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![Vec::new(), Vec::new()];
    for ks in &mut samples {
        ks.resize_with(WORKLOADS.len(), Vec::new);
    }
    for r in 0..rounds {
        // Alternate which engine goes first.
        let order: Vec<usize> = if r % 2 == 0 { vec![0, 1] } else { vec![1, 0] };
        for ei in order {
            let kind = kinds[ei];
            if only.as_deref().is_some_and(|o| o != kind.name()) {
                for ws in &mut samples[ei] {
                    ws.push(Sample {
                        ops: 1,
                        secs: 1.0,
                        hist: hist(),
                    });
                }
                continue;
            }
            eprintln!("round {}/{rounds}: {}", r + 1, kind.name());
            for (wi, s) in round(kind, &base, n, durable_ops, 1000 + r as u64)
                .into_iter()
                .enumerate()
            {
                samples[ei][wi].push(s);
            }
        }
    }

    println!();
    println!(
        "{:<16} {:>14} {:>9} {:>9} {:>14} {:>9} {:>9} {:>8}",
        "workload", "cairn ops/s", "p50 us", "p99 us", "fjall ops/s", "p50 us", "p99 us", "ratio"
    );
    let mut json = Vec::new();
    for (wi, w) in WORKLOADS.iter().enumerate() {
        let mut row = Vec::new();
        for (ei, kind) in kinds.iter().enumerate() {
            let ss = &samples[ei][wi];
            let ops = median(ss.iter().map(Sample::ops_per_sec).collect());
            let p50 = median(
                ss.iter()
                    .map(|s| s.hist.value_at_quantile(0.5) as f64 / 1e3)
                    .collect(),
            );
            let p99 = median(
                ss.iter()
                    .map(|s| s.hist.value_at_quantile(0.99) as f64 / 1e3)
                    .collect(),
            );
            json.push(format!(
                "{{\"engine\":\"{}\",\"workload\":\"{w}\",\"ops_per_sec\":{ops:.0},\"p50_us\":{p50:.2},\"p99_us\":{p99:.2}}}",
                kind.name()
            ));
            row.push((ops, p50, p99));
        }
        println!(
            "{:<16} {:>14.0} {:>9.2} {:>9.2} {:>14.0} {:>9.2} {:>9.2} {:>7.2}x",
            w,
            row[0].0,
            row[0].1,
            row[0].2,
            row[1].0,
            row[1].1,
            row[1].2,
            row[0].0 / row[1].0
        );
    }
    let d1 = median(samples[0][7].iter().map(Sample::ops_per_sec).collect());
    let d16 = median(samples[0][8].iter().map(Sample::ops_per_sec).collect());
    println!(
        "cairn group commit: durable 16 writers / 1 writer = {:.2}x",
        d16 / d1
    );
    println!();
    for line in json {
        println!("{line}");
    }
}
