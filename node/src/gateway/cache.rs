//! The gateway's read cache: serializable Gets answered from memory, as
//! etcd's grpc-proxy does, but kept current by a watch of every key
//! instead of forgetting only the writes that went through the proxy.
//!
//! A Get that misses goes to a replica as before, and its answer (a
//! value as of the answer's revision) is kept. One upstream watch of all
//! keys, from "now", brings every later change: an event for a kept key
//! replaces or removes it. The invariant: a kept entry holds its key's
//! value as of `max(entry.revision, applied)`, where `applied` is the
//! revision the watch has brought in full. Two rules keep it:
//!
//! - an event changes an entry only if it is newer than the entry;
//! - an answer is kept only if its revision is at least `reached`, the
//!   newest revision the watch has started to bring (an older answer may
//!   miss a change that was already brought and skipped because the key
//!   was not kept yet). The check and the event's change take the same
//!   shard lock, and `reached` moves before the changes are made.
//!
//! When the watch fails past what the client library's resumption fixes
//! (history compacted), or ends, every entry is dropped and the cache
//! answers nothing until a new watch is set up. So an answer from the
//! cache is as fresh as the replica whose watch feeds it: committed,
//! possibly stale, like any serializable read. A node cut off from its
//! leader ends its watch streams (see the node's `run_watch`), so a
//! replica that stopped hearing from the cluster cannot keep feeding it.
//!
//! Memory is bounded: entries are counted by key, value and a fixed
//! overhead, and past the bound a sampled least-recently-used entry goes
//! (five random entries of the shard, the one used longest ago).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cairn_client::{Client, EventKind, Watch, WatchBatch};
use cairn_proto::kv::{self as pb};
use futures::StreamExt;
use indexmap::IndexMap;
use parking_lot::Mutex;

/// Shards, each under its own lock.
const SHARDS: usize = 16;

/// Bytes counted for an entry besides its key and value.
const ENTRY_OVERHEAD: usize = 96;

/// Entries sampled for each eviction.
const SAMPLES: usize = 5;

/// What the cache holds for a key.
struct Entry {
    kv: pb::KeyValue,
    /// The revision its value is known correct at.
    revision: u64,
    /// When it was last used (the shard's clock).
    used: u64,
}

fn size_of(kv: &pb::KeyValue) -> usize {
    kv.key.len() + kv.value.len() + ENTRY_OVERHEAD
}

#[derive(Default)]
struct Shard {
    entries: IndexMap<Bytes, Entry>,
    bytes: usize,
    clock: u64,
    /// The state of the sampling's random numbers (xorshift).
    rng: u64,
}

impl Shard {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn random(&mut self) -> u64 {
        let mut x = self.rng.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// Keeps `kv` as correct at `revision`, in place of what the key
    /// held.
    fn set(&mut self, kv: &pb::KeyValue, revision: u64, used: u64) {
        let new = Entry {
            kv: kv.clone(),
            revision,
            used,
        };
        self.bytes += size_of(kv);
        if let Some(old) = self.entries.insert(kv.key.clone(), new) {
            self.bytes -= size_of(&old.kv);
        }
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(e) = self.entries.swap_remove(key) {
            self.bytes -= size_of(&e.kv);
        }
    }

