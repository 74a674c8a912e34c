//! `KV.Batch`: many calls over one stream. Each call is handed to the
//! service's own unary handler (so it gets the same checks, limits,
//! routing errors, admission and metrics), concurrently, and its answer
//! goes back tagged with the call's id as soon as it is ready; answers
//! that are ready together share a message. Both nodes and the gateway
//! serve it with [`serve`].
//!
//! The calls of one stream run inside the stream itself (a
//! `FuturesUnordered` polled by the task that sends the answers), not as
//! a task each: a burst of answers arriving together (a commit, a message
//! from upstream) wakes one task, not one per call.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_proto::kv::kv_server::Kv;
use cairn_proto::kv::{self as pb, batch_call::Call, batch_reply::Reply};
use cairn_rpc::status::{status_to_pb, REPLY_BYTES};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use prost::Message;
use tokio::sync::watch;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Request, Response, Status, Streaming};

/// The most calls of one stream in flight at once; past it the stream is
/// not read (HTTP/2 flow control then holds the caller back).
pub const MAX_CALLS_IN_FLIGHT: usize = 4096;

/// The longest deadline a call may ask for.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The answer stream of a Batch call.
pub type BatchStream = Pin<Box<dyn Stream<Item = Result<pb::BatchResponse, Status>> + Send>>;

/// Serves one Batch stream with `svc`'s unary handlers. The stream ends
/// (after the calls in flight are answered) when the caller closes its
/// side or `closing` turns true (shutdown: calls not yet started, unread
/// or read while the stream was at its in-flight bound, get no answer,
/// which the caller treats as a broken stream and retries elsewhere). Dropping the stream (the caller reset it) drops the calls
/// in flight, as a unary call's handler is dropped when its caller goes.
pub fn serve<S: Kv + Clone + Unpin>(
    svc: S,
    req: Request<Streaming<pb::BatchRequest>>,
    closing: watch::Receiver<bool>,
    deadline: Deadline,
) -> BatchStream {
    let conn = req.extensions().get::<TcpConnectInfo>().cloned();
    Box::pin(Calls::new(req.into_inner(), closing, move |call| {
        let (svc, conn) = (svc.clone(), conn.clone());
        async move { answer(&svc, call, conn, deadline).await }
    }))
}

/// The state of one Batch stream: calls read but not started (past the
/// in-flight bound), calls running, answers ready to go.
struct Calls<I, F, Fut> {
    /// The caller's side; `None` once it ended (or shutdown began).
    inbound: Option<I>,
    closing: futures::future::BoxFuture<'static, ()>,
    start: F,
    unstarted: VecDeque<pb::BatchCall>,
    running: FuturesUnordered<Isolated<Fut>>,
    out: Outbox,
    calls_in: metrics::Histogram,
}

/// Answers ready to go back on a Batch stream.
pub(crate) struct Outbox {
    ready: Vec<pb::BatchReply>,
    ready_bytes: usize,
    /// Whether this message of answers already waited once for calls
    /// still running.
    waited: bool,
    calls_out: metrics::Histogram,
}

impl Outbox {
    pub(crate) fn new() -> Self {
        Outbox {
            ready: Vec::new(),
            ready_bytes: 0,
            waited: false,
            calls_out: metrics::histogram!("cairn_batch_calls_per_message", "direction" => "out"),
        }
    }

    /// Whether the next message of answers is full.
    pub(crate) fn is_full(&self) -> bool {
        self.ready_bytes >= REPLY_BYTES
    }

    pub(crate) fn push(&mut self, r: pb::BatchReply) {
        self.ready_bytes += r.encoded_len();
        self.ready.push(r);
    }

