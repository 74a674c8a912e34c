//! Test 1: three nodes bootstrap; put/get/scan/txn work through every node
//! (followers redirect in one hop); serializable reads are served locally.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_proto::kv as pb;
use cairn_testing::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_every_call_through_every_node() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let followers: Vec<u64> = c.running().into_iter().filter(|&i| i != leader).collect();

    // A follower refuses a write with a hint naming the leader.
    let err = kv(&c.addr(followers[0]))
        .await
        .put(put_req("a", "1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(leader_hint(&err).as_deref(), Some(c.addr(leader).as_str()));
    assert_eq!(
        err.metadata()
            .get("cairn-leader-id")
            .unwrap()
            .to_str()
            .unwrap(),
        leader.to_string()
    );

    // Writes and linearizable reads through every node, following the hint.
    let mut revisions = Vec::new();
    for (i, id) in c.running().into_iter().enumerate() {
        let key = format!("key-{i}");
        let r = with_leader(&c.addr(id), Duration::from_secs(10), |mut k| {
            let key = key.clone();
            async move { k.put(put_req(&key, &format!("v{i}"))).await }
        })
        .await
        .unwrap()
        .into_inner();
        let h = r.header.unwrap();
        assert_eq!(h.member_id, leader);
        assert!(h.cluster_id != 0);
        assert!(h.raft_term >= 1);
        revisions.push(h.revision);
        let got = with_leader(&c.addr(id), Duration::from_secs(10), |mut k| {
            let key = key.clone();
            async move { k.get(get_req(&key, false)).await }
        })
        .await
        .unwrap()
        .into_inner();
        let kv = got.kv.unwrap();
        assert_eq!(&kv.value[..], format!("v{i}").as_bytes());
        assert_eq!(kv.version, 1);
        assert_eq!(kv.mod_revision, h.revision);
        assert_eq!(kv.create_revision, h.revision);
    }
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions grow: {revisions:?}"
    );

    // Overwrite bumps version and mod_revision, keeps create_revision.
    let mut lk = kv(&c.addr(leader)).await;
    let r2 = lk
        .put(put_req("key-0", "again"))
        .await
        .unwrap()
        .into_inner();
    let g = lk
        .get(get_req("key-0", false))
        .await
        .unwrap()
        .into_inner()
        .kv
        .unwrap();
    assert_eq!(g.version, 2);
    assert_eq!(g.create_revision, revisions[0]);
    assert_eq!(g.mod_revision, r2.header.unwrap().revision);

    // Serializable reads are answered by the follower itself, and catch up.
    c.wait_applied(
        followers[1],
        r2.header.unwrap().revision,
        Duration::from_secs(10),
    )
    .await;
    let mut fk = kv(&c.addr(followers[1])).await;
    let sg = fk.get(get_req("key-0", true)).await.unwrap().into_inner();
    assert_eq!(sg.header.unwrap().member_id, followers[1]);
    assert_eq!(&sg.kv.unwrap().value[..], b"again");
    // ... while a linearizable read on a follower is redirected.
    let e = fk.get(get_req("key-0", false)).await.unwrap_err();
    assert_eq!(leader_hint(&e).as_deref(), Some(c.addr(leader).as_str()));

    // A missing key is not an error.
    let none = lk.get(get_req("nope", false)).await.unwrap().into_inner();
    assert!(none.kv.is_none());

    // Scan: range, prefix, limit with continuation, keys only.
    for i in 0..25 {
        lk.put(put_req(&format!("s/{i:02}"), &format!("{i}")))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut cont: Vec<u8> = Vec::new();
    loop {
        let r = lk
            .scan(pb::ScanRequest {
                prefix: b"s/".to_vec().into(),
                limit: 10,
                continuation: cont.clone().into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.kvs.len() <= 10);
        seen.extend(
            r.kvs
                .iter()
                .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap()),
        );
        if !r.more {
            break;
        }
        cont = r.continuation.to_vec();
    }
    let want: Vec<String> = (0..25).map(|i| format!("s/{i:02}")).collect();
    assert_eq!(seen, want);
    let r = lk
        .scan(pb::ScanRequest {
            start: b"s/05".to_vec().into(),
            end: b"s/08".to_vec().into(),
            keys_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<&[u8]> = r.kvs.iter().map(|kv| &kv.key[..]).collect();
    assert_eq!(keys, vec![&b"s/05"[..], b"s/06", b"s/07"]);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));

    // Delete one key and a prefix.
    let d = lk
        .delete(pb::DeleteRequest {
            key: b"s/00".to_vec().into(),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.deleted, 1);
    assert_eq!(&d.prev_kvs[0].value[..], b"0");
    let d = lk
        .delete(pb::DeleteRequest {
            key: b"s/".to_vec().into(),
            prefix: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.deleted, 24);
    let r = lk
        .scan(pb::ScanRequest {
            prefix: b"s/".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.kvs.is_empty());

    // A transaction through a follower is redirected like any write.
    let txn = pb::TxnRequest {
        compares: vec![pb::Compare {
            key: b"key-1".to_vec().into(),
            target: pb::compare::Target::Value as i32,
            op: pb::compare::Op::Equal as i32,
            value: b"v1".to_vec().into(),
            number: 0,
        }],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::Put(put_req("key-1", "swapped"))),
        }],
        failure: vec![],
        request_id: None,
    };
    let t = with_leader(&c.addr(followers[0]), Duration::from_secs(10), |mut k| {
        let txn = txn.clone();
        async move { k.txn(txn).await }
    })
    .await
    .unwrap()
    .into_inner();
    assert!(t.succeeded);

    // The services answer health checks and list members.
    let members = cluster(&c.addr(leader))
        .await
        .members(cairn_proto::cluster::MembersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(members.members.len(), 3);
    assert_eq!(members.leader, leader);
    let (line, body) = http_get(&c.nodes[&leader].metrics, "/readyz");
    assert!(line.contains("200"), "{line} {body}");
    assert_eq!(metric(&c.nodes[&leader].metrics, "cairn_is_leader"), 1.0);
    assert!(metric(&c.nodes[&leader].metrics, "cairn_proposals_committed_total") >= 30.0);

    // Snapshot on demand, then hand leadership to a chosen follower.
    let mut admin = cluster(&c.addr(leader)).await;
    let applied = status(&c.addr(leader)).await.unwrap().applied;
    let snap = admin
        .snapshot(cairn_proto::cluster::SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(snap.index >= applied, "{} < {applied}", snap.index);
    let to = followers[0];
    let moved = admin
        .transfer_leader(cairn_proto::cluster::TransferLeaderRequest { to })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.leader, to);
    assert_eq!(c.wait_leader(Duration::from_secs(10)).await, to);
    let r = kv(&c.addr(to))
        .await
        .put(put_req("after-transfer", "v"))
        .await
        .unwrap();
    assert_eq!(r.into_inner().header.unwrap().member_id, to);
}

/// A Get's header revision is read with the data: never older than the
/// mod revision of the pair it carries, on the leader (linearizable) and
/// on a follower (serializable), while the key is written all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gets_header_revision_is_never_older_than_its_pair() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.running().into_iter().find(|&id| id != leader).unwrap();
    let client = cairn_client::Client::connect(c.endpoints()).await.unwrap();
    let writer = tokio::spawn(async move {
        for i in 0..3000u32 {
            client.put("hot", i.to_string()).await.unwrap();
        }
    });
    let mut reads = 0;
    for (id, serializable) in [(follower, true), (leader, false)] {
        let mut k = kv(&c.addr(id)).await;
        for _ in 0..1500 {
            let r = k
                .get(get_req("hot", serializable))
                .await
                .unwrap()
                .into_inner();
            if let Some(kv) = r.kv {
                let header = r.header.unwrap().revision;
                assert!(
                    header >= kv.mod_revision,
                    "node {id}: header revision {header} older than the pair's {}",
                    kv.mod_revision
                );
                reads += 1;
            }
        }
    }
    writer.abort();
    assert!(reads > 2000, "{reads} reads found the key");
}
