//! cairn-io: the seams between cairn's storage code and the machine.
//!
//! Both the storage engine (`cairn-lsm`) and the Raft log (`cairn-node`)
//! do all their I/O through these, so the deterministic simulation can
//! swap the machine out from under them:
//!
//! - [`fs`]: the filesystem trait and the real one, [`StdFs`];
//! - [`executor`]: where background work runs ([`ThreadExecutor`]);
//! - [`frame`]: length + CRC32C record framing (WAL, manifest, Raft log);
//! - [`small_file`]: small state files replaced atomically;
//! - [`reserve`]: room kept for a full disk, and the filesystem that
//!   falls back on it;
//! - [`codec`]: the postcard encoding of durable and peer records.
//!
//! With the `sim` feature, `MemFs` (a disk that loses unsynced data when
//! it crashes, with injectable faults) and `InlineExecutor` (jobs run on
//! the caller's thread). Production builds leave the feature off.
#![forbid(unsafe_code)]

pub mod codec;
pub mod executor;
pub mod frame;
pub mod fs;
#[cfg(feature = "sim")]
pub mod mem_fs;
pub mod reserve;
pub mod small_file;

#[cfg(feature = "sim")]
pub use executor::InlineExecutor;
pub use executor::{Executor, ThreadExecutor};
pub use fs::{FileSystem, StdFs};
#[cfg(feature = "sim")]
pub use mem_fs::{Faults, MemFs};