    /// Takes the answers `calls` has ready, until the message is full;
    /// returns whether there were any.
    pub(crate) fn fill<S>(&mut self, calls: &mut S, cx: &mut Context<'_>) -> bool
    where
        S: Stream<Item = pb::BatchReply> + Unpin,
    {
        let mut any = false;
        while !self.is_full() {
            match calls.poll_next_unpin(cx) {
                Poll::Ready(Some(r)) => {
                    self.push(r);
                    any = true;
                }
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        any
    }

    /// The next message of answers, if one should go now. While calls
    /// are still running (`running`), answers that may finish in a moment
    /// (on the other worker, or woken by the same commit) get one chance
    /// to share this message and its write: the first time, this wakes
    /// the task and returns None.
    pub(crate) fn take(
        &mut self,
        running: bool,
        cx: &mut Context<'_>,
    ) -> Option<pb::BatchResponse> {
        if self.ready.is_empty() {
            return None;
        }
        if !self.waited && running && !self.is_full() {
            self.waited = true;
            cx.waker().wake_by_ref();
            return None;
        }
        self.waited = false;
        self.ready_bytes = 0;
        let replies = std::mem::take(&mut self.ready);
        self.calls_out.record(replies.len() as f64);
        Some(pb::BatchResponse { replies })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }
}

/// A future that is ready once `closing` turns true.
pub(crate) fn closed(
    mut closing: watch::Receiver<bool>,
) -> futures::future::BoxFuture<'static, ()> {
    async move {
        let _ = closing.wait_for(|c| *c).await;
    }
    .boxed()
}

impl<I, F, Fut> Calls<I, F, Fut>
where
    I: Stream<Item = Result<pb::BatchRequest, Status>> + Unpin,
    F: FnMut(pb::BatchCall) -> Fut,
    Fut: Future<Output = pb::BatchReply>,
{
    /// Serves the calls of `inbound` with `start` until it ends or
    /// `closing` turns true.
    fn new(inbound: I, closing: watch::Receiver<bool>, start: F) -> Self {
        Calls {
            inbound: Some(inbound),
            closing: closed(closing),
            start,
            unstarted: VecDeque::new(),
            running: FuturesUnordered::new(),
            out: Outbox::new(),
            calls_in: metrics::histogram!("cairn_batch_calls_per_message", "direction" => "in"),
        }
    }

    /// Reads the caller's messages and starts their calls while under the
    /// in-flight bound; registers for wake-ups otherwise.
    fn read(&mut self, cx: &mut Context<'_>) {
        if self.inbound.is_some() && self.closing.poll_unpin(cx).is_ready() {
            self.inbound = None;
            self.unstarted.clear();
        }
        loop {
            while self.running.len() < MAX_CALLS_IN_FLIGHT {
                let Some(call) = self.unstarted.pop_front() else {
                    break;
                };
                let id = call.id;
                let work = (self.start)(call);
                self.running.push(Isolated::new(id, work));
            }
            if self.running.len() >= MAX_CALLS_IN_FLIGHT {
                return;
            }
            let Some(inbound) = self.inbound.as_mut() else {
                return;
            };
            match inbound.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(m))) => {
                    self.calls_in.record(m.calls.len() as f64);
                    self.unstarted.extend(m.calls);
                }
                // The caller closed its side, or the stream broke: the
                // calls in flight still finish.
                Poll::Ready(Some(Err(_)) | None) => self.inbound = None,
                Poll::Pending => return,
            }
        }
    }
}

impl<I, F, Fut> Stream for Calls<I, F, Fut>
where
    I: Stream<Item = Result<pb::BatchRequest, Status>> + Unpin,
    F: FnMut(pb::BatchCall) -> Fut + Unpin,
    Fut: Future<Output = pb::BatchReply>,
{
    type Item = Result<pb::BatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            this.read(cx);
            let progressed = this.out.fill(&mut this.running, cx);
            // Answers freed slots: read on before deciding.
            if progressed && !this.unstarted.is_empty() {
                continue;
            }
            break;
        }
        if let Some(m) = this.out.take(!this.running.is_empty(), cx) {
            return Poll::Ready(Some(Ok(m)));
        }
        let done = this.out.is_empty()
            && this.inbound.is_none()
            && this.unstarted.is_empty()
            && this.running.is_empty();
        if done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

pin_project_lite::pin_project! {
    /// A running call: a call that panics must not take the stream and
    /// every other call on it down, so it alone is answered INTERNAL.
    pub(crate) struct Isolated<Fut> {
        id: u64,
        #[pin]
        work: futures::future::CatchUnwind<AssertUnwindSafe<Fut>>,
    }
}

impl<Fut: Future<Output = pb::BatchReply>> Isolated<Fut> {
    /// Call `id`, running `work`.
    pub(crate) fn new(id: u64, work: Fut) -> Self {
        Isolated {
            id,
            work: AssertUnwindSafe(work).catch_unwind(),
        }
    }
}

impl<Fut: Future<Output = pb::BatchReply>> Future for Isolated<Fut> {
    type Output = pb::BatchReply;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<pb::BatchReply> {
        let this = self.project();
        let id = *this.id;
        this.work.poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                tracing::error!(call = id, "a batch call panicked");
                pb::BatchReply {
                    id,
                    reply: Some(Reply::Error(status_to_pb(&Status::internal(
                        "the call failed inside the server",
                    )))),
                }
            })
        })
    }
}

/// What the unary request of a batch call carries in its extensions:
/// that it came in a batch (its answer travels without response
/// metadata) and its deadline (what a `grpc-timeout` header is to a unary
/// call, without formatting one that the handler would parse again).
#[derive(Debug, Clone, Copy)]
pub struct InBatch {
    /// The call's deadline, if it has one.
    pub timeout: Option<Duration>,
}

/// Who holds a batch call to its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// The stream, with a timer per call: a node's handlers wait for
    /// commits and reads without one of their own.
    Stream,
    /// The handler itself: the gateway bounds every call it forwards by
    /// the caller's deadline, so a second timer would only cost.
    Handler,
}

/// A call's request for the unary handler: the connection it came on
/// (for per-connection admission) and its deadline.
fn unary<T>(msg: T, conn: Option<TcpConnectInfo>, timeout: Option<Duration>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(c) = conn {
        r.extensions_mut().insert(c);
    }
    r.extensions_mut().insert(InBatch { timeout });
    r
}

fn into_reply<T>(r: Result<Response<T>, Status>, ok: impl FnOnce(T) -> Reply) -> Reply {
    match r {
        Ok(resp) => ok(resp.into_inner()),
        Err(s) => Reply::Error(status_to_pb(&s)),
    }
}

