//! The gateway's `KV.Batch`: a caller's message of calls is relayed as
//! one message per destination (the leader; one replica for the
//! serializable reads) on the client library's batch streams, and the
//! answers come back as they arrive. Admission is taken per message. A
//! call the relay does not take (no leader known yet, too large), one
//! whose relayed attempt failed in a way a retry may fix, and every call
//! past the in-flight bounds go through the gateway's unary handler
//! instead: its admission, retries, leader following and errors.
//!
//! This is the gateway's hot path: a relayed call costs no task, timer,
//! channel, routing decision or admission of its own.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_client::relay::{HeldWrite, Outcome, Relay};
use cairn_proto::kv::{self as pb, batch_call::Call, batch_reply::Reply};
use cairn_rpc::status::status_to_pb;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Request, Status, Streaming};

use super::cache::ReadCache;
use super::kv::{Proxy, METRIC};
use crate::server::batch::{self, answer, BatchStream, Deadline, Isolated, Outbox};
use crate::server::http::observe_as;

/// Serves one Batch stream of the gateway, which holds `place` under the
/// bound on open streams until it ends.
pub(super) fn serve(
    proxy: Proxy,
    req: Request<Streaming<pb::BatchRequest>>,
    place: OwnedSemaphorePermit,
) -> BatchStream {
    let info = req.extensions().get::<TcpConnectInfo>().cloned();
    let conn = info.as_ref().and_then(TcpConnectInfo::remote_addr);
    let closing = batch::closed(proxy.0.drain.clone());
    Box::pin(Relayed {
        relay: Relay::new(&proxy.0.client),
        proxy,
        info,
        conn,
        inbound: Some(req.into_inner()),
        closing,
        unstarted: VecDeque::new(),
        slow: FuturesUnordered::new(),
        admitted: 0,
        out: Outbox::new(),
        _place: place,
    })
}

type Slow = Isolated<BoxFuture<'static, pb::BatchReply>>;

struct Relayed {
    proxy: Proxy,
    info: Option<TcpConnectInfo>,
    conn: Option<SocketAddr>,
    /// The caller's side; `None` once it ended (or the drain began).
    inbound: Option<Streaming<pb::BatchRequest>>,
    closing: BoxFuture<'static, ()>,
    relay: Relay,
    /// Calls for the unary handler, not yet started (past the bound).
    unstarted: VecDeque<pb::BatchCall>,
    slow: FuturesUnordered<Slow>,
    /// Places taken under the in-flight bounds by relayed calls.
    admitted: usize,
    out: Outbox,
    _place: OwnedSemaphorePermit,
}

impl Relayed {
    fn in_flight(&self) -> usize {
        self.relay.len() + self.slow.len()
    }

    /// Starts `call` through the unary handler.
    fn start_slow(&mut self, call: pb::BatchCall, held: Option<HeldWrite>) {
        let (proxy, info) = (self.proxy.clone(), self.info.clone());
        let id = call.id;
        self.slow.push(Isolated::new(
            id,
            async move {
                let reply = answer(&proxy, call, info, Deadline::Handler).await;
                // The relay's write is settled once its retry ended.
                drop(held);
                reply
            }
            .boxed(),
        ));
    }

    /// Relays a message of calls, or hands them to the unary handler when
    /// the gateway refuses them or the relay cannot take them.
    fn relay_message(&mut self, m: pb::BatchRequest) {
        let g = self.proxy.0.clone();
        if let Err(s) = g.refuse_if_draining() {
            for c in m.calls {
                self.out.push(pb::BatchReply {
                    id: c.id,
                    reply: Some(Reply::Error(status_to_pb(&s))),
                });
            }
            return;
        }
        let mut calls = m.calls;
        if let Some(cache) = &g.cache {
            self.answer_from(cache, &mut calls);
        }
        let n = calls.len();
        if n == 0 || !g.admit_relayed(self.conn, n) {
            // The unary handler answers each past the bounds.
            self.unstarted.extend(calls);
            return;
        }
        self.admitted += n;
        for c in &mut calls {
            let asked = (c.timeout_us > 0).then(|| Duration::from_micros(c.timeout_us));
            let t = g.capped(asked);
            c.timeout_us = u64::try_from(t.as_micros()).unwrap_or(u64::MAX).max(1);
        }
        let rest = self.relay.send(calls);
        g.relayed.increment((n - rest.len()) as u64);
        self.give_back(rest.len());
        self.unstarted.extend(rest);
    }

