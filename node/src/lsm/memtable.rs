//! The memtable: a concurrent skiplist of internal keys. One writer (the
//! group-commit leader) inserts while any number of readers read.

use std::cmp::Ordering;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

use bytes::Bytes;
use crossbeam_skiplist::SkipMap;
use parking_lot::Mutex;

use super::iterator::InternalIterator;
use super::key::{self, SeqNo, ValueKind};
use super::Result;

/// User keys up to this long live inside the skiplist node, so comparing
/// them during a search costs no extra cache miss.
const INLINE_KEY_BYTES: usize = 30;

/// A user key, stored inline when short.
#[derive(Clone, Debug)]
enum KeyBuf {
    Inline(u8, [u8; INLINE_KEY_BYTES]),
    Heap(Box<[u8]>),
}

impl KeyBuf {
    fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE_KEY_BYTES {
            let mut buf = [0u8; INLINE_KEY_BYTES];
            buf[..key.len()].copy_from_slice(key);
            KeyBuf::Inline(key.len() as u8, buf)
        } else {
            KeyBuf::Heap(key.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            KeyBuf::Inline(len, buf) => &buf[..*len as usize],
            KeyBuf::Heap(b) => b,
        }
    }
}

/// A memtable key: the user key and its trailer (`seqno << 8 | kind`),
/// ordered like an encoded internal key (user key ascending, trailer
/// descending).
#[derive(Clone, Debug)]
pub(crate) struct MemKey {
    user: KeyBuf,
    trailer: u64,
}

impl MemKey {
    fn new(user_key: &[u8], seq: SeqNo, kind: ValueKind) -> Self {
        Self {
            user: KeyBuf::new(user_key),
            trailer: (seq << 8) | kind as u64,
        }
    }

    fn from_internal(ikey: &[u8]) -> Self {
        let user = key::user_key(ikey);
        let mut t = [0u8; 8];
        let tail = &ikey[user.len()..];
        t[..tail.len()].copy_from_slice(tail);
        Self {
            user: KeyBuf::new(user),
            trailer: u64::from_le_bytes(t),
        }
    }

    fn user_key(&self) -> &[u8] {
        self.user.as_slice()
    }

    fn kind(&self) -> Option<ValueKind> {
        ValueKind::from_u8(self.trailer as u8)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(self.user_key());
        out.extend_from_slice(&self.trailer.to_le_bytes());
    }
}

impl PartialEq for MemKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for MemKey {}
impl PartialOrd for MemKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.user_key()
            .cmp(other.user_key())
            .then_with(|| other.trailer.cmp(&self.trailer))
    }
}

/// Per-entry bookkeeping charged on top of key and value bytes (skiplist
/// node, tower, `Bytes` headers).
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// A sorted in-memory table of recent writes.
pub(crate) struct MemTable {
    map: SkipMap<MemKey, Bytes>,
    bytes: AtomicUsize,
    /// The WAL file whose records rebuild this memtable (0 = no WAL).
    pub wal_number: u64,
    /// The newest user metadata written with a batch in this memtable.
    metadata: Mutex<Option<Vec<u8>>>,
}

/// What a point lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The newest visible version is a value.
    Value(Bytes),
    /// The newest visible version is a tombstone.
    Deleted,
    /// No version of the key is visible here.
    Absent,
}

impl MemTable {
    pub fn new(wal_number: u64) -> Self {
        Self {
            map: SkipMap::new(),
            bytes: AtomicUsize::new(0),
            wal_number,
            metadata: Mutex::new(None),
        }
    }

    /// Inserts one version. Callers serialize inserts (one group-commit
    /// leader at a time) and publish the sequence number to readers only
    /// after the insert returns.
    pub fn insert(&self, user_key: &[u8], seq: SeqNo, kind: ValueKind, value: &[u8]) {
        let charge = user_key.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        self.map.insert(
            MemKey::new(user_key, seq, kind),
            Bytes::copy_from_slice(value),
        );
        self.bytes.fetch_add(charge, AtomicOrdering::Relaxed);
    }

    pub fn set_metadata(&self, metadata: Vec<u8>) {
        *self.metadata.lock() = Some(metadata);
    }

    pub fn metadata(&self) -> Option<Vec<u8>> {
        self.metadata.lock().clone()
    }

