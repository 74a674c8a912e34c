//! The layout's format version, checked when the applier loads: a newer
//! version is refused, an older layout is converted once and the version
//! written.
//!
//! | version | layout |
//! |---|---|
//! | none | before versioning: layout 2, or layout 1 if old keys remain |
//! | 1 | watch events under `'e'`, request ids under `'r'` (never written) |
//! | 2 | one revision record per revision under `'v'` |
//! | 3 | records with a request id end with the client's session floor; session marks under `'c'`; settings under `'m' "settings"` |

use std::collections::BTreeMap;

use cairn_lsm::{Db, WriteBatch};

use super::command::{CommandResponse, RequestId};
use super::error::{Result, StoreError};
use super::layout::{
    decode, encode_record, record_key, u64_at, u64_be_at, Record, RecordHead, WatchEvent,
    FORMAT_VERSION_KEY, OLD_EVENT, OLD_REQUEST,
};

/// The layout this build writes.
pub const FORMAT_VERSION: u32 = 3;

/// Checks the database's format version. A newer one is refused; a
/// database without one (written before versioning, or new) is
/// converted to the current layout and gets the version, in one write
/// that keeps the applied position. Runs before anything else reads the
/// database, on every replica alike.
pub(crate) fn check_and_convert(db: &Db) -> Result<()> {
    if let Some(found) = stored_version(db)? {
        if found > FORMAT_VERSION {
            return Err(StoreError::NewerFormat {
                found,
                supported: FORMAT_VERSION,
            });
        }
        if found == FORMAT_VERSION {
            return Ok(());
        }
    }
    let mut batch = WriteBatch::new();
    convert_old_layout(db, &mut batch)?;
    batch.put(FORMAT_VERSION_KEY, FORMAT_VERSION.to_le_bytes());
    if let Some(m) = db.user_metadata() {
        batch.set_user_metadata(m);
    }
    db.write(batch)?;
    Ok(())
}

/// The version the database records, if any.
fn stored_version(db: &Db) -> Result<Option<u32>> {
    match db.get(FORMAT_VERSION_KEY)? {
        None => Ok(None),
        Some(b) => match <[u8; 4]>::try_from(&b[..]) {
            Ok(w) => Ok(Some(u32::from_le_bytes(w))),
            Err(_) => Err(StoreError::Corrupt {
                key: FORMAT_VERSION_KEY.to_vec(),
                reason: format!("{} bytes, want 4", b.len()),
            }),
        },
    }
}

/// Adds to `batch` the conversion of a database of the layout before
/// revision records (watch events under 'e' revision|n, request ids
/// under 'r' client|seq) into records. Every replica converts the same
/// state the same way. Adds nothing for a database without old keys.
fn convert_old_layout(db: &Db, batch: &mut WriteBatch) -> Result<()> {
    let mut records: BTreeMap<u64, Record> = BTreeMap::new();
    for item in db.scan_prefix([OLD_EVENT])? {
        let (k, v) = item?;
        if k.len() != 13 {
            return Err(StoreError::Corrupt {
                key: k.to_vec(),
                reason: "bad event key length".into(),
            });
        }
        let revision = u64_be_at(&k, 1);
        let event: WatchEvent = decode(&k, &v, true)?;
        records
            .entry(revision)
            .or_insert_with(Record::empty)
            .events
            .push(event);
        batch.delete(&k);
    }
    for item in db.scan_prefix([OLD_REQUEST])? {
        let (k, v) = item?;
        if k.len() != 17 || v.len() < 8 {
            return Err(StoreError::Corrupt {
                key: k.to_vec(),
                reason: "bad request-id record".into(),
            });
        }
        let id = RequestId {
            client_id: u64_be_at(&k, 1),
            seq: u64_be_at(&k, 9),
        };
        let response: CommandResponse = decode(&k, &v[8..], true)?;
        let record = records.entry(u64_at(&v, 0)).or_insert_with(Record::empty);
        record.head = RecordHead {
            request: Some(id),
            response: Some(response),
        };
        batch.delete(&k);
    }
    if records.is_empty() {
        return Ok(());
    }
    tracing::info!(
        records = records.len(),
        "converting the state machine's watch history and request ids to revision records"
    );
    for (revision, record) in &records {
        batch.put(record_key(*revision), encode_record(record, 0));
    }
    Ok(())
}
