//! Opening a database: replay the manifest, open the tables, replay the
//! WALs the manifest still needs, write what they held to L0, start a new
//! manifest and WAL, and delete every file a crash left behind.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::background::write_level0;
use super::cache::BlockCache;
use super::db::{table_file_name, Counters, Db, Inner, State, SuperVersion};
use super::key::SeqNo;
use super::manifest::{self, Manifest};
use super::memtable::MemTable;
use super::sst::{Table, TableOptions};
use super::version::{NewFile, Version, VersionEdit, NUM_LEVELS};
use super::wal::{self, WalWriter};
use super::{Error, Options, Result};
use cairn_io::fs::{DirLock, FileSystem};

/// What a file name in the database directory says it is.
#[derive(Debug, PartialEq, Eq)]
enum FileKind {
    Table(u64),
    Wal(u64),
    Manifest(u64),
    Other,
}

fn parse_name(name: &str) -> FileKind {
    let number = |s: &str| s.parse::<u64>().ok();
    if let Some(n) = name.strip_suffix(".sst").and_then(number) {
        FileKind::Table(n)
    } else if let Some(n) = name.strip_suffix(".wal").and_then(number) {
        FileKind::Wal(n)
    } else if let Some(n) = name.strip_prefix("MANIFEST-").and_then(number) {
        FileKind::Manifest(n)
    } else {
        FileKind::Other
    }
}

/// Opens (or creates) the database in `dir`: replays the manifest, opens
/// the live tables, replays the WALs the manifest still needs into an L0
/// table, writes a new manifest (with a new WAL when the WAL is on), and
/// removes every file the new manifest does not name.
pub(crate) fn open(dir: &Path, opts: Options) -> Result<Db> {
    validate(&opts)?;
    let fs = opts.fs.clone();
    super::fs::create_dir_durable(&*fs, dir).map_err(|e| Error::io(dir, e))?;
    let lock = fs
        .lock_dir(dir)
        .map_err(|e| Error::Open(format!("{}: {e}", dir.display())))?;
    let recovered = manifest::recover(fs.as_ref(), dir)?;
    if recovered.is_none() && !opts.create_if_missing {
        return Err(Error::Open(format!("no database in {}", dir.display())));
    }
    let r = recovered.unwrap_or(manifest::Recovered {
        next_file_number: 1,
        ..manifest::Recovered::default()
    });
    let kinds = list_files(fs.as_ref(), dir)?;
    // Numbers a crash may have handed out without recording them.
    let max_seen = kinds
        .iter()
        .filter_map(|(_, k)| match k {
            FileKind::Table(n) | FileKind::Wal(n) | FileKind::Manifest(n) => Some(*n),
            FileKind::Other => None,
        })
        .max()
        .unwrap_or(0);
    let mut next_file = r.next_file_number.max(max_seen + 1).max(1);

    let cache = Arc::new(BlockCache::new(opts.block_cache_bytes));
    let table_opts = TableOptions {
        block_bytes: opts.block_bytes,
        restart_interval: opts.block_restart_interval,
        bloom_bits_per_key: opts.bloom_bits_per_key,
        compression: opts.compression,
    };
    let (mut opened, mut edit) = open_tables(&fs, dir, &r, &cache)?;
    let replayed = replay_wals(fs.as_ref(), dir, &kinds, &r)?;
    // Write what the WALs held to L0, so the old WALs can go.
    if !replayed.mem.is_empty() {
        let number = next_file;
        next_file += 1;
        let (file, table) = write_level0(&replayed.mem, &fs, dir, number, table_opts, &cache)?;
        opened.insert(number, table);
        edit.added.push(file);
    }

    // A new WAL for new writes, then a new manifest that names it.
    let mut wal_writer = None;
    let mut wal_number = 0;
    if opts.wal {
        wal_number = next_file;
        next_file += 1;
        wal_writer = Some(WalWriter::create(fs.as_ref(), dir, wal_number)?);
    }
    let manifest_number = next_file;
    next_file += 1;
    let version = Arc::new(Version::default().apply(&edit, &opened));
    edit.log_number = Some(wal_number);
    edit.next_file_number = Some(next_file);
    edit.last_seq = Some(replayed.last_seq);
    edit.user_metadata = replayed.metadata.clone();
    let manifest = Manifest::create(fs.as_ref(), dir, manifest_number, &edit)?;
    remove_garbage(fs.as_ref(), dir, &kinds, |kind| match kind {
        FileKind::Table(n) => opened.contains_key(n),
        FileKind::Wal(n) => *n == wal_number,
        FileKind::Manifest(n) => *n == manifest_number,
        FileKind::Other => true,
    });

    let live = Live {
        version,
        wal_number,
        wal_writer,
        manifest,
        next_file,
        last_seq: replayed.last_seq,
        metadata: replayed.metadata,
    };
    Ok(assemble(dir, opts, table_opts, cache, lock, live))
}

