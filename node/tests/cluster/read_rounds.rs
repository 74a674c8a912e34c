//! Concurrent linearizable reads share ReadIndex rounds, and every read
//! still sees the writes acknowledged before it began.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_testing::*;

const READERS: usize = 48;
const ROUNDS_EACH: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_linearizable_reads_share_rounds_and_see_acknowledged_writes() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let addr = c.addr(leader);
    let metrics = c.nodes[&leader].metrics.clone();
    let served_before = metric(&metrics, "cairn_read_round_readers_sum");
    let rounds_before = metric(&metrics, "cairn_read_round_readers_count");

    // Each task writes its own key, then reads it back linearizably while
    // the other tasks' reads keep rounds in flight: a reader that joined a
    // round begun before its write was acknowledged could miss it.
    let mut tasks = Vec::new();
    for t in 0..READERS {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut k = kv(&addr).await;
            let key = format!("reader-{t}");
            for n in 0..ROUNDS_EACH {
                let value = format!("{n}");
                let put = k.put(put_req(&key, &value)).await.unwrap().into_inner();
                let got = k.get(get_req(&key, false)).await.unwrap().into_inner();
                let kv = got.kv.expect("an acknowledged write is visible");
                assert_eq!(&kv.value[..], value.as_bytes(), "{key} read {n}");
                let revision = put.header.unwrap().revision;
                assert!(kv.mod_revision >= revision);
                assert!(got.header.unwrap().revision >= revision);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let reads = (READERS * ROUNDS_EACH) as f64;
    let served = metric(&metrics, "cairn_read_round_readers_sum") - served_before;
    let rounds = metric(&metrics, "cairn_read_round_readers_count") - rounds_before;
    assert_eq!(served, reads, "every read went through a round");
    assert!(
        rounds < reads,
        "{reads} concurrent reads took {rounds} rounds: none was shared"
    );
}
