//! The storage quota: every node measures what its storage holds (the
//! state machine's data and the Raft log) once a second, and past
//! `--quota-bytes` raises the NOSPACE alarm for itself through the leader
//! (`kv::alarms`): the whole cluster then refuses writes that add data,
//! since replicas fill at the same rate. Reads and deletes go on; the
//! alarm stays until an operator disarms it (if the node is still past
//! its quota then, it raises the alarm again).

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::cluster::{alarm_request::AlarmAction, cluster_client::ClusterClient};
use tokio::sync::watch;

use super::NodeCore;
use crate::kv::alarms::{Alarm, AlarmKind};

/// How often storage is measured.
const TICK: Duration = Duration::from_secs(1);

/// Bytes this node's storage holds, or is about to: the state machine's
/// tables, its memtables (flushed to tables soon) and the Raft log's
/// segments. Snapshots are checkpoints that share the tables' files.
pub fn storage_bytes(core: &NodeCore) -> u64 {
    let s = core.sm.db().stats();
    let tables: u64 =
        s.level_bytes.iter().sum::<u64>() + s.memtable_bytes + s.immutable_memtable_bytes;
    let log = core
        .log
        .metrics()
        .bytes
        .load(std::sync::atomic::Ordering::Relaxed);
    tables + log
}

/// Runs until `stop`: measures storage and raises NOSPACE past the quota.
pub async fn watch(core: Arc<NodeCore>, mut stop: watch::Receiver<bool>) {
    let quota = core.config.quota_bytes;
    metrics::gauge!("cairn_quota_bytes").set(quota as f64);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let alarm = Alarm {
        member: core.config.id,
        kind: AlarmKind::NoSpace,
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let bytes = storage_bytes(&core);
        metrics::gauge!("cairn_storage_bytes").set(bytes as f64);
        if quota == 0 || bytes <= quota || core.sm.alarms().contains(&alarm) {
            continue;
        }
        tracing::warn!(
            bytes,
            quota_bytes = quota,
            "storage is past its quota: raising NOSPACE"
        );
        if let Err(e) = raise(&core, alarm).await {
            tracing::info!(error = %e.message(), "NOSPACE not raised yet: retrying");
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
