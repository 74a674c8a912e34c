//! openraft's state machine over the LSM engine.
//!
//! ```text
//! <data>/sm/CURRENT                 names the live database directory (replaced atomically)
//! <data>/sm/db-<generation>/        the live LSM database (WAL off: the Raft log replays)
//! <data>/snapshots/                 see the `snapshot` module
//! ```
//!
//! Every applied entry is written with the applied position (log id and
//! membership) in the batch's metadata; the engine keeps the metadata of
//! its newest flush, so after a crash [`StateMachine::applied_state`]
//! reports exactly what is durable, and openraft re-applies the committed
//! entries after it. A snapshot is a checkpoint (hard links, after a
//! flush), so everything it covers is durable, and the log is purged only
//! behind a snapshot.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;

use super::snapshot::{self, remove_dir, replace_current, SnapshotDir};
use super::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};
use crate::kv::alarms::Alarms;
use crate::kv::command::{Op, OpResult};
use crate::kv::hash::StateHash;
use crate::kv::{Applier, CommandResponse, Settings, WatchEvent};
use cairn_io::executor::Executor;
use cairn_io::fs::FileSystem;
use cairn_io::{codec, small_file};
use cairn_lsm::{self as lsm, Db};

/// What the state machine stores in the LSM's flush metadata: the Raft
/// position the flushed data reflects.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AppliedState {
    /// The last log entry applied.
    pub last_applied: Option<LogId>,
    /// The newest membership applied.
    pub membership: StoredMembership,
    /// Derived from the first membership entry: the same on every replica.
    pub cluster_id: u64,
}

impl AppliedState {
    /// Encodes for the LSM metadata slot.
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        codec::encode(self)
    }
    /// The state recorded in an LSM metadata slot (the default when the
    /// database has none yet).
    pub fn from_metadata(metadata: Option<Vec<u8>>) -> io::Result<Self> {
        metadata.map_or_else(|| Ok(Self::default()), |b| Self::decode(&b))
    }

    /// Decodes the LSM metadata slot.
    pub fn decode(bytes: &[u8]) -> io::Result<Self> {
        codec::decode(bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("corrupt applied position in the flush metadata: {e}"),
            )
        })
    }

    /// The index of the last applied entry (0: none).
    pub fn applied_index(&self) -> u64 {
        self.last_applied.as_ref().map_or(0, |l| l.index)
    }
}

/// The events of one revision, as broadcast to watchers.
#[derive(Debug)]
pub struct RevisionEvents {
    /// The revision (log index).
    pub revision: u64,
    /// What changed.
    pub events: Vec<WatchEvent>,
    /// A snapshot was installed: the applied revision jumped to
    /// `revision` without the revisions between being broadcast, so
    /// watchers must read them from the history.
    pub installed_snapshot: bool,
}

/// Capacity of the watch broadcast; a watcher that falls further behind
/// reads the history from the engine instead.
const WATCH_CHANNEL: usize = 4096;

/// What the gRPC layer reads: the live database and the applied position.
pub struct SmShared {
    db: RwLock<Arc<Db>>,
    applied: AtomicU64,
    history_start: AtomicU64,
    cluster_id: AtomicU64,
    events: broadcast::Sender<Arc<RevisionEvents>>,
    sessions: Mutex<SessionsView>,
    alarms: Mutex<Arc<Alarms>>,
    /// Hashes of the state at the newest hash-check entries, oldest first:
    /// (index, None while it is computed).
    hashes: Mutex<VecDeque<(u64, Option<HashResult>)>>,
}

/// A member's hash of its state, or why it has none.
type HashResult = Result<StateHash, String>;

/// Hash-check results kept (older ones are forgotten).
const HASHES_KEPT: usize = 8;

/// What the leader's session expiry and `cairnctl` read of the sessions
/// and the replicated settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionsView {
    /// The settings in force.
    pub settings: Settings,
    /// Whether an entry ever set them (else they are the defaults).
    pub settings_set: bool,
    /// Sessions held.
    pub count: usize,
    /// The index of the oldest session's last write.
    pub oldest_last_index: Option<u64>,
}

impl SessionsView {
    fn of(applier: &Applier) -> Self {
        let (count, oldest_last_index) = applier.sessions();
        SessionsView {
            settings: applier.settings(),
            settings_set: applier.settings_set(),
            count,
            oldest_last_index,
        }
    }
}

