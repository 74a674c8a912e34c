//! The in-memory form of a table's index block: one entry per data block,
//! searched without touching the block encoding.
//!
//! Every user key of a table shares the prefix common to its smallest and
//! largest key; each entry keeps the next 8 bytes of its key as a
//! big-endian integer (the discriminator), so a binary search mostly
//! compares integers in one contiguous array instead of chasing keys.

use std::cmp::Ordering;

use super::block::Block;
use super::BlockHandle;
use crate::key;

struct Entry {
    key_end: u32,
    handle: BlockHandle,
}

/// A table's index: the last internal key of each data block and where
/// the block lives.
pub(crate) struct Index {
    /// Length of the user-key prefix every key of the table shares.
    skip: usize,
    prefix: Vec<u8>,
    /// Discriminators, searched first: a dense array that stays in cache.
    discs: Vec<u64>,
    entries: Vec<Entry>,
    keys: Vec<u8>,
}

fn disc(user_key: &[u8], skip: usize) -> u64 {
    let mut b = [0u8; 8];
    let tail = user_key.get(skip..).unwrap_or_default();
    let n = tail.len().min(8);
    b[..n].copy_from_slice(&tail[..n]);
    u64::from_be_bytes(b)
}

impl Index {
    /// Decodes an index block; `None` if an entry is malformed.
    pub fn decode(block: &std::sync::Arc<Block>) -> Option<Self> {
        let mut it = block.iter();
        it.first();
        let mut raw: Vec<(Vec<u8>, BlockHandle)> = Vec::new();
        while it.is_valid() {
            let handle = BlockHandle::decode(it.current_value())?;
            raw.push((it.current_key().to_vec(), handle));
            it.advance();
        }
        if it.error().is_some() {
            return None;
        }
        let (first, last) = (raw.first()?, raw.last()?);
        let (lo, hi) = (key::user_key(&first.0), key::user_key(&last.0));
        let skip = lo.iter().zip(hi).take_while(|(a, b)| a == b).count();
        let prefix = lo[..skip].to_vec();
        let mut keys = Vec::with_capacity(raw.iter().map(|(k, _)| k.len()).sum());
        let mut entries: Vec<Entry> = Vec::with_capacity(raw.len());
        let mut discs = Vec::with_capacity(raw.len());
        for (k, handle) in raw {
            let prev = entries.len().checked_sub(1).map(|i| {
                let start = if i == 0 {
                    0
                } else {
                    entries[i - 1].key_end as usize
                };
                &keys[start..entries[i].key_end as usize]
            });
            if prev.is_some_and(|p: &[u8]| key::compare(p, &k) != Ordering::Less) {
                return None; // index keys out of order
            }
            let uk = key::user_key(&k);
            if !uk.starts_with(&prefix) {
                return None;
            }
            discs.push(disc(uk, skip));
            entries.push(Entry { key_end: 0, handle });
            keys.extend_from_slice(&k);
            let end = u32::try_from(keys.len()).ok()?;
            if let Some(e) = entries.last_mut() {
                e.key_end = end;
            }
        }
        Some(Self {
            skip,
            prefix,
            discs,
            entries,
            keys,
        })
    }

    fn key(&self, i: usize) -> &[u8] {
        let start = if i == 0 {
            0
        } else {
            self.entries[i - 1].key_end as usize
        };
        &self.keys[start..self.entries[i].key_end as usize]
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn handle(&self, i: usize) -> BlockHandle {
        self.entries[i].handle
    }

    /// The first entry whose key is `>= target` (`len()` if none).
    pub fn seek(&self, target: &[u8]) -> usize {
        let uk = key::user_key(target);
        let shared = &uk[..uk.len().min(self.skip)];
        match shared.cmp(&self.prefix) {
            Ordering::Less => return 0,
            Ordering::Greater => return self.entries.len(),
            Ordering::Equal => {}
        }
        let d = disc(uk, self.skip);
        let start = self.discs.partition_point(|&x| x < d);
        // Equal discriminators are rare and adjacent: step, then search.
        let mut end = start;
        while end < self.discs.len() && end - start < 4 && self.discs[end] == d {
            end += 1;
        }
        if end - start == 4 {
            end += self.discs[end..].partition_point(|&x| x <= d);
        }
        // Entries with an equal discriminator need the full compare.
        let (mut lo, mut hi) = (start, end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if key::compare(self.key(mid), target) == Ordering::Less {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Bytes held in memory.
    pub fn size(&self) -> usize {
        self.entries.len() * (std::mem::size_of::<Entry>() + 8) + self.keys.len()
    }
}
