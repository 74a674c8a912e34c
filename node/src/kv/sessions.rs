//! Client sessions: what the state machine remembers of each client
//! that sends request ids, so a retried write is applied once and a
//! retry that comes too late is refused, never applied again.
//!
//! A client (one client id) numbers its writes. With each it sends its
//! *floor*: every sequence number below it is settled (answered, or
//! given up), so the client will never send it again. The session keeps
//! the answers of the applied writes at or above the floor (each in its
//! revision's record, which stays while the answer is kept) and forgets
//! the rest as the floor moves up. A write
//!
//! - whose answer is kept gets that answer again;
//! - below the floor is refused (`OpResult::Settled`): it may have been
//!   applied, and its answer is gone;
//! - of a client without a session is refused (`OpResult::SessionUnknown`).
//!
//! A client opens a session with an `Op::OpenSession` entry, whose index
//! becomes its client id: an id is never reused, so a session that
//! expired is never opened again, and a late duplicate of one of its
//! writes is refused whatever its delay. (Entries logged before sessions
//! were opened this way open one on their first write: `SessionHint::opens`.)
//!
//! Sessions end by the leader's clock: a session without a write for the
//! session TTL is expired by an `Op::ExpireSessions` entry the leader
//! proposes, so every replica forgets the same sessions at the same
//! index. Sessions and kept answers are bounded in number
//! ([`MAX_SESSIONS`], [`MAX_KEPT_ANSWERS`]).

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::command::{RequestId, SessionHint};

/// Sessions the state machine holds at most; past it a write that would
/// open one is refused (until the TTL expires idle ones).
pub const MAX_SESSIONS: usize = 100_000;

/// Answers kept for retries at most, over all sessions; past it the
/// oldest is forgotten and its session's floor moves above it (a retry
/// of it is then refused as settled).
pub const MAX_KEPT_ANSWERS: usize = 1_000_000;

/// Sessions one `ExpireSessions` entry expires at most (the leader
/// proposes another for the rest).
pub const EXPIRE_PER_ENTRY: usize = 4096;

/// What is stored of a session beyond its records (`'c' client_id BE`):
/// written when the session's floor moves without a record to carry it
/// (an answer forgotten past [`MAX_KEPT_ANSWERS`]) and when it expires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionMark {
    /// The session's floor is at least this.
    pub(crate) floor: u64,
    /// The session's last write, at least.
    pub(crate) last_index: u64,
    /// Records of this client below this revision belong to an expired
    /// session: loading ignores them.
    pub(crate) dead_before: u64,
}

/// One client's session.
#[derive(Debug, Default)]
struct Session {
    floor: u64,
    /// The index of its last write.
    last_index: u64,
    /// The applied writes at or above the floor, with the revision whose
    /// record keeps each one's answer.
    answers: BTreeMap<u64, u64>,
}

/// What to do with a write that carries a request id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Applied before: its answer is in the record of this revision.
    Answered(u64),
    /// Not applied yet: apply it.
    Apply,
    /// Below the client's floor.
    Settled(u64),
    /// The client has no session, and the write may not open one.
    Unknown,
    /// The write would open a session past [`MAX_SESSIONS`].
    Full,
}

/// What a change to the sessions asks of the database.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Records that no longer keep an answer.
    pub(crate) unpinned: Vec<u64>,
    /// Marks to write.
    pub(crate) marks: Vec<(u64, SessionMark)>,
    /// The session's floor after the change (for the record's tail).
    pub(crate) floor: u64,
}

/// Every session, ordered for expiry and for the kept-answer bound.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    by_client: FxHashMap<u64, Session>,
    /// `(last_index, client)`: the idle order.
    by_idle: BTreeSet<(u64, u64)>,
    /// Revision -> the write whose answer its record keeps.
    pinned: BTreeMap<u64, RequestId>,
    /// Marks of expired sessions, `(dead_before, client)`, until trimming
    /// removes the last of their records.
    dead: BTreeSet<(u64, u64)>,
    marks: FxHashMap<u64, SessionMark>,
}

