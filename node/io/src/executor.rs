//! The seam for background work. Flushes, compactions and batched WAL
//! syncs are handed to an [`Executor`]: production runs them on dedicated
//! threads, the deterministic simulation runs them inline on the calling
//! thread so a simulated node stays single-threaded.

use std::time::Duration;

/// A unit of background work.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Runs the engine's background jobs.
pub trait Executor: Send + Sync + 'static {
    /// Runs `job`, now or later. `name` labels the thread.
    fn spawn(&self, name: &'static str, job: Job);
    /// True when [`Executor::spawn`] runs the job before returning.
    fn is_inline(&self) -> bool;
    /// Delays a writer while background work catches up (a write
    /// slowdown). Threads sleep briefly; inline execution has nothing to
    /// wait for.
    fn slowdown(&self);
}

/// Jobs that only catch up on work already acknowledged (a memtable's
/// flush, a compaction): nobody waits on them unless they fall far behind,
/// and then the engine's write slowdown and stall hold writers back.
/// Every other job (a WAL or Raft log sync, a snapshot) has a caller
/// waiting.
pub const BACKGROUND_JOBS: [&str; 2] = [FLUSH_JOB, COMPACT_JOB];
/// The name of a memtable flush job.
pub const FLUSH_JOB: &str = "flush";
/// The name of a compaction job.
pub const COMPACT_JOB: &str = "compact";

/// Runs each job on a new named OS thread. The engine keeps at most one
/// flush, one compaction and one WAL sync job running, so jobs are few and
/// long; a thread per job costs nothing measurable.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadExecutor {
    background_nice: i32,
}

impl ThreadExecutor {
    /// A new thread executor; every job runs at the caller's priority.
    pub fn new() -> Self {
        Self::default()
    }

    /// A thread executor whose [`BACKGROUND_JOBS`] run at nice `nice`
    /// (0..=19, 19 the lowest CPU priority) or the caller's, whichever is
    /// lower (Linux; elsewhere at the caller's priority).
    ///
    /// Replicas of one Raft log flush and compact at the same log indexes,
    /// so on a busy machine their background threads all wake at once and
    /// take the cores the log and apply paths need. At a lower priority
    /// they run in the cores' idle time instead, and writes wait less: 64
    /// clients' put p99 fell from 10.6-13.0 ms to 9.0-10.6 ms in eight
    /// alternated pairs of runs on 2 cores (nice 19 against 0).
    pub fn with_background_nice(nice: i32) -> Self {
        Self {
            background_nice: nice.clamp(0, 19),
        }
    }
}

/// Lowers the calling thread's CPU priority to nice `nice`, if it is
/// higher.
#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    let tid = rustix::thread::gettid();
    let current = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    if nice <= current {
        return;
    }
    // Lowering a priority needs no privilege; if it fails the job still
    // runs, at the caller's priority.
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::warn!(error = %e, nice, "cannot lower a background thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}

impl Executor for ThreadExecutor {
    fn spawn(&self, name: &'static str, job: Job) {
        let nice = if BACKGROUND_JOBS.contains(&name) {
            self.background_nice
        } else {
            0
        };
        let spawned = std::thread::Builder::new()
            .name(format!("cairn-{name}"))
            .spawn(move || {
                if nice > 0 {
                    lower_priority(nice);
                }
                job()
            });
        if let Err(e) = spawned {
            // Without a thread the job cannot run; the engine would wait
            // for it forever, so fail loudly.
            panic!("cannot spawn a {name} thread: {e}");
        }
    }
    fn is_inline(&self) -> bool {
        false
    }
    fn slowdown(&self) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs every job on the calling thread, before `spawn` returns: the
/// simulation's executor, so a simulated node stays single-threaded.
#[cfg(feature = "sim")]
#[derive(Debug, Default, Clone, Copy)]
pub struct InlineExecutor;

#[cfg(feature = "sim")]
impl Executor for InlineExecutor {
    fn spawn(&self, _name: &'static str, job: Job) {
        job();
    }
    fn is_inline(&self) -> bool {
        true
    }
    fn slowdown(&self) {}
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value the job named `name` ran at.
    fn nice_of(executor: &ThreadExecutor, name: &'static str) -> i32 {
        let (tx, rx) = std::sync::mpsc::channel();
        executor.spawn(
            name,
            Box::new(move || {
                let tid = rustix::thread::gettid();
                let _ = tx.send(rustix::process::getpriority_process(Some(tid)));
            }),
        );
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(n)) => n,
            other => panic!("no priority from the {name} job: {other:?}"),
        }
    }

    #[test]
    fn background_jobs_run_at_the_lowered_priority_and_others_do_not() {
        let caller = rustix::process::getpriority_process(None).unwrap_or(0);
        let lowered = ThreadExecutor::with_background_nice(7);
        assert_eq!(nice_of(&lowered, FLUSH_JOB), caller.max(7));
        assert_eq!(nice_of(&lowered, COMPACT_JOB), caller.max(7));
        assert_eq!(nice_of(&lowered, "raft-log"), caller);
        assert_eq!(nice_of(&lowered, "blocking"), caller);
        assert_eq!(nice_of(&ThreadExecutor::new(), FLUSH_JOB), caller);
    }
}
