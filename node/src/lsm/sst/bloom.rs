//! A bloom filter over the user keys of one table.
//!
//! ```text
//! filter = bits (ceil(n * bits_per_key / 8) bytes, at least 8), k: u8
//! ```
//! Probe `i` of key `h = xxh3_64(user_key)` tests bit
//! `(h1 + i * h2) mod nbits` with `h1 = low 32 bits`, `h2 = high 32 | 1`
//! (Kirsch–Mitzenmacher double hashing).

use xxhash_rust::xxh3::xxh3_64;

/// Hashes a user key for the filter.
pub(crate) fn hash(user_key: &[u8]) -> u64 {
    xxh3_64(user_key)
}

/// Builds the filter bytes for `hashes` at `bits_per_key`.
pub(crate) fn build(hashes: &[u64], bits_per_key: usize) -> Vec<u8> {
    let k = ((bits_per_key as f64) * std::f64::consts::LN_2).round() as usize;
    let k = k.clamp(1, 30);
    let nbits = (hashes.len() * bits_per_key).max(64);
    let nbytes = nbits.div_ceil(8);
    let nbits = (nbytes * 8) as u64;
    let mut out = vec![0u8; nbytes + 1];
    for &h in hashes {
        let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
        for i in 0..k as u64 {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % nbits;
            out[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }
    out[nbytes] = k as u8;
    out
}

/// A filter read back from a table.
pub(crate) struct Bloom {
    bits: Vec<u8>,
    k: u64,
}

impl Bloom {
    /// Parses filter bytes; `None` if malformed.
    pub fn new(mut data: Vec<u8>) -> Option<Self> {
        let k = u64::from(data.pop()?);
        if data.is_empty() || !(1..=30).contains(&k) {
            return None;
        }
        Some(Self { bits: data, k })
    }

    /// False means the key is certainly absent.
    pub fn may_contain(&self, h: u64) -> bool {
        let nbits = (self.bits.len() * 8) as u64;
        let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
        (0..self.k).all(|i| {
            let bit = h1.wrapping_add(i.wrapping_mul(h2)) % nbits;
            self.bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0
        })
    }

    pub fn size(&self) -> usize {
        self.bits.len() + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_under_one_percent_false_positives() {
        let n = 100_000u32;
        let hashes: Vec<u64> = (0..n).map(|i| hash(&i.to_be_bytes())).collect();
        let bloom = Bloom::new(build(&hashes, 10)).unwrap();
        assert!(hashes.iter().all(|&h| bloom.may_contain(h)));
        let fp = (n..2 * n)
            .filter(|i| bloom.may_contain(hash(&i.to_be_bytes())))
            .count();
        let rate = fp as f64 / f64::from(n);
        assert!(rate < 0.01, "false positive rate {rate}");
    }
}
