//! cairn's Raft log: a segmented, append-only log with a CRC on every
//! record and one fsync per appended batch.
//!
//! ```text
//! <dir>/00000000000000000001.log   segment: framed records, each postcard(Entry),
//! <dir>/00000000000000052311.log   named by the index of its first entry
//! <dir>/vote                       one framed postcard(Vote), replaced atomically, synced
//! <dir>/purged                     one framed postcard(LogId), replaced atomically, synced
//! <dir>/committed                  one framed postcard(LogId), a hint: written without fsync
//! ```
//!
//! Records use the engine's framing (`lsm::frame`), so a torn tail left by
//! a crash is cut at the last good record on open, while damage followed
//! by more data is reported as corruption. Purge deletes whole segments;
//! truncation cuts the segment holding the first removed entry and
//! deletes the segments after it.
//!
//! All file writes run in order on one writer: a dedicated thread in
//! production (fsync never blocks a tokio worker), inline on the caller in
//! the simulation (the same [`Executor`] seam as the engine's background
//! work). Appends queued while the writer syncs share its next fsync (group
//! commit). After an I/O error the writer refuses everything: a log whose
//! fsync failed must never acknowledge again.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::time::Instant;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use parking_lot::Mutex;

use super::{Entry, LogId, TypeConfig, Vote};
use cairn_io::executor::Executor;
use cairn_io::frame;
use cairn_io::fs::{FileSystem, RandomAccessFile, WritableFile};
use cairn_io::{codec, small_file};

/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Entries kept in memory after they are written (replication reads them).
const CACHE_ENTRIES: usize = 16_384;
/// Bytes of entries kept in memory after they are written.
const CACHE_BYTES: u64 = 64 << 20;
/// The committed hint is rewritten after this many newly committed entries.
const COMMITTED_HINT_EVERY: u64 = 1024;

/// Counters of the log, for metrics.
#[derive(Debug, Default)]
pub struct LogMetrics {
    /// fsyncs of segment files.
    pub fsyncs: AtomicU64,
    /// Total microseconds spent in those fsyncs.
    pub fsync_micros: AtomicU64,
    /// Appended batches.
    pub appends: AtomicU64,
}

/// Where an entry lives.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pos {
    log_id: LogId,
    segment: u64,
    offset: u64,
    len: u64,
}

struct Mem {
    vote: Option<Vote>,
    committed: Option<LogId>,
    committed_hint_written: u64,
    purged: Option<LogId>,
    /// Index of `entries[0]`.
    first_index: u64,
    entries: VecDeque<Pos>,
    /// Segment first index -> bytes queued for it.
    segments: BTreeMap<u64, u64>,
    /// Recent entries, and every entry not yet written.
    cache: BTreeMap<u64, Entry>,
    cache_bytes: u64,
    readers: BTreeMap<u64, Arc<dyn RandomAccessFile>>,
    segment_bytes: u64,
}

impl Mem {
    fn last_log_id(&self) -> Option<LogId> {
        self.entries.back().map(|p| p.log_id).or(self.purged)
    }
    fn next_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64
    }
    fn pos(&self, index: u64) -> Option<&Pos> {
        let i = index.checked_sub(self.first_index)?;
        self.entries.get(usize::try_from(i).ok()?)
    }
}

/// Entries with an index below `below` are in the OS's hands and may be
/// read back from their segment. A truncation starts a new epoch, so a
/// write queued before it cannot raise the mark over entries appended
/// after it.
#[derive(Debug, Default)]
struct WrittenMark {
    epoch: u64,
    below: u64,
}

struct Shared {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    mem: Mutex<Mem>,
    mark: Arc<Mutex<WrittenMark>>,
    writer: WriterHandle,
    /// Work no caller waits for, off the writer's thread so that appends
    /// never queue behind it: purges (the marker, then the segments'
    /// removal; unlinking a 64 MiB segment took up to 67 ms here) and
    /// the committed hint. Jobs run in order.
    cleaner: WriterHandle,
    /// Runs reads of entries no longer cached: on a thread of their own
    /// in production, so no tokio worker waits for the disk.
    executor: Arc<dyn Executor>,
    metrics: Arc<LogMetrics>,
}

