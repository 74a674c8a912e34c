//! The manifest: a log of [`VersionEdit`]s, framed like the WAL, named by
//! the `CURRENT` file. A new manifest starts with one edit that describes
//! the whole version; `CURRENT` is switched atomically (write a temporary
//! file, sync it, rename it over `CURRENT`, sync the directory).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::frame::{self, Tail};
use super::fs::{FileSystem, WritableFile};
use super::key::SeqNo;
use super::sst::TableSummary;
use super::version::VersionEdit;
use super::{Error, Result};

/// The name of the file naming the live manifest.
pub(crate) const CURRENT: &str = "CURRENT";

/// The file name of manifest number `n`.
pub(crate) fn file_name(n: u64) -> String {
    format!("MANIFEST-{n:06}")
}

/// A manifest open for appending edits.
pub(crate) struct Manifest {
    file: Box<dyn WritableFile>,
    path: PathBuf,
    pub number: u64,
}

impl Manifest {
    /// Writes a new manifest holding `snapshot` and points `CURRENT` at it.
    pub fn create(
        fs: &dyn FileSystem,
        dir: &Path,
        number: u64,
        snapshot: &VersionEdit,
    ) -> Result<Self> {
        let path = dir.join(file_name(number));
        let file = fs.create(&path).map_err(|e| Error::io(&path, e))?;
        let mut m = Self { file, path, number };
        m.log(snapshot)?;
        set_current(fs, dir, &file_name(number))?;
        Ok(m)
    }

    /// Appends one edit and syncs it. The edit takes effect only once this
    /// returns.
    pub fn log(&mut self, edit: &VersionEdit) -> Result<()> {
        let mut buf = Vec::new();
        frame::encode(&mut buf, &edit.encode());
        self.file
            .append(&buf)
            .and_then(|()| self.file.sync())
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Bytes written to this manifest.
    pub fn size(&self) -> u64 {
        self.file.len()
    }
}

fn set_current(fs: &dyn FileSystem, dir: &Path, manifest: &str) -> Result<()> {
    let tmp = dir.join("CURRENT.tmp");
    let mut f = fs.create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.append(format!("{manifest}\n").as_bytes())
        .and_then(|()| f.sync())
        .map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    let current = dir.join(CURRENT);
    fs.rename(&tmp, &current)
        .map_err(|e| Error::io(&current, e))?;
    fs.sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// The state a manifest replays to.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Live files: number -> (level, summary).
    pub files: BTreeMap<u64, (usize, TableSummary)>,
    pub log_number: u64,
    pub next_file_number: u64,
    pub last_seq: SeqNo,
    pub user_metadata: Option<Vec<u8>>,
}

/// Reads `CURRENT` and replays the manifest it names. `Ok(None)` when the
/// directory holds no database.
pub(crate) fn recover(fs: &dyn FileSystem, dir: &Path) -> Result<Option<Recovered>> {
    let current = dir.join(CURRENT);
    if !fs.exists(&current) {
        return Ok(None);
    }
    let name = fs.read_all(&current).map_err(|e| Error::io(&current, e))?;
    let name = std::str::from_utf8(&name)
        .ok()
        .and_then(|s| s.strip_suffix('\n'))
        .filter(|s| s.starts_with("MANIFEST-") && !s.contains('/'))
        .ok_or_else(|| Error::corruption(&current, 0, "CURRENT does not name a manifest"))?;
    let path = dir.join(name);
    let mut data = fs.read_all(&path).map_err(|e| Error::io(&path, e))?;
    // Every edit is synced before the next is written.
    let decoded = frame::decode_all(&mut data, frame::Syncs::EachRecord);
    if let Tail::Corrupt { offset, reason } = decoded.tail {
        return Err(Error::corruption(&path, offset, reason));
    }
    if decoded.records.is_empty() {
        return Err(Error::corruption(&path, 0, "manifest holds no edit"));
    }
    let mut r = Recovered::default();
    for rec in decoded.records {
        let offset = rec.offset;
        let edit = VersionEdit::decode(rec.payload)
            .map_err(|reason| Error::corruption(&path, offset, reason))?;
        for (level, number) in &edit.deleted {
            if r.files.remove(number).map(|(l, _)| l) != Some(*level) {
                return Err(Error::corruption(
                    &path,
                    offset,
                    "edit deletes an unknown file",
                ));
            }
        }
        for f in edit.added {
            r.files.insert(f.number, (f.level, f.summary));
        }
        if let Some(v) = edit.log_number {
            r.log_number = v;
        }
        if let Some(v) = edit.next_file_number {
            r.next_file_number = v;
        }
        if let Some(v) = edit.last_seq {
            r.last_seq = v;
        }
        if edit.user_metadata.is_some() {
            r.user_metadata = edit.user_metadata;
        }
    }
    Ok(Some(r))
}
