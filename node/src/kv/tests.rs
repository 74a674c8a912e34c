use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;

use std::collections::BTreeMap;

use cairn_lsm::{Db, WriteBatch};

use super::applier::Applier;
use super::command::*;
use super::layout::*;
use super::*;
use cairn_io::{InlineExecutor, MemFs};
use cairn_lsm::Options;

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
    /// A put with a new request id of `client`, settling every earlier
    /// one when `settle`.
    Write { client: u64, settle: bool },
    /// A retry of `client`'s write `back` writes ago (settling the
    /// writes before it when `settle`).
    Retry { client: u64, back: u8, settle: bool },
    /// The sessions idle for `idle` entries expire.
    Expire { idle: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        60 => (0u8..8).prop_map(Step::Put),
        30 => (0u8..4).prop_map(Step::Txn),
        10 => Just(Step::Blank),
        // Rare: most trims must find the counts of a long run.
        1 => Just(Step::Reload),
        20 => (1u64..4, prop::bool::weighted(0.2)).prop_map(|(client, settle)| Step::Write { client, settle }),
        8 => (1u64..4, 0u8..4, prop::bool::weighted(0.1)).prop_map(|(client, back, settle)| Step::Retry { client, back, settle }),
        1 => (20u8..200).prop_map(|idle| Step::Expire { idle }),
    ]
}

fn put(k: u8) -> PutOp {
    PutOp {
        key: vec![b'k', k],
        value: vec![k; 3],
        prev_kv: false,
    }
}

/// The applied position these tests store with each entry: its index
/// (the Raft layer stores a log id and the membership).
fn state(index: u64) -> Vec<u8> {
    index.to_le_bytes().to_vec()
}

/// Loads the applier as the Raft layer does.
fn load(db: &Db, defaults: Settings) -> Applier {
    Applier::load(db, defaults).unwrap()
}

