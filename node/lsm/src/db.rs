//! The database: ties the WAL, memtables, tables, manifest and background
//! work together. Open and recovery live in `recovery.rs`, the write path
//! in `write.rs`, flushes and compactions in `background.rs`.

use std::collections::{BTreeMap, VecDeque};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use super::cache::BlockCache;
use super::fs::DirLock;
use super::iterator::{DbIterator, InternalIterator, MergingIterator};
use super::key::{self, SeqNo};
use super::manifest::{self, Manifest};
use super::memtable::{Lookup, MemTable};
use super::sst::TableOptions;
use super::version::{LevelIter, NewFile, Version, VersionEdit, NUM_LEVELS};
use super::wal::WalWriter;
use super::write::WriterSlot;
use super::{Error, Options, Result, Stats, WriteBatch};

/// The file name of table number `n`.
pub(crate) fn table_file_name(n: u64) -> String {
    format!("{n:06}.sst")
}

/// What readers need: the memtables and the live tables, swapped as one.
pub(crate) struct SuperVersion {
    pub mem: Arc<MemTable>,
    /// Frozen memtables, newest first.
    pub imm: Vec<Arc<MemTable>>,
    pub version: Arc<Version>,
}

/// State guarded by the database mutex.
pub(crate) struct State {
    pub mem: Arc<MemTable>,
    /// Frozen memtables, oldest first.
    pub imm: VecDeque<Arc<MemTable>>,
    pub version: Arc<Version>,
    pub next_file_number: u64,
    /// Last sequence number handed to a writer.
    pub last_seq: SeqNo,
    /// Metadata of the newest flush.
    pub durable_metadata: Option<Vec<u8>>,
    pub flush_scheduled: bool,
    pub compaction_scheduled: bool,
    pub wal_sync_scheduled: bool,
    pub bg_error: Option<String>,
    pub shutting_down: bool,
    /// Round-robin compaction pointers per level.
    pub compact_pointer: Vec<Vec<u8>>,
    /// Writers waiting for the group-commit leader, oldest first.
    pub writers: VecDeque<Arc<WriterSlot>>,
    /// The leader's reusable list of the group's batches.
    pub group_scratch: Vec<(SeqNo, WriteBatch)>,
}

/// Counters updated without the mutex.
#[derive(Default)]
pub(crate) struct Counters {
    pub flushes: AtomicU64,
    pub compactions: AtomicU64,
    pub compaction_bytes_read: AtomicU64,
    pub compaction_bytes_written: AtomicU64,
    pub write_slowdowns: AtomicU64,
    pub write_stalls: AtomicU64,
    pub wal_syncs: AtomicU64,
    pub wal_writes: AtomicU64,
}

pub(crate) struct Inner {
    pub dir: PathBuf,
    pub opts: Options,
    pub table_opts: TableOptions,
    pub cache: Arc<BlockCache>,
    pub state: Mutex<State>,
    /// Signalled when background work finishes a step or fails.
    pub bg_cv: Condvar,
    pub sv: Mutex<Arc<SuperVersion>>,
    /// Newest sequence number readers may see.
    pub visible_seq: AtomicU64,
    pub wal: Mutex<Option<WalWriter>>,
    /// Version installs are serialized by this lock, which also owns the
    /// manifest: an edit is logged and installed under it.
    pub manifest: Mutex<Manifest>,
    /// Live snapshots: sequence number -> count.
    pub snapshots: Mutex<BTreeMap<SeqNo, usize>>,
    pub counters: Counters,
    /// Held until [`Db`] is dropped (not until the last iterator is).
    pub dir_lock: Mutex<Option<Box<dyn DirLock>>>,
}

/// A log-structured merge-tree key-value store.
///
/// Thread-safe: share it behind an `Arc`. Dropping it stops background
/// work; with the WAL off it flushes the memtables first.
pub struct Db {
    pub(crate) inner: Arc<Inner>,
}

