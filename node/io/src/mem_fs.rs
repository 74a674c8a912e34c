//! The simulated disk: an in-memory [`FileSystem`] that keeps only what
//! was made durable when it "crashes", and injects faults. Built only with
//! the `sim` feature: tests and the simulation use it, production builds
//! do not carry it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::fs::{DirLock, FileSystem, RandomAccessFile, WritableFile};

/// An in-memory disk with the crash semantics of a real one, and crueler
/// than a kind one:
///
/// - file data is durable only up to the last successful `sync`; data
///   whose fsync failed never becomes durable, even if a later fsync
///   succeeds (the kernel dropped the dirty pages: "fsyncgate");
/// - directory entries (files and directories created, renamed, removed,
///   linked) are durable only after `sync_dir` on their directory;
/// - [`MemFs::crash`] throws away everything that was not durable; a torn
///   crash keeps a random part of each unsynced tail in which every
///   512-byte sector independently arrived or did not (zeros);
/// - a full disk stays full across crashes until its faults are cleared;
/// - [`MemFs::flip_bit`] damages synced data (a latent sector error), and
///   [`MemFs::wipe`] loses everything (a replaced volume).
///
/// Cloning gives another handle to the same disk.
#[derive(Clone, Default)]
pub struct MemFs {
    state: Arc<Mutex<MemState>>,
}

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    /// `data[..synced]` survives a crash.
    synced: usize,
    /// Ranges whose fsync failed: lost in a crash whatever later syncs
    /// said.
    lost: Vec<(usize, usize)>,
    /// Bytes appended to it and counted against a full disk's space: what
    /// removing or truncating it gives back (zeros a preallocation added
    /// were never counted).
    charged: u64,
}

type InodeRef = Arc<Mutex<Inode>>;

#[derive(Default)]
struct MemState {
    /// The namespace as the running process sees it.
    live: BTreeMap<PathBuf, InodeRef>,
    /// The namespace a crash falls back to, per directory.
    durable: BTreeMap<PathBuf, InodeRef>,
    dirs: std::collections::BTreeSet<PathBuf>,
    /// The directories a crash falls back to (the root always exists).
    durable_dirs: std::collections::BTreeSet<PathBuf>,
    /// Directory renames (from, to) not yet made durable by a `sync_dir`
    /// of their parent; the files under a directory move with it.
    dir_renames: Vec<(PathBuf, PathBuf)>,
    /// Bytes the disk still accepts before it reports "no space".
    space_left: Option<u64>,
    fail_sync: bool,
    /// Where injected faults hit (a refused write or sync), oldest first.
    failed: Vec<PathBuf>,
    bytes_written: u64,
    syncs: u64,
}

/// Faults a [`MemFs`] can inject.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// After this many more bytes, appends fail with `StorageFull` (the
    /// write that crosses the limit is cut mid-way, as a real disk would).
    /// A full disk stays full across crashes.
    pub space_left: Option<u64>,
    /// Every `sync` and `sync_dir` fails (until a crash).
    pub fail_sync: bool,
}

impl MemFs {
    /// A new, empty disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Switches faults on or off.
    pub fn set_faults(&self, faults: Faults) {
        let mut st = self.state.lock();
        st.space_left = faults.space_left;
        st.fail_sync = faults.fail_sync;
    }

    /// Total bytes appended since the disk was created.
    pub fn bytes_written(&self) -> u64 {
        self.state.lock().bytes_written
    }

    /// The files and directories an injected fault has hit since the
    /// last [`MemFs::crash`], oldest first.
    pub fn failed(&self) -> Vec<PathBuf> {
        self.state.lock().failed.clone()
    }

    /// Number of successful file syncs.
    pub fn syncs(&self) -> u64 {
        self.state.lock().syncs
    }

