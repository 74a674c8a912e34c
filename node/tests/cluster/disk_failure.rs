//! A node whose disk fails (an fsync error, a full disk) stops: it never
//! acknowledges a write it could not make durable, and after a restart on
//! the same disk it has every write it acknowledged before the failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use cairn_client::{Client, ClientConfig};
use cairn_io::{Faults, MemFs, ThreadExecutor};
use cairn_node::server::config::NodeArgs;
use cairn_node::server::{NodeEnv, RunningNode};
use cairn_testing::free_port;

struct Ports {
    client: String,
    peer: String,
}

async fn start(fs: &Arc<MemFs>, p: &Ports) -> RunningNode {
    let config = NodeArgs {
        id: Some(1),
        data_dir: Some("/data/n1".into()),
        listen_client: Some(p.client.clone()),
        listen_peer: Some(p.peer.clone()),
        listen_metrics: Some(String::new()),
        initial_cluster: Some(format!("1={}/{}", p.client, p.peer)),
        heartbeat_ms: Some(50),
        election_timeout_ms: Some(300),
        ..NodeArgs::default()
    }
    .resolve()
    .unwrap();
    let env = NodeEnv {
        fs: fs.clone(),
        executor: Arc::new(ThreadExecutor::new()),
        net: cairn_rpc::net::tcp(),
        seed: Some(1),
    };
    RunningNode::start_in(config, env).await.unwrap()
}

fn client(p: &Ports) -> Client {
    let cfg = ClientConfig {
        timeout: Duration::from_secs(3),
        attempt_timeout: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    Client::new_lazy([p.client.as_str()], cfg).unwrap()
}

/// Writes `n` keys named `{prefix}{i}`; all must succeed.
async fn write_ok(c: &Client, prefix: &str, n: usize) {
    for i in 0..n {
        c.put(format!("{prefix}{i}"), "v").await.unwrap();
    }
}

async fn fails_and_recovers(faults: Faults, expect: &str) {
    let fs = Arc::new(MemFs::new());
    let p = Ports {
        client: format!("127.0.0.1:{}", free_port()),
        peer: format!("127.0.0.1:{}", free_port()),
    };
    let node = start(&fs, &p).await;
    let c = client(&p);
    write_ok(&c, "before/", 50).await;

    fs.set_faults(faults);
    // The next write needs a sync the disk refuses: it must not be
    // acknowledged, and the node must stop.
    let err = c.put("during", "v").await.unwrap_err();
    let why = tokio::time::timeout(Duration::from_secs(10), node.failed())
        .await
        .expect("the node went on after its disk failed");
    assert!(why.contains(expect) && why.contains("Log"), "{why}");
    // Whatever it answers now, it acknowledges nothing.
    assert!(
        c.put("after", "v").await.is_err(),
        "acknowledged after {err}"
    );

    // The process exits (here: the node is dropped and the disk loses what
    // was not synced); the restarted node has every acknowledged write.
    node.abort().await;
    fs.crash(true, 7);
    fs.set_faults(Faults::default()); // a full disk stays full until space is freed
    let node = start(&fs, &p).await;
    let c = client(&p);
    for i in 0..50 {
        let k = format!("before/{i}");
        assert!(c.get(&k).await.unwrap().is_some(), "{k} lost");
    }
    assert!(c.get("after").await.unwrap().is_none());
    write_ok(&c, "later/", 5).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_stops_the_node() {
    fails_and_recovers(
        Faults {
            space_left: None,
            fail_sync: true,
        },
        "injected fsync failure",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_node() {
    fails_and_recovers(
        Faults {
            space_left: Some(0),
            fail_sync: false,
        },
        "disk full",
    )
    .await;
}
