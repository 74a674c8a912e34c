//! Iterators: the internal-key iterator every source implements, the
//! merging iterator over all sources, and the user-facing iterator that
//! applies a snapshot, hides old versions and tombstones, and stops at the
//! end of the range.

use std::cmp::Ordering;
use std::ops::Bound;

use bytes::Bytes;

use super::key::{self, SeqNo, ValueKind};
use super::Result;

/// A cursor over internal keys in [`key::compare`] order.
pub(crate) trait InternalIterator: Send {
    /// Positions at the first entry `>= target` (an internal key).
    fn seek(&mut self, target: &[u8]) -> Result<()>;
    /// Positions at the first entry.
    fn seek_to_first(&mut self) -> Result<()>;
    /// Moves to the next entry. Only valid when [`Self::valid`].
    fn next(&mut self) -> Result<()>;
    /// True when positioned at an entry.
    fn valid(&self) -> bool;
    /// The current internal key. Only valid when [`Self::valid`].
    fn key(&self) -> &[u8];
    /// The current value. Only valid when [`Self::valid`].
    fn value(&self) -> &[u8];
    /// The current value as shared bytes (zero-copy where the source
    /// allows it).
    fn value_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(self.value())
    }
}

/// Merges several iterators into one ordered stream. Sources are few (the
/// memtables, the L0 tables, one per deeper level), so a linear scan for
/// the smallest beats a heap.
pub(crate) struct MergingIterator {
    children: Vec<Box<dyn InternalIterator>>,
    current: Option<usize>,
}

impl MergingIterator {
    pub fn new(children: Vec<Box<dyn InternalIterator>>) -> Self {
        Self {
            children,
            current: None,
        }
    }

    fn find_smallest(&mut self) {
        let mut best: Option<usize> = None;
        for (i, child) in self.children.iter().enumerate() {
            if !child.valid() {
                continue;
            }
            best = match best {
                Some(b) if key::compare(child.key(), self.children[b].key()) != Ordering::Less => {
                    Some(b)
                }
                _ => Some(i),
            };
        }
        self.current = best;
    }
}

impl InternalIterator for MergingIterator {
    fn seek(&mut self, target: &[u8]) -> Result<()> {
        for c in &mut self.children {
            c.seek(target)?;
        }
        self.find_smallest();
        Ok(())
    }
    fn seek_to_first(&mut self) -> Result<()> {
        for c in &mut self.children {
            c.seek_to_first()?;
        }
        self.find_smallest();
        Ok(())
    }
    fn next(&mut self) -> Result<()> {
        if let Some(i) = self.current {
            self.children[i].next()?;
        }
        self.find_smallest();
        Ok(())
    }
    fn valid(&self) -> bool {
        self.current.is_some()
    }
    fn key(&self) -> &[u8] {
        match self.current {
            Some(i) => self.children[i].key(),
            None => &[],
        }
    }
    fn value(&self) -> &[u8] {
        match self.current {
            Some(i) => self.children[i].value(),
            None => &[],
        }
    }
    fn value_bytes(&self) -> Bytes {
        match self.current {
            Some(i) => self.children[i].value_bytes(),
            None => Bytes::new(),
        }
    }
}

/// A key-value pair returned by a scan. The value shares memory with the
/// block or memtable it came from.
pub type KvPair = (Bytes, Bytes);

/// The user-facing scan iterator: the newest version of each user key
/// visible at the snapshot, tombstones hidden, within the range.
///
/// It holds the sources alive (memtables and table files) until dropped,
/// so compaction never deletes a file it still reads.
pub struct DbIterator {
    inner: MergingIterator,
    seq: SeqNo,
    start: Bound<Vec<u8>>,
    end: Bound<Vec<u8>>,
    started: bool,
    done: bool,
    /// The user key just returned or skipped (reused buffer).
    last: Vec<u8>,
    /// Keeps the memtables and table files of the read view alive.
    _pin: Box<dyn Send + Sync>,
}

impl DbIterator {
    pub(crate) fn new(
        inner: MergingIterator,
        seq: SeqNo,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
        pin: Box<dyn Send + Sync>,
    ) -> Self {
        Self {
            inner,
            seq,
            start,
            end,
            started: false,
            done: false,
            last: Vec::new(),
            _pin: pin,
        }
    }

    fn start(&mut self) -> Result<()> {
        match &self.start {
            Bound::Included(k) => self.inner.seek(&key::lookup_key(k, key::MAX_SEQNO)),
            Bound::Excluded(k) => {
                // Seek past every version of `k`.
                self.inner.seek(&key::encode(k, 0, ValueKind::Delete))?;
                if self.inner.valid() && key::user_key(self.inner.key()) == k.as_slice() {
                    self.inner.next()?;
                }
                Ok(())
            }
            Bound::Unbounded => self.inner.seek_to_first(),
        }
    }

    fn past_end(&self, user_key: &[u8]) -> bool {
        match &self.end {
            Bound::Included(e) => user_key > e.as_slice(),
            Bound::Excluded(e) => user_key >= e.as_slice(),
            Bound::Unbounded => false,
        }
    }

    fn advance(&mut self) -> Result<Option<KvPair>> {
        if !self.started {
            self.started = true;
            self.start()?;
        }
        while self.inner.valid() {
            let ikey = self.inner.key();
            let ukey = key::user_key(ikey);
            if self.past_end(ukey) {
                return Ok(None);
            }
            if key::seqno(ikey) > self.seq {
                self.inner.next()?;
                continue;
            }
            // The newest visible version of `ukey`.
            let out = match key::kind(ikey) {
                Some(ValueKind::Put) => {
                    Some((Bytes::copy_from_slice(ukey), self.inner.value_bytes()))
                }
                _ => None,
            };
            self.last.clear();
            self.last.extend_from_slice(ukey);
            // Skip the older versions.
            self.inner.next()?;
            while self.inner.valid() && key::user_key(self.inner.key()) == self.last.as_slice() {
                self.inner.next()?;
            }
            if out.is_some() {
                return Ok(out);
            }
        }
        Ok(None)
    }
}

impl Iterator for DbIterator {
    type Item = Result<KvPair>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.advance() {
            Ok(Some(kv)) => Some(Ok(kv)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