/// Every file in `dir` with what its name says it is.
fn list_files(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<(String, FileKind)>> {
    let names = fs.list(dir).map_err(|e| Error::io(dir, e))?;
    Ok(names
        .into_iter()
        .map(|n| {
            let k = parse_name(&n);
            (n, k)
        })
        .collect())
}

/// Opens every table the manifest names, checking that each exists and
/// has the size the manifest recorded; the edit that adds them all.
fn open_tables(
    fs: &Arc<dyn FileSystem>,
    dir: &Path,
    r: &manifest::Recovered,
    cache: &Arc<BlockCache>,
) -> Result<(BTreeMap<u64, Arc<Table>>, VersionEdit)> {
    let mut opened = BTreeMap::new();
    let mut edit = VersionEdit::default();
    for (number, (level, summary)) in &r.files {
        let path = dir.join(table_file_name(*number));
        if !fs.exists(&path) {
            return Err(Error::corruption(&path, 0, "live table file is missing"));
        }
        let table = Table::open(fs.clone(), &path, *number, cache.clone())?;
        if table.size() != summary.size {
            return Err(Error::corruption(
                &path,
                0,
                "table size differs from the manifest",
            ));
        }
        opened.insert(*number, Arc::new(table));
        edit.added.push(NewFile {
            level: *level,
            number: *number,
            summary: summary.clone(),
        });
    }
    Ok((opened, edit))
}

/// What the WALs held beyond the manifest.
struct Replayed {
    mem: Arc<MemTable>,
    last_seq: SeqNo,
    metadata: Option<Vec<u8>>,
}

/// Replays the WALs the manifest still needs, oldest first, into one
/// memtable.
fn replay_wals(
    fs: &dyn FileSystem,
    dir: &Path,
    kinds: &[(String, FileKind)],
    r: &manifest::Recovered,
) -> Result<Replayed> {
    let mut wal_numbers: Vec<u64> = kinds
        .iter()
        .filter_map(|(_, k)| match k {
            FileKind::Wal(n) if *n >= r.log_number => Some(*n),
            _ => None,
        })
        .collect();
    wal_numbers.sort_unstable();
    let mut last_seq: SeqNo = r.last_seq;
    let mut metadata = r.user_metadata.clone();
    let mem = Arc::new(MemTable::new(0));
    for n in &wal_numbers {
        let path = dir.join(wal::file_name(*n));
        for (seq, mut batch) in wal::replay(fs, &path)? {
            let mut s = seq;
            for op in batch.iter() {
                mem.insert(op.key, s, op.kind, op.value);
                s += 1;
            }
            last_seq = last_seq.max(s.saturating_sub(1));
            if let Some(m) = batch.take_metadata() {
                mem.set_metadata(m.clone());
                metadata = Some(m);
            }
        }
    }
    Ok(Replayed {
        mem,
        last_seq,
        metadata,
    })
}

/// Removes every file of `kinds` that `live` does not keep (a crash's
/// leftovers; `CURRENT.tmp` too). Best effort: a file left behind is
/// removed at the next open.
fn remove_garbage(
    fs: &dyn FileSystem,
    dir: &Path,
    kinds: &[(String, FileKind)],
    live: impl Fn(&FileKind) -> bool,
) {
    for (name, kind) in kinds {
        let garbage = match kind {
            FileKind::Other => name == "CURRENT.tmp",
            k => !live(k),
        };
        if garbage {
            let _ = fs.remove(&dir.join(name));
        }
    }
}

/// What the new manifest made live.
struct Live {
    version: Arc<Version>,
    wal_number: u64,
    wal_writer: Option<WalWriter>,
    manifest: Manifest,
    next_file: u64,
    last_seq: SeqNo,
    metadata: Option<Vec<u8>>,
}

/// The open database over `live`, its background work scheduled.
fn assemble(
    dir: &Path,
    opts: Options,
    table_opts: TableOptions,
    cache: Arc<BlockCache>,
    lock: Box<dyn DirLock>,
    live: Live,
) -> Db {
    let mem = Arc::new(MemTable::new(live.wal_number));
    let state = State {
        mem: mem.clone(),
        imm: VecDeque::new(),
        version: live.version.clone(),
        next_file_number: live.next_file,
        last_seq: live.last_seq,
        durable_metadata: live.metadata,
        flush_scheduled: false,
        compaction_scheduled: false,
        wal_sync_scheduled: false,
        bg_error: None,
        shutting_down: false,
        compact_pointer: vec![Vec::new(); NUM_LEVELS],
        writers: VecDeque::new(),
        group_scratch: Vec::new(),
    };
    let sv = SuperVersion {
        mem,
        imm: Vec::new(),
        version: live.version,
    };
    let inner = Arc::new(Inner {
        dir: dir.to_path_buf(),
        table_opts,
        cache,
        state: Mutex::new(state),
        bg_cv: Condvar::new(),
        sv: Mutex::new(Arc::new(sv)),
        visible_seq: AtomicU64::new(live.last_seq),
        wal: Mutex::new(live.wal_writer),
        manifest: Mutex::new(live.manifest),
        snapshots: Mutex::new(BTreeMap::new()),
        counters: Counters::default(),
        dir_lock: Mutex::new(Some(lock)),
        opts,
    });
    {
        let mut st = inner.state.lock();
        inner.schedule(&mut st);
    }
    Db { inner }
}

fn validate(opts: &Options) -> Result<()> {
    let bad = |m: &str| Err(Error::InvalidArgument(m.to_owned()));
    if opts.memtable_bytes < 4096 || opts.memtable_bytes > 1 << 30 {
        return bad("memtable_bytes must be between 4 KiB and 1 GiB");
    }
    if opts.block_bytes < 64 || opts.block_restart_interval == 0 {
        return bad("block_bytes must be at least 64 and block_restart_interval positive");
    }
    if opts.l0_compaction_trigger == 0
        || opts.l0_slowdown_trigger < opts.l0_compaction_trigger
        || opts.l0_stop_trigger < opts.l0_slowdown_trigger
    {
        return bad("need 0 < l0_compaction_trigger <= l0_slowdown_trigger <= l0_stop_trigger");
    }
    if opts.max_immutable_memtables == 0 || opts.level_fanout < 2 || opts.l1_bytes == 0 {
        return bad("max_immutable_memtables, level_fanout >= 2 and l1_bytes must be positive");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_parse() {
        assert_eq!(parse_name("000012.sst"), FileKind::Table(12));
        assert_eq!(parse_name("000003.wal"), FileKind::Wal(3));
        assert_eq!(parse_name("MANIFEST-000007"), FileKind::Manifest(7));
        assert_eq!(parse_name("LOCK"), FileKind::Other);
        assert_eq!(parse_name("x.sst.tmp"), FileKind::Other);
    }
}
