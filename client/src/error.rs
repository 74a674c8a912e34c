//! The one error type of the client: the cases a caller acts on.

use std::time::Duration;

use tonic::{Code, Status};

use cairn_proto::{COMPACT_REVISION, LEADER_ADDR};

/// What went wrong with a call. A missing key is not an error: reads
/// return `None`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request was refused as malformed or over a limit; the message
    /// names the limit. Retrying the same request cannot succeed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A compare-and-swap found something else than it expected; `current`
    /// is the key as the failed transaction read it (None when absent).
    #[error("compare failed{}", current_suffix(.current))]
    CompareFailed {
        /// The key's state at the transaction's revision.
        current: Option<Box<cairn_proto::kv::KeyValue>>,
    },
    /// No endpoint could serve the call within its deadline: every attempt
    /// failed with a retryable error. For a write the outcome may be
    /// unknown; retrying it with the same client is safe.
    #[error("unavailable after {attempts} attempt(s): {last}")]
    Unavailable {
        /// How many attempts were made.
        attempts: u32,
        /// The last failure seen.
        last: String,
    },
    /// The caller's deadline passed while a call was in flight; for a write
    /// the outcome is unknown.
    #[error("deadline of {after:?} exceeded: {last}")]
    DeadlineExceeded {
        /// The deadline the call had.
        after: Duration,
        /// The last failure seen.
        last: String,
    },
    /// A watch asked for history that is gone; `oldest` is the oldest
    /// revision still available.
    #[error("revision compacted: the oldest available revision is {oldest}")]
    Compacted {
        /// The oldest revision a watch can start from.
        oldest: u64,
    },
    /// The cluster holds no session for the write's client id (see
    /// `RequestId` in kv.proto); nothing was applied by this attempt.
    /// The client handles it ([`Error::SessionLost`] when it cannot).
    #[error("session unknown: {0}")]
    SessionUnknown(String),
    /// A write was retried after the cluster lost its client's session
    /// (it expired): whether the write was applied is unknown. The
    /// client continues under a new client id.
    #[error("session of client {client_id} lost while write {seq} was retried; whether it was applied is unknown: {reason}")]
    SessionLost {
        /// The client id the write carried.
        client_id: u64,
        /// The write's sequence number.
        seq: u64,
        /// The cluster's message.
        reason: String,
    },
    /// A raised alarm (`NOSPACE`, `CORRUPT`) refused the write; nothing was
    /// written. Not retried: it stays refused until an operator disarms
    /// the alarm (`cairnctl alarm disarm`).
    #[error("refused by an alarm: {message}")]
    Alarmed {
        /// The alarm's name.
        alarm: String,
        /// The cluster's message.
        message: String,
    },
    /// An endpoint was malformed or the client was used wrongly.
    #[error("configuration: {0}")]
    Config(String),
    /// Any other failure the server reported (for example FAILED_PRECONDITION
    /// for an impossible membership change, NOT_FOUND for an unknown member,
    /// INTERNAL for a storage failure).
    #[error("{code:?}: {message}")]
    Server {
        /// The gRPC status code.
        code: Code,
        /// The server's message.
        message: String,
    },
}

fn current_suffix(c: &Option<Box<cairn_proto::kv::KeyValue>>) -> String {
    match c {
        None => ": the key does not exist".to_string(),
        Some(kv) => format!(
            ": the key holds {:?} (mod_revision {}, version {})",
            String::from_utf8_lossy(&kv.value),
            kv.mod_revision,
            kv.version
        ),
    }
}

impl From<Error> for Status {
    /// The status a proxy answers with: the same code the cluster gave,
    /// the compacted revision in its trailer.
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::CompareFailed { .. } => Status::failed_precondition(e.to_string()),
            Error::Unavailable { .. } => Status::unavailable(e.to_string()),
            Error::DeadlineExceeded { .. } => Status::deadline_exceeded(e.to_string()),
            Error::Compacted { oldest } => {
                let mut s = Status::out_of_range(e.to_string());
                s.metadata_mut().insert(
                    COMPACT_REVISION,
                    tonic::metadata::MetadataValue::from(oldest),
                );
                s
            }
            Error::SessionUnknown(m) => {
                let mut s = Status::failed_precondition(m);
                s.metadata_mut().insert(
                    cairn_proto::SESSION,
                    tonic::metadata::MetadataValue::from_static(cairn_proto::SESSION_UNKNOWN),
                );
                s
            }
            Error::SessionLost { .. } => Status::failed_precondition(e.to_string()),
            Error::Config(m) => Status::internal(m),
            Error::Alarmed { alarm, message } => {
                let mut s = Status::resource_exhausted(message);
                if let Ok(v) = alarm.parse() {
                    s.metadata_mut().insert(cairn_proto::ALARM, v);
                }
                s
            }
            Error::Server { code, message } => Status::new(code, message),
        }
    }
}

