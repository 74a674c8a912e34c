//! Record framing shared by the LSM's WAL and manifest and the Raft log:
//! each record is a 12-byte header, a payload and a 4-byte trailer.
//!
//! ```text
//! +--------------+-----------------+-----------------+---------------------+-------------+
//! | word: u32 LE | payload_crc u32 | header_crc u32  | payload (len bytes) | FF FF FF FF |
//! +--------------+-----------------+-----------------+---------------------+-------------+
//! word        = len | MARK << 30 | SCRAMBLED << 31      (len < 2^29)
//! payload_crc = crc32c(payload)        header_crc = crc32c(word ++ payload_crc)
//! on disk     : payload XOR keystream(payload_crc)     (when SCRAMBLED)
//! ```
//!
//! (Records of the first format have neither the flag bits, nor the
//! scrambling, nor the trailer; they are still read.)
//!
//! The header checksum lets recovery trust `len` before reading the
//! payload. A write that stopped before the end of a record leaves zeros
//! in its trailer (a flipped bit never turns 0xFF into zero), and
//! scrambling makes a run of eight zero bytes inside a written record
//! practically impossible, so zeros are the trace of bytes that never
//! reached the disk. A *sync mark* (a record with the MARK bit) is
//! written first after every fsync: a valid mark after a damaged record
//! proves the damaged record was synced, hence acknowledged. Together they
//! tell a torn write (safe to cut) from corruption (never cut). See
//! `docs/durability.md` and the FORMAT pages for the rules.

/// Size of a record header in bytes.
pub const HEADER_BYTES: usize = 12;

/// Largest payload one record may carry.
pub const MAX_PAYLOAD_BYTES: usize = (1 << 29) - 1;

/// Size of a record trailer in bytes.
pub const TRAILER_BYTES: usize = 4;

/// The trailer of every record.
const TRAILER: [u8; TRAILER_BYTES] = [0xFF; TRAILER_BYTES];

/// Size of a sync mark (header, its 9-byte payload and trailer).
pub const MARK_BYTES: usize = HEADER_BYTES + 9 + TRAILER_BYTES;

/// Bytes a record with a payload of `payload_len` bytes takes in a file.
pub const fn framed_len(payload_len: usize) -> usize {
    HEADER_BYTES + payload_len + TRAILER_BYTES
}

/// The sector size assumed for torn writes: a sector reaches the disk
/// whole or not at all, and the sectors of one write in any order.
pub const SECTOR_BYTES: usize = 512;

/// Zero bytes in a row that prove a sector of a record was never written
/// (a scrambled record holds such a run with probability about 2^-64).
const MIN_ZERO_RUN: usize = 8;

const SCRAMBLED: u32 = 1 << 31;
const MARK: u32 = 1 << 30;
const LEN_MASK: u32 = (1 << 29) - 1;

/// XORs `buf` with the keystream of `seed` (its own inverse).
fn scramble(buf: &mut [u8], seed: u32) {
    let mut x = ((u64::from(seed) << 32) | u64::from(!seed)) ^ 0x9E37_79B9_7F4A_7C15;
    if x == 0 {
        x = 1;
    }
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_le_bytes(word) ^ x).to_le_bytes());
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    for (b, k) in chunks.into_remainder().iter_mut().zip(x.to_le_bytes()) {
        *b ^= k;
    }
}

fn finish(out: &mut Vec<u8>, start: usize, flags: u32) {
    let len = out.len() - start - HEADER_BYTES;
    assert!(len <= MAX_PAYLOAD_BYTES, "record of {len} bytes: too large");
    let pcrc = crc32c::crc32c(&out[start + HEADER_BYTES..]);
    scramble(&mut out[start + HEADER_BYTES..], pcrc);
    let word = len as u32 | flags | SCRAMBLED;
    out[start..start + 4].copy_from_slice(&word.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&pcrc.to_le_bytes());
    let hcrc = crc32c::crc32c(&out[start..start + 8]);
    out[start + 8..start + 12].copy_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(&TRAILER);
}

/// Appends one framed record whose payload `write` appends to `out`
/// (saves a copy when the payload is encoded on the spot).
pub fn encode_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    write(out);
    finish(out, start, 0);
}

/// Appends one framed record holding `payload` to `out`.
pub fn encode(out: &mut Vec<u8>, payload: &[u8]) {
    encode_with(out, |o| o.extend_from_slice(payload));
}