impl Drop for Shared {
    /// A clean stop leaves the background work done: a purge is durable
    /// after it (a crash may lose it, which only keeps more log).
    fn drop(&mut self) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.cleaner.send(Job::Barrier(tx));
        if rx.recv_timeout(std::time::Duration::from_secs(10)).is_err() {
            tracing::warn!("the Raft log's background work did not finish within 10 s of the stop");
        }
    }
}

/// The Raft log store (and, cloned, its reader).
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

fn segment_name(first_index: u64) -> String {
    format!("{first_index:020}.log")
}

/// An error for a log that cannot be trusted: the node refuses to start.
fn damaged(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{what}. This node's Raft log cannot be trusted and it will not start: \
             replace it (move its data directory away and start it empty; it \
             rejoins and is caught up by the leader before it votes, see \
             docs/durability.md)"
        ),
    )
}

/// Reads the segment at `path` (whose first entry is `first`) into `mem`,
/// skipping entries below `floor`, and returns where its last record
/// ends. Only the last segment may end in a torn write, which is cut;
/// every other damage is an error naming the file and offset.
fn load_segment(
    fs: &dyn FileSystem,
    path: &Path,
    first: u64,
    is_last: bool,
    floor: u64,
    mem: &mut Mem,
) -> io::Result<u64> {
    let mut data = fs.read_all(path)?;
    let decoded = frame::decode_all(&mut data, frame::Syncs::Marked);
    for (i, rec) in decoded.records.iter().enumerate() {
        let entry: Entry = super::decode_entry(rec.payload).map_err(|e| {
            damaged(format!(
                "Raft log segment {} holds an undecodable entry at offset {}: {e}",
                path.display(),
                rec.offset
            ))
        })?;
        let index = entry.log_id.index;
        if i == 0 && index != first {
            return Err(damaged(format!(
                "Raft log segment {} starts with entry {index}, not {first}",
                path.display()
            )));
        }
        if index < floor {
            continue;
        }
        if mem.entries.is_empty() {
            mem.first_index = index;
        } else if index != mem.next_index() {
            return Err(damaged(format!(
                "log gap in {}: entry {index} after {}",
                path.display(),
                mem.next_index() - 1
            )));
        }
        mem.entries.push_back(Pos {
            log_id: entry.log_id,
            segment: first,
            offset: rec.offset,
            len: rec.framed_len(),
        });
    }
    #[cfg(feature = "planted-bugs")]
    let decoded = {
        let mut d = decoded;
        if let (true, frame::Tail::Corrupt { offset, .. }) = (
            is_last && crate::planted::on(crate::planted::Bug::CutCorruptTail),
            d.tail.clone(),
        ) {
            d.tail = frame::Tail::Torn { offset };
            d.end = offset;
        }
        d
    };
    match decoded.tail {
        frame::Tail::Clean => {}
        frame::Tail::Zeros { offset } | frame::Tail::Torn { offset } if is_last => {
            if matches!(decoded.tail, frame::Tail::Torn { .. }) {
                tracing::warn!(segment = %path.display(), offset,
                    "cutting a torn write at the end of the Raft log (never acknowledged)");
            }
            fs.truncate(path, offset)?;
        }
        frame::Tail::Zeros { offset } | frame::Tail::Torn { offset } => {
            return Err(damaged(format!(
                "Raft log segment {} ends in unwritten bytes at offset {offset} although a later segment exists",
                path.display()
            )))
        }
        frame::Tail::Corrupt { offset, reason } => {
            return Err(damaged(format!(
                "Raft log segment {} is corrupt at offset {offset}: {reason}",
                path.display()
            )))
        }
    }
    Ok(decoded.end)
}

impl LogStore {
    /// Opens the log in `dir` (created if missing), cutting a torn tail
    /// and refusing a log damaged in the middle.
    pub fn open(
        fs: Arc<dyn FileSystem>,
        executor: Arc<dyn Executor>,
        dir: impl AsRef<Path>,
    ) -> io::Result<Self> {
        Self::open_with(fs, executor, dir, SEGMENT_BYTES)
    }

