//! cairn-lsm: cairn's storage engine, a log-structured merge tree.
//!
//! A plain, synchronous, thread-safe engine with background threads of its
//! own; it knows nothing of Raft, gRPC or tokio. The pieces, each in its
//! own module:
//!
//! - the filesystem and executor seams come from `cairn-io`: every byte
//!   goes through its [`FileSystem`], every flush, compaction and WAL sync
//!   through its [`Executor`] (dedicated threads in production, inline in
//!   the simulation).
//! - `wal`: the write-ahead log, `cairn-io`'s CRC32C framing, group
//!   commit.
//! - `memtable`: a concurrent skiplist bounded by bytes.
//! - `sst`: block-based tables with prefix compression, restart points,
//!   bloom filters, per-block checksums and optional lz4.
//! - `cache`: the shared LRU block cache.
//! - `version` + `manifest`: the live file set and its durable log of
//!   edits behind an atomic `CURRENT`.
//! - `compaction`: leveled compaction and write stalls.
//! - `db`: the [`Db`] that ties them together.
//!
//! The on-disk formats are written down byte by byte in
//! `node/lsm/FORMAT.md`.

#![forbid(unsafe_code)]

mod background;
mod batch;
mod cache;
mod coding;
mod compaction;
mod db;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_entry;
mod iterator;
mod key;
mod manifest;
mod memtable;
mod recovery;
mod skiplist;
mod sst;
mod version;
mod wal;
mod write;

use std::sync::Arc;

pub use batch::{BatchOp, WriteBatch};
use cairn_io::{executor, frame, fs};
/// The seams, re-exported because [`Options`] names them.
pub use cairn_io::{Executor, FileSystem, StdFs, ThreadExecutor};
pub use db::{CheckpointInfo, Db, Snapshot};
pub use error::{Error, Result};
pub use iterator::{DbIterator, KvPair};
pub use key::SeqNo;
pub use version::NUM_LEVELS;

/// Block compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Blocks are stored as they are.
    None,
    /// Blocks are lz4-compressed when that saves at least 1/8.
    Lz4,
}

/// When the WAL is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Every write returns after an fsync. Concurrent writers share one
    /// fsync (group commit).
    Always,
    /// Writes return once their WAL record is handed to the OS; a
    /// background sync runs whenever `bytes` more have been written, and on
    /// [`Db::sync_wal`]. A power loss may lose the last unsynced writes.
    Batched {
        /// Unsynced WAL bytes that trigger a background sync.
        bytes: u64,
    },
    /// Writes are handed to the OS only: they survive a process crash but
    /// not a power loss, unless [`Db::sync_wal`] ran.
    None,
}

/// Engine settings. The defaults suit a server with a few GiB of memory.
#[derive(Clone)]
pub struct Options {
    /// Create the database if the directory holds none.
    pub create_if_missing: bool,
    /// Keep a write-ahead log. Off when something else (the Raft log)
    /// replays writes after a crash; then only flushed data is durable.
    pub wal: bool,
    /// When WAL writes are synced.
    pub sync: SyncMode,
    /// Bytes a memtable may grow to before it is frozen and flushed.
    pub memtable_bytes: usize,
    /// Frozen memtables waiting for flush before writes stall.
    pub max_immutable_memtables: usize,
    /// Target uncompressed size of a data block.
    pub block_bytes: usize,
    /// Keys between restart points in a data block.
    pub block_restart_interval: usize,
    /// Bloom filter bits per key (0 disables the filter's benefit).
    pub bloom_bits_per_key: usize,
    /// Block compression.
    pub compression: Compression,
    /// Capacity of the shared block cache in bytes.
    pub block_cache_bytes: usize,
    /// Target size of a table written by compaction.
    pub target_file_bytes: u64,
    /// L0 table count that triggers a compaction into L1.
    pub l0_compaction_trigger: usize,
    /// L0 table count at which each write is delayed.
    pub l0_slowdown_trigger: usize,
    /// L0 table count at which writes stop until compaction catches up.
    pub l0_stop_trigger: usize,
    /// Size limit of L1; each deeper level is `level_fanout` times larger.
    pub l1_bytes: u64,
    /// Size ratio between adjacent levels.
    pub level_fanout: u64,
    /// Largest accepted key.
    pub max_key_bytes: usize,
    /// Largest accepted value.
    pub max_value_bytes: usize,
    /// Runs flushes, compactions and batched WAL syncs.
    pub executor: Arc<dyn Executor>,
    /// The filesystem every file goes through.
    pub fs: Arc<dyn FileSystem>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            create_if_missing: true,
            wal: true,
            sync: SyncMode::Always,
            memtable_bytes: 64 << 20,
            max_immutable_memtables: 2,
            block_bytes: 4096,
            block_restart_interval: 16,
            bloom_bits_per_key: 10,
            compression: Compression::Lz4,
            block_cache_bytes: 64 << 20,
            target_file_bytes: 32 << 20,
            l0_compaction_trigger: 4,
            l0_slowdown_trigger: 12,
            l0_stop_trigger: 20,
            l1_bytes: 256 << 20,
            level_fanout: 10,
            max_key_bytes: 64 << 10,
            max_value_bytes: 64 << 20,
            executor: Arc::new(ThreadExecutor::new()),
            fs: Arc::new(StdFs),
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("wal", &self.wal)
            .field("sync", &self.sync)
            .field("memtable_bytes", &self.memtable_bytes)
            .field("block_bytes", &self.block_bytes)
            .field("compression", &self.compression)
            .field("block_cache_bytes", &self.block_cache_bytes)
            .finish_non_exhaustive()
    }
}

/// Counters and sizes describing the engine's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Tables per level.
    pub level_files: [usize; NUM_LEVELS],
    /// Table bytes per level.
    pub level_bytes: [u64; NUM_LEVELS],
    /// Bytes in the active memtable.
    pub memtable_bytes: u64,
    /// Bytes in frozen memtables waiting for flush.
    pub immutable_memtable_bytes: u64,
    /// Frozen memtables waiting for flush.
    pub immutable_memtables: usize,
    /// Memtables flushed to L0.
    pub flushes: u64,
    /// Compactions run (trivial moves included).
    pub compactions: u64,
    /// Bytes read by compactions.
    pub compaction_bytes_read: u64,
    /// Bytes written by compactions.
    pub compaction_bytes_written: u64,
    /// Writes delayed because L0 was deep.
    pub write_slowdowns: u64,
    /// Writes that waited for a flush or compaction.
    pub write_stalls: u64,
    /// Block cache hits.
    pub cache_hits: u64,
    /// Block cache misses.
    pub cache_misses: u64,
    /// Bytes of blocks in the cache.
    pub cache_bytes: u64,
    /// Bytes of table indexes and filters held in memory.
    pub table_resident_bytes: u64,
    /// Live table files.
    pub live_files: usize,
    /// Last sequence number visible to readers.
    pub last_seq: SeqNo,
    /// WAL fsyncs performed.
    pub wal_syncs: u64,
    /// Writes that went through the WAL.
    pub wal_writes: u64,
}

impl Stats {
    /// Bytes of all live tables.
    pub fn total_table_bytes(&self) -> u64 {
        self.level_bytes.iter().sum()
    }
}
