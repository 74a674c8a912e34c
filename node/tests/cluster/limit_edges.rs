//! Every client-facing limit at its edge: at the limit a request works;
//! one past it is refused with INVALID_ARGUMENT naming the limit, and
//! nothing is written. Answers past `--max-response-bytes` are paged
//! (scans) or refused (a prefix delete with `prev_kv`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_proto::kv as pb;
use cairn_testing::*;
use prost::Message;

const LIMITS: &[&str] = &[
    "--max-key-bytes",
    "100",
    "--max-value-bytes",
    "2000",
    "--max-request-bytes",
    "4096",
    "--max-txn-ops",
    "4",
    "--max-response-bytes",
    "65536",
];

type Kv = pb::kv_client::KvClient<tonic::transport::Channel>;

fn put(key: &[u8], value_len: usize) -> pb::PutRequest {
    pb::PutRequest {
        key: key.to_vec().into(),
        value: vec![b'v'; value_len].into(),
        ..Default::default()
    }
}

/// Asserts `r` is INVALID_ARGUMENT naming `limit`.
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, limit: &str) {
    let e = r.expect_err("past the limit");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(limit), "{limit}: {e:?}");
}

async fn exists(k: &mut Kv, key: &[u8]) -> bool {
    k.get(pb::GetRequest {
        key: key.to_vec().into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .kv
    .is_some()
}

/// A transaction putting `keys`, its values grown so the request
/// encodes to exactly `bytes`.
fn txn_of_size(keys: &[&str], bytes: usize) -> pb::TxnRequest {
    let op = |k: &str, n: usize| pb::RequestOp {
        request: Some(pb::request_op::Request::Put(put(k.as_bytes(), n))),
    };
    let mut sizes = vec![0usize; keys.len()];
    let build = |sizes: &[usize]| pb::TxnRequest {
        success: keys.iter().zip(sizes).map(|(k, &n)| op(k, n)).collect(),
        ..Default::default()
    };
    // Grow the values one byte at a time, round robin (a varint length
    // can grow by a byte, so step until the size is exact).
    let mut i = 0;
    while build(&sizes).encoded_len() < bytes {
        sizes[i % keys.len()] += 1;
        i += 1;
    }
    let t = build(&sizes);
    assert_eq!(t.encoded_len(), bytes, "cannot hit {bytes} exactly");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_limit_holds_at_its_edge() {
    let c = TestCluster::start(1, LIMITS).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let mut k = kv(&c.addr(leader)).await;

    // Keys: 100 bytes work, 101 do not.
    let key = vec![b'k'; 100];
    k.put(put(&key, 1)).await.unwrap();
    let long = vec![b'l'; 101];
    refused(k.put(put(&long, 1)).await, "max-key-bytes = 100");
    assert!(!exists(&mut k, &long[..100]).await);

    // Values: 2000 bytes work, 2001 do not.
    k.put(put(b"v-ok", 2000)).await.unwrap();
    refused(k.put(put(b"v-big", 2001)).await, "max-value-bytes = 2000");
    assert!(!exists(&mut k, b"v-big").await);

    // Requests: a transaction of exactly 4096 bytes works, one of 4097
    // is refused and writes none of its puts.
    k.txn(txn_of_size(&["t/a", "t/b", "t/c"], 4096))
        .await
        .unwrap();
    refused(
        k.txn(txn_of_size(&["u/a", "u/b", "u/c"], 4097)).await,
        "max-request-bytes = 4096",
    );
    assert!(!exists(&mut k, b"u/a").await);

    // Transaction size: 4 compares and operations work, 5 do not.
    let op = |key: &str| pb::RequestOp {
        request: Some(pb::request_op::Request::Put(put(key.as_bytes(), 1))),
    };
    let ops = |n: usize, prefix: &str| pb::TxnRequest {
        success: (0..n).map(|i| op(&format!("{prefix}{i}"))).collect(),
        ..Default::default()
    };
    k.txn(ops(4, "o/")).await.unwrap();
    refused(k.txn(ops(5, "p/")).await, "max-txn-ops = 4");
    assert!(!exists(&mut k, b"p/0").await);

    // Answers: 40 pairs of about 2 KB (80 KB) under r/, 10 under r/0.
    for i in 0..40 {
        k.put(put(format!("r/{i:02}").as_bytes(), 2000))
            .await
            .unwrap();
    }
    let scan = |prefix: &str, continuation: Vec<u8>| pb::ScanRequest {
        prefix: prefix.as_bytes().to_vec().into(),
        continuation: continuation.into(),
        ..Default::default()
    };
    // Under the bound: one page.
    let page = k.scan(scan("r/0", Vec::new())).await.unwrap().into_inner();
    assert_eq!((page.kvs.len(), page.more), (10, false));
    // Over it: pages of at most 64 KiB of pairs, all pairs in the end.
    let mut seen = 0;
    let mut continuation = Vec::new();
    loop {
        let page = k
            .scan(scan("r/", continuation.clone()))
            .await
            .unwrap()
            .into_inner();
        let bytes: usize = page
            .kvs
            .iter()
            .map(|kv| kv.key.len() + kv.value.len())
            .sum();
        assert!(bytes <= 65536, "a page of {bytes} bytes");
        seen += page.kvs.len();
        if !page.more {
            break;
        }
        assert!(!page.kvs.is_empty());
        continuation = page.continuation.to_vec();
    }
    assert_eq!(seen, 40);
    // A prefix delete whose prev_kv answer is past the bound is refused
    // and deletes nothing; under it, it works.
    let delete = |prefix: &str| pb::DeleteRequest {
        key: prefix.as_bytes().to_vec().into(),
        prefix: true,
        prev_kv: true,
        ..Default::default()
    };
    refused(k.delete(delete("r/")).await, "max-response-bytes = 65536");
    assert!(exists(&mut k, b"r/39").await);
    let done = k.delete(delete("r/0")).await.unwrap().into_inner();
    assert_eq!((done.deleted, done.prev_kvs.len()), (10, 10));
    assert!(exists(&mut k, b"r/10").await);
}
