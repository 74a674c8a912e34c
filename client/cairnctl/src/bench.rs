//! `cairnctl bench`: a closed-loop (or rate-limited) load generator with
//! latency histograms. Latency is measured from when an operation was due,
//! so a rate-limited run that falls behind shows the queueing it causes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{Client, ClientConfig, Consistency, Error};
use clap::Args;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::time::Instant;

use crate::output::{Format, Table};
use crate::parse_duration;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// put, get, mixed or txn-cas.
    #[arg(value_enum)]
    workload: Workload,
    /// Operations in flight at once.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Connections (HTTP/2) per endpoint; clients share them round-robin.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Stop after this many operations.
    #[arg(long, conflicts_with = "duration")]
    ops: Option<u64>,
    /// Stop after this long (default 10s when --ops is not given).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Keys are bench/00000000 .. bench/<key-space - 1>, chosen uniformly.
    #[arg(long, default_value_t = 100_000)]
    key_space: u64,
    /// Bytes per value written.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Most operations per second in all (default: as fast as they complete).
    #[arg(long)]
    rate: Option<f64>,
    /// Send everything to the leader (else reads spread over the endpoints).
    #[arg(long)]
    target_leader: bool,
    /// Reads are serializable (any replica) instead of linearizable.
    #[arg(long)]
    serializable: bool,
    /// For mixed: the fraction of operations that are reads.
    #[arg(long, default_value_t = 0.9)]
    read_fraction: f64,
    /// Write every key of the key space once before measuring.
    #[arg(long)]
    preload: bool,
    /// One unary gRPC call per operation instead of the client's batch
    /// streams (what a client in another language without batching does).
    #[arg(long)]
    unary: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    Put,
    Get,
    Mixed,
    TxnCas,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::Mixed => "mixed",
            Workload::TxnCas => "txn-cas",
        }
    }
}

fn key(i: u64) -> String {
    format!("bench/{i:08}")
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at ")".
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12
    // after the state field; in clock ticks (100 per second on Linux).
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

struct Shared {
    args: BenchArgs,
    value: bytes::Bytes,
    issued: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
    start: Instant,
    deadline: Option<Instant>,
}

impl Shared {
    /// The next operation's ticket and when it is due, or None at the end.
    fn ticket(&self) -> Option<Instant> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        if self.args.ops.is_some_and(|ops| n >= ops) {
            return None;
        }
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            return None;
        }
        Some(match self.args.rate {
            Some(r) => self.start + Duration::from_secs_f64(n as f64 / r),
            None => now,
        })
    }
}

/// A worker's latencies, and with `--rate` how late each operation
/// started after it was due (the load generator's own delay, which the
/// latencies include).
struct Recorded {
    latency: Histogram<u64>,
    late: Histogram<u64>,
}

/// Microseconds since `t`, at least 1 (a histogram's lowest value).
fn micros_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn histogram() -> Result<Histogram<u64>, String> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())
}