    /// Evicts sampled entries until the shard holds at most `cap` bytes;
    /// returns how many went.
    fn evict_to(&mut self, cap: usize) -> u64 {
        let mut evicted = 0;
        while self.bytes > cap && !self.entries.is_empty() {
            let n = self.entries.len() as u64;
            let mut victim = usize::MAX;
            let mut oldest = u64::MAX;
            for _ in 0..SAMPLES.min(self.entries.len()) {
                let i = (self.random() % n) as usize;
                if let Some((_, e)) = self.entries.get_index(i) {
                    if e.used < oldest {
                        oldest = e.used;
                        victim = i;
                    }
                }
            }
            let Some((_, e)) = self.entries.swap_remove_index(victim) else {
                break;
            };
            self.bytes -= size_of(&e.kv);
            evicted += 1;
        }
        evicted
    }
}

/// The read cache. See the module's documentation.
pub struct ReadCache {
    shards: Box<[Mutex<Shard>]>,
    /// Bytes each shard may hold.
    shard_cap: usize,
    /// The largest entry kept.
    max_entry: usize,
    /// Whether a watch is feeding the cache: until it is set up, and
    /// after it fails until the next one is, the cache is empty and
    /// answers nothing.
    synced: AtomicBool,
    /// The newest revision whose changes the watch started to apply.
    reached: AtomicU64,
    /// The newest revision whose changes are all applied.
    applied: AtomicU64,
    /// The header fields of the watch's last message.
    cluster_id: AtomicU64,
    member_id: AtomicU64,
    raft_term: AtomicU64,
    hasher: std::collections::hash_map::RandomState,
    hits: metrics::Counter,
    misses: metrics::Counter,
    evictions: metrics::Counter,
    resets: metrics::Counter,
    bytes_gauge: metrics::Gauge,
}

impl ReadCache {
    /// A cache of at most `capacity` bytes (at least a few KiB).
    pub fn new(capacity: usize) -> ReadCache {
        let shard_cap = (capacity / SHARDS).max(4096);
        let seed = std::collections::hash_map::RandomState::new();
        let shards = (0..SHARDS)
            .map(|i| {
                Mutex::new(Shard {
                    rng: seed.hash_one(i) | 1,
                    ..Shard::default()
                })
            })
            .collect();
        ReadCache {
            shards,
            shard_cap,
            max_entry: (shard_cap / 8).clamp(ENTRY_OVERHEAD + 1, 64 << 10),
            synced: AtomicBool::new(false),
            reached: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            cluster_id: AtomicU64::new(0),
            member_id: AtomicU64::new(0),
            raft_term: AtomicU64::new(0),
            hasher: seed,
            hits: metrics::counter!("cairn_gateway_cache_hits_total"),
            misses: metrics::counter!("cairn_gateway_cache_misses_total"),
            evictions: metrics::counter!("cairn_gateway_cache_evictions_total"),
            resets: metrics::counter!("cairn_gateway_cache_resets_total"),
            bytes_gauge: metrics::gauge!("cairn_gateway_cache_bytes"),
        }
    }

    fn shard(&self, key: &[u8]) -> &Mutex<Shard> {
        let h = self.hasher.hash_one(key);
        &self.shards[(h as usize) % SHARDS]
    }

    /// The answer to `r` from the cache: for a serializable Get of a key
    /// it holds.
    pub fn answer(&self, r: &pb::GetRequest) -> Option<pb::GetResponse> {
        if r.consistency != pb::ReadConsistency::Serializable as i32 {
            return None;
        }
        self.get(&r.key)
    }

    /// The answer to a serializable Get of `key`, if the cache has it.
    fn get(&self, key: &[u8]) -> Option<pb::GetResponse> {
        if !self.synced.load(Ordering::Acquire) {
            return None;
        }
        // Loaded before the entry: every change up to it is in the entry.
        let applied = self.applied.load(Ordering::Acquire);
        let found = {
            let mut s = self.shard(key).lock();
            let now = s.tick();
            s.entries.get_mut(key).map(|e| {
                e.used = now;
                (e.kv.clone(), e.revision)
            })
        };
        let Some((kv, revision)) = found else {
            self.misses.increment(1);
            return None;
        };
        self.hits.increment(1);
        Some(pb::GetResponse {
            header: Some(pb::ResponseHeader {
                cluster_id: self.cluster_id.load(Ordering::Relaxed),
                member_id: self.member_id.load(Ordering::Relaxed),
                revision: revision.max(applied),
                raft_term: self.raft_term.load(Ordering::Relaxed),
            }),
            kv: Some(kv),
        })
    }

    /// Keeps what a replica answered to a Get (a key that exists, at the
    /// answer's revision), if the rules allow.
    pub fn fill(&self, r: &pb::GetResponse) {
        let (Some(h), Some(kv)) = (&r.header, &r.kv) else {
            return;
        };
        if size_of(kv) > self.max_entry {
            return;
        }
        let mut s = self.shard(&kv.key).lock();
        // Under the shard lock: a change to this key that the watch made
        // before has moved `reached` first.
        if !self.synced.load(Ordering::SeqCst) || h.revision < self.reached.load(Ordering::SeqCst) {
            return;
        }
        let before = s.bytes;
        if s.entries
            .get(&kv.key)
            .is_none_or(|e| e.revision < h.revision)
        {
            let now = s.tick();
            s.set(kv, h.revision, now);
        }
        let evicted = s.evict_to(self.shard_cap);
        if evicted > 0 {
            self.evictions.increment(evicted);
        }
        self.bytes_gauge.increment(s.bytes as f64 - before as f64);
    }

    /// Starts following a watch whose first revision is `start`.
    fn start(&self, start: u64) {
        let before = start.saturating_sub(1);
        self.reached.store(before, Ordering::SeqCst);
        self.applied.store(before, Ordering::SeqCst);
        self.synced.store(true, Ordering::SeqCst);
    }

