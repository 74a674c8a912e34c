//! Runs many simulation seeds, each in a fresh process, a few at a time,
//! and reports the failing ones with the command that replays each.
//!
//! ```sh
//! cargo run --release -p cairn-sim-tests --bin sweep -- --seeds 1000
//! cargo run --release -p cairn-sim-tests --bin sweep -- --seeds 200 --from 5000 --jobs 2
//! ```
//!
//! With `--one SEED` it runs that seed in this process and prints its
//! summary line (what the sweep runs in each child).

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cairn_sim_tests::harness::{run, summary_field, Options};

struct Args {
    seeds: u64,
    from: u64,
    jobs: u64,
    one: Option<u64>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: 100,
        from: 1,
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get() as u64),
        one: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{name} needs a number"))
        };
        match flag.as_str() {
            "--seeds" => a.seeds = value("--seeds")?,
            "--from" => a.from = value("--from")?,
            "--jobs" => a.jobs = value("--jobs")?.max(1),
            "--one" => a.one = Some(value("--one")?),
            "-h" | "--help" => {
                return Err(
                    "usage: sweep [--seeds N] [--from FIRST] [--jobs J] | --one SEED".into(),
                )
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sweep: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(seed) = args.one {
        return match run(&Options::from_env(seed)) {
            Ok(r) => {
                println!("{}", r.summary(seed));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let Ok(me) = std::env::current_exe() else {
        eprintln!("sweep: cannot find its own executable");
        return ExitCode::from(2);
    };
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(args.from));
    let end = args.from + args.seeds;
    let totals = Arc::new(Mutex::new((0u64, 0u64, 0u64, Vec::<(u64, String)>::new())));
    let workers: Vec<_> = (0..args.jobs)
        .map(|_| {
            let (me, next, totals) = (me.clone(), next.clone(), totals.clone());
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let out = Command::new(&me)
                    .args(["--one", &seed.to_string()])
                    .output();
                let Ok(mut t) = totals.lock() else { return };
                match out {
                    Ok(o) if o.status.success() => {
                        let line = String::from_utf8_lossy(&o.stdout).to_string();
                        t.0 += 1;
                        t.1 += summary_field(&line, "OPS");
                        t.2 += summary_field(&line, "FAULTS");
                    }
                    Ok(o) => {
                        let err = String::from_utf8_lossy(&o.stderr);
                        let first = err
                            .lines()
                            .find(|l| l.contains("seed ") || l.contains("panicked"))
                            .unwrap_or("")
                            .to_string();
                        t.3.push((seed, first));
                    }
                    Err(e) => t.3.push((seed, format!("could not run: {e}"))),
                }
                let done = t.0 + t.3.len() as u64;
                if done.is_multiple_of(50) {
                    eprintln!("sweep: {done}/{} seeds, {} failing", args.seeds, t.3.len());
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let Ok(t) = totals.lock() else {
        return ExitCode::FAILURE;
    };
    let took = started.elapsed();
    let seeds = t.0 + t.3.len() as u64;
    println!(
        "{} seeds passed, {} failed; {} operations, {} faults; {:.1?} ({:.0} seeds per minute)",
        t.0,
        t.3.len(),
        t.1,
        t.2,
        took,
        seeds as f64 * 60.0 / took.as_secs_f64().max(0.001)
    );
    let mut failed = t.3.clone();
    failed.sort();
    for (seed, why) in &failed {
        println!("seed {seed}: {why}");
        println!("  replay: cargo run --release -p cairn-sim-tests --bin sweep -- --one {seed}");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