async fn worker(id: usize, client: Client, shared: Arc<Shared>) -> Result<Recorded, String> {
    let mut hist = histogram()?;
    let mut late = histogram()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(id as u64 ^ 0x9e37_79b9);
    let a = &shared.args;
    let consistency = if a.serializable {
        Consistency::Serializable
    } else {
        Consistency::Linearizable
    };
    // txn-cas: what this worker believes each of its keys holds.
    let mut known: std::collections::HashMap<u64, Option<bytes::Bytes>> = Default::default();
    while let Some(due) = shared.ticket() {
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        if a.rate.is_some() {
            late.saturating_record(micros_since(due));
        }
        let k = rng.random_range(0..a.key_space.max(1));
        let read = match a.workload {
            Workload::Get => true,
            Workload::Mixed => rng.random_bool(a.read_fraction.clamp(0.0, 1.0)),
            _ => false,
        };
        let r: Result<(), Error> = if a.workload == Workload::TxnCas {
            // Workers own disjoint keys so their swaps do not collide.
            let k = k - k % a.clients as u64 + id as u64 % a.clients as u64;
            let expect = known.get(&k).cloned().flatten();
            let mut new = shared.value.to_vec();
            let stamp = rng.random::<u64>().to_le_bytes();
            let n = stamp.len().min(new.len());
            new[..n].copy_from_slice(&stamp[..n]);
            match client.cas(key(k), expect.as_deref(), &new).await {
                Ok(_) => {
                    known.insert(k, Some(new.into()));
                    Ok(())
                }
                Err(Error::CompareFailed { current }) => {
                    known.insert(k, current.map(|kv| kv.value));
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else if read {
            client.get_with(key(k), consistency).await.map(|_| ())
        } else {
            client.put(key(k), &shared.value).await.map(|_| ())
        };
        let us = micros_since(due);
        match r {
            Ok(()) => {
                hist.saturating_record(us);
                shared.done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if shared.errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("bench: {e}");
                }
            }
        }
    }
    Ok(Recorded {
        latency: hist,
        late,
    })
}

async fn clients(
    endpoints: &[String],
    cfg: &ClientConfig,
    args: &BenchArgs,
) -> Result<Vec<Client>, String> {
    let probe = Client::connect_with(endpoints, cfg.clone())
        .await
        .map_err(|e| e.to_string())?;
    let targets: Vec<String> = if args.target_leader {
        let m = probe.members().await.map_err(|e| e.to_string())?;
        let leader = m
            .members
            .iter()
            .find(|x| x.id == m.leader && m.leader != 0)
            .ok_or("no leader is known")?;
        vec![leader.client_addr.clone()]
    } else {
        endpoints.to_vec()
    };
    let mut out = Vec::new();
    for _ in 0..args.conns.max(1) {
        let c = Client::connect_with(&targets, cfg.clone())
            .await
            .map_err(|e| e.to_string())?;
        out.push(c);
    }
    Ok(out)
}

async fn preload(clients: &[Client], args: &BenchArgs, value: &bytes::Bytes) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..args.clients.max(1) {
        let c = clients[i % clients.len()].clone();
        let next = next.clone();
        let (space, value) = (args.key_space, value.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= space {
                    return Ok::<_, Error>(());
                }
                c.put(key(k), &value).await?;
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("preload: {e}"))?;
    }
    Ok(())
}

pub async fn run(
    endpoints: &[String],
    cfg: ClientConfig,
    args: &BenchArgs,
    fmt: Format,
) -> Result<(), String> {
    if args.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    if args.key_space == 0 {
        return Err("--key-space must be at least 1".into());
    }
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err("--rate must be positive".into());
    }
    let cfg = ClientConfig {
        batch: !args.unary,
        ..cfg
    };
    let clients = clients(endpoints, &cfg, args).await?;
    let value = bytes::Bytes::from(vec![b'v'; args.value_size]);
    if args.preload {
        eprintln!("bench: writing {} keys first", args.key_space);
        preload(&clients, args, &value).await?;
    }
    let duration = match (args.ops, args.duration) {
        (None, None) => Some(Duration::from_secs(10)),
        (_, d) => d,
    };
    let start = Instant::now();
    let shared = Arc::new(Shared {
        args: args.clone(),
        value,
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        start,
        deadline: duration.map(|d| start + d),
    });
    let bar = match (args.ops, duration) {
        (Some(n), _) => indicatif::ProgressBar::new(n),
        (None, d) => indicatif::ProgressBar::new(d.map_or(0, |d| d.as_secs())),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    let by_ops = args.ops.is_some();
    let ticker = {
        let (shared, bar) = (shared.clone(), bar.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let done = shared.done.load(Ordering::Relaxed);
                if by_ops {
                    bar.set_position(done);
                } else {
                    bar.set_position(shared.start.elapsed().as_secs());
                }
                bar.set_message(format!("{done} ops"));
            }
        })
    };
    let cpu0 = cpu_time();
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        let c = clients[i % clients.len()].clone();
        tasks.push(tokio::spawn(worker(i, c, shared.clone())));
    }
    let mut hist = histogram()?;
    let mut late = histogram()?;
    for t in tasks {
        let r = t.await.map_err(|e| e.to_string())??;
        hist.add(r.latency).map_err(|e| e.to_string())?;
        late.add(r.late).map_err(|e| e.to_string())?;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu0.zip(cpu_time()).map(|(a, b)| b.saturating_sub(a));
    ticker.abort();
    bar.finish_and_clear();
    let ops = shared.done.load(Ordering::Relaxed);
    let errors = shared.errors.load(Ordering::Relaxed);
    let ops_per_sec = ops as f64 / secs;
    let cpu_us_per_op = cpu.map(|c| c.as_secs_f64() * 1e6 / ops.max(1) as f64);
    let q = |p: f64| {
        if ops == 0 {
            0
        } else {
            hist.value_at_quantile(p)
        }
    };
    let (p50, p99, p999, max) = (
        q(0.5),
        q(0.99),
        q(0.999),
        if ops == 0 { 0 } else { hist.max() },
    );
    let workload = match (args.workload, args.serializable) {
        (Workload::Get | Workload::Mixed, true) => format!("{}-serializable", args.workload.name()),
        (w, _) => w.name().to_string(),
    };
    let workload = if args.unary {
        format!("{workload}-unary")
    } else {
        workload
    };
    // Recorded only with --rate.
    let late =
        (!late.is_empty()).then(|| (late.value_at_quantile(0.5), late.value_at_quantile(0.99)));
    match fmt {
        Format::Json => {
            let mut j = json!({"workload": workload, "clients": args.clients, "conns": args.conns, "ops": ops,
                   "secs": (secs * 1000.0).round() / 1000.0,
                   "ops_per_sec": ops_per_sec.round(), "p50_us": p50, "p99_us": p99,
                   "p999_us": p999, "max_us": max, "errors": errors,
                   "client_cpu_us_per_op": cpu_us_per_op.map(|c| (c * 10.0).round() / 10.0)});
            if let Some((p50, p99)) = late {
                j["start_late_p50_us"] = p50.into();
                j["start_late_p99_us"] = p99.into();
            }
            println!("{j}");
        }
        Format::Table | Format::Simple => {
            let mut t = Table::new(&[
                "WORKLOAD",
                "CLIENTS",
                "CONNS",
                "OPS",
                "SECS",
                "OPS/S",
                "P50",
                "P99",
                "P99.9",
                "MAX",
                "ERRORS",
                "CLIENT CPU/OP",
            ]);
            let ms = |us: u64| format!("{:.2}ms", us as f64 / 1000.0);
            t.row(vec![
                workload,
                args.clients.to_string(),
                args.conns.to_string(),
                ops.to_string(),
                format!("{secs:.2}"),
                format!("{ops_per_sec:.0}"),
                ms(p50),
                ms(p99),
                ms(p999),
                ms(max),
                errors.to_string(),
                cpu_us_per_op.map_or("?".into(), |c| format!("{c:.1}us")),
            ]);
            print!("{}", t.render());
            if let Some((p50, p99)) = late {
                println!(
                    "started after they were due (in the latencies above): p50 {}, p99 {}",
                    ms(p50),
                    ms(p99)
                );
            }
        }
    }
    if ops == 0 {
        return Err(format!("no operation succeeded ({errors} errors)"));
    }
    Ok(())
}
