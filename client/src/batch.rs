//! Calls over `KV.Batch`: one long-lived stream per endpoint carries every
//! Put, Get, Delete, Scan and Txn the client sends there. Calls that are
//! waiting together go out in one message; answers come back tagged with
//! the call's id. This saves the per-call cost of an HTTP/2 stream on the
//! client, the node and the gateway (see the proto's `Batch`).
//!
//! A call whose stream breaks fails with UNAVAILABLE: its outcome is
//! unknown, as for a unary call whose connection breaks, and the retry
//! loop retries it (writes with their request id). The next call opens a
//! new stream.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::kv::kv_client::KvClient;
use cairn_proto::kv::{self as pb, batch_call::Call, batch_reply::Reply};
use futures::future::BoxFuture;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::Status;

use cairn_rpc::status::CALL_BYTES;

#[cfg(feature = "proxy")]
use crate::balance::InFlight;

/// The largest message of answers the client accepts (a scan page can be
/// large).
pub(crate) const MAX_REPLY_MESSAGE: usize = 64 << 20;

/// A request of the KV API that can travel in a batch.
pub(crate) trait KvRequest: Message + Clone + Sized + 'static {
    /// Its answer.
    type Response: Send + 'static;
    /// The batch form of the request.
    fn into_call(self) -> Call;
    /// The answer, when the reply is of this request's kind.
    fn from_reply(r: Reply) -> Option<Self::Response>;
    /// The unary call.
    fn unary(
        c: KvClient<Channel>,
        r: tonic::Request<Self>,
    ) -> BoxFuture<'static, Result<Self::Response, Status>>;
}

macro_rules! kv_request {
    ($req:ty, $resp:ty, $variant:ident, $method:ident) => {
        impl KvRequest for $req {
            type Response = $resp;
            fn into_call(self) -> Call {
                Call::$variant(self)
            }
            fn from_reply(r: Reply) -> Option<$resp> {
                match r {
                    Reply::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn unary(
                mut c: KvClient<Channel>,
                r: tonic::Request<Self>,
            ) -> BoxFuture<'static, Result<$resp, Status>> {
                Box::pin(async move { Ok(c.$method(r).await?.into_inner()) })
            }
        }
    };
}

kv_request!(pb::PutRequest, pb::PutResponse, Put, put);
kv_request!(pb::GetRequest, pb::GetResponse, Get, get);
kv_request!(pb::DeleteRequest, pb::DeleteResponse, Delete, delete);
kv_request!(pb::ScanRequest, pb::ScanResponse, Scan, scan);
kv_request!(pb::TxnRequest, pb::TxnResponse, Txn, txn);

pub(crate) struct Pending {
    pub(crate) call: Call,
    pub(crate) timeout: Duration,
    pub(crate) waiter: Waiter,
}

/// Who waits for a call's answer.
pub(crate) enum Waiter {
    /// One caller of [`Batcher::call`].
    Call(oneshot::Sender<Result<Reply, Status>>),
    /// Many calls answered on one channel, each answer tagged with its
    /// call's id (a proxy relaying a caller's calls).
    #[cfg(feature = "proxy")]
    Tagged(Tagged),
}

/// A call whose answer goes to a channel shared with other calls.
#[cfg(feature = "proxy")]
pub(crate) struct Tagged {
    /// The id the answer is tagged with.
    pub(crate) id: u64,
    /// Where the answer goes.
    pub(crate) tx: mpsc::UnboundedSender<Answered>,
    /// Counts the call against its endpoint until it is settled.
    pub(crate) in_flight: Option<InFlight>,
}

/// A [`Tagged`] call's answer.
#[cfg(feature = "proxy")]
pub(crate) struct Answered {
    /// The call's id.
    pub(crate) id: u64,
    /// What the call returned.
    pub(crate) result: Result<Reply, Status>,
    /// Counts the call against its endpoint until it is settled.
    pub(crate) in_flight: Option<InFlight>,
}

impl Waiter {
    pub(crate) fn answer(self, r: Result<Reply, Status>) {
        match self {
            Waiter::Call(tx) => {
                let _ = tx.send(r);
            }
            #[cfg(feature = "proxy")]
            Waiter::Tagged(t) => {
                let _ = t.tx.send(Answered {
                    id: t.id,
                    result: r,
                    in_flight: t.in_flight,
                });
            }
        }
    }
}

/// One endpoint's batch stream: a task that sends the calls handed to it
/// and routes the answers back.
pub(crate) struct Batcher {
    pub(crate) calls: mpsc::UnboundedSender<Pending>,
    closed: Arc<AtomicBool>,
}

impl Batcher {
    /// Opens a stream on `ch` (in the background; calls queue meanwhile).
    pub(crate) fn open(ch: Channel, open_timeout: Duration) -> Arc<Batcher> {
        let (calls, rx) = mpsc::unbounded_channel();
        let closed = Arc::new(AtomicBool::new(false));
        tokio::spawn(run(ch, rx, closed.clone(), open_timeout));
        Arc::new(Batcher { calls, closed })
    }

    /// Whether the stream ended (a new call needs a new one).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Sends `call` and waits at most `timeout` for its answer.
    pub(crate) async fn call(&self, call: Call, timeout: Duration) -> Result<Reply, Status> {
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            call,
            timeout,
            waiter: Waiter::Call(tx),
        };
        if self.calls.send(pending).is_err() {
            return Err(broken("the batch stream is closed"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(broken(
                "the batch stream ended before the call was answered",
            )),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within {timeout:?}"
            ))),
        }
    }
}

