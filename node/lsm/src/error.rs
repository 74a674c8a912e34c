//! The engine's error type.

use std::path::PathBuf;

/// Everything that can go wrong inside the storage engine.
///
/// A checksum mismatch or a malformed structure on disk is always
/// [`Error::Corruption`]: the engine never returns wrong data and never
/// panics on bytes it read back.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system (or the simulated disk) failed an I/O call.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Bytes read back from disk failed a checksum or do not parse.
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damaged record, block or footer.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// The caller passed something the engine cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A previous background error (a failed fsync or flush) made the
    /// database read-only; reopen it to recover from what is durable.
    #[error("database is read-only after a background error: {0}")]
    Poisoned(String),
    /// The database is closing; background work stopped early.
    #[error("database is shutting down")]
    ShuttingDown,
    /// The database directory is locked or belongs to another format.
    #[error("cannot open database: {0}")]
    Open(String),
}

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Corruption`].
    pub fn corruption(file: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corruption {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// True when the error says data on disk is damaged.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }
}
