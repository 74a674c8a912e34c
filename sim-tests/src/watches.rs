//! The check of watch streams against the history and the final state.
//!
//! # What is checked, precisely
//!
//! A watcher watches every key from revision 1, so its stream should be
//! the whole committed history of writes, one revision at a time, until
//! the end marker (a put of [`END_KEY`] written after the liveness phase
//! converged). Given the stream, the client history and one replica's
//! final state (taken at applied index `A`, before the end marker):
//!
//! 1. **Ordered, no duplicates**: revisions strictly increase; every
//!    event's `mod_revision` is its batch's revision; every event is of the
//!    watched range.
//! 2. **No gaps, per key**: a put of a key that was absent has version 1
//!    and `create_revision == mod_revision`; a put of a key that exists has
//!    the previous version plus one and the same `create_revision`; a
//!    delete only follows a put. A missing event breaks this chain (or the
//!    final-state rule below when it is the key's last one).
//! 3. **No phantom, no write applied twice**: every value a register key
//!    is set to was written to that key by a client operation of the
//!    history, and each value (unique per operation) is set at most once.
//! 4. **No acknowledged write lost**: every acknowledged put and every
//!    successful compare-and-swap appears.
//! 5. **Real time**: if write A was acknowledged before write B was
//!    invoked, A's revision is lower (the log orders writes as they
//!    happened, across keys).
//! 6. **Matches the committed state**: for every key, the last event at or
//!    below `A` agrees with the replica's state at `A` (value, revisions,
//!    version; a delete or no event: the key is absent).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::checker::{Input, Operation, Output, Value};

/// The key whose put ends the watchers' streams.
pub const END_KEY: &[u8] = b"zz-end";

/// One event of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    /// The batch's revision.
    pub revision: u64,
    /// Put (true) or delete.
    pub put: bool,
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for a delete).
    pub value: Vec<u8>,
    /// The key's create revision (0 for a delete).
    pub create_revision: u64,
    /// The key's mod revision (for a delete: the delete's revision).
    pub mod_revision: u64,
    /// The key's version (0 for a delete).
    pub version: u64,
}

/// A replica's state: key → (value, create revision, mod revision,
/// version).
pub type State = BTreeMap<Vec<u8>, (Vec<u8>, u64, u64, u64)>;

/// The register key `r/{k}` of the clients' key `k`.
pub fn register_key(k: u64) -> Vec<u8> {
    format!("r/{k}").into_bytes()
}

