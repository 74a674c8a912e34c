//! Model test: random operations against the engine and a `BTreeMap`,
//! compared after every step, across flushes, compactions, snapshots,
//! reopens and crashes (every write is synced, so a crash loses nothing).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use cairn_io::{InlineExecutor, MemFs};
use cairn_lsm::{Compression, Db, KvPair, Options, Snapshot, WriteBatch};
use proptest::prelude::*;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, Vec<u8>),
    Delete(u8),
    Batch(Vec<(u8, Option<Vec<u8>>)>),
    Scan(u8, u8),
    TakeSnapshot,
    CheckSnapshot(usize),
    DropSnapshot(usize),
    Flush,
    Compact,
    CompactAll,
    Reopen,
    Crash(u64),
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k:03}").into_bytes()
}

fn op() -> impl Strategy<Value = Op> {
    let value = prop::collection::vec(any::<u8>(), 0..120);
    prop_oneof![
        30 => (0u8..200, value.clone()).prop_map(|(k, v)| Op::Put(k, v)),
        10 => (0u8..200).prop_map(Op::Delete),
        8 => prop::collection::vec((0u8..200, prop::option::of(value)), 1..8).prop_map(Op::Batch),
        6 => (0u8..200, 0u8..200).prop_map(|(a, b)| Op::Scan(a.min(b), a.max(b))),
        3 => Just(Op::TakeSnapshot),
        4 => (0usize..8).prop_map(Op::CheckSnapshot),
        2 => (0usize..8).prop_map(Op::DropSnapshot),
        3 => Just(Op::Flush),
        2 => Just(Op::Compact),
        1 => Just(Op::CompactAll),
        2 => Just(Op::Reopen),
        2 => any::<u64>().prop_map(Op::Crash),
    ]
}

fn options(fs: &MemFs) -> Options {
    Options {
        fs: Arc::new(fs.clone()),
        executor: Arc::new(InlineExecutor),
        memtable_bytes: 4096,
        block_bytes: 256,
        target_file_bytes: 1024,
        l0_compaction_trigger: 2,
        l0_slowdown_trigger: 4,
        l0_stop_trigger: 6,
        l1_bytes: 4096,
        level_fanout: 2,
        block_cache_bytes: 64 << 10,
        compression: Compression::Lz4,
        ..Options::default()
    }
}

fn scan_db(it: impl Iterator<Item = cairn_lsm::Result<KvPair>>) -> Vec<(Vec<u8>, Vec<u8>)> {
    it.map(|kv| {
        let (k, v) = kv.unwrap();
        (k.to_vec(), v.to_vec())
    })
    .collect()
}

fn scan_model(m: &Model, lo: &[u8], hi: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    m.range::<[u8], _>((Bound::Included(lo), Bound::Included(hi)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn check_all(db: &Db, model: &Model) {
    let all = scan_db(db.scan::<&[u8]>(..).unwrap());
    let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(all, want, "full scan differs from the model");
}

fn run(ops: Vec<Op>) {
    let fs = MemFs::new();
    let dir = Path::new("/db");
    let mut db = Some(Db::open(dir, options(&fs)).unwrap());
    let mut model = Model::new();
    let mut snaps: Vec<(Snapshot, Model)> = Vec::new();
    for op in ops {
        let d = db.as_ref().unwrap();
        match op {
            Op::Put(k, v) => {
                d.put(key(k), &v).unwrap();
                model.insert(key(k), v);
            }
            Op::Delete(k) => {
                d.delete(key(k)).unwrap();
                model.remove(&key(k));
            }
            Op::Batch(ops) => {
                let mut b = WriteBatch::new();
                for (k, v) in ops {
                    match v {
                        Some(v) => {
                            b.put(key(k), &v);
                            model.insert(key(k), v);
                        }
                        None => {
                            b.delete(key(k));
                            model.remove(&key(k));
                        }
                    }
                }
                d.write(b).unwrap();
            }
            Op::Scan(a, b) => {
                let got = scan_db(d.scan(key(a)..=key(b)).unwrap());
                assert_eq!(got, scan_model(&model, &key(a), &key(b)));
            }
            Op::TakeSnapshot => snaps.push((d.snapshot(), model.clone())),
            Op::CheckSnapshot(i) => {
                if let Some((s, m)) = snaps.get(i % snaps.len().max(1)) {
                    let got = scan_db(s.scan::<&[u8]>(..).unwrap());
                    let want: Vec<_> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    assert_eq!(got, want, "snapshot view differs");
                    for (k, v) in m.iter().take(5) {
                        assert_eq!(s.get(k).unwrap().as_deref(), Some(v.as_slice()));
                    }
                }
            }
            Op::DropSnapshot(i) => {
                if !snaps.is_empty() {
                    let n = snaps.len();
                    snaps.remove(i % n);
                }
            }
            Op::Flush => d.flush().unwrap(),
            Op::Compact => d.compact().unwrap(),
            Op::CompactAll => d.compact_all().unwrap(),
            Op::Reopen => {
                snaps.clear();
                drop(db.take());
                db = Some(Db::open(dir, options(&fs)).unwrap());
            }
            Op::Crash(seed) => {
                snaps.clear();
                // A crash runs no shutdown code at all.
                std::mem::forget(db.take());
                fs.crash(true, seed);
                db = Some(Db::open(dir, options(&fs)).unwrap());
            }
        }
        let d = db.as_ref().unwrap();
        check_all(d, &model);
        for k in [0u8, 17, 199] {
            assert_eq!(
                d.get(key(k)).unwrap().as_deref(),
                model.get(&key(k)).map(Vec::as_slice)
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_btreemap(ops in prop::collection::vec(op(), 1..400)) {
        run(ops);
    }
}
