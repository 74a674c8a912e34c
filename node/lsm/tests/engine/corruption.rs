//! Corruption tests on real files: a flipped byte in a WAL record, an SST
//! data block, an index block, a filter, the footer, the manifest or
//! CURRENT is reported as `Error::Corruption` naming the file, never as
//! wrong data and never as a panic.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use cairn_lsm::{Db, Error, Options};

fn opts() -> Options {
    Options {
        memtable_bytes: 1 << 20,
        ..Options::default()
    }
}

fn flip(path: &Path, offset: u64) {
    let mut data = std::fs::read(path).unwrap();
    data[offset as usize] ^= 0x20;
    std::fs::write(path, data).unwrap();
}

fn files_with(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| pred(p.file_name().unwrap().to_str().unwrap()))
        .collect();
    v.sort();
    v
}

fn assert_corruption(err: Error, file: &Path) {
    match err {
        Error::Corruption { file: f, .. } => assert_eq!(f, file),
        other => panic!("expected corruption in {}, got {other}", file.display()),
    }
}

/// A database with one flushed table of 2000 keys.
fn table_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    for i in 0..2000u32 {
        db.put(
            format!("key{i:05}"),
            format!("value-{i}-{}", "x".repeat(i as usize % 50)),
        )
        .unwrap();
    }
    db.flush().unwrap();
    drop(db);
    let sst = files_with(dir.path(), |n| n.ends_with(".sst")).remove(0);
    (dir, sst)
}

/// (filter offset, index offset, footer offset) of a table.
fn layout(sst: &Path) -> (u64, u64, u64) {
    let data = std::fs::read(sst).unwrap();
    let f = data.len() - 56;
    let u = |i: usize| u64::from_le_bytes(data[f + i..f + i + 8].try_into().unwrap());
    (u(0), u(16), f as u64)
}

#[test]
fn wal_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    for i in 0..100u32 {
        db.put(format!("k{i}"), "v").unwrap();
    }
    drop(db); // the writes stay in the WAL
    let wal = files_with(dir.path(), |n| n.ends_with(".wal")).remove(0);
    flip(&wal, 30); // inside the first record's payload
    assert_corruption(Db::open(dir.path(), opts()).err().unwrap(), &wal);
    // Nothing was changed by the failed open: the damage is still reported.
    assert_corruption(Db::open(dir.path(), opts()).err().unwrap(), &wal);
}

#[test]
fn sst_data_block() {
    let (dir, sst) = table_db();
    flip(&sst, 100);
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_corruption(db.get("key00000").unwrap_err(), &sst);
    let mut scan = db.scan::<&[u8]>(..).unwrap();
    assert_corruption(scan.next().unwrap().unwrap_err(), &sst);
    // Keys in intact blocks are still served.
    assert!(db.get("key01999").unwrap().is_some());
}

#[test]
fn sst_index_block() {
    let (dir, sst) = table_db();
    let (_, index, _) = layout(&sst);
    flip(&sst, index + 3);
    assert_corruption(Db::open(dir.path(), opts()).err().unwrap(), &sst);
}

#[test]
fn sst_filter_block() {
    let (dir, sst) = table_db();
    let (filter, _, _) = layout(&sst);
    flip(&sst, filter + 5);
    assert_corruption(Db::open(dir.path(), opts()).err().unwrap(), &sst);
}

#[test]
fn sst_footer() {
    for at in [0u64, 20, 40, 44, 50] {
        let (dir, sst) = table_db();
        let (_, _, footer) = layout(&sst);
        flip(&sst, footer + at);
        assert_corruption(Db::open(dir.path(), opts()).err().unwrap(), &sst);
    }
}

#[test]
fn truncated_sst() {
    let (dir, sst) = table_db();
    let len = std::fs::metadata(&sst).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&sst)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert_corruption(Db::open(dir.path(), opts()).err().unwrap(), &sst);
}

#[test]
fn manifest_record() {
    let (dir, _) = table_db();
    let manifest = files_with(dir.path(), |n| n.starts_with("MANIFEST-")).remove(0);
    flip(&manifest, 20);
    assert_corruption(Db::open(dir.path(), opts()).err().unwrap(), &manifest);
}

#[test]
fn current_file() {
    let (dir, _) = table_db();
    let current = dir.path().join("CURRENT");
    std::fs::write(&current, "garbage\n").unwrap();
    assert_corruption(Db::open(dir.path(), opts()).err().unwrap(), &current);
}

#[test]
fn random_flips_never_return_wrong_data() {
    // Flip every 97th byte of a table in turn: each read either returns
    // the right value, or a Corruption error; never a wrong value.
    let (dir, sst) = table_db();
    let pristine = std::fs::read(&sst).unwrap();
    for offset in (0..pristine.len() as u64).step_by(97) {
        std::fs::write(&sst, &pristine).unwrap();
        flip(&sst, offset);
        let db = match Db::open(dir.path(), opts()) {
            Ok(db) => db,
            Err(e) => {
                assert!(e.is_corruption(), "offset {offset}: {e}");
                continue;
            }
        };
        for i in (0..2000u32).step_by(37) {
            let want = format!("value-{i}-{}", "x".repeat(i as usize % 50));
            match db.get(format!("key{i:05}")) {
                Ok(v) => assert_eq!(v.as_deref(), Some(want.as_bytes()), "offset {offset}"),
                Err(e) => assert!(e.is_corruption(), "offset {offset}: {e}"),
            }
        }
    }
}
