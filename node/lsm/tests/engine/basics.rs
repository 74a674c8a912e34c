#![allow(clippy::unwrap_used)]
//! End-to-end behaviour of the storage engine on real files.

use std::sync::Arc;

use cairn_io::InlineExecutor;
use cairn_lsm::{Db, Error, Options, SyncMode, WriteBatch};

fn small_opts() -> Options {
    Options {
        memtable_bytes: 32 << 10,
        target_file_bytes: 32 << 10,
        l1_bytes: 128 << 10,
        block_cache_bytes: 1 << 20,
        ..Options::default()
    }
}

fn collect(db: &Db) -> Vec<(Vec<u8>, Vec<u8>)> {
    db.scan::<&[u8]>(..)
        .unwrap()
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

#[test]
fn put_get_delete_scan_across_flushes_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_opts()).unwrap();
    for i in 0..5000u32 {
        db.put(format!("key{i:06}"), format!("value{i}")).unwrap();
    }
    for i in (0..5000u32).step_by(3) {
        db.delete(format!("key{i:06}")).unwrap();
    }
    db.flush().unwrap();
    db.compact().unwrap();
    let stats = db.stats();
    assert!(stats.flushes > 0, "{stats:?}");
    assert!(
        stats.level_files[1..].iter().sum::<usize>() > 0,
        "{stats:?}"
    );
    assert_eq!(
        db.get("key000001").unwrap().as_deref(),
        Some(&b"value1"[..])
    );
    assert_eq!(db.get("key000003").unwrap(), None);
    assert_eq!(db.get("nope").unwrap(), None);
    let all = collect(&db);
    assert_eq!(all.len(), 5000 - 1667);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    let range: Vec<_> = db
        .scan("key000010".as_bytes().."key000020".as_bytes())
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let keys: Vec<_> = range
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(
        keys,
        [
            "key000010",
            "key000011",
            "key000013",
            "key000014",
            "key000016",
            "key000017",
            "key000019"
        ]
    );
    let prefix = db.scan_prefix("key00010").unwrap().count();
    assert_eq!(prefix, 7); // key000100..=key000109 without 102, 105 and 108
}

#[test]
fn snapshot_sees_a_frozen_view_through_flush_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_opts()).unwrap();
    db.put("a", "1").unwrap();
    db.put("b", "1").unwrap();
    let snap = db.snapshot();
    db.put("a", "2").unwrap();
    db.delete("b").unwrap();
    db.put("c", "2").unwrap();
    for i in 0..3000u32 {
        db.put(format!("fill{i:05}"), [7u8; 64]).unwrap();
    }
    db.flush().unwrap();
    db.compact().unwrap();
    assert_eq!(snap.get("a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(snap.get("b").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(snap.get("c").unwrap(), None);
    let view: Vec<_> = snap.scan_prefix("").unwrap().map(Result::unwrap).collect();
    assert_eq!(view.len(), 2);
    assert_eq!(db.get("a").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(db.get("b").unwrap(), None);
}

#[test]
fn reopen_recovers_wal_and_tables() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), small_opts()).unwrap();
        for i in 0..2000u32 {
            db.put(format!("k{i:05}"), format!("v{i}")).unwrap();
        }
        db.delete("k00007").unwrap();
    }
    let db = Db::open(dir.path(), small_opts()).unwrap();
    assert_eq!(collect(&db).len(), 1999);
    assert_eq!(db.get("k01999").unwrap().as_deref(), Some(&b"v1999"[..]));
    assert_eq!(db.get("k00007").unwrap(), None);
    // New writes get sequence numbers after the recovered ones.
    let before = db.last_seq();
    assert!(before >= 2001);
    assert!(db.put("new", "x").unwrap() > before);
}

#[test]
fn second_open_of_one_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _db = Db::open(dir.path(), small_opts()).unwrap();
    let err = Db::open(dir.path(), small_opts()).err().unwrap();
    assert!(matches!(err, Error::Open(_)), "{err}");
}