    /// Applies the changes of one revision from the watch.
    fn apply(&self, b: &WatchBatch) {
        debug_assert!(
            b.revision > self.applied.load(Ordering::Relaxed),
            "the watch went back"
        );
        self.reached.fetch_max(b.revision, Ordering::SeqCst);
        for e in &b.events {
            let mut s = self.shard(&e.kv.key).lock();
            let Some(entry) = s.entries.get(&e.kv.key) else {
                continue;
            };
            if entry.revision >= b.revision {
                continue;
            }
            let (before, used) = (s.bytes, entry.used);
            match e.kind {
                EventKind::Put if size_of(&e.kv) <= self.max_entry => {
                    s.set(&e.kv, b.revision, used);
                }
                _ => s.remove(&e.kv.key),
            }
            self.bytes_gauge.increment(s.bytes as f64 - before as f64);
        }
        self.cluster_id
            .store(b.header.cluster_id, Ordering::Relaxed);
        self.member_id.store(b.header.member_id, Ordering::Relaxed);
        self.raft_term.store(b.header.raft_term, Ordering::Relaxed);
        self.applied.store(b.revision, Ordering::Release);
    }

    /// Drops everything and answers nothing until the next [`start`].
    ///
    /// [`start`]: ReadCache::start
    fn reset(&self) {
        self.synced.store(false, Ordering::SeqCst);
        for s in self.shards.iter() {
            let mut s = s.lock();
            s.entries = IndexMap::new();
            s.bytes = 0;
        }
        self.bytes_gauge.set(0.0);
        self.resets.increment(1);
    }

    /// Bytes held (entries, as counted against the bound).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }

    /// Whether a watch is feeding the cache.
    #[cfg(test)]
    fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Feeds the cache from a watch of every key through `client` until
    /// the task is dropped: sets a watch up, applies what it brings, and
    /// on its end starts over with an empty cache.
    pub async fn follow(&self, client: Client) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match client.watch(Watch::prefix(b"")).await {
                Ok(mut w) => {
                    self.start(w.start_revision());
                    backoff = Duration::from_millis(50);
                    while let Some(item) = w.next().await {
                        match item {
                            Ok(b) => self.apply(&b),
                            Err(e) => {
                                tracing::info!(error = %e, "the read cache's watch ended");
                                break;
                            }
                        }
                    }
                    self.reset();
                }
                Err(e) => tracing::debug!(error = %e, "the read cache's watch failed to start"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_client::Event;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn kv(key: &[u8], value: &[u8], revision: u64) -> pb::KeyValue {
        pb::KeyValue {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
        }
    }

    fn answer(kv: Option<pb::KeyValue>, revision: u64) -> pb::GetResponse {
        pb::GetResponse {
            header: Some(pb::ResponseHeader {
                revision,
                ..Default::default()
            }),
            kv,
        }
    }

    fn batch(revision: u64, events: Vec<Event>) -> WatchBatch {
        WatchBatch {
            revision,
            header: pb::ResponseHeader {
                revision,
                ..Default::default()
            },
            events,
        }
    }

    fn put(key: &[u8], value: &[u8], revision: u64) -> Event {
        Event {
            kind: EventKind::Put,
            kv: kv(key, value, revision),
        }
    }

    #[test]
    fn nothing_is_answered_or_kept_before_the_watch_is_set_up() {
        let c = ReadCache::new(1 << 20);
        c.fill(&answer(Some(kv(b"a", b"1", 3)), 5));
        assert!(c.get(b"a").is_none());
        c.start(6);
        assert!(c.get(b"a").is_none(), "kept before the watch was set up");
        c.fill(&answer(Some(kv(b"a", b"1", 3)), 5));
        let r = c.get(b"a").expect("kept");
        assert_eq!(r.kv.unwrap().value, Bytes::from_static(b"1"));
        assert_eq!(r.header.unwrap().revision, 5);
    }

    #[test]
    fn an_answer_older_than_the_watch_is_not_kept() {
        let c = ReadCache::new(1 << 20);
        c.start(10);
        c.apply(&batch(12, vec![put(b"a", b"new", 12)]));
        // Read at 11, before the put at 12 the watch already brought.
        c.fill(&answer(Some(kv(b"a", b"old", 3)), 11));
        assert!(c.get(b"a").is_none(), "a stale answer was kept");
        c.fill(&answer(Some(kv(b"a", b"new", 12)), 12));
        assert_eq!(c.get(b"a").unwrap().kv.unwrap().value, "new");
    }

    #[test]
    fn the_watch_replaces_and_removes_kept_entries() {
        let c = ReadCache::new(1 << 20);
        c.start(1);
        c.fill(&answer(Some(kv(b"a", b"1", 1)), 4));
        // An older change than the entry is ignored.
        c.apply(&batch(4, vec![put(b"a", b"stale", 4)]));
        assert_eq!(c.get(b"a").unwrap().kv.unwrap().value, "1");
        c.apply(&batch(7, vec![put(b"a", b"2", 7)]));
        let r = c.get(b"a").unwrap();
        assert_eq!(r.kv.unwrap().value, "2");
        assert_eq!(r.header.unwrap().revision, 7);
        c.apply(&batch(
            9,
            vec![Event {
                kind: EventKind::Delete,
                kv: kv(b"a", b"", 9),
            }],
        ));
        assert!(c.get(b"a").is_none());
        assert_eq!(c.bytes(), 0);
        c.reset();
        assert!(!c.synced());
    }

    #[test]
    fn memory_stays_under_the_bound() {
        let cap = 64 << 10;
        let c = ReadCache::new(cap);
        c.start(1);
        for i in 0..10_000u32 {
            c.fill(&answer(Some(kv(&i.to_be_bytes(), &[7u8; 100], 1)), 1));
        }
        assert!(c.bytes() <= cap.max(SHARDS * 4096), "{} bytes", c.bytes());
        assert!(c.bytes() > 0);
        // A value over the largest entry is not kept.
        c.fill(&answer(Some(kv(b"big", &vec![0u8; 128 << 10], 1)), 1));
        assert!(c.get(b"big").is_none());
    }

    /// Each key's writes in order: (revision, value, or None for a delete).
    type History = BTreeMap<u8, Vec<(u64, Option<Vec<u8>>)>>;

    /// A step of the property test.
    #[derive(Debug, Clone)]
    enum Step {
        /// A write of key `k` (value: its revision) or its delete.
        Write { k: u8, delete: bool },
        /// The watch brings its next revision, if it has one to bring.
        Deliver,
        /// A replica `lag` revisions behind the newest answers a Get.
        Answer { k: u8, lag: u8 },
        /// A Get from the cache.
        Get { k: u8 },
        /// The watch fails and a new one starts from the newest revision.
        Restart,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u8..6, any::<bool>()).prop_map(|(k, d)| Step::Write { k, delete: d && k % 2 == 0 }),
            3 => Just(Step::Deliver),
            3 => (0u8..6, 0u8..6).prop_map(|(k, lag)| Step::Answer { k, lag }),
            4 => (0u8..6).prop_map(|k| Step::Get { k }),
            1 => Just(Step::Restart),
        ]
    }

