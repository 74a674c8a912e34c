//! The postcard encoding of openraft's types, used on the peer transport
//! and in the Raft log. postcard is compact (varints, no field names) and
//! its format is stable across its 1.x releases.

use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encodes `v`.
pub fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Decodes a `T`; bad bytes are an [`io::ErrorKind::InvalidData`] error,
/// never a panic.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}
