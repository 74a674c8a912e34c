//! Room kept for a full disk.
//!
//! A node keeps a reserve file (`<data>/reserve`, its blocks allocated
//! with fallocate, or written with zeros where that is not supported)
//! that holds some of the disk's space. When a write fails because the disk is full, the
//! reserve is deleted and the write is made again in the room that gives
//! back, so the node goes on (it raises a NOSPACE alarm and refuses
//! writes that add data) instead of stopping with half a record on disk.
//! Once the alarm is cleared, the reserve is written again; if the disk is
//! still full, that fails and the alarm is raised again.
//!
//! [`ReservedFs`] wraps the node's filesystem: every file it writes keeps
//! what it has not yet handed to the operating system in its own buffer,
//! so when a hand-over fails for lack of space it knows exactly which
//! bytes reached the file. It cuts the file back to them, frees the
//! reserve, and writes again. A failed fsync is never retried: what the
//! kernel could not write back is lost, whatever the reason.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::fs::{DirLock, FileSystem, RandomAccessFile, WritableFile};

/// The reserve file's name in a data directory.
pub const RESERVE_FILE: &str = "reserve";

/// Bytes written at a time when the reserve is filled.
const FILL_CHUNK: usize = 1 << 20;

/// Bytes a file buffers before it hands them to the operating system.
const BUFFER_BYTES: usize = 256 * 1024;

/// Whether `e` says the disk (or the user's quota on it) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// The reserve file of one data directory.
pub struct Reserve {
    fs: Arc<dyn FileSystem>,
    path: PathBuf,
    bytes: u64,
    /// A write found the disk full since the reserve was last filled.
    full: AtomicBool,
    /// Called when a write finds the disk full (the alarm must be raised
    /// before the room the reserve gave back is used up).
    on_full: parking_lot::Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for Reserve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reserve")
            .field("path", &self.path)
            .field("bytes", &self.bytes)
            .field("full", &self.disk_was_full())
            .finish()
    }
}

impl Reserve {
    /// The reserve of `bytes` (0: none) in directory `dir` of `fs`. Nothing
    /// is written until [`Reserve::fill`].
    pub fn new(fs: Arc<dyn FileSystem>, dir: &Path, bytes: u64) -> Arc<Reserve> {
        Arc::new(Reserve {
            fs,
            path: dir.join(RESERVE_FILE),
            bytes,
            full: AtomicBool::new(false),
            on_full: parking_lot::Mutex::new(Vec::new()),
        })
    }

    /// Calls `f` each time a write finds the disk full.
    pub fn on_full(&self, f: impl Fn() + Send + Sync + 'static) {
        self.on_full.lock().push(Box::new(f));
    }

    fn note_full(&self) {
        self.full.store(true, Ordering::Release);
        for f in self.on_full.lock().iter() {
            f();
        }
    }

    /// Whether a write found the disk full since the reserve was last
    /// filled (or the reserve could not be filled).
    pub fn disk_was_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Whether the reserve file is there, whole.
    pub fn is_filled(&self) -> bool {
        self.bytes == 0 || self.fs.file_size(&self.path).is_ok_and(|n| n >= self.bytes)
    }

