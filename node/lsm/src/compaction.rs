//! Leveled compaction: which tables to merge, and the merge itself.
//!
//! L0 is compacted by file count, deeper levels by size (L1 holds
//! `l1_bytes`, each level below `level_fanout` times more). A compaction
//! merges its inputs into new tables of the next level, keeping for each
//! user key the newest version plus any version a live snapshot can still
//! see, and dropping tombstones once no deeper level holds the key.

use std::path::Path;
use std::sync::Arc;

use super::fs::FileSystem;
use super::iterator::{InternalIterator, MergingIterator};
use super::key::{self, SeqNo, ValueKind};
use super::sst::{TableBuilder, TableOptions};
use super::version::{FileMeta, LevelIter, NewFile, Version, VersionEdit, NUM_LEVELS};
use super::{Error, Options, Result};

/// The chosen inputs of one compaction.
pub(crate) struct Compaction {
    /// The level compacted from.
    pub level: usize,
    /// Inputs from `level`.
    pub inputs: Vec<Arc<FileMeta>>,
    /// Overlapping inputs from `level + 1`.
    pub next_inputs: Vec<Arc<FileMeta>>,
}

impl Compaction {
    pub fn output_level(&self) -> usize {
        self.level + 1
    }

    /// A single file with nothing to merge below can simply move down.
    pub fn is_trivial_move(&self) -> bool {
        self.level > 0 && self.inputs.len() == 1 && self.next_inputs.is_empty()
    }

    pub fn input_bytes(&self) -> u64 {
        self.inputs
            .iter()
            .chain(&self.next_inputs)
            .map(|f| f.summary.size)
            .sum()
    }

    /// The edit that removes every input.
    pub fn deletions(&self) -> Vec<(usize, u64)> {
        let mut d: Vec<(usize, u64)> = self.inputs.iter().map(|f| (self.level, f.number)).collect();
        d.extend(self.next_inputs.iter().map(|f| (self.level + 1, f.number)));
        d
    }

    /// The largest user key among the inputs (the next round-robin start).
    pub fn largest_user_key(&self) -> Vec<u8> {
        self.inputs
            .iter()
            .map(|f| f.largest_user_key())
            .max()
            .unwrap_or_default()
            .to_vec()
    }
}

/// The size limit of `level` (L1 and below).
pub(crate) fn max_bytes_for_level(opts: &Options, level: usize) -> u64 {
    let mut bytes = opts.l1_bytes;
    for _ in 1..level {
        bytes = bytes.saturating_mul(opts.level_fanout);
    }
    bytes
}

/// The level most in need of compaction with its score (>= 1 means due).
pub(crate) fn score(version: &Version, opts: &Options) -> (usize, f64) {
    let mut best = (
        0,
        version.levels[0].len() as f64 / opts.l0_compaction_trigger.max(1) as f64,
    );
    for level in 1..NUM_LEVELS - 1 {
        let s = version.level_bytes(level) as f64 / max_bytes_for_level(opts, level) as f64;
        if s > best.1 {
            best = (level, s);
        }
    }
    best
}

/// Picks the next compaction, if any level is due. `pointers[l]` is the
/// largest user key compacted last time from level `l` (round robin).
pub(crate) fn pick(version: &Version, opts: &Options, pointers: &[Vec<u8>]) -> Option<Compaction> {
    let (level, score) = score(version, opts);
    if score < 1.0 {
        return None;
    }
    let inputs: Vec<Arc<FileMeta>> = if level == 0 {
        version.levels[0].clone()
    } else {
        let files = &version.levels[level];
        let pointer = pointers.get(level).map(Vec::as_slice).unwrap_or_default();
        let pick = files
            .iter()
            .find(|f| pointer.is_empty() || f.smallest_user_key() > pointer)
            .or_else(|| files.first())?;
        vec![pick.clone()]
    };
    Some(with_next_level(version, level, inputs))
}

/// A compaction of every file of `level` into `level + 1`.
pub(crate) fn whole_level(version: &Version, level: usize) -> Compaction {
    with_next_level(version, level, version.levels[level].clone())
}