    pub fn get(&self, user_key: &[u8], seq: SeqNo) -> Lookup {
        if self.map.is_empty() {
            return Lookup::Absent;
        }
        let lookup = MemKey::new(user_key, seq, ValueKind::Put);
        match self.map.lower_bound(Bound::Included(&lookup)) {
            Some(e) if e.key().user_key() == user_key => match e.key().kind() {
                Some(ValueKind::Put) => Lookup::Value(e.value().clone()),
                _ => Lookup::Deleted,
            },
            _ => Lookup::Absent,
        }
    }

    pub fn approximate_bytes(&self) -> usize {
        self.bytes.load(AtomicOrdering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(self: &Arc<Self>) -> MemTableIter {
        MemTableIter {
            mem: self.clone(),
            buf: Vec::new(),
            pos: 0,
            exhausted: true,
            current: Vec::new(),
        }
    }
}

/// How many entries a memtable iterator copies out of the skiplist at a
/// time (cheap: keys and values are reference-counted `Bytes`).
const ITER_BATCH: usize = 64;

/// An owning iterator over a memtable. It copies small runs of entries out
/// of the skiplist so it needs no borrow of it.
pub(crate) struct MemTableIter {
    mem: Arc<MemTable>,
    buf: Vec<(MemKey, Bytes)>,
    pos: usize,
    exhausted: bool,
    /// The current entry's encoded internal key.
    current: Vec<u8>,
}

impl MemTableIter {
    fn fill(&mut self, from: Bound<&MemKey>) {
        self.buf.clear();
        self.pos = 0;
        {
            let mut entry = self.mem.map.lower_bound(from);
            while let Some(e) = entry {
                self.buf.push((e.key().clone(), e.value().clone()));
                if self.buf.len() == ITER_BATCH {
                    break;
                }
                entry = e.next();
            }
        }
        self.exhausted = self.buf.len() < ITER_BATCH;
        self.encode_current();
    }

    fn encode_current(&mut self) {
        if let Some((k, _)) = self.buf.get(self.pos) {
            k.encode_into(&mut self.current);
        }
    }
}

impl InternalIterator for MemTableIter {
    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let t = MemKey::from_internal(target);
        self.fill(Bound::Included(&t));
        Ok(())
    }
    fn seek_to_first(&mut self) -> Result<()> {
        self.fill(Bound::Unbounded);
        Ok(())
    }
    fn next(&mut self) -> Result<()> {
        self.pos += 1;
        if self.pos >= self.buf.len() && !self.exhausted {
            if let Some((last, _)) = self.buf.last().cloned() {
                self.fill(Bound::Excluded(&last));
            }
        } else {
            self.encode_current();
        }
        Ok(())
    }
    fn valid(&self) -> bool {
        self.pos < self.buf.len()
    }
    fn key(&self) -> &[u8] {
        &self.current
    }
    fn value(&self) -> &[u8] {
        &self.buf[self.pos].1
    }
    fn value_bytes(&self) -> Bytes {
        self.buf[self.pos].1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_sees_newest_visible_version() {
        let m = MemTable::new(0);
        m.insert(b"k", 1, ValueKind::Put, b"v1");
        m.insert(b"k", 3, ValueKind::Put, b"v3");
        m.insert(b"k", 5, ValueKind::Delete, b"");
        assert_eq!(m.get(b"k", 0), Lookup::Absent);
        assert_eq!(m.get(b"k", 2), Lookup::Value(Bytes::from_static(b"v1")));
        assert_eq!(m.get(b"k", 4), Lookup::Value(Bytes::from_static(b"v3")));
        assert_eq!(m.get(b"k", 9), Lookup::Deleted);
        assert_eq!(m.get(b"j", 9), Lookup::Absent);
    }

    #[test]
    fn iterator_crosses_batches_in_order() {
        let m = Arc::new(MemTable::new(0));
        for i in 0..200u32 {
            m.insert(&i.to_be_bytes(), u64::from(i) + 1, ValueKind::Put, b"v");
        }
        let mut it = m.iter();
        it.seek_to_first().unwrap();
        let mut n = 0u32;
        while it.valid() {
            assert_eq!(key::user_key(it.key()), n.to_be_bytes());
            n += 1;
            it.next().unwrap();
        }
        assert_eq!(n, 200);
        it.seek(&key::lookup_key(&150u32.to_be_bytes(), 1000))
            .unwrap();
        assert_eq!(key::user_key(it.key()), 150u32.to_be_bytes());
    }
}
