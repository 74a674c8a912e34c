//! Test 8: SIGTERM on the leader moves leadership before the process
//! exits, the process exits 0, and no acknowledged write is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_testing::*;

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

/// While a node drains it refuses new calls; once leadership has moved,
/// each refusal names the new leader, so callers (the gateway among them)
/// go there in one hop instead of backing off and asking around.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_leader_names_its_successor_when_it_refuses() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    with_leader(&c.addr(leader), Duration::from_secs(10), |mut k| {
        let req = put_req("before", "v");
        async move { k.put(req).await }
    })
    .await
    .unwrap();
    // The node to stop is the leader now.
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let mut k = kv(&c.addr(leader)).await;
    c.nodes[&leader].sigterm();
    // Until its client server stops: puts straight to it, one at a time.
    let (mut refusals, mut hints) = (0, Vec::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let mut req = tonic::Request::new(put_req("during", "v"));
        req.set_timeout(Duration::from_secs(2));
        match k.put(req).await {
            Ok(_) => {}
            Err(s) if s.message().starts_with("node is shutting down") => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                refusals += 1;
                if let Some(h) = leader_hint(&s) {
                    hints.push(h);
                }
            }
            // Not the leader any more (a call that came in before the
            // drain began), or the server is gone.
            Err(s) if leader_hint(&s).is_some() => {}
            Err(s) if s.code() == tonic::Code::DeadlineExceeded => {}
            Err(_) => break,
        }
    }
    let status = c.nodes.get_mut(&leader).unwrap().wait_exit();
    assert!(status.success(), "exit status {status:?}");
    assert!(refusals > 0, "no call reached the node while it drained");
    assert!(
        !hints.is_empty(),
        "none of {refusals} refusals named the new leader"
    );
    let successor = c.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(successor, leader);
    for h in &hints {
        assert_eq!(h, &c.addr(successor), "a refusal named {h}");
    }
}