/// A compaction of `inputs` from `level` with every file of the next level
/// that overlaps them.
fn with_next_level(version: &Version, level: usize, inputs: Vec<Arc<FileMeta>>) -> Compaction {
    let lo = inputs.iter().map(|f| f.smallest_user_key()).min();
    let hi = inputs.iter().map(|f| f.largest_user_key()).max();
    let next_inputs = match (lo, hi) {
        (Some(lo), Some(hi)) => version.overlapping(level + 1, lo, hi),
        _ => Vec::new(),
    };
    Compaction {
        level,
        inputs,
        next_inputs,
    }
}

/// Counters of one merge.
#[derive(Debug, Default)]
pub(crate) struct MergeOutput {
    pub added: Vec<NewFile>,
    pub bytes_written: u64,
}

/// Merges the inputs of `c` into new tables of the output level.
///
/// `floor` is the oldest sequence number a reader may still read at (the
/// oldest live snapshot, or the newest sequence if there is none).
/// `new_file_number` allocates file numbers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn merge(
    c: &Compaction,
    version: &Version,
    floor: SeqNo,
    fs: &dyn FileSystem,
    dir: &Path,
    table_opts: TableOptions,
    target_file_bytes: u64,
    mut new_file_number: impl FnMut() -> u64,
    keep_going: impl Fn() -> bool,
) -> Result<MergeOutput> {
    let mut children: Vec<Box<dyn InternalIterator>> = Vec::new();
    if c.level == 0 {
        for f in &c.inputs {
            children.push(Box::new(f.table.iter(false)));
        }
    } else {
        children.push(Box::new(LevelIter::new(c.inputs.clone(), false)));
    }
    children.push(Box::new(LevelIter::new(c.next_inputs.clone(), false)));
    let mut iter = MergingIterator::new(children);
    iter.seek_to_first()?;

    let out_level = c.output_level();
    // A key is at its base level when no deeper level may hold it.
    let is_base_level =
        |ukey: &[u8]| (out_level + 1..NUM_LEVELS).all(|l| version.find_file(l, ukey).is_none());

    let mut out = MergeOutput::default();
    let mut builder: Option<(u64, TableBuilder)> = None;
    let mut current_ukey: Option<Vec<u8>> = None;
    let mut last_seq_for_key = SeqNo::MAX;
    let mut entries = 0u64;

    while iter.valid() {
        entries += 1;
        if entries.is_multiple_of(1024) && !keep_going() {
            return Err(Error::ShuttingDown);
        }
        let ikey = iter.key();
        let ukey = key::user_key(ikey);
        let new_key = current_ukey.as_deref() != Some(ukey);
        if new_key {
            current_ukey = Some(ukey.to_vec());
            last_seq_for_key = SeqNo::MAX;
        }
        let seq = key::seqno(ikey);
        let drop = if last_seq_for_key <= floor {
            // A newer version of this key is visible to every reader.
            true
        } else {
            key::kind(ikey) == Some(ValueKind::Delete) && seq <= floor && is_base_level(ukey)
        };
        last_seq_for_key = seq;
        if !drop {
            // Cut tables only between user keys so that no key spans two
            // tables of one level.
            if new_key {
                if let Some((number, b)) =
                    builder.take_if(|(_, b)| b.estimated_size() >= target_file_bytes)
                {
                    finish_output(&mut out, out_level, number, b)?;
                }
            }
            if builder.is_none() {
                let number = new_file_number();
                let path = dir.join(super::db::table_file_name(number));
                builder = Some((number, TableBuilder::create(fs, &path, table_opts)?));
            }
            if let Some((_, b)) = builder.as_mut() {
                b.add(ikey, iter.value())?;
            }
        }
        iter.next()?;
    }
    if let Some((number, b)) = builder.take() {
        finish_output(&mut out, out_level, number, b)?;
    }
    Ok(out)
}

fn finish_output(
    out: &mut MergeOutput,
    level: usize,
    number: u64,
    builder: TableBuilder,
) -> Result<()> {
    let summary = builder.finish()?;
    out.bytes_written += summary.size;
    out.added.push(NewFile {
        level,
        number,
        summary,
    });
    Ok(())
}

/// The edit recording a finished compaction.
pub(crate) fn edit_for(c: &Compaction, added: Vec<NewFile>) -> VersionEdit {
    VersionEdit {
        deleted: c.deletions(),
        added,
        ..VersionEdit::default()
    }
}
