//! Internal keys: a user key tagged with the sequence number and kind of
//! the write that made it.
//!
//! ```text
//! internal key = user_key ++ trailer: u64 LE, trailer = seqno << 8 | kind
//! ```
//!
//! Internal keys order by user key ascending, then by sequence number
//! descending, so the newest version of a key comes first.

use std::cmp::Ordering;

/// A write's position in the total order of writes. Sequence numbers fit
/// in 56 bits.
pub type SeqNo = u64;

/// Largest sequence number the engine can hand out.
pub const MAX_SEQNO: SeqNo = (1 << 56) - 1;

/// Bytes in the trailer after the user key.
pub const TRAILER_BYTES: usize = 8;

/// What a write did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum ValueKind {
    /// A tombstone: the key was deleted.
    Delete = 0,
    /// A value was stored.
    Put = 1,
}

impl ValueKind {
    /// Decodes a kind byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            0 => Some(ValueKind::Delete),
            1 => Some(ValueKind::Put),
            _ => None,
        }
    }
}

/// Encodes an internal key into `out`.
pub fn encode_into(out: &mut Vec<u8>, user_key: &[u8], seq: SeqNo, kind: ValueKind) {
    debug_assert!(seq <= MAX_SEQNO);
    out.extend_from_slice(user_key);
    out.extend_from_slice(&((seq << 8) | kind as u64).to_le_bytes());
}

/// Encodes an internal key.
pub fn encode(user_key: &[u8], seq: SeqNo, kind: ValueKind) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + TRAILER_BYTES);
    encode_into(&mut out, user_key, seq, kind);
    out
}

/// The smallest internal key for `user_key` visible at `seq`: seeking to it
/// lands on the newest version with a sequence number `<= seq`.
pub fn lookup_key(user_key: &[u8], seq: SeqNo) -> Vec<u8> {
    encode(user_key, seq, ValueKind::Put)
}

/// The user key part of an internal key. Internal keys are always at least
/// [`TRAILER_BYTES`] long (checked when they are decoded from disk).
pub fn user_key(ikey: &[u8]) -> &[u8] {
    &ikey[..ikey.len().saturating_sub(TRAILER_BYTES)]
}

fn trailer(ikey: &[u8]) -> u64 {
    let n = ikey.len();
    if n < TRAILER_BYTES {
        return 0;
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&ikey[n - TRAILER_BYTES..]);
    u64::from_le_bytes(t)
}

/// The sequence number of an internal key.
pub fn seqno(ikey: &[u8]) -> SeqNo {
    trailer(ikey) >> 8
}

/// The kind of an internal key; `None` for an unknown kind byte.
pub fn kind(ikey: &[u8]) -> Option<ValueKind> {
    ValueKind::from_u8(trailer(ikey) as u8)
}

/// True when `ikey` is long enough and has a known kind.
pub fn is_valid(ikey: &[u8]) -> bool {
    ikey.len() >= TRAILER_BYTES && kind(ikey).is_some()
}

/// The internal key order: user key ascending, then trailer descending.
pub fn compare(a: &[u8], b: &[u8]) -> Ordering {
    user_key(a)
        .cmp(user_key(b))
        .then_with(|| trailer(b).cmp(&trailer(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_version_sorts_first() {
        let old = encode(b"k", 1, ValueKind::Put);
        let new = encode(b"k", 2, ValueKind::Delete);
        assert_eq!(compare(&new, &old), Ordering::Less);
        let a = encode(b"a", 1, ValueKind::Put);
        let ab = encode(b"ab", 9, ValueKind::Put);
        assert_eq!(compare(&a, &ab), Ordering::Less);
        assert_eq!(seqno(&new), 2);
        assert_eq!(kind(&new), Some(ValueKind::Delete));
        assert_eq!(user_key(&ab), b"ab");
        // The lookup key at seq 2 sorts before (or at) every version <= 2.
        assert_ne!(compare(&lookup_key(b"k", 2), &new), Ordering::Greater);
        assert_eq!(compare(&lookup_key(b"k", 1), &new), Ordering::Greater);
    }
}
