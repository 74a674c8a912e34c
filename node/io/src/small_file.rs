//! Small state files (a vote, a purge point, a generation number, a
//! snapshot's meta): one framed postcard record, replaced atomically by
//! writing `<name>.tmp` and renaming it over the old file.

use std::io;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec;
use crate::frame;
use crate::fs::FileSystem;

/// Replaces `path` with `value`. With `durable`, the data and the rename
/// are fsynced before this returns; without, the file is a hint that may
/// be lost or damaged by a crash.
pub fn write<T: Serialize>(
    fs: &dyn FileSystem,
    path: &Path,
    value: &T,
    durable: bool,
) -> io::Result<()> {
    write_encoded(fs, path, &codec::encode(value)?, durable)
}

/// [`write`] of an already encoded value.
pub fn write_encoded(
    fs: &dyn FileSystem,
    path: &Path,
    payload: &[u8],
    durable: bool,
) -> io::Result<()> {
    let mut bytes = Vec::new();
    frame::encode(&mut bytes, payload);
    let tmp = path.with_extension("tmp");
    let mut f = fs.create(&tmp)?;
    f.append(&bytes)?;
    f.flush()?;
    if durable {
        f.sync()?;
    }
    drop(f);
    fs.rename(&tmp, path)?;
    if let (true, Some(dir)) = (durable, path.parent()) {
        fs.sync_dir(dir)?;
    }
    Ok(())
}

/// Reads `path`: `None` when it does not exist. A damaged file is an
/// [`io::ErrorKind::InvalidData`] error.
pub fn read<T: DeserializeOwned>(fs: &dyn FileSystem, path: &Path) -> io::Result<Option<T>> {
    if !fs.exists(path) {
        return Ok(None);
    }
    let mut data = fs.read_all(path)?;
    let decoded = frame::decode_all(&mut data, frame::Syncs::EachRecord);
    match (decoded.records.as_slice(), decoded.tail) {
        ([record], frame::Tail::Clean) => Ok(Some(codec::decode(record.payload)?)),
        (_, tail) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is damaged ({tail:?})", path.display()),
        )),
    }
}
