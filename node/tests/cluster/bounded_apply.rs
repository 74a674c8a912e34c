//! No request can take the cluster down: a command whose cost is past a
//! bound is refused with an error naming it (by the leader before it is
//! proposed, or by every replica alike when it is applied), the Raft of
//! every node keeps running, and a restart after it is clean. Answers are
//! bounded in bytes, and limits are checked when a node starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_proto::kv as pb;
use cairn_testing::*;

const MIB: usize = 1 << 20;

async fn put_value(addr: &str, key: String, value: &[u8]) -> u64 {
    let req = pb::PutRequest {
        key: key.into_bytes().into(),
        value: value.to_vec().into(),
        ..Default::default()
    };
    put_on_leader(addr, req, Duration::from_secs(15)).await
}

async fn delete_prefix(
    addr: &str,
    prefix: &str,
    prev_kv: bool,
) -> Result<pb::DeleteResponse, tonic::Status> {
    // With a request id, as every cairn-client write has one: its answer
    // is kept with the id for a retry.
    let req = pb::DeleteRequest {
        key: prefix.as_bytes().to_vec().into(),
        prefix: true,
        prev_kv,
        request_id: Some(pb::RequestId {
            client_id: open_session(addr).await,
            seq: 1,
            floor: 1,
        }),
    };
    with_leader(addr, Duration::from_secs(15), |mut k| {
        let req = req.clone();
        async move { k.delete(req).await }
    })
    .await
    .map(tonic::Response::into_inner)
}

/// Keys under `prefix`, paging through the whole range.
async fn count_keys(addr: &str, prefix: &str) -> usize {
    let mut k = kv(addr).await;
    let mut n = 0;
    let mut continuation = Vec::new();
    loop {
        let r = k
            .scan(pb::ScanRequest {
                prefix: prefix.as_bytes().to_vec().into(),
                keys_only: true,
                continuation: continuation.clone().into(),
                consistency: pb::ReadConsistency::Serializable as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        n += r.kvs.len();
        if !r.more {
            return n;
        }
        continuation = r.continuation.to_vec();
    }
}

/// Every node applies a write made after `what`: none of them stopped.
async fn every_node_keeps_applying(c: &TestCluster, what: &str) -> u64 {
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let revision = put_value(&c.addr(leader), format!("after/{what}"), b"ok").await;
    for id in c.running() {
        c.wait_applied(id, revision, Duration::from_secs(30)).await;
    }
    revision
}

/// A whole-cluster kill -9 and restart: every node comes back and
/// applies a new write.
async fn restart_all(c: &mut TestCluster) {
    for id in c.running() {
        c.nodes.get_mut(&id).unwrap().kill9();
    }
    for id in 1..=3 {
        c.restart(id);
    }
    every_node_keeps_applying(c, "restart").await;
}

/// 70 values of 1 MiB and a prefix delete with prev_kv: once a permanent
/// outage (the answer, kept for the request id, was past the engine's
/// value limit and every replica's apply failed). Now the leader refuses
/// it naming `max-response-bytes`, nothing is deleted, and the delete
/// without prev_kv goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_delete_with_a_huge_answer_is_refused_and_raft_keeps_running() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let addr = c.addr(leader);
    let value = vec![b'v'; MIB];
    for i in 0..70 {
        put_value(&addr, format!("x/{i:02}"), &value).await;
    }
    let err = delete_prefix(&addr, "x/", true).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("max-response-bytes = 2097152"),
        "the error names the limit: {err:?}"
    );
    every_node_keeps_applying(&c, "refused").await;
    assert_eq!(count_keys(&addr, "x/").await, 70, "nothing was deleted");

    let done = delete_prefix(&addr, "x/", false).await.unwrap();
    assert_eq!(done.deleted, 70);
    assert!(done.prev_kvs.is_empty());
    every_node_keeps_applying(&c, "deleted").await;
    restart_all(&mut c).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    assert_eq!(count_keys(&c.addr(leader), "x/").await, 0);
}

