//! Snapshots: their files on disk, and their transfer between peers.
//!
//! ```text
//! <data>/snapshots/snap-<index>/      the newest snapshot: an LSM checkpoint + `meta`
//! <data>/snapshots/tmp-<seq>/         a snapshot being built
//! <data>/snapshots/incoming-<index>-<n>/  a snapshot being received from the leader
//! ```
//!
//! `<index>` is the last included log index, zero-padded to 20 digits so
//! names sort by index. A directory is complete once its `meta` exists;
//! on start every directory but the newest complete one is removed.
//!
//! The leader sends a snapshot as one InstallSnapshot stream ([`chunks`]):
//! a [`SnapshotHeader`] naming every file and its size, then the files in
//! 1 MiB chunks, each with its CRC32C; the follower [`receive`]s them into
//! an `incoming-` directory, checks every chunk and size, syncs, and only
//! then hands the snapshot to openraft.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_io::fs::{FileSystem, RandomAccessFile, WritableFile};
use cairn_io::small_file;
use cairn_proto::raft as pb;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::{Snapshot, SnapshotMeta, Vote};

/// Bytes of snapshot data per chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// The name prefix of a complete snapshot's directory.
pub(crate) const SNAP: &str = "snap-";
/// The name prefix of a snapshot being built.
pub(crate) const TMP: &str = "tmp-";
/// The name prefix of a snapshot being received.
const INCOMING: &str = "incoming-";

/// The directory of the complete snapshot whose last index is `index`.
pub(crate) fn snap_dir(root: &Path, index: u64) -> PathBuf {
    root.join(format!("{SNAP}{index:020}"))
}

/// The data of a snapshot: a directory holding an LSM checkpoint.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    /// The directory.
    pub dir: PathBuf,
}

/// The first message of a snapshot stream.
#[derive(Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The leader's vote.
    pub vote: Vote,
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// File names and sizes, in the order they are sent.
    pub files: Vec<(String, u64)>,
}

/// Removes a directory and everything in it (one level: databases and
/// checkpoints are flat).
pub fn remove_dir(fs: &dyn FileSystem, dir: &Path) -> io::Result<()> {
    if !fs.exists(dir) {
        return Ok(());
    }
    for name in fs.list(dir)? {
        fs.remove(&dir.join(name))?;
    }
    fs.remove_dir(dir)
}

/// The newest complete snapshot; every other snapshot directory (older
/// ones, half-built or half-received ones) is garbage and removed.
pub(crate) fn load_newest(fs: &dyn FileSystem, root: &Path) -> io::Result<Option<Snapshot>> {
    let names = fs.list(root)?;
    let complete =
        |name: &String| name.starts_with(SNAP) && fs.exists(&root.join(name).join("meta"));
    // Names are zero-padded indexes, and the list is sorted.
    let newest = names.iter().rfind(|n| complete(n)).cloned();
    for name in &names {
        let garbage = [SNAP, INCOMING, TMP].iter().any(|p| name.starts_with(p));
        if garbage && Some(name) != newest.as_ref() {
            remove_dir(fs, &root.join(name))?;
        }
    }
    let Some(name) = newest else {
        return Ok(None);
    };
    let dir = root.join(name);
    let meta: SnapshotMeta = small_file::read(fs, &dir.join("meta"))?
        .ok_or_else(|| io::Error::other("snapshot meta vanished"))?;
    Ok(Some(Snapshot {
        meta,
        snapshot: SnapshotDir { dir },
    }))
}

/// Makes `snap` the current snapshot and removes the one it replaces.
pub(crate) fn replace_current(
    current: &Mutex<Option<Snapshot>>,
    fs: &dyn FileSystem,
    snap: Snapshot,
) -> io::Result<()> {
    let dir = snap.snapshot.dir.clone();
    let old = current.lock().replace(snap);
    match old {
        Some(old) if old.snapshot.dir != dir => remove_dir(fs, &old.snapshot.dir),
        _ => Ok(()),
    }
}

