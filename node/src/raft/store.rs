//! The key-value model over the LSM engine.
//!
//! The state machine keeps everything in one LSM database, in four key
//! spaces told apart by their first byte:
//!
//! ```text
//! 'd' user_key                      -> create_rev u64 | mod_rev u64 | version u64 | value   (LE)
//! 'e' revision u64 BE, n u32 BE     -> postcard(WatchEvent): the watch history
//! 'r' client_id u64 BE, seq u64 BE  -> revision u64 LE | postcard(CommandResponse)
//! 'm' name                          -> small state (the oldest revision kept in history)
//! ```
//!
//! Applying is deterministic: it depends only on the entries and the
//! state, never on time or on memory addresses, so every replica writes
//! the same bytes. The watch history and the request-id table are trimmed
//! by log index, so they too are equal on every replica.

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::{FxHashMap, FxHashSet};

use serde::{Deserialize, Serialize};

use super::command::{
    Command, CommandResponse, DeleteOp, Kv, Op, OpResult, PutOp, RequestId, ScanResult, ScanSpec,
    Txn, TxnOp,
};
use super::{LogId, StoredMembership};
use crate::lsm::{self, Db, WriteBatch};

const DATA: u8 = b'd';
const EVENT: u8 = b'e';
const REQUEST: u8 = b'r';
const HISTORY_START: &[u8] = b"mhistory-start";
const RECORD_HEADER: usize = 24;
/// History is trimmed every this many revisions: the events of this
/// many revisions are deleted inside the apply of one entry, which every
/// later write waits behind. When a trim scanned for them, at 1024 it
/// took 1-5 ms (on every replica at once, the same entry; 114 applies
/// over 1 ms in 8 s of puts with 4 clients, 34 at 64); now the applier
/// knows their keys (see `EventCounts`) and scans only after a reload.
pub const HISTORY_TRIM_EVERY: u64 = 64;

/// The most pairs a scan (or a prefix delete's answer) returns in one page.
pub const MAX_PAGE: u32 = 10_000;

/// Errors of the state machine's storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed.
    #[error(transparent)]
    Lsm(#[from] lsm::Error),
    /// Stored bytes do not decode: a bug or damage the checksums missed.
    #[error("corrupt state-machine record under key {key:?}: {reason}")]
    Corrupt {
        /// The LSM key.
        key: Vec<u8>,
        /// What was wrong.
        reason: String,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// A watch event: one key's change at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The pair after a put; for a delete, the key with `mod_revision` set
    /// to the delete's revision.
    pub kv: Kv,
}

/// The kind of a [`WatchEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was set.
    Put,
    /// The key was deleted.
    Delete,
}

/// What the state machine stores in the LSM's flush metadata: the Raft
/// position the flushed data reflects.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
    /// The state recorded in an LSM metadata slot (the default when the
    /// database has none yet).
    pub fn from_metadata(metadata: Option<Vec<u8>>) -> Result<Self> {
        metadata.map_or_else(|| Ok(Self::default()), |b| Self::decode(&b))
    }

    /// Decodes the LSM metadata slot.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
            key: b"<flush metadata>".to_vec(),
            reason: e.to_string(),
        })
    }
}

/// Retention settings; equal on every replica (they decide what is
/// trimmed, so they are part of the replicated behaviour).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Revisions of watch history kept.
    pub history_revisions: u64,
    /// Log entries a request id is remembered for.
    pub request_id_entries: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            history_revisions: 100_000,
            request_id_entries: 100_000,
        }
    }
}

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA);
    k.extend_from_slice(key);
    k
}

