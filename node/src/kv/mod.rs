//! The key-value model over the LSM engine: what a command does to the
//! data, the watch history and the client sessions.
//!
//! The state machine keeps everything in one LSM database, in key spaces
//! told apart by their first byte:
//!
//! ```text
//! 'd' user_key          -> create_rev u64 | mod_rev u64 | version u64 | value   (LE)
//! 'v' revision u64 BE   -> postcard(Record): the revision's watch events and,
//!                          for a write with a request id, the id, its answer
//!                          and the client's session floor
//! 'c' client_id u64 BE  -> postcard(SessionMark): what a session's records do not say
//! 'm' name              -> small state (history start, settings, alarms, format version)
//! ```
//!
//! One record per revision holds both the watch history and a session's
//! kept answer. A record is deleted once the history has passed it and
//! no session keeps its answer.
//!
//! Applying is deterministic: it depends only on the entries and the
//! state, never on time or on memory addresses, so every replica writes
//! the same bytes. The history is trimmed by log index and sessions
//! expire by entries the leader proposes, so they too are equal on every
//! replica.
//!
//! - [`command`]: what a log entry carries (puts, deletes, transactions)
//!   and what applying it answers.
//! - `layout`: the key spaces and the encoding of pairs and records.
//! - [`read`]: reads of pairs, ranges and the watch history.
//! - [`Applier`]: applies commands in log order (`applier`, with one
//!   command's pending writes in `tx`) and trims the history.
//! - [`sessions`]: the client sessions that make a retried write apply
//!   once.
//! - `format`: the layout's version, checked (and old layouts converted)
//!   when the applier loads.
//! - [`alarms`]: replicated alarms (NOSPACE, CORRUPT) and the writes
//!   they refuse.
//! - [`hash`]: a hash of the whole state at one index, to compare
//!   replicas.
//! - [`limits`]: what one entry may cost when applied; past it a command
//!   is refused the same way on every replica, never an apply error.
//!
//! The layout is written down byte by byte in `FORMAT.md` beside this file.

pub mod alarms;
mod applier;
pub mod command;
mod error;
mod format;
pub mod hash;
mod key_meta;
mod layout;
pub mod limits;
pub mod read;
pub mod sessions;
#[cfg(test)]
mod tests;
mod tx;

pub use applier::{
    check_settings, Applied, Applier, HISTORY_TRIM_EVERY, MAX_HISTORY_REVISIONS,
    MAX_SESSION_TTL_SECS, MIN_SESSION_TTL_SECS,
};
pub use command::{Command, CommandResponse, SessionHint, Settings};
pub use error::StoreError;
pub use format::FORMAT_VERSION;
pub use key_meta::KEY_META_CAPACITY;
pub use layout::{EventKind, WatchEvent};
pub use read::{get, history, history_start, scan, MAX_PAGE};
