//! A node whose disk fails (an fsync error, a full disk with no reserve
//! left) stops: it never acknowledges a write it could not make durable,
//! and after a restart on the same disk it has every write it acknowledged
//! before the failure. A full disk with the reserve in place is an alarm:
//! the node gives the reserve up, raises NOSPACE and goes on.
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
    start_with_reserve(fs, p, 0).await
}

async fn start_with_reserve(fs: &Arc<MemFs>, p: &Ports, reserve: u64) -> RunningNode {
    let config = NodeArgs {
        reserve_bytes: Some(reserve),
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
async fn a_full_disk_without_a_reserve_stops_the_node() {
    fails_and_recovers(
        Faults {
            space_left: Some(0),
            fail_sync: false,
        },
        "disk full",
    )
    .await;
}

/// With a reserve, a full disk is an alarm: the write that found it full
/// is made in the reserve's room, NOSPACE is raised and refuses puts, the
/// node serves reads, restarts on the disk still full, and once space is
/// freed and the alarm disarmed, writes work and the reserve is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_with_a_reserve_raises_nospace() {
    use cairn_proto::cluster::{alarm_request::AlarmAction, AlarmType};
    let fs = Arc::new(MemFs::new());
    let p = Ports {
        client: format!("127.0.0.1:{}", free_port()),
        peer: format!("127.0.0.1:{}", free_port()),
    };
    let reserve = 1 << 20;
    let node = start_with_reserve(&fs, &p, reserve).await;
    let c = client(&p);
    write_ok(&c, "before/", 50).await;
    let full = Faults {
        space_left: Some(0),
        fail_sync: false,
    };
    fs.set_faults(full);
    // Puts go on until the alarm is applied (bounded), then are refused.
    let mut refused = None;
    for i in 0..100 {
        if let Err(e) = c.put(format!("during/{i}"), "v").await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("no put was refused on a full disk");
    assert!(matches!(e, cairn_client::Error::Alarmed { .. }), "{e}");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), node.failed())
            .await
            .is_err(),
        "the node stopped on a full disk with a reserve"
    );
    assert!(c.get("before/0").await.unwrap().is_some());

    // Restarted on the disk still full: it starts and serves reads.
    node.abort().await;
    fs.crash(true, 7);
    let node = start_with_reserve(&fs, &p, reserve).await;
    let c = client(&p);
    for i in 0..50 {
        assert!(c.get(&format!("before/{i}")).await.unwrap().is_some());
    }
    assert!(matches!(
        c.put("still", "v").await.unwrap_err(),
        cairn_client::Error::Alarmed { .. }
    ));
    // Disarmed while the disk is still full: raised again.
    c.alarm(AlarmAction::Deactivate, 0, AlarmType::None)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c
        .alarm(AlarmAction::Get, 0, AlarmType::None)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "NOSPACE not raised again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Space freed and the alarm disarmed: writes work, the reserve is back.
    fs.set_faults(Faults::default());
    c.alarm(AlarmAction::Deactivate, 0, AlarmType::None)
        .await
        .unwrap();
    write_ok(&c, "later/", 5).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !node_reserve_filled(&fs, reserve) {
        assert!(
            std::time::Instant::now() < deadline,
            "the reserve was not written again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(c
        .alarm(AlarmAction::Get, 0, AlarmType::None)
        .await
        .unwrap()
        .is_empty());
    node.shutdown().await;
}

fn node_reserve_filled(fs: &MemFs, bytes: u64) -> bool {
    use cairn_io::FileSystem;
    fs.file_size(std::path::Path::new("/data/n1/reserve"))
        .is_ok_and(|n| n == bytes)
}