/// Appends a mark that will sit at `offset` of its file. With `synced`,
/// it says that everything before it in the file was fsynced before it
/// was written; without, it is a filler of the same size.
pub fn encode_mark(out: &mut Vec<u8>, offset: u64, synced: bool) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.push(u8::from(synced));
    finish(out, start, MARK);
}

/// How a file's writer orders its fsyncs, which tells what a valid record
/// after a damaged one proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syncs {
    /// Each record is synced before the next is written (the manifest, a
    /// small file): any valid record after damage proves it synced.
    EachRecord,
    /// Records are synced in batches, each batch after a sync starting
    /// with a sync mark (the WAL, the Raft log).
    Marked,
}

/// What reading a framed file found after its last good record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// The file ends exactly after the last record.
    Clean,
    /// Only zero bytes follow the last record (preallocated space, or a
    /// write none of whose sectors reached the disk).
    Zeros {
        /// Where the last good record ends.
        offset: u64,
    },
    /// A record that was never completely written (the file ends inside
    /// it, or one of its sectors holds only zeros) and that no later sync
    /// covered: an interrupted write never acknowledged as synced.
    /// Recovery cuts the file at `offset`.
    Torn {
        /// Where the last good record ends.
        offset: u64,
    },
    /// A record that was completely written, or that a later sync
    /// covered, fails its checksum: real corruption, never cut.
    Corrupt {
        /// Offset of the damaged record.
        offset: u64,
        /// What check failed.
        reason: &'static str,
    },
}

/// One good record of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Offset of its header in the file.
    pub offset: u64,
    /// The payload.
    pub payload: &'a [u8],
    /// Where the record ends in the file.
    end: u64,
}

impl Record<'_> {
    /// Bytes the record takes in the file.
    pub fn framed_len(&self) -> u64 {
        self.end - self.offset
    }
}

/// What [`decode_all`] found.
#[derive(Debug)]
pub struct Decoded<'a> {
    /// The good records in order (marks left out).
    pub records: Vec<Record<'a>>,
    /// Where the last good record (or mark) ends.
    pub end: u64,
    /// What follows it.
    pub tail: Tail,
}

struct Header {
    len: usize,
    /// Bytes after the payload (the trailer; none in the first format).
    trailer: usize,
    mark: bool,
    scrambled: bool,
    pcrc: u32,
}

/// The header at the start of `rest`, if its checksum holds.
fn header(rest: &[u8]) -> Option<Header> {
    let raw = rest.get(..HEADER_BYTES)?;
    let hcrc = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
    if crc32c::crc32c(&raw[..8]) != hcrc {
        return None;
    }
    let word = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let scrambled = word & SCRAMBLED != 0;
    Some(Header {
        // Records written before scrambling hold a plain length.
        len: if scrambled { word & LEN_MASK } else { word } as usize,
        trailer: if scrambled { TRAILER_BYTES } else { 0 },
        mark: scrambled && word & MARK != 0,
        scrambled,
        pcrc: u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]),
    })
}

/// Unscrambles the payload `data[range]` in place and checks it; a payload
/// that fails is left as it was.
fn open_payload(data: &mut [u8], h: &Header, range: std::ops::Range<usize>) -> bool {
    let payload = &mut data[range];
    if h.scrambled {
        scramble(payload, h.pcrc);
    }
    if crc32c::crc32c(payload) == h.pcrc {
        return true;
    }
    if h.scrambled {
        scramble(payload, h.pcrc);
    }
    false
}

/// Splits `data` into record payloads, unscrambling them in place. Stops
/// at the first bad record and reports in [`Tail`] whether what follows
/// is zeros, a torn write or corruption, by the rules of `syncs`.
pub fn decode_all(data: &mut [u8], syncs: Syncs) -> Decoded<'_> {
    let mut found = Vec::new();
    let mut pos = 0usize;
    let tail = loop {
        let rest = &data[pos..];
        if rest.is_empty() {
            break Tail::Clean;
        }
        if rest.iter().all(|&b| b == 0) {
            break Tail::Zeros { offset: pos as u64 };
        }
        let Some(h) = header(rest) else {
            break classify(data, pos, syncs, "record header checksum mismatch");
        };
        if h.len > MAX_PAYLOAD_BYTES {
            break classify(data, pos, syncs, "record length over the limit");
        }
        let body = pos + HEADER_BYTES..pos + HEADER_BYTES + h.len;
        let end = body.end + h.trailer;
        if end > data.len() {
            break classify(data, pos, syncs, "record runs past the end of the file");
        }
        if data[body.end..end] != TRAILER[..h.trailer] {
            break classify(data, pos, syncs, "record trailer damaged");
        }
        if !open_payload(data, &h, body.clone()) {
            break classify(data, pos, syncs, "record payload checksum mismatch");
        }
        if !h.mark {
            found.push((pos, body.clone(), end));
        }
        pos = end;
    };
    let data: &[u8] = data;
    Decoded {
        records: found
            .into_iter()
            .map(|(offset, body, end)| Record {
                offset: offset as u64,
                payload: &data[body],
                end: end as u64,
            })
            .collect(),
        end: pos as u64,
        tail,
    }
}

