//! One command being applied: its pending writes, visible to its own
//! later reads, and the watch events they make.

use std::collections::BTreeMap;

use cairn_lsm::{Db, WriteBatch};

use super::command::{DeleteOp, Kv, OpResult, PutOp, ScanSpec, Txn, TxnOp};
use super::error::StoreError;
use super::key_meta::KeyMeta;
use super::layout::{data_key, encode_kv, EventKind, WatchEvent};
use super::limits::{pair_cost, MAX_ANSWER_BYTES, MAX_EVENT_BYTES, TXN_SCAN_PAGE_BYTES};
use super::read::{get, scan_merged, MAX_PAGE};

/// Bytes of pairs a prefix delete reads per page while it collects its
/// victims (a page is never larger than what is left of the budgets).
const DELETE_PAGE_BYTES: u64 = 4 << 20;

/// Why a command stopped being applied.
pub(crate) enum TxError {
    /// The storage failed: the node cannot go on.
    Store(StoreError),
    /// The command would go past a bound of `kv::limits`: it is refused,
    /// the same way on every replica, and writes nothing.
    Refused {
        /// The bound, as `name = value`.
        limit: String,
        /// What went past it.
        detail: String,
    },
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        TxError::Store(e)
    }
}

impl From<cairn_lsm::Error> for TxError {
    fn from(e: cairn_lsm::Error) -> Self {
        TxError::Store(e.into())
    }
}

type Result<T> = std::result::Result<T, TxError>;

/// What the command has spent of the bounds in `kv::limits`.
#[derive(Default)]
pub(crate) struct Budget {
    events: u64,
    answer: u64,
}

impl Budget {
    /// Charges a watch event of a pair of these sizes.
    fn event(&mut self, key: usize, value: usize) -> Result<()> {
        self.events += pair_cost(key, value);
        if self.events > MAX_EVENT_BYTES {
            return Err(TxError::Refused {
                limit: format!("entry-event-bytes = {MAX_EVENT_BYTES}"),
                detail: format!(
                    "the command's watch events take more than {MAX_EVENT_BYTES} bytes \
                     (delete fewer keys at once)"
                ),
            });
        }
        Ok(())
    }

    /// Charges a pair of the answer.
    fn answer(&mut self, kv: &Kv) -> Result<()> {
        self.answer += pair_cost(kv.key.len(), kv.value.len());
        if self.answer > MAX_ANSWER_BYTES {
            return Err(TxError::Refused {
                limit: format!("entry-answer-bytes = {MAX_ANSWER_BYTES}"),
                detail: format!(
                    "the command's answer takes more than {MAX_ANSWER_BYTES} bytes \
                     (ask for fewer pairs, or leave out prev_kv)"
                ),
            });
        }
        Ok(())
    }

    /// Bytes of pairs in the answer so far.
    pub(crate) fn answer_bytes(&self) -> u64 {
        self.answer
    }

    /// What is left of the answer's bound.
    fn answer_left(&self) -> u64 {
        MAX_ANSWER_BYTES.saturating_sub(self.answer)
    }
}

/// One command being applied.
pub(crate) struct Tx<'a> {
    pub(crate) db: &'a Db,
    pub(crate) index: u64,
    pub(crate) overlay: BTreeMap<Vec<u8>, Option<Kv>>,
    pub(crate) batch: &'a mut WriteBatch,
    pub(crate) events: Vec<WatchEvent>,
    pub(crate) meta: &'a KeyMeta,
    pub(crate) budget: Budget,
}

