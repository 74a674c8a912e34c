//! Background work: flushing frozen memtables to L0, compacting levels,
//! and syncing the WAL in batched mode. Every job goes through the
//! [`super::Executor`] seam and never runs while the state lock is held by
//! its scheduler (an inline executor runs it on the spot).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::MutexGuard;

use super::cache::BlockCache;
use super::compaction::{self, Compaction};
use super::db::{table_file_name, Inner, State};
use super::executor::{COMPACT_JOB, FLUSH_JOB};
use super::fs::FileSystem;
use super::iterator::InternalIterator;
use super::manifest::Manifest;
use super::memtable::MemTable;
use super::sst::{Table, TableBuilder, TableOptions};
use super::version::{NewFile, Version, VersionEdit, NUM_LEVELS};
use super::{Error, Result, SyncMode};

/// A manifest past this size is rewritten as one snapshot edit.
const MANIFEST_ROLL_BYTES: u64 = 4 << 20;

enum Job {
    Flush,
    Compact,
}

/// Writes a memtable as L0 table `number`, makes its directory entry
/// durable and opens it. Used by flushes and by recovery of the WAL.
pub(crate) fn write_level0(
    mem: &Arc<MemTable>,
    fs: &Arc<dyn FileSystem>,
    dir: &Path,
    number: u64,
    table_opts: TableOptions,
    cache: &Arc<BlockCache>,
) -> Result<(NewFile, Arc<Table>)> {
    let path = dir.join(table_file_name(number));
    let mut builder = TableBuilder::create(fs.as_ref(), &path, table_opts)?;
    let mut it = mem.iter();
    it.seek_to_first()?;
    while it.valid() {
        builder.add(it.key(), it.value())?;
        it.next()?;
    }
    let summary = builder.finish()?;
    fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    let table = Table::open(fs.clone(), &path, number, cache.clone())?;
    let file = NewFile {
        level: 0,
        number,
        summary,
    };
    Ok((file, Arc::new(table)))
}

impl Inner {
    /// Starts the flush and compaction jobs that are due and not running.
    /// Returns whether it started any. The lock is released while jobs are
    /// handed to the executor.
    pub fn schedule(self: &Arc<Self>, st: &mut MutexGuard<'_, State>) -> bool {
        if st.shutting_down || st.bg_error.is_some() {
            return false;
        }
        let mut jobs = Vec::new();
        if !st.flush_scheduled && !st.imm.is_empty() {
            st.flush_scheduled = true;
            jobs.push(Job::Flush);
        }
        if !st.compaction_scheduled && compaction::score(&st.version, &self.opts).1 >= 1.0 {
            st.compaction_scheduled = true;
            jobs.push(Job::Compact);
        }
        if jobs.is_empty() {
            return false;
        }
        MutexGuard::unlocked(st, || {
            for job in jobs {
                let me = self.clone();
                match job {
                    Job::Flush => self
                        .opts
                        .executor
                        .spawn(FLUSH_JOB, Box::new(move || me.flush_job())),
                    Job::Compact => self
                        .opts
                        .executor
                        .spawn(COMPACT_JOB, Box::new(move || me.compaction_job())),
                }
            }
        });
        true
    }

    fn flush_job(self: Arc<Self>) {
        loop {
            let next = {
                let mut st = self.state.lock();
                match st.imm.front().cloned() {
                    Some(imm) if st.bg_error.is_none() && !st.shutting_down => {
                        let number = st.next_file_number;
                        st.next_file_number += 1;
                        Some((imm, number))
                    }
                    _ => None,
                }
            };
            let Some((imm, number)) = next else { break };
            if let Err(e) = self.flush_memtable(&imm, number) {
                let mut st = self.state.lock();
                self.set_bg_error(&mut st, &e);
                break;
            }
            let mut st = self.state.lock();
            self.schedule(&mut st);
        }
        let mut st = self.state.lock();
        st.flush_scheduled = false;
        self.bg_cv.notify_all();
        // A memtable frozen while this job was finishing needs a new job.
        self.schedule(&mut st);
    }