/// The snapshot's files in `dir`, sorted by name, each opened once: the
/// transfer reads through these handles, so a newer snapshot replacing
/// this one (and removing its directory) while it is sent does not cut
/// the transfer short.
pub fn open_files(fs: &dyn FileSystem, dir: &Path) -> io::Result<Vec<SnapshotFile>> {
    let mut names = fs.list(dir)?;
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let file = fs.open_read(&dir.join(&name))?;
            Ok(SnapshotFile { name, file })
        })
        .collect()
}

/// One file of a snapshot being sent.
#[derive(Clone)]
pub struct SnapshotFile {
    /// Its name in the snapshot directory.
    pub name: String,
    /// The open file.
    pub file: Arc<dyn RandomAccessFile>,
}

impl SnapshotFile {
    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.file.len()
    }
}

/// The InstallSnapshot stream of the snapshot in `dir`: the encoded
/// `header` first, then each file in chunks of [`SNAPSHOT_CHUNK_BYTES`]
/// with their CRC32C.
pub fn chunks(
    header: Vec<u8>,
    files: Vec<SnapshotFile>,
) -> impl futures::Stream<Item = pb::SnapshotChunk> + Send + 'static {
    use pb::snapshot_chunk::Chunk;
    let first = futures::stream::once(async move {
        pb::SnapshotChunk {
            chunk: Some(Chunk::Meta(header.into())),
        }
    });
    // One chunk in memory at a time: the stream reads a chunk only when
    // the transport asks for the next one.
    let mut work: Vec<(SnapshotFile, u64)> = Vec::new();
    for f in files {
        let size = f.size();
        let mut off = 0;
        while off < size {
            work.push((f.clone(), off));
            off += SNAPSHOT_CHUNK_BYTES as u64;
        }
        if size == 0 {
            work.push((f, 0));
        }
    }
    let rest = futures::stream::iter(work).filter_map(move |(f, offset)| async move {
        let read = || -> io::Result<Vec<u8>> {
            let len = (f.size() - offset).min(SNAPSHOT_CHUNK_BYTES as u64);
            f.file
                .read_at(offset, usize::try_from(len).map_err(io::Error::other)?)
        };
        match read() {
            Ok(data) => Some(pb::SnapshotChunk {
                chunk: Some(Chunk::File(pb::FileChunk {
                    name: f.name,
                    offset,
                    crc: crc32c::crc32c(&data),
                    data: data.into(),
                })),
            }),
            Err(e) => {
                // A chunk left out makes the receiver refuse the snapshot
                // (its offsets and sizes do not match); the leader retries.
                tracing::warn!(error = %e, file = %f.name, "snapshot read failed");
                None
            }
        }
    });
    first.chain(rest)
}

/// How long a transfer of `bytes` may take: a minute, plus a second per
/// 4 MiB (a follower's disk and a shared link are slower than the
/// leader's reads).
pub fn transfer_time_limit(bytes: u64) -> std::time::Duration {
    std::time::Duration::from_secs(60 + bytes / (4 << 20))
}

/// Receives the files of a snapshot from `chunks` (what follows the
/// header in an InstallSnapshot stream) into `root/incoming-<index>`,
/// checking every chunk's CRC, order and size against `header`, and
/// syncs them. `progress` runs on every chunk (the leader is bringing
/// this node up to date). On any failure the directory is removed.
pub async fn receive<S>(
    fs: &dyn FileSystem,
    root: &Path,
    header: &SnapshotHeader,
    chunks: S,
    progress: impl Fn(),
) -> Result<Snapshot, Status>
where
    S: Stream<Item = Result<pb::SnapshotChunk, Status>> + Unpin,
{
    let expected: BTreeMap<String, u64> = header.files.iter().cloned().collect();
    for name in expected.keys() {
        if name.is_empty() || name.contains('/') || name.contains("..") {
            return Err(Status::invalid_argument(format!(
                "bad snapshot file name {name:?}"
            )));
        }
    }
    let index = header.meta.last_log_id.as_ref().map_or(0, |l| l.index);
    // A directory of its own per transfer: a leader's retry of the same
    // snapshot can arrive while the first transfer still runs.
    static TRANSFERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = TRANSFERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = root.join(format!("{INCOMING}{index:020}-{n}"));
    remove_dir(fs, &dir).map_err(internal)?;
    cairn_io::fs::create_dir_durable(fs, &dir).map_err(internal)?;
    if let Err(e) = receive_files(fs, &dir, &expected, chunks, progress).await {
        let _ = remove_dir(fs, &dir);
        return Err(e);
    }
    Ok(Snapshot {
        meta: header.meta.clone(),
        snapshot: SnapshotDir { dir },
    })
}

