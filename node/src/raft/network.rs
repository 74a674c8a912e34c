//! The peer transport: openraft's RPCs over tonic to the `cairn.raft.v1`
//! service on each peer's peer port.
//!
//! One lazily connected HTTP/2 channel per peer, with keep-alive pings so
//! a connection silently cut by a partition is noticed and replaced, and a
//! deadline on every RPC (openraft's hard TTL) so nothing waits forever.
//! Appends are pipelined by openraft's replication stream over the one
//! channel (HTTP/2 multiplexes them); an append stream left open by a
//! call that ended cleanly carries the next (heartbeats included).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::raft::{self as pb, raft_client::RaftClient};
use cairn_rpc::net::Net;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::snapshot::{self, SnapshotDir, SnapshotHeader};
use super::state_machine::SmShared;
use cairn_io::codec;
use cairn_io::fs::FileSystem;

use super::{Member, NodeId, Snapshot, TypeConfig, Vote};

/// Metadata on every peer call: the sender's cluster id (hex; absent
/// while the sender has applied no membership yet).
pub const CLUSTER_ID_HEADER: &str = "cairn-cluster-id";
/// Metadata on every peer call: the id of the node the call is for.
pub const TO_NODE_HEADER: &str = "cairn-to-node";

/// Stamps every peer call with the sender's cluster id and the node it is
/// meant for, so a receiver refuses calls from another cluster or meant
/// for another node (an address reused by a different member).
#[derive(Clone)]
pub struct Stamp {
    sm: Arc<SmShared>,
    to: NodeId,
}

impl tonic::service::Interceptor for Stamp {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let md = req.metadata_mut();
        let cluster_id = self.sm.cluster_id();
        if cluster_id != 0 {
            if let Ok(v) = format!("{cluster_id:016x}").parse() {
                md.insert(CLUSTER_ID_HEADER, v);
            }
        }
        if let Ok(v) = self.to.to_string().parse() {
            md.insert(TO_NODE_HEADER, v);
        }
        Ok(req)
    }
}

type Client = RaftClient<InterceptedService<Channel, Stamp>>;

/// HTTP/2 keep-alive interval on peer channels.
const KEEPALIVE: Duration = Duration::from_secs(1);

/// Connects a tonic channel to `addr` (host:port) over `net` with
/// keep-alive and a connect timeout. The connection is made on first use.
pub fn lazy_channel(net: &Arc<dyn Net>, addr: &str) -> Result<Channel, tonic::transport::Error> {
    cairn_rpc::net::channel(net, addr, Duration::from_secs(2), |e| {
        e.http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE * 2)
            .keep_alive_while_idle(true)
    })
}

/// Makes a [`PeerClient`] per peer.
#[derive(Clone)]
pub struct Network {
    fs: Arc<dyn FileSystem>,
    net: Arc<dyn Net>,
    sm: Arc<SmShared>,
}

impl Network {
    /// A network over `net` whose snapshot sender reads files through
    /// `fs`, stamping calls with the cluster id of `sm`.
    pub fn new(fs: Arc<dyn FileSystem>, net: Arc<dyn Net>, sm: Arc<SmShared>) -> Self {
        Network { fs, net, sm }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            target,
            addr: node.peer_addr.clone(),
            client: lazy_channel(&self.net, &node.peer_addr).ok().map(|ch| {
                RaftClient::with_interceptor(
                    ch,
                    Stamp {
                        sm: self.sm.clone(),
                        to: target,
                    },
                )
            }),
            fs: self.fs.clone(),
            backoff: Arc::default(),
            session: None,
        }
    }
}

/// The connection to one peer.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: Option<Client>,
    fs: Arc<dyn FileSystem>,
    backoff: Arc<parking_lot::Mutex<Backoff>>,
    /// The append stream the last `stream_append` call left open.
    session: Option<AppendSession>,
}

/// An open `StreamAppend` call to the peer, kept between `stream_append`
/// calls: a heartbeat (openraft sends each as a one-request stream) then
/// costs one message each way instead of a new HTTP/2 stream, and a new
/// task and channel on the follower. A call hands the session back only
/// when it ended cleanly: every request answered, every answer a success
/// (the follower ends its side after any other). Any other end (an error,
/// a timeout that dropped the call, the peer closing) drops it, so an
/// answer can never be taken for a later request's.
struct AppendSession {
    requests: tokio::sync::mpsc::UnboundedSender<pb::RaftMessage>,
    replies: tonic::Streaming<pb::RaftMessage>,
}

/// One `stream_append` call over a session.
struct SessionCall<'s, S> {
    /// `None` once the call is over.
    session: Option<AppendSession>,
    /// Where a clean end returns the session.
    slot: &'s mut Option<AppendSession>,
    input: futures::stream::Fuse<S>,
    input_done: bool,
    /// The payload bytes of each request sent and not yet answered,
    /// oldest first.
    sent_bytes: std::collections::VecDeque<usize>,
    /// When the oldest unanswered request must have its answer (a
    /// follower that stalls is noticed, and the stream dropped).
    answer_by: Option<tokio::time::Instant>,
    /// openraft's deadline for one request.
    ttl: Duration,
    target: NodeId,
    backoff: Arc<parking_lot::Mutex<Backoff>>,
}

