//! The write path: group commit. Writers queue up; the one at the head
//! becomes the leader, makes room (rotating or stalling), appends the
//! whole group to the WAL with one write and at most one fsync, inserts it
//! into the memtable, publishes the new sequence number and wakes the
//! group.
//!
//! ```text
//! writer A ─┐            ┌─ WAL append (A,B,C) ─ fsync ─ memtable ─┐
//! writer B ─┼─ queue ─ A ┤                                          ├─ wake B, C
//! writer C ─┘  (leader)  └──────────────────────────────────────────┘
//! ```

use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::db::{Inner, State};
use super::frame;
use super::key::{SeqNo, MAX_SEQNO};
use super::memtable::MemTable;
use super::wal::WalWriter;
use super::{Error, Result, SyncMode, WriteBatch};

/// Largest group a leader commits at once: bounds the memtable overshoot
/// and a follower's wait.
const MAX_GROUP_BYTES: usize = 1 << 20;

/// A queued write.
pub(crate) struct WriterSlot {
    batch: Mutex<Option<WriteBatch>>,
    /// A flush request: rotate the memtable even if it is not full.
    force_rotate: bool,
    size: usize,
    result: Mutex<Option<Result<SeqNo>>>,
    cv: Condvar,
}

impl Inner {
    pub fn validate(&self, batch: &WriteBatch) -> Result<()> {
        for op in batch.iter() {
            if op.key.len() > self.opts.max_key_bytes {
                return Err(Error::InvalidArgument(format!(
                    "key of {} bytes exceeds the limit of {} bytes",
                    op.key.len(),
                    self.opts.max_key_bytes
                )));
            }
            if op.value.len() > self.opts.max_value_bytes {
                return Err(Error::InvalidArgument(format!(
                    "value of {} bytes exceeds the limit of {} bytes",
                    op.value.len(),
                    self.opts.max_value_bytes
                )));
            }
        }
        Ok(())
    }

    /// Commits `batch` (or, with `force_rotate`, freezes the memtable).
    pub fn write(self: &Arc<Self>, batch: WriteBatch, force_rotate: bool) -> Result<SeqNo> {
        self.validate(&batch)?;
        let slot = Arc::new(WriterSlot {
            size: batch.approximate_size(),
            batch: Mutex::new(Some(batch)),
            force_rotate,
            result: Mutex::new(None),
            cv: Condvar::new(),
        });
        let mut st = self.state.lock();
        st.writers.push_back(slot.clone());
        loop {
            if let Some(r) = slot.result.lock().take() {
                return r;
            }
            if st.writers.front().is_some_and(|w| Arc::ptr_eq(w, &slot)) {
                break;
            }
            slot.cv.wait(&mut st);
        }
        // This writer leads.
        let outcome = self.lead(&mut st, &slot);
        if let Err(e) = &outcome {
            // Only the leader's own write fails here; the others retry as
            // leaders themselves.
            if st.writers.front().is_some_and(|w| Arc::ptr_eq(w, &slot)) {
                st.writers.pop_front();
            }
            if let Some(next) = st.writers.front() {
                next.cv.notify_one();
            }
            return Err(clone_error(e));
        }
        let r = slot.result.lock().take();
        r.unwrap_or(Err(Error::Poisoned("write lost its result".into())))
    }

    fn lead(
        self: &Arc<Self>,
        st: &mut MutexGuard<'_, State>,
        slot: &Arc<WriterSlot>,
    ) -> Result<()> {
        self.make_room_for_write(st, slot.force_rotate)?;
        // The group is a prefix of the queue: this writer and those behind
        // it, up to a size limit.
        let limit = if slot.size <= 128 << 10 {
            slot.size + (128 << 10)
        } else {
            MAX_GROUP_BYTES
        };
        let mut batches = std::mem::take(&mut st.group_scratch);
        batches.clear();
        let mut bytes = 0usize;
        let mut seq = st.last_seq;
        for w in &st.writers {
            if !batches.is_empty() && (w.force_rotate || bytes + w.size > limit) {
                break;
            }
            bytes += w.size;
            let b = w.batch.lock().take().unwrap_or_default();
            let first = seq + 1;
            seq += b.len() as u64;
            batches.push((first, b));
        }
        if seq > MAX_SEQNO {
            st.group_scratch = batches;
            return Err(Error::InvalidArgument("sequence numbers exhausted".into()));
        }
        st.last_seq = seq;
        let mem = st.mem.clone();
        let sync = self.opts.sync == SyncMode::Always;

        let result = MutexGuard::unlocked(st, || self.commit(&mem, &mut batches, sync));

        if let Err(e) = &result {
            // The WAL may hold part of the group: nothing after it may be
            // acknowledged, so stop accepting writes.
            self.set_bg_error(st, e);
        } else {
            self.visible_seq.store(seq, Ordering::Release);
        }
        for (first, b) in &batches {
            let Some(w) = st.writers.pop_front() else {
                unreachable!("group-commit queue lost a writer");
            };
            let r = match &result {
                Ok(()) => Ok(first + (b.len() as u64).saturating_sub(1)),
                Err(e) => Err(clone_error(e)),
            };
            *w.result.lock() = Some(r);
            w.cv.notify_one();
        }
        batches.clear();
        st.group_scratch = batches;
        if let Some(next) = st.writers.front() {
            next.cv.notify_one();
        }
        let pending = self.wal_sync_due(st);
        if pending {
            self.spawn_wal_sync(st);
        }
        Ok(())
    }