async fn receive_files<S>(
    fs: &dyn FileSystem,
    dir: &Path,
    expected: &BTreeMap<String, u64>,
    mut chunks: S,
    progress: impl Fn(),
) -> Result<(), Status>
where
    S: Stream<Item = Result<pb::SnapshotChunk, Status>> + Unpin,
{
    let mut files: BTreeMap<String, (Box<dyn WritableFile>, u64)> = BTreeMap::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        progress();
        let Some(pb::snapshot_chunk::Chunk::File(f)) = chunk.chunk else {
            return Err(Status::invalid_argument(
                "a second meta in a snapshot stream",
            ));
        };
        let Some(&size) = expected.get(&f.name) else {
            return Err(Status::invalid_argument(format!(
                "unexpected file {:?}",
                f.name
            )));
        };
        if crc32c::crc32c(&f.data) != f.crc {
            return Err(Status::data_loss(format!(
                "checksum mismatch in {} at {}",
                f.name, f.offset
            )));
        }
        if !files.contains_key(&f.name) {
            let w = fs.create(&dir.join(&f.name)).map_err(internal)?;
            files.insert(f.name.clone(), (w, 0));
        }
        let Some((w, written)) = files.get_mut(&f.name) else {
            return Err(Status::internal("file vanished"));
        };
        if f.offset != *written || *written + f.data.len() as u64 > size {
            return Err(Status::invalid_argument(format!(
                "out-of-order chunk of {}",
                f.name
            )));
        }
        w.append(&f.data).map_err(internal)?;
        *written += f.data.len() as u64;
    }
    for (name, size) in expected {
        let Some((w, written)) = files.get_mut(name) else {
            return Err(Status::invalid_argument(format!(
                "snapshot is missing {name}"
            )));
        };
        if written != size {
            return Err(Status::invalid_argument(format!(
                "{name}: {written} of {size} bytes arrived"
            )));
        }
        w.flush().and_then(|()| w.sync()).map_err(internal)?;
    }
    fs.sync_dir(dir).map_err(internal)
}

fn internal(e: io::Error) -> Status {
    Status::internal(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_io::StdFs;

    /// A snapshot replaced (its directory removed) while it is being
    /// sent still streams every byte: the files were opened once.
    #[test]
    fn a_transfer_outlives_the_removal_of_its_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = StdFs;
        let dir = tmp.path().join("snap-00000000000000000007");
        fs.create_dir_all(&dir).unwrap();
        let big: Vec<u8> = (0..(3 * SNAPSHOT_CHUNK_BYTES + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        for (name, data) in [("a.sst", &big[..]), ("meta", &b"m"[..])] {
            let mut w = fs.create(&dir.join(name)).unwrap();
            w.append(data).unwrap();
            w.sync().unwrap();
        }
        let files = open_files(&fs, &dir).unwrap();
        remove_dir(&fs, &dir).unwrap();
        assert!(!fs.exists(&dir));
        let chunks: Vec<pb::SnapshotChunk> =
            futures::executor::block_on(chunks(b"header".to_vec(), files).collect());
        let mut got: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for c in chunks.into_iter().skip(1) {
            let Some(pb::snapshot_chunk::Chunk::File(f)) = c.chunk else {
                panic!("a file chunk expected");
            };
            assert_eq!(crc32c::crc32c(&f.data), f.crc);
            got.entry(f.name).or_default().extend_from_slice(&f.data);
        }
        assert_eq!(got["a.sst"], big);
        assert_eq!(got["meta"], b"m");
    }
}
