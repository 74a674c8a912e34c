//! The server side of the peer transport: `cairn.raft.v1.Raft` on the
//! peer port. Requests are openraft messages in postcard; anything that
//! does not decode is refused with INVALID_ARGUMENT and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::raft as pb;
use futures::StreamExt;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, StreamAppendError, TransferLeaderRequest,
    VoteRequest,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::NodeCore;
use crate::raft::snapshot::{self, SnapshotHeader};
use crate::raft::TypeConfig;
use cairn_io::codec;

/// Largest peer message (a batch of appended entries).
pub(crate) const MAX_PEER_MESSAGE: usize = 256 << 20;

/// Serves the peer port until `stop`.
pub async fn serve(
    core: Arc<NodeCore>,
    incoming: super::Incoming,
    mut stop: watch::Receiver<bool>,
) {
    let svc = pb::raft_server::RaftServer::new(PeerService { core: core.clone() })
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE);
    let svc = tonic::service::interceptor::InterceptedService::new(svc, PeerCheck { core });
    let keep_alive = cairn_rpc::serve::KeepAlive {
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
    };
    cairn_rpc::serve::serve(
        tonic::service::Routes::new(svc),
        incoming,
        cairn_rpc::serve::Options::keep_alive(keep_alive),
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
    )
    .await;
}

struct PeerService {
    core: Arc<NodeCore>,
}

/// Refuses a peer call stamped for another cluster or another node
/// (FAILED_PRECONDITION), and logs it at most every 10 s.
#[derive(Clone)]
struct PeerCheck {
    core: Arc<NodeCore>,
}

impl tonic::service::Interceptor for PeerCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        match stamp_mismatch(&self.core, req.metadata()) {
            None => Ok(req),
            Some(why) => {
                metrics::counter!("cairn_peer_calls_refused_total").increment(1);
                static LAST_WARN_MS: std::sync::atomic::AtomicU64 =
                    std::sync::atomic::AtomicU64::new(0);
                let now = self.core.epoch.elapsed().as_millis() as u64 + 10_000;
                let last = LAST_WARN_MS.load(std::sync::atomic::Ordering::Relaxed);
                if now >= last + 10_000 {
                    LAST_WARN_MS.store(now, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(%why, "refused a peer call");
                }
                Err(Status::failed_precondition(why))
            }
        }
    }
}

/// Why the stamp of a peer call does not fit this node, if it does not.
fn stamp_mismatch(core: &NodeCore, md: &tonic::metadata::MetadataMap) -> Option<String> {
    use crate::raft::network::{CLUSTER_ID_HEADER, TO_NODE_HEADER};
    let header = |name: &str| md.get(name).and_then(|v| v.to_str().ok());
    if let Some(to) = header(TO_NODE_HEADER) {
        if to.parse::<u64>().ok() != Some(core.config.id) {
            return Some(format!(
                "a peer call for node {to} reached node {}",
                core.config.id
            ));
        }
    }
    let ours = match core.sm.cluster_id() {
        0 => core.voting.cluster_id(),
        id => id,
    };
    let theirs = header(CLUSTER_ID_HEADER)?;
    if ours != 0 && u64::from_str_radix(theirs, 16).ok() != Some(ours) {
        return Some(format!(
            "cluster id mismatch: node {} belongs to cluster {ours:016x}, the call comes from cluster {theirs}",
            core.config.id
        ));
    }
    None
}

/// Refuses a vote (or leadership) request while this node catches up.
fn check_votes(core: &NodeCore) -> Result<(), Status> {
    if core.voting.ready() {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "node {} started without its data and does not vote until a leader has caught it up",
        core.config.id
    )))
}

fn internal(e: std::io::Error) -> Status {
    Status::internal(e.to_string())
}

fn decode<T: DeserializeOwned>(m: &pb::RaftMessage) -> Result<T, Status> {
    codec::decode(&m.payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
}

fn reply<T: Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
) -> Result<Response<pb::RaftMessage>, Status> {
    Ok(Response::new(match r {
        Ok(v) => pb::RaftMessage {
            payload: codec::encode(&v).map_err(internal)?.into(),
            error: String::new(),
        },
        Err(e) => pb::RaftMessage {
            payload: Default::default(),
            error: e.to_string(),
        },
    }))
}

type MessageStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::RaftMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::raft_server::Raft for PeerService {
    type StreamAppendStream = MessageStream;

    async fn stream_append(
        &self,
        req: Request<Streaming<pb::RaftMessage>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        // Requests that do not decode end the input; the leader sees the
        // stream end and starts over.
        let seen: Arc<parking_lot::Mutex<Option<(u64, Option<crate::raft::LogId>)>>> =
            Arc::default();
        let noted = seen.clone();
        let input = req
            .into_inner()
            .take_while(|m| futures::future::ready(m.is_ok()))
            .filter_map(move |m| {
                let decoded = m
                    .ok()
                    .map(|m| codec::decode::<AppendEntriesRequest<TypeConfig>>(&m.payload));
                let r = match decoded {
                    Some(Ok(r)) => {
                        *noted.lock() = Some((r.vote.leader_id.term, r.leader_commit));
                        Some(r)
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "undecodable append in a stream");
                        None
                    }
                    None => None,
                };
                futures::future::ready(r)
            });
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let core = self.core.clone();
        // openraft's stream must be polled inside its RNG scope: drive it
        // from a task of its own.
        tokio::spawn(async move {
            let scoped = core.scope.run(async {
                let out = core.raft.stream_append(Box::pin(input));
                futures::pin_mut!(out);
                while let Some(item) = out.next().await {
                    if matches!(item, Ok(Ok(_) | Err(StreamAppendError::Conflict(_)))) {
                        core.heard_from_leader();
                        if let Some((term, commit)) = seen.lock().take() {
                            core.voting.heard_from_leader(term, commit.as_ref());
                        }
                    }
                    let last = item.is_err();
                    let msg = match item {
                        Ok(r) => reply(Ok::<_, String>(r)),
                        Err(fatal) => reply(Err::<(), _>(fatal)),
                    }
                    .map(Response::into_inner);
                    if tx.send(msg).await.is_err() || last {
                        break;
                    }
                }
            });
            scoped.await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn append_entries(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        let (term, commit) = (rpc.vote.leader_id.term, rpc.leader_commit);
        let res = self
            .core
            .scope
            .run(self.core.raft.append_entries(rpc))
            .await;
        if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
            self.core.heard_from_leader();
            self.core.voting.heard_from_leader(term, commit.as_ref());
        }
        reply(res)
    }

    async fn vote(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        check_votes(&self.core)?;
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref())?;
        reply(self.core.scope.run(self.core.raft.vote(rpc)).await)
    }

    async fn pre_vote(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        check_votes(&self.core)?;
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref())?;
        reply(self.core.scope.run(self.core.raft.pre_vote(rpc)).await)
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::RaftMessage>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        check_votes(&self.core)?;
        let rpc: TransferLeaderRequest<TypeConfig> = decode(req.get_ref())?;
        reply(
            self.core
                .scope
                .run(self.core.raft.handle_transfer_leader(rpc))
                .await,
        )
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftMessage>, Status> {
        let mut stream = req.into_inner();
        let core = &self.core;
        let fs = core.fs.clone();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let header: SnapshotHeader = match first.chunk {
            Some(pb::snapshot_chunk::Chunk::Meta(m)) => codec::decode(&m)
                .map_err(|e| Status::invalid_argument(format!("bad snapshot header: {e}")))?,
            _ => {
                return Err(Status::invalid_argument(
                    "a snapshot stream starts with its meta",
                ))
            }
        };
        let root = core.config.data_dir.join("snapshots");
        let snapshot =
            snapshot::receive(&*fs, &root, &header, stream, || core.heard_from_leader()).await?;
        let last = header.meta.last_log_id;
        let res = core
            .scope
            .run(core.raft.install_full_snapshot(header.vote, snapshot))
            .await;
        if res.is_ok() {
            core.voting.installed_snapshot(last.as_ref());
        }
        reply(res)
    }
}