/// The records the database holds: each one's event count, by
/// revision.
fn record_events(db: &Db) -> BTreeMap<u64, u32> {
    let mut out = BTreeMap::new();
    for item in db.scan_prefix([RECORD]).unwrap() {
        let (k, v) = item.unwrap();
        let record: Record = decode(&k, &v, false).unwrap();
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

/// A write of client `client`'s `seq`, with its floor; `opens` when it
/// may open a session.
fn with_id(op: Op, client: u64, seq: u64, floor: u64, opens: bool) -> Command {
    Command {
        request_id: Some(RequestId {
            client_id: client,
            seq,
        }),
        op,
        session: SessionHint { floor, opens },
    }
}

/// Settings with this history window.
fn history_of(history_revisions: u64) -> Settings {
    Settings {
        history_revisions,
        ..Settings::default()
    }
}

/// A retry is answered with the first answer while its session keeps
/// it, also across reloads and after the history passed its revision;
/// below the floor it is refused, never applied again; a client without
/// a session is refused, and an `OpenSession` entry opens one whose
/// client id is its index.
#[test]
fn sessions_answer_retries_until_settled() {
    let db = memory_db();
    let settings = history_of(10);
    let mut applier = load(&db, settings);
    let mut index = 0;
    let mut apply = |applier: &mut Applier, cmd: &Command| {
        index += 1;
        applier.apply(&db, index, cmd, state(index)).unwrap()
    };
    let w = |seq: u64, floor: u64, _: bool| with_id(Op::Put(put(1)), 2, seq, floor, false);
    // No session: nothing applied.
    let r = apply(&mut applier, &w(1, 1, false));
    assert_eq!(r.response.result, OpResult::SessionUnknown);
    assert!(r.events.is_empty());
    let opened = apply(&mut applier, &Command::new(Op::OpenSession));
    assert_eq!(
        (opened.response.revision, opened.response.result),
        (2, OpResult::None),
        "client 2 is the entry at index 2"
    );
    let first = apply(&mut applier, &w(1, 1, true));
    assert_eq!(first.events.len(), 1);
    assert_eq!(apply(&mut applier, &w(2, 1, false)).events.len(), 1);
    // 200 entries later (the history keeps 10), after a reload, seq 1
    // is still unsettled: its retry gets the first answer.
    for _ in 0..200 {
        apply(&mut applier, &Command::new(Op::Put(put(2))));
    }
    applier = load(&db, settings);
    let again = apply(&mut applier, &w(1, 1, false));
    assert_eq!(again.response, first.response);
    assert!(again.events.is_empty());
    // Seq 3 settles 1 and 2: a retry of 1 is refused, nothing applied,
    // also after a reload.
    apply(&mut applier, &w(3, 3, false));
    for reload in [false, true] {
        if reload {
            applier = load(&db, settings);
        }
        let late = apply(&mut applier, &w(1, 1, false));
        assert_eq!(late.response.result, OpResult::Settled { floor: 3 });
        assert!(late.events.is_empty());
    }
    // The settled answers' records went with the history.
    for _ in 0..HISTORY_TRIM_EVERY {
        apply(&mut applier, &Command::new(Op::Put(put(2))));
    }
    assert!(!record_events(&db).contains_key(&first.response.revision));
}

/// An expired session is forgotten, also by a reload that still finds
/// its records in the history; a retry of its writes is refused (it may
/// not open a session), and its records and mark go once the history
/// passed them.
#[test]
fn expired_sessions_stay_expired() {
    let db = memory_db();
    let settings = history_of(100);
    let mut applier = load(&db, settings);
    let index = std::cell::Cell::new(0);
    let apply = |applier: &mut Applier, cmd: &Command| {
        index.set(index.get() + 1);
        let i = index.get();
        (i, applier.apply(&db, i, cmd, state(i)).unwrap())
    };
    let (at, _) = apply(&mut applier, &with_id(Op::Put(put(1)), 5, 1, 1, true));
    apply(&mut applier, &with_id(Op::Put(put(1)), 6, 1, 1, true));
    let (expired_at, _) = apply(
        &mut applier,
        &Command::new(Op::ExpireSessions {
            idle_before: at + 1,
        }),
    );
    assert_eq!(applier.sessions(), (1, Some(at + 1)));
    for reload in [false, true] {
        if reload {
            applier = load(&db, settings);
        }
        assert_eq!(applier.sessions(), (1, Some(at + 1)));
        let (_, retry) = apply(&mut applier, &with_id(Op::Put(put(1)), 5, 1, 1, false));
        assert_eq!(retry.response.result, OpResult::SessionUnknown);
    }
    assert!(db.get(session_key(5)).unwrap().is_some());
    while index.get() < expired_at + 100 + 2 * HISTORY_TRIM_EVERY {
        apply(&mut applier, &Command::new(Op::Put(put(2))));
    }
    assert!(!record_events(&db).contains_key(&at));
    assert!(db.get(session_key(5)).unwrap().is_none());
    // Client 6's session lives on (nothing expired it).
    let (_, retry) = apply(&mut applier, &with_id(Op::Put(put(1)), 6, 1, 1, false));
    assert_eq!(retry.response.revision, at + 1);
}

/// Settings are replicated state: an entry sets them, a later
/// `if_unset` one does not change them, out-of-bounds ones are refused,
/// and a reload keeps them whatever defaults it is given.
#[test]
fn settings_are_set_by_entries() {
    let db = memory_db();
    let mut applier = load(&db, Settings::default());
    let set = |applier: &mut Applier, index: u64, settings: Settings, if_unset: bool| {
        let cmd = Command::new(Op::Settings { settings, if_unset });
        applier
            .apply(&db, index, &cmd, state(index))
            .unwrap()
            .response
            .result
    };
    assert!(!applier.settings_set());
    let first = history_of(500);
    assert_eq!(set(&mut applier, 1, first, true), OpResult::None);
    assert_eq!(set(&mut applier, 2, history_of(900), true), OpResult::None);
    assert_eq!(applier.settings(), first);
    let bad = Settings {
        session_ttl_secs: 1,
        ..first
    };
    assert!(matches!(
        set(&mut applier, 3, bad, false),
        OpResult::Refused { .. }
    ));
    assert_eq!(applier.settings(), first);
    let applier = load(&db, history_of(7));
    assert!(applier.settings_set());
    assert_eq!(applier.settings(), first);
}

/// An alarm entry refuses the writes it names on every replica alike,
/// also with a request id (which it does not record: a retry after the
/// alarm is disarmed applies), and a reload keeps it.
#[test]
fn alarms_refuse_writes_until_disarmed_and_survive_a_reload() {
    use super::alarms::{Alarm, AlarmKind};
    let db = memory_db();
    let mut applier = load(&db, Settings::default());
    let apply = |applier: &mut Applier, index: u64, cmd: Command| {
        applier
            .apply(&db, index, &cmd, state(index))
            .unwrap()
            .response
            .result
    };
    let nospace = Alarm {
        member: 3,
        kind: AlarmKind::NoSpace,
    };
    let alarm = |active| {
        Command::new(Op::Alarm {
            active,
            alarm: nospace,
        })
    };
    assert_eq!(
        apply(&mut applier, 1, Command::new(Op::Put(put(1)))),
        OpResult::Put { prev: None }
    );
    assert_eq!(apply(&mut applier, 2, alarm(true)), OpResult::None);
    assert_eq!(
        apply(&mut applier, 3, Command::new(Op::Put(put(2)))),
        OpResult::Alarmed { alarm: nospace }
    );
    let mut applier = load(&db, Settings::default());
    assert!(applier.alarms().contains(&nospace));
    assert_eq!(
        apply(&mut applier, 4, Command::new(Op::OpenSession)),
        OpResult::None
    );
    let retried = with_id(Op::Put(put(3)), 4, 1, 0, false);
    assert_eq!(
        apply(&mut applier, 5, retried.clone()),
        OpResult::Alarmed { alarm: nospace }
    );
    let deleted = apply(
        &mut applier,
        6,
        Command::new(Op::Delete(DeleteOp {
            key: put(1).key,
            prefix: false,
            prev_kv: false,
        })),
    );
    assert!(
        matches!(deleted, OpResult::Delete { deleted: 1, .. }),
        "{deleted:?}"
    );
    assert_eq!(apply(&mut applier, 7, alarm(false)), OpResult::None);
    assert!(matches!(
        apply(&mut applier, 8, retried),
        OpResult::Put { .. }
    ));
    assert!(db.get(data_key(&put(2).key)).unwrap().is_none());
    assert!(db.get(data_key(&put(3).key)).unwrap().is_some());
    assert!(load(&db, Settings::default()).alarms().is_empty());
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
    batch.set_user_metadata(state(7));
    db.write(batch).unwrap();

    let mut applier = load(&db, Settings::default());
    assert_eq!(db.scan_prefix([OLD_EVENT]).unwrap().count(), 0);
    assert_eq!(db.scan_prefix([OLD_REQUEST]).unwrap().count(), 0);
    assert_eq!(db.user_metadata(), Some(state(7)));
    assert_eq!(
        db.get(FORMAT_VERSION_KEY).unwrap().as_deref(),
        Some(&FORMAT_VERSION.to_le_bytes()[..])
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
            &with_id(Op::Put(put(3)), rid.client_id, rid.seq, 0, false),
            state(8),
        )
        .unwrap();
    assert_eq!(again.response, answer);
    assert!(again.events.is_empty());
    // Loading again finds nothing left to convert.
    load(&db, Settings::default());
    assert_eq!(record_events(&db), BTreeMap::from([(5, 2), (7, 1)]));
}

/// A database that records a newer format version is refused with an
/// error naming both versions, and left as it was; a new database gets
/// the current version.
#[test]
fn a_newer_format_is_refused() {
    let db = memory_db();
    load(&db, Settings::default());
    assert_eq!(
        db.get(FORMAT_VERSION_KEY).unwrap().as_deref(),
        Some(&FORMAT_VERSION.to_le_bytes()[..])
    );
    let mut batch = WriteBatch::new();
    batch.put(FORMAT_VERSION_KEY, (FORMAT_VERSION + 1).to_le_bytes());
    db.write(batch).unwrap();
    let err = Applier::load(&db, Settings::default())
        .err()
        .expect("a newer format must be refused");
    assert!(matches!(err, StoreError::NewerFormat { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{}", FORMAT_VERSION + 1))
            && msg.contains(&format!("{FORMAT_VERSION}")),
        "{msg}"
    );
    assert_eq!(
        db.get(FORMAT_VERSION_KEY).unwrap().as_deref(),
        Some(&(FORMAT_VERSION + 1).to_le_bytes()[..])
    );
}

/// A command past what one entry may cost is refused when applied (the
/// same on every replica: nothing depends on the node), writes nothing,
/// still moves the applied position and keeps its request id, so a retry
/// gets the same refusal. Checked for a prefix delete's answer
/// (`prev_kv` over values larger together than the answer's bound) and
/// its watch events (more keys than one entry may record).
#[test]
fn commands_past_an_entrys_bounds_are_refused_and_write_nothing() {
    let db = memory_db();
    let mut applier = load(&db, Settings::default());
    let mut index = 0;
    let mut apply = |applier: &mut Applier, op: Op, request_id: Option<RequestId>| {
        index += 1;
        let cmd = match request_id {
            Some(id) => with_id(op, id.client_id, id.seq, id.seq, true),
            None => Command::new(op),
        };
        (
            index,
            applier.apply(&db, index, &cmd, state(index)).unwrap(),
        )
    };
    // 30 values of 1 MiB: 30 MiB of answer with prev_kv.
    for i in 0..30u8 {
        let put = PutOp {
            key: vec![b'a', i],
            value: vec![i; 1 << 20],
            prev_kv: false,
        };
        apply(&mut applier, Op::Put(put), None);
    }
    let big_answer = DeleteOp {
        key: vec![b'a'],
        prefix: true,
        prev_kv: true,
    };
    let rid = RequestId {
        client_id: 5,
        seq: 1,
    };
    let refused = |r: &OpResult, bound: &str| match r {
        OpResult::Refused { limit, .. } => limit.starts_with(bound),
        _ => false,
    };
    let (at, first) = apply(&mut applier, Op::Delete(big_answer.clone()), Some(rid));
    assert!(
        refused(&first.response.result, "entry-answer-bytes"),
        "{:?}",
        first.response.result
    );
    assert!(first.events.is_empty());
    assert_eq!(db.user_metadata(), Some(state(at)), "the position moved");
    let (_, again) = apply(&mut applier, Op::Delete(big_answer), Some(rid));
    assert_eq!(
        again.response, first.response,
        "a retry gets the same refusal"
    );
    let left = read::scan(&db, &ScanSpec::prefix(b"a", 0, true), u64::MAX).unwrap();
    assert_eq!(left.kvs.len(), 30, "nothing was deleted");
    // Without prev_kv the same delete goes through.
    let (_, done) = apply(
        &mut applier,
        Op::Delete(DeleteOp {
            key: vec![b'a'],
            prefix: true,
            prev_kv: false,
        }),
        None,
    );
    assert_eq!(
        done.response.result,
        OpResult::Delete {
            deleted: 30,
            prev: Vec::new()
        }
    );

    // Keys of 4,000 bytes: about 6,200 delete events fill the events'
    // bound; 7,000 keys are past it.
    for i in 0..7_000u32 {
        let mut key = vec![b'b'; 4_000];
        key.extend_from_slice(&i.to_be_bytes());
        let put = PutOp {
            key,
            value: Vec::new(),
            prev_kv: false,
        };
        apply(&mut applier, Op::Put(put), None);
    }
    let (_, many) = apply(
        &mut applier,
        Op::Delete(DeleteOp {
            key: vec![b'b'],
            prefix: true,
            prev_kv: false,
        }),
        None,
    );
    assert!(
        refused(&many.response.result, "entry-event-bytes"),
        "{:?}",
        many.response.result
    );
    let left = read::scan(&db, &ScanSpec::prefix(b"b", 0, true), u64::MAX).unwrap();
    assert_eq!(
        left.kvs.len(),
        7_000.min(MAX_PAGE as usize),
        "nothing was deleted"
    );
}

/// A request id's record keeps an answer of up to 2 MiB of pairs for a
/// retry; a larger one is kept as a note that the request was applied,
/// at which revision, with how large an answer.
#[test]
fn a_large_answer_is_not_kept_for_retries() {
    let db = memory_db();
    let mut applier = load(&db, Settings::default());
    for i in 0..3u8 {
        let put = PutOp {
            key: vec![b'c', i],
            value: vec![i; 1 << 20],
            prev_kv: false,
        };
        let cmd = Command::new(Op::Put(put));
        let index = u64::from(i) + 1;
        applier.apply(&db, index, &cmd, state(index)).unwrap();
    }
    // Three scans of a page each: about 3 MiB of answer.
    let read_all = with_id(
        Op::Txn(Txn {
            compares: Vec::new(),
            success: vec![TxnOp::Scan(ScanSpec::prefix(b"c", 0, false)); 3],
            failure: Vec::new(),
        }),
        9,
        1,
        1,
        true,
    );
    let first = applier.apply(&db, 4, &read_all, state(4)).unwrap();
    match &first.response.result {
        OpResult::Txn { results, .. } => match &results[0] {
            // A scan in a transaction stops at 2 MiB of pairs.
            OpResult::Scan(page) => assert!(
                page.kvs.len() == 1 && page.more,
                "{} pairs, more: {}",
                page.kvs.len(),
                page.more
            ),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let retry = applier.apply(&db, 5, &read_all, state(5)).unwrap();
    assert_eq!(retry.response.revision, 4);
    match retry.response.result {
        OpResult::AnswerNotKept { bytes } => assert!(bytes > 2 << 20, "{bytes}"),
        _ => panic!("the retry got another answer than the note"),
    }
}

/// What the model knows of one client's session.
#[derive(Default)]
struct ModelSession {
    alive: bool,
    next_seq: u64,
    floor: u64,
    last_index: u64,
    /// Seq -> the revision that applied it, at or above the floor.
    answers: BTreeMap<u64, u64>,
}

impl ModelSession {
    /// What applying the write `seq` (with the client's floor, opening
    /// the session when `opens`) at `index` must answer: `Some(revision)`
    /// when it is applied there or was before, `None` when refused.
    fn apply(&mut self, seq: u64, opens: bool, index: u64) -> Result<u64, OpResult> {
        if !self.alive && !opens {
            return Err(OpResult::SessionUnknown);
        }
        self.alive = true;
        self.last_index = index;
        let out = match self.answers.get(&seq) {
            Some(&revision) => Ok(revision),
            None if seq < self.floor => Err(OpResult::Settled { floor: self.floor }),
            None => {
                self.answers.insert(seq, index);
                Ok(index)
            }
        };
        let floor = self.floor;
        self.answers.retain(|&q, _| q >= floor);
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Trimming with the counts kept in memory, with a scan for what
    /// came before a reload, or both, leaves exactly the records of the
    /// revisions in the history window and those whose answer a session
    /// keeps; a retry is answered while its session keeps it, refused
    /// once settled or expired, and never applied twice.
    #[test]
    fn records_are_the_history_and_the_kept_answers(
        steps in prop::collection::vec(step(), 1..600),
    ) {
        let db = memory_db();
        let settings = history_of(70);
        let mut applier = load(&db, settings);
        // The model: events written per revision, and the sessions.
        let mut model: BTreeMap<u64, u32> = BTreeMap::new();
        let mut sessions: BTreeMap<u64, ModelSession> = BTreeMap::new();
        let mut index = 0;
        for s in steps {
            if let Step::Reload = s {
                applier = load(&db, settings);
                continue;
            }
            index += 1;
            // What readers are told before the entry is applied.
            let announced = applier.history_start_after(index);
            let mut expect = None;
            let cmd = match s {
                Step::Reload => unreachable!(),
                Step::Blank => None,
                Step::Put(k) => Some(Command::new(Op::Put(put(k)))),
                Step::Txn(n) => Some(Command::new(Op::Txn(Txn {
                    compares: Vec::new(),
                    success: (0..n).map(|k| TxnOp::Put(put(k))).collect(),
                    failure: Vec::new(),
                }))),
                Step::Write { client, settle } | Step::Retry { client, settle, .. } => {
                    let m = sessions.entry(client).or_default();
                    let (seq, opens) = match s {
                        Step::Retry { back, .. } => (m.next_seq.saturating_sub(u64::from(back)).max(1), false),
                        _ => {
                            m.next_seq += 1;
                            (m.next_seq, !m.alive)
                        }
                    };
                    if settle {
                        m.floor = m.floor.max(seq);
                    }
                    let cmd = with_id(Op::Put(put(1)), client, seq, m.floor, opens);
                    expect = Some(m.apply(seq, opens, index));
                    Some(cmd)
                }
                Step::Expire { idle } => {
                    let bound = index.saturating_sub(u64::from(idle));
                    for m in sessions.values_mut() {
                        if m.alive && m.last_index < bound {
                            m.alive = false;
                            m.answers.clear();
                        }
                    }
                    Some(Command::new(Op::ExpireSessions { idle_before: bound }))
                }
            };
            let applied = match cmd {
                None => {
                    applier.apply_empty(&db, index, state(index)).unwrap();
                    None
                }
                Some(cmd) => Some(applier.apply(&db, index, &cmd, state(index)).unwrap()),
            };
            if let Some(applied) = applied {
                match expect {
                    Some(Ok(revision)) => {
                        prop_assert_eq!(applied.response.revision, revision);
                        prop_assert_eq!(applied.events.len(), usize::from(revision == index), "applied once");
                    }
                    Some(Err(result)) => {
                        prop_assert_eq!(&applied.response.result, &result);
                        prop_assert!(applied.events.is_empty());
                    }
                    None => {}
                }
                if !applied.events.is_empty() {
                    model.insert(index, applied.events.len() as u32);
                }
            }
            prop_assert_eq!(applier.history_start(), announced);
            // Trims run at multiples of HISTORY_TRIM_EVERY.
            let trimmed_at = index / HISTORY_TRIM_EVERY * HISTORY_TRIM_EVERY;
            let history_start = trimmed_at.saturating_sub(settings.history_revisions).max(1);
            prop_assert_eq!(applier.history_start(), history_start);
            let pinned: BTreeSet<u64> = sessions.values().flat_map(|m| m.answers.values().copied()).collect();
            model.retain(|&r, _| r >= history_start || pinned.contains(&r));
            prop_assert_eq!(record_events(&db), model.clone(), "after revision {}", index);
        }
    }
}