    /// Answers the serializable Gets of `calls` that the read cache has
    /// (while the message of answers has room), and leaves the rest.
    fn answer_from(&mut self, cache: &ReadCache, calls: &mut Vec<pb::BatchCall>) {
        let started = tokio::time::Instant::now();
        calls.retain(|c| {
            let Some(Call::Get(get)) = &c.call else {
                return true;
            };
            if self.out.is_full() {
                return true;
            }
            let Some(hit) = cache.answer(get) else {
                return true;
            };
            self.out.push(pb::BatchReply {
                id: c.id,
                reply: Some(Reply::Get(hit)),
            });
            observe_as(METRIC, "Get", started, &Ok::<(), Status>(()));
            false
        });
    }

    /// Gives back the places of `n` relayed calls (answered, or handed
    /// to the unary handler, which takes its own).
    fn give_back(&mut self, n: usize) {
        debug_assert!(n <= self.admitted, "more places given back than taken");
        let n = n.min(self.admitted);
        self.admitted -= n;
        self.proxy.0.release(self.conn, n);
    }

    /// Reads the caller's messages and starts their calls while under
    /// the in-flight bound; returns whether the bound stopped it (then
    /// nothing will wake it for the caller's side).
    fn read(&mut self, cx: &mut Context<'_>) -> bool {
        if self.inbound.is_some() && self.closing.poll_unpin(cx).is_ready() {
            self.inbound = None;
            self.unstarted.clear();
        }
        loop {
            while self.in_flight() < batch::MAX_CALLS_IN_FLIGHT {
                let Some(call) = self.unstarted.pop_front() else {
                    break;
                };
                self.start_slow(call, None);
            }
            if self.in_flight() >= batch::MAX_CALLS_IN_FLIGHT {
                return true;
            }
            let Some(inbound) = self.inbound.as_mut() else {
                return false;
            };
            match inbound.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(m))) => self.relay_message(m),
                Poll::Ready(Some(Err(_)) | None) => self.inbound = None,
                Poll::Pending => return false,
            }
        }
    }

    /// Settled relayed calls and answered slow ones into the outbox.
    fn collect(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progressed = false;
        let mut settled = 0;
        while !self.out.is_full() {
            match self.relay.poll_next(cx) {
                Poll::Ready(Outcome::Answer {
                    reply,
                    method,
                    started,
                }) => {
                    settled += 1;
                    let code = match &reply.reply {
                        Some(Reply::Error(e)) => Err(cairn_rpc::status::status_from_pb(e.clone())),
                        Some(Reply::Get(r)) => {
                            if let Some(cache) = &self.proxy.0.cache {
                                cache.fill(r);
                            }
                            Ok(())
                        }
                        _ => Ok(()),
                    };
                    observe_as(METRIC, method, started, &code);
                    self.out.push(reply);
                    progressed = true;
                }
                Poll::Ready(Outcome::Retry(call, held)) => {
                    settled += 1;
                    self.start_slow(call, held);
                    progressed = true;
                }
                Poll::Pending => break,
            }
        }
        self.give_back(settled);
        self.out.fill(&mut self.slow, cx) || progressed
    }
}

impl Stream for Relayed {
    type Item = Result<pb::BatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            let blocked = this.read(cx);
            // Answers freed places: read on before deciding.
            if this.collect(cx) && blocked {
                continue;
            }
            break;
        }
        if let Some(m) = this.out.take(this.in_flight() > 0, cx) {
            return Poll::Ready(Some(Ok(m)));
        }
        let done = this.out.is_empty()
            && this.inbound.is_none()
            && this.unstarted.is_empty()
            && this.in_flight() == 0;
        if done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        let n = self.admitted;
        self.give_back(n);
    }
}