    /// Writes `imm` as table `number` in L0 and installs it.
    fn flush_memtable(self: &Arc<Self>, imm: &Arc<MemTable>, number: u64) -> Result<()> {
        let fs = self.opts.fs.as_ref();
        let mut opened = BTreeMap::new();
        let mut added = Vec::new();
        if !imm.is_empty() {
            let (file, table) = write_level0(
                imm,
                &self.opts.fs,
                &self.dir,
                number,
                self.table_opts,
                &self.cache,
            )?;
            opened.insert(number, table);
            added.push(file);
        }
        let metadata = imm.metadata();
        let mut manifest = self.manifest.lock();
        let (log_number, last_seq) = {
            let st = self.state.lock();
            // WALs older than the next memtable's are no longer needed.
            let next_wal = st.imm.get(1).map_or(st.mem.wal_number, |m| m.wal_number);
            (next_wal, st.last_seq)
        };
        let edit = VersionEdit {
            log_number: Some(log_number),
            last_seq: Some(last_seq),
            user_metadata: metadata.clone(),
            added,
            ..VersionEdit::default()
        };
        self.log_and_apply(&mut manifest, edit, &opened, |st| {
            let popped = st.imm.pop_front();
            assert!(
                popped.is_some_and(|p| Arc::ptr_eq(&p, imm)),
                "flushed memtable is not the oldest"
            );
            if metadata.is_some() {
                st.durable_metadata = metadata;
            }
        })?;
        self.counters.flushes.fetch_add(1, Ordering::Relaxed);
        if imm.wal_number != 0 {
            // Best effort: a WAL that survives is dropped on the next open.
            let _ = fs.remove(&self.dir.join(super::wal::file_name(imm.wal_number)));
        }
        self.maybe_roll_manifest(&mut manifest, log_number)
    }

    fn maybe_roll_manifest(&self, manifest: &mut Manifest, log_number: u64) -> Result<()> {
        if manifest.size() < MANIFEST_ROLL_BYTES {
            return Ok(());
        }
        let fs = self.opts.fs.as_ref();
        let (edit, number) = {
            let mut st = self.state.lock();
            let number = st.next_file_number;
            st.next_file_number += 1;
            (
                Inner::snapshot_edit(&st.version.clone(), &st, log_number),
                number,
            )
        };
        let old = manifest.number;
        *manifest = Manifest::create(fs, &self.dir, number, &edit)?;
        let _ = fs.remove(&self.manifest_path(old));
        Ok(())
    }

    fn compaction_job(self: Arc<Self>) {
        loop {
            let picked = {
                let st = self.state.lock();
                if st.shutting_down || st.bg_error.is_some() {
                    None
                } else {
                    compaction::pick(&st.version, &self.opts, &st.compact_pointer)
                        .map(|c| (c, st.version.clone()))
                }
            };
            let Some((c, version)) = picked else { break };
            match self.run_compaction(&c, &version) {
                Ok(()) => {}
                Err(Error::ShuttingDown) => break,
                Err(e) => {
                    let mut st = self.state.lock();
                    self.set_bg_error(&mut st, &e);
                    break;
                }
            }
        }
        let mut st = self.state.lock();
        st.compaction_scheduled = false;
        self.bg_cv.notify_all();
        self.schedule(&mut st);
    }

