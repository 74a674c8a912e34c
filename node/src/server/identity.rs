//! Who this data directory belongs to, and whether its node may vote.
//!
//! `<data>/identity` holds the cluster id, the node id and `voter_ready`,
//! written durably (data, rename and directory synced). A node votes, and
//! stands for election, only when it is ready: its log holds everything
//! the cluster committed before it started. A node that starts with no
//! data (a new node joining, or a member whose disk was wiped) is not
//! ready until a leader has caught it up; a node with data is ready when
//! its identity says so. Without this, a voter restarted on an empty
//! volume could elect a leader that lacks a committed entry.
//!
//! Catching up ends when the state machine has applied the commit index a
//! leader announced in a message of its own term (a leader's commit index
//! covers every entry committed before it was elected only once it has
//! committed an entry of its own term).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_io::{small_file, FileSystem};
use openraft_rt::WatchReceiver;
use tokio::sync::watch;

use super::NodeCore;
use serde::{Deserialize, Serialize};

use crate::raft::{LogId, NodeId};

const FORMAT: u32 = 1;

/// The durable identity of a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Format of this record.
    pub format: u32,
    /// The cluster's id (0 until the node has applied the first
    /// membership).
    pub cluster_id: u64,
    /// This node's id.
    pub node_id: NodeId,
    /// Whether the node may vote: its log holds every entry the cluster
    /// had committed when it started.
    pub voter_ready: bool,
}

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The directory belongs to another node or cluster, or has a newer
    /// format.
    #[error("{0}")]
    Mismatch(String),
}

/// This node's voting state, shared by the peer service and the task that
/// ends catching up.
pub struct Voting {
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
    identity: parking_lot::Mutex<Identity>,
    ready: AtomicBool,
    /// One past the index that must be applied before the node is ready
    /// (0: no leader has announced one yet).
    target: AtomicU64,
}

impl Voting {
    /// Reads (or creates) the identity of `data_dir` for node `node_id`.
    /// `has_data` says whether the Raft state holds anything; `cluster_id`
    /// is the state machine's (0 when none was applied).
    pub fn open(
        fs: Arc<dyn FileSystem>,
        data_dir: &Path,
        node_id: NodeId,
        has_data: bool,
        cluster_id: u64,
    ) -> Result<Arc<Self>, IdentityError> {
        let path = data_dir.join("identity");
        let found: Option<Identity> = small_file::read(&*fs, &path)?;
        let identity = match found {
            Some(id) => {
                if id.format > FORMAT {
                    return Err(IdentityError::Mismatch(format!(
                        "{} has format {}; this build reads up to {FORMAT}",
                        path.display(),
                        id.format
                    )));
                }
                if id.node_id != node_id {
                    return Err(IdentityError::Mismatch(format!(
                        "the data directory {} belongs to node {}, not to node {node_id}",
                        data_dir.display(),
                        id.node_id
                    )));
                }
                if id.cluster_id != 0 && cluster_id != 0 && id.cluster_id != cluster_id {
                    return Err(IdentityError::Mismatch(format!(
                        "the data directory {} belongs to cluster {:016x}, but its state \
                         machine to cluster {cluster_id:016x}",
                        data_dir.display(),
                        id.cluster_id
                    )));
                }
                if id.voter_ready && !has_data {
                    tracing::warn!(
                        "this node's identity survives but its Raft state is gone: \
                         it will not vote until a leader has caught it up"
                    );
                }
                Identity {
                    format: FORMAT,
                    cluster_id: if cluster_id != 0 {
                        cluster_id
                    } else {
                        id.cluster_id
                    },
                    node_id,
                    voter_ready: id.voter_ready && has_data,
                }
            }
            // A directory from before identities: its data speaks for it.
            None => Identity {
                format: FORMAT,
                cluster_id,
                node_id,
                voter_ready: has_data,
            },
        };
        let ready = identity.voter_ready;
        let voting = Arc::new(Voting {
            fs,
            path,
            identity: parking_lot::Mutex::new(identity),
            ready: AtomicBool::new(ready),
            target: AtomicU64::new(0),
        });
        if found != Some(identity) {
            voting.persist()?;
        }
        if !ready {
            tracing::info!(
                "this node starts without data: it will not vote until a leader has caught it up"
            );
        }
        Ok(voting)
    }

    fn persist(&self) -> std::io::Result<()> {
        let id = *self.identity.lock();
        small_file::write(&*self.fs, &self.path, &id, true)
    }

    /// Whether the node may vote and stand for election.
    pub fn ready(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        if crate::planted::on(crate::planted::Bug::VoteWhenWiped) {
            return true;
        }
        self.ready.load(Ordering::Acquire)
    }

