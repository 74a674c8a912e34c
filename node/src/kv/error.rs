//! The key-value model's error.

use cairn_lsm as lsm;

/// Errors of the state machine's storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed.
    #[error(transparent)]
    Lsm(#[from] lsm::Error),
    /// Stored bytes do not decode: a bug or damage the checksums missed.
    #[error("corrupt state-machine record under key {key:?}: {reason}")]
    Corrupt {
        /// The LSM key.
        key: Vec<u8>,
        /// What was wrong.
        reason: String,
    },
    /// The database was written by a newer cairn, in a layout this build
    /// cannot read.
    #[error(
        "the state machine's format version is {found}, newer than the {supported} this build \
         reads: run a cairn at least as new as the one that wrote it"
    )]
    NewerFormat {
        /// The version the database records.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
}

pub(crate) type Result<T> = std::result::Result<T, StoreError>;