/// Runs one call through the unary handler, within its deadline.
pub(crate) async fn answer<S: Kv>(
    svc: &S,
    call: pb::BatchCall,
    conn: Option<TcpConnectInfo>,
    deadline: Deadline,
) -> pb::BatchReply {
    // Capped: a deadline decades away would not fit a timer or the
    // grpc-timeout of a call the gateway forwards unary.
    let timeout =
        (call.timeout_us > 0).then(|| Duration::from_micros(call.timeout_us).min(MAX_CALL_TIMEOUT));
    let work = async {
        match call.call {
            Some(Call::Put(r)) => into_reply(svc.put(unary(r, conn, timeout)).await, Reply::Put),
            Some(Call::Get(r)) => into_reply(svc.get(unary(r, conn, timeout)).await, Reply::Get),
            Some(Call::Delete(r)) => {
                into_reply(svc.delete(unary(r, conn, timeout)).await, Reply::Delete)
            }
            Some(Call::Scan(r)) => into_reply(svc.scan(unary(r, conn, timeout)).await, Reply::Scan),
            Some(Call::Txn(r)) => into_reply(svc.txn(unary(r, conn, timeout)).await, Reply::Txn),
            None => Reply::Error(status_to_pb(&Status::invalid_argument(
                "batch call without an operation",
            ))),
        }
    };
    let reply = match timeout.filter(|_| deadline == Deadline::Stream) {
        Some(t) => match tokio::time::timeout(t, work).await {
            Ok(r) => r,
            Err(_) => Reply::Error(status_to_pb(&Status::deadline_exceeded(format!(
                "the call's deadline of {t:?} passed"
            )))),
        },
        None => work.await,
    };
    pb::BatchReply {
        id: call.id,
        reply: Some(reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(id: u64) -> pb::BatchCall {
        pb::BatchCall {
            id,
            timeout_us: 0,
            call: Some(Call::Get(pb::GetRequest {
                key: vec![b'k', id as u8].into(),
                ..Default::default()
            })),
        }
    }

    #[tokio::test]
    async fn a_call_that_panics_is_answered_internal_and_the_others_go_on() {
        let inbound = futures::stream::iter(vec![
            Ok(pb::BatchRequest {
                calls: vec![get(1), get(2)],
            }),
            Ok(pb::BatchRequest {
                calls: vec![get(3)],
            }),
        ]);
        let (_closing, closing) = watch::channel(false);
        let calls = Calls::new(inbound, closing, |call: pb::BatchCall| async move {
            assert_ne!(call.id, 2, "planted panic");
            // Not ready at its first poll, as a call waiting on a commit.
            tokio::task::yield_now().await;
            pb::BatchReply {
                id: call.id,
                reply: Some(Reply::Get(pb::GetResponse::default())),
            }
        });
        // The stream ends once the caller's side has ended and every call
        // is answered.
        let mut replies: Vec<pb::BatchReply> = calls
            .map(|m| m.expect("a message of answers").replies)
            .concat()
            .await;
        replies.sort_by_key(|r| r.id);
        let ids: Vec<u64> = replies.iter().map(|r| r.id).collect();
        assert_eq!(ids, [1, 2, 3], "every call answered once");
        assert!(matches!(replies[0].reply, Some(Reply::Get(_))));
        assert!(matches!(replies[2].reply, Some(Reply::Get(_))));
        match &replies[1].reply {
            Some(Reply::Error(e)) => assert_eq!(e.code, Status::internal("").code() as i32),
            other => panic!("call 2 answered {other:?}"),
        }
    }

    #[tokio::test]
    async fn closing_stops_reading_and_lets_the_calls_in_flight_finish() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (closing_tx, closing) = watch::channel(false);
        let (release_tx, release) = watch::channel(false);
        let calls = Calls::new(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
            closing,
            move |call: pb::BatchCall| {
                let mut release = release.clone();
                async move {
                    let _ = release.wait_for(|r| *r).await;
                    pb::BatchReply {
                        id: call.id,
                        reply: Some(Reply::Get(pb::GetResponse::default())),
                    }
                }
            },
        );
        tx.send(Ok(pb::BatchRequest {
            calls: vec![get(1)],
        }))
        .unwrap();
        let mut calls = std::pin::pin!(calls);
        // Call 1 is read and waits.
        assert!(futures::poll!(calls.next()).is_pending());
        closing_tx.send(true).unwrap();
        assert!(futures::poll!(calls.next()).is_pending());
        // Read no more: the caller's side is let go, and a call sent after
        // shutdown began goes nowhere.
        assert!(tx
            .send(Ok(pb::BatchRequest {
                calls: vec![get(2)],
            }))
            .is_err());
        release_tx.send(true).unwrap();
        let m = calls.next().await.expect("the answer to call 1").unwrap();
        assert_eq!(m.replies.iter().map(|r| r.id).collect::<Vec<_>>(), [1]);
        assert!(
            calls.next().await.is_none(),
            "the stream ends, call 2 unread"
        );
    }
}
