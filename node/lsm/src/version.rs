//! Versions: the set of live tables per level, and the edits that move the
//! database from one version to the next (recorded in the manifest).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::coding::{put_len_prefixed, put_varint, Reader};
use super::iterator::InternalIterator;
use super::key::{self, SeqNo};
use super::sst::{Table, TableIter, TableSummary};
use super::Result;

/// Number of levels, L0 to L6.
pub const NUM_LEVELS: usize = 7;

/// A live table and what the manifest knows of it.
pub(crate) struct FileMeta {
    pub number: u64,
    pub summary: TableSummary,
    pub table: Arc<Table>,
}

impl FileMeta {
    pub fn smallest_user_key(&self) -> &[u8] {
        key::user_key(&self.summary.smallest)
    }
    pub fn largest_user_key(&self) -> &[u8] {
        key::user_key(&self.summary.largest)
    }
    /// True when the file's user-key range meets `[lo, hi]`.
    pub fn overlaps(&self, lo: &[u8], hi: &[u8]) -> bool {
        self.largest_user_key() >= lo && self.smallest_user_key() <= hi
    }
}

/// An immutable snapshot of the live tables. Readers hold an `Arc` of it,
/// which keeps its table files from being deleted.
#[derive(Clone, Default)]
pub(crate) struct Version {
    /// L0 newest first; L1+ sorted by key, non-overlapping.
    pub levels: [Vec<Arc<FileMeta>>; NUM_LEVELS],
}

impl Version {
    /// Applies an edit, taking newly added tables from `opened`.
    pub fn apply(&self, edit: &VersionEdit, opened: &BTreeMap<u64, Arc<Table>>) -> Version {
        let mut next = self.clone();
        for (level, number) in &edit.deleted {
            next.levels[*level].retain(|f| f.number != *number);
        }
        for nf in &edit.added {
            let Some(table) = opened.get(&nf.number) else {
                // Callers open every added table first.
                unreachable!("table {} added to a version but not opened", nf.number);
            };
            next.levels[nf.level].push(Arc::new(FileMeta {
                number: nf.number,
                summary: nf.summary.clone(),
                table: table.clone(),
            }));
        }
        next.sort();
        next.check_invariants();
        next
    }

    fn sort(&mut self) {
        self.levels[0].sort_by(|a, b| {
            b.summary
                .largest_seq
                .cmp(&a.summary.largest_seq)
                .then(b.number.cmp(&a.number))
        });
        for level in &mut self.levels[1..] {
            level.sort_by(|a, b| key::compare(&a.summary.smallest, &b.summary.smallest));
        }
    }

    /// Levels below L0 hold disjoint, sorted key ranges.
    pub fn check_invariants(&self) {
        for (l, files) in self.levels.iter().enumerate().skip(1) {
            for pair in files.windows(2) {
                assert!(
                    pair[0].largest_user_key() < pair[1].smallest_user_key(),
                    "L{l} tables {} and {} overlap",
                    pair[0].number,
                    pair[1].number
                );
            }
        }
    }

    pub fn level_bytes(&self, level: usize) -> u64 {
        self.levels[level].iter().map(|f| f.summary.size).sum()
    }

    pub fn files(&self) -> impl Iterator<Item = (usize, &Arc<FileMeta>)> {
        self.levels
            .iter()
            .enumerate()
            .flat_map(|(l, fs)| fs.iter().map(move |f| (l, f)))
    }

    /// The file of sorted level `level` that may hold `user_key`.
    pub fn find_file(&self, level: usize, user_key: &[u8]) -> Option<&Arc<FileMeta>> {
        let files = &self.levels[level];
        let i = files.partition_point(|f| f.largest_user_key() < user_key);
        files.get(i).filter(|f| f.smallest_user_key() <= user_key)
    }

    /// Files of `level` whose range meets `[lo, hi]`.
    pub fn overlapping(&self, level: usize, lo: &[u8], hi: &[u8]) -> Vec<Arc<FileMeta>> {
        self.levels[level]
            .iter()
            .filter(|f| f.overlaps(lo, hi))
            .cloned()
            .collect()
    }
}

/// A table added by an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewFile {
    pub level: usize,
    pub number: u64,
    pub summary: TableSummary,
}

/// One step from a version to the next, as logged in the manifest.
///
/// ```text
/// edit = (tag: varint, fields)*
///   1 log_number varint         2 next_file_number varint
///   3 last_seq varint           4 user_metadata len-prefixed bytes
///   5 deleted: level varint, number varint
///   6 added: level, number, size, entries, smallest_seq, largest_seq (varints),
///            smallest, largest (len-prefixed internal keys)
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VersionEdit {
    /// WAL files numbered below this are no longer needed.
    pub log_number: Option<u64>,
    pub next_file_number: Option<u64>,
    pub last_seq: Option<SeqNo>,
    pub user_metadata: Option<Vec<u8>>,
    pub deleted: Vec<(usize, u64)>,
    pub added: Vec<NewFile>,
}

