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

/// Runs each job on a new named OS thread. The engine keeps at most one
/// flush, one compaction and one WAL sync job running, so jobs are few and
/// long; a thread per job costs nothing measurable.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadExecutor;

impl ThreadExecutor {
    /// A new thread executor.
    pub fn new() -> Self {
        ThreadExecutor
    }
}

impl Executor for ThreadExecutor {
    fn spawn(&self, name: &'static str, job: Job) {
        let spawned = std::thread::Builder::new()
            .name(format!("cairn-{name}"))
            .spawn(job);
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

/// Runs every job on the calling thread, before `spawn` returns.
#[derive(Debug, Default, Clone, Copy)]
pub struct InlineExecutor;

impl Executor for InlineExecutor {
    fn spawn(&self, _name: &'static str, job: Job) {
        job();
    }
    fn is_inline(&self) -> bool {
        true
    }
    fn slowdown(&self) {}
}