    /// Simulates a power loss: the namespace falls back to its durable
    /// state and every file to its synced prefix. With `keep_torn` set, a
    /// random part of each file's unsynced tail survives too (a torn
    /// write), chosen by `seed`. Open handles must be dropped first: the
    /// engine that used them is gone.
    pub fn crash(&self, keep_torn: bool, seed: u64) {
        let mut rng = Rng::new(seed);
        let mut next = move || rng.next();
        let mut st = self.state.lock();
        st.live = st.durable.clone();
        // Directories fall back to the durable ones (renames not made
        // durable are undone with them), and files in a directory that is
        // gone are gone.
        st.dir_renames.clear();
        st.dirs = st.durable_dirs.clone();
        st.dirs.insert(PathBuf::from("/"));
        let dirs = st.dirs.clone();
        st.live.retain(|p, _| {
            p.ancestors()
                .skip(1)
                .all(|a| a.as_os_str().is_empty() || dirs.contains(a))
        });
        st.fail_sync = false;
        st.failed.clear();
        for inode in st.live.values() {
            let mut inode = inode.lock();
            let unsynced = inode.data.len() - inode.synced;
            let keep = if keep_torn && unsynced > 0 {
                (next() % (unsynced as u64 + 1)) as usize
            } else {
                0
            };
            let (synced, len) = (inode.synced, inode.synced + keep);
            inode.data.truncate(len);
            // Each sector of the torn part arrived or did not.
            let mut sector = synced / SECTOR * SECTOR;
            while sector < len {
                if next().is_multiple_of(2) {
                    let a = sector.max(synced);
                    let b = (sector + SECTOR).min(len);
                    inode.data[a..b].fill(0);
                }
                sector += SECTOR;
            }
            for (a, b) in std::mem::take(&mut inode.lost) {
                let b = b.min(len);
                if a < b {
                    inode.data[a..b].fill(0);
                }
            }
            inode.synced = len;
        }
    }

    /// Flips one random bit of the synced data of a random file whose path
    /// `pick` accepts (a latent sector error: the damage is durable).
    /// Returns the file and offset, or `None` when no file qualifies.
    pub fn flip_bit(&self, seed: u64, pick: impl Fn(&Path) -> bool) -> Option<(PathBuf, u64)> {
        self.flip(seed, pick, None)
    }

    /// Flips one random bit among the last `window` synced bytes of the
    /// last file (in path order) that `pick` accepts: damage to the newest
    /// record of a log, the one a reader could mistake for a torn write.
    pub fn flip_bit_near_end(
        &self,
        seed: u64,
        window: u64,
        pick: impl Fn(&Path) -> bool,
    ) -> Option<(PathBuf, u64)> {
        self.flip(seed, pick, Some(window.max(1) as usize))
    }

    fn flip(
        &self,
        seed: u64,
        pick: impl Fn(&Path) -> bool,
        window: Option<usize>,
    ) -> Option<(PathBuf, u64)> {
        let st = self.state.lock();
        let files: Vec<(&PathBuf, &InodeRef)> = st
            .live
            .iter()
            .filter(|(p, i)| pick(p) && i.lock().synced > 0)
            .collect();
        let x = Rng::new(seed).next();
        let (path, inode) = match window {
            None => files.get((x % files.len().max(1) as u64) as usize)?,
            Some(_) => files.iter().max_by_key(|(p, _)| *p)?,
        };
        let mut inode = inode.lock();
        let synced = inode.synced;
        let from = window.map_or(0, |w| synced.saturating_sub(w));
        let offset = from + ((x >> 20) % (synced - from) as u64) as usize;
        inode.data[offset] ^= 1 << ((x >> 8) % 8);
        Some(((*path).clone(), offset as u64))
    }

    /// Loses everything on the disk (a volume replaced by an empty one).
    /// Faults are cleared. Open handles must be dropped first.
    pub fn wipe(&self) {
        let mut st = self.state.lock();
        let bytes_written = st.bytes_written;
        let syncs = st.syncs;
        *st = MemState::default();
        st.bytes_written = bytes_written;
        st.syncs = syncs;
    }

