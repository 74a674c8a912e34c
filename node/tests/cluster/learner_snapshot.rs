//! Test 3: a node joining after 20k writes, when the log has been purged
//! behind a snapshot, catches up through a streamed snapshot and is
//! promoted; then a voter is removed and the cluster goes on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cairn_proto::cluster::{MembersRequest, RemoveRequest};
use cairn_testing::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_learner_catches_up_by_snapshot_and_is_promoted() {
    let flags = ["--snapshot-entries", "2000", "--memtable-mib", "2"];
    let mut c = TestCluster::start(3, &flags).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let addr = c.addr(leader);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut k = kv(&addr).await;
            let mut last = 0;
            for i in 0..1250 {
                let r = k
                    .put(put_req(&format!("k{w:02}/{i:05}"), &format!("{w}.{i}")))
                    .await
                    .unwrap();
                last = last.max(r.into_inner().header.unwrap().revision);
            }
            last
        }));
    }
    let mut last = 0;
    for t in tasks {
        last = last.max(t.await.unwrap());
    }
    assert!(last >= 20_000);
    // The log has been purged behind a snapshot.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(&addr).await.unwrap();
        if s.purged_index > 0 && s.snapshot_index > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot and purge: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Node 4 joins through a follower (the request is redirected).
    let via = c.running().into_iter().find(|&i| i != leader).unwrap();
    c.add_joining_node(4, via, &flags);
    wait_promoted(&addr, 4, Duration::from_secs(60)).await;
    c.wait_applied(4, last, Duration::from_secs(30)).await;
    assert!(
        metric(&c.nodes[&4].metrics, "cairn_snapshots_installed_total") >= 1.0,
        "node 4 caught up through a snapshot"
    );
    assert_eq!(dump(&c.addr(4)).await, dump(&addr).await);

    // Remove a voter that is not the leader; the cluster goes on.
    let victim = c
        .running()
        .into_iter()
        .find(|&i| i != leader && i != 4)
        .unwrap();
    let m = with_cluster_leader(&c, leader, victim).await;
    assert_eq!(m.members.len(), 3);
    assert!(m.members.iter().all(|x| x.id != victim && !x.is_learner));
    c.nodes.get_mut(&victim).unwrap().kill9();
    let r = kv(&addr)
        .await
        .put(put_req("after-remove", "ok"))
        .await
        .unwrap();
    let rev = r.into_inner().header.unwrap().revision;
    c.wait_applied(4, rev, Duration::from_secs(10)).await;
}

async fn with_cluster_leader(
    c: &TestCluster,
    leader: u64,
    victim: u64,
) -> cairn_proto::cluster::MembersResponse {
    cluster(&c.addr(leader))
        .await
        .remove(RemoveRequest { id: victim })
        .await
        .unwrap()
        .into_inner()
}

/// A learner joins while writes go on: with a snapshot every 2,000
/// entries, newer snapshots replace the one being sent to it; the
/// transfer reads through the files it opened, so it still completes and
/// the learner is promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_added_under_continuous_writes_is_promoted() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let flags = ["--snapshot-entries", "2000", "--memtable-mib", "2"];
    let mut c = TestCluster::start(3, &flags).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let addr = c.addr(leader);
    let stop = Arc::new(AtomicBool::new(false));
    let value = "v".repeat(4096);
    let mut writers = Vec::new();
    for w in 0..8 {
        let (addr, stop, value) = (addr.clone(), stop.clone(), value.clone());
        writers.push(tokio::spawn(async move {
            let mut k = kv(&addr).await;
            // Bounded: at most 40,000 puts in all, or until told to stop.
            for i in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = k.put(put_req(&format!("w{w}/{i:05}"), &value)).await;
            }
        }));
    }
    // About 100 MB first, so a transfer outlasts the snapshots that
    // replace it; snapshots and purges have started by then.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(&addr).await.unwrap();
        if s.applied >= 24_000 && s.purged_index > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "writes too slow: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.add_joining_node(4, leader, &flags);
    wait_promoted(&addr, 4, Duration::from_secs(90)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
}

/// Waits until node `id` is a voter in the membership `addr` reports.
async fn wait_promoted(addr: &str, id: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let m = cluster(addr)
            .await
            .members(MembersRequest {})
            .await
            .unwrap()
            .into_inner();
        if m.members.iter().any(|x| x.id == id && !x.is_learner) {
            return;
        }
        assert!(Instant::now() < deadline, "node {id} not promoted: {m:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
