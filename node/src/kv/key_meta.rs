//! What the applier remembers of recently written keys, so a put need
//! not read the key's previous pair.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use super::command::Kv;

/// A bounded cache of keys' create revision and version, exactly as the
/// database holds them: updated after every applied write, dropped with
/// the applier (a snapshot install loads a new one), emptied when full
/// or when a write fails. A deterministic hasher and no iteration, so
/// nothing depends on a random seed.
#[derive(Default)]
pub(crate) struct KeyMeta {
    pub(super) map: FxHashMap<Vec<u8>, Option<(u64, u64)>>,
}

/// Keys whose metadata the applier keeps (about 10 MB with 16-byte keys).
pub const KEY_META_CAPACITY: usize = 1 << 17;

impl KeyMeta {
    pub(crate) fn get(&self, key: &[u8]) -> Option<Option<(u64, u64)>> {
        self.map.get(key).copied()
    }

    /// Records what `overlay` (one applied entry's writes) left.
    pub(crate) fn record(&mut self, overlay: BTreeMap<Vec<u8>, Option<Kv>>) {
        for (k, v) in overlay {
            if self.map.len() >= KEY_META_CAPACITY && !self.map.contains_key(&k) {
                self.map.clear();
            }
            self.map
                .insert(k, v.map(|kv| (kv.create_revision, kv.version)));
        }
    }
}
