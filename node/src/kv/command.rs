//! What a Raft log entry carries, and what applying it answers. These
//! types are stored in the log (postcard-encoded), so changing them is a
//! format change: add variants at the end only.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::alarms::Alarm;

/// A key with its value and revisions, as the state machine keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kv {
    /// The user's key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Its value (empty when only keys were asked for).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The revision that created the key (since its last delete).
    pub create_revision: u64,
    /// The revision of the last put.
    pub mod_revision: u64,
    /// Puts since the key was created, the creating put included.
    pub version: u64,
}

/// A client's write id: a retried write with the same id is applied once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId {
    /// Chosen at random by the client, once per client instance.
    pub client_id: u64,
    /// Grows with every write the client sends.
    pub seq: u64,
}

/// What a write with a request id tells about its client's session
/// (see `kv::sessions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHint {
    /// Every sequence number of the client below this one is settled:
    /// the client will never send it again, and its answer may be
    /// forgotten.
    pub floor: u64,
    /// The write may open a session for a client the state machine does
    /// not know: only for entries logged before sessions were opened
    /// explicitly ([`LegacyCommand`]); a client opens one with
    /// [`Op::OpenSession`].
    pub opens: bool,
}

/// A state-machine command: one log entry, applied atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Set by clients that retry; duplicates get the first result.
    pub request_id: Option<RequestId>,
    /// What to do.
    pub op: Op,
    /// With a request id: the client's session floor and whether the
    /// write may open a session.
    pub session: SessionHint,
}

impl Command {
    /// A command without a request id.
    pub fn new(op: Op) -> Self {
        Command {
            request_id: None,
            op,
            session: SessionHint::default(),
        }
    }
}

/// A command as logged before sessions ([`SessionHint`]): entries of
/// that encoding are read as commands whose request id may open a
/// session, which is what they meant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyCommand {
    /// As [`Command::request_id`].
    pub request_id: Option<RequestId>,
    /// As [`Command::op`].
    pub op: Op,
}

impl fmt::Display for LegacyCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "legacy {}", Command::from(self.clone()))
    }
}

impl From<LegacyCommand> for Command {
    fn from(c: LegacyCommand) -> Self {
        Command {
            request_id: c.request_id,
            op: c.op,
            session: SessionHint {
                floor: 0,
                opens: true,
            },
        }
    }
}

/// Settings that decide what the state machine keeps; replicated (set by
/// an [`Op::Settings`] entry), so every replica keeps the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Revisions of watch history kept.
    pub history_revisions: u64,
    /// Seconds a client's session lives without a write; the leader
    /// proposes the expiry ([`Op::ExpireSessions`]).
    pub session_ttl_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            history_revisions: 100_000,
            session_ttl_secs: 300,
        }
    }
}

/// Set `key` to `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutOp {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Answer with the previous pair.
    pub prev_kv: bool,
}

/// Delete `key`, or every key starting with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteOp {
    /// The key or prefix.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Treat `key` as a prefix.
    pub prefix: bool,
    /// Answer with the deleted pairs.
    pub prev_kv: bool,
}

/// The write operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// A put.
    Put(PutOp),
    /// A delete of a key or prefix.
    Delete(DeleteOp),
    /// Compare, then run `success` or `failure`.
    Txn(Txn),
    /// Forget the sessions whose last write was applied before this
    /// index (proposed by the leader, by its clock and the session TTL).
    ExpireSessions {
        /// Sessions idle since before this index expire.
        idle_before: u64,
    },
    /// Replace the replicated settings (`if_unset`: only when none were
    /// ever set, which is how a new cluster takes its first node's flags).
    Settings {
        /// The new settings.
        settings: Settings,
        /// Apply only if no settings were set before.
        if_unset: bool,
    },
    /// Open a client session; its client id is this entry's index.
    OpenSession,
    /// Raise (`active`) or disarm an alarm.
    Alarm {
        /// Raise or disarm.
        active: bool,
        /// The alarm.
        alarm: Alarm,
    },
    /// Changes nothing: every replica hashes its state as of this entry
    /// (`kv::hash`), and the leader compares the hashes.
    HashCheck,
}

/// A transaction: all compares hold -> `success`, else `failure`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// Run when every compare holds.
    pub success: Vec<TxnOp>,
    /// Run otherwise.
    pub failure: Vec<TxnOp>,
}

/// What a compare looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value's bytes.
    Value,
    /// The key's version.
    Version,
    /// The key's create revision.
    CreateRevision,
    /// The key's mod revision.
    ModRevision,
}

/// How a compare compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `<`
    Less,
    /// `>`
    Greater,
}

/// One condition of a transaction. A missing key has an empty value and
/// zero version and revisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key looked at.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Which of its fields.
    pub target: CompareTarget,
    /// The comparison.
    pub op: CompareOp,
    /// The operand for [`CompareTarget::Value`].
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The operand for the numeric targets.
    pub number: u64,
}

impl Compare {
    /// Whether the compare holds for the key's current state.
    pub fn holds(&self, current: Option<&Kv>) -> bool {
        use std::cmp::Ordering;
        let ord = match self.target {
            CompareTarget::Value => {
                let v: &[u8] = current.map_or(&[], |kv| &kv.value);
                v.cmp(&self.value[..])
            }
            CompareTarget::Version => current.map_or(0, |kv| kv.version).cmp(&self.number),
            CompareTarget::CreateRevision => {
                current.map_or(0, |kv| kv.create_revision).cmp(&self.number)
            }
            CompareTarget::ModRevision => current.map_or(0, |kv| kv.mod_revision).cmp(&self.number),
        };
        match self.op {
            CompareOp::Equal => ord == Ordering::Equal,
            CompareOp::NotEqual => ord != Ordering::Equal,
            CompareOp::Less => ord == Ordering::Less,
            CompareOp::Greater => ord == Ordering::Greater,
        }
    }
}

