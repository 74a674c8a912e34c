//! The applier: applies commands to the database in log order, keeps the
//! client sessions (`sessions`), the replicated settings and alarms, and trims
//! the watch history.

use std::collections::{BTreeMap, VecDeque};

use cairn_lsm::{Db, WriteBatch};

use super::alarms::{self, Alarm, Alarms};
use super::command::{
    Command, CommandResponse, Kv, Op, OpResult, RequestId, SessionHint, Settings,
};
use super::error::{Result, StoreError};
use super::format;
use super::key_meta::KeyMeta;
use super::layout::{
    decode, encode_record, encode_small, record_key, record_request, record_revision,
    session_client, session_key, Record, RecordHead, WatchEvent, ALARMS_KEY, HISTORY_START, RECORD,
    SESSION, SETTINGS_KEY,
};
use super::limits::MAX_KEPT_ANSWER_BYTES;
use super::read::history_start;
use super::sessions::{Changes, Lookup, Sessions, MAX_SESSIONS};
use super::tx::{Budget, Tx, TxError};

/// History is trimmed every this many revisions: the records of this
/// many revisions are deleted inside the apply of one entry, which every
/// later write waits behind (on every replica at once), so a trim is kept
/// small. The applier knows the trimmed records' keys (see
/// `KnownRecords`) and scans for them only after a reload.
pub const HISTORY_TRIM_EVERY: u64 = 64;

/// The bounds a [`Settings`] entry must keep; one outside them is
/// refused (the same on every replica).
pub const MIN_SESSION_TTL_SECS: u64 = 10;
/// See [`MIN_SESSION_TTL_SECS`].
pub const MAX_SESSION_TTL_SECS: u64 = 7 * 24 * 3600;
/// See [`MIN_SESSION_TTL_SECS`].
pub const MAX_HISTORY_REVISIONS: u64 = 100_000_000;

/// Why `settings` cannot be applied, if it cannot.
pub fn check_settings(settings: &Settings) -> std::result::Result<(), String> {
    let ttl = settings.session_ttl_secs;
    if !(MIN_SESSION_TTL_SECS..=MAX_SESSION_TTL_SECS).contains(&ttl) {
        return Err(format!(
            "session-ttl of {ttl} s is outside {MIN_SESSION_TTL_SECS}..={MAX_SESSION_TTL_SECS} s"
        ));
    }
    let h = settings.history_revisions;
    if !(1..=MAX_HISTORY_REVISIONS).contains(&h) {
        return Err(format!(
            "history-revisions of {h} is outside 1..={MAX_HISTORY_REVISIONS}"
        ));
    }
    Ok(())
}

/// The applier: applies commands to the database in log order. Owned by
/// the state machine task; readers use [`get`](super::get) and [`scan`](super::scan) directly.
pub struct Applier {
    /// The replicated settings (the defaults until an entry sets them).
    settings: Settings,
    /// Whether an entry ever set the settings.
    settings_set: bool,
    /// The raised alarms.
    alarms: Alarms,
    /// The client sessions.
    pub(super) sessions: Sessions,
    history_start: u64,
    /// No record below this revision exists but those that keep a
    /// session's answer (every other one below was deleted, or none was
    /// written).
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
        // Applied by the applier itself, never run as a write.
        Op::ExpireSessions { .. }
        | Op::Settings { .. }
        | Op::OpenSession
        | Op::Alarm { .. }
        | Op::HashCheck => OpResult::None,
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

/// What applying one entry did, for the rest of its apply.
struct Outcome {
    applied: Applied,
    /// Whether it wrote a record.
    wrote: bool,
    /// The pairs it left (for the key cache).
    written: BTreeMap<Vec<u8>, Option<Kv>>,
}

impl Outcome {
    /// An entry at `index` that wrote no pairs and no record, answered
    /// `result`.
    fn answer(index: u64, result: OpResult) -> Self {
        Self::of(CommandResponse {
            revision: index,
            result,
        })
    }