impl<S> SessionCall<'_, S>
where
    S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    /// The next answer; `None` when the call is over.
    async fn next(
        &mut self,
    ) -> Option<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
        let target = self.target;
        loop {
            let session = self.session.as_mut()?;
            if self.input_done && self.sent_bytes.is_empty() {
                *self.slot = self.session.take();
                return None;
            }
            let answer_by = self.answer_by;
            tokio::select! {
                biased;
                reply = session.replies.next() => {
                    let r = match reply {
                        Some(Ok(m)) if !self.sent_bytes.is_empty() => {
                            self.sent_bytes.pop_front();
                            // The follower answers in order: the next
                            // answer is due from now.
                            self.answer_by = self
                                .sent_bytes
                                .front()
                                .map(|&b| tokio::time::Instant::now() + answer_within(self.ttl, b));
                            decode_reply::<StreamAppendResult<TypeConfig>>(target, m)
                        }
                        Some(Ok(_)) => Err(RPCError::Network(NetworkError::from_string(format!(
                            "peer {target}: an append answer with no request"
                        )))),
                        Some(Err(s)) => Err(status_err(target, &s)),
                        None => {
                            // The peer ended its side, as before this
                            // session existed: the call ends.
                            self.session = None;
                            return None;
                        }
                    };
                    record(&self.backoff, &r);
                    if !matches!(r, Ok(Ok(_))) {
                        self.session = None;
                    }
                    return Some(r);
                }
                req = self.input.next(), if !self.input_done => match req {
                    Some(req) => {
                        let payload = match codec::encode(&req) {
                            Ok(p) => p,
                            Err(e) => {
                                // Our own types always encode; if one did
                                // not, the append fails rather than
                                // sending an empty message.
                                self.session = None;
                                return Some(Err(RPCError::Unreachable(unreachable(format!(
                                    "peer {target}: cannot encode an append: {e}"
                                )))));
                            }
                        };
                        let bytes = payload.len();
                        let msg = pb::RaftMessage {
                            payload: payload.into(),
                            error: String::new(),
                        };
                        if session.requests.send(msg).is_err() {
                            self.session = None;
                            return Some(Err(RPCError::Unreachable(unreachable(format!(
                                "peer {target}: the append stream is closed"
                            )))));
                        }
                        self.sent_bytes.push_back(bytes);
                        if self.answer_by.is_none() {
                            self.answer_by =
                                Some(tokio::time::Instant::now() + answer_within(self.ttl, bytes));
                        }
                    }
                    None => self.input_done = true,
                },
                () = sleep_until_or_never(answer_by) => {
                    self.session = None;
                    let r: Result<StreamAppendResult<TypeConfig>, _> =
                        Err(RPCError::Unreachable(unreachable(format!(
                            "peer {target}: no answer to an append of {} bytes in time",
                            self.sent_bytes.front().copied().unwrap_or(0)
                        ))));
                    record(&self.backoff, &r);
                    return Some(r);
                }
            }
        }
    }
}

/// The least time a follower has to answer an append: openraft's TTL
/// is a heartbeat's, far less than a busy follower's fsync of a batch.
const APPEND_ANSWER_MIN: Duration = Duration::from_secs(2);
/// The slowest rate at which a follower is expected to take an append's
/// bytes (receive, decode, write, fsync).
const APPEND_BYTES_PER_SEC: u64 = 8 << 20;

/// How long a follower has to answer an append of `bytes`: openraft's
/// TTL, at least [`APPEND_ANSWER_MIN`], plus time for its bytes. Past it
/// the follower is taken as stalled and the stream is dropped.
fn answer_within(ttl: Duration, bytes: usize) -> Duration {
    ttl.max(APPEND_ANSWER_MIN) + Duration::from_millis(bytes as u64 * 1000 / APPEND_BYTES_PER_SEC)
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => futures::future::pending().await,
    }
}

/// Paces attempts to a peer that cannot be reached: without it a caller
/// that retries at once (a candidate, a replication stream) reconnects in
/// a tight loop, burning CPU and ports (thousands of connects in no time
/// to a partitioned peer).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
    until: Option<tokio::time::Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(20);
    const MAX: Duration = Duration::from_secs(1);

    fn failed(&mut self) {
        self.failures = (self.failures + 1).min(16);
        let d = Self::FIRST
            .saturating_mul(1 << (self.failures - 1))
            .min(Self::MAX);
        self.until = Some(tokio::time::Instant::now() + d);
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        self.until = None;
    }
}

/// Waits out the peer's backoff, for at most `cap`.
async fn pace(b: &parking_lot::Mutex<Backoff>, cap: Duration) {
    let until = b.lock().until;
    if let Some(t) = until {
        let now = tokio::time::Instant::now();
        if t > now {
            tokio::time::sleep((t - now).min(cap)).await;
        }
    }
}