    /// Appends the group to the WAL and inserts it into the memtable.
    /// Runs without the state lock: only the leader is here.
    fn commit(
        &self,
        mem: &MemTable,
        batches: &mut [(SeqNo, WriteBatch)],
        sync: bool,
    ) -> Result<()> {
        if self.opts.wal
            && batches
                .iter()
                .any(|(_, b)| !b.is_empty() || b.user_metadata().is_some())
        {
            let mut wal = self.wal.lock();
            let Some(wal) = wal.as_mut() else {
                return Err(Error::Poisoned("the WAL is closed".into()));
            };
            // The leader owns the WAL's scratch buffer while it holds the lock.
            let mut framed = std::mem::take(&mut wal.scratch);
            framed.clear();
            for (seq, b) in batches.iter() {
                if !b.is_empty() || b.user_metadata().is_some() {
                    frame::encode_with(&mut framed, |out| b.encode(*seq, out));
                }
            }
            let appended = wal.append(&framed);
            if framed.capacity() <= MAX_GROUP_BYTES * 2 {
                wal.scratch = framed;
            }
            appended?;
            self.counters.wal_writes.fetch_add(1, Ordering::Relaxed);
            if sync {
                wal.sync()?;
                self.counters.wal_syncs.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (seq, b) in batches.iter_mut() {
            for (s, op) in (*seq..).zip(b.iter()) {
                mem.insert(op.key, s, op.kind, op.value);
            }
            if let Some(m) = b.take_metadata() {
                mem.set_metadata(m);
            }
        }
        Ok(())
    }

    /// Makes sure the memtable has room, rotating it, slowing the writer
    /// down, or stalling it until background work catches up.
    fn make_room_for_write(
        self: &Arc<Self>,
        st: &mut MutexGuard<'_, State>,
        force: bool,
    ) -> Result<()> {
        let mut allow_delay = !force;
        loop {
            Inner::check_bg_error(st)?;
            let l0 = st.version.levels[0].len();
            if allow_delay && l0 >= self.opts.l0_slowdown_trigger {
                // Delay this write once, to hand CPU to compaction.
                allow_delay = false;
                self.counters
                    .write_slowdowns
                    .fetch_add(1, Ordering::Relaxed);
                let exec = self.opts.executor.clone();
                MutexGuard::unlocked(st, || exec.slowdown());
                continue;
            }
            if !force && st.mem.approximate_bytes() < self.opts.memtable_bytes {
                return Ok(());
            }
            if force && st.mem.is_empty() && st.mem.metadata().is_none() {
                return Ok(());
            }
            if st.imm.len() >= self.opts.max_immutable_memtables || l0 >= self.opts.l0_stop_trigger
            {
                self.counters.write_stalls.fetch_add(1, Ordering::Relaxed);
                let spawned = self.schedule(st);
                if !self.opts.executor.is_inline() {
                    self.bg_cv.wait(st);
                } else if !spawned {
                    // Inline work already ran; nothing more can free room
                    // now, so let the write through rather than wait forever.
                    return self.rotate(st);
                }
                continue;
            }
            self.rotate(st)?;
            self.schedule(st);
            return Ok(());
        }
    }

    /// Freezes the memtable and starts a new one (and a new WAL).
    fn rotate(&self, st: &mut MutexGuard<'_, State>) -> Result<()> {
        let mut wal_number = 0;
        if self.opts.wal {
            let number = st.next_file_number;
            st.next_file_number += 1;
            let fs = self.opts.fs.clone();
            let dir = self.dir.clone();
            let mut wal = self.wal.lock();
            // The old WAL must be durable before anything lands in the new
            // one, or a crash could keep later writes and lose earlier ones.
            if let Some(old) = wal.as_mut() {
                old.sync()?;
            }
            *wal = Some(WalWriter::create(fs.as_ref(), &dir, number)?);
            wal_number = number;
        }
        let old = std::mem::replace(&mut st.mem, Arc::new(MemTable::new(wal_number)));
        st.imm.push_back(old);
        self.install_super_version(st);
        Ok(())
    }
}

/// Errors are not `Clone` (they hold `io::Error`); a group shares one by
/// description.
pub(crate) fn clone_error(e: &Error) -> Error {
    match e {
        Error::Io { path, source } => Error::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Corruption {
            file,
            offset,
            reason,
        } => Error::Corruption {
            file: file.clone(),
            offset: *offset,
            reason: reason.clone(),
        },
        Error::InvalidArgument(m) => Error::InvalidArgument(m.clone()),
        Error::Poisoned(m) => Error::Poisoned(m.clone()),
        Error::ShuttingDown => Error::ShuttingDown,
        Error::Open(m) => Error::Open(m.clone()),
    }
}
