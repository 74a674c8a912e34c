//! `KV.Batch`: many calls over one stream. Each call is handed to the
//! service's own unary handler (so it gets the same checks, limits,
//! routing errors, admission and metrics), concurrently, and its answer
//! goes back tagged with the call's id as soon as it is ready; answers
//! that are ready together share a message. Both nodes and the gateway
//! serve it with [`serve`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_client::batch::{status_to_pb, REPLY_BYTES};
use cairn_proto::kv::kv_server::Kv;
use cairn_proto::kv::{self as pb, batch_call::Call, batch_reply::Reply};
use futures::Stream;
use prost::Message;
use tokio::sync::{mpsc, watch, Semaphore};
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
/// side or `closing` turns true (shutdown: calls not yet read get no
/// answer, which the caller treats as a broken stream and retries
/// elsewhere).
pub fn serve<S: Kv + Clone>(
    svc: S,
    req: Request<Streaming<pb::BatchRequest>>,
    mut closing: watch::Receiver<bool>,
) -> BatchStream {
    let conn = req.extensions().get::<TcpConnectInfo>().cloned();
    let mut inbound = req.into_inner();
    let (tx, rx) = mpsc::unbounded_channel::<pb::BatchReply>();
    let slots = Arc::new(Semaphore::new(MAX_CALLS_IN_FLIGHT));
    let in_flight = slots.clone();
    let calls_in = metrics::histogram!("cairn_batch_calls_per_message", "direction" => "in");
    let calls_out = metrics::histogram!("cairn_batch_calls_per_message", "direction" => "out");
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = inbound.message() => m,
                _ = closing.wait_for(|c| *c) => return,
            };
            let calls = match msg {
                Ok(Some(m)) => {
                    calls_in.record(m.calls.len() as f64);
                    m.calls
                }
                // The caller closed its side, or the stream broke: the
                // calls in flight still finish (their answers may have
                // nowhere to go).
                Ok(None) | Err(_) => return,
            };
            for call in calls {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (svc, conn) = (svc.clone(), conn.clone());
                let mut work = Box::pin(async move { answer(&svc, call, conn).await });
                // Most calls a node answers from its own state (a read,
                // an error) are done at their first poll: answer those
                // here and spawn a task only for a call that waits.
                let mut cx = Context::from_waker(futures::task::noop_waker_ref());
                match work.as_mut().poll(&mut cx) {
                    Poll::Ready(reply) => {
                        let _ = tx.send(reply);
                        drop(slot);
                    }
                    Poll::Pending => {
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            let _ = tx.send(work.await);
                            drop(slot);
                        });
                    }
                }
            }
        }
    });
    Box::pin(futures::stream::unfold(rx, move |mut rx| {
        let calls_out = calls_out.clone();
        let in_flight = in_flight.clone();
        async move {
            let first = rx.recv().await?;
            // Other calls still running may finish in a moment (on the
            // other worker, or woken by the same commit): let them, so
            // their answers share this message and its write.
            if in_flight.available_permits() < MAX_CALLS_IN_FLIGHT {
                tokio::task::yield_now().await;
            }
            let mut bytes = first.encoded_len();
            let mut replies = vec![first];
            while bytes < REPLY_BYTES {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.encoded_len();
                        replies.push(r);
                    }
                    Err(_) => break,
                }
            }
            calls_out.record(replies.len() as f64);
            Some((Ok(pb::BatchResponse { replies }), rx))
        }
    }))
}

/// A batch call's deadline, in its unary request's extensions (what a
/// `grpc-timeout` header is to a unary call, without formatting one that
/// the handler would parse again).
#[derive(Debug, Clone, Copy)]
pub struct CallTimeout(pub Duration);

/// A call's request for the unary handler: the connection it came on
/// (for per-connection admission) and its deadline.
fn unary<T>(msg: T, conn: Option<TcpConnectInfo>, timeout: Option<Duration>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(c) = conn {
        r.extensions_mut().insert(c);
    }
    if let Some(t) = timeout {
        r.extensions_mut().insert(CallTimeout(t));
    }
    r
}

fn into_reply<T>(r: Result<Response<T>, Status>, ok: impl FnOnce(T) -> Reply) -> Reply {
    match r {
        Ok(resp) => ok(resp.into_inner()),
        Err(s) => Reply::Error(status_to_pb(&s)),
    }
}

/// Runs one call through the unary handler, within its deadline.
async fn answer<S: Kv>(
    svc: &S,
    call: pb::BatchCall,
    conn: Option<TcpConnectInfo>,
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
    let reply = match timeout {
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