    /// An entry that wrote no pairs and no record, answered `response`.
    fn of(response: CommandResponse) -> Self {
        Outcome {
            applied: Applied {
                response,
                events: Vec::new(),
            },
            wrote: false,
            written: BTreeMap::new(),
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
    /// Loads the sessions, settings and history bounds from `db`. Checks
    /// the layout's format version first, converting an older layout
    /// once. `defaults` are the settings until an entry sets them; they
    /// must be the same on every replica.
    pub fn load(db: &Db, defaults: Settings) -> Result<Self> {
        format::check_and_convert(db)?;
        let stored: Option<Settings> = match db.get(SETTINGS_KEY)? {
            Some(v) => Some(decode(SETTINGS_KEY, &v, true)?),
            None => None,
        };
        let alarms: Vec<Alarm> = match db.get(ALARMS_KEY)? {
            Some(v) => decode(ALARMS_KEY, &v, true)?,
            None => Vec::new(),
        };
        let mut a = Applier {
            settings: stored.unwrap_or(defaults),
            settings_set: stored.is_some(),
            alarms: alarms.into_iter().collect(),
            sessions: Sessions::default(),
            history_start: history_start(db)?,
            records_start: 0,
            written: KnownRecords::default(),
            meta: KeyMeta::default(),
        };
        for item in db.scan_prefix([SESSION])? {
            let (k, v) = item?;
            a.sessions
                .load_mark(session_client(&k)?, decode(&k, &v, true)?);
        }
        // Records come in revision order.
        for (n, item) in db.scan_prefix([RECORD])?.enumerate() {
            let (k, v) = item?;
            let revision = record_revision(&k)?;
            if n == 0 {
                a.records_start = revision;
            }
            if let Some((id, floor)) = record_request(&k, &v)? {
                a.sessions.load_record(id, floor, revision);
            }
        }
        a.sessions.finish_load();
        Ok(a)
    }

    /// The oldest revision the history holds.
    pub fn history_start(&self) -> u64 {
        self.history_start
    }

    /// The replicated settings in force.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Whether an entry ever set the settings.
    pub fn settings_set(&self) -> bool {
        self.settings_set
    }

    /// The raised alarms.
    pub fn alarms(&self) -> &Alarms {
        &self.alarms
    }

    /// Sessions held, and the index of the oldest one's last write.
    pub fn sessions(&self) -> (usize, Option<u64>) {
        (self.sessions.len(), self.sessions.oldest_last_index())
    }

    /// The history start once the entry at `index` is applied (a trim
    /// there moves it). Readers are told before the trim's deletes are
    /// written, so a reader whose history read met deleted records finds
    /// the start moved when it checks again.
    pub fn history_start_after(&self, index: u64) -> u64 {
        if index.is_multiple_of(HISTORY_TRIM_EVERY) {
            self.history_start
                .max(index.saturating_sub(self.settings.history_revisions))
        } else {
            self.history_start
        }
    }

    /// Applies an entry without a command (blank or membership) at
    /// `index`; `position` (the applied position, as the caller encodes
    /// it) goes into the engine's flush metadata with the write.
    pub fn apply_empty(&mut self, db: &Db, index: u64, position: Vec<u8>) -> Result<()> {
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
        let mut batch = WriteBatch::new();
        let out = match &cmd.op {
            Op::ExpireSessions { idle_before } => {
                let changes = self.sessions.expire(*idle_before, index);
                self.write_changes(changes, &mut batch);
                Outcome::answer(index, OpResult::None)
            }
            Op::Settings { settings, if_unset } => {
                let result = self.set_settings(settings, *if_unset, &mut batch);
                Outcome::answer(index, result)
            }
            Op::HashCheck => Outcome::answer(index, OpResult::None),
            Op::Alarm { active, alarm } => {
                let changed = if *active {
                    self.alarms.insert(*alarm)
                } else {
                    self.alarms.remove(alarm)
                };
                if changed {
                    let list: Vec<Alarm> = self.alarms.iter().copied().collect();
                    batch.put(ALARMS_KEY, encode_small(&list));
                }
                Outcome::answer(index, OpResult::None)
            }
            Op::OpenSession => {
                let result = match self.sessions.open(index, index) {
                    Some(changes) => {
                        self.write_changes(changes, &mut batch);
                        OpResult::None
                    }
                    None => max_sessions_refusal(index),
                };
                Outcome::answer(index, result)
            }
            Op::Put(_) | Op::Delete(_) | Op::Txn(_) => {
                self.apply_client_write(db, index, cmd, &mut batch)?
            }
        };
        self.trim(db, index, out.wrote, &mut batch)?;
        batch.set_user_metadata(position);
        self.write(db, batch)?;
        self.meta.record(out.written);
        Ok(out.applied)
    }

    /// A client's write as the entry at `index`: applied, answered from
    /// its session, or refused by it.
    fn apply_client_write(
        &mut self,
        db: &Db,
        index: u64,
        cmd: &Command,
        batch: &mut WriteBatch,
    ) -> Result<Outcome> {
        // Refused whatever its request id says: nothing of it is written
        // or recorded, so a retry after the alarm is disarmed applies it.
        if let Some(alarm) = alarms::blocking(&self.alarms, &cmd.op) {
            return Ok(Outcome::answer(index, OpResult::Alarmed { alarm }));
        }
        let Some(id) = cmd.request_id else {
            return self.apply_write(db, index, cmd, batch);
        };
        Ok(match self.sessions.lookup(id, cmd.session) {
            Lookup::Apply => return self.apply_write(db, index, cmd, batch),
            Lookup::Answered(revision) => {
                let response = answer_at(db, revision)?;
                self.record_session(id, cmd.session, index, false, batch);
                Outcome::of(response)
            }
            Lookup::Settled(floor) => {
                self.record_session(id, cmd.session, index, false, batch);
                Outcome::answer(index, OpResult::Settled { floor })
            }
            Lookup::Unknown => Outcome::answer(index, OpResult::SessionUnknown),
            Lookup::Full => Outcome::answer(index, max_sessions_refusal(id.client_id)),
        })
    }

    /// Runs a write command (new, or without a request id) as the entry
    /// at `index`: its pairs, its record, its session's answer.
    fn apply_write(
        &mut self,
        db: &Db,
        index: u64,
        cmd: &Command,
        batch: &mut WriteBatch,
    ) -> Result<Outcome> {
        let ran = match run(db, index, &self.meta, batch, &cmd.op) {
            Ok(ran) => ran,
            Err(TxError::Store(e)) => return Err(e),
            Err(TxError::Refused { limit, detail }) => {
                // Nothing of the command is written; the entry still
                // records its request id (a retry gets the same answer)
                // and the applied position.
                *batch = WriteBatch::new();
                Ran {
                    result: OpResult::Refused { limit, detail },
                    events: Vec::new(),
                    written: BTreeMap::new(),
                    answer_bytes: 0,
                }
            }
        };
        let response = CommandResponse {
            revision: index,
            result: ran.result,
        };
        let record = Record {
            head: RecordHead {
                request: cmd.request_id,
                response: cmd
                    .request_id
                    .map(|_| kept_answer(&response, ran.answer_bytes)),
            },
            events: ran.events,
        };
        let floor = match cmd.request_id {
            Some(id) => self.record_session(id, cmd.session, index, true, batch),
            None => 0,
        };
        let wrote = record.head.request.is_some() || !record.events.is_empty();
        if wrote {
            batch.put(record_key(index), encode_record(&record, floor));
        }
        Ok(Outcome {
            applied: Applied {
                response,
                events: record.events,
            },
            wrote,
            written: ran.written,
        })
    }

    /// Records in the sessions that the entry at `index` carried `id`,
    /// adding what that changes to `batch`; returns the session's floor.
    fn record_session(
        &mut self,
        id: RequestId,
        hint: SessionHint,
        index: u64,
        applied: bool,
        batch: &mut WriteBatch,
    ) -> u64 {
        let changes = self.sessions.record(id, hint, index, applied);
        let floor = changes.floor;
        self.write_changes(changes, batch);
        floor
    }

    /// Adds to `batch` what a change to the sessions asks: records
    /// outside the history that no longer keep an answer are deleted (the
    /// others go with the history), marks are written.
    fn write_changes(&mut self, changes: Changes, batch: &mut WriteBatch) {
        let history = self.history_start.max(self.records_start);
        for revision in changes.unpinned {
            if revision < history {
                batch.delete(record_key(revision));
            }
        }
        for (client, mark) in changes.marks {
            batch.put(session_key(client), encode_small(&mark));
        }
    }

    /// Applies a settings entry.
    fn set_settings(
        &mut self,
        settings: &Settings,
        if_unset: bool,
        batch: &mut WriteBatch,
    ) -> OpResult {
        if if_unset && self.settings_set {
            return OpResult::None;
        }
        if let Err(detail) = check_settings(settings) {
            return OpResult::Refused {
                limit: "settings bounds".into(),
                detail,
            };
        }
        self.settings = *settings;
        self.settings_set = true;
        batch.put(SETTINGS_KEY, encode_small(settings));
        OpResult::None
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

    /// Records whether the entry at `index` wrote a record, and deletes
    /// the records the history has passed, but those that keep a
    /// session's answer. Runs at fixed log indexes, so every replica
    /// trims the same way.
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
        let floor = self.history_start;
        if floor <= self.records_start {
            return Ok(());
        }
        // Revisions applied before loading: their keys are found by a
        // scan. The others: their keys are known.
        let scan_end = floor.min(self.written.known_from());
        if self.records_start < scan_end {
            for item in db.scan(record_key(self.records_start)..record_key(scan_end))? {
                let (k, _) = item?;
                if !self.sessions.is_pinned(record_revision(&k)?) {
                    batch.delete(k);
                }
            }
        }
        for revision in self.written.take_before(floor) {
            if revision >= self.records_start && !self.sessions.is_pinned(revision) {
                batch.delete(record_key(revision));
            }
        }
        self.records_start = floor;
        for client in self.sessions.drop_dead_marks(floor) {
            batch.delete(session_key(client));
        }
        Ok(())
    }
}

/// The refusal of a session `client` would open past [`MAX_SESSIONS`].
fn max_sessions_refusal(client: u64) -> OpResult {
    OpResult::Refused {
        limit: format!("max-sessions = {MAX_SESSIONS}"),
        detail: format!("client {client} would open a session past the {MAX_SESSIONS} held"),
    }
}

/// The answer the record of `revision` keeps for a retry.
fn answer_at(db: &Db, revision: u64) -> Result<CommandResponse> {
    let key = record_key(revision);
    let corrupt = |reason: &str| StoreError::Corrupt {
        key: key.clone(),
        reason: reason.into(),
    };
    let prev = db
        .get(&key)?
        .ok_or_else(|| corrupt("a kept answer's record is missing"))?;
    let head: RecordHead = decode(&key, &prev, false)?;
    head.response
        .ok_or_else(|| corrupt("a request id's record without its answer"))
}
