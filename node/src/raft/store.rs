//! The key-value model over the LSM engine.
//!
//! The state machine keeps everything in one LSM database, in three key
//! spaces told apart by their first byte:
//!
//! ```text
//! 'd' user_key          -> create_rev u64 | mod_rev u64 | version u64 | value   (LE)
//! 'v' revision u64 BE   -> postcard(Record): the revision's watch events and,
//!                          for a write with a request id, the id and its answer
//! 'm' name              -> small state (the oldest revision kept in history)
//! ```
//!
//! One record per revision holds both the watch history and the request-id
//! table (before, each had keys of its own: a put wrote three keys and
//! later deleted two; now it writes two and later deletes one). A record
//! is deleted once both windows have passed it.
//!
//! Applying is deterministic: it depends only on the entries and the
//! state, never on time or on memory addresses, so every replica writes
//! the same bytes. The watch history and the request-id table are trimmed
//! by log index, so they too are equal on every replica.

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashMap;

use serde::{Deserialize, Serialize};

use super::command::{
    Command, CommandResponse, DeleteOp, Kv, Op, OpResult, PutOp, RequestId, ScanResult, ScanSpec,
    Txn, TxnOp,
};
use super::{LogId, StoredMembership};
use crate::lsm::{self, Db, WriteBatch};

const DATA: u8 = b'd';
const RECORD: u8 = b'v';
/// The key spaces of the format before revision records (watch events,
/// request ids): a database holding them is converted when loaded.
const OLD_EVENT: u8 = b'e';
const OLD_REQUEST: u8 = b'r';
const HISTORY_START: &[u8] = b"mhistory-start";
const RECORD_HEADER: usize = 24;
/// History is trimmed every this many revisions: the records of this
/// many revisions are deleted inside the apply of one entry, which every
/// later write waits behind. When a trim scanned for them, at 1024 it
/// took 1-5 ms (on every replica at once, the same entry; 114 applies
/// over 1 ms in 8 s of puts with 4 clients, 34 at 64); now the applier
/// knows their keys (see `KnownRecords`) and scans only after a reload.
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

fn record_key(revision: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(RECORD);
    k.extend_from_slice(&revision.to_be_bytes());
    k
}

/// The revision of a record key.
fn record_revision(key: &[u8]) -> Result<u64> {
    match key.split_first() {
        Some((&RECORD, rev)) if rev.len() == 8 => {
            Ok(u64::from_be_bytes(rev.try_into().unwrap_or_default()))
        }
        _ => Err(StoreError::Corrupt {
            key: key.to_vec(),
            reason: "bad revision record key".into(),
        }),
    }
}

/// One revision's record. Fields are decoded in order, so a reader that
/// needs only the first ones (the request id when loading, the answer
/// for a duplicate) decodes a prefix ([`RecordHead`]).
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    head: RecordHead,
    /// The revision's watch events, in order.
    events: Vec<WatchEvent>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RecordHead {
    /// The request id of the write, if it had one.
    request: Option<RequestId>,
    /// Its answer, for a duplicate (with `request`).
    response: Option<CommandResponse>,
}

fn decode<'a, T: Deserialize<'a>>(key: &[u8], bytes: &'a [u8], whole: bool) -> Result<T> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key.to_vec(),
        reason,
    };
    let (v, rest) = postcard::take_from_bytes(bytes).map_err(|e| corrupt(e.to_string()))?;
    if whole && !rest.is_empty() {
        return Err(corrupt(format!("{} bytes after the record", rest.len())));
    }
    Ok(v)
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
    let end = record_key(to.saturating_add(1));
    for item in db.scan(record_key(from)..end)? {
        let (k, v) = item?;
        let rev = record_revision(&k)?;
        let record: Record = decode(&k, &v, true)?;
        let events: Vec<WatchEvent> = record
            .events
            .into_iter()
            .filter(|ev| filter(&ev.kv.key))
            .collect();
        if events.is_empty() {
            continue;
        }
        if out.len() >= max_revisions {
            break;
        }
        out.push((rev, events));
    }
    Ok(out)
}

/// The applier: applies commands to the database in log order. Owned by
/// the state machine task; readers use [`get`] and [`scan`] directly.
pub struct Applier {
    retention: Retention,
    /// Request ids remembered, in the order of the indexes that applied
    /// them (for expiry in log order), and by id with that index (for
    /// lookups; never iterated, so its hash order decides nothing).
    requests_by_index: VecDeque<(u64, RequestId)>,
    requests: FxHashMap<RequestId, u64>,
    history_start: u64,
    /// No record below this revision exists (every one below was
    /// deleted, or none was written).
    records_start: u64,
    /// Which revisions applied since loading wrote a record.
    written: KnownRecords,
    /// Each recently written key's create revision and version (None:
    /// known absent), so a put need not read the key's previous record.
    meta: KeyMeta,
}

