//! Relaying `KV.Batch` calls message by message, for a proxy (the
//! gateway): the calls of a caller's message that go to one node leave in
//! one message on that node's batch stream, and each answer comes back
//! tagged with the caller's own call id. No task, timer, channel or
//! routing decision per call: those are per message. The first attempt
//! of a call is relayed; when it fails in a way another attempt may fix
//! (a node gone, a leader change, its attempt's time up) the call is
//! handed back to the proxy with what is left of its deadline, to go
//! through the client's full retry loop (the `forward_*` calls).

use std::collections::{BTreeMap, VecDeque};
use std::task::{Context, Poll};
use std::time::Duration;

use cairn_proto::kv::{self as pb, batch_call::Call, batch_reply::Reply};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tonic::Status;

use crate::balance::InFlight;
use crate::batch::{Answered, Pending, Tagged, Waiter};
use crate::client::{Client, Route};
use crate::error::{classify, Failure};
use crate::forward::read_route;
use crate::session::WriteId;
use cairn_rpc::status::code_label;
use cairn_rpc::status::{status_from_pb, status_to_pb, CALL_BYTES};

/// How often attempts whose time is up are looked for.
const SWEEP: Duration = Duration::from_millis(50);

/// What became of a relayed call.
#[derive(Debug)]
pub enum Outcome {
    /// Its answer (a final error included): for the caller as it is.
    Answer {
        /// The answer, under the caller's call id.
        reply: pb::BatchReply,
        /// The call's method, for metrics.
        method: &'static str,
        /// When the call was relayed.
        started: Instant,
    },
    /// The attempt failed in a way another may fix, or its time ran
    /// out: the call (a write with its request id), its timeout what is
    /// left of its deadline, for the retry loop. The retry loop holds
    /// the [`HeldWrite`] until the call ends (the write is not settled
    /// before).
    Retry(pb::BatchCall, Option<HeldWrite>),
}

