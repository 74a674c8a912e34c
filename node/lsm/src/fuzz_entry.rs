//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): each
//! feeds arbitrary bytes to one of the engine's decoders, on the
//! simulated disk. Not an API. Every one must return, never panic.

use std::path::Path;
use std::sync::Arc;

use cairn_io::{FileSystem, MemFs};

use crate::cache::BlockCache;
use crate::iterator::InternalIterator;
use crate::key::lookup_key;
use crate::sst::{bloom, Table};

/// Entries read at most from one input.
const MAX_ENTRIES: usize = 100_000;

/// A simulated disk holding `data` at `path` (None: the disk refused,
/// which it never does).
fn file(data: &[u8], path: &Path) -> Option<Arc<MemFs>> {
    let fs = Arc::new(MemFs::new());
    let mut f = fs.create(path).ok()?;
    f.append(data).ok()?;
    Some(fs)
}

/// `data` as a table: footer, index, filter, every data block, and a
/// point lookup.
pub fn table(data: &[u8]) {
    let path = Path::new("/000001.sst");
    let Some(fs) = file(data, path) else {
        return;
    };
    let Ok(t) = Table::open(fs, path, 1, Arc::new(BlockCache::new(1 << 20))) else {
        return;
    };
    let t = Arc::new(t);
    let mut it = t.iter(false);
    let mut first = None;
    if it.seek_to_first().is_ok() {
        let mut n = 0;
        while it.valid() && n < MAX_ENTRIES {
            if first.is_none() {
                first = Some(it.key().to_vec());
            }
            let _ = it.value();
            if it.next().is_err() {
                break;
            }
            n += 1;
        }
    }
    let user_key = first
        .as_deref()
        .map_or(&b"k"[..], |k| &k[..k.len().saturating_sub(8)]);
    let _ = t.get(
        &lookup_key(user_key, u64::MAX >> 8),
        user_key,
        bloom::hash(user_key),
    );
    let mut it = t.iter(false);
    let _ = it.seek(&lookup_key(b"m", 1));
}

/// `data` as the manifest `CURRENT` names: every edit replayed.
pub fn manifest(data: &[u8]) {
    let Some(fs) = file(data, Path::new("/db/MANIFEST-000001")) else {
        return;
    };
    let Ok(mut cur) = fs.create(Path::new("/db/CURRENT")) else {
        return;
    };
    if cur.append(b"MANIFEST-000001\n").is_ok() {
        let _ = crate::manifest::recover(&*fs, Path::new("/db"));
    }
}

/// `data` as a write-ahead log: every batch replayed.
pub fn wal(data: &[u8]) {
    let path = Path::new("/db/000001.wal");
    let Some(fs) = file(data, path) else {
        return;
    };
    if let Ok(batches) = crate::wal::replay(&*fs, path) {
        for (_, b) in batches.iter().take(MAX_ENTRIES) {
            let _ = b.user_metadata();
            for op in b.iter() {
                let _ = op;
            }
        }
    }
}
