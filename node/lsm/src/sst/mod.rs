//! SSTables: immutable sorted files of internal keys, block based.
//!
//! ```text
//! +-----------------+---------+-----+--------------+---------+-------------+---------+--------+
//! | data block 0    | trailer | ... | filter block | trailer | index block | trailer | footer |
//! +-----------------+---------+-----+--------------+---------+-------------+---------+--------+
//! trailer = compression: u8 (0 none, 1 lz4), crc32c(block ++ compression): u32 LE
//! footer  = filter_offset u64, filter_len u64, index_offset u64, index_len u64,
//!           entries u64, format_version u32, crc32c(previous 44 bytes) u32, magic u64
//! ```
//! The index block maps the last internal key of each data block to the
//! block's handle (`offset varint, len varint`). FORMAT.md has the details.

pub(crate) mod block;
pub(crate) mod bloom;
mod index;

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;

use bytes::Bytes;

use self::block::{Block, BlockBuilder, BlockIter};
use self::bloom::Bloom;
use self::index::Index;
use super::cache::BlockCache;
use super::coding::{put_varint, Reader};
use super::fs::{FileSystem, RandomAccessFile, WritableFile};
use super::iterator::InternalIterator;
use super::key::{self, SeqNo, ValueKind};
use super::{Compression, Error, Result};

/// Bytes after each block: compression type and checksum.
pub const BLOCK_TRAILER_BYTES: usize = 5;
/// Bytes of the footer at the end of every table.
pub const FOOTER_BYTES: usize = 56;
/// "cairnSST" as a little-endian u64.
pub const TABLE_MAGIC: u64 = u64::from_le_bytes(*b"cairnSST");
/// The table format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest uncompressed block the reader accepts.
const MAX_BLOCK_BYTES: usize = 64 << 20;

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_LZ4: u8 = 1;

/// Where a block lives in its file (length excludes the trailer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockHandle {
    pub offset: u64,
    pub len: u64,
}

impl BlockHandle {
    fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.offset);
        put_varint(out, self.len);
    }
    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        Some(Self {
            offset: r.varint()?,
            len: r.varint()?,
        })
    }
}

/// Settings for writing tables.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TableOptions {
    pub block_bytes: usize,
    pub restart_interval: usize,
    pub bloom_bits_per_key: usize,
    pub compression: Compression,
}

/// What a finished table holds, for the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableSummary {
    pub size: u64,
    pub entries: u64,
    pub smallest: Vec<u8>,
    pub largest: Vec<u8>,
    pub smallest_seq: SeqNo,
    pub largest_seq: SeqNo,
}

/// Writes one table. Keys must be added in strictly increasing order.
pub(crate) struct TableBuilder {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    opts: TableOptions,
    data: BlockBuilder,
    index: BlockBuilder,
    hashes: Vec<u64>,
    last_hash_key: Vec<u8>,
    offset: u64,
    entries: u64,
    smallest: Option<Vec<u8>>,
    smallest_seq: SeqNo,
    largest_seq: SeqNo,
    scratch: Vec<u8>,
}

impl TableBuilder {
    pub fn create(fs: &dyn FileSystem, path: &Path, opts: TableOptions) -> Result<Self> {
        let file = fs.create(path).map_err(|e| Error::io(path, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            opts,
            data: BlockBuilder::new(opts.restart_interval),
            index: BlockBuilder::new(1),
            hashes: Vec::new(),
            last_hash_key: Vec::new(),
            offset: 0,
            entries: 0,
            smallest: None,
            smallest_seq: SeqNo::MAX,
            largest_seq: 0,
            scratch: Vec::new(),
        })
    }

    pub fn add(&mut self, ikey: &[u8], value: &[u8]) -> Result<()> {
        assert!(key::is_valid(ikey), "malformed internal key added to table");
        if self.entries > 0 {
            assert_eq!(
                key::compare(self.data_last_key(), ikey),
                Ordering::Less,
                "table keys out of order"
            );
        }
        let ukey = key::user_key(ikey);
        if self.entries == 0 || self.last_hash_key.as_slice() != ukey {
            self.hashes.push(bloom::hash(ukey));
            self.last_hash_key.clear();
            self.last_hash_key.extend_from_slice(ukey);
        }
        if self.smallest.is_none() {
            self.smallest = Some(ikey.to_vec());
        }
        let seq = key::seqno(ikey);
        self.smallest_seq = self.smallest_seq.min(seq);
        self.largest_seq = self.largest_seq.max(seq);
        self.data.add(ikey, value);
        self.entries += 1;
        self.scratch.clear();
        self.scratch.extend_from_slice(ikey);
        if self.data.estimated_size() >= self.opts.block_bytes {
            self.flush_data_block()?;
        }
        Ok(())
    }

