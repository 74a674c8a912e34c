//! The memtable: a concurrent skiplist of internal keys, with a hash
//! index of its user keys for point lookups. One writer (the group-commit
//! leader) inserts while any number of readers read.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock, RwLockUpgradableReadGuard};

use super::iterator::InternalIterator;
use super::key::{self, SeqNo, ValueKind};
use super::skiplist::SkipList;
use super::sst::bloom::hash;
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

    fn seq(&self) -> SeqNo {
        self.trailer >> 8
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

/// A hash index of a memtable's user keys: for each, the skiplist node of
/// its newest version. A point lookup in a full memtable (100k keys and
/// more) walks ~20 skiplist nodes, each a likely cache miss; through the
/// index it touches a slot and the node.
///
/// Open addressing with linear probing, at most half full. A slot holds
/// `tag << 32 | node` (0 = empty), `tag` being the upper half of the key's
/// `xxh3_64` hash (the bloom filters' hash): its low bits choose the home
/// slot, so growing rehashes without touching the nodes, and all 32 bits
/// are compared before a node is. Readers never wait for the writer except
/// while it swaps in a grown table (built while they go on reading the old
/// one).
struct KeyIndex {
    slots: RwLock<Box<[AtomicU64]>>,
    /// Distinct keys indexed.
    keys: AtomicUsize,
}

const INDEX_INITIAL_SLOTS: usize = 256;

fn empty_slots(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl KeyIndex {
    fn new() -> Self {
        Self {
            slots: RwLock::new(empty_slots(INDEX_INITIAL_SLOTS)),
            keys: AtomicUsize::new(0),
        }
    }

    /// Bytes of the slots, charged to the memtable.
    fn bytes(&self) -> usize {
        self.slots.read().len() * std::mem::size_of::<AtomicU64>()
    }

    fn tag(hash: u64) -> u64 {
        hash >> 32
    }

    /// The node of `user_key`'s newest version, if the memtable has one.
    fn find(&self, map: &SkipList<MemKey, Bytes>, hash: u64, user_key: &[u8]) -> Option<u32> {
        let slots = self.slots.read();
        let mask = slots.len() - 1;
        let tag = Self::tag(hash);
        let mut i = tag as usize & mask;
        // The table is at most half full: an empty slot ends every probe.
        loop {
            let s = slots[i].load(AtomicOrdering::Acquire);
            if s == 0 {
                return None;
            }
            if s >> 32 == tag {
                let node = s as u32;
                if map.key(node).is_some_and(|k| k.user_key() == user_key) {
                    return Some(node);
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Loads the home slot of `hash` so that the cache miss overlaps the
    /// skiplist insert that comes before [`KeyIndex::set`].
    fn touch(&self, hash: u64) {
        let slots = self.slots.read();
        let i = Self::tag(hash) as usize & (slots.len() - 1);
        std::hint::black_box(slots[i].load(AtomicOrdering::Relaxed));
    }

    /// Points a key at `node`, its newest version; `previous` is the node
    /// of its version before, if the memtable has one (so no node is read
    /// here). Calls are serialized (the upgradable lock; the memtable has
    /// one writer anyway); readers go on meanwhile.
    fn set(&self, hash: u64, node: u32, previous: Option<u32>) {
        let tag = Self::tag(hash);
        let packed = tag << 32 | u64::from(node);
        let slots = self.slots.upgradable_read();
        let mask = slots.len() - 1;
        let mut i = tag as usize & mask;
        // The previous version's slot, or the end of the probe sequence.
        let want = previous.map_or(0, |p| tag << 32 | u64::from(p));
        loop {
            let s = slots[i].load(AtomicOrdering::Relaxed);
            if s == want {
                break;
            }
            assert!(
                s != 0,
                "memtable index: version {previous:?} of a key is not indexed"
            );
            i = (i + 1) & mask;
        }
        slots[i].store(packed, AtomicOrdering::Release);
        if previous.is_some() {
            return;
        }
        let keys = self.keys.fetch_add(1, AtomicOrdering::Relaxed) + 1;
        if keys * 2 > slots.len() {
            let grown = empty_slots(slots.len() * 2);
            let mask = grown.len() - 1;
            for s in slots.iter().map(|s| s.load(AtomicOrdering::Relaxed)) {
                if s == 0 {
                    continue;
                }
                let mut j = (s >> 32) as usize & mask;
                while grown[j].load(AtomicOrdering::Relaxed) != 0 {
                    j = (j + 1) & mask;
                }
                grown[j].store(s, AtomicOrdering::Relaxed);
            }
            *RwLockUpgradableReadGuard::upgrade(slots) = grown;
        }
    }
}

/// A sorted in-memory table of recent writes.
pub(crate) struct MemTable {
    map: SkipList<MemKey, Bytes>,
    index: KeyIndex,
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
            index: KeyIndex::new(),
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
        let hash = hash(user_key);
        self.index.touch(hash);
        let (node, successor) = self.map.insert_hinted(
            slot,
            MemKey::new(user_key, seq, kind),
            Bytes::copy_from_slice(value),
        );
        // Versions of a key sort newest first: the one after the new node
        // is its previous version, if the memtable has one.
        let previous = successor.filter(|&s| {
            self.map.key(s).is_some_and(|k| {
                debug_assert!(
                    k.user_key() != user_key || k.seq() < seq,
                    "versions out of order"
                );
                k.user_key() == user_key
            })
        });
        self.index.set(hash, node, previous);
        self.bytes.fetch_add(charge, AtomicOrdering::Relaxed);
    }

    pub fn set_metadata(&self, metadata: Vec<u8>) {
        *self.metadata.lock() = Some(metadata);
    }

    pub fn metadata(&self) -> Option<Vec<u8>> {
        self.metadata.lock().clone()
    }

    /// The newest version of `user_key` visible at `seq`; `hash` is
    /// [`hash`]`(user_key)`.
    pub fn get(&self, user_key: &[u8], hash: u64, seq: SeqNo) -> Lookup {
        if self.is_empty() {
            return Lookup::Absent;
        }
        // A version is indexed before its insert returns, so before its
        // sequence number is published: a key the index lacks has no
        // version visible to this reader.
        let found = match self.index.find(&self.map, hash, user_key) {
            None => Lookup::Absent,
            Some(node) => match self.map.entry(node) {
                Some((k, v)) if k.seq() <= seq => Self::lookup(k, v),
                // Written after the reader's snapshot: search for the
                // version it sees.
                _ => self.search(user_key, seq),
            },
        };
        debug_assert_eq!(found, self.search(user_key, seq), "memtable index");
        found
    }

    fn lookup(k: &MemKey, v: &Bytes) -> Lookup {
        match k.kind() {
            Some(ValueKind::Put) => Lookup::Value(v.clone()),
            _ => Lookup::Deleted,
        }
    }

    /// [`MemTable::get`] by a skiplist search.
    fn search(&self, user_key: &[u8], seq: SeqNo) -> Lookup {
        let lookup = MemKey::new(user_key, seq, ValueKind::Put);
        match self.map.seek(&lookup).and_then(|i| self.map.entry(i)) {
            Some((k, v)) if k.user_key() == user_key => Self::lookup(k, v),
            _ => Lookup::Absent,
        }
    }

    /// Bytes of the entries and of the key index.
    pub fn approximate_bytes(&self) -> usize {
        self.bytes.load(AtomicOrdering::Relaxed) + self.index.bytes()
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
        assert_eq!(m.get(b"k", hash(b"k"), 0), Lookup::Absent);
        assert_eq!(
            m.get(b"k", hash(b"k"), 2),
            Lookup::Value(Bytes::from_static(b"v1"))
        );
        assert_eq!(
            m.get(b"k", hash(b"k"), 4),
            Lookup::Value(Bytes::from_static(b"v3"))
        );
        assert_eq!(m.get(b"k", hash(b"k"), 9), Lookup::Deleted);
        assert_eq!(m.get(b"j", hash(b"j"), 9), Lookup::Absent);
    }

    #[test]
    fn the_index_finds_every_key_across_growth() {
        let m = MemTable::new(0);
        let n = 5_000u32;
        for i in 0..n {
            let k = format!("key-{i}");
            m.insert(k.as_bytes(), u64::from(i) + 1, ValueKind::Put, k.as_bytes());
        }
        // Grown from 256 slots, at most half full.
        let slots = m.index.slots.read().len();
        assert!(slots >= 2 * n as usize, "{slots} slots for {n} keys");
        assert_eq!(m.index.keys.load(AtomicOrdering::Relaxed), n as usize);
        assert!(m.approximate_bytes() >= slots * 8);
        for i in 0..n {
            let k = format!("key-{i}");
            let h = hash(k.as_bytes());
            assert_eq!(
                m.get(k.as_bytes(), h, u64::MAX),
                Lookup::Value(Bytes::from(k.clone()))
            );
            // Not yet written at the snapshot before it.
            assert_eq!(m.get(k.as_bytes(), h, u64::from(i)), Lookup::Absent);
            let missing = format!("missing-{i}");
            assert_eq!(
                m.get(missing.as_bytes(), hash(missing.as_bytes()), u64::MAX),
                Lookup::Absent
            );
        }
        // A newer version moves the key's slot, not its count.
        m.insert(b"key-7", u64::from(n) + 1, ValueKind::Delete, b"");
        assert_eq!(m.index.keys.load(AtomicOrdering::Relaxed), n as usize);
        assert_eq!(m.get(b"key-7", hash(b"key-7"), u64::MAX), Lookup::Deleted);
        assert_eq!(
            m.get(b"key-7", hash(b"key-7"), u64::from(n)),
            Lookup::Value(Bytes::from_static(b"key-7"))
        );
    }

    #[test]
    fn keys_with_one_hash_share_a_probe_sequence() {
        // Every key gets the same hash: each lookup compares tags, then
        // keys, along one run of slots, across growth.
        let list = SkipList::new();
        let index = KeyIndex::new();
        let same = 0xDEAD_BEEF_0000_0001u64;
        let mut nodes = Vec::new();
        for i in 0..600u32 {
            let k = i.to_be_bytes();
            let (node, _) = list.insert_hinted(0, MemKey::new(&k, 1, ValueKind::Put), Bytes::new());
            index.set(same, node, None);
            nodes.push(node);
        }
        // A newer version of one of them replaces its slot.
        let (newer, next) = list.insert_hinted(
            0,
            MemKey::new(&7u32.to_be_bytes(), 2, ValueKind::Put),
            Bytes::new(),
        );
        assert_eq!(next, Some(nodes[7]));
        index.set(same, newer, next);
        nodes[7] = newer;
        for (i, node) in (0..600u32).zip(&nodes) {
            assert_eq!(index.find(&list, same, &i.to_be_bytes()), Some(*node));
        }
        assert_eq!(index.find(&list, same, &600u32.to_be_bytes()), None);
        // A key with another tag but the same home slot is not mistaken.
        assert_eq!(
            index.find(&list, same ^ (1 << 63), &1u32.to_be_bytes()),
            None
        );
    }

    #[test]
    fn readers_find_published_keys_while_the_index_grows() {
        let m = Arc::new(MemTable::new(0));
        let published = Arc::new(AtomicU64::new(0));
        let reader = {
            let (m, published) = (m.clone(), published.clone());
            std::thread::spawn(move || {
                let mut checked = 0u64;
                while published.load(AtomicOrdering::Acquire) < 20_000 {
                    let upto = published.load(AtomicOrdering::Acquire);
                    for i in (upto.saturating_sub(64)..upto).rev() {
                        let k = i.to_be_bytes();
                        assert_eq!(
                            m.get(&k, hash(&k), upto),
                            Lookup::Value(Bytes::copy_from_slice(&k)),
                            "key {i} published at {upto}"
                        );
                        checked += 1;
                    }
                }
                checked
            })
        };
        for i in 0..20_000u64 {
            let k = i.to_be_bytes();
            // Sequence i + 1, published (as the engine does) after the
            // insert returns.
            m.insert(&k, i + 1, ValueKind::Put, &k);
            published.store(i + 1, AtomicOrdering::Release);
        }
        assert!(reader.join().unwrap() > 0);
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