/// A consistent read view at one sequence number. Compaction keeps every
/// version it can see until it is dropped.
pub struct Snapshot {
    inner: Arc<Inner>,
    seq: SeqNo,
}

/// What [`Db::checkpoint`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Every write up to this sequence number is in the checkpoint.
    pub last_seq: SeqNo,
    /// The user metadata of the newest flush in the checkpoint.
    pub user_metadata: Option<Vec<u8>>,
    /// Table files linked.
    pub files: usize,
    /// Bytes of those tables.
    pub bytes: u64,
}

impl Db {
    /// Opens (or creates) the database in `path`, recovering whatever a
    /// crash left: the manifest, the tables, and the WAL's acknowledged
    /// writes.
    pub fn open(path: impl AsRef<Path>, opts: Options) -> Result<Db> {
        super::recovery::open(path.as_ref(), opts)
    }

    /// Applies `batch` atomically; returns the sequence number of its last
    /// op. Durable on return when the WAL is on with [`super::SyncMode::Always`].
    pub fn write(&self, batch: WriteBatch) -> Result<SeqNo> {
        self.inner.write(batch, false)
    }

    /// Stores `value` under `key`.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<SeqNo> {
        let (key, value) = (key.as_ref(), value.as_ref());
        let mut b = WriteBatch::with_capacity(key.len() + value.len() + 12);
        b.put(key, value);
        self.write(b)
    }

    /// Deletes `key` (a tombstone; absent keys are fine).
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<SeqNo> {
        let mut b = WriteBatch::new();
        b.delete(key);
        self.write(b)
    }

    /// The newest value of `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let seq = self.inner.visible_seq.load(Ordering::Acquire);
        self.inner.get_at(key.as_ref(), seq)
    }

    /// A merged iterator over `range` at the current sequence number.
    pub fn scan<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Result<DbIterator> {
        let seq = self.inner.visible_seq.load(Ordering::Acquire);
        self.inner.scan_at(bounds(range), seq)
    }

    /// A merged iterator over every key starting with `prefix`.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<DbIterator> {
        let seq = self.inner.visible_seq.load(Ordering::Acquire);
        self.inner.scan_at(prefix_bounds(prefix.as_ref()), seq)
    }

    /// A consistent read view of the database as it is now.
    pub fn snapshot(&self) -> Snapshot {
        let mut snaps = self.inner.snapshots.lock();
        let seq = self.inner.visible_seq.load(Ordering::Acquire);
        *snaps.entry(seq).or_default() += 1;
        Snapshot {
            inner: self.inner.clone(),
            seq,
        }
    }

    /// Freezes the memtable and waits until every frozen memtable is in a
    /// table. Afterwards every earlier write is durable, WAL or not.
    pub fn flush(&self) -> Result<()> {
        self.inner.write(WriteBatch::new(), true)?;
        self.inner.wait_for_flushes()
    }

    /// Syncs the WAL (for [`super::SyncMode::Batched`] and
    /// [`super::SyncMode::None`]).
    pub fn sync_wal(&self) -> Result<()> {
        self.inner.sync_wal()
    }

    /// Runs compactions until no level is due (and waits for background
    /// ones).
    pub fn compact(&self) -> Result<()> {
        self.inner.compact_until_idle()
    }

    /// Merges every level down into the deepest one, dropping every
    /// overwritten version and tombstone that no snapshot still needs, and
    /// gives their space back (like RocksDB's full `CompactRange`).
    pub fn compact_all(&self) -> Result<()> {
        self.inner.compact_all()
    }

    /// The metadata of the newest batch written (flushed or not).
    pub fn user_metadata(&self) -> Option<Vec<u8>> {
        let st = self.inner.state.lock();
        std::iter::once(&st.mem)
            .chain(st.imm.iter().rev())
            .find_map(|m| m.metadata())
            .or_else(|| st.durable_metadata.clone())
    }

    /// The metadata stored with the newest flush: what survives a crash
    /// when the WAL is off.
    pub fn durable_user_metadata(&self) -> Option<Vec<u8>> {
        self.inner.state.lock().durable_metadata.clone()
    }

    /// Writes a checkpoint into `dir` (which must not exist): hard links of
    /// the live tables and a manifest describing them. Memtables are
    /// flushed first, so the checkpoint holds every write made before the
    /// call. `Db::open(dir)` opens it as a database.
    pub fn checkpoint(&self, dir: impl AsRef<Path>) -> Result<CheckpointInfo> {
        self.flush()?;
        self.inner.checkpoint(dir.as_ref())
    }

    /// The newest sequence number visible to readers.
    pub fn last_seq(&self) -> SeqNo {
        self.inner.visible_seq.load(Ordering::Acquire)
    }

    /// The engine's counters and sizes.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        self.inner.close();
    }
}