impl Sessions {
    /// Opens the session of `client` as the entry at `index` (the
    /// client's id is that index, so it is new); `None` when past
    /// [`MAX_SESSIONS`], or when a legacy write opened a session under
    /// this id already.
    pub(crate) fn open(&mut self, client: u64, index: u64) -> Option<Changes> {
        if self.by_client.len() >= MAX_SESSIONS || self.by_client.contains_key(&client) {
            return None;
        }
        let s = self.by_client.entry(client).or_default();
        s.last_index = index;
        self.by_idle.insert((index, client));
        let mut changes = Changes::default();
        self.write_mark(client, &mut changes);
        Some(changes)
    }

    /// Sessions held.
    pub(crate) fn len(&self) -> usize {
        self.by_client.len()
    }

    /// The index of the oldest session's last write.
    pub(crate) fn oldest_last_index(&self) -> Option<u64> {
        self.by_idle.first().map(|&(i, _)| i)
    }

    /// Whether the record of `revision` keeps an answer.
    pub(crate) fn is_pinned(&self, revision: u64) -> bool {
        self.pinned.contains_key(&revision)
    }

    /// What to do with the write `id`.
    pub(crate) fn lookup(&self, id: RequestId, hint: SessionHint) -> Lookup {
        match self.by_client.get(&id.client_id) {
            Some(s) => match s.answers.get(&id.seq) {
                Some(&revision) => Lookup::Answered(revision),
                None if id.seq < s.floor => Lookup::Settled(s.floor),
                None => Lookup::Apply,
            },
            None if !hint.opens => Lookup::Unknown,
            None if self.by_client.len() >= MAX_SESSIONS => Lookup::Full,
            None => Lookup::Apply,
        }
    }

    /// Records that the entry at `index` carried `id`. When `applied`,
    /// its answer is kept in that revision's record, whose tail carries
    /// the session's floor ([`Changes::floor`]); otherwise (a duplicate,
    /// or a settled write) a mark keeps the floor and the activity.
    pub(crate) fn record(
        &mut self,
        id: RequestId,
        hint: SessionHint,
        index: u64,
        applied: bool,
    ) -> Changes {
        let client = id.client_id;
        let s = self.by_client.entry(client).or_default();
        self.by_idle.remove(&(s.last_index, client));
        s.last_index = s.last_index.max(index);
        self.by_idle.insert((s.last_index, client));
        let mut changes = Changes::default();
        if applied && id.seq >= s.floor.max(hint.floor) {
            if let Some(old) = s.answers.insert(id.seq, index) {
                self.pinned.remove(&old);
                changes.unpinned.push(old);
            }
            self.pinned.insert(index, id);
        }
        self.raise_floor(client, hint.floor, &mut changes);
        if !applied {
            self.write_mark(client, &mut changes);
        }
        while self.pinned.len() > MAX_KEPT_ANSWERS {
            let Some((_, oldest)) = self.pinned.first_key_value() else {
                break;
            };
            let oldest = *oldest;
            self.raise_floor(oldest.client_id, oldest.seq + 1, &mut changes);
            self.write_mark(oldest.client_id, &mut changes);
        }
        changes.floor = self.by_client.get(&client).map_or(0, |s| s.floor);
        changes
    }

    /// Stores `client`'s floor and activity in its mark.
    fn write_mark(&mut self, client: u64, changes: &mut Changes) {
        let Some(s) = self.by_client.get(&client) else {
            return;
        };
        let mark = SessionMark {
            floor: s.floor,
            last_index: s.last_index,
            ..self.marks.get(&client).copied().unwrap_or_default()
        };
        self.marks.insert(client, mark);
        changes.marks.retain(|&(c, _)| c != client);
        changes.marks.push((client, mark));
    }