/// A transaction whose scans read more than one entry may answer: the
/// leader cannot know it in advance, so every replica refuses it when
/// applying it, the same way: INVALID_ARGUMENT naming the bound, nothing
/// of the transaction written, a retry with its request id answered with
/// the same refusal, and every node still applying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_whose_reads_outgrow_an_entry_is_refused_on_every_replica() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let addr = c.addr(leader);
    let value = vec![b'v'; MIB];
    for i in 0..12 {
        put_value(&addr, format!("y/{i:02}"), &value).await;
    }
    let scan = pb::RequestOp {
        request: Some(pb::request_op::Request::Scan(pb::ScanRequest {
            prefix: b"y/".to_vec().into(),
            ..Default::default()
        })),
    };
    let mut success = vec![pb::RequestOp {
        request: Some(pb::request_op::Request::Put(put_req("z", "written?"))),
    }];
    // Each scan's page holds one pair (a page stops at 2 MiB of pairs):
    // 30 of them are past 24 MiB.
    success.extend(std::iter::repeat_n(scan, 30));
    let txn = pb::TxnRequest {
        success,
        request_id: Some(pb::RequestId {
            client_id: open_session(&addr).await,
            seq: 1,
            floor: 1,
        }),
        ..Default::default()
    };
    for attempt in ["first", "retry"] {
        let err = with_leader(&addr, Duration::from_secs(15), |mut k| {
            let txn = txn.clone();
            async move { k.txn(txn).await }
        })
        .await
        .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{attempt}: {err:?}"
        );
        assert!(
            err.message().contains("entry-answer-bytes = 25165824"),
            "{attempt}: the error names the bound: {err:?}"
        );
    }
    every_node_keeps_applying(&c, "txn").await;
    let mut k = kv(&addr).await;
    assert!(get_kv(&mut k, "z").await.is_none(), "nothing was written");
    restart_all(&mut c).await;
}

/// A scan's page is bounded in bytes as well as pairs: values just under
/// 1 MiB come two to a page under the default 2 MiB (a third would pass
/// it), and the continuation reaches every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_pages_are_bounded_in_bytes() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let addr = c.addr(leader);
    // Two of these (with their keys and overhead) fit in 2 MiB, three do not.
    let value = vec![b'v'; MIB - 1024];
    for i in 0..5 {
        put_value(&addr, format!("s/{i}"), &value).await;
    }
    let mut k = kv(&addr).await;
    let mut pages = Vec::new();
    let mut continuation = Vec::new();
    loop {
        let r = k
            .scan(pb::ScanRequest {
                prefix: b"s/".to_vec().into(),
                continuation: continuation.clone().into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.kvs.iter().all(|kv| kv.value.len() == MIB - 1024));
        pages.push(r.kvs.len());
        if !r.more {
            break;
        }
        continuation = r.continuation.to_vec();
    }
    assert_eq!(pages, vec![2, 2, 1]);
}

/// Limits past what the node can honour are refused at start-up, naming
/// the option and its bound.
#[test]
fn limits_past_their_bounds_are_refused_at_start() {
    for (flag, value, bound) in [
        ("--max-key-bytes", "65536", "65535"),
        ("--max-request-bytes", "33554432", "16777216"),
        ("--max-response-bytes", "1000", "65536"),
        ("--max-txn-ops", "0", "10000"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(cairn_binary())
            .args(["node", "--id", "1"])
            .args(["--data-dir", dir.path().to_str().unwrap()])
            .args([
                "--listen-client",
                "127.0.0.1:0",
                "--listen-peer",
                "127.0.0.1:0",
            ])
            .args([flag, value])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A node that accepted the limit would run on: give it 10 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(
            status.is_some_and(|s| !s.success()),
            "{flag} {value} was accepted: {stderr}"
        );
        assert!(
            stderr.contains(flag.trim_start_matches('-')) && stderr.contains(bound),
            "{flag} {value}: the error names the option and {bound}: {stderr}"
        );
    }
}
