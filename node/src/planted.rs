//! Bugs planted on purpose, to prove that the simulation's checker finds
//! them. Compiled only with the non-default `planted-bugs` feature (the
//! simulation's tests turn it on); every switch is off until a test sets
//! it, and production builds do not contain them.

use std::sync::atomic::{AtomicBool, Ordering};

/// A planted bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Linearizable reads are answered from the node's own state without
    /// the ReadIndex barrier, even on a follower.
    FollowerReads,
    /// The Raft log acknowledges appended entries without fsyncing them.
    AckWithoutFsync,
    /// The Raft log ignores requests to truncate a conflicting suffix.
    KeepConflictingSuffix,
    /// The Raft log cuts a corrupt last record as if it were a torn write.
    CutCorruptTail,
    /// A node that started without its data votes at once.
    VoteWhenWiped,
    /// The data directory's entry is not synced in its parent.
    SkipDirSync,
}

impl Bug {
    /// Every planted bug.
    pub const ALL: [Bug; 6] = [
        Bug::FollowerReads,
        Bug::AckWithoutFsync,
        Bug::KeepConflictingSuffix,
        Bug::CutCorruptTail,
        Bug::VoteWhenWiped,
        Bug::SkipDirSync,
    ];

    /// The bug's name (kebab-case).
    pub fn name(self) -> &'static str {
        match self {
            Bug::FollowerReads => "follower-reads",
            Bug::AckWithoutFsync => "ack-without-fsync",
            Bug::KeepConflictingSuffix => "keep-conflicting-suffix",
            Bug::CutCorruptTail => "cut-corrupt-tail",
            Bug::VoteWhenWiped => "vote-when-wiped",
            Bug::SkipDirSync => "skip-dir-sync",
        }
    }

    /// The bug called `name`.
    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }

    fn switch(self) -> &'static AtomicBool {
        static SWITCHES: [AtomicBool; 6] = [
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicBool::new(false),
        ];
        &SWITCHES[self as usize]
    }
}

/// Turns a planted bug on or off (for the whole process).
pub fn set(bug: Bug, on: bool) {
    bug.switch().store(on, Ordering::SeqCst);
}

/// Whether a planted bug is on.
pub fn on(bug: Bug) -> bool {
    bug.switch().load(Ordering::Relaxed)
}
