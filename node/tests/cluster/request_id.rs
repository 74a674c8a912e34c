//! Test 6: a retried write with the same request id is applied once, and
//! the retry gets the first result.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_proto::kv as pb;
use cairn_testing::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let mut k = kv(&c.addr(leader)).await;
    let id = pb::RequestId {
        client_id: 42,
        seq: 7,
    };
    let req = pb::PutRequest {
        request_id: Some(id),
        prev_kv: true,
        ..put_req("counter", "1")
    };
    let first = k.put(req.clone()).await.unwrap().into_inner();
    let second = k.put(req.clone()).await.unwrap().into_inner();
    assert_eq!(
        first.header.unwrap().revision,
        second.header.unwrap().revision,
        "the duplicate answers with the first revision"
    );
    assert_eq!(first.prev_kv, second.prev_kv);
    let kv = get_kv(&mut k, "counter").await.unwrap();
    assert_eq!(kv.version, 1, "applied once");

    // A different sequence number is a new write.
    let third = k
        .put(pb::PutRequest {
            request_id: Some(pb::RequestId {
                client_id: 42,
                seq: 8,
            }),
            ..put_req("counter", "2")
        })
        .await
        .unwrap()
        .into_inner();
    let kv = get_kv(&mut k, "counter").await.unwrap();
    assert_eq!(kv.version, 2);
    assert_eq!(kv.mod_revision, third.header.unwrap().revision);

    // A transaction retried with its id runs once: a counter increment by CAS.
    let txn = pb::TxnRequest {
        compares: vec![pb::Compare {
            key: b"counter".to_vec().into(),
            target: pb::compare::Target::Version as i32,
            op: pb::compare::Op::Equal as i32,
            value: Default::default(),
            number: 2,
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::Put(put_req("counter", "3"))),
        }],
        failure: vec![],
        request_id: Some(pb::RequestId {
            client_id: 43,
            seq: 1,
        }),
    };
    let a = k.txn(txn.clone()).await.unwrap().into_inner();
    let b = k.txn(txn).await.unwrap().into_inner();
    assert!(
        a.succeeded && b.succeeded,
        "the retry reports the first outcome"
    );
    let kv = get_kv(&mut k, "counter").await.unwrap();
    assert_eq!(kv.version, 3);

    // The table survives a restart of every node (it is part of the data).
    let mut c = c;
    for id in c.running() {
        c.nodes.get_mut(&id).unwrap().kill9();
    }
    for id in 1..=3 {
        c.restart(id);
    }
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let mut k = cairn_testing::kv(&c.addr(leader)).await;
    let again = with_leader(&c.addr(leader), Duration::from_secs(10), |mut k| {
        let req = req.clone();
        async move { k.put(req).await }
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        again.header.unwrap().revision,
        first.header.unwrap().revision
    );
    let kv = get_kv(&mut k, "counter").await.unwrap();
    assert_eq!(kv.version, 3);
}