/// Decides what the bad record at `pos` is.
fn classify(data: &[u8], pos: usize, syncs: Syncs, reason: &'static str) -> Tail {
    if synced_after(data, pos, syncs) {
        return Tail::Corrupt {
            offset: pos as u64,
            reason,
        };
    }
    if never_completely_written(data, pos) {
        return Tail::Torn { offset: pos as u64 };
    }
    Tail::Corrupt {
        offset: pos as u64,
        reason: match reason {
            "record payload checksum mismatch" => {
                "record payload checksum mismatch in a completely written record"
            }
            "record header checksum mismatch" => {
                "record header checksum mismatch in a completely written header"
            }
            other => other,
        },
    }
}

/// Whether a valid record after `pos` proves that the record at `pos` was
/// synced: any record for [`Syncs::EachRecord`], a sync mark for
/// [`Syncs::Marked`].
fn synced_after(data: &[u8], pos: usize, syncs: Syncs) -> bool {
    let mut q = pos + 1;
    while q + HEADER_BYTES <= data.len() {
        let Some(h) = header(&data[q..]) else {
            q += 1;
            continue;
        };
        let body_end = q + HEADER_BYTES + h.len;
        let end = body_end + h.trailer;
        if h.len > MAX_PAYLOAD_BYTES
            || end > data.len()
            || data[body_end..end] != TRAILER[..h.trailer]
        {
            q += 1;
            continue;
        }
        let mut payload = data[q + HEADER_BYTES..body_end].to_vec();
        let len = payload.len();
        if !open_payload(&mut payload, &h, 0..len) {
            q += 1;
            continue;
        }
        let proves = match syncs {
            Syncs::EachRecord => true,
            Syncs::Marked => {
                h.mark
                    && payload.len() == 9
                    && payload[..8] == (q as u64).to_le_bytes()
                    && payload[8] == 1
            }
        };
        if proves {
            return true;
        }
        q = end;
    }
    false
}