impl SmShared {
    /// The live database (a snapshot install may swap it).
    pub fn db(&self) -> Arc<Db> {
        self.db.read().clone()
    }
    /// The revision of the last applied entry.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }
    /// The oldest revision the watch history still holds.
    pub fn history_start(&self) -> u64 {
        self.history_start.load(Ordering::Acquire)
    }
    /// The cluster id (0 until the first membership entry is applied).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Acquire)
    }
    /// The sessions and the settings, as of the last applied entry.
    pub fn sessions(&self) -> SessionsView {
        *self.sessions.lock()
    }
    /// The raised alarms, as of the last applied entry.
    pub fn alarms(&self) -> Arc<Alarms> {
        self.alarms.lock().clone()
    }
    /// The hash of the state as of the hash-check entry at `index`,
    /// waiting up to `wait` for the entry to be applied and hashed.
    pub async fn hash_at(&self, index: u64, wait: Duration) -> HashResult {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let applied = self.applied();
            {
                let hashes = self.hashes.lock();
                match hashes.iter().find(|(i, _)| *i == index) {
                    Some((_, Some(r))) => return r.clone(),
                    Some((_, None)) => {}
                    None if applied >= index => {
                        return Err(format!(
                            "no hash at index {index}: not a hash-check entry, or one of more \
                             than {HASHES_KEPT} ago"
                        ))
                    }
                    None => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the hash at index {index} is not ready after {wait:?} (applied {applied})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    fn hash_started(&self, index: u64) {
        let mut hashes = self.hashes.lock();
        if hashes.len() >= HASHES_KEPT {
            hashes.pop_front();
        }
        hashes.push_back((index, None));
    }
    fn hash_done(&self, index: u64, result: HashResult) {
        if let Some(slot) = self.hashes.lock().iter_mut().find(|(i, _)| *i == index) {
            slot.1 = Some(result);
        }
    }
    /// Subscribes to the events of every revision applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RevisionEvents>> {
        self.events.subscribe()
    }
}

/// Where the state machine keeps its files, and how it runs blocking work.
#[derive(Clone)]
pub struct SmEnv {
    /// The filesystem seam.
    pub fs: Arc<dyn FileSystem>,
    /// Runs blocking work (checkpoints, opening databases) off the async
    /// workers.
    pub executor: Arc<dyn Executor>,
    /// The node's data directory.
    pub data_dir: PathBuf,
    /// Engine options for the live database (WAL off is forced).
    pub lsm: lsm::Options,
}

impl SmEnv {
    fn sm_dir(&self) -> PathBuf {
        self.data_dir.join("sm")
    }
    /// Where snapshots live.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.data_dir.join("snapshots")
    }
    fn open_db(&self, dir: &Path) -> lsm::Result<Db> {
        let mut opts = self.lsm.clone();
        opts.wal = false;
        opts.create_if_missing = true;
        opts.fs = self.fs.clone();
        opts.executor = self.executor.clone();
        Db::open(dir, opts)
    }
}

/// Runs `f` through the executor and awaits it: on a dedicated thread in
/// production, inline in the simulation.
pub async fn run_blocking<T: Send + 'static>(
    executor: &Arc<dyn Executor>,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    executor.spawn(
        "blocking",
        Box::new(move || {
            let _ = tx.send(f());
        }),
    );
    rx.await
        .map_err(|_| io::Error::other("blocking job dropped"))
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The state machine handed to openraft.
pub struct StateMachine {
    env: SmEnv,
    shared: Arc<SmShared>,
    applier: Applier,
    state: AppliedState,
    generation: u64,
    current: Arc<Mutex<Option<Snapshot>>>,
}

impl StateMachine {
    /// Opens the live database (creating it on first start) and the newest
    /// snapshot.
    pub fn open(env: SmEnv) -> io::Result<Self> {
        let fs = env.fs.clone();
        cairn_io::fs::create_dir_durable(&*fs, &env.sm_dir())?;
        cairn_io::fs::create_dir_durable(&*fs, &env.snapshot_dir())?;
        let current_file = env.sm_dir().join("CURRENT");
        let generation = match small_file::read::<u64>(&*fs, &current_file)? {
            Some(g) => g,
            None => {
                small_file::write(&*fs, &current_file, &1u64, true)?;
                1
            }
        };
        // Leftovers of interrupted installs and older generations.
        for name in fs.list(&env.sm_dir())? {
            if name.starts_with("db-") && name != format!("db-{generation}") {
                remove_dir(&*fs, &env.sm_dir().join(&name))?;
            }
        }
        let db = env
            .open_db(&env.sm_dir().join(format!("db-{generation}")))
            .map_err(io_err)?;
        let state = AppliedState::from_metadata(db.durable_user_metadata())?;
        // The defaults are constants, the same on every replica, until an
        // entry sets the settings.
        let applier = Applier::load(&db, Settings::default()).map_err(io_err)?;
        let current = snapshot::load_newest(&*fs, &env.snapshot_dir())?;
        let (events, _) = broadcast::channel(WATCH_CHANNEL);
        let shared = Arc::new(SmShared {
            applied: AtomicU64::new(state.applied_index()),
            history_start: AtomicU64::new(applier.history_start()),
            cluster_id: AtomicU64::new(state.cluster_id),
            db: RwLock::new(Arc::new(db)),
            events,
            sessions: Mutex::new(SessionsView::of(&applier)),
            alarms: Mutex::new(Arc::new(applier.alarms().clone())),
            hashes: Mutex::new(VecDeque::new()),
        });
        Ok(StateMachine {
            env,
            shared,
            applier,
            state,
            generation,
            current: Arc::new(Mutex::new(current)),
        })
    }