/// An operation inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// A put.
    Put(PutOp),
    /// A delete of a key or prefix.
    Delete(DeleteOp),
    /// A read of one key.
    Get {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// A read of a range `[start, end)` (`end` empty: unbounded).
    Scan(ScanSpec),
}

/// A range read.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ScanSpec {
    /// First key, inclusive.
    #[serde(with = "serde_bytes")]
    pub start: Vec<u8>,
    /// Last key, exclusive; empty means no bound.
    #[serde(with = "serde_bytes")]
    pub end: Vec<u8>,
    /// Most pairs to return.
    pub limit: u32,
    /// Leave the values out.
    pub keys_only: bool,
}

impl ScanSpec {
    /// The range of keys with `prefix` (unbounded above when the prefix is
    /// all 0xff bytes).
    pub fn prefix(prefix: &[u8], limit: u32, keys_only: bool) -> Self {
        ScanSpec {
            start: prefix.to_vec(),
            end: prefix_end(prefix),
            limit,
            keys_only,
        }
    }
}

/// The smallest key greater than every key starting with `prefix`, or
/// empty (unbounded) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// A page of a scan.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ScanResult {
    /// The pairs, in key order.
    pub kvs: Vec<Kv>,
    /// More keys remain after the last one returned.
    pub more: bool,
}

/// What applying a command answered; stored in the request-id table so a
/// duplicate gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResponse {
    /// The revision (log index) at which the command was applied; for a
    /// duplicate, the revision of the first application.
    pub revision: u64,
    /// The outcome.
    pub result: OpResult,
}

/// The outcome of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// A log entry without a command (blank or membership).
    None,
    /// A put, with the previous pair when asked for.
    Put {
        /// The pair before the put.
        prev: Option<Kv>,
    },
    /// A delete.
    Delete {
        /// Keys deleted.
        deleted: u64,
        /// The deleted pairs, when asked for.
        prev: Vec<Kv>,
    },
    /// A get inside a transaction.
    Get(Option<Kv>),
    /// A scan inside a transaction.
    Scan(ScanResult),
    /// A transaction.
    Txn {
        /// Whether every compare held.
        succeeded: bool,
        /// One result per operation run.
        results: Vec<OpResult>,
    },
    /// The command was not applied: it would have gone past a bound of
    /// what one entry may cost (`kv::limits`). Every replica refuses it
    /// the same way, and it wrote nothing.
    Refused {
        /// The bound, as `name = value`.
        limit: String,
        /// What went past it.
        detail: String,
    },
    /// The answer to a retry of a request whose answer was too large to
    /// keep (`kv::limits::MAX_KEPT_ANSWER_BYTES`): it was applied, at the
    /// response's revision, and answered this many bytes of pairs.
    AnswerNotKept {
        /// Bytes of pairs in the first answer.
        bytes: u64,
    },
    /// The request id's client has no session (never opened, or it
    /// expired): nothing was applied, and whether an earlier attempt of
    /// the same request was applied is unknown.
    SessionUnknown,
    /// The request id's sequence number is below its client's floor: the
    /// client settled it, so it is never applied now (it may have been
    /// applied before).
    Settled {
        /// The client's floor.
        floor: u64,
    },
    /// A raised alarm refuses this write (`kv::alarms`): nothing was
    /// applied, and a retry once the alarm is disarmed may apply it.
    Alarmed {
        /// The alarm.
        alarm: Alarm,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            Op::Put(PutOp { key, value, .. }) => {
                write!(
                    f,
                    "put({} key bytes, {} value bytes)",
                    key.len(),
                    value.len()
                )
            }
            Op::Delete(DeleteOp { key, prefix, .. }) => {
                write!(f, "delete({} key bytes, prefix={prefix})", key.len())
            }
            Op::Txn(t) => write!(
                f,
                "txn({} compares, {}/{} ops)",
                t.compares.len(),
                t.success.len(),
                t.failure.len()
            ),
            Op::ExpireSessions { idle_before } => {
                write!(f, "expire-sessions(idle before {idle_before})")
            }
            Op::Settings { settings, if_unset } => {
                write!(f, "settings({settings:?}, if_unset={if_unset})")
            }
            Op::OpenSession => write!(f, "open-session"),
            Op::Alarm { active, alarm } => write!(f, "alarm({alarm}, active={active})"),
            Op::HashCheck => write!(f, "hash-check"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"");
        assert_eq!(prefix_end(b""), b"");
    }

    #[test]
    fn compares_treat_a_missing_key_as_empty_and_zero() {
        let c = Compare {
            key: b"k".to_vec(),
            target: CompareTarget::Version,
            op: CompareOp::Equal,
            value: vec![],
            number: 0,
        };
        assert!(c.holds(None));
        let kv = Kv {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            create_revision: 3,
            mod_revision: 5,
            version: 2,
        };
        assert!(!c.holds(Some(&kv)));
        let gt = Compare {
            target: CompareTarget::ModRevision,
            op: CompareOp::Greater,
            number: 4,
            ..c.clone()
        };
        assert!(gt.holds(Some(&kv)));
        let val = Compare {
            target: CompareTarget::Value,
            op: CompareOp::Less,
            value: b"w".to_vec(),
            ..c
        };
        assert!(val.holds(Some(&kv)));
    }
}
