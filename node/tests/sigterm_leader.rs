//! Test 8: SIGTERM on the leader moves leadership before the process
//! exits, the process exits 0, and no acknowledged write is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_over_first() {
    let mut c = TestCluster::start(3, &[]).await;
    let first = c.wait_leader(Duration::from_secs(10)).await;
    let mut acked = Vec::new();
    for i in 0..200 {
        let key = format!("k{i}");
        // Following leader hints: on a loaded machine a second election
        // may follow the first one right after a cluster starts.
        with_leader(&c.addr(first), Duration::from_secs(10), |mut k| {
            let req = put_req(&key, "v");
            async move { k.put(req).await }
        })
        .await
        .unwrap();
        acked.push(key);
    }
    // The node to stop is the leader now.
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let status = c.nodes.get_mut(&leader).unwrap().sigterm_and_wait();
    assert!(status.success(), "exit status {status:?}");
    let log = c.nodes[&leader].log();
    assert!(log.contains("transferring leadership"), "{log}");
    let new_leader = c.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, leader);
    // The transfer happened before exit: the log shows the handover
    // completed while the old leader was still running.
    assert!(!log.contains("leader transfer failed"), "{log}");
    let mut k = kv(&c.addr(new_leader)).await;
    for key in &acked {
        let got = k.get(get_req(key, false)).await.unwrap().into_inner();
        assert!(got.kv.is_some(), "lost {key}");
    }
    k.put(put_req("after", "v")).await.unwrap();
}
