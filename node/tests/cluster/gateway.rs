//! The gateway in front of 3 real nodes (`cairn gateway` and `cairn node`
//! processes on loopback).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{Client, Consistency, Scan, TxnOp, Watch};
use cairn_proto::kv::{self as pb};
use cairn_testing::*;
use futures::StreamExt;

/// How many requests of `method` node `id` served with code OK.
fn served(c: &TestCluster, id: u64, method: &str) -> f64 {
    if std::net::TcpStream::connect(&c.nodes[&id].metrics).is_err() {
        return 0.0; // not started yet
    }
    metric_where(
        &c.nodes[&id].metrics,
        "cairn_grpc_request_duration_seconds_count",
        &[&format!("method=\"{method}\""), "code=\"OK\""],
    )
}

/// A client that talks to the gateway only and never retries, so every
/// error the gateway gives is seen.
async fn raw(addr: &str) -> pb::kv_client::KvClient<tonic::transport::Channel> {
    kv(addr).await
}

fn with_deadline<T>(msg: T, d: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(d);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kv_call_routed_through_the_gateway() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let g = c.start_gateway(&[]);
    g.wait_ready(Duration::from_secs(20)).await;
    let client = Client::connect([g.addr.as_str()]).await.unwrap();

    // Writes, transactions and linearizable reads: the leader only.
    let rev = client.put("a", "1").await.unwrap();
    assert_eq!(client.get("a").await.unwrap().unwrap().mod_revision, rev);
    let r = client
        .txn()
        .when([cairn_client::Compare::value("a").eq("1")])
        .and_then([TxnOp::put("b", "2")])
        .commit()
        .await
        .unwrap();
    assert!(r.succeeded);
    let keys: Vec<_> = Box::pin(client.scan(Scan::all()))
        .map(|kv| kv.unwrap().key)
        .collect()
        .await;
    assert_eq!(keys, vec!["a", "b"]);
    assert_eq!(client.delete("b").await.unwrap(), 1);
    let mut w = client
        .watch(Watch::key("a").from_revision(rev))
        .await
        .unwrap();
    assert_eq!(w.next().await.unwrap().unwrap().revision, rev);
    for id in (1..=3).filter(|&i| i != leader) {
        for m in ["Put", "Txn", "Delete", "Get", "Scan"] {
            assert_eq!(served(&c, id, m), 0.0, "follower {id} served {m}");
        }
    }
    assert!(served(&c, leader, "Put") >= 1.0);
    assert!(served(&c, leader, "Get") >= 1.0);

    // Serializable reads: balanced over the replicas (once every replica
    // has applied the write, so each may answer).
    for id in 1..=3 {
        c.wait_applied(id, rev, Duration::from_secs(10)).await;
    }
    // The gateway is ready with one backend in rotation; wait for all
    // three (a node not yet ready at the gateway's start stays ejected
    // until a health check finds it ready).
    let t0 = std::time::Instant::now();
    while g.metric("cairn_client_endpoints_in_rotation") < 3.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the gateway never put all three nodes in rotation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Keys the gateway has not read yet: its read cache cannot answer
    // them, so each goes to a replica.
    let mut last = rev;
    for i in 0..100 {
        last = client.put(format!("s/{i}"), "v").await.unwrap();
    }
    for id in 1..=3 {
        c.wait_applied(id, last, Duration::from_secs(10)).await;
    }
    for i in 0..100 {
        let r = client
            .get_with(format!("s/{i}"), Consistency::Serializable)
            .await
            .unwrap();
        assert_eq!(r.kv.unwrap().value, "v");
    }
    let serving = (1..=3).filter(|&i| served(&c, i, "Get") > 1.0).count();
    assert!(
        serving >= 2,
        "serializable reads reached {serving} replica(s)"
    );

    // Read-only cluster calls; the rest are refused.
    let m = client.members().await.unwrap();
    assert_eq!(m.members.len(), 3);
    assert_eq!(m.leader, leader);
    match client.transfer_leader(0).await {
        Err(cairn_client::Error::Server { code, .. }) => {
            assert_eq!(code, tonic::Code::PermissionDenied)
        }
        other => panic!("{other:?}"),
    }
    // The request id travels back (the caller's, or the gateway's own).
    let mut k = raw(&g.addr).await;
    let mut req = tonic::Request::new(put_req("traced", "v"));
    req.metadata_mut()
        .insert("x-request-id", "req-42".parse().unwrap());
    let r = k.put(req).await.unwrap();
    assert_eq!(r.metadata().get("x-request-id").unwrap(), "req-42");
    let r = k.get(get_req("traced", false)).await.unwrap();
    assert!(r
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("gw-"));
    // Health and metrics. The gRPC readiness status is refreshed every
    // 250 ms, so right after start it may still say what the gateway was
    // before it knew a leader: it must turn ready within a few refreshes.
    let mut ready = false;
    for _ in 0..20 {
        ready = client.health_of(&g.addr).await.unwrap().ready;
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the gateway's gRPC readiness never turned ready");
    assert!(
        metric_where(
            &g.metrics,
            "cairn_gateway_request_duration_seconds_count",
            &["method=\"Put\""]
        ) >= 1.0
    );
    assert!(g.metric("cairn_client_requests_total") > 200.0);
}

/// kill -9 of the leader while 32 clients write through the gateway with
/// a 5 s deadline and no retries of their own: no error, every
/// acknowledged write present once. The gateway runs on one thread (a
/// current-thread runtime), the cheapest setting, which must fail over
/// the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_crash_is_invisible_through_the_gateway() {
    let mut c = TestCluster::start(3, &[]).await;
    let g = c.start_gateway(&["--threads", "1"]);
    g.wait_ready(Duration::from_secs(20)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..32 {
        let (addr, stop) = (g.addr.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut k = raw(&addr).await;
            let mut acked = BTreeMap::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k/{w:02}/{i:05}");
                let r = k
                    .put(with_deadline(put_req(&key, "v"), Duration::from_secs(5)))
                    .await
                    .unwrap_or_else(|s| panic!("{key}: {s:?}"));
                acked.insert(key, r.into_inner().header.unwrap().revision);
                i += 1;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    c.nodes.get_mut(&leader).unwrap().kill9();
    let new = c.wait_leader(Duration::from_secs(20)).await;
    assert_ne!(new, leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = BTreeMap::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(acked.len() > 100, "{} writes", acked.len());
    let stored: BTreeMap<String, (u64, u64)> = dump(&c.addr(new))
        .await
        .into_iter()
        .map(|(k, _, _, m, v)| (String::from_utf8(k).unwrap(), (m, v)))
        .collect();
    for (k, rev) in &acked {
        let (m, v) = stored.get(k).unwrap_or_else(|| panic!("{k} lost"));
        assert_eq!(*v, 1, "{k} applied more than once");
        assert_eq!(m, rev, "{k}");
    }
    assert!(g.metric("cairn_client_leader_changes_seen_total") >= 2.0);
}

/// A node joins and another is removed while the gateway runs: it
/// follows without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_follows_membership_changes() {
    let mut c = TestCluster::start(3, &[]).await;
    // Without the read cache, every read of the one key goes to a
    // replica: which replicas is what this test watches.
    let g = c.start_gateway(&["--cache-mb", "0"]);
    g.wait_ready(Duration::from_secs(20)).await;
    let client = Client::connect([g.addr.as_str()]).await.unwrap();
    client.put("x", "1").await.unwrap();
    c.add_joining_node(4, 1, &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // Serializable reads through the gateway reach the new node.
    while served(&c, 4, "Get") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "node 4 never served a read"
        );
        let _ = client.get_with("x", Consistency::Serializable).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Remove a follower; the gateway stops using it, even once it is gone.
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let victim = (1..=3).find(|&i| i != leader).unwrap();
    let admin = Client::connect([c.addr(leader)]).await.unwrap();
    admin.remove_member(victim).await.unwrap();
    // The gateway drops it at a refresh (every 200 ms here). Wait for
    // that, not a fixed time: under load a refresh (the members, then
    // each node's health) can take longer than the wait did (800 ms,
    // which failed once in a full parallel run).
    let gone = c.addr(victim);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&g.log)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("member gone") && l.contains(&gone))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway never dropped the removed node"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.nodes.get_mut(&victim).unwrap().kill9();
    let before = served(&c, 4, "Get");
    for i in 0..100 {
        client.put(format!("after/{i}"), "v").await.unwrap();
        client
            .get_with("x", Consistency::Serializable)
            .await
            .unwrap();
    }
    assert!(served(&c, 4, "Get") > before);
    let errors_to_victim = metric_where(
        &g.metrics,
        "cairn_client_requests_total",
        &[
            &format!("backend=\"{}\"", c.addr(victim)),
            "code=\"Unavailable\"",
        ],
    );
    assert_eq!(errors_to_victim, 0.0, "requests went to the removed node");
}

/// 100 identical watches share one upstream; every watcher sees every
/// event once, in order, across the failure of the replica serving it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_watches_share_one_upstream() {
    let mut c = TestCluster::start(3, &[]).await;
    let g = c.start_gateway(&[]);
    g.wait_ready(Duration::from_secs(20)).await;
    let client = Client::connect([g.addr.as_str()]).await.unwrap();
    let mut watchers = Vec::new();
    for _ in 0..100 {
        let mut k = raw(&g.addr).await;
        let req = pb::WatchRequest {
            key: "w/".into(),
            prefix: true,
            start_revision: 0,
        };
        let mut s = k.watch(req).await.unwrap().into_inner();
        let first = s.next().await.unwrap().unwrap();
        assert!(first.events.is_empty());
        watchers.push(s);
    }
    assert_eq!(g.metric("cairn_gateway_upstream_watches"), 1.0);
    assert_eq!(g.metric("cairn_gateway_watchers"), 100.0);
    assert!(g.metric("cairn_gateway_coalesced_watchers_total") >= 99.0);

    let mut revs = Vec::new();
    for i in 0..20 {
        revs.push(client.put(format!("w/{i}"), "v").await.unwrap());
    }
    // The replica serving the upstream dies.
    let host = c
        .running()
        .into_iter()
        .find(|&id| metric(&c.nodes[&id].metrics, "cairn_watchers") >= 1.0)
        .expect("no node serves the upstream watch");
    c.nodes.get_mut(&host).unwrap().kill9();
    c.wait_leader(Duration::from_secs(20)).await;
    for i in 20..40 {
        revs.push(client.put(format!("w/{i}"), "v").await.unwrap());
    }
    for (n, s) in watchers.iter_mut().enumerate() {
        let mut seen = Vec::new();
        while seen.len() < revs.len() {
            let m = tokio::time::timeout(Duration::from_secs(20), s.next())
                .await
                .unwrap_or_else(|_| panic!("watcher {n} stalled after {seen:?}"))
                .unwrap()
                .unwrap();
            for e in m.events {
                seen.push(e.kv.unwrap().mod_revision);
            }
        }
        assert_eq!(seen, revs, "watcher {n}");
    }
    assert_eq!(g.metric("cairn_gateway_upstream_watches"), 1.0);
}

