//! Request ids and client sessions: a retried write is applied once and
//! gets the first result; a write below its client's floor, or of a
//! client without a session, is refused with a clear error and never
//! applied; sessions expire by the cluster's TTL, and cairn-client
//! carries on under a new id; the settings are the cluster's, not a
//! node's flags.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_client::{Client, ClientConfig};
use cairn_proto::kv as pb;
use cairn_testing::*;

fn id(client_id: u64, seq: u64, floor: u64) -> Option<pb::RequestId> {
    Some(pb::RequestId {
        client_id,
        seq,
        floor,
    })
}

/// A put of `counter` under a request id, sent to the leader.
async fn put_with(
    addr: &str,
    value: &str,
    rid: Option<pb::RequestId>,
) -> Result<pb::PutResponse, tonic::Status> {
    let req = pb::PutRequest {
        request_id: rid,
        prev_kv: true,
        ..put_req("counter", value)
    };
    with_leader(addr, Duration::from_secs(15), |mut k| {
        let req = req.clone();
        async move { k.put(req).await }
    })
    .await
    .map(tonic::Response::into_inner)
}

/// The `cairn-session` trailer of a refusal.
fn session_trailer(s: &tonic::Status) -> Option<&str> {
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
    s.metadata()
        .get(cairn_proto::SESSION)
        .and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_is_applied_once() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let addr = c.addr(leader);
    let mut k = kv(&addr).await;

    // A client id the cluster never opened a session for: refused,
    // nothing applied.
    let err = put_with(&addr, "0", id(4242, 7, 7)).await.unwrap_err();
    assert_eq!(session_trailer(&err), Some(cairn_proto::SESSION_UNKNOWN));
    assert!(get_kv(&mut k, "counter").await.is_none());
    let c42 = open_session(&addr).await;
    let c43 = open_session(&addr).await;
    assert!(c43 > c42, "client ids are the opening entries' indexes");

    let first = put_with(&addr, "1", id(c42, 7, 7)).await.unwrap();
    let second = put_with(&addr, "1", id(c42, 7, 7)).await.unwrap();
    assert_eq!(
        first.header.unwrap().revision,
        second.header.unwrap().revision,
        "the duplicate answers with the first revision"
    );
    assert_eq!(first.prev_kv, second.prev_kv);
    let kv1 = get_kv(&mut k, "counter").await.unwrap();
    assert_eq!(kv1.version, 1, "applied once");

    // A different sequence number is a new write; its floor settles 7.
    let third = put_with(&addr, "2", id(c42, 8, 8)).await.unwrap();
    let kv2 = get_kv(&mut k, "counter").await.unwrap();
    assert_eq!(kv2.version, 2);
    assert_eq!(kv2.mod_revision, third.header.unwrap().revision);
    let err = put_with(&addr, "1", id(c42, 7, 8)).await.unwrap_err();
    assert_eq!(session_trailer(&err), Some(cairn_proto::SESSION_SETTLED));
    assert!(err.message().contains("floor 8"), "{}", err.message());
    assert_eq!(get_kv(&mut k, "counter").await.unwrap().version, 2);

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
        request_id: id(c43, 1, 1),
    };
    let a = k.txn(txn.clone()).await.unwrap().into_inner();
    let b = k.txn(txn).await.unwrap().into_inner();
    assert!(
        a.succeeded && b.succeeded,
        "the retry reports the first outcome"
    );
    assert_eq!(get_kv(&mut k, "counter").await.unwrap().version, 3);

    // The sessions survive a restart of every node (they are part of
    // the data): the kept answer is answered, the settled id refused.
    let mut c = c;
    for id in c.running() {
        c.nodes.get_mut(&id).unwrap().kill9();
    }
    for id in 1..=3 {
        c.restart(id);
    }
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    let addr = c.addr(leader);
    let again = put_with(&addr, "2", id(c42, 8, 8)).await.unwrap();
    assert_eq!(
        again.header.unwrap().revision,
        third.header.unwrap().revision
    );
    let err = put_with(&addr, "1", id(c42, 7, 8)).await.unwrap_err();
    assert_eq!(session_trailer(&err), Some(cairn_proto::SESSION_SETTLED));
    let mut k = kv(&addr).await;
    assert_eq!(get_kv(&mut k, "counter").await.unwrap().version, 3);
}

/// A session idle for the TTL expires on every node: a retry of its
/// write is refused (never applied again), and cairn-client, whose
/// session it was, carries on under a new client id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_after_the_ttl() {
    let c = TestCluster::start(3, &["--session-ttl-secs", "10"]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let addr = c.addr(leader);
    let client = Client::connect_with(c.endpoints(), ClientConfig::default())
        .await
        .unwrap();
    assert_eq!(client.client_id(), None, "no session before a write");
    let rev = client.put("counter", "1").await.unwrap();
    let old_id = client.client_id().unwrap();
    // Within the TTL the retry of seq 1 is answered.
    let again = put_with(&addr, "1", id(old_id, 1, 1)).await.unwrap();
    assert_eq!(again.header.unwrap().revision, rev);
    let s = status(&addr).await.unwrap();
    assert_eq!(s.sessions, 1);
    wait_settings(&c, |s| s.session_ttl_secs == 10).await;

    // Idle (a retry is a write: it would keep the session alive).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while status(&addr).await.unwrap().sessions > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session did not expire"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let err = put_with(&addr, "1", id(old_id, 1, 1)).await.unwrap_err();
    assert_eq!(session_trailer(&err), Some(cairn_proto::SESSION_UNKNOWN));
    let mut k = kv(&addr).await;
    assert_eq!(get_kv(&mut k, "counter").await.unwrap().version, 1);

    // The client's next write finds its session gone, and goes through
    // under a new id.
    let rev2 = client.put("counter", "2").await.unwrap();
    assert!(rev2 > rev);
    assert!(client.client_id().unwrap() > old_id, "a new session");
    assert_eq!(get_kv(&mut k, "counter").await.unwrap().version, 2);
    let applied = status(&addr).await.unwrap().applied;
    for id in c.running() {
        c.wait_applied(id, applied, Duration::from_secs(10)).await;
        let s = status(&c.addr(id)).await.unwrap();
        assert_eq!(s.sessions, 1, "node {id} holds the new session only");
    }
}

/// The settings are replicated: a new cluster takes its first leader's
/// flags, `set_settings` changes them on every node, and a node started
/// with other flags does not change them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_are_the_clusters() {
    let mut c = TestCluster::start(3, &["--history-revisions", "500"]).await;
    c.wait_leader(Duration::from_secs(10)).await;
    wait_settings(&c, |s| s.history_revisions == 500).await;
    let client = Client::connect(c.endpoints()).await.unwrap();
    let set = client.set_settings(700, 0).await.unwrap();
    assert_eq!((set.history_revisions, set.session_ttl_secs), (700, 300));
    wait_settings(&c, |s| s.history_revisions == 700).await;
    let err = client.set_settings(0, 1).await.unwrap_err();
    assert!(err.to_string().contains("session-ttl"), "{err}");
    // Every node restarted (with its flag of 500): still 700.
    for id in c.running() {
        c.nodes.get_mut(&id).unwrap().kill9();
    }
    for id in 1..=3 {
        c.restart(id);
    }
    c.wait_leader(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_settings(&c, |s| s.history_revisions == 700).await;
}
