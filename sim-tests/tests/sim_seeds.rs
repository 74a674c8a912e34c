//! Seeds of the simulation, each in a fresh process (a run must not
//! depend on what ran before it in the process, so that `SIM_SEED=S`
//! replays exactly what the batch saw). Each run's history must be
//! linearizable and its serializable reads must return written values.
//!
//! `SIM_SEEDS=N` runs seeds 1..=N (default 100); `SIM_SEED=S` runs only S.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use cairn_node::planted::{self, Bug};
use cairn_sim_tests::harness::{run, summary_field as field, Options};

/// Runs one seed in a fresh process: (its report line, or its failure).
fn run_fresh(seed: u64) -> Result<String, String> {
    run_fresh_with(seed, None)
}

/// [`run_fresh`] with a planted bug switched on.
fn run_fresh_with(seed: u64, plant: Option<Bug>) -> Result<String, String> {
    run_fresh_env(seed, plant, &[])
}

fn run_fresh_env(seed: u64, plant: Option<Bug>, env: &[(&str, &str)]) -> Result<String, String> {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "one_seed",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("SIM_ONE_SEED", seed.to_string())
        .env("SIM_PLANT", plant.map_or("", Bug::name))
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find_map(|l| l.find("SEED ").map(|i| l[i..].to_string()));
    match line {
        Some(line) if out.status.success() => Ok(line),
        _ => Err(text),
    }
}

/// The worker: runs `SIM_ONE_SEED` and prints one line about it.
#[test]
#[ignore = "run by the other tests in a fresh process"]
fn one_seed() {
    if std::env::var_os("SIM_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("SIM_LOG"))
            .without_time()
            .with_writer(std::io::stderr)
            .try_init();
    }
    let seed: u64 = std::env::var("SIM_ONE_SEED").unwrap().parse().unwrap();
    if let Some(bug) = std::env::var("SIM_PLANT")
        .ok()
        .and_then(|b| Bug::from_name(&b))
    {
        planted::set(bug, true);
    }
    let mut opts = Options::new(seed);
    opts.transfers = std::env::var_os("SIM_NO_TRANSFERS").is_none();
    opts.admin = std::env::var_os("SIM_NO_ADMIN").is_none();
    match run(&opts) {
        Ok(r) => {
            if std::env::var_os("SIM_PRINT_FAULTS").is_some() {
                for f in &r.faults {
                    println!("FAULT {f}");
                }
                for o in &r.history {
                    println!("OP {o:?}");
                }
            }
            println!("{}", r.summary(seed));
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn seeds_pass_the_checker() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(s) => vec![s],
        None => {
            let n = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(100u64);
            (1..=n).collect()
        }
    };
    let started = std::time::Instant::now();
    let (mut ops, mut faults, mut unknown) = (0, 0, 0);
    let mut admin = [0u64; 4];
    let (mut checks, mut terms) = (0, 0);
    let mut failures = Vec::new();
    for &seed in &seeds {
        match run_fresh(seed) {
            Ok(line) => {
                ops += field(&line, "OPS");
                unknown += field(&line, "UNKNOWN");
                let f = field(&line, "FAULTS");
                assert!(f >= 2, "seed {seed} injected only {f} faults: {line}");
                faults += f;
                for (i, name) in ["ADDS", "REMOVES", "TRANSFERS", "SNAPSHOTS"]
                    .iter()
                    .enumerate()
                {
                    admin[i] += field(&line, name);
                }
                checks += field(&line, "CHECKS");
                terms += field(&line, "TERMS");
            }
            Err(e) => {
                eprintln!(
                    "{e}\nseed {seed} failed; replay it with:\n  SIM_SEED={seed} cargo test -p cairn-sim-tests --test sim_seeds -- --nocapture"
                );
                failures.push(seed);
            }
        }
    }
    eprintln!(
        "{} seeds, {ops} operations ({unknown} with unknown outcome), {faults} faults \
         (of which {} voters added, {} removed, {} leader transfers, {} snapshots), \
         {checks} Raft invariant checks over {terms} terms with a leader, in {:?}",
        seeds.len(),
        admin[0],
        admin[1],
        admin[2],
        admin[3],
        started.elapsed()
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
    if seeds.len() >= 20 {
        // The administrator must really have changed the cluster.
        assert!(
            admin.iter().all(|&n| n > 0),
            "some administrative action never succeeded: {admin:?}"
        );
    }
}

/// The same seed in two fresh processes gives the same trace, with crashes,
/// network faults, snapshots and membership changes (leader transfers off:
/// see `Options::transfers`). Known gap: not every seed replays yet (in a
/// check of seeds 1-10, three fresh runs each, 4 diverged; the cause is
/// not found), so this guards the determinism that exists.
#[test]
fn a_seed_replays_identically() {
    let env = [("SIM_NO_TRANSFERS", "1")];
    let a = run_fresh_env(1, None, &env).unwrap();
    let b = run_fresh_env(1, None, &env).unwrap();
    assert_ne!(field(&a, "TRACE"), 0);
    assert!(field(&a, "ADDS") + field(&a, "SNAPSHOTS") > 0, "{a}");
    assert_eq!(field(&a, "TRANSFERS"), 0, "{a}");
    assert_eq!(a, b);
}

/// Each planted bug is caught within 200 seeds.
#[test]
fn planted_bugs_are_caught() {
    for bug in Bug::ALL {
        let caught =
            (1..=200u64).find_map(|seed| run_fresh_with(seed, Some(bug)).err().map(|e| (seed, e)));
        if let Some((seed, e)) = &caught {
            let why = e
                .lines()
                .find(|l| {
                    l.contains("Verdict")
                        || l.contains("NotLinearizable")
                        || l.contains("Phantom")
                        || l.contains("simulation:")
                        || l.contains("client ")
                        || l.contains("panicked at")
                })
                .unwrap_or("");
            eprintln!(
                "{}: caught at seed {seed}: {}",
                bug.name(),
                &why[..why.len().min(160)]
            );
        }
        assert!(
            caught.is_some(),
            "{} was not caught in 200 seeds",
            bug.name()
        );
    }
}
