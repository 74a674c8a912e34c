//! State machine benchmark: the apply path alone (what every replica does
//! for every committed put), without Raft, gRPC or other threads, so its
//! CPU per put can be compared between builds far more precisely than a
//! cluster benchmark allows on a shared machine.
//!
//! ```sh
//! cargo bench -p cairn-node --bench apply
//! APPLY_BENCH_PUTS=100000 APPLY_BENCH_ROUNDS=5 cargo bench -p cairn-node --bench apply
//! ```
//!
//! Each round opens a fresh database on real files (the state machine's
//! settings: no WAL, lz4, 64 MiB memtables, background flushes and
//! compactions on their threads), preloads `APPLY_BENCH_KEYS` keys
//! (default 100,000), then applies `APPLY_BENCH_PUTS` puts (default
//! 300,000) of 256-byte values to random keys, each with a request id, as
//! log entries one after another; it reports the wall time, this
//! process's CPU time (the background threads included) and the applying
//! thread's CPU time per put. Prints one JSON line per round and the
//! medians.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use cairn_lsm::{Db, Options};
use cairn_node::kv::command::{Command, Op, PutOp, RequestId};
use cairn_node::kv::{Applier, SessionHint, Settings};
use cairn_node::raft::state_machine::AppliedState;
use cairn_node::raft::TypeConfig;

// The allocator of the `cairn` binary: allocation is much of the apply
// path, so measure it with the one production uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU time of this process (`/proc/self/stat`) or of the
/// calling thread (`/proc/thread-self/stat`), in microseconds (Linux).
fn cpu_us(stat_file: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_file).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 here.
    (ticks(11) + ticks(12)) * 1e6 / 100.0
}

struct Round {
    wall_us_per_put: f64,
    cpu_us_per_put: f64,
    apply_cpu_us_per_put: f64,
}

fn round(dir: &std::path::Path, keys: u64, puts: u64) -> Round {
    let opts = Options {
        wal: false,
        ..Options::default()
    };
    let db = Db::open(dir, opts).unwrap();
    let mut applier = Applier::load(&db, Settings::default()).unwrap();
    let value = vec![b'v'; 256];
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut index = 0u64;
    let mut apply = |applier: &mut Applier, key: u64| {
        index += 1;
        let cmd = Command {
            request_id: Some(RequestId {
                client_id: 7,
                seq: index,
            }),
            op: Op::Put(PutOp {
                key: format!("key{key:012}").into_bytes(),
                value: value.clone(),
                prev_kv: false,
            }),
            // One write in flight at a time: each settles the one before.
            session: SessionHint {
                floor: index,
                opens: index == 1,
            },
        };
        let state = AppliedState {
            last_applied: Some(openraft::testing::log_id::<TypeConfig>(1, 1, index)),
            ..AppliedState::default()
        };
        applier
            .apply(&db, index, &cmd, state.encode().unwrap())
            .unwrap();
    };
    for k in 0..keys {
        apply(&mut applier, k);
    }
    let (t0, c0, a0) = (
        Instant::now(),
        cpu_us("/proc/self/stat"),
        cpu_us("/proc/thread-self/stat"),
    );
    for _ in 0..puts {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        apply(&mut applier, rng % keys.max(1));
    }
    let wall = t0.elapsed().as_secs_f64() * 1e6;
    let cpu = cpu_us("/proc/self/stat") - c0;
    let apply_cpu = cpu_us("/proc/thread-self/stat") - a0;
    Round {
        wall_us_per_put: wall / puts as f64,
        cpu_us_per_put: cpu / puts as f64,
        apply_cpu_us_per_put: apply_cpu / puts as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs us without `--bench` and expects a quick
    // exit.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let keys = env_u64("APPLY_BENCH_KEYS", 100_000);
    let puts = env_u64("APPLY_BENCH_PUTS", 300_000);
    let rounds = env_u64("APPLY_BENCH_ROUNDS", 3).max(1);
    let (mut wall, mut cpu, mut apply_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let tmp = tempfile::Builder::new()
            .prefix("cairn-apply-bench")
            .tempdir_in(std::env::var("APPLY_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .unwrap();
        let res = round(tmp.path(), keys, puts);
        println!(
            "{{\"round\":{r},\"keys\":{keys},\"puts\":{puts},\"wall_us_per_put\":{:.2},\"cpu_us_per_put\":{:.2},\"apply_cpu_us_per_put\":{:.2}}}",
            res.wall_us_per_put, res.cpu_us_per_put, res.apply_cpu_us_per_put
        );
        wall.push(res.wall_us_per_put);
        cpu.push(res.cpu_us_per_put);
        apply_cpu.push(res.apply_cpu_us_per_put);
    }
    println!(
        "apply: median of {rounds} round(s): {:.2} us wall, {:.2} us CPU per put \
         ({:.2} us on the applying thread)",
        median(wall),
        median(cpu),
        median(apply_cpu)
    );
}
