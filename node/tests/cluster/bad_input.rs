//! Test 7: bad input gets a clear error, changes nothing, and the node
//! keeps serving: oversized keys and values, too many transaction ops, an
//! empty key, random bytes and an HTTP/1 request on the client and peer
//! ports, and an undecodable Raft message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::Duration;

use cairn_proto::kv as pb;
use cairn_testing::*;

fn garbage(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let c = TestCluster::start(3, &["--max-value-bytes", "65536"]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let mut k = kv(&c.addr(leader)).await;
    k.put(put_req("keep", "me")).await.unwrap();
    let before = dump(&c.addr(leader)).await;
    let rev_before = k
        .get(get_req("keep", false))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;

    let big_key = "k".repeat(4097);
    let e = k.put(put_req(&big_key, "v")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("max-key-bytes = 4096"),
        "{}",
        e.message()
    );

    let big_value = "v".repeat(65537);
    let e = k.put(put_req("k", &big_value)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("max-value-bytes = 65536"),
        "{}",
        e.message()
    );

    let e = k.put(put_req("", "v")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("empty"), "{}", e.message());

    let e = k.get(get_req("", false)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    let e = k
        .delete(pb::DeleteRequest {
            key: Default::default(),
            prefix: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::InvalidArgument,
        "an empty prefix would delete everything"
    );

    let ops: Vec<pb::RequestOp> = (0..129)
        .map(|i| pb::RequestOp {
            request: Some(pb::request_op::Request::Put(put_req(&format!("t{i}"), "v"))),
        })
        .collect();
    let e = k
        .txn(pb::TxnRequest {
            success: ops,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("max-txn-ops = 128"), "{}", e.message());

    let e = k
        .txn(pb::TxnRequest {
            success: vec![pb::RequestOp { request: None }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    let e = k
        .txn(pb::TxnRequest {
            compares: vec![pb::Compare {
                key: b"k".to_vec().into(),
                target: 99,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // A request over the request limit names that limit...
    let large = "v".repeat(1536 << 10);
    let e = k.put(put_req("k", &large)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("max-request-bytes"), "{}", e.message());
    // ... and one far beyond it is cut off by the transport.
    let huge = "v".repeat(3 << 20);
    let e = k.put(put_req("k", &huge)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");

    // Garbage on the client and peer ports of every node.
    let mut rng_bytes = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rng_bytes.push(x as u8);
    }
    for n in c.nodes.values() {
        for addr in [&n.client, &n.peer] {
            garbage(addr, &rng_bytes);
            let reply = garbage(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            let _ = reply; // Either an HTTP error or a closed connection.
        }
    }

    // An undecodable Raft message is refused.
    let mut raft =
        cairn_proto::raft::raft_client::RaftClient::new(channel(&c.nodes[&leader].peer).await);
    let e = raft
        .append_entries(cairn_proto::raft::RaftMessage {
            payload: rng_bytes[..100].to_vec().into(),
            error: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // Nothing changed, and every node still serves.
    let after = dump(&c.addr(leader)).await;
    assert_eq!(before, after);
    let got = k.get(get_req("keep", false)).await.unwrap().into_inner();
    assert_eq!(
        got.header.unwrap().revision,
        rev_before,
        "no write was applied"
    );
    for id in c.running() {
        status(&c.addr(id)).await.unwrap();
    }
    assert_eq!(c.wait_leader(Duration::from_secs(10)).await, leader);
    k.put(put_req("after", "ok")).await.unwrap();
}