impl Snapshot {
    /// The sequence number the view reads at.
    pub fn seq(&self) -> SeqNo {
        self.seq
    }
    /// The value of `key` in this view.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        self.inner.get_at(key.as_ref(), self.seq)
    }
    /// A merged iterator over `range` in this view.
    pub fn scan<K: AsRef<[u8]>>(&self, range: impl RangeBounds<K>) -> Result<DbIterator> {
        self.inner.scan_at(bounds(range), self.seq)
    }
    /// A merged iterator over `prefix` in this view.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<DbIterator> {
        self.inner.scan_at(prefix_bounds(prefix.as_ref()), self.seq)
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut snaps = self.inner.snapshots.lock();
        if let Some(n) = snaps.get_mut(&self.seq) {
            *n -= 1;
            if *n == 0 {
                snaps.remove(&self.seq);
            }
        }
    }
}

type Bounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

fn bounds<K: AsRef<[u8]>>(range: impl RangeBounds<K>) -> Bounds {
    let own = |b: Bound<&K>| match b {
        Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    };
    (own(range.start_bound()), own(range.end_bound()))
}

/// The range of keys starting with `prefix`.
pub(crate) fn prefix_bounds(prefix: &[u8]) -> Bounds {
    let mut end = prefix.to_vec();
    // The successor of the prefix: drop trailing 0xff bytes, bump the last.
    while end.last() == Some(&0xff) {
        end.pop();
    }
    let end = match end.last_mut() {
        Some(last) => {
            *last += 1;
            Bound::Excluded(end)
        }
        None => Bound::Unbounded,
    };
    (Bound::Included(prefix.to_vec()), end)
}

impl Inner {
    pub fn super_version(&self) -> Arc<SuperVersion> {
        self.sv.lock().clone()
    }

    /// Publishes the memtables and version in `st` to readers.
    pub fn install_super_version(&self, st: &State) {
        let sv = SuperVersion {
            mem: st.mem.clone(),
            imm: st.imm.iter().rev().cloned().collect(),
            version: st.version.clone(),
        };
        *self.sv.lock() = Arc::new(sv);
    }

    pub fn get_at(&self, user_key: &[u8], seq: SeqNo) -> Result<Option<Bytes>> {
        let sv = self.super_version();
        let hash = super::sst::bloom::hash(user_key);
        for mem in std::iter::once(&sv.mem).chain(&sv.imm) {
            match mem.get(user_key, hash, seq) {
                Lookup::Value(v) => return Ok(Some(v)),
                Lookup::Deleted => return Ok(None),
                Lookup::Absent => {}
            }
        }
        let lookup = key::lookup_key(user_key, seq);
        let found = |hit: Option<(key::ValueKind, Bytes)>| {
            hit.map(|(kind, value)| (kind == key::ValueKind::Put).then_some(value))
        };
        for f in &sv.version.levels[0] {
            if !f.overlaps(user_key, user_key) || f.summary.smallest_seq > seq {
                continue;
            }
            if let Some(v) = found(f.table.get(&lookup, user_key, hash)?) {
                return Ok(v);
            }
        }
        for level in 1..NUM_LEVELS {
            if let Some(f) = sv.version.find_file(level, user_key) {
                if let Some(v) = found(f.table.get(&lookup, user_key, hash)?) {
                    return Ok(v);
                }
            }
        }
        Ok(None)
    }