    /// Moves `client`'s floor up to `floor`, forgetting the answers below.
    fn raise_floor(&mut self, client: u64, floor: u64, changes: &mut Changes) {
        let Some(s) = self.by_client.get_mut(&client) else {
            return;
        };
        if floor <= s.floor {
            return;
        }
        s.floor = floor;
        let kept = s.answers.split_off(&floor);
        for (_, revision) in std::mem::replace(&mut s.answers, kept) {
            self.pinned.remove(&revision);
            changes.unpinned.push(revision);
        }
    }

    /// Expires up to [`EXPIRE_PER_ENTRY`] sessions whose last write is
    /// before `idle_before`, as the entry at `index`.
    pub(crate) fn expire(&mut self, idle_before: u64, index: u64) -> Changes {
        let mut changes = Changes::default();
        let gone: Vec<u64> = self
            .by_idle
            .range(..(idle_before, 0))
            .take(EXPIRE_PER_ENTRY)
            .map(|&(_, c)| c)
            .collect();
        for client in gone {
            let Some(s) = self.by_client.remove(&client) else {
                continue;
            };
            self.by_idle.remove(&(s.last_index, client));
            for revision in s.answers.into_values() {
                self.pinned.remove(&revision);
                changes.unpinned.push(revision);
            }
            if let Some(old) = self.marks.get(&client) {
                self.dead.remove(&(old.dead_before, client));
            }
            let mark = SessionMark {
                floor: 0,
                last_index: 0,
                dead_before: index,
            };
            self.marks.insert(client, mark);
            self.dead.insert((index, client));
            changes.marks.push((client, mark));
        }
        changes
    }

    /// The marks of expired sessions whose every record is below
    /// `records_start` (so gone): they can be deleted.
    pub(crate) fn drop_dead_marks(&mut self, records_start: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(&(dead_before, client)) = self.dead.first() {
            if dead_before > records_start {
                break;
            }
            self.dead.pop_first();
            if !self.by_client.contains_key(&client) {
                self.marks.remove(&client);
                out.push(client);
            }
        }
        out
    }

    /// Loading: a stored mark.
    pub(crate) fn load_mark(&mut self, client: u64, mark: SessionMark) {
        if mark.floor > 0 || mark.last_index > 0 {
            let s = self.by_client.entry(client).or_default();
            s.floor = s.floor.max(mark.floor);
            s.last_index = s.last_index.max(mark.last_index);
        }
        if mark.dead_before > 0 {
            self.dead.insert((mark.dead_before, client));
        }
        self.marks.insert(client, mark);
    }

    /// Loading: the record of `revision` carries `id` with its client's
    /// floor at the time. Records come in revision order, after the
    /// marks.
    pub(crate) fn load_record(&mut self, id: RequestId, floor: u64, revision: u64) {
        let dead_before = self.marks.get(&id.client_id).map_or(0, |m| m.dead_before);
        if revision < dead_before {
            return;
        }
        let s = self.by_client.entry(id.client_id).or_default();
        s.floor = s.floor.max(floor);
        s.last_index = s.last_index.max(revision);
        s.answers.insert(id.seq, revision);
    }