fn event_key(revision: u64, n: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(EVENT);
    k.extend_from_slice(&revision.to_be_bytes());
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn request_key(id: RequestId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(REQUEST);
    k.extend_from_slice(&id.client_id.to_be_bytes());
    k.extend_from_slice(&id.seq.to_be_bytes());
    k
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn encode_record(kv: &Kv) -> Vec<u8> {
    let mut v = Vec::with_capacity(RECORD_HEADER + kv.value.len());
    v.extend_from_slice(&kv.create_revision.to_le_bytes());
    v.extend_from_slice(&kv.mod_revision.to_le_bytes());
    v.extend_from_slice(&kv.version.to_le_bytes());
    v.extend_from_slice(&kv.value);
    v
}

fn decode_record(key: &[u8], rec: &[u8], keys_only: bool) -> Result<Kv> {
    if rec.len() < RECORD_HEADER {
        return Err(StoreError::Corrupt {
            key: data_key(key),
            reason: format!("record of {} bytes is shorter than its header", rec.len()),
        });
    }
    Ok(Kv {
        key: key.to_vec(),
        value: if keys_only {
            Vec::new()
        } else {
            rec[RECORD_HEADER..].to_vec()
        },
        create_revision: u64_at(rec, 0),
        mod_revision: u64_at(rec, 8),
        version: u64_at(rec, 16),
    })
}

/// Reads one key.
pub fn get(db: &Db, key: &[u8]) -> Result<Option<Kv>> {
    match db.get(data_key(key))? {
        Some(rec) => Ok(Some(decode_record(key, &rec, false)?)),
        None => Ok(None),
    }
}

/// Reads a page of a range.
pub fn scan(db: &Db, spec: &ScanSpec) -> Result<ScanResult> {
    scan_merged(db, spec, &BTreeMap::new())
}

/// A scan of the database with `overlay` (pending writes of the command
/// being applied) laid over it.
fn scan_merged(
    db: &Db,
    spec: &ScanSpec,
    overlay: &BTreeMap<Vec<u8>, Option<Kv>>,
) -> Result<ScanResult> {
    let limit = if spec.limit == 0 || spec.limit > MAX_PAGE {
        MAX_PAGE
    } else {
        spec.limit
    } as usize;
    let in_range = |k: &[u8]| k >= &spec.start[..] && (spec.end.is_empty() || k < &spec.end[..]);
    let start = data_key(&spec.start);
    let end = if spec.end.is_empty() {
        vec![DATA + 1]
    } else {
        data_key(&spec.end)
    };
    // Overlay deletions can hide stored keys: read enough to fill the page.
    let overlay_in_range: Vec<(&Vec<u8>, &Option<Kv>)> =
        overlay.iter().filter(|(k, _)| in_range(k)).collect();
    let want = limit + 1 + overlay_in_range.len();
    let mut merged: BTreeMap<Vec<u8>, Kv> = BTreeMap::new();
    let mut stored_exhausted = true;
    for item in db.scan(start..end)? {
        let (k, v) = item?;
        if merged.len() >= want {
            stored_exhausted = false;
            break;
        }
        let user_key = &k[1..];
        merged.insert(
            user_key.to_vec(),
            decode_record(user_key, &v, spec.keys_only)?,
        );
    }
    let last_stored = merged.keys().next_back().cloned();
    for (k, v) in overlay_in_range {
        // Past the last stored key read, an overlay key is only certain
        // when the stored scan reached the end of the range.
        if !stored_exhausted && last_stored.as_ref().is_some_and(|l| k > l) {
            continue;
        }
        match v {
            Some(kv) => {
                let mut kv = kv.clone();
                if spec.keys_only {
                    kv.value.clear();
                }
                merged.insert(k.clone(), kv);
            }
            None => {
                merged.remove(k);
            }
        }
    }
    let more = merged.len() > limit || !stored_exhausted;
    let kvs: Vec<Kv> = merged.into_values().take(limit).collect();
    Ok(ScanResult { kvs, more })
}

/// The oldest revision the watch history still holds.
pub fn history_start(db: &Db) -> Result<u64> {
    Ok(match db.get(HISTORY_START)? {
        Some(b) if b.len() == 8 => u64_at(&b, 0),
        Some(b) => {
            return Err(StoreError::Corrupt {
                key: HISTORY_START.to_vec(),
                reason: format!("{} bytes, want 8", b.len()),
            })
        }
        None => 1,
    })
}

/// The watch history from `from` (inclusive) to `to` (inclusive): one
/// `(revision, events)` per revision with events matching `filter`, at
/// most `max_revisions` of them.
pub fn history(
    db: &Db,
    from: u64,
    to: u64,
    max_revisions: usize,
    filter: impl Fn(&[u8]) -> bool,
) -> Result<Vec<(u64, Vec<WatchEvent>)>> {
    let mut out: Vec<(u64, Vec<WatchEvent>)> = Vec::new();
    if from > to {
        return Ok(out);
    }
    let end = event_key(to.saturating_add(1), 0);
    for item in db.scan(event_key(from, 0)..end)? {
        let (k, v) = item?;
        if k.len() != 13 {
            return Err(StoreError::Corrupt {
                key: k.to_vec(),
                reason: "bad event key length".into(),
            });
        }
        let mut rev = [0u8; 8];
        rev.copy_from_slice(&k[1..9]);
        let rev = u64::from_be_bytes(rev);
        let ev: WatchEvent = postcard::from_bytes(&v).map_err(|e| StoreError::Corrupt {
            key: k.to_vec(),
            reason: e.to_string(),
        })?;
        if !filter(&ev.kv.key) {
            continue;
        }
        match out.last_mut() {
            Some((r, evs)) if *r == rev => evs.push(ev),
            _ => {
                if out.len() >= max_revisions {
                    break;
                }
                out.push((rev, vec![ev]));
            }
        }
    }
    Ok(out)
}

/// The applier: applies commands to the database in log order. Owned by
/// the state machine task; readers use [`get`] and [`scan`] directly.
pub struct Applier {
    retention: Retention,
    /// Request ids remembered, in the order of the indexes that applied
    /// them (for expiry in log order), and by id (for lookups; never
    /// iterated, so its hash order decides nothing).
    requests_by_index: VecDeque<(u64, RequestId)>,
    requests: FxHashSet<RequestId>,
    history_start: u64,
    /// How many events each revision applied since loading wrote.
    events_written: EventCounts,
    /// Each recently written key's create revision and version (None:
    /// known absent), so a put need not read the key's previous record.
    meta: KeyMeta,
}

/// How many watch events each revision wrote, for the revisions applied
/// since the applier was loaded, so trimming the history deletes their
/// keys without scanning for them (a scan builds an iterator over every
/// table). Revisions before the first one applied here (after a restart
/// or a snapshot install) are found by a scan, which finds the same keys.
#[derive(Default)]
struct EventCounts {
    /// The revision of `counts[0]`.
    first: u64,
    counts: VecDeque<u32>,
}

/// Revisions whose event counts are kept at most (4 bytes each); older
/// ones are found by a scan when trimmed.
const EVENT_COUNTS_MAX: usize = 1 << 20;

impl EventCounts {
    /// Records that `revision` wrote `count` events.
    fn record(&mut self, revision: u64, count: usize) {
        if self.first + self.counts.len() as u64 != revision {
            // Not the revision after the last one recorded (the first
            // since loading): nothing before it is known.
            self.counts.clear();
            self.first = revision;
        }
        if self.counts.len() == EVENT_COUNTS_MAX {
            self.counts.pop_front();
            self.first += 1;
        }
        self.counts
            .push_back(u32::try_from(count).unwrap_or(u32::MAX));
    }

    /// The first revision whose count is known (`u64::MAX`: none).
    fn known_from(&self) -> u64 {
        if self.counts.is_empty() {
            u64::MAX
        } else {
            self.first
        }
    }

    /// Forgets the revisions before `end`, returning each known one with
    /// its count.
    fn take_before(&mut self, end: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        std::iter::from_fn(move || {
            if self.first >= end {
                return None;
            }
            let count = self.counts.pop_front()?;
            self.first += 1;
            Some((self.first - 1, count))
        })
    }
}

/// A bounded cache of keys' create revision and version, exactly as the
/// database holds them: updated after every applied write, dropped with
/// the applier (a snapshot install loads a new one), emptied when full
/// or when a write fails. A deterministic hasher and no iteration, so
/// nothing depends on a random seed.
#[derive(Default)]
struct KeyMeta {
    map: FxHashMap<Vec<u8>, Option<(u64, u64)>>,
}

/// Keys whose metadata the applier keeps (about 10 MB with 16-byte keys).
pub const KEY_META_CAPACITY: usize = 1 << 17;

impl KeyMeta {
    fn get(&self, key: &[u8]) -> Option<Option<(u64, u64)>> {
        self.map.get(key).copied()
    }

    /// Records what `overlay` (one applied entry's writes) left.
    fn record(&mut self, overlay: BTreeMap<Vec<u8>, Option<Kv>>) {
        for (k, v) in overlay {
            if self.map.len() >= KEY_META_CAPACITY && !self.map.contains_key(&k) {
                self.map.clear();
            }
            self.map
                .insert(k, v.map(|kv| (kv.create_revision, kv.version)));
        }
    }
}

/// What applying one entry produced.
pub struct Applied {
    /// The answer for the client.
    pub response: CommandResponse,
    /// The watch events of this revision.
    pub events: Vec<WatchEvent>,
}

impl Applier {
    /// Loads the request-id table and history bounds from `db`.
    pub fn load(db: &Db, retention: Retention) -> Result<Self> {
        let mut a = Applier {
            retention,
            requests_by_index: VecDeque::new(),
            requests: FxHashSet::default(),
            history_start: history_start(db)?,
            events_written: EventCounts::default(),
            meta: KeyMeta::default(),
        };
        for item in db.scan_prefix([REQUEST])? {
            let (k, v) = item?;
            if k.len() != 17 || v.len() < 8 {
                return Err(StoreError::Corrupt {
                    key: k.to_vec(),
                    reason: "bad request-id record".into(),
                });
            }
            let mut c = [0u8; 8];
            let mut s = [0u8; 8];
            c.copy_from_slice(&k[1..9]);
            s.copy_from_slice(&k[9..17]);
            let id = RequestId {
                client_id: u64::from_be_bytes(c),
                seq: u64::from_be_bytes(s),
            };
            a.requests.insert(id);
            a.requests_by_index.push_back((u64_at(&v, 0), id));
        }
        a.requests_by_index.make_contiguous().sort_unstable();
        Ok(a)
    }

    /// The oldest revision the history holds.
    pub fn history_start(&self) -> u64 {
        self.history_start
    }

    /// Applies an entry without a command (blank or membership) at
    /// `index`, recording `state` as the applied position.
    pub fn apply_empty(&mut self, db: &Db, index: u64, state: &AppliedState) -> Result<()> {
        let mut batch = WriteBatch::new();
        self.trim(db, index, 0, &mut batch)?;
        batch.set_user_metadata(state.encode());
        self.write(db, batch)
    }

    /// Applies `cmd` as the entry at `index`; `state` (which must name
    /// `index`) is stored with the write.
    pub fn apply(
        &mut self,
        db: &Db,
        index: u64,
        cmd: &Command,
        state: &AppliedState,
    ) -> Result<Applied> {
        debug_assert_eq!(state.last_applied.as_ref().map(|l| l.index), Some(index));
        let mut batch = WriteBatch::new();
        if let Some(id) = cmd.request_id {
            if self.requests.contains(&id) {
                if let Some(prev) = db.get(request_key(id))? {
                    let response: CommandResponse =
                        postcard::from_bytes(&prev[8..]).map_err(|e| StoreError::Corrupt {
                            key: request_key(id),
                            reason: e.to_string(),
                        })?;
                    self.trim(db, index, 0, &mut batch)?;
                    batch.set_user_metadata(state.encode());
                    self.write(db, batch)?;
                    return Ok(Applied {
                        response,
                        events: Vec::new(),
                    });
                }
            }
        }
        let mut tx = Tx {
            db,
            index,
            overlay: BTreeMap::new(),
            batch: &mut batch,
            events: Vec::new(),
            meta: &self.meta,
        };
        let result = match &cmd.op {
            Op::Put(p) => tx.put(p)?,
            Op::Delete(d) => tx.delete(d)?,
            Op::Txn(t) => tx.txn(t)?,
        };
        let events = std::mem::take(&mut tx.events);
        let written = std::mem::take(&mut tx.overlay);
        for (n, ev) in events.iter().enumerate() {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            batch.put(
                event_key(index, n),
                postcard::to_allocvec(ev).unwrap_or_default(),
            );
        }
        let response = CommandResponse {
            revision: index,
            result,
        };
        if let Some(id) = cmd.request_id {
            let mut v = index.to_le_bytes().to_vec();
            v.extend_from_slice(&postcard::to_allocvec(&response).unwrap_or_default());
            batch.put(request_key(id), v);
            self.requests.insert(id);
            debug_assert!(self
                .requests_by_index
                .back()
                .is_none_or(|&(i, _)| i < index));
            self.requests_by_index.push_back((index, id));
        }
        self.trim(db, index, events.len(), &mut batch)?;
        batch.set_user_metadata(state.encode());
        self.write(db, batch)?;
        self.meta.record(written);
        Ok(Applied { response, events })
    }

    /// Writes one entry's batch. After a failure nothing cached about the
    /// database can be trusted.
    fn write(&mut self, db: &Db, batch: WriteBatch) -> Result<()> {
        if let Err(e) = db.write(batch) {
            self.meta.map.clear();
            self.events_written = EventCounts::default();
            return Err(e.into());
        }
        Ok(())
    }

    /// Records that the entry at `index` writes `events` events, and
    /// forgets request ids and history older than the retention windows.
    /// Runs at fixed log indexes, so every replica trims the same way.
    fn trim(&mut self, db: &Db, index: u64, events: usize, batch: &mut WriteBatch) -> Result<()> {
        self.events_written.record(index, events);
        let floor = index.saturating_sub(self.retention.request_id_entries);
        while let Some(&(i, id)) = self.requests_by_index.front() {
            if i >= floor {
                break;
            }
            self.requests_by_index.pop_front();
            self.requests.remove(&id);
            batch.delete(request_key(id));
        }
        if index.is_multiple_of(HISTORY_TRIM_EVERY) && index > self.retention.history_revisions {
            let new_start = index - self.retention.history_revisions;
            if new_start > self.history_start {
                // Revisions applied before loading: their keys are found
                // by a scan. The others: their keys are known.
                let scan_end = new_start.min(self.events_written.known_from());
                if self.history_start < scan_end {
                    for item in db.scan(event_key(self.history_start, 0)..event_key(scan_end, 0))? {
                        let (k, _) = item?;
                        batch.delete(k);
                    }
                }
                for (revision, count) in self.events_written.take_before(new_start) {
                    if revision >= self.history_start {
                        for n in 0..count {
                            batch.delete(event_key(revision, n));
                        }
                    }
                }
                self.history_start = new_start;
                batch.put(HISTORY_START, new_start.to_le_bytes());
            }
        }
        Ok(())
    }
}

/// One command being applied: its pending writes, visible to its own
/// later reads.
struct Tx<'a> {
    db: &'a Db,
    index: u64,
    overlay: BTreeMap<Vec<u8>, Option<Kv>>,
    batch: &'a mut WriteBatch,
    events: Vec<WatchEvent>,
    meta: &'a KeyMeta,
}

impl Tx<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Kv>> {
        match self.overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None => get(self.db, key),
        }
    }

    fn put(&mut self, op: &PutOp) -> Result<OpResult> {
        let (key, value, prev_kv) = (&op.key[..], &op.value[..], op.prev_kv);
        // The previous version's create revision and version; its value
        // only when asked for.
        let cached = if prev_kv || self.overlay.contains_key(key) {
            None
        } else {
            self.meta.get(key)
        };
        let (prev, prev_meta) = match cached {
            Some(meta) => (None, meta),
            None => {
                let prev = self.get(key)?;
                let meta = prev.as_ref().map(|p| (p.create_revision, p.version));
                (prev, meta)
            }
        };
        #[cfg(debug_assertions)]
        if cached.is_some() {
            let stored = get(self.db, key)?.map(|p| (p.create_revision, p.version));
            debug_assert_eq!(stored, prev_meta, "key metadata cache is stale");
        }
        let kv = Kv {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: prev_meta.map_or(self.index, |(c, _)| c),
            mod_revision: self.index,
            version: prev_meta.map_or(1, |(_, v)| v + 1),
        };
        self.batch.put(data_key(key), encode_record(&kv));
        self.events.push(WatchEvent {
            kind: EventKind::Put,
            kv: kv.clone(),
        });
        self.overlay.insert(key.to_vec(), Some(kv));
        Ok(OpResult::Put {
            prev: if prev_kv { prev } else { None },
        })
    }

    fn delete(&mut self, op: &DeleteOp) -> Result<OpResult> {
        let (key, prefix, prev_kv) = (&op.key[..], op.prefix, op.prev_kv);
        let victims: Vec<Kv> = if prefix {
            let mut all = Vec::new();
            let mut spec = ScanSpec::prefix(key, MAX_PAGE, !prev_kv);
            loop {
                let page = scan_merged(self.db, &spec, &self.overlay)?;
                let more = page.more;
                if let Some(last) = page.kvs.last() {
                    spec.start = last.key.clone();
                    spec.start.push(0);
                }
                all.extend(page.kvs);
                if !more {
                    break;
                }
            }
            all
        } else {
            self.get(key)?.into_iter().collect()
        };
        for kv in &victims {
            self.batch.delete(data_key(&kv.key));
            self.events.push(WatchEvent {
                kind: EventKind::Delete,
                kv: Kv {
                    key: kv.key.clone(),
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: self.index,
                    version: 0,
                },
            });
            self.overlay.insert(kv.key.clone(), None);
        }
        Ok(OpResult::Delete {
            deleted: victims.len() as u64,
            prev: if prev_kv { victims } else { Vec::new() },
        })
    }

    fn txn(&mut self, t: &Txn) -> Result<OpResult> {
        let mut succeeded = true;
        for c in &t.compares {
            if !c.holds(self.get(&c.key)?.as_ref()) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                TxnOp::Put(p) => self.put(p)?,
                TxnOp::Delete(d) => self.delete(d)?,
                TxnOp::Get { key } => OpResult::Get(self.get(key)?),
                TxnOp::Scan(spec) => OpResult::Scan(scan_merged(self.db, spec, &self.overlay)?),
            });
        }
        Ok(OpResult::Txn { succeeded, results })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::lsm::{InlineExecutor, MemFs, Options};

    /// One log entry of the model run.
    #[derive(Debug, Clone)]
    enum Step {
        /// A put of key `k`.
        Put(u8),
        /// A txn putting `n` keys (0..=3 events).
        Txn(u8),
        /// An entry without a command.
        Blank,
        /// The applier is loaded again from the database, as after a
        /// restart: what it knew in memory is gone.
        Reload,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            60 => (0u8..8).prop_map(Step::Put),
            30 => (0u8..4).prop_map(Step::Txn),
            10 => Just(Step::Blank),
            // Rare: most trims must find the counts of a long run.
            1 => Just(Step::Reload),
        ]
    }

    fn put(k: u8) -> PutOp {
        PutOp {
            key: vec![b'k', k],
            value: vec![k; 3],
            prev_kv: false,
        }
    }

    fn state(index: u64) -> AppliedState {
        AppliedState {
            last_applied: Some(openraft::testing::log_id::<super::super::TypeConfig>(
                1, 1, index,
            )),
            ..AppliedState::default()
        }
    }

    /// The revisions the history holds: every event key, by revision.
    fn history_keys(db: &Db) -> BTreeMap<u64, u32> {
        let mut out = BTreeMap::new();
        for item in db.scan_prefix([EVENT]).unwrap() {
            let (k, _) = item.unwrap();
            let revision = u64::from_be_bytes(k[1..9].try_into().unwrap());
            *out.entry(revision).or_insert(0) += 1;
        }
        out
    }

    /// A state machine database on an in-memory disk, jobs inline.
    fn memory_db() -> Db {
        let opts = Options {
            wal: false,
            fs: Arc::new(MemFs::new()),
            executor: Arc::new(InlineExecutor),
            ..Options::default()
        };
        Db::open("/db", opts).unwrap()
    }

    /// The request-id keys the database holds.
    fn request_keys(db: &Db) -> BTreeSet<RequestId> {
        db.scan_prefix([REQUEST])
            .unwrap()
            .map(|item| {
                let (k, _) = item.unwrap();
                RequestId {
                    client_id: u64::from_be_bytes(k[1..9].try_into().unwrap()),
                    seq: u64::from_be_bytes(k[9..17].try_into().unwrap()),
                }
            })
            .collect()
    }

    /// Request ids expire in log order, also when the applier was loaded
    /// from the database (which lists them by client id, not by index),
    /// and a duplicate inside the window is answered, not applied.
    #[test]
    fn request_ids_expire_in_log_order_across_a_reload() {
        let db = memory_db();
        let retention = Retention {
            history_revisions: 1000,
            request_id_entries: 50,
        };
        let mut applier = Applier::load(&db, retention).unwrap();
        // Client ids fall as indexes grow, so the database's order of the
        // ids is the reverse of the log's.
        let id = |index: u64| RequestId {
            client_id: 1000 - index,
            seq: 1,
        };
        let put_with = |applier: &mut Applier, index: u64, rid: RequestId| {
            let cmd = Command {
                request_id: Some(rid),
                op: Op::Put(put(1)),
            };
            applier.apply(&db, index, &cmd, &state(index)).unwrap()
        };
        for index in 1..=120 {
            if index == 60 {
                applier = Applier::load(&db, retention).unwrap();
            }
            put_with(&mut applier, index, id(index));
            // Ids applied more than 50 entries ago are gone, the others
            // kept.
            let want: BTreeSet<RequestId> =
                (index.saturating_sub(50).max(1)..=index).map(id).collect();
            assert_eq!(request_keys(&db), want, "after index {index}");
        }
        // Inside the window: the first answer, nothing applied.
        let again = put_with(&mut applier, 121, id(100));
        assert_eq!(again.response.revision, 100);
        assert!(again.events.is_empty());
        // Expired: applied as new.
        let fresh = put_with(&mut applier, 122, id(10));
        assert_eq!(fresh.response.revision, 122);
        assert_eq!(fresh.events.len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Trimming with the counts kept in memory, with a scan for what
        /// came before a reload, or both, leaves exactly the events of
        /// the revisions in the retention window.
        #[test]
        fn history_trim_keeps_exactly_the_window(steps in prop::collection::vec(step(), 1..600)) {
            let db = memory_db();
            let retention = Retention { history_revisions: 70, request_id_entries: 1000 };
            let mut applier = Applier::load(&db, retention).unwrap();
            // The model: events written per revision.
            let mut model: BTreeMap<u64, u32> = BTreeMap::new();
            let mut index = 0;
            for s in steps {
                let cmd = match s {
                    Step::Reload => {
                        applier = Applier::load(&db, retention).unwrap();
                        continue;
                    }
                    Step::Blank => None,
                    Step::Put(k) => Some(Op::Put(put(k))),
                    Step::Txn(n) => Some(Op::Txn(Txn {
                        compares: Vec::new(),
                        success: (0..n).map(|k| TxnOp::Put(put(k))).collect(),
                        failure: Vec::new(),
                    })),
                };
                index += 1;
                match cmd {
                    None => applier.apply_empty(&db, index, &state(index)).unwrap(),
                    Some(op) => {
                        let applied = applier
                            .apply(&db, index, &Command { request_id: None, op }, &state(index))
                            .unwrap();
                        if !applied.events.is_empty() {
                            model.insert(index, applied.events.len() as u32);
                        }
                    }
                }
                model.retain(|&r, _| r >= applier.history_start());
                prop_assert_eq!(history_keys(&db), model.clone(), "after revision {}", index);
                if index > retention.history_revisions + HISTORY_TRIM_EVERY {
                    prop_assert!(applier.history_start() + retention.history_revisions + HISTORY_TRIM_EVERY > index);
                }
            }
        }
    }
}