/// Which revisions wrote a record, for the revisions applied since the
/// applier was loaded, so trimming deletes their keys without scanning
/// for them (a scan builds an iterator over every table). Revisions
/// before the first one applied here (after a restart or a snapshot
/// install) are found by a scan, which finds the same keys.
#[derive(Default)]
struct KnownRecords {
    /// The revision of `wrote[0]`.
    first: u64,
    wrote: VecDeque<bool>,
}

/// Revisions known at most (a byte each); older ones are found by a
/// scan when trimmed.
const KNOWN_RECORDS_MAX: usize = 1 << 20;

impl KnownRecords {
    /// Records whether `revision` wrote a record.
    fn record(&mut self, revision: u64, wrote: bool) {
        if self.first + self.wrote.len() as u64 != revision {
            // Not the revision after the last one recorded (the first
            // since loading): nothing before it is known.
            self.wrote.clear();
            self.first = revision;
        }
        if self.wrote.len() == KNOWN_RECORDS_MAX {
            self.wrote.pop_front();
            self.first += 1;
        }
        self.wrote.push_back(wrote);
    }

    /// The first revision known (`u64::MAX`: none).
    fn known_from(&self) -> u64 {
        if self.wrote.is_empty() {
            u64::MAX
        } else {
            self.first
        }
    }

