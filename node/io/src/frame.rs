//! Record framing shared by the WAL and the manifest (and, later, the Raft
//! log): each record is a 12-byte header and a payload.
//!
//! ```text
//! +-------------+-----------------+-----------------+------------------+
//! | len: u32 LE | payload_crc u32 | header_crc u32  | payload (len B)  |
//! +-------------+-----------------+-----------------+------------------+
//! header_crc = crc32c(len ++ payload_crc); payload_crc = crc32c(payload)
//! ```
//!
//! The header checksum lets recovery trust `len` before reading the
//! payload, so a torn tail (the file ends inside a record) is told apart
//! from damage in the middle of the file. See FORMAT.md for the rules.

/// Size of a record header in bytes.
pub const HEADER_BYTES: usize = 12;

/// Largest payload one record may carry.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 30;

/// Appends one framed record whose payload `write` appends to `out`
/// (saves a copy when the payload is encoded on the spot).
pub fn encode_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    write(out);
    let len = out.len() - start - HEADER_BYTES;
    assert!(len <= MAX_PAYLOAD_BYTES, "record too large");
    let pcrc = crc32c::crc32c(&out[start + HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&pcrc.to_le_bytes());
    let hcrc = crc32c::crc32c(&out[start..start + 8]);
    out[start + 8..start + 12].copy_from_slice(&hcrc.to_le_bytes());
}

/// Appends one framed record holding `payload` to `out`.
pub fn encode(out: &mut Vec<u8>, payload: &[u8]) {
    encode_with(out, |o| o.extend_from_slice(payload));
}

/// What reading a framed file found after its last good record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// The file ends exactly after the last record.
    Clean,
    /// The file ends inside a record, or its last record is damaged and
    /// nothing follows it: an interrupted write that was never
    /// acknowledged as synced. Recovery cuts the file at `offset`.
    Torn {
        /// Where the last good record ends.
        offset: u64,
    },
    /// A damaged record is followed by more data: real corruption.
    Corrupt {
        /// Offset of the damaged record.
        offset: u64,
        /// What check failed.
        reason: &'static str,
    },
}

/// Splits `data` into record payloads. Stops at the first bad record and
/// reports in [`Tail`] whether it was a torn tail or corruption.
pub fn decode_all(data: &[u8]) -> (Vec<&[u8]>, Tail) {
    let mut records = Vec::new();
    let mut pos = 0usize;
    loop {
        let rest = &data[pos..];
        if rest.is_empty() {
            return (records, Tail::Clean);
        }
        let torn = Tail::Torn { offset: pos as u64 };
        if rest.len() < HEADER_BYTES {
            return (records, torn);
        }
        let head = &rest[..8];
        let hcrc = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]);
        if crc32c::crc32c(head) != hcrc {
            // Never written (a header of zeros cannot be valid: its
            // checksum would be crc32c of eight zero bytes, which is not
            // zero), or a header cut short with nothing after it: a torn
            // write. Anything else is damage.
            let header_is_zero = rest[..HEADER_BYTES].iter().all(|&b| b == 0);
            let nothing_after = rest[HEADER_BYTES..].iter().all(|&b| b == 0);
            if header_is_zero || nothing_after {
                return (records, torn);
            }
            let reason = "record header checksum mismatch";
            return (
                records,
                Tail::Corrupt {
                    offset: pos as u64,
                    reason,
                },
            );
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let pcrc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_PAYLOAD_BYTES {
            let reason = "record length over the limit";
            return (
                records,
                Tail::Corrupt {
                    offset: pos as u64,
                    reason,
                },
            );
        }
        let Some(payload) = rest.get(HEADER_BYTES..HEADER_BYTES + len) else {
            return (records, torn); // the header is good, the payload was cut
        };
        if crc32c::crc32c(payload) != pcrc {
            // The last record, or one followed only by preallocated zeros.
            if rest[HEADER_BYTES + len..].iter().all(|&b| b == 0) {
                return (records, torn);
            }
            let reason = "record payload checksum mismatch";
            return (
                records,
                Tail::Corrupt {
                    offset: pos as u64,
                    reason,
                },
            );
        }
        records.push(payload);
        pos += HEADER_BYTES + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            encode(&mut out, p);
        }
        out
    }

    #[test]
    fn roundtrip_and_torn_tail() {
        let data = file(&[b"one", b"two", b"three"]);
        let (recs, tail) = decode_all(&data);
        assert_eq!(recs, vec![&b"one"[..], b"two", b"three"]);
        assert_eq!(tail, Tail::Clean);
        for cut in 0..data.len() {
            let (recs, tail) = decode_all(&data[..cut]);
            let whole = recs.iter().map(|r| r.len() + HEADER_BYTES).sum::<usize>();
            assert!(whole <= cut);
            assert!(
                matches!(tail, Tail::Torn { .. } | Tail::Clean),
                "cut {cut}: {tail:?}"
            );
        }
    }

    #[test]
    fn preallocated_zeros_end_the_log_quietly() {
        let mut data = file(&[b"one", b"two"]);
        let whole = data.len();
        data.resize(whole + 100, 0);
        let (recs, tail) = decode_all(&data);
        assert_eq!(recs.len(), 2);
        assert_eq!(
            tail,
            Tail::Torn {
                offset: whole as u64
            }
        );
        // A record cut mid-payload inside the zeros is torn too.
        let mut cut = file(&[b"one", b"a longer second record"]);
        let n = cut.len();
        cut[n - 5..].fill(0);
        cut.resize(n + 64, 0);
        let (recs, tail) = decode_all(&cut);
        assert_eq!(recs, vec![&b"one"[..]]);
        assert!(matches!(tail, Tail::Torn { .. }));
    }

    #[test]
    fn flipped_byte_in_middle_is_corruption() {
        let mut data = file(&[b"one", b"two", b"three"]);
        for i in 0..(HEADER_BYTES + 3) {
            let mut d = data.clone();
            d[i] ^= 0x01;
            let (recs, tail) = decode_all(&d);
            assert!(recs.is_empty());
            assert!(
                matches!(tail, Tail::Corrupt { offset: 0, .. }),
                "byte {i}: {tail:?}"
            );
        }
        data[HEADER_BYTES * 2 + 3 + 1] ^= 0x40; // payload of the second record
        assert!(matches!(decode_all(&data).1, Tail::Corrupt { .. }));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes: Vec<u8>) {
            let _ = decode_all(&bytes);
        }
    }
}
