//! Blocks: sorted key-value entries with prefix-compressed keys and restart
//! points, the unit of caching and checksumming (format in FORMAT.md).
//!
//! ```text
//! entry    = shared: varint, unshared: varint, value_len: varint,
//!            key[shared..] (unshared bytes), value (value_len bytes)
//! block    = entry* restart: u32 LE * n, n: u32 LE
//! ```
//! Every `restart_interval`-th entry stores its whole key (`shared = 0`)
//! and its offset is listed in the restart array, so a seek binary-searches
//! the restarts and then scans at most one interval.

use std::cmp::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::coding::{get_u32, put_varint, Reader};
use crate::iterator::InternalIterator;
use crate::key;
use crate::{Error, Result};

/// Builds one block.
pub(crate) struct BlockBuilder {
    buf: Vec<u8>,
    restarts: Vec<u32>,
    restart_interval: usize,
    since_restart: usize,
    last_key: Vec<u8>,
    entries: usize,
}

impl BlockBuilder {
    pub fn new(restart_interval: usize) -> Self {
        assert!(restart_interval >= 1);
        Self {
            buf: Vec::with_capacity(4096 + 512),
            restarts: vec![0],
            restart_interval,
            since_restart: 0,
            last_key: Vec::new(),
            entries: 0,
        }
    }

    /// Appends an entry; keys must arrive in strictly increasing order.
    pub fn add(&mut self, ikey: &[u8], value: &[u8]) {
        debug_assert!(
            self.entries == 0 || key::compare(&self.last_key, ikey) == Ordering::Less,
            "block keys out of order"
        );
        let shared = if self.since_restart == self.restart_interval {
            self.restarts.push(self.buf.len() as u32);
            self.since_restart = 0;
            0
        } else {
            self.last_key
                .iter()
                .zip(ikey)
                .take_while(|(a, b)| a == b)
                .count()
        };
        put_varint(&mut self.buf, shared as u64);
        put_varint(&mut self.buf, (ikey.len() - shared) as u64);
        put_varint(&mut self.buf, value.len() as u64);
        self.buf.extend_from_slice(&ikey[shared..]);
        self.buf.extend_from_slice(value);
        self.last_key.clear();
        self.last_key.extend_from_slice(ikey);
        self.since_restart += 1;
        self.entries += 1;
    }

    pub fn estimated_size(&self) -> usize {
        self.buf.len() + 4 * self.restarts.len() + 4
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn last_key(&self) -> &[u8] {
        &self.last_key
    }

    /// Returns the encoded block and resets the builder.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.buf);
        for r in &self.restarts {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&(self.restarts.len() as u32).to_le_bytes());
        self.restarts.clear();
        self.restarts.push(0);
        self.since_restart = 0;
        self.last_key.clear();
        self.entries = 0;
        out
    }
}

/// A decoded, validated block held in memory (and in the block cache).
pub(crate) struct Block {
    data: Bytes,
    restarts_offset: usize,
    num_restarts: usize,
}

impl Block {
    /// Validates the restart array; `corrupt` builds the error naming the block.
    pub fn new(data: Vec<u8>, corrupt: impl Fn(&str) -> Error) -> Result<Self> {
        let data = Bytes::from(data);
        let n = data.len();
        let num_restarts = n
            .checked_sub(4)
            .and_then(|p| get_u32(&data, p))
            .ok_or_else(|| corrupt("block too short"))? as usize;
        let restarts_offset = num_restarts
            .checked_mul(4)
            .and_then(|r| n.checked_sub(4 + r))
            .ok_or_else(|| corrupt("bad restart count"))?;
        if num_restarts == 0 {
            return Err(corrupt("block has no restart points"));
        }
        let block = Self {
            data,
            restarts_offset,
            num_restarts,
        };
        for i in 0..num_restarts {
            if block.restart(i) > restarts_offset {
                return Err(corrupt("restart point past the entries"));
            }
        }
        Ok(block)
    }

    fn restart(&self, i: usize) -> usize {
        get_u32(&self.data, self.restarts_offset + 4 * i).unwrap_or(u32::MAX) as usize
    }

    pub fn size(&self) -> usize {
        self.data.len()
    }

    pub fn iter(self: &Arc<Self>) -> BlockIter {
        BlockIter {
            block: self.clone(),
            offset: self.restarts_offset,
            next_offset: self.restarts_offset,
            key: Vec::new(),
            value: (0, 0),
            error: None,
        }
    }
}

/// An iterator over one block.
pub(crate) struct BlockIter {
    block: Arc<Block>,
    /// Offset of the current entry (`restarts_offset` = invalid).
    offset: usize,
    next_offset: usize,
    key: Vec<u8>,
    value: (usize, usize),
    error: Option<&'static str>,
}

