//! Linearizable reads share ReadIndex rounds.
//!
//! A ReadIndex round costs the leader a heartbeat to every follower and a
//! wait for a quorum's answers. openraft starts one per
//! `ensure_linearizable` call, so 64 concurrent readers cost 64 rounds.
//! Here concurrent readers share them, as etcd's read loop does: a reader
//! that arrives while no round runs starts one; readers that arrive while
//! a round runs wait for the next, which starts as soon as the current one
//! ends and serves them all.
//!
//! Why a shared round is safe: a round asks openraft for its read index
//! only after every reader it serves has arrived, so the index covers
//! every write acknowledged before any of those readers was called, and
//! the quorum check that follows proves the node still led when the index
//! was taken. A round that began before a reader arrived never serves it.

use std::sync::Arc;

use openraft::ReadPolicy;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tonic::Status;

use super::errors;
use super::NodeCore;

type Waiter = oneshot::Sender<Result<(), Status>>;

/// At most this many readers share one round; the rest wait for the next.
const MAX_READERS_PER_ROUND: usize = 4096;

/// The readers waiting for the next round, and whether a round runs.
#[derive(Default)]
pub struct ReadRounds {
    state: Mutex<RoundState>,
}

#[derive(Default)]
struct RoundState {
    /// A task is running rounds; it takes `waiting` before each.
    running: bool,
    waiting: Vec<Waiter>,
}

impl ReadRounds {
    /// Returns once this node may serve a linearizable read: it led when a
    /// ReadIndex round that began after this call took its index, and it
    /// has applied up to that index.
    pub async fn barrier(core: &Arc<NodeCore>) -> Result<(), Status> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut st = core.reads.state.lock();
            st.waiting.push(tx);
            !std::mem::replace(&mut st.running, true)
        };
        if start {
            tokio::spawn(run_rounds(core.clone()));
        }
        rx.await
            .unwrap_or_else(|_| Err(Status::unavailable("the read round was abandoned")))
    }
}

/// Runs rounds until no reader waits.
async fn run_rounds(core: Arc<NodeCore>) {
    // Should this task end early (a panic, the runtime stopping), the
    // next reader must be able to start another.
    let mut guard = ResetOnDrop {
        core: core.clone(),
        armed: true,
    };
    loop {
        let readers = {
            let mut st = core.reads.state.lock();
            if st.waiting.is_empty() {
                st.running = false;
                guard.armed = false;
                return;
            }
            let n = st.waiting.len().min(MAX_READERS_PER_ROUND);
            st.waiting.drain(..n).collect::<Vec<_>>()
        };
        metrics::histogram!("cairn_read_round_readers").record(readers.len() as f64);
        let res = core
            .scope
            .run(core.raft.ensure_linearizable(ReadPolicy::ReadIndex))
            .await
            .map(|_| ())
            .map_err(errors::read_error);
        for r in readers {
            let _ = r.send(res.clone());
        }
    }
}

/// Disarmed when the task ends normally; armed, it fails the waiting
/// readers (their senders drop) and lets the next reader start a task.
struct ResetOnDrop {
    core: Arc<NodeCore>,
    armed: bool,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let mut st = self.core.reads.state.lock();
            st.waiting.clear();
            st.running = false;
        }
    }
}