impl Tx<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Kv>> {
        match self.overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(get(self.db, key)?),
        }
    }

    /// A read inside the command: charged to its answer.
    fn read(&mut self, key: &[u8]) -> Result<Option<Kv>> {
        let kv = self.get(key)?;
        if let Some(kv) = &kv {
            self.budget.answer(kv)?;
        }
        Ok(kv)
    }

    pub(crate) fn put(&mut self, op: &PutOp) -> Result<OpResult> {
        let (key, value, prev_kv) = (&op.key[..], &op.value[..], op.prev_kv);
        // The previous version's create revision and version; its value
        // only when asked for.
        let cached = if prev_kv || self.overlay.contains_key(key) {
            None
        } else {
            self.meta.get(key)
        };
        let (prev, prev_meta) = match cached {
            Some(meta) => (None, meta),
            None => {
                let prev = self.get(key)?;
                let meta = prev.as_ref().map(|p| (p.create_revision, p.version));
                (prev, meta)
            }
        };
        #[cfg(debug_assertions)]
        if cached.is_some() {
            let stored = get(self.db, key)?.map(|p| (p.create_revision, p.version));
            debug_assert_eq!(stored, prev_meta, "key metadata cache is stale");
        }
        self.budget.event(key.len(), value.len())?;
        if let Some(p) = prev.as_ref().filter(|_| prev_kv) {
            self.budget.answer(p)?;
        }
        let kv = Kv {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: prev_meta.map_or(self.index, |(c, _)| c),
            mod_revision: self.index,
            version: prev_meta.map_or(1, |(_, v)| v + 1),
        };
        self.batch.put(data_key(key), encode_kv(&kv));
        self.events.push(WatchEvent {
            kind: EventKind::Put,
            kv: kv.clone(),
        });
        self.overlay.insert(key.to_vec(), Some(kv));
        Ok(OpResult::Put {
            prev: if prev_kv { prev } else { None },
        })
    }

    pub(crate) fn delete(&mut self, op: &DeleteOp) -> Result<OpResult> {
        let (key, prefix, prev_kv) = (&op.key[..], op.prefix, op.prev_kv);
        let victims: Vec<Kv> = if prefix {
            self.prefix_victims(key, prev_kv)?
        } else {
            let kv = self.get(key)?;
            if let Some(kv) = &kv {
                self.budget.event(kv.key.len(), 0)?;
                if prev_kv {
                    self.budget.answer(kv)?;
                }
            }
            kv.into_iter().collect()
        };
        for kv in &victims {
            self.batch.delete(data_key(&kv.key));
            self.events.push(WatchEvent {
                kind: EventKind::Delete,
                kv: Kv {
                    key: kv.key.clone(),
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: self.index,
                    version: 0,
                },
            });
            self.overlay.insert(kv.key.clone(), None);
        }
        Ok(OpResult::Delete {
            deleted: victims.len() as u64,
            prev: if prev_kv { victims } else { Vec::new() },
        })
    }

    /// Every pair under `prefix`, read in pages bounded in bytes, each
    /// charged (its delete event, and with `prev_kv` the answer) before
    /// the next page is read: a delete past a bound stops at the page
    /// that crosses it, never holding more than the bounds in memory.
    fn prefix_victims(&mut self, prefix: &[u8], prev_kv: bool) -> Result<Vec<Kv>> {
        let mut all = Vec::new();
        let mut spec = ScanSpec::prefix(prefix, MAX_PAGE, !prev_kv);
        loop {
            let page_bytes = DELETE_PAGE_BYTES.min(self.budget.answer_left().max(1));
            let page = scan_merged(self.db, &spec, &self.overlay, page_bytes)?;
            for kv in &page.kvs {
                self.budget.event(kv.key.len(), 0)?;
                if prev_kv {
                    self.budget.answer(kv)?;
                }
            }
            let more = page.more;
            if let Some(last) = page.kvs.last() {
                spec.start = last.key.clone();
                spec.start.push(0);
            }
            all.extend(page.kvs);
            if !more {
                return Ok(all);
            }
        }
    }

    pub(crate) fn txn(&mut self, t: &Txn) -> Result<OpResult> {
        let mut succeeded = true;
        for c in &t.compares {
            if !c.holds(self.get(&c.key)?.as_ref()) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                TxnOp::Put(p) => self.put(p)?,
                TxnOp::Delete(d) => self.delete(d)?,
                TxnOp::Get { key } => OpResult::Get(self.read(key)?),
                TxnOp::Scan(spec) => {
                    let page_bytes = TXN_SCAN_PAGE_BYTES.min(self.budget.answer_left().max(1));
                    let page = scan_merged(self.db, spec, &self.overlay, page_bytes)?;
                    for kv in &page.kvs {
                        self.budget.answer(kv)?;
                    }
                    OpResult::Scan(page)
                }
            });
        }
        Ok(OpResult::Txn { succeeded, results })
    }
}
