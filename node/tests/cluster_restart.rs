//! Test 4: a whole-cluster restart keeps all data with the same revisions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

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
