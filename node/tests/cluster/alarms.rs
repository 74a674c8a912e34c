//! Alarms: a node past its storage quota raises NOSPACE for the whole
//! cluster; writes that add data are refused with RESOURCE_EXHAUSTED
//! naming it, reads and deletes go on, and once the quota is raised and
//! the alarm disarmed, writes work again.

use std::time::Duration;

use cairn_proto::cluster::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
use cairn_testing::*;

/// Runs `action` on every alarm at `addr`; the alarms listed or changed,
/// as (member, type).
pub async fn alarm_call(
    addr: &str,
    action: AlarmAction,
) -> Result<Vec<(u64, AlarmType)>, tonic::Status> {
    let r = cluster(addr)
        .await
        .alarm(AlarmRequest {
            action: action as i32,
            member_id: 0,
            alarm: AlarmType::None as i32,
        })
        .await?
        .into_inner();
    Ok(r.alarms.iter().map(|a| (a.member_id, a.alarm())).collect())
}

/// The alarms `addr` has applied.
pub async fn alarms(addr: &str) -> Result<Vec<(u64, AlarmType)>, tonic::Status> {
    alarm_call(addr, AlarmAction::Get).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_quota_nospace_refuses_puts_until_disarmed() {
    let quota = 2_000_000u64;
    let mut c = TestCluster::start(3, &["--quota-bytes", &quota.to_string()]).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let mut k = kv(&c.addr(leader)).await;
    // Values that do not compress: storage grows as they are written.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let value: String = (0..60_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    // 2 MB of values pass the quota; a put is refused within a second or
    // two of that (bounded: 200 puts are 12 MB).
    let mut refused = None;
    for i in 0..200 {
        match k.put(put_req(&format!("k{i:03}"), &value)).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (written, e) = refused.expect("no put was refused past the quota");
    // Each put is held about three times (the Raft log, the pair, the
    // watch history's copy): refused not before a fifth of the quota of
    // values was written.
    assert!(written >= 6, "refused after only {written} puts: {e:?}");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("NOSPACE"), "{e:?}");
    assert_eq!(
        e.metadata()
            .get("cairn-alarm")
            .and_then(|v| v.to_str().ok()),
        Some("NOSPACE")
    );
    // The member that raised it is past its quota.
    let (member, _) = alarms(&c.addr(leader)).await.unwrap()[0];
    let bytes = metric(&c.nodes[&member].metrics, "cairn_storage_bytes");
    assert!(
        bytes > quota as f64,
        "node {member} raised NOSPACE at {bytes} bytes"
    );
    // Every node applied the alarm, and refuses the same way.
    for id in 1..=3 {
        let a = alarms(&c.addr(id)).await.unwrap();
        assert!(
            a.iter().any(|(_, t)| *t == AlarmType::Nospace),
            "node {id}: {a:?}"
        );
    }
    let e = k.put(put_req("more", "v")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    assert!(get_kv(&mut k, "more").await.is_none());
    // Reads and deletes go on.
    assert!(get_kv(&mut k, "k000").await.is_some());
    k.delete(cairn_proto::kv::DeleteRequest {
        key: b"k000".to_vec().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(get_kv(&mut k, "k000").await.is_none());

    // Disarmed while still past the quota, the alarm comes back.
    let disarmed = alarm_call(&c.addr(leader), AlarmAction::Deactivate)
        .await
        .unwrap();
    assert!(
        disarmed.iter().any(|(_, t)| *t == AlarmType::Nospace),
        "{disarmed:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while alarms(&c.addr(leader)).await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "NOSPACE was not raised again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // With a larger quota on every node, disarming ends it for good.
    for id in 1..=3 {
        let n = c.nodes.get_mut(&id).unwrap();
        n.sigterm_and_wait();
        let at = n.extra.iter().position(|a| a == "--quota-bytes").unwrap();
        n.extra[at + 1] = "0".into();
        c.restart(id);
    }
    let leader = c.wait_leader(Duration::from_secs(20)).await;
    assert!(
        !alarms(&c.addr(leader)).await.unwrap().is_empty(),
        "the alarm survives a restart"
    );
    alarm_call(&c.addr(leader), AlarmAction::Deactivate)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(alarms(&c.addr(leader)).await.unwrap().is_empty());
    put_on_leader(
        &c.addr(leader),
        put_req("more", "v"),
        Duration::from_secs(10),
    )
    .await;
}

/// A log of few, large entries is snapshotted and purged by its bytes
/// (`--snapshot-log-bytes`) long before the entry count would: every
/// node's log stays near the bound while 6 MB are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_snapshotted_and_purged_by_its_bytes() {
    let limit = 1_000_000u64;
    let c = TestCluster::start(
        3,
        &[
            "--snapshot-entries",
            "1000000",
            "--snapshot-log-bytes",
            &limit.to_string(),
        ],
    )
    .await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let value = "v".repeat(20_000);
    let mut last = 0;
    for i in 0..300 {
        last = put_on_leader(
            &c.addr(leader),
            put_req(&format!("k{i:03}"), &value),
            Duration::from_secs(10),
        )
        .await;
    }
    for id in 1..=3 {
        c.wait_applied(id, last, Duration::from_secs(20)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let s = status(&c.addr(id)).await.unwrap();
            let log = s.storage.as_ref().map_or(0, |st| st.raft_log_bytes);
            // A purge keeps the segment being written (up to 64 MiB by
            // default, far less here) and what came after the snapshot.
            if s.snapshot_index > 0 && s.purged_index > 0 && log < 3 * limit {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "node {id}: snapshot {}, purged {}, log {log} bytes",
                s.snapshot_index,
                s.purged_index
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
