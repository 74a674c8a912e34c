//! Enough data for at least three levels, with overwrites and deletes:
//! every read matches a model, and compaction gives the space back.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use cairn_lsm::{Compression, Db, Options, SyncMode};

fn opts() -> Options {
    Options {
        sync: SyncMode::None,
        memtable_bytes: 256 << 10,
        target_file_bytes: 256 << 10,
        l1_bytes: 512 << 10,
        level_fanout: 4,
        compression: Compression::None,
        block_cache_bytes: 4 << 20,
        ..Options::default()
    }
}

/// A pseudo-random, incompressible value for (key, round).
fn value(k: u32, round: u32) -> Vec<u8> {
    let mut x = u64::from(k) << 32 | u64::from(round) | 1;
    (0..100)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn dir_table_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sst"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn three_levels_with_overwrites_and_deletes_reclaim_space() {
    const KEYS: u32 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let mut model = BTreeMap::new();
    for k in 0..KEYS {
        // Spread the keys so every level gets a wide range.
        let key = format!("{:08x}", k.wrapping_mul(2_654_435_761)).into_bytes();
        db.put(&key, value(k, 0)).unwrap();
        model.insert(key, value(k, 0));
    }
    db.flush().unwrap();
    db.compact().unwrap();
    let s = db.stats();
    let deep = s.level_files.iter().skip(1).filter(|&&n| n > 0).count();
    assert!(deep >= 3, "expected at least 3 levels below L0: {s:?}");
    let full_bytes = s.total_table_bytes();

    // Overwrite every key twice, then delete three quarters of them.
    for round in 1..=2 {
        for (k, (key, v)) in (0u32..).zip(model.iter_mut()) {
            *v = value(k, round);
            db.put(key, &*v).unwrap();
        }
    }
    let doomed: Vec<Vec<u8>> = model
        .keys()
        .enumerate()
        .filter(|(i, _)| i % 4 != 0)
        .map(|(_, k)| k.clone())
        .collect();
    for key in &doomed {
        db.delete(key).unwrap();
        model.remove(key);
    }
    db.flush().unwrap();
    db.compact().unwrap();
    let before_full_compaction = db.stats().total_table_bytes();
    db.compact_all().unwrap();

    // Every read matches the model.
    let all: Vec<(Vec<u8>, Vec<u8>)> = db
        .scan::<&[u8]>(..)
        .unwrap()
        .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
        .collect();
    let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert!(
        all == want,
        "scan differs from the model ({} vs {} keys)",
        all.len(),
        want.len()
    );
    for key in doomed.iter().step_by(97) {
        assert_eq!(db.get(key).unwrap(), None);
    }
    for (key, v) in model.iter().step_by(89) {
        assert_eq!(db.get(key).unwrap().as_deref(), Some(v.as_slice()));
    }

    // Space: three times the data was written and three quarters deleted;
    // what stays on disk is bounded, and no obsolete file is left behind.
    let s = db.stats();
    assert!(s.compaction_bytes_written > 0);
    let live = s.total_table_bytes();
    // A quarter of the keys survive; allow for per-table overhead.
    assert!(
        live < full_bytes / 3 && live < before_full_compaction / 3,
        "space not reclaimed: {live} bytes live, {before_full_compaction} before the full \
         compaction, {full_bytes} for the first copy; {s:?}"
    );
    assert_eq!(s.level_files.iter().filter(|&&n| n > 0).count(), 1, "{s:?}");
    assert_eq!(
        dir_table_bytes(dir.path()),
        live,
        "obsolete table files left on disk"
    );
    drop(db);

    // And it all survives a reopen.
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(db.scan::<&[u8]>(..).unwrap().count(), model.len());
}
