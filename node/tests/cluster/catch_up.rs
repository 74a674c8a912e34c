//! A follower far behind on large values catches up: replication
//! messages are capped in entries by what the largest entries may take,
//! so none passes the peer port's 256 MiB message bound (with 512 entries
//! of 16 MB a message was refused by the follower on every retry).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_proto::kv as pb;
use cairn_testing::*;

/// A follower stopped while 600 values of 1 MiB (600 MiB, past the
/// peer port's 256 MiB message bound many times over) are written
/// catches up within 30 s of its restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_by_600_values_of_1_mib_catches_up_in_30_s() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.running().into_iter().find(|&id| id != leader).unwrap();
    c.nodes.get_mut(&follower).unwrap().kill9();
    let endpoints: Vec<String> = c
        .running()
        .into_iter()
        .filter(|&id| id != follower)
        .map(|id| c.addr(id))
        .collect();
    let client = cairn_client::Client::connect_with(
        endpoints,
        cairn_client::ClientConfig {
            timeout: Duration::from_secs(30),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let value = bytes::Bytes::from(vec![b'v'; 1 << 20]);
    // Eight writers, 75 values each.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (client, value) = (client.clone(), value.clone());
            tokio::spawn(async move {
                let mut last = 0;
                for i in 0..75 {
                    last = client.put(format!("big/{w}/{i:02}"), &value).await.unwrap();
                }
                last
            })
        })
        .collect();
    let mut revision = 0;
    for w in writers {
        revision = revision.max(w.await.unwrap());
    }
    c.restart(follower);
    c.wait_applied(follower, revision, Duration::from_secs(30))
        .await;
    let mut k = kv(&c.addr(follower)).await;
    let kv = get_kv_serializable(&mut k, "big/7/74").await;
    assert_eq!(kv.map(|kv| kv.value.len()), Some(1 << 20));
}

/// Fewer, larger values (20 of 16 MB, 512 of which would once fill one
/// message past the bound) catch up too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_by_320_mb_of_values_catches_up() {
    let mut c = TestCluster::start(
        3,
        &[
            "--max-request-bytes",
            "16777216",
            "--max-value-bytes",
            "16000000",
        ],
    )
    .await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.running().into_iter().find(|&id| id != leader).unwrap();
    c.nodes.get_mut(&follower).unwrap().kill9();
    let value = vec![b'v'; 16_000_000];
    let mut revision = 0;
    for i in 0..20 {
        let req = pb::PutRequest {
            key: format!("big/{i:02}").into_bytes().into(),
            value: value.clone().into(),
            ..Default::default()
        };
        revision = put_on_leader(&c.addr(leader), req, Duration::from_secs(30)).await;
    }
    c.restart(follower);
    c.wait_applied(follower, revision, Duration::from_secs(60))
        .await;
    let mut k = kv(&c.addr(follower)).await;
    let kv = get_kv_serializable(&mut k, "big/19").await;
    assert_eq!(kv.map(|kv| kv.value.len()), Some(16_000_000));
}

async fn get_kv_serializable(
    k: &mut pb::kv_client::KvClient<tonic::transport::Channel>,
    key: &str,
) -> Option<pb::KeyValue> {
    let mut req = tonic::Request::new(get_req(key, true));
    req.set_timeout(Duration::from_secs(10));
    k.clone()
        .max_decoding_message_size(32 << 20)
        .get(req)
        .await
        .unwrap()
        .into_inner()
        .kv
}