    pub fn scan_at(&self, (start, end): Bounds, seq: SeqNo) -> Result<DbIterator> {
        let sv = self.super_version();
        let mut children: Vec<Box<dyn InternalIterator>> = Vec::new();
        for mem in std::iter::once(&sv.mem).chain(&sv.imm) {
            children.push(Box::new(mem.iter()));
        }
        for f in &sv.version.levels[0] {
            children.push(Box::new(f.table.iter(true)));
        }
        for level in 1..NUM_LEVELS {
            let files = sv.version.levels[level].clone();
            if !files.is_empty() {
                children.push(Box::new(LevelIter::new(files, true)));
            }
        }
        let merged = MergingIterator::new(children);
        Ok(DbIterator::new(merged, seq, start, end, Box::new(sv)))
    }

    /// The oldest sequence number any reader may still read at.
    pub fn snapshot_floor(&self) -> SeqNo {
        let snaps = self.snapshots.lock();
        let visible = self.visible_seq.load(Ordering::Acquire);
        snaps.keys().next().copied().unwrap_or(visible).min(visible)
    }

    pub fn check_bg_error(st: &State) -> Result<()> {
        match &st.bg_error {
            Some(e) => Err(Error::Poisoned(e.clone())),
            None => Ok(()),
        }
    }

    /// Records a background failure: the database stops accepting writes.
    pub fn set_bg_error(&self, st: &mut State, err: &Error) {
        if st.bg_error.is_none() {
            st.bg_error = Some(err.to_string());
        }
        self.bg_cv.notify_all();
    }

    /// Logs `edit` to the manifest and installs it. `opened` holds the
    /// tables the edit adds. Call with the manifest lock held.
    pub fn log_and_apply(
        &self,
        manifest: &mut Manifest,
        mut edit: VersionEdit,
        opened: &BTreeMap<u64, Arc<super::sst::Table>>,
        finish: impl FnOnce(&mut State),
    ) -> Result<()> {
        let (base, next_file) = {
            let st = self.state.lock();
            (st.version.clone(), st.next_file_number)
        };
        edit.next_file_number = Some(next_file);
        if let Err(e) = manifest.log(&edit) {
            let mut st = self.state.lock();
            self.set_bg_error(&mut st, &e);
            return Err(e);
        }
        let next = Arc::new(base.apply(&edit, opened));
        let mut st = self.state.lock();
        // Only this lock holder replaces versions, so `base` is current.
        assert!(
            Arc::ptr_eq(&st.version, &base),
            "version changed under the manifest lock"
        );
        for (level, number) in &edit.deleted {
            if edit.added.iter().any(|a| a.number == *number) {
                continue; // a trivial move keeps the file
            }
            if let Some(f) = base.levels[*level].iter().find(|f| f.number == *number) {
                f.table.mark_obsolete();
            }
        }
        st.version = next;
        finish(&mut st);
        self.install_super_version(&st);
        self.bg_cv.notify_all();
        Ok(())
    }

    /// A manifest edit describing the whole current state.
    pub fn snapshot_edit(version: &Version, st: &State, log_number: u64) -> VersionEdit {
        VersionEdit {
            log_number: Some(log_number),
            next_file_number: Some(st.next_file_number),
            last_seq: Some(st.last_seq),
            user_metadata: st.durable_metadata.clone(),
            deleted: Vec::new(),
            added: version
                .files()
                .map(|(level, f)| NewFile {
                    level,
                    number: f.number,
                    summary: f.summary.clone(),
                })
                .collect(),
        }
    }

