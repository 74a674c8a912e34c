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

/// A tmpfs of `mib` MiB mounted on a new directory, unmounted when
/// dropped; `None` when this process may not mount (not root).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the disk at `dir` with a file, then gives `leave` bytes back;
/// the file's path.
fn fill_disk(dir: &std::path::Path, leave: u64) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path)?;
    let chunk = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => return Err(e),
        }
    }
    f.set_len(written.saturating_sub(leave))?;
    f.sync_all()?;
    Ok(path)
}

/// A real full disk (a tmpfs the nodes share, filled by another file):
/// the nodes give up their reserves, raise NOSPACE and go on serving
/// reads instead of stopping; a node restarts on the disk still full;
/// once space is freed and the alarm disarmed, writes work and the
/// reserves are written again. Needs root (it mounts the tmpfs): as
/// another user it says so and checks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_raises_nospace_and_the_nodes_go_on() {
    let Some(disk) = SmallDisk::mount(96) else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let reserve = 4u64 << 20;
    // The logs stay off the full disk.
    let logs = tempfile::tempdir().unwrap();
    let options = Options {
        dir_in: Some(disk.path().to_path_buf()),
        log_dir: Some(logs.path().to_path_buf()),
        ..Options::test()
    };
    let mut c = TestCluster::start_with(
        3,
        &[
            "--reserve-bytes",
            &reserve.to_string(),
            "--quota-bytes",
            "0",
        ],
        options,
    )
    .await;
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    let data: Vec<_> = (1..=3).map(|id| c.nodes[&id].data.clone()).collect();
    for d in &data {
        assert_eq!(std::fs::metadata(d.join("reserve")).unwrap().len(), reserve);
    }
    put_on_leader(
        &c.addr(leader),
        put_req("before", "v"),
        Duration::from_secs(10),
    )
    .await;
    let filler = fill_disk(disk.path(), 1 << 20).unwrap();

    // Values go in until the disk is full; then puts are refused with the
    // alarm (bounded: 200 puts of 64 KB are 12.8 MB, far past the room).
    let value = "x".repeat(64 << 10);
    let mut k = kv(&c.addr(leader)).await;
    let mut refused = None;
    for i in 0..200 {
        if let Err(e) = k.put(put_req(&format!("k{i:03}"), &value)).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("no put was refused on a full disk");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("NOSPACE"), "{e:?}");
    for id in 1..=3 {
        let n = c.nodes.get_mut(&id).unwrap();
        assert!(
            n.child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "node {id} stopped on the full disk: {}",
            n.log()
        );
    }
    let a = alarms(&c.addr(leader)).await.unwrap();
    assert!(a.iter().any(|(_, t)| *t == AlarmType::Nospace), "{a:?}");
    assert!(get_kv(&mut k, "before").await.is_some());

    // A node restarts on the disk still full, and serves reads of its own
    // state.
    let other = (1..=3).find(|id| *id != leader).unwrap();
    c.nodes.get_mut(&other).unwrap().sigterm_and_wait();
    c.restart(other);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut k2 = kv(&c.addr(other)).await;
        let got = k2.get(get_req("before", true)).await;
        if let Ok(r) = &got {
            assert!(r.get_ref().kv.is_some());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {other} did not serve after a restart on a full disk: {got:?}; {:?}\n{}",
            status(&c.addr(other)).await,
            c.nodes[&other].log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Space freed and the alarm disarmed: writes work, reserves are back.
    std::fs::remove_file(&filler).unwrap();
    let leader = c.wait_leader(Duration::from_secs(10)).await;
    alarm_call(&c.addr(leader), AlarmAction::Deactivate)
        .await
        .unwrap();
    put_on_leader(
        &c.addr(leader),
        put_req("after", "v"),
        Duration::from_secs(10),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for d in &data {
        while std::fs::metadata(d.join("reserve")).map_or(0, |m| m.len()) < reserve {
            assert!(
                std::time::Instant::now() < deadline,
                "no reserve in {}",
                d.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(alarms(&c.addr(leader)).await.unwrap().is_empty());
    drop(c);
}