    /// Notes what a leader's message says: once a leader of `term` has
    /// committed an entry of its own term, its commit index is the target.
    pub fn heard_from_leader(&self, term: u64, leader_commit: Option<&LogId>) {
        if self.ready() {
            return;
        }
        if let Some(c) = leader_commit.filter(|c| c.leader_id.term == term) {
            if self
                .target
                .compare_exchange(0, c.index + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                tracing::info!(
                    term,
                    target = c.index,
                    "catching up to a leader's commit index"
                );
            }
        }
    }

    /// Notes a snapshot a leader installed here: it holds only committed
    /// entries, up to `last`.
    pub fn installed_snapshot(&self, last: Option<&LogId>) {
        if let (false, Some(l)) = (self.ready(), last) {
            let _ =
                self.target
                    .compare_exchange(0, l.index + 1, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Ends catching up once `applied` reaches the target, durably.
    /// Returns true when the node just became ready.
    pub fn applied(&self, applied: Option<u64>, cluster_id: u64) -> std::io::Result<bool> {
        if self.ready() {
            return Ok(false);
        }
        let target = self.target.load(Ordering::Acquire);
        if target == 0 || applied.is_none_or(|a| a + 1 < target) {
            return Ok(false);
        }
        self.mark_ready(cluster_id)?;
        tracing::info!(
            caught_up_to = target - 1,
            "caught up by the leader: this node votes again"
        );
        Ok(true)
    }

    /// Makes the node ready at once: it founds a cluster, or it is a
    /// founder while no cluster exists yet (nothing is committed that it
    /// could lack).
    pub fn mark_ready(&self, cluster_id: u64) -> std::io::Result<()> {
        {
            let mut id = self.identity.lock();
            id.voter_ready = true;
            if cluster_id != 0 {
                id.cluster_id = cluster_id;
            }
        }
        self.persist()?;
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// The cluster id this directory belongs to (0: not known yet).
    pub fn cluster_id(&self) -> u64 {
        self.identity.lock().cluster_id
    }

    /// Records the cluster id once it is known.
    pub fn learn_cluster_id(&self, cluster_id: u64) -> std::io::Result<()> {
        if cluster_id == 0 || self.identity.lock().cluster_id == cluster_id {
            return Ok(());
        }
        self.identity.lock().cluster_id = cluster_id;
        self.persist()
    }
}

/// Ends catching up: while the node is not ready, checks every 100 ms
/// whether its state machine has applied the target, then lets it stand
/// for election again; records the cluster id once it is applied.
pub(super) async fn catch_up(core: Arc<NodeCore>, mut stop: watch::Receiver<bool>) {
    let voting = &core.voting;
    while !(voting.ready() && voting.cluster_id() != 0) {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        let cluster_id = core.sm.cluster_id();
        let done = if voting.ready() {
            voting.learn_cluster_id(cluster_id).map(|()| false)
        } else {
            let applied = core
                .raft
                .metrics()
                .borrow_watched()
                .last_applied
                .map(|l| l.index);
            voting.applied(applied, cluster_id)
        };
        match done {
            Ok(true) => core.raft.runtime_config().elect(true),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "writing this node's identity failed; retrying"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::TypeConfig;
    use cairn_io::MemFs;

    fn log_id(term: u64, index: u64) -> LogId {
        openraft::testing::log_id::<TypeConfig>(term, 1, index)
    }

    #[test]
    fn an_empty_node_votes_only_after_catching_up_to_an_own_term_commit() {
        let fs: Arc<dyn FileSystem> = Arc::new(MemFs::new());
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let v = Voting::open(fs.clone(), dir, 2, false, 0).unwrap();
        assert!(!v.ready());
        // A new leader whose commit index is of an older term sets nothing.
        v.heard_from_leader(5, Some(&log_id(4, 90)));
        assert!(!v.applied(Some(1_000), 7).unwrap());
        v.heard_from_leader(5, Some(&log_id(5, 100)));
        assert!(!v.applied(Some(99), 7).unwrap());
        assert!(v.applied(Some(100), 7).unwrap());
        assert!(v.ready());
        // Durable: a restart with data is ready at once.
        let again = Voting::open(fs.clone(), dir, 2, true, 7).unwrap();
        assert!(again.ready());
        // With its data gone, it is not.
        let wiped = Voting::open(fs.clone(), dir, 2, false, 0).unwrap();
        assert!(!wiped.ready());
        // Another node's directory, or another cluster's, is refused.
        assert!(Voting::open(fs.clone(), dir, 3, true, 7).is_err());
        assert!(Voting::open(fs, dir, 2, true, 8).is_err());
    }
}