    /// Loading: done; builds the orders and drops the answers below each
    /// floor.
    pub(crate) fn finish_load(&mut self) {
        for (&client, s) in &mut self.by_client {
            let floor = s.floor;
            s.answers.retain(|&seq, _| seq >= floor);
            for (&seq, &revision) in &s.answers {
                self.pinned.insert(
                    revision,
                    RequestId {
                        client_id: client,
                        seq,
                    },
                );
            }
            self.by_idle.insert((s.last_index, client));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(client_id: u64, seq: u64) -> RequestId {
        RequestId { client_id, seq }
    }

    fn hint(floor: u64, opens: bool) -> SessionHint {
        SessionHint { floor, opens }
    }

    #[test]
    fn a_session_is_opened_by_its_entry_or_a_legacy_write() {
        let mut s = Sessions::default();
        assert_eq!(s.lookup(id(7, 1), hint(1, false)), Lookup::Unknown);
        let c = s.open(7, 7).unwrap();
        assert_eq!(c.marks.len(), 1, "an opened session is stored");
        assert_eq!(s.lookup(id(7, 1), hint(1, false)), Lookup::Apply);
        s.record(id(7, 1), hint(1, false), 10, true);
        assert_eq!(s.lookup(id(7, 1), hint(1, false)), Lookup::Answered(10));
        assert_eq!(s.lookup(id(7, 2), hint(1, false)), Lookup::Apply);
        assert!(s.open(7, 11).is_none(), "an id is opened once");
        // A legacy write opens its session.
        assert_eq!(s.lookup(id(9, 1), hint(0, true)), Lookup::Apply);
    }

    #[test]
    fn the_floor_forgets_answers_and_refuses_what_is_below_it() {
        let mut s = Sessions::default();
        s.record(id(7, 1), hint(1, true), 10, true);
        s.record(id(7, 2), hint(1, false), 11, true);
        let c = s.record(id(7, 3), hint(3, false), 12, true);
        assert_eq!(c.unpinned, vec![10, 11]);
        assert!(!s.is_pinned(10) && s.is_pinned(12));
        assert_eq!(s.lookup(id(7, 2), hint(3, false)), Lookup::Settled(3));
        assert_eq!(s.lookup(id(7, 3), hint(3, false)), Lookup::Answered(12));
        // A floor never moves down.
        s.record(id(7, 4), hint(2, false), 13, true);
        assert_eq!(s.lookup(id(7, 2), hint(2, false)), Lookup::Settled(3));
    }

    #[test]
    fn expiry_goes_in_idle_order_and_marks_the_session_dead() {
        let mut s = Sessions::default();
        s.record(id(1, 1), hint(1, true), 10, true);
        s.record(id(2, 1), hint(1, true), 11, true);
        s.record(id(1, 2), hint(2, false), 12, true);
        let c = s.expire(12, 20);
        assert_eq!(c.unpinned, vec![11]);
        assert_eq!(
            c.marks,
            vec![(
                2,
                SessionMark {
                    dead_before: 20,
                    ..SessionMark::default()
                }
            )]
        );
        assert_eq!(s.lookup(id(2, 1), hint(1, false)), Lookup::Unknown);
        assert_eq!(s.lookup(id(1, 2), hint(2, false)), Lookup::Answered(12));
        assert_eq!(s.oldest_last_index(), Some(12));
        assert_eq!(s.drop_dead_marks(19), Vec::<u64>::new());
        assert_eq!(s.drop_dead_marks(20), vec![2]);
    }

    #[test]
    fn sessions_are_bounded() {
        let mut s = Sessions::default();
        for c in 0..MAX_SESSIONS as u64 {
            s.record(id(c, 1), hint(1, true), c + 1, true);
        }
        assert_eq!(s.lookup(id(u64::MAX, 1), hint(1, true)), Lookup::Full);
        assert_eq!(s.lookup(id(0, 2), hint(1, false)), Lookup::Apply);
    }

    #[test]
    fn a_reload_restores_floors_answers_and_deaths() {
        let mut s = Sessions::default();
        s.load_mark(
            2,
            SessionMark {
                dead_before: 15,
                ..SessionMark::default()
            },
        );
        s.load_mark(
            3,
            SessionMark {
                floor: 9,
                last_index: 30,
                dead_before: 0,
            },
        );
        s.load_record(id(1, 1), 1, 10);
        s.load_record(id(2, 1), 1, 11);
        s.load_record(id(1, 2), 2, 12);
        s.load_record(id(2, 1), 1, 16);
        s.finish_load();
        assert_eq!(s.lookup(id(1, 1), hint(0, false)), Lookup::Settled(2));
        assert_eq!(s.lookup(id(1, 2), hint(0, false)), Lookup::Answered(12));
        assert_eq!(s.lookup(id(2, 1), hint(0, false)), Lookup::Answered(16));
        assert_eq!(s.lookup(id(3, 8), hint(0, false)), Lookup::Settled(9));
        assert_eq!(s.oldest_last_index(), Some(12));
        assert!(!s.is_pinned(10) && !s.is_pinned(11));
    }
}
