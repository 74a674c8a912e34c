//! The client's redirect, retry and watch-resume paths against real nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{Client, ClientConfig, Consistency, EventKind, Scan, Watch};
use cairn_testing::{metric, wait_settings, TestCluster};
use futures::StreamExt;

/// A client that knows only a follower reaches the leader through the
/// follower's hint, in one hop, and caches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_leader_hint() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let client = Client::new_lazy([c.addr(follower)], ClientConfig::default()).unwrap();
    let rev = client.put("k", "v").await.unwrap();
    assert_eq!(client.cached_leader(), Some(c.addr(leader)));
    let r = client
        .get_with("k", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(r.kv.unwrap().mod_revision, rev);
    // A serializable read stays on the endpoint it was given.
    let r = client
        .get_with("k", Consistency::Serializable)
        .await
        .unwrap();
    assert_eq!(r.header.member_id, follower);
    // Deleting what is not there is not an error.
    assert_eq!(client.delete("absent").await.unwrap(), 0);
    assert!(client.get("absent").await.unwrap().is_none());
}

/// Which node serves the client's watch (its `cairn_watchers` gauge).
fn watch_host(c: &TestCluster) -> Option<u64> {
    c.running()
        .into_iter()
        .find(|&id| metric(&c.nodes[&id].metrics, "cairn_watchers") >= 1.0)
}

/// Kill -9 the leader, and then the node serving a watch, while writers
/// run: every write succeeds within its deadline and is applied once, and
/// the watch delivers every write once, in order, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_watch_survive_node_failures() {
    let mut c = TestCluster::start(3, &[]).await;
    let cfg = ClientConfig {
        timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(c.endpoints(), cfg).await.unwrap();
    let mut watch = client.watch(Watch::prefix("w/")).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, stop) = (client.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w/{w}/{i:05}");
                match client.put(&key, format!("{w}-{i}")).await {
                    Ok(rev) => {
                        acked.insert(key, rev);
                    }
                    Err(e) => panic!("write {key} failed: {e}"),
                }
                i += 1;
            }
            acked
        }));
    }
    let reader = {
        tokio::spawn(async move {
            let mut seen: Vec<(u64, String, EventKind)> = Vec::new();
            while let Some(b) = watch.next().await {
                let b = b.expect("watch failed");
                for e in b.events {
                    assert_eq!(e.kv.mod_revision, b.revision);
                    seen.push((
                        b.revision,
                        String::from_utf8_lossy(&e.kv.key).into(),
                        e.kind,
                    ));
                }
                if seen.iter().any(|(_, k, _)| k == "w/done") {
                    return seen;
                }
            }
            panic!("the watch ended");
        })
    };

    tokio::time::sleep(Duration::from_millis(700)).await;
    // The leader dies.
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    c.nodes.get_mut(&leader).unwrap().kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.restart(leader);
    c.wait_leader(Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The node serving the watch dies (unless it was the old leader, whose
    // death already moved the watch).
    if let Some(host) = watch_host(&c) {
        c.nodes.get_mut(&host).unwrap().kill9();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.restart(host);
        c.wait_leader(Duration::from_secs(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    client.put("w/done", "").await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the watch did not deliver w/done")
        .unwrap();
    assert!(acked.len() > 20, "too few writes: {}", acked.len());

    // The watch: revisions strictly increase (no duplicate, in order), and
    // it saw exactly the acknowledged writes.
    for pair in seen.windows(2) {
        assert!(pair[0].0 < pair[1].0, "out of order or duplicate: {pair:?}");
    }
    let watched: BTreeMap<String, u64> = seen
        .iter()
        .filter(|(_, k, _)| k != "w/done")
        .map(|(r, k, kind)| {
            assert_eq!(*kind, EventKind::Put);
            (k.clone(), *r)
        })
        .collect();
    assert_eq!(watched.len(), seen.len() - 1, "a key was watched twice");
    assert_eq!(
        watched, acked,
        "the watch and the acknowledged writes differ"
    );

    // Every write is present once: version 1 (a second apply would make
    // it 2), at the revision it was acknowledged with.
    let mut stored = BTreeMap::new();
    let mut scan = Box::pin(client.scan(Scan::prefix("w/")));
    while let Some(kv) = scan.next().await {
        let kv = kv.unwrap();
        assert_eq!(kv.version, 1, "{:?} applied more than once", kv.key);
        stored.insert(
            String::from_utf8_lossy(&kv.key).into_owned(),
            kv.mod_revision,
        );
    }
    stored.remove("w/done");
    assert_eq!(stored, acked);
}

/// Over a limit: InvalidArgument naming it; a failed compare-and-swap:
/// CompareFailed with the current state; an unreachable cluster:
/// Unavailable within the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_errors() {
    let c = TestCluster::start(1, &["--max-key-bytes", "16"]).await;
    let client = Client::connect(c.endpoints()).await.unwrap();
    match client.put("k".repeat(17), "v").await {
        Err(cairn_client::Error::InvalidArgument(m)) => assert!(m.contains("16"), "{m}"),
        other => panic!("{other:?}"),
    }
    match client.cas("nope", Some(b"x"), "y").await {
        Err(cairn_client::Error::CompareFailed { current: None }) => {}
        other => panic!("{other:?}"),
    }
    let port = cairn_testing::free_port();
    let cfg = ClientConfig {
        timeout: Duration::from_millis(800),
        ..ClientConfig::default()
    };
    let started = std::time::Instant::now();
    match Client::connect_with([format!("127.0.0.1:{port}")], cfg).await {
        Err(cairn_client::Error::Unavailable { attempts, .. }) => assert!(attempts > 1),
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A watch from a revision whose history is gone: Compacted, naming the
/// oldest revision a watch can start from (and that start works).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_watch_start_is_a_typed_error() {
    // Keep only 100 revisions of history; trimming happens every 1024.
    let c = TestCluster::start(1, &["--history-revisions", "100"]).await;
    let client = Client::connect(c.endpoints()).await.unwrap();
    // The cluster takes the setting from its first leader's flags.
    wait_settings(&c, |s| s.history_revisions == 100).await;
    for i in 0..1100 {
        client.put(format!("k{}", i % 10), "v").await.unwrap();
    }
    let oldest = match client.watch(Watch::key("k1").from_revision(2)).await {
        Err(cairn_client::Error::Compacted { oldest }) => oldest,
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a compacted start revision was accepted"),
    };
    assert!(oldest > 2, "{oldest}");
    let mut w = client
        .watch(Watch::prefix("k").from_revision(oldest))
        .await
        .unwrap();
    assert!(w.next().await.unwrap().unwrap().revision >= oldest);
}
