//! Test 4: a whole-cluster restart keeps all data with the same revisions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_testing::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_restart_keeps_data_and_revisions() {
    // A small memtable so some data is in tables and some only in the log.
    let mut c = TestCluster::start(3, &["--memtable-mib", "1"]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let mut k = kv(&c.addr(leader)).await;
    let value = "x".repeat(500);
    let mut last = 0;
    for i in 0..3000 {
        let r = k
            .put(put_req(&format!("k{:05}", i % 2000), &value))
            .await
            .unwrap();
        last = r.into_inner().header.unwrap().revision;
    }
    for id in 1..=3 {
        c.wait_applied(id, last, Duration::from_secs(30)).await;
    }
    let before = dump(&c.addr(leader)).await;
    assert_eq!(before.len(), 2000);

    // Graceful stop of two, kill -9 of one: both paths must recover.
    c.nodes.get_mut(&1).unwrap().sigterm_and_wait();
    c.nodes.get_mut(&2).unwrap().sigterm_and_wait();
    c.nodes.get_mut(&3).unwrap().kill9();
    for id in 1..=3 {
        c.restart(id);
    }
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    for id in 1..=3 {
        c.wait_applied(id, last, Duration::from_secs(30)).await;
        let after = dump(&c.addr(id)).await;
        assert_eq!(before, after, "node {id} after restart");
    }
    // Revisions keep growing from where they were.
    let r = kv(&c.addr(leader))
        .await
        .put(put_req("new", "v"))
        .await
        .unwrap();
    assert!(r.into_inner().header.unwrap().revision > last);
}

/// A founding member whose data is lost is removed, restarts empty with
/// the same --initial-cluster, finds the running cluster (which no longer
/// lists it) and joins it as a learner, then voter; it never founds a
/// second cluster, even as the lowest id (the one that initializes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_founder_with_lost_data_rejoins_the_running_cluster() {
    use cairn_proto::cluster::{MembersRequest, RemoveRequest};
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let mut k = kv(&c.addr(leader)).await;
    let mut last = 0;
    for i in 0..100 {
        let r = k.put(put_req(&format!("k{i:03}"), "v")).await.unwrap();
        last = r.into_inner().header.unwrap().revision;
    }
    let cluster_id = status(&c.addr(leader)).await.unwrap().cluster_id;

    // Node 1 loses its disk.
    c.nodes.get_mut(&1).unwrap().kill9();
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(leader, 1);
    cluster(&c.addr(leader))
        .await
        .remove(RemoveRequest { id: 1 })
        .await
        .unwrap();
    std::fs::remove_dir_all(&c.nodes[&1].data).unwrap();
    c.restart(1);

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = cluster(&c.addr(leader))
            .await
            .members(MembersRequest {})
            .await
            .unwrap()
            .into_inner();
        if m.members.iter().any(|m| m.id == 1 && !m.is_learner) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 1 did not rejoin as a voter: {m:?}\n{}",
            c.nodes[&1].log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait_applied(1, last, Duration::from_secs(30)).await;
    let s = status(&c.addr(1)).await.unwrap();
    assert_eq!(s.cluster_id, cluster_id, "node 1 joined another cluster");
    assert_eq!(dump(&c.addr(1)).await, dump(&c.addr(leader)).await);
    assert!(c.nodes[&1].log().contains("joining it"));
}
