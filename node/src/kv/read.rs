//! Reads: one pair, a page of a range, the watch history. Readers go to
//! the database directly; only the applier writes.

use std::collections::BTreeMap;

use cairn_lsm::Db;

use super::command::{Kv, ScanResult, ScanSpec};
use super::error::{Result, StoreError};
use super::layout::{
    data_key, decode, decode_kv, record_key, record_revision, u64_at, Record, WatchEvent, DATA,
    HISTORY_START,
};

/// The most pairs a scan (or a prefix delete's answer) returns in one page.
pub const MAX_PAGE: u32 = 10_000;

/// Reads one key.
pub fn get(db: &Db, key: &[u8]) -> Result<Option<Kv>> {
    match db.get(data_key(key))? {
        Some(rec) => Ok(Some(decode_kv(key, &rec, false)?)),
        None => Ok(None),
    }
}

/// Reads a page of a range.
pub fn scan(db: &Db, spec: &ScanSpec) -> Result<ScanResult> {
    scan_merged(db, spec, &BTreeMap::new())
}

/// A scan of the database with `overlay` (pending writes of the command
/// being applied) laid over it.
pub(crate) fn scan_merged(
    db: &Db,
    spec: &ScanSpec,
    overlay: &BTreeMap<Vec<u8>, Option<Kv>>,
) -> Result<ScanResult> {
    let limit = if spec.limit == 0 || spec.limit > MAX_PAGE {
        MAX_PAGE
    } else {
        spec.limit
    } as usize;
    let in_range = |k: &[u8]| k >= &spec.start[..] && (spec.end.is_empty() || k < &spec.end[..]);
    let start = data_key(&spec.start);
    let end = if spec.end.is_empty() {
        vec![DATA + 1]
    } else {
        data_key(&spec.end)
    };
    // Overlay deletions can hide stored keys: read enough to fill the page.
    let overlay_in_range: Vec<(&Vec<u8>, &Option<Kv>)> =
        overlay.iter().filter(|(k, _)| in_range(k)).collect();
    let want = limit + 1 + overlay_in_range.len();
    let mut merged: BTreeMap<Vec<u8>, Kv> = BTreeMap::new();
    let mut stored_exhausted = true;
    for item in db.scan(start..end)? {
        let (k, v) = item?;
        if merged.len() >= want {
            stored_exhausted = false;
            break;
        }
        let user_key = &k[1..];
        merged.insert(user_key.to_vec(), decode_kv(user_key, &v, spec.keys_only)?);
    }
    let last_stored = merged.keys().next_back().cloned();
    for (k, v) in overlay_in_range {
        // Past the last stored key read, an overlay key is only certain
        // when the stored scan reached the end of the range.
        if !stored_exhausted && last_stored.as_ref().is_some_and(|l| k > l) {
            continue;
        }
        match v {
            Some(kv) => {
                let mut kv = kv.clone();
                if spec.keys_only {
                    kv.value.clear();
                }
                merged.insert(k.clone(), kv);
            }
            None => {
                merged.remove(k);
            }
        }
    }
    let more = merged.len() > limit || !stored_exhausted;
    let kvs: Vec<Kv> = merged.into_values().take(limit).collect();
    Ok(ScanResult { kvs, more })
}

/// The oldest revision the watch history still holds.
pub fn history_start(db: &Db) -> Result<u64> {
    Ok(match db.get(HISTORY_START)? {
        Some(b) if b.len() == 8 => u64_at(&b, 0),
        Some(b) => {
            return Err(StoreError::Corrupt {
                key: HISTORY_START.to_vec(),
                reason: format!("{} bytes, want 8", b.len()),
            })
        }
        None => 1,
    })
}

/// The watch history from `from` (inclusive) to `to` (inclusive): one
/// `(revision, events)` per revision with events matching `filter`, at
/// most `max_revisions` of them.
pub fn history(
    db: &Db,
    from: u64,
    to: u64,
    max_revisions: usize,
    filter: impl Fn(&[u8]) -> bool,
) -> Result<Vec<(u64, Vec<WatchEvent>)>> {
    let mut out: Vec<(u64, Vec<WatchEvent>)> = Vec::new();
    if from > to {
        return Ok(out);
    }
    let end = record_key(to.saturating_add(1));
    for item in db.scan(record_key(from)..end)? {
        let (k, v) = item?;
        let rev = record_revision(&k)?;
        let record: Record = decode(&k, &v, true)?;
        let events: Vec<WatchEvent> = record
            .events
            .into_iter()
            .filter(|ev| filter(&ev.kv.key))
            .collect();
        if events.is_empty() {
            continue;
        }
        if out.len() >= max_revisions {
            break;
        }
        out.push((rev, events));
    }
    Ok(out)
}