    /// Flips one bit of `path` at `offset` (for corruption tests). The
    /// damage is durable.
    pub fn corrupt(&self, path: &Path, offset: u64) -> io::Result<()> {
        let st = self.state.lock();
        let inode = st.live.get(path).ok_or_else(|| not_found(path))?;
        let mut inode = inode.lock();
        let byte = inode
            .data
            .get_mut(offset as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset past end"))?;
        *byte ^= 0x10;
        Ok(())
    }

    fn inode(&self, path: &Path) -> io::Result<InodeRef> {
        self.state
            .lock()
            .live
            .get(path)
            .cloned()
            .ok_or_else(|| not_found(path))
    }
}

/// xorshift64: the disk's choices, fixed by a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The size of a sector: the unit a torn write keeps or loses.
const SECTOR: usize = 512;

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

struct MemWritable {
    fs: MemFs,
    path: PathBuf,
    inode: InodeRef,
    /// Where the next append lands (before the end after a preallocate).
    pos: usize,
}

impl WritableFile for MemWritable {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let mut st = self.fs.state.lock();
        let (accepted, full) = match st.space_left {
            Some(left) if (data.len() as u64) > left => (left as usize, true),
            _ => (data.len(), false),
        };
        if let Some(left) = st.space_left.as_mut() {
            *left -= accepted as u64;
        }
        st.bytes_written += accepted as u64;
        let mut inode = self.inode.lock();
        inode.charged += accepted as u64;
        let end = self.pos + accepted;
        if inode.data.len() < end {
            inode.data.resize(end, 0);
        }
        inode.data[self.pos..end].copy_from_slice(&data[..accepted]);
        // Overwritten bytes are no longer durable, nor anything after them.
        inode.synced = inode.synced.min(self.pos);
        self.pos = end;
        if full {
            st.failed.push(self.path.clone());
            return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
        }
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        let mut st = self.fs.state.lock();
        if st.fail_sync {
            st.failed.push(self.path.clone());
            // The kernel drops the dirty pages it could not write back: a
            // later fsync that succeeds does not bring them back.
            let mut inode = self.inode.lock();
            let range = (inode.synced, inode.data.len());
            if range.0 < range.1 {
                inode.lost.push(range);
            }
            return Err(io::Error::other("injected fsync failure"));
        }
        st.syncs += 1;
        let mut inode = self.inode.lock();
        inode.synced = inode.data.len();
        Ok(())
    }
    fn len(&self) -> u64 {
        self.pos as u64
    }
    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| eof())?;
        let mut inode = self.inode.lock();
        if inode.data.len() < len {
            inode.data.resize(len, 0);
        }
        Ok(())
    }
}

struct MemReadable {
    data: Vec<u8>,
}

impl RandomAccessFile for MemReadable {
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(len).ok_or_else(eof)?;
        self.data
            .get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or_else(eof)
    }
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file")
}

struct MemLock;
impl DirLock for MemLock {}