/// Whether the record at `pos` shows the trace of a write that did not
/// complete: the file ends inside it, its trailer holds a zero byte (the
/// write stopped before its end), or a sector of it (to the sector's end,
/// or the file's) holds only zeros. A header that does not check out
/// gives no length: only its own sectors are looked at, and whether the
/// file holds nothing but zeros after some byte of it.
fn never_completely_written(data: &[u8], pos: usize) -> bool {
    let rest = &data[pos..];
    if rest.len() < HEADER_BYTES {
        return true;
    }
    let end = match header(rest) {
        Some(h) if h.len <= MAX_PAYLOAD_BYTES => {
            let body_end = pos + HEADER_BYTES + h.len;
            let end = body_end + h.trailer;
            if end > data.len() || data[body_end..end].contains(&0) {
                return true;
            }
            end
        }
        _ => {
            // The write stopped inside the header: nothing after it.
            if rest
                .iter()
                .rposition(|&b| b != 0)
                .is_none_or(|last| last < HEADER_BYTES)
            {
                return true;
            }
            pos + HEADER_BYTES
        }
    };
    let mut sector = pos / SECTOR_BYTES * SECTOR_BYTES;
    while sector < end {
        let a = sector.max(pos);
        let b = (sector + SECTOR_BYTES).min(data.len());
        if b - a >= MIN_ZERO_RUN && data[a..b].iter().all(|&x| x == 0) {
            return true;
        }
        sector += SECTOR_BYTES;
    }
    false
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

    fn payloads(data: &[u8], syncs: Syncs) -> (Vec<Vec<u8>>, Tail) {
        let mut d = data.to_vec();
        let dec = decode_all(&mut d, syncs);
        (
            dec.records.iter().map(|r| r.payload.to_vec()).collect(),
            dec.tail,
        )
    }

    #[test]
    fn roundtrip_and_cut_files() {
        let data = file(&[b"one", b"two", b"three"]);
        let (recs, tail) = payloads(&data, Syncs::EachRecord);
        assert_eq!(
            recs,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        assert_eq!(tail, Tail::Clean);
        for cut in 0..data.len() {
            let (_, tail) = payloads(&data[..cut], Syncs::EachRecord);
            assert!(
                matches!(tail, Tail::Torn { .. } | Tail::Clean),
                "cut {cut}: {tail:?}"
            );
        }
    }

    #[test]
    fn zeros_of_a_payload_do_not_reach_the_disk() {
        let data = file(&[&[0u8; 4096]]);
        assert!(data
            .windows(MIN_ZERO_RUN)
            .all(|w| w.iter().any(|&b| b != 0)));
        assert_eq!(payloads(&data, Syncs::Marked).0, vec![vec![0u8; 4096]]);
    }

    #[test]
    fn preallocated_zeros_end_the_log_quietly() {
        let mut data = file(&[b"one", b"two"]);
        let whole = data.len();
        data.resize(whole + 100, 0);
        let (recs, tail) = payloads(&data, Syncs::Marked);
        assert_eq!(recs.len(), 2);
        assert_eq!(
            tail,
            Tail::Zeros {
                offset: whole as u64
            }
        );
    }

    #[test]
    fn a_sector_that_never_arrived_is_torn() {
        let mut data = file(&[b"one"]);
        let first = data.len();
        encode(&mut data, &[7u8; 2000]);
        // The second record's second sector never reached the disk.
        data[SECTOR_BYTES..2 * SECTOR_BYTES].fill(0);
        let (recs, tail) = payloads(&data, Syncs::Marked);
        assert_eq!(recs.len(), 1);
        assert_eq!(
            tail,
            Tail::Torn {
                offset: first as u64
            }
        );
    }

    #[test]
    fn a_flipped_bit_in_the_last_record_is_corruption() {
        let data = file(&[b"one", b"two", b"the last record of the file"]);
        let last = data.len() - framed_len(27);
        for i in last..data.len() {
            for bit in 0..8 {
                let mut d = data.clone();
                d[i] ^= 1 << bit;
                let (recs, tail) = payloads(&d, Syncs::Marked);
                assert_eq!(recs.len(), 2);
                assert!(
                    matches!(tail, Tail::Corrupt { offset, .. } if offset == last as u64),
                    "byte {i} bit {bit}: {tail:?}"
                );
            }
        }
    }

    #[test]
    fn damage_before_a_sync_mark_is_corruption_even_with_zeros() {
        let mut data = file(&[b"one"]);
        encode(&mut data, &[9u8; 1500]);
        let mark_at = data.len() as u64;
        encode_mark(&mut data, mark_at, true);
        encode(&mut data, b"after the sync");
        // A whole sector of the synced record reads back as zeros.
        data[SECTOR_BYTES..2 * SECTOR_BYTES].fill(0);
        let (recs, tail) = payloads(&data, Syncs::Marked);
        assert_eq!(recs.len(), 1);
        assert!(matches!(tail, Tail::Corrupt { .. }), "{tail:?}");
        // A filler mark proves nothing; a mark naming another offset
        // neither.
        for (at, synced) in [(mark_at, false), (mark_at + 1, true)] {
            let mut d = file(&[b"one"]);
            encode(&mut d, &[9u8; 1500]);
            encode_mark(&mut d, at, synced);
            d[SECTOR_BYTES..2 * SECTOR_BYTES].fill(0);
            assert!(matches!(payloads(&d, Syncs::Marked).1, Tail::Torn { .. }));
        }
        // Where every record is synced alone, any later record proves it.
        let mut d = file(&[b"one"]);
        encode(&mut d, &[9u8; 1500]);
        encode(&mut d, b"next");
        d[SECTOR_BYTES..2 * SECTOR_BYTES].fill(0);
        assert!(matches!(
            payloads(&d, Syncs::EachRecord).1,
            Tail::Corrupt { .. }
        ));
    }

    #[test]
    fn marks_are_skipped() {
        let mut data = Vec::new();
        encode_mark(&mut data, 0, true);
        encode(&mut data, b"a");
        let at = data.len() as u64;
        encode_mark(&mut data, at, false);
        encode(&mut data, b"b");
        let mut d = data.clone();
        let dec = decode_all(&mut d, Syncs::Marked);
        assert_eq!(dec.tail, Tail::Clean);
        assert_eq!(dec.end, data.len() as u64);
        let got: Vec<(u64, &[u8])> = dec.records.iter().map(|r| (r.offset, r.payload)).collect();
        assert_eq!(
            got,
            vec![
                (MARK_BYTES as u64, &b"a"[..]),
                (at + MARK_BYTES as u64, &b"b"[..])
            ]
        );
    }

    #[test]
    fn plain_records_of_the_first_format_still_read() {
        let mut data = Vec::new();
        for p in [&b"old"[..], b"format"] {
            let pcrc = crc32c::crc32c(p);
            let mut head = (p.len() as u32).to_le_bytes().to_vec();
            head.extend_from_slice(&pcrc.to_le_bytes());
            let hcrc = crc32c::crc32c(&head);
            head.extend_from_slice(&hcrc.to_le_bytes());
            data.extend_from_slice(&head);
            data.extend_from_slice(p);
        }
        let (recs, tail) = payloads(&data, Syncs::EachRecord);
        assert_eq!(recs, vec![b"old".to_vec(), b"format".to_vec()]);
        assert_eq!(tail, Tail::Clean);
    }

    /// A crash during an unsynced write leaves each of its sectors either
    /// written or zero, in any combination: never corruption.
    fn torn_write(seed: u64, batch: &[Vec<u8>]) -> (Vec<u8>, usize) {
        let mut data = file(&[b"synced", &[3u8; 700]]);
        let synced = data.len();
        let at = data.len() as u64;
        encode_mark(&mut data, at, true);
        for p in batch {
            encode(&mut data, p);
        }
        let mut x = seed | 1;
        let first = synced / SECTOR_BYTES;
        let mut cut = data.clone();
        for s in first..data.len().div_ceil(SECTOR_BYTES) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(2) {
                let a = (s * SECTOR_BYTES).max(synced);
                let b = ((s + 1) * SECTOR_BYTES).min(data.len());
                cut[a..b].fill(0);
            }
        }
        (cut, synced)
    }

    proptest! {
        #[test]
        fn garbage_never_panics(mut bytes: Vec<u8>) {
            let _ = decode_all(&mut bytes, Syncs::Marked);
        }

        #[test]
        fn torn_writes_at_sector_granularity_are_never_corruption(
            seed: u64,
            batch in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..1200), 1..6),
        ) {
            let (data, synced) = torn_write(seed, &batch);
            let (recs, tail) = payloads(&data, Syncs::Marked);
            prop_assert!(recs.len() >= 2);
            // A record whose header starts in the last seven bytes of a
            // lost sector cannot be told from damage: refused, never cut.
            let ambiguous = |offset: u64| {
                offset as usize % SECTOR_BYTES > SECTOR_BYTES - MIN_ZERO_RUN
            };
            prop_assert!(
                !matches!(tail, Tail::Corrupt { offset, .. } if !ambiguous(offset) || (offset as usize) < synced),
                "{:?}", tail
            );
        }

        #[test]
        fn a_write_cut_anywhere_is_never_corruption(
            batch in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..6),
            cut: usize,
            preallocated: bool,
        ) {
            let mut data = file(&[b"synced"]);
            let synced = data.len();
            for p in &batch {
                encode(&mut data, p);
            }
            let cut = synced + cut % (data.len() - synced);
            let mut torn = data[..cut].to_vec();
            if preallocated {
                torn.resize(data.len() + 4096, 0);
            }
            let (recs, tail) = payloads(&torn, Syncs::Marked);
            prop_assert!(!recs.is_empty());
            prop_assert!(!matches!(tail, Tail::Corrupt { .. }), "{:?}", tail);
        }

        #[test]
        fn a_flipped_bit_is_never_taken_for_a_torn_write(
            payloads_in in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..900), 1..6),
            pick: usize,
            bit in 0u8..8,
        ) {
            let refs: Vec<&[u8]> = payloads_in.iter().map(Vec::as_slice).collect();
            let mut data = file(&refs);
            let i = pick % data.len();
            data[i] ^= 1 << bit;
            let (_, tail) = payloads(&data, Syncs::Marked);
            prop_assert!(matches!(tail, Tail::Corrupt { .. }), "{:?}", tail);
        }
    }
}
