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

/// The applied position these tests store with each entry: its index
/// (the Raft layer stores a log id and the membership).
fn state(index: u64) -> Vec<u8> {
    index.to_le_bytes().to_vec()
}

/// Loads the applier as the Raft layer does, at the applied position
/// the database's flush metadata holds.
fn load(db: &Db, retention: Retention) -> Applier {
    let applied = db.user_metadata().map_or(0, |m| u64_at(&m, 0));
    Applier::load(db, retention, applied).unwrap()
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
    let applier = load(&db, retention);
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
        applier.apply(&db, index, &cmd, state(index)).unwrap()
    };
    for index in 1..=120 {
        if index == 60 {
            applier = load(&db, retention);
        }
        put_with(&mut applier, index, id(index));
        // Ids applied more than 50 entries ago are gone, the others
        // kept.
        let want: BTreeSet<RequestId> = (index.saturating_sub(50).max(1)..=index).map(id).collect();
        assert_eq!(request_ids(&applier), want, "after index {index}");
    }
    // Inside the window: the first answer, nothing applied.
    let again = put_with(&mut applier, 121, id(100));
    assert_eq!(again.response.revision, 100);
    assert!(again.events.is_empty());
    // Expired: applied as new, also right after a load. Loaded at
    // 121 (the window's oldest: 121 - 50), expired for the entry at 122
    // before it looks for a duplicate; older ones are not loaded.
    applier = load(&db, retention);
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
        applier.apply(&db, index, &cmd, state(index)).unwrap()
    };
    assert_eq!(apply(&mut applier, 1, Some(rid)).response.revision, 1);
    for index in 2..60 {
        apply(&mut applier, index, None);
    }
    // Expired: applied as new.
    assert_eq!(apply(&mut applier, 60, Some(rid)).response.revision, 60);
    applier = load(&db, retention);
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
    batch.set_user_metadata(state(7));
    db.write(batch).unwrap();

    let mut applier = load(&db, Retention::default());
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
            &Command {
                request_id: Some(rid),
                op: Op::Put(put(3)),
            },
            state(8),
        )
        .unwrap();
    assert_eq!(again.response, answer);
    assert!(again.events.is_empty());
    // Loading again finds nothing left to convert.
    load(&db, Retention::default());
    assert_eq!(record_events(&db), BTreeMap::from([(5, 2), (7, 1)]));
}

/// A database that records a newer format version is refused with an
/// error naming both versions, and left as it was; a new database gets
/// the current version.
#[test]
fn a_newer_format_is_refused() {
    let db = memory_db();
    load(&db, Retention::default());
    assert_eq!(
        db.get(FORMAT_VERSION_KEY).unwrap().as_deref(),
        Some(&FORMAT_VERSION.to_le_bytes()[..])
    );
    let mut batch = WriteBatch::new();
    batch.put(FORMAT_VERSION_KEY, (FORMAT_VERSION + 1).to_le_bytes());
    db.write(batch).unwrap();
    let err = Applier::load(&db, Retention::default(), 0)
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
    let mut applier = load(&db, Retention::default());
    let mut index = 0;
    let mut apply = |applier: &mut Applier, op: Op, request_id: Option<RequestId>| {
        index += 1;
        let cmd = Command { request_id, op };
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
    let mut applier = load(&db, Retention::default());
    for i in 0..3u8 {
        let put = PutOp {
            key: vec![b'c', i],
            value: vec![i; 1 << 20],
            prev_kv: false,
        };
        let cmd = Command {
            request_id: None,
            op: Op::Put(put),
        };
        let index = u64::from(i) + 1;
        applier.apply(&db, index, &cmd, state(index)).unwrap();
    }
    let read_all = Command {
        request_id: Some(RequestId {
            client_id: 9,
            seq: 1,
        }),
        op: Op::Txn(Txn {
            compares: Vec::new(),
            success: vec![TxnOp::Scan(ScanSpec::prefix(b"c", 0, false))],
            failure: Vec::new(),
        }),
    };
    let first = applier.apply(&db, 4, &read_all, state(4)).unwrap();
    match &first.response.result {
        OpResult::Txn { results, .. } => match &results[0] {
            // A scan in a transaction stops past 2 MiB of pairs.
            OpResult::Scan(page) => assert!(
                page.kvs.len() == 2 && page.more,
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
        let mut applier = load(&db, retention);
        // The model: events written per revision.
        let mut model: BTreeMap<u64, u32> = BTreeMap::new();
        let mut index = 0;
        for s in steps {
            let cmd = match s {
                Step::Reload => {
                    applier = load(&db, retention);
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
                None => applier.apply_empty(&db, index, state(index)).unwrap(),
                Some(op) => {
                    let applied = applier
                        .apply(&db, index, &Command { request_id: None, op }, state(index))
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
