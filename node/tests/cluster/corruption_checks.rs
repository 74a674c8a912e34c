//! Corruption checks: replicas are compared by a hash of their whole
//! state at one entry (a member that differs raises CORRUPT), and every
//! table can be read and verified at start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_proto::cluster::AlarmType;
use cairn_testing::*;

use crate::alarms::alarms;

/// Every member's hash at `CheckHash`'s entry, from the leader:
/// (member, hash, corrupt).
async fn check_hash(addr: &str) -> (u64, Vec<(u64, u64, bool)>) {
    let r = cluster(addr)
        .await
        .check_hash(cairn_proto::cluster::CheckHashRequest {})
        .await
        .map(|r| r.into_inner());
    let r = match r {
        Ok(r) => r,
        Err(e) => panic!("check hash: {e:?}"),
    };
    for m in &r.members {
        assert!(
            m.error.is_empty(),
            "member {} gave no hash: {}",
            m.member_id,
            m.error
        );
    }
    let rows = r
        .members
        .iter()
        .map(|m| (m.member_id, m.hash, m.corrupt))
        .collect();
    (r.revision, rows)
}

/// Adds a pair behind a stopped node's back, straight into its state
/// machine's database (checksums intact: only a comparison of replicas
/// can find it), keeping the applied position the database records.
fn tamper(data: &std::path::Path) {
    let opts = cairn_lsm::Options {
        wal: false,
        create_if_missing: false,
        ..cairn_lsm::Options::default()
    };
    let db = cairn_lsm::Db::open(live_db(data), opts).unwrap();
    let mut record = Vec::new();
    for n in [1u64, 1, 1] {
        record.extend_from_slice(&n.to_le_bytes());
    }
    record.extend_from_slice(b"x");
    let mut batch = cairn_lsm::WriteBatch::new();
    batch.put(b"dtampered", record);
    if let Some(m) = db.user_metadata() {
        batch.set_user_metadata(m);
    }
    db.write(batch).unwrap();
    db.flush().unwrap();
}

/// Replicas hash equal after the same writes; a member whose data was
/// changed behind its back hashes differently, gets a CORRUPT alarm, and
/// from then on every write is refused on the whole cluster while reads
/// go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hash_check_finds_a_diverged_member_and_raises_corrupt() {
    let mut c = TestCluster::start(3, &["--corruption-check-secs", "0"]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let mut last = 0;
    for i in 0..20 {
        last = put_on_leader(
            &c.addr(leader),
            put_req(&format!("k{i:02}"), "v"),
            Duration::from_secs(10),
        )
        .await;
    }
    let (_, rows) = check_hash(&c.addr(leader)).await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.1 == rows[0].1 && !r.2), "{rows:?}");

    let follower = c.running().into_iter().find(|&id| id != leader).unwrap();
    c.wait_applied(follower, last, Duration::from_secs(10))
        .await;
    c.nodes.get_mut(&follower).unwrap().sigterm_and_wait();
    tamper(&c.nodes[&follower].data);
    c.restart(follower);
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    let (revision, rows) = check_hash(&c.addr(leader)).await;
    let corrupt: Vec<u64> = rows.iter().filter(|r| r.2).map(|r| r.0).collect();
    assert_eq!(corrupt, vec![follower], "revision {revision}: {rows:?}");

    let a = alarms(&c.addr(leader)).await.unwrap();
    assert_eq!(a, vec![(follower, AlarmType::Corrupt)]);
    let mut k = kv(&c.addr(leader)).await;
    let e = k.put(put_req("after", "v")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("CORRUPT"), "{e:?}");
    let e = k
        .delete(cairn_proto::kv::DeleteRequest {
            key: b"k00".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(get_kv(&mut k, "k00").await.is_some());
}

/// The state machine's live database directory of a stopped node.
fn live_db(data: &std::path::Path) -> std::path::PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(data.join("sm"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("db-"))
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// With `--check-tables-at-start`, a node whose table has a flipped bit
/// refuses to start, naming the check; without it, it starts (the damage
/// is found only when a read meets it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_table_stops_a_start_that_checks_the_tables() {
    let mut c = TestCluster::start(1, &["--memtable-mib", "1"]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let value = "v".repeat(4000);
    for i in 0..600 {
        put_on_leader(
            &c.addr(leader),
            put_req(&format!("k{i:04}"), &value),
            Duration::from_secs(10),
        )
        .await;
    }
    c.nodes.get_mut(&1).unwrap().sigterm_and_wait();
    let db = live_db(&c.nodes[&1].data);
    let mut tables: Vec<_> = std::fs::read_dir(&db)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sst"))
        .collect();
    tables.sort();
    let table = tables.first().expect("no table was flushed");
    // A quarter in: a block of pairs ('d' keys sort before the small
    // state and the history records, which the start itself reads).
    let mut bytes = std::fs::read(table).unwrap();
    let at = bytes.len() / 4;
    bytes[at] ^= 0x10;
    std::fs::write(table, bytes).unwrap();

    c.nodes
        .get_mut(&1)
        .unwrap()
        .extra
        .push("--check-tables-at-start".into());
    c.restart(1);
    let status = c.nodes.get_mut(&1).unwrap().wait_exit();
    assert!(!status.success());
    let log = c.nodes[&1].log();
    assert!(log.contains("checking every table at start"), "{log}");
    let name = table.file_name().unwrap().to_string_lossy().to_string();
    assert!(log.contains(&name), "the error does not name {name}: {log}");

    c.nodes.get_mut(&1).unwrap().extra.pop();
    c.restart(1);
    c.wait_leader(Duration::from_secs(20)).await;
}
