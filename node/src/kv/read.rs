//! Reads: one pair, a page of a range, the watch history. Readers go to
//! the database directly; only the applier writes.

use std::collections::BTreeMap;

use cairn_lsm::Db;

use super::command::{Kv, ScanResult, ScanSpec};
use super::error::{Result, StoreError};
use super::layout::{
    data_key, decode, decode_kv, record_key, record_revision, u64_at, Record, WatchEvent, DATA,
    HISTORY_START, KV_HEADER,
};
use super::limits::{pair_cost, MAX_EVENT_BYTES};

/// The most pairs a scan (or a prefix delete's answer) returns in one page.
pub const MAX_PAGE: u32 = 10_000;

/// Reads one key.
pub fn get(db: &Db, key: &[u8]) -> Result<Option<Kv>> {
    match db.get(data_key(key))? {
        Some(rec) => Ok(Some(decode_kv(key, &rec, false)?)),
        None => Ok(None),
    }
}

/// The engine keys of the pairs in `spec`'s range: `[start, end)`.
fn data_range(spec: &ScanSpec) -> (Vec<u8>, Vec<u8>) {
    let end = if spec.end.is_empty() {
        vec![DATA + 1]
    } else {
        data_key(&spec.end)
    };
    (data_key(&spec.start), end)
}

/// Reads a page of a range: at most the spec's limit (and [`MAX_PAGE`])
/// pairs, and at most `max_bytes` of pairs (keys, values and
/// `kv::limits::PAIR_OVERHEAD_BYTES` each; the first pair comes whatever
/// its size, so a page always makes progress); `more` says the range goes
/// on.
pub fn scan(db: &Db, spec: &ScanSpec, max_bytes: u64) -> Result<ScanResult> {
    scan_merged(db, spec, &BTreeMap::new(), max_bytes)
}

/// A scan of the database with `overlay` (pending writes of the command
/// being applied) laid over it, bounded like [`scan`].
pub(crate) fn scan_merged(
    db: &Db,
    spec: &ScanSpec,
    overlay: &BTreeMap<Vec<u8>, Option<Kv>>,
    max_bytes: u64,
) -> Result<ScanResult> {
    let limit = if spec.limit == 0 || spec.limit > MAX_PAGE {
        MAX_PAGE
    } else {
        spec.limit
    } as usize;
    let in_range = |k: &[u8]| k >= &spec.start[..] && (spec.end.is_empty() || k < &spec.end[..]);
    let (start, end) = data_range(spec);
    // Overlay deletions can hide stored keys: read enough to fill the page.
    let overlay_in_range: Vec<(&Vec<u8>, &Option<Kv>)> =
        overlay.iter().filter(|(k, _)| in_range(k)).collect();
    let want = limit + 1 + overlay_in_range.len();
    let mut merged: BTreeMap<Vec<u8>, Kv> = BTreeMap::new();
    let mut stored_exhausted = true;
    // Bytes of stored pairs read that the overlay does not delete: once
    // they pass the bound, the page is full.
    let mut stored_bytes = 0u64;
    for item in db.scan(start..end)? {
        let (k, v) = item?;
        if merged.len() >= want || stored_bytes > max_bytes {
            stored_exhausted = false;
            break;
        }
        let user_key = &k[1..];
        let kv = decode_kv(user_key, &v, spec.keys_only)?;
        if !matches!(overlay.get(user_key), Some(None)) {
            stored_bytes += pair_cost(kv.key.len(), kv.value.len());
        }
        merged.insert(user_key.to_vec(), kv);
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
    let mut kvs = Vec::new();
    let mut bytes = 0u64;
    let mut more = !stored_exhausted;
    for kv in merged.into_values() {
        let cost = pair_cost(kv.key.len(), kv.value.len());
        if kvs.len() == limit || (!kvs.is_empty() && bytes + cost > max_bytes) {
            more = true;
            break;
        }
        bytes += cost;
        kvs.push(kv);
    }
    Ok(ScanResult { kvs, more })
}

/// What deleting every key under a prefix would cost, counted up to the
/// bounds (the counting stops once either is passed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixCost {
    /// Keys counted.
    pub keys: u64,
    /// Bytes of their delete events.
    pub event_bytes: u64,
    /// Bytes of the pairs, with their values (counted with `prev_kv`).
    pub answer_bytes: u64,
}

/// Counts the keys under `prefix` and what deleting them costs: their
/// delete events, and with `with_values` the answer holding them, until
/// the events pass `kv::limits::MAX_EVENT_BYTES` or the answer passes
/// `max_answer_bytes`.
pub fn prefix_cost(
    db: &Db,
    prefix: &[u8],
    with_values: bool,
    max_answer_bytes: u64,
) -> Result<PrefixCost> {
    let (start, end) = data_range(&ScanSpec::prefix(prefix, 0, !with_values));
    let mut cost = PrefixCost::default();
    for item in db.scan(start..end)? {
        let (k, v) = item?;
        let key_len = k.len() - 1;
        cost.keys += 1;
        cost.event_bytes += pair_cost(key_len, 0);
        if with_values {
            cost.answer_bytes += pair_cost(key_len, v.len().saturating_sub(KV_HEADER));
        }
        if cost.event_bytes > MAX_EVENT_BYTES || cost.answer_bytes > max_answer_bytes {
            break;
        }
    }
    Ok(cost)
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
        // A record with a request id ends with its session floor.
        let record: Record = decode(&k, &v, false)?;
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
