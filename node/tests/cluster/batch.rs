//! `KV.Batch` spoken by hand over gRPC: several calls in one message are
//! each answered once, by id; a call behaves exactly as its unary form
//! (a follower names the leader, a limit is named, a missing operation is
//! refused) and a refused call changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_proto::kv as pb;
use cairn_proto::kv::batch_call::Call;
use cairn_proto::kv::batch_reply::Reply;
use cairn_testing::*;

fn call(id: u64, c: Call) -> pb::BatchCall {
    pb::BatchCall {
        id,
        timeout_us: 5_000_000,
        call: Some(c),
    }
}

/// Sends `calls` as one message and collects one reply per call.
async fn batch(addr: &str, calls: Vec<pb::BatchCall>) -> BTreeMap<u64, Reply> {
    let n = calls.len();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(pb::BatchRequest { calls }).unwrap();
    let mut answers = kv(addr)
        .await
        .batch(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut out = BTreeMap::new();
    while out.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(10), answers.message())
            .await
            .expect("answers within 10 s")
            .unwrap()
            .expect("the stream stays open while calls are unanswered");
        for r in msg.replies {
            assert!(
                out.insert(r.id, r.reply.expect("a reply")).is_none(),
                "call {} answered twice",
                r.id
            );
        }
    }
    // Closing our side ends the stream once everything is answered.
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("the stream ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
    out
}

fn error(r: &Reply) -> &pb::CallError {
    match r {
        Reply::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_calls_behave_like_unary_calls() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.running().into_iter().find(|&i| i != leader).unwrap();

    // Ten puts and a transaction in one message to the leader.
    let mut calls: Vec<pb::BatchCall> = (0..10)
        .map(|i| call(i, Call::Put(put_req(&format!("b/{i}"), &format!("v{i}")))))
        .collect();
    calls.push(call(
        10,
        Call::Txn(pb::TxnRequest {
            compares: vec![pb::Compare {
                key: b"b/txn".to_vec().into(),
                target: pb::compare::Target::Version as i32,
                op: pb::compare::Op::Equal as i32,
                value: Default::default(),
                number: 0,
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::Put(put_req("b/txn", "created"))),
            }],
            failure: vec![],
            request_id: None,
        }),
    ));
    let replies = batch(&c.addr(leader), calls).await;
    let mut revisions = Vec::new();
    for i in 0..10 {
        match &replies[&i] {
            Reply::Put(p) => revisions.push(p.header.as_ref().unwrap().revision),
            other => panic!("put {i}: {other:?}"),
        }
    }
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), 10, "every put is its own write");
    match &replies[&10] {
        Reply::Txn(t) => assert!(t.succeeded),
        other => panic!("txn: {other:?}"),
    }

    // Reads of every kind, to the leader; any deadline is accepted.
    let replies = batch(
        &c.addr(leader),
        vec![
            pb::BatchCall {
                timeout_us: u64::MAX,
                ..call(1, Call::Get(get_req("b/3", false)))
            },
            call(2, Call::Get(get_req("b/absent", false))),
            call(
                3,
                Call::Scan(pb::ScanRequest {
                    prefix: b"b/".to_vec().into(),
                    ..Default::default()
                }),
            ),
        ],
    )
    .await;
    match &replies[&1] {
        Reply::Get(g) => assert_eq!(&g.kv.as_ref().unwrap().value[..], b"v3"),
        other => panic!("{other:?}"),
    }
    match &replies[&2] {
        Reply::Get(g) => assert!(g.kv.is_none()),
        other => panic!("{other:?}"),
    }
    match &replies[&3] {
        Reply::Scan(s) => assert_eq!(s.kvs.len(), 11),
        other => panic!("{other:?}"),
    }

    // On a follower: a write and a linearizable read name the leader, a
    // serializable read is served there; bad input is refused naming the
    // limit; a call without an operation is refused.
    c.wait_applied(follower, revisions[9], Duration::from_secs(10))
        .await;
    let replies = batch(
        &c.addr(follower),
        vec![
            call(1, Call::Put(put_req("b/from-follower", "x"))),
            call(2, Call::Get(get_req("b/3", false))),
            call(3, Call::Get(get_req("b/3", true))),
            call(4, Call::Put(put_req(&"k".repeat(5000), "x"))),
            pb::BatchCall {
                id: 5,
                timeout_us: 0,
                call: None,
            },
        ],
    )
    .await;
    for id in [1, 2] {
        let e = error(&replies[&id]);
        assert_eq!(e.code, tonic::Code::Unavailable as i32, "{e:?}");
        let hint = e
            .trailers
            .iter()
            .find(|t| t.key == cairn_proto::LEADER_ADDR)
            .expect("the leader's address");
        assert_eq!(hint.value, c.addr(leader));
    }
    match &replies[&3] {
        Reply::Get(g) => assert_eq!(&g.kv.as_ref().unwrap().value[..], b"v3"),
        other => panic!("{other:?}"),
    }
    let e = error(&replies[&4]);
    assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
    assert!(e.message.contains("max-key-bytes"), "{}", e.message);
    assert_eq!(
        error(&replies[&5]).code,
        tonic::Code::InvalidArgument as i32
    );

    // Nothing the refused calls carried was written.
    let mut k = kv(&c.addr(leader)).await;
    assert!(get_kv(&mut k, "b/from-follower").await.is_none());
    let r = k
        .scan(pb::ScanRequest {
            prefix: b"b/".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.kvs.len(), 11);
}