impl BlockIter {
    /// The error that stopped iteration, if any (a malformed entry).
    pub fn error(&self) -> Option<&'static str> {
        self.error
    }

    fn invalidate(&mut self) {
        self.offset = self.block.restarts_offset;
        self.next_offset = self.block.restarts_offset;
    }

    /// Decodes the entry at `self.next_offset`, building on `self.key`.
    fn parse_next(&mut self) -> bool {
        let end = self.block.restarts_offset;
        if self.next_offset >= end {
            self.invalidate();
            return false;
        }
        let data = &self.block.data[..end];
        let mut r = Reader::new(&data[self.next_offset..]);
        let parsed = (|| {
            let shared = r.len()?;
            let unshared = r.len()?;
            let vlen = r.len()?;
            let delta = r.bytes(unshared)?;
            let vstart = r.pos();
            r.bytes(vlen)?;
            Some((shared, delta, vstart, vlen))
        })();
        let Some((shared, delta, vstart, vlen)) = parsed else {
            self.error = Some("malformed block entry");
            self.invalidate();
            return false;
        };
        if shared > self.key.len() {
            self.error = Some("block entry shares more than the previous key");
            self.invalidate();
            return false;
        }
        self.key.truncate(shared);
        self.key.extend_from_slice(delta);
        if self.key.len() < key::TRAILER_BYTES {
            self.error = Some("malformed internal key in block");
            self.invalidate();
            return false;
        }
        self.offset = self.next_offset;
        self.value = (self.offset + vstart, vlen);
        self.next_offset = self.offset + r.pos();
        true
    }

    fn seek_to_restart(&mut self, i: usize) {
        self.key.clear();
        self.next_offset = self.block.restart(i);
    }

    /// The whole key stored at restart point `i` (restart entries share
    /// nothing with their predecessor), borrowed from the block.
    fn restart_key(&self, i: usize) -> Option<&[u8]> {
        let data = &self.block.data[..self.block.restarts_offset];
        let mut r = Reader::new(data.get(self.block.restart(i)..)?);
        let shared = r.len()?;
        let unshared = r.len()?;
        r.len()?;
        let key = r.bytes(unshared)?;
        (shared == 0 && key.len() >= key::TRAILER_BYTES).then_some(key)
    }

    /// Positions at the first entry `>= target`.
    pub fn seek_key(&mut self, target: &[u8]) {
        // Binary search for the last restart whose key is < target,
        // comparing keys in place.
        let (mut lo, mut hi) = (0usize, self.block.num_restarts - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let Some(k) = self.restart_key(mid) else {
                self.error = Some("malformed restart entry");
                self.invalidate();
                return;
            };
            if key::compare(k, target) == Ordering::Less {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        self.seek_to_restart(lo);
        while self.parse_next() {
            if key::compare(&self.key, target) != Ordering::Less {
                return;
            }
        }
    }

    pub fn first(&mut self) {
        self.seek_to_restart(0);
        self.parse_next();
    }

    pub fn advance(&mut self) {
        self.parse_next();
    }

    pub fn is_valid(&self) -> bool {
        self.offset < self.block.restarts_offset
    }

    pub fn current_key(&self) -> &[u8] {
        &self.key
    }

    pub fn current_value(&self) -> &[u8] {
        let (start, len) = self.value;
        &self.block.data[start..start + len]
    }

    /// The current value as a zero-copy slice of the block.
    pub fn current_value_bytes(&self) -> Bytes {
        let (start, len) = self.value;
        self.block.data.slice(start..start + len)
    }
}

impl InternalIterator for BlockIter {
    fn seek(&mut self, target: &[u8]) -> Result<()> {
        self.seek_key(target);
        Ok(())
    }
    fn seek_to_first(&mut self) -> Result<()> {
        self.first();
        Ok(())
    }
    fn next(&mut self) -> Result<()> {
        self.advance();
        Ok(())
    }
    fn valid(&self) -> bool {
        self.is_valid()
    }
    fn key(&self) -> &[u8] {
        self.current_key()
    }
    fn value(&self) -> &[u8] {
        self.current_value()
    }
    fn value_bytes(&self) -> Bytes {
        self.current_value_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ValueKind;

    fn ik(i: u32) -> Vec<u8> {
        key::encode(format!("key{i:05}").as_bytes(), 7, ValueKind::Put)
    }

    #[test]
    fn build_seek_iterate() {
        let mut b = BlockBuilder::new(16);
        for i in (0..500).step_by(2) {
            b.add(&ik(i), format!("v{i}").as_bytes());
        }
        let block = Arc::new(Block::new(b.finish(), |r| Error::corruption("t", 0, r)).unwrap());
        let mut it = block.iter();
        it.first();
        let mut n = 0;
        while it.is_valid() {
            assert_eq!(it.current_key(), ik(n * 2).as_slice());
            n += 1;
            it.advance();
        }
        assert_eq!(n, 250);
        it.seek_key(&ik(101));
        assert_eq!(it.current_key(), ik(102).as_slice());
        assert_eq!(it.current_value(), b"v102");
        it.seek_key(&ik(0));
        assert_eq!(it.current_key(), ik(0).as_slice());
        it.seek_key(&ik(999));
        assert!(!it.is_valid());
        assert!(it.error().is_none());
    }

    #[test]
    fn garbage_blocks_never_panic() {
        use proptest::prelude::*;
        proptest!(|(bytes: Vec<u8>, target: Vec<u8>)| {
            if let Ok(block) = Block::new(bytes, |r| Error::corruption("t", 0, r)) {
                let block = Arc::new(block);
                let mut it = block.iter();
                it.first();
                let mut steps = 0;
                while it.is_valid() && steps < 10_000 { it.advance(); steps += 1; }
                it.seek_key(&target);
            }
        });
    }
}