    /// [`LogStore::open`] with a chosen segment size (tests use small
    /// segments to exercise rotation and purge).
    pub fn open_with(
        fs: Arc<dyn FileSystem>,
        executor: Arc<dyn Executor>,
        dir: impl AsRef<Path>,
        segment_bytes: u64,
    ) -> io::Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        cairn_io::fs::create_dir_durable(&*fs, &dir)?;
        let vote: Option<Vote> = small_file::read(&*fs, &dir.join("vote"))?;
        let purged: Option<LogId> = small_file::read(&*fs, &dir.join("purged"))?;
        // A hint: a damaged one reads as none.
        let committed: Option<LogId> =
            small_file::read(&*fs, &dir.join("committed")).unwrap_or(None);
        let mut names: Vec<(u64, String)> = fs
            .list(&dir)?
            .into_iter()
            .filter_map(|n| {
                let first = n.strip_suffix(".log")?.parse::<u64>().ok()?;
                Some((first, n))
            })
            .collect();
        names.sort();
        let floor = purged.as_ref().map_or(0, |p| p.index + 1);
        let mut mem = Mem {
            vote,
            committed: None,
            committed_hint_written: 0,
            purged,
            first_index: floor,
            entries: VecDeque::new(),
            segments: BTreeMap::new(),
            cache: BTreeMap::new(),
            cache_bytes: 0,
            readers: BTreeMap::new(),
            segment_bytes,
        };
        let last_segment = names.last().map(|(f, _)| *f);
        for (first, name) in &names {
            let path = dir.join(name);
            let is_last = Some(*first) == last_segment;
            let end = load_segment(&*fs, &path, *first, is_last, floor, &mut mem)?;
            mem.segments.insert(*first, end);
        }
        if let (Some(p), Some(e)) = (mem.purged, mem.entries.front()) {
            if e.log_id.index != p.index + 1 {
                return Err(damaged(format!(
                    "the Raft log in {} starts at entry {} but entry {} is the first after the purged {}",
                    dir.display(),
                    e.log_id.index,
                    p.index + 1,
                    p.index
                )));
            }
        }
        // The committed hint can only name an entry that is present.
        mem.committed = committed.filter(|c| mem.last_log_id().is_some_and(|l| c.index <= l.index));
        let next = mem.next_index();
        let metrics = Arc::new(LogMetrics::default());
        let mark = Arc::new(Mutex::new(WrittenMark {
            epoch: 0,
            below: next,
        }));
        let writer = WriterHandle::start(
            "raft-log",
            executor.clone(),
            fs.clone(),
            dir.clone(),
            metrics.clone(),
            mark.clone(),
        );
        let cleaner = WriterHandle::start(
            "raft-log-clean",
            executor.clone(),
            fs.clone(),
            dir.clone(),
            metrics.clone(),
            mark.clone(),
        );
        Ok(LogStore {
            shared: Arc::new(Shared {
                fs,
                dir,
                mem: Mutex::new(mem),
                mark,
                writer,
                cleaner,
                executor,
                metrics,
            }),
        })
    }

    /// The log's counters.
    pub fn metrics(&self) -> Arc<LogMetrics> {
        self.shared.metrics.clone()
    }

    /// Bytes of the live segments (with appends still being written).
    pub fn live_bytes(&self) -> u64 {
        self.shared.mem.lock().segments.values().sum()
    }

    /// Number of segment files.
    pub fn segments(&self) -> usize {
        self.shared.mem.lock().segments.len()
    }

    /// One past the last entry made durable (fsynced) here, as far as the
    /// writer knows: entries below it were acknowledged.
    pub fn durable_next(&self) -> u64 {
        self.shared.mark.lock().below
    }

    /// The first and last index present, and the purged log id.
    pub fn bounds(&self) -> (u64, Option<LogId>, Option<LogId>) {
        let mem = self.shared.mem.lock();
        (mem.first_index, mem.last_log_id(), mem.purged)
    }

    /// The entries `start..end` that the log holds. Cached ones are
    /// cloned under the lock; the others are read from their segments
    /// after it is released, on the executor (a thread in production),
    /// so neither appends nor a tokio worker wait for the disk.
    async fn read_entries(&self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        // A planned read may find its place rewritten by a truncation
        // that came in between; it is planned again. Twice in a row
        // would take truncations racing the same reads.
        for _ in 0..3 {
            let (mut out, reads) = self.plan_read(start, end)?;
            if reads.is_empty() {
                return Ok(out.into_iter().flatten().collect());
            }
            let shared = self.shared.clone();
            let planned: Vec<Pos> = reads.iter().map(|(_, p)| p.clone()).collect();
            let read = if self.shared.executor.is_inline() {
                read_positions(&shared, &planned)
            } else {
                super::state_machine::run_blocking(&self.shared.executor, move || {
                    read_positions(&shared, &planned)
                })
                .await?
            };
            let entries = match read {
                Ok(entries) => entries,
                // A place rewritten meanwhile: plan again.
                Err(_) if !self.still_planned(&reads) => continue,
                Err(e) => return Err(e),
            };
            if !self.still_planned(&reads) {
                continue;
            }
            for ((slot, _), entry) in reads.into_iter().zip(entries) {
                out[slot] = Some(entry);
            }
            return Ok(out.into_iter().flatten().collect());
        }
        Err(io::Error::other(format!(
            "Raft log entries {start}..{end} kept moving while being read"
        )))
    }

    /// Under the lock: the cached entries of `start..end` in their slots,
    /// and where each of the others is to be read.
    #[allow(clippy::type_complexity)]
    fn plan_read(
        &self,
        start: u64,
        end: u64,
    ) -> io::Result<(Vec<Option<Entry>>, Vec<(usize, Pos)>)> {
        let mem = self.shared.mem.lock();
        let start = start.max(mem.first_index);
        let end = end.min(mem.next_index());
        let n = usize::try_from(end.saturating_sub(start)).map_err(io::Error::other)?;
        let mut out = Vec::with_capacity(n);
        let mut reads = Vec::new();
        for index in start..end {
            if let Some(e) = mem.cache.get(&index) {
                out.push(Some(e.clone()));
                continue;
            }
            let pos = mem
                .pos(index)
                .cloned()
                .ok_or_else(|| io::Error::other(format!("log entry {index} is missing")))?;
            assert!(
                index < self.shared.mark.lock().below,
                "log entry {index} is neither cached nor written"
            );
            reads.push((out.len(), pos));
            out.push(None);
        }
        Ok((out, reads))
    }

    /// Whether every planned read still names where its entry is.
    fn still_planned(&self, reads: &[(usize, Pos)]) -> bool {
        let mem = self.shared.mem.lock();
        reads
            .iter()
            .all(|(_, p)| mem.pos(p.log_id.index) == Some(p))
    }

    fn trim_cache(&self, mem: &mut Mem) {
        let written_below = self.shared.mark.lock().below;
        while mem.cache.len() > CACHE_ENTRIES || mem.cache_bytes > CACHE_BYTES {
            let Some((&index, _)) = mem.cache.first_key_value() else {
                break;
            };
            if index >= written_below {
                break;
            }
            mem.cache.pop_first();
            let len = mem.pos(index).map_or(0, |p| p.len);
            mem.cache_bytes = mem.cache_bytes.saturating_sub(len);
        }
    }

    async fn replace_file<T: serde::Serialize>(
        &self,
        name: &str,
        value: &T,
        sync: bool,
    ) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.writer.send(Job::Replace {
            name: name.to_string(),
            payload: codec::encode(value)?,
            sync,
            done: tx,
        });
        rx.await
            .map_err(|_| io::Error::other("the log writer stopped"))?
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e + 1,
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        self.read_entries(start, end).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.mem.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let mem = self.shared.mem.lock();
        Ok(LogState {
            last_purged_log_id: mem.purged,
            last_log_id: mem.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.replace_file("vote", vote, true).await?;
        self.shared.mem.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let write = {
            let mut mem = self.shared.mem.lock();
            mem.committed = committed;
            match &committed {
                Some(c) if c.index >= mem.committed_hint_written + COMMITTED_HINT_EVERY => {
                    mem.committed_hint_written = c.index;
                    true
                }
                _ => false,
            }
        };
        if let (true, Some(c)) = (write, committed) {
            // A hint (read back only if it names a present entry): no one
            // waits for it.
            let (done, _) = tokio::sync::oneshot::channel();
            self.shared.cleaner.send(Job::Replace {
                name: "committed".to_string(),
                payload: codec::encode(&c)?,
                sync: false,
                done,
            });
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.shared.mem.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
        let upto;
        let epoch;
        {
            let mut mem = self.shared.mem.lock();
            for entry in entries {
                let index = entry.log_id.index;
                if mem.entries.is_empty() {
                    let expected = mem.purged.as_ref().map(|p| p.index + 1);
                    assert!(
                        expected.is_none_or(|e| e == index),
                        "log gap: first entry {index} after purged {expected:?}"
                    );
                    mem.first_index = index;
                } else {
                    assert_eq!(index, mem.next_index(), "log gap: appending {index}");
                }
                let payload = codec::encode(&entry)?;
                let len = frame::framed_len(payload.len()) as u64;
                let segment = match mem.segments.last_key_value() {
                    Some((&first, &size)) if size < mem.segment_bytes => first,
                    _ => {
                        mem.segments.insert(index, 0);
                        index
                    }
                };
                let mut offset = mem.segments.get(&segment).copied().unwrap_or(0);
                match writes.last_mut() {
                    Some((s, chunk)) if *s == segment => frame::encode(chunk, &payload),
                    _ => {
                        // Each write starts with a slot for a sync mark,
                        // which the writer fills in (see `Writer::write`).
                        let mut chunk = Vec::new();
                        frame::encode_mark(&mut chunk, offset, false);
                        offset += frame::MARK_BYTES as u64;
                        frame::encode(&mut chunk, &payload);
                        writes.push((segment, chunk));
                    }
                }
                mem.segments.insert(segment, offset + len);
                mem.entries.push_back(Pos {
                    log_id: entry.log_id,
                    segment,
                    offset,
                    len,
                });
                mem.cache_bytes += len;
                mem.cache.insert(index, entry);
            }
            upto = mem.next_index();
            epoch = self.shared.mark.lock().epoch;
        }
        self.shared.metrics.appends.fetch_add(1, Ordering::Relaxed);
        let n = writes.len();
        let mut callback = Some(callback);
        for (i, (segment, bytes)) in writes.into_iter().enumerate() {
            self.shared.writer.send(Job::Write {
                segment,
                bytes,
                written_below: upto,
                epoch,
                done: if i + 1 == n { callback.take() } else { None },
            });
        }
        if let Some(cb) = callback {
            // Nothing to write: already durable.
            cb.io_completed(Ok(()));
        }
        let mut mem = self.shared.mem.lock();
        self.trim_cache(&mut mem);
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        #[cfg(feature = "planted-bugs")]
        if crate::planted::on(crate::planted::Bug::KeepConflictingSuffix) {
            return Ok(());
        }
        let keep_below = last.as_ref().map_or(0, |l| l.index + 1);
        let job = {
            let mut mem = self.shared.mem.lock();
            if keep_below >= mem.next_index() {
                return Ok(());
            }
            let keep = keep_below.saturating_sub(mem.first_index);
            let keep = usize::try_from(keep).map_err(io::Error::other)?;
            let first_removed = mem.entries.get(keep).cloned();
            mem.entries.truncate(keep);
            if mem.entries.is_empty() {
                mem.first_index = keep_below.max(mem.first_index);
            }
            mem.cache.retain(|&i, _| i < keep_below);
            mem.cache_bytes = mem
                .cache
                .keys()
                .filter_map(|&i| mem.pos(i).map(|p| p.len))
                .sum();
            let Some(cut) = first_removed else {
                return Ok(());
            };
            let remove: Vec<u64> = mem
                .segments
                .range(cut.segment + 1..)
                .map(|(&f, _)| f)
                .collect();
            for f in &remove {
                mem.segments.remove(f);
                mem.readers.remove(f);
            }
            mem.segments.insert(cut.segment, cut.offset);
            let mut mark = self.shared.mark.lock();
            mark.epoch += 1;
            mark.below = mark.below.min(keep_below);
            (cut.segment, cut.offset, remove)
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.writer.send(Job::Truncate {
            segment: job.0,
            len: job.1,
            remove: job.2,
            done: tx,
        });
        rx.await
            .map_err(|_| io::Error::other("the log writer stopped"))?
    }

    /// Forgets the entries up to `log_id` at once; the durable marker and
    /// the removal of whole segments follow in the background, in that
    /// order (openraft's core waits for this call, so a slow unlink here
    /// stalled every write). A crash before them leaves more log than
    /// purged, never a hole: the next open starts after the marker on
    /// disk, and the next purge removes segments left behind.
    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let payload = codec::encode(&log_id)?;
        let remove = {
            let mut mem = self.shared.mem.lock();
            mem.purged = Some(log_id);
            while mem
                .entries
                .front()
                .is_some_and(|p| p.log_id.index <= log_id.index)
            {
                mem.entries.pop_front();
                mem.first_index += 1;
            }
            if mem.entries.is_empty() {
                mem.first_index = mem.first_index.max(log_id.index + 1);
            }
            mem.cache.retain(|&i, _| i > log_id.index);
            // A segment goes when the next one starts at or below the
            // first entry kept; the last segment always stays.
            let firsts: Vec<u64> = mem.segments.keys().copied().collect();
            let mut remove = Vec::new();
            for w in firsts.windows(2) {
                if w[1] <= log_id.index + 1 {
                    remove.push(w[0]);
                }
            }
            for f in &remove {
                mem.segments.remove(f);
                mem.readers.remove(f);
            }
            remove
        };
        let (done, _) = tokio::sync::oneshot::channel();
        self.shared.cleaner.send(Job::Replace {
            name: "purged".to_string(),
            payload,
            sync: true,
            done,
        });
        if !remove.is_empty() {
            // Runs only if the marker was written: a failed job fails
            // every later one.
            let (done, _) = tokio::sync::oneshot::channel();
            self.shared.cleaner.send(Job::Remove {
                segments: remove,
                done,
            });
        }
        Ok(())
    }
}

type Done = tokio::sync::oneshot::Sender<io::Result<()>>;

enum Job {
    Write {
        segment: u64,
        bytes: Vec<u8>,
        written_below: u64,
        epoch: u64,
        done: Option<IOFlushed<TypeConfig>>,
    },
    Truncate {
        segment: u64,
        len: u64,
        remove: Vec<u64>,
        done: Done,
    },
    Remove {
        segments: Vec<u64>,
        done: Done,
    },
    /// Answers once every job before it has run.
    Barrier(std::sync::mpsc::Sender<()>),
    Replace {
        name: String,
        /// postcard of the value.
        payload: Vec<u8>,
        sync: bool,
        done: Done,
    },
}

/// Reads the entries at `positions` from their segments (blocking file
/// I/O: off the runtime in production). Segment readers are opened once
/// and shared; a reader opened before later appends may not see them (an
/// in-memory filesystem copies at open), so it is reopened when short.
fn read_positions(shared: &Shared, positions: &[Pos]) -> io::Result<Vec<Entry>> {
    let mut out = Vec::with_capacity(positions.len());
    for pos in positions {
        let known = shared.mem.lock().readers.get(&pos.segment).cloned();
        let reader = match known {
            Some(r) if r.len() >= pos.offset + pos.len => r,
            _ => {
                let r = shared
                    .fs
                    .open_read(&shared.dir.join(segment_name(pos.segment)))?;
                shared.mem.lock().readers.insert(pos.segment, r.clone());
                r
            }
        };
        let len = usize::try_from(pos.len).map_err(io::Error::other)?;
        let data = reader.read_at(pos.offset, len)?;
        let mut data = data;
        let decoded = frame::decode_all(&mut data, frame::Syncs::Marked);
        let damaged = |what: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "Raft log segment {} is damaged at offset {}: {what}",
                    segment_name(pos.segment),
                    pos.offset
                ),
            )
        };
        let entry: Entry = match (decoded.records.as_slice(), decoded.tail) {
            ([r], frame::Tail::Clean) => super::decode_entry(r.payload)?,
            (_, tail) => return Err(damaged(format!("{tail:?}"))),
        };
        if entry.log_id != pos.log_id {
            return Err(damaged(format!(
                "entry {} found where {} should be",
                entry.log_id, pos.log_id
            )));
        }
        out.push(entry);
    }
    Ok(out)
}

