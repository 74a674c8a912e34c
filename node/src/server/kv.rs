//! `cairn.kv.v1.KV`: the key-value service.

use std::pin::Pin;
use std::sync::Arc;
use tokio::time::Instant;

use cairn_proto::kv as pb;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status};

use super::errors;
use super::http::observe;
use super::reads::ReadRounds;
use super::NodeCore;
use crate::kv::command::{
    self, Command, Compare, CompareOp, CompareTarget, DeleteOp, Kv, Op, OpResult, PutOp, RequestId,
    ScanSpec, SessionHint, Txn, TxnOp,
};
use crate::kv::{self as store, EventKind, WatchEvent};
use crate::raft::state_machine;

/// The KV service.
#[derive(Clone)]
pub struct KvService {
    core: Arc<NodeCore>,
    /// Set when the server stops: batch streams end.
    stop: tokio::sync::watch::Receiver<bool>,
}

impl KvService {
    /// A service over `core`; its batch streams end when `stop` turns true.
    pub fn new(core: Arc<NodeCore>, stop: tokio::sync::watch::Receiver<bool>) -> Self {
        KvService { core, stop }
    }
}

fn invalid(limit: &str, detail: String) -> Status {
    Status::invalid_argument(format!("{detail} (limit {limit})"))
}

impl KvService {
    /// Requests up to twice the limit reach the handler (the transport cuts
    /// off anything larger), so most oversized requests get this clear
    /// answer.
    fn check_size(&self, msg: &impl prost::Message) -> Result<(), Status> {
        let max = self.core.config.limits.max_request_bytes;
        let len = msg.encoded_len();
        if len > max {
            return Err(invalid(
                &format!("max-request-bytes = {max}"),
                format!("request is {len} bytes"),
            ));
        }
        Ok(())
    }

