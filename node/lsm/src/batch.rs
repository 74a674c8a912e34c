//! Write batches: a group of puts and deletes applied atomically, plus an
//! optional user-metadata value persisted with the flush that makes the
//! batch durable.

use super::coding::{put_len_prefixed, Reader};
use super::key::{SeqNo, ValueKind};

/// An atomic group of puts and deletes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// Encoded ops: `kind u8, key (varint len + bytes)[, value (varint len + bytes)]`.
    ops: Vec<u8>,
    count: u32,
    metadata: Option<Vec<u8>>,
}

/// One operation of a batch, borrowed from its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOp<'a> {
    /// Put or delete.
    pub kind: ValueKind,
    /// The user key.
    pub key: &'a [u8],
    /// The value (empty for a delete).
    pub value: &'a [u8],
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `bytes` of encoded ops.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            ops: Vec::with_capacity(bytes),
            ..Self::default()
        }
    }

    /// Adds a put of `key` to `value`.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        self.ops.push(ValueKind::Put as u8);
        put_len_prefixed(&mut self.ops, key.as_ref());
        put_len_prefixed(&mut self.ops, value.as_ref());
        self.count += 1;
        self
    }

    /// Adds a delete of `key`.
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        self.ops.push(ValueKind::Delete as u8);
        put_len_prefixed(&mut self.ops, key.as_ref());
        self.count += 1;
        self
    }

    /// Attaches user metadata: once this batch is flushed to a table, the
    /// value is stored atomically with that flush and returned by
    /// [`super::Db::durable_user_metadata`]. The Raft layer stores its last
    /// applied log id here.
    pub fn set_user_metadata(&mut self, metadata: impl Into<Vec<u8>>) -> &mut Self {
        self.metadata = Some(metadata.into());
        self
    }

    /// The attached metadata, if any.
    pub fn user_metadata(&self) -> Option<&[u8]> {
        self.metadata.as_deref()
    }

    /// Number of puts and deletes.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when the batch has no puts or deletes.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Approximate encoded size in bytes.
    pub fn approximate_size(&self) -> usize {
        self.ops.len() + self.metadata.as_ref().map_or(0, Vec::len) + 16
    }

    /// Removes every op and the metadata.
    pub fn clear(&mut self) {
        self.ops.clear();
        self.count = 0;
        self.metadata = None;
    }

    /// Iterates over the ops in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = BatchOp<'_>> + '_ {
        let mut r = Reader::new(&self.ops);
        std::iter::from_fn(move || decode_op(&mut r))
    }

    /// Encodes the batch as a WAL record payload starting at `seq`:
    /// `seq u64, count u32, has_meta u8, [meta len-prefixed], ops`.
    pub(crate) fn encode(&self, seq: SeqNo, out: &mut Vec<u8>) {
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        match &self.metadata {
            Some(m) => {
                out.push(1);
                put_len_prefixed(out, m);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.ops);
    }

    /// Decodes a WAL record payload; `None` if it is malformed.
    pub(crate) fn decode(payload: &[u8]) -> Option<(SeqNo, WriteBatch)> {
        let mut r = Reader::new(payload);
        let seq = r.u64()?;
        let count = r.u32()?;
        let metadata = match r.u8()? {
            0 => None,
            1 => Some(r.len_prefixed()?.to_vec()),
            _ => return None,
        };
        let ops = payload[r.pos()..].to_vec();
        let batch = WriteBatch {
            ops,
            count,
            metadata,
        };
        // Validate every op now so that applying it later cannot fail.
        let mut check = Reader::new(&batch.ops);
        let mut n = 0u32;
        while !check.is_empty() {
            decode_op(&mut check)?;
            n += 1;
        }
        (n == count).then_some((seq, batch))
    }

    pub(crate) fn take_metadata(&mut self) -> Option<Vec<u8>> {
        self.metadata.take()
    }
}

fn decode_op<'a>(r: &mut Reader<'a>) -> Option<BatchOp<'a>> {
    if r.is_empty() {
        return None;
    }
    let kind = ValueKind::from_u8(r.u8()?)?;
    let key = r.len_prefixed()?;
    let value = match kind {
        ValueKind::Put => r.len_prefixed()?,
        ValueKind::Delete => &[],
    };
    Some(BatchOp { kind, key, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_roundtrip() {
        let mut b = WriteBatch::new();
        b.put("a", "1")
            .delete("b")
            .set_user_metadata(b"meta".to_vec());
        let mut buf = Vec::new();
        b.encode(42, &mut buf);
        let (seq, d) = WriteBatch::decode(&buf).unwrap();
        assert_eq!(seq, 42);
        assert_eq!(d, b);
        let ops: Vec<_> = d.iter().collect();
        assert_eq!(ops[1].kind, ValueKind::Delete);
        assert!(WriteBatch::decode(&buf[..buf.len() - 1]).is_none());
    }
}
