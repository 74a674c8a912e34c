//! The filesystem seam. Every byte the engine and the Raft log read or
//! write goes through [`FileSystem`], so a test or the simulation can give
//! a node a disk that loses unsynced writes when it "crashes" (`MemFs`,
//! with the `sim` feature) while production uses the real one ([`StdFs`]).

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// A file opened for appending. Data reaches durable storage only after
/// [`WritableFile::sync`] returns.
pub trait WritableFile: Send {
    /// Appends `data` at the end of the file (possibly buffered).
    fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// Hands buffered data to the operating system (survives a process
    /// crash, not a power loss).
    fn flush(&mut self) -> io::Result<()>;
    /// Makes everything appended so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
    /// Bytes appended so far, buffered or not.
    fn len(&self) -> u64;
    /// Grows the file with zeros to at least `len` bytes without moving
    /// the append position, so later appends overwrite the zeros and an
    /// `fdatasync` need not record a new file size each time.
    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        let _ = len;
        Ok(())
    }
    /// Allocates `len` bytes of disk space for the file, from its start,
    /// without writing them (fallocate), growing it to `len`. `Ok(false)`:
    /// the filesystem cannot, and the caller writes zeros instead.
    fn allocate(&mut self, len: u64) -> io::Result<bool> {
        let _ = len;
        Ok(false)
    }
    /// True when nothing was appended.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A file opened for positional reads from many threads at once.
pub trait RandomAccessFile: Send + Sync {
    /// Reads exactly `len` bytes at `offset`; a short file is an
    /// `UnexpectedEof` error.
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// The file's length when it was opened.
    fn len(&self) -> u64;
    /// True for an empty file.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An exclusive lock on a directory, released on drop.
pub trait DirLock: Send + Sync {}

/// The filesystem operations the engine needs, and nothing more.
pub trait FileSystem: Send + Sync + 'static {
    /// Creates (or truncates) `path` for appending.
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Opens an existing `path` for appending after its current end.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>>;
    /// Opens `path` for positional reads.
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn RandomAccessFile>>;
    /// Reads the whole of `path`.
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, dir: &Path) -> io::Result<()>;
    /// Makes `to` a hard link to `from`.
    fn link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Cuts `path` to `len` bytes.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Names of the files in `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes the creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// True when `path` exists.
    fn exists(&self, path: &Path) -> bool;
    /// Size of `path` in bytes.
    fn file_size(&self, path: &Path) -> io::Result<u64>;
    /// Takes an exclusive lock on `dir` so two processes never open one
    /// database.
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn DirLock>>;
}

/// Creates `dir` and any missing parents, and makes each new directory
/// entry durable with an fsync of the directory that holds it (a power
/// cut right after `mkdir` may otherwise take the directory, and every
/// file synced inside it, away).
pub fn create_dir_durable(fs: &dyn FileSystem, dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !fs.exists(d))
        .collect();
    fs.create_dir_all(dir)?;
    for d in missing.iter().rev() {
        match d.parent() {
            Some(p) if p.as_os_str().is_empty() => fs.sync_dir(Path::new("."))?,
            Some(p) => fs.sync_dir(p)?,
            None => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The real filesystem.

/// The operating system's filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

struct StdWritable {
    file: io::BufWriter<std::fs::File>,
    len: u64,
}

impl WritableFile for StdWritable {
    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.len += data.len() as u64;
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()
    }
    fn len(&self) -> u64 {
        self.len
    }
    #[cfg(target_os = "linux")]
    fn allocate(&mut self, len: u64) -> io::Result<bool> {
        self.file.flush()?;
        let mode = rustix::fs::FallocateFlags::empty();
        match rustix::fs::fallocate(self.file.get_ref(), mode, 0, len) {
            Ok(()) => {
                self.len = self.len.max(len);
                Ok(true)
            }
            Err(rustix::io::Errno::OPNOTSUPP) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        self.file.flush()?;
        let file = self.file.get_ref();
        if file.metadata()?.len() < len {
            // Sparse: set_len moves neither the cursor nor any data.
            file.set_len(len)?;
        }
        Ok(())
    }
}

struct StdReadable {
    file: std::fs::File,
    len: u64,
}

impl RandomAccessFile for StdReadable {
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }
    fn len(&self) -> u64 {
        self.len
    }
}

struct StdLock {
    _file: std::fs::File,
}
impl DirLock for StdLock {}

const WRITE_BUFFER_BYTES: usize = 256 * 1024;

impl FileSystem for StdFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Box::new(StdWritable {
            file: io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
            len: 0,
        }))
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn WritableFile>> {
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Box::new(StdWritable {
            file: io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, file),
            len,
        }))
    }
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn RandomAccessFile>> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Arc::new(StdReadable { file, len }))
    }
    fn read_all(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        std::fs::File::open(path)?.read_to_end(&mut buf)?;
        Ok(buf)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir(dir)
    }
    fn link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn file_size(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn DirLock>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(StdLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked by another process", dir.display()),
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------