    fn data_last_key(&self) -> &[u8] {
        &self.scratch
    }

    /// Bytes written so far plus the open block.
    pub fn estimated_size(&self) -> u64 {
        self.offset + self.data.estimated_size() as u64
    }

    fn flush_data_block(&mut self) -> Result<()> {
        if self.data.is_empty() {
            return Ok(());
        }
        let last = self.data.last_key().to_vec();
        let raw = self.data.finish();
        let handle = self.write_block(&raw, self.opts.compression)?;
        let mut h = Vec::with_capacity(16);
        handle.encode(&mut h);
        self.index.add(&last, &h);
        Ok(())
    }

    fn write_block(&mut self, raw: &[u8], compression: Compression) -> Result<BlockHandle> {
        let compressed;
        let (body, ctype) = match compression {
            Compression::Lz4 => {
                compressed = lz4_flex::block::compress_prepend_size(raw);
                if compressed.len() < raw.len() - raw.len() / 8 {
                    (compressed.as_slice(), COMPRESSION_LZ4)
                } else {
                    (raw, COMPRESSION_NONE)
                }
            }
            Compression::None => (raw, COMPRESSION_NONE),
        };
        let mut crc = crc32c::crc32c(body);
        crc = crc32c::crc32c_append(crc, &[ctype]);
        let handle = BlockHandle {
            offset: self.offset,
            len: body.len() as u64,
        };
        let mut trailer = [0u8; BLOCK_TRAILER_BYTES];
        trailer[0] = ctype;
        trailer[1..].copy_from_slice(&crc.to_le_bytes());
        self.append(body)?;
        self.append(&trailer)?;
        Ok(handle)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .append(bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Writes the filter, index and footer and syncs the file.
    pub fn finish(mut self) -> Result<TableSummary> {
        assert!(self.entries > 0, "empty table");
        let largest = self.scratch.clone();
        self.flush_data_block()?;
        let filter = bloom::build(&self.hashes, self.opts.bloom_bits_per_key);
        let filter_handle = self.write_block(&filter, Compression::None)?;
        let index = self.index.finish();
        let index_handle = self.write_block(&index, Compression::None)?;
        let mut footer = Vec::with_capacity(FOOTER_BYTES);
        footer.extend_from_slice(&filter_handle.offset.to_le_bytes());
        footer.extend_from_slice(&filter_handle.len.to_le_bytes());
        footer.extend_from_slice(&index_handle.offset.to_le_bytes());
        footer.extend_from_slice(&index_handle.len.to_le_bytes());
        footer.extend_from_slice(&self.entries.to_le_bytes());
        footer.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let crc = crc32c::crc32c(&footer);
        footer.extend_from_slice(&crc.to_le_bytes());
        footer.extend_from_slice(&TABLE_MAGIC.to_le_bytes());
        debug_assert_eq!(footer.len(), FOOTER_BYTES);
        self.append(&footer)?;
        self.file.sync().map_err(|e| Error::io(&self.path, e))?;
        Ok(TableSummary {
            size: self.offset,
            entries: self.entries,
            smallest: self.smallest.take().unwrap_or_default(),
            largest,
            smallest_seq: self.smallest_seq,
            largest_seq: self.largest_seq,
        })
    }
}

/// An open table: the file handle, its index and filter in memory, and
/// data blocks read through the shared block cache.
pub(crate) struct Table {
    number: u64,
    path: PathBuf,
    file: Arc<dyn RandomAccessFile>,
    size: u64,
    index: Index,
    filter: Bloom,
    cache: Arc<BlockCache>,
    /// Set when compaction removed the table from the current version:
    /// the file is deleted once the last reader lets go.
    obsolete: AtomicBool,
    fs: Arc<dyn FileSystem>,
}

impl Table {
    pub fn open(
        fs: Arc<dyn FileSystem>,
        path: &Path,
        number: u64,
        cache: Arc<BlockCache>,
    ) -> Result<Self> {
        let file = fs.open_read(path).map_err(|e| Error::io(path, e))?;
        let size = file.len();
        let corrupt = |offset: u64, reason: &str| Error::corruption(path, offset, reason);
        if size < FOOTER_BYTES as u64 {
            return Err(corrupt(0, "file shorter than a table footer"));
        }
        let footer_at = size - FOOTER_BYTES as u64;
        let footer = file
            .read_at(footer_at, FOOTER_BYTES)
            .map_err(|e| Error::io(path, e))?;
        let mut r = Reader::new(&footer);
        let fields = (|| {
            Some((
                r.u64()?,
                r.u64()?,
                r.u64()?,
                r.u64()?,
                r.u64()?,
                r.u32()?,
                r.u32()?,
                r.u64()?,
            ))
        })();
        let Some((f_off, f_len, i_off, i_len, _entries, version, crc, magic)) = fields else {
            return Err(corrupt(footer_at, "short footer"));
        };
        if magic != TABLE_MAGIC {
            return Err(corrupt(footer_at, "bad table magic"));
        }
        if crc32c::crc32c(&footer[..44]) != crc {
            return Err(corrupt(footer_at, "footer checksum mismatch"));
        }
        if version != FORMAT_VERSION {
            let reason = format!("unsupported table format version {version}");
            return Err(corrupt(footer_at, &reason));
        }
        let filter_handle = BlockHandle {
            offset: f_off,
            len: f_len,
        };
        let filter = read_raw(file.as_ref(), path, size, filter_handle)?;
        let filter = Bloom::new(filter).ok_or_else(|| corrupt(f_off, "malformed bloom filter"))?;
        let index_handle = BlockHandle {
            offset: i_off,
            len: i_len,
        };
        let index = read_raw(file.as_ref(), path, size, index_handle)?;
        let index = Arc::new(Block::new(index, |r| corrupt(i_off, r))?);
        let index = Index::decode(&index).ok_or_else(|| corrupt(i_off, "malformed index block"))?;
        Ok(Self {
            number,
            path: path.to_path_buf(),
            file,
            size,
            index,
            filter,
            cache,
            obsolete: AtomicBool::new(false),
            fs,
        })
    }

    fn read_block(&self, h: BlockHandle, fill_cache: bool) -> Result<Arc<Block>> {
        let cache_key = (self.number, h.offset);
        if let Some(b) = self.cache.get(&cache_key) {
            return Ok(b);
        }
        let raw = read_raw(self.file.as_ref(), &self.path, self.size, h)?;
        let block = Arc::new(Block::new(raw, |r| {
            Error::corruption(&self.path, h.offset, r)
        })?);
        if fill_cache {
            self.cache.insert(cache_key, block.clone());
        }
        Ok(block)
    }

    fn corrupt_entry(&self, reason: &str) -> Error {
        Error::corruption(&self.path, 0, reason)
    }

    /// The newest entry of `user_key` at or below the lookup key's
    /// sequence number: its kind and value. `hash` is the key's filter
    /// hash ([`bloom::hash`]), computed once per lookup.
    pub fn get(
        &self,
        lookup: &[u8],
        user_key: &[u8],
        hash: u64,
    ) -> Result<Option<(ValueKind, Bytes)>> {
        if !self.filter.may_contain(hash) {
            return Ok(None);
        }
        let i = self.index.seek(lookup);
        if i >= self.index.len() {
            return Ok(None);
        }
        let handle = self.index.handle(i);
        let block = self.read_block(handle, true)?;
        let mut it = block.iter();
        it.seek_key(lookup);
        if let Some(reason) = it.error() {
            return Err(Error::corruption(&self.path, handle.offset, reason));
        }
        if !it.is_valid() || key::user_key(it.current_key()) != user_key {
            return Ok(None);
        }
        let kind = key::kind(it.current_key())
            .ok_or_else(|| Error::corruption(&self.path, handle.offset, "unknown value kind"))?;
        Ok(Some((kind, it.current_value_bytes())))
    }

    pub fn iter(self: &Arc<Self>, fill_cache: bool) -> TableIter {
        TableIter {
            table: self.clone(),
            index_pos: 0,
            data: None,
            fill_cache,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes of index and filter held in memory.
    pub fn resident_bytes(&self) -> usize {
        self.index.size() + self.filter.size()
    }

    /// Marks the file for deletion once no reader holds the table.
    pub fn mark_obsolete(&self) {
        self.obsolete.store(true, AtomicOrdering::Release);
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        if self.obsolete.load(AtomicOrdering::Acquire) {
            self.cache.evict_table(self.number);
            // Best effort: a file that fails to go is found and removed as
            // an orphan on the next open.
            let _ = self.fs.remove(&self.path);
        }
    }
}

/// Reads a block, checks its checksum and decompresses it.
fn read_raw(
    file: &dyn RandomAccessFile,
    path: &Path,
    size: u64,
    h: BlockHandle,
) -> Result<Vec<u8>> {
    let corrupt = |reason: &str| Error::corruption(path, h.offset, reason);
    let end = h
        .offset
        .checked_add(h.len)
        .and_then(|e| e.checked_add(BLOCK_TRAILER_BYTES as u64));
    match end {
        Some(end) if end <= size && h.len <= MAX_BLOCK_BYTES as u64 => {}
        _ => return Err(corrupt("block handle out of range")),
    }
    let len = h.len as usize;
    let mut buf = file
        .read_at(h.offset, len + BLOCK_TRAILER_BYTES)
        .map_err(|e| Error::io(path, e))?;
    let (body, trailer) = buf.split_at(len);
    let ctype = trailer[0];
    let want = u32::from_le_bytes([trailer[1], trailer[2], trailer[3], trailer[4]]);
    let got = crc32c::crc32c_append(crc32c::crc32c(body), &[ctype]);
    if got != want {
        return Err(corrupt("block checksum mismatch"));
    }
    match ctype {
        COMPRESSION_NONE => {
            buf.truncate(len);
            Ok(buf)
        }
        COMPRESSION_LZ4 => {
            let raw_len = body
                .get(..4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(|| corrupt("short compressed block"))?;
            if raw_len > MAX_BLOCK_BYTES {
                return Err(corrupt("compressed block too large"));
            }
            lz4_flex::block::decompress_size_prepended(body)
                .map_err(|e| corrupt(&format!("lz4: {e}")))
        }
        _ => Err(corrupt("unknown compression type")),
    }
}

/// Iterates over a table: the index block picks data blocks one by one.
pub(crate) struct TableIter {
    table: Arc<Table>,
    /// The current data block's entry in the index.
    index_pos: usize,
    data: Option<BlockIter>,
    fill_cache: bool,
}

impl TableIter {
    fn load_block(&mut self) -> Result<()> {
        self.data = None;
        if self.index_pos >= self.table.index.len() {
            return Ok(());
        }
        let handle = self.table.index.handle(self.index_pos);
        let block = self.table.read_block(handle, self.fill_cache)?;
        self.data = Some(block.iter());
        Ok(())
    }

    fn check_data(&self) -> Result<()> {
        match self.data.as_ref().and_then(BlockIter::error) {
            Some(reason) => Err(self.table.corrupt_entry(reason)),
            None => Ok(()),
        }
    }

    /// Moves to following blocks while the current one is exhausted.
    fn skip_empty_blocks(&mut self) -> Result<()> {
        loop {
            self.check_data()?;
            match &self.data {
                Some(d) if d.is_valid() => return Ok(()),
                None => return Ok(()),
                Some(_) => {}
            }
            self.index_pos += 1;
            self.load_block()?;
            if let Some(d) = self.data.as_mut() {
                d.first();
            }
        }
    }
}

impl InternalIterator for TableIter {
    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.index_pos = self.table.index.seek(target);
        self.load_block()?;
        if let Some(d) = self.data.as_mut() {
            d.seek_key(target);
        }
        self.skip_empty_blocks()
    }
    fn seek_to_first(&mut self) -> Result<()> {
        self.index_pos = 0;
        self.load_block()?;
        if let Some(d) = self.data.as_mut() {
            d.first();
        }
        self.skip_empty_blocks()
    }
    fn next(&mut self) -> Result<()> {
        if let Some(d) = self.data.as_mut() {
            d.advance();
        }
        self.skip_empty_blocks()
    }
    fn valid(&self) -> bool {
        self.data.as_ref().is_some_and(BlockIter::is_valid)
    }
    fn key(&self) -> &[u8] {
        self.data.as_ref().map_or(&[], BlockIter::current_key)
    }
    fn value(&self) -> &[u8] {
        self.data.as_ref().map_or(&[], BlockIter::current_value)
    }
    fn value_bytes(&self) -> Bytes {
        self.data
            .as_ref()
            .map_or_else(Bytes::new, BlockIter::current_value_bytes)
    }
}