/// Past the in-flight bound: RESOURCE_EXHAUSTED at once, and the gateway
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_control_refuses_a_flood() {
    let c = TestCluster::start(3, &[]).await;
    let g = c.start_gateway(&["--max-inflight", "16", "--max-inflight-per-conn", "8"]);
    g.wait_ready(Duration::from_secs(20)).await;
    let k = raw(&g.addr).await;
    let mut tasks = Vec::new();
    for i in 0..400 {
        let mut k = k.clone();
        tasks.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = k
                .put(with_deadline(
                    put_req(&format!("f/{i}"), "v"),
                    Duration::from_secs(5),
                ))
                .await;
            (r.map(|_| ()), started.elapsed())
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (Ok(()), _) => ok += 1,
            (Err(s), took) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("limit max-inflight"), "{s:?}");
                assert!(took < Duration::from_secs(2), "refusal took {took:?}");
                refused += 1;
            }
        }
    }
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    assert!(metric(&g.metrics, "cairn_gateway_rejected_total") >= refused as f64);
    // Still healthy and serving.
    let client = Client::connect([g.addr.as_str()]).await.unwrap();
    client.put("after", "flood").await.unwrap();
    g.wait_ready(Duration::from_secs(5)).await;
    assert!(client.health_of(&g.addr).await.unwrap().live);
}

