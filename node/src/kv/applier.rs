//! The applier: applies commands to the database in log order, keeps the
//! request-id table and trims the watch history.

use std::collections::{BTreeMap, VecDeque};

use cairn_lsm::{Db, WriteBatch};
use rustc_hash::FxHashMap;

use super::command::{Command, CommandResponse, Kv, Op, OpResult, RequestId};
use super::error::{Result, StoreError};
use super::format;
use super::key_meta::KeyMeta;
use super::layout::{
    decode, encode_record, record_key, record_revision, Record, RecordHead, WatchEvent,
    HISTORY_START, RECORD,
};
use super::limits::MAX_KEPT_ANSWER_BYTES;
use super::read::history_start;
use super::tx::{Budget, Tx, TxError};

/// History is trimmed every this many revisions: the records of this
/// many revisions are deleted inside the apply of one entry, which every
/// later write waits behind (on every replica at once), so a trim is kept
/// small. The applier knows the trimmed records' keys (see
/// `KnownRecords`) and scans for them only after a reload.
pub const HISTORY_TRIM_EVERY: u64 = 64;

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

/// The applier: applies commands to the database in log order. Owned by
/// the state machine task; readers use [`get`](super::get) and [`scan`](super::scan) directly.
pub struct Applier {
    retention: Retention,
    /// Request ids remembered, in the order of the indexes that applied
    /// them (for expiry in log order), and by id with that index (for
    /// lookups; never iterated, so its hash order decides nothing).
    pub(super) requests_by_index: VecDeque<(u64, RequestId)>,
    pub(super) requests: FxHashMap<RequestId, u64>,
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

/// The answer a request id's record keeps for a retry: the answer itself,
/// or past [`MAX_KEPT_ANSWER_BYTES`] of pairs, a note that it was applied
/// and how large its answer was (the record stays small whatever the
/// command read).
fn kept_answer(response: &CommandResponse, answer_bytes: u64) -> CommandResponse {
    if answer_bytes <= MAX_KEPT_ANSWER_BYTES {
        return response.clone();
    }
    CommandResponse {
        revision: response.revision,
        result: OpResult::AnswerNotKept {
            bytes: answer_bytes,
        },
    }
}

/// What running one command produced.
struct Ran {
    /// Its answer.
    result: OpResult,
    /// Its watch events.
    events: Vec<WatchEvent>,
    /// The pairs it left (for the key cache).
    written: BTreeMap<Vec<u8>, Option<Kv>>,
    /// Bytes of pairs in its answer.
    answer_bytes: u64,
}

/// Runs `op` as the entry at `index` into `batch`.
fn run(
    db: &Db,
    index: u64,
    meta: &KeyMeta,
    batch: &mut WriteBatch,
    op: &Op,
) -> std::result::Result<Ran, TxError> {
    let mut tx = Tx {
        db,
        index,
        overlay: BTreeMap::new(),
        batch,
        events: Vec::new(),
        meta,
        budget: Budget::default(),
    };
    let result = match op {
        Op::Put(p) => tx.put(p)?,
        Op::Delete(d) => tx.delete(d)?,
        Op::Txn(t) => tx.txn(t)?,
    };
    Ok(Ran {
        result,
        answer_bytes: tx.budget.answer_bytes(),
        events: tx.events,
        written: tx.overlay,
    })
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

/// What applying one entry produced.
pub struct Applied {
    /// The answer for the client.
    pub response: CommandResponse,
    /// The watch events of this revision.
    pub events: Vec<WatchEvent>,
}

impl Applier {
    /// Loads the request-id table and history bounds from `db`, whose
    /// last applied entry is `applied` (0: none). Checks the layout's
    /// format version first, converting an older layout once.
    pub fn load(db: &Db, retention: Retention, applied: u64) -> Result<Self> {
        format::check_and_convert(db)?;
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
    /// `index`; `position` (the applied position, as the caller encodes
    /// it) goes into the engine's flush metadata with the write.
    pub fn apply_empty(&mut self, db: &Db, index: u64, position: Vec<u8>) -> Result<()> {
        self.expire_requests(index);
        let mut batch = WriteBatch::new();
        self.trim(db, index, false, &mut batch)?;
        batch.set_user_metadata(position);
        self.write(db, batch)
    }

    /// Applies `cmd` as the entry at `index`; `position` (the applied
    /// position, naming `index`) goes into the engine's flush metadata
    /// with the write.
    pub fn apply(
        &mut self,
        db: &Db,
        index: u64,
        cmd: &Command,
        position: Vec<u8>,
    ) -> Result<Applied> {
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
                batch.set_user_metadata(position);
                self.write(db, batch)?;
                return Ok(Applied {
                    response,
                    events: Vec::new(),
                });
            }
        }
        let ran = match run(db, index, &self.meta, &mut batch, &cmd.op) {
            Ok(ran) => ran,
            Err(TxError::Store(e)) => return Err(e),
            Err(TxError::Refused { limit, detail }) => {
                // Nothing of the command is written; the entry still
                // records its request id (a retry gets the same answer)
                // and the applied position.
                batch = WriteBatch::new();
                Ran {
                    result: OpResult::Refused { limit, detail },
                    events: Vec::new(),
                    written: BTreeMap::new(),
                    answer_bytes: 0,
                }
            }
        };
        let Ran {
            result,
            events,
            written,
            answer_bytes,
        } = ran;
        let response = CommandResponse {
            revision: index,
            result,
        };
        let record = Record {
            head: RecordHead {
                request: cmd.request_id,
                response: cmd.request_id.map(|_| kept_answer(&response, answer_bytes)),
            },
            events,
        };
        let wrote = record.head.request.is_some() || !record.events.is_empty();
        if wrote {
            batch.put(record_key(index), encode_record(&record));
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
        batch.set_user_metadata(position);
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
