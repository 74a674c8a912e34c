//! Cluster benchmark: three real `cairn node` processes on loopback with
//! fsync on (started by `cairn-testing`), driven over gRPC by this process.
//!
//! ```sh
//! cargo bench -p cairn-node --bench cluster
//! CLUSTER_BENCH_SECS=3 CLUSTER_BENCH_ROUNDS=1 cargo bench -p cairn-node --bench cluster
//! ```
//!
//! Workloads (256-byte values, keys drawn from 100,000):
//! - `put-1`: one client, one put at a time (latency).
//! - `put-64`: 64 concurrent clients over 8 HTTP/2 connections to the leader.
//! - `get-64-linearizable`: 64 clients, ReadIndex reads on the leader.
//! - `get-64-serializable`: 64 clients, local reads on the leader.
//!
//! `CLUSTER_BENCH_ONLY=<workload>` runs one workload (for profiling).
//!
//! Reports medians over `CLUSTER_BENCH_ROUNDS` (default 3) of ops/s and
//! latency percentiles, and the CPU time the three nodes and this client
//! spent per operation (from /proc). One JSON line per workload:
//! `{"workload","clients","ops","secs","ops_per_sec","p50_us","p99_us","p999_us","node_cpu_us_per_op","client_cpu_us_per_op"}`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::kv::kv_client::KvClient;
use cairn_proto::kv::{GetRequest, PutRequest, ReadConsistency};
use cairn_testing::{Options, TestCluster};
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

const VALUE_BYTES: usize = 256;
const KEY_SPACE: u64 = 100_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of a process, in microseconds.
fn cpu_us(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    ticks * 10_000
}

fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

/// Three nodes with the node's default timing, data under
/// `CLUSTER_BENCH_DIR` (default: the current directory), and the leader.
async fn start_cluster() -> (TestCluster, u64) {
    let options = Options {
        dir_in: Some(std::env::var("CLUSTER_BENCH_DIR").map_or_else(|_| ".".into(), Into::into)),
        ..Options::bench()
    };
    let cluster = TestCluster::start_with(3, &[], options).await;
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    (cluster, leader)
}

#[derive(Clone, Copy, PartialEq)]
enum Work {
    Put,
    GetLinearizable,
    GetSerializable,
}

struct Result1 {
    ops: u64,
    secs: f64,
    hist: Histogram<u64>,
    node_cpu_us: u64,
    client_cpu_us: u64,
}

fn key(i: u64) -> Vec<u8> {
    format!("bench/{i:08}").into_bytes()
}

async fn run(
    cluster: &TestCluster,
    leader: u64,
    work: Work,
    clients: usize,
    conns: usize,
    dur: Duration,
    max_ops: u64,
) -> Result1 {
    let chans: Vec<Channel> = (0..conns).map(|_| channel(&cluster.addr(leader))).collect();
    let pids: Vec<String> = cluster
        .nodes
        .values()
        .map(|n| n.pid().to_string())
        .collect();
    let node_cpu0: u64 = pids.iter().map(|p| cpu_us(p)).sum();
    let me0 = cpu_us("self");
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut kv = KvClient::new(chans[c % conns].clone());
        let stop = stop.clone();
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut x =
                0x9e37_79b9_7f4a_7c15u64 ^ (c as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
            let value = vec![b'v'; VALUE_BYTES];
            while !stop.load(Ordering::Relaxed) {
                if count.fetch_add(1, Ordering::Relaxed) >= max_ops {
                    break;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = key(x % KEY_SPACE);
                let t = Instant::now();
                let ok = match work {
                    Work::Put => kv
                        .put(PutRequest {
                            key: k.into(),
                            value: value.clone().into(),
                            ..Default::default()
                        })
                        .await
                        .is_ok(),
                    Work::GetLinearizable | Work::GetSerializable => kv
                        .get(GetRequest {
                            key: k.into(),
                            consistency: if work == Work::GetSerializable {
                                ReadConsistency::Serializable as i32
                            } else {
                                ReadConsistency::Linearizable as i32
                            },
                        })
                        .await
                        .is_ok(),
                };
                assert!(ok, "request failed");
                h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
            }
            h
        }));
    }
    // Stop after `dur`, or earlier when every client reached `max_ops`.
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(dur).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for t in tasks {
        hist.add(t.await.unwrap()).unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    stopper.abort();
    let node_cpu_us = pids.iter().map(|p| cpu_us(p)).sum::<u64>() - node_cpu0;
    let client_cpu_us = cpu_us("self") - me0;
    Result1 {
        ops: hist.len(),
        secs,
        hist,
        node_cpu_us,
        client_cpu_us,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let rounds = env_u64("CLUSTER_BENCH_ROUNDS", 3);
    let secs = env_u64("CLUSTER_BENCH_SECS", 5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (cluster, leader) = start_cluster().await;
        let only = std::env::var("CLUSTER_BENCH_ONLY").ok();
        if only.as_deref().is_none_or(|o| o.starts_with("get")) {
            // Load the key space so reads hit.
            run(&cluster, leader, Work::Put, 64, 8, Duration::from_secs(600), KEY_SPACE).await;
        }
        let workloads: [(&str, Work, usize, usize, u64); 4] = [
            ("put-1", Work::Put, 1, 1, 5_000),
            ("put-64", Work::Put, 64, 8, u64::MAX),
            ("get-64-linearizable", Work::GetLinearizable, 64, 8, u64::MAX),
            ("get-64-serializable", Work::GetSerializable, 64, 8, u64::MAX),
        ];
        println!(
            "{:<22} {:>8} {:>12} {:>9} {:>9} {:>9} {:>14} {:>14}",
            "workload", "clients", "ops/s", "p50 us", "p99 us", "p999 us", "node cpu us/op", "client us/op"
        );
        for (name, work, clients, conns, max_ops) in workloads {
            if only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let mut rows = Vec::new();
            for _ in 0..rounds {
                rows.push(run(&cluster, leader, work, clients, conns, Duration::from_secs(secs), max_ops).await);
            }
            let med = |f: &dyn Fn(&Result1) -> f64| median(rows.iter().map(f).collect());
            let ops_s = med(&|r| r.ops as f64 / r.secs);
            let p50 = med(&|r| r.hist.value_at_quantile(0.5) as f64);
            let p99 = med(&|r| r.hist.value_at_quantile(0.99) as f64);
            let p999 = med(&|r| r.hist.value_at_quantile(0.999) as f64);
            let node = med(&|r| r.node_cpu_us as f64 / r.ops.max(1) as f64);
            let client = med(&|r| r.client_cpu_us as f64 / r.ops.max(1) as f64);
            let ops = med(&|r| r.ops as f64);
            let s = med(&|r| r.secs);
            println!(
                "{name:<22} {clients:>8} {ops_s:>12.0} {p50:>9.0} {p99:>9.0} {p999:>9.0} {node:>14.1} {client:>14.1}"
            );
            println!(
                "{{\"workload\":\"{name}\",\"clients\":{clients},\"ops\":{ops:.0},\"secs\":{s:.2},\"ops_per_sec\":{ops_s:.0},\"p50_us\":{p50:.0},\"p99_us\":{p99:.0},\"p999_us\":{p999:.0},\"node_cpu_us_per_op\":{node:.1},\"client_cpu_us_per_op\":{client:.1}}}"
            );
        }
    });
}
