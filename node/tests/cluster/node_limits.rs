//! A node bounds what its callers can hold: open watches (node-wide and
//! per connection), unary calls in flight, and how long a unary call
//! without a deadline may run. Past a bound the answer is
//! RESOURCE_EXHAUSTED naming it, at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cairn_proto::kv as pb;
use cairn_testing::*;

/// A KV client whose calls carry no deadline (no `grpc-timeout`).
fn bare_kv(addr: &str) -> pb::kv_client::KvClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    pb::kv_client::KvClient::new(ch)
}

fn watch_req(key: &str) -> pb::WatchRequest {
    pb::WatchRequest {
        key: key.as_bytes().to_vec().into(),
        prefix: false,
        start_revision: 0,
    }
}

/// Two watches per connection: a third on the same connection is
/// refused naming the bound; another connection may still watch; a
/// closed watch gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_bounded_per_connection_and_per_node() {
    let c = TestCluster::start(
        3,
        &["--max-watches-per-connection", "2", "--max-watches", "3"],
    )
    .await;
    let addr = c.addr(1);
    let mut k = kv(&addr).await;
    let w1 = k.watch(watch_req("a")).await.unwrap().into_inner();
    let _w2 = k.watch(watch_req("b")).await.unwrap().into_inner();
    let err = k.watch(watch_req("c")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max-watches-per-connection = 2"),
        "{err:?}"
    );
    // Another connection: the node-wide bound (3) has one place left.
    let mut other = kv(&addr).await;
    let _w3 = other.watch(watch_req("d")).await.unwrap().into_inner();
    let err = other.watch(watch_req("e")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max-watches = 3"), "{err:?}");
    // Closing a watch gives its place back.
    drop(w1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match k.watch(watch_req("f")).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the closed watch's place never came back: {e:?}"),
        }
    }
}

/// A leader cut off from its followers cannot commit a write. Such
/// writes sent without a deadline end at the node's default
/// (`--request-timeout-ms`); while two are in flight (`--max-inflight
/// 2`), a third unary call is refused at once, naming the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_and_calls_without_a_deadline_are_bounded() {
    let mut c =
        TestCluster::start(3, &["--max-inflight", "2", "--request-timeout-ms", "2000"]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    for id in c.running() {
        if id != leader {
            c.nodes.get_mut(&id).unwrap().kill9();
        }
    }
    let addr = c.addr(leader);
    // No grpc-timeout header: the channel sets no deadline.
    let stuck = |key: &'static str| {
        let addr = addr.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = bare_kv(&addr).put(put_req(key, "v")).await;
            (r, started.elapsed())
        })
    };
    let (a, b) = (stuck("a"), stuck("b"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let err = kv(&addr)
        .await
        .get(get_req("c", true))
        .await
        .expect_err("a third call in flight must be refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("max-inflight = 2"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    for h in [a, b] {
        let (r, took) = h.await.unwrap();
        let e = r.expect_err("a write without a quorum cannot succeed");
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
            "ended by the default deadline of 2 s, not {took:?}: {e:?}"
        );
    }
    // Their places are given back: a serializable read is served.
    kv(&addr)
        .await
        .get(get_req("c", true))
        .await
        .expect("places given back");
}

/// `--max-streams-per-connection 3`: while a connection holds three open
/// watch streams it gets no fourth stream (HTTP/2's
/// MAX_CONCURRENT_STREAMS: the client waits for a place), another
/// connection is served, and closing a watch lets the fourth call go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_connection_are_bounded() {
    let c = TestCluster::start(1, &["--max-streams-per-connection", "3"]).await;
    let addr = c.addr(c.wait_leader(Duration::from_secs(10)).await);
    let mut k = kv(&addr).await;
    let w1 = k.watch(watch_req("a")).await.unwrap().into_inner();
    let _w2 = k.watch(watch_req("b")).await.unwrap().into_inner();
    let _w3 = k.watch(watch_req("c")).await.unwrap().into_inner();
    let fourth = tokio::time::timeout(Duration::from_secs(1), k.get(get_req("x", true))).await;
    assert!(fourth.is_err(), "a fourth stream was opened: {fourth:?}");
    // Another connection is not held back.
    kv(&addr).await.get(get_req("x", true)).await.unwrap();
    drop(w1);
    tokio::time::timeout(Duration::from_secs(10), k.get(get_req("x", true)))
        .await
        .expect("the closed watch's stream came back")
        .unwrap();
}