/// Hands jobs to the writer: a thread's queue, or the writer itself when
/// the executor runs jobs inline.
enum WriterHandle {
    Thread(Mutex<mpsc::Sender<Job>>),
    Inline(Mutex<Writer>),
}

impl WriterHandle {
    fn start(
        name: &'static str,
        executor: Arc<dyn Executor>,
        fs: Arc<dyn FileSystem>,
        dir: PathBuf,
        metrics: Arc<LogMetrics>,
        mark: Arc<Mutex<WrittenMark>>,
    ) -> Self {
        let writer = Writer {
            name,
            fs,
            dir,
            file: None,
            failed: None,
            unsynced: false,
            metrics,
            mark,
        };
        if executor.is_inline() {
            return WriterHandle::Inline(Mutex::new(writer));
        }
        let (tx, rx) = mpsc::channel::<Job>();
        let mut writer = writer;
        executor.spawn(
            name,
            Box::new(move || {
                // Block for one job, then take everything queued behind it:
                // those appends share one fsync.
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        jobs.push(more);
                        if jobs.len() >= 4096 {
                            break;
                        }
                    }
                    writer.run(jobs);
                }
            }),
        );
        WriterHandle::Thread(Mutex::new(tx))
    }

    fn send(&self, job: Job) {
        match self {
            WriterHandle::Thread(tx) => {
                if let Err(mpsc::SendError(job)) = tx.lock().send(job) {
                    fail_job(job, "the log writer thread is gone");
                }
            }
            WriterHandle::Inline(w) => w.lock().run(vec![job]),
        }
    }
}