    fn checkpoint(&self, dir: &Path) -> Result<CheckpointInfo> {
        let fs = self.opts.fs.as_ref();
        if fs.exists(dir) {
            return Err(Error::InvalidArgument(format!(
                "checkpoint directory {} already exists",
                dir.display()
            )));
        }
        super::fs::create_dir_durable(fs, dir).map_err(|e| Error::io(dir, e))?;
        // Hold the manifest lock so the version and the metadata agree.
        let _manifest = self.manifest.lock();
        let (version, mut edit) = {
            let st = self.state.lock();
            let version = st.version.clone();
            let mut edit = Self::snapshot_edit(&version, &st, 0);
            // Everything up to the newest flushed write is in the tables.
            let flushed = version.files().map(|(_, f)| f.summary.largest_seq).max();
            edit.last_seq = Some(flushed.unwrap_or(0));
            (version, edit)
        };
        let mut bytes = 0;
        for (_, f) in version.files() {
            let name = table_file_name(f.number);
            let (src, dst) = (self.dir.join(&name), dir.join(&name));
            fs.link(&src, &dst).map_err(|e| Error::io(&dst, e))?;
            bytes += f.summary.size;
        }
        let manifest_number = edit.next_file_number.unwrap_or(1);
        edit.next_file_number = Some(manifest_number + 1);
        fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
        Manifest::create(fs, dir, manifest_number, &edit)?;
        Ok(CheckpointInfo {
            last_seq: edit.last_seq.unwrap_or(0),
            user_metadata: edit.user_metadata,
            files: edit.added.len(),
            bytes,
        })
    }

    fn stats(&self) -> Stats {
        let sv = self.super_version();
        let mut s = Stats::default();
        for (level, files) in sv.version.levels.iter().enumerate() {
            s.level_files[level] = files.len();
            s.level_bytes[level] = files.iter().map(|f| f.summary.size).sum();
            s.table_resident_bytes += files
                .iter()
                .map(|f| f.table.resident_bytes() as u64)
                .sum::<u64>();
            s.live_files += files.len();
        }
        s.memtable_bytes = sv.mem.approximate_bytes() as u64;
        s.immutable_memtables = sv.imm.len();
        s.immutable_memtable_bytes = sv.imm.iter().map(|m| m.approximate_bytes() as u64).sum();
        let c = &self.counters;
        s.flushes = c.flushes.load(Ordering::Relaxed);
        s.compactions = c.compactions.load(Ordering::Relaxed);
        s.compaction_bytes_read = c.compaction_bytes_read.load(Ordering::Relaxed);
        s.compaction_bytes_written = c.compaction_bytes_written.load(Ordering::Relaxed);
        s.write_slowdowns = c.write_slowdowns.load(Ordering::Relaxed);
        s.write_stalls = c.write_stalls.load(Ordering::Relaxed);
        s.wal_syncs = c.wal_syncs.load(Ordering::Relaxed);
        s.wal_writes = c.wal_writes.load(Ordering::Relaxed);
        s.cache_hits = self.cache.hits();
        s.cache_misses = self.cache.misses();
        s.cache_bytes = self.cache.bytes() as u64;
        s.last_seq = self.visible_seq.load(Ordering::Acquire);
        s
    }

    fn close(self: &Arc<Self>) {
        if !self.opts.wal {
            // Without a WAL the memtables are the only copy: flush them.
            let has_data = {
                let st = self.state.lock();
                st.bg_error.is_none() && (!st.mem.is_empty() || !st.imm.is_empty())
            };
            if has_data {
                let _ = self
                    .write(WriteBatch::new(), true)
                    .and_then(|_| self.wait_for_flushes());
            }
        } else {
            let _ = self.sync_wal();
        }
        let mut st = self.state.lock();
        st.shutting_down = true;
        while st.flush_scheduled || st.compaction_scheduled || st.wal_sync_scheduled {
            self.bg_cv.wait(&mut st);
        }
        drop(st);
        // Background threads may still hold the engine for an instant
        // after their last step; the directory is free for a new open now.
        self.dir_lock.lock().take();
    }

    pub fn manifest_path(&self, number: u64) -> PathBuf {
        self.dir.join(manifest::file_name(number))
    }
}
