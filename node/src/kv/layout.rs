//! The key spaces of the state machine's database and the encoding of
//! what they hold (see `FORMAT.md` beside this file).

use serde::{Deserialize, Serialize};

use super::command::{CommandResponse, Kv, RequestId};
use super::error::{Result, StoreError};

/// User pairs: `'d' user_key`.
pub(crate) const DATA: u8 = b'd';
/// One record per revision: `'v' revision u64 BE`.
pub(crate) const RECORD: u8 = b'v';
/// The key spaces of the layout before revision records (watch events,
/// request ids): a database holding them is converted when loaded.
pub(crate) const OLD_EVENT: u8 = b'e';
pub(crate) const OLD_REQUEST: u8 = b'r';
/// Small state under `'m' name`: the oldest revision the history holds.
pub(crate) const HISTORY_START: &[u8] = b"mhistory-start";
/// The layout's format version (u32 LE).
pub(crate) const FORMAT_VERSION_KEY: &[u8] = b"mformat-version";
/// The replicated settings: postcard(Settings).
pub(crate) const SETTINGS_KEY: &[u8] = b"msettings";
/// The raised alarms: postcard(Vec<Alarm>), absent when none.
pub(crate) const ALARMS_KEY: &[u8] = b"malarms";
/// Session marks: `'c' client_id u64 BE -> postcard(SessionMark)`.
pub(crate) const SESSION: u8 = b'c';
/// Bytes of a pair's header: create_revision, mod_revision, version.
pub(crate) const KV_HEADER: usize = 24;

/// A watch event: one key's change at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The pair after a put; for a delete, the key with `mod_revision` set
    /// to the delete's revision.
    pub kv: Kv,
}

/// The kind of a [`WatchEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was set.
    Put,
    /// The key was deleted.
    Delete,
}

/// One revision's record. Fields are decoded in order, so a reader that
/// needs only the first ones (the request id when loading, the answer
/// for a duplicate) decodes a prefix ([`RecordHead`]).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) head: RecordHead,
    /// The revision's watch events, in order.
    pub(crate) events: Vec<WatchEvent>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RecordHead {
    /// The request id of the write, if it had one.
    pub(crate) request: Option<RequestId>,
    /// Its answer, for a duplicate (with `request`).
    pub(crate) response: Option<CommandResponse>,
}

impl Record {
    /// A record with no request id and no events.
    pub(crate) fn empty() -> Self {
        Record {
            head: RecordHead {
                request: None,
                response: None,
            },
            events: Vec::new(),
        }
    }
}

pub(crate) fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA);
    k.extend_from_slice(key);
    k
}

pub(crate) fn record_key(revision: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(RECORD);
    k.extend_from_slice(&revision.to_be_bytes());
    k
}

/// The revision of a record key.
pub(crate) fn record_revision(key: &[u8]) -> Result<u64> {
    match key.split_first() {
        Some((&RECORD, rev)) if rev.len() == 8 => Ok(u64_be_at(rev, 0)),
        _ => Err(StoreError::Corrupt {
            key: key.to_vec(),
            reason: "bad revision record key".into(),
        }),
    }
}

/// Encodes a revision record; with a request id, its client's session
/// floor follows the events (`postcard(u64)`; a record without it has
/// floor 0). postcard writing into a `Vec` fails only when a `Serialize`
/// impl does, and every type in a record derives it.
#[allow(
    clippy::expect_used,
    reason = "cannot fail: every type in a record derives Serialize"
)]
pub(crate) fn encode_record(record: &Record, floor: u64) -> Vec<u8> {
    let mut out =
        postcard::to_allocvec(record).expect("a derived Serialize into a Vec cannot fail");
    if record.head.request.is_some() {
        out = postcard::to_extend(&floor, out).expect("a u64 into a Vec cannot fail");
    }
    out
}

/// A watch event's pair, borrowed: skipped over to reach a record's tail.
#[derive(Deserialize)]
struct SkippedEvent<'a> {
    _kind: EventKind,
    #[serde(borrow)]
    _key: &'a [u8],
    _value: &'a [u8],
    _create_revision: u64,
    _mod_revision: u64,
    _version: u64,
}

/// The request id a record carries, with its client's floor at the time.
pub(crate) fn record_request(key: &[u8], bytes: &[u8]) -> Result<Option<(RequestId, u64)>> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key.to_vec(),
        reason,
    };
    let (head, rest): (RecordHead, _) =
        postcard::take_from_bytes(bytes).map_err(|e| corrupt(e.to_string()))?;
    let Some(id) = head.request else {
        return Ok(None);
    };
    let (_, tail): (Vec<SkippedEvent<'_>>, _) =
        postcard::take_from_bytes(rest).map_err(|e| corrupt(e.to_string()))?;
    let floor = if tail.is_empty() {
        0
    } else {
        decode(key, tail, true)?
    };
    Ok(Some((id, floor)))
}

/// The key of `client`'s session mark.
pub(crate) fn session_key(client: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(SESSION);
    k.extend_from_slice(&client.to_be_bytes());
    k
}

/// The client of a session mark's key.
pub(crate) fn session_client(key: &[u8]) -> Result<u64> {
    match key.split_first() {
        Some((&SESSION, c)) if c.len() == 8 => Ok(u64_be_at(c, 0)),
        _ => Err(StoreError::Corrupt {
            key: key.to_vec(),
            reason: "bad session key".into(),
        }),
    }
}

/// Encodes a small value (marks, settings).
#[allow(
    clippy::expect_used,
    reason = "cannot fail: the types derive Serialize"
)]
pub(crate) fn encode_small<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("a derived Serialize into a Vec cannot fail")
}

/// Decodes a `T` from the front of `bytes` stored under `key`; `whole`
/// requires that nothing follows it.
pub(crate) fn decode<'a, T: Deserialize<'a>>(
    key: &[u8],
    bytes: &'a [u8],
    whole: bool,
) -> Result<T> {
    let corrupt = |reason: String| StoreError::Corrupt {
        key: key.to_vec(),
        reason,
    };
    let (v, rest) = postcard::take_from_bytes(bytes).map_err(|e| corrupt(e.to_string()))?;
    if whole && !rest.is_empty() {
        return Err(corrupt(format!("{} bytes after the record", rest.len())));
    }
    Ok(v)
}

/// The u64 (LE) at `b[at..at + 8]`; the caller checked the length.
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The u64 (BE) at `b[at..at + 8]`; the caller checked the length.
pub(crate) fn u64_be_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

/// A pair's stored value: its header and the user's value.
pub(crate) fn encode_kv(kv: &Kv) -> Vec<u8> {
    let mut v = Vec::with_capacity(KV_HEADER + kv.value.len());
    v.extend_from_slice(&kv.create_revision.to_le_bytes());
    v.extend_from_slice(&kv.mod_revision.to_le_bytes());
    v.extend_from_slice(&kv.version.to_le_bytes());
    v.extend_from_slice(&kv.value);
    v
}

/// The pair stored as `rec` under user key `key`.
pub(crate) fn decode_kv(key: &[u8], rec: &[u8], keys_only: bool) -> Result<Kv> {
    if rec.len() < KV_HEADER {
        return Err(StoreError::Corrupt {
            key: data_key(key),
            reason: format!("record of {} bytes is shorter than its header", rec.len()),
        });
    }
    Ok(Kv {
        key: key.to_vec(),
        value: if keys_only {
            Vec::new()
        } else {
            rec[KV_HEADER..].to_vec()
        },
        create_revision: u64_at(rec, 0),
        mod_revision: u64_at(rec, 8),
        version: u64_at(rec, 16),
    })
}