impl VersionEdit {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(v) = self.log_number {
            put_varint(&mut out, 1);
            put_varint(&mut out, v);
        }
        if let Some(v) = self.next_file_number {
            put_varint(&mut out, 2);
            put_varint(&mut out, v);
        }
        if let Some(v) = self.last_seq {
            put_varint(&mut out, 3);
            put_varint(&mut out, v);
        }
        if let Some(m) = &self.user_metadata {
            put_varint(&mut out, 4);
            put_len_prefixed(&mut out, m);
        }
        for (level, number) in &self.deleted {
            put_varint(&mut out, 5);
            put_varint(&mut out, *level as u64);
            put_varint(&mut out, *number);
        }
        for f in &self.added {
            put_varint(&mut out, 6);
            for v in [
                f.level as u64,
                f.number,
                f.summary.size,
                f.summary.entries,
                f.summary.smallest_seq,
                f.summary.largest_seq,
            ] {
                put_varint(&mut out, v);
            }
            put_len_prefixed(&mut out, &f.summary.smallest);
            put_len_prefixed(&mut out, &f.summary.largest);
        }
        out
    }

    /// Decodes an edit; `Err` names what is malformed.
    pub fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        let mut r = Reader::new(bytes);
        let mut e = VersionEdit::default();
        let level = |v: u64| -> Result<usize, &'static str> {
            usize::try_from(v)
                .ok()
                .filter(|l| *l < NUM_LEVELS)
                .ok_or("level out of range")
        };
        while !r.is_empty() {
            let tag = r.varint().ok_or("truncated tag")?;
            match tag {
                1 => e.log_number = Some(r.varint().ok_or("truncated log number")?),
                2 => e.next_file_number = Some(r.varint().ok_or("truncated file number")?),
                3 => e.last_seq = Some(r.varint().ok_or("truncated sequence")?),
                4 => {
                    let m = r.len_prefixed().ok_or("truncated metadata")?;
                    e.user_metadata = Some(m.to_vec());
                }
                5 => {
                    let l = level(r.varint().ok_or("truncated level")?)?;
                    e.deleted.push((l, r.varint().ok_or("truncated number")?));
                }
                6 => {
                    let mut v = [0u64; 6];
                    for slot in &mut v {
                        *slot = r.varint().ok_or("truncated new file")?;
                    }
                    let smallest = r.len_prefixed().ok_or("truncated smallest key")?;
                    let largest = r.len_prefixed().ok_or("truncated largest key")?;
                    if !key::is_valid(smallest) || !key::is_valid(largest) {
                        return Err("malformed key range");
                    }
                    if key::compare(smallest, largest) == Ordering::Greater {
                        return Err("smallest key after largest");
                    }
                    e.added.push(NewFile {
                        level: level(v[0])?,
                        number: v[1],
                        summary: TableSummary {
                            size: v[2],
                            entries: v[3],
                            smallest_seq: v[4],
                            largest_seq: v[5],
                            smallest: smallest.to_vec(),
                            largest: largest.to_vec(),
                        },
                    });
                }
                _ => return Err("unknown edit tag"),
            }
        }
        Ok(e)
    }
}

/// Iterates over a sorted level, opening one table at a time.
pub(crate) struct LevelIter {
    files: Vec<Arc<FileMeta>>,
    index: usize,
    current: Option<TableIter>,
    fill_cache: bool,
}

impl LevelIter {
    pub fn new(files: Vec<Arc<FileMeta>>, fill_cache: bool) -> Self {
        Self {
            files,
            index: 0,
            current: None,
            fill_cache,
        }
    }

    fn open(&mut self, index: usize) {
        self.index = index;
        self.current = self.files.get(index).map(|f| f.table.iter(self.fill_cache));
    }

    fn skip_exhausted(&mut self) -> Result<()> {
        while let Some(it) = &self.current {
            if it.valid() {
                return Ok(());
            }
            self.open(self.index + 1);
            if let Some(it) = self.current.as_mut() {
                it.seek_to_first()?;
            }
        }
        Ok(())
    }
}

impl InternalIterator for LevelIter {
    fn seek(&mut self, target: &[u8]) -> Result<()> {
        let i = self
            .files
            .partition_point(|f| key::compare(&f.summary.largest, target) == Ordering::Less);
        self.open(i);
        if let Some(it) = self.current.as_mut() {
            it.seek(target)?;
        }
        self.skip_exhausted()
    }
    fn seek_to_first(&mut self) -> Result<()> {
        self.open(0);
        if let Some(it) = self.current.as_mut() {
            it.seek_to_first()?;
        }
        self.skip_exhausted()
    }
    fn next(&mut self) -> Result<()> {
        if let Some(it) = self.current.as_mut() {
            it.next()?;
        }
        self.skip_exhausted()
    }
    fn valid(&self) -> bool {
        self.current.as_ref().is_some_and(|it| it.valid())
    }
    fn key(&self) -> &[u8] {
        self.current.as_ref().map_or(&[], |it| it.key())
    }
    fn value(&self) -> &[u8] {
        self.current.as_ref().map_or(&[], |it| it.value())
    }
    fn value_bytes(&self) -> bytes::Bytes {
        self.current
            .as_ref()
            .map_or_else(bytes::Bytes::new, |it| it.value_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::ValueKind;

    #[test]
    fn edit_roundtrip_and_garbage() {
        let e = VersionEdit {
            log_number: Some(3),
            next_file_number: Some(9),
            last_seq: Some(100),
            user_metadata: Some(b"applied=7".to_vec()),
            deleted: vec![(0, 4), (1, 5)],
            added: vec![NewFile {
                level: 1,
                number: 8,
                summary: TableSummary {
                    size: 4096,
                    entries: 10,
                    smallest: key::encode(b"a", 1, ValueKind::Put),
                    largest: key::encode(b"z", 2, ValueKind::Put),
                    smallest_seq: 1,
                    largest_seq: 2,
                },
            }],
        };
        let bytes = e.encode();
        assert_eq!(VersionEdit::decode(&bytes), Ok(e));
        for cut in 0..bytes.len() {
            let _ = VersionEdit::decode(&bytes[..cut]);
        }
    }
}