impl FileSystem for MemFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let inode: InodeRef = Arc::default();
        self.state
            .lock()
            .live
            .insert(path.to_path_buf(), inode.clone());
        Ok(Box::new(MemWritable {
            fs: self.clone(),
            path: path.to_path_buf(),
            inode,
            pos: 0,
        }))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let inode = self.inode(path)?;
        let pos = inode.lock().data.len();
        Ok(Box::new(MemWritable {
            fs: self.clone(),
            path: path.to_path_buf(),
            inode,
            pos,
        }))
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn RandomAccessFile>> {
        // Files the engine reads at random are immutable once written, so a
        // copy taken at open time reads the same as the live inode.
        let data = self.inode(path)?.lock().data.clone();
        Ok(Arc::new(MemReadable { data }))
    }
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        Ok(self.inode(path)?.lock().data.clone())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.dirs.contains(from) {
            // A directory of files (no subdirectories): move its entries.
            let moved: Vec<PathBuf> = st
                .live
                .keys()
                .filter(|p| p.parent() == Some(from))
                .cloned()
                .collect();
            for p in moved {
                if let (Some(inode), Some(name)) = (st.live.remove(&p), p.file_name()) {
                    st.live.insert(to.join(name), inode);
                }
            }
            st.dirs.remove(from);
            st.dirs.insert(to.to_path_buf());
            st.dir_renames.push((from.to_path_buf(), to.to_path_buf()));
            return Ok(());
        }
        let inode = st.live.remove(from).ok_or_else(|| not_found(from))?;
        st.live.insert(to.to_path_buf(), inode);
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        let inode = st.live.remove(path).ok_or_else(|| not_found(path))?;
        // The last name of a file gives its space back (another name, or
        // the durable image of the directory, may still hold the inode;
        // only live names count, as a running system sees it).
        if !st.live.values().any(|i| Arc::ptr_eq(i, &inode)) {
            let freed = inode.lock().charged;
            if let Some(left) = st.space_left.as_mut() {
                *left += freed;
            }
        }
        Ok(())
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        if st.live.keys().any(|p| p.starts_with(dir))
            || st.dirs.iter().any(|d| d != dir && d.starts_with(dir))
        {
            return Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                "directory not empty",
            ));
        }
        st.dirs.remove(dir);
        Ok(())
    }
    fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        let inode = st.live.get(from).cloned().ok_or_else(|| not_found(from))?;
        if st.live.contains_key(to) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "link exists"));
        }
        st.live.insert(to.to_path_buf(), inode);
        Ok(())
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        let inode = st.live.get(path).cloned().ok_or_else(|| not_found(path))?;
        let mut inode = inode.lock();
        let len = usize::try_from(len).map_err(|_| eof())?;
        let kept = inode.charged.min(len as u64);
        if let Some(left) = st.space_left.as_mut() {
            *left += inode.charged - kept;
        }
        inode.charged = kept;
        inode.data.truncate(len);
        inode.synced = inode.synced.min(len);
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.lock();
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(st
            .live
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect())
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        for ancestor in dir.ancestors() {
            st.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.fail_sync {
            st.failed.push(dir.to_path_buf());
            return Err(io::Error::other("injected fsync failure"));
        }
        let st = &mut *st;
        // Renames of subdirectories of `dir` become durable, files and all.
        let (done, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut st.dir_renames)
            .into_iter()
            .partition(|(_, to)| to.parent() == Some(dir));
        st.dir_renames = pending;
        for (from, to) in done {
            let moved: Vec<PathBuf> = st
                .durable
                .keys()
                .filter(|p| p.parent() == Some(from.as_path()))
                .cloned()
                .collect();
            for p in moved {
                if let (Some(inode), Some(name)) = (st.durable.remove(&p), p.file_name()) {
                    st.durable.insert(to.join(name), inode);
                }
            }
        }
        st.durable.retain(|p, _| p.parent() != Some(dir));
        for (path, inode) in &st.live {
            if path.parent() == Some(dir) {
                st.durable.insert(path.clone(), inode.clone());
            }
        }
        st.durable_dirs.retain(|d| d.parent() != Some(dir));
        let children: Vec<PathBuf> = st
            .dirs
            .iter()
            .filter(|d| d.parent() == Some(dir))
            .cloned()
            .collect();
        st.durable_dirs.extend(children);
        Ok(())
    }
    fn exists(&self, path: &Path) -> bool {
        let st = self.state.lock();
        st.live.contains_key(path) || st.dirs.contains(path)
    }
    fn file_size(&self, path: &Path) -> io::Result<u64> {
        Ok(self.inode(path)?.lock().data.len() as u64)
    }
    fn lock_dir(&self, _dir: &Path) -> io::Result<Box<dyn DirLock>> {
        Ok(Box::new(MemLock))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory renamed and made durable keeps its files under the new
    /// name after a crash; renamed without a sync of its parent, it comes
    /// back under the old name, still listable and removable. (The
    /// simulation found the second case missing: a half-built snapshot
    /// directory came back as files with no directory, and the next
    /// snapshot could not link into it.)
    #[test]
    fn directory_renames_are_durable_only_after_syncing_the_parent() {
        let fs = MemFs::new();
        let root = Path::new("/snaps");
        for (tmp, done) in [("tmp-1", "snap-1"), ("tmp-2", "snap-2")] {
            let dir = root.join(tmp);
            crate::fs::create_dir_durable(&fs, &dir).unwrap();
            let mut f = fs.create(&dir.join("f")).unwrap();
            f.append(tmp.as_bytes()).unwrap();
            f.sync().unwrap();
            fs.sync_dir(&dir).unwrap();
            fs.sync_dir(root).unwrap();
            fs.rename(&dir, &root.join(done)).unwrap();
        }
        fs.sync_dir(root).unwrap(); // both renames durable
        fs.rename(&root.join("snap-2"), &root.join("snap-3"))
            .unwrap(); // not durable
        fs.crash(false, 1);
        assert_eq!(fs.read_all(&root.join("snap-1/f")).unwrap(), b"tmp-1");
        assert!(!fs.exists(&root.join("tmp-1")));
        assert!(!fs.exists(&root.join("snap-3")));
        assert_eq!(
            fs.list(&root.join("snap-2")).unwrap(),
            vec!["f".to_string()]
        );
        fs.remove(&root.join("snap-2/f")).unwrap();
        fs.remove_dir(&root.join("snap-2")).unwrap();
    }

    #[test]
    fn crash_keeps_only_synced_data_and_entries() {
        let fs = MemFs::new();
        let dir = Path::new("/db");
        crate::fs::create_dir_durable(&fs, dir).unwrap();
        let mut a = fs.create(&dir.join("a")).unwrap();
        a.append(b"hello").unwrap();
        a.sync().unwrap();
        fs.sync_dir(dir).unwrap();
        a.append(b" world").unwrap();
        let mut b = fs.create(&dir.join("b")).unwrap();
        b.append(b"lost").unwrap();
        b.sync().unwrap(); // synced data, but the entry is not durable
        drop((a, b));
        fs.crash(false, 1);
        assert_eq!(fs.read_all(&dir.join("a")).unwrap(), b"hello");
        assert!(!fs.exists(&dir.join("b")));
    }

    #[test]
    fn full_disk_cuts_the_write() {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let mut f = fs.create(Path::new("/d/f")).unwrap();
        fs.set_faults(Faults {
            space_left: Some(3),
            fail_sync: false,
        });
        let err = f.append(b"abcdef").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(fs.read_all(Path::new("/d/f")).unwrap(), b"abc");
    }

    #[test]
    fn a_directory_is_durable_only_after_its_parent_is_synced() {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/a/b")).unwrap();
        let mut f = fs.create(Path::new("/a/b/f")).unwrap();
        f.append(b"x").unwrap();
        f.sync().unwrap();
        fs.sync_dir(Path::new("/a/b")).unwrap();
        drop(f);
        fs.crash(false, 1);
        assert!(
            !fs.exists(Path::new("/a")),
            "a directory never synced in its parent survived"
        );
        assert!(!fs.exists(Path::new("/a/b/f")));
        crate::fs::create_dir_durable(&fs, Path::new("/a/b")).unwrap();
        let mut f = fs.create(Path::new("/a/b/f")).unwrap();
        f.append(b"x").unwrap();
        f.sync().unwrap();
        fs.sync_dir(Path::new("/a/b")).unwrap();
        drop(f);
        fs.crash(false, 1);
        assert_eq!(fs.read_all(Path::new("/a/b/f")).unwrap(), b"x");
    }

    /// A failed fsync loses its data even when a later fsync succeeds.
    #[test]
    fn fsyncgate_a_failed_sync_is_not_redeemed_by_a_later_one() {
        let fs = MemFs::new();
        crate::fs::create_dir_durable(&fs, Path::new("/d")).unwrap();
        let mut f = fs.create(Path::new("/d/f")).unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        f.append(b"first").unwrap();
        f.sync().unwrap();
        f.append(b"-second").unwrap();
        fs.set_faults(Faults {
            fail_sync: true,
            ..Faults::default()
        });
        assert!(f.sync().is_err());
        fs.set_faults(Faults::default());
        f.append(b"-third").unwrap();
        f.sync().unwrap();
        drop(f);
        fs.crash(false, 1);
        let data = fs.read_all(Path::new("/d/f")).unwrap();
        assert_eq!(&data[..5], b"first");
        assert_eq!(&data[5..12], &[0u8; 7], "the failed range survived");
        assert_eq!(&data[12..], b"-third");
    }

    #[test]
    fn a_torn_crash_loses_whole_sectors_in_any_order() {
        let mut lost_a_middle_sector = false;
        for seed in 0..64 {
            let fs = MemFs::new();
            crate::fs::create_dir_durable(&fs, Path::new("/d")).unwrap();
            let mut f = fs.create(Path::new("/d/f")).unwrap();
            fs.sync_dir(Path::new("/d")).unwrap();
            f.append(&[1u8; 100]).unwrap();
            f.sync().unwrap();
            f.append(&[2u8; 4000]).unwrap();
            drop(f);
            fs.crash(true, seed);
            let data = fs.read_all(Path::new("/d/f")).unwrap();
            assert_eq!(&data[..100], &[1u8; 100]);
            for (i, sector) in data.chunks(SECTOR).enumerate() {
                let from = if i == 0 { 100 } else { 0 };
                let part = &sector[from.min(sector.len())..];
                assert!(
                    part.iter().all(|&b| b == 2) || part.iter().all(|&b| b == 0),
                    "seed {seed}: sector {i} is neither written nor lost"
                );
                if i > 0 && i + 1 < data.len() / SECTOR && part.iter().all(|&b| b == 0) {
                    lost_a_middle_sector = true;
                }
            }
        }
        assert!(lost_a_middle_sector);
    }

    #[test]
    fn a_full_disk_stays_full_across_a_crash_and_a_wipe_loses_everything() {
        let fs = MemFs::new();
        crate::fs::create_dir_durable(&fs, Path::new("/d")).unwrap();
        fs.set_faults(Faults {
            space_left: Some(0),
            fail_sync: false,
        });
        fs.crash(false, 1);
        let mut f = fs.create(Path::new("/d/f")).unwrap();
        assert_eq!(
            f.append(b"x").unwrap_err().kind(),
            io::ErrorKind::StorageFull
        );
        drop(f);
        fs.wipe();
        assert!(!fs.exists(Path::new("/d")));
        let mut f = fs.create(Path::new("/f")).unwrap();
        f.append(b"fits again").unwrap();
    }

    #[test]
    fn flipped_bits_land_in_synced_data_only() {
        let fs = MemFs::new();
        crate::fs::create_dir_durable(&fs, Path::new("/d")).unwrap();
        let mut f = fs.create(Path::new("/d/f")).unwrap();
        f.append(&[0u8; 64]).unwrap();
        f.sync().unwrap();
        f.append(&[0u8; 64]).unwrap();
        drop(f);
        assert!(fs.flip_bit(1, |p| p.ends_with("other")).is_none());
        let (path, offset) = fs.flip_bit(1, |_| true).unwrap();
        assert_eq!(path, Path::new("/d/f"));
        assert!(offset < 64);
        let data = fs.read_all(&path).unwrap();
        assert_eq!(data.iter().filter(|&&b| b != 0).count(), 1);
        assert_eq!(data[offset as usize].count_ones(), 1);
    }
}
