//! The block cache: a bounded, sharded LRU of decoded blocks shared by all
//! tables of a database, charged by block bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lru::LruCache;
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

struct Shard {
    lru: LruCache<BlockKey, Arc<Block>, Hasher>,
    bytes: usize,
    capacity: usize,
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
                .map(|_| {
                    Mutex::new(Shard {
                        lru: LruCache::unbounded_with_hasher(Hasher::default()),
                        bytes: 0,
                        capacity: per_shard,
                    })
                })
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
        let found = self.shard(key).lock().lru.get(key).cloned();
        match found {
            Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
            None => self.misses.fetch_add(1, Ordering::Relaxed),
        };
        found
    }

    pub fn insert(&self, key: BlockKey, block: Arc<Block>) {
        let mut shard = self.shard(&key).lock();
        let charge = block.size();
        if charge > shard.capacity {
            return;
        }
        if let Some(old) = shard.lru.put(key, block) {
            shard.bytes -= old.size();
        }
        shard.bytes += charge;
        while shard.bytes > shard.capacity {
            match shard.lru.pop_lru() {
                Some((_, evicted)) => shard.bytes -= evicted.size(),
                None => break,
            }
        }
    }

    /// Drops every block of table `file_number` (its file is gone).
    pub fn evict_table(&self, file_number: u64) {
        for shard in &self.shards {
            let mut shard = shard.lock();
            let keys: Vec<BlockKey> = shard
                .lru
                .iter()
                .filter(|(k, _)| k.0 == file_number)
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                if let Some(b) = shard.lru.pop(&k) {
                    shard.bytes -= b.size();
                }
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