fn broken(msg: &str) -> Status {
    Status::unavailable(msg.to_string())
}

/// The stream's task: opens it, then sends calls and routes answers
/// until the stream breaks or every caller is gone and answered.
async fn run(
    ch: Channel,
    mut calls: mpsc::UnboundedReceiver<Pending>,
    closed: Arc<AtomicBool>,
    open_timeout: Duration,
) {
    let (out, out_rx) = mpsc::unbounded_channel::<pb::BatchRequest>();
    let mut client = KvClient::new(ch).max_decoding_message_size(MAX_REPLY_MESSAGE);
    let opening = client.batch(tokio_stream::wrappers::UnboundedReceiverStream::new(out_rx));
    let mut waiting: BTreeMap<u64, Waiter> = BTreeMap::new();
    let failure = match tokio::time::timeout(open_timeout, opening).await {
        Err(_) => broken(&format!(
            "opening the batch stream took longer than {open_timeout:?}"
        )),
        Ok(Err(s)) => s,
        Ok(Ok(resp)) => {
            let mut inbound = resp.into_inner();
            let mut next_id = 0u64;
            let mut open = true;
            loop {
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(m)) => {
                            for r in m.replies {
                                if let (Some(w), Some(reply)) = (waiting.remove(&r.id), r.reply) {
                                    w.answer(Ok(reply));
                                }
                            }
                            if !open && waiting.is_empty() {
                                break broken("the client is gone");
                            }
                        }
                        Ok(None) => break broken("the server ended the batch stream"),
                        Err(s) => break s,
                    },
                    p = calls.recv(), if open => match p {
                        Some(first) => {
                            // With calls in flight, answers arrive in
                            // bursts and wake many callers at once: let
                            // them queue their next calls so that they go
                            // out together. An idle stream sends at once.
                            if !waiting.is_empty() {
                                tokio::task::yield_now().await;
                            }
                            let mut batch = Vec::new();
                            let mut bytes = 0;
                            let mut next = Some(first);
                            while let Some(p) = next.take() {
                                next_id += 1;
                                bytes += p.call.encoded_len();
                                batch.push(pb::BatchCall {
                                    id: next_id,
                                    timeout_us: u64::try_from(p.timeout.as_micros()).unwrap_or(u64::MAX),
                                    call: Some(p.call),
                                });
                                waiting.insert(next_id, p.waiter);
                                if bytes < CALL_BYTES {
                                    next = calls.try_recv().ok();
                                }
                            }
                            if out.send(pb::BatchRequest { calls: batch }).is_err() {
                                break broken("the batch stream's sender is gone");
                            }
                        }
                        None => {
                            open = false;
                            if waiting.is_empty() {
                                break broken("the client is gone");
                            }
                        }
                    },
                }
            }
        }
    };
    closed.store(true, Ordering::Release);
    calls.close();
    for (_, w) in std::mem::take(&mut waiting) {
        w.answer(Err(failure.clone()));
    }
    while let Ok(p) = calls.try_recv() {
        p.waiter.answer(Err(failure.clone()));
    }
}
