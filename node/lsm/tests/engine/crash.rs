//! Crash tests through the filesystem seam: the disk fills up at a random
//! byte (cutting a WAL record, a table or a manifest edit mid-way), the
//! machine loses power (unsynced data dropped, a random part of it torn),
//! and the engine must reopen cleanly with every synced write and nothing
//! half-written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use cairn_io::Faults;
use cairn_io::{InlineExecutor, MemFs};
use cairn_lsm::{Db, Error, Options, SyncMode};
use proptest::prelude::*;

fn options(fs: &MemFs, sync: SyncMode) -> Options {
    Options {
        fs: Arc::new(fs.clone()),
        executor: Arc::new(InlineExecutor),
        sync,
        memtable_bytes: 8 << 10,
        block_bytes: 512,
        target_file_bytes: 4 << 10,
        l0_compaction_trigger: 2,
        l0_slowdown_trigger: 4,
        l0_stop_trigger: 8,
        l1_bytes: 16 << 10,
        level_fanout: 4,
        ..Options::default()
    }
}

fn key(i: u32) -> Vec<u8> {
    format!("key-{i:06}").into_bytes()
}

fn value(i: u32, seed: u64) -> Vec<u8> {
    let len = ((u64::from(i) * 31 + seed) % 200) as usize;
    (0..len).map(|j| (i as usize + j) as u8).collect()
}

/// Writes keys 0, 1, 2, ... until the disk fills; returns how many were
/// acknowledged and how many were synced.
fn write_until_full(db: &Db, seed: u64, sync: SyncMode) -> (u32, u32) {
    let mut synced = 0;
    for i in 0.. {
        if let Err(e) = db.put(key(i), value(i, seed)) {
            assert!(
                matches!(e, Error::Io { .. } | Error::Poisoned(_)),
                "unexpected error {e}"
            );
            // Once failed, the database refuses further writes.
            assert!(matches!(db.put("after", "x"), Err(Error::Poisoned(_))));
            return (i, synced);
        }
        let synced_now = sync == SyncMode::Always || (i % 50 == 49 && db.sync_wal().is_ok());
        if synced_now {
            synced = i + 1;
        }
    }
    unreachable!()
}

fn check_recovered(fs: &MemFs, sync: SyncMode, seed: u64, acked: u32, synced: u32) {
    let db = Db::open(Path::new("/db"), options(fs, sync)).expect("reopen after crash");
    let mut n = 0u32;
    for kv in db.scan::<&[u8]>(..).unwrap() {
        let (k, v) = kv.unwrap();
        // Writes are recovered as a prefix: key n, and no gap before it.
        assert_eq!(k, key(n), "gap or stray key after crash");
        assert_eq!(v, value(n, seed), "half-written value for key {n}");
        n += 1;
    }
    assert!(
        n >= synced,
        "lost synced writes: recovered {n}, synced {synced}"
    );
    assert!(
        n <= acked + 1,
        "recovered {n} writes but only {acked} were attempted"
    );
    // The recovered database takes new writes and keeps them.
    db.put(key(n), value(n, seed)).unwrap();
    drop(db);
    let db = Db::open(Path::new("/db"), options(fs, sync)).unwrap();
    assert_eq!(
        db.get(key(n)).unwrap().as_deref(),
        Some(value(n, seed).as_slice())
    );
}

fn run(space_left: u64, seed: u64, torn: bool, sync: SyncMode) {
    let fs = MemFs::new();
    let db = Db::open(Path::new("/db"), options(&fs, sync)).unwrap();
    fs.set_faults(Faults {
        space_left: Some(space_left),
        fail_sync: false,
    });
    let (acked, synced) = write_until_full(&db, seed, sync);
    std::mem::forget(db); // power loss: no shutdown code runs
    fs.crash(torn, seed);
    fs.set_faults(Faults::default()); // space freed: the disk stays full until then
    check_recovered(&fs, sync, seed, acked, synced);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn disk_full_then_power_loss_keeps_every_synced_write(
        space_left in 200u64..300_000,
        seed: u64,
        torn: bool,
        mode in 0u8..3,
    ) {
        let sync = match mode {
            0 => SyncMode::Always,
            1 => SyncMode::Batched { bytes: 2048 },
            _ => SyncMode::None,
        };
        run(space_left, seed, torn, sync);
    }
}

#[test]
fn power_loss_right_after_a_flush_keeps_the_flushed_table() {
    let fs = MemFs::new();
    let db = Db::open(Path::new("/db"), options(&fs, SyncMode::Always)).unwrap();
    let mut n = 0;
    while db.stats().flushes == 0 {
        db.put(key(n), value(n, 7)).unwrap();
        n += 1;
    }
    assert_eq!(db.stats().level_files[0], 1);
    use cairn_lsm::FileSystem;
    eprintln!("before {:?}", fs.list(Path::new("/db")));
    std::mem::forget(db);
    fs.crash(false, 0);
    eprintln!("after {:?}", fs.list(Path::new("/db")));
    check_recovered(&fs, SyncMode::Always, 7, n, n);
}

#[test]
fn failed_fsync_stops_acknowledging_writes() {
    let fs = MemFs::new();
    let db = Db::open(Path::new("/db"), options(&fs, SyncMode::Always)).unwrap();
    for i in 0..10 {
        db.put(key(i), value(i, 1)).unwrap();
    }
    fs.set_faults(Faults {
        space_left: None,
        fail_sync: true,
    });
    assert!(matches!(
        db.put(key(10), value(10, 1)),
        Err(Error::Io { .. })
    ));
    fs.set_faults(Faults::default());
    // Even with a healthy disk again, the engine does not pretend the
    // failed write is durable: it stays read-only until reopened.
    assert!(matches!(
        db.put(key(11), value(11, 1)),
        Err(Error::Poisoned(_))
    ));
    assert_eq!(
        db.get(key(9)).unwrap().as_deref(),
        Some(value(9, 1).as_slice())
    );
    std::mem::forget(db);
    fs.crash(false, 0);
    check_recovered(&fs, SyncMode::Always, 1, 11, 10);
}
