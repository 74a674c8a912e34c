//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): each
//! feeds arbitrary bytes to one of the node's decoders, on the simulated
//! disk. Not an API. Every one must return, never panic.

use std::path::Path;
use std::sync::Arc;

use cairn_io::{codec, FileSystem, InlineExecutor, MemFs};
use cairn_lsm::{Db, Options, WriteBatch};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use openraft::storage::RaftLogStorage;
use openraft::RaftLogReader;
use prost::Message;

use crate::kv::command::ScanSpec;
use crate::kv::{self, Applier, Settings};
use crate::raft::log_store::LogStore;
use crate::raft::snapshot::{self, SnapshotHeader};
use crate::raft::TypeConfig;

/// Splits `data` into pieces, each prefixed by its length (u16 LE).
fn pieces(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
        out.push(&data[2..2 + n]);
        data = &data[2 + n..];
    }
    out
}

/// `data` as the first segment of a Raft log: opened (cut or refused) and
/// every entry read.
pub fn raft_log(data: &[u8]) {
    let fs = Arc::new(MemFs::new());
    let dir = Path::new("/raft");
    let written = fs
        .create_dir_all(dir)
        .and_then(|()| fs.create(&dir.join(format!("{:020}.log", 1))))
        .and_then(|mut f| f.append(data));
    if written.is_err() {
        return;
    }
    let Ok(mut log) = LogStore::open_with(fs, Arc::new(InlineExecutor), dir, 1 << 20) else {
        return;
    };
    futures::executor::block_on(async {
        if let Ok(state) = log.get_log_state().await {
            let last = state.last_log_id.map_or(0, |l| l.index);
            let _ = log
                .try_get_log_entries(0..last.saturating_add(1).min(1 << 16))
                .await;
        }
    });
}

/// `data` as the payloads of peer messages, each decoded as every kind.
pub fn raft_messages(data: &[u8]) {
    for p in pieces(data) {
        let _ = codec::decode::<AppendEntriesRequest<TypeConfig>>(p);
        let _ = codec::decode::<VoteRequest<TypeConfig>>(p);
        let _ = codec::decode::<TransferLeaderRequest<TypeConfig>>(p);
        let _ = crate::raft::decode_entry(p);
        let _ = cairn_proto::raft::RaftMessage::decode(p);
    }
}

/// `data` as the client requests of every call, decoded by the protocol
/// code the servers run.
pub fn client_requests(data: &[u8]) {
    use cairn_proto::{cluster as c, kv as k};
    for p in pieces(data) {
        let _ = k::PutRequest::decode(p);
        let _ = k::GetRequest::decode(p);
        let _ = k::DeleteRequest::decode(p);
        let _ = k::ScanRequest::decode(p);
        let _ = k::TxnRequest::decode(p);
        let _ = k::WatchRequest::decode(p);
        let _ = k::BatchRequest::decode(p);
        let _ = c::AlarmRequest::decode(p);
        let _ = c::ChangeMembershipRequest::decode(p);
        let _ = c::AddLearnerRequest::decode(p);
    }
}

/// `data` as pairs of the state machine's database (keys of every key
/// space): the applier loads from them, and reads go through them.
pub fn kv_state(data: &[u8]) {
    let opts = Options {
        wal: false,
        fs: Arc::new(MemFs::new()),
        executor: Arc::new(InlineExecutor),
        ..Options::default()
    };
    let Ok(db) = Db::open("/db", opts) else {
        return;
    };
    let mut batch = WriteBatch::new();
    for pair in pieces(data).chunks(2) {
        if let [k, v] = pair {
            batch.put(k, v);
        }
    }
    if db.write(batch).is_err() {
        return;
    }
    let _ = Applier::load(&db, Settings::default());
    let _ = kv::get(&db, b"k");
    let _ = kv::scan(&db, &ScanSpec::default(), 1 << 20);
    let _ = kv::history(&db, 0, u64::MAX, 1000, |_| true);
}

/// `data` as an InstallSnapshot stream: a header, then file chunks,
/// received onto the simulated disk.
pub fn snapshot_stream(data: &[u8]) {
    use cairn_proto::raft::{snapshot_chunk::Chunk, SnapshotChunk};
    let mut chunks = pieces(data).into_iter().map(SnapshotChunk::decode);
    let Some(Ok(SnapshotChunk {
        chunk: Some(Chunk::Meta(meta)),
    })) = chunks.next()
    else {
        return;
    };
    let Ok(header) = codec::decode::<SnapshotHeader>(&meta) else {
        return;
    };
    let rest: Vec<_> = chunks
        .map(|c| c.map_err(|e| tonic::Status::invalid_argument(e.to_string())))
        .collect();
    let fs = MemFs::new();
    let root = Path::new("/snapshots");
    futures::executor::block_on(async {
        let _ = snapshot::receive(&fs, root, &header, futures::stream::iter(rest), || {}).await;
    });
}

/// `data` as each small state file a node reads at start: a snapshot's
/// `meta`, the state machine's `CURRENT`, the node's `identity`, the Raft
/// log's `vote`, `purged` and `committed`.
pub fn small_files(data: &[u8]) {
    use cairn_io::small_file;
    let fs = MemFs::new();
    let path = Path::new("/state");
    let written = fs.create(path).and_then(|mut f| f.append(data));
    if written.is_err() {
        return;
    }
    let _ = small_file::read::<crate::raft::SnapshotMeta>(&fs, path);
    let _ = small_file::read::<u64>(&fs, path);
    let _ = small_file::read::<crate::server::identity::Identity>(&fs, path);
    let _ = small_file::read::<crate::raft::Vote>(&fs, path);
    let _ = small_file::read::<Option<crate::raft::LogId>>(&fs, path);
}