/// A write the relay gave a request id of its client's, in flight until
/// dropped (so the client's floor stays below it).
#[derive(Debug)]
pub struct HeldWrite(#[allow(dead_code)] WriteId);

/// The relayed calls of one caller's stream.
pub struct Relay {
    client: Client,
    tx: mpsc::UnboundedSender<Answered>,
    rx: mpsc::UnboundedReceiver<Answered>,
    /// The calls in flight, by the caller's id: what a retry needs
    /// (ordered: the simulation needs the same order in every run).
    in_flight: BTreeMap<u64, Relayed>,
    sweep: Interval,
    expired: VecDeque<u64>,
}

struct Relayed {
    call: Call,
    /// The request id the relay gave the call (a write without one).
    write: Option<WriteId>,
    method: &'static str,
    route: Route,
    started: Instant,
    deadline: Instant,
    attempt_deadline: Instant,
}

/// A call on its way, in the group of its route.
struct Routed {
    id: u64,
    timeout_us: u64,
    call: Call,
    method: &'static str,
    write: Option<WriteId>,
}

impl Relay {
    /// A relay for one caller's stream (inside the runtime: it keeps a
    /// timer).
    pub fn new(client: &Client) -> Relay {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Relay {
            client: client.clone(),
            tx,
            rx,
            in_flight: BTreeMap::new(),
            sweep,
            expired: VecDeque::new(),
        }
    }

    /// Calls relayed and not yet settled.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether no relayed call is unsettled.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Relays `calls` (each `timeout_us` the call's whole deadline, set):
    /// those for the leader to the cached leader, serializable reads to
    /// one endpoint chosen for them all. Returns the calls it did not
    /// take (no leader known, too large, not a call, batching off, an id
    /// already in flight) for the caller's retry loop. A write without a
    /// request id gets one first.
    pub fn send(&mut self, calls: Vec<pb::BatchCall>) -> Vec<pb::BatchCall> {
        let mut rest = Vec::new();
        let mut groups: [Vec<Routed>; 2] = Default::default();
        for c in calls {
            let pb::BatchCall {
                id,
                timeout_us,
                call,
            } = c;
            let call = match call {
                Some(call)
                    if self.client.inner.config.batch && call.encoded_len() <= CALL_BYTES =>
                {
                    call
                }
                call => {
                    rest.push(pb::BatchCall {
                        id,
                        timeout_us,
                        call,
                    });
                    continue;
                }
            };
            let (route, method, call, write) = self.prepare(call);
            groups[usize::from(route == Route::Any)].push(Routed {
                id,
                timeout_us,
                call,
                method,
                write,
            });
        }
        for (g, route) in groups.into_iter().zip([Route::Leader, Route::Any]) {
            if g.is_empty() {
                continue;
            }
            let target = match route {
                Route::Leader => self.client.cached_leader(),
                Route::Any => Some(self.client.rotate()),
            };
            let upstream = target.and_then(|t| {
                let ch = self.client.channel(&t).ok()?;
                Some((self.client.batcher(&t, &ch), self.client.endpoint(&t)))
            });
            let now = Instant::now();
            for Routed {
                id,
                timeout_us,
                mut call,
                method,
                mut write,
            } in g
            {
                let unsessioned = write.is_none() && needs_request_id(&call);
                let Some((batcher, ep)) = upstream
                    .as_ref()
                    .filter(|_| !self.in_flight.contains_key(&id) && !unsessioned)
                else {
                    // Not sent: the retry loop gives it an id.
                    drop(write);
                    rest.push(pb::BatchCall {
                        id,
                        timeout_us,
                        call: Some(call),
                    });
                    continue;
                };
                if let Some(w) = &mut write {
                    set_request_id(&mut call, Some(w.stamp()));
                }
                let timeout = Duration::from_micros(timeout_us.max(1));
                let attempt = self.client.attempt_timeout(timeout);
                self.in_flight.insert(
                    id,
                    Relayed {
                        call: call.clone(),
                        write,
                        method,
                        route,
                        started: now,
                        deadline: now + timeout,
                        attempt_deadline: now + attempt,
                    },
                );
                let p = Pending {
                    call,
                    timeout: attempt,
                    waiter: Waiter::Tagged(Tagged {
                        id,
                        tx: self.tx.clone(),
                        in_flight: ep.as_ref().map(|e| e.start()),
                    }),
                };
                if let Err(mpsc::error::SendError(p)) = batcher.calls.send(p) {
                    p.waiter
                        .answer(Err(Status::unavailable("the batch stream is closed")));
                }
            }
        }
        rest
    }

    /// A call's route and method; a write without a request id gets one
    /// of the client's.
    fn prepare(&self, call: Call) -> (Route, &'static str, Call, Option<WriteId>) {
        let (route, method) = match &call {
            Call::Put(_) => (Route::Leader, "Put"),
            Call::Delete(_) => (Route::Leader, "Delete"),
            Call::Txn(_) => (Route::Leader, "Txn"),
            Call::Get(r) => (read_route(r.consistency), "Get"),
            Call::Scan(r) => (read_route(r.consistency), "Scan"),
        };
        // Without a session open, the call goes to the retry loop, which
        // opens one.
        let write = needs_request_id(&call)
            .then(|| self.client.try_write_id())
            .flatten();
        (route, method, call, write)
    }

    /// The next settled call. Never ends: with nothing in flight it
    /// stays pending.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Outcome> {
        loop {
            if self.sweep.poll_tick(cx).is_ready() {
                let now = Instant::now();
                self.expired.extend(
                    self.in_flight
                        .iter()
                        .filter(|(_, r)| r.attempt_deadline <= now)
                        .map(|(id, _)| *id),
                );
            }
            if let Some(id) = self.expired.pop_front() {
                if let Some(r) = self.in_flight.remove(&id) {
                    return Poll::Ready(self.retry(id, r));
                }
                continue;
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(a)) => {
                    if let Some(o) = self.settle(a) {
                        return Poll::Ready(o);
                    }
                }
                // The relay holds a sender: the channel never closes.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// An answer, or a failure to classify as the retry loop would.
    fn settle(&mut self, a: Answered) -> Option<Outcome> {
        // A late answer to an attempt given up on: the retry answers.
        let r = self.in_flight.remove(&a.id)?;
        let ep = a.in_flight.as_ref().map(InFlight::endpoint);
        let status = match a.result {
            Ok(Reply::Error(e)) => status_from_pb(e),
            Ok(reply) => {
                if let Some(e) = ep {
                    e.succeeded();
                    e.ok_counter().increment(1);
                }
                return Some(answer(a.id, r, reply));
            }
            Err(s) => s,
        };
        if let Some(e) = ep {
            crate::balance::requests_counter(&e.addr, code_label(status.code())).increment(1);
        }
        match classify(&status) {
            Failure::Fatal(crate::Error::SessionUnknown(_)) if r.write.is_some() => {
                // The relay's own id, on its first attempt: not applied.
                // The retry loop sends it under a new session.
                if let Some(w) = &r.write {
                    self.client.lost_session(w);
                }
                let mut r = r;
                r.write = None;
                set_request_id(&mut r.call, None);
                return Some(self.retry(a.id, r));
            }
            Failure::Fatal(_) => return Some(answer(a.id, r, Reply::Error(status_to_pb(&status)))),
            Failure::Redirect(leader) => self.client.set_leader(Some(leader)),
            Failure::Retry(_) => {
                if let Some(e) = ep {
                    e.failed();
                    if r.route == Route::Leader {
                        self.client.forget_leader_if(&e.addr);
                    }
                }
            }
        }
        metrics::counter!("cairn_client_retries_total").increment(1);
        Some(self.retry(a.id, r))
    }

    /// Hands `r` back for the retry loop, or answers it DEADLINE_EXCEEDED
    /// when none of its deadline is left.
    fn retry(&self, id: u64, r: Relayed) -> Outcome {
        let left = r.deadline.saturating_duration_since(Instant::now());
        let left_us = u64::try_from(left.as_micros()).unwrap_or(u64::MAX);
        if left_us == 0 {
            let s = Status::deadline_exceeded(format!(
                "the call's deadline of {:?} passed",
                r.deadline - r.started
            ));
            return answer(id, r, Reply::Error(status_to_pb(&s)));
        }
        let (mut call, mut write) = (r.call, r.write);
        if let Some(w) = &mut write {
            // A retry never opens a session.
            set_request_id(&mut call, Some(w.stamp()));
        }
        Outcome::Retry(
            pb::BatchCall {
                id,
                timeout_us: left_us,
                call: Some(call),
            },
            write.map(HeldWrite),
        )
    }
}

/// Whether `call` is a write without a request id.
fn needs_request_id(call: &Call) -> bool {
    match call {
        Call::Put(r) => r.request_id.is_none(),
        Call::Delete(r) => r.request_id.is_none(),
        Call::Txn(r) => r.request_id.is_none(),
        Call::Get(_) | Call::Scan(_) => false,
    }
}

/// Sets a write's request id (reads have none).
fn set_request_id(call: &mut Call, id: Option<pb::RequestId>) {
    match call {
        Call::Put(r) => r.request_id = id,
        Call::Delete(r) => r.request_id = id,
        Call::Txn(r) => r.request_id = id,
        Call::Get(_) | Call::Scan(_) => {}
    }
}

fn answer(id: u64, r: Relayed, reply: Reply) -> Outcome {
    Outcome::Answer {
        reply: pb::BatchReply {
            id,
            reply: Some(reply),
        },
        method: r.method,
        started: r.started,
    }
}