/// The gateway process's peak and current resident memory, in MiB
/// (`VmHWM` and `VmRSS` of /proc/PID/status).
fn memory_mib(g: &GatewayProc) -> (f64, f64) {
    let pid = g.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib / 1024.0
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Admission before the request is read: a flood of large puts on many
/// connections, far past the in-flight bound, is refused without the
/// gateway reading (and holding) the refused requests, so its memory
/// stays bounded by what it admits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_requests_leaves_memory_bounded() {
    const CONNS: usize = 8;
    const PER_CONN: usize = 100;
    const VALUE: usize = 512 << 10;
    let c = TestCluster::start(3, &[]).await;
    let g = c.start_gateway(&["--max-inflight", "16", "--max-inflight-per-conn", "8"]);
    g.wait_ready(Duration::from_secs(20)).await;
    let (_, before) = memory_mib(&g);
    let value = "v".repeat(VALUE);
    let mut tasks = Vec::new();
    for conn in 0..CONNS {
        let k = raw(&g.addr).await;
        for i in 0..PER_CONN {
            let mut k = k.clone();
            let req = with_deadline(
                put_req(&format!("m/{conn}/{i}"), &value),
                Duration::from_secs(20),
            );
            tasks.push(tokio::spawn(async move { k.put(req).await.map(|_| ()) }));
        }
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                refused += 1;
            }
        }
    }
    let (peak, after) = memory_mib(&g);
    let offered = (CONNS * PER_CONN * VALUE) as f64 / f64::from(1 << 20);
    eprintln!("gateway memory: {before:.0} MiB before, peak {peak:.0} MiB, {after:.0} MiB after; {offered:.0} MiB offered, {ok} admitted, {refused} refused");
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    assert!(
        peak < before + 96.0,
        "peak {peak:.0} MiB from {before:.0} MiB with {offered:.0} MiB offered"
    );
    // Still healthy and serving.
    let client = Client::connect([g.addr.as_str()]).await.unwrap();
    client.put("after", "flood").await.unwrap();
    g.wait_ready(Duration::from_secs(5)).await;
}

