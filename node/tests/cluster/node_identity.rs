//! A node's identity: a voter restarted on an empty data directory does
//! not vote until a leader has caught it up, and peer calls stamped for
//! another cluster or another node are refused.

use std::time::Duration;

use cairn_proto::raft::{raft_client::RaftClient, RaftMessage};
use cairn_testing::*;

/// Node 3 loses its disk while node 1 is down: node 2 alone holds the
/// data and asks the empty node 3 for votes, which it must refuse (with
/// its vote, node 2 would lead a cluster whose other member has nothing,
/// and had node 2 been the one lagging, a committed entry would be gone).
/// Once node 1 is back, a leader is elected, catches node 3 up, and node
/// 3 votes again with every pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_does_not_vote_until_caught_up() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let mut k = kv(&c.addr(leader)).await;
    let mut last = 0;
    for i in 0..50 {
        let r = k.put(put_req(&format!("k{i:02}"), "v")).await.unwrap();
        last = r.into_inner().header.unwrap().revision;
    }
    for id in 1..=3 {
        c.wait_applied(id, last, Duration::from_secs(10)).await;
    }
    for id in 1..=3 {
        c.nodes.get_mut(&id).unwrap().kill9();
    }
    std::fs::remove_dir_all(&c.nodes[&3].data).unwrap();
    c.restart(2);
    c.restart(3);

    // Node 3 says it is catching up, and no leader emerges from nodes 2
    // and 3 alone, over many election timeouts.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if let Ok(s) = status(&c.addr(3)).await {
            assert!(s.catching_up, "a wiped node claims it may vote: {s:?}");
        }
        if let Ok(s) = status(&c.addr(2)).await {
            assert_ne!(
                s.role,
                "leader",
                "a leader was elected with the vote of a wiped node\n{}",
                c.nodes[&2].log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    c.restart(1);
    let leader = c.wait_leader(Duration::from_secs(30)).await;
    assert_ne!(leader, 3);
    c.wait_applied(3, last, Duration::from_secs(30)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status(&c.addr(3)).await.unwrap().catching_up {
        assert!(
            std::time::Instant::now() < deadline,
            "node 3 never caught up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(c.nodes[&3].log().contains("this node votes again"));
    assert_eq!(dump(&c.addr(3)).await, dump(&c.addr(leader)).await);
}

/// Peer calls carry the sender's cluster id and the target node id; a
/// call stamped for another cluster or another node is refused before
/// its message is even decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_calls_for_another_cluster_or_node_are_refused() {
    let c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let follower = c.running().into_iter().find(|&id| id != leader).unwrap();
    let cluster_id = status(&c.addr(leader)).await.unwrap().cluster_id;
    let call = |cluster: String, to: String| {
        let peer = c.nodes[&follower].peer.clone();
        async move {
            let mut client = RaftClient::new(channel(&peer).await);
            let mut req = tonic::Request::new(RaftMessage {
                payload: vec![0xFF; 8].into(),
                error: String::new(),
            });
            req.metadata_mut()
                .insert("cairn-cluster-id", cluster.parse().unwrap());
            req.metadata_mut()
                .insert("cairn-to-node", to.parse().unwrap());
            client.vote(req).await.unwrap_err()
        }
    };
    let ours = format!("{cluster_id:016x}");
    let e = call("00000000deadbeef".into(), follower.to_string()).await;
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("cluster id mismatch"), "{e:?}");
    let e = call(ours.clone(), "99".into()).await;
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("for node 99"), "{e:?}");
    // Stamped right, the call gets as far as decoding its message.
    let e = call(ours, follower.to_string()).await;
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        metric(
            &c.nodes[&follower].metrics,
            "cairn_peer_calls_refused_total"
        ) >= 2.0
    );
}

/// Backup and restore: a copy of node 1's data directory, taken while
/// its process was down, rebuilds the whole cluster. Without `cairn
/// restore` the copy's membership still lists nodes 2 and 3, which start
/// empty and so never vote: nothing is elected. `cairn restore` (refused
/// for a node the copy does not list) makes node 1 a cluster of one voter;
/// nodes 2 and 3 then join it and are promoted, and every node serves the
/// copy's data and nothing written after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_restored_from_one_members_copy() {
    let mut c = TestCluster::start(3, &[]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let mut last = 0;
    for i in 0..30 {
        last = put_on_leader(
            &c.addr(leader),
            put_req(&format!("k{i:02}"), "v"),
            Duration::from_secs(10),
        )
        .await;
    }
    c.wait_applied(1, last, Duration::from_secs(10)).await;
    c.nodes.get_mut(&1).unwrap().kill9();
    let backup = c.dir.path().join("backup");
    copy_dir(&c.nodes[&1].data, &backup).unwrap();
    c.restart(1);
    put_on_leader(
        &c.addr(1),
        put_req("after", "lost"),
        Duration::from_secs(20),
    )
    .await;

    for id in 1..=3 {
        c.nodes.get_mut(&id).unwrap().kill9();
        std::fs::remove_dir_all(&c.nodes[&id].data).unwrap();
    }
    copy_dir(&backup, &c.nodes[&1].data).unwrap();
    let restore = |id: &str| {
        std::process::Command::new(cairn_binary())
            .args(["restore", "--data-dir"])
            .arg(&c.nodes[&1].data)
            .args(["--id", id])
            .output()
            .unwrap()
    };
    let refused = restore("2");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("belongs to node 1, not to node 2"),
        "{refused:?}"
    );
    let done = restore("1");
    assert!(done.status.success(), "{done:?}");
    for id in 1..=3 {
        c.restart(id);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let voters = voters(&c.addr(1)).await;
        if voters == [1, 2, 3] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "voters {voters:?}; node 2:\n{}",
            c.nodes[&2].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each node serves the copy's pairs from its own state, and nothing
    // written after the copy.
    let want: Vec<Vec<u8>> = (0..30).map(|i| format!("k{i:02}").into_bytes()).collect();
    for id in 1..=3 {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let keys: Vec<Vec<u8>> = dump(&c.addr(id)).await.into_iter().map(|r| r.0).collect();
            if keys == want {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {id} serves {} pairs",
                keys.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    put_on_leader(
        &c.addr(leader),
        put_req("new", "v"),
        Duration::from_secs(10),
    )
    .await;
}

/// The voter ids node `addr` lists (empty when it does not answer).
async fn voters(addr: &str) -> Vec<u64> {
    let Ok(r) = cluster(addr)
        .await
        .members(cairn_proto::cluster::MembersRequest {})
        .await
    else {
        return Vec::new();
    };
    let mut v: Vec<u64> = r
        .into_inner()
        .members
        .iter()
        .filter(|m| !m.is_learner)
        .map(|m| m.id)
        .collect();
    v.sort_unstable();
    v
}

/// Copies a directory tree (a volume copy of a stopped node).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}
