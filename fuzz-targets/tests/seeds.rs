//! Writes the seed corpus of every target into `fuzz/corpus/<target>/`
//! from real artifacts: a database's table, manifest and WAL, a Raft log
//! segment, encoded peer messages, client requests, a state machine's
//! pairs and a snapshot stream. Run when a format changes:
//! `cargo test -p cairn-fuzz-targets --test seeds -- --ignored`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_io::{codec, frame, FileSystem, InlineExecutor, MemFs};
use cairn_lsm::{Db, Options, WriteBatch};
use cairn_node::kv::command::{Op, PutOp};
use cairn_node::kv::{Applier, Command, Settings};
use cairn_node::raft::log_store::LogStore;
use cairn_node::raft::TypeConfig;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use prost::Message;

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

/// Pieces prefixed by their length (u16 LE), as the node's targets split.
fn pieces(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u16).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

fn lsm_files() {
    let fs = Arc::new(MemFs::new());
    let opts = Options {
        fs: fs.clone(),
        executor: Arc::new(InlineExecutor),
        memtable_bytes: 64 << 10,
        ..Options::default()
    };
    let db = Db::open("/db", opts).unwrap();
    for i in 0..200u32 {
        let mut b = WriteBatch::new();
        b.put(format!("key{i:04}"), format!("value{i}").repeat(3));
        if i % 7 == 0 {
            b.delete(format!("key{:04}", i / 2));
        }
        b.set_user_metadata(i.to_le_bytes().to_vec());
        db.write(b).unwrap();
    }
    db.flush().unwrap();
    db.put("after", "flush").unwrap();
    for name in fs.list(Path::new("/db")).unwrap() {
        let data = fs.read_all(&Path::new("/db").join(&name)).unwrap();
        let target = if name.ends_with(".sst") {
            "lsm_table"
        } else if name.starts_with("MANIFEST-") {
            "lsm_manifest"
        } else if name.ends_with(".wal") {
            "lsm_wal"
        } else {
            continue;
        };
        write(target, &format!("seed-{name}"), &data);
    }
}

fn raft_log() {
    let fs = Arc::new(MemFs::new());
    let mut log =
        LogStore::open_with(fs.clone(), Arc::new(InlineExecutor), "/raft", 1 << 20).unwrap();
    let entries: Vec<_> = (1..=20)
        .map(|i| openraft::testing::blank_ent::<TypeConfig>(1, 1, i))
        .collect();
    futures::executor::block_on(async {
        let (tx, rx) = TypeConfig::oneshot();
        log.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
    });
    let data = fs
        .read_all(Path::new(&format!("/raft/{:020}.log", 1)))
        .unwrap();
    write("raft_log", "seed-20-blank-entries", &data);
}

fn messages() {
    let entry = openraft::testing::blank_ent::<TypeConfig>(2, 1, 7);
    let vote = openraft::raft::VoteRequest::<TypeConfig>::new(
        openraft::Vote::new(3, 1),
        Some(openraft::testing::log_id::<TypeConfig>(2, 1, 7)),
    );
    write(
        "raft_messages",
        "seed-entry-and-vote",
        &pieces(&[
            codec::encode(&entry).unwrap(),
            codec::encode(&vote).unwrap(),
        ]),
    );
    use cairn_proto::kv as k;
    let put = k::PutRequest {
        key: b"k".to_vec().into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    };
    let txn = k::TxnRequest::default();
    write(
        "client_requests",
        "seed-put-and-txn",
        &pieces(&[put.encode_to_vec(), txn.encode_to_vec()]),
    );
    let mut framed = Vec::new();
    frame::encode(&mut framed, b"first record");
    let at = framed.len() as u64;
    frame::encode_mark(&mut framed, at, true);
    frame::encode(&mut framed, b"second record");
    write("frame", "seed-two-records-and-a-mark", &framed);
}

fn kv_state() {
    let opts = Options {
        wal: false,
        fs: Arc::new(MemFs::new()),
        executor: Arc::new(InlineExecutor),
        ..Options::default()
    };
    let db = Db::open("/db", opts).unwrap();
    let mut applier = Applier::load(&db, Settings::default()).unwrap();
    for i in 1..=10u64 {
        let cmd = Command::new(Op::Put(PutOp {
            key: format!("k{}", i % 4).into_bytes(),
            value: b"value".to_vec(),
            prev_kv: false,
        }));
        applier
            .apply(&db, i, &cmd, i.to_le_bytes().to_vec())
            .unwrap();
    }
    let mut parts = Vec::new();
    for item in db.scan::<&[u8]>(..).unwrap() {
        let (k, v) = item.unwrap();
        parts.push(k.to_vec());
        parts.push(v.to_vec());
    }
    write("kv_state", "seed-ten-puts", &pieces(&parts));
}

fn snapshot_stream() {
    use cairn_node::raft::snapshot::SnapshotHeader;
    use cairn_proto::raft::{snapshot_chunk::Chunk, FileChunk, SnapshotChunk};
    let header = SnapshotHeader {
        vote: openraft::Vote::new(3, 1),
        meta: openraft::SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<TypeConfig>(2, 1, 40)),
            last_membership: Default::default(),
        },
        files: vec![("000001.sst".into(), 5), ("CURRENT".into(), 3)],
    };
    let file = |name: &str, data: &[u8]| SnapshotChunk {
        chunk: Some(Chunk::File(FileChunk {
            name: name.into(),
            offset: 0,
            data: data.to_vec().into(),
            crc: crc32c::crc32c(data),
        })),
    };
    let meta = SnapshotChunk {
        chunk: Some(Chunk::Meta(codec::encode(&header).unwrap().into())),
    };
    let parts = [meta, file("000001.sst", b"hello"), file("CURRENT", b"abc")];
    let encoded: Vec<Vec<u8>> = parts.iter().map(|c| c.encode_to_vec()).collect();
    write("snapshot_stream", "seed-two-files", &pieces(&encoded));
}

fn small_files() {
    let fs = MemFs::new();
    let meta = openraft::SnapshotMeta::<_, u64, cairn_node::raft::Member> {
        last_log_id: Some(openraft::testing::log_id::<TypeConfig>(2, 1, 40)),
        last_membership: Default::default(),
    };
    cairn_io::small_file::write(&fs, Path::new("/meta"), &meta, true).unwrap();
    write(
        "small_files",
        "seed-snapshot-meta",
        &fs.read_all(Path::new("/meta")).unwrap(),
    );
}

#[test]
#[ignore]
fn write_seed_corpus() {
    small_files();
    snapshot_stream();
    lsm_files();
    raft_log();
    messages();
    kv_state();
}
