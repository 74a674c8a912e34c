//! Test 2: kill -9 the leader during concurrent writes. A new leader is
//! elected within seconds; every acknowledged write is present on every
//! node once the old leader restarts and catches up; the replicas' states
//! are identical.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_testing::*;
use parking_lot::Mutex;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_leader_crash() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let addrs: Vec<String> = c.running().iter().map(|&i| c.addr(i)).collect();
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let acked = acked.clone();
        let stop = stop.clone();
        let addrs = addrs.clone();
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            let mut target = addrs[w % addrs.len()].clone();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let key = format!("w{w}/{i:06}");
                let val = format!("{w}-{i}");
                let mut k = kv(&target).await;
                match k.put(put_req(&key, &val)).await {
                    Ok(_) => {
                        acked.lock().insert(key, val);
                        i += 1;
                    }
                    Err(s) => {
                        // Unknown outcome: this key may or may not be there;
                        // the next attempt uses a new key.
                        i += 1;
                        target = leader_hint(&s)
                            .unwrap_or_else(|| addrs[(i as usize) % addrs.len()].clone());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    // Let writes flow, then kill the leader.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before_kill = acked.lock().len();
    assert!(
        before_kill > 50,
        "writes flowed before the crash: {before_kill}"
    );
    c.nodes.get_mut(&leader).unwrap().kill9();
    let killed_at = Instant::now();
    let new_leader = c.wait_leader(Duration::from_secs(10)).await;
    let failover = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    eprintln!("failover took {failover:?}");
    // Writes continue under the new leader.
    let at_failover = acked.lock().len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        acked.lock().len() > at_failover,
        "writes resumed after failover"
    );
    // Restart the old leader while writes go on, then stop writing.
    c.restart(leader);
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // A final write: its revision is the point everyone must reach.
    let last = with_leader(
        &c.addr(new_leader),
        Duration::from_secs(10),
        |mut k| async move { k.put(put_req("final", "x")).await },
    )
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision;
    for id in 1..=3 {
        c.wait_applied(id, last, Duration::from_secs(30)).await;
    }
    let acked = acked.lock().clone();
    let mut states = Vec::new();
    for id in 1..=3 {
        let state = dump(&c.addr(id)).await;
        let map: BTreeMap<String, String> = state
            .iter()
            .map(|(k, v, ..)| {
                (
                    String::from_utf8(k.clone()).unwrap(),
                    String::from_utf8(v.clone()).unwrap(),
                )
            })
            .collect();
        for (k, v) in &acked {
            assert_eq!(map.get(k), Some(v), "node {id} lost acknowledged write {k}");
        }
        states.push(state);
    }
    assert_eq!(states[0], states[1], "replicas 1 and 2 differ");
    assert_eq!(states[1], states[2], "replicas 2 and 3 differ");
    eprintln!("{} acknowledged writes checked on 3 nodes", acked.len());
}
