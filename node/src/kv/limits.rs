//! What one log entry may cost when it is applied. These are fixed
//! bounds, the same on every replica (never a node's flag), so applying a
//! committed entry never fails because of what a client sent: a command
//! that would go past one is answered with
//! [`OpResult::Refused`](super::command::OpResult::Refused), on every
//! replica alike, and writes nothing.
//!
//! The leader refuses most such commands before they are proposed, by
//! the node's own (smaller) limits; these catch what changed between
//! that check and the apply, and what the leader cannot know in advance
//! (the pairs a transaction's reads return).

/// Bytes of watch events one entry may record: the keys and values of
/// the pairs it writes or deletes, [`PAIR_OVERHEAD_BYTES`] each on top.
pub const MAX_EVENT_BYTES: u64 = 24 << 20;

/// Bytes of pairs one entry may answer with: previous pairs (`prev_kv`)
/// and what a transaction's gets and scans read, [`PAIR_OVERHEAD_BYTES`]
/// each on top.
pub const MAX_ANSWER_BYTES: u64 = 24 << 20;

/// Bytes of pairs of an answer that a request id's record keeps for a
/// retry; a larger answer is kept as a note of its size
/// ([`OpResult::AnswerNotKept`](super::command::OpResult::AnswerNotKept)).
pub const MAX_KEPT_ANSWER_BYTES: u64 = 2 << 20;

/// Bytes of pairs a scan inside a transaction returns in one page; past
/// them the page ends with `more` set, as a scan's page does.
pub const TXN_SCAN_PAGE_BYTES: u64 = 2 << 20;

/// What a pair costs beyond its key and value: its revisions and its
/// encoding.
pub const PAIR_OVERHEAD_BYTES: u64 = 32;

/// The largest revision record an entry can write: its events, its
/// answer (with a request id) and their framing. The state machine's
/// engine must accept values this large.
pub const MAX_RECORD_BYTES: u64 = MAX_EVENT_BYTES + MAX_ANSWER_BYTES + (1 << 20);

/// The largest user key the layout can store: the engine takes keys of
/// up to 64 KiB, and a pair's key has a one-byte prefix.
pub const MAX_KEY_BYTES: usize = (64 << 10) - 1;

/// What a pair of these sizes costs against a budget.
pub(crate) fn pair_cost(key: usize, value: usize) -> u64 {
    key as u64 + value as u64 + PAIR_OVERHEAD_BYTES
}
