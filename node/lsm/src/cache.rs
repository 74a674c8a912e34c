//! The block cache: a bounded, sharded LRU of decoded blocks shared by all
//! tables of a database, charged by block bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::sst::block::Block;

const SHARDS: usize = 16;

/// Identifies a block: the table's file number and the block's offset.
pub(crate) type BlockKey = (u64, u64);

/// A cheap multiplicative hasher for block keys (two integers); SipHash
/// would cost more than the rest of a cache lookup.
#[derive(Clone, Copy, Default)]
struct BlockKeyHasher(u64);

impl std::hash::Hasher for BlockKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(23) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

type Hasher = std::hash::BuildHasherDefault<BlockKeyHasher>;

const NIL: u32 = u32::MAX;

struct Slot {
    key: BlockKey,
    block: Option<Arc<Block>>,
    /// Towards the most recently used end.
    prev: u32,
    /// Towards the least recently used end.
    next: u32,
}

/// One LRU list over a slab of slots linked by index: a hit moves its
/// slot to the front without allocating.
struct Shard {
    map: HashMap<BlockKey, u32, Hasher>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    bytes: usize,
    capacity: usize,
}

impl Shard {
    fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            bytes: 0,
            capacity,
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let s = &self.slots[i as usize];
            (s.prev, s.next)
        };
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let s = &mut self.slots[i as usize];
            s.prev = NIL;
            s.next = old;
        }
        match old {
            NIL => self.tail = i,
            o => self.slots[o as usize].prev = i,
        }
        self.head = i;
    }

    fn get(&mut self, key: &BlockKey) -> Option<Arc<Block>> {
        let i = *self.map.get(key)?;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        self.slots[i as usize].block.clone()
    }

    fn remove(&mut self, i: u32) {
        self.unlink(i);
        let slot = &mut self.slots[i as usize];
        if let Some(b) = slot.block.take() {
            self.bytes -= b.size();
        }
        self.map.remove(&slot.key);
        self.free.push(i);
    }

    fn insert(&mut self, key: BlockKey, block: Arc<Block>) {
        if let Some(&i) = self.map.get(&key) {
            self.remove(i);
        }
        self.bytes += block.size();
        let slot = Slot {
            key,
            block: Some(block),
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.push_front(i);
        self.map.insert(key, i);
        while self.bytes > self.capacity && self.tail != NIL {
            self.remove(self.tail);
        }
    }
}

/// A bounded LRU cache of blocks.
pub(crate) struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl BlockCache {
    /// A cache holding at most `capacity_bytes` of blocks.
    pub fn new(capacity_bytes: usize) -> Self {
        let per_shard = capacity_bytes / SHARDS;
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard::new(per_shard)))
                .collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &BlockKey) -> &Mutex<Shard> {
        let h = key.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (key.1 >> 12);
        &self.shards[(h as usize) % SHARDS]
    }

    pub fn get(&self, key: &BlockKey) -> Option<Arc<Block>> {
        let found = self.shard(key).lock().get(key);
        match found {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    pub fn insert(&self, key: BlockKey, block: Arc<Block>) {
        let mut shard = self.shard(&key).lock();
        if block.size() <= shard.capacity {
            shard.insert(key, block);
        }
    }

    /// Drops every block of table `file_number` (its file is gone).
    pub fn evict_table(&self, file_number: u64) {
        for shard in &self.shards {
            let mut shard = shard.lock();
            let doomed: Vec<u32> = shard
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.block.is_some() && s.key.0 == file_number)
                .map(|(i, _)| i as u32)
                .collect();
            for i in doomed {
                shard.remove(i);
            }
        }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn block(bytes: usize) -> Arc<Block> {
        let mut data = vec![0u8; bytes.max(8)];
        let n = data.len();
        data[n - 4..].copy_from_slice(&1u32.to_le_bytes());
        data[n - 8..n - 4].copy_from_slice(&0u32.to_le_bytes());
        Arc::new(Block::new(data, |r| Error::corruption("t", 0, r)).unwrap())
    }

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let mut shard = Shard::new(3000);
        for i in 0..3u64 {
            shard.insert((1, i), block(1000));
        }
        assert!(shard.get(&(1, 0)).is_some()); // 0 is now most recent
        shard.insert((1, 3), block(1000)); // evicts 1, the least recent
        assert!(shard.get(&(1, 1)).is_none());
        assert!(shard.get(&(1, 0)).is_some());
        assert!(shard.get(&(1, 2)).is_some());
        assert!(shard.get(&(1, 3)).is_some());
        assert!(shard.bytes <= 3000);
        let cache = BlockCache::new(SHARDS * 10_000);
        for i in 0..20u64 {
            cache.insert((7, i << 12), block(500));
        }
        cache.evict_table(7);
        assert_eq!(cache.bytes(), 0);
    }
}