    /// The handle the gRPC layer reads through.
    pub fn shared(&self) -> Arc<SmShared> {
        self.shared.clone()
    }
}

impl StateMachine {
    /// Hashes the state as of the entry at `index` (just applied) on the
    /// executor, from a snapshot of the database: applying goes on.
    fn hash_in_background(&self, db: &Db, index: u64) {
        let snapshot = db.snapshot();
        let shared = self.shared.clone();
        shared.hash_started(index);
        self.env.executor.spawn(
            "state-hash",
            Box::new(move || {
                let r = crate::kv::hash::state_hash(&snapshot).map_err(|e| e.to_string());
                shared.hash_done(index, r);
            }),
        );
    }

    /// Makes the applied position visible to readers.
    fn publish(&self) {
        let applied = self.state.applied_index();
        self.shared.applied.store(applied, Ordering::Release);
        self.shared
            .history_start
            .store(self.applier.history_start(), Ordering::Release);
        self.shared
            .cluster_id
            .store(self.state.cluster_id, Ordering::Release);
        let view = SessionsView::of(&self.applier);
        {
            let mut shared = self.shared.sessions.lock();
            if *shared != view {
                *shared = view;
            }
        }
        let mut alarms = self.shared.alarms.lock();
        if **alarms != *self.applier.alarms() {
            *alarms = Arc::new(self.applier.alarms().clone());
        }
    }
}

