//! Test 5: transaction compare-and-swap semantics; a watch from a past
//! revision delivers ordered events with no gap or duplicate; a start
//! revision older than the kept history gets a clear "compacted" error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_proto::kv as pb;
use cairn_testing::*;
use futures::StreamExt;

fn cmp(
    key: &str,
    target: pb::compare::Target,
    op: pb::compare::Op,
    value: &str,
    number: u64,
) -> pb::Compare {
    pb::Compare {
        key: key.as_bytes().to_vec().into(),
        target: target as i32,
        op: op as i32,
        value: value.as_bytes().to_vec().into(),
        number,
    }
}

fn put_op(key: &str, value: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::Put(put_req(key, value))),
    }
}

fn get_op(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::Get(get_req(key, false))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compare_and_swap() {
    use pb::compare::{Op, Target};
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let mut k = kv(&c.addr(leader)).await;

    // Create-if-absent: version == 0.
    let t = k
        .txn(pb::TxnRequest {
            compares: vec![cmp("lock", Target::Version, Op::Equal, "", 0)],
            success: vec![put_op("lock", "owner-a")],
            failure: vec![get_op("lock")],
            request_id: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t.succeeded);
    let created_at = t.header.unwrap().revision;
    // A second create-if-absent fails and runs the failure branch.
    let t = k
        .txn(pb::TxnRequest {
            compares: vec![cmp("lock", Target::Version, Op::Equal, "", 0)],
            success: vec![put_op("lock", "owner-b")],
            failure: vec![get_op("lock")],
            request_id: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!t.succeeded);
    let Some(pb::response_op::Response::Get(g)) = &t.responses[0].response else {
        panic!("want a get response, got {:?}", t.responses);
    };
    assert_eq!(&g.kv.as_ref().unwrap().value[..], b"owner-a");

    // CAS on value, on mod_revision, with != < >.
    let cases = [
        (cmp("lock", Target::Value, Op::Equal, "owner-a", 0), true),
        (
            cmp("lock", Target::Value, Op::NotEqual, "owner-a", 0),
            false,
        ),
        (
            cmp("lock", Target::ModRevision, Op::Equal, "", created_at),
            true,
        ),
        (
            cmp("lock", Target::CreateRevision, Op::Less, "", created_at + 1),
            true,
        ),
        (cmp("lock", Target::Version, Op::Greater, "", 5), false),
        (cmp("absent", Target::Value, Op::Equal, "", 0), true),
    ];
    for (i, (compare, want)) in cases.into_iter().enumerate() {
        let t = k
            .txn(pb::TxnRequest {
                compares: vec![compare.clone()],
                success: vec![],
                failure: vec![],
                request_id: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(t.succeeded, want, "case {i}: {compare:?}");
    }

    // Ops in one transaction see each other and share one revision.
    let t = k
        .txn(pb::TxnRequest {
            compares: vec![cmp("lock", Target::Value, Op::Equal, "owner-a", 0)],
            success: vec![put_op("x", "1"), put_op("y", "2"), get_op("x")],
            failure: vec![],
            request_id: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t.succeeded);
    let rev = t.header.unwrap().revision;
    let Some(pb::response_op::Response::Get(g)) = &t.responses[2].response else {
        panic!("want a get");
    };
    assert_eq!(&g.kv.as_ref().unwrap().value[..], b"1");
    for key in ["x", "y"] {
        let kv = k
            .get(get_req(key, false))
            .await
            .unwrap()
            .into_inner()
            .kv
            .unwrap();
        assert_eq!(kv.mod_revision, rev);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_a_past_revision_is_ordered_without_gaps() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let mut k = kv(&c.addr(leader)).await;
    let mut revs = Vec::new();
    for i in 0..50 {
        let key = if i % 2 == 0 {
            format!("w/{i}")
        } else {
            format!("other/{i}")
        };
        let r = k
            .put(put_req(&key, &i.to_string()))
            .await
            .unwrap()
            .into_inner();
        revs.push((key, r.header.unwrap().revision));
    }
    let del = k
        .delete(pb::DeleteRequest {
            key: b"w/0".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let del_rev = del.header.unwrap().revision;

    // Watch the prefix from the first revision, on a follower (watches are
    // served by any replica).
    let follower = c.running().into_iter().find(|&i| i != leader).unwrap();
    c.wait_applied(follower, del_rev, Duration::from_secs(10))
        .await;
    let mut fk = kv(&c.addr(follower)).await;
    let mut stream = fk
        .watch(pb::WatchRequest {
            key: b"w/".to_vec().into(),
            prefix: true,
            start_revision: revs[0].1,
        })
        .await
        .unwrap()
        .into_inner();
    // Then write more while the watch runs.
    let mut live = Vec::new();
    for i in 0..20 {
        let r = k
            .put(put_req(&format!("w/live{i}"), "x"))
            .await
            .unwrap()
            .into_inner();
        live.push(r.header.unwrap().revision);
    }
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        first.events.is_empty(),
        "the first message confirms the watch"
    );
    let want: Vec<u64> = revs
        .iter()
        .filter(|(k, _)| k.starts_with("w/"))
        .map(|(_, r)| *r)
        .chain(std::iter::once(del_rev))
        .chain(live.iter().copied())
        .collect();
    let mut got = Vec::new();
    let mut kinds = Vec::new();
    while got.len() < want.len() {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("watch stalled")
            .unwrap()
            .unwrap();
        for ev in msg.events {
            let kv = ev.kv.unwrap();
            assert!(kv.key.starts_with(b"w/"), "only the prefix: {:?}", kv.key);
            got.push(kv.mod_revision);
            kinds.push(ev.r#type);
        }
    }
    assert_eq!(got, want, "every revision once, in order");
    let del_pos = want.iter().position(|&r| r == del_rev).unwrap();
    assert_eq!(kinds[del_pos], pb::event::EventType::Delete as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_start_revision_gets_a_clear_error() {
    // Keep only 100 revisions of history; trimming happens at fixed
    // revisions, every HISTORY_TRIM_EVERY.
    let c = TestCluster::start(1, &["--history-revisions", "100"]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    wait_settings(&c, |s| s.history_revisions == 100).await;
    let mut k = kv(&c.addr(leader)).await;
    let mut last = 0;
    for i in 0..300 {
        let r = k.put(put_req(&format!("k{}", i % 10), "v")).await.unwrap();
        last = r.into_inner().header.unwrap().revision;
    }
    let e = k
        .watch(pb::WatchRequest {
            key: b"k1".to_vec().into(),
            prefix: false,
            start_revision: 2,
        })
        .await
        .expect_err("a compacted revision must be refused");
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("compacted"), "{}", e.message());
    let oldest: u64 = e
        .metadata()
        .get("cairn-compact-revision")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let every = cairn_node::kv::HISTORY_TRIM_EVERY;
    assert_eq!(oldest, last - last % every - 100);
    // From the oldest available revision it works.
    let mut s = k
        .watch(pb::WatchRequest {
            key: b"k".to_vec().into(),
            prefix: true,
            start_revision: oldest,
        })
        .await
        .unwrap()
        .into_inner();
    let _confirm = s.next().await.unwrap().unwrap();
    let msg = s.next().await.unwrap().unwrap();
    assert_eq!(msg.events[0].kv.as_ref().unwrap().mod_revision, oldest);
}

/// A watch on a follower that falls behind the leader's purged log and
/// catches up by installing a snapshot: the revisions the snapshot brought
/// are delivered from its history, none skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_follower_survives_its_snapshot_install() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.running().into_iter().find(|&i| i != leader).unwrap();
    let mut fk = kv(&c.addr(follower)).await;
    let mut stream = fk
        .watch(pb::WatchRequest {
            key: b"s/".to_vec().into(),
            prefix: true,
            start_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // The first message confirms the watch.
    stream.next().await.unwrap().unwrap();

    // The follower stops; the others go on past the log it would need.
    let pid = c.nodes[&follower].pid().to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    let addr = c.addr(leader);
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut k = kv(&addr).await;
            let mut revs = Vec::new();
            for i in 0..200u64 {
                let key = format!("s/{w}/{i:03}");
                let r = k.put(put_req(&key, "v")).await.unwrap().into_inner();
                revs.push((r.header.unwrap().revision, key));
            }
            revs
        }));
    }
    let mut written = Vec::new();
    for t in tasks {
        written.extend(t.await.unwrap());
    }
    written.sort();
    let first = written[0].0;
    cluster(&addr)
        .await
        .snapshot(cairn_proto::cluster::SnapshotRequest {})
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while status(&addr).await.unwrap().purged_index <= first {
        assert!(
            std::time::Instant::now() < deadline,
            "the leader never purged its log past {first}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    signal("-CONT");

    let last = written.last().unwrap().0;
    let mut seen = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(msg) = stream.next().await {
            let msg = msg.unwrap();
            let rev = msg.header.unwrap().revision;
            for e in msg.events {
                seen.push((rev, String::from_utf8(e.kv.unwrap().key.to_vec()).unwrap()));
            }
            if rev >= last {
                break;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "the watch stalled after {} events", seen.len());
    let m = c.nodes[&follower].metrics.clone();
    assert!(
        metric(&m, "cairn_snapshots_installed_total") >= 1.0,
        "the follower caught up without a snapshot: the test did not test"
    );
    assert_eq!(seen, written, "the watch skipped or repeated revisions");
}

/// A node that shuts down ends its watch streams at once with
/// UNAVAILABLE (the watcher resumes on another node) instead of keeping
/// them, and its shutdown, open until they are cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_watches_with_a_status_to_resume_on() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let mut w = kv(&c.addr(follower))
        .await
        .watch(pb::WatchRequest {
            key: Default::default(),
            prefix: true,
            start_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // The confirmation: the watch is set up.
    assert!(w.message().await.unwrap().unwrap().events.is_empty());
    let node = c.nodes.get_mut(&follower).unwrap();
    let stopped = std::thread::spawn({
        let child = node.child.take().unwrap();
        move || sigterm_and_wait(child)
    });
    let end = tokio::time::timeout(Duration::from_secs(20), w.message())
        .await
        .expect("the watch ended");
    match end {
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
            assert!(s.message().contains("shutting down"), "{s:?}");
        }
        other => panic!("the watch ended without a status to resume on: {other:?}"),
    }
    assert!(stopped.join().unwrap().success());
}
