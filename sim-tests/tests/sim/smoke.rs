//! The real node code in the simulator: three nodes on simulated hosts
//! with simulated disks elect a leader and serve a client, through a
//! partition of the leader.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use cairn_client::{Client, ClientConfig};
use cairn_io::MemFs;
use cairn_sim_tests::harness::add_node;
use cairn_sim_tests::invariants::Invariants;
use cairn_sim_tests::net::SimNet;

fn node(sim: &mut turmoil::Sim<'_>, id: u64, seed: u64) {
    let invariants = Arc::new(std::sync::Mutex::new(Invariants::default()));
    let stops = Arc::new(std::sync::Mutex::new(Vec::new()));
    let refusals = Arc::new(std::sync::Mutex::new(Vec::new()));
    add_node(
        sim,
        id,
        seed,
        Arc::new(MemFs::new()),
        invariants,
        stops,
        refusals,
    );
}

/// Runs the scenario for `seed`; returns what the client saw: the three
/// revisions and the simulated time of each step.
fn run(seed: u64) -> Vec<(u64, Duration)> {
    let trace = Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = trace.clone();
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .rng_seed(seed)
        .build();
    for id in 1..=3 {
        node(&mut sim, id, seed);
    }
    sim.client("client", async move {
        let cfg = ClientConfig {
            net: Arc::new(SimNet),
            seed: Some(seed),
            timeout: Duration::from_secs(10),
            ..ClientConfig::default()
        };
        let c = loop {
            match Client::connect_with(["n1:7001", "n2:7001", "n3:7001"], cfg.clone()).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let rev = c.put("k", "v1").await?;
        trace.lock().unwrap().push((rev, turmoil::elapsed()));
        assert!(rev > 1, "revision {rev}");
        assert_eq!(c.get("k").await?.unwrap().mod_revision, rev);
        // Cut the leader off from the other nodes: a new leader takes over
        // and the client's writes and reads follow it.
        let m = c.members().await?;
        let leader = format!("n{}", m.leader);
        for other in ["n1", "n2", "n3"].into_iter().filter(|o| *o != leader) {
            turmoil::partition(leader.as_str(), other);
        }
        let before = tokio::time::Instant::now();
        let rev2 = c.put("k", "v2").await?;
        assert!(rev2 > rev);
        let kv = c.get("k").await?.unwrap();
        assert_eq!((kv.value.as_ref(), kv.mod_revision), (&b"v2"[..], rev2));
        // The majority side has a new leader (the isolated node may still
        // think it leads: it cannot commit anything, so it does no harm).
        let other = ["n1", "n2", "n3"]
            .into_iter()
            .find(|o| *o != leader)
            .unwrap();
        let s = c.status_of(&format!("{other}:7001")).await?;
        assert_ne!(
            s.leader, m.leader,
            "the majority did not elect a new leader"
        );
        trace.lock().unwrap().push((rev2, before.elapsed()));
        for other in ["n1", "n2", "n3"].into_iter().filter(|o| *o != leader) {
            turmoil::repair(leader.as_str(), other);
        }
        let rev3 = c.put("k", "v3").await?;
        assert!(rev3 > rev2);
        trace.lock().unwrap().push((rev3, turmoil::elapsed()));
        Ok(())
    });
    sim.run().unwrap();
    let t = out.lock().unwrap().clone();
    t
}

#[test]
fn three_simulated_nodes_serve_through_a_partition() {
    for seed in 1..=5 {
        let t = run(seed);
        assert_eq!(t.len(), 3, "seed {seed}: {t:?}");
        // The failover takes at least an election timeout, and not forever.
        assert!(t[1].1 >= Duration::from_millis(500), "seed {seed}: {t:?}");
        assert!(t[1].1 < Duration::from_secs(10), "seed {seed}: {t:?}");
    }
}

/// The same seed gives the same run (in one process; the issue's
/// fresh-process comparison of whole traces comes with the harness).
#[test]
fn the_same_seed_gives_the_same_run() {
    assert_eq!(run(11), run(11));
}