/// Builds snapshots: checkpoints of the live database.
pub struct SnapshotBuilder {
    env: SmEnv,
    shared: Arc<SmShared>,
    current: Arc<Mutex<Option<Snapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotDir;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let env = self.env.clone();
        let db = self.shared.db();
        let current = self.current.clone();
        let started = Instant::now();
        // The snapshot, and whether it was built now (or is the current one).
        let (snap, built) = run_blocking(
            &self.env.executor.clone(),
            move || -> io::Result<(Snapshot, bool)> {
                let fs = &*env.fs;
                let tmp = env
                    .snapshot_dir()
                    .join(format!("{}{}", snapshot::TMP, db.last_seq()));
                remove_dir(fs, &tmp)?;
                let info = db.checkpoint(&tmp).map_err(io_err)?;
                let state = match info.user_metadata {
                    Some(b) => AppliedState::decode(&b)?,
                    None => AppliedState::default(),
                };
                let meta = SnapshotMeta {
                    last_log_id: state.last_applied,
                    last_membership: state.membership.clone(),
                };
                let kept = current
                    .lock()
                    .clone()
                    .filter(|c| c.meta.last_log_id >= meta.last_log_id);
                if let Some(kept) = kept {
                    // Nothing applied since the current snapshot: keep it.
                    // Building it again would replace the directory of the
                    // same name that a follower may be streaming from.
                    remove_dir(fs, &tmp)?;
                    return Ok((kept, false));
                }
                small_file::write(fs, &tmp.join("meta"), &meta, true)?;
                let index = meta.last_log_id.as_ref().map_or(0, |l| l.index);
                let dir = snapshot::snap_dir(&env.snapshot_dir(), index);
                remove_dir(fs, &dir)?;
                fs.rename(&tmp, &dir)?;
                fs.sync_dir(&env.snapshot_dir())?;
                let snap = Snapshot {
                    meta,
                    snapshot: SnapshotDir { dir },
                };
                // Here, not on the runtime: removing the previous
                // snapshot's files blocked a tokio worker for tens of ms.
                replace_current(&current, fs, snap.clone())?;
                Ok((snap, true))
            },
        )
        .await??;
        if !built {
            return Ok(snap);
        }
        metrics::counter!("cairn_snapshots_built_total").increment(1);
        metrics::histogram!("cairn_snapshot_build_duration_seconds").record(started.elapsed());
        tracing::info!(last_log_id = ?snap.meta.last_log_id, "snapshot built");
        Ok(snap)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotDir;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let db = self.shared.db();
        // Handles looked up once per call, not per entry (a lookup hashes
        // the name in the recorder's registry).
        let apply_duration = metrics::histogram!("cairn_apply_duration_seconds");
        let applied_total = metrics::counter!("cairn_proposals_applied_total");
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let started = Instant::now();
            let index = entry.log_id.index;
            // Before the entry's trim deletes any history (see
            // `Applier::history_start_after`).
            self.shared
                .history_start
                .store(self.applier.history_start_after(index), Ordering::Release);
            self.state.last_applied = Some(entry.log_id);
            let (response, events) = match entry.payload {
                EntryPayload::Blank => {
                    self.applier
                        .apply_empty(&db, index, self.state.encode()?)
                        .map_err(io_err)?;
                    (None, Vec::new())
                }
                EntryPayload::Membership(m) => {
                    if self.state.cluster_id == 0 {
                        // Fixed by the first membership: equal on every
                        // replica, different for every new cluster.
                        let seed = codec::encode(&(&entry.log_id, &m))?;
                        self.state.cluster_id = xxhash_rust::xxh3::xxh3_64(&seed).max(1);
                    }
                    self.state.membership = StoredMembership::new(Some(entry.log_id), m);
                    self.applier
                        .apply_empty(&db, index, self.state.encode()?)
                        .map_err(io_err)?;
                    (None, Vec::new())
                }
                EntryPayload::Normal(cmd) => {
                    let applied = self
                        .applier
                        .apply(&db, index, &cmd, self.state.encode()?)
                        .map_err(io_err)?;
                    if matches!(cmd.op, Op::HashCheck) {
                        self.hash_in_background(&db, index);
                    }
                    (Some(applied.response), applied.events)
                }
            };
            self.publish();
            if !events.is_empty() {
                // No receivers is fine: nobody watches.
                let _ = self.shared.events.send(Arc::new(RevisionEvents {
                    revision: index,
                    events,
                    installed_snapshot: false,
                }));
            }
            if let Some(r) = responder {
                r.send(response.unwrap_or(CommandResponse {
                    revision: index,
                    result: OpResult::None,
                }));
            }
            apply_duration.record(started.elapsed());
            applied_total.increment(1);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            env: self.env.clone(),
            shared: self.shared.clone(),
            current: self.current.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotDir,
    ) -> Result<(), io::Error> {
        let env = self.env.clone();
        let generation = self.generation + 1;
        let meta2 = meta.clone();
        let (db, state, keep) = run_blocking(
            &self.env.executor.clone(),
            move || -> io::Result<(Db, AppliedState, Snapshot)> {
                let fs = &*env.fs;
                let live = env.sm_dir().join(format!("db-{generation}"));
                remove_dir(fs, &live)?;
                // Keep the received files as our newest snapshot too: link them
                // into the live directory, then move the originals.
                cairn_io::fs::create_dir_durable(fs, &live)?;
                for name in fs.list(&snapshot.dir)? {
                    if name != "meta" {
                        fs.link(&snapshot.dir.join(&name), &live.join(&name))?;
                    }
                }
                fs.sync_dir(&live)?;
                small_file::write(fs, &snapshot.dir.join("meta"), &meta2, true)?;
                let index = meta2.last_log_id.as_ref().map_or(0, |l| l.index);
                let snap_dir = snapshot::snap_dir(&env.snapshot_dir(), index);
                if snap_dir != snapshot.dir {
                    remove_dir(fs, &snap_dir)?;
                    fs.rename(&snapshot.dir, &snap_dir)?;
                    fs.sync_dir(&env.snapshot_dir())?;
                }
                let db = env.open_db(&live).map_err(io_err)?;
                let state = AppliedState::from_metadata(db.durable_user_metadata())?;
                if state.last_applied != meta2.last_log_id {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "snapshot data is at {:?} but its meta says {:?}",
                            state.last_applied, meta2.last_log_id
                        ),
                    ));
                }
                // Only now does the new generation become the live one.
                small_file::write(fs, &env.sm_dir().join("CURRENT"), &generation, true)?;
                Ok((
                    db,
                    state,
                    Snapshot {
                        meta: meta2,
                        snapshot: SnapshotDir { dir: snap_dir },
                    },
                ))
            },
        )
        .await??;
        self.applier = Applier::load(&db, Settings::default()).map_err(io_err)?;
        let old_generation = self.generation;
        self.generation = generation;
        self.state = state;
        *self.shared.db.write() = Arc::new(db);
        self.publish();
        let _ = self.shared.events.send(Arc::new(RevisionEvents {
            revision: self.shared.applied(),
            events: Vec::new(),
            installed_snapshot: true,
        }));
        replace_current(&self.current, &*self.env.fs, keep)?;
        // The old database closes when its last reader lets go; its files
        // are unlinked now (open handles keep working).
        let old_dir = self.env.sm_dir().join(format!("db-{old_generation}"));
        if let Err(e) = remove_dir(&*self.env.fs, &old_dir) {
            tracing::warn!(error = %e, dir = %old_dir.display(), "old state-machine directory left behind");
        }
        metrics::counter!("cairn_snapshots_installed_total").increment(1);
        tracing::info!(last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.current.lock().clone())
    }
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("applied", &self.state.last_applied)
            .field("generation", &self.generation)
            .finish()
    }
}
