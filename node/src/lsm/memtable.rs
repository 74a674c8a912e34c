//! The memtable: a concurrent skiplist of internal keys. One writer (the
//! group-commit leader) inserts while any number of readers read.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use super::iterator::InternalIterator;
use super::key::{self, SeqNo, ValueKind};
use super::skiplist::SkipList;
use super::Result;

/// User keys up to this long live inside the skiplist node, so comparing
/// them during a search costs no extra cache miss.
const INLINE_KEY_BYTES: usize = 24;

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
/// Word `i` of an inline key as a big-endian integer.
fn word(buf: &[u8; INLINE_KEY_BYTES], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&buf[i * 8..i * 8 + 8]);
    u64::from_be_bytes(w)
}

impl Ord for MemKey {
    fn cmp(&self, other: &Self) -> Ordering {
        let user = match (&self.user, &other.user) {
            // Inline keys are zero-padded: comparing the padded buffers
            // word by word, then the lengths, orders them exactly like
            // comparing the keys, without a call to memcmp.
            (KeyBuf::Inline(la, a), KeyBuf::Inline(lb, b)) => (0..INLINE_KEY_BYTES / 8)
                .map(|i| word(a, i).cmp(&word(b, i)))
                .find(|o| o.is_ne())
                .unwrap_or_else(|| la.cmp(lb)),
            _ => self.user_key().cmp(other.user_key()),
        };
        user.then_with(|| other.trailer.cmp(&self.trailer))
    }
}

/// Per-entry bookkeeping charged on top of key and value bytes: the
/// 128-byte skiplist node and the value's allocation header.
const ENTRY_OVERHEAD_BYTES: usize = 144;

/// A sorted in-memory table of recent writes.
pub(crate) struct MemTable {
    map: SkipList<MemKey, Bytes>,
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
            map: SkipList::new(),
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
        // Keys sharing a first byte often form ascending streams (a log
        // index or a sequence number after a one-byte prefix): the
        // skiplist links the next of a stream right after the last.
        let slot = user_key.first().map_or(0, |b| usize::from(*b));
        self.map.insert_hinted(
            slot,
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
        if self.is_empty() {
            return Lookup::Absent;
        }
        let lookup = MemKey::new(user_key, seq, ValueKind::Put);
        match self.map.seek(&lookup).and_then(|i| self.map.entry(i)) {
            Some((k, v)) if k.user_key() == user_key => match k.kind() {
                Some(ValueKind::Put) => Lookup::Value(v.clone()),
                _ => Lookup::Deleted,
            },
            _ => Lookup::Absent,
        }
    }

    pub fn approximate_bytes(&self) -> usize {
        self.bytes.load(AtomicOrdering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    pub fn iter(self: &Arc<Self>) -> MemTableIter {
        MemTableIter {
            mem: self.clone(),
            at: None,
            current: Vec::new(),
        }
    }
}

/// An owning iterator over a memtable: skiplist nodes never move, so it
/// keeps a node index and the memtable alive.
pub(crate) struct MemTableIter {
    mem: Arc<MemTable>,
    at: Option<u32>,
    /// The current entry's encoded internal key.
    current: Vec<u8>,
}

impl MemTableIter {
    fn go(&mut self, at: Option<u32>) {
        self.at = at;
        if let Some((k, _)) = at.and_then(|i| self.mem.map.entry(i)) {
            k.encode_into(&mut self.current);
        }
    }

    fn value_ref(&self) -> Option<&Bytes> {
        self.at.and_then(|i| self.mem.map.entry(i)).map(|(_, v)| v)
    }
}

impl InternalIterator for MemTableIter {
    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let at = self.mem.map.seek(&MemKey::from_internal(target));
        self.go(at);
        Ok(())
    }
    fn seek_to_first(&mut self) -> Result<()> {
        let at = self.mem.map.first();
        self.go(at);
        Ok(())
    }
    fn next(&mut self) -> Result<()> {
        let at = self.at.and_then(|i| self.mem.map.next(i));
        self.go(at);
        Ok(())
    }
    fn valid(&self) -> bool {
        self.at.is_some()
    }
    fn key(&self) -> &[u8] {
        &self.current
    }
    fn value(&self) -> &[u8] {
        self.value_ref().map_or(&[], |v| v.as_ref())
    }
    fn value_bytes(&self) -> Bytes {
        self.value_ref().cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_key_order_matches_byte_order() {
        let keys: Vec<&[u8]> = vec![
            b"",
            b"\0",
            b"\0\0",
            b"a",
            b"a\0",
            b"a\x01",
            b"ab",
            b"abcdefgh",
            b"abcdefgh\0",
            b"abcdefghi",
            b"abcdefghijklmnopqrstuvwx",
            b"abcdefghijklmnopqrstuvwxy",
            b"b",
        ];
        for a in &keys {
            for b in &keys {
                let (ka, kb) = (
                    MemKey::new(a, 1, ValueKind::Put),
                    MemKey::new(b, 1, ValueKind::Put),
                );
                assert_eq!(ka.cmp(&kb), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
    }

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