fn fail_job(job: Job, why: &str) {
    let err = || io::Error::other(why.to_string());
    match job {
        Job::Write { done, .. } => {
            if let Some(d) = done {
                d.io_completed(Err(err()));
            }
        }
        Job::Truncate { done, .. } | Job::Remove { done, .. } | Job::Replace { done, .. } => {
            let _ = done.send(Err(err()));
        }
        Job::Barrier(done) => {
            let _ = done.send(());
        }
    }
}

struct Writer {
    /// Its thread's name, for its errors.
    name: &'static str,
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    /// The open segment and its first index.
    file: Option<(u64, Box<dyn WritableFile>)>,
    /// Set by the first I/O error; every later job fails with it.
    failed: Option<String>,
    /// Bytes were written since the last fsync.
    unsynced: bool,
    metrics: Arc<LogMetrics>,
    mark: Arc<Mutex<WrittenMark>>,
}

impl Writer {
    fn run(&mut self, jobs: Vec<Job>) {
        let mut pending: Vec<IOFlushed<TypeConfig>> = Vec::new();
        let mut dirty = false;
        let mut written = (0, 0);
        for job in jobs {
            if let Some(why) = self.failed.clone() {
                fail_job(job, &why);
                continue;
            }
            match job {
                Job::Write {
                    segment,
                    bytes,
                    written_below,
                    epoch,
                    done,
                } => match self.write(segment, bytes) {
                    Ok(()) => {
                        dirty = true;
                        written = (epoch, written_below);
                        if let Some(d) = done {
                            pending.push(d);
                        }
                    }
                    Err(e) => {
                        self.fail(&e);
                        if let Some(d) = done {
                            d.io_completed(Err(e));
                        }
                    }
                },
                other => {
                    // Keep order: what was written before this job is
                    // synced before it runs.
                    if dirty {
                        self.sync_and_notify(&mut pending, written);
                        dirty = false;
                    }
                    self.run_control(other);
                }
            }
        }
        if dirty {
            self.sync_and_notify(&mut pending, written);
        }
    }

