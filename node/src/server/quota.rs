//! The storage quota and a full disk: every node measures what its storage holds (the
//! state machine's data and the Raft log) once a second, and past
//! `--quota-bytes` raises the NOSPACE alarm for itself through the leader
//! (`kv::alarms`): the whole cluster then refuses writes that add data,
//! since replicas fill at the same rate. Reads and deletes go on; the
//! alarm stays until an operator disarms it (if the node is still past
//! its quota then, it raises the alarm again). A write that found the
//! disk full (`cairn_io::reserve`: the node's reserve file was given up to
//! finish it) raises the same alarm; while the alarm stands the reserve
//! stays given up, and once it is disarmed the reserve is written again,
//! or, on a disk still full, the alarm is raised again.
//!
//! The same tick builds a snapshot once the Raft log holds
//! `--snapshot-log-bytes` (openraft's own policy counts entries only, and
//! a few large entries can fill a disk before the count is reached): the
//! log is then purged behind the snapshot.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::cluster::{alarm_request::AlarmAction, cluster_client::ClusterClient};
use openraft_rt::WatchReceiver;
use tokio::sync::watch;

use super::NodeCore;
use crate::kv::alarms::{Alarm, AlarmKind};

/// How often storage is measured.
const TICK: Duration = Duration::from_secs(1);

/// The least time between two snapshots triggered by the log's bytes
/// (building one of a large state takes a while).
const SNAPSHOT_EVERY: Duration = Duration::from_secs(10);

/// Bytes this node's storage holds, or is about to: the state machine's
/// tables, its memtables (flushed to tables soon) and the Raft log's
/// segments. Snapshots are checkpoints that share the tables' files.
pub fn storage_bytes(core: &NodeCore) -> u64 {
    let s = core.sm.db().stats();
    let tables: u64 =
        s.level_bytes.iter().sum::<u64>() + s.memtable_bytes + s.immutable_memtable_bytes;
    tables + log_bytes(core)
}

/// Bytes of the Raft log's live segments.
fn log_bytes(core: &NodeCore) -> u64 {
    core.log.live_bytes()
}

/// Keeps the Raft log under `--snapshot-log-bytes`: past it, purges the
/// log up to the newest snapshot (all of it, not openraft's usual
/// 1,000-entry tail: a member that lags is sent the snapshot), or when
/// the snapshot covers nothing more to purge, triggers a new one (at most
/// every [`SNAPSHOT_EVERY`]).
async fn snapshot_on_bytes(core: &NodeCore, last: &mut Option<tokio::time::Instant>) {
    let limit = core.config.snapshot_log_bytes;
    let bytes = log_bytes(core);
    if limit == 0 || bytes <= limit {
        return;
    }
    let (snapshot, purged) = {
        let m = core.raft.metrics().borrow_watched().clone();
        (m.snapshot.map(|l| l.index), m.purged.map(|l| l.index))
    };
    if let Some(s) = snapshot.filter(|s| Some(*s) > purged) {
        tracing::info!(
            log_bytes = bytes,
            upto = s,
            "the Raft log passed its bytes: purging"
        );
        if let Err(e) = core.scope.run(core.raft.trigger().purge_log(s)).await {
            tracing::info!(error = %e, "purge not triggered");
        }
        return;
    }
    if last.is_some_and(|t| t.elapsed() < SNAPSHOT_EVERY) {
        return;
    }
    *last = Some(tokio::time::Instant::now());
    tracing::info!(
        log_bytes = bytes,
        snapshot_log_bytes = limit,
        "the Raft log passed its bytes: building a snapshot"
    );
    if let Err(e) = core.scope.run(core.raft.trigger().snapshot()).await {
        tracing::info!(error = %e, "snapshot not triggered");
    }
}

/// Runs until `stop`: measures storage, raises NOSPACE past the quota and
/// snapshots a log past its bytes.
pub async fn watch(core: Arc<NodeCore>, mut stop: watch::Receiver<bool>) {
    let quota = core.config.quota_bytes;
    metrics::gauge!("cairn_quota_bytes").set(quota as f64);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let alarm = Alarm {
        member: core.config.id,
        kind: AlarmKind::NoSpace,
    };
    // A write that finds the disk full wakes this at once: the alarm must
    // stop writes before they use up the room the reserve gave back.
    let full = Arc::new(tokio::sync::Notify::new());
    let wake = full.clone();
    core.reserve.on_full(move || wake.notify_one());
    let mut snapshot_triggered = None;
    // This node's NOSPACE alarm was raised or seen standing since the disk
    // was last found full (so a missing one now means an operator
    // disarmed it).
    let mut alarm_seen = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = full.notified() => {}
            _ = stop.changed() => return,
        }
        snapshot_on_bytes(&core, &mut snapshot_triggered).await;
        let bytes = storage_bytes(&core);
        metrics::gauge!("cairn_storage_bytes").set(bytes as f64);
        if core.sm.alarms().contains(&alarm) {
            alarm_seen = true;
            continue;
        }
        let why = if disk_full(&core, &mut alarm_seen) {
            "the disk is full"
        } else if quota != 0 && bytes > quota {
            "storage is past its quota"
        } else {
            continue;
        };
        tracing::warn!(bytes, quota_bytes = quota, "{why}: raising NOSPACE");
        match raise(&core, alarm).await {
            // Raised: if it is missing later, an operator disarmed it.
            Ok(()) => alarm_seen = true,
            Err(e) => tracing::info!(error = %e.message(), "NOSPACE not raised yet: retrying"),
        }
    }
}

/// Whether this node's disk is full, called while no NOSPACE alarm of
/// this node stands. A write that found it full raises the alarm first;
/// once the alarm was seen and then disarmed (`alarm_seen`), or when the
/// reserve is missing, the reserve is written again, and the disk is full
/// if that fails.
fn disk_full(core: &NodeCore, alarm_seen: &mut bool) -> bool {
    let reserve = &core.reserve;
    let was_full = reserve.disk_was_full();
    if !was_full && reserve.is_filled() {
        return false;
    }
    if was_full && !*alarm_seen {
        return true;
    }
    match reserve.fill() {
        Ok(true) => {
            *alarm_seen = false;
            false
        }
        Ok(false) => true,
        Err(e) => {
            tracing::warn!(error = %e, "the reserve could not be written");
            true
        }
    }
}

/// Raises `alarm` on the leader: directly when this node leads, else by
/// asking it.
async fn raise(core: &NodeCore, alarm: Alarm) -> Result<(), tonic::Status> {
    let Some((leader, addr)) = core.leader() else {
        return Err(tonic::Status::unavailable("no leader known"));
    };
    if leader == core.config.id {
        return super::cluster::raise(core, alarm).await;
    }
    let ch = crate::raft::network::lazy_channel(&core.net, &addr)
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(cairn_proto::cluster::AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: alarm.member,
        alarm: super::cluster::alarm_type(alarm.kind) as i32,
    });
    req.set_timeout(Duration::from_secs(5));
    ClusterClient::new(ch).alarm(req).await?;
    Ok(())
}