    fn run_compaction(self: &Arc<Self>, c: &Compaction, version: &Arc<Version>) -> Result<()> {
        let fs = self.opts.fs.as_ref();
        let mut opened = BTreeMap::new();
        let edit = if c.is_trivial_move() {
            let f = &c.inputs[0];
            opened.insert(f.number, f.table.clone());
            compaction::edit_for(
                c,
                vec![NewFile {
                    level: c.output_level(),
                    number: f.number,
                    summary: f.summary.clone(),
                }],
            )
        } else {
            let floor = self.snapshot_floor();
            let out = compaction::merge(
                c,
                version,
                floor,
                fs,
                &self.dir,
                self.table_opts,
                self.opts.target_file_bytes,
                || {
                    let mut st = self.state.lock();
                    st.next_file_number += 1;
                    st.next_file_number - 1
                },
                || !self.state.lock().shutting_down,
            )?;
            fs.sync_dir(&self.dir)
                .map_err(|e| Error::io(&self.dir, e))?;
            for nf in &out.added {
                let path = self.dir.join(table_file_name(nf.number));
                let table =
                    Table::open(self.opts.fs.clone(), &path, nf.number, self.cache.clone())?;
                opened.insert(nf.number, Arc::new(table));
            }
            let counters = &self.counters;
            counters
                .compaction_bytes_read
                .fetch_add(c.input_bytes(), Ordering::Relaxed);
            counters
                .compaction_bytes_written
                .fetch_add(out.bytes_written, Ordering::Relaxed);
            compaction::edit_for(c, out.added)
        };
        let pointer = c.largest_user_key();
        let level = c.level;
        let mut manifest = self.manifest.lock();
        self.log_and_apply(&mut manifest, edit, &opened, |st| {
            st.compact_pointer[level] = pointer;
        })?;
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Waits until every frozen memtable is flushed.
    pub fn wait_for_flushes(self: &Arc<Self>) -> Result<()> {
        let mut st = self.state.lock();
        loop {
            Inner::check_bg_error(&st)?;
            if st.imm.is_empty() {
                return Ok(());
            }
            let spawned = self.schedule(&mut st);
            if st.imm.is_empty() {
                continue;
            }
            let inline = self.opts.executor.is_inline();
            if (inline && !spawned) || (!inline && !st.flush_scheduled) {
                Inner::check_bg_error(&st)?;
                return Err(Error::ShuttingDown);
            }
            if !inline {
                self.bg_cv.wait(&mut st);
            }
        }
    }

    /// Runs compactions until no level is due.
    pub fn compact_until_idle(self: &Arc<Self>) -> Result<()> {
        let mut st = self.state.lock();
        loop {
            Inner::check_bg_error(&st)?;
            let due = compaction::score(&st.version, &self.opts).1 >= 1.0;
            if !due && !st.compaction_scheduled && !st.flush_scheduled {
                return Ok(());
            }
            let spawned = self.schedule(&mut st);
            let inline = self.opts.executor.is_inline();
            let running = st.compaction_scheduled || st.flush_scheduled;
            if (inline && !spawned) || (!inline && !running) {
                return Inner::check_bg_error(&st);
            }
            if !inline {
                self.bg_cv.wait(&mut st);
            }
        }
    }

    /// Flushes, then merges every level into the one below it, down to
    /// the deepest non-empty level: afterwards the data sits in one level
    /// with no overwritten version or tombstone that no snapshot needs.
    pub fn compact_all(self: &Arc<Self>) -> Result<()> {
        self.write(super::WriteBatch::new(), true)?;
        self.wait_for_flushes()?;
        // Take the compaction slot so no background compaction runs beside.
        {
            let mut st = self.state.lock();
            loop {
                Inner::check_bg_error(&st)?;
                if st.shutting_down {
                    return Err(Error::ShuttingDown);
                }
                if !st.compaction_scheduled {
                    st.compaction_scheduled = true;
                    break;
                }
                self.bg_cv.wait(&mut st);
            }
        }
        let result = (|| {
            let mut level = 0;
            loop {
                let version = self.state.lock().version.clone();
                let Some(bottom) = (0..NUM_LEVELS)
                    .rev()
                    .find(|&l| !version.levels[l].is_empty())
                else {
                    return Ok(());
                };
                if level >= bottom.max(1) {
                    return Ok(());
                }
                let inputs = version.levels[level].clone();
                if !inputs.is_empty() {
                    let c = compaction::whole_level(&version, level);
                    self.run_compaction(&c, &version)?;
                }
                level += 1;
            }
        })();
        let mut st = self.state.lock();
        st.compaction_scheduled = false;
        self.bg_cv.notify_all();
        self.schedule(&mut st);
        result
    }

    /// Syncs the WAL now.
    pub fn sync_wal(&self) -> Result<()> {
        let mut wal = self.wal.lock();
        if let Some(w) = wal.as_mut() {
            if w.unsynced_bytes > 0 {
                w.sync()?;
                self.counters.wal_syncs.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// In batched mode, claims the WAL sync job when enough is unsynced.
    pub fn wal_sync_due(&self, st: &mut State) -> bool {
        let SyncMode::Batched { bytes } = self.opts.sync else {
            return false;
        };
        if st.wal_sync_scheduled || st.shutting_down || !self.opts.wal {
            return false;
        }
        let unsynced = self.wal.lock().as_ref().map_or(0, |w| w.unsynced_bytes);
        st.wal_sync_scheduled = unsynced >= bytes;
        st.wal_sync_scheduled
    }

    /// Hands a claimed WAL sync to the executor.
    pub fn spawn_wal_sync(self: &Arc<Self>, st: &mut MutexGuard<'_, State>) {
        let me = self.clone();
        MutexGuard::unlocked(st, || {
            self.opts.executor.spawn(
                "wal-sync",
                Box::new(move || {
                    let result = me.sync_wal();
                    let mut st = me.state.lock();
                    if let Err(e) = result {
                        me.set_bg_error(&mut st, &e);
                    }
                    st.wal_sync_scheduled = false;
                    me.bg_cv.notify_all();
                }),
            );
        });
    }
}
