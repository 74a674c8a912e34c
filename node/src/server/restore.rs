//! `cairn restore`: turns a copy of one member's data directory (a backup)
//! into a cluster of one voter, so a whole cluster can be rebuilt from it.
//!
//! A member started empty never votes until a leader has caught it up
//! (see `identity`), so the restored member cannot count on the empty
//! founders to elect it while its membership still lists them. Restoring
//! is therefore an explicit, offline step on the copy: it appends a
//! membership entry naming this node as the only voter after the last
//! entry of the copy, and marks the node ready to vote. Started, the node
//! elects itself and commits that entry; the other members, started
//! empty, find a cluster that does not list them, join it as learners
//! and are promoted once caught up (as a replaced member does). Like
//! etcd's `snapshot restore`, this must only ever run on a copy whose
//! old cluster is gone: its other members must not run any more.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::sync::Arc;

use cairn_io::{Executor, FileSystem, StdFs, ThreadExecutor};
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, Membership, RaftLogReader};

use super::{identity, RaftScope, StartError};
use crate::raft::log_store::LogStore;
use crate::raft::state_machine::{SmEnv, StateMachine};
use crate::raft::{Entry, LogId, Member, NodeId, TypeConfig};

/// Entries read at a time while looking for the last membership.
const SCAN_CHUNK: u64 = 64;

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The last entry of the copy.
    pub last: LogId,
    /// The membership the copy ended with (voter ids).
    pub voters_before: Vec<NodeId>,
    /// This node's addresses, kept from that membership.
    pub member: Member,
}

/// Makes the data directory `data_dir` of node `id` a cluster of one voter
/// (`id`), keeping its data. Fails, changing nothing, when the directory
/// holds no Raft data, belongs to another node, or `id` is not a member of
/// its last membership.
pub async fn restore(data_dir: &Path, id: NodeId) -> Result<Restored, StartError> {
    let storage = |source: io::Error| StartError::Storage {
        dir: data_dir.display().to_string(),
        source,
    };
    if !data_dir.join("raft").is_dir() {
        return Err(StartError::Identity(format!(
            "{} holds no Raft data: nothing to restore",
            data_dir.display()
        )));
    }
    let fs: Arc<dyn FileSystem> = Arc::new(StdFs);
    let executor: Arc<dyn Executor> = Arc::new(ThreadExecutor::new());
    let mut log =
        LogStore::open(fs.clone(), executor.clone(), data_dir.join("raft")).map_err(storage)?;
    let mut sm = StateMachine::open(SmEnv {
        fs: fs.clone(),
        executor,
        data_dir: data_dir.to_path_buf(),
        lsm: cairn_lsm::Options::default(),
    })
    .map_err(storage)?;
    // Refuses a directory of another node before anything is written.
    let voting =
        identity::Voting::open(fs, data_dir, id, true, sm.shared().cluster_id()).map_err(|e| {
            match e {
                identity::IdentityError::Io(e) => storage(e),
                identity::IdentityError::Mismatch(m) => StartError::Identity(m),
            }
        })?;
    let scope = RaftScope::new(id);
    let (applied, applied_membership) = scope.run(sm.applied_state()).await.map_err(storage)?;
    let state = scope.run(log.get_log_state()).await.map_err(storage)?;
    let Some(last) = state.last_log_id.max(applied) else {
        return Err(StartError::Identity(format!(
            "{} holds no Raft entries: nothing to restore",
            data_dir.display()
        )));
    };
    let from = applied.as_ref().map_or(0, |a| a.index + 1);
    let membership = scope
        .run(last_membership(&mut log, from, last.index))
        .await
        .map_err(storage)?
        .unwrap_or_else(|| applied_membership.membership().clone());
    let voters_before: Vec<NodeId> = membership.voter_ids().collect();
    let Some(member) = membership.get_node(&id).cloned() else {
        return Err(StartError::Identity(format!(
            "node {id} is not a member of the copy's last membership (voters {voters_before:?}); \
             restore with the id of the member the copy was taken from"
        )));
    };
    let alone = Membership::new(
        vec![BTreeSet::from([id])],
        BTreeMap::from([(id, member.clone())]),
    )
    .map_err(|e| StartError::Identity(e.to_string()))?;
    let entry = Entry {
        log_id: LogId::new(*last.committed_leader_id(), last.index + 1),
        payload: EntryPayload::Membership(alone),
    };
    scope.run(append(&mut log, entry)).await.map_err(storage)?;
    voting
        .mark_ready(sm.shared().cluster_id())
        .map_err(storage)?;
    Ok(Restored {
        last,
        voters_before,
        member,
    })
}

/// The last membership entry in the log between `from` and `last`
/// (inclusive), read a chunk at a time.
async fn last_membership(
    log: &mut LogStore,
    from: u64,
    last: u64,
) -> io::Result<Option<Membership<NodeId, Member>>> {
    let mut found = None;
    let mut start = from;
    while start <= last {
        let end = start.saturating_add(SCAN_CHUNK).min(last + 1);
        let entries = log.try_get_log_entries(start..end).await?;
        for e in entries {
            if let EntryPayload::Membership(m) = e.payload {
                found = Some(m);
            }
        }
        start = end;
    }
    Ok(found)
}

/// Appends one entry and waits until it is durable.
async fn append(log: &mut LogStore, entry: Entry) -> io::Result<()> {
    let (tx, rx) = TypeConfig::oneshot();
    log.append([entry], IOFlushed::signal(tx)).await?;
    rx.await
        .map_err(|_| io::Error::other("the log's writer went away"))?
}