    fn fail(&mut self, e: &io::Error) {
        tracing::error!(writer = self.name, error = %e,
            "Raft log I/O failed; this writer refuses every later job");
        self.failed = Some(format!("Raft log I/O failed earlier: {e}"));
    }

    /// Writes one chunk of a segment. Its first bytes are a slot for a
    /// sync mark: the first write after an fsync fills it with a mark
    /// saying so (everything before it in the file is durable), any other
    /// write leaves the filler.
    fn write(&mut self, segment: u64, mut bytes: Vec<u8>) -> io::Result<()> {
        if self.file.as_ref().map(|(s, _)| *s) != Some(segment) {
            if let Some((_, mut old)) = self.file.take() {
                old.sync()?;
                self.unsynced = false;
            }
            let path = self.dir.join(segment_name(segment));
            let f = if self.fs.exists(&path) {
                self.fs.open_append(&path)?
            } else {
                let f = self.fs.create(&path)?;
                self.fs.sync_dir(&self.dir)?;
                f
            };
            self.file = Some((segment, f));
        }
        if let Some((_, f)) = self.file.as_mut() {
            if !self.unsynced {
                let mut mark = Vec::with_capacity(frame::MARK_BYTES);
                frame::encode_mark(&mut mark, f.len(), true);
                bytes[..frame::MARK_BYTES].copy_from_slice(&mark);
            }
            f.append(&bytes)?;
            self.unsynced = true;
        }
        Ok(())
    }

