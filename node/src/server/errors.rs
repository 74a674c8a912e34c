//! How failures become gRPC statuses. Deliberate codes: INVALID_ARGUMENT
//! for bad input (naming the limit), UNAVAILABLE with the leader hint for
//! a call that must go to the leader, UNAVAILABLE for an unknown outcome
//! (retry with the same request id), INTERNAL for storage failures,
//! RESOURCE_EXHAUSTED naming the alarm for a write an alarm refuses.

use openraft::error::{ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError};
use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::kv::alarms::{Alarm, AlarmKind};
use crate::kv::StoreError;
use crate::raft::TypeConfig;

pub use cairn_proto::{ALARM, COMPACT_REVISION, LEADER_ADDR, LEADER_ID};

/// UNAVAILABLE naming the leader, so the caller redirects in one hop.
pub fn not_leader(f: &ForwardToLeader<TypeConfig>) -> Status {
    let (id, addr) = (
        f.leader_id.unwrap_or(0),
        f.leader_node
            .as_ref()
            .map(|n| n.client_addr.clone())
            .unwrap_or_default(),
    );
    let msg = if id == 0 {
        "not the leader, and no leader is known yet; retry".to_string()
    } else {
        format!("not the leader; the leader is node {id} at {addr}")
    };
    let s = Status::unavailable(msg);
    if id == 0 {
        return s;
    }
    leader_hint(s, id, &addr)
}

/// `s` with the trailers that name the leader (node `id`, serving
/// clients at `addr`).
pub fn leader_hint(mut s: Status, id: u64, addr: &str) -> Status {
    s.metadata_mut().insert(LEADER_ID, MetadataValue::from(id));
    if let Ok(v) = addr.parse() {
        s.metadata_mut().insert(LEADER_ADDR, v);
    }
    s
}

/// Maps a failed write.
pub fn write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(&f),
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(f)) => {
            let hint = not_leader(&f);
            Status::with_metadata(
                tonic::Code::Unavailable,
                format!(
                    "leader changed before the write committed; its outcome is unknown, retry with the same request id ({})",
                    hint.message()
                ),
                hint.metadata().clone(),
            )
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(e.to_string())
        }
        RaftError::APIError(e) => Status::failed_precondition(e.to_string()),
        RaftError::Fatal(f) => Status::unavailable(format!("this node's Raft stopped: {f}")),
    }
}

/// Maps a failed linearizable read barrier.
pub fn read_error(e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>) -> Status {
    match e {
        RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => not_leader(&f),
        RaftError::APIError(e) => Status::unavailable(format!("cannot confirm leadership: {e}")),
        RaftError::Fatal(f) => Status::unavailable(format!("this node's Raft stopped: {f}")),
    }
}

/// Maps a storage failure.
pub fn store_error(e: StoreError) -> Status {
    tracing::error!(error = %e, "state machine read failed");
    Status::internal(format!("storage error: {e}"))
}

/// RESOURCE_EXHAUSTED naming the alarm that refuses a write (nothing was
/// written), with the `cairn-alarm` trailer.
pub fn alarmed(alarm: Alarm) -> Status {
    let what = match alarm.kind {
        AlarmKind::NoSpace => {
            "writes that add data are refused (deletes go through); free space or raise \
             --quota-bytes on that node, then disarm it (cairnctl alarm disarm)"
        }
        AlarmKind::Corrupt => {
            "replicas differ: every write is refused until the diverging member is \
             replaced and the alarm disarmed (cairnctl alarm disarm)"
        }
    };
    let mut s = Status::resource_exhausted(format!("alarm {alarm} is raised: {what}"));
    s.metadata_mut()
        .insert(ALARM, MetadataValue::from_static(alarm.kind.name()));
    s
}