    /// Forgets the revisions before `end`, returning the known ones that
    /// wrote a record.
    fn take_before(&mut self, end: u64) -> impl Iterator<Item = u64> + '_ {
        std::iter::from_fn(move || loop {
            if self.first >= end {
                return None;
            }
            let wrote = self.wrote.pop_front()?;
            self.first += 1;
            if wrote {
                return Some(self.first - 1);
            }
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
    /// Loads the request-id table and history bounds from `db` (first
    /// converting a database of the format before revision records).
    pub fn load(db: &Db, retention: Retention) -> Result<Self> {
        convert_old_format(db)?;
        let mut a = Applier {
            retention,
            requests_by_index: VecDeque::new(),
            requests: FxHashMap::default(),
            history_start: history_start(db)?,
            records_start: 0,
            written: KnownRecords::default(),
            meta: KeyMeta::default(),
        };
        // Ids applied before the window of the last applied entry have
        // expired; the records, kept for the history's window, may still
        // hold them (an id expired and applied again is in two records).
        let applied = AppliedState::from_metadata(db.user_metadata())?
            .last_applied
            .map_or(0, |l| l.index);
        let request_floor = applied.saturating_sub(retention.request_id_entries);
        // Records come in revision order: the queue is in log order.
        for (n, item) in db.scan_prefix([RECORD])?.enumerate() {
            let (k, v) = item?;
            let revision = record_revision(&k)?;
            if n == 0 {
                a.records_start = revision;
            }
            let request: Option<RequestId> = decode(&k, &v, false)?;
            if let Some(id) = request.filter(|_| revision >= request_floor) {
                a.requests.insert(id, revision);
                a.requests_by_index.push_back((revision, id));
            }
        }
        Ok(a)
    }

    /// The oldest revision the history holds.
    pub fn history_start(&self) -> u64 {
        self.history_start
    }

    /// The history start once the entry at `index` is applied (a trim
    /// there moves it). Readers are told before the trim's deletes are
    /// written, so a reader whose history read met deleted records finds
    /// the start moved when it checks again.
    pub fn history_start_after(&self, index: u64) -> u64 {
        if index.is_multiple_of(HISTORY_TRIM_EVERY) {
            self.history_start
                .max(index.saturating_sub(self.retention.history_revisions))
        } else {
            self.history_start
        }
    }

    /// Applies an entry without a command (blank or membership) at
    /// `index`, recording `state` as the applied position.
    pub fn apply_empty(&mut self, db: &Db, index: u64, state: &AppliedState) -> Result<()> {
        self.expire_requests(index);
        let mut batch = WriteBatch::new();
        self.trim(db, index, false, &mut batch)?;
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
        self.expire_requests(index);
        let mut batch = WriteBatch::new();
        if let Some(&revision) = cmd.request_id.and_then(|id| self.requests.get(&id)) {
            let key = record_key(revision);
            if let Some(prev) = db.get(&key)? {
                let head: RecordHead = decode(&key, &prev, false)?;
                let response = head.response.ok_or_else(|| StoreError::Corrupt {
                    key: key.clone(),
                    reason: "a request id's record without its answer".into(),
                })?;
                self.trim(db, index, false, &mut batch)?;
                batch.set_user_metadata(state.encode());
                self.write(db, batch)?;
                return Ok(Applied {
                    response,
                    events: Vec::new(),
                });
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
        let written = std::mem::take(&mut tx.overlay);
        let response = CommandResponse {
            revision: index,
            result,
        };
        let record = Record {
            head: RecordHead {
                request: cmd.request_id,
                response: cmd.request_id.map(|_| response.clone()),
            },
            events: std::mem::take(&mut tx.events),
        };
        let wrote = record.head.request.is_some() || !record.events.is_empty();
        if wrote {
            batch.put(
                record_key(index),
                postcard::to_allocvec(&record).unwrap_or_default(),
            );
        }
        if let Some(id) = cmd.request_id {
            self.requests.insert(id, index);
            debug_assert!(self
                .requests_by_index
                .back()
                .is_none_or(|&(i, _)| i < index));
            self.requests_by_index.push_back((index, id));
        }
        self.trim(db, index, wrote, &mut batch)?;
        batch.set_user_metadata(state.encode());
        self.write(db, batch)?;
        self.meta.record(written);
        Ok(Applied {
            response,
            events: record.events,
        })
    }

    /// Writes one entry's batch. After a failure nothing cached about the
    /// database can be trusted.
    fn write(&mut self, db: &Db, batch: WriteBatch) -> Result<()> {
        if let Err(e) = db.write(batch) {
            self.meta.map.clear();
            self.written = KnownRecords::default();
            return Err(e.into());
        }
        Ok(())
    }

    /// Forgets the request ids applied more than their window before the
    /// entry at `index`, before that entry looks for a duplicate.
    fn expire_requests(&mut self, index: u64) {
        let floor = index.saturating_sub(self.retention.request_id_entries);
        while let Some(&(i, id)) = self.requests_by_index.front() {
            if i >= floor {
                break;
            }
            self.requests_by_index.pop_front();
            let removed = self.requests.remove(&id);
            debug_assert_eq!(removed, Some(i), "request-id queue and map disagree");
        }
    }

    /// Records whether the entry at `index` wrote a record, and deletes
    /// the records that both windows (history and request ids) have
    /// passed. Runs at fixed log indexes, so every replica trims the same
    /// way.
    fn trim(&mut self, db: &Db, index: u64, wrote: bool, batch: &mut WriteBatch) -> Result<()> {
        self.written.record(index, wrote);
        if !index.is_multiple_of(HISTORY_TRIM_EVERY) {
            return Ok(());
        }
        let new_start = self.history_start_after(index);
        if new_start > self.history_start {
            self.history_start = new_start;
            batch.put(HISTORY_START, new_start.to_le_bytes());
        }
        let request_floor = index.saturating_sub(self.retention.request_id_entries);
        let floor = self.history_start.min(request_floor);
        if floor <= self.records_start {
            return Ok(());
        }
        // Revisions applied before loading: their keys are found by a
        // scan. The others: their keys are known.
        let scan_end = floor.min(self.written.known_from());
        if self.records_start < scan_end {
            for item in db.scan(record_key(self.records_start)..record_key(scan_end))? {
                let (k, _) = item?;
                batch.delete(k);
            }
        }
        for revision in self.written.take_before(floor) {
            if revision >= self.records_start {
                batch.delete(record_key(revision));
            }
        }
        self.records_start = floor;
        Ok(())
    }
}

/// Converts a database of the format before revision records (watch
/// events under 'e' revision|n, request ids under 'r' client|seq) into
/// records, in one write that keeps the applied position. Every replica
/// converts the same state the same way. Does nothing on a database
/// without old keys.
fn convert_old_format(db: &Db) -> Result<()> {
    let mut records: BTreeMap<u64, Record> = BTreeMap::new();
    let mut batch = WriteBatch::new();
    let empty = || Record {
        head: RecordHead {
            request: None,
            response: None,
        },
        events: Vec::new(),
    };
    for item in db.scan_prefix([OLD_EVENT])? {
        let (k, v) = item?;
        if k.len() != 13 {
            return Err(StoreError::Corrupt {
                key: k.to_vec(),
                reason: "bad event key length".into(),
            });
        }
        let revision = u64::from_be_bytes(k[1..9].try_into().unwrap_or_default());
        let event: WatchEvent = decode(&k, &v, true)?;
        records
            .entry(revision)
            .or_insert_with(empty)
            .events
            .push(event);
        batch.delete(&k);
    }
    for item in db.scan_prefix([OLD_REQUEST])? {
        let (k, v) = item?;
        if k.len() != 17 || v.len() < 8 {
            return Err(StoreError::Corrupt {
                key: k.to_vec(),
                reason: "bad request-id record".into(),
            });
        }
        let id = RequestId {
            client_id: u64::from_be_bytes(k[1..9].try_into().unwrap_or_default()),
            seq: u64::from_be_bytes(k[9..17].try_into().unwrap_or_default()),
        };
        let response: CommandResponse = decode(&k, &v[8..], true)?;
        let record = records.entry(u64_at(&v, 0)).or_insert_with(empty);
        record.head = RecordHead {
            request: Some(id),
            response: Some(response),
        };
        batch.delete(&k);
    }
    if batch.is_empty() {
        return Ok(());
    }
    tracing::info!(
        records = records.len(),
        "converting the state machine's watch history and request ids to revision records"
    );
    for (revision, record) in &records {
        batch.put(
            record_key(*revision),
            postcard::to_allocvec(record).unwrap_or_default(),
        );
    }
    if let Some(m) = db.user_metadata() {
        batch.set_user_metadata(m);
    }
    db.write(batch)?;
    Ok(())
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

    /// The records the database holds: each one's event count, by
    /// revision.
    fn record_events(db: &Db) -> BTreeMap<u64, u32> {
        let mut out = BTreeMap::new();
        for item in db.scan_prefix([RECORD]).unwrap() {
            let (k, v) = item.unwrap();
            let record: Record = decode(&k, &v, true).unwrap();
            out.insert(record_revision(&k).unwrap(), record.events.len() as u32);
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

    /// The request ids the applier remembers, checked against its queue.
    fn request_ids(applier: &Applier) -> BTreeSet<RequestId> {
        let queued: BTreeSet<RequestId> = applier
            .requests_by_index
            .iter()
            .map(|&(_, id)| id)
            .collect();
        let known: BTreeSet<RequestId> = applier.requests.keys().copied().collect();
        assert_eq!(queued, known);
        known
    }

    /// A fresh database whose request-id window (50 entries) is shorter
    /// than its history's (1000), and its applier.
    fn short_request_window() -> (Db, Retention, Applier) {
        let db = memory_db();
        let retention = Retention {
            history_revisions: 1000,
            request_id_entries: 50,
        };
        let applier = Applier::load(&db, retention).unwrap();
        (db, retention, applier)
    }

    /// Request ids expire in log order, also when the applier was loaded
    /// from the database (whose records outlive the request window here:
    /// the history's is longer), and a duplicate inside the window is
    /// answered, not applied.
    #[test]
    fn request_ids_expire_in_log_order_across_a_reload() {
        let (db, retention, mut applier) = short_request_window();
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
            assert_eq!(request_ids(&applier), want, "after index {index}");
        }
        // Inside the window: the first answer, nothing applied.
        let again = put_with(&mut applier, 121, id(100));
        assert_eq!(again.response.revision, 100);
        assert!(again.events.is_empty());
        // Expired: applied as new, also right after a load. Loaded at
        // 121 (the window's oldest: 121 - 50), expired for the entry at 122
        // before it looks for a duplicate; older ones are not loaded.
        applier = Applier::load(&db, retention).unwrap();
        assert!(applier.requests.contains_key(&id(71)));
        assert!(!applier.requests.contains_key(&id(70)));
        let fresh = put_with(&mut applier, 122, id(71));
        assert_eq!(fresh.response.revision, 122);
        assert_eq!(fresh.events.len(), 1);
    }

    /// An id applied again as new after it expired has two records while
    /// the history's window keeps both; after a reload, the expiry of the
    /// first use leaves the second one answering duplicates.
    #[test]
    fn a_reapplied_id_survives_the_expiry_of_its_first_use() {
        let (db, retention, mut applier) = short_request_window();
        let rid = RequestId {
            client_id: 5,
            seq: 1,
        };
        let apply = |applier: &mut Applier, index: u64, request_id: Option<RequestId>| {
            let cmd = Command {
                request_id,
                op: Op::Put(put(1)),
            };
            applier.apply(&db, index, &cmd, &state(index)).unwrap()
        };
        assert_eq!(apply(&mut applier, 1, Some(rid)).response.revision, 1);
        for index in 2..60 {
            apply(&mut applier, index, None);
        }
        // Expired: applied as new.
        assert_eq!(apply(&mut applier, 60, Some(rid)).response.revision, 60);
        applier = Applier::load(&db, retention).unwrap();
        // Only the second use is remembered.
        assert_eq!(applier.requests_by_index.len(), 1);
        apply(&mut applier, 61, None);
        assert_eq!(applier.requests.get(&rid), Some(&60));
        let again = apply(&mut applier, 62, Some(rid));
        assert_eq!(again.response.revision, 60);
        assert!(again.events.is_empty());
    }

    /// A database of the format before revision records is converted
    /// when loaded: its history reads the same, a duplicate of a request
    /// it remembered is answered, the applied position is kept.
    #[test]
    fn the_old_format_is_converted_when_loaded() {
        let db = memory_db();
        let event = |k: u8, revision: u64| WatchEvent {
            kind: EventKind::Put,
            kv: Kv {
                key: vec![b'k', k],
                value: vec![k],
                create_revision: revision,
                mod_revision: revision,
                version: 1,
            },
        };
        let old_event_key = |revision: u64, n: u32| {
            let mut k = vec![OLD_EVENT];
            k.extend_from_slice(&revision.to_be_bytes());
            k.extend_from_slice(&n.to_be_bytes());
            k
        };
        let rid = RequestId {
            client_id: 9,
            seq: 3,
        };
        let answer = CommandResponse {
            revision: 7,
            result: OpResult::Put { prev: None },
        };
        let mut batch = WriteBatch::new();
        for (revision, n, k) in [(5, 0, 1), (5, 1, 2), (7, 0, 3)] {
            batch.put(
                old_event_key(revision, n),
                postcard::to_allocvec(&event(k, revision)).unwrap(),
            );
        }
        let mut request_key = vec![OLD_REQUEST];
        request_key.extend_from_slice(&rid.client_id.to_be_bytes());
        request_key.extend_from_slice(&rid.seq.to_be_bytes());
        let mut v = 7u64.to_le_bytes().to_vec();
        v.extend_from_slice(&postcard::to_allocvec(&answer).unwrap());
        batch.put(request_key, v);
        batch.set_user_metadata(state(7).encode());
        db.write(batch).unwrap();

        let mut applier = Applier::load(&db, Retention::default()).unwrap();
        assert_eq!(db.scan_prefix([OLD_EVENT]).unwrap().count(), 0);
        assert_eq!(db.scan_prefix([OLD_REQUEST]).unwrap().count(), 0);
        assert_eq!(
            AppliedState::from_metadata(db.user_metadata())
                .unwrap()
                .last_applied
                .map(|l| l.index),
            Some(7)
        );
        let h = history(&db, 1, 7, 10, |_| true).unwrap();
        assert_eq!(
            h,
            vec![(5, vec![event(1, 5), event(2, 5)]), (7, vec![event(3, 7)])]
        );
        let again = applier
            .apply(
                &db,
                8,
                &Command {
                    request_id: Some(rid),
                    op: Op::Put(put(3)),
                },
                &state(8),
            )
            .unwrap();
        assert_eq!(again.response, answer);
        assert!(again.events.is_empty());
        // Loading again finds nothing left to convert.
        Applier::load(&db, Retention::default()).unwrap();
        assert_eq!(record_events(&db), BTreeMap::from([(5, 2), (7, 1)]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Trimming with the counts kept in memory, with a scan for what
        /// came before a reload, or both, leaves exactly the events of
        /// the revisions in the retention window.
        #[test]
        fn history_trim_keeps_exactly_the_window(
            steps in prop::collection::vec(step(), 1..600),
            requests_longer in any::<bool>(),
        ) {
            let db = memory_db();
            // Either window may be the longer one; a record stays until
            // both have passed it.
            let retention = if requests_longer {
                Retention { history_revisions: 70, request_id_entries: 150 }
            } else {
                Retention { history_revisions: 70, request_id_entries: 10 }
            };
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
                // What readers are told before the entry is applied.
                let announced = applier.history_start_after(index);
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
                prop_assert_eq!(applier.history_start(), announced);
                // Trims run at multiples of HISTORY_TRIM_EVERY.
                let trimmed_at = index / HISTORY_TRIM_EVERY * HISTORY_TRIM_EVERY;
                let history_start = trimmed_at.saturating_sub(retention.history_revisions).max(1);
                prop_assert_eq!(applier.history_start(), history_start);
                let floor = history_start.min(trimmed_at.saturating_sub(retention.request_id_entries));
                model.retain(|&r, _| r >= floor);
                prop_assert_eq!(record_events(&db), model.clone(), "after revision {}", index);
                if index > retention.history_revisions + HISTORY_TRIM_EVERY {
                    prop_assert!(applier.history_start() + retention.history_revisions + HISTORY_TRIM_EVERY > index);
                }
            }
        }
    }
}