#[test]
fn without_wal_only_flushed_data_and_its_metadata_survive() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options {
        wal: false,
        ..small_opts()
    };
    let db = Db::open(dir.path(), opts()).unwrap();
    let mut b = WriteBatch::new();
    b.put("x", "1").set_user_metadata(b"applied=1".to_vec());
    db.write(b).unwrap();
    db.flush().unwrap();
    assert_eq!(
        db.durable_user_metadata().as_deref(),
        Some(&b"applied=1"[..])
    );
    let mut b = WriteBatch::new();
    b.put("y", "2").set_user_metadata(b"applied=2".to_vec());
    db.write(b).unwrap();
    assert_eq!(db.user_metadata().as_deref(), Some(&b"applied=2"[..]));
    assert_eq!(
        db.durable_user_metadata().as_deref(),
        Some(&b"applied=1"[..])
    );
    // Simulate a crash: leak the handle so nothing is flushed on drop.
    std::mem::forget(db);
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
    }
    let db = Db::open(copy.path(), opts()).unwrap();
    assert_eq!(db.get("x").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(db.get("y").unwrap(), None);
    assert_eq!(
        db.durable_user_metadata().as_deref(),
        Some(&b"applied=1"[..])
    );
}

#[test]
fn checkpoint_opens_as_a_database_with_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), small_opts()).unwrap();
    for i in 0..3000u32 {
        let mut b = WriteBatch::new();
        b.put(format!("k{i:05}"), format!("v{i}"));
        b.set_user_metadata(i.to_be_bytes().to_vec());
        db.write(b).unwrap();
    }
    let cp = dir.path().join("..").join(format!(
        "{}-checkpoint",
        dir.path().file_name().unwrap().to_string_lossy()
    ));
    let info = db.checkpoint(&cp).unwrap();
    assert!(info.files > 0);
    assert_eq!(
        info.user_metadata.as_deref(),
        Some(&2999u32.to_be_bytes()[..])
    );
    assert!(info.last_seq >= 3000);
    db.put("after", "checkpoint").unwrap();
    db.compact().unwrap();
    drop(db);
    let restored = Db::open(&cp, small_opts()).unwrap();
    assert_eq!(collect(&restored).len(), 3000);
    assert_eq!(restored.get("after").unwrap(), None);
    assert_eq!(
        restored.durable_user_metadata().as_deref(),
        Some(&2999u32.to_be_bytes()[..])
    );
    drop(restored);
    std::fs::remove_dir_all(&cp).unwrap();
}

#[test]
fn concurrent_durable_writers_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(
        Db::open(
            dir.path(),
            Options {
                sync: SyncMode::Always,
                ..small_opts()
            },
        )
        .unwrap(),
    );
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..200u32 {
                    db.put(format!("t{t:02}-{i:04}"), [1u8; 100]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = db.stats();
    assert_eq!(collect(&db).len(), 3200);
    assert!(stats.wal_syncs <= stats.wal_writes);
    assert!(
        stats.wal_syncs < 3200,
        "no group commit: {} syncs",
        stats.wal_syncs
    );
}

#[test]
fn oversized_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        max_key_bytes: 16,
        max_value_bytes: 32,
        ..small_opts()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    let mut b = WriteBatch::new();
    b.put("ok", "v").put("k".repeat(17), "v");
    let err = db.write(b).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("limit of 16")),
        "{err}"
    );
    let err = db.put("k", "v".repeat(33)).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("limit of 32")),
        "{err}"
    );
    assert_eq!(db.get("ok").unwrap(), None);
    assert_eq!(db.last_seq(), 0);
}

#[test]
fn inline_executor_runs_background_work_on_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        executor: Arc::new(InlineExecutor),
        ..small_opts()
    };
    let db = Db::open(dir.path(), opts).unwrap();
    for i in 0..20_000u32 {
        db.put(i.to_be_bytes(), [3u8; 50]).unwrap();
    }
    let stats = db.stats();
    assert!(stats.flushes > 10, "{stats:?}");
    assert!(stats.compactions > 0, "{stats:?}");
    assert_eq!(stats.immutable_memtables, 0);
    assert!(stats.level_files[0] < 4, "{stats:?}");
    assert_eq!(collect(&db).len(), 20_000);
}

#[test]
fn reopen_right_after_drop_never_finds_the_directory_locked() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20u32 {
        let db = Db::open(dir.path(), small_opts()).unwrap();
        for i in 0..500u32 {
            db.put(format!("r{round:02}-{i:04}"), [9u8; 64]).unwrap();
        }
        db.flush().unwrap();
        drop(db); // background compaction threads may still be finishing
    }
    let db = Db::open(dir.path(), small_opts()).unwrap();
    assert_eq!(collect(&db).len(), 20 * 500);
}
