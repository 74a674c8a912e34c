//! A hash of the whole replicated state at one log index (etcd's
//! HashKV): every replica that applied the same entries holds the same
//! pairs, history records, sessions and small state, byte for byte, so
//! replicas are compared by hashing what a snapshot of the database
//! holds right after applying an [`Op::HashCheck`](super::command::Op)
//! entry.

use cairn_lsm::Snapshot;

use super::error::Result;

/// The hash of a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateHash {
    /// xxh3 over every key and value, in key order, each prefixed by its
    /// length (u64 LE).
    pub hash: u64,
    /// Keys hashed.
    pub keys: u64,
    /// Bytes of keys and values hashed.
    pub bytes: u64,
}

/// Hashes everything `snapshot` holds. Reads every live table block, so
/// its checksums are verified on the way: corruption is an error.
pub fn state_hash(snapshot: &Snapshot) -> Result<StateHash> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let (mut keys, mut bytes) = (0u64, 0u64);
    for item in snapshot.scan::<&[u8]>(..)? {
        let (k, v) = item?;
        for part in [&k[..], &v[..]] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
            bytes += part.len() as u64;
        }
        keys += 1;
    }
    Ok(StateHash {
        hash: h.digest(),
        keys,
        bytes,
    })
}