/// Records an attempt's outcome in the peer's backoff.
fn record<T>(b: &parking_lot::Mutex<Backoff>, r: &Result<T, RPCError<TypeConfig>>) {
    match r {
        Ok(_) => b.lock().succeeded(),
        Err(RPCError::Unreachable(_)) => b.lock().failed(),
        Err(_) => {}
    }
}

fn unreachable(msg: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::from_string(msg.to_string())
}

fn status_err(target: NodeId, s: &tonic::Status) -> RPCError<TypeConfig> {
    let msg = format!("peer {target}: {}: {}", s.code(), s.message());
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(unreachable(msg))
        }
        _ => RPCError::Network(NetworkError::from_string(msg)),
    }
}

fn decode_reply<T: DeserializeOwned>(
    target: NodeId,
    reply: pb::RaftMessage,
) -> Result<T, RPCError<TypeConfig>> {
    if !reply.error.is_empty() {
        return Err(RPCError::Unreachable(unreachable(format!(
            "peer {target}: {}",
            reply.error
        ))));
    }
    codec::decode(&reply.payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl PeerClient {
    fn client(&self) -> Result<Client, RPCError<TypeConfig>> {
        self.client.clone().ok_or_else(|| {
            RPCError::Unreachable(unreachable(format!(
                "peer {} has a bad address {:?}",
                self.target, self.addr
            )))
        })
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned, F, Fut>(
        &mut self,
        req: &Req,
        option: &RPCOption,
        f: F,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        F: FnOnce(Client, tonic::Request<pb::RaftMessage>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::RaftMessage>, tonic::Status>>,
    {
        let payload = codec::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(pb::RaftMessage {
            payload: payload.into(),
            error: String::new(),
        });
        let ttl = option.hard_ttl();
        pace(&self.backoff, ttl / 2).await;
        request.set_timeout(ttl);
        let client = self.client()?;
        let r = match tokio::time::timeout(ttl, f(client, request)).await {
            Err(_) => Err(RPCError::Unreachable(unreachable(format!(
                "peer {}: no answer within {ttl:?}",
                self.target
            )))),
            Ok(Err(s)) => Err(status_err(self.target, &s)),
            Ok(Ok(reply)) => decode_reply(self.target, reply.into_inner()),
        };
        record(&self.backoff, &r);
        r
    }
}

use futures::StreamExt;

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotDir;

    /// Pipelined appends over one bidirectional gRPC stream: openraft
    /// sends the next batch without waiting for the previous answer. The
    /// stream outlives the call when the call ends cleanly (see
    /// [`AppendSession`]), so the next call, typically the next heartbeat,
    /// is one message each way.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + OptionalSend
            + Unpin
            + 'static,
    {
        let target = self.target;
        let client = self.client();
        let backoff = self.backoff.clone();
        let slot = &mut self.session;
        Box::pin(async move {
            let session = match slot.take() {
                Some(s) => s,
                None => {
                    let mut client = client?;
                    pace(&backoff, Backoff::MAX).await;
                    let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
                    let opened = client
                        .stream_append(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
                        .await
                        .map_err(|s| status_err(target, &s));
                    record(&backoff, &opened);
                    AppendSession {
                        requests,
                        replies: opened?.into_inner(),
                    }
                }
            };
            let call = SessionCall {
                session: Some(session),
                slot,
                input: input.fuse(),
                input_done: false,
                sent_bytes: std::collections::VecDeque::new(),
                answer_by: None,
                ttl: option.hard_ttl(),
                target,
                backoff,
            };
            let out = futures::stream::unfold(call, |mut c| async move {
                let item = c.next().await?;
                Some((item, c))
            });
            Ok(Box::pin(out) as BoxStream<'s, _>)
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, r| async move {
            c.append_entries(r).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&rpc, &option, |mut c, r| async move { c.pre_vote(r).await })
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(&req, &option, |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let files = snapshot::open_files(&*self.fs, &snapshot.snapshot.dir)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let sizes: Vec<(String, u64)> = files.iter().map(|f| (f.name.clone(), f.size())).collect();
        let bytes = sizes.iter().map(|(_, s)| s).sum();
        let header = codec::encode(&SnapshotHeader {
            vote,
            meta: snapshot.meta.clone(),
            files: sizes,
        })
        .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let stream = snapshot::chunks(header, files);
        let mut client = self
            .client()
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?;
        let mut request = tonic::Request::new(stream);
        request.set_timeout(snapshot::transfer_time_limit(bytes));
        let target = self.target;
        let send = async move {
            match client.install_snapshot(request).await {
                Ok(reply) => {
                    decode_reply::<SnapshotResponse<TypeConfig>>(target, reply.into_inner())
                        .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))
                }
                Err(s) => Err(StreamingError::Unreachable(unreachable(format!(
                    "peer {target}: snapshot: {}: {}",
                    s.code(),
                    s.message()
                )))),
            }
        };
        tokio::select! {
            r = send => {
                if r.is_ok() {
                    metrics::counter!("cairn_snapshots_sent_total").increment(1);
                }
                r
            }
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}