    proptest! {
        /// Against a model of the store's history: every answer from the
        /// cache is the key's value at the revision its header names, and
        /// that revision is one the watch or a replica had reached.
        #[test]
        fn answers_are_the_value_at_their_revision(steps in proptest::collection::vec(step(), 1..200)) {
            // history[k]: (revision, value or None for a delete), ascending.
            let mut history = History::new();
            let mut revisions: Vec<(u64, u8, bool)> = Vec::new();
            let mut newest = 0u64;
            let mut delivered = 0usize;
            let mut highest_seen = 0u64;
            let at = |h: &History, k: u8, rev: u64| {
                h.get(&k).and_then(|v| v.iter().rev().find(|(r, _)| *r <= rev)).and_then(|(_, v)| v.clone())
            };
            let c = ReadCache::new(1 << 20);
            c.start(1);
            for s in steps {
                match s {
                    Step::Write { k, delete } => {
                        newest += 1;
                        let v = (!delete).then(|| newest.to_be_bytes().to_vec());
                        history.entry(k).or_default().push((newest, v));
                        revisions.push((newest, k, delete));
                    }
                    Step::Deliver => {
                        if let Some(&(rev, k, delete)) = revisions.get(delivered) {
                            delivered += 1;
                            let e = if delete {
                                Event { kind: EventKind::Delete, kv: kv(&[k], b"", rev) }
                            } else {
                                put(&[k], &rev.to_be_bytes(), rev)
                            };
                            c.apply(&batch(rev, vec![e]));
                            highest_seen = highest_seen.max(rev);
                        }
                    }
                    Step::Answer { k, lag } => {
                        let rev = newest.saturating_sub(u64::from(lag));
                        let value = at(&history, k, rev);
                        let kv = value.map(|v| kv(&[k], &v, rev));
                        c.fill(&answer(kv, rev));
                        highest_seen = highest_seen.max(rev);
                    }
                    Step::Get { k } => {
                        if let Some(r) = c.get(&[k]) {
                            let rev = r.header.unwrap().revision;
                            prop_assert!(rev <= highest_seen.max(newest));
                            let want = at(&history, k, rev);
                            prop_assert_eq!(Some(r.kv.unwrap().value.to_vec()), want, "key {} at {}", k, rev);
                        }
                    }
                    Step::Restart => {
                        c.reset();
                        delivered = revisions.len();
                        c.start(newest + 1);
                    }
                }
            }
        }
    }
}