    /// Writes the reserve if it is missing or short, and syncs it. A full
    /// disk is not an error: the partial file is removed, the disk is
    /// noted full, and `Ok(false)` says so. `Ok(true)`: the reserve is in
    /// place and the full-disk note is cleared.
    pub fn fill(&self) -> io::Result<bool> {
        if self.is_filled() {
            self.full.store(false, Ordering::Release);
            return Ok(true);
        }
        // A write that found the disk full meanwhile may have removed the
        // file being written: only a reserve that is there counts.
        match self.write_zeros().map(|()| self.is_filled()) {
            Ok(true) => {
                self.full.store(false, Ordering::Release);
                Ok(true)
            }
            Ok(false) => {
                self.full.store(true, Ordering::Release);
                Ok(false)
            }
            Err(e) if is_disk_full(&e) => {
                let _ = self.fs.remove(&self.path);
                self.full.store(true, Ordering::Release);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Allocates the reserve's blocks (fallocate), or, on a filesystem
    /// that cannot, writes zeros; then syncs it and its directory.
    fn write_zeros(&self) -> io::Result<()> {
        let mut f = self.fs.create(&self.path)?;
        if !f.allocate(self.bytes)? {
            let zeros = vec![0u8; FILL_CHUNK];
            let mut left = self.bytes;
            while left > 0 {
                let n = left.min(FILL_CHUNK as u64) as usize;
                f.append(&zeros[..n])?;
                left -= n as u64;
            }
            f.flush()?;
        }
        f.sync()?;
        if let Some(dir) = self.path.parent() {
            self.fs.sync_dir(dir)?;
        }
        Ok(())
    }

    /// The disk is full: notes it and deletes the reserve. Whether that
    /// gave space back (false: there was no reserve left to delete).
    pub fn release(&self) -> bool {
        self.note_full();
        if self.bytes == 0 || !self.fs.exists(&self.path) {
            return false;
        }
        match self.fs.remove(&self.path) {
            Ok(()) => {
                tracing::warn!(reserve = %self.path.display(), bytes = self.bytes,
                    "the disk is full: the reserve is deleted to finish the write; \
                     the node raises NOSPACE");
                true
            }
            Err(e) => {
                tracing::error!(reserve = %self.path.display(), error = %e,
                    "the disk is full and the reserve could not be deleted");
                false
            }
        }
    }
}

/// A filesystem whose writes fall back on a [`Reserve`] when the disk is
/// full.
pub struct ReservedFs {
    inner: Arc<dyn FileSystem>,
    reserve: Arc<Reserve>,
}

impl ReservedFs {
    /// `inner`, with `reserve` to fall back on.
    pub fn new(inner: Arc<dyn FileSystem>, reserve: Arc<Reserve>) -> ReservedFs {
        ReservedFs { inner, reserve }
    }

    /// Runs `op`; if the disk is full, frees the reserve and runs it again.
    fn retry<T>(&self, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match op() {
            Err(e) if is_disk_full(&e) && self.reserve.release() => op(),
            other => other,
        }
    }

    fn wrap(&self, path: &Path, file: Box<dyn WritableFile>) -> Box<dyn WritableFile> {
        let written = file.len();
        Box::new(ReservedFile {
            inner: Some(file),
            path: path.to_path_buf(),
            fs: self.inner.clone(),
            reserve: self.reserve.clone(),
            buf: Vec::new(),
            written,
        })
    }
}

struct ReservedFile {
    /// `None` only while it is reopened.
    inner: Option<Box<dyn WritableFile>>,
    path: PathBuf,
    fs: Arc<dyn FileSystem>,
    reserve: Arc<Reserve>,
    /// Appended, not yet handed to the operating system.
    buf: Vec<u8>,
    /// Bytes of the file handed to the operating system.
    written: u64,
}

impl ReservedFile {
    fn inner(&mut self) -> io::Result<&mut Box<dyn WritableFile>> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::other("file lost after a failed reopen"))
    }

    /// Hands `bytes` to the operating system; on a full disk, cuts the
    /// file back to what was handed over before, frees the reserve, and
    /// tries once more.
    fn hand_over(&mut self, bytes: &[u8]) -> io::Result<()> {
        let first = {
            let f = self.inner()?;
            f.append(bytes).and_then(|()| f.flush())
        };
        match first {
            Ok(()) => {}
            Err(e) if is_disk_full(&e) && self.reserve.release() => {
                self.reopen_at_written()?;
                let f = self.inner()?;
                f.append(bytes)?;
                f.flush()?;
            }
            Err(e) => return Err(e),
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Drops the handle (and whatever it still buffered), cuts the file
    /// to the bytes handed over whole, and opens it again at its end.
    fn reopen_at_written(&mut self) -> io::Result<()> {
        self.inner = None;
        self.fs.truncate(&self.path, self.written)?;
        self.inner = Some(self.fs.open_append(&self.path)?);
        Ok(())
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let res = self.hand_over(&buf);
        self.buf = buf;
        res?;
        self.buf.clear();
        Ok(())
    }
}

impl WritableFile for ReservedFile {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if self.buf.len() + data.len() <= BUFFER_BYTES {
            self.buf.extend_from_slice(data);
            return Ok(());
        }
        self.flush_buf()?;
        if data.len() >= BUFFER_BYTES {
            self.hand_over(data)
        } else {
            self.buf.extend_from_slice(data);
            Ok(())
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()
    }
    fn sync(&mut self) -> io::Result<()> {
        self.flush_buf()?;
        self.inner()?.sync()
    }
    fn len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }
    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        self.flush_buf()?;
        self.inner()?.preallocate(len)
    }
    fn allocate(&mut self, len: u64) -> io::Result<bool> {
        self.flush_buf()?;
        let done = self.inner()?.allocate(len)?;
        if done {
            self.written = self.written.max(len);
        }
        Ok(done)
    }
}

impl FileSystem for ReservedFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let f = self.retry(|| self.inner.create(path))?;
        Ok(self.wrap(path, f))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let f = self.inner.open_append(path)?;
        Ok(self.wrap(path, f))
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn RandomAccessFile>> {
        self.inner.open_read(path)
    }
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.retry(|| self.inner.rename(from, to))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.remove_dir(dir)
    }
    fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.retry(|| self.inner.link(from, to))
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.inner.truncate(path, len)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.retry(|| self.inner.create_dir_all(dir))
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn file_size(&self, path: &Path) -> io::Result<u64> {
        self.inner.file_size(path)
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn DirLock>> {
        self.inner.lock_dir(dir)
    }
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;
    use crate::mem_fs::{Faults, MemFs};

    fn setup(reserve: u64) -> io::Result<(MemFs, Arc<Reserve>, ReservedFs)> {
        let mem = MemFs::new();
        let inner: Arc<dyn FileSystem> = Arc::new(mem.clone());
        inner.create_dir_all(Path::new("/d"))?;
        let r = Reserve::new(inner.clone(), Path::new("/d"), reserve);
        assert!(r.fill()?);
        Ok((mem, r.clone(), ReservedFs::new(inner, r)))
    }

    #[test]
    fn a_full_disk_frees_the_reserve_and_the_write_is_made_whole() {
        let (mem, r, fs) = setup(4096).unwrap();
        let woken = Arc::new(AtomicBool::new(false));
        let w = woken.clone();
        r.on_full(move || w.store(true, Ordering::SeqCst));
        let path = Path::new("/d/log");
        let mut f = fs.create(path).unwrap();
        f.append(b"first").unwrap();
        f.sync().unwrap();
        mem.set_faults(Faults {
            space_left: Some(100),
            fail_sync: false,
        });
        // 300 bytes do not fit in 100: the first 100 land, then the disk
        // is full; the file is cut back, the reserve freed, and the whole
        // write made again.
        let big = [7u8; 300];
        f.append(&big).unwrap();
        f.sync().unwrap();
        let mut want = b"first".to_vec();
        want.extend_from_slice(&big);
        assert_eq!(fs.read_all(path).unwrap(), want);
        assert_eq!(f.len(), want.len() as u64);
        assert!(!fs.exists(Path::new("/d/reserve")));
        assert!(r.disk_was_full() && woken.load(Ordering::SeqCst));
        // No reserve is left: the next full disk is an error, and the
        // reserve cannot be written again while the disk is full.
        mem.set_faults(Faults {
            space_left: Some(10),
            fail_sync: false,
        });
        let err = f.append(&[1u8; BUFFER_BYTES + 1]).unwrap_err();
        assert!(is_disk_full(&err), "{err}");
        assert!(!r.fill().unwrap());
        assert!(!fs.exists(Path::new("/d/reserve")));
        // Space freed: the reserve is written again.
        mem.set_faults(Faults::default());
        assert!(r.fill().unwrap());
        assert!(r.is_filled() && !r.disk_was_full());
    }

    #[test]
    fn a_failed_fsync_is_not_retried() {
        let (mem, r, fs) = setup(4096).unwrap();
        let mut f = fs.create(Path::new("/d/log")).unwrap();
        f.append(b"data").unwrap();
        mem.set_faults(Faults {
            space_left: None,
            fail_sync: true,
        });
        assert!(f.sync().is_err());
        assert!(r.is_filled() && !r.disk_was_full());
    }
}