    fn sync_and_notify(&mut self, pending: &mut Vec<IOFlushed<TypeConfig>>, written: (u64, u64)) {
        let started = Instant::now();
        let res = match self.file.as_mut() {
            Some((_, f)) => f.flush().and_then(|()| {
                #[cfg(feature = "planted-bugs")]
                if crate::planted::on(crate::planted::Bug::AckWithoutFsync) {
                    return Ok(());
                }
                f.sync()
            }),
            None => Ok(()),
        };
        self.metrics.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .fsync_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        metrics::histogram!("cairn_wal_fsync_duration_seconds").record(started.elapsed());
        match res {
            Ok(()) => {
                self.unsynced = false;
                {
                    let mut mark = self.mark.lock();
                    if mark.epoch == written.0 {
                        mark.below = mark.below.max(written.1);
                    }
                }
                for d in pending.drain(..) {
                    d.io_completed(Ok(()));
                }
            }
            Err(e) => {
                self.fail(&e);
                for d in pending.drain(..) {
                    d.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
    }

    fn run_control(&mut self, job: Job) {
        match job {
            Job::Write { .. } => unreachable!("writes are handled by run"),
            Job::Truncate {
                segment,
                len,
                remove,
                done,
            } => {
                let res = self.truncate(segment, len, &remove);
                if let Err(e) = &res {
                    self.fail(e);
                }
                let _ = done.send(res);
            }
            Job::Barrier(done) => {
                let _ = done.send(());
            }
            Job::Remove { segments, done } => {
                let res = segments
                    .iter()
                    .try_for_each(|s| self.fs.remove(&self.dir.join(segment_name(*s))))
                    .and_then(|()| self.fs.sync_dir(&self.dir));
                if let Err(e) = &res {
                    tracing::warn!(error = %e, "removing purged Raft log segments failed; they go at the first purge after a restart");
                }
                let _ = done.send(res);
            }
            Job::Replace {
                name,
                payload,
                sync,
                done,
            } => {
                let res =
                    small_file::write_encoded(&*self.fs, &self.dir.join(&name), &payload, sync);
                if let Err(e) = &res {
                    if sync {
                        self.fail(e);
                    } else {
                        tracing::warn!(file = %name, error = %e, "writing a Raft log hint failed");
                    }
                }
                let _ = done.send(res);
            }
        }
    }

    /// Cuts the log at `len` bytes of `segment` and removes the segments
    /// after it, newest first, so that a crash at any point leaves a
    /// contiguous prefix of the old log (never a gap); the cut is synced
    /// before this returns, so no later append can land behind it.
    fn truncate(&mut self, segment: u64, len: u64, remove: &[u64]) -> io::Result<()> {
        self.file = None;
        self.unsynced = false;
        let mut later = remove.to_vec();
        later.sort_unstable();
        for s in later.iter().rev() {
            match self.fs.remove(&self.dir.join(segment_name(*s))) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => self.fs.sync_dir(&self.dir)?,
            }
        }
        let path = self.dir.join(segment_name(segment));
        if self.fs.exists(&path) {
            self.fs.truncate(&path, len)?;
            let mut f = self.fs.open_append(&path)?;
            f.sync()?;
        }
        self.fs.sync_dir(&self.dir)
    }
}