/// Results of the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How an attempt's failure is handled by the retry loop.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The node is not the leader and named it: go there now.
    Redirect(String),
    /// Worth another attempt after a backoff, possibly elsewhere.
    Retry(String),
    /// Final.
    Fatal(Error),
}

/// Classifies a failed attempt.
pub(crate) fn classify(s: &Status) -> Failure {
    let hint = s
        .metadata()
        .get(LEADER_ADDR)
        .and_then(|v| v.to_str().ok())
        .filter(|a| !a.is_empty());
    match s.code() {
        Code::Unavailable => match hint {
            Some(addr) => Failure::Redirect(addr.to_string()),
            None => Failure::Retry(describe(s)),
        },
        // A raised alarm refuses the write until an operator disarms it.
        Code::ResourceExhausted if s.metadata().get(cairn_proto::ALARM).is_some() => {
            Failure::Fatal(from_status(s))
        }
        // Transport failures (a reset connection, a refused stream) and a
        // busy gateway are worth another attempt; writes carry request ids
        // so a retry never applies twice.
        Code::Unknown | Code::ResourceExhausted | Code::Aborted | Code::Cancelled => {
            Failure::Retry(describe(s))
        }
        // An attempt timed out; the caller's deadline decides whether
        // another one fits.
        Code::DeadlineExceeded => Failure::Retry(describe(s)),
        _ => Failure::Fatal(from_status(s)),
    }
}

/// Maps a status that is not retried.
pub(crate) fn from_status(s: &Status) -> Error {
    match s.code() {
        Code::InvalidArgument => Error::InvalidArgument(s.message().to_string()),
        Code::FailedPrecondition
            if s.metadata()
                .get(cairn_proto::SESSION)
                .and_then(|v| v.to_str().ok())
                == Some(cairn_proto::SESSION_UNKNOWN) =>
        {
            Error::SessionUnknown(s.message().to_string())
        }
        Code::OutOfRange => match s
            .metadata()
            .get(COMPACT_REVISION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        {
            Some(oldest) => Error::Compacted { oldest },
            None => Error::Server {
                code: s.code(),
                message: s.message().to_string(),
            },
        },
        Code::ResourceExhausted => match s
            .metadata()
            .get(cairn_proto::ALARM)
            .and_then(|v| v.to_str().ok())
        {
            Some(alarm) => Error::Alarmed {
                alarm: alarm.to_string(),
                message: s.message().to_string(),
            },
            None => Error::Server {
                code: s.code(),
                message: s.message().to_string(),
            },
        },
        code => Error::Server {
            code,
            message: s.message().to_string(),
        },
    }
}

fn describe(s: &Status) -> String {
    let msg = s.message();
    if msg.is_empty() {
        format!("{:?}", s.code())
    } else {
        format!("{:?}: {msg}", s.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    #[test]
    fn classification() {
        let mut s = Status::unavailable("not the leader");
        s.metadata_mut()
            .insert(LEADER_ADDR, MetadataValue::from_static("127.0.0.1:7002"));
        assert!(matches!(classify(&s), Failure::Redirect(a) if a == "127.0.0.1:7002"));
        assert!(matches!(
            classify(&Status::unavailable("x")),
            Failure::Retry(_)
        ));
        assert!(matches!(
            classify(&Status::invalid_argument("key is 5000 bytes; the limit is 4096")),
            Failure::Fatal(Error::InvalidArgument(m)) if m.contains("limit")
        ));
        let mut c = Status::out_of_range("compacted");
        c.metadata_mut()
            .insert(COMPACT_REVISION, MetadataValue::from_static("42"));
        assert!(matches!(
            classify(&c),
            Failure::Fatal(Error::Compacted { oldest: 42 })
        ));
        assert!(matches!(
            classify(&Status::internal("disk")),
            Failure::Fatal(Error::Server {
                code: Code::Internal,
                ..
            })
        ));
    }
}