    fn check_key(&self, key: &[u8], what: &str) -> Result<(), Status> {
        let max = self.core.config.limits.max_key_bytes;
        if key.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{what} must not be empty"
            )));
        }
        if key.len() > max {
            return Err(invalid(
                &format!("max-key-bytes = {max}"),
                format!("{what} is {} bytes", key.len()),
            ));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Status> {
        let max = self.core.config.limits.max_value_bytes;
        if value.len() > max {
            return Err(invalid(
                &format!("max-value-bytes = {max}"),
                format!("value is {} bytes", value.len()),
            ));
        }
        Ok(())
    }

    fn check_range_key(&self, key: &[u8], what: &str) -> Result<(), Status> {
        let max = self.core.config.limits.max_key_bytes;
        if key.len() > max {
            return Err(invalid(
                &format!("max-key-bytes = {max}"),
                format!("{what} is {} bytes", key.len()),
            ));
        }
        Ok(())
    }

    async fn propose(&self, cmd: Command) -> Result<command::CommandResponse, Status> {
        self.core.check_accepting()?;
        // Refused here without a log entry; the state machine refuses
        // the same way a write proposed before the alarm was applied.
        if let Some(alarm) = store::alarms::blocking(&self.core.sm.alarms(), &cmd.op) {
            return Err(errors::alarmed(alarm));
        }
        let r = self.core.scope.run(self.core.raft.client_write(cmd)).await;
        match r {
            Ok(resp) => {
                metrics::counter!("cairn_proposals_committed_total").increment(1);
                match resp.data.result {
                    // Applied as a refusal, on every replica alike.
                    OpResult::Refused { limit, detail } => Err(invalid(&limit, detail)),
                    OpResult::Alarmed { alarm } => Err(errors::alarmed(alarm)),
                    OpResult::AnswerNotKept { bytes } => Err(Status::failed_precondition(format!(
                        "this request was already applied at revision {}; its answer ({bytes} \
                         bytes of pairs) is larger than what is kept for a retry ({} bytes)",
                        resp.data.revision,
                        store::limits::MAX_KEPT_ANSWER_BYTES
                    ))),
                    OpResult::SessionUnknown => Err(session_refused(
                        cairn_proto::SESSION_UNKNOWN,
                        "the cluster holds no session for this request id's client (it \
                         expired, or this attempt may not open one): nothing was applied"
                            .into(),
                    )),
                    OpResult::Settled { floor } => Err(session_refused(
                        cairn_proto::SESSION_SETTLED,
                        format!(
                            "this request id's seq is below its client's floor {floor}: the \
                             client settled it, so it is not applied again"
                        ),
                    )),
                    _ => Ok(resp.data),
                }
            }
            Err(e) => {
                metrics::counter!("cairn_proposals_failed_total").increment(1);
                Err(errors::write_error(e))
            }
        }
    }

    /// Waits until this node may serve a read of the given consistency.
    async fn read_barrier(&self, consistency: i32) -> Result<(), Status> {
        self.core.check_accepting()?;
        if consistency == pb::ReadConsistency::Serializable as i32 {
            return Ok(());
        }
        #[cfg(feature = "planted-bugs")]
        if crate::planted::on(crate::planted::Bug::FollowerReads) {
            return Ok(());
        }
        ReadRounds::barrier(&self.core).await
    }

    /// Refuses a prefix delete whose cost, by this node's state, is past
    /// a bound: its answer (with `prev_kv`) past `max-response-bytes`, or
    /// its watch events past what one entry may record. Counting stops
    /// at the bound, so the check costs at most what it allows. (The
    /// state machine refuses it again if it grew past the entry's bounds
    /// by the time it is applied.)
    fn check_prefix_delete(&self, op: &DeleteOp) -> Result<(), Status> {
        let max_answer = self.core.config.limits.max_response_bytes as u64;
        let cost = store::read::prefix_cost(&self.core.sm.db(), &op.key, op.prev_kv, max_answer)
            .map_err(|e| self.core.store_failed(e))?;
        if op.prev_kv && cost.answer_bytes > max_answer {
            return Err(invalid(
                &format!("max-response-bytes = {max_answer}"),
                format!(
                    "the deleted pairs would take more than {max_answer} bytes in the answer \
                     (delete without prev_kv, or a narrower prefix)"
                ),
            ));
        }
        let max_events = store::limits::MAX_EVENT_BYTES;
        if cost.event_bytes > max_events {
            return Err(invalid(
                &format!("entry-event-bytes = {max_events}"),
                format!(
                    "the delete touches more keys than one entry may record ({} keys \
                     counted before the bound; delete a narrower prefix first)",
                    cost.keys
                ),
            ));
        }
        Ok(())
    }

    fn scan_spec(&self, r: &pb::ScanRequest) -> Result<ScanSpec, Status> {
        self.check_range_key(&r.start, "start")?;
        self.check_range_key(&r.end, "end")?;
        self.check_range_key(&r.prefix, "prefix")?;
        let mut spec = if r.prefix.is_empty() {
            ScanSpec {
                start: r.start.to_vec(),
                end: r.end.to_vec(),
                limit: r.limit,
                keys_only: r.keys_only,
            }
        } else {
            ScanSpec::prefix(&r.prefix, r.limit, r.keys_only)
        };
        if !r.continuation.is_empty() {
            if r.continuation < spec.start {
                return Err(Status::invalid_argument("continuation is before the range"));
            }
            spec.start = r.continuation.to_vec();
        }
        Ok(spec)
    }
}

/// The command for `op`, with the write's request id and session hint.
fn command(r: Option<&pb::RequestId>, op: Op) -> Command {
    match r.filter(|r| r.client_id != 0) {
        None => Command::new(op),
        Some(r) => Command {
            request_id: Some(RequestId {
                client_id: r.client_id,
                seq: r.seq,
            }),
            op,
            session: SessionHint {
                floor: r.floor,
                opens: false,
            },
        },
    }
}

/// The error for a write the sessions refused.
fn session_refused(kind: &'static str, message: String) -> Status {
    let mut s = Status::failed_precondition(message);
    s.metadata_mut().insert(
        cairn_proto::SESSION,
        tonic::metadata::MetadataValue::from_static(kind),
    );
    s
}