/// Open Batch streams are bounded: each may hold a message it has read
/// before admitting its calls. Past the bound a new stream is refused at
/// once, naming the limit; a stream that ends gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_streams_are_bounded() {
    let c = TestCluster::start(3, &[]).await;
    let g = c.start_gateway(&["--max-batch-streams", "2"]);
    g.wait_ready(Duration::from_secs(20)).await;
    let open = async || {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<pb::BatchRequest>();
        let r = raw(&g.addr)
            .await
            .batch(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await
            .map(tonic::Response::into_inner);
        (tx, r)
    };
    let (tx1, first) = open().await;
    let mut first = first.unwrap();
    let (_tx2, second) = open().await;
    let _second = second.unwrap();
    let (_tx3, third) = open().await;
    let refused = third.expect_err("a third stream past a bound of 2");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("limit max-batch-streams"),
        "{refused:?}"
    );
    assert!(
        metric_where(
            &g.metrics,
            "cairn_gateway_rejected_total",
            &["bound=\"batch_streams\""]
        ) >= 1.0
    );
    // The first stream ends (its caller closed its side): its place is
    // free again.
    drop(tx1);
    let end = tokio::time::timeout(Duration::from_secs(10), first.message()).await;
    assert!(matches!(end, Ok(Ok(None))), "{end:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_tx, again) = open().await;
        match again {
            Ok(_) => break,
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                assert!(std::time::Instant::now() < deadline, "no place came back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// SIGTERM during load: requests in flight complete, new ones are refused
/// with UNAVAILABLE, the process exits 0; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_cleanly() {
    let c = TestCluster::start(3, &[]).await;
    let mut g = c.start_gateway(&[]);
    g.wait_ready(Duration::from_secs(20)).await;
    let mut writers = Vec::new();
    for w in 0..8 {
        let addr = g.addr.clone();
        writers.push(tokio::spawn(async move {
            let mut k = raw(&addr).await;
            let mut acked = Vec::new();
            for i in 0..100_000u64 {
                let key = format!("d/{w}/{i:06}");
                match k
                    .put(with_deadline(put_req(&key, "v"), Duration::from_secs(5)))
                    .await
                {
                    Ok(_) => acked.push(key),
                    Err(s) => {
                        assert!(matches!(s.code(), tonic::Code::Unavailable), "{key}: {s:?}");
                        return acked;
                    }
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = g.sigterm_and_wait();
        (s, g)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "gateway exited with {:?}", status.0);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(!acked.is_empty());
    let stored: std::collections::BTreeSet<String> = dump(&c.addr(1))
        .await
        .into_iter()
        .map(|(k, ..)| String::from_utf8(k).unwrap())
        .collect();
    // Node 1 may lag: read linearizably through the leader instead.
    let client = Client::connect(c.endpoints()).await.unwrap();
    for k in &acked {
        if !stored.contains(k) {
            assert!(client.get(k).await.unwrap().is_some(), "{k} lost");
        }
    }
}

/// Garbage, HTTP/1 and an oversized message: clear errors, and the
/// gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_does_not_hurt_the_gateway() {
    use std::io::{Read, Write};
    let c = TestCluster::start(1, &[]).await;
    let g = c.start_gateway(&["--max-request-bytes", "65536"]);
    g.wait_ready(Duration::from_secs(20)).await;
    // Random bytes.
    let mut s = std::net::TcpStream::connect(&g.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(1000)).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    // HTTP/1.
    let mut s = std::net::TcpStream::connect(&g.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    // An oversized message.
    let mut k = raw(&g.addr).await;
    let err = k
        .put(put_req("big", &"x".repeat(100_000)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{err:?}");
    // An empty watch key.
    let err = k
        .watch(pb::WatchRequest::default())
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Still serving.
    k.put(put_req("fine", "v")).await.unwrap();
    let r = k.get(get_req("big", false)).await.unwrap().into_inner();
    assert!(r.kv.is_none());
}

/// The gateway's Batch relays a message of calls under the bounds as a
/// whole; a message past them goes call by call through the handlers
/// (some admitted, the rest refused), and every place comes back once its
/// call is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_messages_are_relayed_within_the_bounds() {
    let c = TestCluster::start(3, &[]).await;
    let g = c.start_gateway(&["--max-inflight", "16", "--max-inflight-per-conn", "8"]);
    g.wait_ready(Duration::from_secs(20)).await;
    let relayed = || metric(&g.metrics, "cairn_gateway_relayed_calls_total");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut replies = raw(&g.addr)
        .await
        .batch(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut next_id = 0u64;
    let mut send = |calls: Vec<pb::batch_call::Call>| {
        let calls: Vec<pb::BatchCall> = calls
            .into_iter()
            .map(|call| {
                next_id += 1;
                pb::BatchCall {
                    id: next_id,
                    timeout_us: 5_000_000,
                    call: Some(call),
                }
            })
            .collect();
        let ids: Vec<u64> = calls.iter().map(|c| c.id).collect();
        tx.send(pb::BatchRequest { calls }).unwrap();
        ids
    };
    let mut answers = async |ids: &[u64]| {
        let mut got = BTreeMap::new();
        while got.len() < ids.len() {
            let m = tokio::time::timeout(Duration::from_secs(10), replies.message())
                .await
                .expect("answers within the deadline")
                .unwrap()
                .expect("the stream stays open");
            for r in m.replies {
                assert!(
                    got.insert(r.id, r.reply.unwrap()).is_none(),
                    "one answer per call"
                );
            }
        }
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), ids);
        got
    };
    let puts = |tag: &str, n: usize| {
        (0..n)
            .map(|i| pb::batch_call::Call::Put(put_req(&format!("{tag}/{i}"), "v")))
            .collect::<Vec<_>>()
    };
    use pb::batch_reply::Reply;

    // Under the bounds: relayed as one message, every call answered.
    let before = relayed();
    let ids = send(puts("a", 8));
    for (_, r) in answers(&ids).await {
        assert!(matches!(r, Reply::Put(_)), "{r:?}");
    }
    assert_eq!(relayed() - before, 8.0);

    // Past the per-connection bound: not relayed; the handlers admit
    // some and refuse the rest at once.
    let before = relayed();
    let ids = send(puts("b", 40));
    let (mut ok, mut refused) = (0, 0);
    for (_, r) in answers(&ids).await {
        match r {
            Reply::Put(_) => ok += 1,
            Reply::Error(e) => {
                assert_eq!(e.code, tonic::Code::ResourceExhausted as i32, "{e:?}");
                assert!(e.message.contains("limit max-inflight"), "{e:?}");
                refused += 1;
            }
            other => panic!("a put answered {other:?}"),
        }
    }
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    assert_eq!(relayed(), before);

    // Every place came back: a full message is relayed again, and
    // serializable reads too; nothing stays counted in flight.
    let before = relayed();
    let ids = send(puts("c", 8));
    for (_, r) in answers(&ids).await {
        assert!(matches!(r, Reply::Put(_)), "{r:?}");
    }
    let gets = (0..8)
        .map(|i| {
            pb::batch_call::Call::Get(pb::GetRequest {
                key: format!("a/{i}").into_bytes().into(),
                consistency: pb::ReadConsistency::Serializable as i32,
            })
        })
        .collect();
    let ids = send(gets);
    for (_, r) in answers(&ids).await {
        match r {
            Reply::Get(g) => assert_eq!(&g.kv.unwrap().value[..], b"v"),
            other => panic!("a get answered {other:?}"),
        }
    }
    assert_eq!(relayed() - before, 16.0);
    assert_eq!(metric(&g.metrics, "cairn_gateway_inflight"), 0.0);
}

/// Serializable reads through the gateway are answered from its read
/// cache once a replica has answered them, and the cache follows writes
/// that never went through this gateway (its watch of every key); its
/// memory stays under the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_cache_answers_and_follows_writes() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let g = c.start_gateway(&[]);
    g.wait_ready(Duration::from_secs(20)).await;
    let client = Client::connect([g.addr.as_str()]).await.unwrap();
    let direct = Client::connect([c.addr(leader)]).await.unwrap();
    let hits = || metric(&g.metrics, "cairn_gateway_cache_hits_total");
    let node_gets = || (1..=3).map(|i| served(&c, i, "Get")).sum::<f64>();
    let serializable = async |key: &str| {
        client
            .get_with(key, Consistency::Serializable)
            .await
            .unwrap()
    };

    let rev = direct.put("c", "1").await.unwrap();
    for id in 1..=3 {
        c.wait_applied(id, rev, Duration::from_secs(10)).await;
    }
    // The first read fills the cache (once its watch is set up); then the
    // nodes see no more of them.
    let t0 = std::time::Instant::now();
    while hits() < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no read was ever answered from the cache"
        );
        assert_eq!(serializable("c").await.kv.unwrap().value, "1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (h0, n0) = (hits(), node_gets());
    for _ in 0..100 {
        let r = serializable("c").await;
        assert_eq!(r.kv.as_ref().unwrap().value, "1");
        assert!(r.header.revision >= rev);
    }
    assert_eq!(hits() - h0, 100.0);
    assert_eq!(node_gets(), n0, "a cached read reached a node");

    // A write straight to the leader: the cache follows it.
    let rev2 = direct.put("c", "2").await.unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let r = serializable("c").await;
        let kv = r.kv.unwrap();
        if kv.value == "2" {
            assert_eq!(kv.mod_revision, rev2);
            assert!(r.header.revision >= rev2);
            break;
        }
        assert_eq!(kv.value, "1", "a value nobody wrote");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the cache kept the old value"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        hits() - h0 > 100.0,
        "the new value did not come from the cache"
    );
    // A delete: the key is gone from the cache too.
    direct.delete("c").await.unwrap();
    let t0 = std::time::Instant::now();
    while serializable("c").await.kv.is_some() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the cache kept a deleted key"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Linearizable reads never come from the cache.
    direct.put("c", "3").await.unwrap();
    let n0 = served(&c, leader, "Get");
    assert_eq!(client.get("c").await.unwrap().unwrap().value, "3");
    assert_eq!(served(&c, leader, "Get"), n0 + 1.0);

    // The bound: a 1 MiB cache read through 4 MiB of values.
    let small = c.start_gateway(&["--cache-mb", "1"]);
    small.wait_ready(Duration::from_secs(20)).await;
    let value = vec![b'x'; 4096];
    let mut last = 0;
    for i in 0..1024 {
        last = direct.put(format!("big/{i}"), value.clone()).await.unwrap();
    }
    for id in 1..=3 {
        c.wait_applied(id, last, Duration::from_secs(10)).await;
    }
    let through_small = Client::connect([small.addr.as_str()]).await.unwrap();
    for _ in 0..2 {
        for i in 0..1024 {
            let kv = through_small
                .get_with(format!("big/{i}"), Consistency::Serializable)
                .await
                .unwrap()
                .kv
                .unwrap();
            assert_eq!(kv.value.len(), 4096);
        }
    }
    let bytes = metric(&small.metrics, "cairn_gateway_cache_bytes");
    assert!(
        bytes > 0.0 && bytes <= (1 << 20) as f64,
        "{bytes} bytes cached"
    );
    assert!(metric(&small.metrics, "cairn_gateway_cache_evictions_total") > 0.0);
}
