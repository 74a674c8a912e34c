//! One command being applied: its pending writes, visible to its own
//! later reads, and the watch events they make.

use std::collections::BTreeMap;

use cairn_lsm::{Db, WriteBatch};

use super::command::{DeleteOp, Kv, OpResult, PutOp, ScanSpec, Txn, TxnOp};
use super::error::Result;
use super::key_meta::KeyMeta;
use super::layout::{data_key, encode_kv, EventKind, WatchEvent};
use super::read::{get, scan_merged, MAX_PAGE};

/// One command being applied.
pub(crate) struct Tx<'a> {
    pub(crate) db: &'a Db,
    pub(crate) index: u64,
    pub(crate) overlay: BTreeMap<Vec<u8>, Option<Kv>>,
    pub(crate) batch: &'a mut WriteBatch,
    pub(crate) events: Vec<WatchEvent>,
    pub(crate) meta: &'a KeyMeta,
}

impl Tx<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Kv>> {
        match self.overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None => get(self.db, key),
        }
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
            let mut all = Vec::new();
            let mut spec = ScanSpec::prefix(key, MAX_PAGE, !prev_kv);
            loop {
                let page = scan_merged(self.db, &spec, &self.overlay)?;
                let more = page.more;
                if let Some(last) = page.kvs.last() {
                    spec.start = last.key.clone();
                    spec.start.push(0);
                }
                all.extend(page.kvs);
                if !more {
                    break;
                }
            }
            all
        } else {
            self.get(key)?.into_iter().collect()
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
                TxnOp::Get { key } => OpResult::Get(self.get(key)?),
                TxnOp::Scan(spec) => OpResult::Scan(scan_merged(self.db, spec, &self.overlay)?),
            });
        }
        Ok(OpResult::Txn { succeeded, results })
    }
}