/// The proto form of a pair.
pub fn kv_to_pb(kv: Kv) -> pb::KeyValue {
    pb::KeyValue {
        key: kv.key.into(),
        value: kv.value.into(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
    }
}

fn scan_to_pb(core: &NodeCore, res: command::ScanResult, revision: u64) -> pb::ScanResponse {
    let continuation = match (res.more, res.kvs.last()) {
        (true, Some(last)) => {
            let mut c = last.key.clone();
            c.push(0);
            c
        }
        _ => Vec::new(),
    };
    pb::ScanResponse {
        header: Some(core.header(revision)),
        kvs: res.kvs.into_iter().map(kv_to_pb).collect(),
        more: res.more,
        continuation: continuation.into(),
    }
}

fn result_to_pb(core: &NodeCore, r: OpResult, revision: u64) -> pb::ResponseOp {
    use pb::response_op::Response as R;
    let header = Some(core.header(revision));
    let response = match r {
        OpResult::Put { prev } => R::Put(pb::PutResponse {
            header,
            prev_kv: prev.map(kv_to_pb),
        }),
        OpResult::Delete { deleted, prev } => R::Delete(pb::DeleteResponse {
            header,
            deleted,
            prev_kvs: prev.into_iter().map(kv_to_pb).collect(),
        }),
        OpResult::Get(kv) => R::Get(pb::GetResponse {
            header,
            kv: kv.map(kv_to_pb),
        }),
        OpResult::Scan(s) => R::Scan(scan_to_pb(core, s, revision)),
        // A refusal never reaches here (propose turns it into an error);
        // a transaction does not nest.
        OpResult::None
        | OpResult::Txn { .. }
        | OpResult::Refused { .. }
        | OpResult::AnswerNotKept { .. }
        | OpResult::SessionUnknown
        | OpResult::Settled { .. }
        | OpResult::Alarmed { .. } => {
            return pb::ResponseOp { response: None };
        }
    };
    pb::ResponseOp {
        response: Some(response),
    }
}

fn unexpected(r: &OpResult) -> Status {
    Status::internal(format!(
        "state machine answered with an unexpected result {r:?}"
    ))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let r = req.into_inner();
            self.check_size(&r)?;
            let resp = self
                .propose(command(r.request_id.as_ref(), Op::Put(self.put_op(&r)?)))
                .await?;
            match resp.result {
                OpResult::Put { prev } => Ok(Response::new(pb::PutResponse {
                    header: Some(self.core.header(resp.revision)),
                    prev_kv: prev.map(kv_to_pb),
                })),
                other => Err(unexpected(&other)),
            }
        }
        .await;
        observe("Put", started, &r);
        r
    }

    async fn open_session(
        &self,
        _req: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let resp = self.propose(Command::new(Op::OpenSession)).await?;
            match resp.result {
                OpResult::None => Ok(Response::new(pb::OpenSessionResponse {
                    header: Some(self.core.header(resp.revision)),
                    client_id: resp.revision,
                })),
                other => Err(unexpected(&other)),
            }
        }
        .await;
        observe("OpenSession", started, &r);
        r
    }

    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let r = req.into_inner();
            self.check_key(&r.key, "key")?;
            self.read_barrier(r.consistency).await?;
            let applied = self.core.sm.applied();
            let kv =
                store::get(&self.core.sm.db(), &r.key).map_err(|e| self.core.store_failed(e))?;
            // The data may be newer than `applied` was (an entry applied
            // in between): the header never names a revision older than
            // the pair it carries.
            let revision = applied.max(kv.as_ref().map_or(0, |kv| kv.mod_revision));
            Ok(Response::new(pb::GetResponse {
                header: Some(self.core.header(revision)),
                kv: kv.map(kv_to_pb),
            }))
        }
        .await;
        observe("Get", started, &r);
        r
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let r = req.into_inner();
            let op = self.delete_op(&r)?;
            if op.prefix {
                self.check_prefix_delete(&op)?;
            }
            let resp = self
                .propose(command(r.request_id.as_ref(), Op::Delete(op)))
                .await?;
            match resp.result {
                OpResult::Delete { deleted, prev } => Ok(Response::new(pb::DeleteResponse {
                    header: Some(self.core.header(resp.revision)),
                    deleted,
                    prev_kvs: prev.into_iter().map(kv_to_pb).collect(),
                })),
                other => Err(unexpected(&other)),
            }
        }
        .await;
        observe("Delete", started, &r);
        r
    }

    async fn scan(
        &self,
        req: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let r = req.into_inner();
            let spec = self.scan_spec(&r)?;
            self.read_barrier(r.consistency).await?;
            let applied = self.core.sm.applied();
            let max_bytes = self.core.config.limits.max_response_bytes as u64;
            let res = store::scan(&self.core.sm.db(), &spec, max_bytes)
                .map_err(|e| self.core.store_failed(e))?;
            let revision = res
                .kvs
                .iter()
                .map(|kv| kv.mod_revision)
                .fold(applied, u64::max);
            Ok(Response::new(scan_to_pb(&self.core, res, revision)))
        }
        .await;
        observe("Scan", started, &r);
        r
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let started = Instant::now();
        let r = async {
            let r = req.into_inner();
            self.check_size(&r)?;
            let n = r.compares.len() + r.success.len() + r.failure.len();
            let max = self.core.config.limits.max_txn_ops;
            if n > max {
                return Err(invalid(
                    &format!("max-txn-ops = {max}"),
                    format!("transaction has {n} compares and operations"),
                ));
            }
            let mut compares = Vec::with_capacity(r.compares.len());
            for c in &r.compares {
                self.check_key(&c.key, "compare key")?;
                self.check_value(&c.value)?;
                compares.push(Compare {
                    key: c.key.to_vec(),
                    target: match pb::compare::Target::try_from(c.target) {
                        Ok(pb::compare::Target::Value) => CompareTarget::Value,
                        Ok(pb::compare::Target::Version) => CompareTarget::Version,
                        Ok(pb::compare::Target::CreateRevision) => CompareTarget::CreateRevision,
                        Ok(pb::compare::Target::ModRevision) => CompareTarget::ModRevision,
                        Err(_) => {
                            return Err(Status::invalid_argument(format!(
                                "unknown compare target {}",
                                c.target
                            )))
                        }
                    },
                    op: match pb::compare::Op::try_from(c.op) {
                        Ok(pb::compare::Op::Equal) => CompareOp::Equal,
                        Ok(pb::compare::Op::NotEqual) => CompareOp::NotEqual,
                        Ok(pb::compare::Op::Less) => CompareOp::Less,
                        Ok(pb::compare::Op::Greater) => CompareOp::Greater,
                        Err(_) => {
                            return Err(Status::invalid_argument(format!(
                                "unknown compare op {}",
                                c.op
                            )))
                        }
                    },
                    value: c.value.to_vec(),
                    number: c.number,
                });
            }
            let success = self.txn_ops(&r.success)?;
            let failure = self.txn_ops(&r.failure)?;
            let resp = self
                .propose(command(
                    r.request_id.as_ref(),
                    Op::Txn(Txn {
                        compares,
                        success,
                        failure,
                    }),
                ))
                .await?;
            match resp.result {
                OpResult::Txn { succeeded, results } => Ok(Response::new(pb::TxnResponse {
                    header: Some(self.core.header(resp.revision)),
                    succeeded,
                    responses: results
                        .into_iter()
                        .map(|r| result_to_pb(&self.core, r, resp.revision))
                        .collect(),
                })),
                other => Err(unexpected(&other)),
            }
        }
        .await;
        observe("Txn", started, &r);
        r
    }

    type BatchStream = super::batch::BatchStream;

    async fn batch(
        &self,
        req: Request<tonic::Streaming<pb::BatchRequest>>,
    ) -> Result<Response<Self::BatchStream>, Status> {
        self.core.check_accepting()?;
        Ok(Response::new(super::batch::serve(
            self.clone(),
            req,
            self.stop.clone(),
            super::batch::Deadline::Stream,
        )))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.core.check_accepting()?;
        let conn = req.remote_addr();
        let r = req.into_inner();
        self.check_range_key(&r.key, "key")?;
        let slot = self.core.watches.take(conn)?;
        if !r.prefix && r.key.is_empty() {
            return Err(Status::invalid_argument(
                "key must not be empty (use prefix=true with an empty key to watch everything)",
            ));
        }
        let core = self.core.clone();
        // Subscribe before reading the applied revision: nothing applied
        // after this point is missed.
        let live = core.sm.subscribe();
        let applied = core.sm.applied();
        let start = if r.start_revision == 0 {
            applied + 1
        } else {
            r.start_revision
        };
        let oldest = core.sm.history_start();
        if start < oldest {
            return Err(compacted(start, oldest));
        }
        let (tx, rx) = mpsc::channel(64);
        let key = r.key.to_vec();
        let prefix = r.prefix;
        // The server's shutdown ends the stream at once with a status the
        // watcher resumes elsewhere on, rather than holding the server's
        // grace period open until the stream is cut.
        let stopping = super::batch::closed(self.stop.clone());
        tokio::spawn(async move {
            let filter = move |k: &[u8]| {
                if prefix {
                    k.starts_with(&key)
                } else {
                    k == key
                }
            };
            let _ = tx
                .send(Ok(pb::WatchResponse {
                    header: Some(core.header(applied)),
                    events: Vec::new(),
                }))
                .await;
            let r = tokio::select! {
                r = run_watch(&core, start, live, &filter, &tx) => r,
                _ = stopping => Err(Status::unavailable(
                    "node is shutting down; resume the watch on another node",
                )),
            };
            if let Err(s) = r {
                let _ = tx.send(Err(s)).await;
            }
        });
        metrics::gauge!("cairn_watchers").increment(1.0);
        let stream = WatchGuard {
            inner: tokio_stream::wrappers::ReceiverStream::new(rx),
            _slot: slot,
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Counts live watch streams.
struct WatchGuard<S> {
    inner: S,
    /// The watch's place among the node's bounded watches.
    _slot: super::watch_slots::WatchSlot,
}

impl<S: Stream + Unpin> Stream for WatchGuard<S> {
    type Item = S::Item;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl<S> Drop for WatchGuard<S> {
    fn drop(&mut self) {
        metrics::gauge!("cairn_watchers").decrement(1.0);
    }
}

/// The error that ends (or refuses) a watch on a node out of touch with
/// its leader: the client resumes it elsewhere.
fn out_of_contact() -> Status {
    Status::unavailable(
        "this node is not in touch with a leader (partitioned, removed or not joined yet); watch through another node",
    )
}

fn compacted(start: u64, oldest: u64) -> Status {
    let mut s = Status::out_of_range(format!(
        "compacted: revision {start} is no longer in the history; the oldest available revision is {oldest}"
    ));
    s.metadata_mut().insert(
        errors::COMPACT_REVISION,
        tonic::metadata::MetadataValue::from(oldest),
    );
    s
}

fn events_to_pb(events: Vec<WatchEvent>) -> Vec<pb::Event> {
    events
        .into_iter()
        .map(|e| pb::Event {
            r#type: match e.kind {
                EventKind::Put => pb::event::EventType::Put as i32,
                EventKind::Delete => pb::event::EventType::Delete as i32,
            },
            kv: Some(kv_to_pb(e.kv)),
        })
        .collect()
}

/// Delivers every revision from `next` on, in order, without gaps or
/// duplicates: from the stored history while behind, from the live
/// broadcast once caught up, and back to the history after lagging.
async fn run_watch(
    core: &NodeCore,
    mut next: u64,
    mut live: broadcast::Receiver<Arc<state_machine::RevisionEvents>>,
    filter: &(impl Fn(&[u8]) -> bool + Send + Sync),
    tx: &mpsc::Sender<Result<pb::WatchResponse, Status>>,
) -> Result<(), Status> {
    const HISTORY_BATCH: usize = 256;
    loop {
        // Catch up from the history.
        loop {
            let applied = core.sm.applied();
            if next > applied {
                break;
            }
            let oldest = core.sm.history_start();
            if next < oldest {
                return Err(compacted(next, oldest));
            }
            let batch = store::history(&core.sm.db(), next, applied, HISTORY_BATCH, filter)
                .map_err(|e| core.store_failed(e))?;
            // A trim may have deleted some of what the read looked for:
            // the start moves before the deletes are written, so checking
            // it again after the read catches that.
            let oldest = core.sm.history_start();
            if next < oldest {
                return Err(compacted(next, oldest));
            }
            let full = batch.len() == HISTORY_BATCH;
            let mut last = None;
            for (rev, events) in batch {
                last = Some(rev);
                let msg = pb::WatchResponse {
                    header: Some(core.header(rev)),
                    events: events_to_pb(events),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return Ok(());
                }
            }
            next = match (full, last) {
                (true, Some(rev)) => rev + 1,
                _ => applied + 1,
            };
        }
        // Follow the live broadcast, as long as this node hears from its
        // leader (otherwise the stream would stall without a word).
        // A pause of this process (a stop signal, a stall) is not enough:
        // it must stay out of touch for a contact window of its own.
        let period = std::time::Duration::from_millis(core.config.election_timeout_ms);
        let mut check = tokio::time::interval(period);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out_since: Option<tokio::time::Instant> = None;
        loop {
            let received = tokio::select! {
                r = live.recv() => r,
                _ = check.tick() => {
                    if core.in_contact() {
                        out_since = None;
                        continue;
                    }
                    let since = *out_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= core.contact_window() {
                        return Err(out_of_contact());
                    }
                    continue;
                }
            };
            match received {
                Ok(rev) if rev.installed_snapshot => {
                    // The revisions the snapshot brought were not
                    // broadcast: read them from its history.
                    break;
                }
                Ok(rev) => {
                    if rev.revision < next {
                        continue;
                    }
                    // A jump past `next` means the revisions between had
                    // no events: apply broadcasts every revision with
                    // events, a snapshot install says so, and the
                    // broadcast reports a lag.
                    let events: Vec<WatchEvent> = rev
                        .events
                        .iter()
                        .filter(|e| filter(&e.kv.key))
                        .cloned()
                        .collect();
                    next = rev.revision + 1;
                    if events.is_empty() {
                        continue;
                    }
                    let msg = pb::WatchResponse {
                        header: Some(core.header(rev.revision)),
                        events: events_to_pb(events),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return Ok(());
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Status::unavailable("node is shutting down"))
                }
            }
        }
    }
}

impl KvService {
    /// Checks a put against the limits and converts it.
    fn put_op(&self, p: &pb::PutRequest) -> Result<PutOp, Status> {
        self.check_key(&p.key, "key")?;
        self.check_value(&p.value)?;
        Ok(PutOp {
            key: p.key.to_vec(),
            value: p.value.to_vec(),
            prev_kv: p.prev_kv,
        })
    }

    /// Checks a delete against the limits and converts it.
    fn delete_op(&self, d: &pb::DeleteRequest) -> Result<DeleteOp, Status> {
        self.check_key(&d.key, if d.prefix { "prefix" } else { "key" })?;
        Ok(DeleteOp {
            key: d.key.to_vec(),
            prefix: d.prefix,
            prev_kv: d.prev_kv,
        })
    }

    fn txn_ops(&self, ops: &[pb::RequestOp]) -> Result<Vec<TxnOp>, Status> {
        use pb::request_op::Request as Rq;
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(match &op.request {
                Some(Rq::Put(p)) => TxnOp::Put(self.put_op(p)?),
                Some(Rq::Get(g)) => {
                    self.check_key(&g.key, "key")?;
                    TxnOp::Get {
                        key: g.key.to_vec(),
                    }
                }
                Some(Rq::Delete(d)) => TxnOp::Delete(self.delete_op(d)?),
                Some(Rq::Scan(s)) => TxnOp::Scan(self.scan_spec(s)?),
                None => return Err(Status::invalid_argument("empty transaction operation")),
            });
        }
        Ok(out)
    }
}
