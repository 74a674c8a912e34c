//! The Raft log store and state machine: openraft's own conformance suite
//! on real files and on the crash-simulating in-memory disk, plus crash,
//! torn-tail, purge and fsync-failure tests of the segmented log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_io::{Executor, FileSystem, InlineExecutor, MemFs, StdFs, ThreadExecutor};
use cairn_lsm as lsm;
use cairn_node::raft::log_store::LogStore;
use cairn_node::raft::state_machine::{SmEnv, StateMachine};
use cairn_node::raft::{Entry, TypeConfig};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{RaftLogReader, StorageError};

type Rt = openraft_rt::deterministic_rng::DeterministicRng<openraft::impls::TokioRuntime>;

/// Builds stores on real files (a fresh temp dir each) or on one shared
/// simulated disk (a fresh directory each: snapshots built by one store
/// are installed into another, so they must share the disk).
struct Builder {
    mem: Option<(MemFs, std::sync::atomic::AtomicU64)>,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Option<tempfile::TempDir>> for Builder {
    async fn build(
        &self,
    ) -> Result<(Option<tempfile::TempDir>, LogStore, StateMachine), StorageError<TypeConfig>> {
        let (guard, dir, fs, executor): (_, PathBuf, Arc<dyn FileSystem>, Arc<dyn Executor>) =
            if let Some((fs, n)) = &self.mem {
                let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (
                    None,
                    PathBuf::from(format!("/node-{n}")),
                    Arc::new(fs.clone()),
                    Arc::new(InlineExecutor),
                )
            } else {
                let t = tempfile::tempdir().unwrap();
                let p = t.path().to_path_buf();
                (Some(t), p, Arc::new(StdFs), Arc::new(ThreadExecutor::new()))
            };
        let log = LogStore::open(fs.clone(), executor.clone(), dir.join("raft")).unwrap();
        let sm = StateMachine::open(SmEnv {
            fs,
            executor,
            data_dir: dir,
            lsm: lsm::Options::default(),
        })
        .unwrap();
        Ok((guard, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_conformance_suite_on_real_files() {
    Rt::scope(1, Suite::test_all(Builder { mem: None }))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_conformance_suite_on_the_simulated_disk() {
    Rt::scope(
        2,
        Suite::test_all(Builder {
            mem: Some((MemFs::new(), Default::default())),
        }),
    )
    .await
    .unwrap();
}

fn entry(term: u64, index: u64) -> Entry {
    openraft::testing::blank_ent::<TypeConfig>(term, 1, index)
}

async fn append(log: &mut LogStore, entries: Vec<Entry>) -> io::Result<()> {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await?;
    rx.await.map_err(|_| io::Error::other("callback dropped"))?
}

/// A log on real files in `dir`, with its own threads.
fn open_on_disk(dir: &std::path::Path, segment_bytes: u64) -> LogStore {
    LogStore::open_with(
        Arc::new(StdFs),
        Arc::new(ThreadExecutor::new()),
        dir,
        segment_bytes,
    )
    .unwrap()
}

fn open(fs: &MemFs, segment_bytes: u64) -> LogStore {
    LogStore::open_with(
        Arc::new(fs.clone()),
        Arc::new(InlineExecutor),
        "/raft",
        segment_bytes,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_entries_survive_a_crash_and_a_torn_tail_is_cut() {
    Rt::scope(3, async {
        for seed in 0..20 {
            let fs = MemFs::new();
            let mut log = open(&fs, 4096);
            append(&mut log, (1..=100).map(|i| entry(1, i)).collect())
                .await
                .unwrap();
            // The next record written but never synced: a crash keeps a
            // random prefix of it (a torn write), or all of it.
            let last = fs
                .list(&PathBuf::from("/raft"))
                .unwrap()
                .into_iter()
                .rfind(|n| n.ends_with(".log"))
                .unwrap();
            let mut record = Vec::new();
            cairn_io::frame::encode(
                &mut record,
                &cairn_io::codec::encode(&entry(1, 101)).unwrap(),
            );
            let mut f = fs.open_append(&PathBuf::from("/raft").join(last)).unwrap();
            f.append(&record).unwrap();
            drop(f);
            drop(log);
            fs.crash(true, seed);
            let mut log = open(&fs, 4096);
            let got = log.try_get_log_entries(0..).await.unwrap();
            let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
            let n = idx.len() as u64;
            assert!(n == 100 || n == 101, "seed {seed}: {n} entries");
            assert_eq!(idx, (1..=n).collect::<Vec<_>>(), "seed {seed}");
            if n == 101 {
                log.truncate_after(Some(openraft::testing::log_id::<TypeConfig>(1, 1, 100)))
                    .await
                    .unwrap();
            }
            // And the log goes on after the cut.
            append(&mut log, vec![entry(2, 101)]).await.unwrap();
            drop(log);
            let mut log = open(&fs, 4096);
            assert_eq!(log.try_get_log_entries(100..).await.unwrap().len(), 2);
        }
    })
    .await;
}

/// Entries no longer cached are read back from their segments on real
/// files, off the runtime (the thread executor); a byte damaged on disk
/// after the log was opened is an error naming the segment, not a panic
/// and not a wrong entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_entries_are_read_from_disk_and_damage_is_reported() {
    Rt::scope(5, async {
        let dir = tempfile::tempdir().unwrap();
        let open = || open_on_disk(dir.path(), 64 << 10);
        let mut log = open();
        append(&mut log, (1..=300).map(|i| entry(1, i)).collect())
            .await
            .unwrap();
        drop(log);
        // Reopened: nothing is cached, every read goes to the files.
        let mut log = open();
        let got = log.try_get_log_entries(1..=300).await.unwrap();
        let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, (1..=300).collect::<Vec<_>>());
        // Damage one byte near the end of the last segment: the entry
        // there is refused, the ones before it still read.
        let mut segments: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        segments.sort();
        let last = segments.last().unwrap();
        let mut bytes = std::fs::read(last).unwrap();
        let at = bytes.len() - 3;
        bytes[at] ^= 0x40;
        std::fs::write(last, &bytes).unwrap();
        let err = log.try_get_log_entries(295..=300).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("damaged"), "{err}");
        assert_eq!(log.try_get_log_entries(1..=10).await.unwrap().len(), 10);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_and_purge_across_segments() {
    Rt::scope(4, async {
        let fs = MemFs::new();
        let mut log = open(&fs, 1024);
        for i in 1..=500 {
            append(&mut log, vec![entry(1, i)]).await.unwrap();
        }
        let segments = log.segments();
        assert!(segments > 5, "small segments rotate: {segments}");
        // A conflicting suffix is replaced.
        log.truncate_after(Some(openraft::testing::log_id::<TypeConfig>(1, 1, 300)))
            .await
            .unwrap();
        append(&mut log, (301..=320).map(|i| entry(2, i)).collect())
            .await
            .unwrap();
        let tail = log.try_get_log_entries(299..=320).await.unwrap();
        assert_eq!(tail.len(), 22);
        assert_eq!(tail[1].log_id.leader_id.term, 1);
        assert_eq!(tail[2].log_id.leader_id.term, 2);
        // Purge drops whole segments only.
        log.purge(openraft::testing::log_id::<TypeConfig>(1, 1, 250))
            .await
            .unwrap();
        assert!(log.segments() < segments);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.unwrap().index, 250);
        assert_eq!(state.last_log_id.unwrap().index, 320);
        assert!(log.try_get_log_entries(0..251).await.unwrap().is_empty());
        // Everything survives a reopen (after a clean stop: all synced).
        drop(log);
        fs.crash(false, 0);
        let mut log = open(&fs, 1024);
        let all = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(all.first().unwrap().log_id.index, 251);
        assert_eq!(all.last().unwrap().log_id.index, 320);
        assert_eq!(all[69].log_id.leader_id.term, 2);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.unwrap().index, 250);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_is_reported_and_the_log_refuses_further_writes() {
    Rt::scope(5, async {
        let fs = MemFs::new();
        let mut log = open(&fs, 1 << 20);
        append(&mut log, vec![entry(1, 1)]).await.unwrap();
        fs.set_faults(cairn_io::Faults {
            fail_sync: true,
            ..Default::default()
        });
        let e = append(&mut log, vec![entry(1, 2)]).await.unwrap_err();
        assert!(!e.to_string().is_empty());
        fs.set_faults(cairn_io::Faults::default());
        // Even with the disk healthy again, this log never acknowledges:
        // what it wrote before the failure may be lost.
        assert!(append(&mut log, vec![entry(1, 3)]).await.is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_in_the_middle_is_refused_on_open() {
    Rt::scope(6, async {
        let fs = MemFs::new();
        let mut log = open(&fs, 1 << 20);
        append(&mut log, (1..=50).map(|i| entry(1, i)).collect())
            .await
            .unwrap();
        drop(log);
        let seg = PathBuf::from("/raft").join(format!("{:020}.log", 1));
        fs.corrupt(&seg, 200).unwrap();
        let Err(e) = LogStore::open(Arc::new(fs.clone()), Arc::new(InlineExecutor), "/raft") else {
            panic!("a damaged log must not open");
        };
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("is corrupt at offset"), "{e}");
    })
    .await;
}

/// A flipped bit in the last entry, which was synced and acknowledged, is
/// corruption: the log refuses to open and names the file and offset. It
/// is never cut as if it were a torn write (that would drop a committed
/// entry without a trace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_the_last_synced_entry_is_refused_not_cut() {
    Rt::scope(7, async {
        let fs = MemFs::new();
        let mut log = open(&fs, 1 << 20);
        for i in 1..=10 {
            append(&mut log, vec![entry(1, i)]).await.unwrap();
        }
        drop(log);
        let seg = PathBuf::from("/raft").join(format!("{:020}.log", 1));
        let size = fs.file_size(&seg).unwrap();
        for back in [1, 6, 20] {
            let fs = fs.clone();
            fs.corrupt(&seg, size - back).unwrap();
            let opened = LogStore::open(Arc::new(fs.clone()), Arc::new(InlineExecutor), "/raft");
            let Err(e) = opened else {
                panic!("a log whose last synced entry is damaged must not open");
            };
            let msg = e.to_string();
            assert!(
                msg.contains("00000000000000000001.log is corrupt at offset"),
                "{msg}"
            );
            assert_eq!(fs.file_size(&seg).unwrap(), size, "the log was cut");
            fs.corrupt(&seg, size - back).unwrap(); // flip it back
        }
        // Undamaged, it opens with all ten entries.
        let mut log = open(&fs, 1 << 20);
        assert_eq!(log.try_get_log_entries(0..).await.unwrap().len(), 10);
    })
    .await;
}

async fn apply_blank(sm: &mut StateMachine, index: u64) {
    use openraft::storage::RaftStateMachine;
    let item: io::Result<_> = Ok((entry(1, index), None));
    sm.apply(futures::stream::iter([item])).await.unwrap();
}

async fn build_snapshot(sm: &mut StateMachine) -> cairn_node::raft::Snapshot {
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    let mut builder = sm.try_create_snapshot_builder(true).await.unwrap();
    builder.build_snapshot().await.unwrap()
}

/// A snapshot asked for when nothing was applied since the current one is
/// the current one: its directory, which a follower may be streaming, is
/// not rebuilt in place; the next entry gives a new snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_nothing_new_keeps_the_current_one() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let mut sm = StateMachine::open(SmEnv {
        fs: Arc::new(StdFs),
        executor: Arc::new(ThreadExecutor::new()),
        data_dir: t.path().to_path_buf(),
        lsm: lsm::Options::default(),
    })
    .unwrap();
    let meta_inode = |s: &cairn_node::raft::Snapshot| {
        std::fs::metadata(s.snapshot.dir.join("meta"))
            .unwrap()
            .ino()
    };
    apply_blank(&mut sm, 1).await;
    apply_blank(&mut sm, 2).await;
    let first = build_snapshot(&mut sm).await;
    assert_eq!(first.meta.last_log_id.map(|l| l.index), Some(2));
    let first_inode = meta_inode(&first);
    let again = build_snapshot(&mut sm).await;
    assert_eq!(again.meta.last_log_id, first.meta.last_log_id);
    assert_eq!(again.snapshot.dir, first.snapshot.dir);
    assert_eq!(meta_inode(&again), first_inode, "rebuilt in place");
    apply_blank(&mut sm, 3).await;
    let third = build_snapshot(&mut sm).await;
    assert_eq!(third.meta.last_log_id.map(|l| l.index), Some(3));
    assert!(!first.snapshot.dir.exists(), "the replaced snapshot stays");
}

/// A purge's marker and removals run in the background: if they are lost
/// (here the marker's fsync fails, then the node crashes) the log keeps
/// more than was purged, never a hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_lost_in_a_crash_leaves_more_log_not_a_hole() {
    Rt::scope(6, async {
        let fs = MemFs::new();
        let mut log = open(&fs, 1024);
        for i in 1..=300 {
            append(&mut log, vec![entry(1, i)]).await.unwrap();
        }
        let segments = log.segments();
        fs.set_faults(cairn_io::Faults {
            fail_sync: true,
            ..Default::default()
        });
        log.purge(openraft::testing::log_id::<TypeConfig>(1, 1, 250))
            .await
            .unwrap();
        // Forgotten at once in memory.
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.unwrap().index, 250);
        assert!(log.segments() < segments);
        drop(log);
        fs.set_faults(cairn_io::Faults::default());
        fs.crash(false, 0);
        let mut log = open(&fs, 1024);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(
            state.last_purged_log_id, None,
            "the marker never became durable"
        );
        let all = log.try_get_log_entries(0..).await.unwrap();
        let indexes: Vec<u64> = all.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (1..=300).collect::<Vec<_>>());
    })
    .await;
}

/// On a real disk, with the log's own threads: a purge is durable after a
/// clean stop, and the purged segments are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_is_durable_after_a_clean_stop() {
    Rt::scope(7, async {
        let dir = tempfile::tempdir().unwrap();
        let open = || open_on_disk(&dir.path().join("raft"), 1024);
        let files = || std::fs::read_dir(dir.path().join("raft")).unwrap().count();
        let mut log = open();
        for i in 1..=300 {
            append(&mut log, vec![entry(1, i)]).await.unwrap();
        }
        let before = files();
        log.purge(openraft::testing::log_id::<TypeConfig>(1, 1, 250))
            .await
            .unwrap();
        drop(log);
        assert!(files() < before, "purged segments removed by the stop");
        let mut log = open();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.unwrap().index, 250);
        let all = log.try_get_log_entries(0..).await.unwrap();
        assert_eq!(all.first().unwrap().log_id.index, 251);
        assert_eq!(all.last().unwrap().log_id.index, 300);
    })
    .await;
}