fn register_of(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.strip_prefix(b"r/")?)
        .ok()?
        .parse()
        .ok()
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Checks one stream (see the module's docs). `applied` is the index at
/// which `state` was read.
pub fn check(
    events: &[Event],
    history: &[Operation],
    state: &State,
    applied: u64,
) -> Result<(), String> {
    // 1. Ordered (a transaction's events share a revision; the same key
    // twice at one revision is a duplicate, found below).
    let mut last_rev = 0;
    for e in events {
        if e.revision < last_rev {
            return Err(format!(
                "revision {} delivered after revision {last_rev}",
                e.revision
            ));
        }
        if e.mod_revision != e.revision {
            return Err(format!(
                "event of {} at revision {} has mod_revision {}",
                show(&e.key),
                e.revision,
                e.mod_revision
            ));
        }
        last_rev = e.revision;
    }
    let mut seen = HashSet::new();
    for e in events {
        if !seen.insert((e.revision, e.key.clone())) {
            return Err(format!(
                "{} delivered twice at revision {}",
                show(&e.key),
                e.revision
            ));
        }
    }
    match events.last() {
        Some(e) if e.key == END_KEY && e.put => {}
        _ => return Err("the stream did not reach the end marker".into()),
    }
    // 2. Per-key chains.
    let mut current: HashMap<&[u8], (u64, u64)> = HashMap::new();
    for e in events {
        let prev = current.get(e.key.as_slice()).copied();
        if e.put {
            let ok = match prev {
                None => e.version == 1 && e.create_revision == e.revision,
                Some((version, create)) => e.version == version + 1 && e.create_revision == create,
            };
            if !ok {
                return Err(format!(
                    "{} at revision {}: version {} create {} after {prev:?} (version, create): an event is missing",
                    show(&e.key),
                    e.revision,
                    e.version,
                    e.create_revision
                ));
            }
            current.insert(&e.key, (e.version, e.create_revision));
        } else {
            if prev.is_none() {
                return Err(format!(
                    "delete of {} at revision {} when it did not exist",
                    show(&e.key),
                    e.revision
                ));
            }
            current.remove(e.key.as_slice());
        }
    }
    // 3. Every value set was written by the history, once.
    let mut written: HashMap<Value, (u64, usize)> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        if let Input::Write(Some(v)) | Input::Cas { new: Some(v), .. } = op.input {
            written.insert(v, (op.key, i));
        }
    }
    let mut revision_of: HashMap<Value, u64> = HashMap::new();
    for e in events.iter().filter(|e| e.put) {
        let Some(k) = register_of(&e.key) else {
            continue;
        };
        let v: Value = std::str::from_utf8(&e.value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("r/{k} set to {:?}, which no client wrote", e.value))?;
        match written.get(&v) {
            Some((key, _)) if *key == k => {}
            _ => {
                return Err(format!(
                    "r/{k} set to {v} at revision {}, which no client wrote to it",
                    e.revision
                ))
            }
        }
        if let Some(first) = revision_of.insert(v, e.revision) {
            return Err(format!(
                "the write of {v} to r/{k} applied twice: revisions {first} and {}",
                e.revision
            ));
        }
    }
    // 4. Acknowledged writes are there. 5. In real-time order.
    let mut acked: Vec<(u64, u64, u64, Value)> = Vec::new(); // (call, ret, revision, value)
    for op in history {
        let v = match (&op.input, &op.ret) {
            (Input::Write(Some(v)), Some((_, Output::Done)))
            | (Input::Cas { new: Some(v), .. }, Some((_, Output::Cas(true)))) => *v,
            _ => continue,
        };
        let Some(rev) = revision_of.get(&v) else {
            return Err(format!(
                "the acknowledged write of {v} to r/{} is not in the stream",
                op.key
            ));
        };
        if let Some((ret, _)) = op.ret {
            acked.push((op.call, ret, *rev, v));
        }
    }
    for a in &acked {
        for b in &acked {
            if a.1 < b.0 && a.2 >= b.2 {
                return Err(format!(
                    "the write of {} was acknowledged before the write of {} was invoked, yet has revision {} >= {}",
                    a.3, b.3, a.2, b.2
                ));
            }
        }
    }
    // 6. The final state.
    let mut last: BTreeMap<&[u8], &Event> = BTreeMap::new();
    for e in events.iter().filter(|e| e.revision <= applied) {
        last.insert(&e.key, e);
    }
    let keys: HashSet<&[u8]> = last
        .keys()
        .copied()
        .chain(state.keys().map(Vec::as_slice))
        .collect();
    for k in keys {
        let from_stream = last.get(k).filter(|e| e.put).map(|e| {
            (
                e.value.clone(),
                e.create_revision,
                e.mod_revision,
                e.version,
            )
        });
        let stored = state.get(k).cloned();
        if from_stream != stored {
            return Err(format!(
                "{} at applied {applied}: the stream says {from_stream:?}, the replica holds {stored:?}",
                show(k)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: u64, key: &str, value: &str, create: u64, version: u64) -> Event {
        Event {
            revision,
            put: true,
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            create_revision: create,
            mod_revision: revision,
            version,
        }
    }

    fn del(revision: u64, key: &str) -> Event {
        Event {
            revision,
            put: false,
            key: key.as_bytes().to_vec(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
        }
    }

    fn write(key: u64, v: Value, call: u64, ret: Option<u64>) -> Operation {
        Operation {
            client: 1,
            key,
            call,
            ret: ret.map(|r| (r, Output::Done)),
            input: Input::Write(Some(v)),
        }
    }

    /// A history of three writes to r/0 and r/1, the stream of it, and the
    /// state it leaves.
    fn good() -> (Vec<Event>, Vec<Operation>, State) {
        let history = vec![
            write(0, 10, 0, Some(5)),
            write(0, 11, 6, Some(9)),
            write(1, 20, 10, None),
        ];
        let events = vec![
            put(3, "r/0", "10", 3, 1),
            put(5, "r/0", "11", 3, 2),
            put(8, "r/1", "20", 8, 1),
            del(9, "r/1"),
            put(12, "zz-end", "end", 12, 1),
        ];
        let mut state = State::new();
        state.insert(b"r/0".to_vec(), (b"11".to_vec(), 3, 5, 2));
        (events, history, state)
    }

    #[test]
    fn a_faithful_stream_passes() {
        let (events, history, state) = good();
        check(&events, &history, &state, 10).unwrap();
    }

    #[test]
    fn each_kind_of_fault_is_caught() {
        let (events, history, state) = good();
        let fails = |events: Vec<Event>, history: &[Operation], state: &State, what: &str| {
            let err = check(&events, history, state, 10).unwrap_err();
            assert!(err.contains(what), "{err}");
        };
        // Out of order.
        let mut e = events.clone();
        e.swap(0, 1);
        fails(e, &history, &state, "delivered after");
        // A gap: the first write to r/0 missing.
        fails(
            events[1..].to_vec(),
            &history,
            &state,
            "an event is missing",
        );
        // The last write to r/0 missing: the state disagrees (and the
        // acknowledged write is gone).
        let mut e = events.clone();
        e.remove(1);
        fails(e, &history, &state, "not in the stream");
        // A phantom value.
        let mut e = events.clone();
        e[2].value = b"21".to_vec();
        fails(e, &history, &state, "which no client wrote");
        // Applied twice.
        let mut e = events.clone();
        e.insert(4, put(10, "r/1", "20", 10, 1));
        fails(e, &history, &state, "applied twice");
        // Acknowledged write 10 finished before 11 began, yet ordered after.
        let h2 = vec![
            write(0, 11, 0, Some(2)),
            write(0, 10, 3, Some(4)),
            write(1, 20, 5, None),
        ];
        fails(events.clone(), &h2, &state, "acknowledged before");
        // No end marker.
        fails(events[..4].to_vec(), &history, &state, "end marker");
        // The replica holds something else.
        let mut s = state.clone();
        s.insert(b"r/1".to_vec(), (b"20".to_vec(), 8, 8, 1));
        fails(events.clone(), &history, &s, "the replica holds");
        // A duplicate delivery.
        let mut e = events.clone();
        e.insert(1, events[0].clone());
        fails(e, &history, &state, "twice");
    }
}
